"""The schedules installed on every server, pure: the backup job's cron file and script (pgBackRest, then a
ping to the dead-man's switch) and the health job's cron file, config and program.

The dead-man's URLs come from params, else from the site (the lab's receiver; none in production):
the caller passes the site's (:mod:`hcbpg.ops.schedule`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from hcbpg.desired import pgbackrest_server
from hcbpg.desired.pgbackrest import CONF_PATH
from hcbpg.desired.textfile_metrics import TEXTFILE
from hcbpg.errors import ParamsError
from hcbpg.pg.conf import MANAGED_HEADER

if TYPE_CHECKING:  # pragma: no cover
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
    #: repo2's (full, diff) schedules when params have a second repository
    repo2: tuple[str, str] | None = None
    #: backups copy from the standby (pgbackrest.backup_standby): when that fails the job takes one from the primary
    backup_standby: bool = False
    #: the pg2-* options that fall-back resets (``--reset-pg2-host`` ...), so it does not wait on the standby again
    standby_options: tuple[str, ...] = ()
    #: the port of the standby's pgBackRest TLS server (pgbackrest.tls_server_port), which the job asks first
    tls_server_port: int = 8432


def plan_schedule(params: "Params", site_url: str | None) -> Schedule:
    """The schedule from params (``pgbackrest.schedule_full``, ``schedule_diff``, ``deadman_url``; the params
    model checks their form), the dead-man's URL else *site_url* (the site's: the lab's receiver)."""
    pb = params.pgbackrest
    if pb is None:
        raise ParamsError("params", ["pgbackrest: required for this step (the backup repository)"])
    full, diff = pb.schedule_full or DEFAULT_FULL, pb.schedule_diff or DEFAULT_DIFF
    repo2 = (pb.repo2.schedule_full, pb.repo2.schedule_diff) if pb.repo2 is not None else None
    url = pb.deadman_url if pb.deadman_url is not None else site_url
    problems = []  # checked again here: each value becomes a line of a cron file or a shell script
    for key, value in (("schedule_full", full), ("schedule_diff", diff),
                       *((("repo2.schedule_full", repo2[0]), ("repo2.schedule_diff", repo2[1])) if repo2 else ())):
        if not _CRON_RE.match(value):
            problems.append(f"pgbackrest.{key}: {value!r} is not a cron schedule of five fields "
                            "(minute hour day-of-month month day-of-week), e.g. '30 6 * * 0'")
    if url is not None and not _URL_RE.match(url):
        problems.append(f"pgbackrest.deadman_url: {url!r} is not an http(s) URL without query or quotes")
    if problems:
        raise ParamsError("params", problems)
    standby = pgbackrest_server.enabled(params)
    pg2 = pgbackrest_server.conf_sections(params, params.servers[0], pg_path="-").get(pb.stanza, {}) if standby else {}
    return Schedule(pb.stanza, full, diff, url.rstrip("/") if url else None, repo2, backup_standby=standby,
                    standby_options=tuple(sorted(k for k in pg2 if k.startswith("pg2-"))),
                    tls_server_port=pb.tls_server_port)


def render_cron(s: Schedule) -> str:
    """/etc/cron.d/hcbpg-backup: weekly full and daily differential backups, as postgres (into repo1; with a
    second repository, into repo2 on its own schedule: the job's second argument)."""
    repo2 = [f"{s.repo2[0]} postgres {JOB_PATH} full 2", f"{s.repo2[1]} postgres {JOB_PATH} diff 2"] if s.repo2 else []
    return "\n".join([
        MANAGED_HEADER,
        f"# pgBackRest backups of stanza {s.stanza}; each run pings the dead-man's switch (see {JOB_PATH}).",
        "# Times are the server's time zone (UTC on Hetzner's images).",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
        f"{s.full} postgres {JOB_PATH} full",
        f"{s.diff} postgres {JOB_PATH} diff",
        *repo2,
        "",
    ])


