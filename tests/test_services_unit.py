"""Daemons without and with systemd (issue 28): the pure command lines of hcbpg.pg.services, the specs of
hcbpg.desired.services and ServiceControl on the recording double (state in → commands out).  The real processes:
tests/lab/test_ha_steps.py (etcd and Patroni started and stopped by pid on lab hosts)."""

from __future__ import annotations

import shlex

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.adapters.services import ServiceControl
from hcbpg.errors import RemoteCommandError
from hcbpg.pg.services import (
    RuntimeDir,
    ServiceSpec,
    parse_status,
    render_start_command,
    render_status_command,
    render_unit_dropin,
    runs_argv,
)


def etcd() -> ServiceSpec:
    return ServiceSpec(name="etcd", user="etcd", home="/var/lib/etcd", argv=("/usr/bin/etcd",),
                       env=(("ETCD_CONFIG_FILE", "/etc/etcd/hcbpg.yml"),), log_file="/var/log/etcd/etcd.log",
                       unit_type="notify", stop_timeout_s=20)


def patroni() -> ServiceSpec:
    return ServiceSpec(name="patroni@15-main", user="postgres", home="/var/lib/postgresql",
                       argv=("/usr/bin/patroni", "/etc/patroni/15-main.yml"), log_file="/var/log/patroni/patroni.log",
                       runtime_dirs=(RuntimeDir("/run/postgresql", "postgres", "postgres", 0o2775),))


# the pure lines -----------------------------------------------------------------------------------

