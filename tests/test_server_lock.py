"""The change locks: the primary's (who may take it, pure; a step against a recording host), and the
environment's in the backup bucket (against moto's S3)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import yaml

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import RecordingHost
from hcbpg.desired import locks
from hcbpg.errors import CloudError, SafetyCheckFailed, UsageError
from hcbpg.ops import env_lock
from hcbpg.ops import server_lock as sl
from hcbpg.params import parse_params
from hcbpg.steps import targets

from nbutil import MOTO_BUCKET, make_params

ME = locks.Holder("run-b", "staging", "07_cutover", "bob", "bob-laptop", 4242, 4200, "2026-12-02T18:00:00.000000Z")
ALICE = locks.Holder("run-a", "staging", "05_pgbackrest", "alice", "alice-laptop", 99, 90, "2026-12-02T17:00:00.000000Z")


def test_who_may_take_the_lock():
    assert locks.plan_take_change_lock(None, ME) == ("take", "free")
    assert locks.plan_take_change_lock(dataclasses.replace(ALICE, run_id="run-b"), ME)[0] == "ours"       # a resume of the run
    decision, why = locks.plan_take_change_lock(ALICE, ME, alive=lambda pid: False)
    assert decision == "refuse" and why == ("step 05_pgbackrest of run run-a (staging) by alice (pid 90 on "
                                            "alice-laptop) since 2026-12-02T17:00:00.000000Z")
    here = dataclasses.replace(ALICE, machine="bob-laptop")
    assert locks.plan_take_change_lock(here, ME, alive=lambda pid: False)[0] == "stale"     # its processes are gone here
    assert locks.plan_take_change_lock(here, ME, alive=lambda pid: pid == 90)[0] == "refuse"
    assert locks.plan_take_change_lock(None, ME, raw="garbage")[0] == "refuse"
    assert locks.parse_holder(ALICE.to_json()) == ALICE and locks.parse_holder("{}") is None


def _host(current: str | None, *, taken: bool):
    def take(call):
        return Result("server-postgres-1", call.command, 0 if taken else 1, "", "" if taken else "file exists", 0.0)
    files = {sl.LOCK_PATH: current} if current is not None else {}
    return RecordingHost("server-postgres-1", script=[(r"set -C", take), (r"^rm -f", "")], files=files)


def test_a_step_is_refused_naming_the_holder_and_changes_nothing():
    host = _host(ALICE.to_json(), taken=False)
    with pytest.raises(SafetyCheckFailed) as ei:
        sl.ensure_change_lock(host, ME)
    assert "server-postgres-1 is being changed by another run: step 05_pgbackrest of run run-a" in str(ei.value)
    assert "since 2026-12-02T17:00:00" in str(ei.value)
    assert locks.parse_holder(host.files[sl.LOCK_PATH]) == ALICE


def test_taken_when_free_and_released_only_by_its_run():
    host = _host(None, taken=True)
    out = sl.ensure_change_lock(host, ME)
    assert out.changed and "bob" in out.actions[0]
    (take,) = [c for c in host.calls if "set -C" in c.command]
    assert locks.parse_holder(take.stdin) == ME
    host.files[sl.LOCK_PATH] = ALICE.to_json()
    assert not sl.release_change_lock(host, ME)          # not ours: left alone
    host.files[sl.LOCK_PATH] = ME.to_json()
    assert sl.release_change_lock(host, ME)


def test_the_same_run_takes_its_own_lock_over_and_a_dry_run_takes_nothing():
    host = _host(dataclasses.replace(ME, step="06_restore").to_json(), taken=False)
    assert sl.ensure_change_lock(host, ME).changed
    assert locks.parse_holder(host.files[sl.LOCK_PATH]) == ME
    dry = _host(None, taken=True)
    planned = sl.ensure_change_lock(DryRunHost(dry), ME)
    assert planned.verb == "would change" and dry.ran == [] and sl.LOCK_PATH not in dry.files


# the environment lock in the backup bucket (hcbpg.ops.env_lock), against moto's S3 in this process ---------------

BUCKET = MOTO_BUCKET
KEY = "hcbpg-locks/pgbackrest/hcb_production/staging.json"


@pytest.fixture
def bucket(moto_s3):
    """An ObjectStore on moto's S3 (the same code the lab's S3 server runs), with one empty bucket."""
    from hcbpg.adapters.objectstore import ObjectStore
    return ObjectStore(moto_s3, BUCKET)


def test_the_lock_key_sits_beside_the_repository_per_environment():
    data = yaml.safe_load(make_params("test"))
    data["pgbackrest"] = {"s3_key": "env:K", "s3_key_secret": "env:S", "cipher_pass": "env:C",
                          "repo_path_prefix": "/pgbackrest", "stanza": "hcb_production"}
    assert env_lock.lock_key(parse_params(data)) == "hcbpg-locks/pgbackrest/hcb_production/test.json"


def test_a_second_run_is_refused_naming_the_first_and_the_lock_stays_the_first_runs(bucket):
    alice = dataclasses.replace(ALICE, step="11_failover")
    assert env_lock.ensure_env_lock(bucket, KEY, alice).changed
    with pytest.raises(SafetyCheckFailed) as ei:
        env_lock.ensure_env_lock(bucket, KEY, ME)
    msg = str(ei.value)
    assert "environment staging is locked for a destructive step by another run: step 11_failover of run run-a " \
           "(staging) by alice (pid 90 on alice-laptop) since 2026-12-02T17:00:00.000000Z" in msg
    assert "hcbpg lock staging --break run-a" in msg
    assert env_lock.get_env_lock(bucket, KEY)[0] == alice
    # nor does a holder's death on this machine free it: only the named break does
    here = dataclasses.replace(alice, machine=ME.machine, pid=2**22 + 1, runner_pid=2**22 + 2)
    bucket.delete(KEY)
    env_lock.ensure_env_lock(bucket, KEY, here)
    with pytest.raises(SafetyCheckFailed):
        env_lock.ensure_env_lock(bucket, KEY, ME)


def test_the_same_run_takes_it_over_and_only_its_holder_releases_it(bucket):
    earlier = dataclasses.replace(ME, step="11_failover", pid=1, since="2026-12-02T17:59:00.000000Z")
    env_lock.ensure_env_lock(bucket, KEY, earlier)
    out = env_lock.ensure_env_lock(bucket, KEY, ME)          # the resume of the same run
    assert "took it over from this run's earlier attempt" in out.actions[0]
    assert env_lock.get_env_lock(bucket, KEY)[0] == ME
    assert not env_lock.release_env_lock(bucket, KEY, ALICE)
    assert env_lock.release_env_lock(bucket, KEY, ME)
    assert env_lock.get_env_lock(bucket, KEY) == (None, None)
    assert env_lock.ensure_env_lock(bucket, KEY, ALICE).changed   # free again
    targets.lock_environment(SimpleNamespace(dry_run=True))   # a dry run takes nothing: the bucket is not opened
    assert env_lock.get_env_lock(bucket, KEY)[0] == ALICE


def test_a_stale_lock_is_broken_only_by_naming_its_run(bucket):
    env_lock.ensure_env_lock(bucket, KEY, ALICE)
    with pytest.raises(UsageError, match="held by step 05_pgbackrest of run run-a .* not by run run-b: not broken"):
        env_lock.run_break_env_lock(bucket, KEY, "run-b")
    assert env_lock.get_env_lock(bucket, KEY)[0] == ALICE
    assert env_lock.run_break_env_lock(bucket, KEY, "run-a") == ALICE
    assert env_lock.ensure_env_lock(bucket, KEY, ME).changed
    with pytest.raises(UsageError, match="nothing to break"):
        env_lock.run_break_env_lock(bucket, KEY + ".other", "run-b")


def test_an_unreadable_lock_object_refuses_everyone(bucket):
    bucket.create(KEY, b"not json")
    with pytest.raises(SafetyCheckFailed, match="an object hcbpg cannot read: 'not json'"):
        env_lock.ensure_env_lock(bucket, KEY, ME)


def test_a_store_that_ignores_if_none_match_is_not_relied_on(bucket):
    """A provider that drops the condition makes every create succeed: the lock would exclude nobody."""
    class Careless:
        name = bucket.name

        def create(self, key, body):
            return bucket.client.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]

        def replace(self, key, body, *, etag):
            return bucket.replace(key, body, etag=etag)

        def get(self, key):
            return bucket.get(key)

        def delete(self, key):
            bucket.delete(key)

    with pytest.raises(CloudError, match="ignored If-None-Match"):
        env_lock.ensure_env_lock(Careless(), KEY, ME)
    assert bucket.get(KEY) is None
