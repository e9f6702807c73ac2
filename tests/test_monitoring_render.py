"""Monitoring without a server: the Vector config and env file and the exporter's env file against
golden files (Vector cannot be installed on test machines), metric parsing, and the health
report's judging (``health.evaluate``) on made-up measurements.

Regenerate the golden files after a deliberate change with ``HCBPG_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml

from hcbpg.desired import alerting, monitoring
from hcbpg.desired import health_report as health
from hcbpg.desired import roles as desired_roles
from hcbpg.params import parse_params

from goldenfile import golden

REPO = Path(__file__).resolve().parent.parent
FAKE_PASSWORD = "not-a-real-password/with+chars"


@pytest.fixture
def params():
    return parse_params(yaml.safe_load((REPO / "params" / "lab.yaml").read_text()))


@pytest.fixture
def cfg(params):
    return desired_roles.roles_config(params)


@pytest.mark.parametrize("server_name", ["server-postgres-1", "server-postgres-2"])
def test_vector_config_golden(params, cfg, server_name):
    server = params.server(server_name)
    text = monitoring.render_vector_config(params, server, cfg)
    golden(f"vector.{server_name}.toml", text)
    doc = tomllib.loads(text)
    src = doc["sources"]["hcbpg_postgresql"]
    assert src["type"] == "postgresql_metrics"
    assert src["endpoints"] == ["${HCBPG_POSTGRESQL_ENDPOINT}"], "the password stays in the env file"
    assert doc["sinks"]["hcbpg_prometheus"]["address"] == f"{server.private_ip}:9598"


def test_vector_config_with_appsignal_sink_golden(params, cfg):
    text = monitoring.render_vector_config(params, params.primary, cfg, appsignal=True)
    golden("vector.appsignal.toml", text)
    sink = tomllib.loads(text)["sinks"]["hcbpg_appsignal"]
    assert sink["type"] == "appsignal" and sink["push_api_key"] == "${APPSIGNAL_PUSH_API_KEY}"


def test_vector_env_placeholder_golden_and_real_value(params, cfg):
    shown = monitoring.render_vector_env(params, params.primary, cfg, None)
    golden("vector.env.server-postgres-1", shown)
    assert "postgresql://vector:<secret>@10.0.1.5:5432/postgres" in shown
    real = monitoring.render_vector_env(params, params.primary, cfg, FAKE_PASSWORD)
    assert "not-a-real-password%2Fwith%2Bchars@10.0.1.5" in real
    assert monitoring.redact(real, FAKE_PASSWORD) == shown


@pytest.mark.parametrize("server_name", ["server-postgres-1", "server-postgres-2"])
def test_exporter_env_golden(params, cfg, server_name):
    server = params.server(server_name)
    shown = monitoring.render_exporter_env(params, server, cfg, None)
    golden(f"exporter.{server_name}.env", shown)
    assert f"@{server.private_ip}:5432/postgres" in shown and f"--web.listen-address={server.private_ip}:9187" in shown
    real = monitoring.render_exporter_env(params, server, cfg, FAKE_PASSWORD)
    assert FAKE_PASSWORD not in real, "URL-encoded"
    assert monitoring.redact(real, FAKE_PASSWORD) == shown


def test_exporter_queries_golden():
    text = monitoring.render_exporter_queries(alerting.EXPORTER_QUERIES)
    golden("exporter.queries.yaml", text)
    doc = yaml.safe_load(text)
    assert {"pg_replication", "pg_replication_slots", "hcbpg_xid", "hcbpg_wal"} <= set(doc)
    assert [next(iter(m)) for m in doc["pg_replication"]["metrics"]] == ["is_replica", "lag"]


def test_every_exporter_metric_the_rules_read_is_in_the_exporters_queries_file():
    """The rules' hcbpg_* series of the postgres job come from the exporter's queries file, not only from
    desired.alerting's text: a rule reading one the file lacks would never fire."""
    doc = yaml.safe_load(monitoring.render_exporter_queries(alerting.EXPORTER_QUERIES))
    emitted = {f"{q}_{name}" for q, spec in doc.items() for m in spec["metrics"] for name, col in m.items()
               if col["usage"] in ("GAUGE", "COUNTER")}
    prod = parse_params(yaml.safe_load((REPO / "params" / "production.yaml").read_text()))
    read = {m for r in alerting.rules(prod) for m in re.findall(r'\b(hcbpg_\w+)\{job="postgres"', r.expr)}
    assert {"hcbpg_xid_age", "hcbpg_wal_bytes"} <= read
    assert read <= emitted, f"read by the rules, not exported: {sorted(read - emitted)}"


