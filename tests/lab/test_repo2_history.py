"""Issue 24, item 2 for the second repository: repo2's history is protected like repo1's.

repo2 in a bucket of its own in the lab's second S3 store (another moto, "another provider"), made without
versioning; its servers' key registered with the lab S3's IAM stand-in under the policy hcbpg renders for the
provider (:func:`render_server_key_policy`), its admin key the second store's unlimited one (only on the jumpbox and
in this process).  repo1 is the worker's first store under this module's prefix, without an admin key.  On a clone of
the worker's primary stage: step 05's protect_history turns on repo2's versioning and lifecycle rule with repo2's
admin key and writes the jumpbox's expiry of both repositories; its checks pass (repo1 named: no admin key); repo2's
servers' key cannot delete a version or change the bucket; two full backups into repo2 (the server does not expire),
the jumpbox's expiry removes the older with repo2's admin key; a second run of step 05 changes nothing.
The tests run in file order and build on each other.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired import repo_history as rh
from hcbpg.lab import destroy_server_host
from hcbpg.lab.hosts import create_server_host
from hcbpg.lab.s3 import register_key
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import repo_history as ops_rh
from hcbpg.params import parse_params
from hcbpg.pg.pgbackrest import parse_info_json
from hcbpg.secrets import resolve
from hcbpg.steps import pgbackrest as step05
from hcbpg.steps import start_archiving as step08

from labparams import ensure_secret_file, lab_params, pgbackrest_section
from stages import STAGE_PRIMARY

pytestmark = pytest.mark.lab

#: repo2's bucket in the lab's second store: this module's own, made here without versioning
BUCKET2 = "hcb-repo2-history-test"
JUMPBOX = "hcb-jumpbox"
JUMPBOX_OFFSET = 67
STATE: dict = {}


def _secret_file(path, value: str) -> str:  # noqa: ANN001 - a Path
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return f"file:{path}"


@pytest.fixture(scope="module")
def repo2_section(lab):
    """repo2 at the lab's second store: the servers' key limited by the IAM stand-in, the store's own key as admin."""
    cfg = lab.cfg
    for name in ("s3b-key", "s3b-key-secret", "cipher-pass-2"):
        ensure_secret_file(cfg.secret_path(name))
    key_id = "HCBREPO2SRV" + pysecrets.token_hex(6).upper()
    secret = pysecrets.token_urlsafe(30)
    register_key(cfg, key_id, rh.render_server_key_policy(BUCKET2))
    STATE["server_key"], STATE["server_secret"] = key_id, secret
    d = cfg.secrets_dir
    return {"s3_bucket": BUCKET2, "s3_endpoint": cfg.s3b_endpoint.removeprefix("https://"),
            "s3_region": "us-east-1", "s3_uri_style": "path", "s3_ca_file": str(cfg.ca_cert),
            "s3_key": _secret_file(d / "s3-repo2-history-server-key", key_id),
            "s3_key_secret": _secret_file(d / "s3-repo2-history-server-key-secret", secret),
            "admin_s3_key": f"file:{cfg.secret_path('s3b-key')}",
            "admin_s3_key_secret": f"file:{cfg.secret_path('s3b-key-secret')}",
            "cipher_pass": f"file:{cfg.secret_path('cipher-pass-2')}", "repo_path_prefix": "/pgbackrest-repo2-history-2",
            "retention_full_type": "count", "retention_full": 1, "noncurrent_version_expiry_days": 14}


@pytest.fixture(scope="module")
def params(lab, primary_stage, repo2_section):
    cfg = lab.cfg
    jb_ip = cfg.address(JUMPBOX_OFFSET)
    assert lab.status()["services"]["s3b"]["running"], lab.status()["services"]
    ip = primary_stage.clone()
    data = lab_params(lab, [(STAGE_PRIMARY, ip, "primary")],
                      pgbackrest=pgbackrest_section(lab, repo2=repo2_section),
                      jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip})
    p = parse_params(data)
    create_server_host(JUMPBOX, jb_ip, [lab.ssh_key.with_suffix(".pub").read_text()], lab_dir=str(lab.lab_dir))
    yield p
    for name in (STAGE_PRIMARY, JUMPBOX):
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def hosts(params):
    assert params.jumpbox is not None
    hs = {"primary": Host.from_params(params, STAGE_PRIMARY, params.primary.private_ip),
          "jumpbox": Host.from_params(params, JUMPBOX, params.jumpbox.private_ip)}
    yield hs
    for h in hs.values():
        h.close()


