"""Helpers shared by the migration's steps (06 dry run, 07 cutover, 09 start traffic): they take the
notebook's runbook ``rb``, typed by the steps' one protocol :class:`hcbpg.steps.context.Run` (steps do
not import the engine)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.desired.migration import AppUrls, plan_without_primary
from hcbpg.display import show_plan, show_table
from hcbpg.errors import VerificationFailed
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import migration
from hcbpg.outcome import Check
from hcbpg.steps import targets

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.steps.context import Run


def verify(rb: "Run", checks: Sequence[Check], *, rollback: str | None = None,
           stops: str = "The run stops here, before any traffic gate.") -> list[Check]:
    """rb.verify, with the rollback instructions in the error when something failed."""
    try:
        return rb.verify(checks)
    except VerificationFailed as exc:
        if rollback:
            raise VerificationFailed(exc.message, failures=exc.failures, hint=stops + "\n" + rollback) from None
        raise


def skip_if_live(rb: "Run", host: "Host | None") -> None:
    """End a migration step early when the migration is complete: the app already runs on the target.

    Re-running the runbook must never restore over the live database; with nothing left to
    do the step is recorded as done with no change (the runbook's second run changes nothing).
    """
    if host is None:
        return
    marker = migration.get_live_marker(host, rb.params)
    if marker:
        rb.skip(f"{rb.params.postgres.database} on {host.name} is live ({marker}): the migration is "
                "complete, there is nothing to restore or switch. Replacing a live database is not a "
                "re-run of this step: it is a new migration with its own plan.")


def dump_tag(rb: "Run") -> str:
    """The dump's directory name under source.dump_dir: run and step."""
    return f"{rb.run_id or 'adhoc'}-{rb.step}"


def run_label(rb: "Run") -> str:
    """The run and step, as the target database's comment names them."""
    return f"run {rb.run_id or 'ad hoc'}, step {rb.step}"


def connect(rb: "Run") -> "tuple[Host | None, migration.Source | None]":
    """The primary (None before it is provisioned) and the source reached from it."""
    host = targets.server_host(rb, rb.params.primary)
    if host is None:
        return None, None
    # with source.ca_file the primary verifies the source's certificate and name (verify-full); a dry
    # run reads the source as the primary can now (with the CA only when it is there already)
    ca = migration.ensure_source_ca(targets.hostlike(rb, host.name, host), rb.params)
    if ca.changed:
        rb.track(ca)
    return host, migration.Source(host, rb.secret("source.url"), sslrootcert=migration.get_source_ca(host, rb.params))


def plan(rb: "Run", host: "Host | None", source: "migration.Source | None") -> "migration.Plan | None":
    """Plan the migration (read-only) and show it; None when there is no primary yet, or (a dry run) no
    PostgreSQL running on it yet: the plan says so."""
    p: migration.Plan | None = None
    if host is None or source is None:
        outcomes = plan_without_primary(rb.params)
    elif rb.dry_run and not pg_cluster.get_cluster_running(host, rb.params):
        outcomes = plan_without_primary(rb.params, why=f"PostgreSQL is not running on {host.name} yet")
    else:
        p = migration.get_migration_plan(host, rb.params, source)
        outcomes = p.outcomes
    show_plan(outcomes)
    return p


def write_urls_file(urls: AppUrls, *, dry_run: bool) -> AppUrls:
    """*urls* into their 0600 file (directory 0700) for the operator, not on a dry run; then shown redacted."""
    if not dry_run:
        hsecrets.write_private_file(urls.path, urls.text)
    written = replace(urls, written=not dry_run)
    for k, v in written.shown.items():
        print(f"{k}={v}")
    print(f"the real values are {'in' if written.written else 'would be written to'} {written.path} (mode 0600)")
    return written


def show_comparison(result: "migration.MigrationResult") -> None:
    """The source/target table of objects and rows (each kind pass or fail)."""
    show_table(result.verification.table, ["what", "source", "target", "status"])


def preconditions(p: "migration.Plan | None") -> list[Check]:
    """The plan's preconditions (none without a primary)."""
    return p.checks if p else []


def summary(result: "migration.MigrationResult | None", *, dry_run: dict[str, Any]) -> dict[str, Any]:
    """What the step records: the result's summary, or *dry_run* when nothing ran."""
    return result.summary() if result else dry_run
