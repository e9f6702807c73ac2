"""Step 13's connection checks over the network: each role tried from the app host, the jumpbox
and elsewhere with psql (password on stdin, TLS verified), expecting what the roles model says."""

from __future__ import annotations

import secrets as _s
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.roles import RolesConfig
from hcbpg.ops.privileges import get_role_password
from hcbpg.outcome import Check

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


def run_psql_as(host: "HostLike", *, role: str, password: str, server_ip: str, port: int, dbname: str, script: str,
            display: str, tls: str) -> "tuple[bool, str]":
    """Run *script* with psql on *host* as *role* over the network (TLS words *tls*, see
    ``desired.tls.conninfo_tls``); the password goes on stdin only."""
    conninfo = f"host={server_ip} port={port} dbname={dbname} user={role} connect_timeout=10 {tls}"
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -f -")
    res = host.run(cmd, stdin=password + "\n" + script, check=False, display=display)
    return res.ok, hsecrets.scrub(res.output.strip())


def check_metabase_access(jumpbox: "HostLike", others: Sequence["HostLike"], cfg: RolesConfig, params: "Params", *,
                          server_ip: str, unlisted_table: str) -> list[Check]:
    """From the jumpbox metabase reads a listed table and not *unlisted_table*; from *others* it is refused."""
    if not cfg.metabase or not cfg.metabase_tables:
        return [Check("metabase", "warn", "no metabase role or no listed tables in params", server_ip)]
    name, pw, port = cfg.metabase.name, get_role_password(SecretStore(), cfg, cfg.metabase.name), params.postgres.port
    listed = cfg.metabase_tables[0]
    out = []

    def q(table: str) -> str:
        return sql.SQL("SELECT count(*) FROM {};\n").format(sql.Identifier(*table.split("."))).as_string(None)

    ok, output = run_psql_as(jumpbox, tls=desired_tls.conninfo_tls(params),
                         role=name, password=pw, server_ip=server_ip, port=port, dbname=cfg.database,
                         script=q(listed), display=f"psql as {name}@{server_ip}: SELECT count(*) FROM {listed}")
    out.append(Check.of(f"{name} reads listed table {listed} from the jumpbox", ok,
                        f"{output.splitlines()[-1] if ok and output else hsecrets.scrub(output)[-200:]} row(s)" if ok
                        else hsecrets.scrub(output)[-200:], jumpbox.name))
    ok, output = run_psql_as(jumpbox, tls=desired_tls.conninfo_tls(params),
                         role=name, password=pw, server_ip=server_ip, port=port, dbname=cfg.database,
                         script=q(unlisted_table),
                         display=f"psql as {name}@{server_ip}: SELECT count(*) FROM {unlisted_table} (must be refused)")
    denied = not ok and "permission denied" in output
    out.append(Check.of(f"{name} cannot read unlisted table {unlisted_table}", denied,
                        "permission denied" if denied else ("READ IT" if ok else hsecrets.scrub(output)[-200:]), jumpbox.name))
    for other in others:
        # expected to be refused: a random wrong password, never metabase's own
        ok, output = run_psql_as(other, tls=desired_tls.conninfo_tls(params),
                             role=name, password=_s.token_urlsafe(16), server_ip=server_ip, port=port,
                             dbname=cfg.database,
                             script="SELECT 1;\n", display=f"psql as {name}@{server_ip} from {other.name} "
                                                          "(must be refused)")
        refused = not ok and "no pg_hba.conf entry" in output
        out.append(Check.of(f"{name} refused from {other.name}", refused,
                            "refused by pg_hba.conf" if refused else ("CONNECTED" if ok else hsecrets.scrub(output)[-200:]),
                            other.name))
    return out


def check_migrations_then_app(app: "HostLike", cfg: RolesConfig, params: "Params", *, server_ip: str,
                              app_password: str) -> list[Check]:
    """The migrations role creates a table; the app role then writes and reads it; the migrations role drops it."""
    if not cfg.migrations:
        return [Check("migrations role", "warn", "no migrations role in params", server_ip)]
    table = f"hcbpg_migration_check_{_s.token_hex(3)}"
    t = sql.Identifier(table)
    port = params.postgres.port
    mig, mig_pw = cfg.migrations.name, get_role_password(SecretStore(), cfg, cfg.migrations.name)
    create = sql.SQL("CREATE TABLE {} (id bigserial PRIMARY KEY, note text NOT NULL);\n").format(t).as_string(None)
    ok, output = run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                         role=mig, password=mig_pw, server_ip=server_ip, port=port, dbname=cfg.database,
                         script=create, display=f"psql as {mig}@{server_ip}: CREATE TABLE {table}")
    out = [Check.of(f"{mig} creates a table", ok, f"created {table}" if ok else hsecrets.scrub(output)[-200:], app.name)]
    if not ok:
        return out
    try:
        use = sql.SQL("INSERT INTO {t} (note) VALUES ('written by the app');\n"
                      "UPDATE {t} SET note = note || ' and updated';\n"
                      "SELECT note FROM {t};\n").format(t=t).as_string(None)
        ok, output = run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                             role=cfg.app_role, password=app_password, server_ip=server_ip, port=port,
                             dbname=cfg.database, script=use,
                             display=f"psql as {cfg.app_role}@{server_ip}: write and read {table}")
        good = ok and "written by the app and updated" in output
        out.append(Check.of(f"{cfg.app_role} uses the table {mig} created", good,
                            "inserted (sequence), updated and read it (default privileges)" if good
                            else hsecrets.scrub(output)[-200:], app.name))
        ok, output = run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                             role=cfg.app_role, password=app_password, server_ip=server_ip, port=port,
                             dbname=cfg.database, script=sql.SQL("DROP TABLE {};\n").format(t).as_string(None),
                             display=f"psql as {cfg.app_role}@{server_ip}: DROP TABLE {table} (must be refused)")
        out.append(Check.of(f"{cfg.app_role} cannot drop it", not ok and "must be owner" in output,
                            "must be owner" if not ok else "DROPPED IT", app.name))
    finally:
        run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                role=mig, password=mig_pw, server_ip=server_ip, port=port, dbname=cfg.database,
                script=sql.SQL("DROP TABLE IF EXISTS {};\n").format(t).as_string(None),
                display=f"psql as {mig}@{server_ip}: DROP TABLE {table}")
    return out


