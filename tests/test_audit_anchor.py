"""The audit head anchored in the backup bucket (issue 23, item 2), against moto's S3 in this process: a record
rolled back, rewritten or missing runs the bucket names is refused even on a fresh clone (no anchor of this
machine), a seal the bucket cannot take fails loudly, and the params turn it on or off only knowingly."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
import yaml

from hcbpg.engine import chain, signing
from hcbpg.engine import manifest as mf
from hcbpg.errors import CloudError, ParamsError
from hcbpg.ops import audit_anchor
from hcbpg.params import parse_params

from nbutil import MOTO_BUCKET, make_params, past_newest_run

BUCKET = MOTO_BUCKET
PREFIX = "hcbpg-audit/pgbackrest/hcb_production/test/"


@pytest.fixture
def s3(moto_s3):
    return moto_s3


def store_of(client):
    from hcbpg.adapters.objectstore import ObjectStore
    return ObjectStore(client, BUCKET)


def anchor(client) -> audit_anchor.BucketAnchor:
    return audit_anchor.BucketAnchor("test", BUCKET, PREFIX, lambda: store_of(client))


def trust(home: Path, bucket: audit_anchor.BucketAnchor | None) -> signing.Trust:
    return signing.Trust("test", home / "params" / "allowed_signers", home / "params" / "test.audit-head", bucket)


def sealed_run(home: Path, t: signing.Trust) -> mf.Run:
    past_newest_run(home / "outputs" / "test")  # run directories are named by the second
    run = mf.create_run(home, "test", steps=[], mode="run", dry_run=False, params_sha256="0" * 64, selection={},
                        repo=home)
    with run.update() as data:
        data.status, data.finished = "succeeded", mf.utcnow()
    mf.seal(run, mf.Sealer(t, signing.signing_key(None)))
    return run


def fresh_clone(home: Path) -> None:
    """What another operator's laptop or CI sees: the repository only, no state of this machine."""
    shutil.rmtree(mf.anchor_path(home, "test").parent, ignore_errors=True)


def keys(client) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", [])]


def test_each_seal_appends_a_linked_create_only_object_and_the_record_verifies(home, s3):
    t = trust(home, anchor(s3))
    runs = [sealed_run(home, t) for _ in range(3)]
    assert keys(s3) == [f"{PREFIX}{i:08d}.json" for i in range(3)]
    recs = [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in keys(s3)]
    assert [r["run"] for r in recs] == [r.path.name for r in runs]
    assert recs[0]["previous_sha256"] is None and recs[1]["previous_sha256"] and recs[2]["seq"] == 2
    assert all(r["manifest_sha256"] == mf.sha256_file(run.manifest_path) for r, run in zip(recs, runs, strict=True))
    assert mf.verify_env(home, "test", t) == []
    assert all(run.read()["sealed"]["anchor"] == f"s3://{BUCKET}/{PREFIX}" for run in runs)
    # append-only: an object of the sequence is never replaced
    assert store_of(s3).create(keys(s3)[0], b"{}") is None


def test_a_rolled_back_record_is_refused_on_a_fresh_clone(home, s3, tmp_path):
    """A pusher without the bucket's key removes the newest run and sets HEAD and the head file back
    consistently: the head file and this machine's anchor cannot see it on a fresh clone; the bucket does."""
    t = trust(home, anchor(s3))
    runs = [sealed_run(home, t) for _ in range(3)]
    old_head = t.head_file.read_text()
    shutil.copytree(home / "outputs", tmp_path / "two")
    shutil.rmtree(runs[-1].path)
    (home / "outputs" / "test" / "HEAD").write_text(runs[1].path.name + "\n")
    t.head_file.write_text(old_head.replace(runs[2].path.name, runs[1].path.name).replace(
        old_head.split()[-1], mf.sha256_file(runs[1].manifest_path)))
    fresh_clone(home)
    assert mf.verify_env(home, "test", trust(home, None)) != []          # the signed seals name the bucket
    problems = mf.verify_env(home, "test", t)
    assert len(problems) == 1, problems
    assert f"00000002.json in s3://{BUCKET}/{PREFIX} names run {runs[2].path.name} of test" in problems[0]
    assert "the record was rolled back or runs were deleted" in problems[0]
    # the whole record removed (a new chain would start): still refused
    shutil.rmtree(home / "outputs" / "test")
    t.head_file.unlink()
    assert any("rolled back" in p for p in mf.verify_env(home, "test", t))


