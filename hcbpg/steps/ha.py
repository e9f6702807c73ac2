"""Step 10 under ``replication.manager: patroni`` (notebook ``10_high_availability``): etcd on three members (both
database servers and the jumpbox), then Patroni adopting the pair, so that a dead primary is replaced without a
human.

The pair is first what the manual step 10 makes (:func:`hcbpg.steps.replication.setup_replication`: the same
code path builds or checks the replica, with its wipe safety), then Patroni adopts it without a dump or a
restore: the replica's slot is copied under Patroni's name (no WAL gap), Patroni starts beside the running
primary (it takes the leader key; writes go on), the replica is stopped and started again by Patroni (same
system identifier: it streams again), and the primary restarts once under Patroni (``cluster_name`` becomes the
scope), behind the gate ``restart-primary-under-patroni``.  Then Patroni's dynamic configuration is made what
params say (ttl, loop_wait, synchronous mode, failsafe, the settings Patroni owns).  With
``pgbackrest.backup_standby``, pgBackRest's TLS server on both servers, then each pgbackrest.conf with the other as
pg2 (:func:`hcbpg.ops.pgbackrest_server.ensure_backup_standby`).  A second run changes nothing.

Who owns what: hcbpg keeps ``pg_hba.conf`` and its conf.d files (they keep the values Patroni also passes on
its command line, from the same capacity functions, so PostgreSQL starts the same without Patroni); Patroni owns
``postgresql.conf`` (it moves Debian's to ``postgresql.base.conf`` and includes it), the recovery settings,
``cluster_name`` and ``synchronous_standby_names``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.desired import patroni as dp
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.patroni import ClusterView, PatroniSecrets
from hcbpg.display import show_table
from hcbpg.errors import HcbpgError, SafetyCheckFailed
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import etcd as ops_etcd
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import pgbackrest, tls
from hcbpg.ops import pgbackrest_server as ops_pgbackrest_server
from hcbpg.ops import replication as rep
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import replication as manual
from hcbpg.steps.targets import connect_jumpbox, connect_servers, lock_environment

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run

#: the gate before the one restart of the primary under Patroni
RESTART_GATE = "restart-primary-under-patroni"


@dataclass
class HaHosts:
    """The step's machines: each database server (None: unreachable) and the jumpbox (etcd's third voter)."""

    servers: dict[str, "HostLike | None"]
    jumpbox: "HostLike | None"
    jumpbox_name: str

    def members(self) -> dict[str, "HostLike | None"]:
        """etcd's voters by name: both servers, then the jumpbox."""
        return {**self.servers, self.jumpbox_name: self.jumpbox}


def connect(rb: "Run") -> HaHosts:
    """The environment's lock (this step restarts the primary), then an open Host per server and the jumpbox."""
    params = rb.params
    if params.jumpbox is None or not dp.managed(params):
        raise HcbpgError("step 10_high_availability needs replication.manager: patroni and a jumpbox in params",
                         hint="With replication.manager: manual the runbook runs 10_replication instead.")
    lock_environment(rb)
    servers: dict[str, HostLike | None] = dict(connect_servers(rb))
    jumpbox: HostLike | None = connect_jumpbox(rb)
    return HaHosts(servers, jumpbox, params.jumpbox.name)


def secrets(rb: "Run") -> PatroniSecrets:
    """Patroni's passwords from params' references (never parameters, never printed)."""
    return PatroniSecrets(rest_password=rb.secret("replication.patroni.rest_password"),
                          etcd_password=rb.secret("replication.etcd.patroni_password"),
                          replication_password=rb.secret("replication.password"))


def _target(name: str, host: "HostLike | None", *, dry_run: bool) -> "HostLike":
    if host is None:
        if dry_run:
            return AbsentHost(name)
        raise SafetyCheckFailed(f"cannot reach {name} over SSH", target=name,
                                hint="Bring it back (or fix SSH), then run the step again. Nothing was changed on it.")
    return dry_run_of(host, dry_run)


@dataclass
class HaResult:
    """What the step did or would do: outcomes in order, whether Patroni adopts the pair in this run (so the
    primary restarts once), and what was measured."""

    outcomes: list[Outcome] = field(default_factory=list)
    adopting: bool = False
    restart_pending: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)


