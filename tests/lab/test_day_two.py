"""Day-two operations against real lab servers: roles and privileges (13), password rotation (14),
the health report and ``hcbpg status`` (15), and the monitoring hookup (exporter for real, Vector
config on disk).

The tests run in file order and build on each other: two servers set up with steps 02-04,
objects "restored from Heroku" (owned by rails, extensions in heroku_ext), pgBackRest with a
full backup and a streaming replica (steps 05/08/10, from their modules); then step 13 twice,
the access checks, the exporter, rotation, and ``hcbpg status`` healthy, with the replica
stopped, and with archiving broken.  Metabase goes through the lab's jumpbox host (.40).

Run under the machine's lab lock: ``flock /tmp/hcbpg-lab.lock python -m pytest tests/lab/test_day_two.py``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from hcbpg.adapters.cloud import make_client
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.host import Host
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import capacity
from hcbpg.desired import health as health_rules
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import server as desired_server
from hcbpg.desired import tls as desired_tls
from hcbpg.lab import create_server_host, destroy_server_host
from hcbpg.lab.core import read_state
from hcbpg.ops import access, migration, monitoring, privileges, readonly, rotation, server_lock
from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import failover as fo
from hcbpg.ops import provisioning as cloud
from hcbpg.ops import replica as replica_ops
from hcbpg.ops import server as pg_server
from hcbpg.ops import tls as tls_ops
from hcbpg.params import parse_params
from hcbpg.pg.conninfo import render_database_url
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import app_role_database as role_step
from hcbpg.steps import install_postgres as install_step
from hcbpg.steps import password_rotation
from hcbpg.steps import replication as rep_step
from hcbpg.steps.roles import planning_psql

from labparams import lab_params, pgbackrest_section, replication_section
from nbutil import CmdlineWatch, read_env_file
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, side_by_side

pytestmark = pytest.mark.lab

TIMINGS: dict[str, float] = {}
REPO = Path(__file__).resolve().parents[2]
OUTPUT: list[str] = []          # everything an operator would see, scanned for passwords at the end


def params_data(lab) -> dict:
    cfg = lab.cfg
    # the primary is a clone of the worker's primary stage (stages.py: its name and address); the replica at .6
    servers = [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary"),
               ("server-postgres-2", cfg.address(6), "replica")]
    return lab_params(lab, servers, pgbackrest=pgbackrest_section(lab, repo_path_prefix="/pgbackrest-day-two-test"),
                      replication=replication_section(lab), allow_destructive=True)


@pytest.fixture(scope="module")
def params(lab, primary_stage):
    p = parse_params(params_data(lab))
    key = lab.ssh_key.with_suffix(".pub").read_text()
    for s in p.servers:
        if s.name == primary_stage.name:
            primary_stage.clone()  # steps 02-04 built once per worker; the first test runs them again (with the shape)
        else:
            create_server_host(s.name, s.private_ip, [key], lab_dir=str(lab.lab_dir))
    # Metabase's jumpbox at .40 (`lab up` no longer makes one: params/lab.yaml's step 01 creates it there)
    create_server_host("jumpbox", lab.cfg.address(40), [key], lab_dir=str(lab.lab_dir))
    yield p
    for name in [s.name for s in p.servers] + ["jumpbox"]:
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def hosts(params, lab):
    hs = {s.name: Host.from_params(params, s.name, s.ssh_host) for s in params.servers}
    hs["app"] = Host.from_params(params, "app", params.app_host.private_ip)
    hs["jumpbox"] = Host.from_params(params, "jumpbox", lab.cfg.address(40))
    for h in hs.values():
        h.echo = OUTPUT.append
    for name in ("app", "jumpbox"):  # what steps 03 and 13 do: the clients get the environment's CA
        tls_ops.ensure_client_ca(hs[name], params)
    yield hs
    for h in hs.values():
        h.close()


@pytest.fixture(scope="module")
def shape(params):
    """The server type as the (lab's) Hetzner API reports it, through the real hcloud client."""
    client = make_client(params, resolve(params.hetzner.token, key="hetzner.token"))
    return cloud.get_server_shape(client, params)


@pytest.fixture(scope="module")
def cfg(params, lab):
    c = desired_roles.roles_config(params)
    assert c.jumpbox_ip == lab.cfg.address(40), "the lab's interim default puts the jumpbox at .40"
    return c


@pytest.fixture(scope="module")
def home(params, lab, tmp_path_factory):
    """An HCBPG_HOME whose params/lab.yaml is this lab's, for the real CLI."""
    h = tmp_path_factory.mktemp("home")
    (h / "params").mkdir()
    (h / "params" / "lab.yaml").write_text(yaml.safe_dump(params_data(lab)))
    return h


def primary_psql(hosts, params):
    return pg_cluster.get_psql(hosts[params.primary.name], params)


def app_password(params) -> str:
    return resolve(params.postgres.app_role_password, key="postgres.app_role_password")


def hcbpg_cli(home, *args, timeout=180):
    return hcbpg_cli_env(home, {}, *args, timeout=timeout)


def hcbpg_cli_env(home, extra, *args, timeout=180):
    env = dict(os.environ, HCBPG_HOME=str(home), HCBPG_STATE_DIR=str(home / "state"), **extra)
    env.pop("HCBPG_SCRUB_FILE", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hcbpg.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    OUTPUT.append(proc.stdout + proc.stderr)
    return proc, time.monotonic() - t0


RESTORED_AS_RAILS = """
CREATE SCHEMA heroku_ext;
CREATE EXTENSION citext WITH SCHEMA heroku_ext;
CREATE TYPE public.event_kind AS ENUM ('created', 'updated');
CREATE TABLE public.users (id bigserial PRIMARY KEY, email heroku_ext.citext UNIQUE, full_name text);
CREATE TABLE public.events (id bigserial PRIMARY KEY, user_id bigint REFERENCES public.users, kind public.event_kind);
CREATE TABLE public.transactions (id bigserial PRIMARY KEY, event_id bigint REFERENCES public.events, amount numeric);
CREATE VIEW public.recent_events AS SELECT * FROM public.events ORDER BY id DESC LIMIT 10;
CREATE FUNCTION public.touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
INSERT INTO public.users (email, full_name) SELECT 'u' || g || '@hcb.invalid', 'User ' || g FROM generate_series(1, 50) g;
INSERT INTO public.events (user_id, kind) SELECT g, 'created' FROM generate_series(1, 50) g;
INSERT INTO public.transactions (event_id, amount) SELECT g, g * 1.5 FROM generate_series(1, 50) g;
"""


def test_setup_servers_restored_objects_backups_and_replica(params, hosts, shape):
    """Steps 02-04, a Heroku-like restore as rails, pgBackRest (05/08) and the replica (10), from their modules."""
    t0 = time.monotonic()
    primary = params.primary

    def steps_02_03(s) -> None:  # noqa: ANN001 - a params Server
        install_step.install_server(hosts[s.name], params, s, shape=shape)
        allow_step.allow_connections(hosts[s.name], params, s,
                                     extra_rules=desired_server.all_hba_extra(params, s))

    def the_primary() -> list:
        steps_02_03(primary)
        ppsql = primary_psql(hosts, params)
        role_step.app_role_database(ppsql, params, app_password(params))
        # what pg_restore --no-owner as rails leaves behind, plus an untrusted extension made by a superuser
        res = roles._psql_on(hosts["app"], params, app_password(params), RESTORED_AS_RAILS,
                             server_ip=primary.private_ip)
        assert res.ok, res.output
        ppsql.execute("CREATE EXTENSION pg_stat_statements WITH SCHEMA heroku_ext", dbname=params.postgres.database)
        pg_config.ensure_settings(hosts[primary.name], params, primary, "replication")
        _, checks = fo.run_point_backups_at(hosts[primary.name], params, primary, archive_mode=True)
        return checks

    # the replica's steps 02-03 beside the primary's setup (different machines, each its own SSH connection)
    _, checks = side_by_side(lambda: [steps_02_03(s) for s in params.replicas], the_primary)
    assert not [c for c in checks if not c.ok], [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    TIMINGS["setup_primary_s"] = round(time.monotonic() - t0, 1)
    t1 = time.monotonic()
    rep_step.setup_replication({s.name: hosts[s.name] for s in params.servers}, params,
                               resolve(params.replication.password, key="replication.password"),
                               allow_destructive=True, dry_run=False, echo=OUTPUT.append)
    TIMINGS["setup_replica_s"] = round(time.monotonic() - t1, 1)


def test_capacity_settings_are_what_the_table_says_for_a_ccx13_with_checksums_and_statements(params, hosts, shape):
    assert (shape.name, shape.cores, shape.memory_gb, shape.disk_gb) == ("ccx13", 2, 8.0, 80)
    table = {r["setting"]: r["value"] for r in capacity.capacity_table(params, shape)}
    names = ["max_connections", "shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem",
             "shared_preload_libraries", "random_page_cost", "max_wal_size", "auto_explain.log_min_duration"]
    for s in params.servers:
        psql = pg_cluster.get_psql(hosts[s.name], params)
        rows = psql.query(sql.SQL("SELECT n, current_setting(n) AS v FROM unnest({}::text[]) AS n")
                          .format(sql.Literal(names)))
        shown = {r["n"]: r["v"] for r in rows}
        OUTPUT.append(f"{s.name}: {shown}")
        assert shown == {n: table[n] for n in names}, (s.name, shown)
        assert psql.value("SELECT current_setting('data_checksums') AS v") == "on", s.name
        checks = pg_server.check_server(hosts[s.name], params, s, shape)
        assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]
    ppsql = primary_psql(hosts, params)
    assert int(ppsql.value("SELECT count(*) AS n FROM heroku_ext.pg_stat_statements",
                           dbname=params.postgres.database)) > 0
    # a second run of step 02 changes nothing (the settings were there before the first start)
    for s in params.servers:
        again = install_step.install_server(hosts[s.name], params, s, shape=shape)
        assert not [o for o in again if o.changed], [str(o) for o in again if o.changed]


def test_roles_step_applies_the_model_and_second_run_changes_nothing(params, hosts, cfg):
    t0 = time.monotonic()
    privileges.ensure_role_secrets(SecretStore(), cfg)
    for s in params.servers:  # step 10 rendered pg_hba with its lines only; ours go beside them
        o = pg_config.ensure_pg_hba(hosts[s.name], params, s, extra=desired_server.all_hba_extra(params, s, cfg))
        OUTPUT.append(str(o))
    ppsql = primary_psql(hosts, params)
    plan = privileges.ensure_privileges(planning_psql(ppsql, params), cfg)
    OUTPUT.append(str(plan))
    assert plan.changed and any('ALTER TABLE "public"."users" OWNER TO "hcb_migrations"' in a for a in plan.actions), plan
    assert 'REASSIGN OWNED BY "rails" TO "hcb_migrations"' in plan.actions, "citext moves with it"
    applied = privileges.ensure_privileges(ppsql, cfg)
    OUTPUT.append(str(applied))
    TIMINGS["step13_apply_s"] = round(time.monotonic() - t0, 1)
    t1 = time.monotonic()
    again = privileges.ensure_privileges(ppsql, cfg)
    TIMINGS["step13_second_run_s"] = round(time.monotonic() - t1, 1)
    assert not again.changed, str(again)
    for s in params.servers:
        assert not pg_config.ensure_pg_hba(DryRunHost(hosts[s.name]), params, s,
                                           extra=desired_server.all_hba_extra(params, s, cfg)).changed


def test_privilege_check_matches_params_for_every_role(params, hosts, cfg):
    ppsql = primary_psql(hosts, params)
    t0 = time.monotonic()
    checks = privileges.check_privileges(ppsql, cfg) + privileges.check_passwords(ppsql, cfg)
    TIMINGS["privilege_check_s"] = round(time.monotonic() - t0, 1)
    OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status == "fail"]
    assert not failed, failed
    names = {c.name for c in checks}
    for role in ("hcb_app", "rails", "hcb_migrations", "metabase", "vector", "postgres_exporter"):
        assert f"role {role}" in names
    ext = {c.name: c for c in checks if c.name.startswith("extension ")}
    assert ext["extension citext"].status == "pass" and "hcb_migrations may create and update" in ext["extension citext"].detail
    assert "only a superuser" in ext["extension pg_stat_statements"].detail
    # the replica has the same catalogs (physical replication)
    rpsql = pg_cluster.get_psql(hosts["server-postgres-2"], params)
    # once it has replayed what the primary has written so far (instead of a fixed 1 s sleep)
    lsn = ppsql.value("SELECT pg_current_wal_lsn()::text AS l")
    replayed = sql.SQL("SELECT pg_last_wal_replay_lsn() >= {}::pg_lsn AS ok").format(sql.Literal(lsn))
    deadline = time.monotonic() + 30
    while rpsql.value(replayed) is not True:
        assert time.monotonic() < deadline, f"the replica never replayed up to {lsn}"
        time.sleep(0.1)
    assert not [c for c in privileges.check_privileges(rpsql, cfg) if c.status == "fail"]


def test_metabase_reads_listed_tables_only_and_only_through_the_jumpbox(params, hosts, cfg):
    checks = access.check_metabase_access(hosts["jumpbox"], [hosts["app"]], cfg, params,
                                              server_ip=params.primary.private_ip, unlisted_table="users")
    OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]


