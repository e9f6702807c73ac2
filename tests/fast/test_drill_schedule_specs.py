"""Specs of the weekly restore drill on the jumpbox (issue 24, hcbpg.ops.drill_schedule) on the recording double: no
automatic cluster, PostgreSQL 15 and pgBackRest, the drill's directory, its pgbackrest config with the servers' keys
(never the admin key; ``<secret>`` in its diff), its settings, the job and its cron file; and the job's own pure parts
(hcbpg.ops.jobs.drill_job: the newest backup of a repository in ``pgbackrest info``, the scratch cluster's settings,
the repositories in turn, its textfile accepted by ``promtool check metrics``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired import drill_schedule as ds
from hcbpg.errors import ParamsError, SecretError
from hcbpg.ops import drill_schedule as ops_ds
from hcbpg.ops.jobs import drill_job as job
from hcbpg.params import parse_params
from tests.fast.specs import covers, params_data

NAME = "hcb-jumpbox"
SECRETS = {"HCBPG_TEST_S3_KEY": "SERVERkey0123456789", "HCBPG_TEST_S3_SECRET": "server-secret-of-the-specs-0123",
           "HCBPG_TEST_CIPHER": "cipher-pass-of-the-specs-0123456789",
           "HCBPG_TEST_ADMIN_KEY": "ADMINspecs0123456789", "HCBPG_TEST_ADMIN_SECRET": "admin-secret-of-the-specs-0123",
           "HCBPG_TEST_S3B_KEY": "REPO2key0123456789", "HCBPG_TEST_S3B_SECRET": "repo2-secret-of-the-specs-0123",
           "HCBPG_TEST_CIPHER2": "cipher-pass-two-of-the-specs-0123456"}
REPO2 = {"s3_bucket": "hcb-production-postgres-2", "s3_endpoint": "10.0.1.250:9444", "s3_uri_style": "path",
         "s3_region": "us-east-1", "s3_key": "env:HCBPG_TEST_S3B_KEY", "s3_key_secret": "env:HCBPG_TEST_S3B_SECRET",
         "cipher_pass": "env:HCBPG_TEST_CIPHER2", "repo_path_prefix": "/pgbackrest-2"}
PB = {"s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_key": "env:HCBPG_TEST_S3_KEY",
      "s3_key_secret": "env:HCBPG_TEST_S3_SECRET", "cipher_pass": "env:HCBPG_TEST_CIPHER",
      "admin_s3_key": "env:HCBPG_TEST_ADMIN_KEY", "admin_s3_key_secret": "env:HCBPG_TEST_ADMIN_SECRET",
      "repo2": REPO2}
BASE = params_data(pgbackrest=PB, jumpbox={"name": NAME, "private_ip": "10.0.1.40"})
APT = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15 pgbackrest"
DIRS = {"/etc/postgresql-common/createcluster.d": "root", "/etc/hcbpg": "root", ds.DRILL_DIR: "postgres"}
FILES = [ds.NO_MAIN_CLUSTER_PATH, ds.DRILL_CONF_PATH, ds.DRILL_JOB_CONFIG_PATH, ds.DRILL_JOB_PATH, ds.DRILL_CRON_PATH]


@pytest.fixture
def params(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return parse_params(BASE)


class Jumpbox:
    """The jumpbox's packages, directories and files (with modes) behind a :class:`RecordingHost`."""

    def __init__(self) -> None:
        self.installed = False
        self.dirs: set[str] = set()
        self.modes: dict[str, str] = {}
        self.host = RecordingHost(NAME, handler=self.answer, files={})

    def answer(self, call: Call) -> Result | str | None:
        cmd = call.command
        if cmd.startswith("dpkg-query"):
            return "postgresql-15\tii \t15.10\npgbackrest\tii \t2.45\n" if self.installed else ""
        if "apt-get update" in cmd:
            return ""
        if "apt-get install" in cmd:
            self.installed = True
            return ""
        if m := re.match(r"stat -c '%a %U %F' (\S+)$", cmd):
            return (f"{'700' if DIRS[m[1]] == 'postgres' else '755'} {DIRS[m[1]]} directory\n" if m[1] in self.dirs
                    else Result(NAME, cmd, 1, "", "No such file", 0.0))
        if (m := re.match(r"directory (\S+) \(mode", call.options.get("display") or "")):
            self.dirs.add(m[1])
            return ""
        if m := re.match(r"stat -c '%a %U %G' (\S+)$", cmd):
            for path, _text, mode, owner, group in self.host.written:
                self.modes[path] = f"{mode:o} {owner} {group or owner}"
            return self.modes[m[1]] + "\n" if m[1] in self.modes else Result(NAME, cmd, 1, "", "No such file", 0.0)
        return None


