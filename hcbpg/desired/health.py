"""The health rules: what a server's measurements mean, pass/warn/fail per item, in one place.

Used by ``hcbpg status`` and step 15 (:mod:`hcbpg.desired.health_report`, every item of every
server) and by the health job on the servers (:mod:`hcbpg.ops.jobs.health_job`, five concerns, each
failing only on a ``fail``).  Standard library only and no import of hcbpg: this file is shipped to
the servers inside the job (:func:`hcbpg.desired.schedule.render_health_job`).

Each rule is a small function of one :class:`Measurement` (and the thresholds) returning a
:class:`Verdict`; :func:`evaluate` gives every item of every server, :func:`judge_measurement` the
job's concerns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol

#: the items of ``hcbpg status`` and step 15, for every server
ITEMS = ("PostgreSQL running", "role", "replication", "replay lag", "slot retained WAL", "last backup",
         "archiving", "connections", "disk data directory", "disk WAL", "pending restart")
#: the health job's concerns, each pinging its own URL
CHECKS = ("postgres", "archiving", "replication", "disk", "backup")
#: which items make up each of the job's concerns (a ``fail`` of any of them fails the concern)
CONCERNS = {"postgres": ("PostgreSQL running",), "archiving": ("archiving",),
            "replication": ("slot retained WAL", "replay lag"), "disk": ("disk data directory", "disk WAL"),
            "backup": ("last backup",)}

_DROPPED_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d+ .*dropped WAL file '([0-9A-F]{24})'")
_LEVELS = ("pass", "warn", "fail")


class ThresholdsLike(Protocol):
    """The thresholds the rules read: params ``health:`` (:class:`hcbpg.params.Health`) or :class:`Thresholds`."""

    @property
    def replay_lag_warn_s(self) -> float | None: ...
    @property
    def replay_lag_fail_s(self) -> float | None: ...
    @property
    def slot_retained_warn_mb(self) -> float | None: ...
    @property
    def slot_retained_fail_mb(self) -> float | None: ...
    @property
    def backup_age_warn_h(self) -> float | None: ...
    @property
    def backup_age_fail_h(self) -> float | None: ...
    @property
    def archive_age_warn_s(self) -> float | None: ...
    @property
    def connections_warn_pct(self) -> float | None: ...
    @property
    def connections_fail_pct(self) -> float | None: ...
    @property
    def disk_warn_pct(self) -> float | None: ...
    @property
    def disk_fail_pct(self) -> float | None: ...
    @property
    def wal_warn_mb(self) -> float | None: ...
    @property
    def wal_fail_mb(self) -> float | None: ...
    @property
    def pending_restart(self) -> str: ...
    @property
    def require_archiving(self) -> bool: ...
    @property
    def archive_ready_max(self) -> int | None: ...


@dataclass(frozen=True)
class Thresholds:
    """The thresholds where params are not at hand (the job reads its own from ``/etc/hcbpg/health.json``):
    the defaults of params ``health:``."""

    replay_lag_warn_s: float | None = 30.0
    replay_lag_fail_s: float | None = 300.0
    slot_retained_warn_mb: float | None = 1024.0
    slot_retained_fail_mb: float | None = 4096.0
    backup_age_warn_h: float | None = 26.0
    backup_age_fail_h: float | None = 50.0
    archive_age_warn_s: float | None = None
    connections_warn_pct: float | None = 80.0
    connections_fail_pct: float | None = 95.0
    disk_warn_pct: float | None = 80.0
    disk_fail_pct: float | None = 90.0
    wal_warn_mb: float | None = 2048.0
    wal_fail_mb: float | None = 8192.0
    pending_restart: str = "warn"
    require_archiving: bool = True
    archive_ready_max: int | None = 16


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
    backup: dict[str, Any] | None = None        # {label, type, stop (epoch), start (epoch), error}
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
    archive_ready: int | None = None            # WAL segments waiting to be archived (None: not measured)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Verdict(NamedTuple):
    """One item of one server: ``pass``, ``warn`` or ``fail``, and why."""

    name: str
    status: str
    detail: str
    target: str


# small helpers -----------------------------------------------------------------------------------

def level(value: float, warn: float | None, fail: float | None) -> str:
    """``fail`` at or above *fail*, ``warn`` at or above *warn*, else ``pass`` (None: no such threshold)."""
    if fail is not None and value >= fail:
        return "fail"
    if warn is not None and value >= warn:
        return "warn"
    return "pass"


def worst(*statuses: str) -> str:
    return max(statuses, key=_LEVELS.index) if statuses else "pass"


def mb(n: float | None) -> str:
    if n is None:
        return "?"
    if n >= 1024 ** 3:
        return f"{n / 1024 ** 3:.1f} GiB"
    return f"{n / 1024 ** 2:.1f} MiB"


def age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def ts(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def actual_role(m: Measurement) -> str | None:
    if m.in_recovery is None:
        return None
    return "replica" if m.in_recovery else "primary"


def last_dropped(log_text: str) -> tuple[float, str] | None:
    """(epoch, segment) of the last WAL pgBackRest dropped from the archive (queue full), from its log."""
    found = None
    for line in log_text.splitlines():
        m = _DROPPED_RE.match(line)
        if m:
            found = (datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp(),
                     m.group(2))
    return found


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


# the rules: one item each ------------------------------------------------------------------------

def _v(m: Measurement, name: str, status: str, detail: str) -> Verdict:
    return Verdict(name, status, detail, m.server)


def rule_running(m: Measurement) -> Verdict:
    if not m.reachable or not m.running:
        return _v(m, "PostgreSQL running", "fail",
                  m.error or ("unreachable over SSH" if not m.reachable else "PostgreSQL is not running"))
    return _v(m, "PostgreSQL running", "pass", f"running; data directory {m.data_directory}")


def rule_role(m: Measurement, primaries: Sequence[Measurement]) -> Verdict:
    role = actual_role(m)
    if role == "primary" and len(primaries) > 1:
        return _v(m, "role", "fail", f"primary, and so is {', '.join(p.server for p in primaries if p is not m)}: "
                                     "two primaries (split brain)")
    if role != m.expected_role:
        return _v(m, "role", "warn", f"{role}, params say {m.expected_role} (after a failover? see step 11)")
    return _v(m, "role", "pass", role or "?")


def rule_replication(m: Measurement, others: Sequence[Measurement]) -> Verdict:
    """A primary streams to every other server in params; a replica receives WAL."""
    if actual_role(m) == "primary":
        rows = {r.get("client_addr"): r for r in m.replication}
        missing = [o.server for o in others if (rows.get(o.private_ip) or {}).get("state") != "streaming"]
        if not others:
            return _v(m, "replication", "pass", "no replica in params")
        if missing:
            seen = ", ".join(f"{r.get('application_name')} {r.get('state')}" for r in m.replication)
            return _v(m, "replication", "fail", f"not streaming to {', '.join(missing)}"
                      + (f"; pg_stat_replication: {seen}" if m.replication else "; pg_stat_replication is empty"))
        return _v(m, "replication", "pass", "streaming to " + ", ".join(
            f"{r.get('application_name')} ({r.get('client_addr')}, {r.get('sync_state')})" for r in m.replication))
    rc = m.receiver or {}
    if rc.get("status") == "streaming":
        return _v(m, "replication", "pass", f"streaming from {rc.get('sender_host')} through slot {rc.get('slot_name')}")
    return _v(m, "replication", "fail", f"WAL receiver {rc.get('status') or 'not running'}"
              + (f" (sender {rc.get('sender_host')})" if rc.get("sender_host") else ""))


def rule_replay_lag(m: Measurement, t: ThresholdsLike) -> Verdict:
    """A primary: its standbys' largest replay lag; a replica: its own (unknown before anything is replayed)."""
    if actual_role(m) == "primary":
        lags = [float(r["replay_lag_s"]) for r in m.replication if r.get("replay_lag_s") is not None]
        lag = max(lags) if lags else 0.0
        return _v(m, "replay lag", level(lag, t.replay_lag_warn_s, t.replay_lag_fail_s) if m.replication else "pass",
                  f"max replay lag of its standbys {lag:.1f}s" if m.replication
                  else "no standby connected (see replication)")
    if m.replay_lag_s is None:
        return _v(m, "replay lag", "fail", "unknown: nothing replayed yet")
    return _v(m, "replay lag", level(m.replay_lag_s, t.replay_lag_warn_s, t.replay_lag_fail_s),
              f"{m.replay_lag_s:.1f}s behind the primary (0 when all received WAL is replayed)")