def test_migrations_role_creates_a_table_rails_can_use(params, hosts, cfg):
    checks = access.check_migrations_then_app(hosts["app"], cfg, params, server_ip=params.primary.private_ip,
                                                  app_password=app_password(params))
    OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]


def test_a_deploy_after_step_13_migrates_as_the_migrations_role_and_the_app_uses_the_new_table(params, hosts, cfg):
    checks = access.check_deploy(hosts["app"], cfg, params, server_ip=params.primary.private_ip,
                                     app_login=cfg.app_role, app_password=app_password(params))
    OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
    assert len(checks) == 4 and all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]


def test_blazer_url_reads_and_cannot_write(params, hosts, cfg):
    ppsql = primary_psql(hosts, params)
    made = readonly.ensure_blazer(ppsql, cfg)
    OUTPUT.append(str(made))
    assert made.changed and any("pg_read_all_data" in a for a in made.actions)
    assert not readonly.ensure_blazer(ppsql, cfg).changed
    assert all(c.status == "pass" for c in readonly.check_blazer(ppsql, cfg))
    # step 13's model keeps Blazer's CONNECT (it revokes every grant it does not know)
    assert not privileges.ensure_privileges(planning_psql(ppsql, params), cfg).changed
    checks = readonly.check_blazer_access(hosts["app"], cfg, params, server_ip=params.primary.private_ip)
    OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    ok, out = access.run_psql_as(hosts["app"], tls=desired_tls.conninfo_tls(params),
                             role=cfg.blazer.name, password=privileges.get_role_password(SecretStore(), cfg, "blazer"),
                             server_ip=params.primary.private_ip, port=5432, dbname=params.postgres.database,
                             script="SHOW statement_timeout;\nINSERT INTO users (full_name) VALUES ('x');\n",
                             display="psql as blazer: statement_timeout, then an INSERT (must be refused)")
    assert not ok and "30s" in out and "read-only transaction" in out, out


