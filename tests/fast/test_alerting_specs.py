"""Specs of the monitor's operations (hcbpg.ops.alerting, issue 25) on the recording double of test_ha_specs: a
machine's state in -> packages, files (owner, mode), daemons by pidfile or systemd, and the Outcome out.  The
receivers' secrets are planted and looked for in every Outcome (Alertmanager's file holds them; nothing shown
does)."""

from __future__ import annotations

import copy
import ipaddress
import json
from typing import Any

import pytest
from cryptography import x509

from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call
from hcbpg.desired import alerting as al
from hcbpg.desired import monitoring
from hcbpg.desired.services import alertmanager_service, node_exporter_service, prometheus_service
from hcbpg.errors import ParamsError, RemoteCommandError, SafetyCheckFailed
from hcbpg.ops import alerting as ops_alerting
from hcbpg.outcome import Outcome
from hcbpg.params import Params, parse_params
from tests.fast.specs import covers
from tests.fast.test_ha_specs import JUMPBOX, NAME, Box, ha_data

HOOK = "env:HCBPG_TEST_HOOK_URL"
TOKEN = "env:HCBPG_TEST_HOOK_TOKEN"
DEADMAN = "env:HCBPG_TEST_DEADMAN_URL"
#: planted: a URL with a token in its path, a bearer token with YAML's specials, the dead-man's URL
SECRETS = {HOOK: "https://pager.example.org/hook/s3cr3t-hook-token",
           TOKEN: "bearer 'tok' \"en\" #: {{ x }}",
           DEADMAN: "https://hc-ping.example/dead-man-s3cr3t-uuid"}
ALERTING: dict[str, Any] = {"receivers": {"webhook": {"url": HOOK, "bearer_token": TOKEN}}, "heartbeat_url": DEADMAN,
                            "scrape_interval": "2s", "evaluation_interval": "2s", "for_duration": "4s"}
MONITOR = al.PROMETHEUS_CONFIG, al.RULES_PATH, al.ALERTMANAGER_CONFIG


@pytest.fixture(autouse=True)
def _own_ca(tmp_path, monkeypatch):
    """The exporters' certificates (node exporter serves TLS) come from a CA made under *tmp_path*, never one beside
    the repository's params."""
    from hcbpg.ops import tls
    monkeypatch.setenv("HCBPG_HOME", str(tmp_path))
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield
    tls._CA_CACHE.clear()


def alerting_params() -> Params:
    data = ha_data()
    data["alerting"] = copy.deepcopy(ALERTING)
    return parse_params(data)


class MonitorBox(Box):
    """The machine of test_ha_specs with the monitor's daemons, SIGHUP and Alertmanager's API."""

    def __init__(self, params: Params, name: str = JUMPBOX, **kw: Any) -> None:
        super().__init__(params, name, **kw)
        ip = "10.0.1.40" if name == JUMPBOX else "10.0.1.5"
        self.specs = {s.name: s for s in (prometheus_service(params), alertmanager_service(params),
                                          node_exporter_service(params, ip))}
        self.hups: list[int] = []
        self.alerts_json = "[]"

    @property
    def system_users(self) -> set[str]:
        return {"root", "postgres"} | ({"prometheus"} if any(p.startswith("prometheus") for p in self.installed)
                                       else set())

    def answer(self, call: Call):  # noqa: ANN201 - the double's handler
        cmd = call.command
        if cmd.startswith("kill -HUP "):
            self.hups.append(int(cmd.split()[-1]))
            return ""
        if cmd.startswith("curl ") and "/api/v2/alerts" in cmd:
            return self.alerts_json
        if cmd.startswith("cat /proc/") and cmd.endswith("/cmdline"):
            argv = self.procs.get(int(cmd.split("/")[2]))
            return "\0".join(argv) + "\0" if argv else ""
        return super().answer(call)


def no_secret_in(outcomes: list[Outcome]) -> None:
    shown = "\n".join(f"{o}\n{o.diff}\n{o.actions}" for o in outcomes)
    for value in SECRETS.values():
        assert value not in shown


# packages ------------------------------------------------------------------------------------------------------

