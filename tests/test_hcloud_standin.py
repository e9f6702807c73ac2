"""The lab's Hetzner Cloud API stand-in, driven by the real hcloud-python client (and raw HTTP for shapes)."""

from __future__ import annotations

import base64
import ipaddress
import socket
import subprocess
import sys
import time

import hcloud
import pytest
import requests
from hcloud.actions.domain import ActionFailedException
from hcloud.firewalls.domain import FirewallResource, FirewallRule
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.networks.domain import NetworkSubnet
from hcloud.server_types.domain import ServerType

from hcbpg.lab.hcloud_api import HcloudStandin, RunningStandin, parse_label_selector, read_state

TOKEN = "lab-token-0123456789abcdef"


def fake_public_key(seed: int = 1, comment: str = "ops@lab") -> str:
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


class Hooks:
    def __init__(self) -> None:
        self.created: list[tuple[str, str | None, list[str]]] = []
        self.deleted: list[str] = []
        self.public_ips: dict[str, str] = {}
        self.fail: set[str] = set()

    def on_created(self, name: str, private_ip: str | None, keys: list[str],
                   host_keys: dict[str, str]) -> dict | None:
        if name in self.fail:
            raise RuntimeError(f"cannot build lab host {name}")
        self.created.append((name, private_ip, keys))
        return {"public_ip": self.public_ips[name]} if name in self.public_ips else None

    def on_deleted(self, name: str) -> None:
        self.deleted.append(name)


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def api(tmp_path, hooks):
    app = HcloudStandin(tmp_path / "state.json", TOKEN, on_server_created=hooks.on_created,
                        on_server_deleted=hooks.on_deleted)
    with RunningStandin(app) as running:
        yield running


@pytest.fixture
def client(api) -> hcloud.Client:
    return hcloud.Client(token=TOKEN, api_endpoint=api.url, poll_interval=0.01)


def raw(api, method: str, path: str, token: str = TOKEN, **kw) -> requests.Response:
    return requests.request(method, api.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10, **kw)


def network(client, name="hcb-private"):
    return client.networks.create(name=name, ip_range="10.0.0.0/16", subnets=[
        NetworkSubnet(ip_range="10.0.1.0/24", network_zone="us-east", type="cloud")])


def server(client, name, **kw):
    kw.setdefault("location", Location(name="ash"))
    resp = client.servers.create(name=name, server_type=ServerType(name="ccx13"), image=Image(name="ubuntu-24.04"),
                                 **kw)
    resp.action.wait_until_finished()
    for a in resp.next_actions:
        a.wait_until_finished()
    return resp


