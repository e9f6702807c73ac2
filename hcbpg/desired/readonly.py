"""Blazer's read-only login as the roles model says (pure): its role settings, and the statements that
bring the role there (params ``roles.blazer``; see :mod:`hcbpg.ops.readonly`)."""

from __future__ import annotations

from psycopg import sql

from hcbpg.desired.roles import RolesConfig
from hcbpg.pg.scram import scram_verifier

#: PostgreSQL's role that reads every table, view and sequence (tables created later included)
READ_ROLE = "pg_read_all_data"


def desired_settings(cfg: RolesConfig) -> dict[str, str]:
    """The role settings of Blazer's login."""
    return {"default_transaction_read_only": "on", "statement_timeout": cfg.blazer_statement_timeout}


def plan_blazer(cfg: RolesConfig, current: dict[str, object] | None, password: str | None) -> list[sql.Composable]:
    """Statements that bring Blazer's login to the model (its password only when it is created)."""
    if cfg.blazer is None:
        return []
    b = sql.Identifier(cfg.blazer.name)
    out: list[sql.Composable] = []
    if current is None:
        pw = sql.SQL(" PASSWORD {}").format(sql.Literal(scram_verifier(password))) if password else sql.SQL("")
        out.append(sql.SQL("CREATE ROLE {} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                           "CONNECTION LIMIT {}{}").format(b, sql.Literal(cfg.blazer.connection_limit), pw))
        current = {"rolcanlogin": True, "rolinherit": True, "rolconnlimit": cfg.blazer.connection_limit,
                   "member_of": [], "settings": [], "can_connect": False}
    else:
        fixes = [w for cond, w in ((not current["rolcanlogin"], "LOGIN"), (not current["rolinherit"], "INHERIT"),
                                   (bool(current["rolsuper"]), "NOSUPERUSER")) if cond]
        if int(str(current["rolconnlimit"])) != cfg.blazer.connection_limit:
            fixes.append(f"CONNECTION LIMIT {int(cfg.blazer.connection_limit)}")
        if fixes:
            out.append(sql.SQL("ALTER ROLE {} WITH ").format(b) + sql.SQL(" ".join(fixes)))
    if READ_ROLE not in list(current["member_of"]):  # type: ignore[call-overload]
        out.append(sql.SQL("GRANT {} TO {}").format(sql.Identifier(READ_ROLE), b))
    have = dict(s.split("=", 1) for s in list(current["settings"]))  # type: ignore[call-overload]
    for name, value in desired_settings(cfg).items():
        if have.get(name) != value:
            out.append(sql.SQL("ALTER ROLE {} SET {} = {}").format(b, sql.Identifier(name), sql.Literal(value)))
    if not current["can_connect"]:
        out.append(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(cfg.database), b))
    return out
