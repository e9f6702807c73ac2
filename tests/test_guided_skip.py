"""A guided run (the operator's JupyterLab kernel is the runner): a step that skips itself (rb.skip) is
recorded ``skipped``, as the headless runner records it, and counts as done when the run is finished."""

from __future__ import annotations

import json
import os

import pytest

from nbutil import hcbpg, make_params, run_as_operator, write_notebook, write_steps

pytestmark = pytest.mark.timeout(300)


def test_a_guided_step_that_skips_itself_is_skipped_and_the_finished_run_succeeded(home, monkeypatch):
    from hcbpg.engine import guide
    monkeypatch.setenv("HCBPG_TEST_APP_PW", "guide-app-0123456789")
    monkeypatch.setenv("HCBPG_TEST_TOKEN", "guide-tok-0123456789")
    monkeypatch.setenv("HCBPG_SCRUB_FILE", "")          # prepare() points it at the run's registry
    (home / "params" / "test.yaml").write_text(make_params("test"))
    nb = home / "notebooks"
    write_notebook(nb / "00_skips.ipynb", "00_skips", "rb.skip('source.transfer is stream, not online')")
    write_notebook(nb / "01_works.ipynb", "01_works", "print('works')")
    write_steps(nb, [("00_skips.ipynb", "skips"), ("01_works.ipynb", "works")])
    g = guide.prepare("test")
    run = g.run
    with run.update() as data:                           # what `serve` records once JupyterLab is up
        data.status = "running"
        data.runner = {"pid": os.getpid(), "machine": os.uname().nodename, "kind": "guide", "jupyter_pid": None}
    outputs = run_as_operator(run.path / "00_skips.ipynb")
    assert "StepAlreadyDone" in outputs, outputs          # the kernel stops the step there, as headless
    run_as_operator(run.path / "01_works.ipynb")
    m = json.loads(run.manifest_path.read_text())
    (att,) = m["steps"][0]["attempts"]
    assert m["steps"][0]["status"] == "skipped" and att["status"] == "skipped", m["steps"][0]
    assert att["note"] == "skipped: source.transfer is stream, not online" and not att.get("error")
    assert m["steps"][1]["status"] == "succeeded"
    lines: list[str] = []
    assert guide.finish(run.run_id, progress=lines.append) == 0
    m = json.loads(run.manifest_path.read_text())
    assert m["status"] == "succeeded" and [s["status"] for s in m["steps"]] == ["skipped", "succeeded"]
    assert "finished: succeeded" in "\n".join(lines)
    r = hcbpg("audit", "verify", "test")
    assert r.returncode == 0, r.stdout + r.stderr
