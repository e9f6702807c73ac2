"""The app's role and database on the primary (role ``rails``, database ``hcb_production``), and the
checks that the app host can use them over the private network.

The password never travels to the server: hcbpg computes the SCRAM-SHA-256 verifier here and
sends only that.  A role that already has a *different* password is refused, not changed:
changing a live app's password silently would take production down (rotation is its own step).
"""

from __future__ import annotations

import ipaddress
import secrets as _stdlib_secrets
import shlex
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from hcbpg.adapters.base import Changes
from hcbpg.adapters.psql import render
from hcbpg.adapters.tunnel import tunnel_via
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.app_role import (
    PASSWORD_KEY,
    TABLE_PRIVILEGES,
    grant_statements,
    handed_over_to,
    plan_role,
)
from hcbpg.desired.certs import ca_cert_path
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.scram import scram_matches
from hcbpg.secrets import register, scrub

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.adapters.site import OutsiderRunner
    from hcbpg.params import Params

__all__ = ["PASSWORD_KEY", "check_hba_scope", "check_outsider_refused", "check_psql_from_app",
           "check_psycopg_from_app", "check_role_database", "check_app_access", "check_wrong_password_refused",
           "ensure_database", "ensure_grants", "ensure_role", "get_database", "get_missing_grants", "get_role"]


# the role ---------------------------------------------------------------------------

def get_role(psql: "PsqlLike", role: str) -> dict[str, Any] | None:
    """The role's attributes and stored password verifier (pg_authid; None when it does not exist)."""
    rows = psql.query(sql.SQL(
        "SELECT rolname, rolcanlogin, rolinherit, rolconnlimit, rolsuper, rolcreatedb, rolcreaterole, "
        "rolreplication, rolbypassrls, rolpassword FROM pg_authid WHERE rolname = {}").format(sql.Literal(role)))
    if rows and rows[0].get("rolpassword"):
        register(rows[0]["rolpassword"])
    return rows[0] if rows else None


def _shown(statements: list[Any]) -> list[str]:
    return [scrub(" ".join(render(s).split())) for s in statements]


def ensure_role(psql: "PsqlLike", params: "Params", password: str) -> Outcome:
    """Role rails: LOGIN, INHERIT, CONNECTION LIMIT from params, its password the secret's (set only when missing).

    Refused (SafetyCheckFailed) when the role has another password: see :func:`hcbpg.desired.app_role.plan_role`."""
    host = psql.host
    what = f"role {params.postgres.app_role} on {host.name}"
    seen = Changes(host)
    current = get_role(psql, params.postgres.app_role)
    if current is not None and not current["rolcanlogin"] and \
            handed_over_to(get_database(psql, params.postgres.database), params):
        # step 14 moved the app to its other login and locked this one: logging in again is not ours to allow
        return seen.outcome(what + " (locked by step 14: the app uses its other login)")
    statements = plan_role(params, current, password, host_name=host.name)
    if statements:
        psql.execute(statements)
    return seen.outcome(what, actions=_shown(statements))


# the database and its grants -------------------------------------------------------

def get_database(psql: "PsqlLike", name: str) -> dict[str, Any] | None:
    rows = psql.query(sql.SQL("SELECT d.datname, r.rolname AS owner, pg_encoding_to_char(d.encoding) AS encoding "
                              "FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = {}")
                      .format(sql.Literal(name)))
    return rows[0] if rows else None


def ensure_database(psql: "PsqlLike", params: "Params") -> Outcome:
    """Database hcb_production exists, owned by the app role (UTF8, from template0) — or by the
    migrations role once step 13 has handed it over."""
    pg = params.postgres
    seen = Changes(psql.host)
    what = f"database {pg.database} on {psql.host.name}"
    current = get_database(psql, pg.database)
    stmt: sql.Composable | None = None
    if handed_over_to(current, params):
        pass
    elif current is None:
        stmt = sql.SQL("CREATE DATABASE {} WITH OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
            sql.Identifier(pg.database), sql.Identifier(pg.app_role))
    elif current["owner"] != pg.app_role:
        stmt = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.database), sql.Identifier(pg.app_role))
    if stmt is not None:
        psql.execute(stmt)
    return seen.outcome(what, actions=_shown([stmt] if stmt is not None else []))