def _secrets_absent(outcomes: list[Any]) -> bool:
    text = "\n".join(str(o) + (o.diff or "") for o in outcomes)
    return not any(v in text for v in SECRETS.values())


@covers("hcbpg.ops.drill_schedule.ensure_drill_schedule", "fresh", "second run", "dry run")
def test_drill_installed_once_with_the_servers_keys_never_the_admin_key(params):
    jb = Jumpbox()
    planned = ops_ds.ensure_drill_schedule(DryRunHost(jb.host), params)
    assert all(o.changed and o.dry_run for o in planned) and len(planned) == 9
    assert jb.host.written == [] and not jb.installed and _secrets_absent(planned)
    out = ops_ds.ensure_drill_schedule(jb.host, params)
    assert all(o.changed for o in out) and _secrets_absent(out)
    journal = jb.host.journal
    assert journal.index(f"write {ds.NO_MAIN_CLUSTER_PATH}") < journal.index(APT)  # no 15/main made by the install
    assert [ln for ln in journal if ln.startswith("write ")] == [f"write {p}" for p in FILES]
    written = {p: (t, mode, owner, group) for p, t, mode, owner, group in jb.host.written}
    conf, mode, owner, group = written[ds.DRILL_CONF_PATH]
    assert (mode, owner, group) == (0o640, "root", "postgres")
    assert "repo1-s3-key=SERVERkey0123456789" in conf and "repo2-s3-key=REPO2key0123456789" in conf
    assert "repo2-cipher-pass=cipher-pass-two-of-the-specs" in conf and "ADMIN" not in conf
    assert f"pg1-path={ds.DRILL_DATA}" in conf and "retention" not in conf
    shown = next(o for o in out if o.what.startswith(ds.DRILL_CONF_PATH)).diff
    assert "repo1-s3-key=<secret>" in shown and "repo2-s3-key-secret=<secret>" in shown
    assert written[ds.DRILL_JOB_PATH][1:] == (0o755, "root", "root")
    assert written[ds.DRILL_JOB_PATH][0].startswith("#!/usr/bin/python3\n")
    cfg = json.loads(written[ds.DRILL_JOB_CONFIG_PATH][0])
    assert cfg["repos"] == [1, 2] and cfg["textfile"] == ds.DRILL_JOB_TEXTFILE
    cron = written[ds.DRILL_CRON_PATH][0]
    assert f"{ds.DRILL_SCHEDULE} root flock -n {ds.DRILL_DIR}/.lock {ds.DRILL_JOB_PATH} >>{ds.DRILL_LOG}" in cron
    n = len(journal)
    again = ops_ds.ensure_drill_schedule(jb.host, params)
    assert not any(o.changed for o in again) and len(jb.host.journal) == n
    absent = AbsentHost(NAME)
    assert all(o.changed for o in ops_ds.ensure_drill_schedule(absent, params))
    assert "repo1-s3-key=<secret>" in absent.files[ds.DRILL_CONF_PATH]


