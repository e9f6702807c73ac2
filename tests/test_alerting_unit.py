"""The monitor's files (issue 25, pure): params' alerting section, Prometheus's config (``promtool check config``),
the rules (``promtool test rules`` with tests/promtool/, every rule firing and quiet at least once), Alertmanager's
config (``amtool check-config``) with secrets planted and scanned, and node exporter's textfile from a recorded
``pgbackrest info --output=json``.  promtool and amtool come from scripts/install.sh (prometheus,
prometheus-alertmanager); a missing one fails the test."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hcbpg.desired import alerting as al
from hcbpg.desired import textfile_metrics as tm
from hcbpg.errors import ParamsError
from hcbpg.params import Params, parse_params
from hcbpg.params_alerting import duration_s

from goldenfile import GOLDEN, golden
from nbutil import REPO, manual_production

PROMTOOL_DIR = Path(__file__).parent / "promtool"

#: planted secrets: valid URLs and passwords with YAML's and Alertmanager's specials in them
SECRETS = {
    "op://HCB Engineering/Slack webhook/url": "https://hooks.slack.example/services/T0/B0/s3cr3t-slack'\"#",
    "op://HCB Engineering/SMTP/password": "smtp pw: 'x' \"y\" #z {{ .Alerts }}",
    "op://HCB Engineering/Pager/token": "pager-token-!@#$%^&*()",
    "op://HCB Engineering/Dead man/url": "https://hc-ping.example/0f9a-dead-man-s3cr3t",
}

ALERTING: dict[str, Any] = {
    "receivers": {
        "slack": {"webhook_url": "op://HCB Engineering/Slack webhook/url", "channel": "#ops"},
        "email": {"to": ["ops@example.org", "db@example.org"], "sender": "hcbpg@example.org",
                  "smarthost": "smtp.example.org:587", "username": "hcbpg",
                  "password": "op://HCB Engineering/SMTP/password"},
        "webhook": {"url": "https://pager.example.org/integration", "bearer_token": "op://HCB Engineering/Pager/token"},
    },
    "heartbeat_url": "op://HCB Engineering/Dead man/url",
    "thresholds": {"wal_bound_mb": 1024},
}


def production_data() -> dict[str, Any]:
    d = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    d["alerting"] = copy.deepcopy(ALERTING)
    return d


def production() -> Params:
    return parse_params(production_data())


def manual_data() -> dict[str, Any]:
    """The manual replication's params with a jumpbox (where the monitor runs) and the alerting section."""
    d = manual_production()
    d["jumpbox"] = {"name": "hcb-jumpbox", "private_ip": "10.0.1.40"}
    d["alerting"] = copy.deepcopy(ALERTING)
    return d


def manual() -> Params:
    return parse_params(manual_data())


def problems(alerting: dict[str, Any]) -> list[str]:
    d = production_data()
    d["alerting"] = alerting
    with pytest.raises(ParamsError) as ei:
        parse_params(d)
    return ei.value.problems


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/install.sh as root (it installs prometheus and "
                    "prometheus-alertmanager, which ship promtool and amtool)")
    return path


def run(argv: list[str], cwd: Path) -> str:
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}:\n{out}"
    return out


# params -------------------------------------------------------------------------------------------------------

def test_no_alerting_section_changes_nothing():
    d = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    d.pop("alerting", None)
    p = parse_params(d)
    assert p.alerting is None
    with pytest.raises(ParamsError, match="alerting: required"):
        al.render_prometheus_config(p)


def test_defaults_and_durations():
    a = production().alerting
    assert a is not None
    assert (a.retention, a.scrape_interval, a.thresholds.disk_pct, a.thresholds.connections_pct,
            a.thresholds.certificate_days, a.thresholds.drill_max_age_days) == ("15d", "30s", 80.0, 80.0, 21, 8.0)
    assert [duration_s(x) for x in ("15s", "2m", "15d", "500ms")] == [15, 120, 1296000, 0.5]


