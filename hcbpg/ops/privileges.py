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

Pure parts: :func:`roles_config`, :func:`parse_observed`, :func:`effective_privileges`,
:func:`plan_privileges` (psycopg.sql statements), :func:`compare`.  I/O: :func:`get_observed`,
:func:`ensure_privileges`, :func:`check_privileges` and the connection checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.psql import Psql, render
from hcbpg.desired.roles import RolesConfig
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops.app_database import get_role
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.acl import (
    DB_OWNER_PSEUDO,
    KIND_KEYWORD,
    MONITORING_VIEWS,
    PUBLIC,
    Observed,
    Relation,
    catalog_queries,
    effective_privileges,
    owner_of,
    parse_observed,
)
from hcbpg.pg.scram import scram_matches, scram_verifier

if TYPE_CHECKING:  # pragma: no cover
    pass

#: what the app needs on tables/views (no TRUNCATE, REFERENCES, TRIGGER: those are the owner's)
APP_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
APP_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
APP_DATABASE_PRIVILEGES = ("CONNECT", "TEMPORARY")
# configuration (params ``roles:``) -------------------------------------------------------------

def ensure_role_secrets(cfg: RolesConfig, *, dry_run: bool) -> list[Outcome]:
    """Every login role's secret exists: a missing ``file:`` secret gets a new password (0600), never shown."""
    out = []
    for role in cfg.secret_roles():
        what = f"secret {role.password_key} ({role.password_ref.split(':', 1)[0]}:)"
        try:
            hsecrets.resolve(role.password_ref, key=role.password_key)
            out.append(Outcome(what, False, dry_run))
            continue
        except hsecrets.SecretError:
            if not role.password_ref.startswith("file:"):
                raise
        if not dry_run:
            hsecrets.store_secret(role.password_ref, hsecrets.generate_password(), key=role.password_key)
        out.append(Outcome(what, True, dry_run, actions=[f"generate a password for {role.name} and store it "
                                                          f"at {role.password_ref} (0600)"]))
    return out


def role_password(cfg: RolesConfig, name: str) -> str:
    """The password of login role *name* from its secret reference (registered for scrubbing)."""
    for role in cfg.secret_roles():
        if role.name == name:
            return hsecrets.resolve(role.password_ref, key=role.password_key)
    raise KeyError(name)


# pg_hba rules ----------------------------------------------------------------------------------

# what the catalogs say -----------------------------------------------------------------------

def model_role_names(cfg: RolesConfig) -> list[str]:
    return [cfg.group_role, *cfg.app_logins, *(r.name for r in cfg.login_roles()), "pg_monitor", "postgres"]


def current_app_login(obs: Observed, cfg: RolesConfig) -> str:
    """The app's login in use: of its two logins (step 14 alternates them), the one that may log in."""
    return next((n for n in cfg.app_logins if obs.roles.get(n, {}).get("rolcanlogin")), cfg.app_role)


def get_app_login(psql: Psql, cfg: RolesConfig) -> tuple[str, str]:
    """(login, password) the app uses now, the password from that login's secret reference."""
    name = current_app_login(get_observed(psql, cfg), cfg)
    if name == cfg.app_role:
        return name, hsecrets.resolve(cfg.app_password_ref, key="postgres.app_role_password")
    return name, role_password(cfg, name)


def get_observed(psql: Psql, cfg: RolesConfig) -> Observed:
    """Read the catalogs (read-only; the database's part only when the database exists)."""
    queries = catalog_queries(model_role_names(cfg), cfg.database)
    exists = psql.value(sql.SQL("SELECT count(*) AS n FROM pg_database WHERE datname = {}")
                        .format(sql.Literal(cfg.database)))
    rows: dict[str, Any] = {}
    for name, (query, db) in queries.items():
        if db != "postgres" and not exists:
            continue
        rows[name] = psql.query(query, dbname=db)
    return parse_observed(rows)


# effective privileges (pure) ----------------------------------------------------------------

# the desired state and the plan (pure) -------------------------------------------------------

@dataclass(frozen=True)
class Statement:
    """One planned change: the SQL, the database it runs in, and why."""

    sql: sql.Composable
    dbname: str
    why: str

    def text(self) -> str:
        return " ".join(render(self.sql).split())


def _ident(*parts: str) -> sql.Composable:
    return sql.Identifier(*parts)


