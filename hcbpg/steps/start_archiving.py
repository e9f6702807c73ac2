"""Step 08 (notebook ``08_start_archiving``): archive_mode on, the first full backup (with the primary's
fingerprint just before it), the backup schedule and its dead-man's switch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.ops import drill, schedule
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.drill import ensure_baseline_backup  # noqa: F401 - the notebook's call
from hcbpg.ops.pgbackrest import check_archiving_started, get_backups, start_archiving  # noqa: F401 - the notebook's calls
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


def get_plan(host: "Host | None", params: "Params", server: "Server") -> list[Outcome]:
    """The three parts of the step, planned: archiving, the first full backup, the schedule."""
    plan = pgb.start_archiving(host, params, server, dry_run=True)
    plan += [drill.ensure_baseline_backup(host, params, dry_run=True)[0]]
    plan += schedule.ensure_schedules(host, params, server, dry_run=True)
    return plan


def check_backups(host: "Host", params: "Params", server: "Server", backups: Sequence[pgb.BackupRow]) -> list[Check]:
    """A good full backup exists, its files are in the bucket, the schedule is installed."""
    files = pgb.get_repo_files(host, params)
    return (pgb.check_backups(backups, server) + pgb.check_repo_objects(files, backups, server)
            + schedule.check_backup_schedule(host, params, server))
