"""Privileges as the catalogs record them: ACL items parsed, relations and roles read from
``pg_class``/``pg_namespace``/``pg_default_acl`` (the queries), and the privileges a role
ends up with through ownership, membership and PUBLIC.  Pure: the queries are composed here
and run by :mod:`hcbpg.ops.privileges`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

ALL_TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


ALL_SEQUENCE_PRIVILEGES = ("USAGE", "SELECT", "UPDATE")


PUBLIC = "PUBLIC"


#: the pseudo-role that owns ``public`` in PostgreSQL 15: its member is the database owner
DB_OWNER_PSEUDO = "pg_database_owner"


SYSTEM_SCHEMAS = ("pg_catalog", "information_schema", "pg_toast")


KIND_KEYWORD = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE",
                 "S": "SEQUENCE"}


@dataclass
class Relation:
    schema: str
    name: str
    kind: str                              # pg_class.relkind
    owner: str
    acl: dict[str, set[str]] | None        # grantee -> privileges; None: default ACL (owner only)
    owned_by_table: bool = False           # a sequence owned by a column (re-owned with its table)
    extension: bool = False                # member of an extension

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Observed:
    """The catalogs of the database and the cluster, reduced to what the model compares."""

    roles: dict[str, dict[str, Any]] = field(default_factory=dict)      # name -> attrs + member_of
    database_owner: str | None = None
    database_acl: dict[str, set[str]] | None = None
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)    # name -> {owner, acl}
    relations: list[Relation] = field(default_factory=list)
    routines: list[dict[str, Any]] = field(default_factory=list)        # {schema, signature, owner}
    types: list[dict[str, Any]] = field(default_factory=list)           # {schema, name, owner}
    default_acl: set[tuple[str, str, str, str, str]] = field(default_factory=set)  # (for, schema, objtype, grantee, priv)
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {owner, version, schema}
    available_extensions: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {trusted, superuser}
    catalog_view_acl: dict[str, dict[str, set[str]]] = field(default_factory=dict)  # view -> grantee -> privs


_CODE = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE", "D": "TRUNCATE", "x": "REFERENCES",
         "t": "TRIGGER", "U": "USAGE", "C": "CREATE", "c": "CONNECT", "T": "TEMPORARY", "X": "EXECUTE"}


def parse_acl(items: Sequence[str] | None) -> dict[str, set[str]] | None:
    """An aclitem[] as text (``{rails=arwd/postgres,=U/postgres}``'s elements) -> grantee -> privileges."""
    if items is None:
        return None
    out: dict[str, set[str]] = {}
    for item in items:
        grantee, rest = item.rsplit("=", 1) if "=" in item else ("", item)
        codes = rest.split("/", 1)[0]
        grantee = grantee.strip('"').replace('""', '"') or PUBLIC
        out.setdefault(grantee, set()).update(_CODE[c] for c in codes if c in _CODE)
    return out


def _acl_text(value: Any) -> list[str] | None:
    """aclitem[] as json_agg returns it (a JSON array of strings, or a '{...}' string, or null)."""
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip("{}")
    if not text:
        return []
    items, cur, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            continue
        if ch == "," and not quoted:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.replace('\\"', '"') for i in items]


def parse_observed(rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> Observed:
    """Build :class:`Observed` from the rows of the catalog queries in :data:`CATALOG_QUERIES`."""
    obs = Observed()
    for r in rows.get("roles", ()):
        obs.roles[r["rolname"]] = dict(r, member_of=list(r.get("member_of") or []))
    no_db: list[Mapping[str, Any] | None] = [None]
    db = (rows.get("database") or no_db)[0]
    if db:
        obs.database_owner = db["owner"]
        obs.database_acl = parse_acl(_acl_text(db["acl"]))
    for r in rows.get("schemas", ()):
        obs.schemas[r["nspname"]] = {"owner": r["owner"], "acl": parse_acl(_acl_text(r["acl"]))}
    for r in rows.get("relations", ()):
        obs.relations.append(Relation(r["schema"], r["name"], r["kind"], r["owner"], parse_acl(_acl_text(r["acl"])),
                                      bool(r.get("owned_by_table")), bool(r.get("extension"))))
    obs.routines = [dict(r) for r in rows.get("routines", ())]
    obs.types = [dict(r) for r in rows.get("types", ())]
    for r in rows.get("default_acl", ()):
        for grantee, privs in (parse_acl(_acl_text(r["acl"])) or {}).items():
            for p in privs:
                obs.default_acl.add((r["for_role"], r["schema"] or "", r["objtype"], grantee, p))
    for r in rows.get("extensions", ()):
        obs.extensions[r["extname"]] = {"owner": r["owner"], "version": r["version"], "schema": r["schema"]}
    for r in rows.get("available_extensions", ()):
        obs.available_extensions[r["name"]] = {"trusted": bool(r["trusted"]), "superuser": bool(r["superuser"]),
                                               "default_version": r.get("default_version")}
    for r in rows.get("catalog_views", ()):
        obs.catalog_view_acl[r["name"]] = parse_acl(_acl_text(r["acl"])) or {}
    return obs


def _ext_member(catalog: str, oid: str) -> str:
    """SQL text: the object is a member of an extension (constant text, no input in it)."""
    return (f"EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass AND d.objid = {oid} "
            "AND d.deptype = 'e')")


_APP_SCHEMAS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' "
                "AND n.nspname NOT LIKE 'pg\\_temp\\_%'")


