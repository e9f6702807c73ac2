"""The online transfer's steps (``source.transfer: online``): 06b before the window (Bucardo, schema,
initial copy, continuous sync, lag, drift guard), the window inside 07 (:func:`window`), 09b the way
back after traffic is on, 16 the clean-up.  Each notebook skips itself for the other transfers.

The operations are in :mod:`hcbpg.ops.migration.bucardo` (Bucardo control), ``window`` and ``wayback``;
this module is where they are composed (the window's phases, the streamed initial copy, Bucardo
paused around another step's restart)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from hcbpg import clock
from hcbpg.adapters.base import HostLike
from hcbpg.desired.migration import ROLLBACK, ROLLBACK_WAY_BACK, raise_on_drift
from hcbpg.display import show_plan, show_table
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import migration
from hcbpg.ops.migration import bucardo, bucardo_service, stream, wayback
from hcbpg.ops.migration import window as win
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import bucardo as bp
from hcbpg.pg.inventory import comparison_table
from hcbpg.steps import targets
from hcbpg.steps._migration import connect, run_label, skip_if_live, verify

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.pg.bucardo import SyncPlan
    from hcbpg.steps.context import Run

__all__ = ["arm_way_back", "before_triggers", "cleanup", "connect", "drift_guard", "install", "is_online", "paused_if_syncing",
           "plan", "prove_window", "run_initial_stream", "run_schema_copy", "run_window", "schema", "show_window_plan",
           "skip_if_live", "skip_unless_online", "start_sync", "verify_after_traffic", "wait_for_copy", "way_back", "window"]


def is_online(rb: "Run") -> bool:
    return migration.transfer_method(rb.params) == "online"


def skip_unless_online(rb: "Run") -> None:
    """End the step early unless params choose the online transfer."""
    if not is_online(rb):
        rb.skip(f"source.transfer is {migration.transfer_method(rb.params)}, not online: 07 moves the data "
                "while the app is down; nothing to sync beforehand.")


def _on(rb: "Run", host: "Host") -> HostLike:
    """What the operations get for the primary: the host, or a dry run of it."""
    return targets.hostlike(rb, rb.params.primary.name, host)


def paused_if_syncing(host: "HostLike | None", params: "Params", why: str, *,
                      changes: bool) -> AbstractContextManager[None]:
    """Bucardo's daemon stopped while *why* happens on *host* (the primary, None when it is not there),
    when *changes* will be made there while the forward sync runs; else nothing is stopped (a second run
    that changes nothing stops nothing)."""
    if host is None or not changes or not bucardo.get_syncing(host, params):
        return nullcontext()
    return bucardo.run_paused(host, params, why)


# 06b ----------------------------------------------------------------------------------------------

def plan(rb: "Run", host: "Host | None", source: "migration.Source | None") -> "SyncPlan | None":
    """How each table moves (synced, copied inside the window, refused), shown; a refusal fails the step."""
    if host is None or source is None:
        print("no primary yet: the source is checked when it exists")
        return None
    p = bucardo.get_sync_plan(source, rb.params)
    show_table(p.rows(), ["table", "moved"])
    print(f"sequences synced by Bucardo: {len(p.sequences)}; large objects: {p.large_objects}")
    print("what the window (07) will do, each proved below before it:")
    for a in p.window_actions():
        print(f"  - {a}")
    verify(rb, p.checks)
    return p


def before_triggers(rb: "Run", host: "Host | None", source: "migration.Source | None") -> list[Check]:
    """Before Bucardo's triggers are added (a lock on every table of the live source): no anti-wraparound
    VACUUM running (06b waits for it, then refuses), and the lock_timeout the triggers are added with."""
    if host is None or source is None:
        return []
    on = rb.params.source.online if rb.params.source is not None else None
    assert on is not None
    checks = bucardo.get_wraparound(source)
    checks.append(Check("Bucardo's locks on the source bounded", "pass",
                        f"lock_timeout {on.lock_timeout_ms} ms on every session of Bucardo there, at most "
                        f"{on.lock_retries + 1} attempts {on.lock_retry_wait_s:.0f}s apart "
                        "(source.online.lock_timeout_ms, lock_retries)", "source"))
    if not checks[0].ok and not rb.dry_run:
        checks[:2] = bucardo.wait_for_no_wraparound_vacuum(source, rb.params)
    return rb.verify(checks, title="before Bucardo's triggers")


def prove_window(rb: "Run", host: "Host | None", source: "migration.Source | None",
                 p: "SyncPlan | None") -> list[dict[str, Any]]:
    """Each of the window's copies run beforehand through the window's own command (rolled back on the
    primary), each materialized view refreshed and timed: a failure stops here, days before the window."""
    if rb.dry_run or host is None or source is None or p is None:
        return []
    rows, checks = win.run_window_proof(host, rb.params, source, p)
    show_table(rows or [{"what": "nothing to copy or refresh inside the window", "how": "-", "rows": "-",
                         "seconds": "-", "status": "pass"}], ["what", "how", "rows", "seconds", "status"])
    rb.record("online_window_proof", rows)
    verify(rb, checks)
    return rows


def install(rb: "Run", host: "Host | None", source: "migration.Source | None") -> None:
    """Bucardo's packages, files and control database on the primary."""
    if host is None or source is None:
        return
    rb.track(bucardo.ensure_bucardo(_on(rb, host), rb.params, source))


