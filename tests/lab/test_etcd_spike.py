"""Issue 28, WP3 spike: etcd 3.4 on three lab hosts without systemd, run by ServiceControl over SSH.

A scratch lab of its own (own dir, bridge ``hcbt<N>``, subnet ``10.0.<N>.0/24``, N free on this machine: see
``hcbpg.lab.core.scratch_config``) with only three server hosts: no S3, no API stand-in, no source.  Each host
runs etcd (Debian's etcd-server 3.4) detached, its pid in ``/run/hcbpg/etcd.pid``, with peer and client TLS
(mutual: ``client-cert-auth``) from a CA made like hcbpg's (:func:`hcbpg.desired.certs.render_ca`).  Proven:
``etcdctl endpoint health --cluster`` passes on all three; one member killed by its pid (SIGKILL) → the other
two still answer writes; a second killed → no quorum (a write times out, health says so); both started again
→ healthy, the writes kept.  Timings are printed (``-s``) and recorded in /work/notes/patroni-spike.md.

The etcd configuration is rendered here, minimal, until WP1's ``hcbpg.desired.etcd`` lands.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hcbpg.adapters.host import Host
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired.certs import Ca, key_pem, render_ca
from hcbpg.desired.services import ServiceSpec
from hcbpg.lab import Lab
from hcbpg.lab.core import LabConfig, run, scratch_config
from hcbpg.lab.hosts import create_host, ensure_bridge, host_exec

pytestmark = pytest.mark.lab

NAMES = ("spike-etcd-1", "spike-etcd-2", "spike-etcd-3")
OFFSETS = (31, 32, 33)
CA_PATH = "/etc/hcbpg/tls/spike-ca.crt"
TLS_DIR = "/etc/etcd/tls"
CONF = "/etc/etcd/hcbpg.yml"
DATA_DIR = "/var/lib/etcd/hcbpg"
CLIENT_PORT, PEER_PORT = 2379, 2380


def etcd_spec() -> ServiceSpec:
    """etcd as the package's unit runs it, its configuration from our file (which makes etcd ignore flags)."""
    return ServiceSpec(name="etcd", user="etcd", home="/var/lib/etcd", argv=("/usr/bin/etcd",),
                       env=(("ETCD_CONFIG_FILE", CONF),), log_file="/var/log/etcd/etcd.log",
                       unit_type="notify", stop_timeout_s=20)


def render_member_cert(ca: Ca, name: str, ip: str, *, days: int = 2) -> tuple[str, str]:
    """A member's certificate: CN = its name, SAN its IP and 127.0.0.1, serverAuth + clientAuth (peers are both)."""
    now = dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca.key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


def render_etcd_conf(name: str, ip: str, members: dict[str, str], token: str) -> str:
    """The member's configuration file (etcd 3.4 keys), lab timings: heartbeat 200 ms, election 2 s."""
    tls = (f"{{cert-file: {TLS_DIR}/member.crt, key-file: {TLS_DIR}/member.key, "
           f"trusted-ca-file: {CA_PATH}, client-cert-auth: true}}")
    initial = ",".join(f"{n}=https://{a}:{PEER_PORT}" for n, a in members.items())
    return "\n".join([
        "# Managed by hcbpg (issue 28 spike): do not edit.",
        f"name: {name}",
        f"data-dir: {DATA_DIR}",
        f"listen-peer-urls: https://{ip}:{PEER_PORT}",
        f"initial-advertise-peer-urls: https://{ip}:{PEER_PORT}",
        f"listen-client-urls: https://{ip}:{CLIENT_PORT},https://127.0.0.1:{CLIENT_PORT}",
        f"advertise-client-urls: https://{ip}:{CLIENT_PORT}",
        f"initial-cluster: {initial}",
        "initial-cluster-state: new",
        f"initial-cluster-token: {token}",
        "heartbeat-interval: 200",
        "election-timeout: 2000",
        "logger: zap",
        f"client-transport-security: {tls}",
        f"peer-transport-security: {tls}",
        "",
    ])


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
    return SpikeLab(cfg, hosts, ips, render_ca("spike"), control)


def put_etcd_files(spike: SpikeLab, token: str) -> None:
    """CA, member certificate and key, configuration and data dir on every member."""
    for n, h in spike.hosts.items():
        crt, key = render_member_cert(spike.ca, n, spike.ips[n])
        h.run(f"install -d -m 0755 /etc/hcbpg/tls && install -d -o etcd -g etcd -m 0750 {TLS_DIR} && "
              f"install -d -o etcd -g etcd -m 0700 {DATA_DIR}")
        h.put_text(CA_PATH, spike.ca.cert_pem, mode=0o644)
        h.put_text(f"{TLS_DIR}/member.crt", crt, mode=0o644, owner="etcd")
        h.put_text(f"{TLS_DIR}/member.key", key, mode=0o600, owner="etcd")
        h.put_text(CONF, render_etcd_conf(n, spike.ips[n], spike.ips, token), mode=0o640, group="etcd")


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
        st = c.get_status(etcd_spec())
        assert not st.running and st.pid is None and "no pidfile" in st.detail


def test_three_members_with_mutual_tls_become_healthy(spike):
    put_etcd_files(spike, token="hcbpg-spike")
    spec = etcd_spec()
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


def test_one_member_killed_by_pid_the_others_still_answer(spike):
    spec = etcd_spec()
    a, b, c = NAMES
    eps = [spike.ips[a], spike.ips[b]]
    spike.hosts[a].run(etcdctl(eps, "put", "/spike/before", "1"))
    t0 = time.monotonic()
    pid = spike.control[c].signal(spec, "KILL")
    assert pid and not spike.control[c].get_status(spec).running
    res = spike.hosts[a].run(etcdctl(eps, "put", "/spike/one-down", "2"))
    took = time.monotonic() - t0
    got = spike.hosts[b].run(etcdctl([spike.ips[b]], "get", "--print-value-only", "/spike/one-down")).stdout
    assert res.ok and got.strip() == "2"
    code, rows = endpoint_health(spike, a)
    assert code != 0 and sorted(r["health"] for r in rows) == [False, True, True], rows
    print(f"\none member killed (pid {pid}): a write through the two others acknowledged {took:.2f}s after the kill")


def test_two_members_killed_no_quorum_then_back(spike):
    spec = etcd_spec()
    a, b, c = NAMES
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
    for n in (b, c):
        assert spike.control[n].ensure_running(spec).changed
    deadline = time.monotonic() + 30
    while True:
        code, rows = endpoint_health(spike, a)
        if code == 0 and len(rows) == 3:
            break
        assert time.monotonic() < deadline, f"not healthy after restarts: {rows}"
        time.sleep(0.2)
    back = time.monotonic() - t1
    got = spike.hosts[c].run(etcdctl([spike.ips[c]], "get", "--print-value-only", "/spike/one-down")).stdout
    assert got.strip() == "2"  # what the two had while the third was down reached it
    print(f"\nboth started again: healthy {back:.1f}s later, the write made while one was down is on all three")


def test_stopped_by_pid_with_term(spike):
    spec = etcd_spec()
    for c in spike.control.values():
        out = c.ensure_stopped(spec)
        assert out.changed and any(a.startswith("kill -TERM ") for a in out.actions), out.actions
        assert not c.get_status(spec).running
        assert not c.ensure_stopped(spec).changed