def app_schemas(cfg: RolesConfig, obs: Observed) -> list[str]:
    """The schemas the app uses: params ``roles.schemas`` plus any other non-system schema in the database."""
    return sorted(set(cfg.schemas) | set(obs.schemas))


def _role_statements(cfg: RolesConfig, obs: Observed, passwords: Mapping[str, str]) -> list[Statement]:
    out: list[Statement] = []
    g = cfg.group_role
    if g not in obs.roles:
        out.append(Statement(sql.SQL("CREATE ROLE {} WITH NOLOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                     "NOREPLICATION").format(_ident(g)), "postgres",
                             "the group role that holds the app's privileges"))
    elif obs.roles[g]["rolcanlogin"]:
        out.append(Statement(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(_ident(g)), "postgres",
                             "the group role must not log in"))
    for role in cfg.login_roles():
        current = obs.roles.get(role.name)
        if current is None:
            password = passwords.get(role.name)
            pw = (sql.SQL(" PASSWORD {}").format(sql.Literal(scram_verifier(password))) if password
                  else sql.SQL(" PASSWORD NULL"))
            # INHERIT: the owner's rights on public come through pg_database_owner, the exporter's through pg_monitor
            out.append(Statement(sql.SQL("CREATE ROLE {} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                                         "NOREPLICATION CONNECTION LIMIT {}{}").format(
                _ident(role.name), sql.Literal(role.connection_limit), pw), "postgres", f"login role {role.name}"))
            continue
        fixes = []
        if not current["rolcanlogin"]:
            fixes.append("LOGIN")
        if not current["rolinherit"]:
            fixes.append("INHERIT")
        for col, word in (("rolsuper", "NOSUPERUSER"), ("rolcreatedb", "NOCREATEDB"),
                          ("rolcreaterole", "NOCREATEROLE"), ("rolreplication", "NOREPLICATION"),
                          ("rolbypassrls", "NOBYPASSRLS")):
            if current.get(col):
                fixes.append(word)
        parts: list[sql.Composable] = [sql.SQL(f) for f in fixes]
        if int(current["rolconnlimit"]) != role.connection_limit:
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(role.connection_limit)))
        if parts:
            out.append(Statement(sql.SQL("ALTER ROLE {} WITH ").format(_ident(role.name)) + sql.SQL(" ").join(parts),
                                 "postgres", f"attributes of {role.name}"))
    app = obs.roles.get(cfg.app_role)
    if app is not None and g not in app["member_of"]:
        out.append(Statement(sql.SQL("GRANT {} TO {}").format(_ident(g), _ident(cfg.app_role)), "postgres",
                             f"{cfg.app_role} gets the app's privileges through {g}"))
    if app is not None and not app["rolinherit"]:
        out.append(Statement(sql.SQL("ALTER ROLE {} WITH INHERIT").format(_ident(cfg.app_role)), "postgres",
                             f"{cfg.app_role} must inherit {g}'s privileges"))
    # memberships nobody asked for: only the exporter is in pg_monitor, nobody else in anything
    wanted_member = {cfg.app_role: {g}}
    if cfg.exporter:
        wanted_member[cfg.exporter.name] = {"pg_monitor"}
        if "pg_monitor" not in obs.roles.get(cfg.exporter.name, {}).get("member_of", []):
            out.append(Statement(sql.SQL("GRANT pg_monitor TO {}").format(_ident(cfg.exporter.name)), "postgres",
                                 "the exporter reads replication and activity figures (pg_monitor)"))
    for name in [r.name for r in cfg.login_roles()] + [g]:
        current = obs.roles.get(name)
        if current is None:
            continue
        for extra in sorted(set(current["member_of"]) - wanted_member.get(name, set())):
            out.append(Statement(sql.SQL("REVOKE {} FROM {}").format(_ident(extra), _ident(name)), "postgres",
                                 f"{name} is not meant to be a member of {extra}"))
    return out


