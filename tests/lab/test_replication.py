"""Steps 10 (replication) and 11 (failover) against two real lab servers over SSH.

The tests run in file order and build on each other: steps 02-04 and pgBackRest on the
primary; the refusals (destructive steps not allowed, the current primary, a writable
server with data); the replica built while pgbench writes to the primary; a second run that
changes nothing (notebook 10); a planned switchover (notebook 11, through its gate) and unplanned
failovers back, each with the old primary rejoining as a replica, row counts compared and pgBackRest
checked on the new primary.

Run under the machine's lab lock: ``flock /tmp/hcbpg-lab.lock python -m pytest tests/lab/test_replication.py``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hcbpg.adapters.host import TIMEOUT_EXIT, Host
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import failover as desired_failover
from hcbpg.desired import replication as desired_replication
from hcbpg.desired.pgbackrest import ARCHIVE_PUSH_IO_TIMEOUT_S, CONF_PATH
from hcbpg.errors import SafetyCheckFailed
from hcbpg.lab import create_server_host, deadman, destroy_server_host
from hcbpg.lab.core import read_state
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import drill, replica, schedule, topology
from hcbpg.ops import failover as fo
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import replication as rep
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import install_postgres as install_step
from hcbpg.steps import replication as rep_step
from hcbpg.steps import restore_drill as step12

from labparams import lab_params, pgbackrest_section, replication_section
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, cli, latest_manifest, latest_run_dir, scrap, side_by_side

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab

BENCH_DB = "hcbpg_bench"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
TIMINGS: dict[str, float] = {}
STATE: dict = {}
#: the archive-push queue bound of this module's params: small, so an outage of a minute passes it
QUEUE_MAX_MB = 128


def make_params(lab, *, allow_destructive: bool = True, **replication):
    return parse_params(params_data(lab, allow_destructive=allow_destructive, **replication))


def params_data(lab, *, allow_destructive: bool = True, **replication):
    cfg = lab.cfg
    # the primary is a clone of the worker's primary stage (stages.py: its name and address); the replica at .52
    servers = [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary"),
               ("server-postgres-2", cfg.address(52), "replica")]
    return lab_params(lab, servers,
                      pgbackrest=pgbackrest_section(lab, repo_path_prefix="/pgbackrest-replication-test",
                                                    archive_push_queue_max=f"{QUEUE_MAX_MB}MB"),
                      replication=replication_section(lab, **replication), allow_destructive=allow_destructive)


@pytest.fixture(scope="module")
def params(lab, primary_stage):
    p = make_params(lab)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    for s in p.servers:
        if s.name == primary_stage.name:
            primary_stage.clone()  # steps 02-04 built once per worker
        else:
            create_server_host(s.name, s.private_ip, [key], lab_dir=str(lab.lab_dir))
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
def passwords(params):
    return {"app": resolve(params.postgres.app_role_password, key="postgres.app_role_password"),
            "rep": resolve(params.replication.password, key="replication.password")}


def psql(hosts, params, name):
    return pg_cluster.get_psql(hosts[name], params)


def start_pgbench(host: Host, seconds: int, *, rate: int | None = None) -> None:
    home = desired_replication.postgres_home()
    limit = f"-R {rate} " if rate else ""
    inner = (f"{PGBENCH} -h /var/run/postgresql -n -c 2 -j 1 {limit}-T {seconds} {BENCH_DB} & "
             f"echo $! > {home}/pgbench.pid; wait $!; echo $? > {home}/pgbench.exit")
    host.run(f"rm -f {home}/pgbench.exit && nohup setsid sh -c {shlex.quote(inner)} > {home}/pgbench.log 2>&1 "
             "< /dev/null &", sudo_user="postgres")


def pgbench_running(host: Host) -> bool:
    return host.read_text(f"{desired_replication.postgres_home()}/pgbench.exit") is None


def wait_pgbench(host: Host, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while pgbench_running(host):
        assert time.monotonic() < deadline, "pgbench did not finish"
        time.sleep(0.5)
    code = host.read_text(f"{desired_replication.postgres_home()}/pgbench.exit").strip()
    log = host.read_text(f"{desired_replication.postgres_home()}/pgbench.log") or ""
    assert code == "0", log[-2000:]
    return log


def stop_pgbench(host: Host, timeout: float = 60) -> None:
    """End a pgbench started with a long -T now and wait until it exited (SIGTERM: a background job of
    a non-interactive shell ignores SIGINT)."""
    home = desired_replication.postgres_home()
    host.run(f"kill -TERM $(cat {home}/pgbench.pid)", sudo_user="postgres")
    deadline = time.monotonic() + timeout
    while pgbench_running(host):
        assert time.monotonic() < deadline, "pgbench did not stop"
        time.sleep(0.5)
    assert host.read_text(f"{home}/pgbench.exit").strip() == "143", host.read_text(f"{home}/pgbench.log")


def counts(hosts, params, name):
    return rep.get_table_counts(psql(hosts, params, name), BENCH_DB)


def test_servers_set_up_with_steps_02_to_04_and_pgbackrest_on_the_primary(params, hosts, passwords):
    t0 = time.monotonic()
    primary = params.primary
    # the primary is the stage's clone, through steps 02-04 (running them again here asserted nothing; step 10
    # writes its pg_hba with the replication rules); the replica gets 02 and 03 from nothing
    def replicas_02_03() -> None:
        for s in params.replicas:
            install_step.install_server(hosts[s.name], params, s)
            allow_step.allow_connections(hosts[s.name], params, s)

    def primary_load_and_backups() -> list:
        ppsql = psql(hosts, params, primary.name)
        # the restart wal_log_hints needs happens here, before the load starts (see the report: step 02 should own it)
        pg_config.ensure_settings(hosts[primary.name], params, primary, "replication")
        ppsql.execute(f"CREATE DATABASE {BENCH_DB}")
        # scale 1 (100k accounts; was 5): no test reads its size, and every base backup, backup, restore and row
        # count of the module copies or counts it
        hosts[primary.name].run(f"{PGBENCH} -h /var/run/postgresql -i -s 1 -q {BENCH_DB}", sudo_user="postgres")
        _, checks = fo.run_point_backups_at(hosts[primary.name], params, primary, archive_mode=True)
        return checks

    # the replica's steps 02-03 beside the primary's (different machines, each its own SSH connection)
    _, checks = side_by_side(replicas_02_03, primary_load_and_backups)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, failed
    TIMINGS["setup_s"] = round(time.monotonic() - t0, 1)


def test_wipe_refused_when_destructive_steps_are_not_allowed(lab, params, hosts, passwords):
    strict = make_params(lab, allow_destructive=False)
    r = strict.server("server-postgres-2")
    with pytest.raises(SafetyCheckFailed, match="destructive steps are not allowed for this run") as exc:
        replica.ensure_replica(hosts[r.name], strict, r, primary_host=hosts[strict.primary.name], primary=strict.primary,
                               allow_destructive=strict.allow_destructive)
    assert "allow_destructive" in str(exc.value)
    assert pg_cluster.get_cluster_running(hosts[r.name], params), "the refused target must not have been stopped"


def test_wipe_refused_when_the_target_is_the_current_primary(params, hosts):
    p = params.primary
    with pytest.raises(SafetyCheckFailed, match="it is the current primary"):
        replica.ensure_replica(hosts[p.name], params, p, primary_host=hosts[p.name], primary=p,
                               allow_destructive=True)
    assert pg_cluster.get_cluster_running(hosts[p.name], params)


def test_wipe_refused_for_a_writable_server_holding_data(params, hosts):
    r = params.server("server-postgres-2")
    rpsql = psql(hosts, params, r.name)
    rpsql.execute("CREATE DATABASE precious")
    try:
        with pytest.raises(SafetyCheckFailed, match="not in recovery and holds databases precious"):
            replica.ensure_replica(hosts[r.name], params, r, primary_host=hosts[params.primary.name],
                                   primary=params.primary, allow_destructive=True)
        assert rpsql.value("SELECT count(*) AS n FROM pg_database WHERE datname = 'precious'") == 1
    finally:
        rpsql.execute("DROP DATABASE precious")


def test_replica_streams_and_catches_up_while_pgbench_writes(params, hosts, passwords, capsys):
    primary, replica = params.primary, params.server("server-postgres-2")
    # writes before, during and after the base backup, however long a loaded machine takes: stopped below
    start_pgbench(hosts[primary.name], 900)
    time.sleep(1)  # it writes before step 10 starts (whose changes on the primary come before the base backup)
    t0 = time.monotonic()
    outcomes, topo, results = rep_step.setup_replication(hosts, params, passwords["rep"], allow_destructive=True,
                                                    dry_run=False)
    TIMINGS["step10_s"] = round(time.monotonic() - t0, 1)
    TIMINGS.update({f"step10_{k}": v for k, v in results[replica.name].items() if k.endswith("_s")})
    assert topo.primary == primary.name
    assert results[replica.name]["method"] == "base_backup"
    assert pgbench_running(hosts[primary.name]), "pgbench must still write after the base backup"
    out = capsys.readouterr().out
    assert "base backup" in out and "%" in out, "progress lines are shown while pg_basebackup runs"
    checks = rep.check_replication(hosts[primary.name], hosts[replica.name], params, replica, primary,
                                   passwords["rep"])
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, failed
    # the WAL stream is TLS (pg_stat_ssl on the primary) and the replica verifies the primary's certificate
    by = {c.name: c for c in checks}
    assert by["replication over TLS"].detail.startswith("TLSv1.3"), by["replication over TLS"].detail
    tls_row = rep.get_replication_tls(psql(hosts, params, primary.name), replica)
    assert tls_row is not None and tls_row["ssl"] is True and tls_row["version"] == "TLSv1.3"
    auto = rep.get_auto_conf_text(hosts[replica.name], params)
    assert "sslmode=verify-full" in auto and "sslrootcert=/etc/hcbpg/tls/lab-postgres-ca.crt" in auto, auto
    time.sleep(1)  # streaming while pgbench writes (check_replication above saw it stream while it wrote)
    stop_pgbench(hosts[primary.name])
    c = rep.check_counts_match(psql(hosts, params, primary.name), psql(hosts, params, replica.name), BENCH_DB,
                               timeout=60)
    assert c.ok, c.detail
    TIMINGS["catch_up_detail"] = c.detail  # type: ignore[assignment]
    assert counts(hosts, params, primary.name)["public.pgbench_history"] > 0
    out += capsys.readouterr().out
    assert passwords["rep"] not in out


def test_no_replication_password_on_the_replica_outside_the_passfile(params, hosts, passwords):
    r = hosts["server-postgres-2"]
    hits = r.probe(f"grep -rlF -- {shlex.quote(passwords['rep'])} /etc/postgresql /var/lib/postgresql "
                   "/var/log/postgresql 2>/dev/null").stdout.split()
    assert hits == [desired_replication.passfile_path()]


# the real notebooks through the real runner -------------------------------------------------------

@pytest.fixture(scope="module")
def run_home(lab, tmp_path_factory):
    """An HCBPG_HOME with this lab's params and a notebooks dir listing steps 10 and 11 (11 on demand)."""
    import shutil

    import yaml
    home = tmp_path_factory.mktemp("replication-home")
    (home / "params").mkdir()
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(params_data(lab), sort_keys=False))
    nbs = home / "notebooks"
    nbs.mkdir()
    for nb in ("10_replication.ipynb", "11_failover.ipynb"):
        shutil.copy(REPO / "notebooks" / nb, nbs / nb)
    (nbs / "steps.yaml").write_text(
        "steps:\n"
        "  - {notebook: 10_replication.ipynb, title: \"Streaming replication\"}\n"
        "  - {notebook: 11_failover.ipynb, title: \"Failover: switchover or unplanned\", on_demand: true}\n")
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(lab.lab_dir),
           "HCBPG_NOTEBOOKS": str(nbs)}
    return home, env


