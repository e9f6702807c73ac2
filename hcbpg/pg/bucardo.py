"""Pure knowledge of the online transfer with Bucardo: what a source must have to be synced, the
names Bucardo gets from us, its lag, its objects (to leave them out of comparisons and to prove
they are gone), and the statements of the way back.

Bucardo 5.6 records changed keys with a trigger per table into ``bucardo.delta_<schema>_<table>``
(columns: the key, ``txntime``) in the *source* database, and marks what a sync applied in
``bucardo.track_<schema>_<table>`` (``txntime``, ``target``).  It needs a primary key or a unique
index on every table it syncs; it does not copy large objects, DDL or unlogged tables' crash
semantics.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from hcbpg.errors import SafetyCheckFailed
from hcbpg.outcome import Check
from hcbpg.pg.compose import render
from hcbpg.pg.conninfo import APPLICATION_NAME
from hcbpg.pg.inventory import USER_NS, Inventory, list_names, not_ext_member, render_counts_sql
from hcbpg.pg.stream import REFUSED_NAMES_SQL

#: the schema Bucardo creates in every database it syncs, and its control database on the primary
SCHEMA = "bucardo"
CONTROL_DB = "bucardo"
#: Bucardo's names for our databases and syncs (``bucardo add db NAME``)
SOURCE_DB = "hcbpg_source"
PRIMARY_DB = "hcbpg_primary"
#: the source as the way back's target: the prefix tells our customcode that this database's role
#: is only the owner of its tables (no session_replication_role, see bucardo-owner-only.pl)
OWNER_ONLY_PREFIX = "hcbpg_owner_only_"
BACK_TARGET_DB = OWNER_ONLY_PREFIX + "source"
FORWARD_SYNC = "hcbpg_forward"
BACK_SYNC = "hcbpg_back"
#: the libpq service names Bucardo connects with (in the postgres user's ~/.pg_service.conf)
SOURCE_SERVICE = "hcbpg-bucardo-source"

#: the key Bucardo can use on relation ``c``: a primary key, or a unique, non-partial index on NOT NULL columns
_KEY = """EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisvalid AND (i.indisprimary OR
              (i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND NOT EXISTS (
                SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
                  AND NOT a.attnotnull))))"""

#: a relation's columns (``generated``: the stored generated ones, else the others), in their order
_COLUMNS = """(SELECT coalesce(json_agg(a.attname ORDER BY a.attnum), '[]'::json) FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated {op} '')"""

_REL = f"""FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE {USER_NS} AND n.nspname <> '{SCHEMA}' AND {not_ext_member('pg_class', 'c.oid')}"""

#: every table of the source with what Bucardo needs to know, one entry per table that holds rows (a plain
#: table or a leaf partition: Bucardo 5.6's ``add table`` finds only ``relkind = 'r'``, and its
#: ``validate_sync`` dies on any other kind, so a partitioned table moves through its leaves): a key
#: (:data:`_KEY`), persistence, its estimated rows, its columns (stored generated ones apart: Bucardo
#: copies ``SELECT *`` into ``COPY t (every column) FROM STDIN``, which PostgreSQL refuses for a
#: generated column), the partitioned table it belongs to; the partitioned tables; the materialized
#: views (their rows are no table's: the window refreshes them) with the ones they read; the foreign
#: tables (no rows here); the sequences and the large objects.  Names with a control character are
#: listed apart, in the same query (so in the same snapshot as the names Bucardo gets), and refuse the
#: mode; no such table is ever synced or copied
SYNCABILITY_SQL = f"""
SELECT json_build_object(
 'control_char_names', ({REFUSED_NAMES_SQL}),
 'tables', (SELECT coalesce(json_agg(json_build_object(
     'name', n.nspname || '.' || c.relname, 'schema', n.nspname, 'relname', c.relname,
     'key', {_KEY},
     'unlogged', c.relpersistence = 'u',
     'rows', greatest(c.reltuples, 0)::bigint,
     'columns', {_COLUMNS.format(op='=')},
     'generated', {_COLUMNS.format(op='<>')},
     'partition_of', CASE WHEN c.relispartition THEN (SELECT rn.nspname || '.' || r.relname FROM pg_class r
                     JOIN pg_namespace rn ON rn.oid = r.relnamespace WHERE r.oid = pg_partition_root(c.oid)) END)
     ORDER BY n.nspname, c.relname), '[]'::json)
   {_REL} AND c.relkind = 'r'),
 'partitioned', (SELECT coalesce(json_agg(json_build_object(
     'name', n.nspname || '.' || c.relname, 'key', {_KEY},
     'leaves', (SELECT count(*) FROM pg_partition_tree(c.oid) t WHERE t.isleaf)) ORDER BY n.nspname, c.relname),
     '[]'::json)
   {_REL} AND c.relkind = 'p' AND NOT c.relispartition),
 'matviews', (SELECT coalesce(json_agg(json_build_object(
     'name', n.nspname || '.' || c.relname, 'schema', n.nspname, 'relname', c.relname,
     'populated', c.relispopulated,
     'reads', (SELECT coalesce(json_agg(DISTINCT rn.nspname || '.' || r.relname), '[]'::json)
               FROM pg_rewrite rw JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
               JOIN pg_class r ON r.oid = d.refobjid AND r.relkind = 'm' AND r.oid <> c.oid
               JOIN pg_namespace rn ON rn.oid = r.relnamespace WHERE rw.ev_class = c.oid))
     ORDER BY n.nspname, c.relname), '[]'::json)
   {_REL} AND c.relkind = 'm'),
 'foreign_tables', (SELECT coalesce(json_agg(n.nspname || '.' || c.relname ORDER BY 1), '[]'::json)
   {_REL} AND c.relkind = 'f'),
 'sequences', (SELECT coalesce(json_agg(n.nspname || '.' || c.relname ORDER BY 1), '[]'::json)
   {_REL} AND c.relkind = 'S'),
 'large_objects', (SELECT count(*) FROM pg_largeobject_metadata))