@pytest.fixture(scope="module")
def admin_store(params):
    """repo2's bucket through repo2's admin key (made here, without versioning, when missing)."""
    repo2 = params.pgbackrest.repo2
    store = ObjectStore.of_repo(repo2, resolve(repo2.admin_s3_key, key="a"), resolve(repo2.admin_s3_key_secret, key="b"),
                                label="repo2")
    if BUCKET2 not in [b["Name"] for b in store.client.list_buckets().get("Buckets", [])]:
        store.client.create_bucket(Bucket=BUCKET2)
    return store


class _Run:
    """What step 05's protect_history and check_history read of a notebook's run: params, dry run, secrets."""

    def __init__(self, params, dry_run: bool = False) -> None:  # noqa: ANN001
        self.params, self.dry_run = params, dry_run

    def secret(self, key: str) -> str:
        obj = self.params
        for part in key.split("."):
            obj = getattr(obj, part)
        return resolve(obj, key=key)


def _changed(outcomes: list) -> set[str]:
    return {o.what for o in outcomes if o.changed}


def _repo_backups(host, params, repo: int) -> list[str]:  # noqa: ANN001
    rows = parse_info_json(pgb.get_info_json(host, params), params.pgbackrest.stanza)
    return [b.label for b in rows if b.repo == repo]


def test_step05_versions_repo2_with_its_admin_key_and_puts_its_rule(params, hosts, admin_store):
    assert admin_store.versioning() is None and admin_store.lifecycle_rules() == []
    repo2 = f"repo2 s3://{BUCKET2}"
    expected = {f"versioning of {repo2}", f"lifecycle of {repo2} ({rh.LIFECYCLE_RULE_ID})",
                f"{rh.EXPIRE_CONF_PATH} on {JUMPBOX}", f"{rh.EXPIRE_CRON_PATH} on {JUMPBOX}"}
    planned = step05.protect_history(_Run(params, dry_run=True))
    assert expected <= _changed(planned), _changed(planned)
    assert not any("repo1" in w for w in _changed(planned))  # repo1 has no admin key: its bucket is not touched
    assert all(o.dry_run for o in planned)
    assert admin_store.versioning() is None and admin_store.lifecycle_rules() == []  # a plan wrote nothing
    t0 = time.monotonic()
    outcomes = step05.protect_history(_Run(params))
    print(f"\nprotect_history in {time.monotonic() - t0:.1f}s:\n" + "\n".join(str(o) for o in outcomes))
    assert _changed(outcomes) == _changed(planned)
    assert admin_store.versioning() == "Enabled"
    assert [(c.status, c.detail) for c in ops_rh.check_noncurrent_version_expiry(admin_store, 14)] == [
        ("pass", "noncurrent versions removed after 14 days")]
    # the jumpbox's config expires both repositories: repo1 with its own key (no admin key), repo2 with its admin key
    conf = desired_pgbackrest.parse_conf(hosts["jumpbox"].read_text(rh.EXPIRE_CONF_PATH) or "")["global"]
    admin_secret = resolve(params.pgbackrest.repo2.admin_s3_key_secret, key="admin")
    assert conf["repo2-s3-key-secret"] == admin_secret != STATE["server_secret"]
    assert conf["repo2-s3-bucket"] == BUCKET2 and conf["repo1-s3-bucket"] == params.pgbackrest.s3_bucket
    primary = hosts["primary"]
    step05.configure(primary, params, params.primary)
    found = desired_pgbackrest.parse_conf(primary.read_text(desired_pgbackrest.CONF_PATH) or "")
    assert found["global:backup"] == {"expire-auto": "n"}
    assert found["global"]["repo2-s3-key"] == STATE["server_key"]
    assert admin_secret not in (primary.read_text(desired_pgbackrest.CONF_PATH) or "")
    step08.start_archiving(primary, params, params.primary)


