"""Scheduled backups: a cron file that runs a small job script as postgres, and the script,
which runs ``pgbackrest backup`` and then pings a dead-man's switch (healthchecks.io style).

The outside service alerts when the pings stop, so a failed backup, a stopped cron and a
server that is down all end in the same alert; nothing on the server has to be up to
raise it.  Pings: ``<url>/start`` before, ``<url>`` on success, ``<url>/fail?status=N``
on failure, each with the tail of pgBackRest's output as the body.

The schedule is installed on **every** server, and the job backs up only where
``pg_is_in_recovery()`` is false (a standby exits 0 without a ping).  So after a switchover
or an unplanned failover the new primary's cron takes the backups and the old primary's
does nothing, without step 11 having to reach the old primary (which may be powered off) to
move anything, and a server that comes back as a replica stays quiet on its own.

The health job (:mod:`hcbpg.ops.jobs.health_job`) runs on every server too, every few
minutes, and pings one URL per concern only while that concern holds.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from hcbpg.adapters.site import site_for
from hcbpg.errors import ParamsError
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.params import PLACEHOLDER
from hcbpg.pg.conf import MANAGED_HEADER

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host, Result
    from hcbpg.params import Params, Server

JOB_PATH = "/usr/local/sbin/hcbpg-backup"
HEALTH_JOB_PATH = "/usr/local/sbin/hcbpg-health"
HEALTH_CRON_PATH = "/etc/cron.d/hcbpg-health"
HEALTH_CONFIG_PATH = "/etc/hcbpg/health.json"
CRON_PATH = "/etc/cron.d/hcbpg-backup"
JOB_LOG = "/var/log/pgbackrest/hcbpg-backup.log"
#: the production team's schedule: full on Sunday 06:30, differential Monday to Saturday 06:30
DEFAULT_FULL = "30 6 * * 0"
DEFAULT_DIFF = "30 6 * * 1-6"
_CRON_FIELD = r"[0-9A-Za-z*/,\-]+"
_CRON_RE = re.compile(rf"^{_CRON_FIELD}( {_CRON_FIELD}){{4}}$")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/%]*)?$")


@dataclass(frozen=True)
class Schedule:
    """When backups run and where they report."""

    stanza: str
    full: str
    diff: str
    deadman_url: str | None


def get_schedule(params: "Params") -> Schedule:
    """The schedule from params (``pgbackrest.schedule_full``, ``schedule_diff``, ``deadman_url``).

    Until those fields exist in the params model they default to the production team's
    times and to the site's receiver (the lab's; none in production).
    """
    pb = params.pgbackrest
    if pb is None:
        raise ParamsError("params", ["pgbackrest: required for this step (the backup repository)"])
    full = getattr(pb, "schedule_full", None) or DEFAULT_FULL
    diff = getattr(pb, "schedule_diff", None) or DEFAULT_DIFF
    url = getattr(pb, "deadman_url", None)
    if url is None:
        url = site_for(params).deadman_url(params)
    problems = []
    for key, value in (("schedule_full", full), ("schedule_diff", diff)):
        if not _CRON_RE.match(value):
            problems.append(f"pgbackrest.{key}: {value!r} is not a cron schedule of five fields "
                            "(minute hour day-of-month month day-of-week), e.g. '30 6 * * 0'")
    if url is not None and not _URL_RE.match(url):
        problems.append(f"pgbackrest.deadman_url: {url!r} is not an http(s) URL without query or quotes")
    if problems:
        raise ParamsError("params", problems)
    return Schedule(pb.stanza, full, diff, url.rstrip("/") if url else None)


def render_cron(params: "Params") -> str:
    """/etc/cron.d/hcbpg-backup: weekly full and daily differential backups, as postgres."""
    s = get_schedule(params)
    return "\n".join([
        MANAGED_HEADER,
        f"# pgBackRest backups of stanza {s.stanza}; each run pings the dead-man's switch (see {JOB_PATH}).",
        "# Times are the server's time zone (UTC on Hetzner's images).",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
        f"{s.full} postgres {JOB_PATH} full",
        f"{s.diff} postgres {JOB_PATH} diff",
        "",
    ])


def render_backup_job_script(params: "Params") -> str:
    """The job script: backup as postgres, then a success or failure ping (curl, timeout and retries).

    Exits with pgBackRest's exit status, so a failed backup is a failed cron job too.
    """
    s = get_schedule(params)
    url = shlex.quote(s.deadman_url or "")
    return f"""#!/bin/sh
{MANAGED_HEADER}
# Scheduled pgBackRest backup of stanza {s.stanza} (cron: {CRON_PATH}), then a ping to the
# dead-man's switch: URL/start before, URL on success, URL/fail?status=N on failure.
# The outside service alerts when the pings stop: a failed backup, a stopped cron, a server
# that is down.  Run by hand as postgres:  sudo -u postgres {JOB_PATH} diff
set -u
STANZA={shlex.quote(s.stanza)}
PING_URL={url}
LOG={JOB_LOG}