def rule_slots(m: Measurement, t: ThresholdsLike, *, replicas_expected: bool) -> Verdict:
    """WAL the slots hold back; a lost slot fails; an inactive slot on the primary warns."""
    role = actual_role(m)
    if m.slots:
        retained = max(int(s.get("retained_bytes") or 0) for s in m.slots)
        status = level(retained / 1024 ** 2, t.slot_retained_warn_mb, t.slot_retained_fail_mb)
        inactive = [s["slot_name"] for s in m.slots if not s.get("active")]
        lost = [s["slot_name"] for s in m.slots if s.get("wal_status") == "lost"]
        if lost:
            status = "fail"
        elif inactive and status == "pass" and role == "primary":
            status = "warn"
        return _v(m, "slot retained WAL", status, "; ".join(
            f"{s['slot_name']} {'active' if s.get('active') else 'INACTIVE'} {mb(s.get('retained_bytes'))}"
            f" ({s.get('wal_status')})" for s in m.slots))
    missing_slots = role == "primary" and replicas_expected and m.expected_role == "primary"
    return _v(m, "slot retained WAL", "warn" if missing_slots else "pass",
              "no replication slot" + (" although a replica is expected" if missing_slots else ""))


def rule_backup(m: Measurement, t: ThresholdsLike) -> Verdict:
    """The primary's last backup is there, without errors, young enough (n/a on a replica)."""
    if actual_role(m) != "primary":
        return _v(m, "last backup", "pass", "n/a on a replica (backups run on the primary)")
    b = m.backup
    if b is None:
        return _v(m, "last backup", "fail", m.backup_error or "no backup in the repository")
    if b.get("error"):
        return _v(m, "last backup", "fail", f"{b.get('label')} ({b.get('type')}) finished with an error")
    age_h = (m.now - float(b["stop"])) / 3600
    where = f" in repo{b['repo']}" if b.get("repo", 1) != 1 else ""  # the stalest of two repositories
    each = "; ".join(f"{k}: {v}" for k, v in (b.get("repos") or {}).items())  # every repository's newest
    return _v(m, "last backup", level(age_h, t.backup_age_warn_h, t.backup_age_fail_h),
              f"{b.get('type')} {b.get('label')}{where} finished {ts(float(b['stop']))}, {age(age_h * 3600)} ago"
              + (f" ({each})" if each else ""))


