"""Step 05's history for every repository with an admin key (issue 24, :func:`hcbpg.steps.pgbackrest.protect_history`
and :func:`~hcbpg.steps.pgbackrest.check_history`): repo1 and repo2 each on its own bucket (moto's S3 in this
process) through its own admin key, with its own Object Lock and lifecycle settings; the jumpbox's expiry of both on
the recording double; the checks of each; a repository without an admin key named, not touched."""

from __future__ import annotations

from typing import Any

import pytest

from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired.repo_history import EXPIRE_CONF_PATH, LIFECYCLE_RULE_ID
from hcbpg.errors import ParamsError
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import pgbackrest as step05
from tests.fast.specs import params_data
from tests.fast.test_repo_history_specs import Jumpbox

SECRETS = {"HCBPG_T_S3_KEY": "SERVERone0123456789", "HCBPG_T_S3_SECRET": "server-one-secret-0123456789",
           "HCBPG_T_ADMIN1": "ADMINone0123456789", "HCBPG_T_ADMIN1_SECRET": "admin-one-secret-0123456789",
           "HCBPG_T_S3_KEY2": "SERVERtwo0123456789", "HCBPG_T_S3_SECRET2": "server-two-secret-0123456789",
           "HCBPG_T_ADMIN2": "ADMINtwo0123456789", "HCBPG_T_ADMIN2_SECRET": "admin-two-secret-0123456789",
           "HCBPG_T_CIPHER": "cipher-one-0123456789", "HCBPG_T_CIPHER2": "cipher-two-0123456789"}
BUCKET1, BUCKET2 = "hcb-repo-one", "hcb-repo-two"
REPO1 = {"s3_bucket": BUCKET1, "s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path",
         "s3_key": "env:HCBPG_T_S3_KEY", "s3_key_secret": "env:HCBPG_T_S3_SECRET", "cipher_pass": "env:HCBPG_T_CIPHER",
         "admin_s3_key": "env:HCBPG_T_ADMIN1", "admin_s3_key_secret": "env:HCBPG_T_ADMIN1_SECRET",
         "noncurrent_version_expiry_days": 30}
REPO2 = {"s3_bucket": BUCKET2, "s3_endpoint": "10.0.1.250:9444", "s3_region": "us-east-1", "s3_uri_style": "path",
         "s3_key": "env:HCBPG_T_S3_KEY2", "s3_key_secret": "env:HCBPG_T_S3_SECRET2",
         "cipher_pass": "env:HCBPG_T_CIPHER2", "admin_s3_key": "env:HCBPG_T_ADMIN2",
         "admin_s3_key_secret": "env:HCBPG_T_ADMIN2_SECRET", "object_lock_days": 3, "object_lock_mode": "COMPLIANCE",
         "noncurrent_version_expiry_days": 9}
JUMPBOX = {"name": "hcb-jumpbox", "private_ip": "10.0.1.40", "ssh_host": "10.0.1.40"}


class _Run:
    """What protect_history and check_history read of a notebook's run."""

    def __init__(self, params: Any, dry_run: bool = False) -> None:
        self.params, self.dry_run = params, dry_run

    def secret(self, key: str) -> str:
        obj = self.params
        for part in key.split("."):
            obj = getattr(obj, part)
        return resolve(obj, key=key)