def get_missing_grants(psql: "PsqlLike", params: "Params", *, database_exists: bool) -> list[sql.Composable]:
    """The runbook's grants still missing: ALL on schema public (explicitly), ALL on its tables."""
    role = params.postgres.app_role
    schema_grant, tables_grant = grant_statements(params)
    if not database_exists:
        return [schema_grant]
    db = params.postgres.database
    has_schema = psql.value(sql.SQL(
        "SELECT count(*) = 2 AS ok FROM pg_namespace n, aclexplode(n.nspacl) a "
        "WHERE n.nspname = 'public' AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = {}) "
        "AND a.privilege_type IN ('USAGE', 'CREATE')").format(sql.Literal(role)), dbname=db)
    checks = sql.SQL(" AND ").join(
        sql.SQL("has_table_privilege({}, c.oid, {})").format(sql.Literal(role), sql.Literal(p))
        for p in TABLE_PRIVILEGES)
    missing_tables = psql.value(sql.SQL(
        "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT ({})").format(checks),
        dbname=db)
    out = []
    if not has_schema:
        out.append(schema_grant)
    if missing_tables:
        out.append(tables_grant)
    return out


def ensure_grants(psql: "PsqlLike", params: "Params") -> Outcome:
    """GRANT ALL ON SCHEMA public and ON ALL TABLES IN SCHEMA public to the app role (only what is missing)."""
    db = params.postgres.database
    seen = Changes(psql.host)
    what = f"grants to {params.postgres.app_role} in {db} on {psql.host.name}"
    current = get_database(psql, db)
    if handed_over_to(current, params):
        return seen.outcome(what)  # step 13's group role holds the app's privileges
    statements = get_missing_grants(psql, params, database_exists=current is not None)
    if statements:
        psql.execute(statements, dbname=db)
    return seen.outcome(what, actions=[" ".join(render(s).split()) for s in statements])


def check_role_database(psql: "PsqlLike", params: "Params", password: str) -> list[Check]:
    """Step 04's server-side checks: role attributes, password matches the secret, database owner, grants."""
    pg = params.postgres
    name = psql.host.name
    role = get_role(psql, pg.app_role)
    out = []
    if role is None:
        return [Check(f"role {pg.app_role}", "fail", "does not exist", name)]
    locked = not role["rolcanlogin"] and handed_over_to(get_database(psql, pg.database), params) is not None
    out.append(Check.of(f"role {pg.app_role} attributes",
                        (role["rolcanlogin"] or locked) and role["rolinherit"] and not role["rolsuper"]
                        and int(role["rolconnlimit"]) == pg.app_role_connection_limit,
                        f"LOGIN={role['rolcanlogin']} INHERIT={role['rolinherit']} SUPERUSER={role['rolsuper']} "
                        f"CONNECTION LIMIT {role['rolconnlimit']}", name))
    stored = role.get("rolpassword") or ""
    out.append(Check.of(f"role {pg.app_role} password", scram_matches(password, stored),
                        f"SCRAM-SHA-256 verifier matches {PASSWORD_KEY}" if scram_matches(password, stored)
                        else "stored password is not the secret's SCRAM-SHA-256 verifier", name))
    db = get_database(psql, pg.database)
    successor = handed_over_to(db, params)
    out.append(Check.of(f"database {pg.database}", db is not None and db["owner"] in (pg.app_role, successor),
                        (f"owner {db['owner']}, encoding {db['encoding']}"
                         + (" (handed over to the migrations role by step 13)" if successor else ""))
                        if db else "does not exist", name))
    if db is not None and not successor:
        missing = get_missing_grants(psql, params, database_exists=True)
        out.append(Check.of("grants on schema public", not missing,
                            "all granted" if not missing else f"{len(missing)} grant(s) missing", name))
    return out


# from the app host --------------------------------------------------------------------

def _psql_on(app: "HostLike", params: "Params", password: str, script: str, *, server_ip: str,
             quiet: bool = False, display: str = "") -> Any:
    """Run *script* with psql on the app host as the app role; the password goes in on stdin, never argv."""
    pg = params.postgres
    conninfo = (f"host={server_ip} port={pg.port} dbname={pg.database} user={pg.app_role} connect_timeout=10 "
                f"{desired_tls.conninfo_tls(params)}")
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -f -")
    return app.run(cmd, stdin=password + "\n" + script, check=False, quiet=quiet,
                   display=display or f"psql {conninfo} ({len(script.splitlines())} line(s) of SQL on stdin)")


