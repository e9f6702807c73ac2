"""The lab's ActiveRecord writer with the handed-out multi-host URL (issue 28, WP5/WP6 tooling).

A scratch lab of its own (own dir, bridge, subnet: ``hcbpg.lab.core.scratch_config``) with three hosts: ``app``
and two database servers made the way hcbpg makes them for TLS (the environment's CA, ``render_server_cert``,
``verify-full`` from the app host's copy of the CA).  ``server-postgres-2`` starts as a streaming standby of
``server-postgres-1``.  The URLs are what step 09 hands out under ``replication.manager: patroni``
(``desired.migration.render_role_urls``): the app host holds their file 0600 and the writer reads
DATABASE_URL from it through ActiveRecord's own resolver (``hcbpg/lab/ar_load.rb``); the rails password is a
hostile planted one.

Proven: the writer's acks come from the read-write server; Blazer's ``prefer-standby`` URL reads on the standby;
the roles flip (the standby promoted, ``default_transaction_read_only`` on for the first server and reloaded):
the same writer process, never restarted, acks on the second server; ``faults.cut_network`` on the writing
server: errors, then writes again once healed, while the local writer on that server (psql over its socket) shows
what the cut-off server itself accepted; a first host that drops packets (``faults.partition``): ruby-pg 1.4.5's
default asynchronous connect never reaches the second host (recorded, design R3), libpq's blocking connect does;
``faults.kill_patroni_and_postgres`` ends every postgres process of one host only; no secret in any process's
arguments on the app host or the machine, nor in any file the writers left.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import yaml

from hcbpg.adapters.host import Host
from hcbpg.desired import migration as dm
from hcbpg.desired import tls as dtls
from hcbpg.desired.certs import render_ca, render_server_cert
from hcbpg.lab import Lab, app_load, faults
from hcbpg.lab.core import LabConfig, run, scratch_config
from hcbpg.lab.hosts import create_host, ensure_bridge
from hcbpg.ops.migration.app_checks import check_url_from_app
from hcbpg.params import Params, parse_params
from hcbpg.pg.conninfo import rails_url_value
from hcbpg.pg.scram import scram_verifier

from nbutil import REPO

pytestmark = pytest.mark.lab

S1, S2, APP = "server-postgres-1", "server-postgres-2", "app"
OFFSETS = {APP: 10, S1: 31, S2: 32}
#: planted: hostile to a URL, a shell and a conninfo string alike
PASSWORD = "pl&nted=AR#pw%2 'q\" +ü"
BLAZER_PASSWORD = "bl&zer planted?pw"
CONF_DIR = "/etc/postgresql/15/main"
DATA = "/var/lib/postgresql/15/main"
T = TypeVar("T")


def until(what: str, probe: Callable[[], T], timeout: float, interval: float = 0.1,
          done: Callable[[T], bool] = bool) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if done(last):
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not after {timeout:.0f}s (last: {last!r})")


def lab_params(cfg: LabConfig, ips: dict[str, str]) -> Params:
    """The committed production params on the scratch lab's subnet, replication.manager patroni."""
    d: dict[str, Any] = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    d["network"].update(subnet=cfg.subnet, ip_range="10.0.0.0/8")
    d["servers"] = [{"name": S1, "private_ip": ips[S1], "role": "primary"},
                    {"name": S2, "private_ip": ips[S2], "role": "replica"}]
    d["replication"].update(manager="patroni", connection_limit=5,
                            patroni={"scope": "hcb-ar", "rest_password": "env:HCBPG_AR_UNUSED", "watchdog": "off"},
                            etcd={"patroni_password": "env:HCBPG_AR_UNUSED"})
    d["jumpbox"] = {"name": "hcb-jumpbox", "private_ip": cfg.address(40)}
    return parse_params(d)


