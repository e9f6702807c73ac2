"""What a restore needs, decided without I/O: the restore-time settings and why, when the target
database may be dropped, and the statements that create it and its prerequisites."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.errors import SafetyCheckFailed
from hcbpg.pg.compose import render

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: COMMENT ON DATABASE written by hcbpg: a restore target may be dropped and restored again
MARKER_RESTORE = "hcbpg restore target"
#: ... and once traffic runs on it, it is live: never dropped without allow_destructive
MARKER_LIVE = "hcbpg live database"
GIB = 1024 ** 3


def plan_restore_settings(*, mem_bytes: int, jobs: int, archive_mode: str, wal_senders_busy: int,
                          replication_slots: int, wal_minimal: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Settings for the restore, and why each (or why a fast one is left out).

    All of them take effect on a reload.  ``wal_level = minimal`` (*wal_minimal*) lets COPY into a
    table created in the same transaction and the index builds skip WAL (pg_restore -j truncates
    before COPY in the same transaction for exactly this), but it needs ``max_wal_senders = 0``
    and a restart before and after the restore, and it cannot be used once archiving is on or a
    replica or slot exists: the backup chain would break.  Measured on the lab's 2 cores with a
    1 GB database, the two restarts cost more than the WAL it saves, so it is opt-in.
    """
    mwm = max(64 * 1024 ** 2, min(2 * GIB, mem_bytes // (4 * max(jobs, 1))))
    settings: dict[str, Any] = {
        "maintenance_work_mem": f"{mwm // 1024 ** 2}MB",
        "max_wal_size": "16GB",
        "checkpoint_timeout": "1h",
        "synchronous_commit": False,
        "autovacuum": False,
    }
    notes = [f"maintenance_work_mem {mwm // 1024 ** 2}MB: each of the {jobs} restore jobs builds indexes "
             "and foreign keys with this much memory (a quarter of RAM shared by the jobs, at most 2GB)",
             "max_wal_size 16GB, checkpoint_timeout 1h: no checkpoint in the middle of the load",
             "synchronous_commit off: a crash loses the last commits of a restore we would redo anyway",
             "autovacuum off: it would compete with the load; ANALYZE runs right after the restore"]
    busy = archive_mode in ("on", "always") or wal_senders_busy or replication_slots
    if busy:
        notes.append("WAL stays complete (full_page_writes on, wal_level as it is): archiving, a replica or a "
                     "replication slot is already there")
        return settings, notes
    settings["full_page_writes"] = False
    notes.append("full_page_writes off: nothing is archived or replicated yet, and a crash during the restore "
                 "means restoring again anyway")
    if wal_minimal:
        settings.update({"wal_level": "minimal", "max_wal_senders": 0})
        notes.append("wal_level minimal (max_wal_senders 0): tables and indexes created by the restore are "
                     "written without WAL and synced at commit; costs a restart before and after")
    else:
        notes.append("wal_level stays replica: wal_level minimal would skip the WAL of the load but needs a "
                     "restart before and after, which cost more than it saved in the lab "
                     "(set source.restore_wal_minimal: true for a large database on slow disks)")
    return settings, notes


@dataclass
class TargetState:
    exists: bool
    comment: str | None = None
    owner: str | None = None
    other_sessions: list[dict[str, Any]] = field(default_factory=list)
    user_tables: int = 0


def plan_recreate(state: TargetState, *, database: str, server: str, allow_destructive: bool,
                  same_server_as_source: bool) -> list[str]:
    """Why dropping the target is allowed (actions), or SafetyCheckFailed saying what to do."""
    if same_server_as_source:
        raise SafetyCheckFailed(
            f"on {server}: the source URL leads to this very server; refusing to drop {database}",
            hint="source.url must point at the old database (Heroku), not at the new primary.")
    if not state.exists:
        return [f"create database {database}"]
    if state.other_sessions:
        who = ", ".join(f"pid {s['pid']} {s['usename']}@{s['client'] or 'socket'} ({s['application_name'] or '-'})"
                        for s in state.other_sessions[:5])
        raise SafetyCheckFailed(
            f"on {server}: {len(state.other_sessions)} client(s) are connected to {database} ({who}); "
            "refusing to drop it",
            hint="If the app already runs on this database, the migration is over: do not restore again. "
                 "Otherwise disconnect them (pg_terminate_backend) and run the step again.")
    comment = state.comment or ""
    if comment.startswith(MARKER_LIVE) and not allow_destructive:
        raise SafetyCheckFailed(
            f"on {server}: {database} is the live database ({comment}); refusing to drop it",
            hint="Set allow_destructive: true in params only if you really mean to replace production.")
    if allow_destructive:
        why = "allow_destructive is true in params"
    elif comment.startswith(MARKER_RESTORE):
        why = "it is an earlier hcbpg restore target"
    elif state.user_tables == 0:
        why = "it has no tables (as step 04 created it)"
    else:
        raise SafetyCheckFailed(
            f"on {server}: {database} has {state.user_tables} table(s) and is not an hcbpg restore target; "
            "refusing to drop it",
            hint="If this database may go, set allow_destructive: true in params for this run; otherwise "
                 "point postgres.database at another name.")
    return [f"drop database {database} ({why})", f"create database {database}"]


def render_db_setting(database: str, setting: str) -> sql.Composable:
    """``ALTER DATABASE ... SET`` for one ``name=value`` of pg_db_role_setting (search_path as identifiers)."""
    name, _, value = setting.partition("=")
    db = sql.Identifier(database)
    if name == "search_path":
        items = [v.strip() for v in value.split(",") if v.strip()]
        names = [v[1:-1].replace('""', '"') if v.startswith('"') and v.endswith('"') else v for v in items]
        return sql.SQL("ALTER DATABASE {} SET search_path = {}").format(
            db, sql.SQL(", ").join(sql.Identifier(n) for n in names))
    return sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, sql.Identifier(name), sql.Literal(value))


def plan_create_statements(params: "Params", facts: Mapping[str, Any], *, locale_ok: bool,
                           run_label: str) -> list[sql.Composable]:
    """CREATE DATABASE (the source's encoding and, when the server has it, its locale), marker, settings."""
    pg = params.postgres
    db, owner = sql.Identifier(pg.database), sql.Identifier(pg.app_role)
    create = sql.SQL("CREATE DATABASE {} WITH OWNER {} ENCODING {} TEMPLATE template0").format(
        db, owner, sql.Literal(facts.get("encoding") or "UTF8"))
    if locale_ok and facts.get("collate"):
        create += sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(facts["collate"]),
                                                             sql.Literal(facts.get("ctype") or facts["collate"]))
    out: list[sql.Composable] = [create, sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        db, sql.Literal(f"{MARKER_RESTORE}: restore in progress ({run_label})"))]
    for setting in facts.get("db_settings", []):
        out.append(render_db_setting(pg.database, setting))
    return out


