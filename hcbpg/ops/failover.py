"""Failover (step 11, on demand): promote the replica, fence and rejoin the old primary, hand the
operator the new DATABASE_URL and point pgBackRest at the new primary.

Two kinds, told apart automatically from the live topology (:func:`hcbpg.desired.failover.plan_failover`):

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

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import replication as desired_replication
from hcbpg.desired import roles as desired_roles
from hcbpg.desired.failover import FailoverPlan, database_url_path, redacted_database_url, render_database_url
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
from hcbpg.pg import conf as pgconf
from hcbpg.pg import conninfo as conninfo
from hcbpg.secrets import scrub, write_private_file

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params, Server



# fencing, promotion ---------------------------------------------------------------------------------

def run_fence(host: "HostLike", params: "Params", server: "Server", *, planned: bool) -> dict[str, Any]:
    """Stop the old primary (fast when planned, immediate otherwise) and keep it from coming back as a primary.

    Returns pg_controldata's state and final checkpoint location (what the replica must replay).
    """
    cluster = pg_cluster.get_cluster(host, params) or {}
    pgdata = cluster.get("pgdata") or f"/var/lib/postgresql/{params.postgres.version}/{params.postgres.cluster}"
    replica.run_stop(host, params, mode="fast" if planned else "immediate")
    host.put_text(f"{pgdata}/standby.signal", "", mode=0o600, owner="postgres", group="postgres")
    replica.ensure_start_conf(host, params, "manual")
    ctl = topology.get_controldata(host, params, pgdata)
    return {"state": ctl.get("Database cluster state"), "checkpoint_lsn": ctl.get("Latest checkpoint location"),
            "timeline": ctl.get("Latest checkpoint's TimeLineID")}


def run_unfence(host: "HostLike", params: "Params") -> None:
    """start.conf back to auto (the rejoined replica starts with the machine again)."""
    replica.ensure_start_conf(host, params, "auto")


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


# DATABASE_URL (the file) ----------------------------------------------------------------------------------------


def _write_database_url(params: "Params", server: "Server", password: str, *, login: str | None = None) -> Path:
    """Write the full DATABASE_URL to a 0600 file on this machine for the operator (it is never printed)."""
    url = render_database_url(params, server, password, login=login)
    return write_private_file(database_url_path(params), url + "\n")


# pgBackRest on the new primary --------------------------------------------------------------------------

def run_point_backups_at(host: "HostLike", params: "Params", server: "Server", *, archive_mode: bool = True,
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

def run_failover(hosts: Mapping[str, "HostLike | None"], plan: FailoverPlan, params: "Params", *,
                 app_password: str, echo: Callable[[str], None] = print,
                 catch_up_timeout: float | None = None) -> dict[str, Any]:
    """Carry out *plan* (after the gate): fence, promote, check writes, DATABASE_URL. Returns timings and facts.

    Rejoining the old primary and pgBackRest are separate calls (:func:`run_rejoin_old_primary`,
    :func:`run_point_backups_at`) so the notebook shows each.
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
    login, password = get_app_login(new_psql, params, app_password)
    path = _write_database_url(params, new, password, login=login)
    result["database_url"] = redacted_database_url(params, new, login=login)
    result["database_url_file"] = str(path)
    result["downtime_s"] = round(time.monotonic() - t0, 2)
    del t1
    return result


def get_app_login(psql: "PsqlLike", params: "Params", app_password: str) -> tuple[str, str]:
    """(login, password) of the app's login in use on the new primary: after step 14 moved the app to
    its rotation login, the new DATABASE_URL must name that one, not the app role."""
    cfg = desired_roles.roles_config(params)
    login = current_app_login(privileges.get_observed(psql, cfg), cfg)
    if login == cfg.app_role:
        return login, app_password
    return login, privileges.get_role_password(SecretStore(), cfg, login)


def run_rejoin_old_primary(hosts: Mapping[str, "HostLike | None"], params: "Params", plan: FailoverPlan, *,
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
