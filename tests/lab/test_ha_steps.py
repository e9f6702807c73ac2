"""Step 10 under Patroni (10_high_availability) against real lab hosts: two database servers and the jumpbox
(etcd's third voter), starting from a pair that replicates the manual way, as production will.

The tests run in file order and build on each other: steps 02-04 and pgBackRest as before; the notebook 10
adopts the pair (etcd on three members with TLS and auth, Patroni beside the running primary, the replica handed
over, one gated restart); the system identifier and the stanza unchanged; a second run changes nothing; a
switchover through step 11; maintenance pause/resume; etcd losing two members while the leader keeps serving
(failsafe) and ``hcbpg status`` saying why.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters.host import Host
from hcbpg.desired import patroni as dp
from hcbpg.lab import create_server_host, destroy_server_host
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import failover as fo
from hcbpg.ops import patroni as ops_patroni
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import install_postgres as install_step

import ha_stage
from stages import STAGE_PRIMARY, cli, latest_manifest, latest_run_dir, scrap, side_by_side

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab

REPLICA = "server-postgres-2"
JUMPBOX = "hcb-jumpbox"
STATE: dict = {}


def params_data(lab) -> dict:
    """The stage's primary, a replica at offset 56 and the jumpbox at 57, Patroni's scope ``hcb-lab`` (as
    params/lab.yaml), the params every HA module builds (ha_stage.ha_params_data)."""
    return ha_stage.ha_params_data(lab, replica_offset=56, jumpbox_offset=57, scope="hcb-lab",
                                   repo_path_prefix="/pgbackrest-ha-test")


@pytest.fixture(scope="module")
def params(lab, primary_stage):
    p = parse_params(params_data(lab))
    key = lab.ssh_key.with_suffix(".pub").read_text()
    primary_stage.clone()
    create_server_host(REPLICA, p.server(REPLICA).private_ip, [key], lab_dir=str(lab.lab_dir))
    assert p.jumpbox is not None
    create_server_host(JUMPBOX, p.jumpbox.private_ip, [key], lab_dir=str(lab.lab_dir))
    yield p
    for name in (STAGE_PRIMARY, REPLICA, JUMPBOX):
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def hosts(params):
    hs = {s.name: Host.from_params(params, s.name, s.private_ip) for s in params.servers}
    yield hs
    for h in hs.values():
        h.close()


@pytest.fixture(scope="module")
def run_home(lab, tmp_path_factory):
    import shutil

    home = tmp_path_factory.mktemp("ha-home")
    (home / "params").mkdir()
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(params_data(lab), sort_keys=False))
    nbs = home / "notebooks"
    nbs.mkdir()
    for nb in ("10_replication.ipynb", "10_high_availability.ipynb", "11_switchover.ipynb", "11b_maintenance.ipynb"):
        shutil.copy(REPO / "notebooks" / nb, nbs / nb)
    (nbs / "steps.yaml").write_text(
        "steps:\n"
        "  - {notebook: 10_replication.ipynb, title: \"Streaming replication\", managers: [manual]}\n"
        "  - {notebook: 10_high_availability.ipynb, title: \"High availability\", managers: [patroni]}\n"
        "  - {notebook: 11_switchover.ipynb, title: \"Switchover\", managers: [patroni], on_demand: true, "
        "inputs: [candidate]}\n"
        "  - {notebook: 11b_maintenance.ipynb, title: \"Maintenance\", managers: [patroni], on_demand: true, "
        "inputs: [mode]}\n")
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(lab.lab_dir),
           "HCBPG_NOTEBOOKS": str(nbs), "HCBPG_OPERATOR": "lab-test"}
    return home, env


def _sysid(host, params) -> str:
    return str(pg_cluster.get_psql(host, params).value("SELECT system_identifier::text AS v FROM pg_control_system()"))


def test_a_pair_replicating_the_manual_way(params, hosts):
    """Steps 02-03 on the replica, pgBackRest and archiving on the primary, then the manual step 10's code path
    (what production runs today): the pair Patroni will adopt."""
    from hcbpg.steps import replication as manual

    primary = params.primary

    def replicas_02_03() -> None:
        for s in params.replicas:
            install_step.install_server(hosts[s.name], params, s)
            allow_step.allow_connections(hosts[s.name], params, s)

    # the replica's steps 02-03 beside the primary's pgBackRest (different machines, each its own SSH connection)
    _, (_, checks) = side_by_side(
        replicas_02_03, lambda: fo.run_point_backups_at(hosts[primary.name], params, primary, archive_mode=True))
    assert not [c for c in checks if not c.ok], checks
    password = resolve(params.replication.password, key="replication.password")
    manual.setup_replication(hosts, params, password, allow_destructive=True, dry_run=False, echo=lambda _s: None)
    STATE["sysid"] = _sysid(hosts[primary.name], params)
    assert _sysid(hosts[REPLICA], params) == STATE["sysid"]
    psql = pg_cluster.get_psql(hosts[primary.name], params)
    psql.execute("CREATE TABLE IF NOT EXISTS ha_probe (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
    psql.execute("INSERT INTO ha_probe SELECT FROM generate_series(1, 100)")


def test_a_plan_of_notebook_10_lists_the_adoption_and_changes_nothing(params, hosts, run_home):
    home, env = run_home
    proc = cli(env, "plan", "lab", "--only", "10_high_availability")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    [step] = latest_manifest(home)["steps"]
    assert step["status"] == "succeeded" and step["changes"] > 0, step
    text = (latest_run_dir(home) / "10_high_availability.ipynb").read_text()
    for planned in ("etcd config on hcb-jumpbox", "patroni.yml on server-postgres-2", "restart of server-postgres-1 "
                    "under Patroni"):
        assert planned in text, planned
    # nothing ran: no etcd, no Patroni, the manual pair as it was
    assert not any(ops_patroni.get_patroni_running(h, params) for h in hosts.values())
    assert pg_cluster.get_psql(hosts[REPLICA], params).value("SELECT pg_is_in_recovery() AS r") is True
    assert hosts[STAGE_PRIMARY].read_text("/etc/etcd/hcbpg.yml") is None


def test_notebook_10_adopts_the_pair_with_etcd_on_three_members(lab, params, hosts, run_home):
    home, env = run_home
    t0 = time.monotonic()
    proc = cli(env, "run", "lab", "--only", "10_high_availability")
    # Patroni leads and the replica streams under it; the one restart waits for its gate
    assert proc.returncode == 3, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "restart-primary-under-patroni" in proc.stdout
    view = ops_patroni.get_cluster(hosts, params)
    assert view is not None and view.leader is not None and view.leader.name == STAGE_PRIMARY, view
    psql = pg_cluster.get_psql(hosts[STAGE_PRIMARY], params)
    assert psql.value("SELECT current_setting('cluster_name') AS v") != "hcb-lab"  # not restarted before the gate
    run_id = latest_manifest(home)["run_id"]
    ok = cli(env, "approve", run_id, "restart-primary-under-patroni", "--note", "lab test")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    proc = cli(env, "resume", run_id)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    manifest = latest_manifest(home)
    [step] = manifest["steps"]
    assert step["key"] == "10_high_availability" and step["status"] == "succeeded" and step["changes"] > 0
    # the lag Patroni shows is each member's position as of its last loop (every loop_wait): a WAL switch just
    # before (pgbackrest check's) shows a segment behind for a loop or two
    view = ops_patroni.wait_for_member(hosts, params, REPLICA, lambda m: m.state in dp.RUNNING_STATES and m.lag == 0,
                                       what="the replica streaming, lag 0", timeout=30)
    assert view.leader is not None and view.leader.name == STAGE_PRIMARY, view
    replica = view.member(REPLICA)
    assert replica is not None and replica.state in dp.RUNNING_STATES and replica.lag == 0, view
    view = ops_patroni.wait_for_sync_standby(hosts, params, timeout=30)  # synchronous_mode: on (the default)
    assert view.member(REPLICA).is_sync_standby, view
    assert _sysid(hosts[STAGE_PRIMARY], params) == _sysid(hosts[REPLICA], params) == STATE["sysid"]
    assert psql.value("SELECT count(*) AS n FROM ha_probe") == 100
    assert psql.value("SELECT current_setting('cluster_name') AS v") == "hcb-lab"
    timings = scrap(latest_run_dir(home) / "10_high_availability.ipynb", "high_availability")
    print(f"\nstep 10 under Patroni: {took:.0f} s through the CLI; {timings}")
    STATE["timings"] = timings


def test_a_second_run_of_notebook_10_changes_nothing(params, hosts, run_home):
    home, env = run_home
    proc = cli(env, "run", "lab", "--only", "10_high_availability")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    [step] = latest_manifest(home)["steps"]
    assert step["changes"] == 0, proc.stdout[-4000:]


def _status(env, *args: str) -> tuple[int, dict]:
    proc = cli(env, "status", "lab", "--json", *args, timeout=120)
    try:
        return proc.returncode, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(proc.stdout[-3000:] + proc.stderr[-3000:]) from None


def test_status_shows_the_cluster_as_patronictl_list_does(params, hosts, run_home):
    home, env = run_home
    # the second run of step 10 just before ends with pgbackrest check (a WAL switch): Patroni shows the replica a
    # segment behind (16 MB) until its next loop. Status reports what Patroni shows, so wait for that to settle
    ops_patroni.wait_for_member(hosts, params, REPLICA, lambda m: m.state in dp.RUNNING_STATES and m.lag == 0,
                                what="the replica streaming, lag 0", timeout=30)
    code, report = _status(env)
    rows = {r["Member"]: r for r in report["cluster"]}
    assert rows[STAGE_PRIMARY]["Role"] == "Leader" and rows[REPLICA]["Role"] == "Sync Standby", rows
    assert rows[REPLICA]["State"] in dp.RUNNING_STATES and rows[REPLICA]["Lag in MB"] == "0", rows
    names = {(c["item"], c["status"]) for c in report["checks"]}
    assert ("leader present", "pass") in names and ("etcd members healthy", "pass") in names, report["checks"]
    proc = cli(env, "status", "lab", timeout=120)
    assert "Patroni cluster (as patronictl list shows it)" in proc.stdout and "Sync Standby" in proc.stdout


def test_step_11_switches_over_through_its_gate(params, hosts, run_home):
    home, env = run_home
    proc = cli(env, "run", "lab", "--only", "11_switchover")
    assert proc.returncode == 3, proc.stdout[-4000:] + proc.stderr[-2000:]  # waiting at the gate 'switchover'
    assert ops_patroni.get_cluster(hosts, params).leader.name == STAGE_PRIMARY  # nothing before the gate
    run_id = latest_manifest(home)["run_id"]
    ok = cli(env, "approve", run_id, "switchover", "--note", "lab test")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    t0 = time.monotonic()
    proc = cli(env, "resume", run_id)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    view = ops_patroni.get_cluster(hosts, params)
    assert view.leader.name == REPLICA and view.member(STAGE_PRIMARY).state in dp.RUNNING_STATES, view
    result = scrap(latest_run_dir(home) / "11_switchover.ipynb", "switchover")
    assert result["from"] == STAGE_PRIMARY and result["to"] == REPLICA, result
    psql = pg_cluster.get_psql(hosts[REPLICA], params)
    assert psql.value("SELECT count(*) AS n FROM ha_probe") == 100
    psql.execute("INSERT INTO ha_probe DEFAULT VALUES")
    # the backup the step took ran on the new leader, and pgBackRest's check passes there
    info = hosts[REPLICA].run("pgbackrest --stanza=hcb_production info --output=json", sudo_user="postgres").stdout
    assert len(json.loads(info)[0]["backup"]) >= 2, info
    print(f"\nstep 11 switchover: {took:.0f} s through the CLI; {result}")


def test_step_11b_pauses_and_resumes_automatic_failover(params, hosts, run_home):
    home, env = run_home
    proc = cli(env, "run", "lab", "--only", "11b_maintenance", "-p", "mode=pause")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert ops_patroni.get_cluster(hosts, params).paused
    _, report = _status(env)
    assert ("maintenance mode", "warn") in {(c["item"], c["status"]) for c in report["checks"]}, report["checks"]
    again = cli(env, "run", "lab", "--only", "11b_maintenance", "-p", "mode=pause")
    assert again.returncode == 0 and latest_manifest(home)["steps"][0]["changes"] == 0, again.stdout[-3000:]
    proc = cli(env, "run", "lab", "--only", "11b_maintenance", "-p", "mode=resume")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert not ops_patroni.get_cluster(hosts, params).paused


def test_etcd_losing_two_members_the_leader_keeps_serving_and_status_says_why(lab, params, hosts, run_home):
    """Failsafe mode: with etcd's quorum gone the leader cannot renew its lease, but every member answers it, so
    it keeps its role (without failsafe Patroni would demote the only primary)."""
    from hcbpg.adapters.services import ServiceControl
    from hcbpg.desired.services import etcd_service

    home, env = run_home
    leader = ops_patroni.get_cluster(hosts, params).leader.name
    others = [n for n in (STAGE_PRIMARY, REPLICA) if n != leader]
    assert params.jumpbox is not None
    victims = {others[0]: hosts[others[0]],
               JUMPBOX: Host.from_params(params, JUMPBOX, params.jumpbox.private_ip).connect()}
    spec = etcd_service(params)
    try:
        for h in victims.values():
            ServiceControl.of(h).signal(spec, "KILL")
        t0 = time.monotonic()
        p = dp.patroni_params(params)
        time.sleep(p.ttl + p.loop_wait + 2)  # past the lease: without failsafe the leader would have demoted
        psql = pg_cluster.get_psql(hosts[leader], params)
        psql.execute("INSERT INTO ha_probe DEFAULT VALUES")  # still read-write
        status = ops_patroni.get_member_status(hosts[leader], params, params.server(leader))
        assert status is not None and status.is_primary and status.failsafe_active, status
        code, report = _status(env)
        checks = {c["item"]: c for c in report["checks"]}
        assert checks["failsafe active"]["status"] == "warn" and "etcd" in checks["failsafe active"]["detail"], checks
        assert checks["etcd members healthy"]["status"] == "fail" and "NO quorum" in checks["etcd members healthy"][
            "detail"], checks
        assert code == 1
        print(f"\netcd at 1/3 for {time.monotonic() - t0:.0f} s: {leader} still primary (failsafe); status: "
              f"{checks['failsafe active']['detail']}")
    finally:
        for h in victims.values():
            ServiceControl.of(h).ensure_running(spec)
        victims[JUMPBOX].close()
    view = ops_patroni.wait_for_member(hosts, params, others[0], lambda m: m.state in dp.RUNNING_STATES,
                                       what="the replica back", timeout=60)
    assert view.leader is not None and view.leader.name == leader


def test_after_a_crash_patroni_fails_over_and_step_11_brings_the_old_leader_back(lab, params, hosts, run_home):
    """kill -9 of the leader's Patroni and PostgreSQL: the sync standby is promoted without anyone; step 11 then
    finds the failover (after-failover mode), starts Patroni on the old leader (as systemd's Restart would), which
    rewinds it and streams from the new leader; the step's backup runs on the new leader, pgbackrest check passes."""
    from hcbpg.lab import faults

    home, env = run_home
    before = ops_patroni.get_cluster(hosts, params)
    old = before.leader.name
    new = next(m.name for m in before.members if m.name != old)
    pg_cluster.get_psql(hosts[old], params).execute("INSERT INTO ha_probe DEFAULT VALUES")
    count = pg_cluster.get_psql(hosts[old], params).value("SELECT count(*) AS n FROM ha_probe")
    t0 = time.monotonic()
    killed = faults.kill_patroni_and_postgres(lab.cfg, old)
    assert killed
    view = ops_patroni.wait_for_member(hosts, params, new, lambda m: m.is_leader and m.state in dp.RUNNING_STATES,
                                       what=f"{new} promoted by Patroni", timeout=60)
    promoted = time.monotonic() - t0
    assert pg_cluster.get_psql(hosts[new], params).value("SELECT count(*) AS n FROM ha_probe") == count  # sync: 0 lost
    proc = cli(env, "run", "lab", "--only", "11_switchover")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    result = scrap(latest_run_dir(home) / "11_switchover.ipynb", "switchover")
    assert result["mode"] == "after-failover" and result["old_leader"] == old and result["new_leader"] == new, result
    assert result["action"] == "start-patroni", result
    view = ops_patroni.get_cluster(hosts, params)
    member = view.member(old)
    assert view.leader.name == new and member is not None and member.state in dp.RUNNING_STATES, view
    assert member.timeline == view.leader.timeline, view
    info = hosts[new].run("pgbackrest --stanza=hcb_production check", sudo_user="postgres", check=False)
    assert info.ok, info.output
    print(f"\nkill -9 of {old}'s Patroni and PostgreSQL: {new} promoted {promoted:.1f} s later (ttl "
          f"{dp.patroni_params(params).ttl}); step 11: {result}")
