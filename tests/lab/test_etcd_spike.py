"""Issue 28 spike (WP3): etcd 3.4 on three lab hosts and Patroni 3.0.2 adopting a Debian cluster, without systemd.

A scratch lab of its own (own dir, bridge ``hcbt<N>``, subnet ``10.0.<N>.0/24``, N free on this machine: see
``hcbpg.lab.core.scratch_config``) with only three server hosts, named as issue 28 places the voters
(``server-postgres-1``, ``server-postgres-2``, ``hcb-jumpbox``): no S3, no API stand-in, no source.  Every daemon
runs detached, started and stopped by its pid through ServiceControl over SSH.  Files are WP1's renderers
(``hcbpg.desired.etcd``, ``hcbpg.desired.patroni``) on the committed production params moved onto the lab, with the
CA made like hcbpg's (``hcbpg.desired.certs.render_ca``).

Proven: etcd with mutual peer and client TLS healthy on three members; a client without a certificate refused;
the raft leader killed by pid → the two others acknowledge a write; a second member killed → no quorum (a write
times out, a serializable read still answers); both back → healthy with the writes.  Auth on the way the design
says (root by its certificate's CN over gRPC, Patroni by password through the gateway, which refuses any client
certificate with a CN).  Patroni adopts a cluster made by ``pg_createcluster`` and stopped by ``pg_ctlcluster``
(same system identifier; ``pg_lsclusters``, ``pg_conftool``, ``pg_ctlcluster reload`` still work; what Patroni
rewrites); a replica by pg_basebackup, over TLS, the sync standby; a switchover by ``POST /switchover`` (refused
without the REST password) while a writer measures the time without an acknowledged write.  Timings are printed
(``-s``) and recorded in /work/notes/patroni-spike.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hcbpg.adapters.host import Host
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import etcd as detcd
from hcbpg.desired import patroni as dp
from hcbpg.desired import tls as dtls
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.certs import Ca, key_pem, render_ca
from hcbpg.desired.services import etcd_service, patroni_service
from hcbpg.lab import Lab
from hcbpg.lab.core import LabConfig, run, scratch_config
from hcbpg.lab.hosts import create_host, ensure_bridge, host_exec
from hcbpg.params import Params, parse_params

from nbutil import REPO

pytestmark = pytest.mark.lab

#: the two database servers, then the jumpbox: etcd's three voters as issue 28 places them
NAMES = ("server-postgres-1", "server-postgres-2", "hcb-jumpbox")
OFFSETS = (31, 32, 33)
TLS_DIR = detcd.TLS_DIR
CONF = detcd.CONF_PATH
CLIENT_PORT = 2379
#: the environment's CA where every machine has it (params' environment: production, moved onto the lab)
CA_PATH = "/etc/hcbpg/tls/production-postgres-ca.crt"


def render_member_cert(ca: Ca, name: str, ip: str | None, *, days: int = 2,
                       server: bool = True) -> tuple[str, str]:
    """A member's certificate: CN = its name, SAN its IP and 127.0.0.1, serverAuth + clientAuth (peers are both);
    without *ip* and *server*, a client's (Patroni's: CN=patroni, clientAuth only)."""
    now = dt.datetime.now(dt.timezone.utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(a)) for a in ((ip, "127.0.0.1") if ip else ())]
                + [x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


def spike_params(cfg: LabConfig, ips: dict[str, str], **patroni: object) -> Params:
    """The committed production params moved onto the scratch lab's subnet, with Patroni and the jumpbox: what
    hcbpg.desired.etcd renders each member's file from (*patroni* over the spike's replication.patroni)."""
    d = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    d["network"].update(subnet=cfg.subnet, ip_range="10.0.0.0/8")
    d["servers"] = [{"name": NAMES[0], "private_ip": ips[NAMES[0]], "role": "primary"},
                    {"name": NAMES[1], "private_ip": ips[NAMES[1]], "role": "replica"}]
    d["replication"].update(manager="patroni", connection_limit=5,
                            patroni={"scope": "hcb-spike", "rest_password": "env:HCBPG_SPIKE_UNUSED",
                                     "watchdog": "off", "create_replica_methods": ["basebackup"], **patroni},
                            etcd={"patroni_password": "env:HCBPG_SPIKE_UNUSED", "heartbeat_ms": 200,
                                  "election_ms": 2000})
    d["jumpbox"] = {"name": NAMES[2], "private_ip": ips[NAMES[2]]}
    params = parse_params(d)
    assert dtls.client_ca_path(params) == CA_PATH
    return params


def render_etcd_conf(params: Params, name: str) -> str:
    """hcbpg's member file (hcbpg.desired.etcd), and etcd's gRPC gateway on: Patroni's etcd3 client speaks JSON to
    /v3/*, which etcd 3.4.23 answers only with ``enable-grpc-gateway: true`` when it reads a config file (the flag
    defaults on, the YAML key off: without it Patroni logs '404 page not found' and 'waiting on etcd' forever)."""
    text = detcd.render_etcd_conf(params, name)
    if "enable-grpc-gateway" not in text:
        text += "enable-grpc-gateway: true\n"
    return text


def etcdctl(endpoints: list[str], *args: str, timeout: str = "3s") -> str:
    """An etcdctl line with the member's own certificate as the client's (it carries clientAuth)."""
    eps = ",".join(f"https://{e}:{CLIENT_PORT}" for e in endpoints)
    return shlex.join(["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={eps}", f"--cacert={CA_PATH}",
                       f"--cert={TLS_DIR}/member.crt", f"--key={TLS_DIR}/member.key",
                       f"--dial-timeout={timeout}", f"--command-timeout={timeout}", *args])


@dataclass
class SpikeLab:
    cfg: LabConfig
    hosts: dict[str, Host]
    ips: dict[str, str]
    ca: Ca
    control: dict[str, ServiceControl]
    params: Params
    #: the members a test killed and a later one starts again
    killed: list[str] = field(default_factory=list)

    def exec(self, name: str, command: str, **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
        return host_exec(self.cfg, name, command, **kw)


def build_spike_lab(cfg: LabConfig, names: tuple[str, ...] = NAMES) -> SpikeLab:
    """Bridge, an operator key, and *names* as lab server hosts with sshd (nothing else of a lab)."""
    for d, mode in ((cfg.lab_dir, 0o755), (cfg.ssh_dir, 0o700), (cfg.tls_dir, 0o755), (cfg.hosts_dir, 0o700),
                    (cfg.logs_dir, 0o700)):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
    if not cfg.ssh_key.is_file():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hcbpg-spike", "-f", str(cfg.ssh_key)])
    ensure_bridge(cfg)
    key = cfg.ssh_key.with_suffix(".pub").read_text()
    ips = {n: cfg.address(o) for n, o in zip(names, OFFSETS, strict=False)}
    for n, ip in ips.items():
        create_host(cfg, n, "server", ip, [key])
    hosts = {n: Host(n, ip, key_file=str(cfg.ssh_key), known_hosts=cfg.known_hosts, connect_timeout=5,
                     echo=lambda _line: None) for n, ip in ips.items()}
    control = {n: ServiceControl.of(h) for n, h in hosts.items()}
    return SpikeLab(cfg, hosts, ips, render_ca("spike"), control, spike_params(cfg, ips))


def put_etcd_files(spike: SpikeLab) -> None:
    """CA, member certificate and key, configuration and data dir on every member."""
    for n, h in spike.hosts.items():
        crt, key = render_member_cert(spike.ca, n, spike.ips[n])
        h.run(f"install -d -m 0755 /etc/hcbpg/tls && install -d -o etcd -g etcd -m 0750 {TLS_DIR} && "
              f"install -d -o etcd -g etcd -m 0700 {spike.params.replication.etcd.data_dir}")
        h.put_text(CA_PATH, spike.ca.cert_pem, mode=0o644)
        h.put_text(f"{TLS_DIR}/member.crt", crt, mode=0o644, owner="etcd")
        h.put_text(f"{TLS_DIR}/member.key", key, mode=0o600, owner="etcd")
        h.put_text(CONF, render_etcd_conf(spike.params, n), mode=0o640, group="etcd")


def endpoint_health(spike: SpikeLab, via: str) -> tuple[int, list[dict]]:
    """``etcdctl endpoint health --cluster -w json`` from member *via*: its exit code and rows."""
    # --cluster asks a member for the member list first: the endpoint given must answer
    res = spike.hosts[via].probe(etcdctl([spike.ips[via]], "endpoint", "health", "--cluster", "-w", "json"))
    try:
        rows = json.loads(res.stdout or "[]")
    except ValueError:
        rows = []
    return res.exit_code, rows


@pytest.fixture(scope="module")
def spike() -> Iterator[SpikeLab]:
    from conftest import skip_unless_lab_possible

    skip_unless_lab_possible()
    for tool in ("/usr/bin/etcd", "/usr/bin/etcdctl"):
        if subprocess.run(["test", "-x", tool]).returncode != 0:
            pytest.fail(f"{tool} is missing: scripts/install.sh installs etcd-server and etcd-client")
    Lab.sweep_scratch()
    cfg = scratch_config("hcbpg-lab-test-")
    lab: SpikeLab | None = None
    try:
        lab = build_spike_lab(cfg)
        yield lab
    finally:
        for h in (lab.hosts.values() if lab else ()):
            h.close()
        Lab(cfg.lab_dir).down(purge=True)


def test_hosts_have_no_systemd_so_daemons_run_from_pidfiles(spike):
    assert {c.manager for c in spike.control.values()} == {"pidfile"}
    for c in spike.control.values():
        st = c.get_status(etcd_service(spike.params))
        assert not st.running and st.pid is None and "no pidfile" in st.detail


def test_three_members_with_mutual_tls_become_healthy(spike):
    put_etcd_files(spike)
    spec = etcd_service(spike.params)
    t0 = time.monotonic()
    for c in spike.control.values():
        out = c.ensure_running(spec)
        assert out.changed and any("start etcd detached" in a for a in out.actions)
    started = time.monotonic() - t0
    deadline = time.monotonic() + 30
    while True:
        code, rows = endpoint_health(spike, NAMES[0])
        if code == 0 and len(rows) == 3 and all(r["health"] for r in rows):
            break
        assert time.monotonic() < deadline, f"not healthy after 30 s: exit {code}, {rows}"
        time.sleep(0.2)
    healthy = time.monotonic() - t0
    print(f"\netcd x3: started in {started:.1f}s (ServiceControl over SSH), healthy {healthy:.1f}s after the first")
    members = json.loads(spike.hosts[NAMES[0]].probe(etcdctl([spike.ips[NAMES[0]]], "member", "list", "-w",
                                                             "json")).stdout)
    assert sorted(m["name"] for m in members["members"]) == sorted(NAMES)
    assert all(u.startswith("https://") for m in members["members"] for u in m["peerURLs"] + m["clientURLs"])
    # the daemon's own pid is in the pidfile: its argv, its user
    for n, c in spike.control.items():
        st = c.get_status(spec)
        assert st.running and st.pid
        who = spike.exec(n, f"ps -o user=,args= -p {st.pid}").stdout.split()
        assert who[:2] == ["etcd", "/usr/bin/etcd"], who
    # a second ensure_running changes nothing
    assert not any(c.ensure_running(spec).changed for c in spike.control.values())


def test_a_client_without_a_ca_signed_certificate_is_refused(spike):
    ip = spike.ips[NAMES[0]]
    h = spike.hosts[NAMES[0]]
    res = h.probe(shlex.join(["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints=https://{ip}:{CLIENT_PORT}",
                              f"--cacert={CA_PATH}", "--dial-timeout=2s", "--command-timeout=2s", "get", "x"]))
    assert res.exit_code != 0, res.output
    plain = h.probe(f"curl -sS --max-time 2 http://{ip}:{CLIENT_PORT}/health")
    assert plain.exit_code != 0 or "health" not in plain.stdout


def raft_leader(spike: SpikeLab, via: str) -> str:
    """The member etcd's raft leader is, by name (``endpoint status --cluster``)."""
    # with a member down the command exits 1 but still prints the others' status
    rows = json.loads(spike.hosts[via].probe(etcdctl([spike.ips[via]], "endpoint", "status", "--cluster", "-w",
                                                     "json")).stdout)
    by_id = {r["Status"]["header"]["member_id"]: r["Endpoint"] for r in rows}
    leader_url = by_id[rows[0]["Status"]["leader"]]
    return next(n for n, ip in spike.ips.items() if f"//{ip}:" in leader_url)


def put_until_acknowledged(spike: SpikeLab, via: str, endpoints: list[str], key: str, value: str,
                           timeout: float = 20) -> float:
    """Seconds until ``etcdctl put`` (3 s per try) through *endpoints* is acknowledged."""
    t0 = time.monotonic()
    until(f"put {key} acknowledged", lambda: spike.hosts[via].probe(etcdctl(endpoints, "put", key, value)).ok,
          timeout, interval=0.05)
    return time.monotonic() - t0


def test_raft_leader_killed_by_pid_the_others_still_answer(spike):
    spec = etcd_service(spike.params)
    leader = raft_leader(spike, NAMES[0])
    a, b = [n for n in NAMES if n != leader]
    eps = [spike.ips[a], spike.ips[b]]
    spike.hosts[a].run(etcdctl(eps, "put", "/spike/before", "1"))
    pid = spike.control[leader].signal(spec, "KILL")
    assert pid and not spike.control[leader].get_status(spec).running
    took = put_until_acknowledged(spike, a, eps, "/spike/one-down", "2")
    got = spike.hosts[b].run(etcdctl([spike.ips[b]], "get", "--print-value-only", "/spike/one-down")).stdout
    assert got.strip() == "2"
    assert raft_leader(spike, a) in (a, b)
    code, rows = endpoint_health(spike, a)
    assert code != 0 and sorted(r["health"] for r in rows) == [False, True, True], rows
    spike.killed.append(leader)
    print(f"\nthe raft leader {leader} killed (pid {pid}): a write through the two others acknowledged {took:.2f}s "
          "after the kill (a new leader elected: election timeout 2 s)")


def test_two_members_killed_no_quorum_then_back(spike):
    spec = etcd_service(spike.params)
    [first] = spike.killed
    a, b = [n for n in NAMES if n != first]
    pid = spike.control[b].signal(spec, "KILL")
    assert pid
    t0 = time.monotonic()
    res = spike.hosts[a].probe(etcdctl([spike.ips[a]], "put", "/spike/no-quorum", "3", timeout="3s"))
    took = time.monotonic() - t0
    assert res.exit_code != 0, res.output
    assert "deadline exceeded" in res.output or "timed out" in res.output or "leader" in res.output, res.output
    health = spike.hosts[a].probe(etcdctl([spike.ips[a]], "endpoint", "health", "-w", "json"))
    assert health.exit_code != 0
    print(f"\ntwo members killed: a write fails after {took:.1f}s: {res.output.strip().splitlines()[-1][:200]}")
    # linearizable reads fail too; a serializable read of the survivor still answers (stale by design)
    stale = spike.hosts[a].probe(etcdctl([spike.ips[a]], "get", "--consistency=s", "--print-value-only",
                                         "/spike/before"))
    assert stale.ok and stale.stdout.strip() == "1", stale.output
    t1 = time.monotonic()
    for n in (first, b):
        assert spike.control[n].ensure_running(spec).changed
    until("three healthy members", lambda: (lambda r: r[0] == 0 and len(r[1]) == 3)(endpoint_health(spike, a)), 30,
          interval=0.2)
    back = time.monotonic() - t1
    got = spike.hosts[first].run(etcdctl([spike.ips[first]], "get", "--print-value-only", "/spike/one-down")).stdout
    assert got.strip() == "2"  # what the two had while the third was down reached it
    spike.killed.clear()
    print(f"\nboth started again: healthy {back:.1f}s later, the write made while one was down is on all three")


# Patroni 3.0.2 over that etcd, adopting a cluster made by pg_createcluster (issue 28 R13) ---------------------

REST_PORT = 8008
PG_CONF_DIR = "/etc/postgresql/15/main"
PG_DATA = "/var/lib/postgresql/15/main"
#: what hcbpg's conf.d holds in the spike: max_connections differs from the DCS's on purpose (the command line wins)
CONF_D = "conf.d/20-hcbpg-spike.conf"
SHAPE = ServerShape("ccx13", cores=2, memory_gb=8.0, disk_gb=80)


def render_etcd_client_cert(ca: Ca) -> tuple[str, str]:
    """Patroni's client certificate for etcd: clientAuth and **no subject at all**.  With client-cert-auth, the JSON
    gateway and auth all on, etcd 3.4 answers 400 'CommonName of client sending a request against gateway will be
    ignored and not used as expected' to any certificate with a CN (embed/serve.go), and Patroni only speaks to
    the gateway; it authenticates with its user and password instead."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


def rest(spike: SpikeLab, name: str, path: str, timeout: float = 5) -> tuple[int, str]:
    """GET on *name*'s REST API (TLS, the environment's CA) from the machine: safe verbs need no client
    certificate and no password, and the allowlist holds for unsafe ones only."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cadata=spike.ca.cert_pem)
    try:
        with urllib.request.urlopen(f"https://{spike.ips[name]}:{REST_PORT}{path}", timeout=timeout,
                                    context=ctx) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def rest_post(spike: SpikeLab, target: str, path: str, body: dict, *, auth: bool = True) -> tuple[int, str]:
    """POST on member *target* to its own REST API (as WP1's PatroniApi does: its address is in the allowlist, its
    netrc names it), with its REST certificate and, when *auth*, the password from the netrc (nothing on argv)."""
    via = target
    words = ["curl", "-sS", "--max-time", "60", "-w", "\\n%{http_code}", "--cacert", CA_PATH, "--cert", dp.REST_CERT,
             "--key", dp.REST_KEY, "-X", "POST", f"https://{spike.ips[target]}:{REST_PORT}{path}", "-d", json.dumps(body)]
    if auth:
        words[1:1] = ["--netrc-file", dp.rest_netrc_path(spike.params)]
    out = spike.hosts[via].run(shlex.join(words), check=False).stdout
    text, _, code = out.rpartition("\n")
    return int(code or 0), text


def until(what: str, probe, timeout: float, interval: float = 0.1, done=bool):  # noqa: ANN001, ANN201
    """Poll *probe* until ``done(value)``; that value (fails the test naming *what* and the last value at the
    deadline)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if done(last):
            return last
        time.sleep(interval)
    pytest.fail(f"{what}: not after {timeout:.0f}s (last: {last!r})")


def member_status(spike: SpikeLab, name: str) -> dict:
    code, text = rest(spike, name, "/patroni", timeout=2)
    return json.loads(text) if code in (200, 503) and text.startswith("{") else {}


def cluster(spike: SpikeLab, via: str) -> dict[str, dict]:
    code, text = rest(spike, via, "/cluster", timeout=2)
    return {m["name"]: m for m in json.loads(text)["members"]} if code == 200 else {}


def psql(h: Host, sql: str) -> str:
    return h.run(f"psql -XAt -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}", sudo_user="postgres").stdout.strip()


def make_debian_cluster(spike: SpikeLab, name: str) -> Host:
    """pg_createcluster 15 main, TLS as hcbpg gives it (a CA-signed certificate naming the private IP), hcbpg-like
    conf.d and pg_hba lines (not started)."""
    h = spike.hosts[name]
    h.run("pg_createcluster 15 main --locale C.UTF-8 >/dev/null")
    ip = spike.ips[name]
    crt, key = render_member_cert(spike.ca, name, ip)
    h.run(f"install -d -o postgres -g postgres -m 0750 {dtls.server_tls_dir(spike.params)}")
    h.put_text(dtls.server_cert_path(spike.params), crt, owner="postgres")
    h.put_text(dtls.server_key_path(spike.params), key, owner="postgres", mode=0o600)
    h.put_text(f"{PG_CONF_DIR}/{CONF_D}", f"listen_addresses = 'localhost,{ip}'\nmax_connections = 250\n"
               "work_mem = '7MB'\nwal_level = replica\nwal_log_hints = on\nhot_standby = on\nssl = on\n"
               f"ssl_cert_file = '{dtls.server_cert_path(spike.params)}'\n"
               f"ssl_key_file = '{dtls.server_key_path(spike.params)}'\n", owner="postgres")
    role = spike.params.replication.role
    hba = h.read_text(f"{PG_CONF_DIR}/pg_hba.conf") or ""
    h.put_text(f"{PG_CONF_DIR}/pg_hba.conf", hba + f"hostssl replication {role} {spike.cfg.subnet} scram-sha-256\n"
               f"hostssl postgres {role} {spike.cfg.subnet} scram-sha-256\n"
               f"host all all {spike.cfg.subnet} scram-sha-256\n", owner="postgres", mode=0o640)
    return h


def put_patroni_files(spike: SpikeLab, name: str, secrets: dict[str, str]) -> None:
    """WP1's files (hcbpg.desired.patroni): patroni.yml and secrets.yml in the config directory, the REST
    certificate (server + client: members call each other), etcd's client certificate, the REST netrc."""
    h = spike.hosts[name]
    server = next(s for s in spike.params.servers if s.name == name)
    crt, key = render_member_cert(spike.ca, name, spike.ips[name])
    ecrt, ekey = render_etcd_client_cert(spike.ca)
    # /etc/patroni stays the package's (root): the REST netrc beside it is root's (hcbpg refuses a root file in a
    # directory another user can change)
    h.run(f"install -d -o postgres -g postgres -m 0750 {dp.TLS_DIR} {dp.config_dir(spike.params)}")
    h.put_text(dp.REST_CERT, crt, owner="postgres")
    h.put_text(dp.REST_KEY, key, owner="postgres", mode=0o600)
    h.put_text(dp.ETCD_CLIENT_CERT, ecrt, owner="postgres")
    h.put_text(dp.ETCD_CLIENT_KEY, ekey, owner="postgres", mode=0o600)
    h.put_text(dp.config_path(spike.params), dp.render_patroni_yaml(spike.params, server, shape=SHAPE),
               owner="postgres", mode=0o600)
    h.put_text(dp.secrets_path(spike.params), dp.render_patroni_secrets(spike.params, dp.PatroniSecrets(
        rest_password=secrets["rest"], etcd_password=secrets["etcd"], replication_password=secrets["replication"])),
        owner="postgres", mode=0o600)
    h.put_text(dp.rest_netrc_path(spike.params), dp.render_rest_netrc(spike.params, server, secrets["rest"]),
               mode=0o600)


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    import secrets as pysecrets

    # awkward characters on purpose: they travel through secrets.yml, a netrc and etcd's stdin
    return {k: pysecrets.token_urlsafe(15) + suffix for k, suffix in
            (("replication", "-r"), ("app", "-a"), ("rest", " &'\"#x"), ("etcd", ":#%e"), ("root", ""))}


def test_etcd_answers_patroni_s_json_gateway(spike):
    # Patroni 3.0.2's etcd3 client POSTs JSON to /v3/...: the gRPC gateway, which the config file must turn on
    h = spike.hosts[NAMES[0]]
    out = h.run(f"curl -sS --cacert {CA_PATH} --cert {TLS_DIR}/member.crt --key {TLS_DIR}/member.key -X POST "
                f"https://{spike.ips[NAMES[0]]}:{CLIENT_PORT}/v3/cluster/member/list -d '{{}}'").stdout
    assert sorted(m["name"] for m in json.loads(out)["members"]) == sorted(NAMES), out


def test_etcd_auth_on_root_by_its_certificate_patroni_by_password(spike, secrets):
    """ops/etcd.ensure_etcd_auth's sequence (design section 4): root works by its certificate's CN over gRPC, Patroni
    by user and password through the gateway, which then refuses any client certificate that has a CN."""
    a = NAMES[0]
    h = spike.hosts[a]
    crt, key = render_member_cert(spike.ca, "root", None, server=False)
    h.run("install -d -m 0700 /run/hcbpg-etcd")
    h.put_text("/run/hcbpg-etcd/root.crt", crt, mode=0o600)
    h.put_text("/run/hcbpg-etcd/root.key", key, mode=0o600)
    e = shlex.join(["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints=https://127.0.0.1:{CLIENT_PORT}",
                    f"--cacert={CA_PATH}", "--cert=/run/hcbpg-etcd/root.crt", "--key=/run/hcbpg-etcd/root.key"])
    h.run(f"{e} user add root --interactive=false", stdin=secrets["root"] + "\n")
    h.run(f"{e} user grant-role root root && {e} role add patroni && "
          f"{e} role grant-permission patroni --prefix=true readwrite {dp.NAMESPACE}")
    h.run(f"{e} user add patroni --interactive=false", stdin=secrets["etcd"] + "\n")
    h.run(f"{e} user grant-role patroni patroni && {e} auth enable")
    assert h.run(f"{e} endpoint health --cluster").ok  # root's CN is a user: gRPC works
    # the member's certificate (CN = its name, no such user) is refused, over gRPC and over the gateway
    denied = h.probe(etcdctl([spike.ips[a]], "get", "/service/x"))
    assert denied.exit_code != 0 and ("user name not found" in denied.output
                                      or "permission denied" in denied.output), denied.output
    url = f"https://{spike.ips[a]}:{CLIENT_PORT}/v3/auth/authenticate"
    cn = h.run(f"curl -sS --cacert {CA_PATH} --cert {TLS_DIR}/member.crt --key {TLS_DIR}/member.key -X POST {url} "
               "-d @-", stdin=json.dumps({"name": "patroni", "password": secrets["etcd"]})).stdout
    assert "CommonName of client sending a request against gateway will be ignored" in cn
    ecrt, ekey = render_etcd_client_cert(spike.ca)
    h.put_text("/run/hcbpg-etcd/nocn.crt", ecrt, mode=0o600)
    h.put_text("/run/hcbpg-etcd/nocn.key", ekey, mode=0o600)
    token = h.run(f"curl -sS --cacert {CA_PATH} --cert /run/hcbpg-etcd/nocn.crt --key /run/hcbpg-etcd/nocn.key "
                  f"-X POST {url} -d @-", stdin=json.dumps({"name": "patroni", "password": secrets["etcd"]})).stdout
    assert json.loads(token)["token"], token
    h.run("rm -rf /run/hcbpg-etcd")


def test_patroni_adopts_a_debian_cluster_stopped_by_pg_ctlcluster(spike, secrets):
    a = NAMES[0]
    h = make_debian_cluster(spike, a)
    h.run("pg_ctlcluster 15 main start")
    role = spike.params.replication.role
    psql(h, f"CREATE ROLE {role} REPLICATION LOGIN PASSWORD '{secrets['replication']}'")
    for fn in ("pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)", "pg_read_binary_file(text)",
               "pg_read_binary_file(text, bigint, bigint, boolean)"):  # pg_rewind's (desired/replication)
        psql(h, f"GRANT EXECUTE ON FUNCTION pg_catalog.{fn} TO {role}")
    psql(h, f"CREATE ROLE app LOGIN PASSWORD '{secrets['app']}'")
    psql(h, "CREATE TABLE spike (id bigserial PRIMARY KEY, at timestamptz DEFAULT now()); "
            "INSERT INTO spike SELECT FROM generate_series(1, 1000); GRANT ALL ON spike, spike_id_seq TO app")
    sysid = h.run(f"/usr/lib/postgresql/15/bin/pg_controldata {PG_DATA} | sed -n 's/^Database system identifier: *//p'",
                  sudo_user="postgres").stdout.strip()
    debian_conf = h.read_text(f"{PG_CONF_DIR}/postgresql.conf")
    hba = h.read_text(f"{PG_CONF_DIR}/pg_hba.conf")
    h.run("pg_ctlcluster 15 main stop")
    put_patroni_files(spike, a, secrets)
    t0 = time.monotonic()
    assert spike.control[a].ensure_running(patroni_service(spike.params)).changed
    st = until("Patroni's leader running", lambda: (lambda s: s if s.get("role") == "master" and s.get("state") ==
                                                     "running" else None)(member_status(spike, a)), 60)
    took = time.monotonic() - t0
    print(f"\nadoption of the stopped Debian cluster: leader running {took:.1f}s after Patroni started "
          f"(timeline {st['timeline']})")
    assert st["database_system_identifier"] == sysid
    # a stopped cluster is started as a standby, then promoted by the leader race: a new timeline
    assert st["timeline"] == 2
    assert psql(h, "SELECT count(*) FROM spike") == "1000"
    [lsc] = json.loads(h.run("pg_lsclusters --json").stdout)
    assert (lsc["running"], lsc["pgdata"], lsc["configdir"]) == (1, PG_DATA, PG_CONF_DIR), lsc
    # Patroni moved Debian's file to postgresql.base.conf untouched and wrote its own postgresql.conf over it
    assert h.read_text(f"{PG_CONF_DIR}/postgresql.base.conf") == debian_conf
    ours = h.read_text(f"{PG_CONF_DIR}/postgresql.conf") or ""
    assert ours.splitlines()[:3] == ["# Do not edit this file manually!", "# It will be overwritten by Patroni!",
                                     "include 'postgresql.base.conf'"]
    assert f"hba_file = '{PG_CONF_DIR}/pg_hba.conf'" in ours and "cluster_name = 'hcb-spike'" in ours
    assert h.read_text(f"{PG_CONF_DIR}/pg_hba.conf") == hba  # pg_hba left alone (no postgresql.pg_hba)
    # conf.d is still read (Debian's base file ends with include_dir), but Patroni's command line wins
    rows = dict(line.split("|", 1) for line in psql(
        h, "SELECT name, setting || '|' || source || '|' || coalesce(sourcefile, '') FROM pg_settings "
           "WHERE name IN ('work_mem', 'max_connections', 'listen_addresses', 'data_directory')").splitlines())
    assert rows["work_mem"] == f"7168|configuration file|{PG_CONF_DIR}/{CONF_D}"
    dcs_max = dp.dcs_parameters(spike.params, SHAPE)["max_connections"]
    assert rows["max_connections"] == f"{dcs_max}|command line|"  # the DCS's (capacity's) over conf.d's 250
    assert h.run("pg_conftool -s 15 main show data_directory").stdout.strip() == PG_DATA  # follows the include
    assert h.run("pg_ctlcluster 15 main reload").ok


