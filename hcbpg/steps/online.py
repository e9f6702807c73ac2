"""The online transfer's steps (``source.transfer: online``): 06b before the window (Bucardo, schema,
initial copy, continuous sync, lag, drift guard), the window inside 07 (:func:`window`), 09b the way
back after traffic is on, 16 the clean-up.  Each notebook skips itself for the other transfers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hcbpg import clock
from hcbpg.display import show_plan, show_table
from hcbpg.ops import migration
from hcbpg.ops.migration import online
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import targets
from hcbpg.steps._migration import MigrationRunbook, connect, run_label, skip_if_live, verify

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.pg.bucardo import SyncPlan

__all__ = ["arm_way_back", "cleanup", "connect", "drift_guard", "install", "is_online", "plan", "plan_window", "schema",
           "skip_if_live", "skip_unless_online", "start_sync", "verify_after_traffic", "wait_for_copy", "way_back",
           "window"]


def is_online(rb: MigrationRunbook) -> bool:
    return migration.transfer_method(rb.params) == "online"


def skip_unless_online(rb: MigrationRunbook) -> None:
    """End the step early unless params choose the online transfer."""
    if not is_online(rb):
        rb.skip(f"source.transfer is {migration.transfer_method(rb.params)}, not online: 07 moves the data "
                "while the app is down; nothing to sync beforehand.")


def plan(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> "SyncPlan | None":
    """How each table moves (synced, copied inside the window, refused), shown; a refusal fails the step."""
    if host is None or source is None:
        print("no primary yet: the source is checked when it exists")
        return None
    p = online.get_sync_plan(source, rb.params)
    show_table(p.rows(), ["table", "moved"])
    print(f"sequences synced by Bucardo: {len(p.sequences)}; large objects: {p.large_objects}")
    verify(rb, p.checks)
    return p


def install(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> None:
    if host is None or source is None:
        return
    rb.track(online.ensure_bucardo(host, rb.params, source, dry_run=rb.dry_run))


def schema(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> None:
    if host is None or source is None:
        return
    facts = migration.get_source_facts(source)
    rb.track(online.ensure_schema(host, rb.params, source, facts, run_label=run_label(rb), dry_run=rb.dry_run))


def start_sync(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None",
               p: "SyncPlan | None") -> None:
    if host is None or source is None or p is None:
        return
    facts = migration.get_source_facts(source)
    rb.track(online.ensure_forward_sync(host, rb.params, source, p, facts=facts, run_label=run_label(rb),
                                        dry_run=rb.dry_run))


def wait_for_copy(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None",
                  p: "SyncPlan | None") -> list[dict[str, Any]]:
    """Until the initial copy is done and the lag is small; the lag (rows, seconds) as it catches up."""
    if rb.dry_run or host is None or source is None or p is None:
        return []
    seen = online.wait_for_initial_copy(host, rb.params, source, p)
    rb.record("online_lag", seen)
    return seen


def arm_way_back(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None",
                 p: "SyncPlan | None") -> None:
    """06b: the way back's sync added (inactive): the primary records its changes from now on."""
    if host is None or source is None or p is None:
        return
    rb.track(online.ensure_way_back_armed(host, rb.params, source, p, dry_run=rb.dry_run))


