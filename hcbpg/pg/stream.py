"""The streamed transfer, decided without I/O: its catalog SQL, run in the source's exported snapshot
(the build plan: each table's indexes and keys, the foreign keys; the tables to copy with their COPY
format), the scripts it runs on the primary (templates in ``hcbpg/pg/scripts/``), what the
plan shows of it, and its timings read back from its log."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.pg import templates
from hcbpg.pg.cluster import local_tool, psql_command
from hcbpg.pg.conninfo import SERVICE_NAME
from hcbpg.pg.dump import REFUSED_NAMES_SQL, TRANSFER_NS, render_toc_filter
from hcbpg.pg.inventory import COUNTS_SQL, INVENTORY_SQL, USER_NS, newest_event_sql, not_ext_member
from hcbpg.pg.restore import restore_jobs

__all__ = ["BUILDS_SQL", "REFUSED_NAMES_SQL", "SEQUENCES_SQL", "SPLIT_AWK", "TABLES_SQL", "TRANSFER_NS",
           "parse_stream_times", "plan_stream_actions", "render_bundle", "render_counts_select",
           "render_stream_scripts", "render_stream_session", "transfer_method", "use_stream"]

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: separates the fields of the build plan (names with control characters are left to the final pass)
_US = "\x1f"

#: how costly an index build is, for the order of a table's builds: GIN, GiST and SP-GiST first (they
#: build on one CPU, several times slower per row than a B-tree: the lab's GIN over jsonb took 13 s
#: where the same table's primary key took 2), then the largest
_BUILD_COST = ("CASE WHEN (SELECT a.amname FROM pg_am a WHERE a.oid = {index}.relam) IN ('gin', 'gist', 'spgist') "
               "THEN 0 ELSE 1 END AS slow, pg_relation_size({index}.oid) AS size")

#: the build plan, in the source's snapshot: for each plain table, the entries built right after its
#: rows, ordered by cost over all tables (a line's number is its rank in the workers' queue: the
#: costliest first, foreign keys last).  One line per entry: table oid, kind, "classid objid" of its TOC entry,
#: the start of that TOC entry's text (desc, schema, tag) and, for keys, the unique index and the ALTER TABLE.
#:   I: a plain index (not a constraint's), restored from the dump by pg_restore as it is;
#:   K: a primary key or unique constraint: its unique index is built like any other index (so at
#:      the same time as the table's other indexes), then ADD CONSTRAINT ... USING INDEX.  Keys that
#:      are deferrable, clustered on, or the replica identity stay with pg_restore;
#:   F: a (validated) foreign key between plain tables, as soon as both of its tables are loaded (the
#:      line ends with the referenced table's oid): added NOT VALID (no scan, one at a time), then
#:      VALIDATE CONSTRAINT by a worker of the pool.  VALIDATE checks every row as ADD does, but locks the
#:      referenced table only in ROW SHARE mode, so the checks of different tables run at once.
BUILDS_SQL = f"""
SELECT b FROM (
  SELECT concat_ws(E'\\x1f', t.oid, 'I', '1259 ' || ic.oid, format('INDEX %s %s ', n.nspname, ic.relname)) AS b,
         n.nspname || t.relname || ic.relname AS names, t.oid AS tbl, {_BUILD_COST.format(index='ic')}
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  WHERE t.relkind = 'r' AND NOT t.relispartition AND {TRANSFER_NS} AND {not_ext_member('pg_class', 't.oid')}
    AND i.indisvalid AND ic.relnamespace = t.relnamespace
    AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = ic.oid AND co.conrelid = t.oid
                    AND co.contype IN ('p', 'u', 'x'))
  UNION ALL
  SELECT concat_ws(E'\\x1f', t.oid, 'K', '2606 ' || co.oid,
                   format('CONSTRAINT %s %s %s ', n.nspname, t.relname, co.conname),
                   pg_get_indexdef(co.conindid) || ';',
                   format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s USING INDEX %I;', n.nspname, t.relname,
                          co.conname, CASE co.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, co.conname)),
         n.nspname || t.relname || co.conname || pg_get_indexdef(co.conindid), t.oid,
         {_BUILD_COST.format(index='ic')}
  FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class ic ON ic.oid = co.conindid JOIN pg_index i ON i.indexrelid = ic.oid
  WHERE co.contype IN ('p', 'u') AND t.relkind = 'r' AND NOT t.relispartition AND {TRANSFER_NS}
    AND {not_ext_member('pg_class', 't.oid')} AND ic.relname = co.conname AND ic.relnamespace = t.relnamespace
    AND NOT co.condeferrable AND NOT i.indisclustered AND NOT i.indisreplident AND i.indisvalid
  UNION ALL
  SELECT concat_ws(E'\\x1f', t.oid, 'F', '2606 ' || co.oid,
                   format('FK CONSTRAINT %s %s %s ', n.nspname, t.relname, co.conname),
                   format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s NOT VALID;', n.nspname, t.relname, co.conname,
                          pg_get_constraintdef(co.oid)),
                   format('ALTER TABLE ONLY %I.%I VALIDATE CONSTRAINT %I;', n.nspname, t.relname, co.conname),
                   -- the TOC entry of the referenced key: the foreign key waits for pg_restore unless it was built
                   coalesce((SELECT '2606 ' || k.oid FROM pg_constraint k WHERE k.conindid = co.conindid
                             AND k.conrelid = co.confrelid AND k.contype IN ('p', 'u', 'x')),
                            '1259 ' || co.conindid),
                   -- the referenced table: the foreign key is checked once both of its tables are loaded
                   co.confrelid),
         n.nspname || t.relname || co.conname || pg_get_constraintdef(co.oid), t.oid, 2, 0
  FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class r ON r.oid = co.confrelid
  WHERE co.contype = 'f' AND co.convalidated AND co.conparentid = 0 AND t.relkind = 'r' AND NOT t.relispartition
    AND r.relkind = 'r' AND NOT r.relispartition AND {TRANSFER_NS} AND {not_ext_member('pg_class', 't.oid')}
) q WHERE names !~ '[[:cntrl:]]' ORDER BY slow, size DESC, tbl, b;"""

#: the tables to copy, largest first: oid, COPY format, name quoted by the server (three fields, which the
#: session writes NUL-separated: a name is never split or read as a line).  Binary when every column's
#: type (its base type for a domain, and its element type for an array) is a base or enum type, or a
#: built-in one, whose send and receive functions are the server's own (internal language, as citext's
#: are): then both ends read and write the same bytes on any server; text otherwise.  A name with a
#: control character is never listed (the session refused the transfer before: :data:`REFUSED_NAMES_SQL`).
TABLES_SQL = f"""
SELECT c.oid, CASE WHEN coalesce(b.ok, true) THEN 'binary' ELSE 'text' END, format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT bool_and(x.typsend <> 0 AND x.typreceive <> 0 AND (x.typtype IN ('b', 'e') OR x.oid < 16384)
                  AND (SELECT bool_and(p.prolang = 12) FROM pg_proc p
                       WHERE p.oid IN (x.typsend::oid, x.typreceive::oid))) AS ok
  FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
  CROSS JOIN LATERAL (VALUES (bt.oid), (CASE WHEN bt.typcategory = 'A' THEN nullif(bt.typelem, 0) END)) v(t)
  JOIN pg_type x ON x.oid = v.t
  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) b ON true