@dataclass
class ArLab:
    cfg: LabConfig
    hosts: dict[str, Host]
    ips: dict[str, str]
    params: Params
    urls: dm.AppUrls
    writer: app_load.Writer | None = None
    reader: app_load.Writer | None = None

    def psql(self, name: str, sql: str) -> str:
        return self.hosts[name].run(f"psql -XAt -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}",
                                    sudo_user="postgres").stdout.strip()


def make_server(lab: ArLab, name: str, ca: Any) -> Host:
    """pg_createcluster 15 main with hcbpg's TLS (a CA-signed certificate naming its private IP), listening
    on it, rails by SCRAM over TLS only."""
    h, p, ip = lab.hosts[name], lab.params, lab.ips[name]
    h.run("pg_createcluster 15 main --locale C.UTF-8 >/dev/null")
    crt, key = render_server_cert(ca, p, p.server(name))
    h.run(f"install -d -o postgres -g postgres -m 0750 {dtls.server_tls_dir(p)}")
    h.put_text(dtls.server_cert_path(p), crt, owner="postgres")
    h.put_text(dtls.server_key_path(p), key, owner="postgres", mode=0o600)
    h.put_text(f"{CONF_DIR}/conf.d/20-hcbpg.conf", f"listen_addresses = 'localhost,{ip}'\nssl = on\n"
               f"ssl_cert_file = '{dtls.server_cert_path(p)}'\nssl_key_file = '{dtls.server_key_path(p)}'\n",
               owner="postgres")
    hba = h.read_text(f"{CONF_DIR}/pg_hba.conf") or ""
    h.put_text(f"{CONF_DIR}/pg_hba.conf", hba + f"hostssl replication postgres {lab.cfg.subnet} trust\n"
               f"hostssl hcb_production rails,blazer {lab.cfg.subnet} scram-sha-256\n",
               owner="postgres", mode=0o640)
    return h


