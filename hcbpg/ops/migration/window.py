"""The online transfer's window (inside 07, the app stopped): its plan, Bucardo drained, the sequences set,
the tables Bucardo cannot sync copied whole and the materialized views refreshed (each proved by 06b
beforehand with the same command: :func:`run_window_proof`), the window's checks, and the snapshots of
both sides held so that 09b counts every row in them after traffic is on (:func:`check_held_rows`).  The
steps compose these in :func:`hcbpg.steps.online.window`."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.desired.migration import ROLLBACK, ROLLBACK_WAY_BACK
from hcbpg.errors import DatabaseError, SafetyCheckFailed, VerificationFailed, WaitTimeout
from hcbpg.ops.migration.app_checks import check_from_app
from hcbpg.ops.migration.bucardo import (
    HOME,
    check_schema_unchanged,
    ensure_running,
    get_lag,
    get_state,
    get_sync_plan,
    run_bucardo,
)
from hcbpg.ops.migration.database import get_target_state
from hcbpg.ops.migration.plan import Plan
from hcbpg.ops.migration.source import get_source_facts, get_source_writer, get_target
from hcbpg.ops.migration.verify import Verification, check_table_owners
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import bucardo as bp
from hcbpg.pg.conninfo import APPLICATION_NAME
from hcbpg.pg.inventory import Inventory, compare_rows, render_snapshot_setup
from hcbpg.secrets import scrub_tail
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import EndpointLike, HostLike, SourceLike
    from hcbpg.params import Params

__all__ = ["SIDES", "SNAPSHOT_DIR", "check_sequences", "check_window_side", "get_held_snapshots", "get_snapshot_rows",
           "get_window_plan", "get_window_proof", "run_hold_snapshots", "run_refreshes", "run_release_snapshots",
           "run_set_sequences", "run_window_copies", "run_window_proof", "PROOF_FILE", "check_held_rows", "wait_for_drained"]

#: the window's snapshots (the holding sessions' outputs) and what 09b reads: their pids and ids
SNAPSHOT_DIR = f"{HOME}/snapshots"
#: the two sides of the held snapshots
SIDES = ("primary", "source")


def get_window_plan(host: "HostLike", params: "Params", source: "SourceLike") -> Plan:
    """07's plan for the online transfer (read-only): what the window does, and its preconditions
    (the database is not dropped: Bucardo filled it; the sync runs; the source can still be synced)."""
    src = params.source
    assert src is not None
    with source:
        facts = get_source_facts(source)
    state = get_state(host, params)
    plan = get_sync_plan(source, params)
    syncing = bp.FORWARD_SYNC in state["syncs"]
    lag = get_lag(source, plan.synced) if syncing else None
    outcomes = [Outcome(f"the window on {params.postgres.database} ({host.name}), filled by Bucardo", True, True,
                        actions=["drift guard: source and target compared by definition",
                                 f"Bucardo drained, at most {src.online.drain_timeout_s:.0f}s "
                                 "(source.online.drain_timeout_s)",
                                 *plan.window_actions(),
                                 "sequences, ownership and the sentinel read back from the app host checked",
                                 "a snapshot of the source and of the primary held: every table's rows are counted "
                                 "in them after traffic is on (09b)"])]
    # the drift guard before the window too: a deploy with migrations since 06b stops the cutover before
    # maintenance goes on, naming what differs (the window compares again, for a deploy after this plan)
    drift = check_schema_unchanged(host, params, source) if syncing else []
    checks = [Check.of("Bucardo's forward sync exists and runs", syncing and state["running"],
                       f"syncs {', '.join(state['syncs']) or 'none'}, daemon {'running' if state['running'] else 'stopped'}"
                       + ("" if syncing else ": run 06b first"), host.name),
              Check.of("the way back armed (its triggers record the primary's changes)",
                       bp.BACK_SYNC in state["syncs"],
                       f"sync {bp.BACK_SYNC} " + ("exists" if bp.BACK_SYNC in state["syncs"] else "missing: run 06b "
                                                  "again"), host.name),
              Check.of("Bucardo's lag before the window", lag is not None and lag["rows"] < 10_000,
                       f"{lag['rows']} rows, {lag['seconds']:.1f}s" if lag else "no sync", "source")]
    checks.append(bp.check_window_proven(plan, get_window_proof(host)))
    return Plan(outcomes, checks + drift + plan.checks, facts)


def wait_for_drained(host: "HostLike", params: "Params", source: "SourceLike", plan: bp.SyncPlan) -> dict[str, float]:
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
        ensure_running(host, params)
        run_bucardo(host, f"kick {bp.FORWARD_SYNC}", display=f"bucardo kick {bp.FORWARD_SYNC}", check=False, timeout=60)
    for i, _ in enumerate(polling_loop(timeout, interval=0.2)):
        if i:
            lag = get_lag(source, plan.synced)
        if lag["rows"] == 0:
            return {"lag_rows_at_open": first["rows"], "lag_s_at_open": first["seconds"],
                    "drain_s": round(time.monotonic() - t0, 3)}
    raise WaitTimeout(f"Bucardo did not drain within {timeout:.0f}s: {lag['rows']} changes still pending",
                      what="Bucardo drained", timeout=timeout, elapsed=time.monotonic() - t0, last=str(lag),
                      hint="The primary is incomplete: traffic must not start on it.\n" + ROLLBACK)


def run_set_sequences(host: "HostLike", params: "Params", source: "SourceLike") -> int:
    """Every sequence on the target set to the source's value (the source is frozen: nothing goes past it).
    The values come as JSON and each statement is rendered here, its name quoted as data."""
    with source:
        states = source.json(bp.SEQUENCE_STATES_SQL) or []
    statements = bp.render_setvals(states)
    if statements:
        get_target(host, params).script("\n".join(statements) + "\n", display=f"setval of {len(statements)} sequences "
                                    "on the target", quiet=False)
    return len(statements)


def _copy_command(host: "HostLike", params: "Params", source: "SourceLike", copy: bp.WindowCopy, *,
                  dry: bool) -> str:
    src = params.source
    assert src is not None
    return bp.render_window_copy(copy, source_cmd=f"{source.env} {source.conn_cmd}".strip(),
                                 target_cmd=get_target(host, params).conn_cmd,
                                 limit=src.online.window_copy_max_rows + 1 if dry else None, dry=dry)


def _copied_rows(out: str) -> int:
    lines = [ln for ln in out.split() if ln.strip()]
    return int(lines[-1]) if lines and lines[-1].isdigit() else -1


def run_window_copies(host: "HostLike", params: "Params", source: "SourceLike",
                      copies: Sequence[bp.WindowCopy]) -> list[str]:
    """The tables Bucardo cannot sync, copied whole inside the window, each in one transaction on the
    primary (:func:`hcbpg.pg.bucardo.render_window_copy`: the command 06b ran beforehand, :func:`run_window_proof`)."""
    done = []
    for c in copies:
        with source:
            host.run(f"bash -o pipefail -c {shlex.quote(_copy_command(host, params, source, c, dry=False))}",
                     sudo_user="postgres", display=f"copy {c.name} ({c.why}) source -> target", timeout=3600)
        done.append(c.name)
    return done


def run_refreshes(host: "HostLike", params: "Params", refreshes: Sequence[bp.Refresh]) -> dict[str, float]:
    """Each materialized view refreshed on the primary, in order; the seconds each took."""
    took: dict[str, float] = {}
    tgt = get_target(host, params)
    for r in refreshes:
        t = time.monotonic()
        tgt.script(bp.render_refresh(r) + ";\n", display=f"refresh materialized view {r.name} on the primary")
        took[r.name] = round(time.monotonic() - t, 3)
    return took


#: what 06b proved of the window, on the primary (07's plan compares the window with it)
PROOF_FILE = f"{HOME}/window-proof.json"


def run_window_proof(host: "HostLike", params: "Params", source: "SourceLike",
                     plan: bp.SyncPlan) -> tuple[list[dict[str, Any]], list[Check]]:
    """06b, days before the window: each of the window's copies run as the window will run it, its
    transaction on the primary rolled back (at most window_copy_max_rows + 1 rows read: more refuses the
    mode here, not in the window), each materialized view refreshed on the primary (it carries no traffic
    yet) and timed; what was proved written on the primary for 07. Returns a row per proof and the checks."""
    src = params.source
    assert src is not None
    limit = src.online.window_copy_max_rows
    rows: list[dict[str, Any]] = []
    checks: list[Check] = []
    for c in plan.copies:
        t = time.monotonic()
        with source:
            res = host.run(f"bash -o pipefail -c {shlex.quote(_copy_command(host, params, source, c, dry=True))}",
                           sudo_user="postgres", check=False, timeout=3600,
                           display=f"dry copy of {c.name} ({c.why}): the window's command, rolled back")
        n = _copied_rows(res.stdout) if res.ok else -1
        took = round(time.monotonic() - t, 3)
        ok = res.ok and 0 <= n <= limit
        rows.append({"what": f"copy {c.name}", "how": f"COPY (SELECT {len(c.columns)} column(s) FROM ONLY ...), "
                     "rolled back", "rows": n, "seconds": took, "status": "pass" if ok else "fail"})
        checks.append(Check.of(f"the window can copy {c.name}", ok,
                               f"{n} rows in {took:.2f}s through the window's command (rolled back)" if ok else
                               f"more than {limit} rows (source.online.window_copy_max_rows; its estimate said "
                               f"{c.rows}): add a key on the source or raise the limit" if res.ok else
                               "the window's copy fails: " + scrub_tail(res.output, 600)
                               + ". Fix it on the source (or add a key so Bucardo syncs it), then run 06b again.",
                               "source"))
    for r in plan.refreshes:
        t = time.monotonic()
        try:
            run_refreshes(host, params, [r])
            err = ""
        except DatabaseError as exc:
            err = str(exc)
        took = round(time.monotonic() - t, 3)
        rows.append({"what": f"refresh {r.name}", "how": "REFRESH MATERIALIZED VIEW on the primary",
                     "rows": "-", "seconds": took, "status": "fail" if err else "pass"})
        checks.append(Check.of(f"the window can refresh {r.name}", not err,
                               f"refreshed on the primary in {took:.2f}s" if not err else err[:600], host.name))
    if all(c.ok for c in checks):
        proof = {**bp.render_window_proof(plan), "seconds": round(sum(float(r["seconds"]) for r in rows), 3)}
        host.put_text(PROOF_FILE, json.dumps(proof) + "\n", mode=0o600, owner="postgres")
    return rows, checks


def get_window_proof(host: "HostLike") -> dict[str, Any] | None:
    """What 06b proved of the window (None when it proved nothing yet)."""
    text = host.read_text(PROOF_FILE, sudo_user="postgres")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def check_sequences(host: "HostLike", params: "Params", source: "SourceLike") -> Check:
    """After the window set them: every sequence on the primary at the source's value (both read at once)."""
    with source, ThreadPoolExecutor(max_workers=1) as pool:
        tgt_future = pool.submit(get_target(host, params).json, bp.SEQUENCE_VALUES_SQL)
        src_seq = source.json(bp.SEQUENCE_VALUES_SQL) or {}
        tgt_seq = tgt_future.result() or {}
    return bp.check_sequences_equal(src_seq, tgt_seq, host.name)