@covers("hcbpg.ops.alerting.ensure_monitor_packages", "fresh", "second run", "dry run", "refusal")
def test_the_monitors_packages_installed_once_never_started_by_apt():
    p = alerting_params()
    box = MonitorBox(p)
    dry = DryRunHost(box.host)
    plan = ops_alerting.ensure_monitor_packages(dry)
    assert plan.changed and plan.dry_run and box.installed == {} and box.host.journal == []
    out = ops_alerting.ensure_monitor_packages(box.host)
    assert out.changed and set(box.installed) == set(ops_alerting.MONITOR_PACKAGES)
    assert box.host.journal == dry.journal == [
        "apt-get install prometheus prometheus-alertmanager prometheus-node-exporter (their daemons not started)"]
    assert "policy-rc.d" in box.host.commands[-1]  # apt's postinst may not start them
    assert not ops_alerting.ensure_monitor_packages(box.host).changed
    failing = MonitorBox(p, apt_fails=True)
    with pytest.raises(RemoteCommandError):
        ops_alerting.ensure_monitor_packages(failing.host)
    assert failing.installed == {}


# node exporter ---------------------------------------------------------------------------------------------------

@covers("hcbpg.ops.alerting.ensure_node_exporter", "fresh", "second run")
def test_node_exporter_on_a_server_listens_on_its_private_ip_with_the_textfile_directory():
    p = alerting_params()
    box = MonitorBox(p, NAME)
    out = ops_alerting.ensure_node_exporter(box.host, p, NAME)
    assert all(o.changed for o in out)
    assert box.installed.keys() == {"prometheus-node-exporter"}
    assert al.TEXTFILE_DIR in box.dirs
    assert box.running("prometheus-node-exporter")
    argv = box.procs[box.pidfiles["prometheus-node-exporter"]]
    assert argv == ["/usr/bin/prometheus-node-exporter", "--web.listen-address=10.0.1.5:9100",
                    f"--collector.textfile.directory={al.TEXTFILE_DIR}",
                    f"--web.config.file={monitoring.EXPORTER_WEB_CONFIG}"]
    # TLS only: a certificate naming the private IP (key the exporters' user's), the web config pointing at it
    assert "tls_server_config:" in box.files[monitoring.EXPORTER_WEB_CONFIG]
    assert x509.load_pem_x509_certificate(box.files[monitoring.EXPORTER_CERT].encode()).extensions \
        .get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.IPAddress) == \
        [ipaddress.ip_address("10.0.1.5")]
    assert "node exporter on server-postgres-1 (10.0.1.5:9100) (pidfile)" == out[-1].what
    n = len(box.host.journal)
    again = ops_alerting.ensure_node_exporter(box.host, p, NAME)
    assert not any(o.changed for o in again) and len(box.host.journal) == n
    # the jumpbox's own listens on the jumpbox's address
    jb = MonitorBox(p, JUMPBOX)
    ops_alerting.ensure_node_exporter(jb.host, p, JUMPBOX)
    assert "--web.listen-address=10.0.1.40:9100" in jb.procs[jb.pidfiles["prometheus-node-exporter"]]


@covers("hcbpg.ops.alerting.ensure_node_exporter", "dry run", "refusal")
def test_node_exporter_plan_starts_nothing_and_an_unknown_machine_or_no_alerting_section_is_refused():
    p = alerting_params()
    box = MonitorBox(p, NAME)
    dry = DryRunHost(box.host)
    out = ops_alerting.ensure_node_exporter(dry, p, NAME)
    assert all(o.changed and o.dry_run for o in out)
    assert not box.running("prometheus-node-exporter") and box.installed == {} and box.host.journal == []
    assert any(line.startswith("start prometheus-node-exporter detached") for line in dry.journal)
    with pytest.raises(ParamsError, match="server-postgres-9: neither a server nor the jumpbox"):
        ops_alerting.ensure_node_exporter(box.host, p, "server-postgres-9")
    with pytest.raises(ParamsError, match="alerting: required"):
        ops_alerting.ensure_node_exporter(box.host, parse_params(ha_data()), NAME)
    assert box.host.journal == []


def test_node_exporter_started_with_other_options_is_stopped_and_started_with_the_specs():
    p = alerting_params()
    box = MonitorBox(p, NAME)
    ops_alerting.ensure_node_exporter(box.host, p, NAME)
    old = box.pidfiles["prometheus-node-exporter"]
    box.procs[old] = ["/usr/bin/prometheus-node-exporter", "--web.listen-address=10.0.1.5:9200"]  # another port
    other = box._new_pid(["/usr/bin/sleep", "100"])   # a pid another program took is left alone
    out = ops_alerting.ensure_node_exporter(box.host, p, NAME)
    assert out[-1].changed and old not in box.procs
    assert f"stop prometheus-node-exporter (pid {old}: started with other options)" in box.host.journal
    assert box.procs[box.pidfiles["prometheus-node-exporter"]][1] == "--web.listen-address=10.0.1.5:9100"
    box.pidfiles["prometheus-node-exporter"] = other
    ops_alerting.ensure_node_exporter(box.host, p, NAME)
    assert other in box.procs


