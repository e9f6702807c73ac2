"""Issue 28, WP2: step 01 makes the jumpbox, the two firewalls and delete/rebuild protection (design §7.4, §7.5).

A scratch lab of its own (own dir, bridge ``hcbt<N>``, subnets ``10.0.<N>.0/24`` and ``10.1.<N>.0/24``:
``hcbpg.lab.core.scratch_config``) with the outsider namespace behind the lab router and the Hetzner Cloud API
stand-in run as the lab runs it (``python -m hcbpg.lab.hcloud_api``), with ``--enforce-firewalls``: every firewall
change becomes iptables in the server's namespace (the private network never filtered, as on Hetzner; "public" is
the outsider's subnet).  No app host, no source: step 01 creates every host through the API.

The real notebook runs through the real CLI (``hcbpg plan`` / ``hcbpg run --only 01``) with params holding a
``jumpbox`` and ``hetzner.protection``: the plan lists the jumpbox, its firewall, the public SSH change and the
protection and creates nothing; the run makes the jumpbox first and pins it; from the outsider the servers' port 22
is dropped while the jumpbox's answers; hcbpg runs commands on the servers through the jumpbox; a second run changes
nothing; deleting a protected server through the hcloud client is refused (422 ``protected``); an unpinned server's
key is read through the jumpbox behind the host-key gate; while the jumpbox cannot reach a server, public SSH stays
open (the operator is never locked out).  The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.desired.addresses import ssh_route
from hcbpg.lab import Lab
from hcbpg.lab.core import HCLOUD_PORT, LabConfig, atomic_write, read_state, run, scratch_config, wait_tcp
from hcbpg.lab.hosts import FIREWALL_CHAIN, ensure_bridge, ensure_outsider, host_exec
from hcbpg.lab.lifecycle import LAB_SIGNER
from hcbpg.params import Params, parse_params

from nbutil import REPO
from stages import cli, latest_run_dir

pytestmark = pytest.mark.lab

JUMPBOX = "hcb-jumpbox"
SERVERS = (("server-postgres-1", 31, "primary"), ("server-postgres-2", 32, "replica"))
JUMPBOX_OFFSET = 40


@dataclass
class Env:
    cfg: LabConfig
    home: Path
    env: dict[str, str]
    params: Params
    ips: dict[str, str]

    def client(self):  # noqa: ANN201 - hcloud.Client
        import hcloud
        return hcloud.Client(token=self.cfg.read_secret("hcloud-token"), api_endpoint=self.cfg.hcloud_endpoint,
                             poll_interval=0.05)

    def outsider_tcp(self, ip: str, port: int = 22, wait: float = 3) -> int:
        """Exit status of a TCP connect from the outsider namespace: 0 answered, 124 dropped (no answer)."""
        cp = subprocess.run(["ip", "netns", "exec", self.cfg.outsider_netns, "timeout", str(wait), "bash", "-c",
                             f"exec 3<>/dev/tcp/{ip}/{port}"], capture_output=True, text=True, timeout=wait + 10)
        return cp.returncode


def secret_file(cfg: LabConfig, name: str, value: str) -> str:
    atomic_write(cfg.secret_path(name), value + "\n", 0o600)
    return f"file:{cfg.secret_path(name)}"


@pytest.fixture(scope="module")
def jl(tmp_path_factory) -> Iterator[Env]:
    from conftest import skip_unless_lab_possible

    skip_unless_lab_possible()
    Lab.sweep_scratch()
    cfg = scratch_config("hcbpg-lab-test-")
    api = None
    try:
        for d, mode in ((cfg.lab_dir, 0o755), (cfg.ssh_dir, 0o700), (cfg.secrets_dir, 0o700), (cfg.hosts_dir, 0o700),
                        (cfg.logs_dir, 0o700)):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(mode)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hcbpg-jumpbox-test", "-f", str(cfg.ssh_key)])
        kind, blob = cfg.ssh_key.with_suffix(".pub").read_text().split()[:2]
        atomic_write(cfg.ssh_dir / "allowed_signers", f'{LAB_SIGNER} namespaces="hcbpg-audit,hcbpg-approval" '
                     f"{kind} {blob}\n", 0o644)
        import secrets
        token = secret_file(cfg, "hcloud-token", secrets.token_urlsafe(32))
        ensure_bridge(cfg)
        ensure_outsider(cfg)
        # the stand-in as `hcbpg lab up` starts it, firewalls enforced; ended by its pid below
        log = open(cfg.logs_dir / "hcloud.log", "ab")  # noqa: SIM115 - the subprocess's log, closed below
        api = subprocess.Popen(
            [sys.executable, "-m", "hcbpg.lab.hcloud_api", "--bind", cfg.gateway_ip, "--port", str(HCLOUD_PORT),
             "--state", str(cfg.hcloud_state), "--token-file", str(cfg.secret_path("hcloud-token")),
             "--reserve-ip", cfg.router_ip, "--action-seconds", "0.5", "--enforce-firewalls"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(cfg.lab_dir), start_new_session=True,
            env={**os.environ, "HCBPG_LAB_DIR": str(cfg.lab_dir), "PYTHONPATH": str(REPO)})
        log.close()
        wait_tcp(cfg.gateway_ip, HCLOUD_PORT, 30, "the Hetzner Cloud API stand-in")
        home = tmp_path_factory.mktemp("jumpbox-home")
        (home / "params").mkdir()
        ips = {n: cfg.address(off) for n, off, _role in SERVERS} | {JUMPBOX: cfg.address(JUMPBOX_OFFSET)}
        data = {
            "environment": "lab",
            "hetzner": {"token": token, "api_endpoint": cfg.hcloud_endpoint,
                        "ssh_public_key_file": str(cfg.ssh_key.with_suffix(".pub")), "ssh_key_name": "hcb-jumpbox-test",
                        # the outsider stands for the operator's office: the jumpbox takes its SSH, the servers don't
                        "admin_source_ranges": [cfg.outsider_subnet], "protection": True},
            "network": {"ip_range": "10.0.0.0/16", "subnet": cfg.subnet},
            "servers": [{"name": n, "private_ip": ips[n], "role": r} for n, _off, r in SERVERS],
            "jumpbox": {"name": JUMPBOX, "private_ip": ips[JUMPBOX]},
            "ssh": {"user": "root", "key_file": str(cfg.ssh_key), "connect_timeout": 5,
                    "known_hosts": str(home / "params" / "lab.known_hosts")},
            "postgres": {"app_role_password": secret_file(cfg, "rails-password", secrets.token_urlsafe(24))},
            "audit": {"allowed_signers": str(cfg.ssh_dir / "allowed_signers")},
        }
        (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(cfg.lab_dir),
               "HCBPG_NOTEBOOKS": str(REPO / "notebooks")}
        yield Env(cfg, home, env, parse_params(data), ips)
    finally:
        if api is not None:
            api.terminate()
            try:
                api.wait(10)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait(5)
        Lab(cfg.lab_dir).down(purge=True)


def step_01(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    doc = json.loads(out.stdout)
    [step] = [s for s in doc["steps"] if s["key"] == "01_provision"]
    return step


def test_plan_lists_the_jumpbox_its_firewall_public_ssh_and_protection_and_creates_nothing(jl):
    t0 = time.monotonic()
    step = step_01(cli(jl.env, "plan", "lab", "--only", "01", "--json"))
    changed = set(step["changed"])
    for what in (f"server {JUMPBOX}", "firewall hcb-jumpbox-ssh", "firewall hcb-postgres-ssh-only",
                 "public SSH closed on firewall hcb-postgres-ssh-only", "server server-postgres-1",
                 *(f"delete and rebuild protection on {n}" for n in (JUMPBOX, "server-postgres-1", "server-postgres-2"))):
        assert what in changed, (what, sorted(changed))
    assert step["checks"]["fail"] == 0, step["checks"]
    assert read_state(jl.cfg)["hosts"] == {}, "a plan created hosts"
    assert jl.client().servers.get_all() == []
    print(f"\nplan of step 01 with a jumpbox: {time.monotonic() - t0:.1f}s")


def test_run_makes_the_jumpbox_first_pins_it_and_protects_all_three(jl):
    t0 = time.monotonic()
    step = step_01(cli(jl.env, "run", "lab", "--only", "01", "--json"))
    print(f"\nstep 01 with a jumpbox: {time.monotonic() - t0:.1f}s")
    assert step["status"] == "succeeded" and step["checks"]["fail"] == 0 and step["checks"]["warn"] == 0, step
    client = jl.client()
    servers = {s.name: s for s in client.servers.get_all()}
    names = [JUMPBOX, *(n for n, _o, _r in SERVERS)]
    assert sorted(servers) == sorted(names)
    assert servers[JUMPBOX].id < min(servers[n].id for n in names[1:]), "the jumpbox was not created first"
    assert servers[JUMPBOX].server_type.name == "cpx11" and servers["server-postgres-1"].server_type.name == "ccx13"
    assert all(servers[n].protection == {"delete": True, "rebuild": True} for n in names)
    fw = {f.name: f for f in client.firewalls.get_all()}
    assert fw["hcb-postgres-ssh-only"].rules == []  # no rule: no public inbound
    [rule] = fw["hcb-jumpbox-ssh"].rules
    assert (rule.port, rule.source_ips) == ("22", [jl.cfg.outsider_subnet])
    known = Path(jl.params.ssh.known_hosts)
    for name in names:
        [pin] = hostkeys.pins_for(known, name)
        served = host_exec(jl.cfg, name, "cat /etc/ssh/ssh_host_ed25519_key.pub", check=True).stdout
        assert pin.key in served, name
        # the jumpbox at its public address (the lab's: its private IP), the servers at their private IP
        assert hostkeys.pinned_address(known, name) == jl.ips[name]
    assert read_state(jl.cfg)["hosts"][JUMPBOX]["ip"] == jl.ips[JUMPBOX]
    # public SSH went only after `true` ran on each server through the jumpbox (the notebook says where)
    said = (latest_run_dir(jl.home) / "01_provision.ipynb").read_text()
    for name, _off, _role in SERVERS:
        assert f"`true` ran on {name} at {jl.ips[name]} via {JUMPBOX}" in said, name


def test_from_outside_the_servers_ssh_is_dropped_and_the_jumpboxs_answers(jl):
    assert jl.outsider_tcp(jl.ips[JUMPBOX]) == 0
    for name, _off, _role in SERVERS:
        rules = run(["ip", "netns", "exec", jl.cfg.netns(name), "iptables", "-S", FIREWALL_CHAIN]).stdout
        assert f"-A {FIREWALL_CHAIN} -j DROP" in rules and "--dport 22" not in rules, rules
        assert "-s 10.0.0.0/16 -j ACCEPT" in rules, rules  # the private network is never filtered
        started = time.monotonic()
        assert jl.outsider_tcp(jl.ips[name]) == 124, f"{name}: port 22 answered from outside"
        assert time.monotonic() - started >= 2.5  # dropped (no answer), not refused
    jb_rules = run(["ip", "netns", "exec", jl.cfg.netns(JUMPBOX), "iptables", "-S", FIREWALL_CHAIN]).stdout
    assert f"-s {jl.cfg.outsider_subnet} -p tcp -m tcp --dport 22 -j ACCEPT" in jb_rules, jb_rules


def test_hcbpg_runs_commands_on_the_servers_through_the_jumpbox(jl):
    hosts = []
    try:
        for name, _off, _role in SERVERS:
            route = ssh_route(jl.params, name)
            assert route.via == JUMPBOX and route.address == jl.ips[name]
            h = Host.from_params(jl.params, name, route.address, echo=lambda _line: None)
            hosts.append(h)
            assert h.gateway is not None and h.gateway.address == jl.ips[JUMPBOX]
            out = h.run("hostname; echo $SSH_CONNECTION", quiet=True).stdout.split("\n")
            assert out[0] == name and out[1].split()[0] == jl.ips[JUMPBOX]
    finally:
        for h in hosts:
            h.close()


def test_a_second_run_changes_nothing(jl):
    known = Path(jl.params.ssh.known_hosts).read_text()
    t0 = time.monotonic()
    step = step_01(cli(jl.env, "run", "lab", "--only", "01", "--json"))
    print(f"\nstep 01 again: {time.monotonic() - t0:.1f}s")
    assert step["changes"] == 0 and step["changed"] == [], step
    assert step["checks"]["fail"] == 0 and step["checks"]["warn"] == 0, step
    assert Path(jl.params.ssh.known_hosts).read_text() == known
    assert jl.client().firewalls.get_by_name("hcb-postgres-ssh-only").rules == []


def test_a_protected_server_is_not_deleted(jl):
    import hcloud
    import requests

    client = jl.client()
    server = client.servers.get_by_name("server-postgres-2")
    with pytest.raises(hcloud.APIException) as ei:
        server.delete()
    assert ei.value.code == "protected"
    r = requests.delete(f"{jl.cfg.hcloud_endpoint}/servers/{server.id}", timeout=10,
                        headers={"Authorization": f"Bearer {jl.cfg.read_secret('hcloud-token')}"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "protected"
    assert client.servers.get_by_name("server-postgres-2").status == "running"
    assert host_exec(jl.cfg, "server-postgres-2", "hostname", check=True).stdout.strip() == "server-postgres-2"


def test_a_servers_unpinned_key_is_read_through_the_jumpbox_and_pinned_after_the_gate(jl):
    """A server that exists but has no pin (a new operator machine, a pin removed): step 01 reads the key it offers
    through the jumpbox (its port 22 takes nothing from elsewhere but the private network) and stops at the host-key
    gate; approved, the resumed run pins exactly the key the server serves."""
    name = "server-postgres-2"
    known = Path(jl.params.ssh.known_hosts)
    served = host_exec(jl.cfg, name, "cat /etc/ssh/ssh_host_ed25519_key.pub", check=True).stdout.split()[:2]
    hostkeys.pin(known, "lab", name, [])
    assert hostkeys.pins_for(known, name) == []
    waiting = cli(jl.env, "run", "lab", "--only", "01", "--json")
    assert waiting.returncode == 3, waiting.stdout[-3000:] + waiting.stderr[-3000:]
    doc = json.loads(waiting.stdout)
    [gate_name] = list(doc["gates"])  # the manifest's gates: this run's one
    fingerprint = hostkeys.fingerprint_of_public(" ".join(served))
    assert gate_name.startswith(f"host-key-{name}-"), doc["gates"]
    run_dir = sorted((jl.home / "outputs" / "lab").glob(f"*_{doc['run_id']}"))[-1]
    said = (run_dir / "01_provision.ipynb").read_text()
    assert f"{jl.ips[name]} via {JUMPBOX} offers ssh-ed25519 {fingerprint}" in said
    approved = cli(jl.env, "approve", doc["run_id"], gate_name, "--note", "jumpbox lab test")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    step = step_01(cli(jl.env, "resume", doc["run_id"], "--json"))
    assert step["status"] == "succeeded" and step["checks"]["fail"] == 0, step
    [pin] = hostkeys.pins_for(known, name)
    assert [pin.keytype, pin.key] == served


def test_public_ssh_stays_while_the_jumpbox_cannot_reach_a_server(jl):
    """The operator is never locked out: with SSH open again (by hand, in the API) and server-postgres-2 dropping
    the jumpbox's SSH, step 01 fails naming that server and the servers' firewall keeps SSH from the admin ranges
    (the outsider gets in); once the jumpbox reaches it again, the next run closes public SSH."""
    from hcloud.firewalls.domain import FirewallRule

    name = "server-postgres-2"
    client = jl.client()
    fw = client.firewalls.get_by_name("hcb-postgres-ssh-only")
    for a in client.firewalls.set_rules(fw, [FirewallRule("in", "tcp", [jl.cfg.outsider_subnet], "22")]):
        a.wait_until_finished()
    assert jl.outsider_tcp(jl.ips[name]) == 0  # the stand-in applied it: public SSH is open
    block = ["INPUT", "-s", jl.ips[JUMPBOX], "-p", "tcp", "--dport", "22", "-j", "DROP"]
    run(["ip", "netns", "exec", jl.cfg.netns(name), "iptables", "-I", *block])
    try:
        failed = cli(jl.env, "run", "lab", "--only", "01", "--json")
        assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
        doc = json.loads(failed.stdout)
        assert "public SSH to the database servers not closed" in doc["message"], doc["message"]
        assert f"SSH to {name} through {JUMPBOX} failed" in doc["message"], doc["message"]
        rules = client.firewalls.get_by_name("hcb-postgres-ssh-only").rules
        assert [(r.port, r.source_ips) for r in rules] == [("22", [jl.cfg.outsider_subnet])]
        assert jl.outsider_tcp(jl.ips[name]) == 0, "public SSH was closed although the jumpbox could not reach a server"
    finally:
        run(["ip", "netns", "exec", jl.cfg.netns(name), "iptables", "-D", *block])
    step = step_01(cli(jl.env, "run", "lab", "--only", "01", "--json"))
    assert "public SSH closed on firewall hcb-postgres-ssh-only" in step["changed"], step
    assert client.firewalls.get_by_name("hcb-postgres-ssh-only").rules == []
    assert jl.outsider_tcp(jl.ips[name]) == 124
