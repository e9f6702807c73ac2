"""The streamed transfer (``source.transfer: stream``): schema, rows and indexes straight from the
source's exported snapshot into a fresh database, no dump files for the data.  What it runs on the
primary is rendered by :mod:`hcbpg.pg.stream` from the templates in ``scripts/``."""

from __future__ import annotations

import json
import os
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg import secrets as hsecrets
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.migration import (
    check_source_names,
    render_reload_and_wait,
    render_restore_settings,
    restore_part_path,
)
from hcbpg.errors import RemoteCommandError
from hcbpg.ops.migration.database import get_fresh_database_plan
from hcbpg.ops.migration.dump import SERVICE_FILE, DumpResult, run_prepare_dump_dir
from hcbpg.ops.migration.restore import RestoreResult
from hcbpg.ops.migration.settings import ensure_restore_settings, ensure_restore_settings_removed, get_server_state
from hcbpg.ops.migration.source import get_target
from hcbpg.ops.progress import get_source_sizes, run_restore_watcher
from hcbpg.pg.dump import plan_prerequisites
from hcbpg.pg.inventory import Inventory
from hcbpg.pg.psql_output import JSON_MARK, parse_marked_json
from hcbpg.pg.restore import (
    MARKER_RESTORE,
    plan_restore_settings,
    prerequisite_statements,
    render_prepare_sql,
    restore_jobs,
)
from hcbpg.pg.stream import (
    SPLIT_AWK,
    parse_stream_times,
    render_bundle,
    render_counts_select,
    render_stream_scripts,
    render_stream_session,
)

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params


_FILE_MARK = "----- hcbpg file "


def get_files(host: "HostLike", directory: str, names: Sequence[str]) -> dict[str, str]:
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
                                            wal_minimal=src.restore_wal_minimal)
    schemas, exts = plan_prerequisites(facts)
    work = run_prepare_dump_dir(host, params, tag)
    ensure_dir(host, work, mode=0o700, owner="postgres")
    started = time.monotonic()
    # nothing changes yet: the safety checks (SafetyCheckFailed) and the statements
    fresh, fresh_actions = get_fresh_database_plan(host, params, facts, run_label=run_label, server_state=state)
    # settings that need a restart (wal_level) come and go from here; the others by a reload in the script
    # (while the schema is dumped) and are removed as soon as the load is done
    restart = "wal_level" in settings
    main, worker = render_stream_scripts(params, work, schemas, service_file=SERVICE_FILE,
                                         reload_and_wait=render_reload_and_wait(params),
                                         counts_select=render_counts_select(params, JSON_MARK),
                                         prepare=render_prepare_sql(params, fresh,
                                                                    prerequisite_statements(params, schemas, exts)),
                                         reload_settings=not restart,
                                         remove_part=None if restart else restore_part_path(params))
    files = {f"{work}/stream.sh": ("0700", main), f"{work}/work.sh": ("0700", worker),
             f"{work}/split.awk": ("0600", SPLIT_AWK)}
    # the source's table sizes, for the progress's percentages only: read meanwhile, off the critical path
    # (the watcher reads the dict at each look; until then it shows what was done, without a percentage)
    sizes: dict[str, tuple[int, int | None]] = {}
    sizer = threading.Thread(target=lambda: sizes.update(get_source_sizes(source)), name="hcbpg-sizes", daemon=True)
    sizer.start()
    try:
        if restart:
            ensure_restore_settings(host, params, settings)
        else:  # the script reloads them
            host.put_text(restore_part_path(params), render_restore_settings(settings, server=host.name),
                          mode=0o644, owner="postgres")
        host.put_text(f"{work}/files.sh", render_bundle(files), mode=0o700, owner="postgres")  # one upload
        with run_restore_watcher(host, params, sizes=sizes):  # progress of the rows and indexes, as they go
            source.script(render_stream_session(params, work),
                                display=f"stream {source.label} into {params.postgres.database} "
                                        f"({'; '.join(fresh_actions[:1])}; restore-time settings): schema, then "
                                        f"{src.jobs} tables at a time in one exported snapshot (rows, then "
                                        "that table's indexes and keys, ANALYZE), then foreign keys and the rest; "
                                        "then inventory and row counts in that snapshot",
                                timeout=24 * 3600)
        out = get_files(host, work, ["refused-names.json", "stream.exit", "stream.log", "times", "tables",
                                      "counts.out"])
        # read in the copy's own snapshot: a table created after the plan's check is refused here
        check_source_names({"control_char_names": json.loads(out["refused-names.json"] or "[]")})
        status, log = out["stream.exit"].strip(), out["stream.log"]
        if status != "0":
            raise RemoteCommandError(host.name, f"streamed transfer from {source.label}",
                                     int(status) if status.isdigit() else None, hsecrets.scrub(log)[-3000:],
                                     hint="The database is half restored; run the step again (it starts over).")
        inv = Inventory.from_json(parse_marked_json(out["counts.out"]))
        phases = parse_stream_times(log + out["times"], out["tables"])
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