def test_secrets_are_references_never_literals():
    bad = copy.deepcopy(ALERTING)
    bad["receivers"]["slack"]["webhook_url"] = "https://hooks.slack.com/services/T0/B0/literal"
    bad["receivers"]["email"]["password"] = "hunter2"
    out = problems(bad)
    assert any("alerting.receivers.slack.webhook_url" in p and "not a secret reference" in p for p in out), out
    assert any("alerting.receivers.email.password" in p and "not a secret reference" in p for p in out), out


def test_validators_say_what_is_wrong():
    cases: list[tuple[dict[str, Any], str]] = [
        ({"receivers": {}}, "name at least one of slack, email, webhook"),
        ({"heartbeat_url": "CHANGE-ME"}, "neither an http(s) URL nor a secret reference"),
        ({"scrape_interval": "1m", "evaluation_interval": "30s"}, "shorter than scrape_interval"),
        ({"for_duration": "30s"}, "below two scrapes"),
        ({"retention": "12h"}, "below a day"),
        ({"scrape_interval": "15 s"}, "String should match pattern"),
        ({"thresholds": {"backup_diff_max_age_h": 300}}, "a differential is taken between two fulls"),
        ({"thresholds": {"disk_pct": 120}}, "less than 100"),
        ({"alertmanager_port": 9090}, "must differ"),
        ({"warning_receivers": ["slack"], "receivers": {"email": ALERTING["receivers"]["email"]}},
         "slack is not configured"),
        ({"receivers": {"email": {**ALERTING["receivers"]["email"], "password": None}}},
         "needs both username and password"),
    ]
    for change, words in cases:
        a = copy.deepcopy(ALERTING)
        a.update(change)
        out = problems(a)
        assert any(words in p for p in out), (change, out)


# Prometheus -----------------------------------------------------------------------------------------------------

def test_prometheus_config_golden_and_promtool(tmp_path: Path):
    p = production()
    text = al.render_prometheus_config(p)
    golden("prometheus.production.yml", text)
    cfg = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert list(jobs) == ["prometheus", "alertmanager", "node", "postgres", "patroni", "etcd"]
    servers = {s.name: s.private_ip for s in p.servers}
    assert p.jumpbox is not None
    assert [c["labels"]["server"] for c in jobs["node"]["static_configs"]] == [*servers, p.jumpbox.name]
    assert [c["targets"] for c in jobs["postgres"]["static_configs"]] == [[f"{ip}:9187"] for ip in servers.values()]
    assert jobs["patroni"]["scheme"] == jobs["etcd"]["scheme"] == "https"
    assert jobs["etcd"]["tls_config"]["cert_file"] == al.ETCD_CLIENT_CERT
    assert jobs["postgres"]["metric_relabel_configs"] == [{"action": "labeldrop", "regex": "exported_server"}]
    # promtool reads every file the config names: put them under tmp_path
    for src in (al.RULES_PATH, al.ETCD_CLIENT_CERT, al.ETCD_CLIENT_KEY, "/etc/hcbpg/tls/production-postgres-ca.crt"):
        assert src in text
        dst = tmp_path / Path(src).name
        text = text.replace(src, str(dst))
        dst.write_text(al.render_rules(p) if src == al.RULES_PATH else "")
    (tmp_path / "prometheus.yml").write_text(text)
    out = run([tool("promtool"), "check", "config", "prometheus.yml"], tmp_path)
    assert "SUCCESS: prometheus.yml is valid prometheus config file syntax" in out, out
    assert f"SUCCESS: {len(al.rules(p))} rules found" in out, out


def test_manual_params_scrape_no_patroni_or_etcd():
    p = manual()
    jobs = [j["job_name"] for j in al.prometheus_config(p)["scrape_configs"]]
    assert jobs == ["prometheus", "alertmanager", "node", "postgres"]
    names = [r.name for r in al.rules(p)]
    assert "PrimaryUnreachable" in names
    assert not {"PatroniNoLeader", "NoSyncStandby", "EtcdNoQuorum", "EtcdMemberDown", "PatroniPausedTooLong"} & set(names)


