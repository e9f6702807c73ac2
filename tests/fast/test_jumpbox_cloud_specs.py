"""Specs of step 01's jumpbox operations (issue 28, WP2) against the lab's Hetzner Cloud API stand-in, in-process,
through the real hcloud client: ``ensure_public_ssh_closed`` (the database servers' firewall loses its public SSH
rule only once ``true`` ran on every server through the jumpbox) and ``ensure_protection`` (delete and rebuild
protection on the servers and the jumpbox).  The servers' Hosts are recording doubles: what is specified here is
the decision and what the API holds after; tests/lab/test_jumpbox.py runs the same through a real jumpbox.
"""

from __future__ import annotations

import hcloud
import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import RecordingHost
from hcbpg.errors import CloudError, SafetyCheckFailed
from hcbpg.lab.hcloud_api import read_state
from hcbpg.ops import provisioning as cloud
from hcbpg.params import parse_params
from tests.cloudstandin import (  # noqa: F401 - api_fixture, client_fixture, hooks_fixture: fixtures
    TOKEN,
    api_fixture,
    client_fixture,
    hooks_fixture,
    lab_params,
    provision,
)
from tests.fast.specs import covers

SERVERS = ("server-postgres-1", "server-postgres-2")
JUMPBOX = "hcb-jumpbox"


def jumpbox_params(tmp_path, endpoint: str, **hetzner):
    """The lab params with a jumpbox at 10.0.1.40 (Metabase's jumpbox_ip in lab.yaml) and *hetzner* keys."""
    d = lab_params(tmp_path, endpoint, **hetzner).model_dump(mode="json", exclude_none=True)
    d["jumpbox"] = {"name": JUMPBOX, "private_ip": "10.0.1.40"}
    return parse_params(d)


@pytest.fixture(name="params")
def params_fixture(tmp_path, api):
    return jumpbox_params(tmp_path, api.url, protection=True)


def answering(name: str) -> RecordingHost:
    """A server's Host that runs ``true`` (through the jumpbox, in the real step)."""
    return RecordingHost(name, [(r"^true$", "")])


def silent(name: str) -> RecordingHost:
    return RecordingHost(name, [(r"^true$", Result(name, "true", 255, "", "Connection timed out", 3.0))])


def db_rules(client: hcloud.Client) -> list[tuple[str, str, str | None, list[str]]]:
    fw = client.firewalls.get_by_name("hcb-postgres-ssh-only")
    return [(r.direction, r.protocol, r.port, r.source_ips) for r in fw.rules]


ADMIN_SSH = [("in", "tcp", "22", ["10.0.1.0/24"])]


# ensure_public_ssh_closed ---------------------------------------------------------------------------------

@covers("hcbpg.ops.provisioning.ensure_public_ssh_closed", "fresh", "second run")
def test_public_ssh_goes_once_every_server_answered_through_the_jumpbox(api, params, client):
    provision(client, params)
    assert db_rules(client) == ADMIN_SSH  # until the jumpbox path is proven
    jfw = client.firewalls.get_by_name("hcb-jumpbox-ssh")
    assert [(r.port, r.source_ips) for r in jfw.rules] == [("22", ["10.0.1.0/24"])]
    hosts = {s: answering(s) for s in SERVERS}
    [done] = cloud.ensure_public_ssh_closed(client, params, hosts, dry_run=False)
    assert done.changed and not done.dry_run and done.what == "public SSH closed on firewall hcb-postgres-ssh-only"
    assert [a for a in done.actions if a.startswith("`true` ran on")] == [
        f"`true` ran on {s} through {JUMPBOX}" for s in SERVERS]
    assert db_rules(client) == []
    assert all(h.commands == ["true"] for h in hosts.values())
    # provisioning again never opens SSH again, and the second run proves nothing: no command at all
    outcomes, _ = provision(client, params)
    assert [o for o in outcomes if o.changed] == [] and db_rules(client) == []
    again = {s: answering(s) for s in SERVERS}
    [second] = cloud.ensure_public_ssh_closed(client, params, again, dry_run=False)
    assert not second.changed and "no rules: no public inbound; SSH through hcb-jumpbox" in second.actions[0]
    assert all(h.commands == [] for h in again.values())


@covers("hcbpg.ops.provisioning.ensure_public_ssh_closed", "dry run")
def test_a_dry_run_says_it_would_close_ssh_and_leaves_the_rule(api, params, client, tmp_path):
    # nothing exists yet: the servers are AbsentHosts, the firewall not created
    [plan] = cloud.ensure_public_ssh_closed(client, params, {s: AbsentHost(s) for s in SERVERS}, dry_run=True)
    assert plan.changed and plan.dry_run and "would set the rules of hcb-postgres-ssh-only to [no rules" in \
        plan.actions[0] and "not created yet" in plan.actions[0]
    provision(client, params)
    before = read_state(tmp_path / "hcloud.json")["firewalls"]
    [plan] = cloud.ensure_public_ssh_closed(client, params, {s: DryRunHost(answering(s)) for s in SERVERS},
                                            dry_run=True)
    assert plan.changed and plan.dry_run and "succeeded on every server" in plan.actions[0]
    assert read_state(tmp_path / "hcloud.json")["firewalls"] == before and db_rules(client) == ADMIN_SSH


