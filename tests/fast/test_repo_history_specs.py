"""Specs of history a server's key cannot destroy (issue 24, hcbpg.ops.repo_history): the jumpbox's expiry (package,
directory, the repository-only config with the admin key shown as ``<secret>``, the cron file) on the recording
double, and the bucket's versioning on moto's S3 in this process."""

from __future__ import annotations

import re
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired.repo_history import EXPIRE_CONF_PATH, EXPIRE_CRON_PATH
from hcbpg.errors import CloudError, ParamsError, SecretError
from hcbpg.ops import repo_history as ops_rh
from hcbpg.params import parse_params
from tests.fast.specs import covers, params_data

NAME = "hcb-jumpbox"
SECRETS = {"HCBPG_TEST_ADMIN_KEY": "ADMINspecs0123456789", "HCBPG_TEST_ADMIN_SECRET": "admin-secret-of-the-specs-0123",
           "HCBPG_TEST_CIPHER": "cipher-pass-of-the-specs-0123456789"}
PB = {"s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_key": "env:HCBPG_TEST_S3_KEY",
      "s3_key_secret": "env:HCBPG_TEST_S3_SECRET", "cipher_pass": "env:HCBPG_TEST_CIPHER",
      "admin_s3_key": "env:HCBPG_TEST_ADMIN_KEY", "admin_s3_key_secret": "env:HCBPG_TEST_ADMIN_SECRET"}
BASE = params_data(pgbackrest=PB, jumpbox={"name": NAME, "private_ip": "10.0.1.40"})
APT = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends pgbackrest"
DIR = "directory /etc/hcbpg (mode 0755, owner root:root)"