APP_CONNECTIONS = r"""
import asyncio, sys
import psycopg
password = sys.stdin.readline().rstrip("\n")
host, port, db, user, n, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]

async def main():
    conns, errors, release = [], [], asyncio.Event()
    gate = asyncio.Semaphore(40)   # the handshakes (SCRAM) 40 at a time; the connections stay open together

    async def one():
        try:
            async with gate:
                conn = await psycopg.AsyncConnection.connect(host=host, port=port, dbname=db, user=user,
                                                             password=password, connect_timeout=120, autocommit=True)
            await conn.execute("SELECT 1")
            conns.append(conn)
            await release.wait()
            await conn.close()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            release.set()

    tasks = [asyncio.create_task(one()) for _ in range(n)]
    while len(conns) + len(errors) < n:
        await asyncio.sleep(0.1)
    if not errors:
        cur = await conns[0].execute("SELECT count(*) FILTER (WHERE usename = %s), count(*) FILTER (WHERE usename = %s)"
                                     " FROM pg_stat_activity", (user, other))
        seen, others = await cur.fetchone()
        print("OPEN", len(conns), "SEEN", seen, "BESIDE", others)
    release.set()
    await asyncio.gather(*tasks)
    print("ERRORS", len(errors), *errors[:3])
    sys.exit(1 if errors else 0)

asyncio.run(main())
"""