def test_start_line_writes_the_pid_of_the_shell_that_execs_down_to_the_daemon():
    line = render_start_command(patroni())
    prepare, _, detached = line.partition(" && setsid -f ")
    assert "install -d -m 0755 /run/hcbpg" in prepare
    assert "install -d -o postgres -g postgres -m 0750 /var/log/patroni" in prepare
    assert "install -d -o postgres -g postgres -m 2775 /run/postgresql" in prepare
    words = shlex.split(detached)
    assert words[:2] == ["/bin/sh", "-c"] and words[3:] == ["<", "/dev/null", ">", "/dev/null", "2>&1"]
    inner = words[2]
    assert inner.startswith("echo $$ > /run/hcbpg/patroni@15-main.pid && cd /var/lib/postgresql && exec setpriv "
                            "--reuid=postgres --regid=postgres --init-groups -- env -i ")
    # every word after the pidfile is an exec: no fork between the pid written and the daemon
    tail = shlex.split(inner.split("&& exec ", 1)[1])
    assert tail[tail.index("env") + 1:][:5] == ["-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                                 "LANG=C.UTF-8", "HOME=/var/lib/postgresql", "USER=postgres"]
    assert tail[-7:] == ["/usr/bin/patroni", "/etc/patroni/15-main.yml", ">>", "/var/log/patroni/patroni.log", "2>&1",
                         "<", "/dev/null"]


def test_the_spec_environment_reaches_the_daemon_after_the_base():
    inner = shlex.split(render_start_command(etcd()).partition(" && setsid -f ")[2])[2]
    words = shlex.split(inner.split("&& exec ", 1)[1])
    assert words[words.index("/usr/bin/etcd") - 1] == "ETCD_CONFIG_FILE=/etc/etcd/hcbpg.yml"


@pytest.mark.parametrize(("change", "problem"), [
    ({"name": "Etcd Server"}, "unit name"),
    ({"user": "root; rm"}, "system user"),
    ({"argv": ("etcd",)}, "absolute path"),
    ({"argv": ()}, "absolute path"),
    ({"log_file": "etcd.log"}, "log file"),
    ({"env": (("etcd_x", "1"),)}, "environment name"),
    ({"argv": ("/usr/bin/etcd", "--name=a\nb")}, "line break"),
    ({"env": (("X", "$HOME"),)}, "%, $"),
    ({"argv": ("/usr/bin/etcd", "100%")}, "%, $"),
])
def test_a_spec_a_shell_or_systemd_would_read_otherwise_is_refused(change, problem):
    base = {"name": "etcd", "user": "etcd", "argv": ("/usr/bin/etcd",), "log_file": "/var/log/etcd/etcd.log"}
    with pytest.raises(ValueError, match=problem.replace("$", r"\$")):
        ServiceSpec(**{**base, **change})


def test_status_is_read_from_the_pidfile_and_that_pids_argv():
    spec = patroni()
    assert not parse_status(spec, "").running and "no pidfile" in parse_status(spec, "").detail
    assert parse_status(spec, "pid=\n").detail.endswith("holds no pid ('')")
    gone = parse_status(spec, "pid=4242\n")
    assert (gone.pid, gone.running) == (4242, False) and "not running" in gone.detail
    # Patroni is a python script: its process shows the interpreter first
    ours = parse_status(spec, "pid=4242\n/usr/bin/python3\0/usr/bin/patroni\0/etc/patroni/15-main.yml\0")
    assert (ours.pid, ours.running) == (4242, True)
    reused = parse_status(spec, "pid=4242\n/usr/sbin/sshd\0-D\0")
    assert not reused.running and "stale pidfile" in reused.detail
    assert spec.pidfile in render_status_command(spec) and "/proc/$p/cmdline" in render_status_command(spec)


def test_a_pid_running_another_program_with_the_same_last_words_is_not_ours():
    argv = ("/usr/bin/patroni", "/etc/patroni/15-main.yml")
    assert runs_argv(list(argv), argv)
    assert runs_argv(["/usr/bin/python3", "-s", *argv], argv)
    assert not runs_argv(["/usr/bin/python3", "/usr/bin/patronictl", "/etc/patroni/15-main.yml"], argv)
    assert not runs_argv(["vim", *argv], argv)
    assert not runs_argv(["/usr/bin/python3", "-m", "x", *argv], argv)
    assert not runs_argv(argv[:1], argv)


def test_the_systemd_drop_in_runs_the_same_argv_as_the_user_and_restarts_on_failure():
    text = render_unit_dropin(etcd())
    lines = text.splitlines()
    assert lines[0].startswith("# Managed by hcbpg")
    assert lines[1:] == ["[Service]", "Type=notify", "User=etcd", "Group=etcd", "WorkingDirectory=/var/lib/etcd",
                         "ExecStart=", "ExecStart=/usr/bin/etcd", 'Environment="HOME=/var/lib/etcd"',
                         'Environment="ETCD_CONFIG_FILE=/etc/etcd/hcbpg.yml"', "Restart=on-failure", "RestartSec=1",
                         "TimeoutStopSec=20"]
    assert etcd().dropin_path == "/etc/systemd/system/etcd.service.d/hcbpg.conf"


# ServiceControl on the recording double -----------------------------------------------------------

class FakeProcs:
    """A host's process table as the status probe and kill see it."""

    def __init__(self, spec: ServiceSpec, *, systemd: bool = False, running: bool = False, obeys_term: bool = True):
        self.spec, self.systemd, self.running, self.obeys_term = spec, systemd, running, obeys_term
        self.pid = 4242

    def __call__(self, call: Call) -> Result | str | None:
        cmd = call.command
        if cmd == "test -d /run/systemd/system":
            return Result("h", cmd, 0 if self.systemd else 1, "", "", 0.0)
        if cmd == render_status_command(self.spec):
            cmdline = "\0".join(self.spec.argv) + "\0" if self.running else ""
            return f"pid={self.pid}\n{cmdline}" if self.running or self.pid else ""
        if cmd == f"test -d /proc/{self.pid}":
            return Result("h", cmd, 0 if self.running else 1, "", "", 0.0)
        if cmd.startswith("install -d") and "setsid -f" in cmd:
            self.running, self.pid = True, 5151
            return ""
        if cmd == f"kill -TERM {self.pid}":
            self.running = self.running and not self.obeys_term
            return ""
        if cmd == f"kill -KILL {self.pid}":
            self.running = False
            return ""
        if cmd.startswith("systemctl is-active"):
            return Result("h", cmd, 0 if self.running else 3, "active\n" if self.running else "inactive\n", "", 0.0)
        if cmd.startswith("systemctl show --property=MainPID"):
            return f"{self.pid if self.running else 0}\n"
        if cmd.startswith("systemctl enable --now --no-block"):
            self.running = True
            return ""
        if cmd.startswith(("systemctl daemon-reload", "install -d -m 0755 /etc/systemd")):
            return ""
        if cmd.startswith("systemctl stop"):
            self.running = False
            return ""
        return None


def control(procs: FakeProcs, **files: str) -> tuple[RecordingHost, ServiceControl]:
    host = RecordingHost("server-postgres-1", handler=procs, files=files)
    ticks = iter(range(10_000))
    return host, ServiceControl(host, systemd=procs.systemd, sleep=lambda _s: None,
                                clock=lambda: float(next(ticks)))


def test_without_systemd_a_stopped_daemon_is_started_detached_then_seen_by_its_pid():
    procs = FakeProcs(patroni())
    host = RecordingHost("h", handler=procs)
    ctl = ServiceControl.of(host)
    assert ctl.manager == "pidfile"
    out = ctl.ensure_running(patroni())
    assert out.changed and out.actions == ["start patroni@15-main detached (/run/hcbpg/patroni@15-main.pid, "
                                           "log /var/log/patroni/patroni.log)"]
    assert host.ran == [render_start_command(patroni())]
    assert ctl.get_status(patroni()).pid == 5151
    again = ctl.ensure_running(patroni())
    assert not again.changed and host.ran == [render_start_command(patroni())]


def test_a_dry_run_records_the_start_and_starts_nothing():
    procs = FakeProcs(patroni())
    host = DryRunHost(RecordingHost("h", handler=procs))
    out = ServiceControl(host, systemd=False).ensure_running(patroni())
    assert out.changed and out.dry_run and not procs.running


def test_stop_is_term_to_the_pid_then_kill_when_it_outlives_the_timeout():
    polite = FakeProcs(etcd(), running=True)
    host, ctl = control(polite)
    out = ctl.ensure_stopped(etcd())
    assert out.changed and host.ran == ["kill -TERM 4242"] and not polite.running
    assert not ctl.ensure_stopped(etcd()).changed
    stubborn = FakeProcs(etcd(), running=True, obeys_term=False)
    host, ctl = control(stubborn)
    out = ctl.ensure_stopped(etcd())
    assert host.ran == ["kill -TERM 4242", "kill -KILL 4242"] and not stubborn.running


def test_a_signal_goes_to_the_checked_pid_and_never_by_name():
    procs = FakeProcs(etcd(), running=True)
    host, ctl = control(procs)
    assert ctl.signal(etcd(), "KILL") == 4242
    assert host.ran == ["kill -KILL 4242"]
    with pytest.raises(RemoteCommandError, match="not running"):
        ctl.signal(etcd(), "KILL")
    with pytest.raises(ValueError, match="signal"):
        ctl.signal(etcd(), "9; reboot")


def test_with_systemd_the_drop_in_is_written_then_the_unit_enabled_without_blocking():
    procs = FakeProcs(etcd(), systemd=True)
    host, _ = control(procs)
    ctl = ServiceControl.of(host)
    assert ctl.manager == "systemd"
    out = ctl.ensure_running(etcd())
    assert out.changed
    assert host.ran == ["install -d -m 0755 /etc/systemd/system/etcd.service.d",
                        "write /etc/systemd/system/etcd.service.d/hcbpg.conf", "systemctl daemon-reload",
                        "systemctl enable --now --no-block etcd"]
    assert host.files[etcd().dropin_path] == render_unit_dropin(etcd())
    assert not ctl.ensure_running(etcd()).changed
    assert ctl.ensure_stopped(etcd()).changed and host.ran[-1] == "systemctl stop etcd"


# the specs from params ----------------------------------------------------------------------------

def patroni_params():  # noqa: ANN201
    import yaml

    from hcbpg.params import parse_params

    from nbutil import REPO

    d = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    d["replication"].update(manager="patroni", connection_limit=5,
                            patroni={"scope": "hcb-production", "rest_password": "op://HCB Engineering/Patroni REST/password"},
                            etcd={"patroni_password": "op://HCB Engineering/etcd patroni/password"})
    d["jumpbox"] = {"private_ip": "10.0.1.40"}
    return parse_params(d)


def test_patroni_runs_as_debian_s_instance_unit_with_hcbpg_s_config_directory():
    from hcbpg.desired.services import patroni_service

    spec = patroni_service(patroni_params())
    assert (spec.name, spec.user, spec.argv) == ("patroni@15-main", "postgres",
                                                 ("/usr/bin/patroni", "/etc/patroni/15-main.d"))
    assert "install -d -o postgres -g postgres -m 2775 /run/postgresql" in render_start_command(spec)
    assert "ExecStart=/usr/bin/patroni /etc/patroni/15-main.d" in render_unit_dropin(spec).splitlines()


def test_etcd_reads_hcbpg_s_config_file_only():
    from hcbpg.desired.services import etcd_service

    spec = etcd_service(patroni_params())
    assert (spec.name, spec.user, spec.argv, spec.env) == ("etcd", "etcd", ("/usr/bin/etcd",),
                                                           (("ETCD_CONFIG_FILE", "/etc/etcd/hcbpg.yml"),))
    assert "Type=notify" in render_unit_dropin(spec).splitlines()
