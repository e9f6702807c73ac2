"""The faults that must page (issue 25), on real lab hosts: a primary (the worker's stage: steps 02-04) with
pgBackRest against the lab's S3 store (steps 05 and 08: archiving on, a full backup), step 13's exporter, node
exporter and the health job writing node exporter's textfile; a jumpbox with Prometheus and Alertmanager (step 15b's code); the
receiver on the lab bridge (tests/lab/alerting_stage.py).  Lab settings: scrape and evaluation every 2 s, ``for``
4 s, group wait 1 s.

Each delivery's latency (the event -> the POST at the receiver) is measured and printed, never asserted:
- the health job ran once: its textfile has pgBackRest's info and the certificates' ends, BackupInfoStale quiet;
- a certificate within 21 days of its end (issued by the lab's CA for 10 days in place of PostgreSQL's, which
  PostgreSQL reads only at a reload, so nothing else sees it; the real one put back after) -> CertificateExpiring;
- a disk past 80 % (a 64 MB loop-mounted ext4 in the lab host's own mount namespace, under /srv: node exporter
  as installed here did not report one under /mnt; filled to 90 % with fallocate) -> DiskFull;
- step 12's success written on the jumpbox (its last cell) is scraped; 09b's way-back end already passed
  -> WayBackPastEnd;
- the S3 store frozen under WAL load (hcbpg.lab.faults.partition of the primary from the S3 address: the lab's
  moto is shared, never stopped) -> ArchivingFailing.
A stopped replica is not here: the worker's stages have no replica (a pair costs a second server and a base
backup); PostgresDown and the exporter's TargetDown are delivered in test_alerting_lab.py.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import alerting as al
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import server as desired_server
from hcbpg.desired import textfile_metrics as tm
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.pgbackrest import ARCHIVE_PUSH_IO_TIMEOUT_S
from hcbpg.desired.services import NODE_EXPORTER_LOG
from hcbpg.lab import faults
from hcbpg.ops import alerting as ops_alerting
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import monitoring, privileges
from hcbpg.ops import schedule as ops_schedule
from hcbpg.ops.migration import wayback
from hcbpg.params import parse_params
from hcbpg.steps import alerting as step
from hcbpg.steps import restore_drill

from alerting_stage import Receiver, open_hosts, received, start_receiver, wait_received
from labparams import lab_params, pgbackrest_section
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, primary_and_jumpbox, start_archiving_with_a_backup

pytestmark = pytest.mark.lab

JUMPBOX = "hcb-jumpbox"
JUMPBOX_OFFSET = 59
TIMINGS: dict[str, float] = {}
#: the lab's pgbackrest.archive_push_timeout: archive_command reports a push not done within it (pgBackRest's
#: default 60 s: the store frozen -> the first failure ~61 s, the alert ~67 s measured)
ARCHIVE_PUSH_TIMEOUT_S = 20
OUTPUT: list[str] = []


@pytest.fixture(scope="module")
def receiver(lab, tmp_path_factory):
    r = start_receiver(lab.cfg.gateway_ip, tmp_path_factory.mktemp("alerting-faults"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def params(lab, primary_stage, receiver: Receiver):
    cfg = lab.cfg
    jb_ip = cfg.address(JUMPBOX_OFFSET)
    p = parse_params(lab_params(
        lab, [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary")],
        pgbackrest=pgbackrest_section(lab, archive_push_timeout=ARCHIVE_PUSH_TIMEOUT_S,
                                      repo_path_prefix="/pgbackrest-alerting-faults"),  # this module's own
        jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip}, alerting=receiver.alerting_section()))
    with primary_and_jumpbox(lab, primary_stage, JUMPBOX, jb_ip):
        yield p


@pytest.fixture(scope="module")
def hosts(params):
    with open_hosts(params, OUTPUT.append) as hs:
        yield hs


@pytest.fixture(scope="module")
def monitor(params, hosts) -> step.MonitorHosts:
    """Steps 05 and 08 (archiving on, the first full backup), step 13's exporter, then step 15b's code and the
    health job once."""
    primary, s = hosts[STAGE_PRIMARY], params.primary
    t0 = time.monotonic()
    start_archiving_with_a_backup(primary, params)  # steps 05 and 08, the first full backup (stages.py)
    cfg = desired_roles.roles_config(params)
    privileges.ensure_role_secrets(SecretStore(), cfg)
    pg_config.ensure_pg_hba(primary, params, s, extra=desired_server.all_hba_extra(params, s, cfg))
    privileges.ensure_privileges(pg_cluster.get_psql(primary, params), cfg)
    monitoring.ensure_exporter(primary, params, s, cfg, privileges.get_role_password(SecretStore(), cfg,
                                                                                      cfg.exporter.name))
    mh = step.MonitorHosts({STAGE_PRIMARY: primary}, hosts[JUMPBOX], JUMPBOX)
    out = step.setup_alerting(mh, params, step.resolve_secrets(params), dry_run=False)
    OUTPUT.extend(f"{o}\n{o.diff}" for o in out)
    TIMINGS["health_job_exit"] = step.run_health_jobs(mh, params)[STAGE_PRIMARY]
    ops_alerting.wait_for_targets_up(hosts[JUMPBOX], params, timeout=120)
    TIMINGS["setup_s"] = round(time.monotonic() - t0, 1)
    return mh


def prom_query(jb: Host, params, expr: str) -> list[dict]:
    assert params.alerting is not None
    res = jb.probe(shlex.join(["curl", "-sS", "--fail", "--max-time", "10", "--get", "--data-urlencode",
                               f"query={expr}", f"http://127.0.0.1:{params.alerting.prometheus_port}/api/v1/query"]))
    assert res.ok, res.output
    return json.loads(res.stdout)["data"]["result"]


def wait_query(jb: Host, params, expr: str, want: bool, *, timeout: float = 90.0) -> float:
    """Seconds until *expr* has a result (*want*) or none (not *want*)."""
    t0 = time.monotonic()
    while bool(prom_query(jb, params, expr)) != want:
        assert time.monotonic() - t0 < timeout, f"{expr}: {'no result' if want else 'still a result'} " \
                                                f"after {timeout:g} s"
        time.sleep(0.5)
    return time.monotonic() - t0


def psql(lab, sql: str) -> str:
    cp = lab.exec(STAGE_PRIMARY, ["psql", "-X", "-A", "-t", "-q", "-d", "postgres", "-c", sql], user="postgres",
                  timeout=60)
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


def test_the_health_job_writes_the_textfile_and_backup_info_stale_is_quiet(lab, params, hosts, monitor):
    primary, jb = hosts[STAGE_PRIMARY], hosts[JUMPBOX]
    st = primary.probe(f"stat -c '%U %a' {tm.TEXTFILE_DIR} {tm.TEXTFILE}").stdout.split("\n")
    assert st[:2] == ["postgres 755", "postgres 644"], st
    text = primary.read_text(tm.TEXTFILE) or ""
    assert "hcbpg_pgbackrest_info_timestamp_seconds " in text, text
    assert f'hcbpg_pgbackrest_stanza_status_code{{stanza="{params.pgbackrest.stanza}"}} 0' in text, text
    assert f'hcbpg_pgbackrest_backup_last_timestamp_seconds{{stanza="{params.pgbackrest.stanza}",repo="1",' \
           'type="full"}' in text, text
    for path in (desired_tls.server_cert_path(params), desired_tls.client_ca_path(params)):
        assert f'hcbpg_certificate_expiry_timestamp_seconds{{path="{path}"' in text, (path, text)
    assert not any(v in text for v in desired_backups.resolve_conf_secrets(params).values() if v), "a secret"
    # Prometheus reads it through node exporter; BackupInfoStale (absent before the job) no longer fires
    TIMINGS["textfile_scraped_s"] = round(wait_query(jb, params, "hcbpg_pgbackrest_info_timestamp_seconds", True), 1)
    wait_query(jb, params, 'ALERTS{alertname="BackupInfoStale"}', False, timeout=60)
    firing = [(a["metric"]["alertname"], a["metric"].get("server", "")) for a in prom_query(jb, params, "ALERTS")
              if a["metric"].get("alertstate") == "firing"]
    print("alerts with the job's textfile:", firing)
    assert not [a for a in firing if a[0] in ("BackupInfoStale", "BackupRepositoryError", "BackupFullTooOld",
                                              "BackupDiffTooOld", "CertificateExpiring", "ArchivingFailing",
                                              "DiskFull", "PostgresDown", "TargetDown")], firing


def test_a_certificate_within_21_days_of_its_end_is_delivered(lab, params, hosts, monitor, receiver, tmp_path):
    primary = hosts[STAGE_PRIMARY]
    path = desired_tls.server_cert_path(params)
    original = primary.read_text(path)
    assert original and "BEGIN CERTIFICATE" in original
    ca_dir = lab.cfg.tls_dir
    key, csr, crt = tmp_path / "short.key", tmp_path / "short.csr", tmp_path / "short.crt"
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={STAGE_PRIMARY}"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_dir / "ca.crt"), "-CAkey",
                    str(ca_dir / "ca.key"), "-CAcreateserial", "-CAserial", str(tmp_path / "ca.srl"), "-days", "10",
                    "-out", str(crt)], check=True, capture_output=True, timeout=60)
    # written over the file in place (its owner and mode stay); PostgreSQL reads it only at a reload: none follows
    lab.exec(STAGE_PRIMARY, ["sh", "-c", f"cat > {shlex.quote(path)}"], input=crt.read_text(), check=True)
    try:
        t0 = time.time()
        ops_schedule.run_health_job(primary, timeout=120)
        TIMINGS["cert_job_run_s"] = round(time.time() - t0, 1)
        got = wait_received(receiver.log, t0, "alerts", '"alertname":"CertificateExpiring"', path)
        TIMINGS["cert_job_started_to_alert_s"] = round(got["time"] - t0, 1)
        assert '"status":"firing"' in got["body"]
    finally:
        lab.exec(STAGE_PRIMARY, ["sh", "-c", f"cat > {shlex.quote(path)}"], input=original, check=True)
        t1 = time.time()
        ops_schedule.run_health_job(primary, timeout=120)
    assert primary.read_text(path) == original
    resolved = wait_received(receiver.log, t1, "alerts", '"status":"resolved"', '"alertname":"CertificateExpiring"')
    TIMINGS["cert_restored_to_resolved_s"] = round(resolved["time"] - t1, 1)


DISK_IMG = "/var/tmp/hcbpg-alerting-disk.img"
DISK_MNT = "/srv/hcbpg-alerting-disk"


def test_a_disk_past_the_threshold_is_delivered(lab, params, hosts, monitor, receiver):
    jb = hosts[JUMPBOX]
    made = lab.exec(STAGE_PRIMARY, f"set -e; truncate -s 64M {DISK_IMG}; mkfs.ext4 -q -F -m 0 {DISK_IMG}; "
                                   f"mkdir -p {DISK_MNT}; mount -o loop {DISK_IMG} {DISK_MNT}", timeout=120)
    try:
        assert made.returncode == 0, made.stdout + made.stderr
        sel = f'node_filesystem_avail_bytes{{job="node",server="{STAGE_PRIMARY}",mountpoint="{DISK_MNT}"}}'
        try:
            wait_query(jb, params, sel, True, timeout=60)
        except AssertionError:
            sizes = prom_query(jb, params, f'node_filesystem_size_bytes{{server="{STAGE_PRIMARY}"}}')
            print("node exporter's filesystems:", [(r["metric"].get("mountpoint"), r["metric"].get("fstype"))
                                                   for r in sizes])
            print(lab.exec(STAGE_PRIMARY, f"grep -h hcbpg /proc/1/mounts; tail -n 20 {NODE_EXPORTER_LOG}").stdout)
            raise
        t0 = time.time()
        filled = lab.exec(STAGE_PRIMARY, f"a=$(df -B1 --output=avail {DISK_MNT} | tail -n 1) && "
                                         f"fallocate -l $((a * 9 / 10)) {DISK_MNT}/fill && df -P {DISK_MNT} | tail -n 1")
        assert filled.returncode == 0, filled.stderr
        print("filled:", filled.stdout.strip())
        got = wait_received(receiver.log, t0, "alerts", '"alertname":"DiskFull"', DISK_MNT)
        TIMINGS["disk_filled_to_alert_s"] = round(got["time"] - t0, 1)
        lab.exec(STAGE_PRIMARY, f"rm -f {DISK_MNT}/fill", check=True)
        t1 = time.time()
        resolved = wait_received(receiver.log, t1, "alerts", '"status":"resolved"', '"alertname":"DiskFull"')
        TIMINGS["disk_freed_to_resolved_s"] = round(resolved["time"] - t1, 1)
    finally:
        lab.exec(STAGE_PRIMARY, f"umount {DISK_MNT}; rm -f {DISK_IMG}; rmdir {DISK_MNT}", timeout=60)


class _Run:
    """What steps.restore_drill.run_mark_drill_success reads of a step's run: its params, not a dry run."""

    def __init__(self, params) -> None:  # noqa: ANN001
        self.params, self.dry_run = params, False


