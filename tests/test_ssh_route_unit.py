"""Issue 28, WP2: the SSH route to each machine (pure ``desired.addresses.ssh_route``) and the Host that
``Host.from_params`` builds from it: through the jumpbox for a database server when params have ``jumpbox``,
directly otherwise.  Nothing here connects (tests/lab/test_jumpbox_ssh.py does)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.desired.addresses import Route, ssh_address, ssh_route
from hcbpg.errors import HostUnreachable, ParamsError
from hcbpg.params import Params, parse_params

from nbutil import manual_production

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhcYnBnLXRlc3Qta2V5LW5vdC1yZWFsLTAwMDAwMDAw"


def prod(known_hosts: Path | None = None, **jumpbox: Any) -> Params:
    d = manual_production()
    if jumpbox:
        d["jumpbox"] = jumpbox
    if known_hosts is not None:
        d["ssh"]["known_hosts"] = str(known_hosts)
    return parse_params(d)


def test_without_a_jumpbox_a_server_is_reached_directly_at_its_ssh_address():
    params = prod()
    recorded = [{"name": "server-postgres-1", "public_ip": "203.0.113.7"}]
    assert ssh_route(params, "server-postgres-1", recorded) == Route("203.0.113.7", None)
    assert ssh_route(params, "server-postgres-2") == Route(ssh_address(params, "server-postgres-2"), None)


def test_with_a_jumpbox_a_server_is_reached_at_its_private_ip_through_it():
    params = prod(private_ip="10.0.1.40")
    recorded = [{"name": "server-postgres-1", "public_ip": "203.0.113.7"}]
    for s in params.servers:
        assert ssh_route(params, s.name, recorded) == Route(s.private_ip, via="hcb-jumpbox")


def test_the_jumpbox_is_reached_directly_at_ssh_host_else_its_recorded_public_ip():
    recorded = [{"name": "hcb-jumpbox", "public_ip": "203.0.113.40"}]
    assert ssh_route(prod(private_ip="10.0.1.40"), "hcb-jumpbox", recorded) == Route("203.0.113.40")
    assert ssh_route(prod(private_ip="10.0.1.40"), "hcb-jumpbox") == Route(None)
    assert ssh_route(prod(private_ip="10.0.1.40", ssh_host="jump.example.org"), "hcb-jumpbox",
                     recorded) == Route("jump.example.org")
    renamed = prod(private_ip="10.0.1.40", name="jb-1")
    assert ssh_route(renamed, "jb-1", [{"name": "jb-1", "public_ip": "203.0.113.41"}]) == Route("203.0.113.41")
    assert ssh_route(renamed, "server-postgres-2").via == "jb-1"


def test_no_route_to_a_machine_params_do_not_name():
    with pytest.raises(ParamsError, match="metabase-box: not a server nor the jumpbox"):
        ssh_route(prod(private_ip="10.0.1.40"), "metabase-box")
    with pytest.raises(ParamsError):
        ssh_route(prod(), "hcb-jumpbox")  # no jumpbox in params: not a machine SSH knows


def test_from_params_without_a_jumpbox_connects_directly(tmp_path):
    host = Host.from_params(prod(tmp_path / "kh"), "server-postgres-1", "203.0.113.7")
    assert host.gateway is None and host.where == "203.0.113.7"


def test_from_params_puts_a_server_behind_the_jumpbox_at_ssh_host_and_shares_it(tmp_path):
    params = prod(tmp_path / "kh", private_ip="10.0.1.40", ssh_host="198.51.100.9")
    a = Host.from_params(params, "server-postgres-1", "10.0.1.31")
    b = Host.from_params(params, "server-postgres-2", "10.0.1.32")
    assert a.gateway is not None and a.gateway is b.gateway
    gw = a.gateway
    assert gw._serves and not a._serves  # the gateway's own connection acknowledges at once
    assert (gw.name, gw.address, gw.gateway, gw.port, gw.known_hosts) == (
        "hcb-jumpbox", "198.51.100.9", None, params.ssh.port, tmp_path / "kh")
    assert a.where == "10.0.1.31 via hcb-jumpbox"
    assert "via hcb-jumpbox" in repr(a)
    # the jumpbox itself, and a machine that is no database server, are reached directly
    assert Host.from_params(params, "hcb-jumpbox", "198.51.100.9").gateway is None
    assert Host.from_params(params, "app", "10.0.1.10").gateway is None
    # the caller may choose: directly, or through another gateway
    assert Host.from_params(params, "server-postgres-1", "10.0.1.31", gateway=None).gateway is None


def test_from_params_reaches_the_jumpbox_at_the_address_pinned_with_its_key(tmp_path):
    kh = tmp_path / "production.known_hosts"
    params = prod(kh, private_ip="10.0.1.40")
    with pytest.raises(HostUnreachable, match="hcb-jumpbox has no SSH address"):
        Host.from_params(params, "server-postgres-1", "10.0.1.31")
    hostkeys.pin(kh, "production", "hcb-jumpbox", [PUB], address="203.0.113.40")
    host = Host.from_params(params, "server-postgres-1", "10.0.1.31")
    assert host.gateway is not None and host.gateway.address == "203.0.113.40"


def test_a_gateway_that_fails_to_connect_is_named_and_released(tmp_path):
    """Nothing listens on the gateway's address (a closed local port): the server's connect fails naming the
    jumpbox, and neither holds a connection afterwards."""
    params = prod(tmp_path / "kh", private_ip="10.0.1.40", ssh_host="127.0.0.1")
    host = Host.from_params(params, "server-postgres-1", "10.0.1.31", port=1, connect_timeout=2)
    with pytest.raises(HostUnreachable) as ei:
        host.connect()
    assert ei.value.host == "hcb-jumpbox"
    assert host._conn is None and host.gateway is not None and host.gateway._conn is None
    assert host.gateway._users == 0
