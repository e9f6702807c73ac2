"""Provisioning (ops.provisioning, desired.cloud, adapters.cloud): pure planning, and the real hcloud client
against the lab's API stand-in."""

from __future__ import annotations

from dataclasses import replace

import pytest
import yaml
from hcloud.firewalls.domain import FirewallRule
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.networks.domain import NetworkSubnet
from hcloud.server_types.domain import ServerType

from hcbpg.adapters import cloud as cloud_api
from hcbpg.desired import cloud as desired_cloud
from hcbpg.errors import CloudError, ParamsError, WaitTimeout
from hcbpg.params import parse_params
from hcbpg.steps.provision import read_ssh_public_key
from tests.cloudstandin import (  # noqa: F401 - api_fixture, client_fixture, hooks_fixture, params_fixture: fixtures
    REPO,
    TOKEN,
    Hooks,
    api_fixture,
    client_fixture,
    hooks_fixture,
    lab_params,
    params_fixture,
    provision,
    public_key,
    state_ids,
)
from tests.nbutil import manual_lab

# against the stand-in -----------------------------------------------------------------------------


def test_created_servers_get_generated_host_keys_through_user_data_and_are_pinned(api, params, client, hooks,
                                                                                 tmp_path):
    from hcbpg.adapters import hostkeys
    from hcbpg.secrets import scrub
    provision(client, params)
    known = tmp_path / "lab.known_hosts"
    text = known.read_text()
    for name in ("server-postgres-1", "server-postgres-2"):
        got = hooks.host_keys[name]          # what cloud-init would install as the host keys
        assert set(got) == {"ed25519_private", "ed25519_public"}
        assert got["ed25519_private"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        pins = hostkeys.pins_for(known, name)
        assert [f"{p.keytype} {p.key}" for p in pins] == [" ".join(got["ed25519_public"].split()[:2])]
        assert hostkeys.pinned_address(known, name) in ("10.99.0.1", "10.99.0.2")
        assert "PRIVATE" not in text and got["ed25519_private"].splitlines()[1] not in text
        assert scrub(got["ed25519_private"]) != got["ed25519_private"]   # registered as a secret
    assert hooks.host_keys["server-postgres-1"] != hooks.host_keys["server-postgres-2"]
    # the stand-in keeps no private key once the host is built, and never shows user_data
    state = (tmp_path / "hcloud.json").read_text()
    assert "PRIVATE KEY" not in state
    # a second run generates nothing new
    provision(client, params)
    assert known.read_text() == text



def test_dry_run_after_provisioning_records_what_exists(api, params, client):
    _, servers = provision(client, params)
    outcomes, dry = provision(client, params, dry_run=True)
    assert not any(o.changed for o in outcomes)
    assert dry == servers



def test_server_attached_with_another_private_ip_is_refused(api, params, client):
    provision(client, params)
    s = client.servers.get_by_name("server-postgres-2")
    net = client.networks.get_by_name("hcb-private")
    client.servers.detach_from_network(s, net).wait_until_finished()
    client.servers.attach_to_network(s, net, ip="10.0.1.66").wait_until_finished()
    with pytest.raises(CloudError, match=r"private IP 10.0.1.66 in hcb-private \(params: 10.0.1.6\)"):
        provision(client, params)


def test_private_ip_outside_the_subnet_is_refused(api, params, client, tmp_path):
    # params never allow it ...
    data = manual_lab()
    data["servers"][1]["private_ip"] = "10.0.2.6"
    with pytest.raises(ParamsError, match="outside the subnet 10.0.1.0/24"):
        parse_params(data)
    # ... and the API refuses it too, as a CloudError that says what to do
    provision(client, params)
    s = client.servers.get_by_name("server-postgres-2")
    net = client.networks.get_by_name("hcb-private")
    client.servers.detach_from_network(s, net).wait_until_finished()
    with pytest.raises(CloudError) as exc:
        with cloud_api.map_cloud_errors("attaching server-postgres-2"):
            client.servers.attach_to_network(s, net, ip="10.0.2.6")
    assert "ip_not_available" in str(exc.value) and "servers[].private_ip" in str(exc.value)


def test_missing_network_attachment_and_firewall_rules_are_fixed(api, params, client):
    provision(client, params)
    s = client.servers.get_by_name("server-postgres-2")
    net = client.networks.get_by_name("hcb-private")
    client.servers.detach_from_network(s, net).wait_until_finished()
    fw = client.firewalls.get_by_name("hcb-postgres-ssh-only")
    for a in client.firewalls.set_rules(fw, [FirewallRule("in", "tcp", ["0.0.0.0/0"], "5432")]):
        a.wait_until_finished()
    outcomes, servers = provision(client, params)
    changed = {o.what: o.actions for o in outcomes if o.changed}
    assert set(changed) == {"firewall hcb-postgres-ssh-only", "server server-postgres-2"}
    assert "in tcp port 5432 from 0.0.0.0/0" in changed["firewall hcb-postgres-ssh-only"][0]
    assert client.servers.get_by_name("server-postgres-2").private_net[0].ip == "10.0.1.6"
    rules = client.firewalls.get_by_name("hcb-postgres-ssh-only").rules
    assert [(r.direction, r.protocol, r.port, r.source_ips) for r in rules] == [("in", "tcp", "22", ["10.0.1.0/24"])]
    assert not any(o.changed for o in provision(client, params)[0])


def test_a_server_that_is_off_is_powered_on(api, params, client):
    provision(client, params)
    client.servers.get_by_name("server-postgres-1").power_off().wait_until_finished()
    outcomes, servers = provision(client, params)
    assert [o.actions for o in outcomes if o.changed] == [["start server_power: the server is off: power it on"]]
    assert [s.status for s in servers] == ["running", "running"]


def test_private_ip_held_by_another_server_is_refused(api, params, client):
    net = client.networks.create(name="hcb-private", ip_range="10.0.0.0/16", subnets=[
        NetworkSubnet(ip_range="10.0.1.0/24", network_zone="us-east", type="cloud")])
    web = client.servers.create(name="hcb-web", server_type=ServerType(name="ccx13"), image=Image(name="ubuntu-24.04"),
                                location=Location(name="ash"))
    web.action.wait_until_finished()
    client.servers.attach_to_network(web.server, net, ip="10.0.1.5").wait_until_finished()
    with pytest.raises(CloudError, match="private IP 10.0.1.5 is already held by server hcb-web"):
        provision(client, params)
    assert client.ssh_keys.get_all() == []


def test_bad_input_is_refused_with_what_exists(api, tmp_path, client):
    bad = lab_params(tmp_path, api.url, server_type="ccx99", location="ash")
    with pytest.raises(CloudError) as exc:
        provision(client, bad)
    assert "no server type 'ccx99'" in str(exc.value) and "ccx13" in str(exc.value)
    wrong_zone = lab_params(tmp_path, api.url, network_zone="eu-central")
    with pytest.raises(CloudError, match="location ash is in network zone us-east"):
        provision(client, wrong_zone)
    assert not (tmp_path / "hcloud.json").exists()


def test_duplicate_name_and_bad_token_become_cloud_errors(api, params, client):
    client.ssh_keys.create(name="dup", public_key=public_key(5))
    with pytest.raises(CloudError) as exc:
        with cloud_api.map_cloud_errors("creating SSH key dup"):
            client.ssh_keys.create(name="dup", public_key=public_key(6))
    assert exc.value.code == "uniqueness_error" and "run the step again" in str(exc.value)
    wrong = cloud_api.make_client(params, "not-the-token")
    with pytest.raises(CloudError, match="unauthorized") as exc:
        provision(wrong, params)
    assert "hetzner.token" in str(exc.value)


def test_ssh_key_with_the_same_name_but_another_key_is_refused(api, params, client):
    client.ssh_keys.create(name="hcb-lab", public_key=public_key(9))
    with pytest.raises(CloudError, match="SSH key named hcb-lab exists with fingerprint"):
        provision(client, params)


def test_ssh_key_uploaded_under_another_name_is_reused(api, params, client):
    client.ssh_keys.create(name="someones-laptop", public_key=public_key())
    outcomes, _ = provision(client, params)
    assert "SSH key hcb-lab" not in {o.what for o in outcomes if o.changed}
    assert [k.name for k in client.ssh_keys.get_all()] == ["someones-laptop"]


def test_label_selector_finds_the_provisioned_servers(api, params, client):
    provision(client, params)
    client.ssh_keys.max_per_page = 1   # and the client pages through one item at a time
    client.servers.max_per_page = 1
    found = client.servers.get_all(label_selector="app=hcb,service=postgres,env=lab")
    assert sorted(s.name for s in found) == ["server-postgres-1", "server-postgres-2"]
    assert client.servers.get_all(label_selector="env=production") == []


# pure ---------------------------------------------------------------------------------------------

CATALOG = desired_cloud.Catalog(server_type="ccx13", architecture="x86", server_type_locations=("ash", "fsn1"),
                        location="ash", location_zone="us-east", image_id=1)


def _everything(params) -> desired_cloud.Existing:
    fp = desired_cloud.ssh_key_fingerprint(public_key())
    servers = {s.name: desired_cloud.SeenServer(i + 1, s.name, "running", "ccx13", "ash", "ubuntu-24.04",
                                        dict(params.hetzner.labels), {10: s.private_ip}, f"203.0.113.{i + 2}",
                                        (20,), 30)
               for i, s in enumerate(params.servers)}
    return desired_cloud.Existing(
        catalog=CATALOG, ssh_key=desired_cloud.SeenKey(5, "hcb-lab", fp),
        network=desired_cloud.SeenNetwork(10, "hcb-private", "10.0.0.0/16", (("10.0.1.0/24", "us-east", "cloud"),),
                                  {"10.0.1.5": "server-postgres-1", "10.0.1.6": "server-postgres-2"}),
        firewall=desired_cloud.SeenFirewall(20, "hcb-postgres-ssh-only",
                                            tuple(desired_cloud.render_firewall_rules(params)), (1, 2)),
        placement_group=desired_cloud.SeenPlacementGroup(30, "hcb-postgres-placement", "spread", (1, 2)),
        servers=servers)


def _actions(plan) -> list[tuple[str, str, str]]:
    return [(a.kind, a.name, a.action) for a in plan]


def test_plan_on_an_empty_project_creates_everything(tmp_path):
    params = lab_params(tmp_path)
    plan = desired_cloud.plan_provision(params, desired_cloud.Existing(catalog=CATALOG), ssh_public_key=public_key())
    assert _actions(plan) == [
        ("ssh_key", "hcb-lab", "create"), ("network", "hcb-private", "create"),
        ("firewall", "hcb-postgres-ssh-only", "create"), ("placement_group", "hcb-postgres-placement", "create"),
        ("server", "server-postgres-1", "create"), ("server", "server-postgres-2", "create")]
    assert "10.0.1.5" in plan[4].detail and "ccx13" in plan[4].detail
    assert plan[2].detail == "in tcp port 22 from 10.0.1.0/24"
    assert plan[0].row()["action"] == "create"


def test_plan_when_everything_matches_changes_nothing(tmp_path):
    params = lab_params(tmp_path)
    plan = desired_cloud.plan_provision(params, _everything(params), ssh_public_key=public_key())
    assert [a for a in plan if a.action != "none"] == []


def test_plan_fixes_what_is_safe_and_refuses_the_rest(tmp_path):
    params = lab_params(tmp_path)
    ex = _everything(params)
    s1, s2 = ex.servers["server-postgres-1"], ex.servers["server-postgres-2"]
    drift = replace(ex,
                    network=replace(ex.network, subnets=()),
                    firewall=replace(ex.firewall, rules=(desired_cloud.Rule("in", "tcp", "22", ("0.0.0.0/0",)),)),
                    servers={s1.name: replace(s1, private_ips={}, labels={}, firewall_ids=()),
                             s2.name: replace(s2, server_type="cpx11", private_ips={10: "10.0.1.66"})})
    plan = desired_cloud.plan_provision(params, drift, ssh_public_key=public_key())
    got = {(a.kind, a.name): a.action for a in plan}
    assert got[("subnet", "10.0.1.0/24")] == "add"
    assert got[("firewall", "hcb-postgres-ssh-only")] == "update"
    assert got[("server_network", "server-postgres-1")] == "attach"
    assert got[("server_firewall", "server-postgres-1")] == "apply"
    assert got[("server_labels", "server-postgres-1")] == "update"
    assert got[("server", "server-postgres-2")] == "refuse"
    detail = next(a.detail for a in plan if a.name == "server-postgres-2")
    assert "type cpx11 (params: ccx13)" in detail and "private IP 10.0.1.66" in detail


def test_plan_refuses_a_network_with_another_range_and_an_overlapping_subnet(tmp_path):
    params = lab_params(tmp_path)
    ex = _everything(params)
    plan = desired_cloud.plan_provision(params, replace(ex, network=replace(ex.network, ip_range="10.1.0.0/16")))
    assert ("network", "hcb-private", "refuse") in _actions(plan)
    overlap = replace(ex.network, subnets=(("10.0.0.0/20", "us-east", "cloud"),))
    plan = desired_cloud.plan_provision(params, replace(ex, network=overlap))
    assert ("subnet", "10.0.1.0/24", "refuse") in _actions(plan)


def test_plan_refuses_a_server_outside_its_placement_group(tmp_path):
    params = lab_params(tmp_path)
    ex = _everything(params)
    s1 = ex.servers["server-postgres-1"]
    plan = desired_cloud.plan_provision(params, replace(ex, servers={**ex.servers,
                                                             s1.name: replace(s1, placement_group_id=None)}))
    refused = [a for a in plan if a.action == "refuse"]
    assert [(a.kind, a.name) for a in refused] == [("server_placement", "server-postgres-1")]
    assert "powered off" in refused[0].detail


def test_firewall_rules_render_from_admin_ranges(tmp_path):
    params = lab_params(tmp_path, admin_source_ranges=["::/0", "0.0.0.0/0"], weak=True)
    (rule,) = desired_cloud.render_firewall_rules(params)
    assert (rule.direction, rule.protocol, rule.port, rule.source_ips) == ("in", "tcp", "22", ("0.0.0.0/0", "::/0"))


def test_ssh_public_key_file_problems_are_params_errors(tmp_path):
    params = lab_params(tmp_path, ssh_public_key_file=str(tmp_path / "missing.pub"))
    with pytest.raises(ParamsError, match="hetzner.ssh_public_key_file: cannot read"):
        read_ssh_public_key(params)
    (tmp_path / "private").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    params = lab_params(tmp_path, ssh_public_key_file=str(tmp_path / "private"))
    with pytest.raises(ParamsError, match="private key"):
        read_ssh_public_key(params)


class FakeAction:
    def __init__(self, statuses, error=None):
        self.id, self.command, self.error = 7, "create_server", error
        self._statuses = list(statuses)
        self.status = "running"

    def reload(self):
        self.status = self._statuses.pop(0) if self._statuses else self.status


def test_wait_for_actions_has_a_deadline_and_reports_failures():
    now = [0.0]
    with pytest.raises(WaitTimeout, match="create_server"):
        cloud_api.wait_for_actions([FakeAction([])], what="creating", timeout=5, interval=1,
                               sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0])
    assert now[0] == 5
    failed = FakeAction(["error"], error={"code": "action_failed", "message": "host did not boot"})
    with pytest.raises(CloudError, match="host did not boot"):
        cloud_api.wait_for_actions([failed], what="creating", sleep=lambda s: None)
    cloud_api.wait_for_actions([FakeAction(["running", "success"])], what="creating", interval=0, sleep=lambda s: None)