def run_schema_copy(host: "HostLike", params: "Params", source: "migration.Source", *, run_label: str) -> None:
    """The source's schema on the primary: ``pg_dump --schema-only`` of a snapshot (before Bucardo's
    triggers exist), restored as 07 would (the database recreated)."""
    facts = migration.get_source_facts(source)
    with source:
        dump = migration.run_dump(host, params, source, "online-schema", with_counts=False, schema_only=True)
        try:
            migration.run_restore(host, params, dump, facts, run_label=run_label)
        finally:
            migration.ensure_dump_removed(host, dump)


def schema(rb: "Run", host: "Host | None", source: "migration.Source | None") -> None:
    """The source's schema on the primary (:func:`run_schema_copy`), unless the forward sync exists already
    (then the schema is there and Bucardo fills it)."""
    if host is None or source is None:
        return
    pg = rb.params.postgres
    what = f"schema of the source in {pg.database} on {host.name}"
    if bp.FORWARD_SYNC in bucardo.get_state(host, rb.params)["syncs"]:
        rb.track(Outcome(what, False, rb.dry_run, actions=[f"sync {bp.FORWARD_SYNC} exists: the schema is in place"]))
        return
    if not rb.dry_run:
        run_schema_copy(host, rb.params, source, run_label=run_label(rb))
    rb.track(Outcome(what, True, rb.dry_run, actions=[
        "pg_dump --schema-only (in an exported snapshot, without schema bucardo)",
        f"drop and recreate {pg.database}, then pg_restore the schema as {pg.app_role}"]))


def run_initial_stream(host: "HostLike", params: "Params", source: "migration.Source", *, run_label: str) -> None:
    """``initial_copy: stream``: every table copied with the streamed transfer in a snapshot exported after
    Bucardo's triggers exist (the database recreated; rows, then each table's indexes), then the forward
    sync activated: it applies every change recorded since its triggers exist, so none is lost."""
    bucardo.run_stop(host, params)  # a rerun after a failed copy: nothing of Bucardo may hold the database
    facts = migration.get_source_facts(source)
    with source:
        _, restore = stream.run_stream(host, params, source, facts, "online-copy", run_label=run_label)
    print(f"initial copy streamed in {restore.seconds:.1f}s")
    bucardo.run_activate_forward_sync(host, params)


def start_sync(rb: "Run", host: "Host | None", source: "migration.Source | None",
               p: "SyncPlan | None") -> None:
    """The forward sync; with ``initial_copy: stream`` the streamed copy in a snapshot taken after Bucardo's
    triggers exist (the database recreated: rows, then each table's indexes), then the sync activated."""
    if host is None or source is None or p is None:
        return
    src = rb.params.source
    assert src is not None
    rb.track(bucardo.ensure_forward_sync(_on(rb, host), rb.params, source, p))
    fwd = bucardo.get_state(host, rb.params)["syncs"].get(bp.FORWARD_SYNC)
    if src.online.initial_copy != "stream" or (fwd is not None and fwd.get("status") == "active"):
        return
    what = f"initial copy of the source into {rb.params.postgres.database} on {host.name} (streamed)"
    actions = ["the streamed transfer in a snapshot taken after Bucardo's triggers exist (the database recreated; "
               "rows, then each table's indexes)", f"bucardo update sync {bp.FORWARD_SYNC} status=active",
               "bucardo start"]
    if rb.dry_run:
        rb.track(Outcome(what, True, True, actions=actions))
        return
    run_initial_stream(host, rb.params, source, run_label=run_label(rb))
    rb.track(Outcome(what, True, False, actions=actions))


