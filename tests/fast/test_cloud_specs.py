"""Specs of step 01's and step 11's cloud operations (hcbpg.ops.provisioning) against the lab's Hetzner
Cloud API stand-in, in-process, through the real hcloud client: the project's state in → what the API
holds after, and the Outcomes.  The cloud client has no recording double (the API has no dry-run mode),
so a dry run is the plan: these specs check that it writes nothing to the API's state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.server_types.domain import ServerType

from hcbpg.errors import CloudError
from hcbpg.lab.hcloud_api import read_state
from hcbpg.ops import provisioning as cloud
from hcbpg.params import parse_params
from tests.cloudstandin import (  # noqa: F401 - api_fixture, client_fixture, hooks_fixture, params_fixture: fixtures
    TOKEN,
    api_fixture,
    client_fixture,
    hooks_fixture,
    lab_params,
    params_fixture,
    provision,
    public_key,
    state_ids,
)
from tests.fast.specs import covers
from tests.nbutil import manual_lab

REPO = Path(__file__).resolve().parents[2]


# ensure_provisioned ---------------------------------------------------------------------------------------

@covers("hcbpg.ops.provisioning.ensure_provisioned", "fresh", "second run")
def test_first_run_creates_everything_and_second_run_changes_nothing(api, params, client, hooks, tmp_path):
    outcomes, servers = provision(client, params)
    assert all(o.changed and not o.dry_run for o in outcomes)
    assert {o.what for o in outcomes} == {"SSH key hcb-lab", "network hcb-private", "firewall hcb-postgres-ssh-only",
                                          "placement group hcb-postgres-placement", "server server-postgres-1",
                                          "server server-postgres-2"}
    assert [(s.name, s.private_ip, s.status) for s in servers] == [
        ("server-postgres-1", "10.0.1.5", "running"), ("server-postgres-2", "10.0.1.6", "running")]
    assert sorted(h[:2] for h in hooks.created) == [("server-postgres-1", "10.0.1.5"),
                                                    ("server-postgres-2", "10.0.1.6")]
    assert all(h[2] == [public_key()] for h in hooks.created)
    by_name = {s.name: s for s in servers}
    assert {by_name[n].public_ip for n in by_name} == {"10.99.0.1", "10.99.0.2"}  # what the lab hook reported
    assert all(set(s.as_dict()) == {"name", "public_ip", "private_ip", "id"} and s.id for s in servers)
    checks = cloud.get_provision_checks(client, params)
    assert [c for c in checks if c.status != "pass"] == []

    before = state_ids(tmp_path / "hcloud.json")
    outcomes2, servers2 = provision(client, params)
    assert [o for o in outcomes2 if o.changed] == []
    assert state_ids(tmp_path / "hcloud.json") == before
    assert servers2 == servers
    assert len(hooks.created) == 2


@covers("hcbpg.ops.provisioning.ensure_provisioned", "dry run")
def test_dry_run_on_a_fresh_project_lists_changes_and_changes_nothing(api, params, client, tmp_path, hooks):
    outcomes, servers = provision(client, params, dry_run=True)
    assert outcomes and all(o.changed and o.dry_run and o.verb == "would change" for o in outcomes)
    assert [(s.name, s.id, s.public_ip, s.private_ip) for s in servers] == [
        ("server-postgres-1", None, None, "10.0.1.5"), ("server-postgres-2", None, None, "10.0.1.6")]
    checks = cloud.get_provision_checks(client, params, dry_run=True)
    assert checks and all(c.status == "warn" for c in checks)
    assert not (tmp_path / "hcloud.json").exists()  # not one write reached the API's state
    assert hooks.created == []


def test_a_firewall_whose_rules_drifted_is_planned_as_set_and_set_by_the_run(api, params, client, tmp_path):
    """A firewall of that name left with other rules (another environment's with a jumpbox: none) is no failed
    plan: the dry run warns and says what its rules become (step 01 sets them), the run sets them, then it passes."""
    from hcloud.firewalls.domain import Firewall
    provision(client, params)
    fw = client.firewalls.get_by_name(params.hetzner.firewall)
    client.firewalls.set_rules(Firewall(id=fw.id), [])
    [row] = [c for c in cloud.get_provision_checks(client, params, dry_run=True)
             if c.name == "firewall allows only SSH inbound"]
    assert row.status == "warn" and "no rules: no public inbound" in row.detail and "would be set to" in row.detail
    assert "22" in row.detail.split("would be set to", 1)[1], row.detail
    [failed] = [c for c in cloud.get_provision_checks(client, params) if c.name == "firewall allows only SSH inbound"]
    assert failed.status == "fail" and "no rules" in failed.detail  # a real run's check names what it found
    outcomes, _ = provision(client, params)
    assert [o.what for o in outcomes if o.changed] == [f"firewall {params.hetzner.firewall}"]
    assert [c for c in cloud.get_provision_checks(client, params) if c.status != "pass"] == []


@covers("hcbpg.ops.provisioning.ensure_provisioned", "refusal")
def test_existing_server_of_another_type_is_refused_before_any_change(api, params, client, tmp_path):
    client.servers.create(name="server-postgres-2", server_type=ServerType(name="cpx11"),
                          image=Image(name="ubuntu-24.04"), location=Location(name="ash")).action.wait_until_finished()
    before = read_state(tmp_path / "hcloud.json")
    with pytest.raises(CloudError) as exc:
        provision(client, params)
    msg = str(exc.value)
    assert "server server-postgres-2" in msg and "type cpx11 (params: ccx13)" in msg and "nothing was changed" in msg
    after = read_state(tmp_path / "hcloud.json")
    assert [k for k in ("ssh_keys", "networks", "firewalls", "placement_groups") if after[k] != before[k]] == []
    assert [s["name"] for s in after["servers"]] == ["server-postgres-2"]


# ensure_powered_off (step 11's fence through the API) -----------------------------------------------------

def lab_server(client, name: str) -> None:
    resp = client.servers.create(name=name, server_type=ServerType(name="ccx13"), image=Image(name="ubuntu-24.04"),
                                 location=Location(name="ash"))
    resp.action.wait_until_finished()
    for a in resp.next_actions:
        a.wait_until_finished()


@pytest.fixture
def committed():
    return parse_params(manual_lab())


@covers("hcbpg.ops.provisioning.ensure_powered_off", "fresh", "second run")
def test_an_unreachable_old_primary_is_powered_off_once(client, committed):
    name = committed.primary.name
    lab_server(client, name)
    done = cloud.ensure_powered_off(client, committed, name, dry_run=False)
    assert done.changed and not done.dry_run and client.servers.get_by_name(name).status == "off"
    assert done.actions[0].startswith(f"powered off {name} (id ")
    again = cloud.ensure_powered_off(client, committed, name, dry_run=False)
    assert not again.changed and again.actions == ["already off"]


@covers("hcbpg.ops.provisioning.ensure_powered_off", "dry run")
def test_a_dry_run_says_it_would_power_off_and_leaves_the_server_running(client, committed, tmp_path):
    name = committed.primary.name
    lab_server(client, name)
    before = read_state(tmp_path / "hcloud.json")
    plan = cloud.ensure_powered_off(client, committed, name, dry_run=True)
    assert plan.changed and plan.dry_run and plan.actions[0].startswith(f"power off {name} (id ")
    assert client.servers.get_by_name(name).status == "running"
    assert read_state(tmp_path / "hcloud.json") == before


@covers("hcbpg.ops.provisioning.ensure_powered_off", "refusal")
def test_only_a_server_of_these_params_that_exists_is_powered_off(client, committed):
    lab_server(client, committed.primary.name)
    with pytest.raises(KeyError):
        cloud.ensure_powered_off(client, committed, "not-a-server-of-these-params", dry_run=False)
    with pytest.raises(CloudError, match="no server"):
        cloud.ensure_powered_off(client, committed, committed.replicas[0].name, dry_run=False)
    assert client.servers.get_by_name(committed.primary.name).status == "running"
