"""Signatures and the chain, without kernels: real ssh-keygen, manifests made and sealed by the library."""

from __future__ import annotations

import json
import shutil

import pytest

from hcbpg.engine import chain as record_chain
from hcbpg.engine import manifest as mf
from hcbpg.engine import signing
from hcbpg.engine.manifest_model import Attempt
from hcbpg.errors import AuditError

from nbutil import allowed_signer_line, make_signing_key, past_newest_run


@pytest.fixture
def keys(tmp_path):
    good = make_signing_key(tmp_path / "alice", "alice")
    other = make_signing_key(tmp_path / "mallory", "mallory")
    signers = tmp_path / "allowed_signers"
    signers.write_text(allowed_signer_line("alice", good) + "\n")
    return good, other, signers


def test_a_signature_holds_for_the_signed_bytes_only(keys):
    good, other, signers = keys
    sig = signing.sign(b"manifest bytes", good, signing.NS_MANIFEST)
    who = signing.verify(b"manifest bytes", sig, signers, signing.NS_MANIFEST)
    assert who.principal == "alice" and who.fingerprint.startswith("SHA256:")
    with pytest.raises(AuditError, match="changed after it was signed"):
        signing.verify(b"manifest bytez", sig, signers, signing.NS_MANIFEST)
    # a manifest signature is not an approval: the namespaces differ
    with pytest.raises(AuditError, match="namespace hcbpg-approval"):
        signing.verify(b"manifest bytes", sig, signers, signing.NS_APPROVAL)
    with pytest.raises(AuditError, match="not in"):
        signing.verify(b"x", signing.sign(b"x", other, signing.NS_MANIFEST), signers, signing.NS_MANIFEST)
    with pytest.raises(AuditError, match="no allowed-signers file"):
        signing.verify(b"x", sig, signers.with_name("none"), signing.NS_MANIFEST)


def test_parse_good_signature():
    out = 'Good "hcbpg-audit" signature for alice@hcb with ED25519 key SHA256:abc+/def\n'
    assert signing.parse_good_signature(out) == signing.Verified("alice@hcb", "SHA256:abc+/def")
    assert signing.parse_good_signature("Could not verify signature.") is None


def test_allowed_signer_line_refuses_a_principal_that_would_inject_options():
    with pytest.raises(AuditError):
        signing.render_allowed_signer('a namespaces="*"', "ssh-ed25519 AAAA")


def _approval(keys, tmp_path, **over):
    good, _, signers = keys
    trust = signing.Trust("test", signers, tmp_path / "head")
    fields = {"run_id": "r1", "environment": "test", "gate": "g", "step": "00_a", "question": "ok?",
              "params_sha256": "p" * 64, "plan_sha256": "q" * 64, "approved_at": "2026-12-02T00:00:00.000000Z",
              "note": None, "via": "hcbpg approve"}
    proof = signing.sign_approval(fields, None, trust) if not over.get("key") else None
    gate = {"approved_by": "alice", "approved_at": fields["approved_at"], "via": "hcbpg approve", "proof": proof}
    return gate, signers


def check(gate, signers, **over):
    kw = {"run_id": "r1", "env": "test", "name": "g", "step": "00_a", "params_sha256": "p" * 64,
          "plan_sha256": "q" * 64, "allowed_signers": signers, **over}
    return signing.approval_problem(gate, **kw)


def test_an_approval_holds_only_signed_and_bound_to_these_params_and_plan(keys, tmp_path, monkeypatch):
    monkeypatch.setenv("HCBPG_SIGNING_KEY", str(keys[0]))
    gate, signers = _approval(keys, tmp_path)
    assert check(gate, signers) is None
    assert "params changed" in check(gate, signers, params_sha256="x" * 64)
    assert "plan changed" in check(gate, signers, plan_sha256="x" * 64)
    assert "'r1', not 'r2'" in check(gate, signers, run_id="r2")
    assert "gate" in check(gate, signers, name="other")
    # the name is the signer's, not whatever the JSON says
    assert "signed by alice" in check({**gate, "approved_by": "bob"}, signers)
    # a statement edited after signing (say, the params hash of new params) no longer verifies
    forged = json.loads(json.dumps(gate))
    forged["proof"]["statement"]["params_sha256"] = "x" * 64
    assert "does not hold" in check(forged, signers, params_sha256="x" * 64)
    # set by hand: no proof at all
    assert "no signed statement" in check({"approved_by": "alice", "approved_at": "now"}, signers)
    # signed by a key not allowed
    monkeypatch.setenv("HCBPG_SIGNING_KEY", str(keys[1]))
    bad = dict(gate)
    bad["proof"] = dict(gate["proof"], signature=signing.sign(
        signing.render_statement(gate["proof"]["statement"]), keys[1], signing.NS_APPROVAL))
    assert "not in" in check(bad, signers)


