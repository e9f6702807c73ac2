"""Step 06, the dry run of the restore: while the app still runs on the source, dump it, restore it
into the primary and verify the copy (the source is live: a sequence it has moved on since passes with a note)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.ops import migration
from hcbpg.ops.cluster import get_psql
from hcbpg.ops.replication import check_unlogged_tables
from hcbpg.steps import targets
from hcbpg.steps._migration import (
    connect,
    dump_tag,
    plan,
    preconditions,
    run_label,
    run_migration,
    show_comparison,
    skip_if_live,
    summary,
    verify,
)

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.steps.context import Run

__all__ = ["apply", "check", "connect", "plan", "preconditions", "record_value", "skip_if_live"]


def apply(rb: "Run", host: "Host | None", source: "migration.Source | None",
          p: "migration.Plan | None") -> "migration.MigrationResult | None":
    """Dump, drop and recreate, restore, ANALYZE, then verify (the checks are shown by :func:`check`);
    a dry run tracks the plan and changes nothing."""
    if rb.dry_run:
        rb.track(p.outcomes if p else [], show=False)
        print("dry run: nothing dumped, nothing dropped, nothing restored")
        return None
    assert host is not None and source is not None and p is not None
    result = run_migration(host, rb.params, source, p.facts, tag=dump_tag(rb), run_label=run_label(rb),
                                     live_source=True, app=targets.app_host(rb),
                                     password=rb.secret("postgres.app_role_password"),
                                     sentinel_write=migration.dry_run_sentinel())
    rb.track(result.outcomes)
    # before the cutover, the operator hears which tables a failover or a restore would leave empty
    result.verification.checks.append(check_unlogged_tables(get_psql(host, rb.params), rb.params.postgres.database,
                                                            host.name))
    return result


def check(rb: "Run", result: "migration.MigrationResult | None") -> None:
    """The source/target table, then every check (a failed one fails the step)."""
    if result is not None:
        show_comparison(result)
        verify(rb, result.verification.checks)


def record_value(result: "migration.MigrationResult | None") -> dict:
    """What 06 records as ``dry_run_restore`` (no secrets)."""
    return summary(result, dry_run={"dry_run": True})
