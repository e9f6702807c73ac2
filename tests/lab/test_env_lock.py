"""The environment lock of the destructive steps, in the lab's S3 store (moto behind cheroot, over TLS):
two runs on two machines, the second refused naming the first; racing runs, one winner; ``hcbpg lock``
shows and (only when named) breaks it; the real notebook of step 10 is refused before it touches a server."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml

from hcbpg import secrets as hsecrets
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import env_lock
from hcbpg.ops.server_lock import Holder
from hcbpg.params import parse_params

from labparams import lab_params, pgbackrest_section, replication_section
from stages import cli

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.lab

ALICE = Holder("run-alice", "lab", "11_failover", "alice", "alice-laptop", 99, 90, "2026-12-02T17:00:00.000000Z")
BOB = Holder("run-bob", "lab", "10_replication", "bob", "bob-laptop", 4242, 4200, "2026-12-02T18:00:00.000000Z")


def params_data(lab) -> dict:
    # .61: no host there (other lab test modules use .31-.52): step 10 must stop before it connects
    return lab_params(lab, [("server-postgres-1", lab.cfg.address(61), "primary"),
                            ("server-postgres-2", lab.cfg.address(62), "replica")],
                      pgbackrest=pgbackrest_section(lab, repo_path_prefix="/pgbackrest-env-lock-test"),
                      replication=replication_section(lab), allow_destructive=True)


@pytest.fixture(scope="module")
def params(lab):
    return parse_params(params_data(lab))


def store_for(params) -> ObjectStore:  # noqa: ANN001
    pb = params.pgbackrest
    return ObjectStore.from_params(params, hsecrets.resolve(pb.s3_key, key="pgbackrest.s3_key"),
                                   hsecrets.resolve(pb.s3_key_secret, key="pgbackrest.s3_key_secret"))


@pytest.fixture
def store(params):
    s = store_for(params)
    s.delete(env_lock.lock_key(params))
    yield s
    s.delete(env_lock.lock_key(params))


@pytest.fixture(scope="module")
def run_home(lab, tmp_path_factory):
    """An HCBPG_HOME with this module's params and a runbook of step 10 alone."""
    home = tmp_path_factory.mktemp("env-lock-home")
    (home / "params").mkdir()
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(params_data(lab), sort_keys=False))
    nbs = home / "notebooks"
    nbs.mkdir()
    shutil.copy(REPO / "notebooks" / "10_replication.ipynb", nbs / "10_replication.ipynb")
    (nbs / "steps.yaml").write_text("steps:\n  - {notebook: 10_replication.ipynb, title: \"Streaming replication\"}\n")
    return home, {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"),
                  "HCBPG_LAB_DIR": str(lab.lab_dir), "HCBPG_NOTEBOOKS": str(nbs), "HCBPG_OPERATOR": "bob"}


def test_the_second_run_is_refused_naming_the_first_and_it_holds_until_released(params, store):
    key = env_lock.lock_key(params)
    assert env_lock.ensure_env_lock(store, key, ALICE).changed
    # bob, on another machine with his own client: refused, told who holds it and how to break it
    with pytest.raises(SafetyCheckFailed) as ei:
        env_lock.ensure_env_lock(store_for(params), key, BOB)
    assert ("environment lab is locked for a destructive step by another run: step 11_failover of run run-alice "
            "(lab) by alice (pid 90 on alice-laptop) since 2026-12-02T17:00:00.000000Z") in str(ei.value)
    assert "hcbpg lock lab --break run-alice" in str(ei.value)
    assert env_lock.get_env_lock(store, key)[0] == ALICE
    assert not env_lock.release_env_lock(store, key, BOB)                 # not his to release
    assert env_lock.ensure_env_lock(store, key,
                                    dataclasses.replace(ALICE, step="11_failover", pid=7)).changed  # alice's resume
    assert env_lock.release_env_lock(store, key, ALICE)
    assert env_lock.ensure_env_lock(store, key, BOB).changed
    assert env_lock.get_env_lock(store, key)[0] == BOB


def race(params, key: str, runners: list[Holder]) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """Each of *runners*, with its own client, tries to take the lock at the same moment: (won, refused)."""
    stores = [store_for(params) for _ in runners]
    barrier = threading.Barrier(len(runners))
    won: list[str] = []
    refused: list[str] = []

    def take(me: Holder, s: ObjectStore) -> None:
        barrier.wait()
        try:
            env_lock.ensure_env_lock(s, key, me)
            won.append(me.run_id)
        except SafetyCheckFailed as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=take, args=(me, s)) for me, s in zip(runners, stores, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return won, refused


def test_runs_racing_for_it_one_wins_and_the_others_are_told_who(params, store):
    key = env_lock.lock_key(params)
    for round_ in range(4):
        runners = [dataclasses.replace(BOB, run_id=f"run-{round_}-{i}", machine=f"laptop-{i}") for i in range(8)]
        won, refused = race(params, key, runners)
        assert len(won) == 1 and len(refused) == len(runners) - 1, (won, refused)
        assert all(f"of run {won[0]} " in r for r in refused), refused
        assert env_lock.get_env_lock(store, key)[0].run_id == won[0]
        store.delete(key)


def test_hcbpg_lock_shows_the_holder_and_breaks_it_only_when_its_run_is_named(params, store, run_home):
    _, env = run_home
    key = env_lock.lock_key(params)
    free = cli(env, "lock", "lab", "--json")
    assert free.returncode == 0 and json.loads(free.stdout)["held"] is False, free.stdout + free.stderr
    env_lock.ensure_env_lock(store, key, ALICE)
    shown = cli(env, "lock", "lab")
    assert shown.returncode == 0 and "held by step 11_failover of run run-alice (lab) by alice" in shown.stdout
    wrong = cli(env, "lock", "lab", "--break", "run-bob")
    assert wrong.returncode == 2 and "not by run run-bob: not broken" in wrong.stderr, wrong.stderr
    assert env_lock.get_env_lock(store, key)[0] == ALICE
    broken = cli(env, "lock", "lab", "--break", "run-alice", "--json")
    assert broken.returncode == 0 and json.loads(broken.stdout)["broken"]["operator"] == "alice", broken.stdout
    assert env_lock.get_env_lock(store, key) == (None, None)


def test_the_real_step_10_is_refused_before_it_touches_a_server_while_another_run_holds_the_lock(
        params, store, run_home):
    home, env = run_home
    key = env_lock.lock_key(params)
    env_lock.ensure_env_lock(store, key, ALICE)
    refused = cli(env, "run", "lab", "--only", "10")
    out = refused.stdout + refused.stderr
    assert refused.returncode == 1, out
    assert "is locked for a destructive step by another run: step 11_failover of run run-alice" in out, out[-3000:]
    run = json.loads(sorted((home / "outputs" / "lab").glob("*_*/manifest.json"))[-1].read_text())
    assert run["steps"][0]["status"] == "failed" and not run["steps"][0].get("changes")
    assert env_lock.get_env_lock(store, key)[0] == ALICE
    # alice's run is abandoned: broken deliberately; bob's resume takes the lock and keeps it when it fails
    assert cli(env, "lock", "lab", "--break", "run-alice").returncode == 0
    resumed = cli(env, "resume", run["run_id"])
    holder = env_lock.get_env_lock(store, key)[0]
    assert holder is not None and holder.run_id == run["run_id"] and holder.operator == "bob", \
        resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert holder.step == "10_replication"
