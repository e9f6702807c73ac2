"""The online transfer (``source.transfer: online``): Bucardo syncs the source into the primary while
the app runs, the window only drains it, and for a while after traffic is on the primary's changes
are synced back to the source (the way back).

Where Bucardo runs, and why: **on the primary**.  Its control database needs a superuser and
plperlu, which the primary has and Heroku never gives; the rows it copies end on the primary over
the Unix socket (no second network hop, as a jumpbox or scratch server would add); on the source it
only adds what any trigger-based sync must (a trigger per table, delta tables, one reading session),
the same wherever the daemon runs.  The primary carries no traffic until the window, so its CPU is
free for the copy; the control database (``bucardo``) and everything else of Bucardo are removed
by the clean-up (:func:`run_cleanup`).

How it connects, with no secret on a command line: the source with the app's Heroku credentials
(``source.url``) through a 0600 libpq service file on tmpfs (``/run/hcbpg-bucardo``, never on
disk; ``~postgres/.pg_service.conf`` is a symlink to it, as Bucardo's command line and its plperlu
functions inside the server both read that path; removed by the clean-up, gone with a reboot and
written again by the steps that start Bucardo), ``verify-full`` against ``source.ca_file`` when it
is given and ``require_auth=scram-sha-256`` when the primary's libpq is 16 or later; the primary
and the control database over the Unix socket as postgres (peer).  The role ``bucardo`` that Bucardo's schema creates has no
password: it cannot log in over the network.

The rows: the schema is dumped from the source (``pg_dump --schema-only`` in a snapshot, before
Bucardo's triggers exist) and restored as in the other transfers; then Bucardo's triggers record
every change from the moment the tables are added, and the sync's ``onetimecopy`` copies every
table, so nothing written after the triggers exist can be lost.  Tables without a key cannot be
synced: small ones are copied whole inside the window, large ones refuse the mode
(:func:`hcbpg.pg.bucardo.plan_sync`).
"""

from __future__ import annotations

import datetime
import json
import shlex
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg import secrets as hsecrets
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.psql import render
from hcbpg.errors import DatabaseError, SafetyCheckFailed, VerificationFailed, WaitTimeout
from hcbpg.ops import packages as pkg_ops
from hcbpg.ops.migration import bucardo_service as bs
from hcbpg.ops.migration import templates
from hcbpg.ops.migration.app_checks import check_from_app
from hcbpg.ops.migration.cutover import ROLLBACK, ROLLBACK_WAY_BACK
from hcbpg.ops.migration.database import get_target_state
from hcbpg.ops.migration.dump import DumpResult, remove_dump, run_dump
from hcbpg.ops.migration.plan import Plan
from hcbpg.ops.migration.restore import RestoreResult, run_restore
from hcbpg.ops.migration.source import Source, get_source_facts, target
from hcbpg.ops.migration.stream import run_stream
from hcbpg.ops.migration.verify import Verification, check_table_owners, get_inventory
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import bucardo as bp
from hcbpg.pg.conninfo import APPLICATION_NAME
from hcbpg.pg.inventory import Inventory, compare_objects, compare_rows, comparison_table, render_snapshot_setup
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.adapters.psql import PsqlEndpoint
    from hcbpg.params import Params

#: Bucardo's working directory on the primary (its rc file, pid and log files)
HOME = "/var/lib/postgresql/hcbpg-bucardo"
RC = f"{HOME}/bucardorc"
#: when the way back ends (UTC, ISO), and the foreign keys it made deferrable on the source
UNTIL_FILE = f"{HOME}/way-back-until"
DEFERRED_FILE = f"{HOME}/deferrable-fks.json"
SCHEMA_FILE = "/usr/share/bucardo/bucardo.schema"
#: the window's snapshots (the holding sessions' outputs) and what 09b reads: their pids and ids
SNAPSHOT_DIR = f"{HOME}/snapshots"
CUSTOMCODE = "hcbpg_owner_only"


def packages(params: "Params") -> list[str]:
    """Bucardo and PL/Perl for the primary's PostgreSQL (its control database's functions are plperlu)."""
    return ["bucardo", f"postgresql-plperl-{params.postgres.version}"]


def render_rc() -> str:
    return ("# Managed by hcbpg (online transfer). Do not edit by hand.\n"
            "# the control database on this primary, over the Unix socket as postgres (peer): no password\n"
            "dbname = bucardo\ndbuser = postgres\n")


def bucardo(host: "Host", args: str, *, display: str | None = None, check: bool = True,
            timeout: float = 600) -> Any:
    """The bucardo command line on the primary, as postgres, with our rc file (never a secret in *args*)."""
    return host.run(f"cd {HOME} && bucardo --bucardorc {RC} --batch {args}", sudo_user="postgres", check=check,
                    timeout=timeout, display=display or f"bucardo {args}")


def control(host: "Host", params: "Params") -> "PsqlEndpoint":
    return target(host, params, bp.CONTROL_DB)


def get_state(host: "Host", params: "Params") -> dict[str, Any]:
    """Bucardo on the primary: packages, control database, syncs and whether the daemon runs."""
    installed = pkg_ops.get_installed_packages(host, packages(params))
    psql = target(host, params, "postgres")
    has_db = bool(psql.json(sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = {})").format(
        sql.Literal(bp.CONTROL_DB))))
    syncs: dict[str, Any] = {}
    if has_db:
        syncs = control(host, params).json(
            "SELECT coalesce(json_object_agg(name, json_build_object('onetimecopy', onetimecopy, 'status', status)), "
            "'{}') FROM bucardo.sync") or {}
    running = host.probe(f"test -s {HOME}/run/bucardo.mcp.pid && kill -0 $(cat {HOME}/run/bucardo.mcp.pid)"
                         ).ok if has_db else False
    return {"packages": installed, "control_db": has_db, "syncs": syncs, "running": running}