# the notebook -------------------------------------------------------------------------------------

def test_notebook_dry_run_on_a_fresh_lab_plans_and_changes_nothing(api, tmp_path, monkeypatch):
    import papermill as pm
    import scrapbook as sb

    home = tmp_path / "home"
    (home / "params").mkdir(parents=True)
    (home / "token").write_text(TOKEN + "\n")
    data = manual_lab()
    key_file = tmp_path / "id.pub"
    key_file.write_text(public_key() + "\n")
    data["hetzner"].update(api_endpoint=api.url, token=f"file:{home / 'token'}", ssh_public_key_file=str(key_file))
    data["ssh"]["known_hosts"] = str(home / "params" / "lab.known_hosts")  # nothing pinned yet
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("HCBPG_HOME", str(home))
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "01_provision.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / "01_provision.ipynb"), str(out), cwd=str(home),
                        parameters={"env": "lab", "dry_run": True}, progress_bar=False)
    scraps = sb.read_notebook(str(out)).scraps
    assert [s["id"] for s in scraps["servers"].data] == [None, None]
    assert [s["private_ip"] for s in scraps["servers"].data] == ["10.0.1.5", "10.0.1.6"]
    summary = scraps["hcbpg_summary"].data
    # 6 resources, and the app host, drill host and jumpbox keys (not pinned, not contacted in a plan)
    assert summary["dry_run"] and summary["changes"] == 9 and summary["checks"]["fail"] == 0
    assert not (home / "params" / "lab.known_hosts").exists()   # a plan pins nothing
    assert not (tmp_path / "hcloud.json").exists()   # the API's state was never written
    assert TOKEN not in out.read_text()


