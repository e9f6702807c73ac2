"""The health report of step 15 and ``hcbpg status ENV``: measure every server over SSH, then judge
each item pass/warn/fail against thresholds from params (``health:``).

Items, for every server (an unreachable or stopped server still gets every item, as fail):
PostgreSQL running, role (primary/replica), replication (streaming to / from), replay lag,
slot retained WAL, last backup and its age, archiving (pg_stat_archiver), connections
(total and per role against its limit), disk (data directory's file system, WAL size) and
settings waiting for a restart.

:func:`get_measurements` is the only I/O; :func:`evaluate` is pure (unit-tested with made-up
measurements); :func:`plot` draws lag, backup age and connections with matplotlib.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.errors import DatabaseError, HcbpgError, HostUnreachable
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import pgbackrest
from hcbpg.ops.jobs.health_job import last_dropped
from hcbpg.outcome import Check, Status
from hcbpg.params import Health
from hcbpg.secrets import scrub

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server

ITEMS = ("PostgreSQL running", "role", "replication", "replay lag", "slot retained WAL", "last backup",
         "archiving", "connections", "disk data directory", "disk WAL", "pending restart")


#: the thresholds are params ``health:`` itself (one model, defaults in :class:`hcbpg.params.Health`)
Thresholds = Health


def thresholds_from(params: "Params") -> Thresholds:
    """Params ``health:`` (its defaults when the file has none)."""
    return params.health


@dataclass
class Measurement:
    """What one server looked like at ``now`` (epoch seconds)."""

    server: str
    private_ip: str
    expected_role: str
    reachable: bool = False
    running: bool = False
    error: str | None = None
    now: float = 0.0
    in_recovery: bool | None = None
    replication: list[dict[str, Any]] = field(default_factory=list)   # pg_stat_replication (primary)
    receiver: dict[str, Any] | None = None                             # pg_stat_wal_receiver (replica)
    replay_lag_s: float | None = None                                  # replica
    slots: list[dict[str, Any]] = field(default_factory=list)
    archive_mode: str | None = None
    archiver: dict[str, Any] | None = None
    backup: dict[str, Any] | None = None        # {label, type, stop (epoch), error}
    backup_error: str | None = None             # why there is no backup information
    wal_dropped: dict[str, Any] | None = None   # {time (epoch), segment}: pgBackRest dropped WAL (queue full)
    connections: list[dict[str, Any]] = field(default_factory=list)  # {role, limit, in_use}
    total_connections: int = 0
    max_connections: int = 0
    data_directory: str | None = None
    disk: dict[str, Any] | None = None          # {used_pct, avail_bytes, size_bytes}
    wal_bytes: int | None = None
    pending_restart: list[str] = field(default_factory=list)
    timeline: int | None = None                 # the timeline it is on (received on a replica)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# judging (pure) ------------------------------------------------------------------------------

def _level(value: float, warn: float | None, fail: float | None) -> Status:
    if fail is not None and value >= fail:
        return "fail"
    if warn is not None and value >= warn:
        return "warn"
    return "pass"


def _mb(n: float | None) -> str:
    if n is None:
        return "?"
    if n >= 1024 ** 3:
        return f"{n / 1024 ** 3:.1f} GiB"
    return f"{n / 1024 ** 2:.1f} MiB"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ts(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def actual_role(m: Measurement) -> str | None:
    if m.in_recovery is None:
        return None
    return "replica" if m.in_recovery else "primary"


def evaluate(measurements: Sequence[Measurement], t: Thresholds) -> list[Check]:
    """Every item for every server, pass/warn/fail (target = server name)."""
    out: list[Check] = []
    primaries = [m for m in measurements if actual_role(m) == "primary"]
    replicas_expected = [m for m in measurements if m.expected_role == "replica"]
    for m in measurements:
        tgt = m.server

        def add(name: str, status: Status, detail: str, tgt: str = tgt) -> None:
            out.append(Check(name, status, detail, tgt))

        if not m.reachable or not m.running:
            why = m.error or ("unreachable over SSH" if not m.reachable else "PostgreSQL is not running")
            add("PostgreSQL running", "fail", why)
            for item in ITEMS[1:]:
                add(item, "fail", "unknown: " + ("server unreachable" if not m.reachable else "PostgreSQL is not running"))
            continue
        add("PostgreSQL running", "pass", f"running; data directory {m.data_directory}")
        role = actual_role(m)
        if role == "primary" and len(primaries) > 1:
            add("role", "fail", f"primary, and so is {', '.join(p.server for p in primaries if p is not m)}: "
                                "two primaries (split brain)")
        elif role != m.expected_role:
            add("role", "warn", f"{role}, params say {m.expected_role} (after a failover? see step 11)")
        else:
            add("role", "pass", role or "?")
        # replication and lag
        if role == "primary":
            others = [r for r in measurements if r is not m]
            rows = {r.get("client_addr"): r for r in m.replication}
            missing = [o.server for o in others if (rows.get(o.private_ip) or {}).get("state") != "streaming"]
            if not others:
                add("replication", "pass", "no replica in params")
            elif missing:
                seen = ", ".join(f"{r.get('application_name')} {r.get('state')}" for r in m.replication)
                add("replication", "fail", f"not streaming to {', '.join(missing)}"
                    + (f"; pg_stat_replication: {seen}" if m.replication else "; pg_stat_replication is empty"))
            else:
                add("replication", "pass", "streaming to " + ", ".join(
                    f"{r.get('application_name')} ({r.get('client_addr')}, {r.get('sync_state')})" for r in m.replication))
            lags = [float(r["replay_lag_s"]) for r in m.replication if r.get("replay_lag_s") is not None]
            lag = max(lags) if lags else 0.0
            add("replay lag", _level(lag, t.replay_lag_warn_s, t.replay_lag_fail_s) if m.replication else "pass",
                f"max replay lag of its standbys {lag:.1f}s" if m.replication else "no standby connected (see replication)")
        else:
            rc = m.receiver or {}
            if rc.get("status") == "streaming":
                add("replication", "pass", f"streaming from {rc.get('sender_host')} through slot {rc.get('slot_name')}")
            else:
                add("replication", "fail", f"WAL receiver {rc.get('status') or 'not running'}"
                    + (f" (sender {rc.get('sender_host')})" if rc.get("sender_host") else ""))
            if m.replay_lag_s is None:
                add("replay lag", "fail", "unknown: nothing replayed yet")
            else:
                add("replay lag", _level(m.replay_lag_s, t.replay_lag_warn_s, t.replay_lag_fail_s),
                    f"{m.replay_lag_s:.1f}s behind the primary (0 when all received WAL is replayed)")
        # slots
        if m.slots:
            retained = max(int(s.get("retained_bytes") or 0) for s in m.slots)
            status = _level(retained / 1024 ** 2, t.slot_retained_warn_mb, t.slot_retained_fail_mb)
            inactive = [s["slot_name"] for s in m.slots if not s.get("active")]
            lost = [s["slot_name"] for s in m.slots if s.get("wal_status") == "lost"]
            if lost:
                status = "fail"
            elif inactive and status == "pass" and role == "primary":
                status = "warn"
            add("slot retained WAL", status, "; ".join(
                f"{s['slot_name']} {'active' if s.get('active') else 'INACTIVE'} {_mb(s.get('retained_bytes'))}"
                f" ({s.get('wal_status')})" for s in m.slots))
        else:
            missing_slots = role == "primary" and bool(replicas_expected) and m.expected_role == "primary"
            add("slot retained WAL", "warn" if missing_slots else "pass",
                "no replication slot" + (" although a replica is expected" if missing_slots else ""))
        # backups and archiving: the primary's business
        if role == "primary":
            b = m.backup
            if b is None:
                add("last backup", "fail", m.backup_error or "no backup in the repository")
            elif b.get("error"):
                add("last backup", "fail", f"{b.get('label')} ({b.get('type')}) finished with an error")
            else:
                age_h = (m.now - float(b["stop"])) / 3600
                add("last backup", _level(age_h, t.backup_age_warn_h, t.backup_age_fail_h),
                    f"{b.get('type')} {b.get('label')} finished {_ts(float(b['stop']))}, {_age(age_h * 3600)} ago")
            a = m.archiver or {}
            if m.archive_mode in (None, "off"):
                add("archiving", "fail" if t.require_archiving else "warn", "archive_mode is off")
            else:
                failed_t, ok_t = a.get("last_failed_time"), a.get("last_archived_time")
                failing = failed_t is not None and (ok_t is None or float(failed_t) >= float(ok_t))
                detail = (f"last archived {a.get('last_archived_wal') or 'none'} at {_ts(ok_t)}; "
                          f"{a.get('failed_count', 0)} failure(s), last {a.get('last_failed_wal') or 'none'} at {_ts(failed_t)}")
                d = m.wal_dropped
                closed = d is not None and b is not None and float(b.get("start") or 0) > float(d["time"])
                if failing:
                    add("archiving", "fail", "FAILING: " + detail
                        + (f"; WAL DROPPED from the archive since {_ts(float(d['time']))}" if d else ""))
                elif d is not None and not closed:
                    add("archiving", "fail",
                        f"WAL DROPPED from the archive: {d['segment']} at {_ts(float(d['time']))} (the repository was "
                        "unreachable and pg_wal reached pgbackrest.archive_push_queue_max); point-in-time recovery "
                        "across the gap is impossible: take a backup now (the next backup closes the gap); " + detail)
                elif ok_t is None:
                    add("archiving", "warn", "nothing archived yet: " + detail)
                elif t.archive_age_warn_s is not None and m.now - float(ok_t) > t.archive_age_warn_s:
                    add("archiving", "warn", f"nothing archived for {_age(m.now - float(ok_t))}: " + detail)
                else:
                    add("archiving", "pass", detail)
        else:
            add("last backup", "pass", "n/a on a replica (backups run on the primary)")
            add("archiving", "pass", f"n/a on a replica (archive_mode {m.archive_mode}: only the primary archives)")
        # connections
        pct = 100.0 * m.total_connections / m.max_connections if m.max_connections else 0.0
        worst = _level(pct, t.connections_warn_pct, t.connections_fail_pct)
        parts = [f"{m.total_connections}/{m.max_connections} in total ({pct:.0f}%)"]
        for c in sorted(m.connections, key=lambda c: c["role"]):
            limit = int(c["limit"])
            used = int(c["in_use"])
            if limit < 0:
                if used:
                    parts.append(f"{c['role']} {used} (no limit)")
                continue
            p = 100.0 * used / limit if limit else (100.0 if used else 0.0)
            lv = _level(p, t.connections_warn_pct, t.connections_fail_pct)
            if lv != "pass" or used:
                parts.append(f"{c['role']} {used}/{limit}" + ("" if lv == "pass" else f" {lv.upper()}"))
            worst = max(worst, lv, key=("pass", "warn", "fail").index)
        add("connections", worst, "; ".join(parts))
        # disk
        if m.disk:
            add("disk data directory", _level(float(m.disk["used_pct"]), t.disk_warn_pct, t.disk_fail_pct),
                f"file system {m.disk['used_pct']:.0f}% used, {_mb(m.disk.get('avail_bytes'))} free")
        else:
            add("disk data directory", "fail", "unknown: df failed")
        wal = m.wal_bytes
        add("disk WAL", _level((wal or 0) / 1024 ** 2, t.wal_warn_mb, t.wal_fail_mb) if wal is not None else "fail",
            f"pg_wal holds {_mb(wal)}")
        if m.pending_restart:
            add("pending restart", t.pending_restart, "waiting for a restart: " + ", ".join(m.pending_restart))
        else:
            add("pending restart", "pass", "no setting waits for a restart")
    return out


def exit_code(checks: Sequence[Check], *, strict: bool = False) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise; *strict* (``hcbpg status --strict``, for cron):
    a warning is 1 too."""
    bad = ("fail", "warn") if strict else ("fail",)
    return 1 if any(c.status in bad for c in checks) else 0