def is_syncing(host: "Host", params: "Params") -> bool:
    """The online transfer's forward sync exists on *host* (06b ran; the window has not ended it)."""
    src = params.source
    if src is None or getattr(src, "transfer", None) != "online":
        return False
    return bp.FORWARD_SYNC in get_state(host, params)["syncs"]


@contextmanager
def paused(host: "Host", params: "Params", why: str) -> Iterator[None]:
    """Bucardo's daemon stopped while *why* happens on the primary (a restart: it does not survive its
    database going away; the fingerprint and the first backup: nothing may write between them), then
    started again. Its triggers keep recording on the source meanwhile; it catches up after."""
    stop(host, params)
    print(f"Bucardo stopped on {host.name} for {why} (its triggers keep recording on the source)")
    try:
        yield
    finally:
        ensure_running(host, params, dry_run=False)
        print(f"Bucardo started again on {host.name}: it applies what the source recorded meanwhile")


def paused_if_syncing(host: "Host | None", params: "Params", why: str, *,
                      changes: bool) -> AbstractContextManager[None]:
    """:func:`paused` when *changes* will be made on *host* while the forward sync runs there; else
    nothing is stopped (a second run that changes nothing stops nothing)."""
    if host is None or not changes or not is_syncing(host, params):
        return nullcontext()
    return paused(host, params, why)


# before the window --------------------------------------------------------------------------------

def get_sync_plan(source: Source, params: "Params") -> bp.SyncPlan:
    """Read the source: what Bucardo can sync, what is copied inside the window, what is refused."""
    src = params.source
    assert src is not None
    with source:
        data = source.json(bp.SYNCABILITY_SQL)
    return bp.plan_sync(data, window_copy_max_rows=src.online.window_copy_max_rows)


def ensure_bucardo(host: "Host", params: "Params", source: Source, *, dry_run: bool) -> list[Outcome]:
    """Bucardo's packages, its directory and rc file, the source's service file, the control database."""
    out: list[Outcome] = []
    state = get_state(host, params)
    missing = [p for p in packages(params) if p not in state["packages"]]
    if missing:
        out.append(Outcome(f"packages {', '.join(missing)} on {host.name}", True, dry_run,
                           actions=[f"apt-get install {' '.join(missing)}"]))
        if not dry_run:
            host.run(f"{pkg_ops.APT_ENV} apt-get update -q", timeout=600)
            host.run(f"{pkg_ops.APT_ENV} apt-get install -y -q --no-install-recommends {' '.join(missing)}",
                     timeout=1800)
    else:
        out.append(Outcome(f"packages {', '.join(packages(params))} on {host.name}", False, dry_run,
                           actions=[f"{p} {v} already installed" for p, v in state["packages"].items()]))
    service = bs.get_service_text(host, source)
    files = [f"{HOME} (0700 postgres) with run/ and log/", f"{RC} (control database over the socket, peer)",
             f"{bs.SERVICE_FILE} (0600 postgres, on tmpfs: the source's connection, "
             + ", ".join(f"{k}={v}" for k, v in bs.parse_service_settings(service).items())
             + f"; removed by the clean-up), {bs.SERVICE_LINK} a symlink to it"]
    same = (host.read_text(RC, sudo_user="postgres") == render_rc() and bs.is_service_in_place(host, service)
            and host.exists(f"{HOME}/log"))
    if not dry_run and not same:
        for d in (HOME, f"{HOME}/run", f"{HOME}/log"):
            ensure_dir(host, d, mode=0o700, owner="postgres")  # in the postgres user's home
        host.put_text(RC, render_rc(), mode=0o600, owner="postgres")
        bs.write_service(host, service)
    out.append(Outcome(f"Bucardo's files on {host.name}", not same, dry_run,
                       actions=files if not same else ["as they should be"]))
    if state["control_db"]:
        out.append(Outcome(f"Bucardo control database {bp.CONTROL_DB} on {host.name}", False, dry_run,
                           actions=["already installed"]))
        return out
    out.append(Outcome(f"Bucardo control database {bp.CONTROL_DB} on {host.name}", True, dry_run,
                       actions=[f"psql -f {SCHEMA_FILE} as postgres (creates role bucardo without a password, "
                                "database bucardo, plperlu)", f"bucardo set piddir/reason_file/... under {HOME}"]))
    if not dry_run:
        _install_control_db(host)
    return out


def _install_control_db(host: "Host") -> None:
    res = host.run(f"cd /tmp && psql -X -q -d postgres -f {SCHEMA_FILE} 2>&1", sudo_user="postgres",
                   display=f"psql -f {SCHEMA_FILE} (Bucardo's control database)", timeout=600)
    if "Pl/PerlU was successfully installed" not in res.stdout:
        raise SafetyCheckFailed(f"on {host.name}: Bucardo's control database was not installed: "
                                f"{hsecrets.scrub_tail(res.stdout, 800)}",
                                hint="Is postgresql-plperl installed for this PostgreSQL? Fix it and run the step "
                                     "again.")
    bucardo(host, f"set piddir={HOME}/run reason_file={HOME}/log/restart.reason "
                  f"warning_file={HOME}/log/warning.log log_conflict_file={HOME}/log/conflict.log "
                  "stopfile=fullstopbucardo")