# rules ------------------------------------------------------------------------------------------------------------

def _strip_annotations(rules_text: str) -> str:
    data = yaml.safe_load(rules_text)
    for g in data["groups"]:
        for r in g["rules"]:
            r.pop("annotations", None)
    return yaml.safe_dump(data, sort_keys=False)


def _promtool_rules(p: Params, test_file: str, tmp_path: Path) -> str:
    rendered = al.render_rules(p)
    (tmp_path / "full.rules.yml").write_text(rendered)
    run([tool("promtool"), "check", "rules", "full.rules.yml"], tmp_path)
    (tmp_path / "hcbpg.rules.yml").write_text(_strip_annotations(rendered))
    shutil.copy(PROMTOOL_DIR / test_file, tmp_path / test_file)
    return run([tool("promtool"), "test", "rules", test_file], tmp_path)


def test_rules_golden_and_every_rule_has_its_runbook_line():
    p = production()
    golden("prometheus.production.rules.yml", al.render_rules(p))
    for r in al.rules(p) + al.rules(manual()):
        assert r.summary and r.meaning and r.action and r.runbook, r.name
    # every notebook a runbook line names exists
    named = set(re.findall(r"\b(\d\d[a-z]?_[a-z_]+)", " ".join(r.runbook for r in al.rules(p) + al.rules(manual()))))
    assert {"05_pgbackrest", "12_restore_drill", "11b_maintenance", "16_online_cleanup"} <= named
    assert [nb for nb in sorted(named) if not (REPO / "notebooks" / f"{nb}.ipynb").is_file()] == []


def test_thresholds_from_params_reach_the_rules():
    d = production_data()
    d["alerting"]["thresholds"] = {"disk_pct": 70, "certificate_days": 30, "long_transaction_minutes": 5,
                                   "archive_timeout_s": 60, "archive_age_margin_s": 30, "paused_max_hours": 2}
    d["replication"]["patroni"]["synchronous_mode"] = False
    rules = {r.name: r for r in al.rules(parse_params(d))}
    assert rules["DiskFull"].expr.endswith("> 70")
    assert rules["CertificateExpiring"].expr.endswith(f"< {30 * 86400}")
    assert rules["LongTransaction"].expr.endswith("> 300")
    assert "* 0 + 60)) + 30 and" in rules["ArchiveStale"].expr
    assert rules["PatroniPausedTooLong"].for_ == "120m"
    assert "NoSyncStandby" not in rules


def test_promtool_test_rules_patroni(tmp_path: Path):
    out = _promtool_rules(production(), "hcbpg.rules.test.yml", tmp_path)
    assert "SUCCESS" in out


def test_promtool_test_rules_manual(tmp_path: Path):
    out = _promtool_rules(manual(), "hcbpg.manual.rules.test.yml", tmp_path)
    assert "SUCCESS" in out


def test_promtool_fails_a_rule_that_watches_the_wrong_server(tmp_path: Path):
    """The cases can fail: with the roles swapped, PrimaryUnreachable watches server-postgres-2 and its cases
    (written for server-postgres-1) fail."""
    d = manual_data()
    for s in d["servers"]:
        s["role"] = "replica" if s["role"] == "primary" else "primary"
    with pytest.raises(AssertionError, match="PrimaryUnreachable"):
        _promtool_rules(parse_params(d), "hcbpg.manual.rules.test.yml", tmp_path)


def test_exporter_queries_give_the_metrics_the_rules_read():
    queries = yaml.safe_load(al.EXPORTER_QUERIES)
    emitted = {f"{q}_{name}" for q, spec in queries.items() for m in spec["metrics"]
               for name, col in m.items() if col["usage"] == "GAUGE"}
    assert emitted == {"hcbpg_xid_age", "hcbpg_wal_bytes", "hcbpg_archiver_failing", "hcbpg_archiver_idle"}
    exprs = " ".join(r.expr for r in al.rules(production()))
    assert all(m in exprs for m in emitted)