def test_exporter_web_config_is_tls_only_with_the_machines_certificate(params):
    text = monitoring.render_exporter_web_config(params)
    golden("exporter.web.yml", text)
    doc = yaml.safe_load(text)
    assert doc == {"tls_server_config": {"cert_file": monitoring.EXPORTER_CERT, "key_file": monitoring.EXPORTER_KEY,
                                         "min_version": "TLS13"}}
    spec = monitoring.exporter_cert_spec("hcb-jumpbox", "10.0.1.40")
    assert spec.ips == ("10.0.1.40",) and spec.server and not spec.client


def test_vector_endpoint_verifies_the_server_as_vectors_driver_can(params, cfg):
    """Vector's postgresql_metrics (tokio-postgres) refuses sslmode=verify-full and sslrootcert in the endpoint and
    any tls key but ca_file: what hcbpg renders is what it parses; the CA file makes its OpenSSL connector verify
    the chain and the name (verify-full's checks)."""
    config = monitoring.render_vector_config(params, params.primary, cfg)
    env = monitoring.render_vector_env(params, params.primary, cfg, FAKE_PASSWORD)
    assert monitoring.check_vector_config(config, env) == []
    assert tomllib.loads(config)["sources"]["hcbpg_postgresql"]["tls"] == {
        "ca_file": "/etc/hcbpg/tls/lab-postgres-ca.crt"}
    assert "sslmode=require" in env
    # the validator can fail: what Vector would refuse
    bad_tls = config.replace('[sources.hcbpg_postgresql.tls]\n', '[sources.hcbpg_postgresql.tls]\n'
                                                                    'verify_hostname = true\n')
    assert monitoring.check_vector_config(bad_tls, env) == [
        "sources.hcbpg_postgresql.tls.verify_hostname: not a field (ca_file only)"]
    full = env.replace("sslmode=require", "sslmode=verify-full&sslrootcert=%2Fetc%2Fx.crt")
    assert monitoring.check_vector_config(config, full) == [
        "endpoint: sslrootcert is not an option tokio-postgres knows",
        "endpoint: sslmode=verify-full (tokio-postgres: disable, prefer or require)"]


def test_env_file_refuses_values_that_break_quoting(params, cfg):
    with pytest.raises(ValueError):
        monitoring._shell_value("it's")
    with pytest.raises(ValueError):
        monitoring._shell_value("two\nlines")


EXPORTER_PRIMARY = """# HELP pg_up Whether the last scrape of metrics from PostgreSQL was able to connect.
# TYPE pg_up gauge
pg_up 1
pg_replication_is_replica{server="10.0.1.5:5432"} 0
pg_replication_lag{server="10.0.1.5:5432"} 0
pg_stat_replication_pg_wal_lsn_diff{application_name="server-postgres-2",client_addr="10.0.1.6",server="10.0.1.5:5432",slot_name="server_postgres_2_slot",state="streaming"} 0
pg_replication_slots_retained_bytes{server="10.0.1.5:5432",slot_name="server_postgres_2_slot"} 232
"""  # noqa: E501 - exporter output, verbatim
EXPORTER_REPLICA = """pg_up 1
pg_replication_is_replica{server="10.0.1.6:5432"} 1
pg_replication_lag{server="10.0.1.6:5432"} 0.5
"""


def test_exporter_metrics_show_up_and_replication(params):
    p, r = params.primary, params.server("server-postgres-2")
    checks = monitoring.evaluate_exporter_metrics(EXPORTER_PRIMARY, p)
    assert [c.status for c in checks] == ["pass", "pass"]
    assert "server_postgres_2_slot holds 232 bytes" in checks[1].detail
    checks = monitoring.evaluate_exporter_metrics(EXPORTER_REPLICA, r)
    assert [c.status for c in checks] == ["pass", "pass"] and "0.5s" in checks[1].detail
    down = monitoring.evaluate_exporter_metrics("pg_up 0\n", p)
    assert down[0].status == "fail"
    assert monitoring.evaluate_exporter_metrics("", p)[0].status == "fail"


# health.evaluate -------------------------------------------------------------------------------

NOW = 1_800_000_000.0