def render_backup_job_script(params: "Params", s: Schedule) -> str:
    """The job script: backup as postgres into one repository, then a success or failure ping (curl, timeout
    and retries).

    Exits with pgBackRest's exit status, so a failed backup is a failed cron job too.  One backup runs at a
    time (``flock``): pgBackRest holds one backup lock per stanza, so repo2's backup on repo1's schedule waits
    for repo1's to end instead of failing.
    """
    repos = "1|2" if s.repo2 else "1"
    url = shlex.quote(s.deadman_url or "")
    return f"""#!/bin/sh
{MANAGED_HEADER}
# Scheduled pgBackRest backup of stanza {s.stanza} (cron: {CRON_PATH}), then a ping to the
# dead-man's switch: URL/start before, URL on success, URL/fail?status=N on failure.
# The outside service alerts when the pings stop: a failed backup, a stopped cron, a server
# that is down.  Run by hand as postgres:  sudo -u postgres {JOB_PATH} diff [repository]
set -u
STANZA={shlex.quote(s.stanza)}
PING_URL={url}
LOG={JOB_LOG}

type="${{1:-}}"
repo="${{2:-1}}"
case "$type" in
  full|diff|incr) ;;
  *) echo "usage: $0 full|diff|incr [{repos}]" >&2; exit 64 ;;
esac
case "$repo" in
  {repos}) ;;
  *) echo "usage: $0 full|diff|incr [{repos}]: no repository $repo" >&2; exit 64 ;;
esac
if [ "$(id -un)" != postgres ]; then
  echo "$0: run this as postgres (sudo -u postgres $0 $type $repo)" >&2
  exit 77
fi
# one backup at a time (pgBackRest's backup lock is one per stanza): wait for the one running
exec 9>>"$LOG.lock"
if ! flock -w 43200 9; then
  echo "$0: another backup held the lock for 12 hours; no backup" >&2
  exit 75
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
echo "hcbpg-backup $type repo$repo starting" | send_ping "$PING_URL/start" || echo "$0: start ping failed" >&2
{backup_lines(s)}cat "$out"
{{ echo "$(date -u +%FT%TZ) $type repo$repo exit $status"; tail -n 5 "$out"; }} >>"$LOG" 2>/dev/null
if [ "$status" -eq 0 ]; then
  tail -n 20 "$out" | send_ping "$PING_URL" || echo "$0: success ping failed" >&2
else
  tail -n 20 "$out" | send_ping "$PING_URL/fail?status=$status" || echo "$0: failure ping failed" >&2
fi
exit "$status"
"""


#: io-timeout (s) of the job's probe of the standby's TLS server; ``timeout`` ends the probe after STANDBY_PROBE_S
STANDBY_PROBE_IO_TIMEOUT_S = 5
STANDBY_PROBE_S = 20


def backup_lines(s: Schedule) -> str:
    """The job's backup: pgBackRest into the repository, its exit status in ``$status``.

    With backups from the standby, the standby's pgBackRest TLS server (pg2 in pgbackrest.conf) is asked first
    (``pgbackrest server-ping``, 5 s of I/O at most): when it does not answer, the backup is taken from the primary at
    once (``--no-backup-standby``), said in the output.  pgBackRest 2.45 itself retries the connection to pg2 for
    io-timeout (60 s by default) before it fails the backup (measured in the lab: the job took minutes to fall back);
    the io-timeout of the backup itself is not shortened (it bounds every read and write of the copy, to S3 too).
    A standby that answers but cannot serve the backup (its PostgreSQL down, ...) still fails the first try in
    seconds, and :func:`standby_fallback` takes it again from the primary."""
    plain = ('pgbackrest --stanza="$STANZA" --repo="$repo" --type="$type" --log-level-console=info backup >"$out" 2>&1\n'
             'status=$?\n')
    if not s.backup_standby:
        return plain
    fallback = "".join(f"  {line}\n" if line else "\n" for line in standby_fallback(s).splitlines())
    return f"""# backups from the standby: does the standby's pgBackRest TLS server (pg2 in {CONF_PATH}) answer?
pg2=$(sed -n 's/^pg2-host=//p' {CONF_PATH} 2>/dev/null | head -n 1)
if [ -n "$pg2" ] && ! timeout {STANDBY_PROBE_S} pgbackrest server-ping --io-timeout={STANDBY_PROBE_IO_TIMEOUT_S} \\
    --tls-server-address="$pg2" --tls-server-port={s.tls_server_port} >/dev/null 2>&1; then
  echo "$0: the $type backup cannot copy from the standby: its pgBackRest TLS server $pg2:{s.tls_server_port}" \\
    "does not answer; taking it from the primary (--no-backup-standby)" | tee "$out" >&2
  echo "$(date -u +%FT%TZ) $type repo$repo: the standby's TLS server does not answer; from the primary" >>"$LOG" 2>/dev/null
  {primary_backup(s)} >>"$out" 2>&1
  status=$?
else
  {plain.replace(chr(10), chr(10) + "  ", 1)}{fallback}fi
"""


def primary_backup(s: Schedule) -> str:
    """The backup command from the primary alone: ``--no-backup-standby`` and every pg2 option reset, so that
    pgBackRest does not connect to the standby at all."""
    resets = " ".join(f"--reset-{o}" for o in s.standby_options)
    return (f'pgbackrest --stanza="$STANZA" --repo="$repo" --type="$type" --no-backup-standby {resets} \\\n'
            '    --log-level-console=info backup')