@covers("hcbpg.ops.drill_schedule.ensure_drill_schedule", "refusal")
def test_drill_refused_without_a_jumpbox_or_a_key_and_nothing_run(params, monkeypatch):
    jb = Jumpbox()
    with pytest.raises(ParamsError, match="jumpbox"):
        ops_ds.ensure_drill_schedule(jb.host, parse_params(params_data(pgbackrest=PB)))
    monkeypatch.delenv("HCBPG_TEST_S3B_SECRET")
    with pytest.raises(SecretError, match="HCBPG_TEST_S3B_SECRET"):
        ops_ds.ensure_drill_schedule(jb.host, params)
    assert jb.host.journal == [] and jb.host.written == []


def test_the_installed_job_is_the_module_and_imports_no_hcbpg():
    text = ds.render_drill_job()
    assert "from hcbpg" not in text and "import hcbpg" not in text
    compile(text, ds.DRILL_JOB_PATH, "exec")


INFO = [{"name": "hcb_production", "db": [{"id": 1, "system-id": 7412345678901234567, "version": "15"}],
         "backup": [
             {"label": "20261201-040000F", "type": "full", "error": False, "timestamp": {"start": 1, "stop": 100},
              "info": {"size": 5000}, "database": {"id": 1, "repo-key": 2}},
             {"label": "20261201-040000F_20261202-040000D", "type": "diff", "error": False,
              "timestamp": {"start": 150, "stop": 200}, "info": {"size": 5100}, "database": {"id": 1, "repo-key": 2}},
             {"label": "20261203-040000F", "type": "full", "error": False, "timestamp": {"start": 250, "stop": 300},
              "info": {"size": 5200}, "database": {"id": 1, "repo-key": 1}},
             {"label": "20261201-040000F_20261204-040000D", "type": "diff", "error": True,
              "timestamp": {"start": 350, "stop": 400}, "info": {"size": 5300}, "database": {"id": 1, "repo-key": 2}}]}]


def test_the_newest_good_backup_of_the_repository_is_restored():
    b = job.newest_backup(json.dumps(INFO), "hcb_production", 2)
    assert (b["label"], b["size"], b["system_id"]) == ("20261201-040000F_20261202-040000D", 5100, 7412345678901234567)
    assert job.newest_backup(json.dumps(INFO), "hcb_production", 1)["label"] == "20261203-040000F"
    with pytest.raises(job.DrillFailed, match="no backup in repo3"):
        job.newest_backup(json.dumps(INFO), "hcb_production", 3)
    with pytest.raises(job.DrillFailed, match="no stanza"):
        job.newest_backup("[]", "hcb_production", 1)
    broken = [{**INFO[0], "repo": [{"key": 1, "status": {"code": 0, "message": "ok"}},
                                    {"key": 2, "status": {"code": 99, "message": "[HostConnectError] unable to connect"}}]}]
    assert job.newest_backup(json.dumps(broken), "hcb_production", 1)["label"] == "20261203-040000F"
    with pytest.raises(job.DrillFailed, match=r"repo2 status 99: \[HostConnectError\] unable to connect"):
        job.newest_backup(json.dumps(broken), "hcb_production", 2)
    with pytest.raises(job.DrillFailed, match="not JSON"):
        job.newest_backup("ERROR: [039]", "hcb_production", 1)


def test_repositories_in_turn_and_the_scratch_settings_from_pg_control():
    assert job.next_repo({}, [1, 2]) == 1 and job.next_repo({"last_repo": 1}, [1, 2]) == 2
    assert job.next_repo({"last_repo": 2}, [1, 2]) == 1 and job.next_repo({"last_repo": 2}, [1]) == 1
    control = job.parse_controldata("Database system identifier:           7412345678901234567\n"
                                    "max_connections setting:              120\nmax_locks_per_xact setting:  64\n")
    conf = job.render_scratch_conf(json.loads(ds.render_drill_job_config(parse_params(BASE))), control)
    assert "max_connections = 120" in conf and "max_locks_per_transaction = 64" in conf
    assert "archive_mode = off" in conf and "listen_addresses = ''" in conf and f"port = {ds.DRILL_PORT}" in conf


