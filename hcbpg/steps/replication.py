"""Step 10 (notebook ``10_replication``): every server other than the current primary made its streaming replica.

Roles at runtime.  ``servers[].role`` in params is the *intended initial layout*; after a failover
(step 11) the real roles differ.  The current roles are discovered by asking every server
(:func:`~hcbpg.ops.topology.get_topology`): the primary is the running server that is not in
recovery (on the highest timeline, because a promotion starts a new one); every other server
should be its replica.  This module composes the operations: on the primary the replication
settings, pg_hba, passfile, role, slots and probe table; on each replica its settings, pg_hba,
passfile (and pgBackRest with its schedules), then the rebuild (:func:`~hcbpg.ops.replica.ensure_replica`).
With ``pgbackrest.backup_standby`` the notebook's run then turns backups from the standby on, as step 10 under
Patroni does (:func:`~hcbpg.ops.pgbackrest_server.ensure_backup_standby`: pgBackRest's TLS server on both servers,
then each pgbackrest.conf with the other as pg2).  pg2 is always "the other server", so the files are the same
whichever of the two is primary: after step 11 each still names the other, and a file written while the other's TLS
server did not answer (a failover with the old primary gone) gets its pg2 back from the next run of this step.

A dry run is the same composition on :class:`~hcbpg.adapters.dryrun.DryRunHost` s (an
:class:`~hcbpg.adapters.dryrun.AbsentHost` for a server not there yet): what would change is what
each operation recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.desired import pgbackrest_server as desired_pgbackrest_server
from hcbpg.desired import server as desired_server
from hcbpg.desired.pgbackrest import CONF_PATH, parse_conf
from hcbpg.desired.replication import slot_name
from hcbpg.desired.topology import ServerState, topology_rows
from hcbpg.display import show_table
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import pgbackrest, schedule, topology
from hcbpg.ops import pgbackrest_server as ops_pgbackrest_server
from hcbpg.ops import replication as rep
from hcbpg.ops.replica import ensure_replica
from hcbpg.ops.topology import Topology, get_topology  # noqa: F401 - the notebook's calls
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import online
from hcbpg.steps.targets import connect_servers, lock_environment

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


class PlannedOutcomes(list[Outcome]):
    """Step 10's outcomes in order, knowing which server is the primary and which of them are its own:
    whether Bucardo's daemon must pause is decided from these, not from their text.  *after* (backups from the
    standby: pgBackRest's TLS servers and files, never PostgreSQL) come last and pause nothing."""

    def __init__(self, primary: str, on_primary: Sequence[Outcome], on_replicas: Sequence[Outcome] = (),
                 after: Sequence[Outcome] = ()) -> None:
        super().__init__([*on_primary, *on_replicas, *after])
        self.primary = primary
        self.on_primary = list(on_primary)

    @property
    def primary_changes(self) -> bool:
        """Whether anything changes (or, planned, would change) on the primary."""
        return any(o.changed for o in self.on_primary)


def connect(rb: "Run") -> dict[str, "HostLike | None"]:
    """An open Host per server, None for one SSH cannot reach.

    First the environment's lock in the backup bucket: this step wipes or promotes a server."""
    lock_environment(rb)
    return dict(connect_servers(rb))


def _target(hosts: Mapping[str, "HostLike | None"], name: str, *, dry_run: bool) -> "HostLike":
    """What the operations get for server *name*: its host (a DryRunHost over it on a dry run), or an
    AbsentHost when a dry run cannot reach it (the plan assumes a fresh server); a real run refuses."""
    host = hosts.get(name)
    if host is None:
        if dry_run:
            return AbsentHost(name)
        raise SafetyCheckFailed(f"cannot inspect {name}: no SSH connection",
                                hint="Bring the server back (or fix SSH), then run the step again. Nothing was "
                                     "changed on it.")
    return dry_run_of(host, dry_run)


def primary_outcomes(host: "HostLike", params: "Params", primary: "Server", replicas: Sequence["Server"],
                     password: str) -> list[Outcome]:
    """Step 10 on the primary: settings, pg_hba, passfile, role repuser, a slot per replica, the probe table."""
    psql = pg_cluster.get_psql(host, params)
    out = [pg_config.ensure_settings(host, params, primary, "replication"),
           pg_config.ensure_pg_hba(host, params, primary, extra=desired_server.all_hba_extra(params, primary)),
           rep.ensure_passfile(host, params, primary, password),
           rep.ensure_replication_role(psql, params, password)]
    out += [rep.ensure_slot(psql, params, r) for r in replicas]
    out.append(rep.ensure_no_stale_slots(psql, params, keep=[slot_name(r.name) for r in replicas]))
    out.append(rep.ensure_probe_table(psql))
    return out