def test_every_rule_has_a_firing_and_a_quiet_case():
    firing: set[str] = set()
    quiet: set[str] = set()
    for f in PROMTOOL_DIR.glob("*.test.yml"):
        for t in yaml.safe_load(f.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r.name for r in al.rules(production())} | {r.name for r in al.rules(manual())}
    assert not names - firing, f"rules without a firing case: {sorted(names - firing)}"
    assert not names - quiet, f"rules without a quiet case: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"cases of no rule: {sorted((firing | quiet) - names)}"


# Alertmanager -------------------------------------------------------------------------------------------------------

def test_alertmanager_config_golden_without_secrets():
    p = production()
    text = al.render_alertmanager_config(p)
    golden("alertmanager.production.yml", text)
    for value in SECRETS.values():
        assert value not in text
    assert text.count(al.PLACEHOLDER) == 4
    assert sorted(al.secret_refs(p)) == sorted(SECRETS)


def test_amtool_checks_the_config_with_planted_secrets(tmp_path: Path):
    p = production()
    text = al.render_alertmanager_config(p, SECRETS)
    cfg = yaml.safe_load(text)
    am = {r["name"]: r for r in cfg["receivers"]}
    assert am["all"]["slack_configs"][0]["api_url"] == SECRETS["op://HCB Engineering/Slack webhook/url"]
    assert am["all"]["email_configs"][0]["auth_password"] == SECRETS["op://HCB Engineering/SMTP/password"]
    assert am["all"]["webhook_configs"][0]["http_config"]["authorization"]["credentials"] == \
        SECRETS["op://HCB Engineering/Pager/token"]
    assert am["deadman"]["webhook_configs"][0]["url"] == SECRETS["op://HCB Engineering/Dead man/url"]
    heartbeat = cfg["route"]["routes"][0]
    assert (heartbeat["matchers"], heartbeat["receiver"], heartbeat["repeat_interval"]) == (
        ['alertname="Heartbeat"'], "deadman", "1m")
    assert al.PLACEHOLDER not in text
    assert al.PLACEHOLDER in al.redact(text, SECRETS) and not any(v in al.redact(text, SECRETS)
                                                                  for v in SECRETS.values())
    (tmp_path / "alertmanager.yml").write_text(text)
    out = run([tool("amtool"), "check-config", "alertmanager.yml"], tmp_path)
    assert "SUCCESS" in out and "5 inhibit rules" in out


def test_a_server_down_inhibits_its_lag_and_streaming():
    cfg = al.alertmanager_config(production())
    by_source: dict[str, list[dict[str, Any]]] = {}
    for rule in cfg["inhibit_rules"]:
        by_source.setdefault(rule["source_matchers"][0], []).append(rule)
    down = by_source['alertname="ServerDown"']
    assert "ReplicaLagging" in down[0]["target_matchers"][0] and down[0]["equal"] == ["environment", "server"]
    assert "ReplicaNotStreaming" in down[1]["target_matchers"][0]


def test_warning_receivers_route():
    d = production_data()
    d["alerting"]["warning_receivers"] = ["email"]
    cfg = al.alertmanager_config(parse_params(d))
    warnings = next(r for r in cfg["receivers"] if r["name"] == "warnings")
    assert list(warnings) == ["name", "email_configs"]
    assert cfg["route"]["routes"][-1] == {"receiver": "warnings", "matchers": ['severity="warning"']}


# textfile metrics -------------------------------------------------------------------------------------------------------