def test_the_job_textfile_per_repository_passes_promtool_check_metrics():
    state = {"repos": {"1": {"last_success": 1795600000.5, "failed": 0, "duration_s": 61.2},
                       "2": {"last_success": 1795000000, "last_failure": 1795700000, "failed": 1, "duration_s": 3.0}}}
    text = job.render_drill_metrics(state)
    assert 'hcbpg_drill_failed{repo="2"} 1\n' in text and 'hcbpg_drill_failed{repo="1"} 0\n' in text
    assert 'hcbpg_drill_last_failure_timestamp_seconds{repo="1"}' not in text
    assert job.render_drill_metrics({}) == ""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (scripts/install.sh)")
    cp = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert cp.returncode == 0, cp.stdout + cp.stderr


class _Run:
    """What step 12's run_scheduled_drill uses of a Run: params, dry_run, track."""

    def __init__(self, params: Any, dry_run: bool) -> None:
        self.params, self.dry_run, self.tracked = params, dry_run, []

    def track(self, outcomes: Any) -> Any:
        self.tracked += list(outcomes)
        return outcomes


def test_step_12_plans_the_weekly_drill_on_a_dry_run_and_skips_it_without_a_jumpbox(params, monkeypatch):
    from hcbpg.errors import HostUnreachable
    from hcbpg.steps import restore_drill

    jb = Jumpbox()
    monkeypatch.setattr(jb.host, "close", lambda: None, raising=False)
    monkeypatch.setattr(restore_drill, "connect_jumpbox", lambda rb: jb.host)
    rb = _Run(params, dry_run=True)
    assert restore_drill.run_scheduled_drill(rb) is None  # type: ignore[arg-type]
    assert len(rb.tracked) == 9 and all(o.changed and o.dry_run for o in rb.tracked)
    assert jb.host.written == [] and not any(ds.DRILL_JOB_PATH in ln for ln in jb.host.journal)

    def unreachable(rb: Any) -> Any:
        raise HostUnreachable("hcb-jumpbox", "10.0.1.40", "no route")
    monkeypatch.setattr(restore_drill, "connect_jumpbox", unreachable)
    assert restore_drill.run_scheduled_drill(_Run(params, dry_run=True)) is None  # type: ignore[arg-type]
    with pytest.raises(HostUnreachable):
        restore_drill.run_scheduled_drill(_Run(params, dry_run=False))  # type: ignore[arg-type]
    no_jumpbox = parse_params(params_data(pgbackrest=PB))
    assert restore_drill.run_scheduled_drill(_Run(no_jumpbox, dry_run=False)) is None  # type: ignore[arg-type]


def test_the_jobs_info_has_a_short_io_timeout_and_an_unreachable_repository_fails_the_drill(monkeypatch):
    """``pgbackrest info`` with the config's io-timeout (5 s, not pgBackRest's 60: an unreachable repository held the
    drill about 240 s in the lab before it failed); a repository listed with an error status fails the drill, naming
    it, before anything is restored; the restore keeps pgBackRest's default."""
    cfg = json.loads(ds.render_drill_job_config(parse_params(BASE)))
    assert cfg["info_io_timeout_s"] == ds.INFO_IO_TIMEOUT_S == 5
    calls: list[list[str]] = []
    unreachable = json.dumps([{"name": "hcb_production", "backup": [], "db": [], "repo": [
        {"key": 2, "status": {"code": 99, "message": "[HostConnectError] unable to connect to '10.0.1.250:9444'"}}]}])

    def as_postgres(argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, unreachable if "info" in argv else "", "")

    monkeypatch.setattr(job, "as_postgres", as_postgres)
    with pytest.raises(job.DrillFailed, match="repo2 status 99"):
        job.drill(cfg, 2)
    assert len(calls) == 1 and calls[0][-2:] == ["--io-timeout=5", "info"], calls