def test_patroni_builds_the_replica_with_pg_basebackup(spike, secrets):
    a, b = NAMES[0], NAMES[1]
    h = make_debian_cluster(spike, b)
    h.run(f"rm -rf {PG_DATA} && install -d -o postgres -g postgres -m 0700 {PG_DATA}")
    put_patroni_files(spike, b, secrets)
    t0 = time.monotonic()
    assert spike.control[b].ensure_running(patroni_service(spike.params)).changed
    until("the replica streaming, lag 0", lambda: (lambda m: m.get(b, {}).get("state") == "running" and
                                                  m[b].get("lag") == 0)(cluster(spike, a)), 90)
    streaming = until("pg_stat_replication", lambda: psql(spike.hosts[a], "SELECT application_name || ' ' || state "
                                                          "FROM pg_stat_replication") == f"{b} streaming", 30)
    took = time.monotonic() - t0
    print(f"\nreplica by pg_basebackup: streaming with lag 0 {took:.1f}s after Patroni started")
    assert streaming
    [lsc] = json.loads(h.run("pg_lsclusters --json").stdout)
    assert lsc["running"] == 1 and lsc["recovery"] == 1, lsc
    conf = h.read_text(f"{PG_CONF_DIR}/postgresql.conf") or ""
    assert "primary_slot_name = 'server_postgres_2'" in conf and f"application_name={b}" in conf
    assert "sslmode=verify-full" in conf and f"sslrootcert={CA_PATH}" in conf
    # synchronous_mode (params: on), over TLS
    until("the replica the sync standby over TLS", lambda: psql(spike.hosts[a], "SELECT r.sync_state || ' ' || s.ssl "
          "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"), 30, done=lambda v: v == "sync true")
    until("/cluster's sync_standby", lambda: cluster(spike, a), 30,
          done=lambda m: m.get(b, {}).get("role") == "sync_standby")
    assert psql(h, "SELECT count(*) FROM spike") == "1000"


