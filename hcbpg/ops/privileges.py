"""The roles model of step 13: who may do what in hcb_production, as desired grants from params,
the SQL that gets there, and a check that reads effective privileges back and compares.

Roles (names from params ``roles:``; defaults in :class:`RolesConfig`):

* a NOLOGIN **group role** (``hcb_app``) holds the app's privileges: CONNECT and TEMPORARY on the
  database, USAGE on the app schemas, SELECT/INSERT/UPDATE/DELETE on every table and view,
  USAGE/SELECT/UPDATE on every sequence, and default privileges so that tables the migrations
  role creates later are covered too;
* the app's **login role** (``rails``) is a member of it (INHERIT) and holds nothing itself, so
  its password can be rotated (or the role replaced) without re-granting anything;
* a **migrations role** (``hcb_migrations``, LOGIN) owns the database and every object in it;
  objects restored from Heroku (owned by ``rails`` or ``postgres``) are re-owned to it;
* **extensions** (PostgreSQL 15 rule): a role that is not a superuser may ``CREATE EXTENSION``
  only for extensions marked *trusted* in their control file (citext, pgcrypto, hstore,
  pg_trgm, uuid-ossp, ...), and needs CREATE on the database (the database owner has it).
  The extension is then owned by that role, and only its owner (or a superuser) may
  ``ALTER EXTENSION ... UPDATE`` it.  Untrusted extensions (pg_stat_statements, postgis, ...)
  need a superuser to create and to update: hcbpg creates them as ``postgres`` and the check
  says so.  So the migrations role, as database owner, creates and updates the trusted
  extensions the app uses (Rails ``enable_extension``);
* a read-only **metabase** role: CONNECT, USAGE on ``public``, SELECT on the tables listed in
  params and nothing else; pg_hba admits it only from the jumpbox's private IP;
* a **monitoring** role (``vector``): SELECT on pg_stat_database, pg_stat_database_conflicts
  and pg_stat_bgwriter, nothing else; pg_hba admits it only from the server's own private IP,
  to the ``postgres`` database (Vector's postgresql_metrics endpoint);
* an **exporter** role (``postgres_exporter``) for prometheus-postgres-exporter: member of
  ``pg_monitor`` (replication figures need it), same pg_hba scope as ``vector``.

The model itself (planning, compare, what it leaves alone) is pure and lives in
:mod:`hcbpg.desired.privileges`; here is what reads the catalogs and applies the plan:
:func:`get_observed`, :func:`ensure_privileges`, :func:`check_privileges` and the password checks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired.privileges import (
    compare,
    current_app_login,
    model_role_names,
    plan_batches,
    plan_privileges,
    render_batch,
    render_unknown,
)
from hcbpg.desired.roles import RolesConfig
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.acl import Observed, catalog_queries, parse_observed
from hcbpg.pg.scram import scram_matches

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Collection

    from hcbpg.adapters.base import PsqlLike
    from hcbpg.adapters.secretstore import SecretStoreLike

# secrets of the login roles -----------------------------------------------------------------------

def ensure_role_secrets(secrets: "SecretStoreLike", cfg: RolesConfig,
                        only: "Collection[str] | None" = None) -> list[Outcome]:
    """Every login role's secret exists (*only*: these roles'): a missing ``file:`` secret gets a new
    password (0600), never shown."""
    out = []
    for role in cfg.secret_roles():
        if only is not None and role.name not in only:
            continue
        what = f"secret {role.password_key} ({role.password_ref.split(':', 1)[0]}:)"
        mark = len(secrets.journal)
        try:
            secrets.resolve(role.password_ref, key=role.password_key)
        except hsecrets.SecretError:
            if not role.password_ref.startswith("file:"):
                raise
            secrets.store(role.password_ref, hsecrets.generate_password(), key=role.password_key)
        made = bool(secrets.journal[mark:])
        out.append(Outcome(what, made, secrets.dry_run,
                           actions=[f"generate a password for {role.name} and store it at {role.password_ref} (0600)"]
                           if made else []))
    return out


def get_role_password(secrets: "SecretStoreLike", cfg: RolesConfig, name: str) -> str:
    """The password of login role *name* from its secret reference (registered for scrubbing)."""
    for role in cfg.secret_roles():
        if role.name == name:
            return secrets.resolve(role.password_ref, key=role.password_key)
    raise KeyError(name)


# what the catalogs say ------------------------------------------------------------------------------

def get_app_login(psql: "PsqlLike", cfg: RolesConfig) -> tuple[str, str]:
    """(login, password) the app uses now, the password from that login's secret reference."""
    name = current_app_login(get_observed(psql, cfg), cfg)
    if name == cfg.app_role:
        return name, hsecrets.resolve(cfg.app_password_ref, key="postgres.app_role_password")
    return name, get_role_password(SecretStore(), cfg, name)