def ensure_schema(host: "Host", params: "Params", source: Source, facts: Mapping[str, Any], *, run_label: str,
                  dry_run: bool) -> Outcome:
    """The source's schema on the primary (``pg_dump --schema-only`` of a snapshot, restored as 07 would),
    unless the forward sync exists already (then the schema is there and Bucardo fills it)."""
    pg = params.postgres
    what = f"schema of the source in {pg.database} on {host.name}"
    state = get_state(host, params)
    if bp.FORWARD_SYNC in state["syncs"]:
        return Outcome(what, False, dry_run, actions=[f"sync {bp.FORWARD_SYNC} exists: the schema is in place"])
    actions = ["pg_dump --schema-only (in an exported snapshot, without schema bucardo)",
               f"drop and recreate {pg.database}, then pg_restore the schema as {pg.app_role}"]
    if dry_run:
        return Outcome(what, True, True, actions=actions)
    with source:
        dump = run_dump(host, params, source, "online-schema", with_counts=False, schema_only=True)
        try:
            run_restore(host, params, dump, facts, run_label=run_label)
        finally:
            remove_dump(host, dump)
    return Outcome(what, True, False, actions=actions)


def _relgroup_steps(plan: bp.SyncPlan, db: str, relgroup: str) -> list[str]:
    """The synced tables and the sequences of database *db* (Bucardo's name) put in *relgroup*."""
    steps = [f"add tables {' '.join(shlex.quote(t) for t in plan.synced)} db={db} relgroup={relgroup}"]
    if plan.sequences:
        steps.append(f"add sequences {' '.join(shlex.quote(q) for q in plan.sequences)} db={db} relgroup={relgroup}")
    return steps


def ensure_forward_sync(host: "Host", params: "Params", source: Source, plan: bp.SyncPlan, *,
                        facts: Mapping[str, Any], run_label: str, dry_run: bool) -> Outcome:
    """Bucardo's databases, the keyed tables and the sequences, the sync, the initial copy, the daemon.

    The initial copy (``source.online.initial_copy``): ``stream`` adds the sync inactive, which puts
    Bucardo's triggers on the source, and only then copies every table with the streamed transfer in
    a snapshot exported after them (rows, then each table's indexes); activated, the sync applies every
    change recorded since its triggers exist, those before the snapshot again (Bucardo deletes and
    copies each changed key: applying one twice changes nothing), so none is lost. ``bucardo``: the
    sync's own ``onetimecopy``, table by table into the indexed schema."""
    pg = params.postgres
    src = params.source
    assert src is not None
    streamed = src.online.initial_copy == "stream"
    what = f"Bucardo sync {bp.FORWARD_SYNC}: source -> {pg.database} on {host.name}"
    state = get_state(host, params)
    fwd = state["syncs"].get(bp.FORWARD_SYNC)
    if fwd is not None and fwd.get("status") == "active":
        started = ensure_running(host, params, dry_run=dry_run)
        return Outcome(what, started, dry_run, actions=["the sync exists"] + (["daemon started"] if started else []))
    dbname = shlex.quote(source.conn.get("dbname", ""))
    steps = [
        f"add db {bp.SOURCE_DB} dbname={dbname} dbservice={bp.SOURCE_SERVICE}",
        f"add db {bp.PRIMARY_DB} dbname={shlex.quote(pg.database)} dbhost=/var/run/postgresql dbport={pg.port} "
        "dbuser=postgres",
        *_relgroup_steps(plan, bp.SOURCE_DB, bp.FORWARD_SYNC),
    ]
    steps.append(f"add sync {bp.FORWARD_SYNC} relgroup={bp.FORWARD_SYNC} dbs={bp.SOURCE_DB}:source,{bp.PRIMARY_DB}:target "
                 + ("onetimecopy=0 status=inactive" if streamed else "onetimecopy=1"))
    steps = steps if fwd is None else []
    actions = [f"bucardo {st}" for st in steps]
    if streamed:
        actions += ["the streamed transfer in a snapshot taken after Bucardo's triggers exist (the database "
                    "recreated; rows, then each table's indexes)", f"bucardo update sync {bp.FORWARD_SYNC} status=active"]
    actions.append("bucardo start")
    if dry_run:
        return Outcome(what, True, True, actions=actions)
    for st in steps:
        bucardo(host, st)
    if streamed:
        stop(host, params)  # a rerun after a failed copy: nothing of Bucardo may hold the database
        with source:
            _, restore = run_stream(host, params, source, facts, "online-copy", run_label=run_label)
        print(f"initial copy streamed in {restore.seconds:.1f}s")
        bucardo(host, f"update sync {bp.FORWARD_SYNC} status=active")
    ensure_running(host, params, dry_run=False)
    return Outcome(what, True, False, actions=actions)


def ensure_running(host: "Host", params: "Params", *, dry_run: bool) -> bool:
    """The Bucardo daemon runs (started with its log under HOME); True when it was started."""
    if get_state(host, params)["running"]:
        return False
    if not dry_run:
        if not host.exists(bs.SERVICE_FILE):
            raise SafetyCheckFailed(f"on {host.name}: Bucardo's service file for the source ({bs.SERVICE_FILE}, on tmpfs) "
                                    "is gone: did the server restart?",
                                    hint="Run 06b again: it writes the file and starts Bucardo, whose sync goes on "
                                         "where it stopped (its triggers kept recording on the source).")
        bucardo(host, f"start --log-destination {HOME}/log", display="bucardo start")
        for _ in polling_loop(30, interval=0.5):
            if get_state(host, params)["running"]:
                break
        else:
            raise WaitTimeout(f"on {host.name}: Bucardo did not start", what="Bucardo running", timeout=30,
                              hint=f"Read {HOME}/log/log.bucardo on {host.name}.")
    return True