def test_dry_runs_of_notebooks_10_and_11_change_nothing(lab, params, hosts, run_home):
    home, env = run_home
    before = topology.get_topology(hosts, params)[0]
    proc = cli(env, "plan", "lab", "--only", "10,11")  # both dry runs in one plan: one CLI and runner start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = latest_manifest(home)
    assert plan["dry_run"] is True and [(s["key"], s["status"]) for s in plan["steps"]] == [
        ("10_replication", "succeeded"), ("11_failover", "succeeded")], plan["steps"]
    after = topology.get_topology(hosts, params)[0]
    assert (after.primary, after.replicas) == (before.primary, before.replicas)
    assert pg_cluster.get_cluster_running(hosts[before.primary], params)


def test_notebook_10_on_a_streaming_pair_changes_nothing_then_notebook_11_waits_at_its_gate(lab, params, hosts,
                                                                                          run_home, passwords):
    """A second run of step 10 (here through the notebook, which runs the same composition as the direct calls
    of the tests above) changes nothing: no outcome changed, the replica's plan is none, no password shown.  The
    same run goes on to notebook 11, which stops at its gate changing nothing (approved and resumed below)."""
    home, env = run_home
    before = topology.get_topology(hosts, params)[0].primary
    proc = cli(env, "run", "lab", "--only", "10,11")  # one CLI and runner start for both notebooks
    assert proc.returncode == 3, proc.stdout + proc.stderr  # waiting at 11's gate
    manifest = latest_manifest(home)
    steps = {s["key"]: s["changes"] for s in manifest["steps"]}
    assert list(steps) == ["10_replication", "11_failover"] and steps["10_replication"] == 0, steps
    run_dir = latest_run_dir(home)
    results = scrap(run_dir / "10_replication.ipynb", "replication")["results"]
    assert results["server-postgres-2"]["plan"] == "none", results
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert passwords["rep"] not in path.read_text(errors="replace"), f"the replication password in {path}"
    assert passwords["rep"] not in proc.stdout + proc.stderr
    assert topology.get_topology(hosts, params)[0].primary == before, "nothing may change before the gate"
    STATE["gate_run_id"] = manifest["run_id"]


