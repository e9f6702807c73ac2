"""The notebook side of a run: ``rb = runbook.start(...)`` in the cell after the parameters.

It loads params, installs the kernel's output scrubbing, and gives the notebook a small
surface: ``secret``, ``gate``, ``track``/``verify``, ``record``/``recall`` and ``finish``.
Notebooks call this and the steps modules; they hold no logic.

:class:`Runbook` is a facade made of parts, as Patroni's ``Postgresql`` composes its handlers:
:class:`~hcbpg.engine.gates.Gates` (approval, signing), :class:`~hcbpg.engine.ledger.Ledger`
(outcomes, checks, changes) and :class:`~hcbpg.engine.record.Record` (values between steps,
verified recall); the run's manifest is changed only through them and this module.

In a guided run (``hcbpg guide``: the manifest says ``mode: guided`` and no headless
runner drives the kernel) the kernel keeps its step's record itself: ``start`` opens an
attempt (``running``), a cell that raises marks it ``failed`` (``awaiting-approval`` for a
refused gate), ``finish`` marks it ``succeeded``; ``hcbpg guide finish`` hashes the notebook.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from hcbpg import secrets as hsecrets
from hcbpg.desired.roles import roles_config
from hcbpg.display import _in_ipython, render_table, show_plan, show_table  # noqa: F401 - the notebooks' display helpers
from hcbpg.engine import manifest as mf
from hcbpg.engine.gates import AUTO_ACTIONS_ENV, AUTO_APPROVE_ENV, HEADLESS_ENV, Gates
from hcbpg.engine.ledger import Ledger
from hcbpg.engine.manifest_model import Attempt, StepEntry
from hcbpg.engine.record import _MISSING, Record
from hcbpg.errors import GateRequired, HcbpgError, UsageError
from hcbpg.outcome import Check, Outcome
from hcbpg.params import Params, home, load_params

__all__ = ["AUTO_ACTIONS_ENV", "AUTO_APPROVE_ENV", "GUIDED_ENV", "HEADLESS_ENV", "Runbook", "StepAlreadyDone",
           "StepUnfinished", "is_guided", "scrub_file_for", "start"]

#: set by ``hcbpg guide`` for its Jupyter server (and so for every kernel it starts)
GUIDED_ENV = "HCBPG_GUIDED"


class StepAlreadyDone(Exception):
    """Raised by :meth:`Runbook.skip`: the step has nothing left to do (the runner records success)."""


class StepUnfinished(HcbpgError):
    """Raised by :meth:`Runbook.finish` while cells of a guided step failed and have not run cleanly since
    (the failures it names are recorded already)."""


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


class Runbook:
    """What a notebook holds for the run it is part of: the facade over its gates, ledger and record."""

    def __init__(self, env: str, *, run_id: str, run_dir: str, dry_run: bool, step: str,
                 params: Params, base: Path) -> None:
        self.env = env
        self.run_id = run_id or None
        self.run = mf.Run(Path(run_dir)) if run_dir else None
        self.dry_run = bool(dry_run)
        self.step = step
        self.params = params
        self.home = base
        self.started = time.monotonic()
        self.gates = Gates(self.run, env=env, step=step, params=params, home=base, dry_run=self.dry_run)
        self.ledger = Ledger(self.run, step=step)
        self.values = Record(self.run, env=env, step=step, home=base, trust=self.gates.trust)
        #: why the step ended early (rb.skip), else None
        self.skipped: str | None = None
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
            obj = getattr(obj, part)  # a dotted key the notebook names: no default, a wrong key fails
        return hsecrets.resolve(obj, key=key)

    def check_secrets(self) -> list[Check]:
        """Resolve every secret the params reference; one check row per key.

        A login role's password whose ``file:`` does not exist yet is not missing: step 13
        generates it (0600) when it creates the role, so on a first run it passes with a note that
        says so (an expected state, not a warning).  An existing file that cannot be read, or any
        other reference, must resolve.
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
                    rows.append(Check(f"secret {key}", "pass",
                                      f"expected: {ref} does not exist yet: step 03 makes the CA there (0600)"
                                      if key == "tls.ca_key" else
                                      f"expected: {ref} does not exist yet: step 13 generates the password "
                                      "there (0600)"))
                else:
                    rows.append(Check(f"secret {key}", "fail", exc.message))
        return rows

    # gates -------------------------------------------------------------------
    def gate(self, name: str, question: str, *, plan: Any = None) -> None:
        """A manual approval the run waits for; headless runs stop here until `hcbpg approve`.

        An approval holds only while it is signed by an allowed signer and bound to the params
        and the step's plan as they are now (the step's code, the question, and *plan* if given):
        when either changed since, the gate asks again."""
        self.gates.ask(name, question, plan=plan)

    def approval(self, name: str, *, earlier_runs: bool = False) -> dict[str, Any] | None:
        """Gate *name*'s approval as recorded in this run (with *earlier_runs*: else the newest in the environment)."""
        return self.gates.approval(name, earlier_runs=earlier_runs)

    # changes and checks ------------------------------------------------------
    @overload
    def track(self, outcome: Outcome, *, show: bool = True) -> Outcome: ...
    @overload
    def track(self, outcome: Iterable[Outcome], *, show: bool = True) -> list[Outcome]: ...

    def track(self, outcome: Outcome | Iterable[Outcome], *, show: bool = True) -> Outcome | list[Outcome]:
        """Count an operation's outcome(s) toward this step's changes and show them."""
        return self.ledger.track(outcome, show=show)

    @property
    def outcomes(self) -> list[Outcome]:
        return self.ledger.outcomes

    @property
    def checks(self) -> list[Check]:
        return self.ledger.checks

    @property
    def changes(self) -> int:
        return self.ledger.changes

    def verify(self, checks: Iterable[Check], *, title: str = "checks") -> list[Check]:
        """Show checks as a table; fail the step if any failed."""
        return self.ledger.verify(checks, title=title)

    # what only a step that applied its changes does (not a dry run) ------------
    def track_applied(self, outcome: Outcome | Iterable[Outcome]) -> list[Outcome]:
        """Track what the apply did; shown unless this is a dry run, whose plan was shown already."""
        return self.ledger.track([outcome] if isinstance(outcome, Outcome) else outcome, show=not self.dry_run)

    def verify_applied(self, make: Callable[..., Iterable[Check]], *args: Any, title: str = "checks",
                       **kwargs: Any) -> list[Check]:
        """``verify(make(*args, **kwargs))``; a dry run changed nothing, so it has nothing to verify (*make*
        is not called)."""
        if self.dry_run:
            print(f"dry run: nothing was changed, no {title} to verify")
            return []
        return self.verify(make(*args, **kwargs), title=title)

    def when_applied(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` when the step applied its changes; None in a dry run (*fn* is not called)."""
        if self.dry_run:
            print(f"dry run: nothing was changed, {getattr(fn, '__name__', 'this')} is not run")  # a callable's name
            return None
        return fn(*args, **kwargs)

    def record_applied(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """Record *value* (a function: what it returns, called with *args*) for later steps, unless this is a dry
        run: a plan leaves no value for a later step to act on."""
        if not self.dry_run:
            self.record(name, value(*args, **kwargs) if callable(value) else value)

    # values between steps -----------------------------------------------------
    def record(self, name: str, value: Any) -> None:
        """Glue a (non-secret) value into this notebook for later steps (scrapbook)."""
        self.values.record(name, value)

    def recall(self, name: str, default: Any = _MISSING, *, own: bool = False) -> Any:
        """A value recorded by an earlier step: this run first, then earlier runs of this environment.

        Only from a record that verifies: the environment's chain (every notebook's hash, signatures, head)
        is checked first, and only notebooks the manifests of sealed runs name are read (and this open run's,
        open meaning its runner holds the environment's lock now); a record edited outside hcbpg raises
        AuditError instead of handing a planted value on.  With *own*, what this step recorded in an earlier
        run counts too (step 11 reads the topology its last run left)."""
        return self.values.recall(name, default, own=own)

    def note_downtime(self, downtime: Mapping[str, Any], *, merge: bool = False) -> None:
        """The migration's downtime into the run's manifest (``downtime``; *merge*: into what is there);
        nothing in a dry run or an ad hoc run."""
        if self.run is None or self.dry_run:
            return
        with self.run.update() as data:
            data.downtime = {**(data.downtime if merge else {}), **downtime}

    # the end -----------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Record this step's summary (changes, checks, duration) for the runner's manifest."""
        if self.failed_cells:
            raise StepUnfinished(
                f"{self.step} is not finished: {len(self.failed_cells)} cell(s) failed and have not run "
                "cleanly since: " + "; ".join(self.failed_cells.values()),
                hint="Fix the cause and run the failed cell(s) again, then this cell; "
                     "the step stays recorded as failed until then.")
        summary = {
            "step": self.step,
            "dry_run": self.dry_run,
            "skipped": self.skipped,
            "changes": self.changes,
            "changed": [o.what for o in self.outcomes if o.changed],
            "checks": self.ledger.counts(),
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
                step = data.step(self.step)
                step.changes = self.changes
                step.summary = summary
                att = step.attempt(self.guided_attempt)
                if att is not None:  # a guided run: rb.skip ends the step as skipped (done), as the runner does
                    done = "skipped" if self.skipped is not None else "succeeded"
                    att.status, att.end = done, mf.utcnow()
                    if self.skipped is not None:
                        att.note = f"skipped: {hsecrets.scrub(self.skipped)}"
                    att.duration_s = round(time.monotonic() - self.started, 3)
                    step.status, step.end = done, att.end
                    step.duration_s = round(sum(a.duration_s or 0 for a in step.attempts), 3)
        return summary

    def at_finish(self, fn: Callable[[], None]) -> None:
        """Call *fn* when this step finishes successfully (rb.finish or rb.skip)."""
        self._at_finish.append(fn)

    def skip(self, reason: str) -> None:
        """End the step here, recorded as done with nothing changed (e.g. the migration is complete).

        The remaining cells do not run: the kernel raises StepAlreadyDone, which the runner
        records as a success, not a failure."""
        print(f"{self.step}: nothing to do: {reason}")
        self.skipped = reason
        self.finish()
        raise StepAlreadyDone(reason)

    # guided runs -------------------------------------------------------------
    def _begin_guided(self) -> None:
        """Open this step's attempt in the manifest of a guided run (the kernel is the runner here)."""
        assert self.run is not None
        status = self.run.read().get("status")
        if status != "running":
            raise UsageError(
                f"guided run {self.run_id} is closed ({status}): its record was hashed "
                "and nothing may be added to it",
                hint=f"Start a new guided run: hcbpg guide {self.env} --from {self.step}")
        if not mf.is_newest(self.run, self.home):
            raise UsageError(
                f"run {self.run_id} is no longer the newest run of {self.env}: recording this step "
                "would rewrite a manifest that a later run's hash chain covers",
                hint=f"Finish this run (hcbpg guide finish {self.run_id}) and start a new one.")
        with self.run.update() as data:
            step = data.step(self.step)
            for a in step.attempts:
                # an earlier start in this same notebook file (kernel restarted, Run All again)
                if a.notebook == step.notebook and not a.sha256:
                    if a.status == "running":
                        a.status = "interrupted"
                        a.end = a.end or mf.utcnow()
                    a.note = "superseded: the step was started again in the same notebook"
                    a.notebook = None
            attempt = open_attempt(step, via="notebook")
        self.guided_attempt = attempt.n
        self.run.log(f"step {self.step} attempt {attempt.n} started in the notebook by {mf.operator_name()}")
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
        error = {"ename": type(exc).__name__, "evalue": hsecrets.scrub(str(exc))[:mf.MAX_EVALUE], "at": mf.utcnow()}
        with self.run.update() as data:
            step = data.step(self.step)
            att = step.attempt(self.guided_attempt)
            if att is None or att.status in mf.DONE:
                return
            att.status = status
            att.error = error
            att.errors = [*att.errors, error]
            step.status = status
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
    if isinstance(exc, StepUnfinished):
        return  # finish() refused: the failure it names is already recorded
    rb.failed_cells[cell] = f"{type(exc).__name__} in `{first_line[0][:60] if first_line else '?'}`"
    try:
        rb._record_error(exc)
    except Exception as err:  # noqa: BLE001 - never hide the operator's own error behind ours
        print(f"hcbpg: could not record the failure in the manifest: {err}", file=sys.stderr)


if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.steps.context import Run

    def _a_runbook_is_what_steps_take(rb: Runbook) -> Run:
        """Never called: mypy checks here that the facade satisfies the steps' one ``Run`` protocol."""
        return rb


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


def open_attempt(step: StepEntry, *, via: str | None = None) -> Attempt:
    """A new attempt of *step*, running from now in this process (*via*: "notebook" in a guided kernel)."""
    fields: dict[str, Any] = {"n": len(step.attempts) + 1, "status": "running", "start": mf.utcnow(), "end": None,
                              "duration_s": None, "notebook": step.notebook, "sha256": None, "pid": os.getpid()}
    if via:
        fields.update(via=via, operator=mf.operator_name())
    attempt = Attempt.model_validate(fields)
    step.attempts = [*step.attempts, attempt]
    step.status = "running"
    step.start = step.start or attempt.start
    return attempt


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