type="${{1:-}}"
case "$type" in
  full|diff|incr) ;;
  *) echo "usage: $0 full|diff|incr" >&2; exit 64 ;;
esac
if [ "$(id -un)" != postgres ]; then
  echo "$0: run this as postgres (sudo -u postgres $0 $type)" >&2
  exit 77
fi
# installed on every server: only the primary backs up (after a failover, the new one)
if ! in_recovery=$(psql -X -A -t -q -p {params.postgres.port} -d postgres -c 'SELECT pg_is_in_recovery()' 2>&1); then
  # PostgreSQL down: no ping (a standby's failure must not mark the cluster's backup failed;
  # a primary that is down sends no success ping, which is the alert)
  echo "$0: PostgreSQL does not answer ($in_recovery); no backup" >&2
  echo "$(date -u +%FT%TZ) $type skipped: PostgreSQL does not answer" >>"$LOG" 2>/dev/null
  exit 75
fi
if [ "$in_recovery" = t ]; then
  echo "$0: this server is a standby; backups run on the primary"
  echo "$(date -u +%FT%TZ) $type skipped: standby" >>"$LOG" 2>/dev/null
  exit 0
fi

send_ping() {{
  # $1: URL; stdin: the body (the tail of pgBackRest's output)
  [ -n "$PING_URL" ] || return 0
  curl -fsS -m 10 --retry 5 --retry-delay 2 --retry-connrefused -o /dev/null --data-binary @- "$1"
}}

out=$(mktemp) || exit 75
trap 'rm -f "$out"' EXIT
echo "hcbpg-backup $type starting" | send_ping "$PING_URL/start" || echo "$0: start ping failed" >&2
pgbackrest --stanza="$STANZA" --type="$type" --log-level-console=info backup >"$out" 2>&1
status=$?
cat "$out"
{{ echo "$(date -u +%FT%TZ) $type exit $status"; tail -n 5 "$out"; }} >>"$LOG" 2>/dev/null
if [ "$status" -eq 0 ]; then
  tail -n 20 "$out" | send_ping "$PING_URL" || echo "$0: success ping failed" >&2
else
  tail -n 20 "$out" | send_ping "$PING_URL/fail?status=$status" || echo "$0: failure ping failed" >&2