# the jumpbox (issue 28): its firewall, the servers' public SSH, protection -----------------------------------

def _with_jumpbox(tmp_path, endpoint: str = "http://127.0.0.1:9/v1", *, extra=(), weak=False, **hetzner):
    d = lab_params(tmp_path, endpoint, weak=weak, **hetzner).model_dump(mode="json", exclude_none=True)
    d["jumpbox"] = {"name": "hcb-jumpbox", "private_ip": "10.0.1.40", "ssh_extra_sources": list(extra)}
    return parse_params(d)


def test_jumpbox_and_database_firewall_rules_render_from_params(tmp_path):
    plain = lab_params(tmp_path)
    ssh = [desired_cloud.Rule("in", "tcp", "22", ("10.0.1.0/24",))]
    assert desired_cloud.render_firewall_rules(plain) == ssh == desired_cloud.render_admin_ssh_rules(plain)
    with pytest.raises(ValueError, match="no jumpbox"):
        desired_cloud.render_firewall_rules(plain, "jumpbox")
    params = _with_jumpbox(tmp_path, extra=["192.168.7.0/24", "10.0.1.0/24"])
    assert desired_cloud.render_firewall_rules(params, "db") == []  # no public inbound: SSH through the jumpbox
    assert desired_cloud.render_admin_ssh_rules(params) == ssh      # until the jumpbox path is proven
    (rule,) = desired_cloud.render_firewall_rules(params, "jumpbox")
    assert (rule.direction, rule.protocol, rule.port, rule.source_ips) == ("in", "tcp", "22",
                                                                           ("10.0.1.0/24", "192.168.7.0/24"))
    assert "jumpbox" in (rule.description or "")
    no_ranges = _with_jumpbox(tmp_path, admin_source_ranges=[])
    assert desired_cloud.render_firewall_rules(no_ranges, "jumpbox") == []
    assert desired_cloud.describe_rules([]) == "no rules: no public inbound"


