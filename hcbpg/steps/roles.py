"""Step 13 (notebook ``13_roles``): the roles and privileges from params on the primary, their pg_hba lines
on every server, and the monitoring hookup (Vector's metrics config, the exporter)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from psycopg import sql

from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.psql import Psql
from hcbpg.adapters.secretstore import SecretStore, secret_store
from hcbpg.desired import server as desired_server
from hcbpg.desired.migration import AppUrls, handoff_path
from hcbpg.desired.privileges import render_privileges_table
from hcbpg.desired.roles import RolesConfig, roles_config  # noqa: F401 - the notebook's call
from hcbpg.ops import access, handout, monitoring, privileges, readonly, tls
from hcbpg.ops import config as pg_config
from hcbpg.outcome import Check, Outcome
from hcbpg.steps._migration import hand_out_urls as hand_out
from hcbpg.steps.targets import app_host, jumpbox_host, primary_psql, server_hosts, target_for

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple[dict[str, "Host | None"], "Psql | None"]:
    """An open Host per server, and psql on the primary (None when it is not there yet)."""
    hosts = server_hosts(rb)
    return hosts, primary_psql(rb, hosts)


def role_secrets(rb: "Run", cfg: RolesConfig) -> list[Outcome]:
    """Every login role's secret exists (a missing ``file:`` one is made, 0600; on a dry run, recorded)."""
    return privileges.ensure_role_secrets(secret_store(rb.dry_run), cfg)


def planning_psql(psql: "Psql | None", params: "Params") -> Psql:
    """psql for a plan: reads the primary and records what it would change (a primary not there yet:
    nothing is there, everything would be made)."""
    if psql is None:
        return Psql(AbsentHost(params.primary.name), version=params.postgres.version, port=params.postgres.port)
    return Psql(DryRunHost(psql.host), version=psql.version, port=psql.port)


def _real(psql: "Psql | None") -> Psql:
    if psql is None:  # pragma: no cover - a real run has every server (targets.server_host raises first)
        raise AssertionError("a real run of step 13 without the primary")
    return psql


def privileges_table(psql: "Psql", cfg: RolesConfig) -> list[dict[str, str]]:
    """Each role's effective privileges, read back from the primary, for the operator."""
    return render_privileges_table(cfg, privileges.get_observed(psql, cfg))


def ensure_pg_hba(hosts: Mapping[str, "Host | None"], params: "Params", cfg: RolesConfig, *,
                  dry_run: bool) -> list[Outcome]:
    """Every server's pg_hba.conf with the new roles' lines."""
    return [pg_config.ensure_pg_hba(target_for(s.name, hosts[s.name], dry_run=dry_run), params, s,
                                    extra=desired_server.all_hba_extra(params, s, cfg))
            for s in params.servers]


def get_plan(hosts: Mapping[str, "Host | None"], psql: "Psql | None", params: "Params",
             cfg: RolesConfig) -> list[Outcome]:
    """The statements on the primary, then the pg_hba lines on every server, planned."""
    plan = [privileges.ensure_privileges(planning_psql(psql, params), cfg),
            readonly.ensure_blazer(planning_psql(psql, params), cfg)]
    plan += ensure_pg_hba(hosts, params, cfg, dry_run=True)
    return plan


def apply_login_roles(rb: "Run", hosts: Mapping[str, "Host | None"], psql: "Psql | None", cfg: RolesConfig) -> None:
    """pg_hba first, then the login roles (migrations, Blazer, monitoring) without touching ownership:
    nothing the running app or its release command relies on changes yet (a dry run: the plan says it)."""
    params = rb.params
    if rb.dry_run:
        return
    for s in params.servers:
        rb.track(pg_config.ensure_pg_hba(target_for(s.name, hosts[s.name], dry_run=False), params, s,
                                         extra=desired_server.all_hba_extra(params, s, cfg)))
    rb.track(privileges.ensure_privileges(_real(psql), cfg, roles_only=True))
    rb.track(readonly.ensure_blazer(_real(psql), cfg))


