"""Backups from the standby under the manual replication manager (issue 24): ``10_replication``'s composition
(:func:`hcbpg.steps.replication.setup_replication` as the notebook runs it, ``backup_standby=True``) with
``pgbackrest.backup_standby`` on, on the primary stage's clone and a replica made here.

In file order:

1. the primary through steps 02-04 (the stage) with pgBackRest and a first full backup, before any replica: its
   pgbackrest.conf names no pg2 (no TLS server answers yet);
2. the step's plan (a dry run) plans both TLS servers and pg2, and changes nothing;
3. the step: the replica streams, then both TLS servers run and each file names the other as pg2; the step's
   checks pass, backups-from-the-standby rows included;
4. a second run changes nothing;
5. the backup job on the primary copies from the standby (pgBackRest waits for the standby's replay; no fall-back);
6. step 11's operations (a planned switchover, the old primary rejoining, pgBackRest on the new primary): each file
   still names the other server, and the job on the new primary copies from the old one;
7. a file written while the other's TLS server does not answer (as after a failover with the old primary gone)
   has no pg2 and the checks warn; the next run of step 10 brings pg2 back.

Figures are printed (``-s``), never asserted.
"""

from __future__ import annotations

import copy
import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import failover as desired_failover
from hcbpg.desired import pgbackrest_server as dps
from hcbpg.desired.pgbackrest import CONF_PATH, parse_conf
from hcbpg.lab import create_server_host, destroy_server_host
from hcbpg.ops import config as pg_config
from hcbpg.ops import failover as fo
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import pgbackrest_server as ops_dps
from hcbpg.ops import schedule, topology
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import install_postgres as install_step
from hcbpg.steps import replication as rep_step

from labparams import lab_params, pgbackrest_section, replication_section
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, side_by_side

pytestmark = pytest.mark.lab

#: the replica's address (no other module of a worker uses it)
REPLICA, REPLICA_OFFSET = "server-postgres-2", 97
STATE: dict = {}


@pytest.fixture(scope="module")
def data(lab) -> dict:
    cfg = lab.cfg
    servers = [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary"),
               (REPLICA, cfg.address(REPLICA_OFFSET), "replica")]
    return lab_params(lab, servers, pgbackrest={**pgbackrest_section(lab), "backup_standby": True},
                      replication=replication_section(lab), allow_destructive=True)


