"""Backups taken from the standby (issue 24, params ``pgbackrest.backup_standby``), on a Patroni pair as step 10
makes it (``ha_stage.build_ha_cluster``: the primary stage's clone, a replica, the jumpbox).

The pair is built with backups from the primary (step 08's first full backup needs no standby), then
``backup_standby`` is turned on: ``ensure_pgbackrest_server`` on both servers (pgBackRest's TLS server, a
certificate of the environment's CA each, pgbackrest.conf naming the other as pg2) and the backup job installed
again.  In file order:

1. both TLS servers answer, each authorises only the other's name;
2. a full backup on the leader with ``backup-standby``: pgBackRest waits for the standby's replay and copies the
   data files from the standby (its ``backup file <standby>:...`` lines; only what must come from the primary is
   read there);
3. that backup restored onto the drill's scratch host holds a row written before it;
4. the standby's TLS server stopped: pgBackRest 2.45 fails the backup ("backup-standby=prefer" is 2.56+, and 2.45
   retries the connection to pg2 for io-timeout, 60 s by default, twice: two minutes before it fails, measured),
   while the backup job asks the standby's TLS server first (server-ping, 5 s of I/O), says it does not answer and
   takes the backup from the primary at once (--no-backup-standby, pg2 left out): a new backup, exit 0;
5. the standby's TLS server answering but its PostgreSQL down (Patroni and PostgreSQL killed; the last test: the
   module's teardown destroys the servers): the backup from the standby fails in seconds, and the job says so and
   takes it again from the primary.

Figures are printed (``-s``), never asserted.
"""

from __future__ import annotations

import copy
import re
import time

import pytest

from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import pgbackrest_server as dps
from hcbpg.desired.pgbackrest import parse_conf
from hcbpg.lab import destroy_server_host, faults
from hcbpg.ops import drill
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import pgbackrest_server as ops_dps
from hcbpg.ops import schedule as ops_schedule
from hcbpg.params import Params, parse_params
from hcbpg.steps import restore_drill as step12

import ha_stage as hs
from ha_stage import REPLICA, STAGE_PRIMARY

pytestmark = pytest.mark.lab

#: addresses no other module of a worker uses (test_ha_failover: 71, 72; test_recover_pitr: 81, 82; ...)
REPLICA_OFFSET, JUMPBOX_OFFSET = 91, 92
SCOPE = "hcb-bstandby"
STATE: dict = {}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def data(lab, monkeypatch_module) -> dict:
    monkeypatch_module.setenv("HCBPG_LAB_DIR", str(lab.lab_dir))  # the drill's scratch host is this lab's
    return hs.ha_params_data(lab, replica_offset=REPLICA_OFFSET, jumpbox_offset=JUMPBOX_OFFSET, scope=SCOPE)