ROTATION_CLIENT = r"""
import sys, threading, time, urllib.parse
import psycopg
host, port, db = sys.argv[1], int(sys.argv[2]), sys.argv[3]
latest, done = [sys.stdin.readline().strip()], threading.Event()

def read():
    for line in sys.stdin:
        if line.strip():
            latest[0] = line.strip()
    done.set()

threading.Thread(target=read, daemon=True).start()
while not done.is_set():
    url = urllib.parse.urlsplit(latest[0])
    user = urllib.parse.unquote(url.username or "")
    try:
        with psycopg.connect(host=host, port=port, dbname=db, user=user, sslmode="require", connect_timeout=10,
                             password=urllib.parse.unquote(url.password or "")) as c:
            c.execute("SELECT 1")
        print("ok", user, flush=True)
    except psycopg.Error as exc:
        print("fail", user, " ".join(str(exc).split()), flush=True)
    time.sleep(0.1)
"""

PGBENCH_SCRIPT = "\\set id random(1, 50)\nSELECT full_name FROM users WHERE id = :id;\n"
PGBENCH_PID = "/var/tmp/hcbpg-pgbench.pid"


def test_500_app_connections_from_the_app_host_while_pgbench_runs(params, hosts, cfg, lab):
    app, ip, db = hosts["app"], params.primary.private_ip, params.postgres.database
    mig, mig_pw = cfg.migrations.name, privileges.get_role_password(SecretStore(), cfg, cfg.migrations.name)
    app.run("cat > /var/tmp/hcbpg-pgbench.sql", stdin=PGBENCH_SCRIPT)
    app.run(f"rm -f {PGBENCH_PID}")
    bench: dict[str, object] = {}

    def pgbench() -> None:  # on the app host too, over its own SSH connection, as the migrations role
        # it runs until the 500 are done: then it gets SIGALRM, what its own -T timer sends it, and ends the same
        # way (its summary, exit 0); -T is only the bound should that never come
        with Host.from_params(params, "app", params.app_host.private_ip) as other:
            bench["res"] = other.run(
                f"IFS= read -r PGPASSWORD && export PGPASSWORD && echo $$ > {PGBENCH_PID} && "
                f"exec /usr/lib/postgresql/15/bin/pgbench -n -h {ip} -U {mig} -c 4 -j 2 -T 240 "
                f"-f /var/tmp/hcbpg-pgbench.sql {db}",
                stdin=mig_pw + "\n", check=False, timeout=300)

    thread = threading.Thread(target=pgbench, daemon=True)
    thread.start()
    # pgbench's 4 sessions are open before the 500 begin
    ppsql = primary_psql(hosts, params)
    sessions = sql.SQL("SELECT count(*) AS n FROM pg_stat_activity WHERE usename = {}").format(sql.Literal(mig))
    deadline = time.monotonic() + 60
    while int(ppsql.value(sessions) or 0) < 4:
        assert thread.is_alive() and time.monotonic() < deadline, bench.get("res")
        time.sleep(0.2)
    # the client (psycopg, this checkout's) runs in the app host's network namespace: its connections come
    # from the app's address, as pg_hba requires (a lab host has a fresh server's /root, not this venv's Python)
    ns = read_state(lab.cfg)["hosts"]["app"]["netns"]
    t0 = time.monotonic()
    res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", APP_CONNECTIONS, ip, "5432", db,
                          cfg.app_role, "500", mig], input=app_password(params) + "\n", capture_output=True,
                         text=True, timeout=600)
    TIMINGS["open_500_connections_s"] = round(time.monotonic() - t0, 1)
    OUTPUT.append(res.stdout + res.stderr)
    app.run(f"kill -ALRM \"$(cat {PGBENCH_PID})\"", check=False)
    thread.join(120)
    assert res.returncode == 0 and "OPEN 500 SEEN 500" in res.stdout and "ERRORS 0" in res.stdout, \
        (res.stdout + res.stderr)[-2000:]
    beside = int(res.stdout.split("BESIDE")[1].split()[0])
    assert beside >= 1, "pgbench was running while the 500 were open"
    out = bench["res"].output  # type: ignore[union-attr]
    OUTPUT.append(out)
    assert bench["res"].ok and "number of failed transactions: 0" in out, out[-2000:]  # type: ignore[union-attr]
    TIMINGS["pgbench_tps"] = float(out.split("tps =")[1].split()[0])