def replica_config_outcomes(host: "HostLike", params: "Params", standby: "Server", password: str, *,
                            restart: bool = True) -> list[Outcome]:
    """Step 10 on a replica before (re)building: settings, pg_hba and passfile (all in /etc or ~postgres,
    so they survive the data directory being replaced); with a repository in params, pgBackRest too (its
    ``restore_command`` is the replica's fallback to the archive) and both schedules (backups run only
    where ``pg_is_in_recovery()`` is false, so this one starts taking them when it is promoted).
    With *restart* false the restart archive_mode needs is left to :func:`setup_replication` (after the
    replica is rebuilt or started, which reads the file, and only if it is still pending then)."""
    out = [pg_config.ensure_settings(host, params, standby, "replication"),
           pg_config.ensure_pg_hba(host, params, standby, extra=desired_server.all_hba_extra(params, standby)),
           rep.ensure_passfile(host, params, standby, password)]
    if params.pgbackrest is not None:
        out += pgbackrest.ensure_standby_pgbackrest(host, params, standby, restart=restart)
        out += schedule.ensure_schedules(host, params, standby)
    return out


def setup_replication(hosts: Mapping[str, "HostLike | None"], params: "Params", password: str, *,
                      allow_destructive: bool, dry_run: bool, echo: Callable[[str], None] = print,
                      backup_standby: bool = False) -> tuple[PlannedOutcomes, Topology, dict[str, Any]]:
    """Step 10, whole: discover the current primary, set it up, make every other server its streaming replica.

    *backup_standby* (the manual step's own run; step 10 under Patroni does it after Patroni took the pair over):
    then, once every replica streams, backups from the standby as params say (nothing with
    ``pgbackrest.backup_standby`` off).

    Returns the outcomes, the topology found before any change, and per replica its plan
    (as text) and timings.
    """
    topo, _states = get_topology(hosts, params)
    if topo.primary is None and dry_run and all(hosts.get(s.name) is None for s in params.servers):
        # a plan before provisioning (`hcbpg plan` on a fresh environment): the intended layout
        topo = Topology(params.primary.name, [s.name for s in params.replicas], [s.name for s in params.servers],
                        "no server is reachable yet: planning the intended layout from params", {})
    if topo.primary is None:
        raise SafetyCheckFailed(topo.reason, hint="Start the primary (or promote a replica with step 11), then run "
                                                  "this step again. Nothing was changed.")
    primary = params.server(topo.primary)
    if hosts.get(primary.name) is None and not dry_run:
        raise SafetyCheckFailed(f"cannot reach the primary {primary.name}", hint="Nothing was changed.")
    primary_host = _target(hosts, primary.name, dry_run=dry_run)
    replicas = [params.server(n) for n in topo.replicas]
    on_primary = primary_outcomes(primary_host, params, primary, replicas, password)
    on_replicas: list[Outcome] = []
    results: dict[str, Any] = {}
    for r in replicas:
        host = _target(hosts, r.name, dry_run=dry_run)
        # the restart archive_mode needs waits until the replica is rebuilt or started (which reads the new
        # file): restarting a cluster the rebuild stops and replaces at once is seconds for nothing
        on_replicas += replica_config_outcomes(host, params, r, password, restart=dry_run)
        outcome, plan, result = ensure_replica(host, params, r, primary_host=primary_host, primary=primary,
                                               allow_destructive=allow_destructive, echo=echo)
        echo(str(plan))
        on_replicas.append(outcome)
        if not dry_run and params.pgbackrest is not None:
            # not rebuilt nor started (it streamed already): the restart, if archive_mode still waits for one
            late = pgbackrest.ensure_archiving(host, params, r, archive_mode=True)
            if late.changed:
                on_replicas.append(late)
        if not dry_run:
            # inactive hcbpg slots it carried over from an earlier life (it streams now, so it is running)
            on_replicas.append(rep.ensure_no_stale_slots(pg_cluster.get_psql(host, params), params, keep=[]))
        results[r.name] = {"plan": plan.action, "method": plan.method, **result}
    after: list[Outcome] = []
    if backup_standby:
        # after the replicas stream: pgBackRest's backup-standby needs a standby replaying WAL; every server of
        # params is a replica or the primary here, so each has a target (a dry run plans an AbsentHost's too)
        servers = {s.name: _target(hosts, s.name, dry_run=dry_run) for s in params.servers}
        after = ops_pgbackrest_server.ensure_backup_standby(servers, params)
    return PlannedOutcomes(primary.name, on_primary, on_replicas, after), topo, results


def get_plan(hosts: Mapping[str, "HostLike | None"], params: "Params", password: str
             ) -> tuple[PlannedOutcomes, dict[str, Any]]:
    """What would change on each server, and per replica its plan (as text)."""
    plan, _, planned = setup_replication(hosts, params, password, allow_destructive=params.allow_destructive,
                                         dry_run=True, backup_standby=True)
    return plan, planned


