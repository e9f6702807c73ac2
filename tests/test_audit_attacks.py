"""Issue 23's attacks on the audit record, each reproduced against the real runner and CLI (real kernels,
real ssh-keygen): someone with write access to ``outputs/`` (and to the repository's params) tries to get
a record hcbpg did not write trusted, signed, or read back by a step.  Each test failed before the fix.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import socket
import time
from pathlib import Path

import pytest

from hcbpg.engine import chain, signing
from hcbpg.engine import manifest as mf

from nbutil import allowed_signer_line, hcbpg, make_signing_key, past_newest_run, write_notebook, write_steps

pytestmark = pytest.mark.timeout(400)


def runs_of(home: Path, env: str) -> list[Path]:
    return sorted(p for p in (home / "outputs" / env).iterdir() if p.is_dir())


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def forge_run(home: Path, env: str, *, status: str, runner: dict, notebooks: dict[str, str]) -> Path:
    """What write access to outputs/ alone makes: a newest run linked to the real chain, its notebooks hashed
    in, HEAD naming it, no signature."""
    prev = runs_of(home, env)[-1]
    past_newest_run(home / "outputs" / env)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = home / "outputs" / env / f"{stamp}_deadbeef"
    run.mkdir()
    steps = []
    for name, text in notebooks.items():
        (run / name).write_text(text)
        steps.append({"key": Path(name).stem, "title": "forged", "notebook": name, "status": "succeeded",
                      "attempts": [{"n": 1, "status": "succeeded", "notebook": name, "sha256": sha(run / name)}],
                      "changes": 0, "sha256": sha(run / name)})
    data = {**manifest(prev), "run_id": "deadbeef", "status": status, "runner": runner, "steps": steps,
            "previous": {"run_id": manifest(prev)["run_id"], "dir": prev.name,
                         "manifest_sha256": sha(prev / "manifest.json")}}
    data.pop("sealed", None)
    data.pop("run_log_sha256", None)
    (run / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    (home / "outputs" / env / "HEAD").write_text(run.name + "\n")
    past_newest_run(home / "outputs" / env)  # a run started next is named by a later second
    return run


def one_step(home: Path) -> None:
    nb = home / "notebooks"
    write_notebook(nb / "00_a.ipynb", "00_a", "print('the real output')")
    write_steps(nb, [("00_a.ipynb", "a")])


def test_a_forged_run_that_says_it_is_running_on_this_machine_is_not_open(home, env):
    """A manifest saying ``running`` with pid 1 on this hostname passed `audit verify` unsigned, and the
    next run linked it into the chain; open now means a live runner holds the environment's lock."""
    one_step(home)
    assert hcbpg("run", env).returncode == 0
    forged = forge_run(home, env, status="running", notebooks={"00_a.ipynb": "{}"},
                       runner={"pid": 1, "machine": socket.gethostname(), "started": mf.utcnow()})
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 1, r.stdout
    first = r.stdout.splitlines()[0]
    assert str(forged / "manifest.json") in first and "not signed" in first, r.stdout
    assert "says it is running, but no runner holds the lock of test" in first, r.stdout
    for args in (("run", env), ("resume", "deadbeef")):
        r = hcbpg(*args)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "does not verify" in r.stderr and str(forged / "manifest.json") in r.stderr, r.stderr
    assert len(runs_of(home, env)) == 2 and not (forged / mf.SIG_NAME).exists()