# config --------------------------------------------------------------------------------------------------------

@covers("hcbpg.ops.alerting.ensure_monitor_config", "fresh", "second run")
def test_the_monitors_files_written_root_prometheus_0640_with_secrets_never_shown():
    p = alerting_params()
    box = MonitorBox(p, installed=ops_alerting.MONITOR_PACKAGES)
    out = ops_alerting.ensure_monitor_config(box.host, p, SECRETS)
    assert all(o.changed for o in out)
    for path in MONITOR:
        assert box.meta[path] == ("root", "prometheus", 0o640), path
    assert box.files[al.RULES_PATH] == al.render_rules(p)
    assert box.files[al.PROMETHEUS_CONFIG] == al.render_prometheus_config(p)
    am = box.files[al.ALERTMANAGER_CONFIG]
    assert am == al.render_alertmanager_config(p, SECRETS) and al.PLACEHOLDER not in am
    assert all(v in am or v.replace("'", "''") in am for v in SECRETS.values())
    assert out[2].actions == [f"write {al.ALERTMANAGER_CONFIG} (a secret: no diff shown)"] and not out[2].diff
    assert "scrape_interval: 2s" in out[1].diff
    assert {"/var/lib/prometheus/metrics2", "/var/lib/prometheus/alertmanager"} <= box.dirs
    no_secret_in(out)
    n = len(box.host.journal)
    again = ops_alerting.ensure_monitor_config(box.host, p, SECRETS)
    assert not any(o.changed for o in again) and len(box.host.journal) == n


@covers("hcbpg.ops.alerting.ensure_monitor_config", "dry run", "refusal")
def test_the_config_plan_has_placeholders_and_a_missing_secret_writes_nothing():
    p = alerting_params()
    box = MonitorBox(p, installed=ops_alerting.MONITOR_PACKAGES)
    dry = DryRunHost(box.host)
    plan = ops_alerting.ensure_monitor_config(dry, p, None)
    assert all(o.changed and o.dry_run for o in plan) and box.files.get(al.ALERTMANAGER_CONFIG) is None
    assert box.host.journal == []
    partial = {k: v for k, v in SECRETS.items() if k != TOKEN}
    with pytest.raises(SafetyCheckFailed, match=f"no value for {TOKEN} \\(nothing written\\)"):
        ops_alerting.ensure_monitor_config(box.host, p, partial)
    with pytest.raises(SafetyCheckFailed, match="none were given"):
        ops_alerting.ensure_monitor_config(box.host, p, None)
    assert box.host.journal == [] and not any(path in box.files for path in MONITOR)


# daemons -------------------------------------------------------------------------------------------------------

@covers("hcbpg.ops.alerting.ensure_monitor_running", "fresh", "second run", "dry run", "refusal")
def test_prometheus_and_alertmanager_started_once_reloaded_by_sighup_when_asked():
    p = alerting_params()
    box = MonitorBox(p, installed=ops_alerting.MONITOR_PACKAGES)
    with pytest.raises(SafetyCheckFailed, match="no config to start with"):
        ops_alerting.ensure_monitor_running(box.host, p)
    assert box.host.journal == []
    ops_alerting.ensure_monitor_config(box.host, p, SECRETS)
    n = len(box.host.journal)
    dry = DryRunHost(box.host)
    plan = ops_alerting.ensure_monitor_running(dry, p)
    assert all(o.changed and o.dry_run for o in plan) and not box.running("prometheus")
    assert len(box.host.journal) == n
    out = ops_alerting.ensure_monitor_running(box.host, p)
    assert [o.what for o in out] == [f"prometheus-alertmanager on {JUMPBOX} (pidfile)", f"prometheus on {JUMPBOX} "
                                     "(pidfile)"] and all(o.changed for o in out)
    prom = box.procs[box.pidfiles["prometheus"]]
    assert "--web.listen-address=127.0.0.1:9090" in prom and "--storage.tsdb.retention.time=15d" in prom
    assert "--rules.alert.resend-delay=2s" in prom
    assert "--cluster.listen-address=" in box.procs[box.pidfiles["prometheus-alertmanager"]]
    n = len(box.host.journal)
    assert not any(o.changed for o in ops_alerting.ensure_monitor_running(box.host, p))
    assert len(box.host.journal) == n and box.hups == []
    reloaded = ops_alerting.ensure_monitor_running(box.host, p, reload=True)
    assert all(o.changed for o in reloaded)
    assert box.hups == [box.pidfiles["prometheus-alertmanager"], box.pidfiles["prometheus"]]


