"""Issue 28, WP2: the callers that open Hosts to the database servers (hcbpg status, step 15, preflight) ask
``desired.addresses.ssh_route``: with ``jumpbox`` in params each server at its private IP behind the jumpbox,
without it directly where it was reached before.  Nothing here connects (tests/lab/test_jumpbox_ssh.py does)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hcbpg.adapters import hostkeys
from hcbpg.engine.status import _open_hosts
from hcbpg.errors import HostUnreachable
from hcbpg.params import Params, parse_params
from hcbpg.steps import preflight
from hcbpg.steps.health import open_server_hosts

from nbutil import manual_production

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhcYnBnLXRlc3Qta2V5LW5vdC1yZWFsLTAwMDAwMDAw"


def prod(known_hosts: Path, **jumpbox: Any) -> Params:
    d = manual_production()
    if jumpbox:
        d["jumpbox"] = jumpbox
    d["ssh"]["known_hosts"] = str(known_hosts)
    return parse_params(d)


@pytest.fixture()
def known_hosts(tmp_path: Path) -> Path:
    """Pins for the first server and the jumpbox, each with the public IP step 01 read."""
    path = tmp_path / "known_hosts"
    hostkeys.pin(path, "production", "server-postgres-1", [PUB], address="203.0.113.7")
    hostkeys.pin(path, "production", "hcb-jumpbox", [PUB], address="203.0.113.40")
    return path


@pytest.mark.parametrize("opener", ["status", "health"])
def test_without_a_jumpbox_status_and_step_15_open_the_servers_directly_as_before(known_hosts, opener):
    params = prod(known_hosts)
    hosts = (_open_hosts(params, "production", 2.5) if opener == "status" else
             open_server_hosts(params, recorded=hostkeys.pinned_servers(params), connect_timeout=2.5))
    expected = {"server-postgres-1": "203.0.113.7", "server-postgres-2": params.server("server-postgres-2").private_ip}
    assert {n: h.address for n, h in hosts.items()} == expected
    assert all(h.gateway is None and h.connect_timeout == 2.5 and h.command_timeout == 120.0
               and h.known_hosts == known_hosts for h in hosts.values())
    if opener == "status":
        assert all(h.auth_retry_waits == () for h in hosts.values())


@pytest.mark.parametrize("opener", ["status", "health"])
def test_with_a_jumpbox_status_and_step_15_open_each_server_at_its_private_ip_through_it(known_hosts, opener):
    params = prod(known_hosts, private_ip="10.0.1.40")
    hosts = (_open_hosts(params, "production", 2.5) if opener == "status" else
             open_server_hosts(params, recorded=hostkeys.pinned_servers(params), connect_timeout=2.5))
    gw = hosts["server-postgres-1"].gateway
    assert gw is not None and gw.name == "hcb-jumpbox" and gw.address == "203.0.113.40"  # its pinned address
    for s in params.servers:
        assert hosts[s.name].address == s.private_ip and hosts[s.name].gateway is gw
        assert hosts[s.name].where == f"{s.private_ip} via hcb-jumpbox"
    if opener == "status":
        assert gw.auth_retry_waits == ()  # a refused key on the jumpbox is said at once too


def test_with_a_jumpbox_that_has_no_address_status_names_the_jumpbox(tmp_path):
    params = prod(tmp_path / "known_hosts", private_ip="10.0.1.40")
    with pytest.raises(HostUnreachable, match="the jumpbox hcb-jumpbox has no SSH address"):
        _open_hosts(params, "production", 2.5)


def run_of(params: Params) -> Any:
    return SimpleNamespace(params=params)


def test_preflight_rows_and_addresses_follow_the_route(known_hosts):
    direct = run_of(prod(known_hosts))
    rows = {r["host"]: r["ssh"] for r in preflight.target_rows(direct)}
    user = direct.params.ssh.user
    assert rows["server-postgres-1"] == f"{user}@203.0.113.7"
    assert preflight._address(direct, "server-postgres-1", {"server-postgres-1": "198.51.100.9"}) == "198.51.100.9"
    behind = run_of(prod(known_hosts, private_ip="10.0.1.40"))
    rows = {r["host"]: r["ssh"] for r in preflight.target_rows(behind)}
    for s in behind.params.servers:
        assert rows[s.name] == f"{user}@{s.private_ip} via hcb-jumpbox"
        # the cloud API's public IP is not where SSH goes: the firewall takes SSH from the jumpbox only
        assert preflight._address(behind, s.name, {s.name: "198.51.100.9"}) == s.private_ip


def test_preflight_checks_the_operator_address_towards_the_jumpbox(known_hosts, monkeypatch):
    seen: list[list[str]] = []

    def fake_address(local: Any, given: Any, towards: list[str]) -> tuple[str, str]:
        seen.append(towards)
        return "192.0.2.1", "given"

    monkeypatch.setattr(preflight.operator, "get_operator_address", fake_address)
    behind = prod(known_hosts, private_ip="10.0.1.40")
    preflight.check_operator_address(run_of(behind))
    app = [preflight.app_ssh_address(behind)] if behind.app_host is not None else []
    assert seen[-1] == ["203.0.113.40", *app]
    direct = prod(known_hosts)
    preflight.check_operator_address(run_of(direct))
    assert seen[-1][0] == "203.0.113.7" and "203.0.113.40" not in seen[-1]
