"""The suite's order on parallel workers (tests/conftest.py): longest first from what the previous run measured,
files whose tests use the machine's default lab as one unit, nothing kept by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest


@pytest.fixture
def conftest(pytestconfig):
    """tests/conftest.py as pytest loaded it (``import conftest`` may name tests/lab/conftest.py: pytest drops the
    module of one conftest from sys.modules before it imports the next)."""
    path = Path(__file__).with_name("conftest.py").resolve()
    (module,) = [m for m in pytestconfig.pluginmanager.get_plugins()
                 if getattr(m, "__file__", None) and Path(m.__file__).resolve() == path]
    return module


class _Item:
    def __init__(self, nodeid: str, lab: bool = False) -> None:
        self.nodeid = nodeid
        self._lab = lab

    def get_closest_marker(self, name: str):  # noqa: ANN201 - pytest's Mark or None
        return object() if name == "lab" and self._lab else None


def test_the_files_of_default_lab_tests_are_one_unit_and_others_their_own(conftest):
    assert conftest._scope("tests/lab/test_rehearse.py::test_rehearse_runs_the_whole_runbook") == "default-lab"
    assert conftest._scope("tests/test_guide_browser.py::test_guided_preflight_against_the_lab") == "default-lab"
    assert conftest._scope("tests/lab/test_backups.py::test_x") == "tests/lab/test_backups.py"
    assert not hasattr(conftest, "LONGEST_FIRST")


def test_files_run_longest_first_by_the_recorded_durations_keeping_their_own_order(conftest, tmp_path, monkeypatch):
    recorded = {"tests/test_a.py::t1": 1.0, "tests/test_a.py::t2": 2.0, "tests/test_b.py::t1": 50.0,
                "tests/lab/test_c.py::t1": 10.0}
    monkeypatch.setattr(conftest, "DURATIONS", tmp_path / "durations.json")
    (tmp_path / "durations.json").write_text(json.dumps(recorded))
    items = [_Item("tests/test_a.py::t1"), _Item("tests/test_a.py::t2"), _Item("tests/test_b.py::t1"),
             _Item("tests/lab/test_c.py::t1", lab=True), _Item("tests/lab/test_c.py::t2", lab=True),
             _Item("tests/test_new.py::t1")]
    conftest.pytest_collection_modifyitems(None, SimpleNamespace(), items)
    # test_c: 10 s known + an unknown lab test counted as the median lab test (10 s); test_new: unknown, short
    assert [i.nodeid for i in items] == ["tests/test_b.py::t1", "tests/lab/test_c.py::t1", "tests/lab/test_c.py::t2",
                                         "tests/test_a.py::t1", "tests/test_a.py::t2", "tests/test_new.py::t1"]


def test_a_run_writes_what_it_measured_only_when_asked(conftest, tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "DURATIONS", tmp_path / "durations.json")
    monkeypatch.setattr(conftest, "_DURATIONS_SEEN", {})
    for when, seconds in (("setup", 1.5), ("call", 2.0), ("teardown", 0.25)):
        conftest.pytest_runtest_logreport(SimpleNamespace(nodeid="tests/test_a.py::t1", when=when, duration=seconds))
    session = SimpleNamespace(config=SimpleNamespace(args_source=pytest.Config.ArgsSource.ARGS))
    monkeypatch.delenv("HCBPG_STORE_DURATIONS", raising=False)
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    assert not (tmp_path / "durations.json").exists()
    monkeypatch.setenv("HCBPG_STORE_DURATIONS", "1")
    (tmp_path / "durations.json").write_text(json.dumps({"tests/test_b.py::t1": 9.0}))
    conftest.pytest_sessionfinish(session, pytest.ExitCode.OK)
    # a partial run keeps what it did not run
    assert json.loads((tmp_path / "durations.json").read_text()) == {"tests/test_a.py::t1": 3.75,
                                                                     "tests/test_b.py::t1": 9.0}