def test_exporter_runs_on_each_server_with_the_server_up_and_replication_figures(params, hosts, cfg):
    pw = privileges.get_role_password(SecretStore(), cfg, cfg.exporter.name)
    t0 = time.monotonic()
    for s in params.servers:
        o = monitoring.ensure_exporter(hosts[s.name], params, s, cfg, pw)
        OUTPUT.append(str(o))
        assert "write /etc/default/prometheus-postgres-exporter (0600)" in o.actions
        assert monitoring.PLACEHOLDER in o.diff
        mode = hosts[s.name].probe(f"stat -c '%a %U' {monitoring.EXPORTER_ENV}").stdout.strip()
        assert mode == "600 root"
    for s in params.servers:
        checks = monitoring.check_exporter(hosts[s.name], s)
        OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
        assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    TIMINGS["exporter_s"] = round(time.monotonic() - t0, 1)
    for s in params.servers:
        assert not monitoring.ensure_exporter(hosts[s.name], params, s, cfg, pw).changed


def test_vector_config_installed_without_secrets_in_outputs(params, hosts, cfg):
    pw = privileges.get_role_password(SecretStore(), cfg, cfg.monitoring.name)
    for s in params.servers:
        o = monitoring.ensure_vector_config(hosts[s.name], params, s, cfg, pw)
        OUTPUT.append(str(o))
        assert o.changed and "(vector is not installed here: config only)" in o.actions
        checks = monitoring.check_vector_files(hosts[s.name], params, s, cfg)
        assert all(c.ok for c in checks), [f"{c.name}: {c.detail}" for c in checks]
        assert not monitoring.ensure_vector_config(hosts[s.name], params, s, cfg, pw).changed
    # the vector role really reads what the source reads, from the server, on its private IP
    p = params.primary
    ok, out = access.run_psql_as(hosts[p.name], tls=desired_tls.conninfo_tls(params),
                                 role=cfg.monitoring.name, password=pw, server_ip=p.private_ip,
                                 port=5432, dbname="postgres",
                                 script="SELECT count(*) FROM pg_stat_database; SELECT count(*) FROM "
                                        "pg_stat_database_conflicts; SELECT buffers_clean FROM pg_stat_bgwriter;\n",
                                 display="psql as vector: the three statistics views")
    assert ok, out


