"""Preflight's expected states pass with a note; what is not expected still warns (issue 27: signal, not noise).

A server the Hetzner Cloud project does not have yet is the state before step 01: a pass that says so.
A server that was provisioned (its key and address are pinned) and is gone from the project is not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hcbpg.adapters import hostkeys
from hcbpg.outcome import Check
from hcbpg.params import Params, load_params
from hcbpg.steps import preflight

from nbutil import make_params

TWO_SERVERS = make_params("test").replace(
    "  - {name: server-postgres-1, private_ip: 10.0.1.5, role: primary}\n",
    "  - {name: server-postgres-1, private_ip: 10.0.1.5, role: primary}\n"
    "  - {name: server-postgres-2, private_ip: 10.0.1.6, role: replica}\n")


@dataclass
class FakeRun:
    params: Params
    env: str = "test"


def _public_line() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_a_server_not_created_yet_passes_with_a_note_and_one_pinned_and_gone_warns(home: Path, env: str) -> None:
    (home / "params" / "test.yaml").write_text(TWO_SERVERS)
    params = load_params("test", home)
    rb = FakeRun(params)
    api = Check("Hetzner Cloud API reachable", "pass", "0 of 2 server(s) exist")

    rows = preflight.check_reachable(rb, ({}, api))  # type: ignore[arg-type] - the members check_reachable uses
    ssh = {c.target: c for c in rows if c.name == "reachable over SSH"}
    assert set(ssh) == {"server-postgres-1", "server-postgres-2"}
    for c in ssh.values():
        assert c.status == "pass" and c.detail.startswith("expected: not created yet") and "step 01" in c.detail

    # server-postgres-2 was provisioned before (step 01 pinned its key and address), the project lost it
    hostkeys.pin(hostkeys.known_hosts_path(params), "test", "server-postgres-2", [_public_line()],
                 address="203.0.113.7")
    rows = preflight.check_reachable(rb, ({}, api))  # type: ignore[arg-type]
    ssh = {c.target: c for c in rows if c.name == "reachable over SSH"}
    assert ssh["server-postgres-1"].status == "pass"
    gone = ssh["server-postgres-2"]
    assert gone.status == "warn" and "gone" in gone.detail and "203.0.113.7" in gone.detail, gone
