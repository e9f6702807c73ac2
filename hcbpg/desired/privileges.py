"""The privileges model of step 13, pure: from params (:class:`~hcbpg.desired.roles.RolesConfig`) and
the catalogs as read (:class:`~hcbpg.pg.acl.Observed`) to the statements that get there
(:func:`plan_privileges`), the checks that say whether they are there (:func:`compare`), and what the
model leaves alone (:func:`unknown_grants`).  One model: ``ensure_privileges`` applies the plan and
the check compares with the same wants (:func:`app_privileges`, :func:`scope_of`), so a second run
after a passing check has nothing to do, and the check passes after a first run.

What each relation kind gets (the app's group role): tables (ordinary, partitioned and unlogged
alike), views and foreign tables SELECT/INSERT/UPDATE/DELETE; a **materialized view SELECT only**
(PostgreSQL refuses to write one, and only its owner may REFRESH it); sequences USAGE/SELECT/UPDATE.
``GRANT ... ON ALL TABLES IN SCHEMA`` covers materialized views too, so a schema that holds one is
granted relation by relation.

**Open world.** The model knows its roles (the ones params name, ``postgres`` and PostgreSQL's own
``pg_*`` roles, PUBLIC) and its schemas (params ``roles.schemas``, and every schema one of its roles
owns, which is where a restore puts things).  A grant to any other role (a ``fivetran`` that HCB added
beside the app), and every grant in a schema of another owner (``google_sheets``, owned by
``fivetran``, with Metabase's grants on it), is reported and left alone, as are objects another role
owns; unless params list the role in ``roles.revoke_unknown_roles`` (every grant to it is revoked:
database, schemas, relations; what it owns stays its own) or the schema in
``roles.revoke_unknown_schemas`` (every grant on it and on its relations, but its owner's, is revoked).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from psycopg import sql

from hcbpg.desired.roles import RolesConfig
from hcbpg.outcome import Check
from hcbpg.pg.acl import (
    DB_OWNER_PSEUDO,
    KIND_KEYWORD,
    MONITORING_VIEWS,
    PUBLIC,
    Observed,
    Relation,
    effective_privileges,
    owner_of,
)
from hcbpg.pg.scram import scram_verifier

#: what the app needs on tables/views (no TRUNCATE, REFERENCES, TRIGGER: those are the owner's)
APP_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
APP_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")
APP_DATABASE_PRIVILEGES = ("CONNECT", "TEMPORARY")
#: a materialized view is only read (and refreshed by its owner)
APP_MATVIEW_PRIVILEGES = ("SELECT",)

#: where a relation or schema stands in the model (:func:`scope_of`)
MODEL, REVOKED, UNKNOWN = "model", "revoked", "unknown"


# the model's roles and schemas ----------------------------------------------------------------

def model_role_names(cfg: RolesConfig) -> list[str]:
    """The roles whose attributes and memberships the catalog queries read."""
    return [cfg.group_role, *cfg.app_logins, *(r.name for r in cfg.login_roles()), "pg_monitor", "postgres"]


def known_role(cfg: RolesConfig, name: str) -> bool:
    """Whether *name* is a role of the model (its grants are the model's to give and take), PostgreSQL's
    own (``postgres``, ``pg_*``, PUBLIC), or listed in ``roles.revoke_unknown_roles``."""
    mine = {cfg.group_role, cfg.owner, *cfg.app_logins, *(r.name for r in cfg.secret_roles()), "postgres", PUBLIC}
    return name in mine or name.startswith("pg_") or name in cfg.revoke_roles


def current_app_login(obs: Observed, cfg: RolesConfig) -> str:
    """The app's login in use: of its two logins (step 14 alternates them), the one that may log in."""
    return next((n for n in cfg.app_logins if obs.roles.get(n, {}).get("rolcanlogin")), cfg.app_role)


def schema_scope(cfg: RolesConfig, obs: Observed, schema: str) -> str:
    """MODEL (params list it, or a role of the model owns it), REVOKED (params list it for revocation)
    or UNKNOWN (another role's: left alone)."""
    if schema in cfg.revoke_schemas:
        return REVOKED
    if schema in cfg.schemas:
        return MODEL
    owner = obs.schemas.get(schema, {}).get("owner", cfg.owner)
    owner = owner_of(obs, owner)
    return MODEL if known_role(cfg, owner) and owner not in cfg.revoke_roles else UNKNOWN


def app_schemas(cfg: RolesConfig, obs: Observed) -> list[str]:
    """The schemas the app uses: params ``roles.schemas`` plus every other schema of the model."""
    return sorted(s for s in set(cfg.schemas) | set(obs.schemas) if schema_scope(cfg, obs, s) == MODEL)


def scope_of(cfg: RolesConfig, obs: Observed, rel: Relation) -> str:
    """A relation's place: MODEL (in a schema of the model, owned by a role of the model), REVOKED (in
    a schema listed for revocation) or UNKNOWN (left alone: another schema, or another role's)."""
    where = schema_scope(cfg, obs, rel.schema)
    if where == MODEL and (not known_role(cfg, rel.owner) or rel.owner in cfg.revoke_roles):
        return UNKNOWN
    return where


def app_privileges(rel: Relation) -> set[str]:
    """What the app's group role holds on *rel*, by kind (unlogged tables are tables)."""
    if rel.kind == "S":
        return set(APP_SEQUENCE_PRIVILEGES)
    if rel.kind == "m":
        return set(APP_MATVIEW_PRIVILEGES)
    return set(APP_TABLE_PRIVILEGES)


def listed_tables(cfg: RolesConfig) -> set[str]:
    """Metabase's tables from params, schema-qualified."""
    return {t if "." in t else f"public.{t}" for t in cfg.metabase_tables}


def wanted_on(cfg: RolesConfig, obs: Observed, rel: Relation) -> dict[str, set[str]]:
    """Grantee -> what the model wants it to hold on a relation of the model (anyone else: nothing)."""
    if scope_of(cfg, obs, rel) != MODEL:
        return {}
    wanted = {cfg.group_role: app_privileges(rel)}
    if cfg.metabase and rel.kind != "S" and rel.qualified in listed_tables(cfg):
        wanted[cfg.metabase.name] = {"SELECT"}
    return wanted


def _managed_grantee(cfg: RolesConfig, grantee: str, *, revoked_scope: bool) -> bool:
    """Whether the model decides *grantee*'s grants here: a role it knows, or anyone in a revoked schema."""
    return revoked_scope or known_role(cfg, grantee)


# the plan (pure) --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Statement:
    """One planned change: the SQL, the database it runs in, and why."""

    sql: sql.Composable
    dbname: str
    why: str

    def text(self) -> str:
        return " ".join(self.sql.as_string(None).split())


def _ident(*parts: str) -> sql.Composable:
    return sql.Identifier(*parts)


def _privs(privs: Iterable[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL(p) for p in sorted(privs))


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == PUBLIC else _ident(name)


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
    # model nobody of its roles but the owner owns anything, so a trusted extension restored as rails moves
    for role in sorted({e["owner"] for name, e in obs.extensions.items()
                        if e["owner"] != owner and obs.available_extensions.get(name, {}).get("trusted")
                        and known_role(cfg, e["owner"]) and e["owner"] not in cfg.revoke_roles
                        and not obs.roles.get(e["owner"], {}).get("rolsuper", e["owner"] == "postgres")}):
        out.append(Statement(sql.SQL("REASSIGN OWNED BY {} TO {}").format(_ident(role), _ident(owner)), db,
                             f"everything {role} owns in {db} (extensions too) moves to {owner}"))
    mine = set(app_schemas(cfg, obs))
    for name, s in sorted(obs.schemas.items()):
        if name in mine and s["owner"] not in (owner, DB_OWNER_PSEUDO):
            out.append(Statement(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(_ident(name), _ident(owner)), db,
                                 f"re-own schema {name} (was {s['owner']})"))
    for rel in obs.relations:
        if rel.extension or rel.owner == owner or (rel.kind == "S" and rel.owned_by_table):
            continue
        if scope_of(cfg, obs, rel) != MODEL:
            continue
        out.append(Statement(sql.SQL("ALTER {} {} OWNER TO {}").format(
            sql.SQL(KIND_KEYWORD[rel.kind]), _ident(rel.schema, rel.name), _ident(owner)), db,
            f"re-own {rel.qualified} (was {rel.owner})"))
    for r in obs.routines:
        if r["owner"] != owner and r.get("schema", "public") in mine and known_role(cfg, r["owner"]):
            kw = "PROCEDURE" if r.get("kind") == "p" else ("AGGREGATE" if r.get("kind") == "a" else "FUNCTION")
            # the signature comes from the server already quoted (quote_ident) and schema-qualified
            out.append(Statement(sql.SQL("ALTER {} {} OWNER TO {}").format(sql.SQL(kw), sql.SQL(r["signature"]),
                                                                            _ident(owner)), db,
                                 f"re-own {r['signature']} (was {r['owner']})"))
    for t in obs.types:
        if t["owner"] != owner and t.get("schema", "public") in mine and known_role(cfg, t["owner"]):
            out.append(Statement(sql.SQL("ALTER TYPE {} OWNER TO {}").format(sql.SQL(t["name"]), _ident(owner)), db,
                                 f"re-own type {t['name']} (was {t['owner']})"))
    return out


def _database_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    db, g, owner = cfg.database, cfg.group_role, cfg.owner
    out: list[Statement] = []
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
            out.append(Statement(sql.SQL("GRANT {} ON DATABASE {} TO {}").format(_privs(missing), _ident(db),
                                                                                _ident(role)), "postgres",
                                 f"{role} connects"))
    for grantee, privs in sorted(dacl.items()):
        if grantee in (PUBLIC, owner) or grantee == obs.database_owner or not known_role(cfg, grantee):
            continue
        extra = privs - wanted_db.get(grantee, set()) - kept_db.get(grantee, set())
        if extra:
            out.append(Statement(sql.SQL("REVOKE {} ON DATABASE {} FROM {}").format(
                _privs(extra), _ident(db), _ident(grantee)), "postgres",
                f"{grantee} is not meant to have {', '.join(sorted(extra))} on the database"))
    return out


def _schema_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    db, g, owner = cfg.database, cfg.group_role, cfg.owner
    out: list[Statement] = []
    for s in sorted(set(app_schemas(cfg, obs)) | {s for s in obs.schemas if s in cfg.revoke_schemas}):
        revoked = schema_scope(cfg, obs, s) == REVOKED
        cur = obs.schemas.get(s, {"acl": None, "owner": owner})
        acl = cur["acl"] or {}
        wanted: dict[str, set[str]] = {} if revoked else {g: {"USAGE"}}
        if cfg.metabase and s == "public" and not revoked:
            wanted[cfg.metabase.name] = {"USAGE"}
        if acl.get(PUBLIC):
            out.append(Statement(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(_ident(s)), db,
                                 f"PUBLIC loses {s}"))
        for role, privs in wanted.items():
            if privs - acl.get(role, set()):
                out.append(Statement(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(_ident(s), _ident(role)), db,
                                     f"{role} uses {s}"))
        for grantee, privs in sorted(acl.items()):
            if grantee in (PUBLIC, owner, DB_OWNER_PSEUDO, cur["owner"]):
                continue
            if not _managed_grantee(cfg, grantee, revoked_scope=revoked):
                continue
            extra = privs - wanted.get(grantee, set())
            if extra:
                out.append(Statement(sql.SQL("REVOKE {} ON SCHEMA {} FROM {}").format(
                    _privs(extra), _ident(s), _ident(grantee)), db,
                    f"{grantee} is not meant to have {', '.join(sorted(extra))} on {s}"))
    return out


def _relation_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    """The group gets the app's privileges on the model's relations (one statement per schema where
    that is exact), metabase SELECT on the listed tables; every other grant of a known role is revoked."""
    db, g, owner = cfg.database, cfg.group_role, cfg.owner
    out: list[Statement] = []
    need: dict[tuple[str, bool], list[Relation]] = {}    # (schema, sequence?) -> relations lacking grants
    whole: dict[tuple[str, bool], bool] = {}              # ... -> ON ALL ... IN SCHEMA gives exactly the wants
    for rel in obs.relations:
        if rel.extension:
            continue
        scope = scope_of(cfg, obs, rel)
        seq = rel.kind == "S"
        key = (rel.schema, seq)
        if scope == MODEL:
            exact = rel.kind != "m"
        else:
            exact = False  # ON ALL ... IN SCHEMA would reach it: not the model's
        whole[key] = whole.get(key, True) and exact
        if scope == UNKNOWN:
            continue
        acl = rel.acl or {}
        wanted = wanted_on(cfg, obs, rel)
        if g in wanted and wanted[g] - acl.get(g, set()):
            need.setdefault(key, []).append(rel)
        for grantee, privs in sorted(acl.items()):
            if grantee in (owner, rel.owner):
                continue
            if not _managed_grantee(cfg, grantee, revoked_scope=scope == REVOKED):
                continue
            extra = privs - wanted.get(grantee, set())
            if extra:
                out.append(Statement(sql.SQL("REVOKE {} ON {} {} FROM {}").format(
                    _privs(extra), sql.SQL("SEQUENCE" if seq else "TABLE"), _ident(rel.schema, rel.name),
                    _grantee(grantee)), db,
                    f"{grantee} is not meant to have {', '.join(sorted(extra))} on {rel.qualified}"))
        if cfg.metabase and cfg.metabase.name in wanted and "SELECT" not in acl.get(cfg.metabase.name, set()):
            out.append(Statement(sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(_ident(rel.schema, rel.name),
                                                                                   _ident(cfg.metabase.name)), db,
                                 f"metabase reads {rel.qualified} (listed in params)"))
    for (s, seq), rels in sorted(need.items()):
        all_privs = APP_SEQUENCE_PRIVILEGES if seq else APP_TABLE_PRIVILEGES
        word = "SEQUENCES" if seq else "TABLES"
        if whole[(s, seq)]:
            out.append(Statement(sql.SQL("GRANT {} ON ALL {} IN SCHEMA {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in all_privs), sql.SQL(word), _ident(s), _ident(g)), db,
                f"{g} gets the app's privileges on the {word.lower()} in {s}"))
            continue
        for rel in rels:  # a materialized view, or a relation not the model's, is in this schema
            want = app_privileges(rel)
            out.append(Statement(sql.SQL("GRANT {} ON {} {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in all_privs if p in want), sql.SQL("SEQUENCE" if seq else "TABLE"),
                _ident(rel.schema, rel.name), _ident(g)), db,
                f"{g} gets the app's privileges on {rel.qualified}"
                + (" (a materialized view: SELECT only)" if rel.kind == "m" else "")))
    return out


def _default_privilege_statements(cfg: RolesConfig, obs: Observed) -> list[Statement]:
    """What the migrations role creates later is the app's too (a materialized view made later gets the
    table privileges by default, PostgreSQL has no separate kind for it: the next run revokes the writes)."""
    out: list[Statement] = []
    g, owner = cfg.group_role, cfg.owner
    for s in app_schemas(cfg, obs):
        for objtype, dprivs, word in (("r", APP_TABLE_PRIVILEGES, "TABLES"), ("S", APP_SEQUENCE_PRIVILEGES, "SEQUENCES")):
            have = {p for (f, sch, o, gr, p) in obs.default_acl if f == owner and sch == s and o == objtype and gr == g}
            if set(dprivs) - have:
                out.append(Statement(sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {} ON {} TO {}")
                                     .format(_ident(owner), _ident(s), sql.SQL(", ").join(sql.SQL(p) for p in dprivs),
                                             sql.SQL(word), _ident(g)), cfg.database,
                                     f"{word.lower()} {owner} creates in {s} later are the app's too"))
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
    return (out + _ownership_statements(cfg, obs) + _extension_statements(cfg, obs) + _database_statements(cfg, obs)
            + _schema_statements(cfg, obs) + _relation_statements(cfg, obs) + _default_privilege_statements(cfg, obs))


def plan_batches(statements: Sequence[Statement], size: int = 200) -> list[tuple[str, list[Statement]]]:
    """Consecutive statements of one database in batches (one psql call, one transaction each);
    CREATE EXTENSION alone (it may not run in a transaction with SET ROLE around it)."""
    out: list[tuple[str, list[Statement]]] = []
    for st in statements:
        if out and out[-1][0] == st.dbname and len(out[-1][1]) < size and "CREATE EXTENSION" not in st.text():
            out[-1][1].append(st)
        else:
            out.append((st.dbname, [st]))
    return out


def render_batch(batch: Sequence[Statement]) -> sql.Composable:
    """One batch as one psql input: in a transaction when there is more than one statement."""
    body = sql.SQL(";\n").join(st.sql for st in batch)
    return sql.SQL("BEGIN;\n") + body + sql.SQL(";\nCOMMIT") if len(batch) > 1 else body


# what the model leaves alone (pure) -------------------------------------------------------------

def _fmt(privs: Iterable[str]) -> str:
    return ",".join(sorted(privs)) or "none"


def _summarise(items: list[str], limit: int = 4) -> str:
    if len(items) <= limit:
        return "; ".join(items)
    return "; ".join(items[:limit]) + f"; and {len(items) - limit} more"


def unknown_grants(cfg: RolesConfig, obs: Observed) -> list[tuple[str, str]]:
    """(subject, what it holds) for every role and schema the model does not know and leaves alone:
    a role's grants on the database, the model's schemas and relations, and what it owns there; a
    schema's owner and the grants in it."""
    by_role: dict[str, list[str]] = {}

    def note(role: str, text: str) -> None:
        if not known_role(cfg, role):
            by_role.setdefault(role, []).append(text)

    for grantee, privs in sorted((obs.database_acl or {}).items()):
        note(grantee, f"{_fmt(privs)} on the database")
    for s in app_schemas(cfg, obs):
        for grantee, privs in sorted((obs.schemas.get(s, {}).get("acl") or {}).items()):
            note(grantee, f"{_fmt(privs)} on schema {s}")
    rel_counts: dict[str, int] = {}
    for rel in obs.relations:
        if rel.extension or schema_scope(cfg, obs, rel.schema) != MODEL:
            continue
        if scope_of(cfg, obs, rel) == UNKNOWN:
            note(rel.owner, f"owns {rel.qualified}")
            continue
        for grantee in (rel.acl or {}):
            if not known_role(cfg, grantee) and grantee != rel.owner:
                rel_counts[grantee] = rel_counts.get(grantee, 0) + 1
    for grantee, n in sorted(rel_counts.items()):
        note(grantee, f"grants on {n} relation(s) in the model's schemas")
    out = [(f"role {r}", _summarise(items)) for r, items in sorted(by_role.items())]
    for s, v in sorted(obs.schemas.items()):
        if schema_scope(cfg, obs, s) != UNKNOWN:
            continue
        grantees = {gr for gr in (v.get("acl") or {}) if gr != v["owner"]}
        rels = [r for r in obs.relations if r.schema == s and not r.extension]
        for r in rels:
            grantees |= {gr for gr in (r.acl or {}) if gr != r.owner}
        out.append((f"schema {s}", f"owner {v['owner']}, {len(rels)} relation(s)"
                    + (f", grants to {', '.join(sorted(grantees))}" if grantees else "")))
    return out


def render_unknown(cfg: RolesConfig, obs: Observed) -> list[str]:
    """One line per role or schema the model leaves alone, saying how to have it revoked."""
    out = []
    for subject, detail in unknown_grants(cfg, obs):
        key = "roles.revoke_unknown_roles" if subject.startswith("role ") else "roles.revoke_unknown_schemas"
        out.append(f"left alone: {subject} is not the model's ({detail}); list it in {key} to revoke its grants")
    return out


# compare (pure) -------------------------------------------------------------------------------------

def compare(cfg: RolesConfig, obs: Observed, target: str = "") -> list[Check]:
    """One row per role (and aspect): effective privileges against the model from params; a warning
    per role or schema the model does not know (left alone)."""
    checks: list[Check] = []
    g, owner = cfg.group_role, cfg.owner
    listed = listed_tables(cfg)
    rels = [r for r in obs.relations if not r.extension and scope_of(cfg, obs, r) != UNKNOWN]
    mine = [r for r in rels if scope_of(cfg, obs, r) == MODEL]
    schemas = {s for s in obs.schemas if schema_scope(cfg, obs, s) != UNKNOWN}

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
            w = want(rel) if scope_of(cfg, obs, rel) == MODEL else set()
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
            if s not in schemas:
                continue
            want = want_schemas(s) if schema_scope(cfg, obs, s) == MODEL else set()
            if have != want:
                problems.append(f"schema {s} {_fmt(have)} (want {_fmt(want)})")
        checks.append(Check.of(f"{name}: database and schemas", not problems,
                               f"database {_fmt(want_db)}; schemas as in params" if not problems
                               else _summarise(problems), target))

    # the group role and the app role
    if role_row(g, False, set()):
        db_schema_row(g, set(APP_DATABASE_PRIVILEGES), lambda s: {"USAGE"})
        table_row(g, app_privileges, "app privileges on every table and sequence")
    in_use = current_app_login(obs, cfg)
    for login in [n for n in cfg.app_logins if n == cfg.app_role or n in obs.roles]:
        if not role_row(login, login == in_use, {g}):
            continue
        db_schema_row(login, set(APP_DATABASE_PRIVILEGES), lambda s: {"USAGE"})
        table_row(login, app_privileges, f"only what {g} gives")
        owned = [r.qualified for r in rels if r.owner == login]
        checks.append(Check.of(f"{login}: owns nothing", not owned and obs.database_owner != login,
                               "owns no object" if not owned and obs.database_owner != login
                               else _summarise((["the database"] if obs.database_owner == login else [])
                                               + owned), target))
    # the migrations role owns everything of the model
    if cfg.migrations and role_row(cfg.migrations.name, True, set()):
        in_model = set(app_schemas(cfg, obs))
        not_owned = [r.qualified for r in mine if r.owner != owner]
        not_owned += [r["signature"] for r in obs.routines
                      if r["owner"] != owner and r.get("schema", "public") in in_model and known_role(cfg, r["owner"])]
        not_owned += [t["name"] for t in obs.types
                      if t["owner"] != owner and t.get("schema", "public") in in_model and known_role(cfg, t["owner"])]
        not_owned += [f"schema {s}" for s, v in obs.schemas.items()
                      if s in in_model and owner_of(obs, v["owner"]) != owner]
        if obs.database_owner != owner:
            not_owned.insert(0, f"the database (owner {obs.database_owner})")
        checks.append(Check.of(f"{owner}: owns the database and every object", not not_owned,
                               f"{len(mine)} relation(s), {len(obs.routines)} routine(s), {len(obs.types)} type(s)"
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
            # owned by a superuser (postgres: the restore created it): the state of every untrusted one, updated
            # by hcbpg as postgres; an expected state, not a warning.  Owned by another role: that role may
            # update it behind the migrations role's back
            by_super = obs.roles.get(inst["owner"], {}).get("rolsuper", inst["owner"] == "postgres")
            hand_over = (f"(no ALTER EXTENSION OWNER in PostgreSQL 15: drop and re-create it as {owner} to hand "
                         "it over)")
            checks.append(Check(name, "pass" if ok or by_super else "warn",
                                f"trusted, {inst['version']} in {inst['schema']}, owned by {inst['owner']}: "
                                + (f"{owner} may create and update it" if ok else
                                   f"expected: a superuser's, as the restore made it: only a superuser may update "
                                   f"it (hcbpg does, as postgres) {hand_over}" if by_super else
                                   f"only {inst['owner']} or a superuser may update it {hand_over}"), target))
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
    # roles listed for revocation hold nothing the model reaches; what it does not know is reported
    for name in cfg.revoke_roles:
        eff_db = (obs.database_acl or {}).get(name, set())
        left = ([f"database {_fmt(eff_db)}"] if eff_db else [])
        left += [f"schema {s} {_fmt(p)}" for s in sorted(schemas)
                 for p in [(obs.schemas[s].get("acl") or {}).get(name, set())]
                 if p and owner_of(obs, obs.schemas[s]["owner"]) != name]
        left += [f"{r.qualified} {_fmt((r.acl or {})[name])}" for r in rels
                 if name in (r.acl or {}) and r.owner != name]
        checks.append(Check.of(f"{name}: grants revoked (roles.revoke_unknown_roles)", not left,
                               "holds no grant" if not left else _summarise(left), target))
    for subject, detail in unknown_grants(cfg, obs):
        checks.append(Check(f"{subject}: not the model's, left alone", "warn", detail, target))
    return checks


def render_privileges_table(cfg: RolesConfig, obs: Observed) -> list[dict[str, str]]:
    """Each role's effective privileges, for the operator (database, schemas, relations summarised)."""
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