WHERE c.relkind = 'r' AND {TRANSFER_NS} AND {not_ext_member('pg_class', 'c.oid')}
  AND n.nspname !~ '[[:cntrl:]]' AND c.relname !~ '[[:cntrl:]]'
ORDER BY pg_relation_size(c.oid) DESC, 1;"""

#: statements that set every sequence to its value in the snapshot (printed by the source session into a
#: file psql runs whole; a name with a control character was refused before)
SEQUENCES_SQL = ("SELECT format('SELECT pg_catalog.setval(%L, %s, %s);', format('%I.%I', schemaname, sequencename), "
                 "coalesce(last_value, start_value), (last_value IS NOT NULL)::text) FROM pg_sequences "
                 "WHERE schemaname NOT IN ('pg_catalog', 'information_schema', 'bucardo') "
                 "AND schemaname !~ '[[:cntrl:]]' AND sequencename !~ '[[:cntrl:]]' ORDER BY 1;")


def transfer_method(params: "Params") -> str:
    """How the data moves for method pg_dump: ``stream`` (the default) or ``directory`` (pg_dump -Fd, then pg_restore)."""
    return params.source.transfer if params.source is not None else "stream"


def use_stream(params: "Params", facts: Mapping[str, Any]) -> bool:
    """The streamed transfer applies: method pg_dump, ``source.transfer: stream``, and no large objects
    on the source (their data is not in a schema-only dump: such a source moves as a directory dump)."""
    src = params.source
    return (src is not None and src.method == "pg_dump" and transfer_method(params) == "stream"
            and not int(facts.get("large_objects") or 0))


def plan_stream_actions(params: "Params") -> list[str]:
    """What the streamed transfer does, for the plan."""
    jobs = restore_jobs(params)
    return [f"pg_restore --section=pre-data of the schema (as {params.postgres.app_role}, --no-owner --no-acl)",
            f"a pool of {params.source.jobs if params.source else 2} workers, largest table first: "
            "COPY ... TO STDOUT (binary when every column type allows) "
            "| COPY ... FROM STDIN (FREEZE, in the snapshot); as soon as a table's rows are in, its index builds "
            "go ahead of the tables not yet copied, the costliest first (keys as a unique index, then ADD "
            "CONSTRAINT ... USING INDEX), then ANALYZE; no parallel workers (the pool fills the cores)",
            "sequence values from the snapshot",
            "each foreign key as soon as both of its tables are loaded, by a worker of the pool: ADD CONSTRAINT ... "
            "NOT VALID (one at a time), then VALIDATE CONSTRAINT",
            f"pg_restore --section=post-data -j {jobs} of the rest (triggers, comments, anything not matched)"]


#: splits the build plan over the tables (argv: the plan, then the filtered ``pg_restore -l`` list):
#: each matched TOC entry (same classid and oid, and its text starts with the same desc, schema and
#: tag) becomes ``build/<table oid>.<n>.list`` (I) or ``.sql`` plus a line of ``<table oid>.keys`` (K),
#: and is commented out of the list printed for the final pass.  Anything unmatched stays in it, and
#: so does a foreign key whose referenced key stays with pg_restore (F lines name that key's entry).
SPLIT_AWK = templates.read_script("split.awk")


def _local(params: "Params", tool: str) -> str:
    """*tool* of the cluster params name, as the scripts run it on the primary (as postgres): its own binary on
    its port (:func:`hcbpg.pg.cluster.local_tool`; some 40 calls a transfer, on the cores the load is using)."""
    return local_tool(params.postgres.version, params.postgres.port, tool)


def _target_psql(params: "Params") -> str:
    """psql against the target database on the primary, as the scripts run it (as postgres)."""
    return psql_command(params.postgres.version, params.postgres.port, params.postgres.database)


def render_counts_select(params: "Params", mark: str) -> str:
    """The SELECT that prints, after *mark*, the inventory, every table's row count and the newest event
    as one JSON line (run in the transfer's snapshot)."""
    return (f"SELECT '{mark}' || json_build_object('objects', ({INVENTORY_SQL}), "
            f"'rows', ({COUNTS_SQL}), 'newest_event', ({newest_event_sql(params)}))::text;")


def render_stream_scripts(params: "Params", work: str, schemas: Iterable[str], *, service_file: str,
                          reload_and_wait: str, counts_select: str, prepare: str | None = None,
                          reload_settings: bool = False, remove_part: str | None = None) -> tuple[str, str]:
    """The shell scripts of a streamed transfer: the whole of it, and one worker of its pool.

    Schema in the snapshot (pg_dump --schema-only), pre-data restored as the app role, then a pool
    of ``source.jobs`` workers over one queue: each table's rows piped ``COPY TO STDOUT | COPY FROM
    STDIN`` in the same snapshot (the largest table first), and as soon as they are in, that table's
    index builds join the queue ahead of any table not yet copied, the costliest of all first (GIN,
    GiST, SP-GiST, then by size; primary keys and unique constraints as a unique index, then ``ADD
    CONSTRAINT ... USING INDEX``), and the worker that ends a table's last build ANALYZEs it.  The
    largest table's rows and then its costliest index, the critical path, start first, and the pool
    keeps ``source.jobs`` sessions busy until the last build.  Then sequence values, then the rest
    of post-data (foreign keys, triggers, what the build plan did not match) with pg_restore -j N.
    Each phase leaves an ``hcbpg-time`` line.

    The inventory and exact row counts are taken by one more session in the same snapshot
    (``counts.out``) once every table is loaded, while the foreign keys are checked.  While the
    schema is dumped: *prepare* (:func:`render_prepare_sql`: the fresh database, its schemas and
    extensions) runs, and with *reload_settings* the server reloads the restore-time settings
    already written.  *remove_part*: the restore-time settings file, removed (and the server
    reloaded) as soon as the load is done.  Both only for settings that need no restart.

    *service_file*: the source's libpq service file on the primary; *reload_and_wait*: the shell line that
    reloads the server and waits for the settings; *counts_select*: the SELECT that prints the inventory
    and row counts (:func:`render_counts_select`).  The scripts are the templates ``scripts/stream.sh.tmpl``
    and ``work.sh.tmpl``; every value that a shell must read as one word is quoted here.
    """
    pg = params.postgres
    common = {
        "HEAD": templates.render_script("head.sh.tmpl", {"SERVICE_FILE": service_file}).rstrip("\n"),
        "W": shlex.quote(work),
        "ROLE": pg.app_role,
        "RESTORE": f"{_local(params, 'pg_restore')} --no-owner --no-acl --role={shlex.quote(pg.app_role)} --exit-on-error",
        "TARGET_PSQL": _target_psql(params),
    }
    src_jobs = str(params.source.jobs if params.source is not None else 2)
    main = templates.render_script("stream.sh.tmpl", {
        **common,
        "LOCAL_PSQL": _local(params, "psql"),
        "SERVICE": SERVICE_NAME,
        "DATABASE": shlex.quote(pg.database),
        "PREPARE_SQL": (prepare or "").rstrip("\n"),
        "RELOAD_AND_WAIT": reload_and_wait,
        "TOC_FILTER": shlex.quote(render_toc_filter(schemas)),
        "SOURCE_JOBS": src_jobs,
        "RESTORE_JOBS": str(restore_jobs(params)),
        "COUNTS_SELECT": counts_select,
        "USER_NS": USER_NS,
        "PART": shlex.quote(remove_part or ""),
    }, {"PREPARE": bool(prepare), "RELOAD": reload_settings, "REMOVE_PART": bool(remove_part)})
    worker = templates.render_script("work.sh.tmpl", {**common, "SERVICE": SERVICE_NAME})
    return main, worker


def render_bundle(files: Mapping[str, tuple[str, str]]) -> str:
    """Shell lines that write each file (path -> (mode, text)) from a quoted here-document, so that one
    upload carries them all."""
    lines = []
    for n, (path, (mode, text)) in enumerate(files.items()):
        end = f"HCBPG_FILE_{n}"
        if any(line == end for line in text.splitlines()):
            raise ValueError(f"{path}: holds the line {end}")
        lines += [f"cat > {shlex.quote(path)} <<'{end}'", text.rstrip("\n"), end, f"chmod {mode} {shlex.quote(path)}"]
    return "\n".join(lines) + "\n"


def render_stream_session(params: "Params", work: str) -> str:
    """The source session of a streamed transfer: it exports the snapshot and holds it while the transfer
    runs; tables, sequences and the build plan are read in it first."""
    w = shlex.quote(work)
    return templates.render_script("stream-session.psql.tmpl", {
        "WORK": work,  # psql meta-command arguments: the work directory is hcbpg's own path
        "W": w,
        "STATUS": shlex.quote(f"{work}/stream.exit"),
        "REFUSED_NAMES_SQL": REFUSED_NAMES_SQL.strip(),
        "TABLES_SQL": TABLES_SQL.strip(),
        "SEQUENCES_SQL": SEQUENCES_SQL,
        "BUILDS_SQL": BUILDS_SQL.strip(),
    })


def parse_stream_times(log: str, tables: str = "") -> list[str]:
    """The phases of a streamed transfer from its ``hcbpg-time`` lines (and each table's copy and build);
    *tables*: the session's list, NUL-separated ``oid``, ``format``, ``name``."""
    fields = tables.split("\0")
    names = {fields[i]: fields[i + 2] for i in range(0, len(fields) - 2, 3)}
    marks: dict[tuple[str, str], float] = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "hcbpg-time":
            try:
                marks[(parts[1], parts[2])] = float(parts[3])
            except ValueError:
                continue
    start = marks.get(("start", "-"))
    if start is None:
        return []
    out = []
    prev = start
    for phase, what in (("pre-data", "schema dumped and pre-data restored"),
                        ("tables", "rows copied, indexes and keys built, tables analyzed, foreign keys checked"),
                        ("foreign-keys", "sequences set (and any foreign key the pool did not check)"),
                        ("post-data", "the rest of post-data (triggers, comments, what was not matched)"),
                        ("end", "ANALYZE of partitioned tables and materialized views"),
                        ("settings", "restore-time settings removed"),
                        ("counted", "waited for the inventory and row counts (taken meanwhile)")):
        t = marks.get((phase, "-"))
        if t is not None:
            out.append(f"{what}: {t - prev:.1f}s")
            prev = t
    per_table = sorted(((marks.get(("copied", oid)), marks.get(("built", oid)), oid)
                        for (kind, oid) in marks if kind == "copied"), key=lambda x: -(x[1] or x[0] or 0))
    for copied, built, oid in per_table[:3]:
        name = names.get(oid, f"table {oid}")
        out.append(f"{name}: rows copied at +{(copied or start) - start:.1f}s"
                   + (f", indexes built at +{built - start:.1f}s" if built is not None else ""))
    return out
