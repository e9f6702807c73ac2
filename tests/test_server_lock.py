"""The primary's change lock: who may take it (pure), and what a step does when it is held (recording host)."""

from __future__ import annotations

import dataclasses

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.recording import RecordingHost
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import server_lock as sl

ME = sl.Holder("run-b", "staging", "07_cutover", "bob", "bob-laptop", 4242, 4200, "2026-12-02T18:00:00.000000Z")
ALICE = sl.Holder("run-a", "staging", "05_pgbackrest", "alice", "alice-laptop", 99, 90, "2026-12-02T17:00:00.000000Z")


def test_who_may_take_the_lock():
    assert sl.plan_take(None, ME) == ("take", "free")
    assert sl.plan_take(dataclasses.replace(ALICE, run_id="run-b"), ME)[0] == "ours"       # a resume of the run
    decision, why = sl.plan_take(ALICE, ME, alive=lambda pid: False)
    assert decision == "refuse" and why == ("step 05_pgbackrest of run run-a (staging) by alice (pid 90 on "
                                            "alice-laptop) since 2026-12-02T17:00:00.000000Z")
    here = dataclasses.replace(ALICE, machine="bob-laptop")
    assert sl.plan_take(here, ME, alive=lambda pid: False)[0] == "stale"     # its processes are gone here
    assert sl.plan_take(here, ME, alive=lambda pid: pid == 90)[0] == "refuse"
    assert sl.plan_take(None, ME, raw="garbage")[0] == "refuse"
    assert sl.parse_holder(ALICE.to_json()) == ALICE and sl.parse_holder("{}") is None


def _host(current: str | None, *, taken: bool):
    def take(call):
        return Result("server-postgres-1", call.command, 0 if taken else 1, "", "" if taken else "file exists", 0.0)
    files = {sl.LOCK_PATH: current} if current is not None else {}
    return RecordingHost("server-postgres-1", script=[(r"set -C", take), (r"^rm -f", "")], files=files)


def test_a_step_is_refused_naming_the_holder_and_changes_nothing():
    host = _host(ALICE.to_json(), taken=False)
    with pytest.raises(SafetyCheckFailed) as ei:
        sl.ensure_change_lock(host, ME, dry_run=False)
    assert "server-postgres-1 is being changed by another run: step 05_pgbackrest of run run-a" in str(ei.value)
    assert "since 2026-12-02T17:00:00" in str(ei.value)
    assert sl.parse_holder(host.files[sl.LOCK_PATH]) == ALICE


def test_taken_when_free_and_released_only_by_its_run():
    host = _host(None, taken=True)
    out = sl.ensure_change_lock(host, ME, dry_run=False)
    assert out.changed and "bob" in out.actions[0]
    (take,) = [c for c in host.calls if "set -C" in c.command]
    assert sl.parse_holder(take.stdin) == ME
    host.files[sl.LOCK_PATH] = ALICE.to_json()
    assert not sl.release_change_lock(host, ME)          # not ours: left alone
    host.files[sl.LOCK_PATH] = ME.to_json()
    assert sl.release_change_lock(host, ME)


def test_the_same_run_takes_its_own_lock_over_and_a_dry_run_takes_nothing():
    host = _host(dataclasses.replace(ME, step="06_restore").to_json(), taken=False)
    assert sl.ensure_change_lock(host, ME, dry_run=False).changed
    assert sl.parse_holder(host.files[sl.LOCK_PATH]) == ME
    dry = _host(None, taken=True)
    assert not sl.ensure_change_lock(dry, ME, dry_run=True).changed and not dry.calls