def test_wrong_or_missing_token_is_unauthorized_like_the_real_api(api):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"}):
        r = requests.get(api.url + "/servers", headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.json() == {"error": {"code": "unauthorized", "message": "unable to authenticate", "details": {}}}
    with pytest.raises(hcloud.APIException) as exc:
        hcloud.Client(token="nope", api_endpoint=api.url).servers.get_all()
    assert exc.value.code == "unauthorized"


def test_catalog_has_ash_us_east_ccx13_and_ubuntu_2404(client):
    loc = client.locations.get_by_name("ash")
    assert loc.network_zone == "us-east"
    st = client.server_types.get_by_name("ccx13")
    assert st.cpu_type == "dedicated" and "ash" in [x.location.name for x in st.locations]
    img = client.images.get_by_name_and_architecture("ubuntu-24.04", "x86")
    assert img.os_flavor == "ubuntu" and img.architecture == "x86"
    assert client.images.get_by_name_and_architecture("ubuntu-24.04", "arm").id != img.id


def test_duplicate_names_answer_uniqueness_error(client, api):
    key = fake_public_key()
    client.ssh_keys.create(name="ops", public_key=key)
    network(client)
    client.firewalls.create(name="fw")
    client.placement_groups.create(name="pg", type="spread")
    server(client, "server-postgres-1")
    attempts = [lambda: client.ssh_keys.create(name="ops", public_key=fake_public_key(2)),
                lambda: client.ssh_keys.create(name="other", public_key=key),   # same fingerprint
                lambda: network(client),
                lambda: client.firewalls.create(name="fw"),
                lambda: client.placement_groups.create(name="pg", type="spread"),
                lambda: server(client, "server-postgres-1")]
    for attempt in attempts:
        with pytest.raises(hcloud.APIException) as exc:
            attempt()
        assert exc.value.code == "uniqueness_error"
    r = raw(api, "POST", "/ssh_keys", json={"name": "ops", "public_key": fake_public_key(3)})
    assert r.status_code == 409 and set(r.json()["error"]) == {"code", "message", "details"}


def test_bad_input_answers_invalid_input_or_not_found(client, api):
    r = raw(api, "POST", "/networks", json={"name": "n", "ip_range": "10.0.1.0/16"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["details"]["fields"][0]["name"] == "ip_range"
    with pytest.raises(hcloud.APIException) as exc:
        client.networks.create(name="n", ip_range="10.0.0.0/16", subnets=[
            NetworkSubnet(ip_range="10.1.0.0/24", network_zone="us-east", type="cloud")])
    assert exc.value.code == "invalid_input"
    with pytest.raises(hcloud.APIException) as exc:
        client.firewalls.create(name="f", rules=[FirewallRule("in", "tcp", ["0.0.0.0/0"])])  # tcp without port
    assert exc.value.code == "invalid_input"
    with pytest.raises(hcloud.APIException) as exc:
        client.ssh_keys.create(name="k", public_key="not a key")
    assert exc.value.code == "invalid_input"
    with pytest.raises(hcloud.APIException) as exc:
        client.servers.create(name="x", server_type=ServerType(name="ccx99"), image=Image(name="ubuntu-24.04"))
    assert exc.value.code == "invalid_input"
    with pytest.raises(hcloud.APIException) as exc:
        client.servers.get_by_id(424242)
    assert exc.value.code == "not_found"
    assert raw(api, "GET", "/nothing-here").json()["error"]["code"] == "not_found"


def test_lists_page_with_meta_pagination(client, api):
    for i in range(5):
        client.ssh_keys.create(name=f"key-{i}", public_key=fake_public_key(i + 1))
    page = client.ssh_keys.get_list(per_page=2, page=2)
    assert [k.name for k in page.ssh_keys] == ["key-2", "key-3"]
    p = page.meta.pagination
    assert (p.page, p.per_page, p.previous_page, p.next_page, p.last_page, p.total_entries) == (2, 2, 1, 3, 3, 5)
    client.ssh_keys.max_per_page = 2
    assert [k.name for k in client.ssh_keys.get_all()] == [f"key-{i}" for i in range(5)]
    assert raw(api, "GET", "/ssh_keys", params={"per_page": 51}).json()["error"]["code"] == "invalid_input"
    last = raw(api, "GET", "/ssh_keys", params={"per_page": 2, "page": 3}).json()
    assert last["meta"]["pagination"]["next_page"] is None and len(last["ssh_keys"]) == 1


def test_label_selector_and_name_filter(client):
    server(client, "pg-1", labels={"app": "hcb", "role": "primary", "env": "lab"})
    server(client, "pg-2", labels={"app": "hcb", "role": "replica", "env": "lab"})
    server(client, "web", labels={"app": "hcb", "env": "prod"})

    def names(sel: str) -> list[str]:
        return sorted(s.name for s in client.servers.get_all(label_selector=sel))

    assert names("env=lab") == ["pg-1", "pg-2"]
    assert names("env==lab,role=primary") == ["pg-1"]
    assert names("env!=lab") == ["web"]
    assert names("role") == ["pg-1", "pg-2"]
    assert names("!role") == ["web"]
    assert names("role in (primary, replica),app=hcb") == ["pg-1", "pg-2"]
    assert names("role notin (primary)") == ["pg-2", "web"]
    assert client.servers.get_by_name("pg-2").labels["role"] == "replica"
    assert client.servers.get_by_name("nope") is None
    with pytest.raises(hcloud.APIException):
        client.servers.get_all(label_selector="a=b=c")
    assert parse_label_selector("a in (x,y),!b")({"a": "y"}) is True


def test_server_create_returns_every_field_hcloud_reads(api, client):
    key = client.ssh_keys.create(name="ops", public_key=fake_public_key())
    net = network(client)
    rules = [FirewallRule("in", "tcp", ["10.0.1.0/24"], "22", description="ssh")]
    fw = client.firewalls.create(name="fw", rules=rules).firewall
    pg = client.placement_groups.create(name="hcb-postgres-placement", type="spread").placement_group
    body = {"name": "server-postgres-1", "server_type": "ccx13", "image": "ubuntu-24.04", "location": "ash",
            "ssh_keys": [key.id], "networks": [net.id], "firewalls": [{"firewall": fw.id}],
            "placement_group": pg.id, "labels": {"app": "hcb"}, "start_after_create": True}
    r = raw(api, "POST", "/servers", json=body).json()
    assert set(r) == {"server", "action", "next_actions", "root_password"}
    assert r["root_password"] is None and r["action"]["status"] == "running" and r["next_actions"]
    s = r["server"]
    assert {"location", "datacenter", "public_net", "private_net", "server_type", "image", "placement_group"} <= set(s)
    assert s["datacenter"]["location"]["name"] == s["location"]["name"] == "ash"
    assert set(s["public_net"]) >= {"ipv4", "ipv6", "floating_ips", "firewalls"}
    assert ipaddress.ip_address(s["public_net"]["ipv4"]["ip"]) in ipaddress.ip_network("203.0.113.0/24")
    assert set(s["private_net"][0]) == {"network", "ip", "alias_ips", "mac_address"}
    rules = raw(api, "GET", f"/firewalls/{fw.id}").json()["firewall"]["rules"]
    assert set(rules[0]) == {"direction", "source_ips", "destination_ips", "protocol", "port", "description"}
    # and through the client: typed objects all the way down
    client.actions.get_by_id(r["action"]["id"]).wait_until_finished()
    bound = client.servers.get_by_name("server-postgres-1")
    assert bound.status == "running" and bound.server_type.name == "ccx13" and bound.location.name == "ash"
    assert bound.private_net[0].network.id == net.id and bound.private_net[0].ip == "10.0.1.2"
    assert bound.public_net.firewalls[0].firewall.id == fw.id and bound.placement_group.id == pg.id
    assert client.placement_groups.get_by_id(pg.id).servers == [bound.id]
    assert [x.id for x in client.networks.get_by_id(net.id).servers] == [bound.id]
    no_key = client.servers.create(name="nokey", server_type=ServerType(name="ccx13"), image=Image(name="ubuntu-24.04"))
    assert no_key.root_password


def test_actions_run_then_succeed_so_wait_polls(api, client):
    resp = client.placement_groups.create(name="pg", type="spread")
    assert resp.action is None
    r = raw(api, "POST", "/networks", json={"name": "n", "ip_range": "10.0.0.0/16"})
    net_id = r.json()["network"]["id"]
    action = raw(api, "POST", f"/networks/{net_id}/actions/add_subnet",
                 json={"type": "cloud", "network_zone": "us-east", "ip_range": "10.0.1.0/24"}).json()["action"]
    assert action["status"] == "running"
    first = raw(api, "GET", f"/actions/{action['id']}").json()["action"]
    second = raw(api, "GET", f"/networks/actions/{action['id']}").json()["action"]
    assert (first["status"], second["status"]) == ("running", "success")
    assert second["progress"] == 100 and second["finished"]
    resp = server(client, "s")  # wait_until_finished on the client: reload sees running, sleeps, polls again
    act = client.servers.get_by_id(resp.server.id).get_actions()
    assert {a.command for a in act} >= {"create_server", "start_server"} and all(a.status == "success" for a in act)


def test_fixed_private_ip_is_honoured_and_checked_against_the_subnets(client, hooks):
    key = client.ssh_keys.create(name="ops", public_key=fake_public_key())
    net = network(client)
    resp = server(client, "server-postgres-1", ssh_keys=[key])
    assert hooks.created == []  # no private IP yet: no lab host yet
    s = resp.server
    for ip, code in (("10.0.2.5", "ip_not_available"), ("10.0.1.255", "ip_not_available"),
                     ("10.0.0.1", "ip_not_available"), ("nonsense", "invalid_input")):
        with pytest.raises(hcloud.APIException) as exc:
            client.servers.attach_to_network(s, net, ip=ip)
        assert exc.value.code == code, ip
    assert "not inside any subnet" in str(client_error(lambda: client.servers.attach_to_network(s, net, ip="10.0.2.5")))
    client.servers.attach_to_network(s, net, ip="10.0.1.5").wait_until_finished()
    assert client.servers.get_by_id(s.id).private_net[0].ip == "10.0.1.5"
    assert hooks.created == [("server-postgres-1", "10.0.1.5", [fake_public_key()])]
    with pytest.raises(hcloud.APIException) as exc:
        client.servers.attach_to_network(s, net, ip="10.0.1.6")
    assert exc.value.code == "server_already_attached"
    other = server(client, "server-postgres-2").server
    with pytest.raises(hcloud.APIException) as exc:
        client.servers.attach_to_network(other, net, ip="10.0.1.5")
    assert exc.value.code == "ip_not_available"


def client_error(fn) -> Exception:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("no error")


def test_hooks_build_and_tear_down_lab_hosts(client, hooks, api):
    hooks.public_ips["server-postgres-1"] = "10.99.0.5"
    key = client.ssh_keys.create(name="ops", public_key=fake_public_key())
    net = network(client)
    resp = server(client, "server-postgres-1", ssh_keys=[key], networks=[net])
    s = client.servers.get_by_id(resp.server.id)
    assert hooks.created == [("server-postgres-1", "10.0.1.2", [fake_public_key()])]
    assert s.public_net.ipv4.ip == "10.99.0.5" and s.status == "running"
    client.servers.delete(s).wait_until_finished()
    assert hooks.deleted == ["server-postgres-1"]
    assert client.servers.get_by_name("server-postgres-1") is None
    assert client.networks.get_by_id(net.id).servers == []


def test_a_failing_hook_fails_the_action(client, hooks):
    hooks.fail.add("broken")
    net = network(client)
    resp = client.servers.create(name="broken", server_type=ServerType(name="ccx13"),
                                 image=Image(name="ubuntu-24.04"), location=Location(name="ash"), networks=[net])
    with pytest.raises(ActionFailedException) as exc:
        resp.action.wait_until_finished()
    assert "cannot build lab host broken" in str(exc.value)
    broken = client.servers.get_by_name("broken")
    assert broken.status == "off" and hooks.created == []
    hooks.fail.clear()
    broken.power_on().wait_until_finished()   # powering on builds the lab host again
    assert client.servers.get_by_name("broken").status == "running"
    assert hooks.created == [("broken", "10.0.1.2", [])]


def test_firewall_rules_apply_and_set_rules(client):
    s = server(client, "s1", labels={"role": "db"}).server
    fw = client.firewalls.create(name="fw", rules=[FirewallRule("in", "tcp", ["0.0.0.0/0", "::/0"], "22")]).firewall
    for a in client.firewalls.apply_to_resources(fw, [FirewallResource(type="server", server=s)]):
        a.wait_until_finished()
    with pytest.raises(hcloud.APIException) as exc:
        client.firewalls.apply_to_resources(fw, [FirewallResource(type="server", server=s)])
    assert exc.value.code == "firewall_already_applied"
    actions = client.firewalls.set_rules(fw, [FirewallRule("in", "tcp", ["10.0.1.0/24"], "22", description="ssh"),
                                              FirewallRule("in", "icmp", ["0.0.0.0/0"])])
    assert {a.command for a in actions} == {"set_firewall_rules", "apply_firewall"}
    got = client.firewalls.get_by_id(fw.id)
    assert [(r.protocol, r.port, r.source_ips, r.description) for r in got.rules] == [
        ("tcp", "22", ["10.0.1.0/24"], "ssh"), ("icmp", None, ["0.0.0.0/0"], None)]
    assert client.servers.get_by_id(s.id).public_net.firewalls[0].firewall.id == fw.id


def test_state_persists_across_restarts_and_can_be_read_from_outside(tmp_path):
    state = tmp_path / "state.json"
    with RunningStandin(HcloudStandin(state, TOKEN)) as api:
        c = hcloud.Client(token=TOKEN, api_endpoint=api.url, poll_interval=0.01)
        network(c)
        server(c, "keeper", labels={"a": "b"})
    snapshot = read_state(state)
    assert [s["name"] for s in snapshot["servers"]] == ["keeper"]
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    with RunningStandin(HcloudStandin(state, TOKEN)) as api:
        c = hcloud.Client(token=TOKEN, api_endpoint=api.url, poll_interval=0.01)
        assert c.servers.get_by_name("keeper").labels == {"a": "b"}
        assert c.networks.get_by_name("hcb-private").subnets[0].ip_range == "10.0.1.0/24"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_entry_point_serves_with_a_token_file(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hcbpg.lab.hcloud_api", "--bind", "127.0.0.1", "--port",
                             str(port), "--state", str(tmp_path / "s.json"), "--token-file", str(token_file),
                             "--no-hooks"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 15
        while True:
            try:
                requests.get(url + "/locations", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "stand-in did not start"
                time.sleep(0.1)
        c = hcloud.Client(token=TOKEN, api_endpoint=url, poll_interval=0.01)
        assert c.locations.get_by_name("ash").network_zone == "us-east"
    finally:
        proc.terminate()
        proc.wait(10)


def test_concurrent_requests_keep_state_consistent(client, api, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def make(i: int) -> int:
        return client.ssh_keys.create(name=f"k{i}", public_key=fake_public_key(i + 1)).id

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(make, range(16)))
    assert len(set(ids)) == 16
    assert sorted(k["id"] for k in read_state(tmp_path / "state.json")["ssh_keys"]) == sorted(ids)