def test_the_drills_success_on_the_jumpbox_is_scraped(params, hosts, monitor):
    """Step 12's last cell after its checks passed: the drill's end in hcbpg-drill.prom on the jumpbox."""
    jb = hosts[JUMPBOX]
    t0 = time.time()
    restore_drill.run_mark_drill_success(_Run(params))  # type: ignore[arg-type]
    assert jb.probe(f"stat -c '%U %a' {tm.DRILL_TEXTFILE}").stdout.strip() == "root 644"
    got = prom_query(jb, params, f'hcbpg_drill_last_success_timestamp_seconds{{server="{JUMPBOX}"}}')
    end = time.monotonic() + 60
    while not got:
        assert time.monotonic() < end, "the drill's success was not scraped within 60 s"
        time.sleep(0.5)
        got = prom_query(jb, params, f'hcbpg_drill_last_success_timestamp_seconds{{server="{JUMPBOX}"}}')
    assert float(got[0]["value"][1]) >= t0 - 1


def test_a_way_back_past_its_end_is_delivered(params, hosts, monitor, receiver):
    """09b's textfile with an end already passed -> WayBackPastEnd (step 16 removes the file: resolved)."""
    primary = hosts[STAGE_PRIMARY]
    t0 = time.time()
    wayback._ensure_wayback_metric(primary, params, "2026-01-01T00:00:00.000000Z")
    try:
        assert primary.probe(f"stat -c '%U %a' {tm.WAYBACK_TEXTFILE}").stdout.strip() == "postgres 644"
        got = wait_received(receiver.log, t0, "alerts", '"alertname":"WayBackPastEnd"')
        TIMINGS["wayback_file_to_alert_s"] = round(got["time"] - t0, 1)
    finally:
        primary.run(f"rm -f {tm.WAYBACK_TEXTFILE}")
    t1 = time.time()
    resolved = wait_received(receiver.log, t1, "alerts", '"status":"resolved"', '"alertname":"WayBackPastEnd"')
    TIMINGS["wayback_file_removed_to_resolved_s"] = round(resolved["time"] - t1, 1)


