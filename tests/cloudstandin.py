"""The lab's Hetzner Cloud API stand-in for the cloud tests (tests/test_cloud.py, tests/fast/test_cloud_specs.py):
params pointing at it, the hooks it calls, and the fixtures ``hooks``, ``api``, ``params`` and ``client``.

A test module gets the fixtures by importing them (``from cloudstandin import api_fixture, ...``); they are
registered under their short names (``@pytest.fixture(name=...)``), so they stay out of every other module.
"""

from __future__ import annotations

import base64
from pathlib import Path

import hcloud
import pytest

from hcbpg.adapters import cloud as cloud_api
from hcbpg.lab.hcloud_api import HcloudStandin, RunningStandin, read_state
from hcbpg.ops import provisioning as cloud
from hcbpg.params import parse_params
from hcbpg.steps.provision import read_ssh_public_key
from tests.nbutil import manual_lab

REPO = Path(__file__).resolve().parent.parent
TOKEN = "lab-token-0123456789abcdef"


def public_key(seed: int = 1) -> str:
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} ops@lab"


def lab_params(tmp_path: Path, endpoint: str = "http://127.0.0.1:9/v1", weak: bool = False, **hetzner):
    data = manual_lab()
    data["allow_weak_settings"] = weak  # SSH from anywhere (a firewall rendering test) needs it
    key_file = tmp_path / "id_ed25519.pub"
    key_file.write_text(public_key() + "\n")
    data["hetzner"].update({"api_endpoint": endpoint, "ssh_public_key_file": str(key_file), **hetzner})
    data["ssh"]["known_hosts"] = str(tmp_path / "lab.known_hosts")
    return parse_params(data, source="lab test params")


class Hooks:
    def __init__(self) -> None:
        self.created: list[tuple[str, str | None, list[str]]] = []
        self.host_keys: dict[str, dict[str, str]] = {}

    def on_created(self, name, private_ip, keys, host_keys):
        self.created.append((name, private_ip, keys))
        self.host_keys[name] = host_keys
        return {"public_ip": f"10.99.0.{len(self.created)}"}


@pytest.fixture(name="hooks")
def hooks_fixture() -> Hooks:
    return Hooks()


@pytest.fixture(name="api")
def api_fixture(tmp_path, hooks):
    pytest.importorskip("cheroot", reason="the API stand-in is served by cheroot (pip install '.[lab]')")
    app = HcloudStandin(tmp_path / "hcloud.json", TOKEN, on_server_created=hooks.on_created,
                        on_server_deleted=lambda name: None, reserved_ips=["10.0.1.1"])
    with RunningStandin(app) as running:
        yield running


@pytest.fixture(name="params")
def params_fixture(tmp_path, api):
    return lab_params(tmp_path, api.url)


@pytest.fixture(name="client")
def client_fixture(params) -> hcloud.Client:
    return cloud_api.make_client(params, TOKEN, poll_interval=0.01)


def provision(client, params, *, dry_run=False):
    return cloud.ensure_provisioned(client, params, dry_run=dry_run, ssh_public_key=read_ssh_public_key(params))


def state_ids(path: Path) -> dict[str, list[int]]:
    st = read_state(path)
    return {k: sorted(x["id"] for x in st[k]) for k in ("ssh_keys", "networks", "firewalls", "placement_groups",
                                                        "servers")}