def stop(host: "Host", params: "Params") -> bool:
    """Stop the daemon (waits for it to be gone); True when it ran."""
    if not get_state(host, params)["running"]:
        return False
    bucardo(host, "stop", display="bucardo stop")
    for _ in polling_loop(60, interval=0.5):
        if not get_state(host, params)["running"]:
            return True
    raise WaitTimeout(f"on {host.name}: Bucardo did not stop within 60s", what="Bucardo stopped", timeout=60)


def get_lag(source: Source, tables: Sequence[str]) -> dict[str, float]:
    """Changes recorded on the source that the sync has not applied yet: rows, and the oldest's age (s)."""
    with source:
        data = source.json(bp.render_lag_sql(tables))
    return {"rows": int(data["rows"]), "seconds": float(data["seconds"])}


def _last_run(host: "Host", params: "Params", sync: str) -> dict[str, Any]:
    return control(host, params).json(sql.SQL(
        "SELECT coalesce((SELECT row_to_json(r) FROM (SELECT status, started, ended, inserts, deletes FROM "
        "bucardo.syncrun WHERE sync = {} ORDER BY started DESC LIMIT 1) r), '{{}}'::json)").format(
            sql.Literal(sync))) or {}


def wait_for_initial_copy(host: "Host", params: "Params", source: Source, plan: bp.SyncPlan, *,
                          interval: float = 5.0) -> list[dict[str, Any]]:
    """Until the onetimecopy is done and the deltas caught up; the lag is printed as it goes."""
    src = params.source
    assert src is not None
    timeout = src.online.initial_copy_timeout_s
    seen: list[dict[str, Any]] = []
    started = time.monotonic()
    for elapsed in polling_loop(timeout, interval=interval):
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


def check_schema_unchanged(host: "Host", params: "Params", source: Source) -> list[Check]:
    """The drift guard: every object of the source and the target compared by definition (rows aside;
    sequences may be behind while the app writes). Bucardo does not copy DDL."""
    return _drift(host, params, source)[0]


def _drift(host: "Host", params: "Params", source: Source) -> tuple[list[Check], Inventory, Inventory]:
    """The drift guard's checks, with both sides' inventories (objects only) read at once."""
    with source, ThreadPoolExecutor(max_workers=1) as pool:
        tgt_future = pool.submit(get_inventory, target(host, params), params, rows=False)
        src = bp.strip_bucardo(get_inventory(source, params, rows=False))
        tgt = bp.strip_bucardo(tgt_future.result())
    checks = compare_objects(bp.without_sequence_values(src), bp.without_sequence_values(tgt))
    return [Check(f"schema unchanged: {c.name}", c.status, c.detail, c.target) for c in checks], src, tgt


def raise_on_drift(checks: Sequence[Check]) -> None:
    bad = [c for c in checks if c.status == "fail"]
    if bad:
        raise VerificationFailed(
            "the schema of the source and the primary differ (a migration ran during the sync?): "
            + "; ".join(f"{c.name}: {c.detail}" for c in bad),
            failures=[c.name for c in bad],
            hint="The cutover stops here. Apply the same migration on the primary (or run 06b again from the "
                 "start after the deploy), then repeat.\n" + ROLLBACK)


# the window ---------------------------------------------------------------------------------------

def plan_window(host: "Host", params: "Params", source: Source) -> Plan:
    """07's plan for the online transfer (read-only): what the window does, and its preconditions
    (the database is not dropped: Bucardo filled it; the sync runs; the source can still be synced)."""
    src = params.source
    assert src is not None
    with source:
        facts = get_source_facts(source)
    state = get_state(host, params)
    plan = get_sync_plan(source, params)
    lag = get_lag(source, plan.synced) if bp.FORWARD_SYNC in state["syncs"] else None
    outcomes = [Outcome(f"the window on {params.postgres.database} ({host.name}), filled by Bucardo", True, True,
                        actions=["drift guard: source and target compared by definition",
                                 f"Bucardo drained, at most {src.online.drain_timeout_s:.0f}s "
                                 "(source.online.drain_timeout_s)",
                                 "every sequence set on the target to the source's value",
                                 f"copied inside the window (no key): {', '.join(plan.in_window) or 'none'}",
                                 "sequences, ownership and the sentinel read back from the app host checked",
                                 "a snapshot of the source and of the primary held: every table's rows are counted "
                                 "in them after traffic is on (09b)"])]
    # the drift guard before the window too: a deploy with migrations since 06b stops the cutover before
    # maintenance goes on, naming what differs (the window compares again, for a deploy after this plan)
    drift = check_schema_unchanged(host, params, source) if bp.FORWARD_SYNC in state["syncs"] else []
    checks = [Check.of("Bucardo's forward sync exists and runs", bp.FORWARD_SYNC in state["syncs"] and state["running"],
                       f"syncs {', '.join(state['syncs']) or 'none'}, daemon {'running' if state['running'] else 'stopped'}"
                       + ("" if bp.FORWARD_SYNC in state["syncs"] else ": run 06b first"), host.name),
              Check.of("the way back armed (its triggers record the primary's changes)",
                       bp.BACK_SYNC in state["syncs"],
                       f"sync {bp.BACK_SYNC} " + ("exists" if bp.BACK_SYNC in state["syncs"] else "missing: run 06b "
                                                  "again"), host.name),
              Check.of("Bucardo's lag before the window", lag is not None and lag["rows"] < 10_000,
                       f"{lag['rows']} rows, {lag['seconds']:.1f}s" if lag else "no sync", "source")]
    return Plan(outcomes, checks + drift + plan.checks, facts)



