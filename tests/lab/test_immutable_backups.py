"""Issue 24, done when: with the credentials found on a database server, deleting and overwriting every object it
can reach leaves a repository from which the cluster is restored as of before the attack, up to the last WAL
archived before it; the jumpbox's expiry still works.

A bucket of its own in the lab's S3 (versioning on, by the admin key), the server's key registered with the lab
S3's IAM stand-in under the policy hcbpg renders for the provider (:func:`render_server_key_policy`); the admin key
is the lab's unlimited one, only on the jumpbox and in this process.  On a clone of the worker's primary stage:
steps 05 and 08's code, two full backups (the server does not expire: expire-auto=n), expiry from the jumpbox; rows
written and archived before T, rows after; the attack; the repository as of T copied into a clean prefix; a
restore from it on a scratch host.  The tests run in file order and build on each other.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets as pysecrets
import time
from pathlib import Path

import pytest

from hcbpg.adapters.host import Host
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired import repo_history as rh
from hcbpg.lab import destroy_server_host
from hcbpg.lab.hosts import create_server_host
from hcbpg.lab.s3 import register_key
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import drill
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import repo_history as ops_rh
from hcbpg.params import parse_params
from hcbpg.pg.pgbackrest import parse_info_json
from hcbpg.secrets import resolve
from hcbpg.steps import pgbackrest as step05
from hcbpg.steps import restore_drill as step12
from hcbpg.steps import start_archiving as step08
from hcbpg.wait import wait_until

from labparams import lab_params, pgbackrest_section
from stages import STAGE_PRIMARY, cli, latest_manifest, latest_run_dir, run_home, scrap

pytestmark = pytest.mark.lab

REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

BUCKET = "hcb-immutable-test"
JUMPBOX = "hcb-jumpbox"
SCRATCH = "drill-asof"
STATE: dict = {}
OUTPUT: list[str] = []


def _secret_file(path, value: str) -> str:  # noqa: ANN001 - a Path
    import os
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return f"file:{path}"


@pytest.fixture(scope="module")
def server_key(lab):
    """A key limited to the server policy by the lab S3's stand-in (as the provider's IAM or bucket policy)."""
    key_id = "HCBSERVER" + pysecrets.token_hex(6).upper()
    secret = pysecrets.token_urlsafe(30)
    d = lab.cfg.secrets_dir
    refs = {"s3_key": _secret_file(d / "s3-server-key", key_id),
            "s3_key_secret": _secret_file(d / "s3-server-key-secret", secret)}
    register_key(lab.cfg, key_id, rh.render_server_key_policy(BUCKET))
    STATE["server_secret"] = secret
    return refs


@pytest.fixture(scope="module")
def params(lab, primary_stage, server_key, monkeypatch_module):
    monkeypatch_module.setenv("HCBPG_LAB_DIR", str(lab.lab_dir))  # the site's scratch host is in this lab
    cfg = lab.cfg
    jb_ip, scratch_ip = cfg.address(61), cfg.address(62)
    ip = primary_stage.clone()
    admin = {"admin_s3_key": f"file:{cfg.secret_path('s3-key')}",
             "admin_s3_key_secret": f"file:{cfg.secret_path('s3-key-secret')}"}
    data = lab_params(lab, [(STAGE_PRIMARY, ip, "primary")],
                      pgbackrest=pgbackrest_section(lab, s3_bucket=BUCKET, retention_full_type="count", retention_full=1,
                                                    object_lock_days=1, **server_key, **admin),
                      jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip},
                      drill={"name": SCRATCH, "private_ip": scratch_ip})
    p = parse_params(data)
    STATE["data"] = data
    create_server_host(JUMPBOX, jb_ip, [lab.ssh_key.with_suffix(".pub").read_text()], lab_dir=str(lab.lab_dir))
    yield p
    for name in (STAGE_PRIMARY, JUMPBOX, SCRATCH):
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def hosts(params):
    assert params.jumpbox is not None
    hs = {"primary": Host.from_params(params, STAGE_PRIMARY, params.primary.private_ip),
          "jumpbox": Host.from_params(params, JUMPBOX, params.jumpbox.private_ip)}
    for h in hs.values():
        h.echo = OUTPUT.append
    yield hs
    for h in hs.values():
        h.close()


@pytest.fixture(scope="module")
def admin_store(params):
    store = ObjectStore.of_admin_key(params)
    if BUCKET not in [b["Name"] for b in store.client.list_buckets().get("Buckets", [])]:
        store.client.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True, CreateBucketConfiguration={
            "LocationConstraint": params.pgbackrest.s3_region})
    return store


def _sql(host, text: str, db: str = "hcb_production") -> str:  # noqa: ANN001
    return host.run(f"psql -X -q -A -t -v ON_ERROR_STOP=1 -d {db}", sudo_user="postgres", stdin=text).stdout.strip()


def _backups(host, params) -> list:  # noqa: ANN001
    return parse_info_json(pgb.get_info_json(host, params), params.pgbackrest.stanza)  # type: ignore[union-attr]


def _archived(host) -> str:  # noqa: ANN001
    """Switch WAL and wait until the segment holding everything written so far is in the repository."""
    seg = _sql(host, "SELECT pg_walfile_name(pg_switch_wal())")

    wait_until(lambda: _sql(host, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", "postgres"),
               lambda last: last >= seg, timeout=180, interval=0.5, what=f"WAL {seg} archived")
    return seg


class _Run:
    """What step 05's protect_history reads of a notebook's run: params, dry run, secrets by params key."""

    def __init__(self, params, dry_run: bool = False) -> None:  # noqa: ANN001
        self.params, self.dry_run = params, dry_run

    def secret(self, key: str) -> str:
        obj = self.params
        for part in key.split("."):
            obj = getattr(obj, part)
        return resolve(obj, key=key)


def test_step05_protects_history_and_the_server_holds_only_its_own_key(params, hosts, admin_store):
    def changed(outcomes: list) -> set[str]:
        return {o.what for o in outcomes if o.changed}
    # a bucket made with Object Lock has versioning on from the start (S3, moto): nothing to change there; the lab
    # jumpbox has pgbackrest installed already
    expected = {f"Object Lock of repo1 s3://{BUCKET}", f"{rh.EXPIRE_CONF_PATH} on {JUMPBOX}",
                f"{rh.EXPIRE_CRON_PATH} on {JUMPBOX}", f"lifecycle of repo1 s3://{BUCKET} ({rh.LIFECYCLE_RULE_ID})"}
    planned = step05.protect_history(_Run(params, dry_run=True))
    assert expected <= changed(planned) and f"versioning of repo1 s3://{BUCKET}" not in changed(planned)
    assert all(o.dry_run for o in planned)
    assert admin_store.object_lock() == (None, None) and hosts["jumpbox"].read_text(rh.EXPIRE_CONF_PATH) is None
    assert admin_store.lifecycle_rules() == []
    outcomes = step05.protect_history(_Run(params))
    print("\n".join(str(o) for o in outcomes))
    assert changed(outcomes) == changed(planned)
    assert admin_store.versioning() == "Enabled" and admin_store.object_lock() == ("GOVERNANCE", 1)
    # old versions expire: the lifecycle rule (params' default, 30 days) is in place (moto stores it, never applies it)
    assert [(c.status, c.detail) for c in ops_rh.check_noncurrent_version_expiry(admin_store, 30)] == [
        ("pass", "noncurrent versions removed after 30 days")]
    assert not any(o.changed for o in step05.protect_history(_Run(params)))
    primary = hosts["primary"]
    step05.configure(primary, params, params.primary)
    conf = desired_pgbackrest.parse_conf(primary.read_text(desired_pgbackrest.CONF_PATH) or "")
    admin_secret = resolve(params.pgbackrest.admin_s3_key_secret, key="admin")  # type: ignore[union-attr, arg-type]
    assert conf["global:backup"] == {"expire-auto": "n"}
    assert conf["global"]["repo1-s3-key-secret"] == STATE["server_secret"] != admin_secret
    assert admin_secret not in primary.read_text(desired_pgbackrest.CONF_PATH)  # type: ignore[operator]
    step08.start_archiving(primary, params, params.primary)
    outcome, backup, _fp = drill.ensure_baseline_backup(primary, params)
    assert outcome.changed and backup is not None


def test_servers_do_not_expire_and_the_jumpbox_does(params, hosts):
    primary, jumpbox = hosts["primary"], hosts["jumpbox"]
    pgb.run_backup(primary, params, type="full")
    labels = [b.label for b in _backups(primary, params)]
    assert len(labels) == 2, labels  # retention_full=1, and the server did not expire the first
    t0 = time.monotonic()
    outcomes = ops_rh.ensure_expiry_on_jumpbox(jumpbox, params)  # step 05 set it up: nothing to change
    admin_secret = resolve(params.pgbackrest.admin_s3_key_secret, key="admin")  # type: ignore[union-attr, arg-type]
    assert not any(o.changed for o in outcomes) and admin_secret not in str(outcomes)
    assert admin_secret in (jumpbox.read_text(rh.EXPIRE_CONF_PATH) or "")
    assert jumpbox.probe(f"stat -c '%a %U' {rh.EXPIRE_CONF_PATH}").stdout.strip() == "600 root"
    assert "root pgbackrest --config=" in (jumpbox.read_text(rh.EXPIRE_CRON_PATH) or "")
    res = ops_rh.run_expire(jumpbox, params)
    expired = rh.parse_expire_output(res.output)
    print(f"expiry on the jumpbox in {time.monotonic() - t0:.1f}s: {expired}")
    assert any(labels[0] in line for line in expired), res.output
    assert [b.label for b in _backups(primary, params)] == labels[1:]
    # the server's own key cannot expire (its DeleteObject adds markers; it is the expiry that matters here)
    STATE["newest_full"] = labels[1]


def test_rows_before_t_archived_then_rows_after(params, hosts):
    primary = hosts["primary"]
    _sql(primary, "CREATE TABLE IF NOT EXISTS attack_probe (id bigserial PRIMARY KEY, phase text NOT NULL);"
                  "INSERT INTO attack_probe (phase) SELECT 'before' FROM generate_series(1, 500);")
    STATE["before_wal"] = _archived(primary)
    time.sleep(1.5)  # the store's LastModified: versions written after T are later than T
    STATE["t"] = dt.datetime.now(dt.timezone.utc)
    time.sleep(1.5)
    _sql(primary, "INSERT INTO attack_probe (phase) SELECT 'after' FROM generate_series(1, 70);")
    _archived(primary)


def test_the_servers_key_overwrites_and_deletes_all_it_can_but_not_history(params, hosts, admin_store):
    primary = hosts["primary"]
    pb = params.pgbackrest
    found = desired_pgbackrest.parse_conf(primary.read_text(desired_pgbackrest.CONF_PATH) or "")["global"]
    attacker = ObjectStore.from_params(params, found["repo1-s3-key"], found["repo1-s3-key-secret"])
    prefix = rh.key_prefix(desired_pgbackrest.repo_path(params))
    keys = attacker.keys("")
    assert any(k.startswith(prefix + "backup/") for k in keys) and any(k.startswith(prefix + "archive/") for k in keys)
    from botocore.exceptions import ClientError

    def denied(fn, **kw) -> bool:  # noqa: ANN001
        try:
            fn(Bucket=BUCKET, **kw)
        except ClientError as exc:
            return exc.response["Error"]["Code"] == "AccessDenied"
        return False
    c = attacker.client
    assert denied(c.list_object_versions)
    assert denied(c.put_bucket_versioning, VersioningConfiguration={"Status": "Suspended"})
    assert denied(c.put_bucket_lifecycle_configuration, LifecycleConfiguration={"Rules": [
        {"ID": "wipe", "Status": "Enabled", "Filter": {"Prefix": ""},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 1}, "Expiration": {"Days": 1}}]})
    assert denied(c.put_bucket_policy, Policy='{"Version": "2012-10-17", "Statement": []}')
    # the ids the attacker would need (its key cannot list them); expiry's delete markers left out
    versions = [v for v in admin_store.versions(prefix) if not v["delete_marker"]]
    assert denied(c.delete_object, Key=versions[0]["key"], VersionId=versions[0]["version_id"])
    # Object Lock (GOVERNANCE, 1 day): not even the admin key deletes a version without the governance bypass
    assert denied(admin_store.client.delete_object, Key=versions[0]["key"], VersionId=versions[0]["version_id"])
    assert denied(c.delete_objects, Delete={"Objects": [{"Key": v["key"], "VersionId": v["version_id"]}
                                                        for v in versions[:50]]})
    # what it can do: overwrite every object, then delete every one; and pgBackRest's own repo-rm on the server
    ransom = b"encrypted by the attacker"
    md5 = base64.b64encode(hashlib.md5(ransom).digest()).decode()  # S3 asks it of writes under Object Lock
    for k in keys:
        c.put_object(Bucket=BUCKET, Key=k, Body=ransom, ContentMD5=md5)
    primary.run("pgbackrest --recurse repo-rm backup", sudo_user="postgres")  # with the server's own config
    for k in attacker.keys(""):
        attacker.delete(k)
    assert attacker.keys(prefix) == [] or all(k.startswith(prefix + "archive/") for k in attacker.keys(prefix))
    info = pgb.run_pgbackrest(primary, params, "info", "--output=json", read_only=True, check=False)
    assert STATE["newest_full"] not in info.output  # the live repository shows no backup any more
    STATE["attacked_keys"] = len(keys)
    assert pb is not None


def test_the_repository_as_of_t_into_a_clean_prefix(params, admin_store):
    t = STATE["t"]
    src = rh.key_prefix(desired_pgbackrest.repo_path(params))
    asof = rh.repo_with_prefix(params, rh.as_of_path_prefix(t))
    dst = rh.key_prefix(desired_pgbackrest.repo_path(asof))
    t0 = time.monotonic()
    plan = rh.plan_as_of(ops_rh.get_versions(admin_store, src), t, source_prefix=src, target_prefix=dst)
    assert plan.changed_after and len(plan.copies) >= 1
    assert any(c.source_key.endswith(f"backup/{params.pgbackrest.stanza}/backup.info") for c in plan.copies)
    assert any(STATE["before_wal"] in c.source_key for c in plan.copies)  # the last WAL archived before T
    out = ops_rh.run_copy_as_of(admin_store, plan, dry_run=False)
    assert out.changed
    print(f"as of {t.isoformat()}: {plan.summary()} copied in {time.monotonic() - t0:.1f}s")
    assert not ops_rh.run_copy_as_of(admin_store, plan, dry_run=False).changed
    STATE["asof"] = asof


def test_restore_from_the_copy_has_the_rows_of_before_the_attack(params):
    asof = STATE["asof"]
    target = step12.drill_target(asof)
    host = step12.scratch_host(asof, target, dry_run=False)
    try:
        step12.prepare_scratch(host, asof, target)
        backups = _backups(host, asof)
        assert [b.label for b in backups] == [STATE["newest_full"]]
        t0 = time.monotonic()
        result = drill.run_restore(host, asof, target)
        print(f"restore from the copy as of T: restore {result.restore_s}s, recovery {result.recovery_s}s, "
              f"total {time.monotonic() - t0:.1f}s")
        psql = pg_cluster.get_psql(host, asof)
        rows = psql.query("SELECT phase, count(*) AS n FROM attack_probe GROUP BY phase ORDER BY phase",
                          dbname="hcb_production")
        assert {r["phase"]: r["n"] for r in rows} == {"before": 500}
    finally:
        host.close()  # type: ignore[attr-defined]


def test_notebook_21_through_the_cli_waits_at_its_gate_then_copies_and_restores(params, admin_store, tmp_path_factory,
                                                                                   monkeypatch_module):
    t = STATE["t"]
    home = run_home(tmp_path_factory.mktemp("asof-home"), STATE["data"], ["21_repository_as_of"], monkeypatch_module,
                    on_demand=("21_repository_as_of",))
    import yaml  # the step's entry as the repository lists it: its inputs and gate
    repo_steps = yaml.safe_load((REPO_NOTEBOOKS / "steps.yaml").read_text())["steps"]
    (home / "notebooks" / "steps.yaml").write_text(yaml.safe_dump({"steps": [
        e for e in repo_steps if e["notebook"] == "21_repository_as_of.ipynb"]}))
    prefix = "/pgbackrest-asof-cli"
    args = ("--only", "21_repository_as_of", "-p", f"as_of={t.isoformat()}", "-p", f"target_prefix={prefix}")
    plan = cli({}, "plan", "lab", *args)  # a dry run: reads the versions, shows the plan, writes nothing
    assert plan.returncode == 0, plan.stdout[-6000:] + plan.stderr[-3000:]
    assert admin_store.keys(prefix.lstrip("/") + "/") == []
    proc = cli({}, "run", "lab", *args)
    assert proc.returncode == 3, proc.stdout[-6000:] + proc.stderr[-3000:]  # waiting at its gate
    assert "copy-repository-as-of" in proc.stdout
    assert admin_store.keys(prefix.lstrip("/") + "/") == []  # nothing written before the gate
    run_id = latest_manifest(home)["run_id"]
    ok = cli({}, "approve", run_id, "copy-repository-as-of", "--note", "lab test")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    t0 = time.monotonic()
    proc = cli({}, "resume", run_id)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    rec = scrap(latest_run_dir(home) / "21_repository_as_of.ipynb", "repository_as_of")
    assert rec["objects"] == len(admin_store.keys(prefix.lstrip("/") + "/")) - 1  # and the copy's marker
    assert rec["restore"]["total_s"] > 0
    print(f"notebook 21 through the CLI: {rec['objects']} objects, restore {rec['restore']['restore_s']}s, "
          f"{time.monotonic() - t0:.1f}s after the approval")
    asof = rh.repo_with_prefix(params, prefix)
    with Host.from_params(asof, SCRATCH, asof.drill.private_ip) as host:  # type: ignore[union-attr]
        rows = pg_cluster.get_psql(host, asof).query("SELECT phase, count(*) AS n FROM attack_probe GROUP BY phase",
                                                     dbname="hcb_production")
    assert {r["phase"]: r["n"] for r in rows} == {"before": 500}
    secret = STATE["server_secret"]
    admin_secret = resolve(params.pgbackrest.admin_s3_key_secret, key="admin")  # type: ignore[union-attr, arg-type]
    for path in (home / "outputs").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert secret.encode() not in data and admin_secret.encode() not in data, path


def test_the_way_back_in_repo2_reads_that_repositorys_bucket_path_and_keys(params, admin_store):
    """Notebook 21's ``repo=2`` on params whose repo2 is the attacked repository and whose repo1 points at an empty
    prefix: the plan, the copy and the restore read repo2's bucket, path and admin key (the copy in repo2's bucket,
    restored there as the scratch host's only repository)."""
    import copy as _copy

    from hcbpg.params import S3Repo

    data = _copy.deepcopy(STATE["data"])
    pb = data["pgbackrest"]
    pb["repo2"] = {k: v for k, v in pb.items() if k in S3Repo.model_fields}  # the attacked repository, as repo2
    pb["repo_path_prefix"] = "/pgbackrest-immutable-nothing-here"
    two = parse_params(data)
    prefix = "/pgbackrest-asof-repo2"
    i = rh.plan_as_of_inputs(two, STATE["t"].isoformat(), prefix, "2")
    assert i.source.pgbackrest.repo_path_prefix == params.pgbackrest.repo_path_prefix
    src_pb = i.source.pgbackrest  # repo2's fields as repo1: its admin key, as rb.secret(i.admin_keys) resolves it
    assert (src_pb.admin_s3_key, src_pb.admin_s3_key_secret) == (two.pgbackrest.repo2.admin_s3_key,
                                                                 two.pgbackrest.repo2.admin_s3_key_secret)
    store = ObjectStore.from_params(i.source, resolve(src_pb.admin_s3_key, key=i.admin_keys[0]),
                                    resolve(src_pb.admin_s3_key_secret, key=i.admin_keys[1]))
    src = rh.key_prefix(desired_pgbackrest.repo_path(i.source))
    plan = rh.plan_as_of(ops_rh.get_versions(store, src), i.as_of, source_prefix=src,
                         target_prefix=rh.key_prefix(desired_pgbackrest.repo_path(i.target)))
    assert any(STATE["before_wal"] in c.source_key for c in plan.copies)
    t0 = time.monotonic()
    assert ops_rh.run_copy_as_of(store, plan, dry_run=False).changed
    assert admin_store.keys(prefix.lstrip("/") + "/")  # in the repository's bucket
    target = step12.drill_target(i.target)
    host = step12.scratch_host(i.target, target, dry_run=False)
    try:
        step12.prepare_scratch(host, i.target, target)
        conf = desired_pgbackrest.parse_conf(host.read_text(desired_pgbackrest.CONF_PATH) or "")["global"]
        assert conf["repo1-path"] == f"{prefix}/{params.pgbackrest.stanza}" and "repo2-path" not in conf
        result = drill.run_restore(host, i.target, target, force=True)
        rows = pg_cluster.get_psql(host, i.target).query(
            "SELECT phase, count(*) AS n FROM attack_probe GROUP BY phase", dbname="hcb_production")
        assert {r["phase"]: r["n"] for r in rows} == {"before": 500}
        print(f"repo2 as of T: {len(plan.copies)} versions copied and restored in {time.monotonic() - t0:.1f}s "
              f"(restore {result.restore_s}s, recovery {result.recovery_s}s)")
    finally:
        host.close()  # type: ignore[attr-defined]