def test_plan_digest_changes_with_code_question_and_plan():
    base = {"step": "11_failover", "gate": "promote", "question": "promote server-postgres-2?", "code_sha256": "c"}
    d = signing.plan_digest(**base)
    assert d == signing.plan_digest(**base)
    assert d != signing.plan_digest(**{**base, "question": "promote server-postgres-1?"})
    assert d != signing.plan_digest(**{**base, "code_sha256": "d"})
    assert d != signing.plan_digest(**base, plan={"target": "server-postgres-2"})


# the chain --------------------------------------------------------------------------------

@pytest.fixture
def chain(tmp_path, keys, monkeypatch):
    """Three sealed runs of env 'test' (one step each, a notebook hashed in), made by the library."""
    monkeypatch.setenv("HCBPG_OPERATOR", "alice")
    home = tmp_path / "home"
    (home / "params").mkdir(parents=True)
    trust = signing.Trust("test", keys[2], home / "params" / "test.audit-head")
    sealer = mf.Sealer(trust, keys[0])
    runs = []
    for i in range(3):
        past_newest_run(home / "outputs" / "test")  # run directories are named by the second they start in
        run = mf.create_run(home, "test", steps=[{"key": "00_a", "title": "a", "notebook": "00_a.ipynb"}],
                            mode="run", dry_run=False, params_sha256="p" * 64, selection={}, repo=tmp_path,
                            seal_with=sealer)
        (run.path / "00_a.ipynb").write_text(json.dumps({"cells": [], "n": i}))
        run.log(f"run {i}")
        with run.update() as d:
            d.steps[0].attempts = [Attempt(n=1, status="succeeded", notebook="00_a.ipynb",
                                           sha256=mf.sha256_file(run.path / "00_a.ipynb"))]
            d.status = "succeeded"
        mf.seal(run, sealer)
        runs.append(run)
    assert mf.verify_env(home, "test", trust) == []
    return home, trust, runs


def rehash_from(home, runs, i):
    """What someone with write access to outputs/ only can do: fix every hash after run *i*, and HEAD."""
    for j in range(i, len(runs)):
        run = runs[j]
        data = run.read()
        for s in data["steps"]:
            for a in s["attempts"]:
                a["sha256"] = mf.sha256_file(run.path / a["notebook"])
        if data.get("run_log_sha256"):
            data["run_log_sha256"] = mf.sha256_file(run.path / "run.log")
        if j > i or data["previous"]:
            prev = runs[j - 1]
            data["previous"]["manifest_sha256"] = mf.sha256_file(prev.manifest_path)
        run.manifest_path.write_text(json.dumps(data, indent=2) + "\n")
    (home / "outputs" / "test" / "HEAD").write_text(runs[-1].path.name + "\n")


def test_a_notebook_rewritten_with_its_hash_later_manifests_and_head_is_named(chain):
    home, trust, runs = chain
    nb = runs[0].path / "00_a.ipynb"
    nb.write_text(json.dumps({"cells": [], "n": "rewritten"}))
    rehash_from(home, runs, 0)
    problems = mf.verify_env(home, "test", trust)
    assert problems[0] == f"{runs[0].manifest_path}: signature does not hold: the signature does not match " \
                          "the content (or not for namespace hcbpg-audit): changed after it was signed"
    assert any(str(runs[1].manifest_path) in p and "signature" in p for p in problems)
    assert any(str(trust.head_file) in p for p in problems)  # the newest manifest is not the one recorded