def healthy() -> list[health.Measurement]:
    common = dict(reachable=True, running=True, now=NOW, data_directory="/var/lib/postgresql/15/main",
                  max_connections=600, total_connections=12, wal_bytes=64 * 1024 ** 2,
                  disk={"used_pct": 41.0, "avail_bytes": 40 * 1024 ** 3, "size_bytes": 80 * 1024 ** 3})
    primary = health.Measurement(
        "server-postgres-1", "10.0.1.5", "primary", in_recovery=False, archive_mode="on",
        replication=[{"application_name": "server-postgres-2", "client_addr": "10.0.1.6", "state": "streaming",
                      "sync_state": "async", "replay_lag_s": 0.2}],
        slots=[{"slot_name": "server_postgres_2_slot", "active": True, "wal_status": "reserved",
                "retained_bytes": 16 * 1024 ** 2}],
        archiver={"archived_count": 40, "last_archived_wal": "000000010000000000000028",
                  "last_archived_time": NOW - 60, "failed_count": 0, "last_failed_wal": None,
                  "last_failed_time": None},
        backup={"label": "20270115-080000F", "type": "full", "stop": NOW - 3 * 3600, "error": False},
        connections=[{"role": "rails", "limit": 500, "in_use": 10}, {"role": "metabase", "limit": 10, "in_use": 1},
                     {"role": "postgres", "limit": -1, "in_use": 1}], **common)
    replica = health.Measurement(
        "server-postgres-2", "10.0.1.6", "replica", in_recovery=True, archive_mode="on",
        receiver={"status": "streaming", "sender_host": "10.0.1.5", "slot_name": "server_postgres_2_slot"},
        replay_lag_s=0.0, connections=[{"role": "rails", "limit": 500, "in_use": 0}], **common)
    return [primary, replica]


def by_item(checks):
    return {(c.target, c.name): c for c in checks}


def test_healthy_pair_passes_every_item_on_both_servers():
    checks = health.evaluate(healthy(), health.Thresholds())
    assert len(checks) == 2 * len(health.ITEMS)
    assert {c.status for c in checks} == {"pass"}, [f"{c.target} {c.name}: {c.detail}" for c in checks
                                                     if c.status != "pass"]
    assert health.exit_code(checks) == 0


def test_stopped_replica_fails_its_items_and_the_primarys_replication():
    ms = healthy()
    ms[1] = health.Measurement("server-postgres-2", "10.0.1.6", "replica", reachable=True,
                               error="PostgreSQL is not running (pg_lsclusters)")
    ms[0].replication = []
    checks = by_item(health.evaluate(ms, health.Thresholds()))
    assert checks[("server-postgres-2", "PostgreSQL running")].status == "fail"
    assert checks[("server-postgres-2", "replay lag")].status == "fail"
    assert checks[("server-postgres-1", "replication")].status == "fail"
    assert "not streaming to server-postgres-2" in checks[("server-postgres-1", "replication")].detail
    text = health.render_text(list(checks.values()))
    assert "FAIL:" in text and "server-postgres-2: PostgreSQL running" in text


def test_archiving_failure_after_last_success_fails():
    ms = healthy()
    ms[0].archiver.update(failed_count=3, last_failed_wal="000000010000000000000029", last_failed_time=NOW - 5)
    c = by_item(health.evaluate(ms, health.Thresholds()))[("server-postgres-1", "archiving")]
    assert c.status == "fail" and "000000010000000000000029" in c.detail


def test_old_failure_followed_by_success_passes():
    ms = healthy()
    ms[0].archiver.update(failed_count=1, last_failed_wal="x", last_failed_time=NOW - 3600)
    assert by_item(health.evaluate(ms, health.Thresholds()))[("server-postgres-1", "archiving")].status == "pass"


@pytest.mark.parametrize("age_h,status", [(3, "pass"), (30, "warn"), (60, "fail")])
def test_backup_age_thresholds(age_h, status):
    ms = healthy()
    ms[0].backup["stop"] = NOW - age_h * 3600
    assert by_item(health.evaluate(ms, health.Thresholds()))[("server-postgres-1", "last backup")].status == status


def test_no_backup_fails_with_the_reason():
    ms = healthy()
    ms[0].backup, ms[0].backup_error = None, "no backup in the repository (pgbackrest info lists none)"
    c = by_item(health.evaluate(ms, health.Thresholds()))[("server-postgres-1", "last backup")]
    assert c.status == "fail" and "lists none" in c.detail