def rule_archiving(m: Measurement, t: ThresholdsLike) -> Verdict:
    """The primary archives: archive_mode on, no failure since the last success, a short queue, no WAL dropped
    since the last backup started (n/a on a replica)."""
    if actual_role(m) != "primary":
        return _v(m, "archiving", "pass", f"n/a on a replica (archive_mode {m.archive_mode}: only the primary archives)")
    if m.archive_mode in (None, "off"):
        return _v(m, "archiving", "fail" if t.require_archiving else "warn", "archive_mode is off")
    a, b, d = m.archiver or {}, m.backup, m.wal_dropped
    failed_t, ok_t = a.get("last_failed_time"), a.get("last_archived_time")
    failing = failed_t is not None and (ok_t is None or float(failed_t) >= float(ok_t))
    detail = (f"last archived {a.get('last_archived_wal') or 'none'} at {ts(ok_t)}; "
              f"{a.get('failed_count', 0)} failure(s), last {a.get('last_failed_wal') or 'none'} at {ts(failed_t)}")
    closed = d is not None and b is not None and float(b.get("start") or 0) > float(d["time"])
    if failing:
        return _v(m, "archiving", "fail", "FAILING: " + detail
                  + (f"; WAL DROPPED from the archive since {ts(float(d['time']))}" if d else ""))
    if m.archive_ready is not None and t.archive_ready_max is not None and m.archive_ready > t.archive_ready_max:
        return _v(m, "archiving", "fail", f"{m.archive_ready} WAL segments wait to be archived: " + detail)
    if d is not None and not closed:
        return _v(m, "archiving", "fail",
                  f"WAL DROPPED from the archive: {d['segment']} at {ts(float(d['time']))} (the repository was "
                  "unreachable and pg_wal reached pgbackrest.archive_push_queue_max); point-in-time recovery "
                  "across the gap is impossible: take a backup now (the next backup closes the gap); " + detail)
    if ok_t is None:
        return _v(m, "archiving", "warn", "nothing archived yet: " + detail)
    if t.archive_age_warn_s is not None and m.now - float(ok_t) > t.archive_age_warn_s:
        return _v(m, "archiving", "warn", f"nothing archived for {age(m.now - float(ok_t))}: " + detail)
    return _v(m, "archiving", "pass", detail)


