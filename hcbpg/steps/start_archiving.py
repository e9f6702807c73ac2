"""Step 08 (notebook ``08_start_archiving``): archive_mode on, the first full backup (with the primary's
fingerprint just before it), the backup schedule and its dead-man's switch."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

from hcbpg.ops import drill, schedule
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.migration import online
from hcbpg.ops.pgbackrest import check_archiving_started, get_backups  # noqa: F401 - the notebook's calls
from hcbpg.ops.schedule import ensure_schedules  # noqa: F401 - the notebook's call
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run", server: "Server") -> "Host | None":
    """An open Host for *server* (None in a dry run when it is not there yet)."""
    return server_host(rb, server)


def start_archiving(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> list[Outcome]:
    """archive_mode on (a restart of the primary). With the online transfer this step runs while Bucardo
    syncs: its daemon is stopped around the restart (it does not survive its database going away)."""
    if dry_run:
        return pgb.start_archiving(host, params, server, dry_run=True)
    changes = any(o.changed for o in pgb.start_archiving(host, params, server, dry_run=True))
    with online.paused_if_syncing(host, params, "the restart that turns archiving on", changes=changes):
        return pgb.start_archiving(host, params, server, dry_run=False)


def ensure_baseline_backup(host: "Host | None", params: "Params", *, dry_run: bool
                           ) -> tuple[Outcome, "pgb.BackupRow | None", dict[str, object] | None]:
    """The first full backup, the primary's fingerprint just before it (for the drill, step 12).

    With the online transfer this step runs while Bucardo syncs the source into the primary: its
    daemon is stopped from the fingerprint to the backup's end, so the backup holds exactly what the
    fingerprint describes (a second run takes no backup and stops nothing)."""
    if dry_run or host is None or not online.is_syncing(host, params):
        return drill.ensure_baseline_backup(host, params, dry_run=dry_run)
    with ExitStack() as stack:
        return drill.ensure_baseline_backup(host, params, dry_run=False, quiesce=lambda: stack.enter_context(
            online.paused(host, params, "the fingerprint and the first full backup")))


def get_plan(host: "Host | None", params: "Params", server: "Server") -> list[Outcome]:
    """The three parts of the step, planned: archiving, the first full backup, the schedule."""
    plan = pgb.start_archiving(host, params, server, dry_run=True)
    backup = drill.ensure_baseline_backup(host, params, dry_run=True)[0]
    if host is not None and online.is_syncing(host, params) and any(o.changed for o in [*plan, backup]):
        plan.append(Outcome(f"Bucardo on {host.name} stopped around the restart, and from the fingerprint to the "
                            "backup's end; started after each (the online transfer syncs meanwhile)", True, True,
                            actions=["bucardo stop", "bucardo start"]))
    plan.append(backup)
    plan += schedule.ensure_schedules(host, params, server, dry_run=True)
    return plan


def check_backups(host: "Host", params: "Params", server: "Server", backups: Sequence[pgb.BackupRow]) -> list[Check]:
    """A good full backup exists, its files are in the bucket, the schedule is installed."""
    files = pgb.get_repo_files(host, params)
    return (pgb.check_backups(backups, server) + pgb.check_repo_objects(files, backups, server)
            + schedule.check_backup_schedule(host, params, server))