@pytest.fixture(scope="module")
def params(lab, primary_stage, data):
    p = parse_params(data)
    assert dps.enabled(p)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    primary_stage.clone()
    create_server_host(REPLICA, p.server(REPLICA).private_ip, [key], lab_dir=str(lab.lab_dir))
    yield p
    for s in p.servers:
        destroy_server_host(s.name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def hosts(params):
    hs = {s.name: Host.from_params(params, s.name, s.ssh_host) for s in params.servers}
    yield hs
    for h in hs.values():
        h.close()


@pytest.fixture(scope="module")
def password(params) -> str:
    return resolve(params.replication.password, key="replication.password")


def pg2(host, params) -> str | None:  # noqa: ANN001
    return parse_conf(host.read_text(CONF_PATH) or "").get(params.pgbackrest.stanza, {}).get("pg2-host")


def standby_rows(checks) -> dict[str, str]:  # noqa: ANN001
    """The step's "backups from the standby" rows: server -> pass/warn/fail."""
    return {str(c.target): c.status for c in checks if c.name == "backups from the standby"}


def copied_from_the_standby(out: str, standby_ip: str) -> None:
    """A job's output (pgBackRest's console at info) of a backup that copied from the standby at *standby_ip*."""
    begins = [ln for ln in out.splitlines() if "backup command begin" in ln]
    assert len(begins) == 1, out[-3000:]  # one attempt: no fall-back to the primary
    assert "--backup-standby" in begins[0] and f"--pg2-host={standby_ip}" in begins[0], begins[0]
    assert "replay on the standby reached" in out, out[-3000:]
    assert "backup from the standby failed" not in out, out[-3000:]


def test_the_primary_backs_up_before_any_replica_and_names_no_pg2(params, hosts):
    t0 = time.monotonic()
    primary = params.primary

    def replicas_02_03() -> None:
        for s in params.replicas:
            install_step.install_server(hosts[s.name], params, s)
            allow_step.allow_connections(hosts[s.name], params, s)

    def the_primary() -> list:
        pg_config.ensure_settings(hosts[primary.name], params, primary, "replication")
        return fo.run_point_backups_at(hosts[primary.name], params, primary, archive_mode=True)[1]

    # the replica's steps 02-03 (no replica yet: nothing streams) beside the primary's (different machines)
    _, checks = side_by_side(replicas_02_03, the_primary)
    assert [f"{c.name}: {c.detail}" for c in checks if not c.ok] == []
    assert pg2(hosts[primary.name], params) is None
    print(f"\nprimary with pgBackRest and a full backup in {time.monotonic() - t0:.1f} s")


def test_the_plan_names_both_tls_servers_and_pg2_and_changes_nothing(params, hosts, password):
    plan, planned = rep_step.get_plan(hosts, params, password)
    whats = [o.what for o in plan if o.changed]
    assert f"{CONF_PATH} on {STAGE_PRIMARY}" in whats and f"{CONF_PATH} on {REPLICA}" in whats, whats
    conf = next(o for o in plan if o.what == f"{CONF_PATH} on {STAGE_PRIMARY}" and "pg2-host=" in o.diff)
    assert f"pg2-host={params.server(REPLICA).private_ip}" in conf.diff
    assert planned[REPLICA]["plan"] == "rebuild"
    assert pg2(hosts[STAGE_PRIMARY], params) is None
    assert not ServiceControl.of(hosts[STAGE_PRIMARY]).get_status(dps.server_service(params)).running


def test_the_step_makes_the_replica_then_turns_backups_from_the_standby_on(params, hosts, password):
    t0 = time.monotonic()
    outcomes, topo, results = rep_step.setup_replication(hosts, params, password, allow_destructive=True,
                                                         dry_run=False, backup_standby=True)
    took = time.monotonic() - t0
    assert topo.primary == STAGE_PRIMARY and results[REPLICA]["method"] == "base_backup"
    for s in params.servers:
        other = dps.peer(params, s)
        assert pg2(hosts[s.name], params) == other.private_ip, s.name
        assert ops_dps.get_server_answers(hosts[s.name], params, other.private_ip), f"{s.name} -> {other.name}"
    checks = rep_step.check_all(hosts, params, password)
    assert [f"{c.name}: {c.detail}" for c in checks if not c.ok] == []
    assert standby_rows(checks) == {STAGE_PRIMARY: "pass", REPLICA: "pass"}
    print(f"\nstep 10 with backups from the standby: {took:.1f} s")


def test_a_second_run_changes_nothing(params, hosts, password):
    outcomes, _, results = rep_step.setup_replication(hosts, params, password, allow_destructive=True,
                                                      dry_run=False, backup_standby=True)
    assert [o.what for o in outcomes if o.changed] == []
    assert results[REPLICA]["plan"] == "none"


def test_the_backup_job_copies_from_the_standby(params, hosts):
    t0 = time.monotonic()
    res = schedule.run_backup_job(hosts[STAGE_PRIMARY], "incr", timeout=1800)
    out = res.stdout + res.stderr
    assert res.ok, out[-3000:]
    copied_from_the_standby(out, params.server(REPLICA).private_ip)
    # the standby's own job does nothing: it is a standby
    skipped = schedule.run_backup_job(hosts[REPLICA], "incr", timeout=600)
    assert skipped.ok and "standby" in skipped.stdout, skipped.output
    print(f"\nincremental backup from the standby by the job: {time.monotonic() - t0:.1f} s")


def test_after_a_switchover_each_file_names_the_other_and_the_new_primary_backs_up_from_the_old(
        params, hosts, password):
    topo, states = topology.get_topology(hosts, params)
    plan = desired_failover.plan_failover(topo, states, params, previous_primary=topo.primary)
    assert (plan.kind, plan.old_primary, plan.new_primary) == ("switchover", STAGE_PRIMARY, REPLICA), str(plan)
    t0 = time.monotonic()
    fo.run_failover(hosts, plan, params, app_password=resolve(params.postgres.app_role_password,
                                                              key="postgres.app_role_password"))
    _, rejoin = fo.run_rejoin_old_primary(hosts, params, plan, allow_destructive=True)
    _, b_checks = fo.run_point_backups_at(hosts[REPLICA], params, params.server(REPLICA), archive_mode=True)
    print(f"\nswitchover, rejoin ({rejoin.get('method')}) and pgBackRest on the new primary: "
          f"{time.monotonic() - t0:.1f} s")
    assert [f"{c.name}: {c.detail}" for c in b_checks if not c.ok] == []
    # pg2 is "the other server": the same files whichever of the two is primary
    assert pg2(hosts[REPLICA], params) == params.server(STAGE_PRIMARY).private_ip
    assert pg2(hosts[STAGE_PRIMARY], params) == params.server(REPLICA).private_ip
    checks = rep_step.check_all(hosts, params, password)
    assert [f"{c.name}: {c.detail}" for c in checks if not c.ok] == []
    assert standby_rows(checks) == {STAGE_PRIMARY: "pass", REPLICA: "pass"}
    res = schedule.run_backup_job(hosts[REPLICA], "incr", timeout=1800)
    out = res.stdout + res.stderr
    assert res.ok, out[-3000:]
    copied_from_the_standby(out, params.server(STAGE_PRIMARY).private_ip)


def test_a_file_written_while_the_other_did_not_answer_gets_pg2_back_from_step_10(params, hosts, password):
    """As after a failover whose old primary was gone: pgBackRest on the new primary writes no pg2 (the other's TLS
    server does not answer), the checks warn, the job would fall back; step 10 run again with the other back
    writes pg2 again."""
    primary, standby = params.server(REPLICA), params.server(STAGE_PRIMARY)
    ServiceControl.of(hosts[standby.name]).ensure_stopped(dps.server_service(params))
    out = pgb.ensure_pgbackrest_conf(hosts[primary.name], params, primary, version=pgb.get_version(hosts[primary.name]))
    assert out.changed and pg2(hosts[primary.name], params) is None
    # the primary's file names no pg2; the standby's names the primary, whose TLS server answers
    assert standby_rows(rep_step.check_all(hosts, params, password)) == {primary.name: "warn", standby.name: "pass"}
    outcomes, _, _ = rep_step.setup_replication(hosts, params, password, allow_destructive=True, dry_run=False,
                                                backup_standby=True)
    changed = [o.what for o in outcomes if o.changed]
    assert f"{CONF_PATH} on {primary.name}" in changed, changed
    assert pg2(hosts[primary.name], params) == standby.private_ip
    checks = rep_step.check_all(hosts, params, password)
    assert [f"{c.name}: {c.detail}" for c in checks if not c.ok] == []
    assert standby_rows(checks) == {STAGE_PRIMARY: "pass", REPLICA: "pass"}


def test_with_backup_standby_off_the_step_plans_nothing_of_it(data, hosts, password):
    off = copy.deepcopy(data)
    off["pgbackrest"]["backup_standby"] = False
    p = parse_params(off)
    plan, _ = rep_step.get_plan(hosts, p, password)
    without, _, _ = rep_step.setup_replication(hosts, p, password, allow_destructive=True, dry_run=True)
    assert [(o.what, o.changed) for o in plan] == [(o.what, o.changed) for o in without]
    assert rep_step.check_backup_standby(hosts, p) == []
