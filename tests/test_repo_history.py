"""History that a server's credentials cannot destroy (issue 24): the planner of the repository as of T, the
keys' policies, the jumpbox's expiry config, and the lab S3's IAM stand-in in front of moto's S3 (real boto3
requests over HTTP): the server key's attack fails where it must, the copy as of T brings back what was there."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired import repo_history as rh
from hcbpg.desired.repo_history import ObjectVersion, plan_as_of
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.lab import s3 as lab_s3
from hcbpg.ops import repo_history as ops_rh
from hcbpg.params import parse_params
from tests.fast.specs import params_data

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 12, 7, 7, 0, 0, tzinfo=UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


SRC, DST = "pgbackrest/hcb/", "pgbackrest-asof-1/hcb/"


# the planner -----------------------------------------------------------------------------------------------

def test_plan_takes_each_keys_newest_version_at_or_before_t():
    versions = [
        ObjectVersion(SRC + "backup/backup.info", "v3", at(10), is_latest=True, size=9),   # overwritten after T
        ObjectVersion(SRC + "backup/backup.info", "v2", at(5), size=7),
        ObjectVersion(SRC + "backup/backup.info", "v1", at(1), size=5),
        ObjectVersion(SRC + "archive/a.gz", "m1", at(9), is_latest=True, delete_marker=True),  # deleted after T
        ObjectVersion(SRC + "archive/a.gz", "a1", at(2), size=100),
        ObjectVersion(SRC + "archive/b.gz", "b1", at(8), is_latest=True, size=3),  # written after T
        ObjectVersion(SRC + "archive/c.gz", "c1", at(3), is_latest=True, size=4),  # untouched
        ObjectVersion(SRC + "archive/d.gz", "dm", at(4), is_latest=True, delete_marker=True),  # deleted before T
        ObjectVersion(SRC + "archive/d.gz", "d1", at(1), size=4),
        ObjectVersion("elsewhere/x", "x1", at(1), is_latest=True, size=1),  # not under the repository
    ]
    plan = plan_as_of(versions, at(6), source_prefix=SRC, target_prefix=DST)
    assert [(c.source_key, c.version_id, c.target_key) for c in plan.copies] == [
        (SRC + "archive/a.gz", "a1", DST + "archive/a.gz"),
        (SRC + "archive/c.gz", "c1", DST + "archive/c.gz"),
        (SRC + "backup/backup.info", "v2", DST + "backup/backup.info"),
    ]
    assert plan.absent == [SRC + "archive/b.gz", SRC + "archive/d.gz"]
    assert plan.changed_after == [SRC + "archive/a.gz", SRC + "archive/b.gz", SRC + "backup/backup.info"]
    assert plan.bytes == 111
    assert plan.summary()["objects"] == 3


def test_plan_order_of_input_and_ties():
    same = at(5)
    versions = [ObjectVersion(SRC + "k", "older", same, size=1),
                ObjectVersion(SRC + "k", "latest", same, is_latest=True, size=2)]
    # same second: the one S3 calls latest is the newer
    assert [c.version_id for c in plan_as_of(versions, at(6), source_prefix=SRC, target_prefix=DST).copies] == ["latest"]
    assert plan_as_of(list(reversed(versions)), at(6), source_prefix=SRC, target_prefix=DST).copies[0].version_id == "latest"
    # T exactly at the write: taken
    assert plan_as_of(versions, same, source_prefix=SRC, target_prefix=DST).copies[0].version_id == "latest"
    # before every write: nothing
    assert plan_as_of(versions, at(4), source_prefix=SRC, target_prefix=DST).copies == []


def test_plan_refuses_overlapping_prefixes_and_naive_times():
    v = [ObjectVersion(SRC + "k", "1", at(1))]
    with pytest.raises(SafetyCheckFailed, match="overlaps"):
        plan_as_of(v, at(2), source_prefix=SRC, target_prefix=SRC + "copy/")
    with pytest.raises(SafetyCheckFailed, match="overlaps"):
        plan_as_of(v, at(2), source_prefix="pgbackrest/", target_prefix="pgbackrest/")
    with pytest.raises(SafetyCheckFailed, match="time zone"):
        plan_as_of(v, dt.datetime(2026, 12, 7, 7, 0), source_prefix=SRC, target_prefix=DST)
    with pytest.raises(SafetyCheckFailed, match="end with"):
        plan_as_of(v, at(2), source_prefix=SRC.rstrip("/"), target_prefix=DST)


def test_parse_as_of_and_prefix_names():
    assert rh.parse_as_of("2026-12-07 07:00:00+00") == T0
    assert rh.parse_as_of("2026-12-07T08:00:00+01:00") == T0
    assert rh.parse_as_of("2026-12-07T07:00:00Z") == T0
    with pytest.raises(ParamsError, match="no time zone"):
        rh.parse_as_of("2026-12-07 07:00:00")
    with pytest.raises(ParamsError):
        rh.parse_as_of("yesterday")
    assert rh.as_of_path_prefix(T0) == "/pgbackrest-asof-20261207T070000Z"
    assert rh.key_prefix("/pgbackrest/hcb_production") == "pgbackrest/hcb_production/"
    with pytest.raises(SafetyCheckFailed):
        rh.key_prefix("/")


# params, policies, the jumpbox's config -----------------------------------------------------------------------

PB = {"s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_key": "env:K", "s3_key_secret": "env:S",
      "cipher_pass": "env:C"}
JUMPBOX = {"name": "hcb-jumpbox", "private_ip": "10.0.1.40"}


def test_admin_key_needs_both_halves():
    with pytest.raises(ParamsError, match="admin_s3_key"):
        parse_params(params_data(pgbackrest={**PB, "admin_s3_key": "env:AK"}))
    p = parse_params(params_data(pgbackrest={**PB, "admin_s3_key": "env:AK", "admin_s3_key_secret": "env:AS"}))
    assert rh.expire_on_jumpbox(p)
    assert not rh.expire_on_jumpbox(parse_params(params_data(pgbackrest=PB)))


def test_expire_conf_holds_the_admin_key_and_no_postgres(monkeypatch):
    monkeypatch.setenv("K", "server-key-id")
    p = parse_params(params_data(pgbackrest={**PB, "admin_s3_key": "env:AK", "admin_s3_key_secret": "env:AS"},
                                 jumpbox=JUMPBOX))
    shown = rh.render_expire_conf(p)
    assert "repo1-s3-key=<secret>" in shown and "repo1-cipher-pass=<secret>" in shown
    assert "pg1-path" not in shown and "archive-async" not in shown and "[global]" in shown
    real = rh.render_expire_conf(p, secrets={"repo1-s3-key": "ADMINKEYID", "repo1-s3-key-secret": "adminsecret",
                                             "repo1-cipher-pass": "cipherpass"})
    assert "repo1-s3-key=ADMINKEYID" in real and "server-key-id" not in real
    assert {k: ref for k, (_, ref) in rh.expire_secret_refs(p).items()} == {
        "repo1-s3-key": "env:AK", "repo1-s3-key-secret": "env:AS", "repo1-cipher-pass": "env:C"}
    cron = rh.render_expire_cron(p)
    assert "15 7 * * * root pgbackrest --config=/etc/hcbpg/pgbackrest-expire.conf --stanza=hcb_production" in cron
    with pytest.raises(ParamsError, match="jumpbox"):
        rh.render_expire_conf(parse_params(params_data(pgbackrest={**PB, "admin_s3_key": "env:AK",
                                                                   "admin_s3_key_secret": "env:AS"})))


def test_policies_name_what_the_server_key_cannot_do():
    server = rh.render_server_key_policy("bkt")
    for action in ("s3:DeleteObjectVersion", "s3:PutBucketVersioning", "s3:PutLifecycleConfiguration",
                   "s3:PutBucketPolicy", "s3:PutBucketObjectLockConfiguration", "s3:BypassGovernanceRetention"):
        assert not lab_s3.policy_allows(server, action, "arn:aws:s3:::bkt/pgbackrest/x")
        assert not lab_s3.policy_allows(server, action, "arn:aws:s3:::bkt")
    for action in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject"):
        assert lab_s3.policy_allows(server, action, "arn:aws:s3:::bkt/pgbackrest/x")
    assert not lab_s3.policy_allows(server, "s3:GetObject", "arn:aws:s3:::other/x")
    admin = rh.render_admin_key_policy("bkt")
    assert lab_s3.policy_allows(admin, "s3:DeleteObjectVersion", "arn:aws:s3:::bkt/x")


def test_s3_actions_as_aws_names_them():
    q = lambda *names: {n: [""] for n in names}  # noqa: E731
    assert lab_s3.s3_actions("DELETE", "/b/k", q("versionId"), {}) == [("s3:DeleteObjectVersion", "arn:aws:s3:::b/k")]
    assert lab_s3.s3_actions("DELETE", "/b/k", {}, {}) == [("s3:DeleteObject", "arn:aws:s3:::b/k")]
    assert lab_s3.s3_actions("PUT", "/b", q("lifecycle"), {}) == [("s3:PutLifecycleConfiguration", "arn:aws:s3:::b")]
    assert lab_s3.s3_actions("PUT", "/b", q("object-lock"), {}) == [
        ("s3:PutBucketObjectLockConfiguration", "arn:aws:s3:::b")]
    body = (b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>k1</Key></Object>'
            b"<Object><Key>k2</Key><VersionId>v</VersionId></Object></Delete>")
    assert lab_s3.s3_actions("POST", "/b", q("delete"), {}, body) == [
        ("s3:DeleteObject", "arn:aws:s3:::b/k1"), ("s3:DeleteObjectVersion", "arn:aws:s3:::b/k2")]
    assert lab_s3.s3_actions("PUT", "/b/k", {}, {"x-amz-copy-source": "/b/src?versionId=1"}) == [
        ("s3:PutObject", "arn:aws:s3:::b/k"), ("s3:GetObjectVersion", "arn:aws:s3:::b/src")]
    assert ("s3:BypassGovernanceRetention", "arn:aws:s3:::b/k") in lab_s3.s3_actions(
        "DELETE", "/b/k", q("versionId"), {"x-amz-bypass-governance-retention": "true"})


# moto behind the stand-in, over HTTP ---------------------------------------------------------------------------

BUCKET = "hcb-history-test"


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def s3(tmp_path) -> Iterator[tuple[str, object]]:
    """moto's S3 app behind :func:`hcbpg.lab.s3.enforce_iam` on a local port: (endpoint, lab config)."""
    from moto import mock_aws
    from moto.server import DomainDispatcherApplication, create_backend_app

    class Cfg:
        lab_dir = tmp_path

    with mock_aws():
        app = lab_s3.enforce_iam(DomainDispatcherApplication(create_backend_app), tmp_path / lab_s3.IAM_FILE)
        server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}", Cfg
        finally:
            server.shutdown()


