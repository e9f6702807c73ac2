"""The streamed transfer (``source.transfer: stream``): schema, rows and indexes straight from the
source's exported snapshot into a fresh database, no dump files for the data.  The shell and awk
it runs on the primary are templates in ``scripts/`` (see :mod:`hcbpg.ops.migration.templates`)."""

from __future__ import annotations

import json
import os
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg import secrets as hsecrets
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.psql import JSON_MARK, parse_marked_json
from hcbpg.desired.migration import (
    check_source_names,
    render_reload_and_wait,
    render_restore_settings,
    restore_part_path,
)
from hcbpg.errors import RemoteCommandError
from hcbpg.ops.migration.database import get_fresh_database_plan
from hcbpg.ops.migration.dump import DumpResult, prepare_dump_dir
from hcbpg.ops.migration.restore import RestoreResult, restore_jobs
from hcbpg.ops.migration.settings import ensure_restore_settings, ensure_restore_settings_removed, get_server_state
from hcbpg.ops.migration.source import SECRET_DIR, get_target
from hcbpg.ops.progress import source_sizes, watch_restore
from hcbpg.pg import templates
from hcbpg.pg.conninfo import SERVICE_NAME
from hcbpg.pg.dump import plan_prerequisites, render_toc_filter
from hcbpg.pg.inventory import COUNTS_SQL, INVENTORY_SQL, USER_NS, Inventory, newest_event_sql
from hcbpg.pg.restore import MARKER_RESTORE, plan_restore_settings, prerequisite_statements, render_prepare_sql
from hcbpg.pg.stream import BUILDS_SQL, REFUSED_NAMES_SQL, SEQUENCES_SQL, TABLES_SQL

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params


def transfer_method(params: "Params") -> str:
    """How the data moves for method pg_dump: ``stream`` (the default) or ``directory`` (pg_dump -Fd, then pg_restore)."""
    src = params.source
    return str(getattr(src, "transfer", None) or "stream")


#: the niceness of the sessions off the critical path (see :func:`render_stream_scripts`)
LOW_PRIORITY = 10


#: splits the build plan over the tables (argv: the plan, then the filtered ``pg_restore -l`` list):
#: each matched TOC entry (same classid and oid, and its text starts with the same desc, schema and
#: tag) becomes ``build/<table oid>.<n>.list`` (I) or ``.sql`` plus a line of ``<table oid>.keys`` (K),
#: and is commented out of the list printed for the final pass.  Anything unmatched stays in it, and
#: so does a foreign key whose referenced key stays with pg_restore (F lines name that key's entry).
SPLIT_AWK = templates.read_script("split.awk")


def _target_psql(params: "Params") -> str:
    """psql against the target database on the primary, as the scripts run it (as postgres)."""
    pg = params.postgres
    return f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -X -q -v ON_ERROR_STOP=1 -d {shlex.quote(pg.database)}"


def render_on_target(params: "Params") -> list[str]:
    """The shell function ``on_target N psql-args...``: psql against the target database, its server
    process at niceness N (0: left as it is).

    The postgres OS user may lower its own processes' CPU priority, never raise it: the session
    prints its backend's pid first, and that process is reniced, and so is its autogroup (PostgreSQL
    starts each backend in a session of its own, and with autogroup scheduling, on by default on
    Ubuntu, a nice value counts only within its session).  A lowered session starts no parallel
    workers: the postmaster would fork them at normal priority.
    """
    return templates.render_script("on-target.sh.tmpl", {"TARGET_PSQL": _target_psql(params)}).splitlines()


