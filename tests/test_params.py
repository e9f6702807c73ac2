"""Params validation: every bad-input case names its key, and nothing runs."""

from __future__ import annotations

import shutil

import pytest
import yaml

from hcbpg.errors import ParamsError
from hcbpg.params import load_params, parse_params

from nbutil import REPO, hcbpg


def prod() -> dict:
    return yaml.safe_load((REPO / "params" / "production.yaml").read_text())


@pytest.mark.parametrize("env", ["production", "staging", "lab"])
def test_committed_params_are_valid(env):
    p = load_params(env, REPO)
    assert p.environment == env
    assert p.postgres.database == "hcb_production"


def test_production_values_come_from_the_runbook():
    p = load_params("production", REPO)
    assert (p.hetzner.location, p.hetzner.server_type, p.hetzner.placement_group) == (
        "ash", "ccx13", "hcb-postgres-placement")
    assert [s.name for s in p.servers] == ["server-postgres-1", "server-postgres-2"]
    assert (p.network.ip_range, p.network.subnet) == ("10.0.0.0/16", "10.0.1.0/24")
    assert (p.postgres.app_role, p.postgres.app_role_connection_limit) == ("rails", 500)
    b = p.pgbackrest
    assert (b.stanza, b.s3_bucket, b.s3_endpoint, b.s3_region) == (
        "hcb_production", "hcb-production-postgres", "fsn1.your-objectstorage.com", "fsn1")
    assert (b.process_max, b.retention_full_type, b.retention_full, b.cipher_type) == (4, "time", 30, "aes-256-cbc")
    assert (b.bundle, b.compress_type, b.start_fast) == (True, "zst", True)


def problems(data: dict) -> list[str]:
    with pytest.raises(ParamsError) as ei:
        parse_params(data)
    return ei.value.problems


def test_misspelt_key_is_named_with_a_suggestion():
    d = prod()
    d["postgres"]["databse"] = d["postgres"].pop("database")
    assert problems(d) == ["postgres.databse: unknown key; did you mean 'database'?"]


def test_unknown_top_level_key():
    d = prod()
    d["sevrers"] = d["servers"]
    assert any(p.startswith("sevrers: unknown key; did you mean 'servers'") for p in problems(d))


def test_cidr_with_host_bits_says_what_it_means_and_what_to_write():
    d = prod()
    d["network"]["subnet"] = "10.0.1.0/16"      # the runbook's own line
    (msg,) = problems(d)
    assert msg.startswith("network.subnet: '10.0.1.0/16' has host bits set")
    assert "10.0.0.0/16" in msg and "10.0.1.0/24" in msg


def test_address_outside_its_subnet_names_the_server():
    d = prod()
    d["servers"][1]["private_ip"] = "10.0.2.6"
    (msg,) = problems(d)
    assert "servers[1].private_ip" in msg and "server-postgres-2" in msg and "outside the subnet 10.0.1.0/24" in msg


def test_block_incremental_without_bundling_is_a_contradiction():
    d = prod()
    d["pgbackrest"].update(block=True, bundle=False)
    (msg,) = problems(d)
    assert msg.startswith("pgbackrest.block:") and "bundle" in msg


def test_a_plain_password_is_not_a_secret_reference():
    d = prod()
    d["postgres"]["app_role_password"] = "hunter2hunter2"
    (msg,) = problems(d)
    assert msg.startswith("postgres.app_role_password:") and "not a secret reference" in msg


def test_subnet_outside_range_and_two_primaries_are_both_reported():
    d = prod()
    d["network"]["subnet"] = "10.1.0.0/24"
    d["servers"][1]["role"] = "primary"
    msgs = problems(d)
    assert any("servers" in m and "exactly one server" in m for m in msgs)
    assert any(m.startswith("network") and "not inside ip_range" in m for m in msgs)


def test_cli_bad_params_exit_2_and_nothing_runs(home):
    d = prod()
    d["network"]["subnet"] = "10.0.1.0/16"
    (home / "params" / "production.yaml").write_text(yaml.safe_dump(d))
    for args in (["params", "check", "production"], ["run", "production"], ["plan", "production"]):
        r = hcbpg(*args)
        assert r.returncode == 2, r
        assert "network.subnet" in r.stderr and "Traceback" not in r.stderr
    assert not (home / "outputs").exists()


def test_cli_params_check_production_passes(home):
    shutil.copy(REPO / "params" / "production.yaml", home / "params")
    r = hcbpg("params", "check", "production")
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_site_is_a_dotted_reference_and_chooses_the_site():
    from hcbpg.adapters.site import PRODUCTION, site_for
    from hcbpg.lab.site import LabSite
    d = prod()
    assert site_for(parse_params(d)) is PRODUCTION
    d["site"] = "hcbpg.lab.site:LabSite"
    assert isinstance(site_for(parse_params(d)), LabSite)
    d["site"] = "hcbpg/lab/site.py"
    assert any(p.startswith("site:") for p in problems(d))
    lab = load_params("lab", REPO)
    assert lab.site == "hcbpg.lab.site:LabSite" and isinstance(site_for(lab), LabSite)
