"""Step 08 (notebook ``08_start_archiving``): archive_mode on, the first full backup (with the primary's
fingerprint just before it), the backup schedule and its dead-man's switch."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING

from hcbpg.desired import backups as desired_backups
from hcbpg.ops import drill, schedule
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.migration import bucardo
from hcbpg.ops.pgbackrest import check_archiving_started, get_backups  # noqa: F401 - the notebook's calls
from hcbpg.ops.schedule import ensure_schedules  # noqa: F401 - the notebook's call
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.pgbackrest import BackupRow
from hcbpg.steps.targets import hostlike, planning, server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run", server: "Server") -> "HostLike":
    """The host for *server*: a dry run records on it; a server not there yet is an AbsentHost."""
    return hostlike(rb, server.name, server_host(rb, server))


def start_archiving(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """archive_mode on (a restart of the primary). With the online transfer this step runs while Bucardo
    syncs: its daemon is stopped around the restart (it does not survive its database going away)."""
    if host.dry_run:
        return [pgb.ensure_archiving(host, params, server, archive_mode=True)]
    changes = pgb.ensure_archiving(planning(host), params, server, archive_mode=True).changed
    with ExitStack() as stack:
        if changes and bucardo.get_syncing(host, params):
            stack.enter_context(bucardo.run_paused(host, params, "the restart that turns archiving on"))
        return [pgb.ensure_archiving(host, params, server, archive_mode=True)]


def ensure_baseline_backup(host: "HostLike", params: "Params"
                           ) -> tuple[Outcome, BackupRow | None, dict[str, object] | None]:
    """The first full backup, the primary's fingerprint just before it (for the drill, step 12).

    With the online transfer this step runs while Bucardo syncs the source into the primary: its
    daemon is stopped from the fingerprint to the backup's end, so the backup holds exactly what the
    fingerprint describes (a second run takes no backup and stops nothing)."""
    if host.dry_run or not bucardo.get_syncing(host, params):
        return drill.ensure_baseline_backup(host, params)
    with ExitStack() as stack:
        return drill.ensure_baseline_backup(host, params, quiesce=lambda: stack.enter_context(
            bucardo.run_paused(host, params, "the fingerprint and the first full backup")))


def get_plan(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """The three parts of the step, planned on a fresh recording of *host*: archiving, the first full
    backup, the schedule."""
    plan_host = planning(host)
    plan = [pgb.ensure_archiving(plan_host, params, server, archive_mode=True)]
    backup = drill.ensure_baseline_backup(plan_host, params)[0]
    if bucardo.get_syncing(plan_host, params) and any(o.changed for o in [*plan, backup]):
        plan.append(Outcome(f"Bucardo on {host.name} stopped around the restart, and from the fingerprint to the "
                            "backup's end; started after each (the online transfer syncs meanwhile)", True, True,
                            actions=["bucardo stop", "bucardo start"]))
    plan.append(backup)
    plan += schedule.ensure_schedules(plan_host, params, server)
    return plan


def check_backups(host: "HostLike", params: "Params", server: "Server", backups: Sequence[BackupRow]) -> list[Check]:
    """A good full backup exists, its files are in the bucket, the schedule is installed."""
    files = pgb.get_repo_files(host, params)
    return (desired_backups.check_backups(backups, server) + desired_backups.check_repo_objects(files, backups, server)
            + schedule.check_backup_schedule(host, params, server))