fi
exit "$status"
"""


def _ensure_file(host: "Host | None", path: str, desired: str, *, mode: int, server: "Server",
                 dry_run: bool) -> Outcome:
    what = f"{path} on {server.name}"
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", desired, path), actions=[f"write {path}"])
    current = host.read_text(path)
    st = host.probe(f"stat -c '%a %U %G' {shlex.quote(path)}").stdout.strip()
    right_mode = st == f"{mode:o} root root"
    if current == desired and right_mode:
        return Outcome(what, False, dry_run)
    host.put_text(path, desired, mode=mode, owner="root", dry_run=dry_run)
    actions = [f"write {path} (mode {mode:04o}, owner root)"]
    return Outcome(what, True, dry_run, diff=unified_diff(current or "", desired, path), actions=actions)


def ensure_backup_schedule(host: "Host | None", params: "Params", server: "Server", *,
                           dry_run: bool) -> list[Outcome]:
    """The job script (0755) and the cron file (0644, root) are ours."""
    return [
        _ensure_file(host, JOB_PATH, render_backup_job_script(params), mode=0o755, server=server, dry_run=dry_run),
        _ensure_file(host, CRON_PATH, render_cron(params), mode=0o644, server=server, dry_run=dry_run),
    ]


def check_backup_schedule(host: "Host", params: "Params", server: "Server") -> list[Check]:
    """Job script and cron file are ours, cron and curl are installed, a dead-man URL is set."""
    s = get_schedule(params)
    out = []
    for path, text, mode in ((JOB_PATH, render_backup_job_script(params), "755"),
                             (CRON_PATH, render_cron(params), "644")):
        cur = host.read_text(path)
        st = host.probe(f"stat -c '%a %U %G' {shlex.quote(path)}").stdout.strip()
        out.append(Check.of(f"{path} is hcbpg's", cur == text and st == f"{mode} root root",
                            f"mode/owner {st or 'missing'}" + ("" if cur == text else ", content differs"),
                            server.name))
    pk = get_installed_packages(host, ["cron", "curl"])
    out.append(Check.of("curl installed (pings)", "curl" in pk, pk.get("curl", "not installed"), server.name))
    if "cron" in pk:
        out.append(Check("cron installed", "pass", pk["cron"], server.name))
    else:
        # a site whose hosts have no cron daemon (the lab) runs the job directly instead
        cron_runs_jobs = site_for(params).cron_runs_jobs
        out.append(Check("cron installed", "fail" if cron_runs_jobs else "warn",
                         "not installed: the schedule does not run" + ("" if cron_runs_jobs
                                                                        else " (lab: the tests run the job)"),
                         server.name))
    placeholder = bool(s.deadman_url) and PLACEHOLDER in (s.deadman_url or "")
    out.append(Check.of("dead-man's switch URL set", bool(s.deadman_url) and not placeholder,
                        "pings go to the URL in params" if s.deadman_url and not placeholder else
                        f"pgbackrest.deadman_url is still the placeholder {s.deadman_url}: set the team's "
                        "healthchecks.io URL" if placeholder else
                        "pgbackrest.deadman_url is not set: nobody hears about failed backups", server.name))
    return out


# the health job -------------------------------------------------------------------------------------

def health_url(params: "Params") -> str | None:
    """The health pings' base URL: ``health.deadman_url``, else the site's (the lab's receiver; none in production)."""
    url = params.health.deadman_url
    if url is None:
        url = site_for(params).health_deadman_url(params)
    return url.rstrip("/") if url else None


def render_health_config(params: "Params", server: "Server") -> str:
    """/etc/hcbpg/health.json for *server*: its name, the URL, the thresholds (no secrets)."""
    h = params.health
    cfg = {"server": server.name, "url": health_url(params) or "", "port": params.postgres.port,
           "stanza": params.pgbackrest.stanza if params.pgbackrest else "",
           "data_directory": f"/var/lib/postgresql/{params.postgres.version}/{params.postgres.cluster}",
           "thresholds": {"replay_lag_fail_s": h.replay_lag_fail_s, "slot_retained_fail_mb": h.slot_retained_fail_mb,
                          "backup_age_fail_h": h.backup_age_fail_h, "disk_fail_pct": h.disk_fail_pct,
                          "wal_fail_mb": h.wal_fail_mb, "archive_ready_max": h.archive_ready_max}}
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def render_health_job() -> str:
    """The health job, as installed: :mod:`hcbpg.ops.jobs.health_job` with a shebang and our header."""
    text = resources.files("hcbpg.ops.jobs").joinpath("health_job.py").read_text(encoding="utf-8")
    return f"#!/usr/bin/python3\n{MANAGED_HEADER}\n{text}"


def render_health_cron(params: "Params") -> str:
    return "\n".join([
        MANAGED_HEADER,
        f"# hcbpg health checks; each pings {health_url(params) or '(no URL set)'}/<server>-<check> while it holds.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
        f"{params.health.schedule} postgres {HEALTH_JOB_PATH} >/dev/null 2>&1",
        "",
    ])


def ensure_health_schedule(host: "Host | None", params: "Params", server: "Server", *,
                           dry_run: bool) -> list[Outcome]:
    """The health job (0755), its config (0644) and its cron file (0644) are ours, on *server*."""
    if host is not None and not dry_run:
        host.run("install -d -m 0755 -o root -g root /etc/hcbpg", quiet=True)
    return [
        _ensure_file(host, HEALTH_JOB_PATH, render_health_job(), mode=0o755, server=server, dry_run=dry_run),
        _ensure_file(host, HEALTH_CONFIG_PATH, render_health_config(params, server), mode=0o644, server=server,
                     dry_run=dry_run),
        _ensure_file(host, HEALTH_CRON_PATH, render_health_cron(params), mode=0o644, server=server, dry_run=dry_run),
    ]


def ensure_schedules(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> list[Outcome]:
    """Both schedules on *server* (every server gets them): backups (run only on the primary) and health."""
    return (ensure_backup_schedule(host, params, server, dry_run=dry_run)
            + ensure_health_schedule(host, params, server, dry_run=dry_run))


def run_health_job(host: "Host", *, timeout: float = 300) -> "Result":
    """Run the health job now, as cron would (as postgres); never raises on its exit status."""
    return host.run(HEALTH_JOB_PATH, sudo_user="postgres", check=False, timeout=timeout)


def run_backup_job(host: "Host", kind: str = "diff", *, env: Mapping[str, str] | None = None,
                   timeout: float = 3600) -> "Result":
    """Run the scheduled job now, as cron would (as postgres); never raises on its exit status."""
    if kind not in ("full", "diff", "incr"):
        raise ValueError(f"backup type must be full, diff or incr, not {kind!r}")
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    cmd = f"{prefix + ' ' if prefix else ''}{JOB_PATH} {kind}"
    return host.run(cmd, sudo_user="postgres", check=False, timeout=timeout)