# measuring (I/O) -----------------------------------------------------------------------------

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


def parse_df(text: str) -> dict[str, Any] | None:
    """``df -P -B1 PATH`` -> {size_bytes, used_bytes, avail_bytes, used_pct}."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    parts = lines[-1].split()
    try:
        size, used, avail = int(parts[1]), int(parts[2]), int(parts[3])
    except (IndexError, ValueError):
        return None
    pct = 100.0 * used / (used + avail) if used + avail else 0.0
    return {"size_bytes": size, "used_bytes": used, "avail_bytes": avail, "used_pct": pct}


def _wal_dropped(host: "Host", params: "Params", m: Measurement) -> None:
    """The last WAL pgBackRest dropped from the archive (its log), whether or not the repository answers now."""
    if params.pgbackrest is None:
        return
    logs = host.probe(f"cat /var/log/pgbackrest/{shlex.quote(params.pgbackrest.stanza)}-archive-push*.log "
                      "2>/dev/null | grep -F 'dropped WAL file'")
    dropped = last_dropped(logs.stdout)
    if dropped is not None:
        m.wal_dropped = {"time": dropped[0], "segment": dropped[1]}


def _backup(host: "Host", params: "Params", m: Measurement) -> None:
    if params.pgbackrest is None:
        m.backup_error = "pgbackrest is not configured in params"
        return
    try:
        # a short io-timeout: an unreachable repository is reported in seconds, not after minutes of retries
        rows = pgbackrest.parse_info_json(pgbackrest.run_pgbackrest(
            host, params, "info", "--output=json", "--io-timeout=5", quiet=True).stdout, params.pgbackrest.stanza)
    except HcbpgError as exc:
        m.backup_error = f"pgbackrest info failed: {scrub(exc.message.splitlines()[0])[:200]}"
        return
    done = [r for r in rows if r.stop]
    if not done:
        m.backup_error = "no backup in the repository (pgbackrest info lists none)"
        return
    last = max(done, key=lambda r: r.stop)
    epoch = lambda ts: datetime.strptime(ts, "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()  # noqa: E731
    m.backup = {"label": last.label, "type": last.type, "stop": epoch(last.stop), "error": last.error,
                "start": max(epoch(r.start) for r in done if not r.error) if any(not r.error for r in done) else 0.0}



def measure(host: "Host | None", params: "Params", server: "Server", *, expected_role: str | None = None) -> Measurement:
    """Measure one server (never raises for a server that is down: the measurement says so)."""
    m = Measurement(server.name, server.private_ip, expected_role or server.role, now=time.time())
    if host is None:
        m.error = "no SSH connection"
        return m
    try:
        host.connect()
        m.reachable = True
        if not pg_cluster.get_cluster_running(host, params):
            m.error = "PostgreSQL is not running (pg_lsclusters)"
            return m
        row = pg_cluster.psql_for(host, params).query(_QUERY)[0]
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


def get_measurements(hosts: Mapping[str, "Host | None"], params: "Params", *,
                     expected_roles: Mapping[str, str] | None = None) -> list[Measurement]:
    """Measure every server in params (hosts by server name; a missing host is 'unreachable')."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - one SSH connection per server, in parallel
    roles = expected_roles or {}
    with ThreadPoolExecutor(max_workers=max(1, len(params.servers))) as pool:
        futures = [pool.submit(measure, hosts.get(s.name), params, s, expected_role=roles.get(s.name))
                   for s in params.servers]
        return [f.result() for f in futures]