WAL_LOAD = ("while :; do psql -X -q -d postgres -c \"INSERT INTO hcbpg_alerting_walload SELECT repeat(md5(g::text), "
            "8) FROM generate_series(1, 3000) g\" -c 'SELECT pg_switch_wal()' >/dev/null 2>&1; sleep 2; done")


def test_the_s3_store_frozen_under_wal_load_archiving_failing_is_delivered(lab, params, hosts, monitor, receiver):
    s3_ip = lab.cfg.gateway_ip
    psql(lab, "CREATE TABLE IF NOT EXISTS hcbpg_alerting_walload (x text)")
    pid = lab.exec(STAGE_PRIMARY, f"nohup sh -c {shlex.quote(WAL_LOAD)} </dev/null >/dev/null 2>&1 & echo $!",
                   user="postgres", check=True).stdout.strip()
    try:
        # archiving goes on under the load first (segments archived, no failure)
        before = int(psql(lab, "SELECT archived_count FROM pg_stat_archiver"))
        end = time.monotonic() + 300  # generous: the suite's other labs share the machine
        while int(psql(lab, "SELECT archived_count FROM pg_stat_archiver")) < before + 2:
            assert time.monotonic() < end, "archiving did not go on under the WAL load: " + psql(
                lab, "SELECT row_to_json(a) FROM pg_stat_archiver a")
            time.sleep(1)
        t0 = time.time()
        faults.partition(lab.cfg, STAGE_PRIMARY, [s3_ip])  # SSH from here goes that way too: lab.exec meanwhile
        try:
            first_failure = None
            end = time.monotonic() + 900
            while True:
                if first_failure is None and psql(
                        lab, f"SELECT coalesce(last_failed_time > to_timestamp({t0}), false) FROM pg_stat_archiver"
                ) == "t":
                    first_failure = time.time()
                got = received(receiver.log, t0, "alerts", '"alertname":"ArchivingFailing"')
                if got:
                    break
                assert time.monotonic() < end, "no ArchivingFailing POST within 900 s of the freeze"
                time.sleep(0.5)
            TIMINGS["s3_frozen_to_alert_s"] = round(got[0]["time"] - t0, 1)
            if first_failure is not None:
                TIMINGS["s3_frozen_to_first_failed_push_s"] = round(first_failure - t0, 1)
                TIMINGS["first_failed_push_to_alert_s"] = round(got[0]["time"] - first_failure, 1)
            TIMINGS["archive_push_io_timeout_s"] = ARCHIVE_PUSH_IO_TIMEOUT_S
            TIMINGS["archive_push_timeout_s"] = ARCHIVE_PUSH_TIMEOUT_S
            assert '"status":"firing"' in got[0]["body"]
        finally:
            faults.heal_partition(lab.cfg, STAGE_PRIMARY, [s3_ip])
        t1 = time.time()
        resolved = wait_received(receiver.log, t1, "alerts", '"status":"resolved"', '"alertname":"ArchivingFailing"',
                                 timeout=300)
        TIMINGS["s3_healed_to_resolved_s"] = round(resolved["time"] - t1, 1)
    finally:
        lab.exec(STAGE_PRIMARY, f"kill {int(pid)}", user="postgres")


def test_no_secret_in_any_output_and_the_timings(params, hosts, receiver):
    shown = "\n".join(OUTPUT)
    assert not any(v in shown for v in receiver.values)
    conf = hosts[JUMPBOX].read_text(al.ALERTMANAGER_CONFIG) or ""
    assert all(v in conf for v in receiver.values)
    print("\nalerting fault timings (scrape/eval 2 s, for 4 s, group_wait 1 s; event -> POST at the receiver):",
          TIMINGS)
