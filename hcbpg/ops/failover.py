"""Failover (step 11, on demand): promote the replica, fence and rejoin the old primary, hand the
operator the new DATABASE_URL and point pgBackRest at the new primary.

Two kinds, told apart automatically from the live topology (:func:`plan_failover`):

* **switchover** (planned): the primary is up.  It is stopped cleanly first (a clean
  shutdown sends every WAL record, the shutdown checkpoint included, to the streaming
  replica), the replica is promoted once it has replayed the primary's final checkpoint,
  so no committed transaction is lost;
* **failover** (unplanned): the primary is unreachable or not running.  The operator
  confirms at a gate that it is really down and cannot come back as a primary (power it
  off in the Hetzner console when SSH cannot reach it); when SSH still reaches it hcbpg
  fences it itself.  Transactions the replica had not received are lost (asynchronous
  replication): the step reports the replica's replay position.

Fencing: stop PostgreSQL, put ``standby.signal`` in its data directory (if anything
starts it, it starts read-only) and ``manual`` in ``start.conf`` (systemd does not start
it at boot).  The old primary then rejoins as a replica of the new one through
:func:`hcbpg.replication.ensure_replica` (pg_rewind, else a new base backup, with the same
wipe safety as step 10).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from psycopg import sql

from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import replication as desired_replication
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.privileges import current_app_login
from hcbpg.errors import (
    DatabaseError,
    HcbpgError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import pgbackrest as pb
from hcbpg.ops import privileges, replica, schedule, topology
from hcbpg.ops import replication as rep
from hcbpg.outcome import Check, Outcome
from hcbpg.params import home
from hcbpg.pg import conf as pgconf
from hcbpg.pg import conninfo as conninfo
from hcbpg.secrets import register, scrub, write_private_file

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params, Server


# the plan (pure) ----------------------------------------------------------------------------------

@dataclass
class FailoverPlan:
    kind: Literal["switchover", "failover"]
    old_primary: str
    new_primary: str
    old_reachable: bool
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def gate(self) -> str:
        return "switchover" if self.kind == "switchover" else "failover"

    @property
    def question(self) -> str:
        if self.kind == "switchover":
            return (f"Planned switchover: stop {self.old_primary}, promote {self.new_primary}. The app gets errors "
                    f"until DATABASE_URL points at {self.new_primary}. Is the app ready to be repointed?")
        if self.old_reachable:
            return (f"UNPLANNED failover: {self.old_primary} is reachable over SSH but PostgreSQL is not running. "
                    f"hcbpg fences it (stop, standby.signal) and promotes {self.new_primary}; transactions "
                    f"{self.new_primary} had not received are lost. Proceed?")
        return (f"UNPLANNED failover: {self.old_primary} cannot be reached. Power it off (Hetzner console) or "
                f"otherwise make sure it cannot accept writes, then confirm: promote {self.new_primary}; "
                "transactions it had not received are lost.")

    def __str__(self) -> str:
        lines = [f"{self.kind}: {self.old_primary} → {self.new_primary}"]
        lines += [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def plan_failover(topology: topology.Topology, states: Mapping[str, topology.ServerState], params: "Params",
                  *, previous_primary: str | None = None) -> FailoverPlan:
    """Planned switchover when the primary is up, unplanned failover when it is not (pure).

    *previous_primary* (the recorded topology's) names the old primary when no server is
    primary now; else the server that is not a running replica.
    """
    standbys = [s for s in states.values() if s.running and s.in_recovery]
    if topology.primary is not None:
        old = topology.primary
        kind: Literal["switchover", "failover"] = "switchover"
    else:
        others = [n for n in states if n not in {s.name for s in standbys}]
        old = previous_primary if previous_primary in others else (others[0] if others else "")
        if not old:
            raise SafetyCheckFailed("no primary and no server that could have been one: every server is a running "
                                    "replica", hint="Promote one by hand (SELECT pg_promote()) after checking them.")
        kind = "failover"
    candidates = [s for s in standbys if s.name != old]
    if not candidates:
        raise SafetyCheckFailed(
            "no running replica to promote (servers: "
            + ", ".join(f"{n}: {'running' if s.running else 'stopped'}"
                        f"{', in recovery' if s.in_recovery else ''}" for n, s in states.items()) + ")",
            hint="Start the replica (or rebuild it with step 10) first. Nothing was changed.")
    following = [s for s in candidates if conninfo.parse_conninfo(s.primary_conninfo).get("host") ==
                 params.server(old).private_ip]
    new = (following or candidates)[0]
    ostate = states[old]
    plan = FailoverPlan(kind, old, new.name, ostate.reachable)
    if kind == "switchover":
        if new.name not in ostate.streaming_to:
            plan.warnings.append(f"{new.name} is not streaming from {old} right now; the switchover waits for it to "
                                 "replay the final checkpoint and stops if it cannot")
        plan.steps = [f"check {new.name} streams from {old}",
                      f"stop {old} cleanly (fast shutdown) and fence it (standby.signal, start.conf manual)",
                      f"wait until {new.name} has replayed {old}'s shutdown checkpoint (no committed row lost)",
                      f"promote {new.name} (pg_promote) and check it accepts writes",
                      f"write the new DATABASE_URL (host {new.private_ip}) for the operator",
                      f"rejoin {old} as a replica of {new.name} (pg_rewind, else a new base backup)",
                      f"point pgBackRest (archiving, stanza, check, backup) at {new.name}"]
    else:
        fence = (f"fence {old}: stop PostgreSQL (immediate), standby.signal, start.conf manual" if ostate.reachable
                 else f"{old} is unreachable: the operator fences it (power off) and confirms at the gate")
        plan.steps = [fence,
                      f"promote {new.name} (pg_promote) and check it accepts writes",
                      f"write the new DATABASE_URL (host {new.private_ip}) for the operator",
                      (f"rejoin {old} as a replica of {new.name} (pg_rewind, else a new base backup)" if ostate.reachable
                       else f"rejoin {old} later: run step 10 when it is back (it is rebuilt as a replica)"),
                      f"point pgBackRest (archiving, stanza, check, backup) at {new.name}"]
        plan.warnings.append("asynchronous replication: transactions the replica had not received are lost")
    return plan


# fencing, promotion ---------------------------------------------------------------------------------

start_conf_path = replica.start_conf_path


def run_fence(host: "HostLike", params: "Params", server: "Server", *, planned: bool) -> dict[str, Any]:
    """Stop the old primary (fast when planned, immediate otherwise) and keep it from coming back as a primary.

    Returns pg_controldata's state and final checkpoint location (what the replica must replay).
    """
    cluster = pg_cluster.get_cluster(host, params) or {}
    pgdata = cluster.get("pgdata") or f"/var/lib/postgresql/{params.postgres.version}/{params.postgres.cluster}"
    replica.run_stop(host, params, mode="fast" if planned else "immediate")
    host.put_text(f"{pgdata}/standby.signal", "", mode=0o600, owner="postgres", group="postgres")
    replica.set_start_conf(host, params, "manual")
    ctl = topology.get_controldata(host, params, pgdata)
    return {"state": ctl.get("Database cluster state"), "checkpoint_lsn": ctl.get("Latest checkpoint location"),
            "timeline": ctl.get("Latest checkpoint's TimeLineID")}


def run_unfence(host: "HostLike", params: "Params") -> None:
    """start.conf back to auto (the rejoined replica starts with the machine again)."""
    replica.set_start_conf(host, params, "auto")


def run_promote(psql: "PsqlLike", *, timeout: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> float:
    """pg_promote on the replica, wait until it is out of recovery; forget its primary_conninfo. Returns seconds."""
    started = time.monotonic()
    psql.execute(sql.SQL("SELECT pg_promote(true, {})").format(sql.Literal(int(timeout))))
    while psql.value("SELECT pg_is_in_recovery() AS r"):
        if time.monotonic() - started > timeout:
            raise WaitTimeout(f"{psql.host.name} is still in recovery {timeout:.0f}s after pg_promote",
                              hint="Look at its server log (/var/log/postgresql/).")
        sleep(0.1)
    took = time.monotonic() - started
    # a primary ignores these, but pg_rewind and base backups copy postgresql.auto.conf to the next replica;
    # the checkpoint writes the new timeline into pg_control, which pg_rewind reads from its source
    psql.execute(["ALTER SYSTEM RESET primary_conninfo", "ALTER SYSTEM RESET primary_slot_name",
                  "SELECT pg_reload_conf()", "CHECKPOINT"])
    return took


def check_accepts_writes(psql: "PsqlLike", server: "Server") -> Check:
    """The new primary is out of recovery and a row can be written."""
    try:
        in_rec = psql.value("SELECT pg_is_in_recovery() AS r")
        token = rep.run_write_probe_row(psql)
    except (DatabaseError, HcbpgError) as exc:
        return Check("new primary accepts writes", "fail", scrub(str(exc))[-200:], server.name)
    return Check.of("new primary accepts writes", not in_rec, f"wrote probe row {token[:8]}…; in recovery: {in_rec}",
                    server.name)


# DATABASE_URL ----------------------------------------------------------------------------------------

def render_database_url(params: "Params", server: "Server", password: str, *, login: str | None = None) -> str:
    """The app's DATABASE_URL on *server* for *login* (default: the app role), built like step 09's
    (``sslmode=verify-full`` with the environment's CA); registered with the scrubber."""
    register(password)
    return register(conninfo.render_role_url(params, login or params.postgres.app_role, password,
                                             host=server.private_ip, query=desired_tls.client_tls(params)))


def redacted_database_url(params: "Params", server: "Server", *, login: str | None = None) -> str:
    return conninfo.redact_url(render_database_url(params, server, "[secret]", login=login))


def database_url_path(params: "Params") -> Path:
    """Where the new DATABASE_URL is written for the operator: outside outputs/, 0600."""
    base = Path(os.environ.get("HCBPG_STATE_DIR") or (home() / ".hcbpg"))
    return base / "database-url" / f"{params.environment}.url"


def write_database_url(params: "Params", server: "Server", password: str, *, login: str | None = None) -> Path:
    """Write the full DATABASE_URL to a 0600 file for the operator (it is never printed)."""
    url = render_database_url(params, server, password, login=login)
    return write_private_file(database_url_path(params), url + "\n")


# pgBackRest on the new primary --------------------------------------------------------------------------

def point_backups_at(host: "HostLike", params: "Params", server: "Server", *, archive_mode: bool = True,
                     full_backup: bool = True) -> tuple[list[Outcome], list[Check]]:
    """pgBackRest on the new primary: config, archiving, stanza, check, a backup (full when the repository
    has none, else incremental).

    Uses :mod:`hcbpg.pgbackrest` (steps 05/08).  The repository names the cluster, not the
    server: the new primary archives and backs up into the same stanza on its new timeline
    (the stanza's system identifier is the same: a physical replica), so point-in-time
    recovery to a moment before the failover still works.
    """
    if params.pgbackrest is None:
        return [], [Check("pgBackRest on the new primary", "warn", "no pgbackrest section in params", server.name)]
    version = pb.get_version(host)
    outcomes = [pb.ensure_paths(host, specs=desired_backups.paths_for(params)),
                pb.ensure_pgbackrest_conf(host, params, server, version=version),
                pb.ensure_archiving(host, params, server, archive_mode=archive_mode),
                pb.ensure_stanza(host, params)]
    outcomes += schedule.ensure_schedules(host, params, server)
    checks = [pb.check_stanza(host, params, server, archiving=archive_mode)]
    if full_backup:
        o, row = pb.ensure_full_backup(host, params)
        outcomes.append(o)
        if not o.changed:
            # the repository already had a full backup (of an earlier term as primary): prove that backing
            # up works from this primary now, cheaply
            incr = pb.run_backup(host, params, type="incr")
            outcomes.append(Outcome(f"incremental backup on {server.name}", True,
                                    actions=[f"took {incr.label} (proves backups work on the new primary)"]))
        checks += desired_backups.check_backups(pb.get_backups(host, params), server)
    return outcomes, checks


def get_archive_mode(host: "HostLike | None", params: "Params") -> bool | None:
    """archive_mode as hcbpg wrote it on *host* (None when unknown): the new primary archives like the old one."""
    if host is None:
        return None
    try:
        text = host.read_text(desired_backups.archiving_path(params))
    except HcbpgError:
        return None
    if not text:
        return None
    value = pgconf.parse_settings(text).get("archive_mode")
    return None if value is None else value.strip("'") in ("on", "true", "1", "yes")


# the whole failover ------------------------------------------------------------------------------------

def run_failover(plan: FailoverPlan, hosts: Mapping[str, "HostLike | None"], params: "Params", *,
                 app_password: str, echo: Callable[[str], None] = print,
                 catch_up_timeout: float | None = None) -> dict[str, Any]:
    """Carry out *plan* (after the gate): fence, promote, check writes, DATABASE_URL. Returns timings and facts.

    Rejoining the old primary and pgBackRest are separate calls (:func:`rejoin_old_primary`,
    :func:`point_backups_at`) so the notebook shows each.
    """
    r = desired_replication.replication_params(params)
    timeout = catch_up_timeout or r.catch_up_timeout_s
    old, new = params.server(plan.old_primary), params.server(plan.new_primary)
    old_host, new_host = hosts.get(old.name), hosts.get(new.name)
    if new_host is None:
        raise SafetyCheckFailed(f"cannot reach {new.name}, the replica to promote", hint="Nothing was changed.")
    new_psql = pg_cluster.get_psql(new_host, params)
    result: dict[str, Any] = {"kind": plan.kind, "old_primary": old.name, "new_primary": new.name}
    t0 = time.monotonic()
    if old_host is not None:
        fence = run_fence(old_host, params, old, planned=plan.kind == "switchover")
        result["fence"] = fence
        echo(f"[{old.name}] fenced: {fence['state']}, final checkpoint {fence['checkpoint_lsn']}")
        if plan.kind == "switchover":
            if fence["state"] != "shut down":
                raise SafetyCheckFailed(
                    f"{old.name} did not shut down cleanly ({fence['state']}); a switchover cannot promise that no "
                    "committed transaction is lost", hint="Run step 11 again: it now treats this as a failover.")
            waited = rep.wait_for_catch_up(new_psql, fence["checkpoint_lsn"], timeout=timeout)
            result["caught_up_s"] = round(waited, 2)
            echo(f"[{new.name}] replayed {old.name}'s shutdown checkpoint after {waited:.2f}s")
    result["replayed_lsn"] = new_psql.value("SELECT pg_last_wal_replay_lsn()::text AS l")
    t1 = time.monotonic()
    result["promote_s"] = round(run_promote(new_psql), 2)
    echo(f"[{new.name}] promoted in {result['promote_s']}s")
    login, password = app_login_now(new_psql, params, app_password)
    path = write_database_url(params, new, password, login=login)
    result["database_url"] = redacted_database_url(params, new, login=login)
    result["database_url_file"] = str(path)
    result["downtime_s"] = round(time.monotonic() - t0, 2)
    del t1
    return result


def app_login_now(psql: "PsqlLike", params: "Params", app_password: str) -> tuple[str, str]:
    """(login, password) of the app's login in use on the new primary: after step 14 moved the app to
    its rotation login, the new DATABASE_URL must name that one, not the app role."""
    cfg = desired_roles.roles_config(params)
    login = current_app_login(privileges.get_observed(psql, cfg), cfg)
    if login == cfg.app_role:
        return login, app_password
    return login, privileges.get_role_password(SecretStore(), cfg, login)


def promotion_outcome(plan: FailoverPlan, result: Mapping[str, Any]) -> Outcome:
    """The promotion as an Outcome for the step's record (the DATABASE_URL redacted, its file named)."""
    return Outcome(f"{plan.new_primary} promoted ({plan.kind} from {plan.old_primary})", True,
                   actions=[f"fenced {plan.old_primary}: {result.get('fence', {}).get('state', 'unreachable')}",
                            f"promoted in {result.get('promote_s')}s",
                            f"new DATABASE_URL {result.get('database_url')} written to {result.get('database_url_file')}"])


def rejoin_old_primary(hosts: Mapping[str, "HostLike | None"], params: "Params", plan: FailoverPlan, *,
                       allow_destructive: bool, echo: Callable[[str], None] = print) -> tuple[list[Outcome], dict[str, Any]]:
    """The old primary becomes a replica of the new one: slot on the new primary, then ensure_replica
    (pg_rewind or base backup, same wipe safety as step 10), start.conf back to auto, stale slots dropped."""
    old, new = params.server(plan.old_primary), params.server(plan.new_primary)
    old_host, new_host = hosts.get(old.name), hosts.get(new.name)
    if old_host is None:
        return [Outcome(f"{old.name} as a replica of {new.name}", False,
                        actions=[f"{old.name} is unreachable: run step 10 when it is back"])], {"skipped": "unreachable"}
    assert new_host is not None
    new_psql = pg_cluster.get_psql(new_host, params)
    outcomes = [rep.ensure_slot(new_psql, params, old)]
    outcome, rplan, result = replica.ensure_replica(old_host, params, old, primary_host=new_host, primary=new,
                                                    allow_destructive=allow_destructive, echo=echo)
    echo(str(rplan))
    outcomes.append(outcome)
    run_unfence(old_host, params)
    # inactive hcbpg slots the old primary carried over from its term, then the new primary's stale ones
    outcomes.append(rep.ensure_no_stale_slots(pg_cluster.get_psql(old_host, params), params, keep=[]))
    outcomes.append(rep.ensure_no_stale_slots(new_psql, params, keep=[desired_replication.slot_name(old.name)]))
    return outcomes, result