def test_switchover_through_the_rest_api(spike, secrets):
    import threading

    import psycopg

    a, b = NAMES[0], NAMES[1]
    refused, _ = rest_post(spike, a, "/switchover", {"leader": a, "candidate": b}, auth=False)
    assert refused == 401  # a CA-signed client certificate alone is not enough: basic auth too
    conninfo = (f"host={spike.ips[a]},{spike.ips[b]} port=5432 dbname=postgres user=app password={secrets['app']} "
                "target_session_attrs=read-write connect_timeout=2")
    acks: list[tuple[float, str]] = []
    stop = threading.Event()

    def writer() -> None:  # one connection per write, as a restarted app process would
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as c:
                    server = c.execute("INSERT INTO spike DEFAULT VALUES RETURNING inet_server_addr()::text"
                                       ).fetchone()[0]
                acks.append((time.monotonic(), server.split("/")[0]))
            except psycopg.Error:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        until("first write", lambda: acks, 10)
        t0 = time.monotonic()
        code, text = rest_post(spike, a, "/switchover", {"leader": a, "candidate": b})
        answered = time.monotonic() - t0
        assert code == 200, text
        until("a write on the new leader", lambda: any(s == spike.ips[b] for _t, s in acks), 30)
        until("the old leader a replica with lag 0", lambda: (lambda m: m.get(a, {}).get("role") == "replica" and
                                                             m[a].get("state") == "running" and m[a].get("lag") == 0
                                                             )(cluster(spike, b)), 60)
        rejoined = time.monotonic() - t0
        time.sleep(1)
    finally:
        stop.set()
        t.join(10)
    before = [x for x in acks if x[0] < t0]
    after = [x for x in acks if x[0] >= t0]
    gap = max(n[0] - p[0] for p, n in zip([before[-1], *after], after, strict=False))
    first_new = next(x[0] for x in after if x[1] == spike.ips[b]) - t0
    print(f"\nswitchover: POST answered {code} after {answered:.1f}s; longest time without an acknowledged write "
          f"{gap:.2f}s; first write on the new leader {first_new:.2f}s after the POST; old leader a replica with "
          f"lag 0 {rejoined:.1f}s after it")
    assert gap < 10 and {s for _t, s in after} <= {spike.ips[a], spike.ips[b]}
    assert cluster(spike, b)[b]["role"] == "leader"
    [lsc] = json.loads(spike.hosts[a].run("pg_lsclusters --json").stdout)
    assert lsc["running"] == 1 and lsc["recovery"] == 1, lsc


