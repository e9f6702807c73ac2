"""The app's role and database on the primary (role ``rails``, database ``hcb_production``), and the
checks that the app host can use them over the private network.

The password never travels to the server: hcbpg computes the SCRAM-SHA-256 verifier here and
sends only that.  A role that already has a *different* password is refused, not changed:
changing a live app's password silently would take production down (rotation is its own step).
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets as _stdlib_secrets
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from hcbpg.adapters.psql import Psql, render
from hcbpg.desired import tls as desired_tls
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import tls as tls_ops
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.scram import md5_matches, scram_matches, scram_verifier
from hcbpg.secrets import register, scrub

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params

PASSWORD_KEY = "postgres.app_role_password"
TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


# SCRAM-SHA-256 (RFC 5802 / 7677, as PostgreSQL stores it) ------------------------

# the role ---------------------------------------------------------------------------

def get_role(psql: Psql, role: str) -> dict[str, Any] | None:
    """The role's attributes and stored password verifier (pg_authid; None when it does not exist)."""
    rows = psql.query(sql.SQL(
        "SELECT rolname, rolcanlogin, rolinherit, rolconnlimit, rolsuper, rolcreatedb, rolcreaterole, "
        "rolreplication, rolbypassrls, rolpassword FROM pg_authid WHERE rolname = {}").format(sql.Literal(role)))
    if rows and rows[0].get("rolpassword"):
        register(rows[0]["rolpassword"])
    return rows[0] if rows else None


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


def ensure_role(psql: "Psql | None", params: "Params", password: str, *, dry_run: bool,
                host_name: str = "") -> Outcome:
    """Role rails: LOGIN, INHERIT, CONNECTION LIMIT from params, its password the secret's (set only when missing)."""
    host_name = host_name or (psql.host.name if psql else params.primary.name)
    what = f"role {params.postgres.app_role} on {host_name}"
    current = get_role(psql, params.postgres.app_role) if psql is not None else None
    if current is not None and not current["rolcanlogin"] and psql is not None and \
            handed_over_to(get_database(psql, params.postgres.database), params):
        # step 14 moved the app to its other login and locked this one: logging in again is not ours to allow
        return Outcome(what + " (locked by step 14: the app uses its other login)", False, dry_run)
    statements = plan_role(params, current, password, host_name=host_name)
    if not statements:
        return Outcome(what, False, dry_run)
    actions = [scrub(" ".join(render(s).split())) for s in statements]
    if psql is not None:
        psql.execute(statements, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=actions)


# the database and its grants -------------------------------------------------------

def get_database(psql: Psql, name: str) -> dict[str, Any] | None:
    rows = psql.query(sql.SQL("SELECT d.datname, r.rolname AS owner, pg_encoding_to_char(d.encoding) AS encoding "
                              "FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = {}")
                      .format(sql.Literal(name)))
    return rows[0] if rows else None


def handed_over_to(current_db: dict[str, Any] | None, params: "Params") -> str | None:
    """The migrations role, when step 13 has re-owned the database to it (then 13's model governs).

    Step 04 sets up the runbook's first state (rails owns the database and holds ALL); step 13
    replaces it with roles built for rotation.  Re-running 04 afterwards must not undo 13.
    """
    from hcbpg.desired.roles import roles_config  # noqa: PLC0415 - privileges builds on this module
    owner = roles_config(params).owner
    if current_db is not None and owner != params.postgres.app_role and current_db["owner"] == owner:
        return owner
    return None


def ensure_database(psql: "Psql | None", params: "Params", *, dry_run: bool, host_name: str = "") -> Outcome:
    """Database hcb_production exists, owned by the app role (UTF8, from template0) — or by the
    migrations role once step 13 has handed it over."""
    pg = params.postgres
    host_name = host_name or (psql.host.name if psql else params.primary.name)
    what = f"database {pg.database} on {host_name}"
    current = get_database(psql, pg.database) if psql is not None else None
    if handed_over_to(current, params):
        return Outcome(what, False, dry_run)
    if current is None:
        stmt = sql.SQL("CREATE DATABASE {} WITH OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
            sql.Identifier(pg.database), sql.Identifier(pg.app_role))
    elif current["owner"] != pg.app_role:
        stmt = sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(pg.database), sql.Identifier(pg.app_role))
    else:
        return Outcome(what, False, dry_run)
    if psql is not None:
        psql.execute(stmt, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=[" ".join(render(stmt).split())])


def plan_grants(psql: "Psql | None", params: "Params", *, database_exists: bool) -> list[Any]:
    """The runbook's grants still missing: ALL on schema public (explicitly), ALL on its tables."""
    role = params.postgres.app_role
    ident = sql.Identifier(role)
    schema_grant = sql.SQL("GRANT ALL PRIVILEGES ON SCHEMA public TO {}").format(ident)
    tables_grant = sql.SQL("GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO {}").format(ident)
    if psql is None or not database_exists:
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


