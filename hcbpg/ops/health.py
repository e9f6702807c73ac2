"""The measurements of the health report (step 15, ``hcbpg status``): one read-only look at every server
over SSH.  What they mean is :mod:`hcbpg.desired.health` (the rules, shared with the job on the servers);
the report and figures are :mod:`hcbpg.desired.health_report`.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from hcbpg.desired.health import Measurement, last_dropped, parse_df
from hcbpg.errors import DatabaseError, HcbpgError, HostUnreachable
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import pgbackrest
from hcbpg.pg.pgbackrest import BackupRow, parse_info_json
from hcbpg.secrets import scrub

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server

_QUERY = """
SELECT pg_is_in_recovery() AS in_recovery,
  extract(epoch FROM now())::float AS now,
  current_setting('data_directory') AS data_directory,
  current_setting('max_connections')::int AS max_connections,
  current_setting('archive_mode') AS archive_mode,
  (SELECT coalesce(json_agg(name ORDER BY name), '[]') FROM pg_settings WHERE pending_restart) AS pending_restart,
  (SELECT row_to_json(a) FROM (SELECT archived_count, last_archived_wal,
      extract(epoch FROM last_archived_time)::float AS last_archived_time, failed_count, last_failed_wal,
      extract(epoch FROM last_failed_time)::float AS last_failed_time FROM pg_stat_archiver) a) AS archiver,
  (SELECT coalesce(json_agg(c), '[]') FROM (SELECT r.rolname AS role, r.rolconnlimit AS "limit",
      count(a.pid) AS in_use FROM pg_roles r LEFT JOIN pg_stat_activity a
      ON a.usesysid = r.oid AND a.backend_type = 'client backend'
      WHERE r.rolcanlogin GROUP BY 1, 2 ORDER BY 1) c) AS connections,
  (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS total_connections,
  (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir())::bigint AS wal_bytes,
  (SELECT coalesce(json_agg(s), '[]') FROM (SELECT slot_name, active, wal_status,
      (CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), restart_lsn)
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) END)::bigint AS retained_bytes
      FROM pg_replication_slots ORDER BY slot_name) s) AS slots,
  (SELECT coalesce(json_agg(r), '[]') FROM (SELECT application_name, host(client_addr) AS client_addr, state,
      sync_state, extract(epoch FROM replay_lag)::float AS replay_lag_s FROM pg_stat_replication
      ORDER BY application_name) r) AS replication,
  (SELECT row_to_json(w) FROM (SELECT status, sender_host, slot_name FROM pg_stat_wal_receiver) w) AS receiver,
  CASE WHEN pg_is_in_recovery() THEN
    CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0.0
         ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float END
  END AS replay_lag_s,
  coalesce(CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) END,
           (SELECT timeline_id FROM pg_control_checkpoint())) AS timeline