def standby_fallback(s: Schedule) -> str:
    """The job's lines after a failed backup from the standby (pgBackRest 2.45 fails one when no standby answers;
    ``backup-standby=prefer`` came in 2.56): the same backup again from the primary, said in the output (and so in
    the ping's body and the job's log), with pg2's options reset (``--reset-pg2-host`` ...), so that it does not try
    the standby again (its connects time out).  Empty without backups from the standby."""
    if not s.backup_standby:
        return ""
    return f"""if [ "$status" -ne 0 ]; then
  why=$(grep -m1 ERROR "$out")
  echo "$0: the $type backup from the standby failed (exit $status: $why);" \\
    "taking it from the primary (--no-backup-standby)" | tee -a "$out" >&2
  echo "$(date -u +%FT%TZ) $type repo$repo from the standby: exit $status; again from the primary" >>"$LOG" 2>/dev/null
  {primary_backup(s)} >>"$out" 2>&1
  status=$?
fi
"""


# the health job -------------------------------------------------------------------------------------

def plan_health_url(params: "Params", site_url: str | None) -> str | None:
    """The health pings' base URL: ``health.deadman_url``, else *site_url* (the lab's receiver; none in production)."""
    url = params.health.deadman_url if params.health.deadman_url is not None else site_url
    return url.rstrip("/") if url else None


def render_health_config(params: "Params", server: "Server", url: str | None) -> str:
    """/etc/hcbpg/health.json for *server*: its name, the URL, the thresholds (no secrets)."""
    h = params.health
    cfg = {"server": server.name, "url": url or "", "port": params.postgres.port,
           "stanza": params.pgbackrest.stanza if params.pgbackrest else "",
           "data_directory": f"/var/lib/postgresql/{params.postgres.version}/{params.postgres.cluster}",
           "thresholds": {"replay_lag_fail_s": h.replay_lag_fail_s, "slot_retained_fail_mb": h.slot_retained_fail_mb,
                          "backup_age_fail_h": h.backup_age_fail_h, "disk_fail_pct": h.disk_fail_pct,
                          "wal_fail_mb": h.wal_fail_mb, "archive_ready_max": h.archive_ready_max}}
    if params.alerting is not None:
        # node exporter's textfile (issue 25): pgBackRest's info and these certificates' ends, every run
        from hcbpg.desired.alerting import textfile_certificates  # noqa: PLC0415 - alerting imports much more
        cfg["textfile"] = {"path": TEXTFILE, "certificates": textfile_certificates(params, server.name)}
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


#: the line of the job that imports the rules; the installed program holds the rules' source in its place
RULES_IMPORT = "from hcbpg.desired.health import "
#: the line of the job that imports the textfile renderer (stdlib-only too); its source goes in after the rules
TEXTFILE_IMPORT = "from hcbpg.desired.textfile_metrics import "
_FUTURE = "from __future__ import annotations"


def render_health_job() -> str:
    """The health job, as installed: one standard-library program, the rules (:mod:`hcbpg.desired.health`) and
    node exporter's textfile renderer (:mod:`hcbpg.desired.textfile_metrics`) followed by
    :mod:`hcbpg.ops.jobs.health_job` without its imports of them, with a shebang and our header."""
    rules = resources.files("hcbpg.desired").joinpath("health.py").read_text(encoding="utf-8")
    textfile = resources.files("hcbpg.desired").joinpath("textfile_metrics.py").read_text(encoding="utf-8")
    job = resources.files("hcbpg.ops.jobs").joinpath("health_job.py").read_text(encoding="utf-8")
    kept = [line for line in job.splitlines(keepends=True)
            if not line.startswith((RULES_IMPORT, TEXTFILE_IMPORT)) and line.strip() != _FUTURE]
    if len(kept) != len(job.splitlines()) - 3:
        raise ValueError("hcbpg/ops/jobs/health_job.py must import the rules in one line "
                         f"({RULES_IMPORT}...) and the textfile renderer in one line ({TEXTFILE_IMPORT}...) "
                         f"after `{_FUTURE}`")
    # one `from __future__` only, at the top of the program: the rules' (the second module's goes)
    textfile = "".join(line for line in textfile.splitlines(keepends=True) if line.strip() != _FUTURE)
    bar = "-" * 90
    return (f"#!/usr/bin/python3\n{MANAGED_HEADER}\n{rules}\n\n# node exporter's textfile {bar}\n\n{textfile}"
            f"\n\n# the job {bar}\n\n" + "".join(kept))


def render_health_cron(params: "Params", url: str | None) -> str:
    return "\n".join([
        MANAGED_HEADER,
        f"# hcbpg health checks; each pings {url or '(no URL set)'}/<server>-<check> while it holds.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
        f"{params.health.schedule} postgres {HEALTH_JOB_PATH} >/dev/null 2>&1",
        "",
    ])
