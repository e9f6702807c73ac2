"""Blazer's read-only login (params ``roles.blazer``; ``BLAZER_DATABASE_URL``): reads every table, writes none.

Blazer's docs ask for a read-only user.  The role is a member of PostgreSQL's ``pg_read_all_data``
(SELECT on every table, view and sequence, USAGE on every schema, tables created later included),
connects on its own CONNECT grant, and carries two role settings: ``default_transaction_read_only``
(a write is refused even where a grant would allow it) and ``statement_timeout`` (a runaway report
is cancelled).  Metabase keeps its own listed-tables role (:mod:`hcbpg.ops.privileges`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.psql import render
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.readonly import READ_ROLE, plan_blazer
from hcbpg.desired.roles import RolesConfig
from hcbpg.ops.access import run_psql_as
from hcbpg.ops.privileges import get_role_password
from hcbpg.outcome import Check, Outcome

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params


def get_blazer(psql: "PsqlLike", cfg: RolesConfig) -> dict[str, object] | None:
    """The role's attributes, memberships, role settings and CONNECT on the database (None: no role)."""
    assert cfg.blazer is not None
    rows = psql.query(sql.SQL(
        "SELECT r.rolcanlogin, r.rolinherit, r.rolsuper, r.rolconnlimit, "
        "ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
        "      WHERE m.member = r.oid ORDER BY 1)::text[] AS member_of, "
        "COALESCE((SELECT s.setconfig FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase = 0), "
        "         '{{}}')::text[] AS settings, "
        "has_database_privilege(r.oid, {db}, 'CONNECT') AS can_connect "
        "FROM pg_roles r WHERE r.rolname = {name}").format(db=sql.Literal(cfg.database),
                                                          name=sql.Literal(cfg.blazer.name)))
    return rows[0] if rows else None


def ensure_blazer(psql: "PsqlLike", cfg: RolesConfig) -> Outcome:
    """Blazer's read-only login as the model says (only what differs); its password from its secret."""
    host = psql.host
    seen = Changes(host)
    what = f"Blazer's read-only role on {host.name}"
    if cfg.blazer is None:
        return seen.outcome(what + " (no roles.blazer in params)")
    current = get_blazer(psql, cfg)
    password = None
    if current is None:
        try:
            password = hsecrets.resolve(cfg.blazer.password_ref, key=cfg.blazer.password_key)
        except hsecrets.SecretError:
            if not host.dry_run:  # dry run: a secret made later (before the real run) is not needed for the plan
                raise
    statements = plan_blazer(cfg, current, password)
    if statements:
        psql.execute(statements)
    return seen.outcome(what, actions=[hsecrets.scrub(" ".join(render(s).split())) for s in statements])


def check_blazer(psql: "PsqlLike", cfg: RolesConfig) -> list[Check]:
    """The role is as the model says: read-only by membership and by setting, with its timeout."""
    if cfg.blazer is None:
        return []
    current = get_blazer(psql, cfg)
    name = f"role {cfg.blazer.name} (Blazer, read-only)"
    if current is None:
        return [Check(name, "fail", "does not exist", psql.host.name)]
    missing = plan_blazer(cfg, current, None)
    return [Check.of(name, not missing, f"member of {READ_ROLE}, default_transaction_read_only on, "
                                        f"statement_timeout {cfg.blazer_statement_timeout}" if not missing
                     else f"{len(missing)} change(s) pending: run step 13", psql.host.name)]


def check_blazer_access(app: "HostLike", cfg: RolesConfig, params: "Params", *, server_ip: str,
                        table: str = "users") -> list[Check]:
    """From the app host with Blazer's login: a read works, a write is refused."""
    if cfg.blazer is None:
        return [Check("blazer", "warn", "no roles.blazer in params", server_ip)]
    name, pw, port = cfg.blazer.name, get_role_password(SecretStore(), cfg, cfg.blazer.name), params.postgres.port
    t = sql.Identifier(*table.split("."))
    ok, out = run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                      role=name, password=pw, server_ip=server_ip, port=port, dbname=cfg.database,
                      script=sql.SQL("SELECT count(*) FROM {};\n").format(t).as_string(None),
                      display=f"psql as {name}@{server_ip}: SELECT count(*) FROM {table}")
    rows = [Check.of(f"{name} reads {table}", ok, f"{out.splitlines()[-1] if out else '?'} row(s)" if ok
                     else hsecrets.scrub(out)[-200:], app.name)]
    ok, out = run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                      role=name, password=pw, server_ip=server_ip, port=port, dbname=cfg.database,
                      script=sql.SQL("DELETE FROM {} WHERE false;\n").format(t).as_string(None),
                      display=f"psql as {name}@{server_ip}: DELETE FROM {table} (must be refused)")
    refused = not ok and ("read-only transaction" in out or "permission denied" in out)
    rows.append(Check.of(f"{name} cannot write {table}", refused,
                         "refused: " + (out.splitlines() or ["?"])[-1][:160] if refused
                         else ("WROTE" if ok else hsecrets.scrub(out)[-200:]), app.name))
    return rows