def ensure_etcd(hosts: HaHosts, params: "Params", etcd_password: str, *, dry_run: bool) -> list[Outcome]:
    """etcd on the three voters: packages, files, daemon (restarted where its config changed), healthy, auth."""
    out: list[Outcome] = []
    targets = {n: _target(n, h, dry_run=dry_run) for n, h in hosts.members().items()}
    changed: dict[str, bool] = {}
    for name, host in targets.items():
        out.append(ops_etcd.ensure_etcd_packages(host, params))
        files = ops_etcd.ensure_etcd_member(host, params, name)
        out += files
        changed[name] = any(o.changed for o in files)
    for name, host in targets.items():
        out.append(ops_etcd.ensure_etcd_running(host, params, restart=changed[name]))
    first = next(iter(targets.values()))
    if not dry_run:
        ops_etcd.wait_for_etcd_healthy(first, params)
    out.append(ops_etcd.ensure_etcd_auth(first, params, etcd_password))
    return out


def _sysid(host: "HostLike", params: "Params") -> str | None:
    """The cluster's system identifier (None: not there or not running)."""
    if isinstance(host, AbsentHost) or not pg_cluster.get_cluster_running(host, params):
        return None
    return str(pg_cluster.get_psql(host, params).value("SELECT system_identifier::text AS v FROM pg_control_system()"))


def get_system_identifier(host: "HostLike", params: "Params") -> str | None:
    """The running cluster's system identifier on *host* (None: no cluster running there)."""
    return _sysid(host, params)


def setup_ha(hosts: HaHosts, params: "Params", secrets: PatroniSecrets, shape: ServerShape, *,
             allow_destructive: bool, dry_run: bool, restart_approved: Callable[[], bool] = lambda: True,
             echo: Callable[[str], None] = print) -> HaResult:
    """Step 10, whole (a plan when *dry_run*).  *restart_approved* is asked before the primary restarts under
    Patroni (the notebook's gate); False stops the step there, with Patroni leading and the restart pending."""
    res = HaResult()
    res.outcomes += ensure_etcd(hosts, params, secrets.etcd_password, dry_run=dry_run)
    servers = {n: _target(n, h, dry_run=dry_run) for n, h in hosts.servers.items()}
    running = {n: (not isinstance(h, AbsentHost)) and ops_patroni.get_patroni_running(h, params)
               for n, h in servers.items()}
    res.adopting = not all(running.values())
    for s in params.servers:
        res.outcomes.append(ops_patroni.ensure_patroni_packages(servers[s.name], params))
        res.outcomes.append(ops_patroni.ensure_watchdog(servers[s.name], params))
    if any(running.values()):
        # adopted before (or partly: a member whose Patroni is not running is handed over to the leader's)
        leader = _leader(hosts, params)
        for s in params.servers:
            res.outcomes += tls.ensure_server_tls(servers[s.name], params, s)
            files = ops_patroni.ensure_patroni_files(servers[s.name], params, s, secrets, shape=shape)
            res.outcomes += files
            if running[s.name] and any(o.changed for o in files) and not dry_run:
                ops_patroni.run_reload(servers[s.name], params, s)
        for s in params.servers:
            if not running[s.name]:
                _hand_over(res, hosts, servers[s.name], params, s, dry_run=dry_run)
        return _finish(res, hosts, servers, params, leader, shape, dry_run=dry_run,
                       restart_approved=restart_approved, echo=echo)
    # the pair as the manual step makes it (the replica built or checked, with its wipe safety)
    outcomes, topo, _ = manual.setup_replication(hosts.servers, params, secrets.replication_password,
                                                 allow_destructive=allow_destructive, dry_run=dry_run, echo=echo)
    res.outcomes += outcomes
    primary = params.server(outcomes.primary)
    replicas = [params.server(n) for n in topo.replicas]
    for s in params.servers:
        # Patroni checks its own PostgreSQL at localhost with verify-full: the certificate names localhost too
        res.outcomes += tls.ensure_server_tls(servers[s.name], params, s)
        res.outcomes += ops_patroni.ensure_patroni_files(servers[s.name], params, s, secrets, shape=shape)
    p_host = servers[primary.name]
    res.before = {s.name: _sysid(servers[s.name], params) for s in params.servers}
    t0 = time.monotonic()
    res.outcomes.append(ops_patroni.ensure_patroni_running(p_host, params))
    if not dry_run:
        ops_patroni.wait_for_member(hosts.servers, params, primary.name, lambda m: m.is_leader,
                                    what=f"{primary.name} the leader under Patroni", timeout=60)
        res.timings["leader_s"] = round(time.monotonic() - t0, 1)
    for r in replicas:
        _hand_over(res, hosts, servers[r.name], params, r, dry_run=dry_run)
    if dry_run:
        if _name_differs(p_host, params):
            res.restart_pending = True
            res.outcomes.append(Outcome(f"restart of {primary.name} under Patroni (gate {RESTART_GATE})", True, True,
                                        actions=["POST /restart on the leader: its cluster_name becomes the scope"]))
        res.outcomes += ops_pgbackrest_server.ensure_backup_standby(servers, params)
        return res
    # the manual slots held the replicas' WAL until they streamed through Patroni's (ignore_slots kept them)
    res.outcomes.append(rep.ensure_no_stale_slots(pg_cluster.get_psql(p_host, params), params, keep=[]))
    return _finish(res, hosts, servers, params, primary, shape, dry_run=dry_run, restart_approved=restart_approved,
                   echo=echo)