def _ownership_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    owner = cfg.owner
    db = cfg.database
    out: list[Statement] = []
    if obs.database_owner is not None and obs.database_owner != owner:
        out.append(Statement(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(_ident(db), _ident(owner)), "postgres",
                             f"{owner} owns the database (CREATE on it: trusted extensions)"))
    # extensions cannot change owner (no ALTER EXTENSION ... OWNER TO); REASSIGN OWNED can, and in this
    # model nobody but the owner owns anything, so a trusted extension restored as rails moves with it
    for role in sorted({e["owner"] for name, e in obs.extensions.items()
                        if e["owner"] != owner and obs.available_extensions.get(name, {}).get("trusted")
                        and not obs.roles.get(e["owner"], {}).get("rolsuper", e["owner"] == "postgres")}):
        out.append(Statement(sql.SQL("REASSIGN OWNED BY {} TO {}").format(_ident(role), _ident(owner)), db,
                             f"everything {role} owns in {db} (extensions too) moves to {owner}"))
    for name, s in sorted(obs.schemas.items()):
        if s["owner"] not in (owner, DB_OWNER_PSEUDO):
            out.append(Statement(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(_ident(name), _ident(owner)), db,
                                 f"re-own schema {name} (was {s['owner']})"))
    for rel in obs.relations:
        if rel.extension or rel.owner == owner or (rel.kind == "S" and rel.owned_by_table):
            continue
        out.append(Statement(sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(KIND_KEYWORD[rel.kind]), _ident(rel.schema, rel.name), _ident(owner)), db,
            f"re-own {rel.qualified} (was {rel.owner})"))
    for r in obs.routines:
        if r["owner"] != owner:
            kw = "PROCEDURE" if r.get("kind") == "p" else ("AGGREGATE" if r.get("kind") == "a" else "FUNCTION")
            # the signature comes from the server already quoted (quote_ident) and schema-qualified
            out.append(Statement(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kw), sql.SQL(r["signature"]),
                                                                            _ident(owner)), db,
                                 f"re-own {r['signature']} (was {r['owner']})"))
    for t in obs.types:
        if t["owner"] != owner:
            out.append(Statement(sql.SQL("ALTER TYPE {} OWNER TO {}").format(sql.SQL(t["name"]), _ident(owner)), db,
                                 f"re-own type {t['name']} (was {t['owner']})"))
    return out


