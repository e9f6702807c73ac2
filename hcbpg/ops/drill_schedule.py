"""The weekly restore drill on the jumpbox (issue 24): installed there (PostgreSQL 15 without an automatic cluster,
pgBackRest, the drill's pgbackrest config with the servers' keys, its settings, the job and its cron file) and run
once on demand.  What it renders: :mod:`hcbpg.desired.drill_schedule`; the job: :mod:`hcbpg.ops.jobs.drill_job`."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.drill_schedule import (
    DRILL_CONF_PATH,
    DRILL_CRON_PATH,
    DRILL_DIR,
    DRILL_JOB_CONFIG_PATH,
    DRILL_JOB_PATH,
    DRILL_LOG,
    NO_MAIN_CLUSTER_PATH,
    drill_secret_refs,
    render_drill_command,
    render_drill_conf,
    render_drill_cron,
    render_drill_job,
    render_drill_job_config,
    render_no_main_cluster,
)
from hcbpg.errors import HcbpgError
from hcbpg.ops.pgbackrest import ensure_installed
from hcbpg.outcome import Outcome, unified_diff

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result
    from hcbpg.params import Params

PACKAGES = ("postgresql-15", "pgbackrest")


def _ensure_file(host: "HostLike", path: str, shown: str, real: str, *, mode: int, group: str = "root") -> Outcome:
    """*path* holds *real* with *mode*, root:*group*; the diff shows *shown* (secrets as ``<secret>``)."""
    seen = Changes(host)
    what = f"{path} on {host.name}"
    current = host.read_text(path)
    st = host.probe(f"stat -c '%a %U %G' {shlex.quote(path)}").stdout.strip()
    if current == real and st == f"{mode:o} root {group}":
        return Outcome(what, False, host.dry_run)
    host.put_text(path, real, mode=mode, owner="root", group=group)
    diff = unified_diff("" if current is None else "(the file as it was: not shown, it may hold keys)\n", shown, path) \
        if real != shown else unified_diff(current or "", shown, path)
    return seen.outcome(what, diff=diff, actions=[f"write {path} (mode {mode:04o}, owner root:{group})"])


def _ensure_directory(host: "HostLike", path: str, *, mode: int, owner: str) -> Outcome:
    seen = Changes(host)
    if host.probe(f"stat -c '%a %U %F' {shlex.quote(path)}").stdout.strip() != f"{mode:o} {owner} directory":
        ensure_dir(host, path, mode=mode, owner=owner, group=owner)
    return seen.outcome(f"directory {path} on {host.name}")


def ensure_drill_schedule(host: "HostLike", params: "Params") -> list[Outcome]:
    """On the jumpbox: no automatic cluster, PostgreSQL 15 and pgBackRest installed, /etc/hcbpg, the drill's
    directory (postgres 0700), its pgbackrest config with the servers' keys (0640 root:postgres, ``<secret>`` in its
    diff), its settings, the job (0755) and the weekly cron file.  Refused (ParamsError) without a jumpbox or
    pgBackRest in params, before anything is run."""
    shown = render_drill_conf(params)
    if host.dry_run and host.read_text(DRILL_CONF_PATH) is None:
        real = shown  # a plan does not resolve the keys of a file written whole anyway
    else:
        real = render_drill_conf(params, secrets={opt: hsecrets.resolve(ref, key=key)
                                                  for opt, (key, ref) in drill_secret_refs(params).items()})
    job_config, cron, job = render_drill_job_config(params), render_drill_cron(params), render_drill_job()
    no_main = render_no_main_cluster()
    outcomes = [_ensure_directory(host, "/etc/postgresql-common/createcluster.d", mode=0o755, owner="root"),
                _ensure_file(host, NO_MAIN_CLUSTER_PATH, no_main, no_main, mode=0o644),
                ensure_installed(host, packages=PACKAGES),
                _ensure_directory(host, "/etc/hcbpg", mode=0o755, owner="root"),
                _ensure_directory(host, DRILL_DIR, mode=0o700, owner="postgres"),
                _ensure_file(host, DRILL_CONF_PATH, shown, real, mode=0o640, group="postgres"),
                _ensure_file(host, DRILL_JOB_CONFIG_PATH, job_config, job_config, mode=0o644),
                _ensure_file(host, DRILL_JOB_PATH, job, job, mode=0o755),
                _ensure_file(host, DRILL_CRON_PATH, cron, cron, mode=0o644)]
    return outcomes


def run_drill_job(host: "HostLike", *, repo: int | None = None, timeout: float = 6 * 3600,
                  check: bool = True) -> "Result":
    """The drill job once on the jumpbox, as cron runs it (*repo*: that repository, else the next in turn); its
    output also goes to the job's log.  A failed drill raises HcbpgError when *check*."""
    cmd = f"{render_drill_command(repo)} 2>&1 | tee -a {DRILL_LOG}; exit ${{PIPESTATUS[0]}}"
    res = host.run(f"bash -c {shlex.quote(cmd)}", check=False, timeout=timeout)
    if check and not res.ok:
        raise HcbpgError(f"on {host.name}: the restore drill failed (exit {res.exit_code}): "
                         f"{hsecrets.scrub(res.output.strip())[-800:]}",
                         hint=f"Read {DRILL_LOG} and {DRILL_DIR}/state.json on the jumpbox.")
    return res