@pytest.fixture(scope="module")
def arlab() -> Iterator[ArLab]:
    from conftest import skip_unless_lab_possible

    skip_unless_lab_possible()
    if subprocess.run(["test", "-x", "/usr/bin/ruby"]).returncode != 0:
        pytest.fail("/usr/bin/ruby is missing: scripts/install.sh installs ruby ruby-pg ruby-activerecord")
    Lab.sweep_scratch()
    cfg = scratch_config("hcbpg-lab-test-")
    lab: ArLab | None = None
    try:
        for d, mode in ((cfg.lab_dir, 0o755), (cfg.ssh_dir, 0o700), (cfg.tls_dir, 0o755), (cfg.hosts_dir, 0o700),
                        (cfg.logs_dir, 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hcbpg-ar", "-f", str(cfg.ssh_key)])
        ensure_bridge(cfg)
        key = cfg.ssh_key.with_suffix(".pub").read_text()
        ips = {n: cfg.address(o) for n, o in OFFSETS.items()}
        for n, ip in ips.items():
            create_host(cfg, n, "server", ip, [key])
        hosts = {n: Host(n, ip, key_file=str(cfg.ssh_key), known_hosts=cfg.known_hosts, connect_timeout=5,
                         echo=lambda _line: None) for n, ip in ips.items()}
        params = lab_params(cfg, ips)
        urls = dm.render_role_urls(params, {"DATABASE_URL": ("rails", PASSWORD),
                                            "BLAZER_DATABASE_URL": ("blazer", BLAZER_PASSWORD)},
                                   path=cfg.lab_dir / "app-database-urls.env", target="the lab app")
        lab = ArLab(cfg, hosts, ips, params, urls)
        ca = render_ca("production")
        for h in hosts.values():
            h.run("install -d -m 0755 /etc/hcbpg/tls")
            h.put_text(dtls.client_ca_path(params), ca.cert_pem, mode=0o644)
        make_server(lab, S1, ca)
        hosts[S1].run("pg_ctlcluster 15 main start")
        sql = (f"CREATE ROLE rails LOGIN PASSWORD '{scram_verifier(PASSWORD)}';\n"
               f"CREATE ROLE blazer LOGIN PASSWORD '{scram_verifier(BLAZER_PASSWORD)}';\n"
               "CREATE DATABASE hcb_production OWNER rails;\n\\c hcb_production\n"
               "CREATE TABLE events (id bigserial PRIMARY KEY, user_id bigint NOT NULL, name varchar NOT NULL,\n"
               "  properties jsonb NOT NULL DEFAULT '{}', created_at timestamp(6) NOT NULL);\n"
               "ALTER TABLE events OWNER TO rails;\nGRANT SELECT ON events TO blazer;\n")
        hosts[S1].run("psql -X -q -v ON_ERROR_STOP=1 -f -", sudo_user="postgres", stdin=sql)
        # the second server: a streaming standby of the first (TLS, verified), then started
        make_server(lab, S2, ca)
        hosts[S2].run(f"rm -rf {DATA} && pg_basebackup -c fast -X stream -R -D {DATA} -d "
                      + shlex.quote(f"host={ips[S1]} user=postgres {dtls.conninfo_tls(params)}"),
                      sudo_user="postgres", timeout=120)
        hosts[S2].run("pg_ctlcluster 15 main start")
        until("the standby streams", lambda: lab.psql(S1, "SELECT count(*) FROM pg_stat_replication"), 20,
              done=lambda n: n == "1")
        # the app host holds the handed-out file as Hatchbox would: 0600
        app_load.put_env_file(hosts[APP], urls.text)
        yield lab
    finally:
        if lab is not None:
            for w in (lab.writer, lab.reader):
                if w is not None:
                    app_load.stop_writer(lab.hosts[APP], w)
            for h in lab.hosts.values():
                h.close()
        Lab(cfg.lab_dir).down(purge=True)


def acks_since(lab: ArLab, t_ms: int) -> list[app_load.Ack]:
    assert lab.writer is not None
    return [a for a in app_load.read_writer_log(lab.hosts[APP], lab.writer).acks if a.t_ms >= t_ms]


def now_ms() -> int:
    return int(time.time() * 1000)


def test_the_handed_out_url_names_both_servers_and_the_app_file_is_0600(arlab):
    url = arlab.urls.values["DATABASE_URL"]
    assert url.startswith(f"postgresql:hcb_production?host={arlab.ips[S1]},{arlab.ips[S2]}&port=5432,5432&")
    mode = arlab.hosts[APP].run(f"stat -c %a {app_load.AR_ENV_FILE}").stdout.strip()
    assert mode == "600"
    # step 09's check from the app host (psql with every host and target_session_attrs, password on stdin)
    check = check_url_from_app(arlab.hosts[APP], arlab.params, url)
    assert check.status == "pass" and check.detail == "connected as rails|hcb_production|f", check
    blazer = check_url_from_app(arlab.hosts[APP], arlab.params, arlab.urls.values["BLAZER_DATABASE_URL"])
    assert blazer.status == "fail" and blazer.detail == "connected as blazer|hcb_production|t", blazer  # the standby


def test_the_ar_writer_writes_on_the_read_write_server_and_blazer_reads_on_the_standby(arlab):
    app = arlab.hosts[APP]
    t0 = now_ms()
    arlab.writer = app_load.start_ar_writer(app, rate=20)
    arlab.reader = app_load.start_ar_writer(app, name="blazer-read", var="BLAZER_DATABASE_URL", rate=5, mode="read")
    acks = until("10 acks", lambda: acks_since(arlab, t0), 30, done=lambda a: len(a) >= 10)
    assert {a.server for a in acks} == {arlab.ips[S1]}, acks
    reads = until("3 reads", lambda: app_load.read_writer_log(app, arlab.reader).reads, 20, done=lambda r: len(r) >= 3)
    assert {r.server for r in reads} == {arlab.ips[S2]}, reads
    log = app_load.read_writer_log(app, arlab.writer)
    assert log.errors == [], log.errors
    ids = ",".join(str(a.id) for a in acks)
    found = arlab.hosts[S1].run("psql -XAt -d hcb_production -c " + shlex.quote(
        f"SELECT count(*) FROM events WHERE id IN ({ids})"), sudo_user="postgres").stdout.strip()
    assert found == str(len(acks))


def test_the_roles_flip_and_the_same_writer_acks_on_the_second_server(arlab):
    app = arlab.hosts[APP]
    assert arlab.writer is not None
    pid = app_load.writer_pid(app, arlab.writer)
    assert pid is not None
    t0 = now_ms()
    arlab.psql(S2, "SELECT pg_promote()")
    arlab.psql(S2, "ALTER SYSTEM SET default_transaction_read_only = off")
    arlab.psql(S2, "SELECT pg_reload_conf()")
    arlab.psql(S1, "ALTER SYSTEM SET default_transaction_read_only = on")
    arlab.psql(S1, "SELECT pg_reload_conf()")
    moved = until("acks on the second server", lambda: [a for a in acks_since(arlab, t0) if a.server == arlab.ips[S2]],
                  30, done=lambda a: len(a) >= 10)
    first = moved[0].t_ms
    later = acks_since(arlab, first)
    assert {a.server for a in later} == {arlab.ips[S2]}, later[:5]
    assert app_load.writer_pid(app, arlab.writer) == pid, "the writer was restarted"
    errors = [e for e in app_load.read_writer_log(app, arlab.writer).errors if e.t_ms >= t0]
    print(f"\nflip: first ack on {S2} {first - t0} ms after the flip began; {len(errors)} error(s) on the way: "
          f"{sorted({e.cls for e in errors})}")


def test_a_cut_network_means_errors_then_writes_again_once_healed(arlab):
    app = arlab.hosts[APP]
    assert arlab.writer is not None
    # the local writer on the writing server (psql over its socket): what the cut-off server itself accepts
    local = app_load.start_local_writer(arlab.hosts[S2], label=arlab.ips[S2], database="hcb_production", rate=20)
    until("the local writer's first ack", lambda: app_load.read_writer_log(arlab.hosts[S2], local).acks, 10)
    t_cut = now_ms()
    faults.cut_network(arlab.cfg, S2)
    try:
        assert faults.link_state(arlab.cfg, S2) == "DOWN"
        until("an error logged", lambda: [e for e in app_load.read_writer_log(app, arlab.writer).errors
                                          if e.t_ms >= t_cut], 20)
        time.sleep(1.0)
    finally:
        faults.heal_network(arlab.cfg, S2)
    t_heal = now_ms()
    back = until("acks after the heal", lambda: [a for a in acks_since(arlab, t_heal) if a.server == arlab.ips[S2]],
                 40, done=lambda a: len(a) >= 5)
    log = app_load.read_writer_log(app, arlab.writer)
    during = [a for a in log.acks if t_cut + 50 <= a.t_ms < t_heal]
    assert during == [], f"acks while the writing server was cut: {during[:3]}"
    errors = [e for e in log.errors if t_cut <= e.t_ms <= t_heal]
    gap = app_load.longest_gap_ms(log.acks, since_ms=t_cut - 1000, until_ms=back[-1].t_ms)
    local_log = app_load.stop_writer(arlab.hosts[S2], local)
    assert local_log.stopped and local_log.errors == [], local_log.errors
    isolated = [a for a in local_log.acks if t_cut < a.t_ms < t_heal]
    assert len(isolated) >= 20 and {a.server for a in isolated} == {arlab.ips[S2]}
    print(f"\nthe cut-off server itself accepted {len(isolated)} local writes while cut (no Patroni here to stop it)")
    print(f"\ncut {t_heal - t_cut} ms: {len(errors)} error(s) {sorted({e.cls for e in errors})}; first ack "
          f"{back[0].t_ms - t_heal} ms after the heal; longest gap without an ack {gap} ms")


def pg_gem_version(app: Host) -> str:
    return app.run("ruby -rpg -e 'print PG::VERSION'").stdout.strip()


def test_a_blackholed_first_host_ruby_pg_1_4_5_async_connect_never_tries_the_second(arlab):
    """Design R3, recorded as it is: on Hetzner's routed network a dead host drops packets (a timeout, not a
    refusal).  The URL's first host (server-postgres-1, read-only now) silently dropped for the app host
    (faults.partition: iptables DROP both ways in its namespace), the writers' sessions on the second ended.

    ruby-pg 1.4.5 (Debian 12) connects asynchronously by default and raises 'timeout expired' on the first host
    without trying the second (ruby-pg issue #618, fixed upstream after it): the default writer writes nothing
    until the partition heals.  The same writer with ``PG::Connection.async_api = false`` (libpq's blocking
    connect, which moves to the next host after connect_timeout) is back on the second server in about
    connect_timeout.  A gem without the bug must behave like the second: then this test says so and fails,
    to be updated."""
    app = arlab.hosts[APP]
    assert arlab.writer is not None
    version = pg_gem_version(app)
    faults.partition(arlab.cfg, S1, [arlab.ips[APP]])
    sync: app_load.Writer | None = None
    try:
        faults.partition(arlab.cfg, S1, [arlab.ips[APP]])  # idempotent: one rule each way
        rules = run(["ip", "netns", "exec", arlab.cfg.netns(S1), "iptables", "-S"]).stdout
        assert rules.count(f"{arlab.ips[APP]}/32 -j DROP") == 2, rules
        probe = app.probe(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{arlab.ips[S1]}/5432' && echo open")
        assert "open" not in probe.stdout
        t0 = now_ms()
        sync = app_load.start_ar_writer(app, name="ar-sync", rate=20, pg_async=False)
        first_sync = until("the blocking-connect writer's first ack", lambda: app_load.read_writer_log(app, sync).acks,
                           20)[0]
        t1 = now_ms()
        arlab.psql(S2, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rails'")
        t_term = now_ms() + 300  # an insert already under way when the sessions were ended may still be acked
        sync_back = until("the blocking-connect writer back", lambda: [
            a for a in app_load.read_writer_log(app, sync).acks if a.t_ms > t_term], 20)[0]
        time.sleep(max(0.0, 8 - (now_ms() - t1) / 1000))
        t2 = now_ms()
        default = [a for a in acks_since(arlab, t_term) if a.t_ms <= t2]
        errors = [e for e in app_load.read_writer_log(app, arlab.writer).errors if t_term <= e.t_ms <= t2]
        stderr = app.read_text(arlab.writer.stderr) or ""
    finally:
        faults.heal_partition(arlab.cfg, S1, [arlab.ips[APP]])
        if sync is not None:
            app_load.stop_writer(app, sync)
    assert f"{arlab.ips[APP]}/32" not in run(["ip", "netns", "exec", arlab.cfg.netns(S1), "iptables", "-S"]).stdout
    assert first_sync.server == sync_back.server == arlab.ips[S2]
    assert first_sync.t_ms - t0 >= 1500, "the first host was not tried (no connect_timeout waited)"
    assert 1500 <= sync_back.t_ms - t_term < 8000, sync_back.t_ms - t_term
    t_heal = now_ms()
    healed = until("the default writer back after the heal", lambda: [a for a in acks_since(arlab, t_heal)
                                                                     if a.server == arlab.ips[S2]], 20)
    print(f"\nfirst host blackholed, ruby-pg {version}: blocking connect on {S2} {first_sync.t_ms - t0} ms after "
          f"its start, {sync_back.t_ms - t_term + 300} ms after its session ended; the default (async) writer: {len(default)} "
          f"acks and {len(errors)} errors in {(t2 - t_term) / 1000:.1f} s, back {healed[0].t_ms - t_heal} ms after the heal")
    if version == "1.4.5":
        assert default == [], f"ruby-pg 1.4.5's async connect reached {S2}: issue #618 no longer holds, update R3"
        assert errors and {e.cls for e in errors} == {"ActiveRecord::ConnectionNotEstablished"}, errors
        assert f'at "{arlab.ips[S1]}" ({arlab.ips[S1]}), port 5432 failed: timeout expired' in stderr
    else:
        assert default, (f"ruby-pg {version}: the default writer never reached {S2} past a blackholed first host "
                         "(#618); require a fixed gem or PG::Connection.async_api = false")


def test_kill_patroni_and_postgres_ends_every_postgres_process_of_that_host_only(arlab):
    assert arlab.writer is not None
    # one look at the host: the writer's connections come and go, so two looks differ by the backends forked or
    # ended between them (the fresh-clone run at 2dedc9e saw three forked between two looks)
    procs = faults.host_procs(arlab.cfg, S1)
    mine = faults.select(procs, lambda p: faults.matches(p, comm="postgres"))
    theirs = faults.find_pids(arlab.cfg, S2, comm="postgres")
    assert len(mine) >= 5 and len(theirs) >= 5 and not set(mine) & set(theirs)
    postmaster = faults.select(procs, lambda p: faults.matches(p, cmdline="/usr/lib/postgresql/15/bin/postgres -D"))
    # the postmaster, and any child forked a moment ago that has not set its title yet
    assert postmaster and set(postmaster) <= set(mine)
    assert faults.kill_etcd(arlab.cfg, S1) == []  # nothing of the kind runs: nothing killed
    t0 = now_ms()
    killed = faults.kill_patroni_and_postgres(arlab.cfg, S1)
    # none survives; what was listed and not killed had ended by itself in between (a backend of a connection that
    # closed: the fresh-clone run at 20418ae listed one that was gone by the kill)
    assert faults.find_pids(arlab.cfg, S1, comm="postgres") == []
    assert set(postmaster) & set(killed) and len(set(mine) & set(killed)) >= 5, (postmaster, mine, killed)
    assert set(theirs) <= set(faults.find_pids(arlab.cfg, S2, comm="postgres"))
    # the app writes on on the other server; the killed one starts again from its stale pidfile
    until("acks after the kill", lambda: [a for a in acks_since(arlab, t0) if a.server == arlab.ips[S2]], 10,
          done=lambda a: len(a) >= 5)
    arlab.hosts[S1].run("pg_ctlcluster 15 main start")
    assert arlab.psql(S1, "SHOW default_transaction_read_only") == "on"


def test_no_secret_in_any_process_arguments_nor_in_the_writers_files(arlab):
    app = arlab.hosts[APP]
    assert arlab.writer is not None and arlab.reader is not None
    spellings = {PASSWORD, rails_url_value(PASSWORD), BLAZER_PASSWORD, rails_url_value(BLAZER_PASSWORD),
                 arlab.urls.values["DATABASE_URL"]}
    # the writers run (their arguments are what ps shows), then their files once they stopped
    args_app = app.run("ps -eo args").stdout
    args_machine = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "ar_load.rb" in args_app and "env_file=" in args_app
    logs = {}
    for w in (arlab.writer, arlab.reader):
        app_load.stop_writer(app, w)
        logs[w.log] = app.read_text(w.log) or ""
        logs[w.stderr] = app.read_text(w.stderr) or ""
    arlab.writer = arlab.reader = None
    # every file the writers left (logs, stderr, pidfiles: the blocking-connect writer's too)
    listing = app.run("find /var/log/hcbpg-app /run/hcbpg-app -type f").stdout.split()
    assert len(listing) >= 6, listing
    for path in listing:
        logs[path] = app.read_text(path) or ""
    for where, text in {"ps on the app host": args_app, "ps on the machine": args_machine, **logs}.items():
        for s in spellings:
            assert s not in text, f"a secret in {where}"
    assert all(line == "stopped" or line.split()[0] in "ier" for line in logs[app_load.Writer("ar-load").log]
               .splitlines()), "an unexpected line in the writer's log"
    assert logs[app_load.Writer("ar-load").log].rstrip().endswith("stopped")