@pytest.mark.parametrize("lag,status", [(1, "pass"), (60, "warn"), (600, "fail")])
def test_replay_lag_thresholds(lag, status):
    ms = healthy()
    ms[1].replay_lag_s = lag
    assert by_item(health.evaluate(ms, health.Thresholds()))[("server-postgres-2", "replay lag")].status == status


def test_connections_near_a_roles_limit_and_disk_and_slots_and_pending_restart():
    ms = healthy()
    ms[0].connections[1]["in_use"] = 10                 # metabase 10/10
    ms[0].disk["used_pct"] = 85.0
    ms[0].slots[0].update(active=False, retained_bytes=5 * 1024 ** 3)
    ms[1].pending_restart = ["shared_buffers"]
    c = by_item(health.evaluate(ms, health.Thresholds()))
    assert c[("server-postgres-1", "connections")].status == "fail"
    assert "metabase 10/10 FAIL" in c[("server-postgres-1", "connections")].detail
    assert c[("server-postgres-1", "disk data directory")].status == "warn"
    assert c[("server-postgres-1", "slot retained WAL")].status == "fail"
    assert c[("server-postgres-2", "pending restart")].status == "warn"


def test_two_primaries_is_a_failure_and_a_swapped_role_a_warning():
    ms = healthy()
    ms[1].in_recovery = False
    c = by_item(health.evaluate(ms, health.Thresholds()))
    role = c[("server-postgres-1", "role")]
    assert role.status == "fail" and "split brain" in role.detail
    ms = healthy()
    ms[0].expected_role, ms[1].expected_role = "replica", "primary"
    assert by_item(health.evaluate(ms, health.Thresholds()))[("server-postgres-1", "role")].status == "warn"


def test_thresholds_from_params_section_with_defaults(params):
    assert health.thresholds_from(params) == health.Thresholds()


def test_parse_df():
    text = "Filesystem 1-blocks Used Available Capacity Mounted on\n/dev/sda1 1000 250 750 25% /\n"
    assert health.parse_df(text) == {"size_bytes": 1000, "used_bytes": 250, "avail_bytes": 750, "used_pct": 25.0}
    assert health.parse_df("") is None


def test_figures_draw_lag_backup_age_and_connections():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    fig = health.plot(healthy(), health.Thresholds())
    assert [ax.get_title() for ax in fig.axes] == ["replay lag (s)", "age of the last backup (h)",
                                                   "connections in use / limit"]


def test_status_command_exits_2_on_an_unknown_environment():
    from nbutil import hcbpg
    proc = hcbpg("status", "no-such-env", timeout=60)
    assert proc.returncode == 2 and "no params for environment 'no-such-env'" in proc.stderr + proc.stdout


def test_status_shows_one_line_per_server_then_what_is_not_pass():
    ms = healthy()
    ms[0].timeline = ms[1].timeline = 2
    ms[0].backup["stop"] = NOW - 27 * 3600  # a warning
    checks = health.evaluate(ms, health.Thresholds())
    lines = health.render_compact(ms, checks).splitlines()
    assert lines[0].split() == ["SERVER", "ROLE", "STATE", "TL", "LAG", "SLOTS", "BACKUP", "ARCHIVE", "CONN", "DISK",
                                "STATUS"]
    primary, replica = lines[1], lines[2]
    assert primary.split()[:4] == ["server-postgres-1", "primary", "running", "2"]
    for part in ("1 replica(s), max 0s", "1: 16.0 MiB", "27.0 h ago", "60s ago", "12/600", "41%", "WARN"):
        assert part in primary, (part, primary)
    assert replica.split()[:5] == ["server-postgres-2", "replica", "streaming", "2", "0s"]
    assert "n/a (replica)" in replica and replica.rstrip().endswith("OK")
    assert lines[4].startswith("WARN  server-postgres-1: last backup")
    assert lines[-1] == f"OK: {2 * len(health.ITEMS)} item(s), 1 warning(s)"
    ms[1] = health.Measurement("server-postgres-2", "10.0.1.6", "replica", reachable=False, error="no SSH connection")
    text = health.render_compact(ms, health.evaluate(ms, health.Thresholds()))
    assert "server-postgres-2  replica  unreachable" in text and "FAIL: " in text.splitlines()[-1]