def report_rows(checks: Sequence[Check]) -> list[dict[str, str]]:
    return [{"server": c.target, "item": c.name, "status": c.status, "detail": c.detail} for c in checks]


def render_text(checks: Sequence[Check]) -> str:
    """The report as a plain table (the command's output)."""
    rows = report_rows(checks)
    cols = ["server", "item", "status", "detail"]
    w = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols[:-1]}
    lines = ["  ".join(c.upper().ljust(w.get(c, 0)) for c in cols).rstrip()]
    for r in rows:
        lines.append("  ".join([r["server"].ljust(w["server"]), r["item"].ljust(w["item"]),
                                r["status"].upper().ljust(w["status"]), r["detail"]]))
    lines += ["", _summary_line(checks, warnings=sum(1 for c in checks if c.status == "warn"))]
    return "\n".join(lines)


def _summary_line(checks: Sequence[Check], *, warnings: int) -> str:
    """The report's last line: the failed items by server, or OK with the count of *warnings*."""
    failed = [c for c in checks if c.status == "fail"]
    if not failed:
        return f"OK: {len(checks)} item(s), {warnings} warning(s)"
    by_server: dict[str, list[str]] = {}
    for c in failed:
        by_server.setdefault(c.target, []).append(c.name)
    return (f"FAIL: {len(failed)} item(s) failed: "
            + "; ".join(f"{s}: {', '.join(names)}" for s, names in by_server.items()))


