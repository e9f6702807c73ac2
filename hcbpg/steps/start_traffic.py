"""Step 09, start traffic: hand the new DATABASE_URL to the operator, check it from the app host,
mark the database live once the traffic runs on it, and record the downtime."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.errors import HcbpgError
from hcbpg.ops import migration
from hcbpg.steps import targets
from hcbpg.steps._migration import MigrationRunbook, skip_if_live, verify

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host

__all__ = ["check_url", "connect", "mark_live", "record_downtime", "show_downtime", "skip_if_live", "write_urls"]

show_downtime = migration.show_downtime


def connect(rb: MigrationRunbook) -> "tuple[Host | None, Host | None]":
    """The primary (None before it is provisioned) and the app host (None without a primary)."""
    host = targets.server_host(rb, rb.params.primary)  # type: ignore[arg-type]
    return host, (targets.app_host(rb) if host else None)  # type: ignore[arg-type]


def write_urls(rb: MigrationRunbook, password: str) -> migration.AppUrls:
    """DATABASE_URL and BLAZER_DATABASE_URL into the 0600 handoff file (not in a dry run), shown redacted."""
    urls = migration.write_app_urls(rb.params, password, dry_run=rb.dry_run)
    migration.show_urls(urls)
    return urls


def check_url(rb: MigrationRunbook, app: "Host | None", password: str) -> None:
    """The new DATABASE_URL works from the app host (not in a dry run)."""
    if not rb.dry_run:
        assert app is not None
        verify(rb, [migration.check_url_from_app(app, rb.params, migration.render_database_url(rb.params, password))])


def mark_live(rb: MigrationRunbook, host: "Host | None", app: "Host | None", password: str) -> None:
    """Mark the database live, then check the URL again and the restore-time settings gone."""
    if not rb.dry_run:
        assert host is not None and app is not None
        rb.track(migration.mark_live(host, rb.params, dry_run=False))
        verify(rb, [migration.check_url_from_app(app, rb.params, migration.render_database_url(rb.params, password)),
                    migration.check_restore_settings_gone(host, rb.params)])


def record_downtime(rb: MigrationRunbook, phases: Mapping[str, float]) -> dict[str, Any]:
    """Write the downtime into the run's manifest (``downtime``) and the notebook (scrap)."""
    gates: dict[str, Any] = {}
    if rb.run is not None:
        gates = rb.run.read().get("gates", {})
        if not (gates.get("maintenance-on") or {}).get("approved_at"):
            gates = _gates_from_earlier_runs(rb) or gates
    dt = migration.compute_downtime(gates, phases)
    if rb.run is not None and not rb.dry_run:
        with rb.run.update() as data:
            data["downtime"] = dt
    rb.record("downtime", dt)
    return dt


def _gates_from_earlier_runs(rb: MigrationRunbook) -> dict[str, Any]:
    """The maintenance-on approval may be in the run that did the cutover when 09 runs alone."""
    merged: dict[str, Any] = {}
    for run in rb.runs_of_env():
        try:
            g = run.read().get("gates", {})
        except HcbpgError:
            continue
        if (g.get("maintenance-on") or {}).get("approved_at"):
            merged["maintenance-on"] = g["maintenance-on"]
    if rb.run is not None:
        merged.update({k: v for k, v in rb.run.read().get("gates", {}).items() if v.get("approved_at")})
    return merged