def _acl_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    db, g, owner = cfg.database, cfg.group_role, cfg.owner
    out: list[Statement] = []
    add = lambda s, why: out.append(Statement(s, db, why))  # noqa: E731
    # the database: PUBLIC loses its default CONNECT and TEMPORARY; the group and metabase get what they need
    dacl = obs.database_acl if obs.database_acl is not None else {PUBLIC: {"CONNECT", "TEMPORARY"}}
    if dacl.get(PUBLIC):
        out.append(Statement(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(_ident(db)), "postgres",
                             "only the roles of the model connect"))
    wanted_db = {g: set(APP_DATABASE_PRIVILEGES)}
    if cfg.metabase:
        wanted_db[cfg.metabase.name] = {"CONNECT"}
    # Blazer reads through pg_read_all_data and connects on its own grant, both hcbpg.ops.readonly's: kept here
    kept_db = {cfg.blazer.name: {"CONNECT"}} if cfg.blazer else {}
    for role, privs in wanted_db.items():
        missing = privs - dacl.get(role, set())
        if missing:
            out.append(Statement(sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in sorted(missing)), _ident(db), _ident(role)), "postgres",
                f"{role} connects"))
    for grantee, privs in sorted(dacl.items()):
        if grantee in (PUBLIC, owner) or grantee == obs.database_owner:
            continue
        extra = privs - wanted_db.get(grantee, set()) - kept_db.get(grantee, set())
        if extra:
            out.append(Statement(sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in sorted(extra)), _ident(db), _ident(grantee)), "postgres",
                f"{grantee} is not meant to have {', '.join(sorted(extra))} on the database"))
    schemas = app_schemas(cfg, obs)
    for s in schemas:
        cur = obs.schemas.get(s, {"acl": None, "owner": owner})
        acl = cur["acl"] or {}
        wanted = {g: {"USAGE"}}
        if cfg.metabase and s == "public":
            wanted[cfg.metabase.name] = {"USAGE"}
        if acl.get(PUBLIC):
            add(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(_ident(s)), f"PUBLIC loses {s}")
        for role, privs in wanted.items():
            if privs - acl.get(role, set()):
                add(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_ident(s), _ident(role)), f"{role} uses {s}")
        for grantee, privs in sorted(acl.items()):
            if grantee in (PUBLIC, owner, DB_OWNER_PSEUDO, cur["owner"]):
                continue
            extra = privs - wanted.get(grantee, set())
            if extra:
                add(sql.SQL("REVOKE {} ON SCHEMA {} FROM {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in sorted(extra)), _ident(s), _ident(grantee)),
                    f"{grantee} is not meant to have {', '.join(sorted(extra))} on {s}")
    # relations: the group gets the app's privileges on all of them (one statement per schema),
    # metabase SELECT on the listed tables; every other grant is revoked
    listed = {t if "." in t else f"public.{t}" for t in cfg.metabase_tables}
    need_tables: set[str] = set()
    need_seqs: set[str] = set()
    for rel in obs.relations:
        if rel.extension:
            continue
        acl = rel.acl or {}
        seq = rel.kind == "S"
        app_privs = set(APP_SEQUENCE_PRIVILEGES if seq else APP_TABLE_PRIVILEGES)
        if rel.kind == "m":
            app_privs = {"SELECT"}
        if app_privs - acl.get(g, set()):
            (need_seqs if seq else need_tables).add(rel.schema)
        wanted = {g: app_privs}
        if cfg.metabase and not seq and rel.qualified in listed:
            wanted[cfg.metabase.name] = {"SELECT"}
        for grantee, privs in sorted(acl.items()):
            if grantee in (owner, rel.owner):
                continue
            extra = privs - wanted.get(grantee, set())
            if extra:
                add(sql.SQL("REVOKE {} ON {} {} FROM {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in sorted(extra)),
                    sql.SQL("SEQUENCE" if seq else "TABLE"), _ident(rel.schema, rel.name),
                    sql.SQL("PUBLIC") if grantee == PUBLIC else _ident(grantee)),
                    f"{grantee} is not meant to have {', '.join(sorted(extra))} on {rel.qualified}")
        if cfg.metabase and rel.qualified in listed and "SELECT" not in acl.get(cfg.metabase.name, set()):
            add(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(_ident(rel.schema, rel.name),
                                                                  _ident(cfg.metabase.name)),
                f"metabase reads {rel.qualified} (listed in params)")
    for s in sorted(need_tables):
        add(sql.SQL("GRANT {} ON ALL TABLES IN SCHEMA {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in APP_TABLE_PRIVILEGES), _ident(s), _ident(g)),
            f"{g} gets the app's privileges on the tables in {s}")
    for s in sorted(need_seqs):
        add(sql.SQL("GRANT {} ON ALL SEQUENCES IN SCHEMA {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in APP_SEQUENCE_PRIVILEGES), _ident(s), _ident(g)),
            f"{g} gets the app's privileges on the sequences in {s}")
    # default privileges: what the migrations role creates later is the app's too
    for s in schemas:
        for objtype, dprivs, word in (("r", APP_TABLE_PRIVILEGES, "TABLES"), ("S", APP_SEQUENCE_PRIVILEGES, "SEQUENCES")):
            have = {p for (f, sch, o, gr, p) in obs.default_acl if f == owner and sch == s and o == objtype and gr == g}
            if set(dprivs) - have:
                add(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}").format(
                    _ident(owner), _ident(s), sql.SQL(", ").join(sql.SQL(p) for p in dprivs), sql.SQL(word), _ident(g)),
                    f"{word.lower()} {owner} creates in {s} later are the app's too")
    # the monitoring role: SELECT on the three statistics views, explicitly
    if cfg.monitoring:
        for view in MONITORING_VIEWS:
            if "SELECT" not in obs.catalog_view_acl.get(view, {}).get(cfg.monitoring.name, set()):
                out.append(Statement(sql.SQL("GRANT SELECT ON pg_catalog.{} TO {}").format(
                    _ident(view), _ident(cfg.monitoring.name)), "postgres",
                    f"{cfg.monitoring.name} reads {view} (in database postgres, where it connects)"))
    return out


def _extension_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    out = []
    for ext in cfg.extensions:
        if ext in obs.extensions:
            continue
        avail = obs.available_extensions.get(ext)
        if avail is None:
            continue  # reported by compare(): the package is missing
        if avail["trusted"]:
            stmt = sql.SQL("SET ROLE {}; CREATE EXTENSION IF NOT EXISTS {}; RESET ROLE").format(
                _ident(cfg.owner), _ident(ext))
            why = f"trusted extension {ext}, created by {cfg.owner} (its owner may update it)"
        else:
            stmt = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(_ident(ext))
            why = f"untrusted extension {ext}: only a superuser may create and update it"
        out.append(Statement(stmt, cfg.database, why))
    return out


def plan_privileges(cfg: RolesConfig, obs: Observed, passwords: Mapping[str, str] | None = None, *,
                    roles_only: bool = False) -> list[Statement]:
    """Every statement that brings the catalogs to the model, in order (roles, owners, extensions, grants).

    *roles_only*: just the roles and memberships, which change nothing the app relies on (the
    hand-over of ownership waits until the release command uses the migrations role).
    """
    passwords = passwords or {}
    out = _role_statements(cfg, obs, passwords)
    if obs.database_owner is None or roles_only:
        return out  # no database yet: step 04 creates it, then this step runs again
    return out + _ownership_statements(cfg, obs) + _extension_statements(cfg, obs) + _acl_statements(cfg, obs)


# compare (pure) ----------------------------------------------------------------------------

def _fmt(privs: Iterable[str]) -> str:
    return ",".join(sorted(privs)) or "none"


def _summarise(mismatch: list[str], limit: int = 4) -> str:
    if len(mismatch) <= limit:
        return "; ".join(mismatch)
    return "; ".join(mismatch[:limit]) + f"; and {len(mismatch) - limit} more"


def compare(cfg: RolesConfig, obs: Observed, target: str = "") -> list[Check]:
    """One row per role (and aspect): effective privileges against the model from params."""
    checks: list[Check] = []
    g, owner = cfg.group_role, cfg.owner
    listed = {t if "." in t else f"public.{t}" for t in cfg.metabase_tables}
    rels = [r for r in obs.relations if not r.extension]

    def role_row(name: str, expect_login: bool, member_of: set[str]) -> bool:
        r = obs.roles.get(name)
        if r is None:
            checks.append(Check(f"role {name}", "fail", "does not exist", target))
            return False
        problems = []
        if bool(r["rolcanlogin"]) != expect_login:
            problems.append("LOGIN" if r["rolcanlogin"] else "NOLOGIN")
        if not r["rolinherit"]:
            problems.append("NOINHERIT (privileges of its groups and of pg_database_owner would not apply)")
        for col in ("rolsuper", "rolcreatedb", "rolcreaterole", "rolreplication", "rolbypassrls"):
            if r.get(col):
                problems.append(col[3:].upper())
        if set(r["member_of"]) != member_of:
            problems.append(f"member of {_fmt(r['member_of'])} (want {_fmt(member_of)})")
        checks.append(Check.of(f"role {name}", not problems,
                               ("LOGIN" if expect_login else "NOLOGIN") + (f", member of {_fmt(member_of)}"
                                                                            if member_of else "")
                               if not problems else "; ".join(problems), target))
        return True

    def table_row(name: str, want: Callable[[Relation], set[str]], label: str) -> None:
        eff = effective_privileges(obs, name)
        mismatch = []
        for rel in rels:
            have = eff["relations"].get(rel.qualified, set())
            w = want(rel)
            if have != w:
                mismatch.append(f"{rel.qualified}: has {_fmt(have)}, want {_fmt(w)}")
        checks.append(Check.of(f"{name}: {label}", not mismatch,
                               f"{len(rels)} relation(s) as in params" if not mismatch else _summarise(mismatch),
                               target))

    def db_schema_row(name: str, want_db: set[str], want_schemas: Callable[[str], set[str]]) -> None:
        eff = effective_privileges(obs, name)
        problems = []
        if eff["database"] != want_db:
            problems.append(f"database {_fmt(eff['database'])} (want {_fmt(want_db)})")
        for s, have in sorted(eff["schemas"].items()):
            if have != want_schemas(s):
                problems.append(f"schema {s} {_fmt(have)} (want {_fmt(want_schemas(s))})")
        checks.append(Check.of(f"{name}: database and schemas", not problems,
                               f"database {_fmt(want_db)}; schemas as in params" if not problems
                               else _summarise(problems), target))

    def app_privs(rel: Relation) -> set[str]:
        if rel.kind == "S":
            return set(APP_SEQUENCE_PRIVILEGES)
        return {"SELECT"} if rel.kind == "m" else set(APP_TABLE_PRIVILEGES)

    # the group role and the app role
    if role_row(g, False, set()):
        db_schema_row(g, set(APP_DATABASE_PRIVILEGES), lambda s: {"USAGE"})
        table_row(g, app_privs, "app privileges on every table and sequence")
    in_use = current_app_login(obs, cfg)
    for login in [n for n in cfg.app_logins if n == cfg.app_role or n in obs.roles]:
        if not role_row(login, login == in_use, {g}):
            continue
        db_schema_row(login, set(APP_DATABASE_PRIVILEGES), lambda s: {"USAGE"})
        table_row(login, app_privs, f"only what {g} gives")
        owned = [r.qualified for r in rels if r.owner == login]
        checks.append(Check.of(f"{login}: owns nothing", not owned and obs.database_owner != login,
                               "owns no object" if not owned and obs.database_owner != login
                               else _summarise((["the database"] if obs.database_owner == login else [])
                                               + owned), target))
    # the migrations role owns everything
    if cfg.migrations and role_row(cfg.migrations.name, True, set()):
        not_owned = [r.qualified for r in rels if r.owner != owner]
        not_owned += [r["signature"] for r in obs.routines if r["owner"] != owner]
        not_owned += [t["name"] for t in obs.types if t["owner"] != owner]
        not_owned += [f"schema {s}" for s, v in obs.schemas.items() if owner_of(obs, v["owner"]) != owner]
        if obs.database_owner != owner:
            not_owned.insert(0, f"the database (owner {obs.database_owner})")
        checks.append(Check.of(f"{owner}: owns the database and every object", not not_owned,
                               f"{len(rels)} relation(s), {len(obs.routines)} routine(s), {len(obs.types)} type(s)"
                               if not not_owned else _summarise(not_owned), target))
        for s in app_schemas(cfg, obs):
            for objtype, privs, word in (("r", APP_TABLE_PRIVILEGES, "tables"),
                                         ("S", APP_SEQUENCE_PRIVILEGES, "sequences")):
                have = {p for (f, sch, o, gr, p) in obs.default_acl
                        if f == owner and sch == s and o == objtype and gr == g}
                checks.append(Check.of(f"default privileges: {word} {owner} creates in {s}",
                                       have == set(privs), f"{g} gets {_fmt(have)}"
                                       + ("" if have == set(privs) else f" (want {_fmt(privs)})"), target))
    # extensions
    for ext in cfg.extensions:
        avail = obs.available_extensions.get(ext)
        inst = obs.extensions.get(ext)
        name = f"extension {ext}"
        if avail is None:
            checks.append(Check(name, "fail", "not available on this server (install its package)", target))
        elif inst is None:
            checks.append(Check(name, "fail", "not installed in the database", target))
        elif avail["trusted"]:
            ok = inst["owner"] == owner
            checks.append(Check(name, "pass" if ok else "warn",
                                f"trusted, {inst['version']} in {inst['schema']}, owned by {inst['owner']}: "
                                + (f"{owner} may create and update it" if ok else
                                   f"only {inst['owner']} or a superuser may update it (no ALTER EXTENSION OWNER "
                                   "in PostgreSQL 15: drop and re-create it as "
                                   f"{owner} to hand it over)"), target))
        else:
            checks.append(Check(name, "pass",
                                f"untrusted, {inst['version']} in {inst['schema']}, owned by {inst['owner']}: "
                                "only a superuser may create or update it (hcbpg does, as postgres)", target))
    # metabase
    if cfg.metabase and role_row(cfg.metabase.name, True, set()):
        db_schema_row(cfg.metabase.name, {"CONNECT"}, lambda s: {"USAGE"} if s == "public" else set())
        table_row(cfg.metabase.name, lambda rel: {"SELECT"} if rel.qualified in listed else set(),
                  f"SELECT on the {len(listed)} listed table(s) only")
        missing = sorted(listed - {r.qualified for r in rels})
        if missing:
            checks.append(Check("metabase: listed tables exist", "fail", f"not in the database: {', '.join(missing)}",
                                target))
    # monitoring
    if cfg.monitoring and role_row(cfg.monitoring.name, True, set()):
        name = cfg.monitoring.name
        explicit = {v: "SELECT" in acl.get(name, set()) for v, acl in obs.catalog_view_acl.items()}
        missing = [v for v in MONITORING_VIEWS if not explicit.get(v)]
        checks.append(Check.of(f"{name}: SELECT on {', '.join(MONITORING_VIEWS)}", not missing,
                               "granted" if not missing else f"not granted on {', '.join(missing)}", target))
        db_schema_row(name, set(), lambda s: set())
        table_row(name, lambda rel: set(), "no privilege on any table")
    if cfg.exporter:
        role_row(cfg.exporter.name, True, {"pg_monitor"})
    return checks


# I/O ----------------------------------------------------------------------------------------

def _batches(statements: Sequence[Statement], size: int = 200) -> list[tuple[str, list[Statement]]]:
    """Consecutive statements of one database in batches (one psql call, one transaction each)."""
    out: list[tuple[str, list[Statement]]] = []
    for st in statements:
        if out and out[-1][0] == st.dbname and len(out[-1][1]) < size and "CREATE EXTENSION" not in st.text():
            out[-1][1].append(st)
        else:
            out.append((st.dbname, [st]))
    return out


def ensure_privileges(psql: "Psql | None", cfg: RolesConfig, *, dry_run: bool, host_name: str = "",
                      roles_only: bool = False) -> Outcome:
    """Roles, owners, extensions, grants and default privileges as the model says (only what differs).

    New login roles get their password from their secret (the SCRAM verifier is computed here);
    an existing role's password is never changed here (that is step 14).
    """
    host_name = host_name or (psql.host.name if psql else "(primary)")
    what = (f"login roles for {cfg.database} on {host_name}" if roles_only
            else f"roles and privileges in {cfg.database} on {host_name}")
    if psql is None:
        return Outcome(what, True, dry_run, actions=["(server not reachable yet: the whole model will be applied)"])
    obs = get_observed(psql, cfg)
    passwords = {}
    for role in cfg.login_roles():
        if role.name not in obs.roles:
            try:
                passwords[role.name] = role_password(cfg, role.name)
            except hsecrets.SecretError:
                if not dry_run:
                    raise
    statements = plan_privileges(cfg, obs, passwords, roles_only=roles_only)
    if not statements:
        return Outcome(what, False, dry_run)
    actions = [hsecrets.scrub(st.text()) for st in statements]
    if not dry_run:
        for dbname, batch in _batches(statements):
            body = sql.SQL(";\n").join(st.sql for st in batch)
            if len(batch) > 1:
                body = sql.SQL("BEGIN;\n") + body + sql.SQL(";\nCOMMIT")
            psql.execute(body, dbname=dbname)
    return Outcome(what, True, dry_run, actions=actions)


def check_privileges(psql: Psql, cfg: RolesConfig) -> list[Check]:
    """Read effective privileges back from the catalogs and compare them with params (one row per role/aspect)."""
    return compare(cfg, get_observed(psql, cfg), psql.host.name)


def privileges_table(psql: Psql, cfg: RolesConfig) -> list[dict[str, str]]:
    """Each role's effective privileges, for the operator (database, schemas, relations summarised)."""
    obs = get_observed(psql, cfg)
    rows = []
    for name in [cfg.group_role, cfg.app_role, *(r.name for r in cfg.login_roles())]:
        if name not in obs.roles:
            rows.append({"role": name, "database": "(missing)", "schemas": "", "relations": ""})
            continue
        eff = effective_privileges(obs, name)
        by_privs: dict[str, int] = {}
        for privs in eff["relations"].values():
            key = _fmt(privs)
            by_privs[key] = by_privs.get(key, 0) + 1
        rows.append({"role": name, "database": _fmt(eff["database"]),
                     "schemas": "; ".join(f"{s}: {_fmt(p)}" for s, p in sorted(eff["schemas"].items())),
                     "relations": "; ".join(f"{n}× {k}" for k, n in sorted(by_privs.items()))})
    return rows


def check_passwords(psql: Psql, cfg: RolesConfig) -> list[Check]:
    """Each login role's stored SCRAM verifier was made from its secret."""
    out = []
    for role in cfg.login_roles():
        current = get_role(psql, role.name)
        if current is None:
            out.append(Check(f"{role.name} password", "fail", "role does not exist", psql.host.name))
            continue
        ok = scram_matches(role_password(cfg, role.name), current.get("rolpassword") or "")
        out.append(Check.of(f"{role.name} password", ok, f"matches {role.password_key}" if ok
                            else f"stored password is not the secret {role.password_key}", psql.host.name))
    return out


def require_database(obs: Observed, cfg: RolesConfig) -> None:
    if obs.database_owner is None:
        raise SafetyCheckFailed(f"database {cfg.database} does not exist", hint="Run step 04 first.")