def test_plan_with_a_jumpbox_on_an_empty_project_creates_it_first_and_closes_ssh_last(tmp_path):
    params = _with_jumpbox(tmp_path, protection=True)
    catalog = replace(CATALOG, jumpbox_server_type="cpx11", jumpbox_architecture="x86",
                      jumpbox_type_locations=("ash", "fsn1"))
    plan = desired_cloud.plan_provision(params, desired_cloud.Existing(catalog=catalog), ssh_public_key=public_key())
    assert _actions(plan) == [
        ("ssh_key", "hcb-lab", "create"), ("network", "hcb-private", "create"),
        ("firewall", "hcb-jumpbox-ssh", "create"), ("firewall", "hcb-postgres-ssh-only", "create"),
        ("firewall_ssh", "hcb-postgres-ssh-only", "update"), ("placement_group", "hcb-postgres-placement", "create"),
        ("server", "hcb-jumpbox", "create"), ("server_protection", "hcb-jumpbox", "update"),
        ("server", "server-postgres-1", "create"), ("server_protection", "server-postgres-1", "update"),
        ("server", "server-postgres-2", "create"), ("server_protection", "server-postgres-2", "update")]
    by = {(a.kind, a.name): a.detail for a in plan}
    assert by[("firewall", "hcb-postgres-ssh-only")] == "in tcp port 22 from 10.0.1.0/24"  # SSH until proven
    assert "once an SSH command through hcb-jumpbox succeeded on every server" in \
        by[("firewall_ssh", "hcb-postgres-ssh-only")]
    assert by[("server", "hcb-jumpbox")].startswith("cpx11, ubuntu-24.04, ash, private IP 10.0.1.40")
    assert "firewall hcb-jumpbox-ssh" in by[("server", "hcb-jumpbox")]
    assert "firewall hcb-postgres-ssh-only" in by[("server", "server-postgres-1")]


