"""Issue 28, WP2: step 01's module with a jumpbox in params, without I/O: which machines it pins and where it reads
their keys, the jumpbox Host the Metabase and rotation steps get, and a server the jumpbox cannot reach stopping the
run before public SSH is closed (the firewall untouched).  tests/lab/test_jumpbox.py runs it all for real."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.desired.cloud import ServerRecord
from hcbpg.desired.roles import roles_config
from hcbpg.errors import HostUnreachable, SafetyCheckFailed
from hcbpg.params import Params, parse_params
from hcbpg.steps import provision, targets

from nbutil import manual_lab

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhcYnBnLXRlc3Qta2V5LW5vdC1yZWFsLTAwMDAwMDAw"


def params_with(known_hosts: Path, *, jumpbox: bool) -> Params:
    d = manual_lab()
    d["ssh"]["known_hosts"] = str(known_hosts)
    if jumpbox:
        d["jumpbox"] = {"name": "hcb-jumpbox", "private_ip": "10.0.1.40"}
    return parse_params(d)


def test_the_jumpbox_comes_first_and_replaces_metabases_jumpbox(tmp_path):
    plain = params_with(tmp_path / "kh", jumpbox=False)
    assert ("jumpbox", "10.0.1.40") in provision.other_machines(plain)  # Metabase's, pinned as a lab host
    params = params_with(tmp_path / "kh", jumpbox=True)
    assert [name for name, _ in provision.other_machines(params)] == ["app", "drill-1"]  # the jumpbox is provisioned
    records = [ServerRecord("hcb-jumpbox", "jumpbox", "10.0.1.40", 9, "203.0.113.40", "running"),
               ServerRecord("server-postgres-1", "primary", "10.0.1.5", 10, "203.0.113.5", "running"),
               ServerRecord("server-postgres-2", "replica", "10.0.1.6")]  # not created (a dry run)
    assert [provision._provisioned_address(params, r) for r in records] == [
        ("203.0.113.40", None), ("10.0.1.5", "hcb-jumpbox"), (None, None)]
    assert provision._provisioned_address(plain, records[1]) == ("203.0.113.5", None)  # directly, its public IP
    rows = provision.check_host_keys(params, dry_run=True)
    assert [(r.target, r.status) for r in rows] == [("hcb-jumpbox", "warn"), ("server-postgres-1", "warn"),
                                                    ("server-postgres-2", "warn")]


def test_jumpbox_host_follows_params_jumpbox(tmp_path, monkeypatch):
    kh = tmp_path / "kh"
    params = params_with(kh, jumpbox=True)
    cfg = roles_config(params)
    assert cfg.jumpbox_ip == "10.0.1.40"
    assert targets.jumpbox_host(params, cfg) is None  # no address pinned yet: step 01 has not made it
    hostkeys.pin(kh, "lab", "hcb-jumpbox", [PUB], address="203.0.113.40")
    opened: list[Host] = []
    monkeypatch.setattr(Host, "connect", lambda self: opened.append(self) or self)
    host = targets.jumpbox_host(params, cfg)
    assert host is not None and (host.name, host.address, host.gateway) == ("hcb-jumpbox", "203.0.113.40", None)
    plain = params_with(kh, jumpbox=False)
    host = targets.jumpbox_host(plain, SimpleNamespace(jumpbox_ip="10.0.1.40", jumpbox_ssh_host=None))
    assert host is not None and (host.name, host.address) == ("jumpbox", "10.0.1.40")


def test_a_server_the_jumpbox_cannot_reach_stops_the_run_before_ssh_is_closed(tmp_path, monkeypatch):
    kh = tmp_path / "kh"
    params = params_with(kh, jumpbox=True)
    hostkeys.pin(kh, "lab", "hcb-jumpbox", [PUB], address="203.0.113.40")

    def connect(self: Host) -> Any:
        raise HostUnreachable(self.name, self.where, "timed out")

    monkeypatch.setattr(Host, "connect", connect)
    touched: list[str] = []
    monkeypatch.setattr(provision.cloud, "ensure_public_ssh_closed", lambda *a, **k: touched.append("closed") or [])
    rb = SimpleNamespace(params=params, dry_run=False)
    with pytest.raises(SafetyCheckFailed) as ei:
        provision.close_public_ssh(rb, SimpleNamespace(client=None))  # type: ignore[arg-type]
    assert "SSH to server-postgres-1 through hcb-jumpbox failed" in str(ei.value)
    assert "keeps SSH from the admin ranges" in str(ei.value) and touched == []
    # a dry run plans it with the server as a server not there yet (an AbsentHost)
    got: dict[str, Any] = {}
    monkeypatch.setattr(provision.cloud, "ensure_public_ssh_closed",
                        lambda client, p, hosts, *, dry_run: got.update(hosts=hosts, dry_run=dry_run) or [])
    assert provision.close_public_ssh(SimpleNamespace(params=params, dry_run=True), SimpleNamespace(client=None)) == []
    assert got["dry_run"] and sorted(got["hosts"]) == ["server-postgres-1", "server-postgres-2"]
    assert all(type(h).__name__ == "AbsentHost" for h in got["hosts"].values())
    # without a jumpbox nothing is asked
    assert provision.close_public_ssh(SimpleNamespace(params=params_with(kh, jumpbox=False), dry_run=False),
                                      SimpleNamespace(client=None)) == []
