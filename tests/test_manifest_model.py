"""The run's manifest as a pydantic model (hcbpg.engine.manifest_model): typed, and written byte for byte as
the untyped dict was, so signatures and the hash chain of records made before it still mean what they meant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcbpg.engine import manifest as mf
from hcbpg.engine.manifest_model import Attempt, GateEntry, Manifest, parse_manifest
from hcbpg.errors import AuditError

GOLDEN = Path(__file__).parent / "golden" / "manifest.rehearsal-before-model.json"


def test_a_manifest_written_before_the_model_reads_and_writes_back_byte_for_byte():
    """A whole rehearsal's record (16 steps, gates with signed proofs, sessions, downtime, seal)."""
    raw = GOLDEN.read_bytes()
    m = parse_manifest(json.loads(raw), str(GOLDEN))
    assert m.to_json().encode() == raw
    assert m.step("07_cutover").attempts[0].status == "succeeded"
    assert m.gates["maintenance-on"].approved_at == m.downtime["maintenance_on_at"]


@pytest.mark.parametrize("data", [
    # key order as a dict kept it (a key assigned late stays where it first appeared), an int duration,
    # unknown keys (a newer hcbpg's, or a reader's note) kept as they came
    {"steps": [{"attempts": [{"duration_s": 0, "n": 1, "zzz": [1, 2]}], "key": "a", "duration_s": 1.5}],
     "format": 1, "dry_run": False, "unknown": {"b": 1, "a": None}},
    {"format": 1, "gates": {"g": {"set_aside": [{"approved_at": "t"}], "question": "q", "approved_at": None}}},
    {},
])
def test_any_key_order_and_unknown_keys_survive_a_round_trip(data):
    assert parse_manifest(data, "m").to_json() == json.dumps(data, indent=2) + "\n"


def test_a_key_is_written_when_assigned_in_the_order_assigned_never_because_it_has_a_default():
    m = Manifest(format=1, run_id="r", steps=[])
    m.downtime = {"phases_s": {}}
    m.sessions = [*m.sessions, {"pid": 1}]
    m.format = 2
    att = Attempt(n=1, status="running")
    att.error = {"ename": "X"}
    assert list(m.dump()) == ["format", "run_id", "steps", "downtime", "sessions"]
    assert m.dump()["format"] == 2
    assert att.dump() == {"n": 1, "status": "running", "error": {"ename": "X"}}
    # a list field's default mutated in place is not in the record: the engine assigns
    m.params_history.append({"at": "t"})
    assert "params_history" not in m.dump()


def test_a_gate_asked_again_keeps_what_was_approved_before_for_the_reader():
    old = GateEntry(question="q", approved_at="t1", set_aside=[{"approved_at": "t0"}], approved_by="alice")
    fresh = old.asked_again(GateEntry(question="q", approved_at=None))
    assert fresh.dump() == {"question": "q", "approved_at": None,
                            "set_aside": [{"approved_at": "t0"}, {"question": "q", "approved_at": "t1",
                                                                  "approved_by": "alice"}]}
    unapproved = GateEntry(question="q", approved_at=None, set_aside=[{"approved_at": "t0"}])
    assert unapproved.asked_again(GateEntry(question="q")).set_aside == [{"approved_at": "t0"}]


def test_a_field_of_the_wrong_type_is_refused_naming_it():
    with pytest.raises(AuditError, match=r"m: not a manifest hcbpg writes \(steps\.0\.attempts\.0\.n: "):
        parse_manifest({"steps": [{"attempts": [{"n": "one"}]}]}, "m")


def test_every_change_of_a_run_goes_through_the_model_and_the_file_is_its_json(tmp_path):
    run = mf.create_run(tmp_path, "test", steps=[{"key": "00_a", "title": "a", "notebook": "00_a.ipynb"}],
                        mode="run", dry_run=False, params_sha256="p" * 64, selection={}, repo=tmp_path)
    assert list(run.read()) == ["format", "run_id", "environment", "mode", "dry_run", "status", "created",
                                "finished", "operator", "machine", "git", "params_sha256", "selection",
                                "previous", "gates", "runner", "steps"]
    assert run.read()["steps"] == [{"key": "00_a", "title": "a", "notebook": "00_a.ipynb", "status": "pending",
                                    "attempts": [], "changes": None, "sha256": None}]
    with run.update() as data:
        data.step("00_a").changes = 3
        data.status = "succeeded"
    assert run.manifest_path.read_bytes() == run.load().to_json().encode()
    assert run.read()["steps"][0]["changes"] == 3 and run.read()["status"] == "succeeded"
    # the untyped write of old is refused: a change made outside the engine is not carried on
    run.manifest_path.write_text(run.manifest_path.read_text().replace('"changes": 3', '"changes": 4'))
    with pytest.raises(AuditError, match="differs from the version hcbpg last wrote"), run.update():
        pass