def test_step05s_checks_show_repo2_protected_and_name_repo1(params):
    checks = step05.check_history(_Run(params))
    rows = [(c.name, c.target, c.status) for c in checks]
    print("\n".join(f"{c.status:5} {c.name} {c.target}: {c.detail}" for c in checks))
    repo2 = f"repo2 s3://{BUCKET2}"
    assert rows == [("history protected", "repo1", "warn"), ("versioning", repo2, "pass"),
                    ("old versions' expiry", repo2, "pass"),
                    (f"expiry {rh.EXPIRE_CONF_PATH}", JUMPBOX, "pass"), (f"expiry {rh.EXPIRE_CRON_PATH}", JUMPBOX, "pass")]


def test_repo2s_servers_key_cannot_delete_a_version_or_change_the_bucket(params, hosts, admin_store):
    from botocore.exceptions import ClientError

    primary = hosts["primary"]
    pgb.run_backup(primary, params, type="full", repo=2)
    found = desired_pgbackrest.parse_conf(primary.read_text(desired_pgbackrest.CONF_PATH) or "")["global"]
    attacker = ObjectStore.of_repo(params.pgbackrest.repo2, found["repo2-s3-key"], found["repo2-s3-key-secret"])
    prefix = rh.key_prefix(desired_pgbackrest.repo_index_path(params, params.pgbackrest.repo2))
    assert any(k.startswith(prefix + "backup/") for k in attacker.keys(prefix))  # it reads and writes its repository
    versions = [v for v in admin_store.versions(prefix) if not v["delete_marker"]]
    assert versions

    def denied(fn, **kw) -> str:  # noqa: ANN001
        try:
            fn(Bucket=BUCKET2, **kw)
        except ClientError as exc:
            return str(exc.response["Error"]["Code"])
        return "allowed"
    c = attacker.client
    assert denied(c.delete_object, Key=versions[0]["key"], VersionId=versions[0]["version_id"]) == "AccessDenied"
    assert denied(c.delete_objects, Delete={"Objects": [{"Key": v["key"], "VersionId": v["version_id"]}
                                                        for v in versions[:20]]}) == "AccessDenied"
    assert denied(c.put_bucket_versioning, VersioningConfiguration={"Status": "Suspended"}) == "AccessDenied"
    assert denied(c.put_bucket_lifecycle_configuration, LifecycleConfiguration={"Rules": [
        {"ID": "wipe", "Status": "Enabled", "Filter": {"Prefix": ""},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]}) == "AccessDenied"
    assert denied(c.delete_bucket_lifecycle) == "AccessDenied"
    assert denied(c.list_object_versions) == "AccessDenied"
    # nothing of the history went: every version is still there, the rule unchanged
    assert {v["version_id"] for v in versions} <= {v["version_id"] for v in admin_store.versions(prefix)}
    assert admin_store.versioning() == "Enabled"
    assert [c.status for c in ops_rh.check_noncurrent_version_expiry(admin_store, 14)] == ["pass"]


def test_the_jumpbox_expires_repo2_with_its_admin_key(params, hosts):
    primary, jumpbox = hosts["primary"], hosts["jumpbox"]
    pgb.run_backup(primary, params, type="full", repo=2)
    labels = _repo_backups(primary, params, 2)
    assert len(labels) == 2, labels  # retention_full=1 in repo2, and the server did not expire the first
    t0 = time.monotonic()
    res = ops_rh.run_expire(jumpbox, params)
    expired = rh.parse_expire_output(res.output)
    print(f"expiry on the jumpbox in {time.monotonic() - t0:.1f}s: {expired}")
    assert any(line.startswith("repo2: expire full backup") and labels[0] in line for line in expired), res.output
    assert _repo_backups(primary, params, 2) == labels[1:]


def test_a_second_run_of_step05_changes_nothing(params, hosts):
    primary = hosts["primary"]
    again = step05.configure(primary, params, params.primary) + step05.protect_history(_Run(params))
    assert _changed(again) == set(), _changed(again)
    assert [c.status for c in step05.check_history(_Run(params))] == ["warn", "pass", "pass", "pass", "pass"]