def test_app_rotation_refuses_no_new_connection_of_a_client_every_100ms(lab, params, hosts, cfg, monkeypatch,
                                                                        tmp_path):
    """A client opens a new connection every 100 ms with whatever DATABASE_URL it was last given (the handoff
    file, else the URL it started with) while the app's password is rotated: not one fails."""
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    rots = password_rotation.roles_to_rotate(params, cfg)
    assert [r.role for r in rots] == ["rails"]
    ppsql = primary_psql(hosts, params)
    handoff = migration.handoff_path(params)
    first = render_database_url(params, app_password(params))

    def given_url() -> str:
        return read_env_file(handoff)["DATABASE_URL"] if handoff.is_file() else first

    # the client runs in the app host's network namespace (its connections come from the app's address, as
    # pg_hba requires), without an SSH tunnel in between: a dropped tunnel under load is not what this tests.
    # It reads each URL it is given on stdin (never on a command line) and prints one line per connection.
    ns = read_state(lab.cfg)["hosts"]["app"]["netns"]
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c", ROTATION_CLIENT,
                             params.primary.private_ip, str(params.postgres.port), params.postgres.database],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    stop = threading.Event()

    def feed() -> None:
        """The client's URL: the handoff file's as soon as it changes (the operator sets it in Hatchbox)."""
        last = None
        while not stop.is_set():
            url = given_url()
            if url != last:
                proc.stdin.write(url + "\n")
                proc.stdin.flush()
                last = url
            stop.wait(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        outcome, switch, new = rotation.run_app_rotation(ppsql, params, cfg, timeout=120, interval=0.2,
                                                         echo=OUTPUT.append)
        TIMINGS["app_rotation_s"] = round(time.monotonic() - t0, 1)
        time.sleep(1.5)
    finally:
        stop.set()
        feeder.join(5)
        proc.stdin.close()  # the client ends at the end of its input
        proc.wait(60)
        reader.join(5)
    results = [(ln.split()[1], None if ln.startswith("ok ") else ln.split(" ", 2)[2].strip())
               for ln in lines if ln.startswith(("ok ", "fail "))]
    assert results and len(results) == len(lines), lines[-5:]
    OUTPUT.append(str(outcome))
    failed = [r for r in results if r[1]]
    TIMINGS["rotation_client_connections"] = len(results)
    assert not failed, failed[:3]
    assert (switch.old, switch.new) == ("rails", "rails_alt")
    assert {u for u, _ in results} == {"rails", "rails_alt"}, "the client used both URLs"
    assert results[-1][0] == "rails_alt"
    checks = rotation.check_app_switch(hosts["app"], params, cfg, switch, new, server_ip=params.primary.private_ip)
    OUTPUT.append("\n".join(f"{c.status} {c.name}: {c.detail}" for c in checks))
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    assert stat.S_IMODE(handoff.stat().st_mode) == 0o600
    # step 13's checks follow the app to its other login
    assert not [c for c in privileges.check_privileges(ppsql, cfg) if c.status == "fail"]
    login, pw = privileges.get_app_login(ppsql, cfg)
    assert (login, pw) == ("rails_alt", new)
    assert not privileges.ensure_privileges(planning_psql(ppsql, params), cfg).changed


def test_rotation_of_another_login_role_leaves_old_password_refused_and_new_working(params, hosts, cfg, monkeypatch,
                                                                                    tmp_path):
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    ppsql = primary_psql(hosts, params)
    # a generic login role: the exporter's, through the server itself
    (rot,) = password_rotation.roles_to_rotate(params, cfg, cfg.exporter.name)  # step 14's input rotate_roles
    _, old, new = rotation.run_rotation(ppsql, params, rot)
    checks = rotation.check_rotation(hosts[params.primary.name], params, rot, old, new,
                                      server_ip=params.primary.private_ip)
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    servers = {s.name: hosts[s.name] for s in params.servers}
    updated = password_rotation.update_hcbpg_dependents(rot, new, params, cfg, servers)
    OUTPUT.append("\n".join(str(o) for o in updated))
    assert [o.changed for o in updated] == [True, True], "the exporter's env file on every server"
    for s in params.servers:
        assert all(c.ok for c in monitoring.check_exporter(hosts[s.name], s))


def test_notebooks_run_by_the_real_runner_with_no_password_in_outputs(params, home, cfg, lab, tmp_path):
    """Steps 13 (a second time: nothing to change), 14 and 15 as notebooks, headless, gates auto-approved."""
    import shutil
    nbdir = tmp_path / "notebooks"
    nbdir.mkdir()
    for name in ("13_roles", "14_password_rotation", "15_health"):
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", nbdir)
    (nbdir / "steps.yaml").write_text(yaml.safe_dump({"steps": [
        {"notebook": "13_roles.ipynb", "title": "Roles and privileges, monitoring hookup"},
        {"notebook": "14_password_rotation.ipynb", "title": "Password rotation", "on_demand": True},
        {"notebook": "15_health.ipynb", "title": "Health report"}]}))
    env = {"HCBPG_NOTEBOOKS": str(nbdir), "HCBPG_OPERATOR": "day-two-test", "XDG_STATE_HOME": str(tmp_path / "xdg")}
    # every secret the steps use, sampled for on every process's command line while they run
    planted = [app_password(params)] + [privileges.get_role_password(SecretStore(), cfg, r.name) for r in cfg.login_roles()] + \
        [lab.cfg.read_secret(p.name) for p in lab.cfg.secrets_dir.iterdir() if p.is_file()]
    watch = CmdlineWatch().__enter__()
    proc, took = hcbpg_cli_env(home, env, "run", "lab", "--only", "13_roles,14_password_rotation,15_health",
                               timeout=900)
    out = proc.stdout + proc.stderr
    # 13 a second time changes nothing on the servers; this operator's machine (a fresh XDG_STATE_HOME) gets the two
    # handed-out URL files, each the target's whole set
    runs = sorted(p for p in (home / "outputs" / "lab").iterdir() if p.is_dir())
    step13 = next(s for s in json.loads((runs[-1] / "manifest.json").read_text())["steps"] if s["key"] == "13_roles")
    assert sorted(c["what"].split(" (")[0].rsplit("/", 1)[-1] for c in step13["diffs"]) == \
        ["app-database-urls.env", "release-database-urls.env"], (step13["diffs"], out[-3000:])
    # step 14 stops at its gate; the operator approves and resumes
    for gate in ("rotate-passwords",):
        assert proc.returncode == 3 and f"gate '{gate}'" in out, out[-3000:]
        run_id = out.split("hcbpg resume ")[-1].split()[0]
        approved, _ = hcbpg_cli_env(home, env, "approve", run_id, gate, "--note", "day-two test")
        assert approved.returncode == 0, approved.stdout + approved.stderr
        proc, more = hcbpg_cli_env(home, env, "resume", run_id, timeout=900)
        took += more
        out = proc.stdout + proc.stderr
    TIMINGS["notebooks_13_14_15_s"] = round(took, 1)
    watch.__exit__()
    assert proc.returncode == 0, out[-3000:]
    assert watch.samples > 100 and len(watch.seen) > 50, (watch.samples, len(watch.seen))
    # (a psql run by the steps on a lab host is among what was sampled: the check can see those)
    assert any(b"psql" in argv for argv in watch.seen), "no psql was ever sampled"
    # the rotated passwords (step 14 made new ones) count too
    planted += [privileges.get_role_password(SecretStore(), cfg, r.name) for r in cfg.login_roles()]
    assert watch.found([v for v in planted if len(v) >= 8]) == []
    assert hcbpg_cli_env(home, env, "audit", "verify", "lab")[0].returncode == 0
    # step 13 handed out the release command's URL in its own file and rewrote the app's whole (DATABASE_URL of the
    # app's login now, BLAZER_DATABASE_URL of Blazer's read-only login): one URL per name, 0600, each verifying the
    # server's certificate
    files = {name: tmp_path / "xdg" / "hcbpg" / "lab" / name
             for name in ("release-database-urls.env", "app-database-urls.env")}
    handed = {}
    for f in files.values():
        assert oct(f.stat().st_mode & 0o777) == "0o600"
        got = read_env_file(f)
        assert not set(got) & set(handed), "two files hand out the same URL"
        handed.update(got)
    assert set(read_env_file(files["release-database-urls.env"])) == {"MIGRATIONS_DATABASE_URL"}
    assert set(handed) == {"MIGRATIONS_DATABASE_URL", "DATABASE_URL", "BLAZER_DATABASE_URL"}, set(handed)
    for name, url in handed.items():
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        assert query.get("sslmode") == ["verify-full"] and query.get("sslrootcert"), (name, query)
    blazer_login = urllib.parse.urlsplit(handed["BLAZER_DATABASE_URL"]).username  # (no URL in a failure's report)
    assert blazer_login == cfg.blazer.name
    summary = "".join(p.read_text() for p in (home / "outputs").rglob("*.json"))
    assert "13_roles" in summary
    text = "".join(p.read_text(errors="replace") for p in (home / "outputs").rglob("*") if p.is_file())
    OUTPUT.append(text)
    for value in [app_password(params)] + [privileges.get_role_password(SecretStore(), cfg, r.name) for r in cfg.login_roles()]:
        assert value not in text


def test_a_step_is_refused_while_another_machine_holds_the_primary(params, hosts, home, tmp_path):
    """The change lock on the primary: the steps above released it; one held from elsewhere refuses a run."""
    primary = hosts[params.primary.name]
    assert primary.read_text(server_lock.LOCK_PATH) is None, "a finished step left the primary locked"
    other = server_lock.Holder("run-elsewhere", "lab", "07_cutover", "alice", "alice-laptop", 99, 90,
                               "2026-12-02T17:00:00.000000Z")
    primary.run(f"install -d -m 0700 {server_lock.LOCK_DIR}")
    primary.put_text(server_lock.LOCK_PATH, other.to_json(), mode=0o600)
    try:
        nbdir = tmp_path / "notebooks"
        nbdir.mkdir()
        import shutil
        shutil.copy(REPO / "notebooks" / "13_roles.ipynb", nbdir)
        (nbdir / "steps.yaml").write_text(yaml.safe_dump({"steps": [
            {"notebook": "13_roles.ipynb", "title": "Roles and privileges, monitoring hookup"}]}))
        proc, _ = hcbpg_cli_env(home, {"HCBPG_NOTEBOOKS": str(nbdir)}, "run", "lab", "--only", "13_roles",
                                timeout=900)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out[-3000:]
        assert (f"{params.primary.name} is being changed by another run: step 07_cutover of run run-elsewhere "
                "(lab) by alice (pid 90 on alice-laptop) since 2026-12-02T17:00:00") in out, out[-3000:]
        assert server_lock.parse_holder(primary.read_text(server_lock.LOCK_PATH)) == other
    finally:
        primary.run(f"rm -f {server_lock.LOCK_PATH}")


def test_status_shows_every_item_for_both_servers_and_exits_0(params, home):
    proc, took = hcbpg_cli(home, "status", "lab")
    TIMINGS["status_healthy_s"] = round(took, 1)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # one line per server (role, state, timeline, lag, slots, backup, archive, connections, disk), like patronictl list
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:5] == ["SERVER", "ROLE", "STATE", "TL", "LAG"], lines
    rows = {line.split()[0]: line.split() for line in lines[1:] if line.startswith("server-")}
    assert set(rows) == {s.name for s in params.servers}, proc.stdout
    assert rows[params.primary.name][1:4] == ["primary", "running", "1"], rows
    assert rows["server-postgres-2"][1:4] == ["replica", "streaming", "1"], rows
    assert rows[params.primary.name][-1] == "OK" and lines[-1].startswith("OK: "), proc.stdout
    proc, _ = hcbpg_cli(home, "status", "lab", "--all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for s in params.servers:
        for item in health_rules.ITEMS:
            assert any(line.startswith(s.name) and item in line for line in proc.stdout.splitlines()), (s.name, item)
    js, _ = hcbpg_cli(home, "status", "lab", "--json")
    assert js.returncode == 0
    assert '"measurements"' in js.stdout
    # the TLS certificate's expiry is an item of its own
    for s in params.servers:
        assert any(line.startswith(s.name) and "TLS certificate" in line and "expires" in line
                   for line in proc.stdout.splitlines()), (s.name, proc.stdout)


def test_a_certificate_near_its_end_is_renewed_and_served_after_a_reload(params, hosts):
    """Step 03's TLS part run as if the certificate were near its end: a new one is issued and
    PostgreSQL serves it after the reload; clients still verify it; a second run changes nothing."""
    import datetime as dt
    s = params.primary
    host = hosts[s.name]
    before = tls_ops.get_server_cert(host, params)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=params.tls.cert_days - params.tls.renew_days + 1)
    outcomes = tls_ops.ensure_server_tls(host, params, s, now=later)
    renewed = [o for o in outcomes if o.changed]
    assert len(renewed) == 1 and "renewed: expires in" in renewed[0].actions[0], [str(o) for o in outcomes]
    after = tls_ops.get_server_cert(host, params)
    assert after != before
    served = hosts["app"].run(f"openssl s_client -starttls postgres -connect {s.private_ip}:{params.postgres.port} "
                              "</dev/null 2>/dev/null | openssl x509", quiet=True, check=False).stdout
    assert served.strip() == after.strip(), "PostgreSQL still serves the old certificate"
    checks = tls_ops.check_tls_from(hosts["app"], params, s)
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    assert not any(o.changed for o in tls_ops.ensure_server_tls(host, params, s))