def test_notebook_11_switches_over_when_approved_losing_nothing_and_the_old_primary_streams_again(
        lab, params, hosts, run_home, passwords):
    """The planned switchover is notebook 11's (the real runner, its gate; no direct switchover of its own):
    server-postgres-1 to server-postgres-2, every row committed before it on the new primary, the old primary
    rewound and streaming, the DATABASE_URL file, backups on the new primary, no secret in the outputs."""
    home, env = run_home
    old, new = params.server("server-postgres-1"), params.server("server-postgres-2")
    assert topology.get_topology(hosts, params)[0].primary == old.name
    start_pgbench(hosts[old.name], 3)  # some commits before the target time: seconds of pgbench are thousands
    wait_pgbench(hosts[old.name])
    before = counts(hosts, params, old.name)
    STATE["before_switchover"] = (psql(hosts, params, old.name).value("SELECT now()::text AS t"), before)
    time.sleep(1.2)  # the point-in-time target lies strictly between the last commit before it and the next
    run_id = STATE["gate_run_id"]  # the run of 10 and 11 above, waiting at 11's gate (its plan names no LSN)
    # the gate a planned switchover asks (an unplanned failover's is "failover"): approving another is refused
    approved = cli(env, "approve", run_id, "switchover", "--note", "lab test")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    t0 = time.monotonic()
    done = cli(env, "resume", run_id)
    TIMINGS["notebook_switchover_s"] = round(time.monotonic() - t0, 1)
    # its verify cell: the new primary takes a write, every replica streams from it, pgBackRest's checks there
    assert done.returncode == 0, done.stdout + done.stderr
    after = topology.get_topology(hosts, params)[0]
    assert (after.primary, after.replicas) == (new.name, [old.name])
    result = scrap(latest_run_dir(home) / "11_failover.ipynb", "failover")
    assert "[secret]" in result["database_url"] and passwords["app"] not in json.dumps(result)
    assert result["rejoin"]["method"] == "rewind", result["rejoin"]
    TIMINGS.update({f"switchover_rejoin_{k}": v for k, v in result["rejoin"].items() if k.endswith("_s")})
    url_file = Path(result["database_url_file"])
    assert url_file.is_relative_to(home / "state"), url_file  # HCBPG_STATE_DIR: outside outputs/
    assert oct(url_file.stat().st_mode & 0o777) == "0o600" and new.private_ip in url_file.read_text()
    assert "sslmode=verify-full" in url_file.read_text()  # DATABASE_URL verifies the new primary
    assert counts(hosts, params, new.name) == before
    checks = rep.check_replication(hosts[new.name], hosts[old.name], params, old, new, passwords["rep"])
    checks += desired_backups.check_backups(pgb.get_backups(hosts[new.name], params), new)
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, failed
    secrets = [passwords["rep"], passwords["app"], lab.cfg.read_secret("cipher-pass"), lab.cfg.read_secret("s3-key-secret")]
    for path in (home / "outputs").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets), f"a secret in {path}"
            assert "SCRAM-SHA-256$" not in text, f"a password verifier in {path}"
    # the new primary takes pgbench writes and the rejoined replica follows
    start_pgbench(hosts[new.name], 2)
    wait_pgbench(hosts[new.name])
    c = rep.check_counts_match(psql(hosts, params, new.name), psql(hosts, params, old.name), BENCH_DB, timeout=60)
    assert c.ok, c.detail


