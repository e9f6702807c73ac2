"""Specs of the schedules (step 08, and every server at step 10): the backup job and its cron file, the health
job, its config and cron file, on the recording double (hcbpg.ops.schedule); and the health job as installed:
one standard-library program that judges as the rules do."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.adapters.site import site_for
from hcbpg.desired import schedule as desired_schedule
from hcbpg.desired.schedule import (
    CRON_PATH,
    HEALTH_CONFIG_PATH,
    HEALTH_CRON_PATH,
    HEALTH_JOB_PATH,
    JOB_PATH,
    render_health_job,
)
from hcbpg.errors import ParamsError, RemoteCommandError
from hcbpg.ops import schedule
from hcbpg.ops.jobs import health_job
from hcbpg.params import parse_params
from tests.fast.specs import covers, params_data

NAME = "server-postgres-1"
BASE: dict[str, Any] = params_data(
    pgbackrest={"s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_key": "env:K", "s3_key_secret": "env:S",
                "cipher_pass": "env:C"})
MKDIR = "install -d -m 0755 -o root -g root /etc/hcbpg"


@pytest.fixture
def params():
    return parse_params(BASE)


class Server:
    """Files with their modes and owners behind a :class:`RecordingHost` (``stat`` answers from them)."""

    def __init__(self, files: dict[str, tuple[str, int]] | None = None, *, etc_hcbpg: bool = False,
                 mkdir_fails: bool = False) -> None:
        self.modes = {p: (m, "root") for p, (_, m) in (files or {}).items()}
        self.etc_hcbpg, self.mkdir_fails = etc_hcbpg, mkdir_fails
        self.host = RecordingHost(NAME, handler=self.answer, files={p: t for p, (t, _) in (files or {}).items()})

    def answer(self, call: Call) -> Result | str | None:
        cmd = call.command
        if m := re.match(r"stat -c '%a %U %G' (\S+)$", cmd):
            for path, _, mode, owner, _group in self.host.written:
                self.modes[path] = (mode, owner)
            got = self.modes.get(m[1])
            return f"{got[0]:o} {got[1]} root\n" if got else Result(NAME, cmd, 1, "", "No such file", 0.0)
        if cmd == "test -d /etc/hcbpg":
            return "" if self.etc_hcbpg else Result(NAME, cmd, 1, "", "", 0.0)
        if cmd == MKDIR:
            if self.mkdir_fails:
                return Result(NAME, cmd, 1, "", "install: cannot create directory '/etc/hcbpg': Read-only file system", 0.0)
            self.etc_hcbpg = True
            return ""
        return None


def url(p) -> str | None:  # noqa: ANN001
    return desired_schedule.plan_health_url(p, site_for(p).health_deadman_url(p))


# the backup job --------------------------------------------------------------------------------------

@covers("hcbpg.ops.schedule.ensure_backup_schedule", "fresh", "second run", "dry run")
def test_backup_job_and_cron_file_written_once_with_their_modes(params):
    s = desired_schedule.plan_schedule(params, site_for(params).deadman_url(params))
    srv = Server()
    dry = DryRunHost(srv.host)
    planned = schedule.ensure_backup_schedule(dry, params, params.primary)
    assert [o.verb for o in planned] == ["would change"] * 2 and dry.journal == [f"write {JOB_PATH}", f"write {CRON_PATH}"]
    assert srv.host.written == []
    out = schedule.ensure_backup_schedule(srv.host, params, params.primary)
    assert all(o.changed for o in out)
    assert [(p, m, o) for p, _, m, o, _ in srv.host.written] == [(JOB_PATH, 0o755, "root"), (CRON_PATH, 0o644, "root")]
    assert srv.host.files[CRON_PATH] == desired_schedule.render_cron(s)
    assert "30 6 * * 0 postgres /usr/local/sbin/hcbpg-backup full" in srv.host.files[CRON_PATH]
    assert srv.host.files[JOB_PATH] == desired_schedule.render_backup_job_script(params, s)
    assert out[1].actions == [f"write {CRON_PATH} (mode 0644, owner root)"] and "+30 6 * * 1-6" in out[1].diff
    assert not any(o.changed for o in schedule.ensure_backup_schedule(srv.host, params, params.primary))
    assert len(srv.host.journal) == 2
    # a mode changed by hand is put back, the content alone is not rewritten elsewhere
    srv.modes[JOB_PATH] = (0o777, "root")
    srv.host.written.clear()
    again = schedule.ensure_backup_schedule(srv.host, params, params.primary)
    assert [o.changed for o in again] == [True, False] and srv.host.journal[2:] == [f"write {JOB_PATH}"]


@covers("hcbpg.ops.schedule.ensure_backup_schedule", "refusal")
@covers("hcbpg.ops.schedule.ensure_schedules", "refusal")
def test_no_schedule_without_a_repository_in_params(params):
    bare = parse_params({k: v for k, v in BASE.items() if k != "pgbackrest"})
    srv = Server()
    for ensure in (schedule.ensure_backup_schedule, schedule.ensure_schedules):
        with pytest.raises(ParamsError, match="pgbackrest: required"):
            ensure(srv.host, bare, bare.primary)
    assert srv.host.journal == []


# the health job --------------------------------------------------------------------------------------

@covers("hcbpg.ops.schedule.ensure_health_schedule", "fresh", "second run", "dry run")
def test_health_job_config_and_cron_written_once(params):
    srv = Server()
    dry = DryRunHost(srv.host)
    planned = schedule.ensure_health_schedule(dry, params, params.primary)
    files = [HEALTH_JOB_PATH, HEALTH_CONFIG_PATH, HEALTH_CRON_PATH]
    assert all(o.dry_run and o.changed for o in planned)
    assert dry.journal == [MKDIR] + [f"write {p}" for p in files] and srv.host.journal == []
    out = schedule.ensure_health_schedule(srv.host, params, params.primary)
    assert all(o.changed for o in out) and srv.host.journal == [MKDIR] + [f"write {p}" for p in files]
    assert [(p, m) for p, _, m, _, _ in srv.host.written] == list(zip(files, (0o755, 0o644, 0o644), strict=True))
    cfg = json.loads(srv.host.files[HEALTH_CONFIG_PATH])
    assert cfg["server"] == NAME and cfg["url"] == "http://10.0.1.1:8781/ping/hcbpg-health-lab"
    assert cfg["thresholds"]["backup_age_fail_h"] == 50.0 and cfg["stanza"] == "hcb_production"
    assert srv.host.files[HEALTH_JOB_PATH] == render_health_job()
    assert "*/5 * * * * postgres /usr/local/sbin/hcbpg-health" in srv.host.files[HEALTH_CRON_PATH]
    assert not any(o.changed for o in schedule.ensure_health_schedule(srv.host, params, params.primary))
    assert len(srv.host.journal) == 4


@covers("hcbpg.ops.schedule.ensure_health_schedule", "refusal")
def test_health_files_not_written_where_their_directory_cannot_be_made(params):
    srv = Server(mkdir_fails=True)
    with pytest.raises(RemoteCommandError, match="Read-only file system"):
        schedule.ensure_health_schedule(srv.host, params, params.primary)
    assert srv.host.written == []


@covers("hcbpg.ops.schedule.ensure_schedules", "fresh", "second run", "dry run")
def test_both_schedules_on_every_server(params):
    absent = AbsentHost(NAME)
    planned = schedule.ensure_schedules(absent, params, params.primary)
    assert [o.what.split(" on ")[0] for o in planned] == [JOB_PATH, CRON_PATH, HEALTH_JOB_PATH, HEALTH_CONFIG_PATH,
                                                          HEALTH_CRON_PATH]
    assert all(o.changed and o.dry_run for o in planned) and len(absent.journal) == 6
    srv = Server(etc_hcbpg=True)
    assert all(o.changed for o in schedule.ensure_schedules(srv.host, params, params.primary))
    assert MKDIR not in srv.host.journal and len(srv.host.journal) == 5
    assert not any(o.changed for o in schedule.ensure_schedules(srv.host, params, params.primary))
    assert len(srv.host.journal) == 5


# the job as installed --------------------------------------------------------------------------------

CFG = {"server": NAME, "url": "", "port": 5432, "stanza": "hcb_production", "data_directory": "/",
       "thresholds": {"replay_lag_fail_s": 300.0, "slot_retained_fail_mb": 4096.0, "backup_age_fail_h": 50.0,
                      "disk_fail_pct": 90.0, "wal_fail_mb": 8192.0, "archive_ready_max": 16}}
NOW = 1_800_000_000.0
FACTS = {"in_recovery": False, "now": NOW, "data_directory": "/var/lib/postgresql/15/main", "archive_mode": "on",
         "archiver": {"ok": NOW - 10, "failed": None, "last_failed_wal": None}, "ready": 40, "wal_bytes": 2 ** 26,
         "slots": [], "replication": [], "receiver": None, "replay_lag": None}
BACKUPS = [{"start": NOW - 3600, "stop": NOW - 3500, "error": False}]


def test_the_installed_job_is_one_program_with_the_rules_in_place_of_their_import(tmp_path):
    job = render_health_job()
    assert job.startswith("#!/usr/bin/python3\n") and "from hcbpg" not in job and "import hcbpg" not in job
    assert "def rule_archiving(" in job and "def judge(" in job
    assert job.count("from __future__ import annotations") == 1
    path = tmp_path / "hcbpg-health"
    path.write_text(job)
    # judged by the installed program (no hcbpg on its path) as by the module: a long .ready queue fails archiving
    probe = ("import json, runpy, sys; g = runpy.run_path(sys.argv[1], run_name='hcbpg_health'); "
             "print(json.dumps(g['judge'](*json.loads(sys.stdin.read()))))")
    args = [CFG, FACTS, "", 40.0, BACKUPS, None]
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(path)], input=json.dumps(args), capture_output=True,
                         text=True, timeout=30, check=True)
    shipped = json.loads(res.stdout)
    assert shipped == health_job.judge(*args)
    assert [c for c, why in shipped.items() if why] == ["archiving"] and "40 WAL segments wait" in shipped["archiving"]


# cron: a fault where the site's hosts run jobs through cron, the expected state where they do not (the lab) ----

def _dpkg(installed: dict[str, str]):
    """dpkg answers with *installed*; the job's files are not there (stat finds nothing)."""
    def answer(call: Call) -> Result | str | None:
        if call.command.startswith("dpkg-query -W"):
            return "".join(f"{p}\tii \t{v}\n" for p, v in installed.items())
        if call.command.startswith("stat -c"):
            return Result(NAME, call.command, 1, "", "No such file", 0.0)
        return None
    return answer


@pytest.mark.parametrize(("env", "status", "words"), [
    ("staging", "fail", "not installed: the schedule does not run"),  # no site: production's (cron runs jobs)
    ("lab", "pass", "expected: no cron on this site's hosts"),       # the lab's default site runs them itself
])
def test_no_cron_fails_in_production_and_is_expected_in_the_lab(env, status, words):
    params = parse_params({**BASE, "environment": env})
    assert (site_for(params).cron_runs_jobs, params.site) == (env != "lab", None)
    host = RecordingHost(NAME, handler=_dpkg({"curl": "7.88"}))
    (cron,) = [c for c in schedule.check_backup_schedule(host, params, params.primary) if c.name == "cron installed"]
    assert (cron.status, words in cron.detail) == (status, True), cron


def test_cron_installed_passes_with_its_version(params):
    host = RecordingHost(NAME, handler=_dpkg({"curl": "7.88", "cron": "3.0pl1-162"}))
    (cron,) = [c for c in schedule.check_backup_schedule(host, params, params.primary) if c.name == "cron installed"]
    assert (cron.status, cron.detail) == ("pass", "3.0pl1-162")