def wait_for_drained(host: "Host", params: "Params", source: Source, plan: bp.SyncPlan) -> dict[str, float]:
    """With the writes stopped: until the sync has applied every recorded change (deadline from params)."""
    src = params.source
    assert src is not None
    timeout = src.online.drain_timeout_s
    t0 = time.monotonic()
    lag = get_lag(source, plan.synced)
    first = dict(lag)
    if lag["rows"]:
        # changes pending (the sentinel at least, unless Bucardo's autokick applied it already): the daemon
        # must run; a kick without a timeout returns at once (with one it waits for a whole sync run,
        # seconds of Perl and polling): the lag itself says when every change is applied
        ensure_running(host, params, dry_run=False)
        bucardo(host, f"kick {bp.FORWARD_SYNC}", display=f"bucardo kick {bp.FORWARD_SYNC}", check=False, timeout=60)
    for i, _ in enumerate(polling_loop(timeout, interval=0.2)):
        if i:
            lag = get_lag(source, plan.synced)
        if lag["rows"] == 0:
            return {"lag_rows_at_open": first["rows"], "lag_s_at_open": first["seconds"],
                    "drain_s": round(time.monotonic() - t0, 3)}
    raise WaitTimeout(f"Bucardo did not drain within {timeout:.0f}s: {lag['rows']} changes still pending",
                      what="Bucardo drained", timeout=timeout, elapsed=time.monotonic() - t0, last=str(lag),
                      hint="The primary is incomplete: traffic must not start on it.\n" + ROLLBACK)


def run_set_sequences(host: "Host", params: "Params", source: Source) -> int:
    """Every sequence on the target set to the source's value (the source is frozen: nothing goes past it).
    The values come as JSON and each statement is rendered here, its name quoted as data."""
    with source:
        states = source.json(bp.SEQUENCE_STATES_SQL) or []
    statements = bp.render_setvals(states)
    if statements:
        target(host, params).script("\n".join(statements) + "\n", display=f"setval of {len(statements)} sequences "
                                    "on the target", quiet=False)
    return len(statements)


def run_window_copies(host: "Host", params: "Params", source: Source, tables: Sequence[str]) -> list[str]:
    """The tables without a key, copied whole inside the window (TRUNCATE and COPY in one transaction)."""
    done = []
    tgt = target(host, params)
    for t in tables:
        name = render(sql.Identifier(*t.split(".", 1)))
        cmd = (f"{source.env} {source.conn_cmd} -X -q -v ON_ERROR_STOP=1 -c {shlex.quote(f'COPY {name} TO STDOUT')} | "
               f"{tgt.conn_cmd} -X -q -1 -v ON_ERROR_STOP=1 -c {shlex.quote(f'TRUNCATE {name}')} "
               f"-c {shlex.quote(f'COPY {name} FROM STDIN')}")
        with source:
            host.run(f"bash -o pipefail -c {shlex.quote(cmd)}", sudo_user="postgres",
                     display=f"copy {t} (no key) source -> target",
                     timeout=3600)
        done.append(t)
    return done


def check_sequences(host: "Host", params: "Params", source: Source) -> Check:
    """After the window set them: every sequence on the primary at the source's value (both read at once)."""
    with source, ThreadPoolExecutor(max_workers=1) as pool:
        tgt_future = pool.submit(target(host, params).json, bp.SEQUENCE_VALUES_SQL)
        src_seq = source.json(bp.SEQUENCE_VALUES_SQL) or {}
        tgt_seq = tgt_future.result() or {}
    return bp.check_sequences_equal(src_seq, tgt_seq, host.name)


def check_window_side(host: "Host", params: "Params", src_inv: Inventory, *, app: "Host | None",
                      password: str | None, sentinel_expect: str | None) -> list[Check]:
    """The window's checks that need neither the sequences nor the keyless copies (they run beside
    them): ownership, and from the app host the newest event and the sentinel (the source's last write:
    Bucardo applies in order and the drain waited for it, so every earlier change is there too)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        from_app = (pool.submit(check_from_app, app, params, password, server_ip=params.primary.private_ip,
                                newest_event=src_inv.newest_event, expect=sentinel_expect)
                    if app is not None and password is not None else None)
        owner = get_target_state(host, params).owner
        checks = [Check.of(f"database owned by {params.postgres.app_role}", owner == params.postgres.app_role,
                           f"owner {owner}", host.name),
                  check_table_owners(host, params, except_schema=bp.SCHEMA)]
        return checks + (from_app.result() if from_app is not None else [])


#: the two sides of the held snapshots
SIDES = ("primary", "source")


def run_hold_snapshots(host: "Host", params: "Params", source: Source) -> dict[str, dict[str, Any]]:
    """End of the window, the writes stopped and drained: one session on the source and one on the
    primary each export a snapshot and hold it (``pg_sleep``, at most ``source.online.snapshot_hold_s``)
    so 09b counts every row of both as they were now, after traffic is on. One command on the primary
    (the window waits for it); returns the sessions' pids and snapshot ids."""
    src = params.source
    assert src is not None
    pg = params.postgres
    conns = {"primary": f"psql -d {shlex.quote(pg.database)} -p {pg.port}",
             "source": f"psql {shlex.quote('service=' + bp.SOURCE_SERVICE)}"}
    earlier = get_held_snapshots(host)
    if earlier:  # a window run again: the sessions of the one before end first
        run_release_snapshots(host, params, source, earlier)
    script = bp.render_hold_command(SNAPSHOT_DIR, conns, src.online.snapshot_hold_s)
    res = host.run(f"cd {HOME} && bash -s", sudo_user="postgres", stdin=script, check=False,
                   display="export and hold a snapshot of the source and of the primary (for 09b's exact counts)")
    return bp.parse_held_snapshots(res.stdout, SIDES)