def render_stream_scripts(params: "Params", work: str, schemas: Iterable[str], *, prepare: str | None = None,
                          reload_settings: bool = False, remove_part: str | None = None) -> tuple[str, str, str]:
    """The shell scripts of a streamed transfer: the whole of it, the work on one table, one index build.

    Schema in the snapshot (pg_dump --schema-only), pre-data restored as the app role, then
    ``source.jobs`` tables at a time, largest first: the table's rows piped ``COPY TO STDOUT | COPY FROM STDIN``
    in the same snapshot, then right away that table's indexes, the costliest first, ``source.jobs`` at
    a time (primary keys and unique constraints as a unique index, then ``ADD CONSTRAINT ... USING
    INDEX``) and ANALYZE.  The critical path (the largest table's rows, then its costliest index)
    keeps its CPU priority; every other session's server process runs at :data:`LOW_PRIORITY`
    (:func:`render_on_target`), so the other tables take the CPU the chain leaves.
    Then sequence values, then the rest of post-data (foreign keys, triggers, what the build plan
    did not match) with pg_restore -j N.  Each phase leaves an ``hcbpg-time`` line.

    The inventory and exact row counts are taken by one more session in the same snapshot
    (``counts.out``) once every table is loaded, while the foreign keys are checked.  While the
    schema is dumped: *prepare* (:func:`render_prepare_sql`: the fresh database, its schemas and
    extensions) runs, and with *reload_settings* the server reloads the restore-time settings
    already written.  *remove_part*: the restore-time settings file, removed (and the server
    reloaded) as soon as the load is done.  Both only for settings that need no restart.

    The scripts are the templates ``scripts/stream.sh.tmpl``, ``copy-one.sh.tmpl`` and
    ``build-one.sh.tmpl``; every value that a shell must read as one word is quoted here.
    """
    pg = params.postgres
    cl = f"--cluster {pg.version}/{shlex.quote(pg.cluster)}"
    common = {
        "HEAD": templates.render_script("head.sh.tmpl", {"SERVICE_FILE": f"{SECRET_DIR}/source.pgservice"}).rstrip("\n"),
        "W": shlex.quote(work),
        "ROLE": pg.app_role,
        "RESTORE": f"pg_restore {cl} --no-owner --no-acl --role={shlex.quote(pg.app_role)} --exit-on-error",
    }
    on_target = "\n".join(render_on_target(params))
    src_jobs = str(params.source.jobs if params.source is not None else 2)
    main = templates.render_script("stream.sh.tmpl", {
        **common,
        "CLUSTER": cl,
        "SERVICE": SERVICE_NAME,
        "DATABASE": shlex.quote(pg.database),
        "TARGET_PSQL": _target_psql(params),
        "PREPARE_SQL": (prepare or "").rstrip("\n"),
        "RELOAD_AND_WAIT": render_reload_and_wait(params),
        "TOC_FILTER": shlex.quote(render_toc_filter(schemas)),
        "SOURCE_JOBS": src_jobs,
        "RESTORE_JOBS": str(restore_jobs(params)),
        "COUNTS_SELECT": f"SELECT '{JSON_MARK}' || json_build_object('objects', ({INVENTORY_SQL}), "
                         f"'rows', ({COUNTS_SQL}), 'newest_event', ({newest_event_sql(params)}))::text;",
        "USER_NS": USER_NS,
        "PART": shlex.quote(remove_part or ""),
    }, {"PREPARE": bool(prepare), "RELOAD": reload_settings, "REMOVE_PART": bool(remove_part)})
    one = templates.render_script("copy-one.sh.tmpl", {
        "HEAD": common["HEAD"], "W": common["W"], "ROLE": common["ROLE"], "ON_TARGET": on_target,
        "SERVICE": SERVICE_NAME, "LOW_PRIORITY": str(LOW_PRIORITY),
        "SOURCE_JOBS": src_jobs})
    build = templates.render_script("build-one.sh.tmpl", {**common, "ON_TARGET": on_target})
    return main, one, build


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


def summarize_stream_times(log: str, tables: str = "") -> list[str]:
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
                        ("tables", "rows copied, indexes and keys built, tables analyzed"),
                        ("foreign-keys", "sequences set, foreign keys added and validated"),
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


_FILE_MARK = "----- hcbpg file "


def read_files(host: "HostLike", directory: str, names: Sequence[str]) -> dict[str, str]:
    """Several small files of one directory in one round trip ('' for a missing one), each exactly as it
    is: a file need not end with a newline (the tables' list ends with a NUL), and a line of a file
    cannot pass for the next file's start (the separator holds a nonce of this call)."""
    d = shlex.quote(directory)
    mark = f"{_FILE_MARK}{os.urandom(8).hex()} "
    cmd = "; ".join(f"printf '\\n%s\\n' {shlex.quote(mark + n)}; cat {d}/{shlex.quote(n)} 2>/dev/null"
                    for n in names)
    text = host.run(cmd, quiet=True, check=False).stdout
    out = {n: "" for n in names}
    for part in text.split("\n" + mark)[1:]:
        name, _, content = part.partition("\n")
        if name in out:
            out[name] = content
    return out


def use_stream(params: "Params", facts: Mapping[str, Any]) -> bool:
    """The streamed transfer applies: method pg_dump, ``source.transfer: stream``, and no large objects
    on the source (their data is not in a schema-only dump: such a source moves as a directory dump)."""
    src = params.source
    return (src is not None and src.method == "pg_dump" and transfer_method(params) == "stream"
            and not int(facts.get("large_objects") or 0))


def stream_plan_actions(params: "Params") -> list[str]:
    """What the streamed transfer does, for the plan."""
    jobs = restore_jobs(params)
    return [f"pg_restore --section=pre-data of the schema (as {params.postgres.app_role}, --no-owner --no-acl)",
            f"{params.source.jobs if params.source else 2} tables at a time, largest first: "
            "COPY ... TO STDOUT (binary when every column type allows) "
            "| COPY ... FROM STDIN (FREEZE, in the snapshot), then that table's indexes, the costliest first (keys "
            "as a unique index, then ADD CONSTRAINT ... USING INDEX), then ANALYZE",
            f"the largest table's rows and its costliest index keep their CPU priority; every other session is "
            f"reniced to {LOW_PRIORITY} and starts no parallel workers",
            "sequence values from the snapshot",
            f"foreign keys: ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT, {jobs} at a time",
            f"pg_restore --section=post-data -j {jobs} of the rest (triggers, comments, anything not matched)"]


