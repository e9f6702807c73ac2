"""The weekly restore drill on the jumpbox (issue 24): on a stage primary with repo1 (the lab's S3 store) and repo2
(the lab's second store), each at a path prefix of this module, steps 05 and 08 (the stanza in both, a full backup
in each, WAL in both), then a differential backup into repo2 (its postgresql.auto.conf naming another port) and
rows after it; a lab jumpbox with step 15b's
monitor (Prometheus, Alertmanager, node exporter reading the textfile directory) and the receiver of
tests/lab/alerting_stage.py.

hcbpg.ops.drill_schedule installs the drill there (PostgreSQL 15 and pgBackRest, the config with the servers' keys,
the job, its cron file); the job is run once as cron runs it:
- ``hcbpg-drill 2``: repo2's newest backup (the differential, not step 08's full) restored into the scratch cluster
  on the jumpbox, replayed to the end of repo2's archive (the rows written after the backup are there), every
  table read, pg_amcheck, ``pgbackrest verify --repo=2``; the metric written and scraped (hcbpg_drill_failed 0);
- the jumpbox cut off from repo2's store (its packets to the store rejected in the jumpbox's namespace): the job
  fails, writes hcbpg_drill_failed{repo="2"} 1, and DrillFailing reaches the receiver; mended and run again, it
  resolves; the next run without a repository takes repo1 (in turn).
Latencies printed, never asserted.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import drill_schedule as ds
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import server as desired_server
from hcbpg.desired.backups import resolve_conf_secrets
from hcbpg.lab import create_server_host, destroy_server_host
from hcbpg.lab.core import S3B_BUCKET, S3B_PORT, read_state, run
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import drill, drill_schedule, monitoring, privileges
from hcbpg.ops import pgbackrest as pgb
from hcbpg.params import parse_params
from hcbpg.pg.pgbackrest import parse_archive_ranges
from hcbpg.steps import alerting as step
from hcbpg.steps import pgbackrest as step05
from hcbpg.steps import start_archiving as step08
from hcbpg.wait import wait_until

from alerting_stage import Receiver, start_receiver, wait_received
from labparams import ensure_secret_file, lab_params, pgbackrest_section
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET

pytestmark = pytest.mark.lab

JUMPBOX = "hcb-jumpbox"
JUMPBOX_OFFSET = 59
STANZA = "hcb_production"
TIMINGS: dict[str, float] = {}
STATE: dict = {}
SEED_SQL = """
CREATE TABLE IF NOT EXISTS drill_marks (id bigserial PRIMARY KEY, note text NOT NULL);
INSERT INTO drill_marks (note) SELECT 'seed ' || g FROM generate_series(1, 100) g;
"""


def repo2_section(lab) -> dict:  # noqa: ANN001
    """repo2 at the lab's second store (its own bucket, keys and passphrase), under this module's prefix."""
    cfg = lab.cfg
    for name in ("s3b-key", "s3b-key-secret", "cipher-pass-2"):
        ensure_secret_file(cfg.secret_path(name))
    return {"s3_bucket": S3B_BUCKET, "s3_endpoint": cfg.s3b_endpoint.removeprefix("https://"),
            "s3_region": "us-east-1", "s3_uri_style": "path", "s3_ca_file": str(cfg.ca_cert),
            "s3_key": f"file:{cfg.secret_path('s3b-key')}", "s3_key_secret": f"file:{cfg.secret_path('s3b-key-secret')}",
            "cipher_pass": f"file:{cfg.secret_path('cipher-pass-2')}", "repo_path_prefix": "/pgbackrest-drill-job-2",
            "retention_full_type": "count", "retention_full": 2,
            "schedule_full": "30 7 * * 0", "schedule_diff": "30 7 * * 1-6"}


@pytest.fixture(scope="module")
def receiver(lab, tmp_path_factory):
    r = start_receiver(lab.cfg.gateway_ip, tmp_path_factory.mktemp("drill-schedule"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def params(lab, primary_stage, receiver: Receiver):
    cfg = lab.cfg
    jb_ip = cfg.address(JUMPBOX_OFFSET)
    p = parse_params(lab_params(
        lab, [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary")],
        pgbackrest=pgbackrest_section(lab, repo_path_prefix="/pgbackrest-drill-job", repo2=repo2_section(lab)),
        jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip}, alerting=receiver.alerting_section()))
    primary_stage.clone()
    create_server_host(JUMPBOX, jb_ip, [lab.ssh_key.with_suffix(".pub").read_text()], lab_dir=str(lab.lab_dir))
    yield p
    for name in (STAGE_PRIMARY, JUMPBOX):
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def hosts(params):
    assert params.jumpbox is not None
    hs = {STAGE_PRIMARY: Host.from_params(params, STAGE_PRIMARY, params.primary.private_ip),
          JUMPBOX: Host.from_params(params, JUMPBOX, params.jumpbox.private_ip)}
    yield hs
    for h in hs.values():
        h.close()


def sql(lab, text: str) -> str:  # noqa: ANN001
    # the port named: Debian's psql (pg_wrapper) takes it from the cluster's config, postgresql.auto.conf included
    cp = lab.exec(STAGE_PRIMARY, ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-p", "5432",
                                  "-d", "hcb_production"],
                  input=text, user="postgres", timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    return cp.stdout.strip()


@pytest.fixture(scope="module")
def stage(lab, params, hosts) -> step.MonitorHosts:
    """Steps 05 and 08 with repo2, a differential backup into repo2 and rows after it (archived in both), step 13's
    exporter, step 15b's monitor on the jumpbox."""
    primary, s = hosts[STAGE_PRIMARY], params.primary
    t0 = time.monotonic()
    sql(lab, SEED_SQL)
    step05.configure(primary, params, s)
    step08.start_archiving(primary, params, s)
    drill.ensure_baseline_backup(primary, params)  # a full backup into each repository
    sql(lab, "INSERT INTO drill_marks (note) SELECT 'before the diff ' || g FROM generate_series(1, 50) g")
    # the backup's postgresql.auto.conf names another port (ALTER SYSTEM, not applied here: no reload or restart);
    # the drill's cluster must still listen where the job looks (its command line wins)
    sql(lab, "ALTER SYSTEM SET port = 5439")
    try:
        diff = pgb.run_backup(primary, params, type="diff", repo=2)
    finally:
        sql(lab, "ALTER SYSTEM RESET port")
    sql(lab, "INSERT INTO drill_marks (note) SELECT 'after the diff ' || g FROM generate_series(1, 25) g")
    seg = sql(lab, "SELECT pg_walfile_name(pg_switch_wal())")
    wait_until(lambda: parse_archive_ranges(pgb.get_info_json(primary, params), STANZA),
               lambda r: all(n in r and r[n][1] >= seg for n in (1, 2)), what=f"WAL {seg} in both repositories",
               timeout=300, interval=2)
    STATE.update(diff=diff.label, rows=int(sql(lab, "SELECT count(*) FROM drill_marks")))
    cfg = desired_roles.roles_config(params)
    privileges.ensure_role_secrets(SecretStore(), cfg)
    pg_config.ensure_pg_hba(primary, params, s, extra=desired_server.all_hba_extra(params, s, cfg))
    privileges.ensure_privileges(pg_cluster.get_psql(primary, params), cfg)
    monitoring.ensure_exporter(primary, params, s, cfg, privileges.get_role_password(SecretStore(), cfg,
                                                                                      cfg.exporter.name))
    mh = step.MonitorHosts({STAGE_PRIMARY: primary}, hosts[JUMPBOX], JUMPBOX)
    step.setup_alerting(mh, params, step.resolve_secrets(params), dry_run=False)
    TIMINGS["stage_s"] = round(time.monotonic() - t0, 1)
    return mh