def wait_for_copy(rb: "Run", host: "Host | None", source: "migration.Source | None",
                  p: "SyncPlan | None") -> list[dict[str, Any]]:
    """Until the initial copy is done and the lag is small; the lag (rows, seconds) as it catches up."""
    if rb.dry_run or host is None or source is None or p is None:
        return []
    seen = bucardo.wait_for_initial_copy(host, rb.params, source, p)
    rb.record("online_lag", seen)
    return seen


def arm_way_back(rb: "Run", host: "Host | None", source: "migration.Source | None",
                 p: "SyncPlan | None") -> None:
    """06b: the way back's sync added (inactive): the primary records its changes from now on."""
    if host is None or source is None or p is None:
        return
    rb.track(wayback.ensure_way_back_armed(_on(rb, host), rb.params, source, p))


def drift_guard(rb: "Run", host: "Host | None", source: "migration.Source | None") -> list[Check]:
    """Source and target compared by definition: any difference stops here, naming it."""
    if rb.dry_run or host is None or source is None:
        return []
    checks = bucardo.check_schema_unchanged(host, rb.params, source)
    raise_on_drift(checks)
    return rb.verify(checks, title="schema drift guard")


# 07: the window -----------------------------------------------------------------------------------

def show_window_plan(rb: "Run", host: "Host | None",
                     source: "migration.Source | None") -> "migration.Plan | None":
    """07's plan for the online transfer: the window, no database dropped (Bucardo filled it)."""
    if host is None or source is None:
        return None
    p = win.get_window_plan(host, rb.params, source)
    show_plan(p.outcomes)
    return p