def test_the_newest_run_deleted_is_named_by_the_head_outside_outputs(chain):
    home, trust, runs = chain
    shutil.rmtree(runs[-1].path)
    (home / "outputs" / "test" / "HEAD").write_text(runs[-2].path.name + "\n")
    problems = mf.verify_env(home, "test", trust)
    assert f"{trust.head_file}: names {runs[-1].path.name} as the newest sealed run of test, " \
           "and that run was removed from outputs/test" in problems
    # and this machine's anchor (outside outputs/ and the repository) names it too
    assert any(p.startswith(f"{mf.anchor_path(home, 'test')}: this machine sealed {runs[-1].path.name}")
               for p in problems), problems


def test_run_log_changed_or_not_hashed_and_attempt_without_hash_fail(chain):
    home, trust, runs = chain
    log = runs[1].path / "run.log"
    log.write_text(log.read_text() + "one more line\n")
    assert any(p == f"{log}: changed since the run was sealed (sha256 mismatch)"
               for p in mf.verify_env(home, "test", trust))
    mid = runs[1].read()
    mid["steps"][0]["attempts"].append({"n": 2, "status": "failed", "notebook": "00_a.attempt-2.ipynb",
                                        "sha256": None})
    runs[1].manifest_path.write_text(json.dumps(mid))
    assert any("attempt 2 of step 00_a has no hash" in p for p in mf.verify_env(home, "test", trust))


def test_a_missing_head_file_or_unsigned_manifest_fails(chain):
    home, trust, runs = chain
    (runs[0].path / mf.SIG_NAME).unlink()
    assert mf.verify_env(home, "test", trust) == [f"{runs[0].manifest_path}: not signed (manifest.json.sig is missing)"]
    trust.head_file.unlink()
    assert f"{trust.head_file}: missing" in mf.verify_env(home, "test", trust)[-1]


def test_a_run_killed_before_sealing_is_sealed_by_the_next_with_a_note(chain, keys):
    home, trust, runs = chain
    sealer = mf.Sealer(trust, keys[0])
    past_newest_run(home / "outputs" / "test")
    run = mf.create_run(home, "test", steps=[{"key": "00_a", "title": "a", "notebook": "00_a.ipynb"}],
                        mode="run", dry_run=False, params_sha256="p" * 64, selection={}, repo=home, seal_with=sealer)
    with run.update() as d:
        d.status = "running"
        d.runner = {"pid": 2 ** 22 + 7, "machine": "elsewhere"}  # not alive here
    assert any("not signed" in p for p in mf.verify_env(home, "test", trust))
    past_newest_run(home / "outputs" / "test")
    nxt = mf.create_run(home, "test", steps=[], mode="run", dry_run=False, params_sha256="p" * 64,
                        selection={}, repo=home, seal_with=sealer)
    assert run.read()["sealed"]["note"].startswith("sealed when the next run started")
    assert run.read()["status"] == "interrupted"
    mf.seal(nxt, sealer)
    assert mf.verify_env(home, "test", trust) == []


def test_a_record_set_aside_starts_a_new_chain_and_is_named(chain, keys):
    """What `hcbpg rehearse` does for a new lab: the old record (here with its runs already deleted, which
    stopped the next run) moves under outputs/.set-aside/, and a new chain verifies."""
    home, trust, runs = chain
    shutil.rmtree(home / "outputs" / "test")
    problems = mf.verify_env(home, "test", trust)
    assert any("was removed from outputs/test" in p for p in problems)
    assert any(p.startswith(f"{mf.anchor_path(home, 'test')}: this machine sealed") for p in problems), problems
    where = record_chain.set_aside(home, "test", trust, why="a new lab")
    assert where is not None and where.parent == home / "outputs" / ".set-aside" and where.name.startswith("test-")
    assert (where / "test.audit-head").is_file() and (where / "anchor.json").is_file()
    assert "a new lab" in (where / "SET-ASIDE").read_text()
    assert mf.verify_env(home, "test", trust) == [] and mf.list_runs(home) == []
    run = mf.create_run(home, "test", steps=[], mode="run", dry_run=False, params_sha256="p" * 64,
                        selection={}, repo=home)
    assert run.read()["previous"] is None
    mf.seal(run, mf.Sealer(trust, keys[0]))
    assert mf.verify_env(home, "test", trust) == []
    assert record_chain.set_aside(home, "nothing-here", signing.Trust("nothing-here", trust.allowed_signers,
                                                           home / "params" / "none.audit-head"), why="x") is None