@pytest.fixture(scope="module")
def cluster(lab, primary_stage, data):
    params = parse_params(data)  # backups from the primary while the pair is made
    t0 = time.monotonic()
    c = hs.build_ha_cluster(lab, primary_stage, params)
    print(f"\nHA cluster built in {time.monotonic() - t0:.0f} s")
    yield c
    hs.destroy_ha_cluster(lab, params, c)
    destroy_server_host(step12.drill_target(params).name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def params(data, cluster) -> Params:
    """The same params with ``backup_standby`` on, applied to both servers (TLS server, file, the job)."""
    d = copy.deepcopy(data)
    d["pgbackrest"]["backup_standby"] = True
    p = parse_params(d)
    assert dps.enabled(p)
    t0 = time.monotonic()
    for s in p.servers:
        host = cluster.servers[s.name]
        pgb.ensure_paths(host, specs=desired_backups.paths_for(p))
        out = ops_dps.ensure_pgbackrest_server(host, p, s)
        assert any(o.changed for o in out), out
        ops_schedule.ensure_backup_schedule(host, p, s)
    print(f"TLS servers up on both in {time.monotonic() - t0:.1f} s")
    return p


def server_log(host) -> str:  # noqa: ANN001
    """The tail of pgBackRest's TLS server's logs on *host* (its output and pgBackRest's own server log)."""
    return host.run(f"tail -n 40 {dps.SERVER_LOG} /var/log/pgbackrest/*server*.log 2>&1 || true", quiet=True).stdout


def backup_lines(output: str, standby_ip: str) -> tuple[int, int]:
    """(files copied from the standby, files copied locally on the primary) in a backup's detail output."""
    files = re.findall(r"DETAIL: backup file (\S+)", output)
    remote = [f for f in files if f.startswith(f"{standby_ip}:")]
    return len(remote), len(files) - len(remote)


def test_both_tls_servers_answer_and_authorise_only_the_other(params, cluster):
    for s in params.servers:
        other = dps.peer(params, s)
        assert other is not None
        host = cluster.servers[s.name]
        conf = parse_conf(host.read_text("/etc/pgbackrest/pgbackrest.conf") or "")
        assert conf["global:server"]["tls-server-auth"] == f"{other.name}={params.pgbackrest.stanza}"
        assert conf[params.pgbackrest.stanza]["pg2-host"] == other.private_ip
        # each reaches the other's server over the private network
        assert ops_dps.get_server_answers(host, params, other.private_ip), f"{s.name} -> {other.name}"
        # a second run changes nothing
        assert not any(o.changed for o in ops_dps.ensure_pgbackrest_server(host, params, s))


def test_a_full_backup_on_the_leader_copies_the_files_from_the_standby(params, cluster):
    leader = hs.leader_name(cluster, params)
    assert leader == STAGE_PRIMARY
    host = cluster.servers[leader]
    host.run(f"psql -X -q -v ON_ERROR_STOP=1 -d {params.postgres.database}", sudo_user="postgres",
             stdin="CREATE TABLE IF NOT EXISTS standby_marks (id serial PRIMARY KEY, note text);\n"
                   "INSERT INTO standby_marks (note) VALUES ('before the backup');\n")
    before = {b.label for b in pgb.get_backups(host, params)}
    t0 = time.monotonic()
    res = pgb.run_pgbackrest(host, params, "backup", "--type=full", "--log-level-console=detail", check=False,
                             timeout=1800)
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.ok, out[-3000:] + "\n-- the standby's TLS server:\n" + server_log(cluster.servers[REPLICA])
    standby_ip = params.server(REPLICA).private_ip
    assert "wait for replay on the standby to reach" in out and "replay on the standby reached" in out, out[-3000:]
    remote, local = backup_lines(out, standby_ip)
    assert remote > 0, out[-3000:]
    assert remote > local, f"{remote} files from the standby, {local} from the primary"
    new = [b for b in pgb.get_backups(host, params) if b.label not in before]
    assert len(new) == 1 and new[0].type == "full"
    STATE["label"] = new[0].label
    print(f"\nfull backup from the standby: {took:.1f} s, {remote} files from {REPLICA}, {local} on the primary "
          f"({new[0].label}, {new[0].size} bytes)")


def test_the_backup_from_the_standby_restores(params, cluster):
    label = STATE.get("label")
    if not label:
        pytest.skip("no backup from the standby")
    target = step12.drill_target(params)
    host = step12.scratch_host(params, target, dry_run=False)
    step12.prepare_scratch(host, params, target, shape=cluster.shape)  # recovery needs the servers' max_* settings
    t0 = time.monotonic()
    result = drill.run_restore(host, params, target, set_label=label, timeout=1800)
    assert result.restored_now
    notes = host.run(f"psql -X -A -t -q -d {params.postgres.database} -c 'SELECT note FROM standby_marks'",
                     sudo_user="postgres").stdout.split()
    assert notes == ["before", "the", "backup"], notes
    print(f"\nrestore of {label}: restore {result.restore_s} s, recovery {result.recovery_s} s "
          f"({time.monotonic() - t0:.1f} s with the scratch host)")


def test_with_the_standby_unreachable_the_job_says_so_and_backs_up_from_the_primary(params, cluster):
    replica = cluster.servers[REPLICA]
    leader = cluster.servers[STAGE_PRIMARY]
    control = ServiceControl.of(replica)
    spec = dps.server_service(params)
    control.ensure_stopped(spec)
    try:
        # the leader's probe of the standby's TLS server (server-ping, 5 s of I/O: the job's own question)
        assert not pgb.get_standby_answers(leader, params, params.server(STAGE_PRIMARY))
        # pgBackRest alone: the backup from the standby fails, and says why (io-timeout 5 s here: 2.45 retries the
        # connection to pg2 for io-timeout, twice, and its default 60 s only makes the same failure two minutes late)
        t0 = time.monotonic()
        direct = pgb.run_pgbackrest(leader, params, "backup", "--type=incr", "--io-timeout=5", check=False,
                                    timeout=900)
        errors = [ln for ln in direct.output.splitlines() if "ERROR" in ln]
        assert not direct.ok
        assert any("unable to find standby cluster" in ln for ln in errors), direct.output[-3000:]
        print(f"\nbackup with the standby's TLS server down: exit {direct.exit_code} after "
              f"{time.monotonic() - t0:.1f} s: {errors[:2]}")
        before = {b.label for b in pgb.get_backups(leader, params)}
        t0 = time.monotonic()
        res = ops_schedule.run_backup_job(leader, "incr", timeout=1800)
        out = res.stdout + res.stderr
        assert res.ok, out[-3000:]
        assert "TLS server" in out and "does not answer" in out and "--no-backup-standby" in out, out[-3000:]
        new = [b for b in pgb.get_backups(leader, params) if b.label not in before]
        assert len(new) == 1, new
        begins = [ln for ln in out.splitlines() if "backup command begin" in ln]
        # the standby not tried at all: one backup, from the primary, pg2 left out whole
        assert len(begins) == 1, begins
        assert "--pg2-host" not in begins[0] and "--no-backup-standby" in begins[0], begins[0]
        print(f"the job went to the primary: {new[0].label} in {time.monotonic() - t0:.1f} s")
        # the standby's job does nothing (it is a standby) whatever its TLS server does
        assert ops_schedule.run_backup_job(replica, "incr", timeout=600).ok
    finally:
        ops_dps.ensure_pgbackrest_server(replica, params, params.server(REPLICA))


def test_with_the_standbys_postgresql_down_the_backup_from_it_fails_and_the_job_takes_it_from_the_primary(
        lab, params, cluster):
    """The standby's TLS server answers (the job's probe passes) but its PostgreSQL is down: pgBackRest fails the
    backup from the standby, and the job says so and takes it again from the primary.  The last test of the
    module: the replica stays down (the module's teardown destroys the servers)."""
    leader = cluster.servers[STAGE_PRIMARY]
    assert pgb.get_standby_answers(leader, params, params.server(STAGE_PRIMARY))
    assert faults.kill_patroni_and_postgres(lab.cfg, REPLICA)
    assert hs.leader_name(cluster, params) == STAGE_PRIMARY
    before = {b.label for b in pgb.get_backups(leader, params)}
    t0 = time.monotonic()
    res = ops_schedule.run_backup_job(leader, "incr", timeout=1800)
    out = res.stdout + res.stderr
    assert res.ok, out[-3000:]
    assert "backup from the standby failed" in out and "--no-backup-standby" in out, out[-3000:]
    new = [b for b in pgb.get_backups(leader, params) if b.label not in before]
    assert len(new) == 1, new
    begins = [ln for ln in out.splitlines() if "backup command begin" in ln]
    assert len(begins) == 2 and "--pg2-host=" in begins[0], begins
    assert "--pg2-host" not in begins[1] and "--no-backup-standby" in begins[1], begins[1]  # pg2 left out whole
    print(f"\nthe standby's PostgreSQL down: "
          f"{[ln for ln in out.splitlines() if 'ERROR' in ln][:1]}; the job fell back to the primary: "
          f"{new[0].label} in {time.monotonic() - t0:.1f} s")