def hand_out_urls(rb: "Run", psql: "Psql | None", cfg: RolesConfig) -> None:
    """The release command's file (MIGRATIONS_DATABASE_URL) and the app's file rewritten whole (DATABASE_URL of
    the app's login now, BLAZER_DATABASE_URL of Blazer's read-only login), each 0600; redacted here."""
    params = rb.params
    hand_out(rb, lambda: handout.get_release_urls(secret_store(rb.dry_run), params, cfg), "the release command")
    if cfg.blazer is None or psql is None:
        return
    if rb.dry_run and not readonly.get_blazer(planning_psql(psql, params), cfg):
        rb.track(Outcome(f"handed-out URLs of the app ({handoff_path(params)})", True, True,
                         actions=["rewritten whole with Blazer's read-only login once it exists"]), show=False)
        return

    def app_file() -> "AppUrls":
        login, password = privileges.get_app_login(psql, cfg)
        return handout.get_app_urls(secret_store(rb.dry_run), params, cfg, login=login, password=password)
    hand_out(rb, app_file, "the app")


def handed_over(psql: "Psql | None", cfg: RolesConfig) -> bool:
    """The database is owned by the migrations role already (an earlier run of this step)."""
    if psql is None or cfg.migrations is None:
        return False
    owner = psql.value(sql.SQL("SELECT pg_get_userbyid(datdba) AS o FROM pg_database WHERE datname = {}")
                       .format(sql.Literal(cfg.database)))
    return bool(owner == cfg.migrations.name)


def release_command_gate(rb: "Run", psql: "Psql | None", cfg: RolesConfig) -> None:
    """Before ownership moves to the migrations role, the release command must already use it."""
    if cfg.migrations is None:
        print("no migrations role in params: the app role keeps owning the database, no gate")
        return
    if handed_over(psql, cfg):
        print(f"the database is owned by {cfg.migrations.name} already: the release command was switched "
              "before an earlier run of this step")
        return
    rb.gate("release-command", "the release command (Hatchbox: rails db:migrate) uses MIGRATIONS_DATABASE_URL, "
                               f"i.e. runs as {cfg.migrations.name}: set DATABASE_URL=$MIGRATIONS_DATABASE_URL for "
                               "the release command only; after this step rails can no longer create or alter tables")


def apply(rb: "Run", hosts: Mapping[str, "Host | None"], psql: "Psql | None", cfg: RolesConfig,
          plan: list[Outcome]) -> None:
    """In a dry run the plan is what is tracked; else pg_hba first (so the new roles can connect as soon
    as they exist), then the statements."""
    if rb.dry_run:
        rb.track(plan, show=False)
        return
    params = rb.params
    for s in params.servers:
        rb.track(pg_config.ensure_pg_hba(target_for(s.name, hosts[s.name], dry_run=False), params, s,
                                         extra=desired_server.all_hba_extra(params, s, cfg)))
    rb.track(privileges.ensure_privileges(_real(psql), cfg))
    jumpbox = jumpbox_host(params, cfg) if cfg.metabase is not None else None
    if jumpbox is not None:
        # metabase connects from the jumpbox: it verifies the servers with the environment's CA
        rb.track(tls.ensure_client_ca(jumpbox, params))


def apply_monitoring(rb: "Run", hosts: Mapping[str, "Host | None"], cfg: RolesConfig) -> None:
    """Vector's postgresql_metrics config and the exporter on every server, each tracked as it finishes
    (the roles' passwords only for a real run)."""
    params, dry_run = rb.params, rb.dry_run
    for s in params.servers:
        host = target_for(s.name, hosts[s.name], dry_run=dry_run)
        rb.track(monitoring.ensure_vector_config(host, params, s, cfg, None if dry_run else
                                                 privileges.get_role_password(SecretStore(), cfg, cfg.monitoring.name)))  # type: ignore[union-attr]
        rb.track(monitoring.ensure_exporter(host, params, s, cfg, None if dry_run else
                                            privileges.get_role_password(SecretStore(), cfg, cfg.exporter.name)))  # type: ignore[union-attr]


def check_roles(rb: "Run", hosts: Mapping[str, "Host"], psql: "Psql", cfg: RolesConfig) -> list[Check]:
    """Privileges and passwords read back, access from the app host and the jumpbox, the monitoring files."""
    params = rb.params
    checks = privileges.check_privileges(psql, cfg) + privileges.check_passwords(psql, cfg)
    checks += readonly.check_blazer(psql, cfg)
    login, password = privileges.get_app_login(psql, cfg)  # step 14 may have moved the app to its other login
    checks += access.check_access(app_host(rb), jumpbox_host(params, cfg), cfg, params,
                                       server_ip=params.primary.private_ip, app_password=password, app_login=login)
    checks += readonly.check_blazer_access(app_host(rb), cfg, params, server_ip=params.primary.private_ip)
    for s in params.servers:
        checks += monitoring.check_exporter(hosts[s.name], s) + monitoring.check_vector_files(hosts[s.name], params, s, cfg)
    return checks
