"""The rehearsal's monitor scrapes etcd (issue 25): Prometheus's client certificate for etcd's ``/metrics`` is issued
on the jumpbox with the monitor's files (etcd asks every client for one, and Prometheus makes no scrape pool whose
certificate is missing: its targets were never listed and EtcdNoQuorum fired in the lab), and a job with no target
is no longer "every target up"."""

from __future__ import annotations

import json

import pytest

from hcbpg.adapters.recording import RecordingHost
from hcbpg.desired import alerting as al
from hcbpg.errors import WaitTimeout
from hcbpg.ops import alerting as ops_alerting
from hcbpg.steps import alerting as step
from tests.fast.test_alerting_specs import (
    SECRETS,
    MonitorBox,
    _own_ca,  # noqa: F401 - autouse: the CA under tmp_path, never in params/
    alerting_params,
)


def test_the_monitors_files_include_prometheus_etcd_client_certificate_the_prometheus_users():
    p = alerting_params()
    assert "etcd" in al.scrape_targets(p)
    box = MonitorBox(p, installed=ops_alerting.MONITOR_PACKAGES)
    out = ops_alerting.ensure_monitor_config(box.host, p, SECRETS)
    cert = [o for o in out if "etcd client certificate" in o.what]
    assert len(cert) == 1 and cert[0].changed, [o.what for o in out]
    assert "BEGIN CERTIFICATE" in box.files[al.ETCD_CLIENT_CERT] and "PRIVATE KEY" in box.files[al.ETCD_CLIENT_KEY]
    assert box.meta[al.ETCD_CLIENT_KEY][0] == "prometheus" and box.meta[al.ETCD_CLIENT_KEY][2] == 0o600
    assert box.meta[al.ETCD_CLIENT_CERT][0] == "prometheus"
    again = ops_alerting.ensure_monitor_config(box.host, p, SECRETS)
    assert not any(o.changed for o in again)


def _targets(jobs: list[str]) -> str:
    return json.dumps({"status": "success", "data": {"activeTargets": [
        {"labels": {"job": j, "server": "s"}, "scrapeUrl": f"https://x/{j}", "health": "up", "lastError": ""}
        for j in jobs]}})


def test_a_job_without_targets_is_not_every_target_up_and_is_a_failed_check():
    p = alerting_params()
    jobs = [j for j in al.scrape_targets(p) if j != "etcd"]
    jb = RecordingHost("hcb-jumpbox", script=[(r"^curl .*/api/v1/targets", _targets(jobs)),
                                              (r"^curl .*/api/v2/alerts", "[]")])
    with pytest.raises(WaitTimeout, match="job etcd: no target"):
        ops_alerting.wait_for_targets_up(jb, p, timeout=0.05, sleep=lambda s: None)
    hosts = step.MonitorHosts({}, jb, "hcb-jumpbox")  # type: ignore[arg-type] - the double is a HostLike
    checks = step.check_monitor(hosts, p, timeout=0.05)
    failed = [(c.name, c.status) for c in checks if c.status == "fail"]
    assert failed == [("scrape etcd", "fail")], checks
    every = RecordingHost("hcb-jumpbox", script=[(r"^curl .*/api/v1/targets", _targets(list(al.scrape_targets(p))))])
    assert {t.job for t in ops_alerting.wait_for_targets_up(every, p, timeout=5, sleep=lambda s: None)} == set(
        al.scrape_targets(p))