def get_held_snapshots(host: "Host") -> dict[str, dict[str, Any]] | None:
    """The snapshots the window holds (pids and ids), or None when none are held."""
    res = host.run(f"test -d {SNAPSHOT_DIR} && for s in {' '.join(SIDES)}; do printf '%s ' $s; "
                   f"cat {SNAPSHOT_DIR}/$s.snapshot 2>/dev/null || echo; done", sudo_user="postgres", check=False,
                   quiet=True)
    return bp.parse_held_snapshots(res.stdout, SIDES) if res.ok else None


def run_release_snapshots(host: "Host", params: "Params", source: Source,
                          held: Mapping[str, Mapping[str, Any]]) -> None:
    """End the sessions holding the window's snapshots (the primary's vacuum no longer waits on them)."""
    stmt = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = {} AND application_name = {}"
    target(host, params).json(sql.SQL(stmt).format(sql.Literal(int(held["primary"]["pid"])),
                                                   sql.Literal(APPLICATION_NAME)))
    with source:
        source.json(sql.SQL(stmt).format(sql.Literal(int(held["source"]["pid"])), sql.Literal(APPLICATION_NAME)))
    host.run(f"rm -rf {SNAPSHOT_DIR}", quiet=True)


def get_snapshot_rows(endpoint: "PsqlEndpoint", snapshot: str) -> dict[str, int]:
    """Every user table's exact rows as the session that exported *snapshot* saw them (Bucardo's left out:
    its delta tables may be gone since)."""
    return endpoint.json(bp.SNAPSHOT_COUNTS_SQL, setup="SET search_path = pg_catalog;\n"
                         + render_snapshot_setup(snapshot)) or {}


def verify_held(host: "Host", params: "Params", source: Source) -> Verification:
    """09b, traffic on: every table's rows counted in the snapshots held since the window, source
    against primary (the objects were compared by definition in the window, the source frozen since),
    then the snapshots released."""
    held = get_held_snapshots(host)
    if not held:
        raise SafetyCheckFailed(f"on {host.name}: no snapshots held since the window ({SNAPSHOT_DIR} is gone): the "
                                "exact count of every row cannot run", hint=ROLLBACK_WAY_BACK)
    started = time.monotonic()
    try:
        with source, ThreadPoolExecutor(max_workers=1) as pool:
            tgt_future = pool.submit(get_snapshot_rows, target(host, params), str(held["primary"]["snapshot"]))
            src_rows = get_snapshot_rows(source, str(held["source"]["snapshot"]))
            tgt_rows = tgt_future.result()
    except DatabaseError as exc:
        raise VerificationFailed(f"the snapshots held since the window cannot be read ({exc}): the exact count "
                                 "of every row cannot run", failures=["snapshots held"],
                                 hint=f"Were the holding sessions ended (or older than source.online.snapshot_hold_s)? "
                                      f"The primary cannot be proven complete.\n{ROLLBACK_WAY_BACK}") from exc
    checks = compare_rows(src_rows, tgt_rows)
    run_release_snapshots(host, params, source, held)
    src_inv, tgt_inv = Inventory({}, src_rows), Inventory({}, tgt_rows)
    table = [{"what": "tables", "source": len(src_rows), "target": len(tgt_rows)},
             {"what": "rows (all tables)", "source": sum(src_rows.values()), "target": sum(tgt_rows.values())}]
    for r in table:
        r["status"] = "pass" if r["source"] == r["target"] else "fail"
    return Verification(checks, table, time.monotonic() - started, src_inv, tgt_inv)


