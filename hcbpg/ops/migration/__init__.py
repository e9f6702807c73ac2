"""The move of the database from the source (Heroku) into the primary: dump, restore, verify, cut over.

Everything runs on the primary itself: ``pg_dump`` pulls from the source over the network
(no laptop hop, no copy), ``pg_restore`` loads over the Unix socket as ``postgres`` and
``SET ROLE rails`` so that every object is owned by the app role.  The source URL never
reaches a command line or an output: it becomes a 0600 libpq service file on the
primary (in ``/run``, a tmpfs) that is removed when the step ends.

A run is: :func:`get_migration_plan` (read-only, the dry run shows it) → the transfer →
:func:`check_restore` (object inventory, per-table row counts, sequences, the app host's
read/write and the sentinel).  For method ``pg_dump`` the transfer is :func:`run_stream` by
default (``source.transfer: stream``): one source session exports a snapshot; in it the schema
is dumped, each table's rows are piped into a fresh database and that table's indexes and keys
built right after them, then the foreign keys are checked; the inventory and every table's row
count are taken in the same snapshot.  ``source.transfer: directory`` (and method ``heroku``)
is :func:`run_dump` (``pg_dump -Fd -j N`` of that snapshot, counts in it) then
:func:`run_restore` (fresh database, extensions first, ``pg_restore -j N`` with restore-time
settings).  The cutover adds :func:`wait_for_source_quiet`,
:func:`run_sentinel_write` and :func:`run_rotate_password`; starting traffic adds
:func:`~hcbpg.desired.migration.render_app_urls` and :func:`~hcbpg.desired.migration.compute_downtime`.

The modules, one concern each (pure PostgreSQL knowledge is in :mod:`hcbpg.pg`: ``conninfo``,
``inventory``, ``dump``, ``restore``, ``stream``):

    source      the source (service file) and target psql endpoints, the source's facts and sessions
    settings    restore-time settings on the primary
    database    the target database: state, fresh, prerequisites, marked live
    dump        pg_dump -Fd in an exported snapshot; a Heroku backup
    restore     pg_restore -j N of a dump
    stream      the streamed transfer (its shell and awk are templates in ``scripts/``)
    templates   the renderer of the templates in scripts/ (shell, awk, psql sessions)
    verify      inventories compared, ownership, settings gone
    app_checks  checks from the app host (sentinel, passwords, DATABASE_URL)
    cutover     the source quiet, the sentinel write, the password roll
    plan        get_migration_plan (what 06 and 07 will do) and the result of the move
    bucardo     source.transfer: online: Bucardo on the primary (packages, control database, the forward
                sync, the daemon, lag, drift guard); its service file in ``bucardo_service``
    window      the online transfer's window (drain, sequences, keyless copies, snapshots held for 09b)
    wayback     the way back (armed in 06b, run from 09b) and the clean-up (16)
                (these three are not re-exported: :mod:`hcbpg.steps.online` composes them)

Pure parts (paths, the restore-time settings file, the app's URLs, the downtime, the rollback texts)
are in :mod:`hcbpg.desired.migration`.

This package re-exports the names its callers use; steps that take the runbook are in
:mod:`hcbpg.steps` (``dry_run_restore``, ``cutover``, ``start_traffic``, ``_migration``).
"""

from __future__ import annotations

