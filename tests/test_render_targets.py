"""Where SSH goes (targets); the install plan's specs are in tests/fast/test_server_specs.py."""

from __future__ import annotations

import pytest

from hcbpg.desired import addresses
from hcbpg.errors import ParamsError
from hcbpg.params import parse_params


def make_params(**extra):
    data = {
        "environment": "production",
        "hetzner": {"token": "env:T", "ssh_public_key_file": "/dev/null"},
        "servers": [{"name": "server-postgres-1", "private_ip": "10.0.1.5", "role": "primary"},
                    {"name": "server-postgres-2", "private_ip": "10.0.1.6", "role": "replica",
                     "ssh_host": "pg2.example.net"}],
        "postgres": {"app_role_password": "env:P"},
    }
    data.update(extra)
    return parse_params(data)


RECORDED = [{"name": "server-postgres-1", "public_ip": "198.51.100.7", "private_ip": "10.0.1.5", "id": 11},
            {"name": "server-postgres-2", "public_ip": "198.51.100.8", "private_ip": "10.0.1.6", "id": 12}]


def test_ssh_host_from_params_wins_over_the_recorded_public_ip():
    assert addresses.ssh_address(make_params(), "server-postgres-2", RECORDED) == "pg2.example.net"


def test_recorded_public_ip_is_used_when_params_set_no_ssh_host():
    assert addresses.ssh_address(make_params(), "server-postgres-1", RECORDED) == "198.51.100.7"


def test_no_address_before_provisioning_or_from_a_dry_run_record():
    assert addresses.ssh_address(make_params(), "server-postgres-1", []) is None
    planned = [{"name": "server-postgres-1", "public_ip": None, "private_ip": "10.0.1.5", "id": None}]
    assert addresses.ssh_address(make_params(), "server-postgres-1", planned) is None


def test_app_host_is_reached_at_ssh_host_else_its_private_ip():
    assert addresses.app_ssh_address(make_params(app_host={"name": "app", "private_ip": "10.0.1.10"})) == "10.0.1.10"
    assert addresses.app_ssh_address(make_params(
        app_host={"name": "app", "private_ip": "10.0.1.10", "ssh_host": "app.example.net"})) == "app.example.net"
    with pytest.raises(ParamsError, match="app_host"):
        addresses.app_ssh_address(make_params())
