"""Bucardo on the primary, for the online transfer (``source.transfer: online``): its packages, files and
control database, the forward sync from the source, the daemon started, stopped or paused, the lag
and the drift guard.  The window is in :mod:`~hcbpg.ops.migration.window`, the way back and the
clean-up in :mod:`~hcbpg.ops.migration.wayback`; the steps that compose them in :mod:`hcbpg.steps.online`.

Where Bucardo runs, and why: **on the primary**.  Its control database needs a superuser and
plperlu, which the primary has and Heroku never gives; the rows it copies end on the primary over
the Unix socket (no second network hop, as a jumpbox or scratch server would add); on the source it
only adds what any trigger-based sync must (a trigger per table, delta tables, one reading session),
the same wherever the daemon runs.  The primary carries no traffic until the window, so its CPU is
free for the copy; the control database (``bucardo``) and everything else of Bucardo are removed
by the clean-up (:func:`~hcbpg.ops.migration.wayback.run_cleanup`).

How it connects, with no secret on a command line: the source with the app's Heroku credentials
(``source.url``) through a 0600 libpq service file on tmpfs (:mod:`~hcbpg.ops.migration.bucardo_service`),
``verify-full`` against ``source.ca_file`` when it is given and ``require_auth=scram-sha-256`` when the
primary's libpq is 16 or later; the primary and the control database over the Unix socket as
postgres (peer).  The role ``bucardo`` that Bucardo's schema creates has no password: it cannot log
in over the network.

The rows: the schema is dumped from the source (``pg_dump --schema-only`` in a snapshot, before
Bucardo's triggers exist) and restored as in the other transfers; then Bucardo's triggers record
every change from the moment the tables are added, and the sync's ``onetimecopy`` (or the streamed
initial copy, in a snapshot taken after the triggers exist) copies every table, so nothing written
after the triggers exist can be lost.  Tables without a key cannot be synced: small ones are copied
whole inside the window, large ones refuse the mode (:func:`hcbpg.pg.bucardo.plan_sync`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.errors import SafetyCheckFailed, WaitTimeout
from hcbpg.ops import packages as pkg_ops
from hcbpg.ops.migration import bucardo_service as bs
from hcbpg.ops.migration.source import get_target
from hcbpg.ops.migration.verify import get_inventory
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import bucardo as bp
from hcbpg.pg.inventory import Inventory, compare_objects
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result, SourceLike
    from hcbpg.adapters.psql import PsqlEndpoint
    from hcbpg.params import Params

__all__ = ["HOME", "RC", "SCHEMA_FILE", "check_schema_unchanged", "ensure_bucardo", "ensure_forward_sync",
           "ensure_running", "get_control", "get_drift", "get_lag", "get_state", "get_sync_plan", "get_syncing",
           "get_wraparound", "run_activate_forward_sync", "run_add_sync", "run_bucardo", "run_paused", "run_stop",
           "wait_for_daemon", "wait_for_initial_copy", "wait_for_no_wraparound_vacuum"]

#: Bucardo's working directory on the primary (its rc file, pid and log files)
HOME = "/var/lib/postgresql/hcbpg-bucardo"
RC = f"{HOME}/bucardorc"
SCHEMA_FILE = "/usr/share/bucardo/bucardo.schema"
#: the daemon's pid file (it runs while this names a live process)
PID_FILE = f"{HOME}/run/bucardo.mcp.pid"


def run_bucardo(host: "HostLike", args: str, *, display: str | None = None, check: bool = True,
            timeout: float = 600) -> "Result":
    """The bucardo command line on the primary, as postgres, with our rc file (never a secret in *args*)."""
    return host.run(f"cd {HOME} && bucardo --bucardorc {RC} --batch {args}", sudo_user="postgres", check=check,
                    timeout=timeout, display=display or f"bucardo {args}")


def get_control(host: "HostLike", params: "Params") -> "PsqlEndpoint":
    """Bucardo's control database on the primary."""
    return get_target(host, params, bp.CONTROL_DB)


def get_state(host: "HostLike", params: "Params") -> dict[str, Any]:
    """Bucardo on the primary: packages, control database, syncs and whether the daemon runs."""
    installed = pkg_ops.get_installed_packages(host, bp.package_names(params.postgres.version))
    psql = get_target(host, params, "postgres")
    has_db = bool(psql.json(sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = {})").format(
        sql.Literal(bp.CONTROL_DB))))
    syncs: dict[str, Any] = {}
    if has_db:
        syncs = get_control(host, params).json(
            "SELECT coalesce(json_object_agg(name, json_build_object('onetimecopy', onetimecopy, 'status', status)), "
            "'{}') FROM bucardo.sync") or {}
    running = host.probe(f"test -s {PID_FILE} && kill -0 $(cat {PID_FILE})").ok if has_db else False
    return {"packages": installed, "control_db": has_db, "syncs": syncs, "running": running}