def catalog_queries(role_names: Iterable[str], database: str) -> dict[str, tuple[sql.Composable, str]]:
    """name -> (query, database it runs in); the monitoring views are read where ``vector`` connects."""
    names = sql.Literal(sorted(set(role_names)))
    return {
        "roles": (sql.SQL(
            "SELECT r.rolname, r.rolcanlogin, r.rolinherit, r.rolsuper, r.rolcreatedb, r.rolcreaterole, "
            "r.rolreplication, r.rolbypassrls, r.rolconnlimit, "
            "ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid "
            "WHERE m.member = r.oid ORDER BY 1) AS member_of "
            "FROM pg_roles r WHERE r.rolname = ANY({})").format(names), "postgres"),
        "database": (sql.SQL(
            "SELECT pg_get_userbyid(d.datdba) AS owner, d.datacl::text[] AS acl FROM pg_database d "
            "WHERE d.datname = {}").format(sql.Literal(database)), "postgres"),
        "schemas": (sql.SQL(
            "SELECT n.nspname, pg_get_userbyid(n.nspowner) AS owner, n.nspacl::text[] AS acl "
            "FROM pg_namespace n WHERE " + _APP_SCHEMAS + " AND NOT " + _ext_member("pg_namespace", "n.oid")
            + " ORDER BY 1"), database),
        "relations": (sql.SQL(
            "SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind, "
            "pg_get_userbyid(c.relowner) AS owner, c.relacl::text[] AS acl, "
            "EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid "
            "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')) AS owned_by_table, "
            + _ext_member("pg_class", "c.oid") + " AS extension "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND " + _APP_SCHEMAS + " ORDER BY 1, 2"), database),
        "routines": (sql.SQL(
            "SELECT n.nspname AS schema, quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '(' || "
            "pg_get_function_identity_arguments(p.oid) || ')' AS signature, p.prokind AS kind, "
            "pg_get_userbyid(p.proowner) AS owner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE " + _APP_SCHEMAS + " AND NOT " + _ext_member("pg_proc", "p.oid") + " ORDER BY 1, 2"), database),
        "types": (sql.SQL(
            "SELECT n.nspname AS schema, quote_ident(n.nspname) || '.' || quote_ident(t.typname) AS name, "
            "pg_get_userbyid(t.typowner) AS owner "
            "FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE " + _APP_SCHEMAS + " AND t.typtype IN ('e', 'd', 'r', 'm') AND NOT "
            + _ext_member("pg_type", "t.oid") + " ORDER BY 1, 2"), database),
        "default_acl": (sql.SQL(
            "SELECT pg_get_userbyid(d.defaclrole) AS for_role, n.nspname AS schema, d.defaclobjtype AS objtype, "
            "d.defaclacl::text[] AS acl FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace"),
            database),
        "extensions": (sql.SQL(
            "SELECT e.extname, pg_get_userbyid(e.extowner) AS owner, e.extversion AS version, n.nspname AS schema "
            "FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace ORDER BY 1"), database),
        "available_extensions": (sql.SQL(
            "SELECT DISTINCT ON (v.name) v.name, v.trusted, v.superuser, a.default_version "
            "FROM pg_available_extension_versions v JOIN pg_available_extensions a ON a.name = v.name "
            "AND a.default_version = v.version ORDER BY v.name"), database),
        "catalog_views": (sql.SQL(
            "SELECT c.relname AS name, c.relacl::text[] AS acl FROM pg_class c "
            "WHERE c.relnamespace = 'pg_catalog'::regnamespace AND c.relname = ANY({})")
            .format(sql.Literal(list(MONITORING_VIEWS))), "postgres"),
    }


def memberships(obs: Observed, role: str) -> set[str]:
    """*role* and every role whose privileges it inherits (recursively; INHERIT roles only pass on)."""
    seen, todo = {role}, [role]
    while todo:
        r = todo.pop()
        attrs = obs.roles.get(r)
        if attrs is None or not attrs.get("rolinherit", True):
            continue
        for g in attrs.get("member_of", []):
            if g not in seen:
                seen.add(g)
                todo.append(g)
    return seen


def owner_of(obs: Observed, owner: str) -> str:
    return obs.database_owner or owner if owner == DB_OWNER_PSEUDO else owner


def _effective(obs: Observed, role: str, owner: str, acl: dict[str, set[str]] | None,
               default: dict[str, set[str]], all_privs: Sequence[str]) -> set[str]:
    attrs = obs.roles.get(role, {})
    if attrs.get("rolsuper"):
        return set(all_privs)
    mine = memberships(obs, role)
    if owner_of(obs, owner) in mine:
        return set(all_privs)
    acl = default if acl is None else acl
    out: set[str] = set(acl.get(PUBLIC, set()))
    for r in mine:
        out |= acl.get(r, set())
    return out & set(all_privs)


def effective_privileges(obs: Observed, role: str) -> dict[str, Any]:
    """What *role* may do, computed from the catalogs: database, schemas, each relation, catalog views."""
    db = _effective(obs, role, obs.database_owner or "", obs.database_acl,
                    {PUBLIC: {"CONNECT", "TEMPORARY"}}, ("CONNECT", "CREATE", "TEMPORARY"))
    schemas = {s: _effective(obs, role, v["owner"], v["acl"], {}, ("USAGE", "CREATE"))
               for s, v in obs.schemas.items()}
    rels = {}
    for rel in obs.relations:
        if rel.extension:
            continue
        privs = ALL_SEQUENCE_PRIVILEGES if rel.kind == "S" else ALL_TABLE_PRIVILEGES
        rels[rel.qualified] = _effective(obs, role, rel.owner, rel.acl, {}, privs)
    views = {v: _effective(obs, role, "postgres", acl, {}, ("SELECT",)) for v, acl in obs.catalog_view_acl.items()}
    return {"database": db, "schemas": schemas, "relations": rels, "catalog_views": views}


MONITORING_VIEWS = ("pg_stat_database", "pg_stat_database_conflicts", "pg_stat_bgwriter")