def test_textfile_from_recorded_pgbackrest_info(tmp_path: Path):
    info = (GOLDEN / "pgbackrest.info.json").read_text()
    text = tm.render_textfile_metrics(
        now=1795610000, info_json=info,
        certificates=[tm.CertFact("/etc/patroni/tls/rest.crt", 'CN=server-postgres-1 "x"', 1827138633),
                      tm.CertFact("/etc/postgresql/15/main/server.crt", "CN=server-postgres-1", 1829000000)],
        drill_success=1795600000, wayback_until=1795700000)
    golden("prometheus.textfile.prom", text)
    assert 'hcbpg_pgbackrest_backup_last_timestamp_seconds{stanza="hcb_production",repo="1",type="full"} ' \
           "1795602634" in text
    assert 'type="diff"} 1795602645' in text
    assert 'subject="CN=server-postgres-1 \\"x\\""' in text
    # node exporter's own parser, through promtool
    (tmp_path / "hcbpg.prom").write_text(text)
    p = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


def test_textfile_leaves_out_what_is_unknown_and_refuses_bad_json():
    assert tm.render_textfile_metrics(now=1.0) == ""
    only = tm.render_textfile_metrics(now=5.0, drill_success=None, wayback_until=None,
                                      info_json='[{"name": "s", "status": {"code": 2}, "backup": [], "repo": []}]')
    assert "hcbpg_pgbackrest_stanza_status_code{stanza=\"s\"} 2" in only
    assert "backup_last" not in only and "wayback" not in only
    failed = ('[{"name": "s", "status": {"code": 0}, "repo": [{"key": 2, "status": {"code": 0}}], "backup": '
              '[{"type": "full", "error": true, "database": {"repo-key": 2}, "timestamp": {"stop": 9}}]}]')
    assert "backup_last" not in tm.render_textfile_metrics(now=5.0, info_json=failed)
    with pytest.raises(tm.TextfileError):
        tm.render_textfile_metrics(now=1.0, info_json="ERROR: [056]")
    with pytest.raises(tm.TextfileError):
        tm.render_textfile_metrics(now=1.0, drill_success=float("nan"))