"""


@dataclass(frozen=True)
class WindowCopy:
    """A table copied whole inside the window (Bucardo cannot sync it), as data: its name parts and the
    columns the copy names (stored generated columns left out: the target computes them)."""

    schema: str
    relname: str
    columns: tuple[str, ...]
    rows: int = 0
    why: str = "no key"
    partition_of: str | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.relname}"


@dataclass(frozen=True)
class Refresh:
    """A materialized view refreshed on the primary inside the window (its rows are no table's)."""

    schema: str
    relname: str

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.relname}"


@dataclass
class SyncPlan:
    """How each table of the source moves in the online transfer, and what else the window does."""

    synced: list[str]                      # Bucardo syncs them (a key each)
    in_window: list[str]                   # no key (or a generated column), small: copied whole inside the window
    refused: list[str]                     # no key, too large: the online mode is refused
    unlogged: list[str]                    # synced or copied like the others (their data is not crash-safe)
    sequences: list[str]
    large_objects: int
    checks: list[Check] = field(default_factory=list)
    #: the window's copies (one per name of in_window, as data), its refreshes (in the order they run)
    copies: list[WindowCopy] = field(default_factory=list)
    refreshes: list[Refresh] = field(default_factory=list)
    #: partitioned tables (name: how it moves), materialized views left unpopulated, foreign tables
    partitioned: dict[str, str] = field(default_factory=dict)
    unpopulated: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)     # table -> why Bucardo cannot sync it
    partition_of: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def rows(self) -> list[dict[str, str]]:
        """One row per table (and partitioned table, materialized view, foreign table): how it moves."""
        how = {**{t: "synced by Bucardo (trigger on the source, key-based)" for t in self.synced},
               **{t: f"{self.why.get(t, 'no key')}: copied whole inside the window" for t in self.in_window},
               **{t: f"{self.why.get(t, 'no key')}, too large: REFUSED" for t in self.refused}}
        out = [{"table": t, "moved": h + (f" (partition of {self.partition_of[t]})" if t in self.partition_of else "")
                + (" (unlogged)" if t in self.unlogged else "")} for t, h in how.items()]
        out += [{"table": t, "moved": h} for t, h in self.partitioned.items()]
        out += [{"table": r.name, "moved": "materialized view: refreshed on the primary inside the window"}
                for r in self.refreshes]
        out += [{"table": t, "moved": "materialized view, not populated on the source: restored by the schema, "
                 "left unpopulated"} for t in self.unpopulated]
        out += [{"table": t, "moved": "foreign table: its definition restored by the schema, no rows here"}
                for t in self.foreign]
        return sorted(out, key=lambda r: r["table"])

    def window_actions(self) -> list[str]:
        """What the window does, each named (06b shows it and proves it; 07's plan shows it again)."""
        return [f"Bucardo drained: the changes recorded for its {len(self.synced)} table(s) applied",
                f"{len(self.sequences)} sequence(s) set on the primary to the source's values (setval)",
                "copied inside the window: " + (", ".join(
                    f"{c.name} ({c.why}; COPY of {len(c.columns)} column(s), about {c.rows} rows)"
                    for c in self.copies) or "none"),
                "materialized views refreshed: " + (", ".join(r.name for r in self.refreshes) or "none")]