def _locked_down(params) -> desired_cloud.Existing:
    ex = _everything(params)
    jb = desired_cloud.SeenServer(9, "hcb-jumpbox", "running", "cpx11", "ash", "ubuntu-24.04",
                                  dict(params.hetzner.labels), {10: "10.0.1.40"}, "203.0.113.9", (21,), 30,
                                  (True, True))
    servers = {n: replace(s, protection=(True, True)) for n, s in ex.servers.items()}
    return replace(ex, catalog=replace(CATALOG, jumpbox_server_type="cpx11", jumpbox_architecture="x86",
                                       jumpbox_type_locations=("ash",)),
                   firewall=replace(ex.firewall, rules=()), servers={"hcb-jumpbox": jb, **servers},
                   jumpbox_firewall=desired_cloud.SeenFirewall(
                       21, "hcb-jumpbox-ssh", tuple(desired_cloud.render_firewall_rules(params, "jumpbox")), (9,)))


def test_plan_after_the_lockdown_changes_nothing_and_never_opens_ssh_again(tmp_path):
    params = _with_jumpbox(tmp_path, protection=True)
    ex = _locked_down(params)
    assert [a for a in desired_cloud.plan_provision(params, ex, ssh_public_key=public_key()) if a.changes] == []
    assert desired_cloud.rules_before_proof(params, ex.firewall) == []
    # someone added SSH back by hand: the plan puts it back to SSH from the admin ranges, then closes it again
    opened = replace(ex, firewall=replace(ex.firewall, rules=(desired_cloud.Rule("in", "tcp", "22", ("0.0.0.0/0",)),)))
    got = {(a.kind, a.name): a.action for a in desired_cloud.plan_provision(params, opened)}
    assert got[("firewall", "hcb-postgres-ssh-only")] == "update"
    assert got[("firewall_ssh", "hcb-postgres-ssh-only")] == "update"
    # protection lifted in the console: enabled again
    unprotected = replace(ex, servers={**ex.servers, "hcb-jumpbox": replace(ex.servers["hcb-jumpbox"],
                                                                            protection=(False, False))})
    [row] = [a for a in desired_cloud.plan_provision(params, unprotected) if a.changes]
    assert (row.kind, row.name, row.detail) == ("server_protection", "hcb-jumpbox",
                                                "enable delete and rebuild protection (now delete off, rebuild off)")
    # the jumpbox of another type, or without its firewall
    other = replace(ex, servers={**ex.servers, "hcb-jumpbox": replace(ex.servers["hcb-jumpbox"], server_type="ccx13",
                                                                      firewall_ids=())})
    got = {(a.kind, a.name): (a.action, a.detail) for a in desired_cloud.plan_provision(params, other)}
    assert got[("server", "hcb-jumpbox")][0] == "refuse" and "type ccx13 (params: cpx11)" in got[("server", "hcb-jumpbox")][1]


