"""Notebook 20_recover_point_in_time (issue 24) against a Patroni pair in the lab: production recovered to just
before a DROP TABLE, through the real CLI and its two gates.

A pair as step 10 makes it (``ha_stage.build_ha_cluster``: archiving, a full backup, Patroni over etcd on three
members); rows written, the time noted, the table dropped, more rows written; then a plan (nothing changed), a
refusal (a target before the oldest backup), the run: gate ``recover-server-postgres-2`` (Patroni stopped on both,
the standby restored to the time, promoted, verified, Patroni leading it on a new history), the old leader stopped
and intact until gate ``rebuild-server-postgres-1`` (moved aside, rebuilt as the replica), and a rerun that says it
is done.  The app's handed-out URL (both servers, target_session_attrs=read-write) writes on the recovered leader.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters.host import Host
from hcbpg.desired import patroni as dp
from hcbpg.ops import patroni as ops_patroni
from hcbpg.params import parse_params
from hcbpg.pg.conninfo import conninfo_quote, parse_app_url

import ha_stage as hs
from stages import STAGE_PRIMARY, cli, latest_manifest, latest_run_dir, scrap

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab

#: addresses no other module of a worker uses (test_ha_steps 56/57, test_ha_failover 71/72)
REPLICA_OFFSET, JUMPBOX_OFFSET = 81, 82
SCOPE = "hcb-recover"
STEP = "20_recover_point_in_time"
STATE: dict = {}


@pytest.fixture(scope="module")
def data(lab) -> dict:
    return hs.ha_params_data(lab, replica_offset=REPLICA_OFFSET, jumpbox_offset=JUMPBOX_OFFSET, scope=SCOPE)


@pytest.fixture(scope="module")
def params(data):
    return parse_params(data)


@pytest.fixture(scope="module")
def cluster(lab, primary_stage, params):
    with hs.running_ha_cluster(lab, primary_stage, params) as c:
        yield c


@pytest.fixture(scope="module")
def run_home(lab, data, tmp_path_factory):
    home = tmp_path_factory.mktemp("recover-home")
    (home / "params").mkdir()
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    nbs = home / "notebooks"
    nbs.mkdir()
    lines = (REPO / "notebooks" / "steps.yaml").read_text().splitlines()
    entries = []
    for key in ("11_switchover", STEP):
        shutil.copy(REPO / "notebooks" / f"{key}.ipynb", nbs / f"{key}.ipynb")
        entries.append(next(line for line in lines if f"notebook: {key}.ipynb" in line))
    (nbs / "steps.yaml").write_text("steps:\n" + "\n".join(entries) + "\n")
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(lab.lab_dir),
           "HCBPG_NOTEBOOKS": str(nbs), "HCBPG_OPERATOR": "lab-test"}
    return home, env


@pytest.fixture(scope="module")
def app(lab, params, cluster, tmp_path_factory):
    """The lab's app host with the handed-out URL (both servers, target_session_attrs=read-write) and the CA."""
    host, urls = hs.open_app_host(lab, params, tmp_path_factory.mktemp("urls"))
    STATE["url"] = urls.values["DATABASE_URL"]
    try:
        yield host
    finally:
        host.close()


def write_through_url(app: Host, url: str, statement: str) -> str:
    """*statement* through the app's multi-host URL with psql on the app host (libpq: every host, the read-write
    one; the password on stdin, never on a command line); psql's output, or AssertionError."""
    conn = parse_app_url(url)
    conninfo = " ".join(f"{k}={conninfo_quote(v)}" for k, v in {"connect_timeout": "10", **conn}.items()
                        if k != "password")
    res = app.run("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
                  f"-d {shlex.quote(conninfo)} -c {shlex.quote(statement)}", stdin=conn.get("password", "") + "\n",
                  check=False, display="psql through the handed-out URL")
    assert res.ok, res.output[-800:]
    return res.stdout.strip()


def sql_on(host: Host, params, statement: str) -> str:
    return host.run(f"psql -X -At -v ON_ERROR_STOP=1 -d {params.postgres.database} -f -", sudo_user="postgres",
                    stdin=statement, quiet=True).stdout.strip()


