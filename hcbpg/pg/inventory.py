"""Catalog SQL that inventories a database (the same on the source and the target), the source's
facts the restore depends on, and the pure comparison of two inventories into checks."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.outcome import Check, Status
from hcbpg.pg.compose import render

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params


#: user schemas: not the catalogs, not TOAST or temporary schemas
USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' "
           "AND n.nspname !~ '^pg_temp'")


def not_ext_member(classid: str, objid: str) -> str:
    """SQL: the object is not a member of an extension (those come with the extension)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{classid}'::regclass "
            f"AND d.objid = {objid} AND d.deptype = 'e')")


INVENTORY_SQL = f"""
SELECT json_build_object(
 'schemas', (SELECT coalesce(json_object_agg(n.nspname, 'schema'), '{{}}') FROM pg_namespace n
             WHERE {USER_NS} AND {not_ext_member('pg_namespace', 'n.oid')}),
 'extensions', (SELECT coalesce(json_object_agg(e.extname, n.nspname || ' ' || e.extversion), '{{}}')
                FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace),
 'tables', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
              (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped) || ' columns'), '{{}}')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND {USER_NS} AND {not_ext_member('pg_class', 'c.oid')}),
 'indexes', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, pg_get_indexdef(c.oid)), '{{}}')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('i', 'I') AND {USER_NS} AND {not_ext_member('pg_class', 'c.oid')}),
 'constraints', (SELECT coalesce(json_object_agg(n.nspname || '.' || coalesce(t.relname, ty.typname) || '.'
                   || co.conname, co.contype::text || ' ' || pg_get_constraintdef(co.oid)), '{{}}')
                 FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
                 LEFT JOIN pg_class t ON t.oid = co.conrelid LEFT JOIN pg_type ty ON ty.oid = co.contypid
                 WHERE {USER_NS} AND (t.oid IS NULL OR {not_ext_member('pg_class', 't.oid')})
                 AND (ty.oid IS NULL OR {not_ext_member('pg_type', 'ty.oid')})),
 'sequences', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
                 coalesce(s.last_value::text, 'not called')), '{{}}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
               WHERE c.relkind = 'S' AND {USER_NS} AND {not_ext_member('pg_class', 'c.oid')}),
 'functions', (SELECT coalesce(json_object_agg(n.nspname || '.' || p.proname || '('
                 || pg_get_function_identity_arguments(p.oid) || ')', md5(coalesce(p.prosrc, '')
                 || coalesce(pg_get_function_sqlbody(p.oid), ''))), '{{}}')
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE {USER_NS} AND {not_ext_member('pg_proc', 'p.oid')}),
 'views', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, c.relkind::text), '{{}}')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('v', 'm') AND {USER_NS} AND {not_ext_member('pg_class', 'c.oid')}),
 'triggers', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname || '.' || tg.tgname,
                pg_get_triggerdef(tg.oid)), '{{}}')
              FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT tg.tgisinternal AND {USER_NS}),
 'types', (SELECT coalesce(json_object_agg(n.nspname || '.' || t.typname, t.typtype::text), '{{}}')
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE t.typtype IN ('e', 'd', 'r', 'm') AND {USER_NS} AND {not_ext_member('pg_type', 't.oid')})
)"""

def render_counts_sql(*, except_schema: str | None = None) -> str:
    """Exact rows of every user table as JSON ``{schema.table: n}`` (a table of *except_schema* left out)."""
    skip = f"n.nspname <> {render(sql.Literal(except_schema))} AND " if except_schema else ""
    return f"""
SELECT coalesce(json_object_agg(name, n), '{{}}') FROM (
  SELECT n.nspname || '.' || c.relname AS name,
         (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname),
                                               false, true, '')))[1]::text::bigint AS n
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {skip}c.relkind IN ('r', 'p') AND {USER_NS} AND {not_ext_member('pg_class', 'c.oid')}
  ORDER BY 1) q"""


COUNTS_SQL = render_counts_sql()


_SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+(-[0-9]+)?")


