"""Step 07, the cutover: with the app stopped (gates), wait for a quiet source, write the sentinel
on it, dump and restore for real, verify, roll the app role's password."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.errors import HcbpgError
from hcbpg.ops import migration
from hcbpg.ops.cluster import get_psql
from hcbpg.ops.replication import check_unlogged_tables
from hcbpg.outcome import Check
from hcbpg.steps import online, targets
from hcbpg.steps._migration import (
    connect,
    dump_tag,
    preconditions,
    run_label,
    run_migration,
    show_comparison,
    skip_if_live,
    summary,
    verify,
)
from hcbpg.steps._migration import plan as plan_offline

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.steps.context import Run

__all__ = ["apply", "check", "check_source_quiet_step", "connect", "plan", "preconditions", "record_phases",
           "record_value", "roll_password", "skip_if_live", "wait_for_quiet_source", "write_sentinel"]


def plan(rb: "Run", host: "Host | None", source: "migration.Source | None") -> "migration.Plan | None":
    """The plan of 07: the dump and restore, or with ``source.transfer: online`` the window (nothing dropped)."""
    if online.is_online(rb) and host is not None and source is not None:
        return online.show_window_plan(rb, host, source)
    return plan_offline(rb, host, source)


def check_source_quiet_step(rb: "Run", source: "migration.Source | None") -> Check:
    """07: wait until the source has no other connections (a dry run only looks: the app still runs)."""
    if source is None:
        return Check("no other connections on the source", "warn", "no primary yet: not checked", "source")
    if rb.dry_run:
        try:
            c = migration.check_source_quiet(migration.get_source_sessions(source))
        except HcbpgError as exc:
            return Check("no other connections on the source", "warn",
                         f"dry run: could not look ({exc.message.splitlines()[0][:200]})", "source")
        if not c.ok:
            c = Check(c.name, "warn", c.detail + " (dry run: the app still runs; the real run waits for them to go)",
                      c.target)
        return c
    src = rb.params.source
    assert src is not None
    return migration.wait_for_source_quiet(source, timeout=src.quiet_timeout_s)


def wait_for_quiet_source(rb: "Run", source: "migration.Source | None") -> list[Check]:
    """The source quiet (waited for), as a verified check carrying the rollback instructions."""
    return verify(rb, [check_source_quiet_step(rb, source)], rollback=migration.ROLLBACK)


def write_sentinel(rb: "Run", source: "migration.Source | None") -> str:
    """The runbook's last write on the source (not in a dry run); returns the value written."""
    sentinel = migration.sentinel_value(rb.run_id)
    if not rb.dry_run:
        assert source is not None
        rb.track(migration.run_sentinel_write(source, rb.params, sentinel))
    return sentinel


def apply(rb: "Run", host: "Host | None", source: "migration.Source | None",
          p: "migration.Plan | None", sentinel: str) -> "migration.MigrationResult | None":
    """Dump, drop and recreate, restore, verify with the sentinel expected; a dry run changes nothing."""
    if rb.dry_run:
        rb.track(p.outcomes if p else [], show=False)
        print("dry run: nothing written, dumped, dropped or restored")
        return None
    assert host is not None and source is not None and p is not None
    if online.is_online(rb):  # source.transfer: online: Bucardo synced it before the window; drain it
        result_online = online.window(rb, host, source, sentinel)
        rb.track(result_online.outcomes)
        return result_online
    app = targets.app_host(rb)
    result = run_migration(host, rb.params, source, p.facts, tag=dump_tag(rb), run_label=run_label(rb),
                                     live_source=False, app=app, password=rb.secret("postgres.app_role_password"),
                                     sentinel_expect=sentinel)
    rb.track(result.outcomes)
    # an unlogged table's rows are in no WAL: the operator hears now that a failover or a restore empties it
    result.verification.checks.append(check_unlogged_tables(get_psql(host, rb.params), rb.params.postgres.database,
                                                            host.name))
    return result


def check(rb: "Run", result: "migration.MigrationResult | None",
          source: "migration.Source | None") -> None:
    """The source/target table, then every check and the source still quiet (with the rollback)."""
    if result is not None:
        assert source is not None
        show_comparison(result)
        verify(rb, result.verification.checks + [migration.check_source_quiet(migration.get_source_sessions(source))],
               rollback=migration.ROLLBACK)


def roll_password(rb: "Run", host: "Host | None") -> None:
    """A new rails password (stored first, then set), then from the app host: new works, old refused."""
    rotation, old_password, new_password = migration.run_rotate_password(
        targets.hostlike(rb, rb.params.primary.name, host), rb.params)
    rb.track(rotation)
    if not rb.dry_run:
        assert old_password is not None and new_password is not None
        verify(rb, migration.check_passwords(targets.app_host(rb), rb.params,
                                             old=old_password, new=new_password,
                                             server_ip=rb.params.primary.private_ip), rollback=migration.ROLLBACK)


def record_value(result: "migration.MigrationResult | None") -> dict[str, Any]:
    """What 07 records as ``cutover`` (with the sentinel added by the notebook; no secrets)."""
    return summary(result, dry_run={"dry_run": True, "phases": {}})


def record_phases(rb: "Run", phases: Mapping[str, float]) -> None:
    """07: the phase durations into the manifest's ``downtime`` (09 adds start, end and total)."""
    rb.note_downtime({"phases_s": {k: round(float(v), 3) for k, v in phases.items()}}, merge=True)
