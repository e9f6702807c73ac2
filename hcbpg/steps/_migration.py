"""Helpers shared by the migration's steps (06 dry run, 07 cutover, 09 start traffic): they take the
notebook's runbook ``rb``, typed by the small protocol :class:`MigrationRunbook` (steps do not
import the engine)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from hcbpg.display import show_plan
from hcbpg.errors import VerificationFailed
from hcbpg.ops import migration
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import targets

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params


class RunManifest(Protocol):
    """A run's manifest, as ``rb.run`` holds it."""

    def read(self) -> dict[str, Any]: ...

    def update(self) -> AbstractContextManager[dict[str, Any]]: ...


class MigrationRunbook(Protocol):
    """What the migration's steps use of the notebook's runbook."""

    params: "Params"
    dry_run: bool
    run_id: str | None
    step: str
    run: RunManifest | None

    def secret(self, key: str) -> str: ...

    def track(self, outcome: Any, *, show: bool = True) -> Any: ...

    def verify(self, checks: Iterable[Check], *, title: str = "checks") -> list[Check]: ...

    def record(self, name: str, value: Any) -> None: ...

    def recall(self, name: str, default: Any = ...) -> Any: ...

    def skip(self, reason: str) -> None: ...

    def runs_of_env(self) -> Sequence[RunManifest]: ...

    def gate(self, name: str, question: str) -> Any: ...


def verify(rb: MigrationRunbook, checks: Sequence[Check], *, rollback: str | None = None,
           stops: str = "The run stops here, before any traffic gate.") -> list[Check]:
    """rb.verify, with the rollback instructions in the error when something failed."""
    try:
        return rb.verify(checks)
    except VerificationFailed as exc:
        if rollback:
            raise VerificationFailed(exc.message, failures=exc.failures, hint=stops + "\n" + rollback) from None
        raise


def skip_if_live(rb: MigrationRunbook, host: "Host | None") -> None:
    """End a migration step early when the migration is complete: the app already runs on the target.

    Re-running the runbook must never restore over the live database; with nothing left to
    do the step is recorded as done with no change (the runbook's second run changes nothing).
    """
    marker = migration.live_since(host, rb.params)
    if marker:
        assert host is not None
        rb.skip(f"{rb.params.postgres.database} on {host.name} is live ({marker}): the migration is "
                "complete, there is nothing to restore or switch. Replacing a live database is not a "
                "re-run of this step: it is a new migration with its own plan.")


def dump_tag(rb: MigrationRunbook) -> str:
    """The dump's directory name under source.dump_dir: run and step."""
    return f"{rb.run_id or 'adhoc'}-{rb.step}"


def run_label(rb: MigrationRunbook) -> str:
    """The run and step, as the target database's comment names them."""
    return f"run {rb.run_id or 'ad hoc'}, step {rb.step}"


def connect(rb: MigrationRunbook) -> "tuple[Host | None, migration.Source | None]":
    """The primary (None before it is provisioned) and the source reached from it."""
    host = targets.server_host(rb, rb.params.primary)  # type: ignore[arg-type]
    if host is None:
        return None, None
    # with source.ca_file the primary verifies the source's certificate and name (verify-full)
    ca = migration.ensure_source_ca(host, rb.params, dry_run=rb.dry_run)
    return host, migration.Source(host, rb.secret("source.url"), sslrootcert=ca)


def plan(rb: MigrationRunbook, host: "Host | None", source: "migration.Source | None") -> "migration.Plan | None":
    """Plan the migration (read-only) and show it; None when there is no primary yet (the plan says so)."""
    p = migration.plan_migration(host, rb.params, source, dry_run=rb.dry_run) if host and source else None
    outcomes: list[Outcome] = p.outcomes if p else migration.plan_without_primary(rb.params)
    show_plan(outcomes)
    return p


def preconditions(p: "migration.Plan | None") -> list[Check]:
    """The plan's preconditions (none without a primary)."""
    return p.checks if p else []


def summary(result: "migration.MigrationResult | None", *, dry_run: dict[str, Any]) -> dict[str, Any]:
    """What the step records: the result's summary, or *dry_run* when nothing ran."""
    return result.summary() if result else dry_run
