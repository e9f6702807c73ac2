"""The restore of a dump: fresh database, restore-time settings, extensions, ``pg_restore -j N``
of the filtered list, ANALYZE, settings back."""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg.ops.migration.database import ensure_prerequisites, run_fresh_database
from hcbpg.ops.migration.dump import DumpResult
from hcbpg.ops.migration.settings import ensure_restore_settings, ensure_restore_settings_removed, get_server_state
from hcbpg.ops.migration.source import get_target
from hcbpg.ops.progress import run_restore_watcher
from hcbpg.pg.dump import filter_toc, plan_prerequisites
from hcbpg.pg.restore import MARKER_RESTORE, plan_restore_settings, render_pg_restore, restore_jobs

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


@dataclass
class RestoreResult:
    seconds: float
    analyze_seconds: float
    skipped_toc: list[str]
    settings: dict[str, Any]
    notes: list[str]


def run_restore(host: "HostLike", params: "Params", dump: DumpResult, facts: Mapping[str, Any], *,
                run_label: str = "", sizes: Mapping[str, tuple[int, int | None]] | None = None) -> RestoreResult:
    """Fresh database, restore-time settings, extensions, pg_restore -j N, ANALYZE, settings back.

    While pg_restore runs, its COPYs and index builds are reported as they go (against the
    source's table *sizes* when given: :func:`hcbpg.ops.progress.get_source_sizes`)."""
    src = params.source
    assert src is not None
    state = get_server_state(host, params)
    settings, notes = plan_restore_settings(mem_bytes=state["mem_bytes"], jobs=restore_jobs(params),
                                            archive_mode=state["archive_mode"],
                                            wal_senders_busy=int(state["senders"]),
                                            replication_slots=int(state["slots"]),
                                            wal_minimal=src.restore_wal_minimal)
    started = time.monotonic()
    toc = host.run(f"pg_restore -l {shlex.quote(dump.path)}", sudo_user="postgres", quiet=True).stdout
    schemas, exts = plan_prerequisites(facts, toc=toc)
    listed, skipped = filter_toc(toc, precreated_schemas=schemas)
    list_file = f"{dump.path}.list"
    run_fresh_database(host, params, facts, run_label=run_label, server_state=state)
    try:
        ensure_restore_settings(host, params, settings)
        ensure_prerequisites(host, params, schemas, exts)
        host.put_text(list_file, listed, mode=0o600, owner="postgres")
        with run_restore_watcher(host, params, sizes=sizes or {}):  # progress of the rows and indexes, as they go
            host.run(render_pg_restore(params, dump.path, list_file, jobs=restore_jobs(params)), sudo_user="postgres",
                     timeout=24 * 3600, hint="The database is half restored; run the step again (it starts over).")
        t = time.monotonic()
        pg = params.postgres
        host.run(f"vacuumdb --cluster {pg.version}/{shlex.quote(pg.cluster)} --analyze-only -j {src.jobs} "
                 f"-d {shlex.quote(pg.database)} -q", sudo_user="postgres", timeout=24 * 3600)
        analyze = time.monotonic() - t
    finally:
        ensure_restore_settings_removed(host, params)
    get_target(host, params).execute([sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(params.postgres.database),
        sql.Literal(f"{MARKER_RESTORE}: restored by hcbpg at {clock.utcnow()} ({run_label})"))])
    return RestoreResult(time.monotonic() - started, analyze, skipped, settings, notes)