def run_window(host: "HostLike", params: "Params", source: "migration.Source", *, app: "HostLike | None",
               password: str | None, sentinel_expect: str | None
               ) -> tuple["migration.Verification", dict[str, float], list[Check], list[str]]:
    """The window after the writes stopped: drift guard, drain, sequences, keyless copies, the window's
    checks (sequences, ownership, the sentinel from the app host), then the snapshots held for 09b.
    Returns the verification, each phase's seconds, the drift guard's checks and the tables copied."""
    t = time.monotonic()
    bucardo_service.ensure_service(host, source)  # tmpfs: gone if the primary restarted since 06b
    sync_plan = bucardo.get_sync_plan(source, params)
    if not sync_plan.ok:
        raise SafetyCheckFailed("the source can no longer be synced: " + "; ".join(
            c.detail for c in sync_plan.checks if c.status == "fail"), hint=ROLLBACK)
    phases: dict[str, float] = {"sync_plan_s": round(time.monotonic() - t, 3)}
    t = time.monotonic()
    drift, src_inv, tgt_inv = bucardo.get_drift(host, params, source)
    raise_on_drift(drift)
    phases["drift_guard_s"] = round(time.monotonic() - t, 3)
    phases.update(win.wait_for_drained(host, params, source, sync_plan))
    with ThreadPoolExecutor(max_workers=1) as pool:
        side = pool.submit(win.check_window_side, host, params, src_inv, app=app, password=password,
                           sentinel_expect=sentinel_expect)
        t = time.monotonic()
        win.run_set_sequences(host, params, source)
        phases["sequences_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        copied = win.run_window_copies(host, params, source, sync_plan.copies)
        phases["window_copy_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        win.run_refreshes(host, params, sync_plan.refreshes)
        phases["refresh_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        checks = drift + [win.check_sequences(host, params, source)] + side.result()
        phases["checks_s"] = round(time.monotonic() - t, 3)  # what the checks beside them still took
    if not any(c.status == "fail" for c in checks):
        t = time.monotonic()
        win.run_hold_snapshots(host, params, source)
        phases["snapshots_s"] = round(time.monotonic() - t, 3)
    table = comparison_table(src_inv, tgt_inv)[:-1] + [
        {"what": "rows (all tables)", "source": "counted in 09b", "target": "counted in 09b",
         "status": "after traffic is on (09b)"}]
    seconds = sum(v for k, v in phases.items() if k in ("checks_s", "snapshots_s"))
    return migration.Verification(checks, table, seconds, src_inv, tgt_inv), phases, drift, copied


def window_result(ver: "migration.Verification", phases: Mapping[str, float], copied: Sequence[str],
                  what: str) -> "migration.MigrationResult":
    """The window as the offline transfer's result (so 07 records it the same way)."""
    dump = migration.DumpResult("", "online (Bucardo)", float(phases.get("drain_s", 0.0)), 0, ver.source)
    restore = migration.RestoreResult(float(phases.get("sequences_s", 0.0)) + float(phases.get("window_copy_s", 0.0)),
                                      0.0, [], {}, [f"copied inside the window (no key): {', '.join(copied) or 'none'}"])
    out = [Outcome(what, True, False, actions=[f"{k} {v}" for k, v in phases.items()])]
    return migration.MigrationResult(dump, restore, ver, dict(phases), out)


def window(rb: "Run", host: "Host", source: "migration.Source",
           sentinel: str) -> "migration.MigrationResult":
    """07 for the online transfer, after the gates, the quiet source and the sentinel: drift guard, drain,
    sequences, keyless tables copied, the window's checks with the sentinel read back from the app host,
    then the snapshots of both sides held for the exact count of every row after traffic is on (09b)."""
    app = targets.app_host(rb)
    ver, phases, drift, copied = run_window(host, rb.params, source, app=app,
                                            password=rb.secret("postgres.app_role_password"),
                                            sentinel_expect=sentinel)
    show_table([{"check": c.name, "status": c.status} for c in drift if c.status != "pass"] or
               [{"check": "schema drift guard", "status": "pass"}], ["check", "status"])
    print(f"lag when the window opened: {phases['lag_rows_at_open']} rows, {phases['lag_s_at_open']:.1f}s; "
          f"drained in {phases['drain_s']:.1f}s; sequences set in {phases['sequences_s']:.1f}s; "
          f"copied inside the window: {', '.join(copied) or 'none'}; checks {phases['checks_s']:.1f}s"
          + (f"; snapshots held in {phases['snapshots_s']:.1f}s: every row is counted in them by 09b"
             if "snapshots_s" in phases else ""))
    return window_result(ver, phases, copied,
                         f"database {rb.params.postgres.database} on {host.name} completed by Bucardo's drain")


# 09b and 16 ---------------------------------------------------------------------------------------

def way_back(rb: "Run", host: "Host | None", source: "migration.Source | None") -> None:
    """09b: changes on the new primary synced back to the source until the period ends."""
    if host is None or source is None:
        return
    p = bucardo.get_sync_plan(source, rb.params)
    rb.track(wayback.ensure_way_back(_on(rb, host), rb.params, source, p))
    if not rb.dry_run:
        until = wayback.get_way_back(host)
        rb.record("way_back_until", until)
        print(f"the way back runs until {until}; then run 16_online_cleanup")


def verify_after_traffic(rb: "Run", host: "Host | None",
                         source: "migration.Source | None") -> list[Check]:
    """09b: every row of every table counted in the snapshots held since the window, source against
    primary; a failure says so at once, with the rollback through the way back."""
    if rb.dry_run or host is None or source is None:
        return []
    if win.get_held_snapshots(host) is None and rb.recall("online_verification", default=None):
        print("verified by an earlier run of this step (its snapshots were released)")
        return []
    ver = win.check_held_rows(host, rb.params, source)
    show_table(ver.table, ["what", "source", "target", "status"])
    rb.record("online_verification", {"seconds": round(ver.seconds, 3), "tables": len(ver.target.rows),
                                      "rows": sum(ver.target.rows.values()),
                                      "fail": sum(c.status == "fail" for c in ver.checks)})
    return verify(rb, ver.checks, rollback=ROLLBACK_WAY_BACK,
                  stops="TRAFFIC IS ON AND THE PRIMARY IS NOT COMPLETE: roll back now.")


def cleanup(rb: "Run", host: "Host | None", source: "migration.Source | None") -> list[dict[str, str]]:
    """16: the period over (or ended early behind a gate), Bucardo removed from source and target; shown."""
    if host is None or source is None:
        return []
    until = wayback.get_way_back(host)
    if until and clock.parse_time(until) > clock.parse_time(clock.utcnow()) and not rb.dry_run:
        rb.gate("end-way-back-early", f"The way back runs until {until}. End it now? Writes made on the new "
                "primary from then on are no longer copied to the old database (a rollback would lose them).")
    outcome, removed = wayback.run_cleanup(_on(rb, host), rb.params, source)
    rb.track(outcome, show=False)
    show_table(removed or [{"where": "-", "what": "nothing of Bucardo was left"}], ["where", "what"])
    rb.record("online_cleanup", removed)
    if not rb.dry_run:
        verify(rb, wayback.check_removed(host, rb.params, source))
    return removed