def prom_query(jb: Host, params, expr: str) -> list[dict]:  # noqa: ANN001
    assert params.alerting is not None
    res = jb.probe(shlex.join(["curl", "-sS", "--fail", "--max-time", "10", "--get", "--data-urlencode",
                               f"query={expr}", f"http://127.0.0.1:{params.alerting.prometheus_port}/api/v1/query"]))
    assert res.ok, res.output
    return json.loads(res.stdout)["data"]["result"]


def wait_query(jb: Host, params, expr: str, *, timeout: float = 120.0) -> list[dict]:  # noqa: ANN001
    return wait_until(lambda: prom_query(jb, params, expr), bool, what=f"{expr} in Prometheus", timeout=timeout,
                      interval=0.5)


def state(jb: Host) -> dict:
    text = jb.read_text(ds.DRILL_STATE)
    assert text, f"no {ds.DRILL_STATE}"
    return json.loads(text)


def store_rule(lab, action: str) -> None:  # noqa: ANN001
    """The jumpbox's packets to repo2's store rejected (``-I``) or let through again (``-D``), in its namespace."""
    ns = read_state(lab.cfg)["hosts"][JUMPBOX]["netns"]
    rule = ["OUTPUT", "-d", lab.cfg.s3b_ip, "-p", "tcp", "--dport", str(S3B_PORT), "-j", "REJECT"]
    cp = run(["ip", "netns", "exec", ns, "iptables", "-w", action, *rule], check=False)
    assert cp.returncode == 0 or action == "-D", cp.stderr