def check_deploy(app: "HostLike", cfg: RolesConfig, params: "Params", *, server_ip: str, app_login: str,
                 app_password: str) -> list[Check]:
    """A deploy after step 13, from the app host: the migrations role creates a table and adds a column;
    the app's login writes and reads it at once (default privileges) and can neither create nor alter tables."""
    if not cfg.migrations:
        return [Check("deploy as the migrations role", "warn", "no migrations role in params", server_ip)]
    table = f"hcbpg_deploy_check_{_s.token_hex(3)}"
    t = sql.Identifier(table)
    port, db = params.postgres.port, cfg.database
    mig, mig_pw = cfg.migrations.name, get_role_password(SecretStore(), cfg, cfg.migrations.name)

    def run(role: str, pw: str, script: sql.Composable, what: str) -> tuple[bool, str]:
        return run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                       role=role, password=pw, server_ip=server_ip, port=port, dbname=db,
                       script=script.as_string(None), display=f"psql as {role}@{server_ip}: {what}")

    migrate = sql.SQL("CREATE TABLE {t} (id bigserial PRIMARY KEY, note text NOT NULL);\n"
                      "ALTER TABLE {t} ADD COLUMN amount_cents bigint NOT NULL DEFAULT 0;\n").format(t=t)
    ok, output = run(mig, mig_pw, migrate, f"migration: CREATE TABLE {table}, ADD COLUMN amount_cents")
    out = [Check.of(f"{mig} migrates: creates {table} and adds a column", ok,
                    "created the table, added amount_cents" if ok else hsecrets.scrub(output)[-200:], app.name)]
    if not ok:
        return out
    try:
        use = sql.SQL("INSERT INTO {t} (note, amount_cents) VALUES ('deployed', 1250);\n"
                      "UPDATE {t} SET amount_cents = amount_cents + 1;\n"
                      "SELECT note || ':' || amount_cents FROM {t};\n").format(t=t)
        ok, output = run(app_login, app_password, use, f"write and read {table}")
        good = ok and "deployed:1251" in output
        out.append(Check.of(f"{app_login} writes and reads the new table at once", good,
                            "inserted, updated, read the new column (default privileges)" if good
                            else hsecrets.scrub(output)[-200:], app.name))
        other = sql.Identifier(table + "_by_app")
        ok, output = run(app_login, app_password, sql.SQL("CREATE TABLE {} (id int);\n").format(other),
                         "CREATE TABLE (must be refused)")
        out.append(Check.of(f"{app_login} cannot create a table", not ok and "permission denied" in output,
                            "permission denied" if not ok else "CREATED ONE", app.name))
        if ok:
            run(mig, mig_pw, sql.SQL("DROP TABLE IF EXISTS {};\n").format(other), "clean up")
        ok, output = run(app_login, app_password, sql.SQL("ALTER TABLE {} ADD COLUMN x int;\n").format(t),
                         f"ALTER TABLE {table} (must be refused)")
        out.append(Check.of(f"{app_login} cannot alter the table", not ok and "must be owner" in output,
                            "must be owner" if not ok else "ALTERED IT", app.name))
    finally:
        run(mig, mig_pw, sql.SQL("DROP TABLE IF EXISTS {};\n").format(t), f"DROP TABLE {table}")
    return out


def check_access(app: "HostLike", jumpbox: "HostLike | None", cfg: RolesConfig, params: "Params", *, server_ip: str,
                  app_password: str, unlisted_table: str = "users", app_login: str | None = None) -> list[Check]:
    """Step 13's checks over the network: a deploy (migrations → app), metabase from the jumpbox only."""
    out = check_deploy(app, cfg, params, server_ip=server_ip, app_login=app_login or cfg.app_role,
                       app_password=app_password)
    if not cfg.metabase:
        return out
    if jumpbox is None:
        out.append(Check("metabase from the jumpbox", "warn",
                         f"the jumpbox ({cfg.jumpbox_ip}) is not reachable over SSH from here: not checked",
                         cfg.jumpbox_ip or ""))
        # expected to be refused: a random wrong password, never metabase's own
        ok, output = run_psql_as(app, tls=desired_tls.conninfo_tls(params),
                             role=cfg.metabase.name, password=_s.token_urlsafe(16), server_ip=server_ip,
                             port=params.postgres.port, dbname=cfg.database, script="SELECT 1;\n",
                             display=f"psql as {cfg.metabase.name}@{server_ip} from {app.name} (must be refused)")
        refused = not ok and "no pg_hba.conf entry" in output
        out.append(Check.of(f"{cfg.metabase.name} refused from {app.name}", refused,
                            "refused by pg_hba.conf" if refused
                            else ("CONNECTED" if ok else hsecrets.scrub(output)[-200:]), app.name))
        return out
    return out + check_metabase_access(jumpbox, [app], cfg, params, server_ip=server_ip, unlisted_table=unlisted_table)
