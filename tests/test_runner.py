"""The runner with real papermill kernels: records, resume after SIGKILL, gates, tamper evidence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbutil import hcbpg, popen_for_ctrl_c, sigint_state, write_notebook, write_steps

pytestmark = pytest.mark.timeout(300)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def only_run(home: Path, env: str) -> Path:
    (run,) = [p for p in (home / "outputs" / env).iterdir() if p.is_dir()]
    return run


def test_run_records_every_step_and_passes_values_between_them(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_first.ipynb", "00_first",
                   "from hcbpg.outcome import Outcome\n"
                   "rb.track(Outcome('thing on host', changed=True, dry_run=dry_run))\n"
                   "rb.record('answer', {'ip': '10.0.1.5', 'n': 42})")
    write_notebook(nb / "01_second.ipynb", "01_second",
                   "v = rb.recall('answer')\nassert v == {'ip': '10.0.1.5', 'n': 42}, v\nprint('recalled', v)")
    write_steps(nb, [("00_first.ipynb", "first"), ("01_second.ipynb", "second")])
    r = hcbpg("run", env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(home, env)
    m = manifest(run)
    assert m["status"] == "succeeded" and m["operator"] == "test-operator"
    assert [s["status"] for s in m["steps"]] == ["succeeded", "succeeded"]
    assert [s["changes"] for s in m["steps"]] == [1, 0]
    for s in m["steps"]:
        assert len(s["attempts"]) == 1 and s["sha256"] and s["duration_s"] > 0
        assert (run / s["notebook"]).is_file()
    assert set(m["git"]) == {"commit", "dirty"} and len(m["params_sha256"]) == 64
    assert "recalled" in (run / "01_second.ipynb").read_text()
    # papermill got only the four non-secret parameters
    params = json.loads((run / "00_first.ipynb").read_text())["metadata"]["papermill"]["parameters"]
    assert set(params) == {"env", "run_id", "run_dir", "dry_run"}
    # a plan is a dry run: the same notebook reports "would change" and the manifest says plan
    r = hcbpg("plan", env, "--only", "00")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = sorted(p for p in (home / "outputs" / env).iterdir() if p.is_dir())[-1]
    pm = manifest(plan)
    assert pm["mode"] == "plan" and pm["dry_run"] is True and pm["previous"]["run_id"] == m["run_id"]
    assert "would change" in (plan / "00_first.ipynb").read_text()
    r = hcbpg("runs", env)
    assert m["run_id"] in r.stdout and pm["run_id"] in r.stdout
    r = hcbpg("audit", "html", m["run_id"])
    assert r.returncode == 0 and (run / "html" / "index.html").is_file()
    assert "00_first.html" in (run / "html" / "index.html").read_text()


def test_a_value_planted_in_an_earlier_runs_notebook_is_not_recalled(home, env):
    """recall reads only a record that verifies: an earlier run's notebook edited to hold another address (with
    its hash in the manifest left as it was) makes the step fail naming the file, instead of using the value."""
    nb = home / "notebooks"
    write_notebook(nb / "00_first.ipynb", "00_first", "rb.record('primary', {'ip': '10.0.1.5'})")
    write_notebook(nb / "01_second.ipynb", "01_second", "print('recalled', rb.recall('primary'))")
    write_steps(nb, [("00_first.ipynb", "first"), ("01_second.ipynb", "second")])
    r = hcbpg("run", env)
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(home, env)
    assert "recalled {'ip': '10.0.1.5'}" in (run / "01_second.ipynb").read_text()
    first = run / "00_first.ipynb"
    first.write_text(first.read_text().replace("10.0.1.5", "10.0.1.66"))
    r = hcbpg("run", env, "--only", "01")
    assert r.returncode != 0, r.stdout + r.stderr
    # a record that does not verify stops the run before its first step: nothing new is created
    assert [p for p in (home / "outputs" / env).iterdir() if p.is_dir()] == [run]
    assert "does not verify" in r.stderr and f"{first}: changed since it was recorded" in r.stderr, r.stderr


def test_killed_run_resumes_without_repeating_finished_steps(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_fast.ipynb", "00_fast", "print('fast step ran')")
    write_notebook(nb / "01_slow.ipynb", "01_slow",
                   "import os, time\nprint('slow step started', flush=True)\n"
                   "time.sleep(float(os.environ.get('HCBPG_TEST_SLEEP', '0')))\nprint('slow step finished')")
    write_steps(nb, [("00_fast.ipynb", "fast"), ("01_slow.ipynb", "slow")])
    proc = subprocess.Popen([sys.executable, "-m", "hcbpg.cli", "run", env, "--yes"],
                            env={**os.environ, "HCBPG_TEST_SLEEP": "120"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    run = None
    while time.time() < deadline:
        runs = list((home / "outputs" / env).glob("*_*")) if (home / "outputs" / env).exists() else []
        if runs:
            run = runs[0]
            out = run / "01_slow.ipynb"
            if out.exists() and "slow step started" in out.read_text():
                break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the slow step never started")
    os.kill(proc.pid, signal.SIGKILL)          # the runner only; its kernel is left as an orphan would be
    proc.wait()
    m = manifest(run)
    assert m["steps"][0]["status"] == "succeeded" and m["steps"][1]["status"] == "running"
    assert (run / "01_slow.ipynb").is_file()   # the partial record survived the crash
    registry = home.parent / "state" / "scrub" / f"{run.name}.jsonl"
    assert registry.is_file()                  # a killed runner could not remove it
    r = hcbpg("resume", m["run_id"], env={"HCBPG_TEST_SLEEP": "0"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert not registry.exists()               # the resume ran, then stopped: gone
    assert "already succeeded" in r.stdout
    m = manifest(run)
    assert m["status"] == "succeeded"
    assert len(m["steps"][0]["attempts"]) == 1                     # not repeated
    a1, a2 = m["steps"][1]["attempts"]
    assert (a1["status"], a2["status"]) == ("interrupted", "succeeded")
    assert (run / a1["notebook"]).is_file() and a1["notebook"] == "01_slow.attempt-1.ipynb"
    assert "slow step started" in (run / a1["notebook"]).read_text()
    assert len(m["sessions"]) == 2
    assert hcbpg("audit", "verify", env).returncode == 0
    # the orphaned kernel of the killed run must not be left running forever: it notices its parent died
    subprocess.run(["pkill", "-f", str(run)], check=False)


def test_gate_stops_headless_run_until_approved(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_gate.ipynb", "00_gate",
                   "rb.gate('maintenance-on', 'Maintenance mode is on in Hatchbox and Sidekiq is stopped')\n"
                   "print('past the gate')")
    write_notebook(nb / "01_after.ipynb", "01_after", "print('after')")
    write_steps(nb, [("00_gate.ipynb", "gate"), ("01_after.ipynb", "after")])
    r = hcbpg("run", env)
    assert r.returncode == 3, r.stdout + r.stderr
    run = only_run(home, env)
    m = manifest(run)
    assert m["status"] == "awaiting-approval"
    assert f"hcbpg approve {m['run_id']} maintenance-on" in r.stdout
    assert m["steps"][1]["status"] == "pending"
    assert hcbpg("resume", m["run_id"]).returncode == 3            # still waiting: nothing approved
    r = hcbpg("approve", m["run_id"], "no-such-gate")
    assert r.returncode == 2 and "maintenance-on" in r.stderr
    r = hcbpg("approve", m["run_id"], "maintenance-on", "--note", "checked Hatchbox")
    assert r.returncode == 0, r.stderr
    r = hcbpg("resume", m["run_id"])
    assert r.returncode == 0, r.stdout + r.stderr
    m = manifest(run)
    g = m["gates"]["maintenance-on"]
    assert g["approved_by"] == "test-operator" and g["note"] == "checked Hatchbox" and g["approved_at"]
    assert m["status"] == "succeeded" and "past the gate" in (run / "00_gate.ipynb").read_text()


def test_audit_verify_names_a_changed_byte_and_a_removed_run(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_a.ipynb", "00_a", "print('a')")
    write_steps(nb, [("00_a.ipynb", "a")])
    for _ in range(3):
        assert hcbpg("run", env).returncode == 0
    runs = sorted(p for p in (home / "outputs" / env).iterdir() if p.is_dir())
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 0 and "3 run(s)" in r.stdout, r.stdout
    # the newest run removed is reported (HEAD, outside the runs, names it); put back as it was, it verifies
    aside = home.parent / "newest-run-aside"
    runs[-1].rename(aside)
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1 and runs[-1].name in r.stdout, r.stdout
    aside.rename(runs[-1])
    target = runs[1] / "00_a.ipynb"
    data = bytearray(target.read_bytes())
    i = data.index(b"print")
    data[i] = ord("P")
    target.write_bytes(bytes(data))
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1 and str(target) in r.stdout.splitlines()[0], r.stdout
    data[i] = ord("p")
    target.write_bytes(bytes(data))
    assert hcbpg("audit", "verify", env).returncode == 0
    # editing an older manifest breaks the chain at the next run
    mpath = runs[0] / "manifest.json"
    mpath.write_text(mpath.read_text().replace("test-operator", "someone-else"))
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1 and str(mpath) in r.stdout
    import shutil
    shutil.rmtree(runs[0])
    shutil.rmtree(runs[1])
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1 and runs[1].name in r.stdout and "removed" in r.stdout, r.stdout


def test_failed_step_exits_1_and_stops_the_run(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_bad.ipynb", "00_bad", "raise RuntimeError('the check failed on server-postgres-1')")
    write_notebook(nb / "01_never.ipynb", "01_never", "print('never')")
    write_steps(nb, [("00_bad.ipynb", "bad"), ("01_never.ipynb", "never")])
    r = hcbpg("run", env)
    assert r.returncode == 1
    assert "the check failed on server-postgres-1" in r.stdout and "hcbpg resume" in r.stdout
    m = manifest(only_run(home, env))
    assert [s["status"] for s in m["steps"]] == ["failed", "pending"]
    assert not (only_run(home, env) / "01_never.ipynb").exists()


def test_plain_papermill_cli_runs_a_step_without_a_run_record(home, env, tmp_path):
    nb = write_notebook(home / "notebooks" / "00_a.ipynb", "00_a", "print('hello from', env)")
    out = tmp_path / "out.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(out), "-p", "env", env],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "hello from test" in out.read_text()


def test_ctrl_c_marks_the_step_interrupted_and_keeps_the_record(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_slow.ipynb", "00_slow",
                   "import time\nprint('slow step started', flush=True)\ntime.sleep(120)")
    write_steps(nb, [("00_slow.ipynb", "slow")])
    proc = popen_for_ctrl_c([sys.executable, "-m", "hcbpg.cli", "run", env, "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        outs = list((home / "outputs" / env).glob("*_*/00_slow.ipynb")) if (home / "outputs" / env).exists() else []
        if outs and "slow step started" in outs[0].read_text():
            break
        time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("the step never started")
    state = sigint_state(proc.pid)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # the CLI prints where each thread waits (hcbpg.cli.main), then it goes
        time.sleep(2)
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the run did not end within 60 s of Ctrl-C ({state}); its threads then:\n{out[-6000:]}")
    assert proc.returncode == 130, out
    assert "hcbpg resume" in out
    m = manifest(only_run(home, env))
    assert m["status"] == "interrupted"
    assert m["steps"][0]["attempts"][0]["status"] == "interrupted"
    assert m["steps"][0]["attempts"][0]["sha256"]
    assert "slow step started" in (only_run(home, env) / "00_slow.ipynb").read_text()


def test_a_step_with_nothing_left_to_do_ends_early_as_done(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_done.ipynb", "00_done",
                   "rb.skip('the migration is complete (live since yesterday)')",
                   "raise RuntimeError('must not run after skip')")
    write_notebook(nb / "01_next.ipynb", "01_next", "print('next ran')")
    write_steps(nb, [("00_done.ipynb", "done"), ("01_next.ipynb", "next")])
    r = hcbpg("run", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to do: the migration is complete" in r.stdout
    m = manifest(only_run(home, env))
    assert [s["status"] for s in m["steps"]] == ["skipped", "succeeded"]  # skipped: done, with nothing to do
    assert m["steps"][0]["changes"] == 0
    assert m["steps"][0]["summary"]["skipped"].startswith("the migration is complete")
    cells = json.loads((only_run(home, env) / "00_done.ipynb").read_text())["cells"]
    after = next(c for c in cells if "must not run after skip" in "".join(c["source"]))
    assert not after.get("outputs"), "a cell after rb.skip() ran"


def test_a_runtime_dir_too_deep_for_a_unix_socket_still_runs_kernels(home, env, monkeypatch, tmp_path):
    """Kernels use Unix sockets; a path past the 107-byte limit (a deep home dir) must not break a run."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(deep))
    nb = home / "notebooks"
    write_notebook(nb / "00_only.ipynb", "00_only", "print('kernel answered')")
    write_steps(nb, [("00_only.ipynb", "only")])
    r = hcbpg("run", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kernel answered" in (only_run(home, env) / "00_only.ipynb").read_text()
    from hcbpg.engine.runner import _IPC_PATH_MAX, _ipc_base
    assert len(os.fsencode(_ipc_base("0" * 12))) < _IPC_PATH_MAX


def test_a_cell_whose_error_never_reached_the_notebook_is_a_failure_not_a_success(home, env):
    """The kernel says the cell failed (its execute reply) while its error output never arrives (as when the
    kernel's output channel breaks): papermill (2.7) still raises, from its own mark on the cell, and the step
    is failed, never a success with the cells after it skipped."""
    nb = home / "notebooks"
    write_notebook(nb / "00_lost.ipynb", "00_lost",
                   "get_ipython()._showtraceback = lambda *a, **k: None  # the error output is never sent\n"
                   "raise RuntimeError('failed, and nobody is told')",
                   "print('must not run after the failed cell')")
    write_steps(nb, [("00_lost.ipynb", "lost")])
    r = hcbpg("run", env)
    assert r.returncode == 1, r.stdout + r.stderr
    m = manifest(only_run(home, env))
    att = m["steps"][0]["attempts"][0]
    assert att["status"] == "failed" and att["error"]["ename"] == "CellExecutionError", att
    cells = json.loads((only_run(home, env) / "00_lost.ipynb").read_text())["cells"]
    after = [c for c in cells if "must not run" in "".join(c["source"])]
    assert len(after) == 1 and after[0]["outputs"] == [] and after[0]["execution_count"] is None, after  # never ran