def _failover(params, hosts, passwords, *, expect_kind):
    topo, states = topology.get_topology(hosts, params)
    plan = desired_failover.plan_failover(topo, states, params, previous_primary=topo.primary)
    assert plan.kind == expect_kind, str(plan)
    t0 = time.monotonic()
    result = fo.run_failover(hosts, plan, params, app_password=passwords["app"])
    new = params.server(plan.new_primary)
    assert fo.check_accepts_writes(psql(hosts, params, new.name), new).ok
    t1 = time.monotonic()
    outcomes, rejoin = fo.run_rejoin_old_primary(hosts, params, plan, allow_destructive=True)
    t2 = time.monotonic()
    b_outcomes, b_checks = fo.run_point_backups_at(hosts[new.name], params, new, archive_mode=True)
    t3 = time.monotonic()
    return plan, result, rejoin, b_checks, {"promote_s": round(t1 - t0, 1), "rejoin_s": round(t2 - t1, 1),
                                            "pgbackrest_s": round(t3 - t2, 1)}


def test_after_the_switchover_one_stanza_on_two_timelines_and_only_the_new_primary_backs_up(params, hosts):
    old, new = params.server("server-postgres-1"), params.server("server-postgres-2")
    pgb.run_pgbackrest(hosts[new.name], params, "check")  # the new timeline's WAL reaches the repository
    info = json.loads(pgb.get_info_json(hosts[new.name], params))
    assert [st["name"] for st in info] == ["hcb_production"], info
    (archive,) = info[0]["archive"]
    assert (archive["min"][:8], archive["max"][:8]) == ("00000001", "00000002"), archive
    assert [st["name"] for st in json.loads(pgb.get_info_json(hosts[old.name], params))] == ["hcb_production"]
    before = {b.label for b in pgb.get_backups(hosts[new.name], params)}
    skipped = schedule.run_backup_job(hosts[old.name], "incr")
    assert skipped.exit_code == 0 and "standby" in skipped.stdout, skipped.output
    assert {b.label for b in pgb.get_backups(hosts[new.name], params)} == before, "the old primary took no backup"
    ran = schedule.run_backup_job(hosts[new.name], "incr")
    assert ran.exit_code == 0, ran.output[-2000:]
    assert len({b.label for b in pgb.get_backups(hosts[new.name], params)} - before) == 1