def test_patroni_stops_its_postgresql_on_term(spike):
    for n in NAMES[:2]:
        out = spike.control[n].ensure_stopped(patroni_service(spike.params))
        assert out.changed
        [lsc] = json.loads(spike.hosts[n].run("pg_lsclusters --json").stdout)
        assert lsc["running"] == 0, lsc


def test_adopting_a_running_primary_keeps_its_postmaster_and_timeline(spike, secrets):
    """The design's route (section 3.2 step 5): Patroni started beside a primary pg_ctlcluster runs, in a DCS that
    has never seen it (another scope), with another ttl in bootstrap.dcs."""
    b = NAMES[1]  # the leader since the switchover
    h = spike.hosts[b]
    h.run("pg_ctlcluster 15 main start")
    before = psql(h, "SELECT pg_postmaster_start_time() || ' ' || timeline_id FROM pg_control_checkpoint()")
    assert psql(h, "SELECT count(*) FROM pg_replication_slots") == "1"  # the old leader's, server_postgres_1
    other = spike_params(spike.cfg, spike.ips, scope="hcb-spike-2", ttl=14)
    server = next(s for s in other.servers if s.name == b)
    h.put_text(dp.config_path(other), dp.render_patroni_yaml(other, server, shape=SHAPE), owner="postgres",
               mode=0o600)
    t0 = time.monotonic()
    assert spike.control[b].ensure_running(patroni_service(other)).changed
    st = until("leader", lambda: member_status(spike, b), 30,
               done=lambda s: s.get("role") == "master" and not s.get("cluster_unlocked"))
    took = time.monotonic() - t0
    after = psql(h, "SELECT pg_postmaster_start_time() || ' ' || timeline_id FROM pg_control_checkpoint()")
    assert after == before  # no restart, no new timeline
    assert st["patroni"]["scope"] == "hcb-spike-2"
    # the cached DCS config in the data dir (patroni.dynamic.json) became /config, not bootstrap.dcs's ttl 14
    code, text = rest(spike, b, "/config")
    assert code == 200 and json.loads(text)["ttl"] == 12, text
    # the other member never registered in this scope: its slot is dropped at once
    until("the unknown slot dropped", lambda: psql(h, "SELECT count(*) FROM pg_replication_slots"), 15,
          done=lambda v: v == "0")
    # cluster_name changed in the file: no pending restart shows until a reload
    assert not st.get("pending_restart")
    assert rest_post(spike, b, "/reload", {})[0] == 202
    until("pending_restart after the reload", lambda: member_status(spike, b), 15,
          done=lambda s: s.get("pending_restart") is True)
    t1 = time.monotonic()
    code, text = rest_post(spike, b, "/restart", {"restart_pending": True})
    assert code == 200, text
    restarted = time.monotonic() - t1
    assert psql(h, "SHOW cluster_name") == "hcb-spike-2"
    print(f"\nadoption of the running primary: leader {took:.1f}s after Patroni started, same postmaster and "
          f"timeline; /config from the cached patroni.dynamic.json (ttl 12, not bootstrap's 14); the other "
          f"member's slot dropped; POST /restart answered after {restarted:.1f}s")
    assert spike.control[b].ensure_stopped(patroni_service(other)).changed


def test_stopped_by_pid_with_term(spike):
    spec = etcd_service(spike.params)
    for c in spike.control.values():
        out = c.ensure_stopped(spec)
        assert out.changed and any(a.startswith("kill -TERM ") for a in out.actions), out.actions
        assert not c.get_status(spec).running
        assert not c.ensure_stopped(spec).changed
