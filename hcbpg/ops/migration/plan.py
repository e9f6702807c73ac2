"""The plan of the move as 06 and 07 show it (:func:`get_migration_plan`, read-only) and the result of the
move (:class:`MigrationResult`); the move itself, timed per phase, is composed by the steps
(:func:`hcbpg.steps._migration.run_migration`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hcbpg.desired.migration import RESTORE_PART, check_source_names, render_restore_settings
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.migration.database import check_extensions_available, get_target_state
from hcbpg.ops.migration.dump import (
    SERVICE_FILE,
    DumpResult,
    check_disk_space,
)
from hcbpg.ops.migration.restore import RestoreResult
from hcbpg.ops.migration.settings import get_server_state
from hcbpg.ops.migration.source import get_source_facts
from hcbpg.ops.migration.verify import Verification
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import stream as pg_stream
from hcbpg.pg.conninfo import describe_source
from hcbpg.pg.dump import dump_path, plan_prerequisites, render_download, render_heroku_commands, render_pg_dump
from hcbpg.pg.restore import GIB, plan_recreate, plan_restore_settings, render_pg_restore, restore_jobs

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params


@dataclass
class Plan:
    outcomes: list[Outcome]
    checks: list[Check]
    facts: dict[str, Any]


def get_migration_plan(host: "HostLike", params: "Params", source: "SourceLike") -> Plan:
    """What the dump and restore will do, and their preconditions (read-only; outcomes say "would change").
    SafetyCheckFailed when PostgreSQL is not running on the primary (steps 02-04 first)."""
    src = params.source
    if src is None:
        raise ParamsError("params", ["source: required for the migration steps (method, url, ...)"])
    if not pg_cluster.get_cluster_running(host, params):
        raise SafetyCheckFailed(f"on {host.name}: PostgreSQL {params.postgres.version}/{params.postgres.cluster} "
                                "is not running", hint="Run steps 02-04 first (install, connections, app role).")
    with source:
        facts = get_source_facts(source)
    check_source_names(facts)  # the plan refuses too, before anything is planned on the target
    state = get_server_state(host, params)
    tstate = get_target_state(host, params)
    same = facts.get("postmaster_start") == state["postmaster_start"]
    why = plan_recreate(tstate, database=params.postgres.database, server=host.name,
                        allow_destructive=params.allow_destructive, same_server_as_source=same)
    schemas, exts = plan_prerequisites(facts)
    settings, notes = plan_restore_settings(mem_bytes=state["mem_bytes"], jobs=restore_jobs(params),
                                            archive_mode=state["archive_mode"],
                                            wal_senders_busy=int(state["senders"]),
                                            replication_slots=int(state["slots"]),
                                            wal_minimal=src.restore_wal_minimal)
    d = dump_path(params, "<run>")
    if src.method == "heroku":
        capture, url = render_heroku_commands(src.heroku_app or "?")
        dump_actions = [" ".join(capture) + "   (on this machine)", " ".join(url) + "   (on this machine)",
                        render_download(d + ".dump")[0] + "   (on the primary, URL on stdin)"]
    elif pg_stream.use_stream(params, facts):
        dump_actions = ["in one REPEATABLE READ session on the source: pg_export_snapshot(), pg_dump --schema-only "
                        "in that snapshot, then inventory and row counts in it (source.transfer: stream)"]
    else:
        dump_actions = ["in one REPEATABLE READ session on the source: pg_export_snapshot(), then "
                        + render_pg_dump(params, d, service_file=SERVICE_FILE)
                        + ", then inventory and row counts in that snapshot"]
    outcomes = [
        Outcome(f"dump of the source {describe_source(source.conn)} ({facts['size_bytes'] / GIB:.2f} GiB, "
                f"PostgreSQL {facts['version']})", True, True, actions=dump_actions),
        Outcome(f"database {params.postgres.database} on {host.name}", True, True,
                actions=why + [f"CREATE SCHEMA {s} AUTHORIZATION {params.postgres.app_role}" for s in schemas]
                + [f"CREATE EXTENSION {e['name']} WITH SCHEMA {e['schema']} (source has {e['version']})" for e in exts]
                + [f"ALTER DATABASE ... SET {s}" for s in facts.get("db_settings", [])]),
        Outcome(f"restore-time settings {RESTORE_PART} on {host.name}", True, True,
                diff=render_restore_settings(settings, server=host.name), actions=notes),
        Outcome(f"restore into {params.postgres.database}", True, True,
                actions=(pg_stream.plan_stream_actions(params) if pg_stream.use_stream(params, facts) else
                         [render_pg_restore(params, d, d + ".list", jobs=restore_jobs(params)), "vacuumdb --analyze-only"])
                + [f"remove {RESTORE_PART} (restart if wal_level changed)"]),
    ]
    checks = [Check("source reachable from the primary", "pass",
                    f"{describe_source(source.conn)}: {facts['encoding']}, collation {facts['collate']}", host.name),
              Check.of("source is PostgreSQL 15 or older than the primary's pg_dump",
                       int(facts["version"]) < 160000, f"server_version_num {facts['version']}", "source"),
              check_extensions_available(host, params, exts),
              check_disk_space(host, params, facts)]
    return Plan(outcomes, checks, facts)


@dataclass
class MigrationResult:
    dump: DumpResult
    restore: RestoreResult
    verification: Verification
    phases: dict[str, float]
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the notebook records (no secrets): phases, sizes, counts, checks."""
        v = self.verification
        return {"phases": self.phases, "dump_bytes": self.dump.bytes, "dump_format": self.dump.format,
                "analyze_s": round(self.restore.analyze_seconds, 3), "restore_settings": {
                    k: (v2 if not isinstance(v2, bool) else ("on" if v2 else "off"))
                    for k, v2 in self.restore.settings.items()},
                "tables": len(v.target.rows), "rows": sum(v.target.rows.values()),
                "objects": {r["what"]: r["target"] for r in v.table},
                "checks": {"pass": sum(c.status == "pass" for c in v.checks),
                           "warn": sum(c.status == "warn" for c in v.checks),
                           "fail": sum(c.status == "fail" for c in v.checks)}}