"""


def _wal_dropped(host: "HostLike", params: "Params", m: Measurement) -> None:
    """The last WAL pgBackRest dropped from the archive (its log), whether or not the repository answers now."""
    if params.pgbackrest is None:
        return
    logs = host.probe(f"cat /var/log/pgbackrest/{shlex.quote(params.pgbackrest.stanza)}-archive-push*.log "
                      "2>/dev/null | grep -F 'dropped WAL file'")
    dropped = last_dropped(logs.stdout)
    if dropped is not None:
        m.wal_dropped = {"time": dropped[0], "segment": dropped[1]}


def _backup(host: "HostLike", params: "Params", m: Measurement) -> None:
    if params.pgbackrest is None:
        m.backup_error = "pgbackrest is not configured in params"
        return
    try:
        # a short io-timeout: an unreachable repository is reported in seconds, not after minutes of retries
        rows = parse_info_json(pgbackrest.get_info_json(host, params, "--io-timeout=5"), params.pgbackrest.stanza)
    except HcbpgError as exc:
        m.backup_error = f"pgbackrest info failed: {scrub(exc.message.splitlines()[0])[:200]}"
        return
    done = [r for r in rows if r.stop]
    if not done:
        m.backup_error = "no backup in the repository (pgbackrest info lists none)"
        return
    newest: dict[int, BackupRow] = {}  # each repository's newest backup
    for r in done:
        if r.repo not in newest or r.stop > newest[r.repo].stop:
            newest[r.repo] = r
    empty = [n for n, _ in params.pgbackrest.repos() if n not in newest]
    if empty:
        m.backup_error = (f"no backup in {', '.join(f'repo{n}' for n in empty)} (pgbackrest info lists none there; "
                          f"{', '.join(f'repo{n}' for n in sorted(newest))} has one)")
        return
    # judged on the repository whose newest backup is the oldest: a second repository that stopped getting
    # backups is not hidden by the first
    last = min(newest.values(), key=lambda r: r.stop)
    epoch = lambda ts: datetime.strptime(ts, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()  # noqa: E731
    m.backup = {"label": last.label, "type": last.type, "stop": epoch(last.stop), "error": last.error, "repo": last.repo,
                "start": max(epoch(r.start) for r in done if not r.error) if any(not r.error for r in done) else 0.0}
    if len(newest) > 1:  # each repository's newest, for the row (hcbpg status shows both)
        m.backup["repos"] = {f"repo{n}": f"{r.type} {r.label} finished {r.stop}" for n, r in sorted(newest.items())}



def get_measurement(host: "HostLike | None", params: "Params", server: "Server", *,
                    expected_role: str | None = None) -> Measurement:
    """Measure one server (never raises for a server that is down: the measurement says so; None: no SSH)."""
    m = Measurement(server.name, server.private_ip, expected_role or server.role, now=time.time())
    if host is None:
        m.error = "no SSH connection"
        return m
    try:
        running = pg_cluster.get_cluster_running(host, params)  # the first command connects
        m.reachable = True
        if not running:
            m.error = "PostgreSQL is not running (pg_lsclusters)"
            return m
        row = pg_cluster.get_psql(host, params).query(_QUERY)[0]
    except HostUnreachable as exc:
        m.error = exc.message
        return m
    except DatabaseError as exc:
        m.reachable, m.error = True, scrub(exc.message.splitlines()[-1].strip())[:300]
        return m
    m.running = True
    m.now = float(row["now"])
    m.in_recovery = bool(row["in_recovery"])
    m.data_directory = row["data_directory"]
    m.max_connections = int(row["max_connections"])
    m.archive_mode = row["archive_mode"]
    m.pending_restart = list(row["pending_restart"] or [])
    m.archiver = row["archiver"]
    m.connections = list(row["connections"] or [])
    m.total_connections = int(row["total_connections"])
    m.wal_bytes = int(row["wal_bytes"])
    m.slots = list(row["slots"] or [])
    m.replication = list(row["replication"] or [])
    m.receiver = row["receiver"]
    m.replay_lag_s = None if row["replay_lag_s"] is None else float(row["replay_lag_s"])
    m.timeline = None if row.get("timeline") is None else int(row["timeline"])
    res = host.probe(f"df -P -B1 {shlex.quote(m.data_directory or '/')}")
    m.disk = parse_df(res.stdout) if res.ok else None
    if not m.in_recovery:
        _wal_dropped(host, params, m)
        _backup(host, params, m)
    return m


def get_measurements(hosts: Mapping[str, "HostLike | None"], params: "Params", *,
                     expected_roles: Mapping[str, str] | None = None) -> list[Measurement]:
    """Measure every server in params (hosts by server name; a missing host is 'unreachable')."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - one SSH connection per server, in parallel
    roles = expected_roles or {}
    with ThreadPoolExecutor(max_workers=max(1, len(params.servers))) as pool:
        futures = [pool.submit(get_measurement, hosts.get(s.name), params, s, expected_role=roles.get(s.name))
                   for s in params.servers]
        return [f.result() for f in futures]