def render_snapshot_setup(snapshot: str) -> str:
    """The statements that put a psql session in the snapshot *snapshot* (from ``pg_export_snapshot()``):
    a read-only repeatable-read transaction that sees what the exporting one saw (table rows; catalog
    functions still read the current catalogs)."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise ValueError(f"not a snapshot id: {snapshot!r}")
    return f"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSET TRANSACTION SNAPSHOT '{snapshot}';"

def render_control_char_names_sql(namespaces: str = USER_NS) -> str:
    """SQL: a JSON array of every name in the schemas *namespaces* (a condition on ``n``) that holds a
    control character, each quoted by the server (``format('%I')``): the schemas, their relations of
    every kind (tables, sequences, indexes, views), the tables' columns and the constraints.

    A name is data, never code: the transfers refuse such a source, and do so in the snapshot and
    session their copy uses (a table renamed or created after an earlier check is still caught)."""
    return f"""SELECT coalesce(json_agg(name ORDER BY name), '[]') FROM (
  SELECT format('%I', n.nspname) AS name FROM pg_namespace n WHERE {namespaces} AND n.nspname ~ '[[:cntrl:]]'
  UNION ALL
  SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {namespaces} AND c.relname ~ '[[:cntrl:]]'
  UNION ALL
  SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE {namespaces} AND a.attnum > 0 AND NOT a.attisdropped AND a.attname ~ '[[:cntrl:]]'
  UNION ALL
  SELECT format('%I.%I', n.nspname, co.conname) FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
  WHERE {namespaces} AND co.conname ~ '[[:cntrl:]]') AS control_char_names"""


CONTROL_CHAR_NAMES_SQL = render_control_char_names_sql()

#: what the restore depends on: extensions (with schema), database settings, encoding and locale
SOURCE_FACTS_SQL = f"""
SELECT json_build_object(
 'extensions', (SELECT coalesce(json_agg(json_build_object('name', e.extname, 'schema', n.nspname,
                  'version', e.extversion) ORDER BY e.extname), '[]')
                FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'),
 'db_settings', (SELECT coalesce(json_agg(c ORDER BY c), '[]') FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setrole = 0 AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())),
 'encoding', pg_encoding_to_char((SELECT encoding FROM pg_database WHERE datname = current_database())),
 'collate', (SELECT datcollate FROM pg_database WHERE datname = current_database()),
 'ctype', (SELECT datctype FROM pg_database WHERE datname = current_database()),
 'size_bytes', pg_database_size(current_database()),
 'large_objects', (SELECT count(*) FROM pg_largeobject_metadata),
 'version', current_setting('server_version_num')::int,
 'postmaster_start', pg_postmaster_start_time()::text,
 'user', current_user,
 -- names with control characters: refused early here, and again by each transfer in its own snapshot
 'control_char_names', ({CONTROL_CHAR_NAMES_SQL})
)"""


@dataclass
class Inventory:
    """Objects of one database by kind (name -> definition), row counts per table."""

    objects: dict[str, dict[str, str]]
    rows: dict[str, int] = field(default_factory=dict)
    #: max(id) of the events table (the runbook's "newest events row"); None when there is none
    newest_event: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "rows": self.rows, "newest_event": self.newest_event}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Inventory":
        return cls({k: {n: str(v) for n, v in (o or {}).items()} for k, o in data["objects"].items()},
                   {k: int(v) for k, v in data["rows"].items()},
                   int(data["newest_event"]) if data.get("newest_event") is not None else None)


def newest_event_sql(params: "Params") -> str:
    """max(id) of public.<events_table>, NULL when the table is not there (query_to_xml: no parse error)."""
    src = params.source
    table = src.events_table if src is not None else "events"
    q = render(sql.SQL("SELECT max(id) AS n FROM public.{}").format(sql.Identifier(table)))
    return (f"SELECT CASE WHEN to_regclass({render(sql.Literal('public.' + table))}) IS NOT NULL THEN "
            f"(xpath('/row/n/text()', query_to_xml({render(sql.Literal(q))}, false, true, '')))[1]::text::bigint END")


#: kinds compared by definition too (a changed index or constraint is a mismatch, not only a missing one)
KIND_LABELS = {
    "schemas": "schemas", "extensions": "extensions", "tables": "tables", "indexes": "indexes",
    "constraints": "constraints", "sequences": "sequences (values)", "functions": "functions",
    "views": "views", "triggers": "triggers", "types": "types",
}
#: objects a restore may legitimately add on the target (nothing today); kind -> names
IGNORED: dict[str, set[str]] = {}


def list_names(items: Iterable[str], limit: int = 5) -> str:
    """The first *limit* names, sorted, and how many more."""
    items = sorted(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def compare_objects(source: Inventory, target: Inventory, *, live_source: bool = False) -> list[Check]:
    """One check per kind of object: same names and same definitions on both sides.

    With *live_source* (a dry run while the app still writes to the source) a sequence the
    source has moved past the target's value is expected and passes with a note naming it (``nextval``
    is not transactional: the dump took each value when it read it, the app went on); a sequence
    behind on the source, or one missing or extra, still fails.
    """
    out: list[Check] = []
    for kind, label in KIND_LABELS.items():
        src = source.objects.get(kind, {})
        tgt = {k: v for k, v in target.objects.get(kind, {}).items() if k not in IGNORED.get(kind, set())}
        missing = set(src) - set(tgt)
        extra = set(tgt) - set(src)
        differ = {k for k in set(src) & set(tgt) if src[k] != tgt[k]}
        status: Status = "pass"
        problems: list[str] = []
        note = ""
        if missing:
            problems.append(f"missing on target: {list_names(missing)}")
        if extra:
            problems.append(f"only on target: {list_names(extra)}")
        if differ:
            if kind == "sequences":
                ahead = {k for k in differ if _seq_value(src[k]) > _seq_value(tgt[k])}
                desc = "; ".join(f"{k} source {src[k]} target {tgt[k]}" for k in sorted(differ)[:5])
                if live_source and ahead == differ:
                    note = (f"{len(ahead)} advanced on the live source after the dump, as expected while the app "
                            f"writes: {desc}")
                else:
                    problems.append(f"values differ: {desc}")
            else:
                problems.append(f"definitions differ: {list_names(differ)}")
        detail = f"source {len(src)}, target {len(tgt)}"
        if problems:
            status = "fail"
            detail += ": " + "; ".join(problems + ([note] if note else []))
        elif note:
            detail += f" ({note})"
        out.append(Check(f"{label}", status, detail, "source vs target"))
    return out


def _seq_value(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        return 0


def compare_rows(source: Mapping[str, int], target: Mapping[str, int], *,
                 approximate: bool = False) -> list[Check]:
    """One check per table: exact row count on the source (at the dump's snapshot) vs the target.

    *approximate*: the source counts were not taken in the dump's snapshot (Heroku backups
    while the app still writes); differences are then warnings.
    """
    out = []
    for name in sorted(set(source) | set(target)):
        s, t = source.get(name), target.get(name)
        if s is None:
            out.append(Check(f"rows {name}", "fail", f"table only on target ({t} rows)", "source vs target"))
        elif t is None:
            out.append(Check(f"rows {name}", "fail", f"table missing on target (source {s} rows)",
                             "source vs target"))
        elif s == t:
            out.append(Check(f"rows {name}", "pass", f"{t} rows", "source vs target"))
        else:
            status: Status = "warn" if approximate else "fail"
            out.append(Check(f"rows {name}", status, f"source {s}, target {t} ({t - s:+d})", "source vs target"))
    return out


def comparison_table(source: Inventory, target: Inventory) -> list[dict[str, Any]]:
    """Counts per kind of object and total rows, for the notebook's table."""
    rows = [{"what": KIND_LABELS[k], "source": len(source.objects.get(k, {})),
             "target": len(target.objects.get(k, {}))} for k in KIND_LABELS]
    rows.append({"what": "rows (all tables)", "source": sum(source.rows.values()), "target": sum(target.rows.values())})
    for r in rows:
        r["status"] = "pass" if r["source"] == r["target"] else "fail"
    return rows