def prerequisite_statements(params: "Params", schemas: Sequence[str],
                            extensions: Sequence[Mapping[str, str]]) -> list[sql.Composable]:
    role = sql.Identifier(params.postgres.app_role)
    st: list[sql.Composable] = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
        sql.Identifier(s), role) for s in schemas]
    st += [sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
        sql.Identifier(e["name"]), sql.Identifier(e["schema"])) for e in extensions]
    return st


def render_prepare_sql(params: "Params", database_statements: Sequence["sql.Composable | str"],
                       object_statements: Sequence["sql.Composable | str"]) -> str:
    """One psql script (run against ``postgres``): the fresh database, then in it the schemas and extensions."""
    db = params.postgres.database
    lines = ["\\set ON_ERROR_STOP 1"]
    lines += [render(st).strip().rstrip(";") + ";" for st in database_statements]
    lines.append("\\connect '" + db.replace("'", "''") + "'")
    lines += [render(st).strip().rstrip(";") + ";" for st in object_statements]
    return "\n".join(lines) + "\n"


def restore_jobs(params: "Params") -> int:
    """pg_restore's jobs: ``source.restore_jobs`` when set, else twice ``source.jobs``.

    After the data, the restore mixes CPU-bound index builds with foreign-key checks that
    read and wait for locks; more jobs than cores keeps the cores busy while one job waits.
    On the lab's 1 GB source, 2 and 4 jobs measured the same: there the chain of the largest
    table (COPY, primary key, GIN index, then the foreign keys that lock it) is the critical path.
    """
    src = params.source
    assert src is not None
    return src.restore_jobs or 2 * src.jobs


def render_pg_restore(params: "Params", dump: str, list_file: str, *, jobs: int) -> str:
    pg = params.postgres
    return (f"pg_restore --cluster {pg.version}/{shlex.quote(pg.cluster)} -j {jobs} --no-owner --no-acl "
            f"--role={shlex.quote(pg.app_role)} --exit-on-error -L {shlex.quote(list_file)} "
            f"-d {shlex.quote(pg.database)} {shlex.quote(dump)}")
