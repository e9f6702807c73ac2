"""The audit record with real kernels and the real CLI: rewrites and removals are named, forged or stale
approvals are not honoured, one run per environment, no scrub registry left when a run stops."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbutil import hcbpg, past_newest_run, popen_for_ctrl_c, sigint_state, write_notebook, write_steps

pytestmark = pytest.mark.timeout(400)


def runs_of(home: Path, env: str) -> list[Path]:
    return sorted(p for p in (home / "outputs" / env).iterdir() if p.is_dir())


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_a_rewritten_record_and_a_deleted_newest_run_fail_verify(home, env, tmp_path):
    nb = home / "notebooks"
    write_notebook(nb / "00_a.ipynb", "00_a", "print('the real output')")
    write_steps(nb, [("00_a.ipynb", "a")])
    for _ in range(3):
        r = hcbpg("run", env)
        assert r.returncode == 0, r.stdout + r.stderr
        past_newest_run(home / "outputs" / env)  # run directories are named by the second
    runs = runs_of(home, env)
    head = home / "params" / "test.audit-head"
    assert head.is_file() and runs[-1].name in head.read_text()
    assert all((r / "manifest.json.sig").is_file() and manifest(r)["run_log_sha256"] for r in runs)
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 0, r.stdout
    pristine = tmp_path / "pristine"
    shutil.copytree(home / "outputs", pristine)

    # someone with write access to outputs/: a notebook, its sha256, every later link and HEAD, consistently
    target = runs[0] / "00_a.ipynb"
    target.write_text(target.read_text().replace("the real output", "a forged output"))
    for i, run in enumerate(runs):
        data = manifest(run)
        for s in data["steps"]:
            for a in s["attempts"]:
                a["sha256"] = hashlib_file(run / a["notebook"])
            s["sha256"] = s["attempts"][-1]["sha256"]
        if i:
            data["previous"]["manifest_sha256"] = hashlib_file(runs[i - 1] / "manifest.json")
        (run / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    (home / "outputs" / env / "HEAD").write_text(runs[-1].name + "\n")
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1, r.stdout
    first = r.stdout.splitlines()[0]
    assert str(runs[0] / "manifest.json") in first and "signature does not hold" in first, r.stdout
    assert str(head) in r.stdout  # the newest manifest is not the one recorded outside outputs/

    shutil.rmtree(home / "outputs")
    shutil.copytree(pristine, home / "outputs")
    assert hcbpg("audit", "verify", env).returncode == 0
    # the newest run deleted, HEAD inside outputs/ set back to the one before: the head outside names it
    shutil.rmtree(runs[-1])
    (home / "outputs" / env / "HEAD").write_text(runs[-2].name + "\n")
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1 and runs[-1].name in r.stdout and str(head) in r.stdout, r.stdout
    # the whole environment directory removed: still noticed (the head file names the environment)
    shutil.rmtree(home / "outputs" / env)
    r = hcbpg("audit", "verify")
    assert r.returncode == 1 and "was removed" in r.stdout, r.stdout


def hashlib_file(p: Path) -> str:
    import hashlib
    return hashlib.sha256(p.read_bytes()).hexdigest()


GATE = ("rb.gate('maintenance-on', 'Maintenance mode is on in Hatchbox and Sidekiq is stopped')\n"
        "print('PAST' + '-GATE')")


def gated(home: Path) -> None:
    nb = home / "notebooks"
    write_notebook(nb / "00_gate.ipynb", "00_gate", GATE)
    write_steps(nb, [("00_gate.ipynb", "gate")])


def test_a_forged_approval_in_the_json_is_not_honoured_by_resume(home, env, tmp_path):
    gated(home)
    r = hcbpg("run", env)
    assert r.returncode == 3, r.stdout + r.stderr
    (run,) = runs_of(home, env)
    # the run stopped at a gate: its scrub registry (every secret in the clear) is gone
    assert not list((tmp_path / "state" / "scrub").glob("*.jsonl"))
    m = manifest(run)
    g = m["gates"]["maintenance-on"]
    assert g["params_sha256"] and g["plan_sha256"] and not g["approved_at"]
    g.update({"approved_by": "test-operator", "approved_at": "2026-12-02T10:00:00.000000Z",
              "via": "hcbpg approve", "note": "forged"})
    (run / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    r = hcbpg("resume", m["run_id"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not verify" in r.stderr and "signature does not hold" in r.stderr, r.stderr
    assert "PAST-GATE" not in (run / "00_gate.ipynb").read_text()

    # nor when the forged manifest also says its runner died before sealing it: a resume seals only the
    # version hcbpg itself last wrote (it used to seal what it found, forged approval and all)
    m = manifest(run)
    m["status"], m["runner"] = "running", {"pid": 2 ** 22 + 11, "machine": "gone"}
    (run / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    r = hcbpg("resume", m["run_id"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not verify" in r.stderr and "signature does not hold" in r.stderr, r.stderr
    assert "PAST-GATE" not in (run / "00_gate.ipynb").read_text()
    assert hcbpg("audit", "verify", env).returncode == 1


def test_an_approval_is_bound_to_the_params_it_was_given_for(home, env):
    gated(home)
    assert hcbpg("run", env).returncode == 3
    (run,) = runs_of(home, env)
    rid = manifest(run)["run_id"]
    r = hcbpg("approve", rid, "maintenance-on", "--note", "checked Hatchbox")
    assert r.returncode == 0, r.stderr
    g = manifest(run)["gates"]["maintenance-on"]
    proof = g["proof"]
    assert g["approved_by"] == "test-operator" == proof["principal"]
    # the terminal names the signer the record names, and its key
    assert f"approved by test-operator (signed with {proof['key_fingerprint']}; OS user " in r.stdout, r.stdout
    assert proof["key_fingerprint"].startswith("SHA256:") and "BEGIN SSH SIGNATURE" in proof["signature"]
    assert proof["statement"]["params_sha256"] == g["params_sha256"]
    # the params change after the approval (allow_destructive switched on): the gate asks again
    p = home / "params" / "test.yaml"
    p.write_text(p.read_text() + "allow_destructive: true\n")
    r = hcbpg("resume", rid)
    assert r.returncode == 3, r.stdout + r.stderr
    text = (run / "00_gate.ipynb").read_text()
    assert "the recorded approval does not hold (the params changed since it was approved" in text
    assert "PAST-GATE" not in text
    g = manifest(run)["gates"]["maintenance-on"]
    assert not g["approved_at"] and g["set_aside"][0]["note"] == "checked Hatchbox"
    assert hcbpg("approve", rid, "maintenance-on").returncode == 0
    r = hcbpg("resume", rid)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PAST-GATE" in (run / "00_gate.ipynb").read_text()
    assert hcbpg("audit", "verify", env).returncode == 0


def test_a_second_run_of_the_environment_is_refused_while_one_runs(home, env, tmp_path):
    nb = home / "notebooks"
    write_notebook(nb / "00_slow.ipynb", "00_slow",
                   "import os, time\nprint('slow step started', flush=True)\n"
                   "while not os.path.exists(os.environ['HCBPG_TEST_STOP']):\n    time.sleep(0.2)")
    write_steps(nb, [("00_slow.ipynb", "slow")])
    stop = tmp_path / "stop"
    first = popen_for_ctrl_c([sys.executable, "-m", "hcbpg.cli", "run", env, "--yes"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**os.environ, "HCBPG_TEST_STOP": str(stop)})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            outs = list((home / "outputs" / env).glob("*_*/00_slow.ipynb")) if (home / "outputs" / env).exists() else []
            if outs and "slow step started" in outs[0].read_text():
                break
            time.sleep(0.3)
        else:
            pytest.fail("the step never started")
        (run,) = runs_of(home, env)
        rid = manifest(run)["run_id"]
        for args in (("run", env), ("plan", env), ("resume", rid)):
            r = hcbpg(*args)
            assert r.returncode == 2, r.stdout + r.stderr
            assert f"test is in use: run {rid} by test-operator (pid {first.pid} on " in r.stderr, r.stderr
            assert " since 20" in r.stderr
        assert len(runs_of(home, env)) == 1  # nothing was created
    finally:
        state = sigint_state(first.pid)
        first.send_signal(signal.SIGINT)
        stop.touch()  # the kernel runs in a session of its own: let its cell end
        out, _ = first.communicate(timeout=120)
    # seen twice in fresh-clone runs before popen_for_ctrl_c: the run ignored the Ctrl-C and its step ran on until
    # the stop file; SIGINT's state in the child, the stop file and the executed notebook say which way it ended
    assert first.returncode == 130, (out, state, stop.exists(), [
        (c.get("outputs"), c.get("metadata")) for c in
        json.loads(next((home / "outputs" / env).glob("*_*/00_slow.ipynb")).read_text())["cells"]])
    # the lock went with its process; the interrupted run was sealed and verifies
    assert hcbpg("audit", "verify", env).returncode == 0
    assert not list((tmp_path / "state" / "scrub").glob("*.jsonl"))
    write_notebook(nb / "00_slow.ipynb", "00_slow", "print('quick now')")
    r = hcbpg("run", env)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_run_is_refused_before_anything_is_created_when_the_key_is_not_allowed(home, env, tmp_path):
    from nbutil import make_signing_key
    gated(home)
    other = make_signing_key(tmp_path / "stranger", "stranger")
    r = hcbpg("run", env, env={"HCBPG_SIGNING_KEY": str(other)})
    assert r.returncode == 1 and "could not be signed and verified" in r.stderr and "Nothing was run" in r.stderr
    assert not (home / "outputs" / env).exists() or not runs_of(home, env)