def run_stream(host: "HostLike", params: "Params", source: "SourceLike", facts: Mapping[str, Any], tag: str, *,
               run_label: str = "") -> tuple[DumpResult, RestoreResult]:
    """Fresh database and settings, then schema, rows and indexes straight from the source (no dump files).

    Each table is analyzed by the worker that loaded it, right after its indexes: the restore's
    ``analyze_seconds`` is then the ANALYZE of what no worker loaded (partitioned tables, materialized views).
    """
    src = params.source
    assert src is not None
    check_source_names(facts)
    state = get_server_state(host, params)
    settings, notes = plan_restore_settings(mem_bytes=state["mem_bytes"], jobs=restore_jobs(params),
                                            archive_mode=state["archive_mode"],
                                            wal_senders_busy=int(state["senders"]),
                                            replication_slots=int(state["slots"]),
                                            wal_minimal=bool(getattr(src, "restore_wal_minimal", False)))
    schemas, exts = plan_prerequisites(facts)
    work = prepare_dump_dir(host, params, tag, dry_run=False)
    ensure_dir(host, work, mode=0o700, owner="postgres")
    started = time.monotonic()
    # nothing changes yet: the safety checks (SafetyCheckFailed) and the statements
    fresh, fresh_actions = get_fresh_database_plan(host, params, facts, run_label=run_label, server_state=state)
    # settings that need a restart (wal_level) come and go from here; the others by a reload in the script
    # (while the schema is dumped) and are removed as soon as the load is done
    restart = "wal_level" in settings
    main, one, build = render_stream_scripts(params, work, schemas,
                                      prepare=render_prepare_sql(params, fresh,
                                                                 prerequisite_statements(params, schemas, exts)),
                                      reload_settings=not restart,
                                      remove_part=None if restart else restore_part_path(params))
    files = {f"{work}/stream.sh": ("0700", main), f"{work}/copy-one.sh": ("0700", one),
             f"{work}/build-one.sh": ("0700", build), f"{work}/split.awk": ("0600", SPLIT_AWK)}
    try:
        if restart:
            ensure_restore_settings(host, params, settings)
        else:  # the script reloads them
            host.put_text(restore_part_path(params), render_restore_settings(settings, server=host.name),
                          mode=0o644, owner="postgres")
        host.put_text(f"{work}/files.sh", render_bundle(files), mode=0o700, owner="postgres")  # one upload
        sizes = source_sizes(source)
        with watch_restore(host, params, sizes=sizes):  # progress of the rows and indexes, as they go
            source.script(render_stream_session(params, work),
                                display=f"stream {source.label} into {params.postgres.database} "
                                        f"({'; '.join(fresh_actions[:1])}; restore-time settings): schema, then "
                                        f"{src.jobs} tables at a time in one exported snapshot (rows, then "
                                        "that table's indexes and keys, ANALYZE), then foreign keys and the rest; "
                                        "then inventory and row counts in that snapshot",
                                timeout=24 * 3600)
        out = read_files(host, work, ["refused-names.json", "stream.exit", "stream.log", "times", "tables",
                                      "counts.out"])
        # read in the copy's own snapshot: a table created after the plan's check is refused here
        check_source_names({"control_char_names": json.loads(out["refused-names.json"] or "[]")})
        status, log = out["stream.exit"].strip(), out["stream.log"]
        if status != "0":
            raise RemoteCommandError(host.name, f"streamed transfer from {source.label}",
                                     int(status) if status.isdigit() else None, hsecrets.scrub(log)[-3000:],
                                     hint="The database is half restored; run the step again (it starts over).")
        inv = Inventory.from_json(parse_marked_json(out["counts.out"]))
        phases = summarize_stream_times(log + out["times"], out["tables"])
        transfer_s = time.monotonic() - started
    finally:
        ensure_restore_settings_removed(host, params)
    host.run(f"rm -rf {shlex.quote(work)}", quiet=True, check=False)  # kept after a failure: its logs
    get_target(host, params).execute([sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(params.postgres.database),
        sql.Literal(f"{MARKER_RESTORE}: restored by hcbpg at {clock.utcnow()} ({run_label})"))])
    total = time.monotonic() - started
    analyze = next((float(p.rsplit(": ", 1)[1].rstrip("s")) for p in phases if p.startswith("ANALYZE of")), 0.0)
    dump = DumpResult(work, "stream", 0.0, 0, inv)
    return dump, RestoreResult(total, analyze, [], settings,
                               notes + fresh_actions + [f"streamed in {transfer_s:.1f}s"] + phases)