def test_the_drill_is_installed_on_the_jumpbox_with_the_servers_keys_once(params, hosts, stage):
    jb = hosts[JUMPBOX]
    t0 = time.monotonic()
    out = drill_schedule.ensure_drill_schedule(jb, params)
    TIMINGS["install_s"] = round(time.monotonic() - t0, 1)
    secrets = [v for v in resolve_conf_secrets(params).values() if v]
    assert not any(v in str(o) + (o.diff or "") for o in out for v in secrets)
    assert jb.probe(f"stat -c '%a %U %G' {ds.DRILL_CONF_PATH}").stdout.strip() == "640 root postgres"
    conf = jb.read_text(ds.DRILL_CONF_PATH) or ""
    assert "repo2-s3-key=" in conf and "<secret>" not in conf
    assert jb.probe(f"test -x {ds.DRILL_JOB_PATH} && test -f {ds.DRILL_CRON_PATH}").ok
    assert not any(o.changed for o in drill_schedule.ensure_drill_schedule(jb, params))


def test_the_job_restores_repo2s_newest_backup_verifies_it_and_the_metric_is_scraped(params, hosts, stage):
    jb = hosts[JUMPBOX]
    t0 = time.monotonic()
    res = drill_schedule.run_drill_job(jb, repo=2, timeout=1800)
    TIMINGS["drill_repo2_s"] = round(time.monotonic() - t0, 1)
    print("\n" + res.output.strip()[-1500:])
    entry = state(jb)["repos"]["2"]
    found = entry["found"]
    assert entry["failed"] == 0 and found["backup"] == STATE["diff"], entry  # the newest: the diff, not 08's full
    assert found["backup_type"] == "diff" and found["amcheck"] is True
    # replayed to the end of repo2's archive: the rows written after the backup are there
    assert found["tables"]["hcb_production"]["public.drill_marks"] == STATE["rows"], found["tables"]
    text = jb.read_text(ds.DRILL_JOB_TEXTFILE) or ""
    assert 'hcbpg_drill_failed{repo="2"} 0' in text and 'hcbpg_drill_last_success_timestamp_seconds{repo="2"}' in text
    assert not jb.probe(f"test -e {ds.DRILL_DATA}").ok, "the scratch data directory was left behind"
    assert not jb.probe(f"pgrep -f {shlex.quote('-D ' + ds.DRILL_DATA)}").ok
    TIMINGS["restore_s"], TIMINGS["recovery_s"], TIMINGS["verify_s"] = (found["restore_s"], found["recovery_s"],
                                                                        found["verify_s"])
    t1 = time.monotonic()
    got = wait_query(jb, params, 'hcbpg_drill_failed{repo="2"} == 0')
    TIMINGS["metric_scraped_s"] = round(time.monotonic() - t1, 1)
    assert got and got[0]["metric"].get("server") == JUMPBOX, got


def test_a_drill_cut_off_from_repo2_fails_and_drill_failing_is_delivered(lab, params, hosts, stage, receiver):
    jb = hosts[JUMPBOX]
    store_rule(lab, "-I")
    try:
        t0 = time.time()
        res = drill_schedule.run_drill_job(jb, repo=2, timeout=1800, check=False)
        TIMINGS["failed_run_s"] = round(time.time() - t0, 1)
        assert res.exit_code == 1, res.output[-2000:]
        entry = state(jb)["repos"]["2"]
        assert entry["failed"] == 1 and "repo2 status" in entry["reason"], entry  # the store, not 'no backup'
        assert 'hcbpg_drill_failed{repo="2"} 1' in (jb.read_text(ds.DRILL_JOB_TEXTFILE) or "")
        got = wait_received(receiver.log, t0, "alerts", '"alertname":"DrillFailing"', '"repo":"2"', timeout=180)
        TIMINGS["failed_run_to_alert_s"] = round(got["time"] - t0, 1)
        assert '"status":"firing"' in got["body"]
        print(f"\nfailed drill: {entry['reason'][:300]}")
    finally:
        store_rule(lab, "-D")
    t1 = time.time()
    again = drill_schedule.run_drill_job(jb, repo=2, timeout=1800)
    assert again.ok
    resolved = wait_received(receiver.log, t1, "alerts", '"status":"resolved"', '"alertname":"DrillFailing"',
                             timeout=180)
    TIMINGS["mended_to_resolved_s"] = round(resolved["time"] - t1, 1)
    # in turn: the run after repo2's takes repo1
    nxt = drill_schedule.run_drill_job(jb, timeout=1800)
    assert nxt.ok and "drill of repo1" in nxt.output, nxt.output[-1500:]
    st = state(jb)
    assert st["last_repo"] == 1 and st["repos"]["1"]["failed"] == 0
    assert st["repos"]["1"]["found"]["tables"]["hcb_production"]["public.drill_marks"] == STATE["rows"]
    print(f"timings: {TIMINGS}")
