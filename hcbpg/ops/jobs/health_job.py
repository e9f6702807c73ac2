"""The health job hcbpg installs on every server (``/usr/local/sbin/hcbpg-health``, run by cron as
postgres): one check per concern, each pinging its own dead-man's-switch URL only while it holds.

This file is installed as it is (standard library only, no import of hcbpg): its settings come
from ``/etc/hcbpg/health.json`` (:func:`hcbpg.ops.schedule.render_health_config`).  Each check
(``postgres``, ``archiving``, ``replication``, ``disk``, ``backup``) pings ``<url>/<server>-<check>``
when it passes and ``<url>/<server>-<check>/fail`` with the reason when it does not, so the
receiver shows what failed; a server that is down sends nothing, and the missing pings are the
alert.  A check that does not apply to the server's current role (backups on a standby) passes.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

CONFIG = "/etc/hcbpg/health.json"
CHECKS = ("postgres", "archiving", "replication", "disk", "backup")
_DROPPED_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.\d+ .*dropped WAL file '([0-9A-F]{24})'")

_QUERY = """SELECT json_build_object(
 'in_recovery', pg_is_in_recovery(),
 'now', extract(epoch FROM now()),
 'data_directory', current_setting('data_directory'),
 'archive_mode', current_setting('archive_mode'),
 'archiver', (SELECT row_to_json(a) FROM (SELECT extract(epoch FROM last_archived_time) AS ok,
     extract(epoch FROM last_failed_time) AS failed, last_failed_wal FROM pg_stat_archiver) a),
 'ready', (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'),
 'wal_bytes', (SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()),
 'slots', (SELECT coalesce(json_agg(s), '[]') FROM (SELECT slot_name, wal_status,
     pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END,
                     restart_lsn) AS retained FROM pg_replication_slots) s),
 'replication', (SELECT coalesce(json_agg(r), '[]') FROM (SELECT application_name, state,
     extract(epoch FROM replay_lag) AS lag FROM pg_stat_replication) r),
 'receiver', (SELECT status FROM pg_stat_wal_receiver),
 'replay_lag', CASE WHEN pg_is_in_recovery() THEN
     CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
          ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END END)"""


def last_dropped(log_text: str) -> tuple[float, str] | None:
    """(epoch, segment) of the last WAL pgBackRest dropped from the archive (queue full), from its log."""
    found = None
    for line in log_text.splitlines():
        m = _DROPPED_RE.match(line)
        if m:
            found = (datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp(),
                     m.group(2))
    return found


def judge(cfg: dict[str, Any], facts: dict[str, Any] | None, error: str, disk_pct: float | None,
          backups: list[dict[str, Any]] | None, dropped: tuple[float, str] | None) -> dict[str, str | None]:
    """Each check's failure reason (None: it holds), from what was measured.  Pure."""
    t = cfg["thresholds"]
    out: dict[str, str | None] = {c: None for c in CHECKS}
    if facts is None:
        for c in CHECKS:
            out[c] = f"PostgreSQL does not answer: {error}"[:300]
        if disk_pct is not None and disk_pct < t["disk_fail_pct"]:
            out["disk"] = None
        return out
    primary = not facts["in_recovery"]
    # archiving: current (no failure since the last success, a short .ready queue) and nothing dropped
    if primary:
        a = facts.get("archiver") or {}
        if facts["archive_mode"] == "off":
            out["archiving"] = "archive_mode is off"
        elif a.get("failed") is not None and (a.get("ok") is None or a["failed"] >= a["ok"]):
            out["archiving"] = f"archive_command failing (last {a.get('last_failed_wal')})"
        elif int(facts["ready"]) > t["archive_ready_max"]:
            out["archiving"] = f"{facts['ready']} WAL segments wait to be archived"
        elif dropped is not None and not any(b["start"] > dropped[0] for b in backups or []):
            out["archiving"] = f"WAL {dropped[1]} was dropped from the archive (queue full): take a backup"
    # replication: lag and WAL retained by slots
    lost = [s["slot_name"] for s in facts["slots"] if s.get("wal_status") == "lost"]
    big = [s["slot_name"] for s in facts["slots"] if float(s.get("retained") or 0) / 1048576 >= t["slot_retained_fail_mb"]]
    lags = [float(r["lag"]) for r in facts["replication"] if r.get("lag") is not None]
    if facts["replay_lag"] is not None:
        lags.append(float(facts["replay_lag"]))
    if lost or big:
        out["replication"] = f"slots lost: {lost}, retaining too much WAL: {big}"
    elif lags and max(lags) >= t["replay_lag_fail_s"]:
        out["replication"] = f"replay lag {max(lags):.0f}s"
    elif not primary and facts["receiver"] != "streaming" and (facts["replay_lag"] or 0) >= t["replay_lag_fail_s"]:
        out["replication"] = f"not streaming (WAL receiver {facts['receiver']})"
    # disk: the data directory's file system and pg_wal
    if disk_pct is None or disk_pct >= t["disk_fail_pct"]:
        out["disk"] = f"data directory file system {disk_pct}% used"
    elif float(facts["wal_bytes"]) / 1048576 >= t["wal_fail_mb"]:
        out["disk"] = f"pg_wal holds {float(facts['wal_bytes']) / 1048576:.0f} MB"
    # backup: the primary's last backup is young enough
    if primary:
        done = [b for b in backups or [] if not b.get("error")]
        if backups is None:
            out["backup"] = "pgbackrest info failed"
        elif not done:
            out["backup"] = "no backup in the repository"
        elif (float(facts["now"]) - max(b["stop"] for b in done)) / 3600 >= t["backup_age_fail_h"]:
            out["backup"] = f"last backup {(float(facts['now']) - max(b['stop'] for b in done)) / 3600:.1f} h old"
    return out


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return p.returncode, p.stdout if p.returncode == 0 else p.stderr