def test_point_in_time_restore_to_before_the_switchover_has_exactly_the_rows_committed_then(lab, params, hosts,
                                                                                           monkeypatch):
    target_time, expected = STATE["before_switchover"]
    monkeypatch.setenv("HCBPG_LAB_DIR", str(lab.lab_dir))  # drill.scratch_host makes the scratch host in this lab
    target = step12.drill_target(params)
    host = step12.scratch_host(params, target, dry_run=False)
    try:
        step12.prepare_scratch(host, params, target)
        t0 = time.monotonic()
        result = drill.run_restore(host, params, target, target_time=target_time, force=True)
        TIMINGS["pitr_across_switchover_s"] = round(time.monotonic() - t0, 1)
        assert "--type=time" in result.options
        assert rep.get_table_counts(pg_cluster.get_psql(host, params), BENCH_DB) == expected
        print("recovered:", drill.get_recovered(host, params)["last_commit"], "target", target_time)
    finally:
        host.close()
        destroy_server_host(target.name, lab_dir=str(lab.lab_dir))


def test_a_replica_whose_slot_was_invalidated_catches_up_from_the_archive_without_a_rebuild(params, hosts, passwords):
    topo, _ = topology.get_topology(hosts, params)
    p, r = params.server(topo.primary), params.server(topo.replicas[0])
    ppsql = psql(hosts, params, p.name)
    hosts[r.name].run("pg_ctlcluster 15 main stop -m fast")
    ppsql.execute(["ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'", "ALTER SYSTEM SET wal_keep_size = 0",
                   "SELECT pg_reload_conf()"])
    try:
        for _ in range(4):  # ~100 MB of WAL past the stopped replica's slot
            ppsql.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() "
                          "FROM generate_series(1, 200000) g", dbname=BENCH_DB)
            ppsql.value("SELECT pg_switch_wal()::text AS l")
        ppsql.execute("CHECKPOINT")
        slot = rep.get_slots(ppsql)[desired_replication.slot_name(r.name)]
        assert slot["wal_status"] == "lost", slot
    finally:
        ppsql.execute(["ALTER SYSTEM RESET max_slot_wal_keep_size", "ALTER SYSTEM RESET wal_keep_size",
                       "SELECT pg_reload_conf()"])
    t0 = time.monotonic()
    outcomes, _, results = rep_step.setup_replication(hosts, params, passwords["rep"], allow_destructive=True,
                                                 dry_run=False)
    TIMINGS["catch_up_from_archive_s"] = round(time.monotonic() - t0, 1)
    assert results[r.name]["plan"] == "start", results  # started, not rebuilt
    assert any("was invalidated" in a for o in outcomes for a in o.actions)
    c = rep.check_counts_match(ppsql, psql(hosts, params, r.name), BENCH_DB, timeout=120)
    assert c.ok, c.detail
    log = hosts[r.name].probe("grep -h 'from archive' /var/log/postgresql/postgresql-15-main.log | tail -n 3").stdout
    assert "restored log file" in log, "the WAL it missed came from the repository"


def _item(stdout: str, server: str, item: str) -> str:
    """PASS/WARN/FAIL of one row of `hcbpg status --all` (the full table: server, item, status)."""
    import re
    m = re.search(rf"^{re.escape(server)}\s+{re.escape(item)}\s+(PASS|WARN|FAIL)\b", stdout, re.M)
    return m.group(1) if m else "missing"


def _ready_bytes(ppsql) -> int:
    return 16 * 1024 ** 2 * int(ppsql.value("SELECT count(*) AS n FROM pg_ls_archive_statusdir() "
                                            "WHERE name LIKE '%.ready'"))


def _pings(lab, since: int, server: str, check: str) -> list[str]:
    log = lab.status()["deadman_log"]
    return [pg["kind"] for pg in deadman.read_pings(log)[since:] if pg["path"].split("/")[-1 if pg["kind"] == "success"
                                                                                          else -2] == f"{server}-{check}"]