def test_an_orphan_is_sealed_only_as_hcbpg_last_wrote_it(home, env):
    """The next `run` sealed a forged orphan with the operator's key (laundering it); now only a manifest
    byte for byte the version this machine's runner last wrote is sealed, and a changed one is shown."""
    one_step(home)
    assert hcbpg("run", env).returncode == 0
    forged = forge_run(home, env, status="interrupted", notebooks={"00_a.ipynb": "{}"},
                       runner={"pid": 2 ** 22 + 5, "machine": socket.gethostname()})
    r = hcbpg("run", env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "no run of test was started" in r.stderr and "hcbpg did not write it on this machine" in r.stderr
    assert not (forged / mf.SIG_NAME).exists() and len(runs_of(home, env)) == 2
    assert hcbpg("audit", "verify", env).returncode == 1

    # a real orphan: a runner killed mid-step leaves its last write (status running) and no seal
    shutil.rmtree(forged)
    (home / "outputs" / env / "HEAD").write_text(runs_of(home, env)[-1].name + "\n")
    assert hcbpg("audit", "verify", env).returncode == 0
    past_newest_run(home / "outputs" / env)
    assert hcbpg("run", env).returncode == 0
    real = mf.Run(runs_of(home, env)[-1])
    (real.path / mf.SIG_NAME).unlink()
    with real.update() as d:  # as a runner killed before it sealed leaves it
        d.status = "running"
        d.runner = {"pid": 2 ** 22 + 9, "machine": socket.gethostname()}
    pristine = real.manifest_path.read_bytes()
    real.manifest_path.write_bytes(pristine.replace(b'"changes": null', b'"changes": 1000', 1)
                                   if b'"changes": null' in pristine else
                                   pristine.replace(b'"status": "succeeded"', b'"status": "pending"', 1))
    r = hcbpg("run", env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "it differs from the version hcbpg last wrote: " in r.stderr, r.stderr
    assert ("+" in r.stderr.split("it differs from the version hcbpg last wrote: ", 1)[1]), r.stderr
    assert not (real.path / mf.SIG_NAME).exists()
    real.manifest_path.write_bytes(pristine)  # as the runner left it: the next run seals it, with a note
    past_newest_run(home / "outputs" / env)
    r = hcbpg("run", env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert real.read()["sealed"]["note"].startswith("sealed when the next run started")
    assert hcbpg("audit", "verify", env).returncode == 0


GATE = ("rb.gate('maintenance-on', 'Maintenance mode is on in Hatchbox and Sidekiq is stopped')\n"
        "print('PAST' + '-GATE')")


def test_a_sealed_run_edited_and_its_signature_removed_is_not_resumed(home, env):
    """`resume` sealed before it verified: a run stopped at a gate, edited (the gate approved, the step
    done) with its .sig removed, was sealed with the operator's key and then ran on."""
    nb = home / "notebooks"
    write_notebook(nb / "00_gate.ipynb", "00_gate", GATE)
    write_notebook(nb / "01_after.ipynb", "01_after", "print('AFTER' + '-GATE')")
    write_steps(nb, [("00_gate.ipynb", "gate"), ("01_after.ipynb", "after")])
    assert hcbpg("run", env).returncode == 3
    (run,) = runs_of(home, env)
    m = manifest(run)
    m["steps"][0]["status"] = "succeeded"
    m["gates"]["maintenance-on"].update({"approved_by": "test-operator", "approved_at": mf.utcnow(),
                                         "via": "hcbpg approve"})
    (run / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
    (run / mf.SIG_NAME).unlink()
    r = hcbpg("resume", m["run_id"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"run {m['run_id']} is not resumed" in r.stderr and "not signed" in r.stderr, r.stderr
    assert "it differs from the version hcbpg last wrote" in r.stderr, r.stderr
    assert not (run / mf.SIG_NAME).exists() and not (run / "01_after.ipynb").exists()
    assert "PAST-GATE" not in (run / "00_gate.ipynb").read_text()
    v = hcbpg("audit", "verify", env)
    assert v.returncode == 1 and str(run / "manifest.json") in v.stdout and "not signed" in v.stdout


def test_a_planted_value_is_not_recalled_by_the_next_run(home, env):
    """A forged orphan holding ``topology`` = ATTACKER-CHOSEN was sealed by the next run, whose step then
    recalled it; now that run stops before its first step."""
    nb = home / "notebooks"
    write_notebook(nb / "00_topo.ipynb", "00_topo", "rb.record('topology', {'primary': 'server-postgres-1'})")
    write_notebook(nb / "01_use.ipynb", "01_use", "print('recalled', rb.recall('topology'))")
    write_steps(nb, [("00_topo.ipynb", "topo"), ("01_use.ipynb", "use")])
    assert hcbpg("run", env).returncode == 0
    (real,) = runs_of(home, env)
    planted = (real / "00_topo.ipynb").read_text().replace("server-postgres-1", "ATTACKER-CHOSEN")
    assert "ATTACKER-CHOSEN" in planted
    forged = forge_run(home, env, status="interrupted", notebooks={"00_topo.ipynb": planted},
                       runner={"pid": 2 ** 22 + 3, "machine": "gone"})
    r = hcbpg("run", env, "--only", "01")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "does not verify" in r.stderr and str(forged / "manifest.json") in r.stderr
    assert runs_of(home, env) == [real, forged] and not (forged / mf.SIG_NAME).exists()
    # no step read it (the old code's next run printed "recalled {'primary': 'ATTACKER-CHOSEN'}")
    assert not [p for p in (home / "outputs" / env).rglob("*.ipynb")
                if forged not in p.parents and "ATTACKER-CHOSEN" in p.read_text()]


def test_a_key_added_to_the_allowed_signers_must_be_recorded_by_a_key_allowed_before(home, env, tmp_path):
    """Any pusher could add a key to allowed_signers and sign runs (or re-sign history) with it."""
    one_step(home)
    assert hcbpg("run", env).returncode == 0
    first = runs_of(home, env)[0]
    signers = home / "params" / "allowed_signers"
    mallory = make_signing_key(tmp_path / "mallory", "mallory")
    signers.write_text(signers.read_text() + allowed_signer_line("mallory", mallory) + "\n")
    as_mallory = {"HCBPG_SIGNING_KEY": str(mallory)}
    past_newest_run(home / "outputs" / env)
    r = hcbpg("run", env, env=as_mallory)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{signers}: changed since {first.name} was sealed (added mallory" in r.stderr, r.stderr
    v = hcbpg("audit", "verify", env)
    assert v.returncode == 1 and "added mallory" in v.stdout and "hcbpg audit signers test" in v.stdout
    # history re-signed with the added key (manifests unchanged): each is checked against the signers it
    # was sealed with, which do not name mallory
    good_sig = (first / mf.SIG_NAME).read_text()
    (first / mf.SIG_NAME).write_text(signing.sign((first / "manifest.json").read_bytes(), mallory,
                                                  signing.NS_MANIFEST))
    v = hcbpg("audit", "verify", env)
    assert f"{first / 'manifest.json'}: signature does not hold: signed by a key that is not in" in v.stdout
    (first / mf.SIG_NAME).write_text(good_sig)
    # mallory cannot record her own admission; an operator allowed before the change can, and it is named
    r = hcbpg("audit", "signers", env, env=as_mallory)
    assert r.returncode == 1 and "only a key already allowed may change who may sign" in r.stderr, r.stderr
    r = hcbpg("audit", "signers", env)
    assert r.returncode == 0, r.stdout + r.stderr
    change = manifest(runs_of(home, env)[-1])
    assert change["mode"] == "signers" and "added mallory" in change["signers_change"]["change"]
    assert hcbpg("audit", "verify", env).returncode == 0
    past_newest_run(home / "outputs" / env)
    r = hcbpg("run", env, env=as_mallory)
    assert r.returncode == 0, r.stdout + r.stderr
    assert hcbpg("audit", "verify", env).returncode == 0


def test_a_retired_key_keeps_its_old_records_and_cannot_add_new_or_back_dated_ones(tmp_path, monkeypatch):
    """`valid-before=` retired a key by invalidating everything it ever signed (verified at the current time);
    now each signature is judged at its seal's time, and seal times cannot go back past this machine's anchor."""
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HCBPG_OPERATOR", "alice")
    alice = make_signing_key(tmp_path / "alice", "alice")
    bob = make_signing_key(tmp_path / "bob", "bob")
    home = tmp_path / "home"
    (home / "params").mkdir(parents=True)
    signers = home / "params" / "allowed_signers"
    signers.write_text(allowed_signer_line("alice", alice) + "\n")
    trust = signing.Trust("test", signers, home / "params" / "test.audit-head")

    def sealed_run(key: Path) -> mf.Run:
        past_newest_run(home / "outputs" / "test")
        run = mf.create_run(home, "test", steps=[], mode="run", dry_run=False, params_sha256="p" * 64,
                            selection={}, repo=tmp_path)
        mf.seal(run, mf.Sealer(trust, key))
        return run

    sealed_run(alice)
    # alice retires in a few seconds, bob joins: recorded by alice, allowed before the change
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    alice_line = allowed_signer_line("alice", alice).replace(
        'namespaces="', f'valid-before="{until:%Y%m%d%H%M%S}Z",namespaces="')
    signers.write_text(alice_line + "\n" + allowed_signer_line("bob", bob) + "\n")
    past_newest_run(home / "outputs" / "test")
    chain.record_signers_change(home, "test", mf.Sealer(trust, alice), params_sha256="p" * 64, repo=tmp_path)
    last_by_alice = sealed_run(alice)
    while dt.datetime.now(dt.timezone.utc) <= until + dt.timedelta(seconds=1):
        time.sleep(0.2)
    assert mf.verify_env(home, "test", trust) == []  # her records from before still verify
    by_bob = sealed_run(bob)
    assert mf.verify_env(home, "test", trust) == []
    # after her key's end she cannot sign a new record ...
    late = sealed_run(alice)
    problems = mf.verify_env(home, "test", trust)
    assert len(problems) == 1 and problems[0].startswith(
        f"{late.manifest_path}: signature does not hold: signed by a key that is not in "), problems
    assert "as valid at" in problems[0], problems
    shutil.rmtree(late.path)
    (home / "outputs" / "test" / "HEAD").write_text(by_bob.path.name + "\n")
    mf.write_head(trust, by_bob, mf.sha256_file(by_bob.manifest_path))
    mf.write_anchor(by_bob, mf.sha256_file(by_bob.manifest_path), by_bob.read()["sealed"]["at"])
    assert mf.verify_env(home, "test", trust) == []
    # ... nor one back-dated to while it was valid: it would come after bob's, sealed later
    past_newest_run(home / "outputs" / "test")
    forged = mf.create_run(home, "test", steps=[], mode="run", dry_run=False, params_sha256="p" * 64,
                           selection={}, repo=tmp_path)
    with forged.update() as d:
        d.run_log_sha256 = None
        d.sealed = {**last_by_alice.read()["sealed"]}
    content = forged.manifest_path.read_bytes()
    (forged.path / mf.SIG_NAME).write_text(signing.sign(content, alice, signing.NS_MANIFEST))
    mf.write_head(trust, forged, hashlib.sha256(content).hexdigest())
    problems = mf.verify_env(home, "test", trust)
    assert any(p.startswith(f"{forged.manifest_path}: sealed at") and "a seal's time cannot go back" in p
               for p in problems), problems
    assert any("back-dated" in p for p in problems), problems