def _scratch_table() -> str:
    return f"hcbpg_scratch_{int(time.time())}_{_stdlib_secrets.token_hex(3)}"


def _create_scratch(temp: bool) -> str:
    """A scratch table in public; a TEMP one once step 13 took CREATE on public away from the app."""
    return "CREATE TEMP TABLE" if temp else "CREATE TABLE"


def _scratch_sql(table: str, temp: bool = False) -> tuple[str, str]:
    ident = sql.Identifier(table)
    script = sql.SQL(
        _create_scratch(temp) + " {t} (id int PRIMARY KEY, note text NOT NULL);\n"
        "INSERT INTO {t} VALUES (1, 'written by hcbpg');\n"
        "UPDATE {t} SET note = note || ' and updated' WHERE id = 1;\n"
        "SELECT note FROM {t} WHERE id = 1;\n"
        "DROP TABLE {t};\n").format(t=ident).as_string(None)
    return script, "written by hcbpg and updated"


def check_psql_from_app(app: "HostLike", params: "Params", password: str, *, server_ip: str,
                        temp: bool = False) -> Check:
    """As the app role with psql on the app host: create, write, read and drop a scratch table."""
    name = "psql as rails from the app host (read, write)"
    if not app.probe("command -v psql").ok:
        return Check(name, "warn", "psql is not installed on the app host; the psycopg check covers it", app.name)
    table = _scratch_table()
    script, expected = _scratch_sql(table, temp)
    res = _psql_on(app, params, password, script, server_ip=server_ip,
                   display=f"psql as {params.postgres.app_role}@{server_ip}: create, write, read, drop {table}")
    ok = res.ok and expected in res.stdout
    detail = f"read back {expected!r} from {table}, then dropped it" if ok else scrub(res.output.strip())[-300:]
    return Check.of(name, ok, detail, app.name)


def check_wrong_password_refused(app: "HostLike", params: "Params", *, server_ip: str) -> Check:
    """A wrong password for the app role is refused (password authentication failed)."""
    wrong = register("wrong-" + _stdlib_secrets.token_urlsafe(12))
    res = _psql_on(app, params, wrong, "SELECT 1;\n", server_ip=server_ip,
                   display=f"psql as {params.postgres.app_role}@{server_ip} with a wrong password (must be refused)")
    refused = not res.ok and "password authentication failed" in res.output
    detail = "refused: password authentication failed" if refused else (
        "ACCEPTED a wrong password" if res.ok else scrub(res.output.strip())[-300:])
    return Check.of("wrong password refused", refused, detail, app.name)


def check_psycopg_from_app(app: "HostLike", params: "Params", password: str, *, server_ip: str,
                           temp: bool = False) -> Check:
    """As the app role with psycopg, tunnelled through the app host: read and write a scratch table."""
    pg = params.postgres
    name = "psycopg as rails via the app host (read, write)"
    table = _scratch_table()
    started = time.monotonic()
    try:
        with tunnel_via(app, server_ip, pg.port) as local:
            # through the tunnel, but verified as the server: libpq dials hostaddr and checks the
            # certificate against host (the server's private IP) with the environment's CA
            with psycopg.connect(host=server_ip, hostaddr="127.0.0.1", port=local, dbname=pg.database,
                                 user=pg.app_role, password=password, connect_timeout=10, autocommit=True,
                                 sslmode="verify-full", sslrootcert=str(ca_cert_path(params))) as conn:
                ident = sql.Identifier(table)
                conn.execute(sql.SQL(_create_scratch(temp) + " {} (id int PRIMARY KEY, note text NOT NULL)")
                             .format(ident))
                try:
                    conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(ident), (1, "via psycopg"))
                    got = conn.execute(sql.SQL("SELECT note FROM {} WHERE id = 1").format(ident)).fetchone()
                    client = conn.execute("SELECT host(inet_client_addr()) AS a").fetchone()
                finally:
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    except psycopg.Error as exc:
        return Check(name, "fail", scrub(str(exc).strip().splitlines()[0]), app.name)
    except Exception as exc:  # noqa: BLE001 - tunnel errors surface as a failed check, not a crash
        return Check(name, "fail", scrub(f"{type(exc).__name__}: {exc}"), app.name)
    duration = time.monotonic() - started
    app.echo(f"[{app.name}] psycopg via ssh tunnel to {server_ip}:{pg.port} as {pg.app_role}: "
             f"create, write, read, drop {table}  -> ok in {duration:.2f}s")
    seen_from = client[0] if client else "?"
    expected_from = params.app_host.private_ip if params.app_host else seen_from
    ok = bool(got and got[0] == "via psycopg") and seen_from == expected_from
    detail = f"read back {got[0]!r}; the server saw the client at {seen_from}" if got else "read back nothing"
    if seen_from != expected_from:
        detail += f", not at the app host's private IP {expected_from}"
    return Check.of(name, ok, detail, app.name)