def prepare_ha(hosts: HaHosts, params: "Params", secrets: PatroniSecrets, shape: ServerShape, *,
               dry_run: bool) -> HaResult:
    """What of step 10 does not need the data (notebook 22 makes it before its restore): etcd on the three voters,
    Patroni's packages and watchdog, each server's TLS and Patroni's files (``start.conf`` manual).  Nothing is
    started under Patroni; :func:`lead_restored` then only starts it.  A second run changes nothing."""
    res = HaResult()
    res.outcomes += ensure_etcd(hosts, params, secrets.etcd_password, dry_run=dry_run)
    servers = {n: _target(n, h, dry_run=dry_run) for n, h in hosts.servers.items()}
    for s in params.servers:
        res.outcomes.append(ops_patroni.ensure_patroni_packages(servers[s.name], params))
        res.outcomes.append(ops_patroni.ensure_watchdog(servers[s.name], params))
        # Patroni checks its own PostgreSQL at localhost with verify-full: the certificate names localhost too
        res.outcomes += tls.ensure_server_tls(servers[s.name], params, s)
        res.outcomes += ops_patroni.ensure_patroni_files(servers[s.name], params, s, secrets, shape=shape)
    return res


def lead_restored(hosts: HaHosts, params: "Params", leader: "Server", *, stop_first: bool = False,
                  dry_run: bool) -> HaResult:
    """Patroni started on *leader*, a primary restored outside Patroni (its files written by :func:`prepare_ha`;
    the scope empty in etcd), waited for until it leads and runs.  PostgreSQL running (*stop_first* False):
    Patroni adopts it: it initialises the scope with its system identifier and takes the leader key, PostgreSQL
    goes on (no promotion, no new timeline).  *stop_first*: PostgreSQL stopped (fast) first and started by Patroni
    with its own postgresql.conf (Patroni 3.0.2 starts it as a replica, then promotes it on a new timeline in a
    later loop).  A restart left pending (a restart-only setting Patroni's postgresql.conf changes, cluster_name
    among them) is made at once, before the app has its URL, so nothing interrupts it later."""
    res = HaResult()
    host = _target(leader.name, hosts.servers.get(leader.name), dry_run=dry_run)
    res.before = {leader.name: _sysid(host, params)}
    if dry_run:
        res.outcomes.append(Outcome(f"Patroni leads {leader.name}", True, True, actions=[
            "pg_ctlcluster stop -m fast, then Patroni started" if stop_first else
            "Patroni started beside the running primary (it adopts it)"]))
        return res
    t0 = time.monotonic()
    if not ops_patroni.get_patroni_running(host, params):
        if stop_first and pg_cluster.get_cluster_running(host, params):
            seen = Changes(host)
            ClusterControl.of(host, params).stop("fast", timeout=180)
            res.outcomes.append(seen.outcome(f"PostgreSQL stopped on {leader.name} (Patroni starts it)",
                                             actions=["pg_ctlcluster stop -m fast"]))
        res.outcomes.append(ops_patroni.ensure_patroni_running(host, params))
    res.timings["patroni_started_s"] = round(time.monotonic() - t0, 1)
    ops_patroni.wait_for_member(hosts.servers, params, leader.name,
                                lambda m: m.is_leader and m.state in dp.RUNNING_STATES,
                                what=f"{leader.name} the leader under Patroni, running", timeout=300)
    res.timings["leader_s"] = round(time.monotonic() - t0, 1)
    status = ops_patroni.get_member_status(host, params, leader)
    name_differs = _name_differs(host, params)
    res.restart_pending = bool(status and status.pending_restart) or name_differs
    if res.restart_pending:
        _restart_leader(res, hosts, host, params, leader, name_differs=name_differs,
                        what=f"{leader.name} restarted under Patroni (a restart was pending)")
    return res