@pytest.fixture
def params(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return parse_params(BASE)


class Jumpbox:
    """The jumpbox's packages, directory and files (with modes) behind a :class:`RecordingHost`."""

    def __init__(self, *, installed: bool = False, etc: bool = False, files: dict[str, str] | None = None,
                 apt_fails: bool = False) -> None:
        self.installed, self.etc, self.apt_fails = installed, etc, apt_fails
        self.modes: dict[str, str] = {p: "600 root" for p in (files or {})}
        self.host = RecordingHost(NAME, handler=self.answer, files=dict(files or {}))

    def answer(self, call: Call) -> Result | str | None:
        cmd = call.command
        if cmd.startswith("dpkg-query"):
            return "pgbackrest\tii \t2.45\n" if self.installed else ""
        if "apt-get update" in cmd:
            return ""
        if "apt-get install" in cmd:
            if self.apt_fails:
                return Result(NAME, cmd, 100, "", "E: Unable to locate package pgbackrest", 0.0)
            self.installed = True
            return ""
        if cmd == "stat -c '%a %U %F' /etc/hcbpg":
            return "755 root directory\n" if self.etc else Result(NAME, cmd, 1, "", "No such file", 0.0)
        if call.options.get("display") == DIR:
            self.etc = True
            return ""
        if m := re.match(r"stat -c '%a %U' (\S+)$", cmd):
            for path, _text, mode, owner, _group in self.host.written:
                self.modes[path] = f"{mode:o} {owner}"
            return self.modes[m[1]] + "\n" if m[1] in self.modes else Result(NAME, cmd, 1, "", "No such file", 0.0)
        return None


def _secrets_absent(outcomes: list[Any]) -> bool:
    text = "\n".join(str(o) for o in outcomes)
    return not any(v in text for v in SECRETS.values())


@covers("hcbpg.ops.repo_history.ensure_expiry_on_jumpbox", "fresh", "second run", "dry run")
def test_expiry_config_and_cron_written_once_with_the_admin_key(params):
    jb = Jumpbox()
    dry = DryRunHost(jb.host)
    planned = ops_rh.ensure_expiry_on_jumpbox(dry, params)
    assert [o.changed for o in planned] == [True, True, True, True] and all(o.dry_run for o in planned)
    assert jb.host.written == [] and not jb.installed and _secrets_absent(planned)
    out = ops_rh.ensure_expiry_on_jumpbox(jb.host, params)
    assert [o.changed for o in out] == [True, True, True, True] and _secrets_absent(out)
    assert jb.host.journal == [
        "DEBIAN_FRONTEND=noninteractive apt-get update -q", APT, DIR, f"write {EXPIRE_CONF_PATH}",
        f"write {EXPIRE_CRON_PATH}"]
    written = {p: (t, mode, owner) for p, t, mode, owner, _g in jb.host.written}
    conf, mode, owner = written[EXPIRE_CONF_PATH]
    assert (mode, owner) == (0o600, "root")
    assert "repo1-s3-key=ADMINspecs0123456789" in conf and "repo1-cipher-pass=cipher-pass-of-the-specs" in conf
    assert "repo1-s3-key=<secret>" in next(o for o in out if o.what.startswith(EXPIRE_CONF_PATH)).diff
    assert written[EXPIRE_CRON_PATH][1:] == (0o644, "root")
    again = ops_rh.ensure_expiry_on_jumpbox(jb.host, params)
    assert not any(o.changed for o in again) and len(jb.host.journal) == 5
    # a server not there yet: the plan writes both files, with the keys unresolved
    absent = AbsentHost(NAME)
    assert all(o.changed for o in ops_rh.ensure_expiry_on_jumpbox(absent, params))
    assert "repo1-s3-key=<secret>" in absent.files[EXPIRE_CONF_PATH]


@covers("hcbpg.ops.repo_history.ensure_expiry_on_jumpbox", "refusal")
def test_expiry_refused_without_a_jumpbox_or_the_admin_key_and_nothing_written(params, monkeypatch):
    no_jumpbox = parse_params(params_data(pgbackrest=PB))
    jb = Jumpbox()
    with pytest.raises(ParamsError, match="jumpbox"):
        ops_rh.ensure_expiry_on_jumpbox(jb.host, no_jumpbox)
    monkeypatch.delenv("HCBPG_TEST_ADMIN_SECRET")
    with pytest.raises(SecretError, match="HCBPG_TEST_ADMIN_SECRET"):
        ops_rh.ensure_expiry_on_jumpbox(jb.host, params)
    assert jb.host.journal == [] and jb.host.written == []


# the bucket's versioning ---------------------------------------------------------------------------------

@pytest.fixture
def store(moto_s3):
    from nbutil import MOTO_BUCKET
    return ObjectStore(moto_s3, MOTO_BUCKET)


@covers("hcbpg.ops.repo_history.ensure_bucket_versioning", "fresh", "second run", "dry run")
def test_versioning_turned_on_once(store):
    planned = ops_rh.ensure_bucket_versioning(store, dry_run=True)
    assert planned.verb == "would change" and planned.actions == ["enable versioning (now never enabled)"]
    assert store.versioning() is None
    out = ops_rh.ensure_bucket_versioning(store, dry_run=False)
    assert out.changed and store.versioning() == "Enabled"
    assert not ops_rh.ensure_bucket_versioning(store, dry_run=False).changed
    store.client.put_bucket_versioning(Bucket=store.bucket, VersioningConfiguration={"Status": "Suspended"})
    assert ops_rh.ensure_bucket_versioning(store, dry_run=False).actions == ["enable versioning (now Suspended)"]


@covers("hcbpg.ops.repo_history.ensure_bucket_versioning", "refusal")
def test_a_store_that_does_not_keep_versions_is_refused(store, monkeypatch):
    monkeypatch.setattr(store, "enable_versioning", lambda: None)  # a provider that accepts and ignores it
    with pytest.raises(CloudError, match="does not keep object versions"):
        ops_rh.ensure_bucket_versioning(store, dry_run=False)


# Object Lock's default retention ----------------------------------------------------------------------------

@covers("hcbpg.ops.repo_history.ensure_bucket_object_lock", "fresh", "second run", "dry run")
def test_object_lock_default_retention_set_once(moto_s3):
    moto_s3.create_bucket(Bucket="hcb-locked", ObjectLockEnabledForBucket=True)
    store = ObjectStore(moto_s3, "hcb-locked")
    planned = ops_rh.ensure_bucket_object_lock(store, "GOVERNANCE", 14, dry_run=True)
    assert planned.verb == "would change" and store.object_lock() == (None, None)
    out = ops_rh.ensure_bucket_object_lock(store, "GOVERNANCE", 14, dry_run=False)
    assert out.changed and out.actions == ["default retention GOVERNANCE 14 days (now on, no default retention)"]
    assert store.object_lock() == ("GOVERNANCE", 14)
    assert not ops_rh.ensure_bucket_object_lock(store, "GOVERNANCE", 14, dry_run=False).changed
    assert ops_rh.ensure_bucket_object_lock(store, "COMPLIANCE", 30, dry_run=False).actions == [
        "default retention COMPLIANCE 30 days (now GOVERNANCE 14 days)"]
    # every new version is locked: not even the key that wrote it deletes that version
    v = moto_s3.put_object(Bucket="hcb-locked", Key="pgbackrest/x", Body=b"1")["VersionId"]
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError, match="AccessDenied"):
        moto_s3.delete_object(Bucket="hcb-locked", Key="pgbackrest/x", VersionId=v)


@covers("hcbpg.ops.repo_history.ensure_bucket_object_lock", "refusal")
def test_object_lock_refused_on_a_bucket_made_without_it(store):
    with pytest.raises(CloudError, match="Object Lock could not be set") as info:
        ops_rh.ensure_bucket_object_lock(store, "GOVERNANCE", 14, dry_run=False)
    assert "made with it" in (info.value.hint or "")
    assert store.object_lock() is None


def test_object_lock_days_need_the_admin_key():
    with pytest.raises(ParamsError, match="object_lock_days"):
        parse_params(params_data(pgbackrest={**{k: v for k, v in PB.items() if not k.startswith("admin")},
                                             "object_lock_days": 7}))


def test_copy_version_into_a_bucket_with_default_retention(moto_s3):
    """S3 (and moto) ask a Content-MD5 of every write into a bucket with Object Lock's default retention: the copy
    as of T sends its empty body's."""
    moto_s3.create_bucket(Bucket="hcb-locked", ObjectLockEnabledForBucket=True)
    store = ObjectStore(moto_s3, "hcb-locked")
    ops_rh.ensure_bucket_object_lock(store, "GOVERNANCE", 1, dry_run=False)
    assert store.create("src/a", b"payload") is not None  # a put with its Content-MD5
    [v] = store.versions("src/")
    store.copy_version("src/a", v["version_id"], "dst/a", size=v["size"])
    assert store.get("dst/a")[0] == b"payload"  # type: ignore[index]