def _refresh_order(matviews: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Materialized views in an order where each comes after the ones it reads."""
    left = {m["name"]: m for m in matviews}
    out: list[Mapping[str, Any]] = []
    while left:
        ready = [n for n, m in left.items() if not set(m.get("reads") or []) & set(left)]
        for n in sorted(ready or left):  # a cycle cannot exist; whatever is left goes in name order
            out.append(left.pop(n))
    return out


def plan_sync(data: Mapping[str, Any], *, window_copy_max_rows: int) -> SyncPlan:
    """What can be synced, what is copied inside the window, what refuses the mode (with checks); the
    partitioned tables (through their leaves), the materialized views the window refreshes."""
    bad_names = [str(n) for n in data.get("control_char_names") or []]
    tables = [t for t in data.get("tables") or [] if not _has_control_characters(t["name"])]
    why: dict[str, str] = {}
    for t in tables:
        gen = list(t.get("generated") or [])
        if not t["key"]:
            why[t["name"]] = "no key"
        elif gen:
            why[t["name"]] = (f"generated column(s) {', '.join(gen)} (Bucardo 5.6 names every column in its COPY, "
                              "PostgreSQL refuses a generated one)")
    synced = [t["name"] for t in tables if t["name"] not in why]
    other = [t for t in tables if t["name"] in why]
    small = [t for t in other if int(t["rows"]) <= window_copy_max_rows]
    in_window = [t["name"] for t in small]
    refused = [t["name"] for t in other if int(t["rows"]) > window_copy_max_rows]
    unlogged = [t["name"] for t in tables if t["unlogged"]]
    lobs = int(data.get("large_objects") or 0)
    sequences = [q for q in data.get("sequences") or [] if not _has_control_characters(q)]
    parts = {t["name"]: str(t["partition_of"]) for t in tables if t.get("partition_of")}
    copies = [WindowCopy(str(t.get("schema") or t["name"].split(".", 1)[0]),
                         str(t.get("relname") or t["name"].split(".", 1)[1]),
                         tuple(str(c) for c in t.get("columns") or []), int(t["rows"]), why[t["name"]],
                         parts.get(t["name"])) for t in small]
    plan = SyncPlan(synced, in_window, refused, unlogged, sequences, lobs, copies=copies, why=why, partition_of=parts)
    for p in data.get("partitioned") or []:
        if _has_control_characters(p["name"]):
            continue
        leaves = [t for t in parts if parts[t] == p["name"]]
        kinds = sorted({"synced" if t in synced else "copied inside the window" if t in in_window else "REFUSED"
                        for t in leaves})
        plan.partitioned[p["name"]] = (f"partitioned ({int(p.get('leaves') or 0)} partition(s), "
                                       f"{'a key' if p.get('key') else 'no key'}): moved through its partitions, "
                                       "each named on its own line (" + (", ".join(kinds) or "none holds rows") + ")")
    mvs = [m for m in data.get("matviews") or [] if not _has_control_characters(m["name"])]
    plan.refreshes = [Refresh(str(m["schema"]), str(m["relname"])) for m in _refresh_order(mvs) if m.get("populated")]
    plan.unpopulated = [m["name"] for m in mvs if not m.get("populated")]
    plan.foreign = [str(f) for f in data.get("foreign_tables") or [] if not _has_control_characters(str(f))]
    rows_of = {t["name"]: int(t["rows"]) for t in tables}
    plan.checks = [
        Check.of("every table has a key or is small enough to copy inside the window", not refused,
                 (f"{len(synced)} synced by key; " + (f"copied inside the window (at most "
                  f"{window_copy_max_rows} rows): " + "; ".join(f"{t} ({why[t]})" for t in in_window[:5])
                  + (f" and {len(in_window) - 5} more" if len(in_window) > 5 else "")
                  if in_window else "none without a key"))
                 if not refused else
                 "no primary key or unique index (or a generated column: Bucardo cannot sync them), too large to "
                 "copy inside the window: "
                 + ", ".join(f"{t} (about {rows_of[t]} rows" + ("" if why[t] == "no key" else f"; {why[t]}") + ")"
                             for t in refused[:5])
                 + ". Add a primary key on the source (a Rails migration before the sync starts), raise "
                   "source.online.window_copy_max_rows, or use source.transfer: stream (offline).", "source"),
        Check.of("no large objects on the source", lobs == 0,
                 "none" if lobs == 0 else
                 f"{lobs} large objects: Bucardo does not sync pg_largeobject. The online mode is refused; "
                 "use source.transfer: directory (offline, pg_dump -Fd moves them).", "source"),
        Check.of("no names with control characters on the source", not bad_names,
                 "none" if not bad_names else
                 f"{len(bad_names)}: " + ", ".join(repr(n) for n in bad_names[:10])
                 + ". A name is data, never part of a command: rename them on the source (ALTER TABLE ... "
                   "RENAME TO ...), then run the step again.", "source"),
        Check("unlogged tables", "pass" if not unlogged else "warn",
              "none" if not unlogged else
              f"{list_names(unlogged)}: moved like the others (a trigger records their changes), but on the "
              "source they lose their rows on a crash", "source"),
    ]
    return plan


def render_window_copy(copy: WindowCopy, *, source_cmd: str, target_cmd: str, limit: int | None = None,
                       dry: bool = False) -> str:
    """The one command that copies *copy* inside the window, and that 06b runs beforehand to prove it (*dry*:
    the same pipeline, at most *limit* rows, its transaction on the primary rolled back).

    The source sends ``COPY (SELECT <columns> FROM ONLY t) TO STDOUT`` (a leaf partition or a plain table: never
    a partitioned one, which COPY TO refuses; ONLY: no inheritance child's rows twice); the primary, as
    superuser with ``session_replication_role = replica`` (no trigger, no foreign key check: the rows are the
    source's), deletes the table's rows and loads them by column name (the columns in any order, generated
    ones computed by the primary, identity values kept as COPY does), then prints the rows it holds.
    *source_cmd*/*target_cmd*: psql commands reaching each side (no secret in them)."""
    table = sql.Identifier(copy.schema, copy.relname)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in copy.columns)
    select = sql.SQL("SELECT {} FROM ONLY {}").format(cols, table)
    if limit is not None:
        select = sql.SQL("{} LIMIT {}").format(select, sql.Literal(int(limit)))
    out = render(sql.SQL("COPY ({}) TO STDOUT").format(select))
    steps = ["SET session_replication_role = replica", render(sql.SQL("DELETE FROM ONLY {}").format(table)),
             render(sql.SQL("COPY {} ({}) FROM STDIN").format(table, cols)),
             render(sql.SQL("SELECT count(*) FROM ONLY {}").format(table))]
    if dry:
        steps = ["BEGIN", *steps, "ROLLBACK"]
    load = " ".join(f"-c {shlex.quote(s)}" for s in steps)
    return (f"{source_cmd} -X -q -v ON_ERROR_STOP=1 -c {shlex.quote(out)} | "
            f"{target_cmd} -X -q -At {'' if dry else '-1 '}-v ON_ERROR_STOP=1 {load}")


def render_refresh(refresh: Refresh) -> str:
    """The window's refresh of a materialized view on the primary (06b times it beforehand)."""
    return render(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(refresh.schema, refresh.relname)))


def render_window_proof(plan: SyncPlan) -> dict[str, Any]:
    """What 06b proved of the window, as the window will do it (compared by 07's plan with what the source
    needs then): each copy's table and columns, each refresh, in order (06b adds the seconds they took)."""
    return {"copies": [[c.schema, c.relname, list(c.columns)] for c in plan.copies],
            "refreshes": [[r.schema, r.relname] for r in plan.refreshes]}


def check_window_proven(plan: SyncPlan, proven: Mapping[str, Any] | None) -> Check:
    """07's plan: the window does only what 06b proved (same copies with the same columns, same refreshes)."""
    want = render_window_proof(plan)
    if proven is None:
        return Check("the window does only what 06b proved", "fail",
                     "06b recorded no proof of the window's copies on the primary: run 06b again", "source")
    new = [".".join(c[:2]) for c in want["copies"] if c not in proven.get("copies", [])]
    new += [".".join(r) + " (refresh)" for r in want["refreshes"] if r not in proven.get("refreshes", [])]
    took = proven.get("seconds")
    return Check.of("the window does only what 06b proved", not new,
                    f"{len(want['copies'])} copies, {len(want['refreshes'])} refreshes proved by 06b"
                    + (f" (they took {float(took):.1f}s there)" if isinstance(took, (int, float)) else "") if not new else
                    f"not proved by 06b: {list_names(new)}: the source changed since; run 06b again (it proves "
                    "them) before the window", "source")


#: the anti-wraparound autovacuums of the source's database (their query read where the role may:
#: ``pg_read_all_stats``; workers whose query it may not read are counted: to such a role a worker is a
#: session of this database without a user, its type and query hidden), and its tables past their
#: freeze age (an anti-wraparound VACUUM runs or is due on them: it does not give way to a lock as an
#: ordinary autovacuum does, so adding a trigger there would wait, and the app's queries behind it)
WRAPAROUND_SQL = f"""
SELECT json_build_object(
 'running', (SELECT coalesce(json_agg(json_build_object('pid', pid, 'query', left(query, 300),
               'seconds', coalesce(round(extract(epoch FROM now() - xact_start))::int, 0)) ORDER BY pid), '[]'::json)
             FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' AND datname = current_database()
               AND query LIKE '%to prevent wraparound%'),
 'unreadable', (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
                AND query = '<insufficient privilege>' AND usesysid IS NULL
                AND (backend_type = 'autovacuum worker' OR backend_type IS NULL)),
 'due', (SELECT coalesce(json_agg(json_build_object('table', n.nspname || '.' || c.relname,
          'age', age(c.relfrozenxid), 'limit', least(current_setting('autovacuum_freeze_max_age')::bigint,
             coalesce((SELECT o.option_value::bigint FROM pg_options_to_table(c.reloptions) o
                       WHERE o.option_name = 'autovacuum_freeze_max_age'), 2000000000)))
          ORDER BY age(c.relfrozenxid) DESC), '[]'::json)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'm') AND {USER_NS} AND age(c.relfrozenxid) > least(
           current_setting('autovacuum_freeze_max_age')::bigint,
           coalesce((SELECT o.option_value::bigint FROM pg_options_to_table(c.reloptions) o
                     WHERE o.option_name = 'autovacuum_freeze_max_age'), 2000000000))))
"""


def check_wraparound(data: Mapping[str, Any]) -> list[Check]:
    """No anti-wraparound autovacuum running on the source (it would hold Bucardo's trigger, and the app
    behind it); tables past their freeze age named (one may start on them at any time). A role that may
    not read the autovacuum workers' queries (no ``pg_read_all_stats``) sees a worker run without its
    table: with a table past its freeze age, that worker is taken for an anti-wraparound VACUUM on it."""
    running = list(data.get("running") or [])
    due = list(data.get("due") or [])
    unreadable = int(data.get("unreadable") or 0)
    due_text = ", ".join(f"{d['table']} (age {d['age']} > {d['limit']})" for d in due[:5])
    blind = bool(unreadable and due)
    if running:
        detail = ("; ".join(f"pid {r['pid']} for {r['seconds']}s: {r['query']}" for r in running[:5])
                  + ". It does not give way to a lock: adding Bucardo's triggers now would wait on it and queue "
                    "the app's queries behind. Wait for it to end (heroku pg:ps shows it), then run 06b again.")
    elif blind:
        detail = (f"{unreadable} autovacuum worker(s) run whose query this role may not read, and {due_text} "
                  "is past its freeze age: most likely an anti-wraparound VACUUM on it. Wait for it to end "
                  "(heroku pg:ps), then run 06b again.")
    else:
        detail = "none" + (f" seen ({unreadable} autovacuum worker(s) whose query this role may not read, no table "
                           "past its freeze age)" if unreadable else "")
    return [
        Check.of("no anti-wraparound VACUUM running on the source", not running and not blind, detail, "source"),
        Check("no table past its freeze age on the source", "pass" if not due else "warn",
              "none" if not due else
              due_text + ": an anti-wraparound VACUUM may start on them at any time; adding a trigger waits at "
              "most source.online.lock_timeout_ms, then is tried again", "source")]


def is_lock_timeout(output: str) -> bool:
    """What PostgreSQL says when a statement waited longer than its lock_timeout."""
    return "canceling statement due to lock timeout" in output


def render_lock_timeout_conn(lock_timeout_ms: int) -> str:
    """``bucardo add db`` ``dbconn``: appended to the DSN of every connection Bucardo makes to the source,
    so that adding its triggers (``validate_sync``, one ALTER-class lock per table) or anything else of it
    waits at most this long for a lock and the live app never queues behind Bucardo."""
    return f"options=-clock_timeout={int(lock_timeout_ms)}"


def _has_control_characters(name: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in name)


def _delta(table: str, kind: str) -> sql.Identifier:
    schema, name = table.split(".", 1)
    return sql.Identifier(SCHEMA, f"{kind}_{schema}_{name}")


def render_lag_sql(tables: Sequence[str]) -> str:
    """On the source: the changes recorded but not yet applied (rows) and the age of the oldest (s)."""
    if not tables:
        return "SELECT json_build_object('rows', 0, 'seconds', 0)"
    parts = [sql.SQL("SELECT txntime FROM {d} WHERE txntime > (SELECT coalesce(max(txntime), '-infinity') "
                     "FROM {t})").format(d=_delta(t, "delta"), t=_delta(t, "track")) for t in tables]
    union = render(sql.SQL(" UNION ALL ").join(parts))
    return ("SELECT json_build_object('rows', count(*), 'seconds', "
            f"coalesce(round(extract(epoch FROM now() - min(txntime))::numeric, 1), 0)) FROM ({union}) AS pending")


def strip_bucardo(inv: Inventory) -> Inventory:
    """The inventory without Bucardo's own objects (its schema and what is in it, its triggers)."""
    def keep(kind: str, name: str, definition: str) -> bool:
        if kind == "schemas":
            return name != SCHEMA
        if kind == "triggers":
            return not name.rsplit(".", 1)[-1].startswith("bucardo_") and f" {SCHEMA}." not in definition
        return not name.startswith(SCHEMA + ".")
    objects = {k: {n: d for n, d in v.items() if keep(k, n, d)} for k, v in inv.objects.items()}
    rows = {n: c for n, c in inv.rows.items() if not n.startswith(SCHEMA + ".")}
    return Inventory(objects, rows, inv.newest_event)


def without_sequence_values(inv: Inventory) -> Inventory:
    """The inventory with sequences by name only (their values move while the app writes)."""
    objects = {k: ({n: "" for n in v} if k == "sequences" else v) for k, v in inv.objects.items()}
    return Inventory(objects, inv.rows, inv.newest_event)


#: Bucardo's objects left in a database: its schema, functions in it, triggers calling them or named bucardo_*
LEFTOVERS_SQL = f"""
SELECT json_build_object(
 'schemas', (SELECT coalesce(json_agg(nspname), '[]') FROM pg_namespace WHERE nspname = '{SCHEMA}'),
 'functions', (SELECT coalesce(json_agg(p.oid::regprocedure::text), '[]') FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = '{SCHEMA}'),
 'triggers', (SELECT coalesce(json_agg(tg.tgrelid::regclass::text || '.' || tg.tgname), '[]') FROM pg_trigger tg
              JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE NOT tg.tgisinternal AND (n.nspname = '{SCHEMA}' OR tg.tgname LIKE 'bucardo%')))
"""


def check_no_leftovers(where: str, found: Mapping[str, Iterable[str]]) -> Check:
    """No schema, function or trigger of Bucardo remains in *where*."""
    items = [f"{k[:-1]} {n}" for k, v in found.items() for n in v]
    return Check.of(f"no Bucardo schema, function or trigger in {where}", not items,
                    "none" if not items else list_names(items), where)


#: on the way back's target: the foreign keys that are not deferrable (made DEFERRABLE INITIALLY IMMEDIATE
#: for the period, so the sync's delete-then-copy of a referenced row is checked at its commit)
#: (schema, relname and name apart, each quoted only when a statement is rendered; ``table`` for display)
NOT_DEFERRABLE_FKS_SQL = """
SELECT coalesce(json_agg(json_build_object('table', co.conrelid::regclass::text, 'schema', n.nspname,
                                           'relname', c.relname, 'name', co.conname)
                ORDER BY co.conrelid::regclass::text, co.conname), '[]')
  FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE co.contype = 'f' AND NOT co.condeferrable AND co.connamespace <> 'pg_catalog'::regnamespace
"""


def render_deferrable(fks: Sequence[Mapping[str, str]], *, deferrable: bool) -> list[str]:
    """ALTER CONSTRAINT ... [NOT] DEFERRABLE for each foreign key (the table's owner may do this); every
    name quoted here (the list is read back from a file on the primary: its names are data)."""
    how = sql.SQL("DEFERRABLE INITIALLY IMMEDIATE" if deferrable else "NOT DEFERRABLE")
    out = []
    for fk in fks:
        if not all(isinstance(fk.get(k), str) for k in ("schema", "relname", "name")):
            raise SafetyCheckFailed(f"a foreign key of the way back without schema, table and name: {fk!r}",
                                    hint="Restore it by hand on the source (ALTER TABLE ... ALTER CONSTRAINT ... "
                                         "NOT DEFERRABLE).")
        out.append(render(sql.SQL("ALTER TABLE {} ALTER CONSTRAINT {} {}").format(
            sql.Identifier(fk["schema"], fk["relname"]), sql.Identifier(fk["name"]), how)))
    return out


#: every table's exact rows but Bucardo's own (counted in a held snapshot: its delta tables may be gone since)
SNAPSHOT_COUNTS_SQL = render_counts_sql(except_schema=SCHEMA)

#: every user sequence's value (NULL before its first nextval), Bucardo's left out: the window compares them
SEQUENCE_VALUES_SQL = f"""
SELECT coalesce(json_object_agg(schemaname || '.' || sequencename, last_value), '{{}}')
FROM pg_catalog.pg_sequences WHERE schemaname NOT IN ('{SCHEMA}', 'pg_catalog', 'information_schema')
"""


#: every user sequence's state for the window's setval: ``[schema, name, value, is_called]`` (names as
#: data: each statement is rendered and quoted by :func:`render_setvals`, never by splitting text)
SEQUENCE_STATES_SQL = f"""
SELECT coalesce(json_agg(json_build_array(schemaname, sequencename, coalesce(last_value, start_value),
                                          last_value IS NOT NULL) ORDER BY schemaname, sequencename), '[]')
FROM pg_catalog.pg_sequences WHERE schemaname NOT IN ('{SCHEMA}', 'pg_catalog', 'information_schema')
"""


def render_setvals(states: Sequence[Sequence[Any]]) -> list[str]:
    """``SELECT pg_catalog.setval(...)`` for each ``[schema, name, value, is_called]`` of
    :data:`SEQUENCE_STATES_SQL`, the sequence named by a quoted literal of its quoted name."""
    return [render(sql.SQL("SELECT pg_catalog.setval({}, {}, {});").format(
        sql.Literal(render(sql.Identifier(str(schema), str(name)))), sql.Literal(int(value)), sql.Literal(bool(called))))
        for schema, name, value, called in states]


def check_sequences_equal(source: Mapping[str, Any], target: Mapping[str, Any], where: str = "") -> Check:
    """After the window set them: every sequence on the target at exactly the source's value."""
    diff = [f"{n}: {source.get(n, 'missing')} vs {target.get(n, 'missing')}" for n in sorted(set(source) | set(target))
            if source.get(n, "missing") != target.get(n, "missing")]
    return Check.of("sequences at the source's values", not diff,
                    f"{len(source)} sequence(s)" if not diff else f"{len(diff)} differ: " + "; ".join(diff[:10]), where)


def render_hold_script(out_file: str, hold_s: float) -> str:
    """A psql script that exports a snapshot, writes ``PID SNAPSHOT`` to *out_file* and holds the snapshot
    open (its transaction stays open while ``pg_sleep`` runs: at most *hold_s* seconds, or until the
    session is terminated). The session is named like hcbpg's others, so the quiet-source check skips it."""
    return ("SET statement_timeout = 0;\nSET idle_in_transaction_session_timeout = 0;\n"
            f"SET application_name = '{APPLICATION_NAME}';\n"
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
            f"\\o {out_file}\n"
            "SELECT pg_backend_pid() || ' ' || pg_export_snapshot();\n"
            "\\o /dev/null\n"
            f"SELECT pg_sleep({int(hold_s)});\n")


def render_hold_command(directory: str, conns: Mapping[str, str], hold_s: float) -> str:
    """A bash script (run as postgres on the primary, no secret in it: *conns* are psql commands with a
    service or a socket) that starts one session per side holding a snapshot (:func:`render_hold_script`,
    their output in *directory*), waits until each has written its ``PID SNAPSHOT`` (at most 30 s) and
    prints ``SIDE PID SNAPSHOT`` per side, or ``SIDE`` and what its session said instead."""
    lines = [f"set -u; rm -rf {directory}; install -d -m 0700 {directory}"]
    for n, (side, conn) in enumerate(conns.items()):
        lines += [f"cat > {directory}/{side}.sql <<'HCBPG_HOLD_{n}'",
                  render_hold_script(f"{directory}/{side}.snapshot", hold_s).rstrip("\n"), f"HCBPG_HOLD_{n}",
                  f"(nohup {conn} -X -q -At -v ON_ERROR_STOP=1 -f {directory}/{side}.sql > /dev/null "
                  f"2> {directory}/{side}.err &)"]
    files = " ".join(f"{directory}/{side}.snapshot" for side in conns)
    lines += [f"for i in $(seq 600); do [ \"$(cat {files} 2>/dev/null | wc -l)\" = {len(conns)} ] && break; "
              "sleep 0.05; done",
              f"for s in {' '.join(conns)}; do printf '%s ' $s; cat {directory}/$s.snapshot 2>/dev/null || "
              f"tr '\\n' ' ' < {directory}/$s.err; echo; done"]
    return "\n".join(lines) + "\n"


_HELD = re.compile(r"^(\w+) (\d+) ([0-9A-F]+-[0-9A-F]+(?:-\d+)?)$")


def parse_held_snapshots(text: str, sides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``SIDE PID SNAPSHOT`` lines (one per side) into ``{side: {pid, snapshot}}``; a side without
    one raises with what its session said instead."""
    held: dict[str, dict[str, Any]] = {}
    said: dict[str, str] = {}
    for line in text.splitlines():
        m = _HELD.match(line.strip())
        if m:
            held[m.group(1)] = {"pid": int(m.group(2)), "snapshot": m.group(3)}
        elif line.strip():
            side, _, rest = line.strip().partition(" ")
            said[side] = rest
    missing = [s for s in sides if s not in held]
    if missing:
        raise SafetyCheckFailed("no snapshot held for " + ", ".join(f"the {s} ({said.get(s) or 'no answer'})"
                                                                    for s in missing),
                                hint="The primary cannot be verified after traffic is on without them: traffic must "
                                     "not start. Fix the cause and run 07 again (the window is repeated).")
    return held


def parse_service_settings(service: str) -> dict[str, str]:
    """What a plan may show of Bucardo's service file: its TLS and authentication settings (never the rest)."""
    shown = ("sslmode", "sslrootcert", "require_auth")
    pairs = (line.split("=", 1) for line in service.splitlines() if "=" in line and not line.startswith("#"))
    return {k: v for k, v in pairs if k in shown}


# Bucardo's command lines and files (what hcbpg asks of ``bucardo``) ---------------------------------

def package_names(pg_version: int) -> list[str]:
    """Bucardo and PL/Perl for the primary's PostgreSQL (its control database's functions are plperlu)."""
    return ["bucardo", f"postgresql-plperl-{int(pg_version)}"]


def render_rc() -> str:
    """Bucardo's rc file: the control database on the primary, over the Unix socket as postgres (peer)."""
    return ("# Managed by hcbpg (online transfer). Do not edit by hand.\n"
            "# the control database on this primary, over the Unix socket as postgres (peer): no password\n"
            "dbname = bucardo\ndbuser = postgres\n")


def render_relgroup_commands(plan: SyncPlan, db: str, relgroup: str) -> list[str]:
    """``bucardo`` arguments: the synced tables and the sequences of database *db* (Bucardo's name) put in
    *relgroup* (each name quoted as one word)."""
    steps = [f"add tables {' '.join(shlex.quote(t) for t in plan.synced)} db={db} relgroup={relgroup}"]
    if plan.sequences:
        steps.append(f"add sequences {' '.join(shlex.quote(q) for q in plan.sequences)} db={db} relgroup={relgroup}")
    return steps


def render_forward_sync_commands(plan: SyncPlan, *, source_dbname: str, database: str, port: int,
                                 streamed: bool, lock_timeout_ms: int | None = None) -> list[str]:
    """``bucardo`` arguments of the forward sync: the source (through its service, every session of Bucardo
    there with *lock_timeout_ms*: :func:`render_lock_timeout_conn`) and the primary (over the socket) as
    Bucardo's databases, the relgroup, the sync (inactive, no onetimecopy when the initial copy is streamed;
    else the sync's own onetimecopy). The last one, ``add sync``, is what adds the triggers on the source."""
    conn = f" dbconn={shlex.quote(render_lock_timeout_conn(lock_timeout_ms))}" if lock_timeout_ms else ""
    return [
        f"add db {SOURCE_DB} dbname={shlex.quote(source_dbname)} dbservice={SOURCE_SERVICE}{conn}",
        f"add db {PRIMARY_DB} dbname={shlex.quote(database)} dbhost=/var/run/postgresql dbport={int(port)} "
        "dbuser=postgres",
        *render_relgroup_commands(plan, SOURCE_DB, FORWARD_SYNC),
        f"add sync {FORWARD_SYNC} relgroup={FORWARD_SYNC} dbs={SOURCE_DB}:source,{PRIMARY_DB}:target "
        + ("onetimecopy=0 status=inactive" if streamed else "onetimecopy=1"),
    ]


def render_back_sync_commands(plan: SyncPlan, *, source_dbname: str, customcode: str, customcode_file: str) -> list[str]:
    """``bucardo`` arguments of the way back: the source as a target, the primary's tables and sequences,
    the sync (inactive until 09b), and our customcode for the owner-only target."""
    return [f"add db {BACK_TARGET_DB} dbname={shlex.quote(source_dbname)} dbservice={SOURCE_SERVICE}",
            *render_relgroup_commands(plan, PRIMARY_DB, BACK_SYNC),
            f"add sync {BACK_SYNC} relgroup={BACK_SYNC} dbs={PRIMARY_DB}:source,{BACK_TARGET_DB}:target "
            "status=inactive",
            f"add customcode {customcode} whenrun=before_txn sync={BACK_SYNC} src_code={customcode_file}"]
