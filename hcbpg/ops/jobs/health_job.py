"""The health job hcbpg installs on every server (``/usr/local/sbin/hcbpg-health``, run by cron as
postgres): one check per concern, each pinging its own dead-man's-switch URL only while it holds.

Installed as one standard-library program: the rules (:mod:`hcbpg.desired.health`, shared with ``hcbpg
status``) in place of the one line that imports them here, then this file
(:func:`hcbpg.desired.schedule.render_health_job`).  Its settings come from ``/etc/hcbpg/health.json``
(:func:`hcbpg.desired.schedule.render_health_config`).  Each check
(``postgres``, ``archiving``, ``replication``, ``disk``, ``backup``) pings ``<url>/<server>-<check>``
when it passes and ``<url>/<server>-<check>/fail`` with the reason when it does not, so the
receiver shows what failed; a server that is down sends nothing, and the missing pings are the
alert.  A check that does not apply to the server's current role (backups on a standby) passes.

With a ``textfile`` section in its config (params with ``alerting``), the job also writes node exporter's
textfile (:mod:`hcbpg.desired.textfile_metrics`, shipped inside the program too): ``pgbackrest info
--output=json`` of every repository (on the primary; where it fails, no info series, which BackupInfoStale
notices) and each listed certificate's notAfter (``openssl x509``), written to a temporary file in the same
directory and renamed over the old one, so node exporter never reads half a file.  Nothing secret is in it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from hcbpg.desired.health import CHECKS, Measurement, Thresholds, judge_measurement, last_dropped
from hcbpg.desired.textfile_metrics import CertFact, TextfileError, parse_x509_enddate, render_textfile_metrics

CONFIG = "/etc/hcbpg/health.json"

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


def to_measurement(cfg: dict[str, Any], facts: dict[str, Any] | None, error: str, disk_pct: float | None,
                   backups: list[dict[str, Any]] | None, dropped: tuple[float, str] | None) -> Measurement:
    """What the job measured, as the rules read it (:class:`hcbpg.desired.health.Measurement`)."""
    m = Measurement(cfg["server"], "", "", reachable=True, running=facts is not None, error=error or None,
                    disk=None if disk_pct is None else {"used_pct": disk_pct})
    if facts is None:
        return m
    a = facts.get("archiver") or {}
    good = [b for b in backups or [] if not b.get("error")]
    newest: dict[int, dict[str, Any]] = {}  # each repository's newest good backup
    for b in good:
        if b.get("repo", 1) not in newest or b["stop"] > newest[b.get("repo", 1)]["stop"]:
            newest[b.get("repo", 1)] = b
    # judged on the repository whose newest backup is the oldest: a second repository that stopped getting
    # backups is not hidden by the first
    last = min(newest.values(), key=lambda b: b["stop"]) if newest else None
    m.now, m.in_recovery, m.archive_mode = float(facts["now"]), bool(facts["in_recovery"]), facts["archive_mode"]
    m.data_directory = facts["data_directory"]
    m.archiver = {"last_archived_time": a.get("ok"), "last_failed_time": a.get("failed"),
                  "last_failed_wal": a.get("last_failed_wal")}
    m.archive_ready = int(facts["ready"])
    m.wal_bytes = int(float(facts["wal_bytes"]))
    m.slots = [{"slot_name": s["slot_name"], "wal_status": s.get("wal_status"), "active": True,
                "retained_bytes": float(s.get("retained") or 0)} for s in facts["slots"]]
    m.replication = [{"application_name": r.get("application_name"), "state": r.get("state"),
                      "replay_lag_s": r.get("lag")} for r in facts["replication"]]
    m.receiver = {"status": facts["receiver"]} if facts["receiver"] else None
    m.replay_lag_s = None if facts["replay_lag"] is None else float(facts["replay_lag"])
    m.backup = None if last is None else {"label": "", "type": "", "stop": last["stop"], "error": False,
                                          "start": max(b["start"] for b in good),
                                          **({"repo": last["repo"]} if last.get("repo", 1) != 1 else {})}
    m.backup_error = "pgbackrest info failed" if backups is None else "no backup in the repository"
    m.wal_dropped = None if dropped is None else {"time": dropped[0], "segment": dropped[1]}
    return m


def judge(cfg: dict[str, Any], facts: dict[str, Any] | None, error: str, disk_pct: float | None,
          backups: list[dict[str, Any]] | None, dropped: tuple[float, str] | None) -> dict[str, str | None]:
    """Each check's failure reason (None: it holds), from what was measured, by the rules of
    :mod:`hcbpg.desired.health` (the thresholds from the config).  Pure."""
    return judge_measurement(to_measurement(cfg, facts, error, disk_pct, backups, dropped),
                             Thresholds(**cfg["thresholds"]))


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return p.returncode, p.stdout if p.returncode == 0 else p.stderr


Measured = tuple[dict[str, Any] | None, str, float | None, list[dict[str, Any]] | None, tuple[float, str] | None]


def measure_all(cfg: dict[str, Any]) -> tuple[Measured, str | None]:
    """What :func:`judge` reads, and ``pgbackrest info --output=json`` as read (None: not read, or it failed)."""
    code, out = _run(["psql", "-X", "-A", "-t", "-q", "-p", str(cfg["port"]), "-d", "postgres", "-c", _QUERY])
    facts = json.loads(out) if code == 0 and out.strip() else None
    usage = shutil.disk_usage(facts["data_directory"] if facts else cfg["data_directory"])
    disk_pct = round(100.0 * usage.used / usage.total, 1) if usage.total else None
    backups: list[dict[str, Any]] | None = None
    dropped = None
    info_json: str | None = None
    if facts is not None and not facts["in_recovery"]:
        code, info = _run(["pgbackrest", f"--stanza={cfg['stanza']}", "--output=json", "--io-timeout=5", "info"])
        if code == 0:
            info_json = info
            backups = [{"start": b["timestamp"]["start"], "stop": b["timestamp"]["stop"], "error": b.get("error"),
                        "repo": int((b.get("database") or {}).get("repo-key") or 1)}
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
    return (facts, (out.strip().splitlines() or ["?"])[-1], disk_pct, backups, dropped), info_json


def measure(cfg: dict[str, Any]) -> Measured:
    return measure_all(cfg)[0]


def read_certificates(paths: list[str]) -> list[CertFact]:
    """Each readable certificate's subject and end; one that is missing or unreadable is said on stderr and left
    out (no series: the rule cannot fire for it, so the job says so where cron mails it)."""
    out = []
    for path in paths:
        code, text = _run(["openssl", "x509", "-noout", "-subject", "-enddate", "-nameopt", "RFC2253", "-in", path])
        try:
            if code != 0:
                raise TextfileError(text.strip()[-200:])
            out.append(parse_x509_enddate(path, text))
        except TextfileError as exc:
            print(f"hcbpg-health: certificate {path}: {exc}", file=sys.stderr)
    return out


def write_textfile(path: str, text: str) -> None:
    """*text* into *path* whole: a temporary file in the same directory (mode 0644), then renamed over it."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def textfile(cfg: dict[str, Any], info: str | None, now: float) -> str | None:
    """The textfile's text from what was measured (None: the config has no textfile section)."""
    tf = cfg.get("textfile")
    if not tf:
        return None
    try:
        return render_textfile_metrics(now=now, info_json=info, certificates=read_certificates(tf["certificates"]))
    except TextfileError as exc:  # pgbackrest info answered what is not JSON: the rest still goes out
        print(f"hcbpg-health: pgbackrest info: {exc}", file=sys.stderr)
        return render_textfile_metrics(now=now, certificates=read_certificates(tf["certificates"]))


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
    measured, info = measure_all(cfg)
    result = judge(cfg, *measured)
    text = textfile(cfg, info, time.time())
    if text is not None:
        try:
            write_textfile(cfg["textfile"]["path"], text)
        except OSError as exc:
            print(f"hcbpg-health: writing {cfg['textfile']['path']} failed: {exc}", file=sys.stderr)
    base = cfg["url"].rstrip("/") + "/" + cfg["server"]
    for name in CHECKS:
        why = result[name]
        print(f"{name}: {'ok' if why is None else 'FAIL ' + why}")
        if cfg["url"]:
            send(f"{base}-{name}" + ("" if why is None else "/fail"), why or "ok")
    return 1 if any(result.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
