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

#: every table of the source with what Bucardo needs to know: a key (primary key, or a unique,
#: non-partial index on NOT NULL columns), persistence, its estimated rows; and the large objects.
#: Names with a control character are listed apart, in the same query (so in the same snapshot as
#: the names Bucardo gets), and refuse the mode; no such table is ever synced or copied
SYNCABILITY_SQL = f"""
SELECT json_build_object(
 'control_char_names', ({REFUSED_NAMES_SQL}),
 'tables', (SELECT coalesce(json_agg(json_build_object(
     'name', n.nspname || '.' || c.relname,
     'key', EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisvalid AND (i.indisprimary OR
              (i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND NOT EXISTS (
                SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey)
                  AND NOT a.attnotnull)))),
     'unlogged', c.relpersistence = 'u',
     'rows', greatest(c.reltuples, 0)::bigint) ORDER BY n.nspname, c.relname), '[]'::json)
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {USER_NS} AND n.nspname <> '{SCHEMA}'
     AND {not_ext_member('pg_class', 'c.oid')}),
 'sequences', (SELECT coalesce(json_agg(n.nspname || '.' || c.relname ORDER BY 1), '[]'::json)
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.relkind = 'S' AND {USER_NS} AND n.nspname <> '{SCHEMA}' AND {not_ext_member('pg_class', 'c.oid')}),
 'large_objects', (SELECT count(*) FROM pg_largeobject_metadata))
"""


@dataclass
class SyncPlan:
    """How each table of the source moves in the online transfer."""

    synced: list[str]                      # Bucardo syncs them (a key each)
    in_window: list[str]                   # no key, small: copied whole inside the window
    refused: list[str]                     # no key, too large: the online mode is refused
    unlogged: list[str]                    # synced or copied like the others (their data is not crash-safe)
    sequences: list[str]
    large_objects: int
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def rows(self) -> list[dict[str, str]]:
        """One row per table: how it moves (for the notebook's table)."""
        how = {**{t: "synced by Bucardo (trigger on the source, key-based)" for t in self.synced},
               **{t: "no key: copied whole inside the window" for t in self.in_window},
               **{t: "no key, too large: REFUSED" for t in self.refused}}
        return [{"table": t, "moved": h + (" (unlogged)" if t in self.unlogged else "")}
                for t, h in sorted(how.items())]


def plan_sync(data: Mapping[str, Any], *, window_copy_max_rows: int) -> SyncPlan:
    """What can be synced, what is copied inside the window, what refuses the mode (with checks)."""
    bad_names = [str(n) for n in data.get("control_char_names") or []]
    tables = [t for t in data.get("tables") or [] if not _has_control_characters(t["name"])]
    synced = [t["name"] for t in tables if t["key"]]
    keyless = [t for t in tables if not t["key"]]
    in_window = [t["name"] for t in keyless if int(t["rows"]) <= window_copy_max_rows]
    refused = [t["name"] for t in keyless if int(t["rows"]) > window_copy_max_rows]
    unlogged = [t["name"] for t in tables if t["unlogged"]]
    lobs = int(data.get("large_objects") or 0)
    sequences = [q for q in data.get("sequences") or [] if not _has_control_characters(q)]
    plan = SyncPlan(synced, in_window, refused, unlogged, sequences, lobs)
    rows_of = {t["name"]: int(t["rows"]) for t in tables}
    plan.checks = [
        Check.of("every table has a key or is small enough to copy inside the window", not refused,
                 (f"{len(synced)} synced by key; " + (f"copied inside the window (no key, at most "
                  f"{window_copy_max_rows} rows): {list_names(in_window)}" if in_window else "none without a key"))
                 if not refused else
                 "no primary key or unique index, too large to copy inside the window: "
                 + ", ".join(f"{t} (about {rows_of[t]} rows)" for t in refused[:5])
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
                                 streamed: bool) -> list[str]:
    """``bucardo`` arguments of the forward sync: the source (through its service) and the primary (over the
    socket) as Bucardo's databases, the relgroup, the sync (inactive, no onetimecopy when the initial copy
    is streamed; else the sync's own onetimecopy)."""
    return [
        f"add db {SOURCE_DB} dbname={shlex.quote(source_dbname)} dbservice={SOURCE_SERVICE}",
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