def _compact_row(m: Measurement, checks: Sequence[Check]) -> dict[str, str]:
    """One server on one line, like ``patronictl list``: what an operator looks at first."""
    worst = {c.status for c in checks if c.target == m.server}
    state = ("unreachable" if not m.reachable else "stopped" if not m.running else
             "streaming" if (m.receiver or {}).get("status") == "streaming" else
             "running" if not m.in_recovery else f"recovering ({(m.receiver or {}).get('status') or 'no receiver'})")
    lag = "-" if not m.in_recovery else ("?" if m.replay_lag_s is None else _age(m.replay_lag_s))
    if not m.in_recovery and m.replication:
        known = [r["replay_lag_s"] for r in m.replication if r.get("replay_lag_s") is not None]
        lag = f"{len(m.replication)} replica(s)" + (f", max {_age(max(known))}" if known else "")
    retained = max([int(sl.get("retained_bytes") or 0) for sl in m.slots] or [0])
    slots = f"{len(m.slots)}: {_mb(retained)}" if m.slots else "-"
    backup = ("-" if m.in_recovery or not m.running else
              _age(m.now - float(m.backup["stop"])) + " ago" if m.backup else "none")
    arch = m.archiver or {}
    archive = ("-" if not m.running else "n/a (replica)" if m.in_recovery else
               "off" if m.archive_mode == "off" else
               "FAILING" if arch.get("last_failed_time") and (arch.get("last_failed_time") or 0) >
               (arch.get("last_archived_time") or 0) else
               (_age(m.now - float(arch["last_archived_time"])) + " ago") if arch.get("last_archived_time") else
               "nothing yet")
    disk = f"{m.disk['used_pct']:.0f}%" if m.disk else "?"
    return {"server": m.server, "role": actual_role(m) or m.expected_role, "state": state,
            "tl": "?" if m.timeline is None else str(m.timeline), "lag": lag, "slots": slots, "backup": backup,
            "archive": archive, "conn": f"{m.total_connections}/{m.max_connections}" if m.running else "-",
            "disk": disk, "status": "FAIL" if "fail" in worst else "WARN" if "warn" in worst else "OK"}