def rule_connections(m: Measurement, t: ThresholdsLike) -> Verdict:
    """Connections in total against max_connections, and per role against its limit."""
    pct = 100.0 * m.total_connections / m.max_connections if m.max_connections else 0.0
    status = level(pct, t.connections_warn_pct, t.connections_fail_pct)
    parts = [f"{m.total_connections}/{m.max_connections} in total ({pct:.0f}%)"]
    for c in sorted(m.connections, key=lambda c: c["role"]):
        limit, used = int(c["limit"]), int(c["in_use"])
        if limit < 0:
            if used:
                parts.append(f"{c['role']} {used} (no limit)")
            continue
        p = 100.0 * used / limit if limit else (100.0 if used else 0.0)
        lv = level(p, t.connections_warn_pct, t.connections_fail_pct)
        if lv != "pass" or used:
            parts.append(f"{c['role']} {used}/{limit}" + ("" if lv == "pass" else f" {lv.upper()}"))
        status = worst(status, lv)
    return _v(m, "connections", status, "; ".join(parts))


def rule_disk(m: Measurement, t: ThresholdsLike) -> Verdict:
    if not m.disk:
        return _v(m, "disk data directory", "fail", "unknown: df failed")
    return _v(m, "disk data directory", level(float(m.disk["used_pct"]), t.disk_warn_pct, t.disk_fail_pct),
              f"file system {m.disk['used_pct']:.0f}% used, {mb(m.disk.get('avail_bytes'))} free")


def rule_wal(m: Measurement, t: ThresholdsLike) -> Verdict:
    wal = m.wal_bytes
    return _v(m, "disk WAL", level((wal or 0) / 1024 ** 2, t.wal_warn_mb, t.wal_fail_mb) if wal is not None else "fail",
              f"pg_wal holds {mb(wal)}")


def rule_pending_restart(m: Measurement, t: ThresholdsLike) -> Verdict:
    if m.pending_restart:
        return _v(m, "pending restart", t.pending_restart, "waiting for a restart: " + ", ".join(m.pending_restart))
    return _v(m, "pending restart", "pass", "no setting waits for a restart")


# every item, and the job's concerns -------------------------------------------------------------

def evaluate_server(m: Measurement, measurements: Sequence[Measurement], t: ThresholdsLike) -> list[Verdict]:
    """Every item of :data:`ITEMS` for *m* (an unreachable or stopped server fails every item)."""
    running = rule_running(m)
    if running.status == "fail":
        unknown = "unknown: " + ("server unreachable" if not m.reachable else "PostgreSQL is not running")
        return [running] + [_v(m, item, "fail", unknown) for item in ITEMS[1:]]
    primaries = [x for x in measurements if actual_role(x) == "primary"]
    replicas_expected = any(x.expected_role == "replica" for x in measurements)
    return [running, rule_role(m, primaries), rule_replication(m, [x for x in measurements if x is not m]),
            rule_replay_lag(m, t), rule_slots(m, t, replicas_expected=replicas_expected), rule_backup(m, t),
            rule_archiving(m, t), rule_connections(m, t), rule_disk(m, t), rule_wal(m, t),
            rule_pending_restart(m, t)]


def evaluate(measurements: Sequence[Measurement], t: ThresholdsLike) -> list[Verdict]:
    """Every item for every server, pass/warn/fail (target = server name)."""
    return [v for m in measurements for v in evaluate_server(m, measurements, t)]


def judge_measurement(m: Measurement, t: ThresholdsLike) -> dict[str, str | None]:
    """The job's concerns (:data:`CHECKS`) on its own server: the reason each fails, None while it holds.

    Only a ``fail`` counts (the job pings; a warning is for ``hcbpg status``).  PostgreSQL down fails every
    concern but the disk, which is still measured; a replica's replay lag before anything is replayed does
    not fail replication here (``hcbpg status`` says it)."""
    if rule_running(m).status == "fail":
        why = f"PostgreSQL does not answer: {m.error or 'no answer'}"[:300]
        disk = rule_disk(m, t)
        return {c: (None if c == "disk" and disk.status != "fail" else why) for c in CHECKS}
    verdicts = {v.name: v for v in (rule_running(m), rule_archiving(m, t), rule_replay_lag(m, t),
                                    rule_slots(m, t, replicas_expected=False), rule_disk(m, t), rule_wal(m, t),
                                    rule_backup(m, t))}
    if actual_role(m) == "replica" and m.replay_lag_s is None:
        del verdicts["replay lag"]
    out: dict[str, str | None] = {}
    for concern in CHECKS:
        failed = [verdicts[i].detail for i in CONCERNS[concern] if i in verdicts and verdicts[i].status == "fail"]
        out[concern] = failed[0][:300] if failed else None
    return out
