"""Restore-time settings on the primary: the ``conf.d`` part written, brought into force (reload, or
restart when a setting needs it), removed again, and checked gone."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.desired import server as desired_server
from hcbpg.ops import cluster as pg_cluster
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg import conf as pgconf
from hcbpg.pg.restore import GIB

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params

#: the conf.d part that holds the restore-time settings; read last, removed after the restore
RESTORE_PART = "90-hcbpg-restore.conf"


def render_restore_settings(settings: Mapping[str, Any], *, server: str) -> str:
    lines = [pgconf.MANAGED_HEADER,
             f"# {server}: restore-time settings (06/07 migration). Removed when the restore ends;",
             "# if you find this file after a crash, delete it and reload PostgreSQL (restart if it sets wal_level).", ""]
    lines += [f"{k} = {pgconf.quote_setting(settings[k])}" for k in sorted(settings)]
    return "\n".join(lines) + "\n"


def restore_part_path(params: "Params") -> str:
    return f"{desired_server.config_dir(params)}/conf.d/{RESTORE_PART}"


def render_reload_and_wait(params: "Params", *, timeout_s: int = 30) -> str:
    """One command (as postgres): reload, wait until the postmaster has read the files
    (``pg_conf_load_time`` moves), then print the settings that need a restart (comma-separated)."""
    pg = params.postgres
    q = f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -X -q -A -t -d postgres -c"
    loaded = f"$({q} 'SELECT pg_conf_load_time()')"
    return (f'before="{loaded}" && pg_ctlcluster {pg.version} {shlex.quote(pg.cluster)} reload && '
            f'for i in $(seq {timeout_s * 10}); do [ "{loaded}" != "$before" ] && break; sleep 0.1; done && '
            f'if [ "{loaded}" = "$before" ]; then echo "the config reload was not picked up within {timeout_s}s" >&2; '
            f"exit 1; fi && {q} \"SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM pg_settings "
            'WHERE pending_restart"')


def _apply_config(host: "Host", params: "Params") -> list[str]:
    """Reload (one round trip), then restart if a changed setting needs it; returns what was done."""
    res = host.run(render_reload_and_wait(params), sudo_user="postgres",
                   display=f"pg_ctlcluster {params.postgres.version} {params.postgres.cluster} reload, "
                           "wait until it is read", timeout=60,
                   hint="Look at the server log under /var/log/postgresql/.")
    pending = [n for n in res.stdout.strip().split(",") if n]
    if pending:
        pg_cluster.restart(host, params)
        return [f"restart ({', '.join(pending)})"]
    return ["reload"]


def get_server_state(host: "Host", params: "Params") -> dict[str, Any]:
    psql = pg_cluster.psql_for(host, params)
    row = psql.query("SELECT current_setting('archive_mode') AS archive_mode, "
                     "(SELECT count(*) FROM pg_stat_replication) AS senders, "
                     "(SELECT count(*) FROM pg_replication_slots) AS slots, "
                     "pg_postmaster_start_time()::text AS postmaster_start")[0]
    mem = host.probe("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout.strip()
    row["mem_bytes"] = int(mem or 0) * 1024 or 8 * GIB
    return row


def ensure_restore_settings(host: "Host", params: "Params", settings: Mapping[str, Any], *,
                            dry_run: bool) -> Outcome:
    """Write the restore-time part and bring it into force (restart when wal_level changes)."""
    path = restore_part_path(params)
    desired = render_restore_settings(settings, server=host.name)
    current = host.read_text(path)
    what = f"restore-time settings {RESTORE_PART} on {host.name}"
    if current == desired:
        return Outcome(what, False, dry_run)
    actions = [f"write {path}", "reload, restart if wal_level changes"]
    if not dry_run:
        host.put_text(path, desired, mode=0o644, owner="postgres")
        actions = [f"write {path}"] + _apply_config(host, params)
    return Outcome(what, True, dry_run, diff=unified_diff(current or "", desired, path), actions=actions)


def remove_restore_settings(host: "Host", params: "Params", *, dry_run: bool) -> Outcome:
    """Remove the restore-time part and bring the normal settings back (restart when needed)."""
    path = restore_part_path(params)
    what = f"restore-time settings {RESTORE_PART} on {host.name} removed"
    current = host.read_text(path)
    if current is None:
        return Outcome(what, False, dry_run)
    actions = [f"remove {path}"]
    if not dry_run:
        host.run(f"rm -f {shlex.quote(path)}")
        actions += _apply_config(host, params)
    return Outcome(what, True, dry_run, diff=unified_diff(current, "", path), actions=actions)


def check_restore_settings_gone(host: "Host", params: "Params") -> Check:
    psql = pg_cluster.psql_for(host, params)
    path = restore_part_path(params)
    row = psql.query("SELECT current_setting('wal_level') AS wal_level, current_setting('fsync') AS fsync, "
                     "current_setting('full_page_writes') AS fpw, current_setting('autovacuum') AS autovacuum")[0]
    ok = (not host.exists(path) and row["wal_level"] != "minimal" and row["fpw"] == "on"
          and row["autovacuum"] == "on" and row["fsync"] == "on")
    return Check.of("restore-time settings removed", ok,
                    f"wal_level {row['wal_level']}, full_page_writes {row['fpw']}, autovacuum {row['autovacuum']}"
                    + ("" if not host.exists(path) else f"; {path} still there"), host.name)