def test_a_run_rewritten_and_resigned_with_an_allowed_key_but_without_the_bucket_is_refused(home, s3):
    """An operator's key (or a key added to the signers) alone re-seals an edited record: not the bucket."""
    t = trust(home, anchor(s3))
    runs = [sealed_run(home, t) for _ in range(2)]
    no_bucket = trust(home, None)
    with runs[-1].update() as data:
        data.note = "edited after it was sealed"
    mf.seal(runs[-1], mf.Sealer(no_bucket, signing.signing_key(None)))   # signed, head file updated, no anchor
    extra = sealed_run(home, no_bucket)                                    # and a run the bucket never saw
    fresh_clone(home)
    problems = mf.verify_env(home, "test", t)
    assert any(f"{runs[-1].path.name}: its manifest differs from the version anchored in s3://{BUCKET}/{PREFIX}"
               "00000001.json" in p and "rewritten" in p for p in problems), problems
    assert any(f"{extra.path.name}: sealed, and s3://{BUCKET}/{PREFIX} names no anchor of it" in p
               for p in problems), problems


def test_params_that_turn_the_anchor_off_do_not_turn_the_check_off(home, s3):
    t = trust(home, anchor(s3))
    runs = [sealed_run(home, t) for _ in range(2)]
    problems = mf.verify_env(home, "test", trust(home, None))
    assert problems == [f"{runs[-1].path.name}: its signed seal says it was anchored in s3://{BUCKET}/{PREFIX}, and "
                        "params/test.yaml has no bucket anchor (audit.anchor): turning it off would let the record "
                        "be rolled back unseen"]
    other = audit_anchor.BucketAnchor("test", BUCKET, "hcbpg-audit/elsewhere/test/", lambda: store_of(s3))
    assert any("not in s3://" in p for p in mf.verify_env(home, "test", trust(home, other)))


def test_a_deleted_or_broken_anchor_object_is_named(home, s3):
    t = trust(home, anchor(s3))
    for _ in range(3):
        sealed_run(home, t)
    s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}00000001.json")   # someone with the bucket key, no Object Lock
    problems = mf.verify_env(home, "test", t)
    assert any("00000002.json: follows 00000000.json: anchors are missing before it" in p for p in problems)


def test_an_unreachable_bucket_fails_the_seal_loudly_and_the_run_is_sealed_when_it_is_back(home, s3):
    t = trust(home, anchor(s3))
    sealed_run(home, t)
    down = audit_anchor.BucketAnchor("test", BUCKET, PREFIX, lambda: store_of(_unreachable_client()))
    past_newest_run(home / "outputs" / "test")  # run directories are named by the second
    run = mf.create_run(home, "test", steps=[], mode="run", dry_run=False, params_sha256="0" * 64, selection={},
                        repo=home)
    with pytest.raises(CloudError) as ei:
        mf.seal(run, mf.Sealer(trust(home, down), signing.signing_key(None)))
    assert f"the audit head of test could not be anchored in s3://{BUCKET}/{PREFIX}, so run {run.path.name} is " \
           "not sealed" in ei.value.message
    assert not (run.path / mf.SIG_NAME).exists() and run.path.name not in t.head_file.read_text()
    assert mf.needs_orphan_seal(run) and run.unlike_written() is None   # the next run or resume seals it
    mf.seal_orphan(run, mf.Sealer(t, signing.signing_key(None)))
    assert mf.verify_env(home, "test", t) == [] and len(keys(s3)) == 2


def test_an_unreadable_bucket_fails_verification(home, s3):
    t = trust(home, anchor(s3))
    sealed_run(home, t)
    down = audit_anchor.BucketAnchor("test", BUCKET, PREFIX, lambda: store_of(_unreachable_client()))
    (problem,) = mf.verify_env(home, "test", trust(home, down))
    assert problem.startswith(f"s3://{BUCKET}/{PREFIX}: the audit anchor of test cannot be read")