def run_window(host: "Host", params: "Params", source: Source, *, app: "Host | None", password: str | None,
               sentinel_expect: str | None) -> tuple[Verification, dict[str, float], list[Check], list[str]]:
    """The window after the writes stopped: drift guard, drain, sequences, keyless copies, the window's
    checks (sequences, ownership, the sentinel from the app host), then the snapshots held for 09b."""
    t = time.monotonic()
    bs.ensure_service(host, source)  # tmpfs: gone if the primary restarted since 06b
    plan = get_sync_plan(source, params)
    if not plan.ok:
        raise SafetyCheckFailed("the source can no longer be synced: " + "; ".join(
            c.detail for c in plan.checks if c.status == "fail"), hint=ROLLBACK)
    phases: dict[str, float] = {"sync_plan_s": round(time.monotonic() - t, 3)}
    t = time.monotonic()
    drift, src_inv, tgt_inv = _drift(host, params, source)
    raise_on_drift(drift)
    phases["drift_guard_s"] = round(time.monotonic() - t, 3)
    phases.update(wait_for_drained(host, params, source, plan))
    with ThreadPoolExecutor(max_workers=1) as pool:
        side = pool.submit(check_window_side, host, params, src_inv, app=app, password=password,
                           sentinel_expect=sentinel_expect)
        t = time.monotonic()
        run_set_sequences(host, params, source)
        phases["sequences_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        copied = run_window_copies(host, params, source, plan.in_window)
        phases["window_copy_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        checks = drift + [check_sequences(host, params, source)] + side.result()
        phases["checks_s"] = round(time.monotonic() - t, 3)  # what the checks beside them still took
    if not any(c.status == "fail" for c in checks):
        t = time.monotonic()
        run_hold_snapshots(host, params, source)
        phases["snapshots_s"] = round(time.monotonic() - t, 3)
    table = comparison_table(src_inv, tgt_inv)[:-1] + [
        {"what": "rows (all tables)", "source": "counted in 09b", "target": "counted in 09b",
         "status": "after traffic is on (09b)"}]
    seconds = sum(v for k, v in phases.items() if k in ("checks_s", "snapshots_s"))
    return Verification(checks, table, seconds, src_inv, tgt_inv), phases, drift, copied


def window_result(ver: Verification, phases: Mapping[str, float], copied: Sequence[str]) -> tuple[DumpResult,
                                                                                                   RestoreResult]:
    """The window as the offline transfer's result types (so 07 records it the same way)."""
    dump = DumpResult("", "online (Bucardo)", float(phases.get("drain_s", 0.0)), 0, ver.source)
    restore = RestoreResult(float(phases.get("sequences_s", 0.0)) + float(phases.get("window_copy_s", 0.0)), 0.0,
                            [], {}, [f"copied inside the window (no key): {', '.join(copied) or 'none'}"])
    return dump, restore


# the way back -------------------------------------------------------------------------------------

def get_way_back(host: "Host") -> str | None:
    """When the way back ends (UTC), or None when it is not set up."""
    text = host.read_text(UNTIL_FILE, sudo_user="postgres")
    return text.strip() if text else None


def _back_sync_steps(params: "Params", source: Source, plan: bp.SyncPlan) -> list[str]:
    """The way back's Bucardo objects: the source as a target, the primary's tables and sequences, the
    sync (inactive until 09b), and our customcode for the owner-only target."""
    dbname = shlex.quote(source.conn.get("dbname", ""))
    steps = [f"add db {bp.BACK_TARGET_DB} dbname={dbname} dbservice={bp.SOURCE_SERVICE}",
             *_relgroup_steps(plan, bp.PRIMARY_DB, bp.BACK_SYNC)]
    steps += [f"add sync {bp.BACK_SYNC} relgroup={bp.BACK_SYNC} dbs={bp.PRIMARY_DB}:source,{bp.BACK_TARGET_DB}:target "
              "status=inactive",
              f"add customcode {CUSTOMCODE} whenrun=before_txn sync={bp.BACK_SYNC} src_code={HOME}/{CUSTOMCODE}.pl"]
    return steps


def ensure_way_back_armed(host: "Host", params: "Params", source: Source, plan: bp.SyncPlan, *,
                          dry_run: bool) -> Outcome:
    """06b, before the window: the way back's sync added, inactive. Adding it puts Bucardo's triggers on
    the primary's tables, so every change made there from now on is recorded, above all every write
    of the app once traffic is on, even before 09b starts the sync. Bucardo's own forward writes run
    as ``session_replication_role = replica`` and fire no trigger: nothing of the forward sync is
    recorded to go back."""
    what = f"way back armed: changes on {params.postgres.database} ({host.name}) recorded from now on"
    state = get_state(host, params)
    if bp.BACK_SYNC in state["syncs"]:
        return Outcome(what, False, dry_run, actions=[f"sync {bp.BACK_SYNC} exists "
                                                      f"({state['syncs'][bp.BACK_SYNC].get('status')})"])
    steps = _back_sync_steps(params, source, plan)
    if not dry_run:
        host.put_text(f"{HOME}/{CUSTOMCODE}.pl", templates.render_script("bucardo-owner-only.pl",
                                                                        {"PREFIX": bp.OWNER_ONLY_PREFIX}),
                      mode=0o600, owner="postgres")
        for st in steps:
            bucardo(host, st)
    return Outcome(what, True, dry_run, actions=[f"bucardo {st}" for st in steps])


def ensure_way_back(host: "Host", params: "Params", source: Source, plan: bp.SyncPlan, *,
                    dry_run: bool) -> list[Outcome]:
    """09b, traffic on: the forward sync ended (its schema and triggers dropped on the source), then the
    way back armed in 06b started, until the period ends: it applies every change the primary recorded
    since the window, then each new one. The source's role only owns its tables: our customcode
    replaces session_replication_role by deferred foreign keys."""
    src = params.source
    assert src is not None
    what = f"way back: {params.postgres.database} on {host.name} -> the source"
    state = get_state(host, params)
    back = state["syncs"].get(bp.BACK_SYNC)
    if back is None:
        raise SafetyCheckFailed(f"on {host.name}: the way back was not armed before the window (no sync "
                                f"{bp.BACK_SYNC}): the writes made on the primary since traffic went on were not "
                                "recorded and cannot be synced back", hint="A rollback to Heroku now would lose "
                                "them. Decide with the team: stay on the new primary, or plan a reverse migration.")
    if not dry_run:
        bs.ensure_service(host, source)  # tmpfs: gone if the primary restarted since 06b
    if back.get("status") == "active":
        started = ensure_running(host, params, dry_run=dry_run)
        return [Outcome(what, started, dry_run, actions=[f"sync {bp.BACK_SYNC} runs, until {get_way_back(host)}"])]
    until = time.time() + src.online.way_back_hours * 3600
    until_s = datetime.datetime.fromtimestamp(until, datetime.timezone.utc).strftime(clock.FORMAT)
    with source:
        fks = source.json(bp.NOT_DEFERRABLE_FKS_SQL) or []
    steps = [f"remove sync {bp.FORWARD_SYNC}", f"validate {bp.BACK_SYNC}", f"update sync {bp.BACK_SYNC} status=active"]
    actions = ["bucardo stop", f"bucardo remove sync {bp.FORWARD_SYNC}; its schema bucardo (delta tables, triggers) "
               "dropped on the source",
               f"{len(fks)} foreign keys on the source made DEFERRABLE INITIALLY IMMEDIATE (restored by the clean-up)"]
    actions += [f"bucardo {st}" for st in steps[1:]] + ["bucardo start", f"until {until_s} (source.online.way_back_hours)"]
    if plan.in_window:
        actions.append(f"NOT synced back (no key): {', '.join(plan.in_window)}")
    if dry_run:
        return [Outcome(what, True, True, actions=actions)]
    stop(host, params)
    if bp.FORWARD_SYNC in state["syncs"]:
        bucardo(host, steps[0])
    with source:
        source.execute([f"DROP SCHEMA IF EXISTS {bp.SCHEMA} CASCADE"])
        host.put_text(DEFERRED_FILE, json.dumps(fks) + "\n", mode=0o600, owner="postgres")
        source.execute(bp.render_deferrable(fks, deferrable=True))
    for st in steps[1:]:
        bucardo(host, st)
    host.put_text(UNTIL_FILE, until_s + "\n", mode=0o600, owner="postgres")
    ensure_running(host, params, dry_run=False)
    return [Outcome(what, True, False, actions=actions)]


# clean-up -----------------------------------------------------------------------------------------

def get_leftovers(endpoint: "PsqlEndpoint") -> dict[str, list[str]]:
    return endpoint.json(bp.LEFTOVERS_SQL) or {}


def run_cleanup(host: "Host", params: "Params", source: Source, *, dry_run: bool) -> tuple[list[Outcome],
                                                                                           list[dict[str, str]]]:
    """Bucardo removed everywhere: daemon, its schema in the source and the target (triggers, functions,
    delta tables), the source's foreign keys as they were, the control database and role, its files."""
    removed: list[dict[str, str]] = []
    with source:
        on_source = get_leftovers(source)
        fks = json.loads(host.read_text(DEFERRED_FILE, sudo_user="postgres") or "[]")
        on_target = get_leftovers(target(host, params))
        for where, found in (("source", on_source), (f"{params.postgres.database} on {host.name}", on_target)):
            removed += [{"where": where, "what": f"{k[:-1]} {n}"} for k, v in found.items() for n in v]
        removed += [{"where": "source", "what": f"foreign key {fk['table']}.{fk['name']} NOT DEFERRABLE again"}
                    for fk in fks]
        state = get_state(host, params)
        if state["control_db"]:
            removed.append({"where": host.name, "what": f"database {bp.CONTROL_DB}, role bucardo"})
        if any(bs.is_present(host, p) for p in (bs.SERVICE_FILE, bs.SERVICE_LINK, HOME)):
            removed.append({"where": host.name, "what": f"{bs.SERVICE_FILE}, {bs.SERVICE_LINK}, {HOME}"})
        try:  # 09b never ran: the window's snapshots are still held (the primary's vacuum waits on them)
            held = get_held_snapshots(host)
        except SafetyCheckFailed:  # a hold that never completed: nothing to end
            held = None
        if held:
            removed.append({"where": f"source and {host.name}", "what": "the sessions holding the window's snapshots"})
        if dry_run:
            return [Outcome("Bucardo removed", bool(removed), True, actions=[f"{r['where']}: {r['what']}"
                                                                           for r in removed])], removed
        if held:
            run_release_snapshots(host, params, source, held)
        if state["control_db"]:
            stop(host, params)
        source.execute([f"DROP SCHEMA IF EXISTS {bp.SCHEMA} CASCADE"] + bp.render_deferrable(fks, deferrable=False))
    target(host, params).execute([f"DROP SCHEMA IF EXISTS {bp.SCHEMA} CASCADE"])
    target(host, params, "postgres").execute([f"DROP DATABASE IF EXISTS {bp.CONTROL_DB} WITH (FORCE)",
                                              "DROP ROLE IF EXISTS bucardo"])
    host.run(f"rm -rf {HOME} {bs.SERVICE_DIR} {bs.SERVICE_LINK}", quiet=True)
    return [Outcome("Bucardo removed", bool(removed), False, actions=[f"{r['where']}: {r['what']}"
                                                                    for r in removed])], removed


def check_removed(host: "Host", params: "Params", source: Source) -> list[Check]:
    """After the clean-up: nothing of Bucardo on the source, the target or the primary's cluster."""
    with source:
        checks = [bp.check_no_leftovers("source", get_leftovers(source))]
    checks.append(bp.check_no_leftovers(f"{params.postgres.database} on {host.name}",
                                        get_leftovers(target(host, params))))
    state = get_state(host, params)
    checks.append(Check.of("no Bucardo control database or daemon", not state["control_db"] and not state["running"],
                           "gone" if not state["control_db"] else f"database {bp.CONTROL_DB} still there", host.name))
    checks.append(Check.of("no Bucardo files", not any(bs.is_present(host, p) for p in (bs.SERVICE_DIR, bs.SERVICE_LINK, HOME)),
                           "gone", host.name))
    return checks


__all__ = ["HOME", "Inventory", "check_removed", "check_schema_unchanged", "check_sequences", "check_window_side",
           "ensure_bucardo", "ensure_forward_sync", "ensure_running", "ensure_schema", "ensure_way_back",
           "ensure_way_back_armed", "get_held_snapshots", "get_lag", "get_leftovers", "get_state", "get_sync_plan",
           "get_way_back", "is_syncing", "packages", "paused", "paused_if_syncing", "plan_window", "raise_on_drift",
           "run_cleanup",
           "run_hold_snapshots", "run_release_snapshots", "run_set_sequences", "run_window", "run_window_copies",
           "stop", "verify_held", "wait_for_drained", "wait_for_initial_copy", "window_result"]