def test_textfile_module_is_standard_library_only_and_reads_openssls_dates():
    import ast
    import sys

    src = Path(tm.__file__).read_text()
    imported = {(n.module or "").split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)} | {
        a.name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    fact = tm.parse_x509_enddate("/x.crt", "subject=CN=server-postgres-1\nnotAfter=Dec  7 06:05:33 2027 GMT\n")
    assert fact == tm.CertFact("/x.crt", "CN=server-postgres-1", 1828159533.0)
    with pytest.raises(tm.TextfileError):
        tm.parse_x509_enddate("/x.crt", "unable to load certificate")
    with pytest.raises(tm.TextfileError):
        tm.parse_x509_enddate("/x.crt", "notAfter=tomorrow")


def test_the_health_jobs_config_names_the_textfile_and_the_certificates_it_reads():
    import json

    from hcbpg.desired import schedule as desired_schedule
    from hcbpg.desired import tls as desired_tls

    p = production()
    cfg = json.loads(desired_schedule.render_health_config(p, p.primary, None))
    assert cfg["textfile"]["path"] == tm.TEXTFILE == f"{al.TEXTFILE_DIR}/hcbpg.prom"
    assert cfg["textfile"]["certificates"] == [desired_tls.server_cert_path(p), desired_tls.client_ca_path(p),
                                               "/etc/patroni/tls/rest.crt", "/etc/patroni/tls/etcd-client.crt"]
    d = production_data()
    del d["alerting"]
    assert "textfile" not in json.loads(desired_schedule.render_health_config(parse_params(d), p.primary, None))


def test_the_installed_health_job_writes_the_textfile_whole_from_info_and_certificates(tmp_path: Path):
    """The program as installed (no hcbpg on its path): pgBackRest's info and a real certificate's end, written by
    rename; an unreadable certificate is said on stderr and left out; node exporter's parser accepts the file."""
    import json
    import sys

    from hcbpg.desired import schedule as desired_schedule

    cert = tmp_path / "server.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(tmp_path / "server.key"), "-out", str(cert), "-days", "10",
                    "-subj", "/CN=server-postgres-1"], check=True, capture_output=True, timeout=60)
    end = subprocess.run(["openssl", "x509", "-noout", "-enddate", "-in", str(cert)], check=True,
                         capture_output=True, text=True).stdout
    job = tmp_path / "hcbpg-health"
    job.write_text(desired_schedule.render_health_job())
    out = tmp_path / "textfile" / "hcbpg.prom"
    out.parent.mkdir()
    cfg = {"textfile": {"path": str(out), "certificates": [str(cert), str(tmp_path / "missing.crt")]}}
    info = (GOLDEN / "pgbackrest.info.json").read_text()
    probe = ("import json, runpy, sys; g = runpy.run_path(sys.argv[1], run_name='hcbpg_health'); "
             "cfg, info = json.loads(sys.stdin.read()); t = g['textfile'](cfg, info, 1795610000.0); "
             "g['write_textfile'](cfg['textfile']['path'], t)")
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(job)], input=json.dumps([cfg, info]),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "missing.crt" in res.stderr
    text = out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["hcbpg.prom"]  # no temporary file left
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert "hcbpg_pgbackrest_info_timestamp_seconds 1795610000" in text
    assert 'hcbpg_pgbackrest_backup_last_timestamp_seconds{stanza="hcb_production",repo="1",type="full"}' in text
    not_after = tm.parse_x509_enddate(str(cert), end).not_after
    assert f'hcbpg_certificate_expiry_timestamp_seconds{{path="{cert}",subject="CN=server-postgres-1"}} ' \
           f"{not_after:.17g}" in text
    assert "missing.crt" not in text
    p = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    # pgbackrest info failed (None): the certificates still go out, no info series (BackupInfoStale sees it)
    res = subprocess.run([sys.executable, "-I", "-c", probe, str(job)], input=json.dumps([cfg, None]),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "pgbackrest" not in out.read_text() and "certificate_expiry" in out.read_text()


def test_the_way_back_writes_its_end_for_the_monitor_once_and_only_with_alerting():
    from hcbpg.adapters.recording import RecordingHost
    from hcbpg.ops.migration import wayback

    until = "2026-12-08T06:00:00.000000Z"
    host = RecordingHost("server-postgres-1", [(r"^test -d ", "")])
    wayback._ensure_wayback_metric(host, production(), until)
    assert host.files[tm.WAYBACK_TEXTFILE] == (
        "# HELP hcbpg_wayback_until_timestamp_seconds Planned end of the running way-back sync (epoch s)\n"
        "# TYPE hcbpg_wayback_until_timestamp_seconds gauge\nhcbpg_wayback_until_timestamp_seconds 1796709600\n")
    assert host.written[0][2:4] == (0o644, "postgres")
    wayback._ensure_wayback_metric(host, production(), until)
    assert len(host.written) == 1  # the same end: not written again
    d = production_data()
    del d["alerting"]
    quiet = RecordingHost("server-postgres-1")
    wayback._ensure_wayback_metric(quiet, parse_params(d), until)
    assert quiet.calls == []


def test_step_15b_plans_the_health_jobs_textfile_config_on_each_server_after_node_exporter():
    from hcbpg.desired import schedule as desired_schedule
    from hcbpg.steps import alerting as step

    p = production()
    assert p.jumpbox is not None
    hosts = step.MonitorHosts({s.name: None for s in p.servers}, None, p.jumpbox.name)
    whats = [o.what for o in step.get_plan(hosts, p)]
    config = [f"{desired_schedule.HEALTH_CONFIG_PATH} on {s.name}" for s in p.servers]
    assert all(w in whats for w in config), whats
    last_exporter = max(i for i, w in enumerate(whats) if w.startswith("node exporter on server-"))
    assert min(whats.index(w) for w in config) > last_exporter
    assert step.run_health_jobs(hosts, p) == {}  # no server reachable: nothing run
