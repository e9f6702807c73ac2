"""PostgreSQL's progress views as samples: ``pg_stat_progress_copy``, ``pg_stat_progress_create_index``
and ``pg_stat_progress_basebackup``, against the sizes of the source's tables.

Pure: the SQL to read them and the functions that turn their rows into
:class:`hcbpg.progress.Sample` arguments; the polling is :mod:`hcbpg.ops.progress`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: the size of every user table of the source: its heap (bytes) and its estimated rows (-1: never analyzed)
SOURCE_SIZES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname) AS name, pg_relation_size(c.oid) AS bytes,
       c.reltuples::bigint AS rows
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
"""

#: the COPYs running in this database, with the table's name and how long ago the COPY began
#: (its statement's start: the first look at a COPY then has a rate already)
COPY_PROGRESS_SQL = """
SELECT p.pid, format('%I.%I', n.nspname, c.relname) AS name, p.command, p.type,
       p.bytes_processed, p.bytes_total, p.tuples_processed,
       extract(epoch FROM clock_timestamp() - a.query_start)::float8 AS running_s
FROM pg_stat_progress_copy p LEFT JOIN pg_class c ON c.oid = p.relid
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = p.pid
WHERE p.datname = current_database()
"""

#: the index builds running in this database: table, index (the statement names it: a non-concurrent
#: CREATE INDEX reports index_relid 0), phase and its counters
INDEX_PROGRESS_SQL = """
SELECT p.pid, format('%I.%I', n.nspname, c.relname) AS "table", p.command, p.phase,
       p.blocks_total, p.blocks_done, p.tuples_total, p.tuples_done,
       nullif(p.index_relid, 0)::regclass::text AS index, left(a.query, 300) AS query
FROM pg_stat_progress_create_index p LEFT JOIN pg_class c ON c.oid = p.relid
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = p.pid
WHERE p.datname = current_database()
"""

#: both in one query (one round trip per look): columns ``copy`` and ``index``, each a JSON list of rows
RESTORE_PROGRESS_SQL = (f"SELECT (SELECT coalesce(json_agg(c), '[]') FROM ({COPY_PROGRESS_SQL}) c) AS copy, "
                        f"(SELECT coalesce(json_agg(i), '[]') FROM ({INDEX_PROGRESS_SQL}) i) AS index")

BASEBACKUP_PROGRESS_SQL = "SELECT phase, backup_streamed, backup_total FROM pg_stat_progress_basebackup"


@dataclass(frozen=True)
class Progress:
    """The arguments of one :meth:`hcbpg.progress.Reporter.update`."""

    kind: str
    what: str
    done: float
    total: float | None
    unit: str
    phase: str = ""
    detail: str = ""
    #: seconds since the work began at 0, when the view tells (a COPY's statement start)
    started_ago: float | None = None


def parse_sizes(rows: list[dict[str, Any]]) -> dict[str, tuple[int, int | None]]:
    """name -> (heap bytes, estimated rows or None when the table was never analyzed)."""
    out: dict[str, tuple[int, int | None]] = {}
    for r in rows:
        est = r.get("rows")
        out[str(r["name"])] = (int(r.get("bytes") or 0), int(est) if est is not None and int(est) >= 0 else None)
    return out


def plan_copy_progress(rows: list[dict[str, Any]], sizes: Mapping[str, tuple[int, int | None]]) -> list[Progress]:
    """One sample per running COPY: rows against the source's estimate when it has one, else bytes
    against the source table's heap size (a COPY stream is near its heap size, not equal: capped at 100%)."""
    out = []
    for r in rows:
        name = str(r.get("name") or f"pid {r.get('pid')}")
        tuples = int(r.get("tuples_processed") or 0)
        done_b = int(r.get("bytes_processed") or 0)
        heap, est = sizes.get(name, (0, None))
        running = r.get("running_s")
        ago = float(running) if running is not None and float(running) > 0 else None
        if est:
            out.append(Progress("copy", name, tuples, est, "rows",
                                detail=f"{_mb(done_b)} read" if done_b else "", started_ago=ago))
        else:
            total_b = int(r.get("bytes_total") or 0) or heap or None
            out.append(Progress("copy", name, done_b, total_b, "bytes", detail=f"{tuples:,} rows", started_ago=ago))
    return out


_CREATE_INDEX_RE = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(\"(?:[^\"]|\"\")+\"|[\w$]+)",
    re.IGNORECASE)
_CONSTRAINT_RE = re.compile(r"ADD\s+CONSTRAINT\s+(\"(?:[^\"]|\"\")+\"|[\w$]+)", re.IGNORECASE)


def parse_index_name(query: str | None) -> str | None:
    """The index a ``CREATE INDEX`` (or ``ADD CONSTRAINT``) statement builds."""
    for rx in (_CREATE_INDEX_RE, _CONSTRAINT_RE):
        m = rx.search(query or "")
        if m:
            return m.group(1)
    return None


def plan_index_progress(rows: list[dict[str, Any]]) -> list[Progress]:
    """One sample per running index build: its phase and that phase's share done (blocks while the
    table is scanned, tuples while they are loaded into the tree)."""
    out = []
    for r in rows:
        table = str(r.get("table") or "?")
        index = r.get("index") or parse_index_name(r.get("query")) or "an index"
        phase = str(r.get("phase") or "").removeprefix("building index: ")
        bt, bd = int(r.get("blocks_total") or 0), int(r.get("blocks_done") or 0)
        tt, td = int(r.get("tuples_total") or 0), int(r.get("tuples_done") or 0)
        what = f"{index} on {table}"
        if bt:
            out.append(Progress("index", what, bd, bt, "blocks", phase))
        elif tt:
            out.append(Progress("index", what, td, tt, "tuples", phase))
        else:
            out.append(Progress("index", what, 0, None, "blocks", phase))
    return out


def plan_basebackup_progress(rows: list[dict[str, Any]], server: str) -> Progress | None:
    if not rows:
        return None
    r = rows[0]
    total = int(r["backup_total"]) if r.get("backup_total") is not None else None
    return Progress("basebackup", server, int(r.get("backup_streamed") or 0), total, "bytes",
                    str(r.get("phase") or ""))


def _mb(b: int) -> str:
    return f"{b / 1048576:.1f} MB"
