"""Step 09, start traffic: hand the new DATABASE_URL to the operator, check it from the app host,
mark the database live once the traffic runs on it, and record the downtime."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.secretstore import secret_store
from hcbpg.desired.migration import AppUrls, compute_downtime, handoff_path, render_database_url
from hcbpg.desired.roles import roles_config
from hcbpg.display import show_table
from hcbpg.ops import handout, migration, privileges, readonly
from hcbpg.ops.cluster import get_psql
from hcbpg.steps import targets
from hcbpg.steps._migration import hand_out_urls as hand_out
from hcbpg.steps._migration import skip_if_live, verify
from hcbpg.steps.targets import hostlike

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.steps.context import Run

__all__ = ["check_url", "connect", "handoff_path", "mark_live", "record_downtime", "show_downtime", "skip_if_live",
           "write_urls"]

def connect(rb: "Run") -> "tuple[Host | None, Host | None]":
    """The primary (None before it is provisioned) and the app host (None without a primary)."""
    host = targets.server_host(rb, rb.params.primary)
    return host, (targets.app_host(rb) if host else None)


def write_urls(rb: "Run", host: "Host | None", password: str) -> AppUrls | None:
    """The app's URLs, whole, into its 0600 file (not in a dry run), shown redacted: DATABASE_URL (rails) and,
    from this cutover on, BLAZER_DATABASE_URL as Blazer's read-only login (made here when it is not there yet:
    Blazer never gets the app's read-write login, not even until step 13)."""
    params = rb.params
    cfg = roles_config(params)
    if cfg.blazer is None:
        print("no roles.blazer in params: no BLAZER_DATABASE_URL is handed out. Blazer must not use the app's "
              "read-write login: add roles.blazer (a read-only login) and run this step again")
    else:
        rb.track(privileges.ensure_role_secrets(secret_store(rb.dry_run), cfg, only=[cfg.blazer.name]),
                 show=not rb.dry_run)
        psql = get_psql(hostlike(rb, params.primary.name, host), params)
        rb.track(readonly.ensure_blazer(psql, cfg), show=not rb.dry_run)
    return hand_out(rb, lambda: handout.get_app_urls(secret_store(rb.dry_run), params, cfg, login=params.postgres.app_role,
                                                     password=password),
                    "the app")


def check_url(rb: "Run", app: "Host | None", password: str) -> None:
    """The new DATABASE_URL works from the app host, and Blazer's login there reads and cannot write
    (not in a dry run)."""
    if not rb.dry_run:
        assert app is not None
        params = rb.params
        cfg = roles_config(params)
        checks = [migration.check_url_from_app(app, params, render_database_url(params, password))]
        if cfg.blazer is not None:
            checks += readonly.check_blazer_access(app, cfg, params, server_ip=params.primary.private_ip)
        verify(rb, checks)


def mark_live(rb: "Run", host: "Host | None", app: "Host | None", password: str) -> None:
    """Mark the database live, then check the URL again and the restore-time settings gone."""
    if not rb.dry_run:
        assert host is not None and app is not None
        rb.track(migration.run_mark_live(host, rb.params))
        verify(rb, [migration.check_url_from_app(app, rb.params, render_database_url(rb.params, password)),
                    migration.check_restore_settings_gone(host, rb.params)])


def record_downtime(rb: "Run", phases: Mapping[str, float]) -> dict[str, Any]:
    """Write the downtime into the run's manifest (``downtime``) and the notebook (scrap).

    The maintenance-on approval may be in the run that did the cutover, when 09 runs alone."""
    gates = {name: g for name, g in (("maintenance-on", rb.approval("maintenance-on", earlier_runs=True)),
                                     ("maintenance-off", rb.approval("maintenance-off"))) if g}
    dt = compute_downtime(gates, phases)
    rb.note_downtime(dt)
    rb.record("downtime", dt)
    return dt


def show_downtime(dt: Mapping[str, Any]) -> None:
    """The downtime as a table: maintenance on and off (approved), the total, each phase."""
    rows = [{"what": "maintenance on (approved)", "value": dt.get("maintenance_on_at") or "-"},
            {"what": "traffic on (approved)", "value": dt.get("traffic_on_at") or "-"},
            {"what": "downtime", "value": f"{dt['total_s']:.1f} s" if dt.get("total_s") is not None else "-"}]
    rows += [{"what": k, "value": f"{v:.1f} s"} for k, v in (dt.get("phases_s") or {}).items()]
    show_table(rows, ["what", "value"])
