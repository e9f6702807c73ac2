"""What each server is right now and who is primary (pure): :class:`ServerState` as
:mod:`hcbpg.ops.topology` reads it from the live servers, the topology derived from all of them
(:func:`plan_topology`), and the wipe-safety plan for a rebuild (:func:`plan_replica_rebuild`): a
data directory is only replaced when the run allows destructive steps, the server is not the
current primary, and it is in recovery, or holds nothing but the default databases and no clients,
or is named by ``replication.allow_wipe_host``."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from hcbpg.desired.replication import replication_params, slot_name
from hcbpg.errors import SafetyCheckFailed
from hcbpg.pg.conninfo import parse_conninfo

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params


#: databases every fresh cluster has; anything else means the cluster holds data
DEFAULT_DATABASES = ("postgres", "template0", "template1")


#: OIDs of the default databases' directories under base/ (PostgreSQL 15: template1, template0, postgres)
DEFAULT_DATABASE_OIDS = ("1", "4", "5")


@dataclass
class ServerState:
    """What one server's PostgreSQL is right now (live when running, from disk when stopped)."""

    name: str
    private_ip: str
    reachable: bool = True
    cluster_exists: bool = False
    running: bool = False
    pgdata: str | None = None
    #: pg_is_in_recovery() when running; standby.signal on disk when stopped; None: unknown
    in_recovery: bool | None = None
    standby_signal: bool = False
    #: non-default databases (names when running, "oid N" when stopped)
    databases: list[str] = field(default_factory=list)
    client_connections: int = 0
    system_identifier: str | None = None
    timeline: int | None = None
    #: pg_controldata's "Database cluster state" (stopped clusters)
    control_state: str | None = None
    #: wal receiver (replicas): status, sender host, slot
    receiver_status: str | None = None
    receiver_host: str | None = None
    receiver_slot: str | None = None
    #: recovery settings in force or on disk
    primary_conninfo: str = ""
    primary_slot_name: str = ""
    #: application_name of each replica streaming from this server
    streaming_to: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Topology:
    """Which server is primary right now and which are (or should become) its replicas."""

    primary: str | None
    replicas: list[str]
    unreachable: list[str]
    #: how the primary was chosen, for the operator
    reason: str
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON-safe form steps record as ``topology``."""
        return {"primary": self.primary, "replicas": self.replicas, "unreachable": self.unreachable,
                "reason": self.reason, "discovered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "servers": self.servers}


def plan_topology(states: Sequence[ServerState], params: "Params") -> Topology:
    """The current primary among *states* (pure).

    Candidates are running servers not in recovery.  Among several, the highest timeline wins
    (a promotion starts a new one), then the one holding non-default databases, then the one
    with replicas streaming from it, then the params' primary (the intended initial layout).
    Two candidates with data on the same timeline is a split brain: refused.
    """
    summary = {s.name: {"reachable": s.reachable, "running": s.running, "in_recovery": s.in_recovery,
                        "timeline": s.timeline, "databases": len(s.databases),
                        "streaming_to": s.streaming_to} for s in states}
    unreachable = [s.name for s in states if not s.reachable]
    cands = [s for s in states if s.running and s.in_recovery is False]
    intended = params.primary.name
    if not cands:
        return Topology(None, [s.name for s in states], unreachable,
                        "no running server is out of recovery: there is no primary right now", summary)

    def rank(s: ServerState) -> tuple[int, int, int, int]:
        return (s.timeline or 0, 1 if s.databases else 0, len(s.streaming_to), 1 if s.name == intended else 0)

    cands.sort(key=rank, reverse=True)
    best = cands[0]
    if len(cands) > 1:
        second = cands[1]
        if best.databases and second.databases and rank(best)[:2] == rank(second)[:2]:
            raise SafetyCheckFailed(
                f"split brain: {best.name} and {second.name} both accept writes, both hold data and are on "
                f"the same timeline {best.timeline}; hcbpg cannot tell which one is the primary",
                hint="Stop the one the app does not use (pg_ctlcluster 15 main stop on it), then run the step "
                     "again; nothing was changed.")
        reason = (f"{best.name}: running and not in recovery; preferred over "
                  + ", ".join(s.name for s in cands[1:]) + " (timeline, data, replicas, then params' primary)")
    else:
        reason = f"{best.name}: the only running server not in recovery (timeline {best.timeline})"
    return Topology(best.name, [s.name for s in states if s.name != best.name], unreachable, reason, summary)


@dataclass
class Plan:
    """What making *target* a replica of *primary* takes."""

    target: str
    primary: str
    action: Literal["none", "start", "rebuild"]
    method: Literal["base_backup", "rewind", ""] = ""
    reasons: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    #: why wiping is allowed (the condition that held)
    allowed_by: str = ""

    @property
    def destructive(self) -> bool:
        return self.action == "rebuild"

    def __str__(self) -> str:
        head = {"none": f"{self.target}: already a replica of {self.primary}; nothing to do",
                "start": f"{self.target}: configured as a replica of {self.primary} but stopped: start it",
                "rebuild": f"{self.target}: rebuild as a replica of {self.primary} "
                           f"({self.method.replace('_', ' ')})"}[self.action]
        lines = [head] + [f"  because {r}" for r in self.reasons]
        if self.allowed_by:
            lines.append(f"  allowed: {self.allowed_by}")
        lines += [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)


def _is_replica_of(target: ServerState, primary: ServerState, slot: str) -> tuple[bool, list[str]]:
    """Whether *target* is configured to stream from *primary* through *slot*; else why not."""
    why = []
    if target.in_recovery is not True:
        why.append("it is not in recovery (not a replica)")
    if target.system_identifier and primary.system_identifier and target.system_identifier != primary.system_identifier:
        why.append(f"its data is another cluster (system identifier {target.system_identifier}, "
                   f"primary's {primary.system_identifier})")
    host = parse_conninfo(target.primary_conninfo).get("host")
    if host != primary.private_ip:
        why.append(f"primary_conninfo points at {host or 'nothing'}, not {primary.private_ip}")
    if target.primary_slot_name != slot:
        why.append(f"primary_slot_name is {target.primary_slot_name or 'unset'}, not {slot}")
    if "password" in parse_conninfo(target.primary_conninfo):
        why.append("primary_conninfo holds a password (it must come from the passfile)")
    return not why, why


def plan_replica_rebuild(target: ServerState, params: "Params", target_name: str, allow_destructive: bool, *,
                         primary: ServerState) -> Plan:
    """What it takes to make *target* a streaming replica of *primary*; raises SafetyCheckFailed when
    that needs a wipe that is not allowed (pure: the states were read from the live servers).

    Wiping is allowed only when the run allows destructive steps, the target is not the
    current primary, and one of: it is in recovery; it holds only the default databases and
    has no clients; ``replication.allow_wipe_host`` names it.
    """
    rep = replication_params(params)
    if target_name == primary.name:
        raise SafetyCheckFailed(
            f"refusing to rebuild {target_name} as a replica: it is the current primary "
            f"(running, not in recovery, timeline {primary.timeline})",
            hint="To make it a replica, fail over first (step 11 promotes the replica and rebuilds the old "
                 "primary). Nothing was stopped or deleted.")
    if not target.reachable:
        raise SafetyCheckFailed(f"cannot inspect {target_name}: {target.error or 'unreachable'}",
                                hint="Bring the server back (or fix SSH), then run the step again. Nothing was changed.")
    if not target.cluster_exists:
        raise SafetyCheckFailed(
            f"{target_name} has no PostgreSQL {params.postgres.version}/{params.postgres.cluster} cluster",
            hint="Run step 02 (install PostgreSQL) on it first. Nothing was changed.")
    slot = slot_name(target_name)
    ok, why = _is_replica_of(target, primary, slot)
    if ok and target.running:
        return Plan(target_name, primary.name, "none")
    if ok and not target.running:
        return Plan(target_name, primary.name, "start", reasons=["it is stopped"],
                    steps=[f"start PostgreSQL on {target_name}", "wait until it streams"])
    plan = Plan(target_name, primary.name, "rebuild", reasons=why)
    if not allow_destructive:
        raise SafetyCheckFailed(
            f"refusing to replace the data directory of {target_name} ({target.pgdata}): destructive steps are not "
            f"allowed for this run (allow_destructive: false in params/{params.environment}.yaml); "
            f"{target_name} needs a rebuild because " + "; ".join(why),
            hint="If replacing that data directory is intended, set allow_destructive: true for this run and "
                 "run the step again. Nothing was stopped or deleted.")
    if target.in_recovery:
        plan.allowed_by = ("it is in recovery (a replica)" if target.running
                           else "it is stopped with standby.signal (a replica or a fenced former primary)")
    elif not target.databases and not target.client_connections:
        plan.allowed_by = "it holds only the default databases (postgres, template0, template1) and has no clients"
    elif rep.allow_wipe_host == target_name:
        plan.allowed_by = f"replication.allow_wipe_host names {target_name}"
    elif (not target.running and target.system_identifier == primary.system_identifier
          and (target.timeline or 0) < (primary.timeline or 0)):
        raise SafetyCheckFailed(
            f"refusing to rewind {target_name} ({target.pgdata}): it is a former primary (timeline {target.timeline}; "
            f"{primary.name} is on timeline {primary.timeline}) that was never fenced, so it may hold transactions "
            f"committed after the failover, which a rewind discards",
            hint=f"Save what you need from it first (start it with standby.signal absent on another port, or copy "
                 f"{target.pgdata}); then set replication.allow_wipe_host: {target_name} in "
                 f"params/{params.environment}.yaml and run the step again. Nothing was stopped or deleted.")
    else:
        held = []
        if target.databases:
            held.append(f"databases {', '.join(target.databases)}")
        if target.client_connections:
            held.append(f"{target.client_connections} client connection(s)")
        raise SafetyCheckFailed(
            f"refusing to replace the data directory of {target_name} ({target.pgdata}): it is not in recovery "
            f"and holds {' and '.join(held)}, so it may be a primary in use",
            hint=f"Check that nothing uses {target_name}; if its data may go, set replication.allow_wipe_host: "
                 f"{target_name} in params/{params.environment}.yaml and run the step again. "
                 "Nothing was stopped or deleted.")
    same_cluster = bool(target.system_identifier and target.system_identifier == primary.system_identifier)
    plan.method = "rewind" if same_cluster else "base_backup"
    if plan.method == "rewind":
        plan.steps = [f"stop PostgreSQL on {target_name} (if running) and keep it from starting as a primary "
                      "(standby.signal)",
                      f"pg_rewind {target_name} from {primary.name} (falls back to a new base backup if it fails)",
                      f"write primary_conninfo (no password) and primary_slot_name {slot}",
                      f"start {target_name} and wait until it streams"]
    else:
        plan.steps = [f"stop PostgreSQL on {target_name}",
                      f"delete everything in {target.pgdata}",
                      f"pg_basebackup -R -P -X stream --slot {slot} from {primary.name} ({primary.private_ip})",
                      f"start {target_name} and wait until it streams"]
    return plan


def topology_rows(states: Mapping[str, ServerState], topology: Topology) -> list[dict[str, Any]]:
    """One row per server for the notebook's table: what it is now and what params intended."""
    rows = []
    for name, s in states.items():
        now = ("primary" if name == topology.primary else
               "replica" if s.in_recovery and s.running else
               "unreachable" if not s.reachable else "stopped" if not s.running else "not a replica yet")
        rows.append({"server": name, "now": now, "params role": "", "running": s.running,
                     "in recovery": s.in_recovery, "timeline": s.timeline,
                     "databases": ", ".join(s.databases) or "(defaults)",
                     "streams from": s.receiver_host or "", "streaming to": ", ".join(s.streaming_to)})
    return rows

