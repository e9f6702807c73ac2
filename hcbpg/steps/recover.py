"""Production recovered to a point in time under Patroni (notebook ``20_recover_point_in_time``, on demand), and
the named restore points hcbpg creates before the steps that can lose data (:func:`mark_restore_point`).

The way: hcbpg's own restore, then Patroni adopting the recovered data directory as step 10 adopts a running
primary -- not Patroni's bootstrap-from-backup (``bootstrap.method`` with ``recovery_conf``), which runs only when
a scope is initialised on an empty data directory, would need the scope's state removed and Patroni's config
rewritten for one start, and hides recovery's end inside Patroni's loop.  Here each stage is checked before the
next:

1. the plan, nothing changed: the target (a time, ``xid:N``, an LSN or a restore point's name), the server to
   restore (``where``: the standby), the backup it starts from; refused when the target is before the oldest
   backup or after the newest archived WAL (the primary's WAL is switched and waited for in the archive first),
   or a restore point the verified record does not know;
2. gate ``recover-SERVER``: Patroni stopped on the standby, then on the leader (so nobody fails over), each
   stopping its PostgreSQL; the old leader's data directory is left as it is, stopped;
3. the standby's data directory restored from the repository (``pgbackrest restore --delta --type=...
   --target-action=promote``), PostgreSQL started outside Patroni, promoted at the target, verified (the new
   timeline's history file names the target, the last replayed commit not after a time target, the rows);
4. Patroni's state of the scope removed from etcd, Patroni started on the recovered server: it initialises the
   scope from the running primary (a new history) and leads; the dynamic configuration is put back as it was.
   The app's handed-out URL (every server, ``target_session_attrs=read-write``) reaches it unchanged;
5. gate ``rebuild-OLD``: the old leader's data directory moved aside (kept, intact), Patroni started there, which
   creates a replica from the repository; then pgBackRest on the new leader (a backup of the new timeline).

A rerun after success says so and changes nothing; a rerun after a stop at a gate or a failure goes on from
what the recovered server's marker and the cluster show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hcbpg.desired import patroni as dp
from hcbpg.desired import recover as dr
from hcbpg.display import show_table
from hcbpg.errors import HcbpgError, SafetyCheckFailed, UsageError, WaitTimeout
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import recover as ops_recover
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import switchover
from hcbpg.steps.ha import HaHosts, show_cluster
from hcbpg.steps.targets import connect_jumpbox, connect_servers, lock_environment

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params
    from hcbpg.steps.context import Run

__all__ = ["Recovery", "ask", "check_all", "connect", "get_plan", "get_restore_points", "mark_restore_point",
           "rebuild_old", "run", "show_cluster", "show_plan", "show_restore_points"]

#: the record's name for the restore points (a list: every point so far, newest last)
RESTORE_POINTS = "restore_points"


def connect(rb: "Run") -> HaHosts:
    """An open Host per server and the jumpbox.  The environment's lock is taken at the gate, not here: a refused
    plan changes nothing and leaves no lock behind."""
    params = rb.params
    if params.jumpbox is None or not dp.managed(params):
        raise HcbpgError(f"step {rb.step} needs replication.manager: patroni and a jumpbox in params",
                         hint="With replication.manager: manual, recover by hand from `pgbackrest restore` (README).")
    return HaHosts(dict(connect_servers(rb)), connect_jumpbox(rb), params.jumpbox.name)


# restore points before the steps that can lose data ---------------------------------------------------------------

def _primary_of(hosts: Mapping[str, "HostLike | None"], params: "Params") -> "HostLike | None":
    """The server that writes (Patroni's leader, else the one not in recovery), None when none answers so."""
    if dp.managed(params):
        view = ops_patroni.get_cluster(hosts, params)
        if view is not None and view.leader is not None:
            return hosts.get(view.leader.name)
    for h in hosts.values():
        if h is None:
            continue
        try:
            if pg_cluster.get_psql(h, params).value("SELECT pg_is_in_recovery() AS r") is False:
                return h
        except HcbpgError:
            continue
    return None


def mark_restore_point(rb: "Run", hosts: "Mapping[str, HostLike | None] | HostLike | None") -> dict[str, Any] | None:
    """A named restore point on the primary before this step changes data (``hcbpg-before-<step>-<run id>``),
    recorded with its LSN and time under ``restore_points``: "back to before step N" in notebook 20.  Nothing
    on a dry run; none while the primary does not archive WAL yet (before step 08: nothing to recover to)."""
    params = rb.params
    name = dr.restore_point_name(rb.step, rb.run_id)
    if rb.dry_run:
        print(f"dry run: a restore point {name} would be created on the primary (when it archives WAL)")
        return None
    host = _primary_of(hosts, params) if isinstance(hosts, Mapping) else hosts
    if host is None:
        print(f"no restore point: no primary answers (nothing to mark before {rb.step})")
        return None
    try:
        archiving = ops_recover.get_archiving_on(host, params)
    except HcbpgError as exc:
        print(f"no restore point: {exc.message}")
        return None
    if not archiving:
        print(f"no restore point on {host.name}: it does not archive WAL yet (nothing to recover to before "
              f"{rb.step})")
        return None
    try:
        point = {**ops_recover.run_restore_point(host, params, name), "step": rb.step, "run_id": rb.run_id}
    except HcbpgError as exc:
        # the step goes on: a point in time before it stays reachable by its time (notebook 20, -p target=TIME)
        print(f"WARNING: no restore point on {host.name}: {exc.message}")
        return None
    points = [p for p in rb.recall(RESTORE_POINTS, [], own=True) if isinstance(p, Mapping)]
    rb.record(RESTORE_POINTS, [*points, point][-500:])
    print(f"restore point {name} on {host.name} at {point['lsn']} ({point['at']}): notebook 20 can recover to "
          f"just before {rb.step}")
    return point


def get_restore_points(rb: "Run") -> list[dict[str, Any]]:
    """The restore points of this environment's verified record (oldest first)."""
    return dr.restore_points_listed([p for p in rb.recall(RESTORE_POINTS, [], own=True) if isinstance(p, Mapping)])


def show_restore_points(rb: "Run") -> list[dict[str, Any]]:
    points = get_restore_points(rb)
    if not points:
        print("no restore point recorded yet (steps create one before they change data, once WAL is archived)")
    else:
        show_table([{"target": f"name:{p['name']}", "before step": p.get("step") or "", "LSN": p["lsn"],
                     "at": p.get("at") or ""} for p in points])
    return points


# the recovery -----------------------------------------------------------------------------------------------------

@dataclass
class Recovery:
    """What this run does: ``recover`` (the plan), ``rebuild`` (recovered already; the old leader to bring back)
    or ``done`` (both: nothing left)."""

    mode: str
    target: dr.RecoveryTarget
    server: str
    old_leader: str | None
    plan: dr.RestorePlan | None = None
    marker: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.mode == "recover" and self.plan is not None:
            return str(self.plan)
        m = self.marker or {}
        head = (f"recovered to {self.target} on {self.server} already (run {m.get('run_id')}, "
                f"{m.get('finished_at')}, timeline {m.get('timeline')})")
        tail = ("the old leader runs as its replica: nothing left to do" if self.mode == "done" else
                f"left: {self.old_leader or 'the old leader'} rebuilt as its replica (gate rebuild-{self.old_leader})")
        return "\n".join([head, tail, *self.notes])


def _standby(view: dp.ClusterView | None, params: "Params", leader: str | None, where: str) -> str:
    names = [s.name for s in params.servers]
    if where and where != "standby":
        if where not in names:
            raise UsageError(f"-p where={where}: 'standby' or a server in params ({', '.join(names)})")
        if where == leader:
            raise UsageError(f"-p where={where}: that is the leader; its data stays intact (the standby is restored)")
        return where
    replicas = [m for m in (view.replicas if view is not None else []) if m.name in names]
    replicas.sort(key=lambda m: (not m.is_sync_standby, m.name))
    if replicas:
        return replicas[0].name
    others = [n for n in names if n != leader]
    if not others:
        raise UsageError("no standby in params to restore onto")
    return others[0]


def get_plan(rb: "Run", hosts: HaHosts, target: str, where: str = "standby") -> Recovery:
    """What to do for *target*: recovered already (a server's marker names this target), else the restore's plan
    (the primary's WAL switched and archived first, not on a dry run)."""
    params = rb.params
    t = dr.parse_target(target)
    view = ops_patroni.get_cluster(hosts.servers, params)
    for name, host in hosts.servers.items():
        marker = ops_recover.get_marker(host) if host is not None else None
        if marker and marker.get("target") == str(t):
            old = marker.get("old_leader")
            m_old = view.member(old) if view is not None and old else None
            rebuilt = (view is not None and view.leader is not None and view.leader.name == name and m_old is not None
                       and m_old.state in dp.RUNNING_STATES and m_old.timeline == view.leader.timeline)
            return Recovery("done" if rebuilt else "rebuild", t, name, old, marker=marker)
    leader = view.leader.name if view is not None and view.leader is not None else None
    started = next((m for m in (ops_recover.get_marker(h, ops_recover.PLAN_MARKER) for h in hosts.servers.values()
                                if h is not None) if m and m.get("target") == str(t)), None)
    if started is not None and (leader is None or leader == started.get("server")):
        # a recovery of this target stopped the cluster and did not finish: the same server, the same old leader
        leader, server = started.get("old_leader"), str(started["server"])
    else:
        server = _standby(view, params, leader, where)
    target_host = hosts.servers.get(server)
    if target_host is None:
        raise SafetyCheckFailed(f"cannot reach {server} over SSH", target=server, hint="Nothing was changed.")
    archived: dict[str, Any] = {}
    leader_host = hosts.servers.get(leader) if leader else None
    notes = [f"a recovery of this target started at {started.get('stopped_at')} (run {started.get('run_id')}): "
             "going on with it"] if started is not None else []
    if leader_host is not None and not rb.dry_run and started is None:
        archived = ops_recover.run_archive_now(leader_host, params)
        notes.append(f"the leader's WAL archived through {archived['archived_through']} (segment "
                     f"{archived['segment']})")
    reach = ops_recover.get_repo_reach(target_host, params)
    through = archived.get("archived_through")
    ancestry = ops_recover.get_ancestry(leader_host, params) if leader_host is not None and started is None else None
    plan = dr.plan_restore(t, reach, server=server, old_leader=leader,
                           archived_through=datetime.fromisoformat(_iso(through)) if through else None,
                           current_xid=archived.get("next_xid"), points=get_restore_points(rb), ancestry=ancestry)
    if started is not None and started.get("backup"):
        # going on with a recovery that stopped the cluster: the backup it chose then (the leader is down now)
        plan.backup = str(started["backup"])
        plan.options = dr.render_restore_options(t, plan.backup)
    plan.notes[:0] = notes
    return Recovery("recover", t, server, leader, plan=plan)


def _iso(pg_time: str) -> str:
    t = pg_time.strip().replace(" ", "T", 1)
    return t + ":00" if t[-3] in "+-" else t


def show_plan(rec: Recovery) -> None:
    print(rec)


def ask(rb: "Run", rec: Recovery) -> None:
    """Gate ``recover-SERVER`` before anything stops (refused plans stop here, nothing changed)."""
    if rec.mode == "done":
        return
    if rec.mode != "recover":
        lock_environment(rb)  # the old leader's rebuild is left: this run changes servers
        return
    plan = rec.plan
    assert plan is not None
    if not plan.ok:
        raise SafetyCheckFailed("the recovery is refused: " + "; ".join(plan.refusals),
                                hint="Nothing was changed. Choose a target the repository reaches (the notebook lists "
                                     "the restore points; `pgbackrest info` the backups).")
    lock_environment(rb)
    rb.gate(f"recover-{plan.server}",
            f"Stop Patroni on every server (the app has no database until {plan.server} leads again), leave "
            f"{plan.old_leader}'s data stopped and intact, and restore {plan.server} to {plan.target} from backup "
            f"{plan.backup}?", plan=plan.gate_plan())


def run(rb: "Run", hosts: HaHosts, rec: Recovery) -> dict[str, Any]:
    """Stop, restore, verify, and make the recovered server Patroni's leader (what is not done yet); the timings."""
    params = rb.params
    if rb.dry_run:
        print("dry run: nothing stopped, nothing restored")
        return {}
    if rec.mode == "done":
        print(f"done already: {rec.server} leads, recovered to {rec.target}; nothing to do")
        return {"target": str(rec.target), "server": rec.server, "old_leader": rec.old_leader, "done": True}
    server = params.server(rec.server)
    host = hosts.servers.get(server.name)
    if host is None:
        raise SafetyCheckFailed(f"cannot reach {server.name}", target=server.name)
    result: dict[str, Any] = {"target": str(rec.target), "server": server.name, "old_leader": rec.old_leader}
    if rec.mode == "recover":
        plan = rec.plan
        assert plan is not None
        old = params.server(rec.old_leader) if rec.old_leader else None
        old_host = hosts.servers.get(old.name) if old is not None else None
        started = ops_recover.get_marker(host, ops_recover.PLAN_MARKER)
        if started is not None and started.get("target") == str(plan.target):
            config = dict(started.get("dcs_config") or {})  # Patroni is stopped already: as read before
        else:
            config = ops_recover.get_dcs_config(old_host, params, old) if old is not None and old_host is not None \
                else {}
        t0 = datetime.now().astimezone()
        ops_recover.run_put_marker(host, {**plan.record(), "run_id": rb.run_id, "stopped_at": t0.isoformat(),
                                          "dcs_config": config}, ops_recover.PLAN_MARKER)
        # the standby first: with the leader's Patroni stopped first, the standby's would fail over to itself
        rb.track(ops_recover.run_stop_patroni(host, params))
        if old_host is not None:
            rb.track(ops_recover.run_stop_patroni(old_host, params))
        marker = ops_recover.run_restore_promoted(host, params, plan, run_id=rb.run_id, extra={
            "old_leader": rec.old_leader, "dcs_config": config, "stopped_at": t0.isoformat(), "verified": False})
        rb.track(Outcome(f"{server.name} restored to {plan.target} and promoted", True, False,
                         actions=[f"pgbackrest restore {' '.join(plan.options)}", f"promoted on timeline "
                                  f"{marker['timeline']} ({marker['restore_s']} s restore, {marker['recovery_s']} s "
                                  "recovery)"]))
        rec.marker = marker
    marker = rec.marker or {}
    if not marker.get("verified"):
        # verified before Patroni leads it: a rerun after a failed verification verifies again, never adopts
        plan = rec.plan or dr.RestorePlan(rec.target, server.name, rec.old_leader, marker.get("backup"), [])
        recovered = ops_recover.get_recovered(host, params)
        rb.verify(dr.check_recovered(plan, recovered), title="the recovered server, before Patroni leads it")
        result.update(recovered={k: recovered[k] for k in ("last_commit", "timeline", "tables", "history")},
                      restore_s=marker.get("restore_s"), recovery_s=marker.get("recovery_s"))
        marker["verified"] = True
        ops_recover.run_put_marker(host, marker)
        rec.marker = marker
    adopted = _adopt(rb, hosts, rec)
    result.update(adopted)
    return result


def _adopt(rb: "Run", hosts: HaHosts, rec: Recovery) -> dict[str, Any]:
    """Patroni leads on the recovered server: unless it does already, the scope's state removed from etcd and
    Patroni started there (it initialises the scope from the running primary); the dynamic configuration put back."""
    params = rb.params
    server = params.server(rec.server)
    host = hosts.servers[server.name]
    assert host is not None
    view = ops_patroni.get_cluster(hosts.servers, params)
    leads = view is not None and view.leader is not None and view.leader.name == server.name
    t = datetime.now()
    if not leads and not ops_patroni.get_patroni_running(host, params):
        for name, other in hosts.servers.items():
            if name != server.name and other is not None and ops_patroni.get_patroni_running(other, params):
                raise SafetyCheckFailed(f"Patroni runs on {name}: the scope's state is not removed under it",
                                        target=name, hint="Stop it (the old leader stays stopped until its rebuild).")
        rb.track(ops_recover.run_reset_dcs(host, params))
        t = datetime.now()
        rb.track(ops_patroni.ensure_patroni_running(host, params))
    ops_patroni.wait_for_member(hosts.servers, params, server.name,
                                lambda m: m.is_leader and m.state in dp.RUNNING_STATES,
                                what=f"{server.name} Patroni's leader", timeout=300)
    led_s = round((datetime.now() - t).total_seconds(), 1)
    config = (rec.marker or {}).get("dcs_config") or {}
    if config:
        # also on a rerun: only what differs is PATCHed (a rerun after success changes nothing)
        rb.track(ops_recover.run_put_dcs_config(host, params, server, config))
    return {"leader": server.name} if leads else {"leader": server.name, "patroni_led_s": led_s}


def rebuild_old(rb: "Run", hosts: HaHosts, rec: Recovery) -> dict[str, Any]:
    """Gate ``rebuild-OLD``, then the old leader's data directory moved aside (kept) and Patroni started there: it
    creates a replica of the recovered leader from the repository.  Nothing when it already streams."""
    params = rb.params
    old_name = rec.old_leader
    if rec.mode == "done" or not old_name or old_name == rec.server:
        return {}
    view = ops_patroni.get_cluster(hosts.servers, params)
    m = view.member(old_name) if view is not None else None
    leader = view.leader if view is not None else None
    if m is not None and leader is not None and m.state in dp.RUNNING_STATES and m.timeline == leader.timeline:
        return {"rebuilt": old_name, "already": True}
    rb.gate(f"rebuild-{old_name}", f"Move {old_name}'s data directory aside (kept; remove it by hand once you no "
                                   f"longer need it) and rebuild {old_name} as a replica of {rec.server}?",
            plan=[old_name, rec.server, str(rec.target)])
    if rb.dry_run:
        return {}
    old_host = hosts.servers.get(old_name)
    if old_host is None:
        raise SafetyCheckFailed(f"cannot reach {old_name}", target=old_name,
                                hint="The recovered leader serves alone; run the step again once it answers.")
    t = datetime.now()
    marker = dict(rec.marker or {})
    leader_host = hosts.servers.get(rec.server)
    if not marker.get("timeline_backup") and leader_host is not None:
        # the replica is restored from the newest backup: one of the new timeline first
        taken = ops_recover.run_timeline_backup(leader_host, params, params.server(rec.server))
        rb.track(Outcome(f"full backup of the new timeline on {rec.server}", True, False,
                         actions=[f"took {taken['label']} (the old leader's replica is restored from it)"]))
        marker["timeline_backup"] = taken["label"]
        ops_recover.run_put_marker(leader_host, marker)
        rec.marker = marker
    rb.track(ops_recover.run_stop_patroni(old_host, params))
    suffix = f"before-recover-{(rec.marker or {}).get('run_id') or rb.run_id or 'adhoc'}"
    aside = ops_recover.run_move_aside(old_host, params, suffix)
    rb.track(Outcome(f"{old_name}'s data directory moved aside", True, False, actions=[f"kept as {aside}"]))
    rb.track(ops_patroni.ensure_patroni_running(old_host, params))
    ops_patroni.wait_for_member(hosts.servers, params, old_name,
                                lambda x: not x.is_leader and x.state in dp.RUNNING_STATES and x.lag is not None,
                                what=f"{old_name} streaming from {rec.server}", timeout=900)
    if dp.patroni_params(params).synchronous_mode:
        # Patroni names the sync standby by rewriting the leader's postgresql.conf: done before more psql there
        ops_patroni.wait_for_sync_standby(hosts.servers, params, timeout=120)
    return {"rebuilt": old_name, "kept": aside, "rebuild_s": round((datetime.now() - t).total_seconds(), 1)}


def ensure_backups_follow(rb: "Run", hosts: HaHosts, rec: Recovery) -> list[Check]:
    """pgBackRest on the recovered leader (its check and a backup of the new timeline), as step 11 does."""
    if rec.mode == "done":
        return []
    return switchover.ensure_backups_follow(rb, hosts)


def check_all(rb: "Run", hosts: HaHosts, rec: Recovery, backup_checks: list[Check]) -> list[Check]:
    """The recovered server leads, and the cluster as step 11 checks it.  Each replica is given a minute to show
    lag 0 first: Patroni shows positions as of its last loop, and the backup just taken switched a WAL segment."""
    view = ops_patroni.get_cluster(hosts.servers, rb.params)
    for m in view.replicas if view is not None else []:
        try:
            ops_patroni.wait_for_member(hosts.servers, rb.params, m.name,
                                        lambda x: x.state in dp.RUNNING_STATES and x.lag == 0,
                                        what=f"{m.name} streaming, lag 0", timeout=60)
        except WaitTimeout:
            pass  # the check below says how far behind
    view = ops_patroni.get_cluster(hosts.servers, rb.params)
    checks = [Check.of("the recovered server leads", view is not None and view.leader is not None
                       and view.leader.name == rec.server,
                       f"leader {view.leader.name if view is not None and view.leader else 'none'}", rec.server)]
    return checks + switchover.check_all(rb, hosts, backup_checks)


def get_record(hosts: HaHosts, params: "Params", rec: Recovery, result: Mapping[str, Any]) -> dict[str, Any]:
    view = ops_patroni.get_cluster(hosts.servers, params)
    return {**result, "mode": rec.mode, "target": str(rec.target), "server": rec.server,
            "old_leader": rec.old_leader, "timeline": view.leader.timeline if view and view.leader else None}


def get_topology_record(hosts: HaHosts, params: "Params") -> dict[str, Any]:
    """The topology step 11 reads next (the recovered leader and its new timeline)."""
    return switchover.get_topology_record(hosts, params)
