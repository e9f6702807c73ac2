"""Notebook 22_recover_everything (issue 24, done when 3): both database servers destroyed in the lab's cloud,
production back from the repository through the real CLI and its gate.

The machines are the lab cloud's own: step 01 (through the CLI) creates the jumpbox and both servers through the
Hetzner API stand-in with delete protection, steps 02-04 install them; then, as step 10 and 08 do it (their
code, called directly like ``ha_stage``): pgBackRest with archiving (archive_timeout 5 s) and a full backup,
Patroni over etcd on three members.  The app host's ActiveRecord writer writes through the handed-out URL; it is
stopped at a known id; both servers are unprotected and deleted through the API (their lab hosts go with them);
the notebook is refused nothing (both gone), stops at gate ``recover-everything``, and after the approval makes
both again with etcd and Patroni's files (provisioning), restores the newest state, has Patroni adopt it (no restart
pending, no new timeline), hands the URL out again and commits through it (the recovery time ends there), then
after the clock makes the other server its replica (a commit through the URL while it is built), step 10's checks
and a backup.  A second run is refused (the servers answer as production) and changes nothing.  The writer then
writes again through the same URL.  Every recovered row was acknowledged (none invented); the newest
recovered id and the last acknowledged one are printed with the time between them (the bound: archive_timeout +
5 s, printed, not asserted).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters.host import Host
from hcbpg.desired import migration as dm
from hcbpg.desired import patroni as dp
from hcbpg.desired import recover_everything as dre
from hcbpg.lab import app_load, destroy_server_host
from hcbpg.ops import failover as fo
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import recover as ops_recover
from hcbpg.ops import tls as tls_ops
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import ha

import ha_stage as hs
from labparams import LAB_PATRONI, ensure_secret_file, lab_params, pgbackrest_section, replication_section
from stages import cli, latest_manifest, latest_run_dir

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab

#: addresses no other module of a worker uses
OFFSETS = {"server-postgres-1": 91, "server-postgres-2": 92}
JUMPBOX_OFFSET = 93
JUMPBOX = "hcb-jumpbox"
SCOPE = "hcb-everything"
STEP = "22_recover_everything"
STATE: dict = {}
RATE = 20.0


@pytest.fixture(scope="module")
def data(lab) -> dict:
    cfg = lab.cfg
    # blazer-password: step 09 makes Blazer's login's secret before it hands BLAZER_DATABASE_URL out (not run here)
    for name in ("patroni-rest-password", "etcd-patroni-password", "blazer-password"):
        ensure_secret_file(cfg.secret_path(name))
    servers = [(n, cfg.address(off), "primary" if n.endswith("1") else "replica") for n, off in OFFSETS.items()]
    jb_ip = cfg.address(JUMPBOX_OFFSET)
    d = lab_params(
        lab, servers,
        pgbackrest=pgbackrest_section(lab, repo_path_prefix=f"/pgbackrest-{SCOPE}", archive_timeout=5),
        replication=replication_section(
            lab, manager="patroni", connection_limit=5,
            patroni={"scope": SCOPE, "rest_password": f"file:{cfg.secret_path('patroni-rest-password')}",
                     "watchdog": "off", "create_replica_methods": ["pgbackrest", "basebackup"], "bin": LAB_PATRONI},
            etcd={"patroni_password": f"file:{cfg.secret_path('etcd-patroni-password')}"}),
        jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip},
        allow_destructive=True)
    d["hetzner"] = {**d["hetzner"], "ssh_key_name": "hcb-everything-test", "protection": True}
    return d


@pytest.fixture(scope="module")
def params(data):
    return parse_params(data)


@pytest.fixture(scope="module")
def run_home(lab, data, tmp_path_factory):
    home = tmp_path_factory.mktemp("everything-home")
    (home / "params").mkdir()
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(lab.lab_dir),
           "HCBPG_OPERATOR": "lab-test"}
    return home, env


def client(params):  # noqa: ANN001, ANN201 - hcloud.Client
    import hcloud
    return hcloud.Client(token=resolve(params.hetzner.token, key="hetzner.token"),
                         api_endpoint=params.hetzner.api_endpoint, poll_interval=0.1)


def connect(params, name: str) -> Host:  # noqa: ANN001
    ip = params.jumpbox.private_ip if name == JUMPBOX else params.server(name).private_ip
    return Host.from_params(params, name, ip, echo=lambda _s: None).connect()


@pytest.fixture(scope="module")
def cloud(lab, params, run_home):
    """Steps 01-04 through the CLI (the three machines made through the API stand-in), then pgBackRest with
    archiving and a full backup on the primary and step 10's setup_ha; everything deleted through the API at the
    end (protection lifted first)."""
    home, env = run_home
    t0 = time.monotonic()
    before = cloud_resources(client(params))
    try:
        proc = cli(env, "run", "lab", "--only",
                   "01_provision,02_install_postgres,03_allow_connections,04_app_role_database")
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        hosts = {s.name: connect(params, s.name) for s in params.servers}
        jumpbox = connect(params, JUMPBOX)
        _, checks = fo.run_point_backups_at(hosts[params.primary.name], params, params.primary, archive_mode=True)
        assert all(c.ok for c in checks), checks
        res = ha.setup_ha(ha.HaHosts(dict(hosts), jumpbox, JUMPBOX), params, hs.patroni_secrets(params),
                          hs.lab_shape(params), allow_destructive=True, dry_run=False, restart_approved=lambda: True)
        view = ops_patroni.get_cluster(hosts, params)
        assert view is not None and view.leader is not None and view.leader.name == params.primary.name, view
        hosts[params.primary.name].run(f"psql -X -q -v ON_ERROR_STOP=1 -d {params.postgres.database} -f -",
                                       sudo_user="postgres", stdin=hs.EVENTS_SQL)
        # the table in the archive before the writer starts: the writer's rows may be lost up to archive_timeout
        # (what the test measures), the table itself must not be (a race the fresh-clone run at 2d8c28b lost)
        ops_recover.run_archive_now(hosts[params.primary.name], params)
        for h in [*hosts.values(), jumpbox]:
            h.close()
        print(f"\nthe pair in the lab's cloud in {time.monotonic() - t0:.0f} s ({res.timings})")
        yield
    finally:
        c = client(params)
        for name in [*(s.name for s in params.servers), JUMPBOX]:
            try:
                s = c.servers.get_by_name(name)
                if s is not None:
                    c.servers.change_protection(s, delete=False, rebuild=False).wait_until_finished(120)
                    c.servers.delete(s).wait_until_finished(120)
            except Exception as exc:  # noqa: BLE001 - teardown goes on; the host is destroyed below
                print(f"teardown: {name}: {exc}")
            destroy_server_host(name, lab_dir=str(lab.lab_dir))
        remove_new_cloud_resources(c, before)


#: what step 01 makes besides servers, by the hcloud client's attribute
CLOUD_KINDS = ("firewalls", "placement_groups", "networks", "ssh_keys")


def cloud_resources(c) -> dict[str, set[int]]:  # noqa: ANN001 - hcloud.Client
    return {kind: {r.id for r in getattr(c, kind).get_all()} for kind in CLOUD_KINDS}


def remove_new_cloud_resources(c, before: dict[str, set[int]]) -> None:  # noqa: ANN001 - hcloud.Client
    """The worker's API stand-in left as this module found it: the firewalls, placement group, network and key
    step 01 made here are deleted (a later module's plan on no servers met this module's jumpbox-shaped firewall,
    with no rules, under the name its own params use: the fresh-clone run at dcb7c93)."""
    for kind in CLOUD_KINDS:
        for r in getattr(c, kind).get_all():
            if r.id not in before[kind]:
                try:
                    getattr(c, kind).delete(r)
                except Exception as exc:  # noqa: BLE001 - teardown goes on
                    print(f"teardown: {kind} {r.name}: {exc}")


@pytest.fixture(scope="module")
def app(lab, params, cloud, tmp_path_factory):
    host = Host.from_params(params, "app", lab.cfg.app_ip, echo=lambda _s: None).connect()
    tls_ops.ensure_client_ca(host, params)
    password = resolve(params.postgres.app_role_password, key="postgres.app_role_password")
    urls = dm.render_role_urls(params, {"DATABASE_URL": ("rails", password)},
                               path=tmp_path_factory.mktemp("urls") / "app-database-urls.env", target="the lab app")
    app_load.put_env_file(host, urls.text)
    STATE["url"] = urls.values["DATABASE_URL"]
    try:
        yield host
    finally:
        w = STATE.get("writer")
        if w is not None:
            app_load.stop_writer(host, w)
        host.run(f"rm -f {app_load.AR_ENV_FILE}", quiet=True)
        host.close()


def scrap_last(notebook: Path, name: str) -> dict:
    """The LAST value an executed notebook recorded under *name* (notebook 22 records its phases at the end of the
    recovery time, then again with the phases after the clock)."""
    found = [out["data"]["application/scrapbook.scrap.json+json"]["data"]
             for cell in json.loads(notebook.read_text())["cells"] for out in cell.get("outputs", [])
             if (out.get("data", {}).get("application/scrapbook.scrap.json+json") or {}).get("name") == name]
    assert found, f"{notebook.name} recorded no {name}"
    return found[-1]


def newest_ids(params, sql: str) -> list[int]:  # noqa: ANN001
    h = connect(params, params.primary.name)
    try:
        out = h.run(f"psql -X -At -v ON_ERROR_STOP=1 -d {params.postgres.database} -f -", sudo_user="postgres",
                    stdin=sql, quiet=True).stdout
    finally:
        h.close()
    return [int(x) for x in out.split()]


def server_logs(params) -> str:  # noqa: ANN001
    """The tail of Patroni's and PostgreSQL's logs on each server (what a failed run leaves to read)."""
    out = []
    for s in params.servers:
        try:
            h = connect(params, s.name)
        except Exception as exc:  # noqa: BLE001 - a server not made yet
            out.append(f"--- {s.name}: {exc}")
            continue
        try:
            r = h.run("tail -n 40 /var/log/patroni/patroni.log; tail -n 30 /var/log/postgresql/postgresql-15-main.log;"
                      " pg_lsclusters", check=False, quiet=True)
            out.append(f"--- {s.name}\n{r.output[-5000:]}")
        finally:
            h.close()
    return "\n".join(out)


def test_the_writer_stopped_at_a_known_id_then_both_servers_deleted_in_the_cloud(params, cloud, app):
    writer = app_load.start_ar_writer(app, name="everything", rate=RATE, pg_async=False)
    STATE["writer"] = writer
    hs.wait_for_acks_on(app, writer, params.primary.private_ip, 0, count=40, timeout=120)
    log = app_load.stop_writer(app, writer)
    STATE["writer"] = None
    assert log.acks and not any(a.server != params.primary.private_ip for a in log.acks)
    STATE["acked"] = {a.id: a.t_ms for a in log.acks}
    last = max(log.acks, key=lambda a: a.id)
    STATE["last_ack"] = last
    c = client(params)
    t0 = time.monotonic()
    for s in params.servers:
        srv = c.servers.get_by_name(s.name)
        assert srv is not None and srv.protection["delete"] is True, srv
        c.servers.change_protection(srv, delete=False, rebuild=False).wait_until_finished(120)
        c.servers.delete(srv).wait_until_finished(120)
    for s in params.servers:
        assert c.servers.get_by_name(s.name) is None
    print(f"\n{len(log.acks)} writes acknowledged, the last id {last.id}; both servers deleted through the API in "
          f"{time.monotonic() - t0:.1f} s")


def test_the_notebook_recovers_everything_behind_its_gate(params, app, run_home):
    home, env = run_home
    plan = cli(env, "plan", "lab", "--only", STEP)
    assert plan.returncode == 0, plan.stdout[-6000:] + plan.stderr[-3000:]
    proc = cli(env, "run", "lab", "--only", STEP)
    assert proc.returncode == 3, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert "recover-everything" in proc.stdout, proc.stdout[-3000:]
    assert client(params).servers.get_by_name(params.primary.name) is None  # nothing made before the gate
    run_id = latest_manifest(home)["run_id"]
    ok = cli(env, "approve", run_id, "recover-everything", "--note", "lab test: both servers deleted")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    t0 = time.monotonic()
    proc = cli(env, "resume", run_id, timeout=3000)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-12000:] + proc.stderr[-3000:] + server_logs(params)
    rec = scrap_last(latest_run_dir(home) / f"{STEP}.ipynb", "recover_everything")
    STATE["record"] = rec
    print(f"\nresumed after the gate to the end in {took:.0f} s; phases:")
    for row in rec.get("phases") or []:
        print(f"  {row['phase']:<28} {row.get('counts', ''):<24} {row['seconds']:>7} s  {row['since decision']:>7}")
    print("lead: " + json.dumps({k: v for k, v in rec.items() if k.startswith(("lead", "ha_", "restart"))}))
    phases = [r["phase"] for r in rec.get("phases") or []]
    assert phases[:10] == list(dre.PHASES[1:]), phases
    # Patroni adopted the restored primary: no restart pending, no timeline after the restore's own
    assert rec.get("lead") == "adopt" and rec.get("restart_pending") is False, rec
    hosts = {s.name: connect(params, s.name) for s in params.servers}
    try:
        view = ops_patroni.get_cluster(hosts, params)
        assert view is not None and view.leader is not None and view.leader.name == params.primary.name, view
        assert view.leader.timeline == rec["timeline"], (view.rows(), rec["timeline"])
        assert view.replicas and all(m.state in dp.RUNNING_STATES and m.lag is not None for m in view.replicas), view
        assert any(m.is_sync_standby for m in view.members), view.rows()
        STATE["sysid"] = ha.get_system_identifier(hosts[params.primary.name], params)
        assert STATE["sysid"] == rec.get("system_identifier"), rec
        # where "patroni leads" goes: Patroni's own first lines on the primary (its start-up, the scope initialised,
        # the leader key taken) against the notebook's marks
        head = hosts[params.primary.name].run("head -n 12 /var/log/patroni/patroni.log", check=False,
                                              quiet=True).stdout
        print("marks: " + json.dumps({k: v for k, v in rec["marks"].items() if k in ("restored", "patroni leads")})
              + "\nPatroni's log on the primary, first lines:\n" + head)
    finally:
        for h in hosts.values():
            h.close()
    text = (latest_run_dir(home) / f"{STEP}.ipynb").read_text()
    assert "while the replica is being built" in text and "committed xid" in text


def test_a_second_run_is_refused_and_changes_nothing(params, run_home):
    home, env = run_home
    proc = cli(env, "run", "lab", "--only", STEP)
    assert proc.returncode not in (0, 3), proc.stdout[-6000:]
    assert "answers as a running primary" in proc.stdout + proc.stderr, proc.stdout[-6000:]
    hosts = {s.name: connect(params, s.name) for s in params.servers}
    try:
        view = ops_patroni.get_cluster(hosts, params)
        assert view is not None and view.leader is not None and view.leader.name == params.primary.name, view
        assert ha.get_system_identifier(hosts[params.primary.name], params) == STATE["sysid"]
    finally:
        for h in hosts.values():
            h.close()


def test_the_app_writes_again_and_every_recovered_row_was_acknowledged(params, app):
    acked = STATE["acked"]
    last = STATE["last_ack"]
    ids = newest_ids(params, "SELECT id FROM public.events ORDER BY id")
    invented = [i for i in ids if i not in acked]
    assert not invented, f"rows recovered that were never acknowledged: {invented[:20]}"
    newest = max(ids) if ids else None
    gap_ms = last.t_ms - acked[newest] if newest is not None else None
    writer = app_load.start_ar_writer(app, name="everything-after", rate=RATE, pg_async=False)
    STATE["writer"] = writer
    acks = hs.wait_for_acks_on(app, writer, params.primary.private_ip, 0, count=5, timeout=120)
    app_load.stop_writer(app, writer)
    STATE["writer"] = None
    assert acks
    # none recovered: every acknowledged write fell within the loss window (the fixture's archive switch right
    # before the writer restarts archive_timeout's clock; the writer stops ~2 s later): how long that window was
    span_ms = last.t_ms - min(acked.values()) if newest is None else None
    print(f"\nlast acknowledged id {last.id}, newest recovered id {newest} ({len(ids)} of {len(acked)} rows; "
          + (f"{gap_ms} ms older" if newest is not None else f"all {span_ms} ms of writes lost") +
          "; bound archive_timeout 5 s + 5 s); the app wrote again through the same URL")