def test_a_set_aside_record_starts_the_bucket_sequence_again(home, s3):
    t = trust(home, anchor(s3))
    sealed_run(home, t)
    assert chain.set_aside(home, "test", t, why="a new lab") is not None
    run = sealed_run(home, t)
    assert mf.verify_env(home, "test", t) == []
    recs = [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in keys(s3)]
    assert [r["kind"] for r in recs] == ["seal", "set-aside", "seal"] and recs[2]["run"] == run.path.name


def test_object_lock_retention_where_the_bucket_has_it(home, s3):
    s3.create_bucket(Bucket="hcb-locked", ObjectLockEnabledForBucket=True)
    from hcbpg.adapters.objectstore import ObjectStore
    locked = audit_anchor.BucketAnchor("test", "hcb-locked", PREFIX, lambda: ObjectStore(s3, "hcb-locked"),
                                       retain_days=30)
    sealed_run(home, trust(home, locked))
    key = f"{PREFIX}00000000.json"
    head = s3.head_object(Bucket="hcb-locked", Key=key)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=29)
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket="hcb-locked", Key=key, VersionId=head["VersionId"])
    assert store_of(s3).object_lock() is None  # the test bucket has none: objects written without retention


def test_params_turn_it_on_only_with_a_bucket():
    data = yaml.safe_load(make_params("test"))
    assert parse_params(data).audit.anchor == "none"
    data["audit"] = {"anchor": "bucket"}
    with pytest.raises(ParamsError, match="audit.anchor: bucket writes the audit head to the backup bucket, and these "
                                          "params have no pgbackrest section"):
        parse_params(data)
    data["pgbackrest"] = {"s3_key": "env:K", "s3_key_secret": "env:S", "cipher_pass": "env:C",
                          "repo_path_prefix": "/pgbackrest", "stanza": "hcb_production"}
    params = parse_params(data)
    assert audit_anchor.anchor_prefix(params) == PREFIX
    made = signing.trust_for(params, "test", Path("/nonexistent")).bucket
    assert made is not None and made.where == f"s3://hcb-production-postgres/{PREFIX}" and not made.copy_when_gone
    data["audit"] = {"anchor": "sometimes"}
    with pytest.raises(ParamsError, match="audit.anchor"):
        parse_params(data)
    for env in ("lab", "staging", "production"):
        shipped = yaml.safe_load((Path(__file__).resolve().parent.parent / "params" / f"{env}.yaml").read_text())
        assert shipped["audit"]["anchor"] == "bucket", env
        assert shipped["audit"].get("anchor_copy_when_gone", False) == (env == "lab"), env


def _unreachable_client():
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1", aws_access_key_id="k",
                        aws_secret_access_key="s", config=Config(connect_timeout=1, retries={"max_attempts": 1}))


def test_a_labs_bucket_gone_with_the_lab_is_checked_against_this_machines_copy_only(home, s3, tmp_path):
    """The lab's S3 store is torn down with the lab: params audit.anchor_copy_when_gone read this
    machine's copy of the sequence instead (a fresh clone has none); any other environment refuses."""
    copy = tmp_path / "copy.json"
    up = audit_anchor.BucketAnchor("test", BUCKET, PREFIX, lambda: store_of(s3), copy=copy, copy_when_gone=True)
    runs = [sealed_run(home, trust(home, up)) for _ in range(2)]
    assert [k for k, _ in json.loads(copy.read_text())["objects"]] == ["00000000.json", "00000001.json"]

    def gone(*, copy_when_gone: bool) -> signing.Trust:
        return trust(home, audit_anchor.BucketAnchor("test", BUCKET, PREFIX, lambda: store_of(_unreachable_client()),
                                                     copy=copy, copy_when_gone=copy_when_gone))
    assert mf.verify_env(home, "test", gone(copy_when_gone=True)) == []
    assert "cannot be read" in mf.verify_env(home, "test", gone(copy_when_gone=False))[0]
    shutil.rmtree(runs[-1].path)
    assert any("rolled back" in p for p in mf.verify_env(home, "test", gone(copy_when_gone=True)))
    copy.unlink()
    assert any("cannot be read" in p for p in mf.verify_env(home, "test", gone(copy_when_gone=True)))