def test_status_fails_naming_the_item_when_the_replica_is_stopped(params, hosts, home):
    replica = params.server("server-postgres-2")
    hosts[replica.name].run("pg_ctlcluster 15 main stop -m fast")
    try:
        proc, took = hcbpg_cli(home, "status", "lab")
        TIMINGS["status_replica_stopped_s"] = round(took, 1)
        print(proc.stdout)
        assert proc.returncode == 1
        assert "server-postgres-2: PostgreSQL running" in proc.stdout
        assert "server-postgres-1: replication" in proc.stdout.split("FAIL:")[-1]
    finally:
        hosts[replica.name].run("pg_ctlcluster 15 main start")
    replica_ops.wait_for_streaming(hosts[params.primary.name], params, replica, timeout=60)


def test_status_fails_naming_archiving_when_archiving_breaks(params, hosts, home):
    p = params.primary
    ppsql = primary_psql(hosts, params)
    ppsql.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
    pg_cluster.run_reload(hosts[p.name], params)
    try:
        ppsql.execute("CREATE TABLE IF NOT EXISTS hcbpg_wal_push (x int)", dbname="postgres")
        ppsql.execute("INSERT INTO hcbpg_wal_push VALUES (1)", dbname="postgres")
        ppsql.value("SELECT pg_switch_wal()::text AS l")
        deadline = time.monotonic() + 30
        while not int(ppsql.value("SELECT failed_count FROM pg_stat_archiver") or 0):
            assert time.monotonic() < deadline, "archiving never failed"
            time.sleep(0.5)
        proc, took = hcbpg_cli(home, "status", "lab")
        TIMINGS["status_archiving_broken_s"] = round(took, 1)
        print(proc.stdout)
        assert proc.returncode == 1
        assert "server-postgres-1: archiving" in proc.stdout
    finally:
        ppsql.execute("ALTER SYSTEM RESET archive_command")
        pg_cluster.run_reload(hosts[p.name], params)
        ppsql.execute("DROP TABLE IF EXISTS hcbpg_wal_push", dbname="postgres")


def test_no_password_appears_in_any_output(params, cfg, lab):
    values = [lab.cfg.read_secret(n) for n in ("rails-password", "repuser-password")]
    values += [privileges.get_role_password(SecretStore(), cfg, r.name) for r in cfg.login_roles()]
    text = "\n".join(OUTPUT)
    assert len(text) > 1000
    for v in values:
        assert v and v not in text
    print("TIMINGS", TIMINGS)
