"""Specs of old versions' expiry (issue 24, :func:`hcbpg.ops.repo_history.ensure_noncurrent_version_expiry`) on moto's
S3 in this process (moto 5.2.6 stores a bucket's lifecycle and gives it back; it never applies it): the rule put
once, a second run changes nothing, a dry run writes nothing, other rules kept, a store that refuses is refused."""

from __future__ import annotations

import pytest

from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired.repo_history import LIFECYCLE_RULE_ID
from hcbpg.errors import CloudError
from hcbpg.ops import repo_history as ops_rh
from tests.fast.specs import covers

#: a rule the operator set by hand: hcbpg keeps it
THEIRS = {"ID": "abort-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
          "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}


@pytest.fixture
def store(moto_s3):
    from nbutil import MOTO_BUCKET
    moto_s3.put_bucket_versioning(Bucket=MOTO_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return ObjectStore(moto_s3, MOTO_BUCKET)


def ours(store: ObjectStore) -> list[dict]:
    return [r for r in store.lifecycle_rules() if r.get("ID") == LIFECYCLE_RULE_ID]


@covers("hcbpg.ops.repo_history.ensure_noncurrent_version_expiry", "fresh", "second run", "dry run")
def test_the_rule_is_put_once_and_a_plan_writes_nothing(store):
    assert store.lifecycle_rules() == []
    planned = ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=True)
    assert planned.verb == "would change" and planned.actions == ["noncurrent versions removed after 30 days (now no rule)"]
    assert store.lifecycle_rules() == []
    out = ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=False)
    assert out.changed
    (rule,) = ours(store)
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30} and rule["Status"] == "Enabled"
    again = ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=False)
    assert not again.changed and again.actions == ["noncurrent versions removed after 30 days"]
    assert [c.status for c in ops_rh.check_noncurrent_version_expiry(store, 30)] == ["pass"]


def test_other_rules_are_kept_and_a_new_number_of_days_replaces_ours(store):
    store.put_lifecycle_rules([THEIRS])
    ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=False)
    out = ops_rh.ensure_noncurrent_version_expiry(store, 45, dry_run=False)
    assert out.actions == ["noncurrent versions removed after 45 days (now noncurrent versions removed after 30 days)"]
    rules = {r["ID"]: r for r in store.lifecycle_rules()}
    assert set(rules) == {"abort-uploads", LIFECYCLE_RULE_ID}
    assert rules["abort-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert rules[LIFECYCLE_RULE_ID]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 45}
    # params without expiry: ours removed, theirs kept; then nothing more to do
    assert ops_rh.ensure_noncurrent_version_expiry(store, None, dry_run=False).changed
    assert [r["ID"] for r in store.lifecycle_rules()] == ["abort-uploads"]
    assert not ops_rh.ensure_noncurrent_version_expiry(store, None, dry_run=False).changed


def test_ours_alone_removed_deletes_the_configuration(store):
    ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=False)
    assert ops_rh.ensure_noncurrent_version_expiry(store, None, dry_run=False).actions == [
        f"remove rule {LIFECYCLE_RULE_ID} (now noncurrent versions removed after 30 days)"]
    assert store.lifecycle_rules() == []


def test_the_check_fails_on_another_rule_of_ours_and_warns_of_rules_that_remove_backups(store):
    store.put_lifecycle_rules([{"ID": "wipe", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 7}},
                               {"ID": LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": "pgbackrest/"},
                                "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}])
    checks = ops_rh.check_noncurrent_version_expiry(store, 30)
    assert [(c.name, c.status) for c in checks] == [("old versions' expiry", "fail"), ("other lifecycle rules", "warn")]
    assert "differs from hcbpg's" in checks[0].detail and "wipe" in checks[1].detail


@covers("hcbpg.ops.repo_history.ensure_noncurrent_version_expiry", "refusal")
def test_a_store_that_refuses_lifecycle_rules_is_refused_and_nothing_changes(store, monkeypatch):
    store.put_lifecycle_rules([THEIRS])

    def refuse(rules):  # noqa: ANN001 - as a provider without lifecycle through its S3 API answers
        raise CloudError(f"{store.name}: set the lifecycle configuration of {store.bucket} failed: NotImplemented")
    monkeypatch.setattr(store, "put_lifecycle_rules", refuse)
    with pytest.raises(CloudError, match="the lifecycle rule could not be set") as info:
        ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=False)
    assert "provider's console" in (info.value.hint or "")
    assert [r["ID"] for r in store.lifecycle_rules()] == ["abort-uploads"]


def test_a_store_that_accepts_and_ignores_the_rule_is_refused(store, monkeypatch):
    monkeypatch.setattr(store, "put_lifecycle_rules", lambda rules: None)
    with pytest.raises(CloudError, match="after it was set"):
        ops_rh.ensure_noncurrent_version_expiry(store, 30, dry_run=False)