def drift_guard(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> list[Check]:
    """Source and target compared by definition: any difference stops here, naming it."""
    if rb.dry_run or host is None or source is None:
        return []
    checks = online.check_schema_unchanged(host, rb.params, source)
    online.raise_on_drift(checks)
    return rb.verify(checks, title="schema drift guard")


def plan_window(rb: MigrationRunbook, host: "Host | None",
                source: "migration.Source | None") -> "migration.Plan | None":
    """07's plan for the online transfer: the window, no database dropped (Bucardo filled it)."""
    if host is None or source is None:
        return None
    p = online.plan_window(host, rb.params, source)
    show_plan(p.outcomes)
    return p


def window(rb: MigrationRunbook, host: "Host", source: "migration.Source",
           sentinel: str) -> "migration.MigrationResult":
    """07 for the online transfer, after the gates, the quiet source and the sentinel: drift guard, drain,
    sequences, keyless tables copied, the window's checks with the sentinel read back from the app host,
    then the snapshots of both sides held for the exact count of every row after traffic is on (09b)."""
    app = targets.app_host(rb)  # type: ignore[arg-type]
    ver, phases, drift, copied = online.run_window(host, rb.params, source, app=app,
                                                   password=rb.secret("postgres.app_role_password"),
                                                   sentinel_expect=sentinel)
    show_table([{"check": c.name, "status": c.status} for c in drift if c.status != "pass"] or
               [{"check": "schema drift guard", "status": "pass"}], ["check", "status"])
    print(f"lag when the window opened: {phases['lag_rows_at_open']} rows, {phases['lag_s_at_open']:.1f}s; "
          f"drained in {phases['drain_s']:.1f}s; sequences set in {phases['sequences_s']:.1f}s; "
          f"copied inside the window: {', '.join(copied) or 'none'}; checks {phases['checks_s']:.1f}s"
          + (f"; snapshots held in {phases['snapshots_s']:.1f}s: every row is counted in them by 09b"
             if "snapshots_s" in phases else ""))
    dump, restore = online.window_result(ver, phases, copied)
    out = [Outcome(f"database {rb.params.postgres.database} on {host.name} completed by Bucardo's drain",
                             True, False, actions=[f"{k} {v}" for k, v in phases.items()])]
    return migration.MigrationResult(dump, restore, ver, dict(phases), out)


def way_back(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> None:
    """09b: changes on the new primary synced back to the source until the period ends."""
    if host is None or source is None:
        return
    p = online.get_sync_plan(source, rb.params)
    rb.track(online.ensure_way_back(host, rb.params, source, p, dry_run=rb.dry_run))
    if not rb.dry_run:
        until = online.get_way_back(host)
        rb.record("way_back_until", until)
        print(f"the way back runs until {until}; then run 16_online_cleanup")


def verify_after_traffic(rb: MigrationRunbook, host: "Host | None",
                         source: "migration.Source | None") -> list[Check]:
    """09b: every row of every table counted in the snapshots held since the window, source against
    primary; a failure says so at once, with the rollback through the way back."""
    if rb.dry_run or host is None or source is None:
        return []
    if online.get_held_snapshots(host) is None and rb.recall("online_verification", default=None):
        print("verified by an earlier run of this step (its snapshots were released)")
        return []
    ver = online.verify_held(host, rb.params, source)
    show_table(ver.table, ["what", "source", "target", "status"])
    rb.record("online_verification", {"seconds": round(ver.seconds, 3), "tables": len(ver.target.rows),
                                      "rows": sum(ver.target.rows.values()),
                                      "fail": sum(c.status == "fail" for c in ver.checks)})
    return verify(rb, ver.checks, rollback=migration.ROLLBACK_WAY_BACK,
                  stops="TRAFFIC IS ON AND THE PRIMARY IS NOT COMPLETE: roll back now.")


def cleanup(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> list[dict[str, str]]:
    """16: the period over (or ended early behind a gate), Bucardo removed from source and target; shown."""
    if host is None or source is None:
        return []
    until = online.get_way_back(host)
    if until and clock.parse_time(until) > clock.parse_time(clock.utcnow()) and not rb.dry_run:
        rb.gate("end-way-back-early", f"The way back runs until {until}. End it now? Writes made on the new "
                "primary from then on are no longer copied to the old database (a rollback would lose them).")
    outcomes, removed = online.run_cleanup(host, rb.params, source, dry_run=rb.dry_run)
    rb.track(outcomes, show=False)
    show_table(removed or [{"where": "-", "what": "nothing of Bucardo was left"}], ["where", "what"])
    rb.record("online_cleanup", removed)
    if not rb.dry_run:
        verify(rb, online.check_removed(host, rb.params, source))
    return removed