@covers("hcbpg.ops.provisioning.ensure_public_ssh_closed", "refusal")
def test_a_server_that_did_not_answer_keeps_public_ssh(api, params, client):
    provision(client, params)
    hosts = {SERVERS[0]: answering(SERVERS[0]), SERVERS[1]: silent(SERVERS[1])}
    with pytest.raises(SafetyCheckFailed) as ei:
        cloud.ensure_public_ssh_closed(client, params, hosts, dry_run=False)
    assert ei.value.target == "hcb-postgres-ssh-only"
    assert ei.value.reasons == [f"{SERVERS[1]}: Connection timed out"]
    assert "did not work on every server" in str(ei.value) and "keeps SSH from the admin ranges" in str(ei.value)
    assert db_rules(client) == ADMIN_SSH
    with pytest.raises(SafetyCheckFailed, match=f"{SERVERS[0]}: no SSH connection"):
        cloud.ensure_public_ssh_closed(client, params, {SERVERS[1]: answering(SERVERS[1])}, dry_run=False)
    assert db_rules(client) == ADMIN_SSH


def test_without_a_jumpbox_nothing_is_closed(api, client, tmp_path):
    params = lab_params(tmp_path, api.url)
    provision(client, params)
    assert cloud.ensure_public_ssh_closed(client, params, {}, dry_run=False) == []
    assert db_rules(client) == ADMIN_SSH


# ensure_protection ------------------------------------------------------------------------------------------

@covers("hcbpg.ops.provisioning.ensure_protection", "fresh", "second run")
def test_protection_on_the_jumpbox_and_both_servers_once(api, params, client):
    provision(client, params)
    outcomes = cloud.ensure_protection(client, params, dry_run=False)
    assert [(o.what, o.changed) for o in outcomes] == [
        (f"delete and rebuild protection on {n}", True) for n in (JUMPBOX, *SERVERS)]
    assert outcomes[0].actions == ["enabled delete and rebuild protection (was delete off, rebuild off)"]
    for n in (JUMPBOX, *SERVERS):
        assert client.servers.get_by_name(n).protection == {"delete": True, "rebuild": True}
    again = cloud.ensure_protection(client, params, dry_run=False)
    assert [(o.changed, o.actions) for o in again] == [(False, ["already on (delete and rebuild)"])] * 3
    rows = [c for c in cloud.get_provision_checks(client, params) if c.name == "delete and rebuild protection"]
    assert [(c.target, c.status) for c in rows] == [(n, "pass") for n in (JUMPBOX, *SERVERS)]
    # the API now refuses to delete them, as Hetzner does
    with pytest.raises(hcloud.APIException) as ei:
        client.servers.get_by_name(SERVERS[0]).delete()
    assert ei.value.code == "protected"
    assert client.servers.get_by_name(SERVERS[0]) is not None


@covers("hcbpg.ops.provisioning.ensure_protection", "dry run")
def test_a_dry_run_lists_the_protection_and_changes_nothing(api, params, client, tmp_path):
    planned = cloud.ensure_protection(client, params, dry_run=True)
    assert [(o.changed, o.dry_run, o.actions) for o in planned] == [(True, True, ["enable once the server is created"])] * 3
    assert not (tmp_path / "hcloud.json").exists()
    provision(client, params)
    planned = cloud.ensure_protection(client, params, dry_run=True)
    assert all(o.changed and o.actions == ["enable delete and rebuild protection (now delete off, rebuild off)"]
               for o in planned)
    assert all(s.protection == {"delete": False, "rebuild": False} for s in client.servers.get_all())
    rows = [c for c in cloud.get_provision_checks(client, params, dry_run=True)
            if c.name == "delete and rebuild protection"]
    assert {c.status for c in rows} == {"warn"}


@covers("hcbpg.ops.provisioning.ensure_protection", "refusal")
def test_protecting_a_server_that_is_not_there_is_refused(api, params, client):
    with pytest.raises(CloudError, match=f"no server {JUMPBOX} to protect"):
        cloud.ensure_protection(client, params, dry_run=False)
    off = parse_params({**params.model_dump(mode="json", exclude_none=True),
                        "hetzner": {**params.hetzner.model_dump(mode="json", exclude_none=True), "protection": False}})
    assert cloud.ensure_protection(client, off, dry_run=False) == []
    assert client.servers.get_all() == []


def test_the_api_wants_delete_and_rebuild_protection_alike(api, params, client):
    import requests
    provision(client, params)
    sid = client.servers.get_by_name(SERVERS[0]).id
    r = requests.post(f"{api.url}/servers/{sid}/actions/change_protection", json={"delete": True, "rebuild": False},
                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    client.servers.get_by_name(SERVERS[0]).change_protection(delete=True, rebuild=True).wait_until_finished()
    client.servers.get_by_name(SERVERS[0]).change_protection(delete=False, rebuild=False).wait_until_finished()
    client.servers.get_by_name(SERVERS[0]).delete().wait_until_finished()  # lifted: deleted
    assert client.servers.get_by_name(SERVERS[0]) is None