def check_window_side(host: "HostLike", params: "Params", src_inv: Inventory, *, app: "HostLike | None",
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


# the snapshots held for 09b -----------------------------------------------------------------------

def run_hold_snapshots(host: "HostLike", params: "Params", source: "SourceLike") -> dict[str, dict[str, Any]]:
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


def get_held_snapshots(host: "HostLike") -> dict[str, dict[str, Any]] | None:
    """The snapshots the window holds (pids and ids), or None when none are held."""
    res = host.probe(f"test -d {SNAPSHOT_DIR} && for s in {' '.join(SIDES)}; do printf '%s ' $s; "
                     f"cat {SNAPSHOT_DIR}/$s.snapshot 2>/dev/null || echo; done", sudo_user="postgres")
    return bp.parse_held_snapshots(res.stdout, SIDES) if res.ok else None


def run_release_snapshots(host: "HostLike", params: "Params", source: "SourceLike",
                          held: Mapping[str, Mapping[str, Any]]) -> None:
    """End the sessions holding the window's snapshots (the primary's vacuum no longer waits on them)."""
    stmt = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = {} AND application_name = {}"
    get_target(host, params).execute([sql.SQL(stmt).format(sql.Literal(int(held["primary"]["pid"])),
                                                       sql.Literal(APPLICATION_NAME))])
    with source:
        get_source_writer(host, source).execute([sql.SQL(stmt).format(sql.Literal(int(held["source"]["pid"])),
                                                                  sql.Literal(APPLICATION_NAME))])
    host.run(f"rm -rf {SNAPSHOT_DIR}", quiet=True)


def get_snapshot_rows(endpoint: "EndpointLike", snapshot: str) -> dict[str, int]:
    """Every user table's exact rows as the session that exported *snapshot* saw them (Bucardo's left out:
    its delta tables may be gone since)."""
    return endpoint.json(bp.SNAPSHOT_COUNTS_SQL, setup="SET search_path = pg_catalog;\n"
                         + render_snapshot_setup(snapshot)) or {}


def check_held_rows(host: "HostLike", params: "Params", source: "SourceLike") -> Verification:
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
            tgt_future = pool.submit(get_snapshot_rows, get_target(host, params), str(held["primary"]["snapshot"]))
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