def apply(rb: "Run", hosts: Mapping[str, "HostLike | None"], password: str, plan: PlannedOutcomes,
          planned: dict[str, Any]) -> dict[str, Any]:
    """In a dry run the plan is what is tracked; else set replication up for real.  Per replica: plan and timings."""
    if rb.dry_run:
        rb.track(plan, show=False)
        return planned
    params = rb.params
    with _bucardo_paused(hosts, params, plan):
        outcomes, _, results = setup_replication(hosts, params, password,
                                                 allow_destructive=params.allow_destructive, dry_run=False,
                                                 backup_standby=True)
    rb.track(outcomes)
    return results


def _bucardo_paused(hosts: Mapping[str, "HostLike | None"], params: "Params", plan: PlannedOutcomes) -> Any:
    """With the online transfer this step runs while Bucardo syncs into the primary: its daemon is stopped
    while the primary changes (a restart for the replication settings: it does not survive its database
    going away), and started after. Nothing planned on the primary, or no sync: nothing is stopped."""
    return online.paused_if_syncing(hosts.get(plan.primary), params,
                                    "the primary's changes for replication (a restart)",
                                    changes=plan.primary_changes)


def show_auto_conf(hosts: Mapping[str, "HostLike | None"], params: "Params") -> None:
    """Print each replica's postgresql.auto.conf (where its primary_conninfo lives)."""
    for name in topology.get_topology(hosts, params)[0].replicas:
        host = hosts.get(name)
        if host is not None:
            print(f"postgresql.auto.conf on {name}:\n" + rep.get_auto_conf_text(host, params))


def check_backup_standby(hosts: Mapping[str, "HostLike | None"], params: "Params") -> list[Check]:
    """With ``pgbackrest.backup_standby``, per reachable server: its pgbackrest.conf names the other server as pg2
    and that server's TLS server answers (nothing otherwise).  A warning, never a failure, when not: the backup job
    then takes its backups from the primary, and the next run of step 10 with both servers back writes pg2 again."""
    if not desired_pgbackrest_server.enabled(params):
        return []
    pb = params.pgbackrest
    assert pb is not None  # enabled() says so
    out: list[Check] = []
    for s in params.servers:
        host = hosts.get(s.name)
        other = desired_pgbackrest_server.peer(params, s)
        if host is None or other is None:
            continue  # an unreachable server has its own row (check_all)
        named = parse_conf(host.read_text(CONF_PATH) or "").get(pb.stanza, {}).get("pg2-host")
        if named != other.private_ip:
            out.append(Check("backups from the standby", "warn",
                             f"pgbackrest.conf names no pg2 ({other.name}'s TLS server did not answer when it was "
                             f"written): backups are taken from the primary; run step 10 with {other.name} back",
                             s.name))
        elif not pgbackrest.get_standby_answers(host, params, s):  # server-ping, 5 s of I/O at most
            out.append(Check("backups from the standby", "warn",
                             f"pg2 is {other.name} ({other.private_ip}) but its pgBackRest TLS server does not answer: "
                             "the backup job falls back to the primary; run step 10 again", s.name))
        else:
            out.append(Check("backups from the standby", "pass",
                             f"pg2 {other.name} ({other.private_ip}:{pb.tls_server_port}, TLS) answers", s.name))
    return out


def check_all(hosts: Mapping[str, "HostLike | None"], params: "Params", password: str) -> list[Check]:
    """Step 10's checks for every replica of the current primary (a failing row per unreachable one), and backups
    from the standby (:func:`check_backup_standby`)."""
    topo, states = get_topology(hosts, params)
    primary_host = hosts.get(topo.primary) if topo.primary is not None else None
    if topo.primary is None or primary_host is None:
        return [Check("a primary is running", "fail", topo.reason)]
    primary = params.server(topo.primary)
    out: list[Check] = []
    for name in topo.replicas:
        host = hosts.get(name)
        if host is None:
            # after an unplanned failover the old primary may be gone for good: the pair is not whole,
            # which the operator must see, but the new primary is fine
            out.append(Check("replica reachable", "warn", f"{states[name].error or 'unreachable'}: not a replica "
                             "yet; run step 10 when it is back (or replace it)", name))
            continue
        out += rep.check_replication(primary_host, host, params, params.server(name), primary, password)
    return out + check_backup_standby(hosts, params)


def get_topology_record(hosts: Mapping[str, "HostLike | None"], params: "Params") -> dict[str, Any]:
    """Who is primary now, as recorded for later steps (``topology``)."""
    return topology.get_topology(hosts, params)[0].record()


def show_topology(params: "Params", topology: Topology, states: Mapping[str, ServerState]) -> None:
    """Print how the current primary was chosen and a table of every server."""
    rows = topology_rows(states, topology)
    for r in rows:
        r["params role"] = params.server(r["server"]).role
    print(f"current primary: {topology.primary or 'none'} ({topology.reason})")
    show_table(rows)