def get_observed(psql: "PsqlLike", cfg: RolesConfig) -> Observed:
    """Read the catalogs (read-only; the database's part only when the database exists).  A server not
    there yet (an AbsentHost) answers every query with no row: no role, no database."""
    queries = catalog_queries(model_role_names(cfg), cfg.database)
    exists = psql.value(sql.SQL("SELECT count(*) AS n FROM pg_database WHERE datname = {}")
                        .format(sql.Literal(cfg.database)))
    rows: dict[str, Any] = {}
    for db in dict.fromkeys(db for _, db in queries.values()):
        if db != "postgres" and not exists:
            continue
        rows.update(_catalog_rows(psql, {n: q for n, (q, d) in queries.items() if d == db}, db))
    return parse_observed(rows)


def _catalog_rows(psql: "PsqlLike", queries: dict[str, sql.Composable], db: str) -> dict[str, Any]:
    """The rows of each of *queries* in *db*, read by one psql call (one snapshot) instead of one call
    each: name -> rows as ``psql.query`` returns them."""
    parts = [sql.SQL("{}, (SELECT coalesce(json_agg(q), '[]'::json) FROM ({}) AS q)").format(sql.Literal(name), query)
             for name, query in queries.items()]
    got = psql.value(sql.SQL("SELECT json_build_object({}) AS catalog").format(sql.SQL(", ").join(parts)),
                     dbname=db) or {}
    return {name: got.get(name) or [] for name in queries}


# apply and check ---------------------------------------------------------------------------------------

def ensure_privileges(psql: "PsqlLike", cfg: RolesConfig, *, roles_only: bool = False) -> Outcome:
    """Roles, owners, extensions, grants and default privileges as the model says (only what differs);
    grants of roles and schemas the model does not know are left alone and named in the actions.

    New login roles get their password from their secret (the SCRAM verifier is computed here);
    an existing role's password is never changed here (that is step 14).
    """
    host = psql.host
    what = (f"login roles for {cfg.database} on {host.name}" if roles_only
            else f"roles and privileges in {cfg.database} on {host.name}")
    seen = Changes(host)
    obs = get_observed(psql, cfg)
    passwords = {}
    for role in cfg.login_roles():
        if role.name not in obs.roles:
            try:
                passwords[role.name] = get_role_password(SecretStore(), cfg, role.name)
            except hsecrets.SecretError:
                # dry run: the secret step before this one only recorded the new secret; the plan says
                # PASSWORD NULL where the real run sets the verifier
                if not host.dry_run:
                    raise
    statements = plan_privileges(cfg, obs, passwords, roles_only=roles_only)
    for dbname, batch in plan_batches(statements):
        psql.execute(render_batch(batch), dbname=dbname)
    notes = [] if roles_only else render_unknown(cfg, obs)
    return Outcome(what, bool(seen), host.dry_run,
                   actions=[hsecrets.scrub(st.text()) for st in statements] + notes)


def check_privileges(psql: "PsqlLike", cfg: RolesConfig) -> list[Check]:
    """Read effective privileges back from the catalogs and compare them with params (one row per role/aspect)."""
    return compare(cfg, get_observed(psql, cfg), psql.host.name)


def check_passwords(psql: "PsqlLike", cfg: RolesConfig) -> list[Check]:
    """Each login role's stored SCRAM verifier was made from its secret."""
    out = []
    roles = cfg.login_roles()
    # every login role's verifier in one read (get_role's columns would be one psql call per role)
    stored = {r["rolname"]: r for r in psql.query(sql.SQL(
        "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY({})").format(
            sql.Literal([r.name for r in roles])))}
    for r in stored.values():
        if r.get("rolpassword"):
            hsecrets.register(r["rolpassword"])
    for role in roles:
        current = stored.get(role.name)
        if current is None:
            out.append(Check(f"{role.name} password", "fail", "role does not exist", psql.host.name))
            continue
        ok = scram_matches(get_role_password(SecretStore(), cfg, role.name), current.get("rolpassword") or "")
        out.append(Check.of(f"{role.name} password", ok, f"matches {role.password_key}" if ok
                            else f"stored password is not the secret {role.password_key}", psql.host.name))
    return out
