"""Params refuse weak settings for production-grade environments (staging too), allow them in the lab."""

from __future__ import annotations

import shutil

import pytest
import yaml

from hcbpg.desired import backups as pgb
from hcbpg.errors import ParamsError
from hcbpg.params import load_params, parse_params

from nbutil import REPO


def prod() -> dict:
    return yaml.safe_load((REPO / "params" / "production.yaml").read_text())


def problems(data: dict) -> list[str]:
    with pytest.raises(ParamsError) as ei:
        parse_params(data)
    return ei.value.problems


@pytest.mark.parametrize("change, key", [
    (lambda d: d["pgbackrest"].update(cipher_type="none", cipher_pass=None), "pgbackrest.cipher_type"),
    (lambda d: d["pgbackrest"].update(s3_verify_tls=False), "pgbackrest.s3_verify_tls"),
    (lambda d: d["hetzner"].update(admin_source_ranges=["0.0.0.0/0"]), "hetzner.admin_source_ranges"),
    (lambda d: d["hetzner"].update(admin_source_ranges=["10.0.0.0/8", "::/0"]), "hetzner.admin_source_ranges"),
])
def test_production_refuses_weak_settings_and_names_the_key(change, key):
    d = prod()
    change(d)
    (p,) = problems(d)
    assert p.startswith(f"{key}: ") and "allow_weak_settings" in p, p
    d["allow_weak_settings"] = True  # the lab (or a throwaway environment) may
    assert parse_params(d).allow_weak_settings


def test_every_weak_setting_is_reported_at_once():
    d = prod()
    d["pgbackrest"].update(cipher_type="none", cipher_pass=None, s3_verify_tls=False)
    d["hetzner"]["admin_source_ranges"] = ["0.0.0.0/0"]
    assert [p.split(":")[0] for p in problems(d)] == [
        "pgbackrest.cipher_type", "pgbackrest.s3_verify_tls", "hetzner.admin_source_ranges"]


def test_no_admin_ranges_means_no_ssh_rule_rather_than_the_whole_internet():
    from hcbpg.desired import cloud as desired_cloud
    d = prod()
    del d["hetzner"]["admin_source_ranges"]
    assert desired_cloud.render_firewall_rules(parse_params(d)) == []


def copy_params(tmp_path, *envs):
    (tmp_path / "params").mkdir()
    for e in envs:
        shutil.copy(REPO / "params" / f"{e}.yaml", tmp_path / "params" / f"{e}.yaml")
    return tmp_path


def test_committed_staging_and_production_have_their_own_keys():
    for env in ("staging", "production", "lab"):
        load_params(env, REPO)


def test_a_key_shared_with_another_environment_is_refused_naming_both(tmp_path):
    base = copy_params(tmp_path, "staging", "production")
    st = yaml.safe_load((base / "params" / "staging.yaml").read_text())
    pr = yaml.safe_load((base / "params" / "production.yaml").read_text())
    st["pgbackrest"]["cipher_pass"] = pr["pgbackrest"]["cipher_pass"]
    (base / "params" / "staging.yaml").write_text(yaml.safe_dump(st))
    for env, other in (("staging", "production.yaml"), ("production", "staging.yaml")):
        with pytest.raises(ParamsError) as ei:
            load_params(env, base)
        (p,) = ei.value.problems
        assert p.startswith("pgbackrest.cipher_pass: op://") and other in p, p
    # an environment that allows weak settings (a throwaway copy) may share; production still may not
    st["allow_weak_settings"] = True
    (base / "params" / "staging.yaml").write_text(yaml.safe_dump(st))
    assert load_params("staging", base).allow_weak_settings
    with pytest.raises(ParamsError, match="also pgbackrest.cipher_pass of staging.yaml"):
        load_params("production", base)


def test_the_s3_key_counts_as_shared_in_another_key_too(tmp_path):
    """The drill's read-only key must not be another environment's read-write key either."""
    base = copy_params(tmp_path, "staging", "production")
    pr = yaml.safe_load((base / "params" / "production.yaml").read_text())
    pr["drill"] = {"private_ip": "10.0.1.30",
                   "s3_key": "op://HCB Engineering/Hetzner Object Storage pgbackrest staging/access key",
                   "s3_key_secret": "op://HCB Engineering/drill ro/secret key"}
    (base / "params" / "production.yaml").write_text(yaml.safe_dump(pr))
    with pytest.raises(ParamsError, match=r"drill.s3_key: .* is also pgbackrest.s3_key of staging.yaml"):
        load_params("production", base)


def test_drill_read_only_key_is_what_the_drill_host_gets(monkeypatch):
    monkeypatch.setenv("T_RW_KEY", "rw-key-0123456789")
    monkeypatch.setenv("T_RW_SECRET", "rw-secret-0123456789")
    monkeypatch.setenv("T_RO_KEY", "ro-key-0123456789")
    monkeypatch.setenv("T_RO_SECRET", "ro-secret-0123456789")
    monkeypatch.setenv("T_CIPHER", "cipher-0123456789")
    d = prod()
    d["pgbackrest"].update(s3_key="env:T_RW_KEY", s3_key_secret="env:T_RW_SECRET", cipher_pass="env:T_CIPHER")
    d["drill"] = {"private_ip": "10.0.1.30"}
    p = parse_params(d)
    assert pgb.resolve_conf_secrets(p, read_only=True)["repo1-s3-key"] == "rw-key-0123456789"  # none given
    d["drill"].update(s3_key="env:T_RO_KEY")
    (msg,) = problems(d)
    assert msg.startswith("drill.s3_key") and "both" in msg
    d["drill"]["s3_key_secret"] = "env:T_RO_SECRET"
    p = parse_params(d)
    ro = pgb.resolve_conf_secrets(p, read_only=True)
    assert (ro["repo1-s3-key"], ro["repo1-s3-key-secret"], ro["repo1-cipher-pass"]) == (
        "ro-key-0123456789", "ro-secret-0123456789", "cipher-0123456789")
    assert pgb.resolve_conf_secrets(p)["repo1-s3-key"] == "rw-key-0123456789"
