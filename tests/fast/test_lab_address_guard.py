"""The labs' address space gets an ``unreachable`` route only where it would leave through the default gateway: never
over a network of the machine's own (a VPN), never twice."""

from __future__ import annotations

import subprocess

import pytest

from hcbpg.lab import hosts


def _routes(monkeypatch, *, exact: str = "", default: str = "default via 192.0.2.1 dev eth0",
            get: str = "10.1.255.254 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0", root: bool = True) -> list[list[str]]:
    ran: list[list[str]] = []

    def run(argv, *, check=True, **_kw):  # noqa: ANN001, ANN202
        ran.append(list(argv))
        out = "" if argv[2] == "add" else {"show": exact if "exact" in argv else default, "get": get}[argv[3]]
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(hosts, "run", run)
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 0 if root else 1000)
    return ran


def test_the_space_leaving_through_the_default_gateway_is_made_unreachable(monkeypatch):
    ran = _routes(monkeypatch)
    assert hosts.ensure_address_guard()
    assert ran[-1] == ["ip", "route", "add", "unreachable", "10.0.0.0/15"]
    assert ["ip", "-o", "route", "get", "10.1.255.254"] in ran  # an address no lab gives out


def test_a_guard_in_place_is_left_as_it_is(monkeypatch):
    ran = _routes(monkeypatch, exact="unreachable 10.0.0.0/15")
    assert hosts.ensure_address_guard()
    assert not [a for a in ran if "add" in a]


@pytest.mark.parametrize("get", ["10.1.255.254 dev tun0 src 10.8.0.2 uid 0",           # the machine's VPN
                                 "10.1.255.254 via 10.8.0.1 dev tun0 src 10.8.0.2 uid 0"])
def test_a_space_routed_some_other_way_is_not_touched(monkeypatch, get):
    ran = _routes(monkeypatch, get=get)
    assert not hosts.ensure_address_guard()
    assert not [a for a in ran if "add" in a]


def test_without_root_nothing_is_added(monkeypatch):
    ran = _routes(monkeypatch, root=False)
    assert not hosts.ensure_address_guard()
    assert not [a for a in ran if "add" in a]