def ensure_grants(psql: "Psql | None", params: "Params", *, dry_run: bool, host_name: str = "") -> Outcome:
    """GRANT ALL ON SCHEMA public and ON ALL TABLES IN SCHEMA public to the app role (only what is missing)."""
    host_name = host_name or (psql.host.name if psql else params.primary.name)
    db = params.postgres.database
    what = f"grants to {params.postgres.app_role} in {db} on {host_name}"
    current = get_database(psql, db) if psql is not None else None
    exists = current is not None
    if handed_over_to(current, params):
        return Outcome(what, False, dry_run)  # step 13's group role holds the app's privileges
    statements = plan_grants(psql, params, database_exists=exists)
    if not statements:
        return Outcome(what, False, dry_run)
    if psql is not None and (exists or not dry_run):
        psql.execute(statements, dbname=db, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=[" ".join(render(s).split()) for s in statements])


def check_role_database(psql: Psql, params: "Params", password: str) -> list[Check]:
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
        missing = plan_grants(psql, params, database_exists=True)
        out.append(Check.of("grants on schema public", not missing,
                            "all granted" if not missing else f"{len(missing)} grant(s) missing", name))
    return out


# from the app host --------------------------------------------------------------------

def _psql_on(app: "Host", params: "Params", password: str, script: str, *, server_ip: str,
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


def check_psql_from_app(app: "Host", params: "Params", password: str, *, server_ip: str,
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


def check_wrong_password_refused(app: "Host", params: "Params", *, server_ip: str) -> Check:
    """A wrong password for the app role is refused (password authentication failed)."""
    wrong = register("wrong-" + _stdlib_secrets.token_urlsafe(12))
    res = _psql_on(app, params, wrong, "SELECT 1;\n", server_ip=server_ip,
                   display=f"psql as {params.postgres.app_role}@{server_ip} with a wrong password (must be refused)")
    refused = not res.ok and "password authentication failed" in res.output
    detail = "refused: password authentication failed" if refused else (
        "ACCEPTED a wrong password" if res.ok else scrub(res.output.strip())[-300:])
    return Check.of("wrong password refused", refused, detail, app.name)


def _pump(a: Any, b: Any, stop: threading.Event) -> None:
    """Copy bytes both ways between a local socket and an SSH channel until either side closes."""
    try:
        while not stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.2)
            for src, dst in ((a, b), (b, a)):
                if src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    dst.sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def tunnel_via(app: "Host", server_ip: str, port: int) -> Iterator[int]:
    """A local port forwarded through the app host's sshd to server_ip:port (the server sees the app host).

    The listener is bound before this yields (fabric's forward_local binds in a thread,
    so a client connecting at once can be refused).
    """
    transport = app.connection.client.get_transport()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                client, addr = listener.accept()
            except (TimeoutError, OSError):
                continue
            chan = transport.open_channel("direct-tcpip", (server_ip, port), addr)
            t = threading.Thread(target=_pump, args=(client, chan, stop), daemon=True)
            t.start()
            workers.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        acceptor.join(2)
        listener.close()
        for t in workers:
            t.join(2)


def check_psycopg_from_app(app: "Host", params: "Params", password: str, *, server_ip: str,
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
                                 sslmode="verify-full", sslrootcert=str(tls_ops.ca_cert_path(params))) as conn:
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


#: how the "outside the subnet" check reaches the server: run a shell command from an address outside
OutsiderRunner = Callable[[str, str], "tuple[int, str]"]


def check_outsider_refused(params: "Params", *, server_ip: str, password: str | None = None,
                           outsider: OutsiderRunner | None, label: str = "outside the subnet") -> Check:
    """The app role cannot connect from an address outside the private subnet.

    *outsider(command, stdin)* runs a shell command from such an address and returns (exit
    code, output).  Without one the check is a visible warning, not a silent pass.  The probe
    expects a refusal, so it never carries the real password: whatever answers at that address
    (not necessarily our server: nothing is verified from out there) gets a random wrong one.
    *password* is ignored (kept for callers).
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


def check_hba_scope(psql: Psql, params: "Params") -> Check:
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


def verify_app_access(app: "Host", psql: Psql, params: "Params", password: str, *, server_ip: str,
                      outsider: OutsiderRunner | None = None) -> list[Check]:
    """Step 04's checks from the app host: psql and psycopg read/write, wrong password refused, outsiders refused."""
    temp = handed_over_to(get_database(psql, params.postgres.database), params) is not None
    return [
        check_psql_from_app(app, params, password, server_ip=server_ip, temp=temp),
        check_psycopg_from_app(app, params, password, server_ip=server_ip, temp=temp),
        check_wrong_password_refused(app, params, server_ip=server_ip),
        check_hba_scope(psql, params),
        check_outsider_refused(params, server_ip=server_ip, password=password, outsider=outsider),
    ]



def app_role_database(psql: "Psql | None", params: "Params", password: str, *, dry_run: bool,
                      host_name: str = "") -> list[Outcome]:
    """Step 04 on the primary: the role, then the database it owns, then the grants."""
    host_name = host_name or (psql.host.name if psql else params.primary.name)
    if psql is None and not dry_run:
        raise SafetyCheckFailed(f"on {host_name}: PostgreSQL is not running, so the role and database cannot "
                                "be created", hint="Run step 02 (install PostgreSQL) and 03 first.")
    return [ensure_role(psql, params, password, dry_run=dry_run, host_name=host_name),
            ensure_database(psql, params, dry_run=dry_run, host_name=host_name),
            ensure_grants(psql, params, dry_run=dry_run, host_name=host_name)]