def test_an_unreachable_repository_drops_wal_past_the_bound_and_the_primary_keeps_writing(lab, params, hosts,
                                                                                          run_home):
    """The queue bound is checked each time an archive-push run starts, and a run against an unreachable
    repository fails only after its retries (~4 x io-timeout): so the unarchived WAL may pass the bound by
    what is written meanwhile, then falls back under it when pgBackRest drops the queue."""
    home, env = run_home
    topo, _ = topology.get_topology(hosts, params)
    p = params.server(topo.primary)
    ppsql = psql(hosts, params, p.name)
    ns = read_state(lab.cfg)["hosts"][p.name]["netns"]
    rule = ["ip", "-n", ns, "rule", "add", "ipproto", "tcp", "dport", "9443", "prohibit"]
    pings_from = len(deadman.read_pings(lab.status()["deadman_log"]))
    start_pgbench(hosts[p.name], 900, rate=50)  # a steady write load all along
    log = f"/var/log/pgbackrest/{params.pgbackrest.stanza}-archive-push*.log"
    # pg_wal itself stays bounded: during the outage a small max_wal_size, so that the WAL written (past the queue
    # bound plus max_wal_size, below) would be in pg_wal still had pgBackRest not dropped it from the queue; and no
    # wal_keep_size (512MB in params, kept for the rewinds of the other tests), which would only add to the bound
    # and so to the WAL this test must write past twice the bound
    ppsql.execute(["ALTER SYSTEM SET max_wal_size = '64MB'", "ALTER SYSTEM SET min_wal_size = '32MB'",
                   "ALTER SYSTEM SET wal_keep_size = 0", "SELECT pg_reload_conf()"])
    keep = int(ppsql.value("SELECT pg_size_bytes(current_setting('wal_keep_size')) AS n"))
    wal_bound = QUEUE_MAX_MB * 1024 ** 2 + 64 * 1024 ** 2 + keep + 3 * 16 * 1024 ** 2
    pool = ThreadPoolExecutor(2)

    def health_job():
        job_host = Host.from_params(params, p.name, p.ssh_host)  # its own SSH connection: the test goes on beside it
        try:
            return schedule.run_health_job(job_host)
        finally:
            job_host.close()

    # this test's only: archive-push gives up on the unreachable repository after io-timeout 1 s (its connections
    # are refused at once; the product's 5 s made each async run fail after ~41 s) and the foreground push waits
    # 5 s for the async run instead of archive-timeout's 60 s: the run that finds the queue past its bound (and
    # drops it) starts within seconds of that, not a minute; the conf is put back as it was (cp -p, mv) before the
    # repository comes back
    saved_conf, blocked = f"{CONF_PATH}.hcbpg-test", False
    try:
        hosts[p.name].run(f"cp -p {CONF_PATH} {saved_conf} && sed -i -e "
                          f"'s/^io-timeout={ARCHIVE_PUSH_IO_TIMEOUT_S}$/io-timeout=1/' "
                          f"-e '/^\\[global:archive-push\\]$/a archive-timeout=5' {CONF_PATH}")
        conf = hosts[p.name].read_text(CONF_PATH) or ""
        assert "\nio-timeout=1\n" in conf and "\narchive-timeout=5\n" in conf, "the outage's archive-push options"
        subprocess.run(rule, check=True)
        blocked = True
        peak, written, t0 = 0, 0, time.monotonic()
        while not hosts[p.name].probe(f"grep -l 'dropped WAL file' {log}").ok:
            assert time.monotonic() - t0 < 300, "pgBackRest never dropped WAL past archive-push-queue-max"
            start = ppsql.value("SELECT pg_current_wal_lsn()::text AS l")
            ppsql.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() "
                          "FROM generate_series(1, 200000) g", dbname=BENCH_DB)
            written += int(ppsql.value(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}') AS n"))
            peak = max(peak, _ready_bytes(ppsql))  # no pause: the queue passes its bound before the next async run
        TIMINGS["outage_until_drop_s"] = round(time.monotonic() - t0, 1)
        # within 5 s of the drop the queue is under its bound (the archiver passes the dropped files on)
        drop_seen = time.monotonic()
        while (after_drop := _ready_bytes(ppsql)) > QUEUE_MAX_MB * 1024 ** 2 and time.monotonic() - drop_seen < 5:
            time.sleep(0.5)
        assert pgbench_running(hosts[p.name]), "the primary keeps accepting writes"
        # the health job on the server and `hcbpg status --all` while the repository is unreachable and WAL was
        # dropped: each waits ~20 s there (pgbackrest info's retries), so they run side by side, beside the writes
        # and the checkpoint below (they read the same outage: archiving failing, WAL dropped), neither changing
        # what the other reads
        t1 = time.monotonic()
        status, job = pool.submit(cli, env, "status", "lab", "--all", timeout=300), pool.submit(health_job)
        # writes go on past twice the bound on pg_wal; then (writes stopped) the queue falls under its bound again
        while written < 2 * wal_bound:
            assert time.monotonic() - t0 < 600, f"the outage's writes took too long ({written} bytes)"
            start = ppsql.value("SELECT pg_current_wal_lsn()::text AS l")
            ppsql.execute("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() "
                          "FROM generate_series(1, 300000) g", dbname=BENCH_DB)
            written += int(ppsql.value(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{start}') AS n"))
        settle = time.monotonic()
        TIMINGS["outage_writes_s"] = round(settle - t0, 1)
        while _ready_bytes(ppsql) > QUEUE_MAX_MB * 1024 ** 2:
            assert time.monotonic() - settle < 180, "the queue stayed over archive-push-queue-max"
            time.sleep(1)
        TIMINGS["outage_settle_s"] = round(time.monotonic() - settle, 1)
        ppsql.execute(["CHECKPOINT"])
        pg_wal = int(ppsql.value("SELECT sum(size) AS n FROM pg_ls_waldir()"))
        TIMINGS.update(outage_pg_wal_mb=pg_wal // 1024 ** 2, outage_pg_wal_bound_mb=wal_bound // 1024 ** 2)
        assert pg_wal <= wal_bound < written, TIMINGS
        during = status.result()
        job.result()  # the job's own exit status is what the pings below tell
        TIMINGS["outage_health_and_status_s"] = round(time.monotonic() - t1, 1)
        # what pgBackRest logged until then (where the outage's seconds go), but the list of dropped files
        print(hosts[p.name].probe(f"grep -hv 'dropped WAL file' {log} | tail -n 30").stdout)
    finally:
        pool.shutdown(wait=True)  # the repository stays unreachable until both have read it
        hosts[p.name].run(f"if [ -e {saved_conf} ]; then mv -f {saved_conf} {CONF_PATH}; fi")
        if blocked:
            subprocess.run([*rule[:4], "del", *rule[5:]], check=True)
        ppsql.execute(["ALTER SYSTEM RESET max_wal_size", "ALTER SYSTEM RESET min_wal_size",
                       "ALTER SYSTEM RESET wal_keep_size", "SELECT pg_reload_conf()"])
    stop_pgbench(hosts[p.name])
    TIMINGS.update(outage_written_mb=written // 1024 ** 2, outage_peak_unarchived_mb=peak // 1024 ** 2,
                   outage_unarchived_after_drop_mb=after_drop // 1024 ** 2)
    assert after_drop <= QUEUE_MAX_MB * 1024 ** 2 < written, TIMINGS
    assert during.returncode == 1 and _item(during.stdout, p.name, "archiving") == "FAIL", during.stdout
    assert "FAILING" in during.stdout or "WAL DROPPED" in during.stdout
    assert _pings(lab, pings_from, p.name, "archiving") == ["fail"], "no health ping while archiving fails"
    # the store is back: archiving catches up, the gap is reported until a backup closes it
    t1 = time.monotonic()
    deadline = t1 + 180
    while _ready_bytes(ppsql) > 0 or pgb.run_pgbackrest(hosts[p.name], params, "check", check=False).exit_code:
        assert time.monotonic() < deadline, "archiving did not catch up"
        time.sleep(1)
    TIMINGS["outage_catch_up_s"] = round(time.monotonic() - t1, 1)
    gap = cli(env, "status", "lab", timeout=300)
    assert gap.returncode == 1 and "WAL DROPPED" in gap.stdout, gap.stdout
    pgb.run_backup(hosts[p.name], params, type="incr")
    closed = cli(env, "status", "lab", "--all", timeout=300)
    TIMINGS["outage_whole_s"] = round(time.monotonic() - t0, 1)
    assert "WAL DROPPED" not in closed.stdout and _item(closed.stdout, p.name, "archiving") == "PASS", closed.stdout


def test_health_pings_only_while_healthy_and_stop_when_postgresql_is_stopped(lab, params, hosts):
    topo, _ = topology.get_topology(hosts, params)
    r = params.server(topo.replicas[0])
    assert hosts[r.name].run("sleep 5", timeout=1, check=False).exit_code == TIMEOUT_EXIT  # not an exception
    since = len(deadman.read_pings(lab.status()["deadman_log"]))
    for s in params.servers:
        res = schedule.run_health_job(hosts[s.name])
        assert res.exit_code == 0, res.output
        for check in ("postgres", "archiving", "replication", "disk", "backup"):
            assert _pings(lab, since, s.name, check) == ["success"], (s.name, check)
    since = len(deadman.read_pings(lab.status()["deadman_log"]))
    hosts[r.name].run("pg_ctlcluster 15 main stop -m fast")
    try:
        assert schedule.run_health_job(hosts[r.name]).exit_code == 1
        assert _pings(lab, since, r.name, "postgres") == ["fail"], "a stopped PostgreSQL stops its health ping"
    finally:
        hosts[r.name].run("pg_ctlcluster 15 main start")
    replica.wait_for_streaming(hosts[topo.primary], params, r, timeout=60)


def test_unlogged_tables_are_named_and_expected_empty_on_the_replica(params, hosts, passwords):
    topo, _ = topology.get_topology(hosts, params)
    p, r = params.server(topo.primary), params.server(topo.replicas[0])
    ppsql, db = psql(hosts, params, p.name), params.postgres.database
    ppsql.execute(["CREATE UNLOGGED TABLE hcbpg_cache (k int)", "INSERT INTO hcbpg_cache SELECT generate_series(1, 10)"],
                  dbname=db)
    try:
        checks = {c.name: c for c in rep.check_replication(hosts[p.name], hosts[r.name], params, r, p, passwords["rep"])}
        assert checks["unlogged tables"].status == "warn" and "public.hcbpg_cache" in checks["unlogged tables"].detail
        counts_match = rep.check_counts_match(ppsql, psql(hosts, params, r.name), db, timeout=60)
        assert counts_match.ok and "expected empty on the replica: public.hcbpg_cache" in counts_match.detail
    finally:
        ppsql.execute("DROP TABLE hcbpg_cache", dbname=db)


def test_unplanned_failover_back_after_the_primary_crashes(params, hosts, passwords):
    crashed, survivor = params.server("server-postgres-2"), params.server("server-postgres-1")
    start_pgbench(hosts[crashed.name], 2)
    wait_pgbench(hosts[crashed.name])
    before = counts(hosts, params, crashed.name)
    rep.wait_for_catch_up(psql(hosts, params, survivor.name), rep.get_wal_lsn(psql(hosts, params, crashed.name)),
                          timeout=30)
    hosts[crashed.name].run("pg_ctlcluster 15 main stop -m immediate")
    plan, result, rejoin, b_checks, t = _failover(params, hosts, passwords, expect_kind="failover")
    TIMINGS.update({f"failover_{k}": v for k, v in t.items()})
    TIMINGS.update({f"failover_rejoin_{k}": v for k, v in rejoin.items() if k.endswith("_s")})
    assert plan.new_primary == survivor.name and plan.old_reachable
    assert rejoin["method"] == "rewind", rejoin  # wal_keep_size keeps the WAL back to the fork point
    assert counts(hosts, params, survivor.name) == before
    checks = rep.check_replication(hosts[survivor.name], hosts[crashed.name], params, crashed, survivor,
                                   passwords["rep"])
    failed = [f"{c.name}: {c.detail}" for c in checks + b_checks if not c.ok]
    assert not failed, failed
    print("timings:", TIMINGS)


def test_unplanned_failover_with_the_primary_unreachable_then_step_10_rejoins_it_only_when_allowed(
        lab, params, hosts, passwords):
    from hcbpg.errors import HostUnreachable
    topo, _ = topology.get_topology(hosts, params)
    gone, survivor = params.server(topo.primary), params.server(topo.replicas[0])
    t0 = time.monotonic()
    start_pgbench(hosts[gone.name], 2)
    wait_pgbench(hosts[gone.name])
    before = counts(hosts, params, gone.name)
    rep.wait_for_catch_up(psql(hosts, params, survivor.name), rep.get_wal_lsn(psql(hosts, params, gone.name)),
                          timeout=30)
    # the primary dies and SSH cannot reach it any more
    hosts[gone.name].run("pg_ctlcluster 15 main stop -m immediate")
    hosts[gone.name].close()
    # pkill only signals: until the listener has exited it may still accept (seen once on a fresh clone)
    lab.exec(gone.name, "pkill -x sshd; for i in $(seq 100); do pgrep -x sshd > /dev/null || exit 0; sleep 0.1; "
                        "done; exit 1", check=True)
    with pytest.raises(HostUnreachable):
        Host.from_params(params, gone.name, gone.ssh_host).connect()
    reachable = {gone.name: None, survivor.name: hosts[survivor.name]}
    TIMINGS["unreachable_until_gone_s"] = round(time.monotonic() - t0, 1)

    topo, states = topology.get_topology(reachable, params)
    plan = desired_failover.plan_failover(topo, states, params, previous_primary=gone.name)
    assert (plan.kind, plan.old_reachable, plan.new_primary) == ("failover", False, survivor.name)
    assert "Power it off" in plan.question
    fo.run_failover(reachable, plan, params, app_password=passwords["app"])
    outcomes, rejoin = fo.run_rejoin_old_primary(reachable, params, plan, allow_destructive=True)
    assert rejoin == {"skipped": "unreachable"}
    _, b_checks = fo.run_point_backups_at(hosts[survivor.name], params, survivor, archive_mode=True)
    checks = rep_step.check_all(reachable, params, passwords["rep"]) + b_checks
    assert [c.name for c in checks if c.status == "fail"] == []
    assert [c.target for c in checks if c.status == "warn"] == [gone.name]
    assert counts(hosts, params, survivor.name) == before
    TIMINGS["unreachable_failover_s"] = round(time.monotonic() - t0, 1)

    # it comes back: step 10 refuses to rewind an unfenced former primary until params allow it
    lab.start_sshd(gone.name)  # waits for port 22: sshd daemonizes before it listens
    hosts[gone.name] = Host.from_params(params, gone.name, gone.ssh_host).connect()
    with pytest.raises(SafetyCheckFailed, match="former primary .* never fenced"):
        rep_step.setup_replication(hosts, params, passwords["rep"], allow_destructive=True, dry_run=False)
    assert not pg_cluster.get_cluster_running(hosts[gone.name], params), "the refused server must be left as it was"
    TIMINGS["unreachable_refused_s"] = round(time.monotonic() - t0, 1)
    allowed = make_params(lab, allow_wipe_host=gone.name)
    _, topo, results = rep_step.setup_replication(hosts, allowed, passwords["rep"], allow_destructive=True, dry_run=False)
    assert topo.primary == survivor.name and results[gone.name]["method"] == "rewind", results
    checks = rep_step.check_all(hosts, allowed, passwords["rep"])
    assert [f"{c.name}: {c.detail}" for c in checks if not c.ok] == []
    c = rep.check_counts_match(psql(hosts, params, survivor.name), psql(hosts, params, gone.name), BENCH_DB, timeout=60)
    assert c.ok, c.detail
    TIMINGS["unreachable_whole_s"] = round(time.monotonic() - t0, 1)
    print("timings:", TIMINGS)
