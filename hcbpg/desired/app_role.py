"""The app's role and database as step 04 makes them (pure): the statements that bring the role
``rails`` to what params say, refused when it already has another password, and whether step 13
has handed the database over to the migrations role."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.desired.roles import roles_config
from hcbpg.errors import SafetyCheckFailed
from hcbpg.pg.scram import md5_matches, scram_matches, scram_verifier

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

PASSWORD_KEY = "postgres.app_role_password"
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def plan_role(params: "Params", current: dict[str, Any] | None, password: str, *, host_name: str) -> list[Any]:
    """Statements that bring the app role to what params say (the password only if it has none yet).

    Raises SafetyCheckFailed naming ``postgres.app_role_password`` and the host when the role
    already has a different password.
    """
    pg = params.postgres
    ident = sql.Identifier(pg.app_role)
    if current is None:
        return [sql.SQL("CREATE ROLE {} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                        "CONNECTION LIMIT {} PASSWORD {}").format(
            ident, sql.Literal(pg.app_role_connection_limit), sql.Literal(scram_verifier(password)))]
    attrs = []
    if not current["rolcanlogin"]:
        attrs.append("LOGIN")
    if not current["rolinherit"]:
        attrs.append("INHERIT")
    for col, word in (("rolsuper", "NOSUPERUSER"), ("rolcreatedb", "NOCREATEDB"),
                      ("rolcreaterole", "NOCREATEROLE"), ("rolreplication", "NOREPLICATION"),
                      ("rolbypassrls", "NOBYPASSRLS")):
        if current[col]:
            attrs.append(word)
    out: list[Any] = []
    parts: list[sql.Composable] = [sql.SQL(a) for a in attrs]
    if int(current["rolconnlimit"]) != pg.app_role_connection_limit:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(pg.app_role_connection_limit)))
    stored = current.get("rolpassword")
    if not stored:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(password))))
    elif stored.startswith("SCRAM-SHA-256$"):
        if not scram_matches(password, stored):
            raise _wrong_password(params, host_name)
    elif stored.startswith("md5"):
        if not md5_matches(password, pg.app_role, stored):
            raise _wrong_password(params, host_name)
        # same password, old hash: store it as SCRAM (password_encryption = scram-sha-256)
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(password))))
    else:
        raise _wrong_password(params, host_name)
    if parts:
        out.append(sql.SQL("ALTER ROLE {} WITH ").format(ident) + sql.SQL(" ").join(parts))
    return out


def _wrong_password(params: "Params", host_name: str) -> SafetyCheckFailed:
    role = params.postgres.app_role
    ref = params.postgres.app_role_password
    return SafetyCheckFailed(
        f"on {host_name}: role {role} already exists with a different password than the secret "
        f"{PASSWORD_KEY} ({ref}); refusing to change it, because the running app would lose its connection",
        hint=f"Point {PASSWORD_KEY} at the password {role} has now; to change the password, run the "
             "rotation step, which updates the app and the database together. Nothing was changed.")


def handed_over_to(current_db: dict[str, Any] | None, params: "Params") -> str | None:
    """The migrations role, when step 13 has re-owned the database to it (then 13's model governs).

    Step 04 sets up the runbook's first state (rails owns the database and holds ALL); step 13
    replaces it with roles built for rotation.  Re-running 04 afterwards must not undo 13.
    """
    owner = roles_config(params).owner
    if current_db is not None and owner != params.postgres.app_role and current_db["owner"] == owner:
        return owner
    return None


def grant_statements(params: "Params") -> tuple[sql.Composable, sql.Composable]:
    """The runbook's two grants to the app role: ALL on schema public (explicitly), ALL on its tables."""
    ident = sql.Identifier(params.postgres.app_role)
    return (sql.SQL("GRANT ALL PRIVILEGES ON SCHEMA public TO {}").format(ident),
            sql.SQL("GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO {}").format(ident))