def _restart_leader(res: HaResult, hosts: HaHosts, host: "HostLike", params: "Params", leader: "Server", *,
                    name_differs: bool, what: str) -> None:
    """The leader's pending restart (POST /restart; all of it when cluster_name differs), waited for until it
    leads and runs with nothing pending; its time in ``restart_s``."""
    t2 = time.monotonic()
    ops_patroni.run_restart(host, params, leader, only_pending=not name_differs)
    ops_patroni.wait_for_member(hosts.servers, params, leader.name,
                                lambda m: m.is_leader and m.state in dp.RUNNING_STATES and not m.pending_restart,
                                what=f"{leader.name} running after its restart", timeout=120)
    res.timings["restart_s"] = round(time.monotonic() - t2, 1)
    res.outcomes.append(Outcome(what, True, False, actions=["POST /restart"]))


def _hand_over(res: HaResult, hosts: HaHosts, host: "HostLike", params: "Params", server: "Server", *,
               dry_run: bool) -> None:
    """A member that is not the leader handed to Patroni: its manual recovery settings reset (Patroni writes its
    own into postgresql.conf; postgresql.auto.conf's would win over them), PostgreSQL stopped, Patroni started
    (it starts the cluster again as its replica, rewinds it or rebuilds it), then streaming."""
    t1 = time.monotonic()
    if not isinstance(host, AbsentHost) and pg_cluster.get_cluster_running(host, params):
        psql = pg_cluster.get_psql(host, params)
        seen = Changes(host)
        psql.execute(sql.SQL("ALTER SYSTEM RESET primary_conninfo"))
        psql.execute(sql.SQL("ALTER SYSTEM RESET primary_slot_name"))
        ClusterControl.of(host, params).stop("fast", timeout=180)
        res.outcomes.append(seen.outcome(f"{server.name} handed to Patroni",
                                         actions=["ALTER SYSTEM RESET primary_conninfo, primary_slot_name",
                                                  "pg_ctlcluster stop (Patroni starts it)"]))
    res.outcomes.append(ops_patroni.ensure_patroni_running(host, params))
    if not dry_run:
        ops_patroni.wait_for_member(hosts.servers, params, server.name,
                                    lambda m: m.state in dp.RUNNING_STATES and m.lag is not None,
                                    what=f"{server.name} streaming under Patroni", timeout=300)
        res.timings[f"{server.name}_streaming_s"] = round(time.monotonic() - t1, 1)


def _finish(res: HaResult, hosts: HaHosts, servers: Mapping[str, "HostLike"], params: "Params", leader: "Server",
            shape: ServerShape, *, dry_run: bool, restart_approved: Callable[[], bool],
            echo: Callable[[str], None]) -> HaResult:
    """The leader's pending restart (behind the gate), then Patroni's dynamic configuration as params say."""
    host = servers[leader.name]
    status = ops_patroni.get_member_status(host, params, leader) if not isinstance(host, AbsentHost) else None
    # Patroni writes cluster_name (= its scope) into its postgresql.conf but shows the restart pending only
    # after a reload: asked of PostgreSQL directly
    name_differs = status is not None and _name_differs(host, params)
    res.restart_pending = bool(status and status.pending_restart) or name_differs
    if res.restart_pending and dry_run:
        res.outcomes.append(Outcome(f"restart of {leader.name} under Patroni (gate {RESTART_GATE})", True, True,
                                    actions=["POST /restart on the leader"]))
    elif res.restart_pending:
        if not restart_approved():
            echo(f"{leader.name} leads under Patroni; its restart waits for the gate {RESTART_GATE}")
            return res
        _restart_leader(res, hosts, host, params, leader, name_differs=name_differs,
                        what=f"{leader.name} restarted under Patroni")
    res.outcomes.append(ops_patroni.ensure_dcs_config(host, params, leader, shape))
    if not dry_run:
        # first streaming, then the sync standby (Patroni names it from pg_stat_replication). After the leader's
        # restart a replica reconnects within wal_retrieve_retry_interval, replaying from the
        # archive meanwhile (Patroni 3.0.4 shows 'in archive recovery'): the step's checks want it streaming
        max_lag = dp.patroni_params(params).maximum_lag_on_failover
        for s in params.servers:
            if s.name != leader.name:
                ops_patroni.wait_for_member(hosts.servers, params, s.name,
                                            lambda m: m.state in dp.RUNNING_STATES and m.lag is not None
                                            and m.lag <= max_lag, what=f"{s.name} streaming", timeout=90)
    if not dry_run and dp.patroni_params(params).synchronous_mode and len(params.servers) > 1:
        t3 = time.monotonic()
        ops_patroni.wait_for_sync_standby(hosts.servers, params, timeout=90)
        res.timings["sync_standby_s"] = round(time.monotonic() - t3, 1)
    # backups from the standby (pgbackrest.backup_standby): both TLS servers, then pg2 in both files
    res.outcomes += ops_pgbackrest_server.ensure_backup_standby(servers, params)
    return res


