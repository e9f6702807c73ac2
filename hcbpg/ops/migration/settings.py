"""Restore-time settings on the primary: the ``conf.d`` part written, brought into force (reload, or
restart when a setting needs it), removed again, and checked gone."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.base import Changes
from hcbpg.desired.migration import RESTORE_PART, render_reload_and_wait, render_restore_settings, restore_part_path
from hcbpg.errors import RemoteCommandError
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.patroni import run_cluster_restart
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.restore import GIB

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params

__all__ = ["RESTORE_PART", "check_restore_settings_gone", "ensure_restore_settings", "get_server_state",
           "ensure_restore_settings_removed"]


def _apply_config(host: "HostLike", params: "Params") -> None:
    """Reload (one round trip), then restart if a changed setting needs it (each shown, in the journal)."""
    res = host.run(render_reload_and_wait(params), sudo_user="postgres",
                   display=f"pg_ctlcluster {params.postgres.version} {params.postgres.cluster} reload, "
                           "wait until it is read", timeout=60,
                   hint="Look at the server log under /var/log/postgresql/.")
    pending = [n for n in res.stdout.strip().split(",") if n]
    if pending:
        run_cluster_restart(host, params)


def get_server_state(host: "HostLike", params: "Params") -> dict[str, Any]:
    """archive_mode, WAL senders and slots, the postmaster's start and the memory of the primary."""
    psql = pg_cluster.get_psql(host, params)
    row = psql.query("SELECT current_setting('archive_mode') AS archive_mode, "
                     "(SELECT count(*) FROM pg_stat_replication) AS senders, "
                     "(SELECT count(*) FROM pg_replication_slots) AS slots, "
                     "pg_postmaster_start_time()::text AS postmaster_start")[0]
    mem = host.probe("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout.strip()
    row["mem_bytes"] = int(mem or 0) * 1024 or 8 * GIB
    return row


def ensure_restore_settings(host: "HostLike", params: "Params", settings: Mapping[str, Any]) -> Outcome:
    """The restore-time part written and in force (reload; restart when a setting needs it, as wal_level)."""
    path = restore_part_path(params)
    desired = render_restore_settings(settings, server=host.name)
    seen = Changes(host)
    current = host.read_text(path)
    if current != desired:
        host.put_text(path, desired, mode=0o644, owner="postgres")
        try:
            _apply_config(host, params)
        except RemoteCommandError:
            # PostgreSQL did not take it: the part as it was, so that no later start reads what failed here
            if current is None:
                host.run(f"rm -f {shlex.quote(path)}")
            else:
                host.put_text(path, current, mode=0o644, owner="postgres")
            raise
    return seen.outcome(f"restore-time settings {RESTORE_PART} on {host.name}",
                        diff=unified_diff(current or "", desired, path))


def ensure_restore_settings_removed(host: "HostLike", params: "Params") -> Outcome:
    """The restore-time part removed and the normal settings back (restart when needed)."""
    path = restore_part_path(params)
    seen = Changes(host)
    current = host.read_text(path)
    if current is not None:
        host.run(f"rm -f {shlex.quote(path)}")
        _apply_config(host, params)
    return seen.outcome(f"restore-time settings {RESTORE_PART} on {host.name} removed",
                        diff=unified_diff(current or "", "", path))


def check_restore_settings_gone(host: "HostLike", params: "Params") -> Check:
    """The restore-time part is gone and its settings are back to safe values."""
    psql = pg_cluster.get_psql(host, params)
    path = restore_part_path(params)
    row = psql.query("SELECT current_setting('wal_level') AS wal_level, current_setting('fsync') AS fsync, "
                     "current_setting('full_page_writes') AS fpw, current_setting('autovacuum') AS autovacuum")[0]
    there = host.exists(path)
    ok = (not there and row["wal_level"] != "minimal" and row["fpw"] == "on"
          and row["autovacuum"] == "on" and row["fsync"] == "on")
    return Check.of("restore-time settings removed", ok,
                    f"wal_level {row['wal_level']}, full_page_writes {row['fpw']}, autovacuum {row['autovacuum']}"
                    + ("" if not there else f"; {path} still there"), host.name)
