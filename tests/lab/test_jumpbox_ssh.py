"""Issue 28, WP2: SSH to the database servers through the jumpbox, each hop's host key pinned (design §7.4).

A scratch lab of its own (own dir, bridge ``hcbt<N>``, subnet ``10.0.<N>.0/24``: ``hcbpg.lab.core.scratch_config``)
with three lab hosts and nothing else: the jumpbox (``hcb-jumpbox``) and two servers.  On each server an iptables rule
in its network namespace drops SSH from anywhere but the jumpbox's address, as step 01's firewall will: a direct
connection from the operator's machine (the bridge's address) times out, the route through the jumpbox that
``Host.from_params`` builds from params with a ``jumpbox`` runs commands.  A wrong pin for either hop is refused
naming that hop before anything is sent.  The per-command cost of the extra hop is printed (``-s``).
"""

from __future__ import annotations

import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.desired.addresses import Route, ssh_route
from hcbpg.errors import HostKeyError, HostUnreachable
from hcbpg.lab import Lab
from hcbpg.lab.core import LabConfig, run, scratch_config
from hcbpg.lab.hosts import SSHD_LOG, create_host, ensure_bridge, host_exec
from hcbpg.params import Params, parse_params

from nbutil import REPO

pytestmark = pytest.mark.lab

JUMPBOX = "hcb-jumpbox"
SERVERS = ("server-postgres-1", "server-postgres-2")
OFFSETS = {SERVERS[0]: 31, SERVERS[1]: 32, JUMPBOX: 40}
IPTABLES = "/usr/sbin/iptables"


@dataclass
class JumpLab:
    cfg: LabConfig
    ips: dict[str, str]
    params: Params

    def exec(self, name: str, command: str) -> subprocess.CompletedProcess:
        return host_exec(self.cfg, name, command, check=True)

    def accepted(self, name: str) -> int:
        """How many logins the host's sshd has accepted so far (its log, INFO)."""
        return self.exec(name, f"cat {SSHD_LOG}").stdout.count("Accepted publickey")


def lab_params(cfg: LabConfig, ips: dict[str, str], known_hosts: Path) -> Params:
    """The committed production params moved onto the scratch lab, with the jumpbox at its lab address."""
    d = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    d["network"].update(subnet=cfg.subnet, ip_range="10.0.0.0/8")
    d["servers"] = [{"name": SERVERS[0], "private_ip": ips[SERVERS[0]], "role": "primary"},
                    {"name": SERVERS[1], "private_ip": ips[SERVERS[1]], "role": "replica"}]
    d["jumpbox"] = {"name": JUMPBOX, "private_ip": ips[JUMPBOX], "ssh_host": ips[JUMPBOX]}
    d["ssh"].update(key_file=str(cfg.ssh_key), known_hosts=str(known_hosts), connect_timeout=3)
    return parse_params(d)


def drop_ssh_except_from(cfg: LabConfig, name: str, source: str) -> None:
    """What step 01's firewall will do for a database server: SSH only from the jumpbox (iptables in its netns)."""
    ns = cfg.netns(name)
    run(["ip", "netns", "exec", ns, IPTABLES, "-A", "INPUT", "-p", "tcp", "--dport", "22", "!", "-s", source,
         "-j", "DROP"])
    rules = run(["ip", "netns", "exec", ns, IPTABLES, "-S", "INPUT"]).stdout
    assert f"! -s {source}/32 -p tcp -m tcp --dport 22 -j DROP" in rules, rules


def host(jl: JumpLab, name: str, *, known_hosts: Path | None = None, **kw: object) -> Host:
    """The Host that params give for *name* (through the jumpbox for a server), quiet."""
    params = jl.params
    if known_hosts is not None:
        d = params.model_dump(mode="json", exclude_none=True)
        d["ssh"]["known_hosts"] = str(known_hosts)
        params = parse_params(d)
    route = ssh_route(params, name)
    assert route.address is not None
    return Host.from_params(params, name, route.address, echo=lambda _line: None, **kw)


def wrong_pin(jl: JumpLab, name: str, dest: Path) -> Path:
    """A copy of the lab's pinned keys where *name*'s key is another (a new key, as a rebuilt machine offers)."""
    shutil.copyfile(jl.cfg.known_hosts, dest)
    other = hostkeys.generate_host_key("not-the-server").public_line
    hostkeys.pin(dest, "lab", name, [other], address=jl.ips[name])
    return dest