def _name_differs(host: "HostLike", params: "Params") -> bool:
    """Whether the running PostgreSQL on *host* has another ``cluster_name`` than Patroni's scope (a restart makes
    it the scope; step 02 under Patroni writes the scope from the start, so a new pair never needs one)."""
    if isinstance(host, AbsentHost) or not pg_cluster.get_cluster_running(host, params):
        return False
    current = pg_cluster.get_psql(host, params).value("SELECT current_setting('cluster_name') AS v")
    return bool(current != dp.patroni_params(params).scope)


def _leader(hosts: HaHosts, params: "Params") -> "Server":
    view = ops_patroni.get_cluster(hosts.servers, params)
    if view is None or view.leader is None:
        raise SafetyCheckFailed("Patroni runs but the cluster has no leader", hint="`hcbpg status` shows each member; "
                                "step 11 reports a failover.")
    return params.server(view.leader.name)


def get_plan(hosts: HaHosts, params: "Params", secrets: PatroniSecrets, shape: ServerShape) -> HaResult:
    """What the step would change (nothing is changed)."""
    return setup_ha(hosts, params, secrets, shape, allow_destructive=params.allow_destructive, dry_run=True)


def apply(rb: "Run", hosts: HaHosts, secrets: PatroniSecrets, shape: ServerShape, plan: HaResult) -> HaResult:
    """Set high availability up for real (a dry run tracks the plan); the restart of the primary is asked at
    the gate only when Patroni adopts the pair in this run."""
    if rb.dry_run:
        rb.track(plan.outcomes, show=False)
        return plan

    def approved() -> bool:
        rb.gate("restart-primary-under-patroni",
                "Restart the primary once under Patroni (a few seconds without writes; the replica streams again "
                "at once)?")
        return True

    with manual._bucardo_paused(hosts.servers, rb.params, manual.PlannedOutcomes(
            rb.params.primary.name, [o for o in plan.outcomes if o.changed])):
        result = setup_ha(hosts, rb.params, secrets, shape, allow_destructive=rb.params.allow_destructive,
                          dry_run=False, restart_approved=approved)
    rb.track(result.outcomes)
    return result


def get_cluster(hosts: HaHosts, params: "Params") -> ClusterView | None:
    return ops_patroni.get_cluster(hosts.servers, params)


def show_cluster(hosts: HaHosts, params: "Params") -> None:
    """The cluster the way ``patronictl list`` shows it."""
    view = ops_patroni.get_cluster(hosts.servers, params)
    if view is None:
        print("no member's Patroni answers")
        return
    show_table(view.rows())
    if view.paused:
        print("maintenance mode: paused (no automatic failover)")


def check_all(hosts: HaHosts, params: "Params", before: Mapping[str, Any]) -> list[Check]:
    """etcd's members and quorum; the cluster (a leader, the replica streaming, the sync standby); the system
    identifiers unchanged by the adoption; pgBackRest's check on the leader."""
    out: list[Check] = []
    first = next((h for h in hosts.members().values() if h is not None), None)
    if first is not None:
        out += ops_etcd.check_etcd(first, params)
    view = ops_patroni.get_settled_cluster(hosts.servers, params)
    out += dp.check_cluster(view, params, statuses=ops_patroni.get_member_statuses(hosts.servers, params))
    ids = {n: _sysid(h, params) for n, h in hosts.servers.items() if h is not None}
    same = len(set(ids.values())) == 1
    unchanged = all(before.get(n) in (None, v) for n, v in ids.items())
    out.append(Check("one system identifier, unchanged", "pass" if same and unchanged else "fail",
                     ", ".join(f"{n} {v}" for n, v in ids.items())))
    if view is not None and view.leader is not None and params.pgbackrest is not None:
        leader_host = hosts.servers.get(view.leader.name)
        if leader_host is not None:
            leader = params.server(view.leader.name)
            out.append(pgbackrest.check_stanza(leader_host, params, leader, archiving=True))
    return out


def get_topology_record(hosts: HaHosts, params: "Params") -> dict[str, Any]:
    view = ops_patroni.get_cluster(hosts.servers, params)
    return dp.topology_record(view) if view is not None else {"primary": None, "manager": "patroni"}