def test_plan_refuses_a_jumpbox_type_the_location_does_not_offer(tmp_path):
    d = _with_jumpbox(tmp_path).model_dump(mode="json", exclude_none=True)
    d["jumpbox"]["server_type"] = "cx22"
    params = parse_params(d)
    catalog = replace(CATALOG, jumpbox_server_type="cx22", jumpbox_architecture="x86",
                      jumpbox_type_locations=("fsn1", "nbg1", "hel1"))
    plan = desired_cloud.plan_provision(params, desired_cloud.Existing(catalog=catalog))
    [refused] = desired_cloud.refusals(plan)
    assert (refused.kind, refused.name) == ("server_type", "cx22")
    assert "not offered in ash" in refused.detail and "cpx11" in refused.detail
    missing = desired_cloud.plan_provision(params, desired_cloud.Existing(catalog=CATALOG))
    assert ["the API has no server type 'cx22' for the jumpbox" in a.detail for a in desired_cloud.refusals(missing)] \
        == [True]


def test_public_ssh_goes_only_when_every_server_answered_through_the_jumpbox(tmp_path):
    params = _with_jumpbox(tmp_path)
    ssh = tuple(desired_cloud.render_admin_ssh_rules(params))
    both = {"server-postgres-1": None, "server-postgres-2": None}
    done = desired_cloud.plan_public_ssh(params, ssh, both)
    assert done.action == "update" and "succeeded on every server" in done.detail
    assert "set them to [no rules: no public inbound]" in done.detail
    refused = desired_cloud.plan_public_ssh(params, ssh, {**both, "server-postgres-2": "Connection timed out"})
    assert refused.action == "refuse"
    assert refused.detail == ("rules stay [in tcp port 22 from 10.0.1.0/24]: SSH through hcb-jumpbox did not work on "
                              "every server (server-postgres-2: Connection timed out)")
    # a server nobody tried is not proven
    assert "server-postgres-1: not tried" in desired_cloud.plan_public_ssh(params, ssh, {"server-postgres-2": None}).detail
    assert desired_cloud.plan_public_ssh(params, (), {"server-postgres-1": "down"}).action == "none"  # closed already
    assert desired_cloud.plan_public_ssh(params, None, {}).action == "refuse"
    assert desired_cloud.plan_public_ssh(lab_params(tmp_path), ssh, {}).action == "none"  # no jumpbox