@pytest.fixture(scope="module")
def jl() -> Iterator[JumpLab]:
    from conftest import skip_unless_lab_possible

    skip_unless_lab_possible()
    if not Path(IPTABLES).exists():
        pytest.fail(f"{IPTABLES} is missing: apt-get install iptables (scripts/install.sh should list it, design §7.5)")
    Lab.sweep_scratch()
    cfg = scratch_config("hcbpg-lab-test-")
    try:
        for d, mode in ((cfg.lab_dir, 0o755), (cfg.ssh_dir, 0o700), (cfg.hosts_dir, 0o700), (cfg.logs_dir, 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hcbpg-jumpbox-test", "-f", str(cfg.ssh_key)])
        ensure_bridge(cfg)
        key = cfg.ssh_key.with_suffix(".pub").read_text()
        ips = {n: cfg.address(o) for n, o in OFFSETS.items()}
        for n, ip in ips.items():
            create_host(cfg, n, "server", ip, [key])
        for s in SERVERS:
            drop_ssh_except_from(cfg, s, ips[JUMPBOX])
        yield JumpLab(cfg, ips, lab_params(cfg, ips, cfg.known_hosts))
    finally:
        Lab(cfg.lab_dir).down(purge=True)


def test_params_route_the_servers_through_the_jumpbox(jl):
    for s in SERVERS:
        assert ssh_route(jl.params, s) == Route(jl.ips[s], via=JUMPBOX)
    assert ssh_route(jl.params, JUMPBOX) == Route(jl.ips[JUMPBOX])


def test_a_server_is_not_reachable_directly(jl):
    """The operator's machine (the bridge's address) is not the jumpbox: the server drops its SYN."""
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as ei, host(jl, SERVERS[0], gateway=None, connect_timeout=2) as direct:
        direct.connect()
    took = time.monotonic() - started
    assert ei.value.host == SERVERS[0] and "via" not in ei.value.address
    assert "timed out" in str(ei.value).lower() or "timeout" in str(ei.value).lower(), str(ei.value)
    print(f"\ndirect SSH to {SERVERS[0]} (dropped by its firewall): refused after {took:.2f}s")
    # the jumpbox itself is reachable directly
    with host(jl, JUMPBOX) as jb:
        assert jb.gateway is None
        assert jb.run("hostname", quiet=True).stdout.strip() == JUMPBOX


def test_commands_run_on_both_servers_through_one_jumpbox_connection(jl):
    a, b = host(jl, SERVERS[0]), host(jl, SERVERS[1])
    gw = a.gateway
    assert gw is not None and gw is b.gateway and gw.name == JUMPBOX and gw.address == jl.ips[JUMPBOX]
    try:
        for h in (a, b):
            out = h.run("hostname; echo $SSH_CONNECTION", quiet=True).stdout.split("\n")
            assert out[0] == h.name
            # sshd on the server sees the connection come from the jumpbox's address, to its own private IP
            client_ip, _cport, server_ip, server_port = out[1].split()
            assert (client_ip, server_ip, server_port) == (jl.ips[JUMPBOX], jl.ips[h.name], "22")
        assert gw._users == 2 and gw._conn is not None
        res = a.run("cat", stdin="through the jumpbox\n", quiet=True)
        assert res.stdout == "through the jumpbox\n"
        a.close()
        assert gw._users == 1 and gw._conn is not None, "closed under the other server"
        assert b.run("true", quiet=True).ok
    finally:
        a.close()
        b.close()
    assert gw._users == 0 and gw._conn is None, "the gateway connection outlived the last host behind it"
    # a new host behind it connects it again
    with host(jl, SERVERS[0]) as again:
        assert again.run("hostname", quiet=True).stdout.strip() == SERVERS[0]
    assert gw._conn is None


def test_a_jumpbox_connection_lost_while_idle_is_made_again(jl):
    """The jumpbox's sshd process serving our connection ends (ended by its pid, as a restart would): the server's
    next command finds its connection dead, connects again through a new jumpbox connection and runs once."""
    said: list[str] = []
    with host(jl, SERVERS[0]) as h:
        h.echo = said.append
        assert h.run("hostname", quiet=True).stdout.strip() == SERVERS[0]
        gw = h.gateway
        assert gw is not None and gw._conn is not None
        old = gw._conn
        seen = jl.exec(JUMPBOX, f"ss -Htnp state established '( sport = :22 )' dst {jl.cfg.gateway_ip}").stdout
        pids = sorted(set(re.findall(r"pid=(\d+)", seen)))
        assert pids, seen
        jl.exec(JUMPBOX, f"kill {' '.join(pids)}")
        deadline = time.monotonic() + 10
        while h.connection.client.get_transport().is_active() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not h.connection.client.get_transport().is_active(), "the server's connection outlived the jumpbox's"
        assert h.run("hostname", quiet=True).stdout.strip() == SERVERS[0]
        assert gw._conn is not None and gw._conn is not old and gw._users == 1
        assert [line for line in said if "lost while idle" in line and "via hcb-jumpbox" in line], said
    assert gw._conn is None and gw._users == 0


def test_a_wrong_pin_for_the_jumpbox_is_refused_naming_it(jl, tmp_path):
    kh = wrong_pin(jl, JUMPBOX, tmp_path / "known_hosts")
    before = {n: jl.accepted(n) for n in (JUMPBOX, SERVERS[0])}
    h = host(jl, SERVERS[0], known_hosts=kh)
    with pytest.raises(HostKeyError) as ei:
        h.connect()
    assert ei.value.host == JUMPBOX and ei.value.address == jl.ips[JUMPBOX]
    assert "does not match its pin" in str(ei.value)
    assert {n: jl.accepted(n) for n in before} == before, "a login happened although a key was refused"
    assert h._conn is None and h.gateway is not None and h.gateway._conn is None and h.gateway._users == 0


def test_a_wrong_pin_for_a_server_is_refused_naming_it_and_the_hop(jl, tmp_path):
    kh = wrong_pin(jl, SERVERS[1], tmp_path / "known_hosts")
    before = {n: jl.accepted(n) for n in (JUMPBOX, SERVERS[1])}
    h = host(jl, SERVERS[1], known_hosts=kh)
    with pytest.raises(HostKeyError) as ei:
        h.connect()
    assert ei.value.host == SERVERS[1] and ei.value.address == f"{jl.ips[SERVERS[1]]} via {JUMPBOX}"
    assert f"SSH host key of {SERVERS[1]} ({jl.ips[SERVERS[1]]} via {JUMPBOX}) does not match its pin" in str(ei.value)
    after = {n: jl.accepted(n) for n in before}
    assert after[SERVERS[1]] == before[SERVERS[1]], "the server accepted a login although its key was refused"
    assert after[JUMPBOX] == before[JUMPBOX] + 1  # the first hop was verified and logged in
    assert h._conn is None and h.gateway is not None and h.gateway._conn is None and h.gateway._users == 0


def _per_command(h: Host, n: int = 100) -> list[float]:
    h.connect()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        h.run("true", quiet=True)
        times.append(time.perf_counter() - t)
    return times


def test_per_command_cost_through_the_jumpbox(jl):
    """100 × `true` directly on the jumpbox (one hop), on a server through it (two hops), and the same with the
    gateway's connection acknowledging late as a plain socket does; printed, not asserted."""
    with host(jl, JUMPBOX) as direct:
        one_hop = _per_command(direct)
    with host(jl, SERVERS[0]) as behind:
        assert behind.gateway is not None and behind.gateway._serves
        two_hops = _per_command(behind)
        assert len(behind.history) == 100 and all(r.ok for r in behind.history)
        gw_sock = behind.gateway.connection.client.get_transport().sock
        assert isinstance(gw_sock, socket.socket) and gw_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    plain_gw = Host(JUMPBOX, jl.ips[JUMPBOX], key_file=str(jl.cfg.ssh_key), known_hosts=jl.cfg.known_hosts,
                    echo=lambda _line: None)
    with Host(SERVERS[0], jl.ips[SERVERS[0]], key_file=str(jl.cfg.ssh_key), known_hosts=jl.cfg.known_hosts,
              echo=lambda _line: None, gateway=plain_gw) as late:
        plain_gw._serves = False  # a plain socket on the first hop: delayed ACKs
        delayed = _per_command(late)
    for label, t in (("direct (jumpbox)", one_hop), ("through the jumpbox (server)", two_hops),
                     ("through the jumpbox, delayed ACKs on the first hop", delayed)):
        print(f"\n{label}: 100 x true: total {sum(t):.3f}s, median {statistics.median(t) * 1000:.2f} ms, "
              f"p90 {sorted(t)[89] * 1000:.2f} ms, max {max(t) * 1000:.2f} ms")


def test_status_reaches_both_servers_through_the_jumpbox_only(jl):
    """``hcbpg status`` opens its hosts (``engine.status._open_hosts``) by the params' route: with the jumpbox both
    servers answer through it (sshd sees the jumpbox's address); the same params without ``jumpbox`` go directly,
    where the servers' firewalls drop SSH: both are unreachable."""
    from hcbpg.engine.status import _open_hosts, get_unreachable

    hosts = _open_hosts(jl.params, "lab", 3)
    gw = hosts[SERVERS[0]].gateway
    assert gw is not None and gw.name == JUMPBOX and gw.address == jl.ips[JUMPBOX]
    try:
        for s in SERVERS:
            assert hosts[s].address == jl.ips[s] and hosts[s].gateway is gw and hosts[s].auth_retry_waits == ()
        assert get_unreachable(hosts, 3) == {}
        for s in SERVERS:
            out = hosts[s].run("hostname; echo $SSH_CONNECTION", quiet=True).stdout.split("\n")
            assert out[0] == s and out[1].split()[0] == jl.ips[JUMPBOX]
        assert gw._users == 2
    finally:
        for h in hosts.values():
            h.close()
    assert gw._users == 0 and gw._conn is None
    d = jl.params.model_dump(mode="json", exclude_none=True)
    del d["jumpbox"]
    d.pop("alerting", None)  # the monitor runs on the jumpbox
    d["replication"]["manager"] = "manual"  # without a jumpbox etcd has no third voter: hcbpg's own replication
    direct = _open_hosts(parse_params(d), "lab", 1)
    assert all(h.gateway is None and h.address == jl.ips[n] for n, h in direct.items())
    started = time.monotonic()
    down = get_unreachable(direct, 1)
    assert sorted(down) == list(SERVERS), down
    assert time.monotonic() - started < 3
    for h in direct.values():
        h.close()


def test_the_key_a_server_offers_is_read_through_the_jumpbox(jl):
    """``hostkeys.get_offered_host_key`` with the jumpbox as gateway: the key exchange runs in a channel of the
    jumpbox's connection (no login on the server); directly the server's firewall drops it."""
    before = {s: jl.accepted(s) for s in SERVERS}
    with host(jl, JUMPBOX) as gw:
        for s in SERVERS:
            offered = hostkeys.get_offered_host_key(jl.ips[s], 22, 3, gateway=gw)
            keytype, b64 = offered.split()[:2]
            assert (keytype, b64) in {(p.keytype, p.key) for p in hostkeys.pins_for(jl.cfg.known_hosts, s)}
        with pytest.raises(HostUnreachable) as ei:
            hostkeys.get_offered_host_key(jl.ips[SERVERS[0]], 2222, 3, gateway=gw)  # nothing listens there
        assert f"{jl.ips[SERVERS[0]]}:2222 via {JUMPBOX}" in str(ei.value) and JUMPBOX in str(ei.value)
        assert gw.run("true", quiet=True).ok  # the gateway's connection is still the caller's, open
    assert {s: jl.accepted(s) for s in SERVERS} == before, "reading a host key logged in"
    started = time.monotonic()
    with pytest.raises(HostUnreachable, match="cannot read its host key"):
        hostkeys.get_offered_host_key(jl.ips[SERVERS[1]], 22, 1)
    assert time.monotonic() - started < 3


def test_hcbpg_status_reports_both_servers_reached_through_the_jumpbox(jl, tmp_path, monkeypatch, capsys):
    """``hcbpg status --json`` over params with the jumpbox: neither server is unreachable (the scratch lab's servers
    run no PostgreSQL, so their measurements fail; what is checked is the route), sshd on each saw the jumpbox."""
    import argparse
    import json

    from hcbpg.engine import status

    (tmp_path / "params").mkdir()
    d = jl.params.model_dump(mode="json", exclude_none=True)
    (tmp_path / "params" / f"{jl.params.environment}.yaml").write_text(yaml.safe_dump(d))
    monkeypatch.setenv("HCBPG_HOME", str(tmp_path))
    before = {s: jl.accepted(s) for s in SERVERS}
    args = argparse.Namespace(env=jl.params.environment, json=True, connect_timeout=3, watch=None, strict=False)
    started = time.monotonic()
    status.cmd_status(args)
    took = time.monotonic() - started
    report = json.loads(capsys.readouterr().out)
    assert report["unreachable"] == {}, report["unreachable"]
    assert {m["server"] for m in report["measurements"]} >= set(SERVERS)
    assert all(jl.accepted(s) > before[s] for s in SERVERS)
    assert "Accepted publickey" in jl.exec(SERVERS[0], f"grep 'Accepted publickey' {SSHD_LOG} | tail -1").stdout
    assert jl.ips[JUMPBOX] in jl.exec(SERVERS[0], f"grep 'Accepted publickey' {SSHD_LOG} | tail -1").stdout
    with capsys.disabled():
        print(f"\nhcbpg status through the jumpbox: {took:.2f}s")