def test_rows_written_the_time_noted_the_table_dropped_more_written(params, cluster, app):
    leader = cluster.servers[STAGE_PRIMARY]
    assert hs.leader_name(cluster, params) == STAGE_PRIMARY
    sql_on(leader, params, "CREATE TABLE public.ledger (id bigserial PRIMARY KEY, note text NOT NULL);"
                           "ALTER TABLE public.ledger OWNER TO rails;"
                           "INSERT INTO public.ledger (note) SELECT 'before ' || g FROM generate_series(1, 250) g;")
    write_through_url(app, STATE["url"], "INSERT INTO public.events (user_id, name, created_at) "
                                         "SELECT g, 'before', now() FROM generate_series(1, 40) g")
    time.sleep(1.5)
    STATE["target"] = sql_on(leader, params, "SELECT to_char(now() AT TIME ZONE 'UTC', "
                                             "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    time.sleep(1.5)
    sql_on(leader, params, "DROP TABLE public.ledger;")
    write_through_url(app, STATE["url"], "INSERT INTO public.events (user_id, name, created_at) "
                                         "SELECT g, 'after', now() FROM generate_series(1, 30) g")
    assert sql_on(leader, params, "SELECT count(*) FROM public.events WHERE name = 'after'") == "30"
    assert sql_on(leader, params, "SELECT to_regclass('public.ledger') IS NULL") == "t"
    print(f"\ntarget {STATE['target']}: 250 ledger rows and 40 events before it, the table dropped and 30 events "
          "after it")


def test_a_plan_changes_nothing_and_a_target_before_the_oldest_backup_is_refused(params, cluster, run_home):
    home, env = run_home
    proc = cli(env, "plan", "lab", "--only", STEP, "-p", f"target={STATE['target']}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    text = (latest_run_dir(home) / f"{STEP}.ipynb").read_text()
    assert "recover to time:" in text and "on server-postgres-2" in text, text[-3000:]
    proc = cli(env, "run", "lab", "--only", STEP, "-p", "target=2001-01-01T00:00:00Z")
    assert proc.returncode == 1, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "before the oldest backup" in proc.stdout + proc.stderr, proc.stdout[-3000:]
    # after the newest archived WAL: the leader's WAL is switched and archived first, then a later time is refused
    proc = cli(env, "run", "lab", "--only", STEP, "-p", "target=2999-01-01T00:00:00Z")
    assert proc.returncode == 1 and "after the newest archived WAL" in proc.stdout, proc.stdout[-3000:]
    proc = cli(env, "run", "lab", "--only", STEP, "-p", "target=xid:4000000000")
    assert proc.returncode == 1 and "has not been assigned yet" in proc.stdout, proc.stdout[-3000:]
    # nothing stopped: Patroni on both, the same leader, the table still dropped
    assert all(ops_patroni.get_patroni_running(h, params) for h in cluster.servers.values())
    assert hs.leader_name(cluster, params) == STAGE_PRIMARY
    lock = cli(env, "lock", "lab", "--json", timeout=120)
    assert json.loads(lock.stdout)["held"] is False, lock.stdout + lock.stderr  # a refusal leaves no lock behind


def test_recovered_to_just_before_the_drop_through_the_gate(params, cluster, run_home, app):
    home, env = run_home
    proc = cli(env, "run", "lab", "--only", STEP, "-p", f"target={STATE['target']}")
    assert proc.returncode == 3, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert f"recover-{hs.REPLICA}" in proc.stdout, proc.stdout[-3000:]
    assert all(ops_patroni.get_patroni_running(h, params) for h in cluster.servers.values())  # nothing before it
    run_id = latest_manifest(home)["run_id"]
    STATE["run_id"] = run_id
    ok = cli(env, "approve", run_id, f"recover-{hs.REPLICA}", "--note", "lab test: back to before the DROP")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    t0 = time.monotonic()
    proc = cli(env, "resume", run_id)
    took = time.monotonic() - t0
    # recovered and leading; the old leader waits, stopped, for its own gate
    assert proc.returncode == 3, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert f"rebuild-{STAGE_PRIMARY}" in proc.stdout, proc.stdout[-3000:]
    new = cluster.servers[hs.REPLICA]
    assert hs.leader_name(cluster, params) == hs.REPLICA
    assert sql_on(new, params, "SELECT count(*) FROM public.ledger") == "250"
    assert sql_on(new, params, "SELECT count(*) FROM public.events WHERE name = 'before'") == "40"
    assert sql_on(new, params, "SELECT count(*) FROM public.events WHERE name = 'after'") == "0"
    old = cluster.servers[STAGE_PRIMARY]
    assert not ops_patroni.get_patroni_running(old, params)
    assert old.run("pg_lsclusters -h 15 main", check=False).stdout.split()[3] == "down"
    assert old.exists("/var/lib/postgresql/15/main/PG_VERSION")  # its data intact, in place
    # the app's same URL reaches the recovered leader and writes
    got = write_through_url(app, STATE["url"], "INSERT INTO public.events (user_id, name, created_at) "
                                               "VALUES (1, 'recovered', now()) RETURNING inet_server_addr()")
    assert got.splitlines()[0] == params.server(hs.REPLICA).private_ip, got
    view = ops_patroni.get_cluster(cluster.servers, params)
    assert view is not None and [m.name for m in view.members if m.is_leader] == [hs.REPLICA], view
    STATE["recover_s"] = round(took, 1)


def test_the_old_leader_is_rebuilt_as_the_replica_after_its_gate(params, cluster, run_home):
    home, env = run_home
    run_id = STATE["run_id"]
    ok = cli(env, "approve", run_id, f"rebuild-{STAGE_PRIMARY}", "--note", "lab test")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    t0 = time.monotonic()
    proc = cli(env, "resume", run_id)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    view = ops_patroni.wait_for_member(cluster.servers, params, STAGE_PRIMARY,
                                       lambda m: m.state in dp.RUNNING_STATES and m.lag == 0,
                                       what="the old leader streaming, lag 0", timeout=120)
    assert [m.name for m in view.members if m.is_leader] == [hs.REPLICA], view
    assert view.member(STAGE_PRIMARY).timeline == view.leader.timeline, view
    old = cluster.servers[STAGE_PRIMARY]
    assert sql_on(old, params, "SELECT count(*) FROM public.ledger") == "250"  # the replica has the recovered data
    assert old.exists(f"/var/lib/postgresql/15/main.before-recover-{run_id}/PG_VERSION")  # the old data, kept
    result = scrap(latest_run_dir(home) / f"{STEP}.ipynb", "recovery")
    assert result["server"] == hs.REPLICA and result["old_leader"] == STAGE_PRIMARY, result
    info = json.loads(cluster.servers[hs.REPLICA].run("pgbackrest --stanza=hcb_production info --output=json",
                                                      sudo_user="postgres").stdout)
    assert len(info[0]["backup"]) >= 2, info
    print(f"\nrecovered to {STATE['target']}: {STATE['recover_s']} s (gate to leading, through the CLI), the old "
          f"leader rebuilt {took:.0f} s; {result}")


def test_a_rerun_says_it_is_done_and_changes_nothing(params, cluster, run_home):
    home, env = run_home
    proc = cli(env, "run", "lab", "--only", STEP, "-p", f"target={STATE['target']}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    [step] = latest_manifest(home)["steps"]
    assert step["changes"] == 0, proc.stdout[-4000:]
    text = (latest_run_dir(home) / f"{STEP}.ipynb").read_text()
    assert "already" in text and "nothing left to do" in text
    assert hs.leader_name(cluster, params) == hs.REPLICA


def test_back_to_before_a_step_by_its_restore_point(params, cluster, run_home, app):
    """Step 11 (a switchover) creates hcbpg-before-11_switchover-<run> on the leader and records it; rows written
    after it; notebook 20 lists the point and recovers to it: what was written before the point is there, what
    was written after it is not.  An unknown restore point is refused."""
    home, env = run_home
    write_through_url(app, STATE["url"], "INSERT INTO public.events (user_id, name, created_at) "
                                         "SELECT g, 'before-point', now() FROM generate_series(1, 7) g")
    proc = cli(env, "run", "lab", "--only", "11_switchover")
    assert proc.returncode == 3, proc.stdout[-6000:] + proc.stderr[-3000:]
    run_id = latest_manifest(home)["run_id"]
    ok = cli(env, "approve", run_id, "switchover", "--note", "lab test")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    proc = cli(env, "resume", run_id)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert hs.leader_name(cluster, params) == STAGE_PRIMARY
    points = scrap(latest_run_dir(home) / "11_switchover.ipynb", "restore_points")
    name = f"hcbpg-before-11_switchover-{run_id}"
    assert [p["name"] for p in points] == [name], points
    write_through_url(app, STATE["url"], "INSERT INTO public.events (user_id, name, created_at) "
                                         "SELECT g, 'after-point', now() FROM generate_series(1, 9) g")
    refused = cli(env, "run", "lab", "--only", STEP, "-p", "target=name:hcbpg-before-13_roles-nope")
    assert refused.returncode == 1 and "not in the verified record" in refused.stdout, refused.stdout[-3000:]
    proc = cli(env, "run", "lab", "--only", STEP, "-p", f"target=name:{name}")
    assert proc.returncode == 3, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert name in (latest_run_dir(home) / f"{STEP}.ipynb").read_text()  # listed among the restore points
    rid = latest_manifest(home)["run_id"]
    assert cli(env, "approve", rid, f"recover-{hs.REPLICA}", "--note", "lab test").returncode == 0
    proc = cli(env, "resume", rid)
    assert proc.returncode == 3, proc.stdout[-8000:] + proc.stderr[-3000:]  # waiting at rebuild-server-postgres-1
    new = cluster.servers[hs.REPLICA]
    assert hs.leader_name(cluster, params) == hs.REPLICA
    assert sql_on(new, params, "SELECT count(*) FROM public.events WHERE name = 'before-point'") == "7"
    assert sql_on(new, params, "SELECT count(*) FROM public.events WHERE name = 'after-point'") == "0"
    assert sql_on(new, params, "SELECT count(*) FROM public.ledger") == "250"
    assert cli(env, "approve", rid, f"rebuild-{STAGE_PRIMARY}", "--note", "lab test").returncode == 0
    proc = cli(env, "resume", rid)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    view = ops_patroni.wait_for_member(cluster.servers, params, STAGE_PRIMARY,
                                       lambda m: m.state in dp.RUNNING_STATES and m.lag == 0,
                                       what="the old leader streaming, lag 0", timeout=120)
    assert [m.name for m in view.members if m.is_leader] == [hs.REPLICA], view
    got = write_through_url(app, STATE["url"], "INSERT INTO public.events (user_id, name, created_at) "
                                               "VALUES (2, 'after-recovery', now()) RETURNING inet_server_addr()")
    assert got.splitlines()[0] == params.server(hs.REPLICA).private_ip, got