def test_systemd_runs_them_through_a_dropin():
    p = alerting_params()
    box = MonitorBox(p, installed=ops_alerting.MONITOR_PACKAGES, systemd=True)
    ops_alerting.ensure_monitor_config(box.host, p, SECRETS)
    out = ops_alerting.ensure_monitor_running(box.host, p)
    assert [o.what for o in out][-1].endswith("(systemd)")
    assert set(box.units) == {"prometheus", "prometheus-alertmanager"}
    dropin = box.files["/etc/systemd/system/prometheus.service.d/hcbpg.conf"]
    assert "--config.file=/etc/prometheus/hcbpg.yml" in dropin


# reads ---------------------------------------------------------------------------------------------------------

def test_get_alerts_reads_alertmanager_on_the_jumpbox_without_the_heartbeat():
    p = alerting_params()
    box = MonitorBox(p)
    box.alerts_json = json.dumps([
        {"labels": {"alertname": "Heartbeat", "severity": "none"}, "status": {"state": "active"},
         "annotations": {}, "startsAt": "2026-12-07T04:00:00Z"},
        {"labels": {"alertname": "PostgresDown", "severity": "critical", "server": NAME},
         "status": {"state": "active"}, "annotations": {"summary": "PostgreSQL on server-postgres-1 does not answer"},
         "startsAt": "2026-12-07T04:01:00Z"}])
    alerts = ops_alerting.get_alerts(box.host, p)
    assert [(a.name, a.server, a.severity, a.state) for a in alerts] == [("PostgresDown", NAME, "critical", "active")]
    assert box.host.commands[-1] == "curl -sS --fail --max-time 10 http://127.0.0.1:9093/api/v2/alerts"


# the step ------------------------------------------------------------------------------------------------------

def test_step_15b_is_in_the_runbook_only_with_an_alerting_section():
    from hcbpg.engine.catalogue import load_steps, load_steps_for
    with_it = [s.key for s in load_steps_for(alerting_params())]
    without = [s.key for s in load_steps_for(parse_params(ha_data()))]
    assert "15b_alerting" not in without
    assert with_it.index("15b_alerting") == with_it.index("15_health") + 1
    assert [k for k in with_it if k != "15b_alerting"] == without
    assert "15b_alerting" in [s.key for s in load_steps()]  # a listing without params shows every notebook


def test_the_steps_plan_on_machines_not_there_yet_installs_and_starts_everything_with_placeholders():
    from hcbpg.steps import alerting as step
    p = alerting_params()
    hosts = step.MonitorHosts({NAME: None, "server-postgres-2": None}, None, JUMPBOX)
    plan = step.get_plan(hosts, p)
    assert all(o.dry_run for o in plan)
    whats = [o.what for o in plan]
    for n, ip in ((NAME, "10.0.1.5"), ("server-postgres-2", "10.0.1.6")):
        i = whats.index(f"packages prometheus-node-exporter on {n}")
        assert whats[i:i + 6] == [f"packages prometheus-node-exporter on {n}", f"PostgreSQL CA on {n}",
                                  f"the exporters' TLS certificate on {n} ({ip})",
                                  f"the exporters' web config on {n} (TLS only)",
                                  f"node exporter's textfile directory on {n}", f"node exporter on {n} ({ip}:9100)"]
    assert whats.index(f"packages prometheus-node-exporter on {NAME}") < \
        whats.index("packages prometheus-node-exporter on server-postgres-2")
    assert whats[-2:] == [f"prometheus-alertmanager on {JUMPBOX}", f"prometheus on {JUMPBOX}"]
    no_secret_in(plan)
    with pytest.raises(SafetyCheckFailed, match="cannot reach server-postgres-1 over SSH"):
        step.setup_alerting(hosts, p, SECRETS, dry_run=False)
