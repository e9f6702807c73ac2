"""The notebook side of a run: ``rb = runbook.start(...)`` in the cell after the parameters.

It loads params, installs the kernel's output scrubbing, and gives the notebook a small
surface: ``secret``, ``gate``, ``track``/``show``, ``verify``, ``record``/``recall`` and
``finish``.  Notebooks call this and the operations modules; they hold no logic.

In a guided run (``hcbpg guide``: the manifest says ``mode: guided`` and no headless
runner drives the kernel) the kernel keeps its step's record itself: ``start`` opens an
attempt (``running``), a cell that raises marks it ``failed`` (``awaiting-approval`` for a
refused gate), ``finish`` marks it ``succeeded``; ``hcbpg guide finish`` hashes the notebook.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, overload

from hcbpg import secrets as hsecrets
from hcbpg.desired.roles import roles_config
from hcbpg.display import _in_ipython, render_table, show_plan, show_table  # noqa: F401 - the notebooks' display helpers
from hcbpg.engine import manifest as mf
from hcbpg.engine import signing
from hcbpg.errors import AuditError, GateRequired, HcbpgError, UsageError, VerificationFailed
from hcbpg.outcome import Check, Outcome
from hcbpg.params import Params, home, load_params, params_sha256

HEADLESS_ENV = "HCBPG_HEADLESS"
AUTO_APPROVE_ENV = "HCBPG_AUTO_APPROVE"
#: with AUTO_APPROVE_ENV: JSON ``{gate: argv}``, what the automatic approver does before approving a gate
#: (the rehearsal turns the lab app's maintenance mode on before ``maintenance-on``), as an operator would
AUTO_ACTIONS_ENV = "HCBPG_AUTO_APPROVE_ACTIONS"
#: set by ``hcbpg guide`` for its Jupyter server (and so for every kernel it starts)
GUIDED_ENV = "HCBPG_GUIDED"
_MISSING = object()


def _run_gate_action(name: str, argv: Sequence[str]) -> None:
    """What the automatic approver does before approving gate *name* (no secret is ever in *argv*)."""
    import subprocess  # noqa: PLC0415 - only an automatic approver with actions runs a command here

    print(f"gate '{name}': the automatic approver first runs: {' '.join(argv)}", flush=True)
    cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    if cp.returncode != 0:
        raise UsageError(f"gate '{name}': the automatic approver's action failed ({cp.returncode}): "
                         f"{hsecrets.scrub_tail(cp.stdout + cp.stderr, 600)}", hint="The gate is not approved.")


def _recorded_notebooks(run: mf.Run) -> dict[str, str | None]:
    """The notebooks *run*'s manifest names, with their sha256 (None while a step of an open run, run or guided,
    has not been hashed yet); empty when the manifest cannot be read."""
    try:
        data = run.read()
    except HcbpgError:
        return {}
    out: dict[str, str | None] = {}
    for step in data.get("steps", []):
        for att in step.get("attempts", []):
            if att.get("notebook"):
                out[att["notebook"]] = att.get("sha256") or out.get(att["notebook"])
    return out


class StepAlreadyDone(Exception):
    """Raised by :meth:`Runbook.skip`: the step has nothing left to do (the runner records success)."""


class _ScrubbingStream:
    """A stdout/stderr proxy that scrubs secrets before they reach the kernel's output."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, s: str) -> int:
        self._inner.write(hsecrets.scrub(s))
        return len(s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _install_kernel_scrubbing() -> None:
    """Scrub stdout, stderr, rich display data and tracebacks inside this kernel."""
    if not isinstance(sys.stdout, _ScrubbingStream):
        sys.stdout = _ScrubbingStream(sys.stdout)
    if not isinstance(sys.stderr, _ScrubbingStream):
        sys.stderr = _ScrubbingStream(sys.stderr)
    ip = _in_ipython()
    if ip is None or getattr(ip, "_hcbpg_scrubbing", False):
        return
    pub = getattr(ip, "display_pub", None)
    if pub is not None and hasattr(pub, "register_hook"):
        def hook(msg: dict[str, Any]) -> dict[str, Any]:
            msg["content"] = hsecrets.SCRUBBER.scrub_obj(msg.get("content", {}))
            return msg
        pub.register_hook(hook)
    original = ip._showtraceback

    class _Scrubbed:
        def __init__(self, text: str) -> None:
            self.text = text

        def __str__(self) -> str:
            return self.text

    def showtraceback(etype, evalue, stb):  # noqa: ANN001, ANN202
        return original(etype, _Scrubbed(hsecrets.scrub(str(evalue))), [hsecrets.scrub(s) for s in stb])

    ip._showtraceback = showtraceback
    ip._hcbpg_scrubbing = True


def _scrapbook() -> Any:
    """scrapbook, imported in a step's kernel without jsonschema's optional RFC 3987 parser.

    scrapbook imports papermill, nbformat and so jsonschema, which imports ``rfc3987_syntax``
    when it is installed (a jupyter-events extra); that module builds a grammar at import time,
    measured at about 1 s of every step's kernel here (``python -X importtime``).  It only checks
    the ``iri`` string formats, which nbformat's notebook schema does not use.
    """
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None makes its import fail fast, on purpose
    import scrapbook  # noqa: PLC0415 - must come after the rfc3987_syntax stub above; heavy, notebooks only

    return scrapbook


class Runbook:
    """What a notebook holds for the run it is part of."""

    def __init__(self, env: str, *, run_id: str, run_dir: str, dry_run: bool, step: str,
                 params: Params, base: Path) -> None:
        self.env = env
        self.run_id = run_id or None
        self.run = mf.Run(Path(run_dir)) if run_dir else None
        self.dry_run = bool(dry_run)
        self.step = step
        self.params = params
        self.home = base
        self.outcomes: list[Outcome] = []
        self.checks: list[Check] = []
        self.started = time.monotonic()
        self._recorded: dict[str, Any] = {}
        self._record_verified = False  # the environment's record, checked once before recall reads it
        #: the attempt number this kernel keeps in the manifest (guided runs only)
        self.guided_attempt: int | None = None
        #: cells that raised and have not run cleanly since (guided runs): the step cannot succeed
        self.failed_cells: dict[str, str] = {}
        #: called by finish() once the step succeeded (the primary's change lock is released so)
        self._at_finish: list[Callable[[], None]] = []

    # secrets -----------------------------------------------------------------
    def secret(self, key: str) -> str:
        """Resolve the secret referenced at dotted params *key* (e.g. ``postgres.app_role_password``)."""
        obj: Any = self.params
        for part in key.split("."):
            obj = getattr(obj, part)
        return hsecrets.resolve(obj, key=key)

    def check_secrets(self) -> list[Check]:
        """Resolve every secret the params reference; one check row per key.

        A login role's password whose ``file:`` does not exist yet is not missing: step 13
        generates it (0600) when it creates the role, so on a first run it is a warning that
        says so.  An existing file that cannot be read, or any other reference, must resolve.
        """
        generated = {r.password_key for r in roles_config(self.params).secret_roles()}
        generated.add("tls.ca_key")  # a new environment's CA: made by step 03 on its first run
        rows = []
        for key, ref in self.params.secret_refs().items():
            try:
                hsecrets.resolve(ref, key=key)
                rows.append(Check(f"secret {key}", "pass", f"resolved from {ref.split(':', 1)[0]}:"))
            except HcbpgError as exc:
                if key in generated and ref.startswith("file:") and not os.path.lexists(
                        os.path.expanduser(ref[5:])):
                    rows.append(Check(f"secret {key}", "warn",
                                      f"{ref} does not exist yet: step 03 makes the CA there (0600)"
                                      if key == "tls.ca_key" else
                                      f"{ref} does not exist yet: step 13 generates the password there (0600)"))
                else:
                    rows.append(Check(f"secret {key}", "fail", exc.message))
        return rows

    # gates -------------------------------------------------------------------
    def gate(self, name: str, question: str, *, plan: Any = None) -> None:
        """A manual approval the run waits for; headless runs stop here until `hcbpg approve`.

        An approval holds only while it is signed by an allowed signer and bound to the params
        and the step's plan as they are now (the step's code, the question, and *plan* if given):
        when either changed since, the gate asks again."""
        if self.dry_run:
            print(f"[dry run] gate '{name}' would wait here for approval: {question}")
            return
        binding = self._gate_binding(name, question, plan)
        approval = None
        if self.run is not None:
            approval = self.run.read().get("gates", {}).get(name)
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
                gates = data.setdefault("gates", {})
                old = gates.get(name)
                gates[name] = {"question": question, "step": self.step, "requested_at": mf.utcnow(),
                               "approved_at": None, **binding}
                if old and old.get("approved_at"):  # kept for the reader: what was approved before, and why not now
                    gates[name]["set_aside"] = [*old.pop("set_aside", []), old]
        if os.environ.get(HEADLESS_ENV):
            raise GateRequired(name, question, self.run_id)
        answer = input(f"GATE {name}: {question}\nType '{name}' to confirm it holds (anything else stops): ")
        if answer.strip() != name:
            raise GateRequired(name, question, self.run_id)
        self._approve(name, question, by=None, note="confirmed in the notebook", via="notebook", binding=binding)
        print(f"gate '{name}' approved in the notebook by {mf.operator_name()}")

    def _trust(self) -> Any:
        return signing.trust_for(self.params, self.env, self.home)

    def _gate_binding(self, name: str, question: str, plan: Any) -> dict[str, str]:
        """What an approval of this gate is bound to: the params file's sha256 and the step's plan."""
        code = ""
        if self.run is not None:
            try:
                code = self.run.step(self.run.read(), self.step).get("code_sha256") or ""
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
                                        allowed_signers=self._trust().allowed_signers)

    def _approve(self, name: str, question: str, *, by: str | None, note: str, via: str,
                 binding: dict[str, str]) -> None:
        """Record an approval made here (auto, or typed in a guided notebook), signed with the operator's key."""
        if self.run is None:
            return
        at = mf.utcnow()
        proof = signing.sign_approval({"run_id": self.run.run_id, "environment": self.env, "gate": name,
                                       "step": self.step, "question": question, "approved_at": at, "note": note,
                                       "via": via, **binding}, self.params, self._trust())
        with self.run.update() as data:
            gates = data.setdefault("gates", {})
            old = gates.get(name) or {}
            g = {"question": question, "step": self.step, "requested_at": old.get("requested_at") or at, **binding}
            if old.get("approved_at"):
                g["set_aside"] = [*old.pop("set_aside", []), old]
            elif old.get("set_aside"):
                g["set_aside"] = old["set_aside"]
            g.update({"approved_by": by or proof["principal"], "approved_at": at, "note": note, "via": via,
                      "operator": mf.operator_name(), "proof": proof})
            gates[name] = g

    # changes -----------------------------------------------------------------
    @overload
    def track(self, outcome: Outcome, *, show: bool = True) -> Outcome: ...
    @overload
    def track(self, outcome: Iterable[Outcome], *, show: bool = True) -> list[Outcome]: ...

    def track(self, outcome: Outcome | Iterable[Outcome], *, show: bool = True) -> Outcome | list[Outcome]:
        """Count an operation's outcome(s) toward this step's changes and show them."""
        items = [outcome] if isinstance(outcome, Outcome) else list(outcome)
        for o in items:
            self.outcomes.append(o)
            if show:
                print(str(o))
        return outcome if isinstance(outcome, Outcome) else items

    def apply(self, ensure: Callable[..., "Outcome | Sequence[Outcome]"]) -> list[Outcome]:
        """Plan, show the plan, then apply it unless this is a dry run: the shape of every step.

        *ensure* is an idempotent ``ensure_*`` taking ``dry_run`` (keyword) and returning its
        outcome(s).  It is called once with ``dry_run=True`` (the plan, shown with its diffs);
        in a dry run that plan is what is tracked, else *ensure* runs again for real and its
        outcomes are tracked and shown.  Returns the tracked outcomes.
        """
        planned = ensure(dry_run=True)
        plan = [planned] if isinstance(planned, Outcome) else list(planned)
        show_plan(plan)
        if self.dry_run:
            self.track(plan, show=False)
            print("dry run: nothing was changed")
            return plan
        applied = ensure(dry_run=False)
        return list(self.track([applied] if isinstance(applied, Outcome) else list(applied)))

    @property
    def changes(self) -> int:
        return sum(1 for o in self.outcomes if o.changed)

    # verification ------------------------------------------------------------
    def verify(self, checks: Iterable[Check], *, title: str = "checks") -> list[Check]:
        """Show checks as a table; fail the step if any failed."""
        rows = list(checks)
        self.checks += rows
        show_table([{"check": c.name, "target": c.target, "status": c.status, "detail": c.detail} for c in rows])
        self._record_checks()
        failed = [c for c in rows if c.status == "fail"]
        if failed:
            raise VerificationFailed(
                f"{len(failed)} of {len(rows)} {title} failed: " + "; ".join(
                    f"{c.name}{' on ' + c.target if c.target else ''}: {c.detail}" for c in failed),
                failures=[c.name for c in failed])
        return rows

    def _record_checks(self) -> None:
        """The step's checks so far into the manifest (counts, and the ones not passed by name), so the
        recap and the HTML index show them even when the step fails on them."""
        if self.run is None:
            return
        counts = {k: sum(c.status == k for c in self.checks) for k in ("pass", "warn", "fail")}
        not_passed = [{"name": c.name, "target": c.target, "status": c.status}
                      for c in self.checks if c.status != "pass"][:50]
        with self.run.update() as data:
            step = self.run.step(data, self.step)
            step["checks"] = {**counts, "not_passed": not_passed}

    # values between steps -----------------------------------------------------
    def record(self, name: str, value: Any) -> None:
        """Glue a (non-secret) value into this notebook for later steps (scrapbook)."""
        sb = _scrapbook()
        json.dumps(value)  # fail here, not in a later step, if it is not JSON
        self._recorded[name] = value
        if _in_ipython() is not None:
            sb.glue(name, value)

    def recall(self, name: str, default: Any = _MISSING) -> Any:
        """A value recorded by an earlier step: this run first, then earlier runs of this environment.

        Only from a record that verifies: the environment's chain (every notebook's hash, signatures, head)
        is checked first, and only notebooks the manifests of sealed runs name are read (and this open run's,
        open meaning its runner holds the environment's lock now); a record edited outside hcbpg raises
        AuditError instead of handing a planted value on."""
        if name in self._recorded:
            return self._recorded[name]
        self._verify_record()
        sb = _scrapbook()
        runs = mf.list_runs(self.home, self.env)
        if self.run is not None:
            runs = [r for r in runs if r.path != self.run.path] + [self.run]
        for run in reversed(runs):
            current = self.run is not None and run.path == self.run.path
            if not current and not mf.is_sealed(run):
                continue  # only sealed runs, whose signatures _verify_record checked, besides this open one
            recorded = _recorded_notebooks(run)
            for nb in sorted(run.path.glob("[0-9]*.ipynb"), reverse=True):
                if ".attempt-" in nb.name or nb.stem == self.step or nb.name not in recorded:
                    continue  # a file the manifest does not name was not written by hcbpg
                if recorded[nb.name] is None and not current:
                    continue  # an earlier run's attempt without a hash is not read
                # a hashed notebook's sha256 was compared with its file by _verify_record (verify_env)
                try:
                    scraps = sb.read_notebook(str(nb)).scraps
                except Exception:  # noqa: BLE001 - a partial notebook of a crashed run
                    continue
                if name in scraps:
                    return scraps[name].data
        if default is _MISSING:
            raise HcbpgError(f"no earlier step of {self.env} recorded '{name}'",
                             hint="Run the step that records it first (see `hcbpg runs`).")
        return default

    def _verify_record(self) -> None:
        """The environment's record verifies (once per step): what recall reads was written by hcbpg."""
        if self._record_verified:
            return
        if mf.list_runs(self.home, self.env):
            problems = mf.verify_env(self.home, self.env, self._trust())
            if problems:
                raise AuditError(f"{self.step}: values of earlier steps are not read from a record that does not "
                                 f"verify ({len(problems)} problem(s)); first: {problems[0]}",
                                 hint=f"See `hcbpg audit verify {self.env}`. Restore the record from git, or run "
                                      "the step that records the value again.")
        self._record_verified = True

    # the end -----------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Record this step's summary (changes, checks, duration) for the runner's manifest."""
        if self.failed_cells:
            exc = HcbpgError(
                f"{self.step} is not finished: {len(self.failed_cells)} cell(s) failed and have not run "
                "cleanly since: " + "; ".join(self.failed_cells.values()),
                hint="Fix the cause and run the failed cell(s) again, then this cell; "
                     "the step stays recorded as failed until then.")
            exc._hcbpg_unfinished = True  # type: ignore[attr-defined]
            raise exc
        summary = {
            "step": self.step,
            "dry_run": self.dry_run,
            "skipped": getattr(self, "skipped", None),
            "changes": self.changes,
            "changed": [o.what for o in self.outcomes if o.changed],
            "checks": {"pass": sum(c.status == "pass" for c in self.checks),
                       "warn": sum(c.status == "warn" for c in self.checks),
                       "fail": sum(c.status == "fail" for c in self.checks)},
            "duration_s": round(time.monotonic() - self.started, 3),
        }
        self.record("hcbpg_summary", summary)
        while self._at_finish:
            self._at_finish.pop()()
        verb = "would change" if self.dry_run else "changed"
        print(f"{self.step}: {verb} {self.changes} thing(s)" if self.changes else
              f"{self.step}: nothing to change" + (" (dry run)" if self.dry_run else ""))
        if self.run is not None:
            with self.run.update() as data:
                step = self.run.step(data, self.step)
                step["changes"] = self.changes
                step["summary"] = summary
                att = self._guided_attempt(step)
                if att is not None:
                    end = mf.utcnow()
                    duration = round(time.monotonic() - self.started, 3)
                    att.update({"status": "succeeded", "end": end, "duration_s": duration})
                    step.update({"status": "succeeded", "end": end,
                                 "duration_s": round(sum(a.get("duration_s") or 0 for a in step["attempts"]), 3)})
        return summary

    def at_finish(self, fn: Callable[[], None]) -> None:
        """Call *fn* when this step finishes successfully (rb.finish or rb.skip)."""
        self._at_finish.append(fn)

    def runs_of_env(self) -> list[mf.Run]:
        """Every run of this environment, oldest first (for a step that reads what earlier runs approved)."""
        return mf.list_runs(self.home, self.env)

    def skip(self, reason: str) -> None:
        """End the step here, recorded as done with nothing changed (e.g. the migration is complete).

        The remaining cells do not run: the kernel raises StepAlreadyDone, which the runner
        records as a success, not a failure."""
        print(f"{self.step}: nothing to do: {reason}")
        self.skipped = reason
        self.finish()
        raise StepAlreadyDone(reason)

    # guided runs -------------------------------------------------------------
    def _guided_attempt(self, step: dict[str, Any]) -> dict[str, Any] | None:
        if self.guided_attempt is None:
            return None
        for a in step["attempts"]:
            if a["n"] == self.guided_attempt:
                return a
        return None

    def _begin_guided(self) -> None:
        """Open this step's attempt in the manifest of a guided run (the kernel is the runner here)."""
        assert self.run is not None
        data = self.run.read()
        if data.get("status") != "running":
            raise UsageError(
                f"guided run {self.run_id} is closed ({data.get('status')}): its record was hashed "
                "and nothing may be added to it",
                hint=f"Start a new guided run: hcbpg guide {self.env} --from {self.step}")
        if not mf.is_newest(self.run, self.home):
            raise UsageError(
                f"run {self.run_id} is no longer the newest run of {self.env}: recording this step "
                "would rewrite a manifest that a later run's hash chain covers",
                hint=f"Finish this run (hcbpg guide finish {self.run_id}) and start a new one.")
        with self.run.update() as data:
            step = self.run.step(data, self.step)
            for a in step["attempts"]:
                # an earlier start in this same notebook file (kernel restarted, Run All again)
                if a.get("notebook") == step["notebook"] and not a.get("sha256"):
                    if a["status"] == "running":
                        a["status"] = "interrupted"
                        a["end"] = a.get("end") or mf.utcnow()
                    a["note"] = "superseded: the step was started again in the same notebook"
                    a["notebook"] = None
            attempt = {"n": len(step["attempts"]) + 1, "status": "running", "start": mf.utcnow(),
                       "end": None, "duration_s": None, "notebook": step["notebook"], "sha256": None,
                       "pid": os.getpid(), "via": "notebook", "operator": mf.operator_name()}
            step["attempts"].append(attempt)
            step["status"] = "running"
            step["start"] = step.get("start") or attempt["start"]
        self.guided_attempt = attempt["n"]
        self.run.log(f"step {self.step} attempt {attempt['n']} started in the notebook by {mf.operator_name()}")
        ip = _in_ipython()
        if ip is not None:
            ip._hcbpg_guided_rb = self
            if not getattr(ip, "_hcbpg_guided_hook", False):
                ip.events.register("post_run_cell", _record_cell_error)
                ip._hcbpg_guided_hook = True

    def _record_error(self, exc: BaseException) -> None:
        if self.run is None or self.guided_attempt is None:
            return
        status = ("awaiting-approval" if isinstance(exc, GateRequired)
                  else "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        if self.run.read().get("status") != "running":
            return  # the run was closed (guide finish): its record takes nothing more
        error = {"ename": type(exc).__name__, "evalue": hsecrets.scrub(str(exc))[:2000], "at": mf.utcnow()}
        with self.run.update() as data:
            step = self.run.step(data, self.step)
            att = self._guided_attempt(step)
            if att is None or att["status"] == "succeeded":
                return
            att["status"] = status
            att["error"] = error
            att.setdefault("errors", []).append(error)
            step["status"] = status
        self.run.log(f"step {self.step} attempt {self.guided_attempt} {status}: {error['ename']}")


def _record_cell_error(result: Any) -> None:
    """IPython post_run_cell hook of a guided kernel: a failed cell marks the step's attempt."""
    ip = _in_ipython()
    rb = getattr(ip, "_hcbpg_guided_rb", None) if ip is not None else None
    if rb is None:
        return
    info = getattr(result, "info", None)
    cell = getattr(info, "cell_id", None) or getattr(info, "raw_cell", "") or ""
    exc = getattr(result, "error_in_exec", None)
    if exc is None:
        rb.failed_cells.pop(cell, None)
        return
    first_line = (getattr(info, "raw_cell", "") or "").strip().splitlines()[:1]
    if getattr(exc, "_hcbpg_unfinished", False):
        return  # finish() refused: the failure it names is already recorded
    rb.failed_cells[cell] = f"{type(exc).__name__} in `{first_line[0][:60] if first_line else '?'}`"
    try:
        rb._record_error(exc)
    except Exception as err:  # noqa: BLE001 - never hide the operator's own error behind ours
        print(f"hcbpg: could not record the failure in the manifest: {err}", file=sys.stderr)


def start(env: str, *, step: str, run_id: str = "", run_dir: str = "", dry_run: bool = False) -> Runbook:
    """Begin a step inside a notebook: scrub outputs, load params, return the run context."""
    _install_kernel_scrubbing()
    if run_dir:
        os.environ.setdefault(hsecrets.SCRUB_FILE_ENV, str(scrub_file_for(Path(run_dir))))
    base = home()
    params = load_params(env, base)
    rb = Runbook(env, run_id=run_id, run_dir=run_dir, dry_run=dry_run, step=step, params=params, base=base)
    if rb.run is not None and is_guided(rb.run):
        rb._begin_guided()
    mode = "DRY RUN: nothing will be changed" if rb.dry_run else "changes will be applied"
    print(f"{step} on {env} ({mode}); run {run_id or '(ad hoc, no run record)'}"
          + (" (guided: this step is recorded as you go)" if rb.guided_attempt else ""))
    return rb


def is_guided(run: mf.Run) -> bool:
    """True in a kernel that keeps the record of a guided run itself (not under the headless runner)."""
    if os.environ.get(HEADLESS_ENV):
        return False
    try:
        return run.read().get("mode") == "guided"
    except HcbpgError:
        return False


def scrub_file_for(run_dir: Path) -> Path:
    """The run's scrub registry: outside outputs/, 0600, removed when the run closes."""
    base = Path(os.environ.get("HCBPG_STATE_DIR") or (home() / ".hcbpg"))
    return base / "scrub" / f"{run_dir.name}.jsonl"
