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

The health job (:mod:`hcbpg.ops.jobs.health_job`, with the rules of :mod:`hcbpg.desired.health`) runs on
every server too, every few minutes, and pings one URL per concern only while that concern holds.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.adapters.site import site_for
from hcbpg.desired.schedule import (
    CRON_PATH,
    HEALTH_CONFIG_PATH,
    HEALTH_CRON_PATH,
    HEALTH_JOB_PATH,
    JOB_PATH,
    Schedule,
    plan_health_url,
    plan_schedule,
    render_backup_job_script,
    render_cron,
    render_health_config,
    render_health_cron,
    render_health_job,
)
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.param_types import PLACEHOLDER

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result
    from hcbpg.params import Params, Server


def _schedule(params: "Params") -> Schedule:
    return plan_schedule(params, site_for(params).deadman_url(params))


def _health_url(params: "Params") -> str | None:
    return plan_health_url(params, site_for(params).health_deadman_url(params))


def _ensure_file(host: "HostLike", path: str, desired: str, *, mode: int, server: "Server") -> Outcome:
    seen = Changes(host)
    what = f"{path} on {server.name}"
    current = host.read_text(path)
    st = host.probe(f"stat -c '%a %U %G' {shlex.quote(path)}").stdout.strip()
    if current == desired and st == f"{mode:o} root root":
        return Outcome(what, False, host.dry_run)
    host.put_text(path, desired, mode=mode, owner="root")
    return seen.outcome(what, diff=unified_diff(current or "", desired, path),
                        actions=[f"write {path} (mode {mode:04o}, owner root)"])


def ensure_backup_schedule(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """The job script (0755) and the cron file (0644, root) are ours."""
    s = _schedule(params)
    return [
        _ensure_file(host, JOB_PATH, render_backup_job_script(params, s), mode=0o755, server=server),
        _ensure_file(host, CRON_PATH, render_cron(s), mode=0o644, server=server),
    ]


def check_backup_schedule(host: "HostLike", params: "Params", server: "Server") -> list[Check]:
    """Job script and cron file are ours, cron and curl are installed, a dead-man URL is set."""
    s = _schedule(params)
    out = []
    for path, text, mode in ((JOB_PATH, render_backup_job_script(params, s), "755"),
                             (CRON_PATH, render_cron(s), "644")):
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
        # a site whose hosts have no cron daemon (the lab) runs the job directly instead: there, no cron is
        # the expected state (a pass that says so), not a warning
        cron_runs_jobs = site_for(params).cron_runs_jobs
        out.append(Check("cron installed", "fail", "not installed: the schedule does not run", server.name)
                   if cron_runs_jobs else
                   Check("cron installed", "pass", "expected: no cron on this site's hosts (the lab): the schedule "
                         "is not run by cron here; the tests run the job directly", server.name))
    placeholder = bool(s.deadman_url) and PLACEHOLDER in (s.deadman_url or "")
    out.append(Check.of("dead-man's switch URL set", bool(s.deadman_url) and not placeholder,
                        "pings go to the URL in params" if s.deadman_url and not placeholder else
                        f"pgbackrest.deadman_url is still the placeholder {s.deadman_url}: set the team's "
                        "healthchecks.io URL" if placeholder else
                        "pgbackrest.deadman_url is not set: nobody hears about failed backups", server.name))
    return out


# the health job -------------------------------------------------------------------------------------

def ensure_health_schedule(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """The health job (0755), its config (0644) and its cron file (0644) are ours, on *server*."""
    url = _health_url(params)
    files = ((HEALTH_JOB_PATH, render_health_job(), 0o755),
             (HEALTH_CONFIG_PATH, render_health_config(params, server, url), 0o644),
             (HEALTH_CRON_PATH, render_health_cron(params, url), 0o644))
    if not host.probe("test -d /etc/hcbpg").ok:
        host.run("install -d -m 0755 -o root -g root /etc/hcbpg", quiet=True)
    return [_ensure_file(host, path, text, mode=mode, server=server) for path, text, mode in files]


def ensure_schedules(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """Both schedules on *server* (every server gets them): backups (run only on the primary) and health."""
    return ensure_backup_schedule(host, params, server) + ensure_health_schedule(host, params, server)


def run_health_job(host: "HostLike", *, timeout: float = 300) -> "Result":
    """Run the health job now, as cron would (as postgres); never raises on its exit status."""
    return host.run(HEALTH_JOB_PATH, sudo_user="postgres", check=False, timeout=timeout)


def run_backup_job(host: "HostLike", kind: str = "diff", *, env: Mapping[str, str] | None = None,
                   timeout: float = 3600) -> "Result":
    """Run the scheduled job now, as cron would (as postgres); never raises on its exit status."""
    if kind not in ("full", "diff", "incr"):
        raise ValueError(f"backup type must be full, diff or incr, not {kind!r}")
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    cmd = f"{prefix + ' ' if prefix else ''}{JOB_PATH} {kind}"
    return host.run(cmd, sudo_user="postgres", check=False, timeout=timeout)