def test_protection_check_rows():
    row = desired_cloud.protection_row
    assert row("s", (True, True), dry_run=False).status == "pass"
    assert (row("s", (True, False), dry_run=False).status, row("s", (True, False), dry_run=False).detail) == (
        "fail", "delete on, rebuild off")
    assert row("s", None, dry_run=True).status == "warn" and row("s", None, dry_run=False).status == "fail"


# the lab's firewalls: what the stand-in hands to the hook, what the host's iptables become ----------------

def test_lab_firewall_renders_hetzner_semantics_as_iptables():
    from hcbpg.lab.hosts import FIREWALL_CHAIN, render_firewall_restore
    rules = [{"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ["10.1.5.0/24", "::/0"]},
             {"direction": "in", "protocol": "tcp", "port": "8000-8100", "source_ips": ["192.0.2.0/24"]},
             {"direction": "in", "protocol": "icmp", "port": None, "source_ips": ["0.0.0.0/0"]},
             {"direction": "out", "protocol": "tcp", "port": "any", "destination_ips": ["0.0.0.0/0"]}]
    text = render_firewall_restore(rules, ["10.0.0.0/16"])
    assert text.splitlines() == [
        "*filter", f":{FIREWALL_CHAIN} - [0:0]",
        f"-A {FIREWALL_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A {FIREWALL_CHAIN} -s 10.0.0.0/16 -j ACCEPT",
        f"-A {FIREWALL_CHAIN} -s 10.1.5.0/24 -p tcp -m tcp --dport 22 -j ACCEPT",
        f"-A {FIREWALL_CHAIN} -s 192.0.2.0/24 -p tcp -m tcp --dport 8000:8100 -j ACCEPT",
        f"-A {FIREWALL_CHAIN} -s 0.0.0.0/0 -p icmp -j ACCEPT",
        f"-A {FIREWALL_CHAIN} -j DROP", "COMMIT"]
    # a firewall without rules drops all public inbound; no firewall at all filters nothing
    assert render_firewall_restore([], ["10.0.0.0/16"]).splitlines()[-2:] == [f"-A {FIREWALL_CHAIN} -j DROP", "COMMIT"]
    assert render_firewall_restore(None).splitlines() == ["*filter", f":{FIREWALL_CHAIN} - [0:0]", "COMMIT"]


def test_the_stand_in_tells_the_firewall_hook_what_filters_each_server(tmp_path):
    from hcloud.firewalls.domain import FirewallResource

    from hcbpg.lab.hcloud_api import HcloudStandin, RunningStandin
    seen: list[tuple[str, list | None, list[str]]] = []
    hooks = Hooks()
    app = HcloudStandin(tmp_path / "hcloud.json", TOKEN, on_server_created=hooks.on_created,
                        on_server_deleted=lambda name: None, reserved_ips=["10.0.1.1"],
                        on_firewall_changed=lambda name, rules, ranges: seen.append((name, rules, ranges)))
    with RunningStandin(app) as api:
        params = _with_jumpbox(tmp_path, api.url)
        client = cloud_api.make_client(params, TOKEN, poll_interval=0.01)
        provision(client, params)

        def last(name):
            return next(((r, ranges) for n, r, ranges in reversed(seen) if n == name), None)

        rules, ranges = last("hcb-jumpbox")
        assert [(r["port"], r["source_ips"]) for r in rules] == [("22", ["10.0.1.0/24"])] and ranges == ["10.0.0.0/16"]
        assert [(r["port"], r["source_ips"]) for r in last("server-postgres-1")[0]] == [("22", ["10.0.1.0/24"])]
        fw = client.firewalls.get_by_name("hcb-postgres-ssh-only")
        for a in client.firewalls.set_rules(fw, []):
            a.wait_until_finished()  # the action ends once the hook applied it
        assert last("server-postgres-1")[0] == [] and last("server-postgres-2")[0] == []
        srv = client.servers.get_by_name("server-postgres-1")
        for a in client.firewalls.remove_from_resources(fw, [FirewallResource(type="server", server=srv)]):
            a.wait_until_finished()
        assert last("server-postgres-1")[0] is None  # no firewall: nothing filtered
        assert last("server-postgres-2")[0] == []