def measure(cfg: dict[str, Any]) -> tuple[dict[str, Any] | None, str, float | None, list[dict[str, Any]] | None,
                                         tuple[float, str] | None]:
    code, out = _run(["psql", "-X", "-A", "-t", "-q", "-p", str(cfg["port"]), "-d", "postgres", "-c", _QUERY])
    facts = json.loads(out) if code == 0 and out.strip() else None
    usage = shutil.disk_usage(facts["data_directory"] if facts else cfg["data_directory"])
    disk_pct = round(100.0 * usage.used / usage.total, 1) if usage.total else None
    backups: list[dict[str, Any]] | None = None
    dropped = None
    if facts is not None and not facts["in_recovery"]:
        code, info = _run(["pgbackrest", f"--stanza={cfg['stanza']}", "--output=json", "--io-timeout=5", "info"])
        if code == 0:
            backups = [{"start": b["timestamp"]["start"], "stop": b["timestamp"]["stop"], "error": b.get("error")}
                       for st in json.loads(info or "[]") if st.get("name") == cfg["stanza"]
                       for b in st.get("backup") or []]
        text = ""
        for path in sorted(glob.glob(f"/var/log/pgbackrest/{cfg['stanza']}-archive-push*.log")):
            try:
                with open(path, errors="replace") as f:
                    text += f.read()
            except OSError:
                pass
        dropped = last_dropped(text)
    return facts, (out.strip().splitlines() or ["?"])[-1], disk_pct, backups, dropped


def ping(url: str, body: str) -> None:
    for attempt in range(3):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body.encode()), timeout=10):
                return
        except OSError as exc:
            if attempt == 2:
                print(f"hcbpg-health: ping {url} failed: {exc}", file=sys.stderr)
            time.sleep(2)


def main(argv: list[str] | None = None, send: Callable[[str, str], None] = ping) -> int:
    cfg_path = (argv or sys.argv[1:] or [os.environ.get("HCBPG_HEALTH_CONFIG", CONFIG)])[0]
    with open(cfg_path) as f:
        cfg = json.load(f)
    result = judge(cfg, *measure(cfg))
    base = cfg["url"].rstrip("/") + "/" + cfg["server"]
    for name in CHECKS:
        why = result[name]
        print(f"{name}: {'ok' if why is None else 'FAIL ' + why}")
        if cfg["url"]:
            send(f"{base}-{name}" + ("" if why is None else "/fail"), why or "ok")
    return 1 if any(result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