def check_outsider_refused(outsider: "OutsiderRunner | None", params: "Params", *, server_ip: str,
                           label: str = "outside the subnet") -> Check:
    """The app role cannot connect from an address outside the private subnet.

    *outsider(command, stdin)* runs a shell command from such an address and returns (exit
    code, output).  Without one the check is a visible warning, not a silent pass.  The probe
    expects a refusal, so it never carries the real password: whatever answers at that address
    (not necessarily our server: nothing is verified from out there) gets a random wrong one.
    """
    name = f"rails refused from {label}"
    if outsider is None:
        return Check(name, "warn", "no outsider vantage point in this environment; not checked", server_ip)
    pg = params.postgres
    # TLS, so that pg_hba's hostssl rules (not the final plaintext reject) decide
    conninfo = (f"host={server_ip} port={pg.port} dbname={pg.database} user={pg.app_role} connect_timeout=5 "
                "sslmode=require")
    cmd = f"IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -A -t -d {shlex.quote(conninfo)} -c 'SELECT 1'"
    probe = register("wrong-" + _stdlib_secrets.token_urlsafe(12))
    code, output = outsider(cmd, probe + "\n")
    output = scrub(output)
    if code == 0:
        return Check(name, "fail", "connected from outside the subnet", server_ip)
    if "no pg_hba.conf entry" in output:
        return Check(name, "pass", "refused by pg_hba.conf (no pg_hba.conf entry for that host)", server_ip)
    return Check(name, "pass", "could not connect: " + (output.strip().splitlines() or ["?"])[-1][:200], server_ip)


def check_hba_scope(psql: "PsqlLike", params: "Params") -> Check:
    """pg_hba.conf admits the app role over TCP only from the private subnet (read from pg_hba_file_rules)."""
    pg = params.postgres
    rows = psql.query("SELECT type, database, user_name, address, netmask, auth_method FROM pg_hba_file_rules "
                      "WHERE type <> 'local' AND error IS NULL")
    subnet = ipaddress.ip_network(params.network.subnet)
    allowed = [subnet] + [ipaddress.ip_network(n) for n in params.app_servers]
    wide = []
    for r in rows:
        users = r["user_name"] or []
        if not ("all" in users or pg.app_role in users) or r["auth_method"] == "reject":
            continue
        try:
            net = ipaddress.ip_network(f"{r['address']}/{r['netmask']}", strict=False)
        except ValueError:
            wide.append(str(r["address"]))
            continue
        if not any(net.subnet_of(a) for a in allowed):  # type: ignore[arg-type]
            wide.append(str(net))
    where = ", ".join(str(a) for a in allowed)
    return Check.of(f"pg_hba admits {pg.app_role} only from {where}", not wide,
                    "no TCP rule outside the subnet" if not wide else f"also from {', '.join(wide)}", psql.host.name)


def check_app_access(app: "HostLike", psql: "PsqlLike", params: "Params", password: str, *, server_ip: str,
                     outsider: "OutsiderRunner | None" = None) -> list[Check]:
    """Step 04's checks from the app host: psql and psycopg read/write, wrong password refused, outsiders refused."""
    temp = handed_over_to(get_database(psql, params.postgres.database), params) is not None
    return [
        check_psql_from_app(app, params, password, server_ip=server_ip, temp=temp),
        check_psycopg_from_app(app, params, password, server_ip=server_ip, temp=temp),
        check_wrong_password_refused(app, params, server_ip=server_ip),
        check_hba_scope(psql, params),
        check_outsider_refused(outsider, params, server_ip=server_ip),
    ]