from hcbpg.adapters.psql import PsqlEndpoint, render
from hcbpg.desired.migration import (
                                            RESTORE_PART,
                                            ROLLBACK,
                                            ROLLBACK_WAY_BACK,
                                            check_source_quiet,
                                            compute_downtime,
                                            dry_run_sentinel,
                                            handoff_path,
                                            parse_app_output,
                                            plan_without_primary,
                                            release_urls_path,
                                            render_database_url,
                                            render_env_file,
                                            render_reload_and_wait,
                                            render_restore_settings,
                                            restore_part_path,
                                            sentinel_value,
)
from hcbpg.errors import WaitTimeout
from hcbpg.ops.migration.app_checks import check_from_app, check_passwords, check_url_from_app, run_app_psql
from hcbpg.ops.migration.cutover import run_rotate_password, run_sentinel_write, wait_for_source_quiet
from hcbpg.ops.migration.database import (
                                            check_extensions_available,
                                            ensure_prerequisites,
                                            get_fresh_database_plan,
                                            get_live_marker,
                                            get_target_state,
                                            run_fresh_database,
                                            run_mark_live,
                                            run_statements,
)
from hcbpg.ops.migration.dump import (
                                            DumpResult,
                                            check_disk_space,
                                            ensure_dump_removed,
                                            run_dump,
                                            run_heroku_dump,
                                            run_prepare_dump_dir,
)
from hcbpg.ops.migration.plan import (
                                            MigrationResult,
                                            Plan,
                                            get_migration_plan,
)
from hcbpg.ops.migration.restore import RestoreResult, run_restore
from hcbpg.ops.migration.settings import (
                                            check_restore_settings_gone,
                                            ensure_restore_settings,
                                            ensure_restore_settings_removed,
                                            get_server_state,
)
from hcbpg.ops.migration.source import (
                                            SECRET_DIR,
                                            SOURCE_CA_PATH,
                                            Source,
                                            ensure_source_ca,
                                            get_source_ca,
                                            get_source_facts,
                                            get_source_sessions,
                                            get_target,
)
from hcbpg.ops.migration.stream import get_files, run_stream
from hcbpg.ops.migration.verify import Verification, check_restore, check_table_owners, get_inventory
from hcbpg.pg.conninfo import (
                                            APPLICATION_NAME,
                                            SERVICE_NAME,
                                            describe_source,
                                            parse_source_url,
                                            redact_url,
                                            render_service_file,
)
from hcbpg.pg.dump import (
                                            dump_path,
                                            filter_toc,
                                            plan_prerequisites,
                                            render_download,
                                            render_dump_session,
                                            render_heroku_commands,
                                            render_pg_dump,
                                            render_toc_filter,
)
from hcbpg.pg.inventory import (
                                            COUNTS_SQL,
                                            IGNORED,
                                            INVENTORY_SQL,
                                            KIND_LABELS,
                                            SOURCE_FACTS_SQL,
                                            Inventory,
                                            compare_objects,
                                            compare_rows,
                                            comparison_table,
                                            newest_event_sql,
)
from hcbpg.pg.psql_output import parse_marked_json
from hcbpg.pg.restore import (
                                            GIB,
                                            MARKER_LIVE,
                                            MARKER_RESTORE,
                                            TargetState,
                                            plan_create_statements,
                                            plan_recreate,
                                            plan_restore_settings,
                                            prerequisite_statements,
                                            render_db_setting,
                                            render_pg_restore,
                                            render_prepare_sql,
                                            restore_jobs,
)
from hcbpg.pg.stream import (
                                            BUILDS_SQL,
                                            SPLIT_AWK,
                                            TABLES_SQL,
                                            parse_stream_times,
                                            plan_stream_actions,
                                            render_bundle,
                                            render_counts_select,
                                            render_stream_scripts,
                                            render_stream_session,
                                            transfer_method,
                                            use_stream,
)

__all__ = [
    "APPLICATION_NAME", "BUILDS_SQL", "COUNTS_SQL", "DumpResult", "GIB", "IGNORED", "INVENTORY_SQL",
    "Inventory", "KIND_LABELS", "MARKER_LIVE", "MARKER_RESTORE", "MigrationResult", "Plan",
    "PsqlEndpoint", "RESTORE_PART", "ROLLBACK", "ROLLBACK_WAY_BACK", "RestoreResult", "SECRET_DIR", "SERVICE_NAME",
    "SOURCE_FACTS_SQL",
    "SPLIT_AWK", "Source", "TABLES_SQL", "TargetState", "Verification", "WaitTimeout", "run_app_psql",
    "check_disk_space", "check_extensions_available", "check_from_app", "check_passwords",
    "check_restore_settings_gone", "check_source_quiet", "check_table_owners", "check_url_from_app",
    "compare_objects", "compare_rows", "comparison_table", "compute_downtime", "describe_source",
    "dry_run_sentinel", "dump_path", "run_fresh_database", "ensure_prerequisites", "ensure_restore_settings",
    "filter_toc", "get_inventory", "get_server_state", "get_source_facts", "get_source_sessions",
    "get_target_state", "handoff_path", "get_live_marker", "run_mark_live", "newest_event_sql", "parse_app_output",
    "parse_marked_json", "parse_source_url", "plan_create_statements", "get_fresh_database_plan", "get_migration_plan",
    "plan_prerequisites", "plan_recreate", "plan_restore_settings", "plan_without_primary", "run_prepare_dump_dir",
    "prerequisite_statements", "get_files", "redact_url", "ensure_dump_removed", "ensure_restore_settings_removed", "render",
    "SOURCE_CA_PATH", "ensure_source_ca", "get_source_ca",
    "render_bundle", "render_counts_select", "render_database_url", "render_db_setting", "render_download", "render_dump_session",
    "render_env_file", "render_heroku_commands", "render_pg_dump", "render_pg_restore",
    "render_prepare_sql", "render_reload_and_wait", "render_restore_settings", "render_service_file",
    "render_stream_scripts", "render_stream_session", "render_toc_filter", "restore_jobs", "restore_part_path",
    "run_dump", "run_heroku_dump", "run_restore", "run_rotate_password", "run_sentinel_write",
    "run_statements", "run_stream", "sentinel_value",
    "plan_stream_actions", "parse_stream_times", "get_target", "transfer_method", "use_stream", "check_restore",
    "wait_for_source_quiet", "release_urls_path",
]