def _running(host: "HostLike", params: "Params") -> bool:
    """``get_state(...)["running"]`` (its control database there and its pid alive) in one round trip, two
    while it runs: what the daemon's waits poll, without the packages and syncs read each time."""
    if not host.probe(f"test -s {PID_FILE} && kill -0 $(cat {PID_FILE})").ok:
        return False
    return bool(get_target(host, params, "postgres").json(sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = {})").format(sql.Literal(bp.CONTROL_DB))))


def get_syncing(host: "HostLike", params: "Params") -> bool:
    """The online transfer's forward sync exists on *host* (06b ran; the window has not ended it)."""
    src = params.source
    if src is None or src.transfer != "online":
        return False
    return bp.FORWARD_SYNC in get_state(host, params)["syncs"]


def get_sync_plan(source: "SourceLike", params: "Params") -> bp.SyncPlan:
    """Read the source: what Bucardo can sync, what is copied inside the window, what is refused."""
    src = params.source
    assert src is not None
    with source:
        data = source.json(bp.SYNCABILITY_SQL)
    return bp.plan_sync(data, window_copy_max_rows=src.online.window_copy_max_rows)


# the daemon ---------------------------------------------------------------------------------------

def wait_for_daemon(host: "HostLike", params: "Params", *, running: bool, timeout: float) -> None:
    """Until the daemon runs (or is gone); WaitTimeout naming its log."""
    if host.dry_run:
        # dry run: the start or stop was recorded, not run: the daemon's state cannot move
        return
    for _ in polling_loop(timeout, interval=0.5):
        if _running(host, params) == running:
            return
    what = "Bucardo running" if running else "Bucardo stopped"
    raise WaitTimeout(f"on {host.name}: {'Bucardo did not start' if running else f'Bucardo did not stop within {timeout:.0f}s'}",
                      what=what, timeout=timeout, hint=f"Read {HOME}/log/log.bucardo on {host.name}.")


def ensure_running(host: "HostLike", params: "Params") -> Outcome:
    """The Bucardo daemon runs (started with its log under HOME); refused when its service file is gone."""
    seen = Changes(host)
    what = f"Bucardo's daemon on {host.name}"
    if _running(host, params):
        return seen.outcome(what)
    if not host.exists(bs.SERVICE_FILE):
        raise SafetyCheckFailed(f"on {host.name}: Bucardo's service file for the source ({bs.SERVICE_FILE}, on tmpfs) "
                                "is gone: did the server restart?",
                                hint="Run 06b again: it writes the file and starts Bucardo, whose sync goes on "
                                     "where it stopped (its triggers kept recording on the source).")
    run_bucardo(host, f"start --log-destination {HOME}/log", display="bucardo start")
    wait_for_daemon(host, params, running=True, timeout=30)
    return seen.outcome(what)


def run_stop(host: "HostLike", params: "Params") -> bool:
    """Stop the daemon (waits for it to be gone); True when it ran."""
    if not _running(host, params):
        return False
    run_bucardo(host, "stop", display="bucardo stop")
    wait_for_daemon(host, params, running=False, timeout=60)
    return True


@contextmanager
def run_paused(host: "HostLike", params: "Params", why: str) -> Iterator[None]:
    """Bucardo's daemon stopped while *why* happens on the primary (a restart: it does not survive its
    database going away; the fingerprint and the first backup: nothing may write between them), then
    started again. Its triggers keep recording on the source meanwhile; it catches up after."""
    run_stop(host, params)
    print(f"Bucardo stopped on {host.name} for {why} (its triggers keep recording on the source)")
    try:
        yield
    finally:
        ensure_running(host, params)
        print(f"Bucardo started again on {host.name}: it applies what the source recorded meanwhile")


# before the window --------------------------------------------------------------------------------

def ensure_bucardo(host: "HostLike", params: "Params", source: "SourceLike") -> list[Outcome]:
    """Bucardo's packages, its directory and rc file, the source's service file, the control database."""
    out: list[Outcome] = []
    state = get_state(host, params)
    wanted = bp.package_names(params.postgres.version)
    seen = Changes(host)
    missing = [p for p in wanted if p not in state["packages"]]
    if missing:
        host.run(f"{pkg_ops.APT_ENV} apt-get update -q", timeout=600)
        host.run(f"{pkg_ops.APT_ENV} apt-get install -y -q --no-install-recommends {' '.join(missing)}",
                 timeout=1800)
    out.append(seen.outcome(f"packages {', '.join(wanted)} on {host.name}"))
    seen = Changes(host)
    service = bs.get_service_text(host, source)
    if not (host.read_text(RC, sudo_user="postgres") == bp.render_rc() and host.exists(f"{HOME}/log")):
        for d in (HOME, f"{HOME}/run", f"{HOME}/log"):
            ensure_dir(host, d, mode=0o700, owner="postgres")  # in the postgres user's home
        host.put_text(RC, bp.render_rc(), mode=0o600, owner="postgres")
    bs.ensure_service(host, source)
    out.append(seen.outcome(f"Bucardo's files on {host.name}", actions=[
        f"{HOME} (0700 postgres) with run/ and log/", f"{RC} (control database over the socket, peer)",
        f"{bs.SERVICE_FILE} (0600 postgres, on tmpfs: the source's connection, "
        + ", ".join(f"{k}={v}" for k, v in bp.parse_service_settings(service).items())
        + f"; removed by the clean-up), {bs.SERVICE_LINK} a symlink to it"]))
    seen = Changes(host)
    if not state["control_db"]:
        _install_control_db(host)
    out.append(seen.outcome(f"Bucardo control database {bp.CONTROL_DB} on {host.name}", actions=[
        f"psql -f {SCHEMA_FILE} as postgres (creates role bucardo without a password, database bucardo, plperlu)",
        f"bucardo set piddir/reason_file/... under {HOME}"]))
    return out


def _install_control_db(host: "HostLike") -> None:
    res = host.run(f"cd /tmp && psql -X -q -d postgres -f {SCHEMA_FILE} 2>&1", sudo_user="postgres",
                   display=f"psql -f {SCHEMA_FILE} (Bucardo's control database)", timeout=600)
    # dry run: nothing ran, so there is no output to judge
    if not host.dry_run and "Pl/PerlU was successfully installed" not in res.stdout:
        raise SafetyCheckFailed(f"on {host.name}: Bucardo's control database was not installed: "
                                f"{hsecrets.scrub_tail(res.stdout, 800)}",
                                hint="Is postgresql-plperl installed for this PostgreSQL? Fix it and run the step "
                                     "again.")
    run_bucardo(host, f"set piddir={HOME}/run reason_file={HOME}/log/restart.reason "
                  f"warning_file={HOME}/log/warning.log log_conflict_file={HOME}/log/conflict.log "
                  "stopfile=fullstopbucardo")


def get_wraparound(source: "SourceLike") -> list[Check]:
    """The source's anti-wraparound autovacuums and tables past their freeze age, as checks."""
    with source:
        return bp.check_wraparound(source.json(bp.WRAPAROUND_SQL) or {})


def wait_for_no_wraparound_vacuum(source: "SourceLike", params: "Params") -> list[Check]:
    """Until no anti-wraparound autovacuum runs on the source (at most ``source.online.vacuum_wait_s``,
    printing what runs), then its checks; SafetyCheckFailed naming it when one still runs."""
    src = params.source
    assert src is not None
    checks = get_wraparound(source)
    for i, _ in enumerate(polling_loop(src.online.vacuum_wait_s, interval=5.0)):
        if i:
            checks = get_wraparound(source)
        if checks[0].ok:
            return checks
        print(f"waiting for the source's anti-wraparound VACUUM to end: {checks[0].detail}")
    raise SafetyCheckFailed(f"an anti-wraparound VACUUM still runs on the source after {src.online.vacuum_wait_s:.0f}s: "
                            f"{checks[0].detail}",
                            hint="Bucardo's triggers were not added (nothing changed on the source). Run 06b again "
                                 "once it has ended (source.online.vacuum_wait_s: how long 06b waits for it).")


def _control_names(host: "HostLike", params: "Params") -> dict[str, list[str]]:
    """Bucardo's databases and relgroups already in its control database (a 06b run again after a refused
    ``add sync`` adds only what is missing)."""
    return get_control(host, params).json(
        "SELECT json_build_object('dbs', (SELECT coalesce(json_agg(name), '[]') FROM bucardo.db), "
        "'relgroups', (SELECT coalesce(json_agg(name), '[]') FROM bucardo.herd))") or {}


def run_add_sync(host: "HostLike", params: "Params", source: "SourceLike", command: str) -> int:
    """``bucardo add sync``: Bucardo's ``validate_sync`` adds its triggers on every table of the source (a
    lock per table, held to its commit), each lock waited for at most ``source.online.lock_timeout_ms``
    (Bucardo's sessions there carry it: the app never queues behind a trigger waiting for its lock).
    A lock not granted in time: nothing was added (one transaction); tried again after
    ``lock_retry_wait_s``, at most ``lock_retries`` times, each after the anti-wraparound check (the step
    checked before the first: :func:`hcbpg.steps.online.before_triggers`).
    Returns the attempts it took; SafetyCheckFailed when every one timed out."""
    src = params.source
    assert src is not None
    on = src.online
    last = ""
    for attempt in range(1, on.lock_retries + 2):
        if attempt > 1:  # the step checked before the first (online.before_triggers)
            wait_for_no_wraparound_vacuum(source, params)
        res = run_bucardo(host, command, check=False, timeout=1800)
        if res.ok:
            return attempt
        last = hsecrets.scrub_tail(res.output, 600)
        if not bp.is_lock_timeout(res.output):
            raise SafetyCheckFailed(f"on {host.name}: bucardo {command.split()[0]} {command.split()[1]} failed: {last}",
                                    hint=f"Read {HOME}/log/log.bucardo on {host.name}; fix the cause and run 06b "
                                         "again.")
        print(f"attempt {attempt}: a table of the source was locked for more than {on.lock_timeout_ms} ms "
              f"(source.online.lock_timeout_ms): nothing added; again in {on.lock_retry_wait_s:.0f}s")
        if attempt <= on.lock_retries:
            time.sleep(on.lock_retry_wait_s)
    raise SafetyCheckFailed(f"Bucardo's triggers could not be added on the source: {on.lock_retries + 1} attempts each "
                            f"waited {on.lock_timeout_ms} ms for a table's lock and gave up ({last})",
                            hint="Nothing was added and the app never waited longer than that. A long transaction "
                                 "or a lock holds a table: look at heroku pg:locks / pg:ps, then run 06b again "
                                 "(source.online.lock_retries, lock_retry_wait_s).")


def ensure_forward_sync(host: "HostLike", params: "Params", source: "SourceLike", plan: bp.SyncPlan) -> Outcome:
    """Bucardo's databases, the keyed tables and the sequences, the forward sync; the daemon running.

    Adding the sync adds Bucardo's triggers on the source (:func:`run_add_sync`: no anti-wraparound VACUUM
    running, a short lock_timeout, bounded retries).
    The initial copy (``source.online.initial_copy``): ``bucardo``: the sync's own ``onetimecopy``, table by
    table into the indexed schema, once the daemon runs. ``stream``: the sync is added inactive, which
    puts Bucardo's triggers on the source; the step then copies every table with the streamed transfer
    in a snapshot exported after them and activates the sync (:func:`run_activate_forward_sync`), which
    applies every change recorded since its triggers exist, so none is lost.  The daemon is started
    here only for a sync that is to run (not an inactive one waiting for its copy)."""
    pg = params.postgres
    src = params.source
    assert src is not None
    streamed = src.online.initial_copy == "stream"
    seen = Changes(host)
    fwd = get_state(host, params)["syncs"].get(bp.FORWARD_SYNC)
    if fwd is None:
        *before, add_sync = bp.render_forward_sync_commands(
            plan, source_dbname=source.conn.get("dbname", ""), database=pg.database, port=pg.port,
            streamed=streamed, lock_timeout_ms=src.online.lock_timeout_ms)
        have = _control_names(host, params) if not host.dry_run else {}
        for st in before:
            words = st.split()
            if (words[:2] == ["add", "db"] and words[2] in have.get("dbs", [])) or (
                    f"relgroup={bp.FORWARD_SYNC}" in words and bp.FORWARD_SYNC in have.get("relgroups", [])):
                continue  # added by an earlier run whose add sync was refused
            run_bucardo(host, st)
        run_add_sync(host, params, source, add_sync)
    if not streamed or (fwd is not None and fwd.get("status") == "active"):
        ensure_running(host, params)
    return seen.outcome(f"Bucardo sync {bp.FORWARD_SYNC}: source -> {pg.database} on {host.name}")


def run_activate_forward_sync(host: "HostLike", params: "Params") -> Outcome:
    """After the streamed initial copy: the forward sync active, the daemon running (it applies every change
    its triggers recorded since they exist)."""
    seen = Changes(host)
    run_bucardo(host, f"update sync {bp.FORWARD_SYNC} status=active")
    ensure_running(host, params)
    return seen.outcome(f"Bucardo sync {bp.FORWARD_SYNC} active on {host.name}")


def get_lag(source: "SourceLike", tables: Sequence[str]) -> dict[str, float]:
    """Changes recorded on the source that the sync has not applied yet: rows, and the oldest's age (s)."""
    with source:
        data = source.json(bp.render_lag_sql(tables))
    return {"rows": int(data["rows"]), "seconds": float(data["seconds"])}


def _last_run(host: "HostLike", params: "Params", sync: str) -> dict[str, Any]:
    return get_control(host, params).json(sql.SQL(
        "SELECT coalesce((SELECT row_to_json(r) FROM (SELECT status, started, ended, inserts, deletes FROM "
        "bucardo.syncrun WHERE sync = {} ORDER BY started DESC LIMIT 1) r), '{{}}'::json)").format(
            sql.Literal(sync))) or {}


def wait_for_initial_copy(host: "HostLike", params: "Params", source: "SourceLike", plan: bp.SyncPlan, *,
                          interval: float = 5.0) -> list[dict[str, Any]]:
    """Until the onetimecopy is done and the deltas caught up; the lag is printed as it goes.

    Looked at after 0, 1, 2 and 4 s (a small database is copied in seconds), then every *interval*."""
    src = params.source
    assert src is not None
    timeout = src.online.initial_copy_timeout_s
    seen: list[dict[str, Any]] = []
    started = time.monotonic()
    looks = [1.0, 2.0, 4.0]  # the next looks after the first; then every *interval*
    next_look = 0.0
    for elapsed in polling_loop(timeout, interval=min(interval, 1.0)):
        if elapsed < next_look and elapsed < timeout:
            continue  # nothing read: only the clock
        next_look = looks.pop(0) if looks else elapsed + interval
        syncs = get_state(host, params)["syncs"]
        last = _last_run(host, params, bp.FORWARD_SYNC)
        if str(last.get("status") or "").startswith("Failed"):
            raise SafetyCheckFailed(f"the Bucardo sync failed: {hsecrets.scrub(str(last['status']))[:600]}",
                                    hint=f"Read {HOME}/log/log.bucardo on {host.name}; fix the cause and run "
                                         "06b again (it goes on where it stopped).")
        copying = int((syncs.get(bp.FORWARD_SYNC) or {}).get("onetimecopy") or 0) != 0
        lag = get_lag(source, plan.synced)
        row = {"t_s": round(elapsed, 1), "initial_copy": "running" if copying else "done",
               "lag_rows": lag["rows"], "lag_s": lag["seconds"]}
        seen.append(row)
        print(f"  {row['t_s']:7.1f}s  initial copy {row['initial_copy']:8}  lag {lag['rows']} rows, "
              f"{lag['seconds']:.1f}s")
        if not copying and lag["rows"] < 1000 and lag["seconds"] < 30:
            return seen
    raise WaitTimeout(f"the initial copy did not finish in {timeout:.0f}s", what="Bucardo initial copy",
                      timeout=timeout, elapsed=time.monotonic() - started, last=str(seen[-1:]),
                      hint="It keeps running; run 06b again to wait more (source.online.initial_copy_timeout_s).")


# the drift guard ----------------------------------------------------------------------------------

def get_drift(host: "HostLike", params: "Params", source: "SourceLike") -> tuple[list[Check], Inventory, Inventory]:
    """The drift guard's checks, with both sides' inventories (objects only) read at once."""
    with source, ThreadPoolExecutor(max_workers=1) as pool:
        tgt_future = pool.submit(get_inventory, get_target(host, params), params, rows=False)
        src = bp.strip_bucardo(get_inventory(source, params, rows=False))
        tgt = bp.strip_bucardo(tgt_future.result())
    checks = compare_objects(bp.without_sequence_values(src), bp.without_sequence_values(tgt))
    return [Check(f"schema unchanged: {c.name}", c.status, c.detail, c.target) for c in checks], src, tgt


def check_schema_unchanged(host: "HostLike", params: "Params", source: "SourceLike") -> list[Check]:
    """The drift guard: every object of the source and the target compared by definition (rows aside;
    sequences may be behind while the app writes). Bucardo does not copy DDL."""
    return get_drift(host, params, source)[0]