@pytest.fixture
def world(moto_s3, monkeypatch):
    """Both buckets in moto (repo2's made with Object Lock); each store opened with the key the step passes,
    recorded; the jumpbox a recording double."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    moto_s3.create_bucket(Bucket=BUCKET1)
    moto_s3.create_bucket(Bucket=BUCKET2, ObjectLockEnabledForBucket=True)
    opened: list[tuple[str, str, str | None]] = []

    def of_repo(repo: Any, key_id: str, key_secret: str, *, label: str | None = None) -> ObjectStore:
        opened.append((repo.s3_bucket, key_id, label))
        return ObjectStore(moto_s3, repo.s3_bucket, label=label)
    monkeypatch.setattr(step05.ObjectStore, "of_repo", of_repo)
    jb = Jumpbox(installed=True, etc=True)
    monkeypatch.setattr(step05, "connect_jumpbox", lambda rb: jb.host)
    return {"s3": moto_s3, "opened": opened, "jumpbox": jb}


def _params(repo1: dict[str, Any], repo2: dict[str, Any]) -> Any:
    return parse_params(params_data(pgbackrest={**repo1, "repo2": repo2}, jumpbox=JUMPBOX))


def test_both_repositories_protected_each_with_its_own_key_and_settings(world):
    params = _params(REPO1, REPO2)
    s3 = world["s3"]
    planned = step05.protect_history(_Run(params, dry_run=True))
    whats = [o.what for o in planned if o.changed]
    assert whats[:5] == [f"versioning of repo1 s3://{BUCKET1}", f"lifecycle of repo1 s3://{BUCKET1} ({LIFECYCLE_RULE_ID})",
                         f"Object Lock of repo2 s3://{BUCKET2}",
                         f"lifecycle of repo2 s3://{BUCKET2} ({LIFECYCLE_RULE_ID})", "/etc/hcbpg/pgbackrest-expire.conf "
                         "on hcb-jumpbox"]  # repo2's bucket, made with Object Lock, is versioned already
    assert s3.get_bucket_versioning(Bucket=BUCKET1).get("Status") is None  # the plan wrote nothing
    # each bucket through its own repository's admin key, never a server's
    assert world["opened"] == [(BUCKET1, "ADMINone0123456789", "repo1"), (BUCKET2, "ADMINtwo0123456789", "repo2")]
    out = step05.protect_history(_Run(params))
    assert [o.what for o in out if o.changed] == whats
    assert s3.get_bucket_versioning(Bucket=BUCKET1)["Status"] == "Enabled"
    lock = s3.get_object_lock_configuration(Bucket=BUCKET2)["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert (lock["Mode"], lock["Days"]) == ("COMPLIANCE", 3)
    days = {b: [r["NoncurrentVersionExpiration"]["NoncurrentDays"]
                for r in s3.get_bucket_lifecycle_configuration(Bucket=b)["Rules"]] for b in (BUCKET1, BUCKET2)}
    assert days == {BUCKET1: [30], BUCKET2: [9]}
    # the jumpbox's config expires both repositories, each with its own admin key
    conf = next(t for p, t, *_ in world["jumpbox"].host.written if p == EXPIRE_CONF_PATH)
    assert "repo1-s3-key=ADMINone0123456789" in conf and "repo2-s3-key=ADMINtwo0123456789" in conf
    assert "SERVER" not in conf
    assert not any(o.changed for o in step05.protect_history(_Run(params)))
    checks = step05.check_history(_Run(params))
    assert [(c.name, c.target, c.status) for c in checks] == [
        ("versioning", f"repo1 s3://{BUCKET1}", "pass"), ("old versions' expiry", f"repo1 s3://{BUCKET1}", "pass"),
        ("versioning", f"repo2 s3://{BUCKET2}", "pass"), ("Object Lock", f"repo2 s3://{BUCKET2}", "pass"),
        ("old versions' expiry", f"repo2 s3://{BUCKET2}", "pass"),
        (f"expiry {EXPIRE_CONF_PATH}", "hcb-jumpbox", "pass"), ("expiry /etc/cron.d/hcbpg-expire", "hcb-jumpbox", "pass")]


def test_the_checks_fail_where_a_repository_drifted(world):
    params = _params(REPO1, REPO2)
    step05.protect_history(_Run(params))
    s3 = world["s3"]
    s3.put_bucket_versioning(Bucket=BUCKET1, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object_lock_configuration(Bucket=BUCKET2, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    s3.delete_bucket_lifecycle(Bucket=BUCKET2)
    world["jumpbox"].host.files[EXPIRE_CONF_PATH] = "# not ours\n"
    failed = {(c.name, c.target, c.detail) for c in step05.check_history(_Run(params)) if c.status == "fail"}
    assert failed == {("versioning", f"repo1 s3://{BUCKET1}", "Suspended"),
                      ("Object Lock", f"repo2 s3://{BUCKET2}", "GOVERNANCE 1 days, expected COMPLIANCE 3 days"),
                      ("old versions' expiry", f"repo2 s3://{BUCKET2}", "no rule, expected noncurrent versions removed "
                                                                       "after 9 days"),
                      (f"expiry {EXPIRE_CONF_PATH}", "hcb-jumpbox", "differs from hcbpg's (step 05 writes it)")}
    assert not any(v in str(failed) for v in SECRETS.values())


def test_a_repository_without_an_admin_key_is_named_and_left_alone(world, capsys):
    repo1 = {k: v for k, v in REPO1.items() if not k.startswith("admin_")}
    params = _params(repo1, REPO2)
    out = step05.protect_history(_Run(params))
    assert "repo1 has no admin key" in capsys.readouterr().out
    assert not any("repo1" in o.what for o in out)
    assert [b for b, _k, _l in world["opened"]] == [BUCKET2]
    assert world["s3"].get_bucket_versioning(Bucket=BUCKET1).get("Status") is None
    checks = step05.check_history(_Run(params))
    assert (checks[0].name, checks[0].target, checks[0].status) == ("history protected", "repo1", "warn")
    assert "pgbackrest.admin_s3_key" in checks[0].detail
    assert all(c.status == "pass" for c in checks[1:])


def test_without_any_admin_key_nothing_is_touched_or_checked(world):
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith(("admin_", "object_lock"))}  # noqa: E731
    params = _params(strip(REPO1), strip(REPO2))
    assert step05.protect_history(_Run(params)) == [] and step05.check_history(_Run(params)) == []
    assert world["opened"] == [] and world["jumpbox"].host.journal == []


def test_two_repositories_in_one_bucket_with_other_settings_are_refused_before_anything(world):
    same = {**REPO2, "s3_bucket": BUCKET1, "s3_endpoint": REPO1["s3_endpoint"], "repo_path_prefix": "/other"}
    with pytest.raises(ParamsError, match="pgbackrest.repo2: bucket hcb-repo-one at 10.0.1.1:9443 is repo1's too"):
        step05.protect_history(_Run(_params(REPO1, same)))
    assert world["opened"] == [] and world["jumpbox"].host.journal == []
    # the same settings in one bucket: protected once, nothing to change the second time
    alike = {**same, "object_lock_days": None, "noncurrent_version_expiry_days": 30}
    params = _params(REPO1, alike)
    step05.protect_history(_Run(params))
    assert not any(o.changed for o in step05.protect_history(_Run(params)))