def render_compact(measurements: Sequence[Measurement], checks: Sequence[Check]) -> str:
    """One line per server (role, state, timeline, lag, slot retention, last backup age, archiving,
    connections used/max, disk), then only the items that are not PASS (``hcbpg status``)."""
    rows = [_compact_row(m, checks) for m in measurements]
    cols = ["server", "role", "state", "tl", "lag", "slots", "backup", "archive", "conn", "disk", "status"]
    w = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    lines = ["  ".join(c.upper().ljust(w[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(w[c]) for c in cols).rstrip() for r in rows]
    bad = [c for c in checks if c.status != "pass"]
    lines.append("")
    for c in bad:
        lines.append(f"{c.status.upper():<4}  {c.target}: {c.name}: {c.detail}")
    lines.append(_summary_line(checks, warnings=len(bad)))
    return "\n".join(lines)


# figures ------------------------------------------------------------------------------------

def figure_data(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """The numbers the figures draw (also recorded by step 15)."""
    lag, backup_age, conns = {}, {}, {}
    for m in measurements:
        if not m.running:
            continue
        if m.in_recovery and m.replay_lag_s is not None:
            lag[m.server] = m.replay_lag_s
        for r in m.replication:
            if r.get("replay_lag_s") is not None:
                lag[f"{m.server} → {r.get('application_name')}"] = float(r["replay_lag_s"])
        if m.backup:
            backup_age[m.server] = (m.now - float(m.backup["stop"])) / 3600
        for c in m.connections:
            limit = int(c["limit"]) if int(c["limit"]) >= 0 else m.max_connections
            conns[f"{m.server}\n{c['role']}"] = (int(c["in_use"]), limit)
    return {"replay_lag_s": lag, "backup_age_h": backup_age, "connections": conns}


def plot(measurements: Sequence[Measurement], t: Thresholds):  # noqa: ANN201 - a matplotlib Figure
    """Three panels: replay lag (s), backup age (h), connections in use against each role's limit."""
    import matplotlib  # noqa: PLC0415 - heavy (pandas, fonts): only the health plot needs it
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy: only the health plot needs it
    del matplotlib
    data = figure_data(measurements)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    names = list(data["replay_lag_s"]) or ["(no standby)"]
    ax.bar(names, [data["replay_lag_s"].get(n, 0) for n in names], color="#4c78a8")
    ax.axhline(t.replay_lag_warn_s, color="#f58518", ls="--", label="warn")
    ax.axhline(t.replay_lag_fail_s, color="#e45756", ls="--", label="fail")
    ax.set_title("replay lag (s)")
    ax.legend()
    ax = axes[1]
    names = list(data["backup_age_h"]) or ["(no backup)"]
    ax.bar(names, [data["backup_age_h"].get(n, 0) for n in names], color="#54a24b")
    ax.axhline(t.backup_age_warn_h, color="#f58518", ls="--", label="warn")
    ax.axhline(t.backup_age_fail_h, color="#e45756", ls="--", label="fail")
    ax.set_title("age of the last backup (h)")
    ax.legend()
    ax = axes[2]
    names = list(data["connections"])
    used = [data["connections"][n][0] for n in names]
    limits = [data["connections"][n][1] for n in names]
    ax.barh(names, limits, color="#dddddd", label="limit")
    ax.barh(names, used, color="#4c78a8", label="in use")
    ax.set_xscale("symlog")
    ax.set_title("connections in use / limit")
    ax.legend()
    fig.tight_layout()
    return fig


# hosts for the command line -------------------------------------------------------------------

def open_hosts(params: "Params", *, recorded: Sequence[Mapping[str, Any]] | None = None,
               connect_timeout: float | None = None,
               echo: Callable[[str], None] = lambda s: None) -> dict[str, "Host | None"]:
    """A Host per server: ``ssh_host``, else the address pinned with its host key, else the private IP."""

    from hcbpg.desired.addresses import ssh_address  # noqa: PLC0415 - was steps.targets; hoisted with the rest of health later
    out: dict[str, Host | None] = {}
    for s in params.servers:
        address = ssh_address(params, s.name, recorded) or s.private_ip
        out[s.name] = Host(s.name, address, user=params.ssh.user, key_file=os.path.expanduser(params.ssh.key_file),
                           port=params.ssh.port, connect_timeout=connect_timeout or params.ssh.connect_timeout,
                           command_timeout=120.0, echo=echo, known_hosts=hostkeys.known_hosts_path(params))
    return out
