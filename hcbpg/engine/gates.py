"""The runbook's gates: a manual approval a step waits for, signed and bound to the params and the plan.

A part of :class:`hcbpg.engine.runbook.Runbook` (the facade delegates ``rb.gate`` here).  An approval
holds only while it is signed by an allowed signer and bound to the params file and the step's plan as
they are now; a headless run stops at a gate until ``hcbpg approve``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hcbpg import secrets as hsecrets
from hcbpg.engine import manifest as mf
from hcbpg.engine import signing
from hcbpg.engine.manifest_model import GateEntry
from hcbpg.errors import GateRequired, HcbpgError, UsageError
from hcbpg.params import Params, params_sha256

HEADLESS_ENV = "HCBPG_HEADLESS"
AUTO_APPROVE_ENV = "HCBPG_AUTO_APPROVE"
#: with AUTO_APPROVE_ENV: JSON ``{gate: argv}``, what the automatic approver does before approving a gate
#: (the rehearsal turns the lab app's maintenance mode on before ``maintenance-on``), as an operator would
AUTO_ACTIONS_ENV = "HCBPG_AUTO_APPROVE_ACTIONS"


def _run_gate_action(name: str, argv: Sequence[str]) -> None:
    """What the automatic approver does before approving gate *name* (no secret is ever in *argv*)."""
    print(f"gate '{name}': the automatic approver first runs: {' '.join(argv)}", flush=True)
    cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    if cp.returncode != 0:
        raise UsageError(f"gate '{name}': the automatic approver's action failed ({cp.returncode}): "
                         f"{hsecrets.scrub_tail(cp.stdout + cp.stderr, 600)}", hint="The gate is not approved.")


class Gates:
    """The gates of one step of a run (*run* None: an ad hoc notebook run, nothing recorded)."""

    def __init__(self, run: mf.Run | None, *, env: str, step: str, params: Params, home: Path,
                 dry_run: bool) -> None:
        self.run = run
        self.env = env
        self.step = step
        self.params = params
        self.home = home
        self.dry_run = dry_run

    def trust(self) -> signing.Trust:
        """The environment's trust files (allowed signers, head file, bucket anchor)."""
        return signing.trust_for(self.params, self.env, self.home)

    def ask(self, name: str, question: str, *, plan: Any = None) -> None:
        """Wait for approval of gate *name* (see :meth:`hcbpg.engine.runbook.Runbook.gate`)."""
        if self.dry_run:
            print(f"[dry run] gate '{name}' would wait here for approval: {question}")
            return
        binding = self._binding(name, question, plan)
        approval = self.run.read().get("gates", {}).get(name) if self.run is not None else None
        if approval and approval.get("approved_at"):
            problem = self._approval_problem(name, approval, binding)
            if problem is None:
                proof = approval.get("proof") or {}
                print(f"gate '{name}' approved by {approval['approved_by']} at {approval['approved_at']}"
                      + (f": {approval['note']}" if approval.get("note") else "")
                      + (f" (signed by {proof.get('principal')}, key {proof.get('key_fingerprint')})"
                         if proof else ""))
                return
            print(f"gate '{name}': the recorded approval does not hold ({problem}); asking again")
        auto = os.environ.get(AUTO_APPROVE_ENV)
        if auto:
            note = "approved automatically"
            action = json.loads(os.environ.get(AUTO_ACTIONS_ENV) or "{}").get(name)
            if action:
                _run_gate_action(name, action)
                note += f" after: {' '.join(action[-2:])}"
            self._approve(name, question, by=auto, note=note, via="auto", binding=binding)
            print(f"gate '{name}' approved automatically by {auto}: {question}")
            return
        if self.run is not None:
            with self.run.update() as data:
                fresh = GateEntry(question=question, step=self.step, requested_at=mf.utcnow(), approved_at=None,
                                  params_sha256=binding["params_sha256"], plan_sha256=binding["plan_sha256"])
                old = data.gates.get(name)
                data.gates = {**data.gates, name: old.asked_again(fresh) if old is not None else fresh}
        if os.environ.get(HEADLESS_ENV):
            raise GateRequired(name, question, self.run.run_id if self.run is not None else None)
        answer = input(f"GATE {name}: {question}\nType '{name}' to confirm it holds (anything else stops): ")
        if answer.strip() != name:
            raise GateRequired(name, question, self.run.run_id if self.run is not None else None)
        self._approve(name, question, by=None, note="confirmed in the notebook", via="notebook", binding=binding)
        print(f"gate '{name}' approved in the notebook by {mf.operator_name()}")

    def approval(self, name: str, *, earlier_runs: bool = False) -> dict[str, Any] | None:
        """Gate *name*'s approval as recorded in this run; with *earlier_runs*, when this run has none,
        the newest approval of it in the environment's runs (09 run alone after the run that did 07)."""
        if self.run is None:
            return None  # an ad hoc notebook run has no record
        for run in [self.run, *(reversed(mf.list_runs(self.home, self.env)) if earlier_runs else [])]:
            try:
                g = (run.read().get("gates") or {}).get(name)
            except HcbpgError:
                continue
            if isinstance(g, dict) and g.get("approved_at"):
                return g
        return None

    def _binding(self, name: str, question: str, plan: Any) -> dict[str, str]:
        """What an approval of this gate is bound to: the params file's sha256 and the step's plan."""
        code = ""
        if self.run is not None:
            try:
                code = self.run.load().step(self.step).code_sha256 or ""
            except HcbpgError:
                code = ""
        return {"params_sha256": params_sha256(self.env, self.home),
                "plan_sha256": signing.plan_digest(step=self.step, gate=name, question=question,
                                                   code_sha256=code, plan=plan)}

    def _approval_problem(self, name: str, approval: dict[str, Any], binding: dict[str, str]) -> str | None:
        if self.run is None:
            return None
        return signing.approval_problem(approval, run_id=self.run.run_id, env=self.env, name=name, step=self.step,
                                        params_sha256=binding["params_sha256"], plan_sha256=binding["plan_sha256"],
                                        allowed_signers=self.trust().allowed_signers)

    def _approve(self, name: str, question: str, *, by: str | None, note: str, via: str,
                 binding: dict[str, str]) -> None:
        """Record an approval made here (auto, or typed in a guided notebook), signed with the operator's key."""
        if self.run is None:
            return
        at = mf.utcnow()
        proof = signing.sign_approval({"run_id": self.run.run_id, "environment": self.env, "gate": name,
                                       "step": self.step, "question": question, "approved_at": at, "note": note,
                                       "via": via, **binding}, self.params, self.trust())
        with self.run.update() as data:
            old = data.gates.get(name) or GateEntry()
            g = old.asked_again(GateEntry(question=question, step=self.step, requested_at=old.requested_at or at,
                                          params_sha256=binding["params_sha256"],
                                          plan_sha256=binding["plan_sha256"]))
            g.approved_by = by or proof["principal"]
            g.approved_at = at
            g.note = note
            g.via = via
            g.operator = mf.operator_name()
            g.proof = proof
            data.gates = {**data.gates, name: g}