def _client(endpoint: str, key: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key="secret-" + key, config=Config(s3={"addressing_style": "path"},
                                                                             retries={"max_attempts": 1}))


def _code(fn, *a, **kw) -> str:  # noqa: ANN001
    from botocore.exceptions import ClientError
    try:
        fn(*a, **kw)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "OK"


def test_server_key_cannot_erase_history_and_the_copy_as_of_t_brings_it_back(s3):
    endpoint, cfg = s3
    admin, server = _client(endpoint, "ADMINKEY"), _client(endpoint, "SERVERKEY")
    lab_s3.register_key(cfg, "SERVERKEY", rh.render_server_key_policy(BUCKET))  # type: ignore[arg-type]
    admin.create_bucket(Bucket=BUCKET)
    store = ObjectStore(admin, BUCKET)
    assert ops_rh.ensure_bucket_versioning(store, dry_run=True).changed
    assert store.versioning() is None  # a dry run changes nothing
    assert ops_rh.ensure_bucket_versioning(store, dry_run=False).changed
    assert not ops_rh.ensure_bucket_versioning(store, dry_run=False).changed
    for i in range(3):
        server.put_object(Bucket=BUCKET, Key=f"{SRC}archive/{i}", Body=f"wal {i}".encode())
    server.put_object(Bucket=BUCKET, Key=f"{SRC}backup/backup.info", Body=b"info 1")
    import time
    time.sleep(1.1)  # S3's LastModified has whole seconds in moto's listing
    t = dt.datetime.now(UTC)
    time.sleep(1.1)
    # the attack, with the server's key: overwrite and delete everything it can reach
    keys = [o["Key"] for o in server.list_objects_v2(Bucket=BUCKET)["Contents"]]
    for k in keys:
        server.put_object(Bucket=BUCKET, Key=k, Body=b"ransom")
    # the server's key cannot even list the versions; the attacker who learned their ids still cannot delete them
    assert _code(server.list_object_versions, Bucket=BUCKET) == "AccessDenied"
    versions = admin.list_object_versions(Bucket=BUCKET)["Versions"]
    assert _code(server.delete_object, Bucket=BUCKET, Key=versions[0]["Key"],
                 VersionId=versions[0]["VersionId"]) == "AccessDenied"
    assert _code(server.delete_objects, Bucket=BUCKET, Delete={"Objects": [
        {"Key": v["Key"], "VersionId": v["VersionId"]} for v in versions]}) == "AccessDenied"
    assert _code(server.put_bucket_versioning, Bucket=BUCKET,
                 VersioningConfiguration={"Status": "Suspended"}) == "AccessDenied"
    assert _code(server.put_bucket_lifecycle_configuration, Bucket=BUCKET, LifecycleConfiguration={"Rules": [
        {"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""}, "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}
    ]}) == "AccessDenied"
    assert _code(server.put_bucket_policy, Bucket=BUCKET, Policy=json.dumps({"Statement": []})) == "AccessDenied"
    assert _code(server.delete_objects, Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]}) == "OK"
    assert server.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # gone, as far as the current view goes
    # the way back, with the admin key
    plan = plan_as_of(ops_rh.get_versions(store, SRC), t, source_prefix=SRC, target_prefix=DST)
    assert len(plan.copies) == 4 and len(plan.changed_after) == 4
    assert ops_rh.run_copy_as_of(store, plan, dry_run=True).changed and store.keys(DST) == []
    out = ops_rh.run_copy_as_of(store, plan, dry_run=False)
    assert out.changed
    assert store.get(f"{DST}backup/backup.info")[0] == b"info 1"  # type: ignore[index]
    assert sorted(store.get(f"{DST}archive/{i}")[0] for i in range(3)) == [b"wal 0", b"wal 1", b"wal 2"]  # type: ignore[index]
    assert not ops_rh.run_copy_as_of(store, plan, dry_run=False).changed  # a second run copies nothing
    other = plan_as_of(ops_rh.get_versions(store, SRC), t - dt.timedelta(seconds=1), source_prefix=SRC,
                       target_prefix=DST)
    with pytest.raises(SafetyCheckFailed, match="holds a copy as of"):
        ops_rh.run_copy_as_of(store, other, dry_run=False)
    # the admin key can erase versions: expiry and the provider's lifecycle use it
    v = admin.list_object_versions(Bucket=BUCKET, Prefix=f"{SRC}archive/0")["Versions"][-1]
    assert _code(admin.delete_object, Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"]) == "OK"


def test_copy_refuses_a_prefix_that_is_not_clean(s3):
    endpoint, _cfg = s3
    admin = _client(endpoint, "ADMINKEY")
    admin.create_bucket(Bucket=BUCKET)
    store = ObjectStore(admin, BUCKET)
    store.enable_versioning()
    admin.put_object(Bucket=BUCKET, Key=SRC + "k", Body=b"1")
    admin.put_object(Bucket=BUCKET, Key=DST + "stray", Body=b"x")
    plan = plan_as_of(ops_rh.get_versions(store, SRC), dt.datetime.now(UTC) + dt.timedelta(seconds=5),
                      source_prefix=SRC, target_prefix=DST)
    with pytest.raises(SafetyCheckFailed, match="not clean"):
        ops_rh.run_copy_as_of(store, plan, dry_run=False)
    empty = plan_as_of([], T0, source_prefix=SRC, target_prefix=DST)
    with pytest.raises(SafetyCheckFailed, match="nothing under"):
        ops_rh.run_copy_as_of(store, empty, dry_run=False)


def test_servers_do_not_expire_when_a_repository_has_an_admin_key():
    from hcbpg.desired.pgbackrest import render_pgbackrest_conf

    p = parse_params(params_data(pgbackrest={**PB, "admin_s3_key": "env:AK", "admin_s3_key_secret": "env:AS"},
                                 jumpbox=JUMPBOX))
    conf = render_pgbackrest_conf(p, p.primary, version=(2, 45, 0))
    assert "[global:backup]\nexpire-auto=n\n" in conf
    assert "env:AK" not in conf and "repo1-s3-key=<secret>" in conf  # the admin key never reaches a server
    plain = parse_params(params_data(pgbackrest=PB))
    assert "expire-auto" not in render_pgbackrest_conf(plain, plain.primary, version=(2, 45, 0))


# old versions' expiry: the lifecycle rule -----------------------------------------------------------------------

def test_the_rule_removes_noncurrent_versions_of_the_whole_bucket_after_n_days():
    assert rh.render_noncurrent_expiry_rule(30) == {
        "ID": "hcbpg-noncurrent-versions", "Status": "Enabled", "Filter": {"Prefix": ""},
        "NoncurrentVersionExpiration": {"NoncurrentDays": 30}}
    with pytest.raises(SafetyCheckFailed, match="1 or more"):
        rh.render_noncurrent_expiry_rule(0)
    # params: 30 days by default, none keeps every version, 0 refused
    assert parse_params(params_data(pgbackrest=PB)).pgbackrest.noncurrent_version_expiry_days == 30
    assert parse_params(params_data(pgbackrest={**PB, "noncurrent_version_expiry_days": None})
                        ).pgbackrest.noncurrent_version_expiry_days is None
    with pytest.raises(ParamsError, match="noncurrent_version_expiry_days"):
        parse_params(params_data(pgbackrest={**PB, "noncurrent_version_expiry_days": 0}))


def test_the_rule_as_stores_give_it_back_is_recognised():
    ours = rh.render_noncurrent_expiry_rule(30)
    assert rh.parse_noncurrent_expiry_days(ours) == 30
    # the older top-level Prefix (Hetzner's how-to writes it so), and days as the XML's text
    assert rh.parse_noncurrent_expiry_days({"ID": ours["ID"], "Status": "Enabled", "Prefix": "",
                                            "NoncurrentVersionExpiration": {"NoncurrentDays": "30"}}) == 30
    for other in ({**ours, "Status": "Disabled"}, {**ours, "Filter": {"Prefix": "pgbackrest/"}},
                  {**ours, "Filter": {"Tag": {"Key": "k", "Value": "v"}}},
                  {**ours, "Expiration": {"Days": 30}},
                  {**ours, "NoncurrentVersionExpiration": {"NoncurrentDays": 30, "NewerNoncurrentVersions": 3}}):
        assert rh.parse_noncurrent_expiry_days(other) is None, other


def test_plan_puts_ours_beside_the_others_and_only_when_it_differs():
    theirs = {"ID": "abort-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
              "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}
    rules, what = rh.plan_noncurrent_expiry([], 30)
    assert rules == [rh.render_noncurrent_expiry_rule(30)] and what == "noncurrent versions removed after 30 days (now no rule)"
    rules, what = rh.plan_noncurrent_expiry([theirs, rh.render_noncurrent_expiry_rule(14)], 30)
    assert rules == [theirs, rh.render_noncurrent_expiry_rule(30)]
    assert what == "noncurrent versions removed after 30 days (now noncurrent versions removed after 14 days)"
    assert rh.plan_noncurrent_expiry([rh.render_noncurrent_expiry_rule(30), theirs], 30) == (
        None, "noncurrent versions removed after 30 days")
    # two rules of ours (a hand edit): one again
    twice = [rh.render_noncurrent_expiry_rule(30), rh.render_noncurrent_expiry_rule(30)]
    assert rh.plan_noncurrent_expiry(twice, 30)[0] == [rh.render_noncurrent_expiry_rule(30)]
    # none: ours removed (an empty list deletes the configuration), nothing when there is none
    assert rh.plan_noncurrent_expiry([theirs, rh.render_noncurrent_expiry_rule(30)], None)[0] == [theirs]
    assert rh.plan_noncurrent_expiry([rh.render_noncurrent_expiry_rule(30)], None)[0] == []
    assert rh.plan_noncurrent_expiry([theirs], None)[0] is None
    assert rh.other_expiring_rules([theirs, rh.render_noncurrent_expiry_rule(30),
                                    {"ID": "wipe", "Status": "Enabled", "Expiration": {"Days": 1}},
                                    {"ID": "off", "Status": "Disabled", "Expiration": {"Days": 1}},
                                    {"ID": "markers", "Status": "Enabled", "Expiration": {"ExpiredObjectDeleteMarker": True}}
                                    ]) == ["wipe"]


# notebook 21's inputs: which repository ------------------------------------------------------------------------

REPO2 = {"s3_bucket": "hcb-second", "s3_endpoint": "s3.eu-central-003.backblazeb2.com", "s3_region": "eu-central-003",
         "s3_key": "env:K2", "s3_key_secret": "env:S2", "cipher_pass": "env:C2", "repo_path_prefix": "/pgbackrest-b2",
         "admin_s3_key": "env:AK2", "admin_s3_key_secret": "env:AS2"}
ADMIN = {"admin_s3_key": "env:AK", "admin_s3_key_secret": "env:AS"}
DRILL = {"name": "drill-1", "private_ip": "10.0.1.30", "s3_key": "env:RO", "s3_key_secret": "env:ROS"}


def test_the_repository_input_is_1_or_2():
    assert [rh.parse_repo(v) for v in (1, 2, "1", " 2 ", "repo2", "REPO1")] == [1, 2, 1, 2, 2, 1]
    for bad in (0, 3, "", "two", "repo3", None):
        with pytest.raises(ParamsError, match="repo"):
            rh.parse_repo(bad)


def test_plan_inputs_for_repo2_read_its_bucket_path_and_admin_key_and_restore_as_repo1():
    from hcbpg.desired.pgbackrest import render_pgbackrest_conf, repo_path

    p = parse_params(params_data(pgbackrest={**PB, **ADMIN, "repo2": REPO2}, drill=DRILL))
    i = rh.plan_as_of_inputs(p, "2026-12-07 07:00:00+00", "", "2")
    assert (i.repo, i.as_of, i.admin_keys) == (2, T0, ("pgbackrest.repo2.admin_s3_key",
                                                        "pgbackrest.repo2.admin_s3_key_secret"))
    src, dst = i.source.pgbackrest, i.target.pgbackrest
    assert (src.s3_bucket, src.s3_endpoint, src.s3_key, src.cipher_pass, src.admin_s3_key, src.repo2) == (
        "hcb-second", "s3.eu-central-003.backblazeb2.com", "env:K2", "env:C2", "env:AK2", None)
    assert repo_path(i.source) == "/pgbackrest-b2/hcb_production"
    assert repo_path(i.target) == "/pgbackrest-asof-20261207T070000Z/hcb_production"
    assert dst.s3_bucket == "hcb-second" and dst.stanza == p.pgbackrest.stanza
    # the scratch host restores from the copy in repo2's bucket as its one repository, with repo2's keys (the
    # drill's read-only key is repo1's: dropped)
    assert i.target.drill is not None and i.target.drill.s3_key is None and i.target.drill.name == "drill-1"
    conf = render_pgbackrest_conf(i.target, i.target.primary, version=(2, 45, 0))
    assert "repo1-s3-bucket=hcb-second" in conf and "repo1-path=/pgbackrest-asof-20261207T070000Z" in conf
    assert "repo2-" not in conf
    # repo 1 (the default): the params as they are, at the clean prefix
    one = rh.plan_as_of_inputs(p, "2026-12-07 07:00:00+00", "/pgbackrest-asof-1")
    assert one.source is p and one.admin_keys == ("pgbackrest.admin_s3_key", "pgbackrest.admin_s3_key_secret")
    assert one.target.pgbackrest.s3_bucket == p.pgbackrest.s3_bucket and one.target.drill.s3_key == "env:RO"
    assert repo_path(one.target) == "/pgbackrest-asof-1/hcb_production"


def test_a_repository_params_do_not_define_or_without_an_admin_key_is_refused_before_anything_is_read():
    from hcbpg.steps import repository_as_of as step21

    only1 = parse_params(params_data(pgbackrest={**PB, **ADMIN}))
    with pytest.raises(ParamsError, match="no pgbackrest.repo2") as info:
        rh.plan_as_of_inputs(only1, "2026-12-07 07:00:00+00", "", 2)
    assert "repositories: repo1" in str(info.value)
    no_admin2 = parse_params(params_data(pgbackrest={**PB, **ADMIN, "repo2": {
        k: v for k, v in REPO2.items() if not k.startswith("admin")}}))
    with pytest.raises(ParamsError, match="pgbackrest.repo2.admin_s3_key"):
        rh.plan_as_of_inputs(no_admin2, "2026-12-07 07:00:00+00", "", 2)
    assert rh.plan_as_of_inputs(no_admin2, "2026-12-07 07:00:00+00", "", 1).repo == 1

    class NoSecrets:  # connect refuses before it asks for a key or opens the bucket
        params = only1

        def secret(self, key: str) -> str:
            raise AssertionError(f"asked for {key}")
    with pytest.raises(ParamsError, match="no pgbackrest.repo2"):
        step21.connect(NoSecrets(), "2026-12-07 07:00:00+00", "", "2")  # type: ignore[arg-type]
