"""The notebook facade and its parts (hcbpg.engine.runbook: Gates, Ledger, Record), without a kernel: a Runbook
on a real run directory of environment ``test`` (its manifest written only through the engine)."""

from __future__ import annotations

import pytest

from hcbpg.engine import manifest as mf
from hcbpg.engine import runbook
from hcbpg.engine.gates import Gates
from hcbpg.engine.ledger import Ledger
from hcbpg.engine.manifest_model import Manifest
from hcbpg.engine.record import Record
from hcbpg.errors import GateRequired, VerificationFailed
from hcbpg.outcome import Check, Outcome
from hcbpg.params import load_params, params_sha256

STEP = "07_cutover"


def make_run(home):
    return mf.create_run(home, "test", steps=[{"key": STEP, "title": "cutover", "notebook": f"{STEP}.ipynb"}],
                         mode="run", dry_run=False, params_sha256=params_sha256("test", home), selection={}, repo=home)


def rb_of(home, run=None, *, dry_run=False) -> runbook.Runbook:
    return runbook.Runbook("test", run_id=run.run_id if run else "", run_dir=str(run.path) if run else "",
                           dry_run=dry_run, step=STEP, params=load_params("test", home), base=home)


def test_the_facade_is_made_of_its_parts_and_hands_each_call_to_one(env, home, capsys):
    rb = rb_of(home, make_run(home))
    assert (type(rb.gates), type(rb.ledger), type(rb.values)) == (Gates, Ledger, Record)
    o = Outcome("pg_hba.conf on server-postgres-1", changed=True)
    assert rb.track(o) is o and rb.ledger.outcomes == [o] and rb.changes == 1
    rb.record("answer", {"n": 42})
    assert rb.recall("answer") == {"n": 42} and rb.values.values == {"answer": {"n": 42}}
    assert "pg_hba.conf on server-postgres-1" in capsys.readouterr().out


@pytest.mark.parametrize("dry_run", [False, True])
def test_what_only_an_applied_step_does_is_skipped_in_a_dry_run(env, home, capsys, dry_run):
    rb = rb_of(home, make_run(home), dry_run=dry_run)
    called: list[str] = []

    def checks(name: str) -> list[Check]:
        called.append(name)
        return [Check(name, "pass", "ok")]

    assert rb.verify_applied(checks, "replica streaming", title="replication checks") == (
        [] if dry_run else [Check("replica streaming", "pass", "ok")])
    assert rb.when_applied(called.append, "shown") is None
    rb.record_applied("topology", dict, primary="server-postgres-1")
    rb.record_applied("plain", [1, 2])
    tracked = rb.track_applied(Outcome("schedule on server-postgres-1", changed=True))
    out = capsys.readouterr().out
    assert len(tracked) == 1 and rb.changes == 1
    if dry_run:
        assert called == [] and rb.values.values == {} and rb.checks == []
        assert "dry run: nothing was changed, no replication checks to verify" in out
        assert "dry run: nothing was changed, append is not run" in out
        assert "schedule on server-postgres-1" not in out  # its plan was shown already
    else:
        assert called == ["replica streaming", "shown"]
        assert rb.values.values == {"topology": {"primary": "server-postgres-1"}, "plain": [1, 2]}
        assert "schedule on server-postgres-1" in out
        assert rb.run is not None and rb.run.read()["steps"][0]["checks"] == {
            "pass": 1, "warn": 0, "fail": 0, "not_passed": []}


def test_a_failed_check_fails_the_step_and_is_in_the_record_first(env, home):
    run = make_run(home)
    rb = rb_of(home, run)
    with pytest.raises(VerificationFailed, match="1 of 2 checks failed: lag on server-postgres-2: 40 s"):
        rb.verify([Check("lag", "fail", "40 s", "server-postgres-2"), Check("slot", "pass", "active")])
    assert run.read()["steps"][0]["checks"] == {"pass": 1, "warn": 0, "fail": 1, "not_passed": [
        {"name": "lag", "target": "server-postgres-2", "status": "fail", "detail": "40 s"}]}  # with its reason


def test_the_downtime_goes_into_the_record_through_the_engine_and_never_in_a_dry_run(env, home):
    run = make_run(home)
    rb_of(home, run, dry_run=True).note_downtime({"total_s": 1.0})
    assert "downtime" not in run.read()
    rb = rb_of(home, run)
    rb.note_downtime({"phases_s": {"restore_s": 3.5}}, merge=True)            # 07
    rb.note_downtime({"phases_s": {"drain_s": 0.5}, "start": "t"}, merge=True)  # a later write merges
    assert run.read()["downtime"] == {"phases_s": {"drain_s": 0.5}, "start": "t"}
    rb.note_downtime({"total_s": 9.7})                                          # 09 replaces it
    assert run.read()["downtime"] == {"total_s": 9.7}
    rb_of(home).note_downtime({"total_s": 1.0})  # an ad hoc notebook run has no record: nothing happens


def test_a_gate_asked_headless_is_recorded_waiting_and_an_approval_is_found_in_an_earlier_run(env, home, monkeypatch):
    monkeypatch.setenv(runbook.HEADLESS_ENV, "1")
    run = make_run(home)
    rb = rb_of(home, run)
    with pytest.raises(GateRequired):
        rb.gate("maintenance-on", "Maintenance mode is on")
    g = run.read()["gates"]["maintenance-on"]
    assert list(g) == ["question", "step", "requested_at", "approved_at", "params_sha256", "plan_sha256"]
    assert g["approved_at"] is None and g["step"] == STEP
    assert rb.approval("maintenance-on") is None and rb.approval("maintenance-on", earlier_runs=True) is None
    # approved in this run (as hcbpg approve writes it): found; a later run finds it with earlier_runs only
    with run.update() as data:
        data.gates["maintenance-on"].approved_at = "2026-12-06T14:32:04.005315Z"
    assert rb.approval("maintenance-on")["approved_at"] == "2026-12-06T14:32:04.005315Z"
    later = mf.Run(run.path.with_name(run.path.name.replace(run.run_id, "ffffffff")))
    later.path.mkdir()
    later.write(Manifest(run_id="ffffffff", gates={}, steps=[]))
    rb_later = rb_of(home, later)
    assert rb_later.approval("maintenance-on") is None
    assert rb_later.approval("maintenance-on", earlier_runs=True)["approved_at"] == "2026-12-06T14:32:04.005315Z"
    assert rb_of(home).approval("maintenance-on", earlier_runs=True) is None  # ad hoc: no record to read


def test_a_gate_in_a_dry_run_only_says_what_it_would_ask(env, home, capsys, monkeypatch):
    monkeypatch.setenv(runbook.HEADLESS_ENV, "1")
    run = make_run(home)
    rb_of(home, run, dry_run=True).gate("maintenance-on", "Maintenance mode is on")
    assert "[dry run] gate 'maintenance-on' would wait here for approval" in capsys.readouterr().out
    assert run.read()["gates"] == {}


def test_finish_refuses_while_a_guided_cell_failed_and_records_the_summary_once_clean(env, home):
    run = make_run(home)
    rb = rb_of(home, run)
    rb.track(Outcome("thing", changed=True), show=False)
    rb.failed_cells["c1"] = "RuntimeError in `connect()`"
    with pytest.raises(runbook.StepUnfinished, match="1 cell\\(s\\) failed"):
        rb.finish()
    rb.failed_cells.clear()
    summary = rb.finish()
    assert summary["changes"] == 1 and summary["skipped"] is None and summary["changed"] == ["thing"]
    step = run.read()["steps"][0]
    assert step["changes"] == 1 and step["summary"] == summary
