"""Runs the runbook's notebooks with papermill, in order, and keeps the run's manifest.

Pipeline of one run: select steps → create the run directory (linked into the env's
hash chain) → for each step: mark running, execute the notebook into the run directory
through the scrubbing writer, hash it, record status/changes → close the run.  Only
non-secret parameters reach papermill: ``env``, ``run_id``, ``run_dir``, ``dry_run``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets as _secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcbpg import progress as hprogress
from hcbpg import secrets as hsecrets
from hcbpg.engine import audit, chain, changes, jupyter, signing
from hcbpg.engine import manifest as mf
from hcbpg.engine.catalogue import load_steps_for, notebooks_dir, parse_inputs, select, step_inputs
from hcbpg.engine.gates import AUTO_APPROVE_ENV, HEADLESS_ENV
from hcbpg.engine.locks import env_lock
from hcbpg.engine.manifest_model import StepEntry
from hcbpg.engine.record import read_scraps
from hcbpg.engine.runbook import open_attempt, scrub_file_for
from hcbpg.engine.terminal import CellOutput, LiveLines, ProgressFollower, render_failure, render_recap
from hcbpg.errors import AuditError, HcbpgError, UsageError
from hcbpg.params import Params, home, load_params, params_sha256

SCHEME = "hcbpg-scrubbed://"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WAITING, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
log = logging.getLogger("hcbpg.runner")


class ScrubbingWriter:
    """papermill I/O handler: every save of an executed notebook is scrubbed and written atomically."""

    @classmethod
    def _path(cls, path: str) -> Path:
        return Path(path[len(SCHEME):])

    @classmethod
    def read(cls, path: str) -> str:
        return cls._path(path).read_text()

    @classmethod
    def listdir(cls, path: str) -> list[str]:
        return [str(p) for p in cls._path(path).iterdir()]

    @classmethod
    def write(cls, buf: str, path: str) -> None:
        p = cls._path(path)
        mf.atomic_write_text(p, buf)

    @classmethod
    def pretty_path(cls, path: str) -> str:
        return str(cls._path(path))


def _register_writer() -> None:
    jupyter.load_papermill()
    from papermill.iorw import papermill_io  # noqa: PLC0415 - papermill/jupyter are heavy; loaded when a notebook runs
    if not any(s == SCHEME for s, _ in papermill_io._handlers):
        papermill_io.register(SCHEME, ScrubbingWriter)


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = hsecrets.scrub(record.getMessage())
        record.args = ()
        return True


#: how often a kernel asked to shut down is looked at until it has exited (jupyter_client's default: 0.1 s)
_SHUTDOWN_POLL_S = 0.01
#: a Unix socket's path holds at most 107 bytes, and zmq appends "-<port>" to the base we give it
_IPC_PATH_MAX = 100
_short_runtime: list[Path] = []


def _ipc_base(token: str) -> Path:
    """Where a kernel's sockets go: Jupyter's runtime dir, or, when that path is too long for a
    Unix socket (a deep home or test dir), a private dir of this process under the temp dir."""
    from jupyter_core.paths import jupyter_runtime_dir  # noqa: PLC0415 - jupyter stack is heavy, loaded when a notebook runs

    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    base = runtime / f"hcbpg-kernel-{token}"
    if len(os.fsencode(base)) + 4 <= _IPC_PATH_MAX:
        return base
    if not _short_runtime:
        d = Path(tempfile.mkdtemp(prefix="hcbpg-rt-"))  # mode 0700, ours alone
        atexit.register(shutil.rmtree, d, True)
        _short_runtime.append(d)
    return _short_runtime[0] / f"k-{token}"


def _kernel_manager_class(made: list[Any] | None = None):  # noqa: ANN202
    """Kernels talk to the runner over Unix sockets (see :func:`_ipc_base`), not loopback TCP;
    each kernel manager made is appended to *made* (so an interrupt can shut its kernel down)."""
    from jupyter_client.manager import KernelManager  # noqa: PLC0415 - jupyter stack is heavy, loaded when a notebook runs

    class IpcKernelManager(KernelManager):
        def __init__(self, **kw: Any) -> None:
            kw.setdefault("transport", "ipc")
            kw.setdefault("ip", str(_ipc_base(_secrets.token_hex(6))))
            super().__init__(**kw)
            #: the clients nbclient made of this kernel (their channels are closed with it: :func:`_shut_down`)
            self.clients: list[Any] = []
            if made is not None:
                made.append(self)

        def client(self, **kw: Any) -> Any:
            kc = super().client(**kw)
            self.clients.append(kc)
            return kc

        async def _async_finish_shutdown(self, waittime: float | None = None, pollinterval: float = 0.1,
                                         restart: bool = False) -> None:
            # after its shutdown reply the kernel exits within milliseconds; jupyter_client looks every 0.1 s
            # (measured 0.105 s a step spent here), the same wait and the same escalation looked at every 0.01 s
            await super()._async_finish_shutdown(waittime, min(pollinterval, _SHUTDOWN_POLL_S), restart)

    return IpcKernelManager


def run_interruptible(execute: Callable[[], Any], kernels: Sequence[Any] = ()) -> Any:
    """``execute()`` (papermill) in a worker thread, while this (main) thread waits: Ctrl-C or
    SIGTERM always reaches the runner as KeyboardInterrupt, which kills the *kernels* (their
    managers) and is raised here.

    Run in the main thread, nbclient puts its own SIGINT handler on the event loop, which only
    schedules the kernel's clean-up: whether the step then ended as interrupted or ran on to
    success depended on timing (seen under load: a Ctrl-C that did nothing)."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["result"] = execute()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, raised there
            box["exc"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="hcbpg-step", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        for km in list(kernels):
            # the kernel's process (group) killed, nothing more: shutdown_kernel() would also destroy the
            # manager's zmq context from this thread while the worker's client still polls sockets of it,
            # and zmq's term waits for those sockets (a runner that never ended after a Ctrl-C, seen once
            # under load); the worker sees the kernel dead and closes its own sockets
            with contextlib.suppress(Exception):
                km.signal_kernel(signal.SIGKILL)
        # nbclient waits for the dead kernel's reply without a deadline; the notebook it saved so far
        # stays as the record, and the worker (a daemon thread) ends with the process
        done.wait(5)
        raise
    if "exc" in box:
        raise box["exc"]
    return box.get("result")


def _shut_down(km: Any) -> None:
    """What nbclient does with a kernel it started, once its notebook ran: shut down (the kernel is asked,
    then killed if it does not end in time), its files removed, the clients' channels closed."""
    try:
        if km.has_kernel and km.is_alive():
            km.shutdown_kernel(now=False)
    except RuntimeError as exc:  # it ended meanwhile
        if "No kernel is running" not in str(exc):
            raise
    finally:
        km.cleanup_resources()
        for kc in km.clients:
            with contextlib.suppress(Exception):
                kc.stop_channels()


#: what every step's notebook imports first (the runbook, params, pydantic, the SQL adapter, psycopg; paramiko loads
#: on a step's first SSH command, hcloud in a step that asks the cloud): a kernel imports them as it starts (IPython's
#: ``exec_lines``, before the kernel is ready, outside the notebook's history), so a step started ahead finds them
#: loaded.  Importing them changes nothing: no module of hcbpg reads the environment, a file or the clock when
#: imported (the run's secrets registry is read when a scrub needs it)
PRELOADED = ("hcbpg.engine.runbook", "hcbpg.steps.targets")


class StepKernels:
    """Each step's kernel, started while the step before it runs.

    A kernel takes about 0.4 s to start (Python, ipykernel, IPython), and about 0.5 s more to import what the
    notebook's first cell imports (:data:`PRELOADED`): every step waited for both, ~20 s of a rehearsal.  Now,
    as a step begins, the next step's kernel is started beside it, with that step's
    progress file in its environment (:class:`ProgressFollower`), in the run's directory like every step's.
    A kernel still runs one notebook, and is shut down after it (:func:`_shut_down`); the one started for a
    step that does not run (the run stopped: a gate, a failure, Ctrl-C) is shut down unused by :meth:`close`.
    """

    def __init__(self, kernel_name: str, cwd: Path, live: Callable[[hprogress.Sample, bool], None]) -> None:
        self.kernel_name = kernel_name
        self.cwd = cwd
        self.live = live
        #: every kernel manager made (Ctrl-C kills their kernels: :func:`run_interruptible`)
        self.made: list[Any] = []
        self._next: tuple[Any, ProgressFollower] | None = None
        self.interrupted = False

    def _start(self) -> tuple[Any, ProgressFollower]:
        follower = ProgressFollower(self.live)
        try:
            km = _kernel_manager_class(self.made)(kernel_name=self.kernel_name)
            km.start_kernel(cwd=str(self.cwd), env=follower.kernel_env(),
                            extra_arguments=[f"--IPKernelApp.exec_lines=import {', '.join(PRELOADED)}"])
        except BaseException:
            follower.close()
            raise
        return km, follower

    def prestart(self) -> None:
        """The first step's kernel, started now (while the runner imports papermill and opens the record); a
        kernel that does not start here is started, or fails to, when the step takes it."""
        if self._next is None:
            try:
                self._next = self._start()
            except Exception as exc:  # noqa: BLE001 - the step starts its own kernel then (and says why)
                log.warning("the first step's kernel did not start ahead: %s", exc)

    def take(self, *, more: bool) -> tuple[Any, ProgressFollower]:
        """This step's kernel (started beside the step before, or now) and its progress follower; when *more*
        steps follow, the next one's kernel starts now."""
        this, self._next = self._next, None
        if this is None or not this[0].is_alive():
            if this is not None:
                self._discard(this)
            this = self._start()
        if more:
            try:
                self._next = self._start()
            except Exception as exc:  # noqa: BLE001 - the next step starts its own kernel then (and says why)
                log.warning("the next step's kernel did not start ahead: %s", exc)
        return this

    def _discard(self, pair: tuple[Any, ProgressFollower]) -> None:
        km, follower = pair
        try:
            if not self.interrupted:
                _shut_down(km)
        finally:
            follower.close()

    def done(self, pair: tuple[Any, ProgressFollower], *, interrupted: bool = False) -> None:
        """The step ran: its kernel shut down, its follower closed.  After a Ctrl-C the kernels were killed
        (:func:`run_interruptible`) and nothing more is done with them: the worker thread may still poll the
        step's client, and destroying what it polls from here could hang the runner on its way out."""
        self.interrupted = self.interrupted or interrupted
        self._discard(pair)

    def close(self) -> None:
        """The kernel started for a step that did not run, shut down unused."""
        if self._next is not None:
            pair, self._next = self._next, None
            with contextlib.suppress(Exception):
                self._discard(pair)


@dataclass
class RunResult:
    run: mf.Run
    status: str
    exit_code: int
    message: str = ""
    #: why a step failed, shown above the recap (:func:`hcbpg.engine.terminal.render_failure`)
    report: list[str] = field(default_factory=list)


def _resolve_param_secrets(params: Params) -> None:
    """Resolve every secret the params reference, so the runner can scrub them too.

    A secret that does not resolve is not an error here: the step that needs it will say
    so with its key (preflight checks them all first)."""
    for key, ref in params.secret_refs().items():
        try:
            hsecrets.resolve(ref, key=key)
        except HcbpgError:
            pass


def refuse_if_open_in_jupyterlab(base: Path, env: str) -> None:
    """A new run would hash the newest manifest into its chain while a guided run still writes it."""
    runs = mf.list_runs(base, env)
    if not runs:
        return
    try:
        data = runs[-1].read()
    except HcbpgError:
        return
    runner = data.get("runner") or {}
    if data.get("mode") == "guided" and mf.pid_alive(runner.get("jupyter_pid"), runner.get("machine")):
        raise UsageError(f"guided run {data['run_id']} of {env} is still open in JupyterLab "
                         f"(server pid {runner['jupyter_pid']}); a new run now would break the hash chain",
                         hint="Shut that JupyterLab down (File > Shut Down, or Ctrl-C in `hcbpg guide`); "
                              "it finishes the run. Then start the new one.")


class Runner:
    """Executes the steps of one run; ``progress`` receives one line per event."""

    def __init__(self, *, base: Path | None = None, nb_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None, progress_bar: bool = True,
                 log_output: bool = False, auto_approve: str | None = None,
                 kernel_name: str = "python3", stream_cells: bool | None = None,
                 live: Callable[[hprogress.Sample, bool], None] | None = None, live_every: float = 2.0,
                 show_diff: bool = False) -> None:
        self.home = base or home()
        self.nb_dir = nb_dir or notebooks_dir()
        self.progress = progress or (lambda line: print(line, flush=True))
        self.progress_bar = progress_bar
        self.log_output = log_output
        self.auto_approve = auto_approve
        self.kernel_name = kernel_name
        #: every cell's output (scrubbed) to ``progress`` as it comes (``-v``); default: with log_output
        self.stream_cells = log_output if stream_cells is None else stream_cells
        #: the live view of long work in the step (samples of :mod:`hcbpg.progress`); default: a line
        #: per kind of work every *live_every* seconds through ``progress``
        self.live = live or LiveLines(self.progress, every=live_every)
        #: each step's changes with their diffs after the step (``--diff``)
        self.show_diff = show_diff

    # -- entry points -----------------------------------------------------------------
    def start(self, env: str, *, dry_run: bool = False, start: str | None = None,
              until: str | None = None, only: str | None = None, inputs: Sequence[str] = (),
              plan_file: Path | None = None) -> RunResult:
        """Run (or, *dry_run*, plan) the selected steps; *plan_file*: apply exactly that saved plan
        (:mod:`hcbpg.engine.changes`): its steps and inputs, only when planning them again now gives the same."""
        params = load_params(env, self.home)  # validates before anything runs
        refuse_if_open_in_jupyterlab(self.home, env)
        if plan_file is not None and (start or until or only or inputs or dry_run):
            raise UsageError("--plan applies the plan's own steps and inputs: no --from/--until/--only/-p with it")
        all_steps = load_steps_for(params, self.nb_dir)
        saved = self._saved_plan(plan_file, env, params, all_steps) if plan_file is not None else None
        steps = select(all_steps, only=",".join(saved.steps)) if saved is not None else \
            select(all_steps, start=start, until=until, only=only)
        if not steps:
            raise UsageError("no steps selected")
        if inputs:  # -p NAME=VALUE: refused before anything is created (a value that is a secret too)
            _resolve_param_secrets(params)
        given = saved.inputs if saved is not None else parse_inputs(inputs, steps)
        for s in steps:
            if not (self.nb_dir / s.notebook).is_file():
                raise UsageError(f"step {s.key}: notebook {self.nb_dir / s.notebook} is missing")
        selection: dict[str, Any] = {"from": start, "until": until, "only": only,
                                     **({"inputs": given} if given else {})}
        with env_lock(env, purpose="plan" if dry_run else "run", base=self.home) as lock:
            sealer = sealer_for(params, env, self.home)  # refuses before anything is created
            refuse_unless_verified(self.home, env, sealer.trust, doing=f"no run of {env} was started")
            if saved is not None:  # the same steps planned again, under this lock: the world as it is now
                recheck = self._create_and_execute(lock, env, params, sealer, steps, dry_run=True,
                                                   selection={**selection, "recheck_of_plan": saved.sha256},
                                                   kind=f"plan again (dry run) to check saved plan {saved.sha256[:12]}")
                if recheck.status != "succeeded":
                    recheck.message = "The saved plan was not applied: planning it again did not succeed.\n" \
                        + recheck.message
                    return recheck
                moved = changes.compare_steps(saved.plan["steps"], changes.plan_steps(recheck.run.read()))
                if moved:
                    return RunResult(recheck.run, "refused", EXIT_BAD_INPUT, "\n".join([
                        f"The world changed since plan {saved.sha256[:12]} was made; nothing was applied:",
                        *(f"  {m}" for m in moved),
                        f"Plan again (hcbpg plan {env} --diff --out FILE), review it, and apply the new plan."]))
                selection = {**selection, "plan": {"sha256": saved.sha256, "signed_by": saved.signer.principal,
                                                   "key_fingerprint": saved.signer.fingerprint,
                                                   "planned_in": saved.plan["plan_run_id"],
                                                   "rechecked_in": recheck.run.run_id, "expected": saved.expected()}}
            kind = "plan (dry run: nothing is changed)" if dry_run else \
                f"run of saved plan {saved.sha256[:12]}" if saved is not None else "run"
            return self._create_and_execute(lock, env, params, sealer, steps, dry_run=dry_run, selection=selection,
                                            kind=kind)

    def _create_and_execute(self, lock: Any, env: str, params: Params, sealer: mf.Sealer, steps: list[Any], *,
                            dry_run: bool, selection: dict[str, Any], kind: str) -> RunResult:
        run = mf.create_run(self.home, env, steps=[s.as_dict() for s in steps],
                            mode="plan" if dry_run else "run", dry_run=dry_run,
                            params_sha256=params_sha256(env, self.home), selection=selection,
                            repo=self.nb_dir.parent, seal_with=sealer)
        lock.note_run(run.run_id)
        drop_stale_registries(self.home, env, keep=run)
        self.progress(f"hcbpg {kind} of {env}: {len(steps)} step(s), run {run.run_id}\n"
                      f"  record: {run.path}")
        return self._execute(run, params, sealer)

    def _saved_plan(self, path: Path, env: str, params: Params, all_steps: list[Any]) -> changes.SavedPlan:
        """The saved plan at *path*, verified and bound to this environment, params and code (else UsageError)."""
        trust = signing.trust_for(params, env, self.home)
        code = {s.key: mf.code_sha256(self.nb_dir / s.notebook) for s in all_steps
                if (self.nb_dir / s.notebook).is_file()}
        return changes.load_plan(path, env=env, trust=trust, params_sha256=params_sha256(env, self.home),
                                 library=changes.library_sha256(), code=code)

    def save_plan(self, result: RunResult, path: Path) -> str:
        """``plan --out``: the finished plan *result* signed into *path*; returns what to print."""
        data = result.run.read()
        params = load_params(result.run.env, self.home)
        plan = changes.render_plan(data, library=changes.library_sha256())
        who = changes.write_plan(path, plan, key=signing.signing_key(params),
                                 trust=signing.trust_for(params, result.run.env, self.home))
        n = sum(len(s["changes"]) for s in plan["steps"])
        return (f"Saved plan {changes.plan_sha256(plan)[:12]} ({n} change(s) in {len(plan['steps'])} step(s)), "
                f"signed by {who.principal}: {path}\nApply exactly it with: hcbpg run {result.run.env} --plan {path}")

    def resume(self, run_id: str) -> RunResult:
        run = mf.find_run(self.home, run_id)
        with env_lock(run.env, purpose="resume", base=self.home) as lock:
            lock.note_run(run.run_id)
            return self._resume(run)

    def _resume(self, run: mf.Run) -> RunResult:
        if not mf.is_newest(run, self.home):
            raise UsageError(f"run {run.run_id} is not the newest run of {run.env}: resuming it would "
                             "rewrite a manifest that a later run's hash chain covers",
                             hint=f"Start a new run instead: hcbpg run {run.env} --from STEP")
        params = load_params(run.env, self.home)
        sealer = sealer_for(params, run.env, self.home)
        # the approvals and the steps recorded as done are only as good as the record: verify it before
        # anything in it is believed, sealed or changed (a run whose runner was killed: only as hcbpg last
        # wrote it here).  No other runner writes it: this process holds the environment's lock.
        refuse_unless_verified(self.home, run.env, sealer.trust, doing=f"run {run.run_id} is not resumed")
        data = run.read()
        if data["status"] == "succeeded":
            raise UsageError(f"run {run.run_id} already succeeded; nothing to resume")
        runner = data.get("runner") or {}
        if mf.pid_alive(runner.get("jupyter_pid"), runner.get("machine")):
            raise UsageError(f"run {run.run_id} is open in JupyterLab (server pid {runner['jupyter_pid']})",
                             hint=f"Shut JupyterLab down (File > Shut Down, or Ctrl-C in `hcbpg guide`), "
                                  f"or run `hcbpg guide finish {run.run_id}`; then resume.")
        if mf.needs_orphan_seal(run):  # its runner was killed: seal what it left
            mf.seal_orphan(run, sealer)
            self.progress(f"note: run {run.run_id} had stopped without sealing its record (killed?); sealed it now")
        elif run.unlike_written() is not None:  # sealed elsewhere (another machine): its signature vouches
            mf.adopt_verified(run, sealer.trust)
        sha = params_sha256(run.env, self.home)
        if sha != data["params_sha256"]:
            self.progress(f"note: params/{run.env}.yaml changed since this run started; "
                          "the new params are used and recorded")
            with run.update() as d:
                d.params_history = [*d.params_history, {"at": mf.utcnow(), "params_sha256": sha}]
                d.params_sha256 = sha
        drop_stale_registries(self.home, run.env, keep=run)
        self.progress(f"hcbpg resume of run {run.run_id} ({run.env})\n  record: {run.path}")
        return self._execute(run, params, sealer)

    # -- the loop ---------------------------------------------------------------------
    def _execute(self, run: mf.Run, params: Params, sealer: mf.Sealer) -> RunResult:
        try:
            return self._execute_steps(run, params)
        finally:
            self._stop(run, sealer)

    def _execute_steps(self, run: mf.Run, params: Params) -> RunResult:
        scrub_file = scrub_file_for(run.path)
        os.environ[hsecrets.SCRUB_FILE_ENV] = str(scrub_file)
        os.environ[HEADLESS_ENV] = "1"
        if self.auto_approve:
            os.environ[AUTO_APPROVE_ENV] = self.auto_approve
        else:
            os.environ.pop(AUTO_APPROVE_ENV, None)
        kernels = StepKernels(self.kernel_name, run.path, self.live)
        handler: logging.FileHandler | None = None
        pm_logger = logging.getLogger("papermill")
        try:
            with run.update() as data:
                # attempts left "running" by a runner that died (SIGKILL, power loss)
                for s in data.steps:
                    if s.status == "running":
                        s.status = "interrupted"
                        for a in s.attempts:
                            if a.status == "running":
                                a.status = "interrupted"
                                a.note = "the runner stopped without recording an end (killed?)"
                                mf.hash_attempt(run, a)
                data.status = "running"
                data.runner = {"pid": os.getpid(), "machine": socket.gethostname(),
                               "started": mf.utcnow(), "operator": mf.operator_name()}
                data.sessions = [*data.sessions, dict(data.runner)]
                steps = [s.model_copy() for s in data.steps]
            todo = [s for s in steps if s.status not in mf.DONE]
            if todo:
                # the environment every kernel inherits is set: the first step's kernel starts now, and boots
                # (~0.4 s, then PRELOADED) while papermill is imported
                kernels.prestart()
            _register_writer()
            _resolve_param_secrets(params)
            handler = logging.FileHandler(run.path / "run.log")
            handler.addFilter(_ScrubFilter())
            handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            pm_logger.addHandler(handler)
            pm_logger.setLevel(logging.INFO)
            for h in logging.getLogger().handlers:
                h.addFilter(_ScrubFilter())
            done = len(steps) - len(todo)
            if done:
                self.progress(f"  {done} step(s) already succeeded or skipped, not run again")
            for i, s in enumerate(steps, 1):
                if s.status in mf.DONE:
                    continue
                more = s is not todo[-1]
                result = self._run_step(run, s, i, len(steps), kernels, more=more)
                if result is not None:  # why it stopped (each failed check's reason), the recap, what next
                    result.message = "\n".join([*result.report, "Recap:", *render_recap(run.read()),
                                                result.message])
                    return result
            with run.update() as data:
                data.status = "succeeded"
                data.finished = mf.utcnow()
            return RunResult(run, "succeeded", EXIT_OK, self._summary(run))
        finally:
            kernels.close()
            if handler is not None:
                pm_logger.removeHandler(handler)
                handler.close()

    def _run_step(self, run: mf.Run, s: StepEntry, i: int, n: int, kernels: StepKernels, *,
                  more: bool) -> RunResult | None:
        jupyter.load_papermill()
        import papermill as pm  # noqa: PLC0415 - jupyter stack is heavy, loaded when a notebook runs
        from papermill.exceptions import PapermillExecutionError  # noqa: PLC0415 - jupyter stack is heavy, loaded when a notebook runs

        key = s.key
        out = run.path / s.notebook
        with run.update() as data:
            step = data.step(key)
            if out.exists() and step.attempts:
                prev = step.attempts[-1]
                kept = out.with_name(f"{out.stem}.attempt-{prev.n}{out.suffix}")
                os.replace(out, kept)
                prev.notebook = kept.name
                prev.sha256 = mf.sha256_file(kept)
            attempt = open_attempt(step)
            # what a gate in this step approves includes the code that runs (hcbpg.engine.signing.plan_digest)
            step.code_sha256 = mf.code_sha256(self.nb_dir / s.notebook)
            dry_run = data.dry_run
            env = data.environment
            # the step's inputs as the run recorded them (-p NAME=VALUE), for the notebook's parameters
            recorded = dict(data.selection.get("inputs") or {})
        takes = step_inputs(self.nb_dir).get(s.notebook, ())
        inputs = {k: str(v) for k, v in recorded.items() if k in takes}
        label = f"[{i}/{n}] {key}: {s.title}"
        self.progress(label + (f" (attempt {attempt.n})" if attempt.n > 1 else ""))
        run.log(f"step {key} attempt {attempt.n} started")
        t0 = time.monotonic()
        status, error, exit_code = "succeeded", None, None
        skipped: str | None = None  # why the step ended itself early (rb.skip)
        interrupted = False
        cells = CellOutput(self.progress) if self.stream_cells else None
        kernel = None
        try:
            kernel = kernels.take(more=more)  # the kernel and its progress file (the live view of the step's work)
            km, follower = kernel
            follower.start()
            run_interruptible(lambda: pm.execute_notebook(
                str(self.nb_dir / s.notebook), SCHEME + str(out),
                parameters={**inputs, "env": env, "run_id": run.run_id, "run_dir": str(run.path), "dry_run": dry_run},
                kernel_name=self.kernel_name, progress_bar=self.progress_bar,
                log_output=self.log_output, cwd=str(run.path), request_save_on_cell_execute=True,
                km=km, stdout_file=cells, stderr_file=cells,
            ), kernels.made)
        except PapermillExecutionError as exc:
            error = {"ename": exc.ename, "evalue": hsecrets.scrub(str(exc.evalue))[:mf.MAX_EVALUE],
                     "cell_index": exc.cell_index}
            if exc.ename == "StepAlreadyDone":  # rb.skip(): nothing to do, recorded as skipped (done)
                status, error = "skipped", None
                skipped = hsecrets.scrub(str(exc.evalue))[:mf.MAX_EVALUE]
            elif exc.ename == "GateRequired":
                status, exit_code = "awaiting-approval", EXIT_WAITING
            else:
                status, exit_code = "failed", EXIT_FAILED
        except KeyboardInterrupt:
            status, exit_code, interrupted = "interrupted", EXIT_INTERRUPTED, True
            error = {"ename": "KeyboardInterrupt", "evalue": "interrupted by the operator (Ctrl-C)"}
        except Exception as exc:  # noqa: BLE001 - kernel died, I/O error: record, then report
            status, exit_code = "failed", EXIT_FAILED
            error = {"ename": type(exc).__name__, "evalue": hsecrets.scrub(str(exc))[:mf.MAX_EVALUE]}
        finally:
            if kernel is not None:
                with contextlib.suppress(Exception):  # a kernel that will not end does not change the step's record
                    kernels.done(kernel, interrupted=interrupted)
            if cells is not None:
                cells.close()
        duration = round(time.monotonic() - t0, 3)
        with run.update() as data:
            step = data.step(key)
            att = step.attempts[-1]
            att.status, att.end, att.duration_s = status, mf.utcnow(), duration
            if error:
                att.error = error
            if skipped is not None:
                att.note = f"skipped: {skipped}"
            mf.hash_attempt(run, att)
            step.status = status
            step.end = att.end
            step.duration_s = round(sum(a.duration_s or 0 for a in step.attempts), 3)
            step.sha256 = att.sha256
            if step.changes is None and status in mf.DONE:
                step.changes = self._changes_from_notebook(out)
            if status not in mf.DONE:
                data.status = status
                data.finished = None if status != "failed" else mf.utcnow()
            n_changes = step.changes
            made = [dict(c) for c in step.diffs]
            # a run of a saved plan stops after a step that changed what the plan does not list
            expected = (data.selection.get("plan") or {}).get("expected") if status in mf.DONE else None
            beyond = changes.beyond_plan(expected, key, made) if expected is not None else []
            if beyond:
                data.status, data.finished = "failed", mf.utcnow()
            gates = {name: g.dump() for name, g in data.gates.items()}
        run.log(f"step {key} attempt {attempt.n} {status} in {duration}s")
        if self.show_diff and made:
            for line in changes.render_changes(made, dry_run=dry_run):
                self.progress(line)
        if status == "skipped":
            self.progress(f"      skipped in {duration:.1f}s, nothing to do: {skipped}")
        if status == "succeeded":
            self.progress(f"      done in {duration:.1f}s, "
                          + ("no changes" if not n_changes else f"{n_changes} change(s)"))
        if status in mf.DONE:
            return self._beyond_plan(run, key, beyond) if beyond else None
        assert exit_code is not None  # every status but "succeeded" and "skipped" set it above
        if status == "awaiting-approval":
            waiting = [g for g, v in gates.items() if not v.get("approved_at") and v.get("step") == key]
            gate = waiting[-1] if waiting else "GATE"
            q = gates.get(gate, {}).get("question", "")
            msg = (f"Run {run.run_id} is waiting for approval of gate '{gate}' in step {key}:\n"
                   f"  {q}\nWhen it holds, approve and resume:\n"
                   f"  hcbpg approve {run.run_id} {gate} --note 'what you checked'\n"
                   f"  hcbpg resume {run.run_id}")
            return RunResult(run, status, exit_code, msg)
        if interrupted:
            return RunResult(run, status, exit_code,
                             f"Interrupted in step {key}; the record is kept in {run.path}.\n"
                             f"Continue with: hcbpg resume {run.run_id}")
        assert error is not None  # a failure always records its error above
        msg = (f"The executed notebook is {out}.\n"
               f"Fix the cause, then: hcbpg resume {run.run_id}")
        return RunResult(run, status, exit_code, msg, report=render_failure(run.read(), key, error))

    @staticmethod
    def _beyond_plan(run: mf.Run, key: str, extra: list[str]) -> RunResult:
        """Why a run of a saved plan stopped after step *key* (it changed *extra*, which the plan does not list)."""
        run.log(f"step {key} changed what the plan does not list: {', '.join(extra)}")
        return RunResult(run, "failed", EXIT_FAILED,
                         f"Step {key} changed what the saved plan does not list: {', '.join(extra)}. The run "
                         f"stopped after it.\nReview what it changed (hcbpg audit html {run.run_id}), then plan the "
                         f"rest again (hcbpg plan {run.env} --diff --out FILE), or go on: hcbpg resume {run.run_id}")

    @staticmethod
    def _changes_from_notebook(path: Path) -> int | None:
        try:
            scraps = read_scraps(path)
            return scraps["hcbpg_summary"]["changes"] if "hcbpg_summary" in scraps else None
        except Exception:  # noqa: BLE001
            return None

    def _close(self, run: mf.Run) -> None:
        scrub_file = scrub_file_for(run.path)
        try:
            scrub_file.unlink()
        except FileNotFoundError:
            pass

    def _stop(self, run: mf.Run, sealer: mf.Sealer) -> None:
        """Whenever the runner stops (done, failed, gate, Ctrl-C): drop the scrub registry, seal the record.

        The registry holds every secret of the run in the clear; a resume resolves them again."""
        self._close(run)
        try:
            data = run.read()
        except AuditError:
            return
        if data.get("status") == "running":  # stopped by an error of ours, not a step's
            with run.update() as d:
                d.status = "interrupted"
        mf.seal(run, sealer)

    def _summary(self, run: mf.Run) -> str:
        data = run.read()
        lines = [f"Run {run.run_id} of {run.env} {data['status']}:"]
        lines += render_recap(data)
        lines.append(f"Audit record: {run.path}")
        if run.env not in ("lab",) and not run.env.startswith("test"):
            shown = run.path.relative_to(self.home) if run.path.is_relative_to(self.home) else run.path
            lines.append(f"This is a {run.env} run: commit {run.path} as the record of the change "
                         f"(git add {shown}).")
        return "\n".join(lines)


def drop_stale_registries(base: Path, env: str, *, keep: mf.Run) -> None:
    """Remove the scrub registries that runs of *env* killed before they stopped left behind (every
    secret of such a run, in the clear); the run being started or resumed keeps its own."""
    for r in mf.list_runs(base, env):
        if r.path != keep.path and not mf.is_open(r):
            scrub_file_for(r.path).unlink(missing_ok=True)


def refuse_unless_verified(base: Path, env: str, trust: signing.Trust, *, doing: str) -> None:
    """Verify *env*'s whole record (signatures, links, head, anchor, every notebook's sha256) before anything
    is created, sealed or changed; a newest run whose runner died passes only as hcbpg last wrote it here."""
    problems = mf.verify_env(base, env, trust, orphan_ok=True)
    if problems:
        raise AuditError(f"{doing}: the audit record of {env} does not verify ({len(problems)} problem(s)); "
                         f"first: {problems[0]}",
                         hint=f"See `hcbpg audit verify {env}`. A record changed outside hcbpg cannot be trusted for "
                              "its approvals or its values: restore it from git (or, for the lab, start a new "
                              "chain: `hcbpg rehearse` sets the old record aside).")


def sealer_for(params: Params, env: str, base: Path) -> mf.Sealer:
    """The operator's signing key and the environment's trust files, checked to sign and verify now."""
    trust = signing.trust_for(params, env, base)
    signing.check_can_sign(params, trust)
    return mf.Sealer(trust, signing.signing_key(params))


def approve(run_id: str, gate: str, *, note: str | None, base: Path | None = None) -> mf.Run:
    """Record who approved a gate of a waiting run, with a signed statement bound to the params and plan."""
    b = base or home()
    run = mf.find_run(b, run_id)
    if not mf.is_newest(run, b):
        raise UsageError(f"run {run.run_id} is not the newest run of {run.env}; it cannot be approved")
    with env_lock(run.env, purpose="approve", base=b) as lock:
        lock.note_run(run.run_id)
        params = load_params(run.env, b)
        sealer = sealer_for(params, run.env, b)
        problems = audit.verify_run(b, run)
        if problems:
            raise AuditError(f"gate '{gate}' of run {run.run_id} is not approved: the audit record of {run.env} "
                             f"does not verify; first: {problems[0]}", hint=f"See `hcbpg audit verify {run.env}`.")
        if run.unlike_written() is not None:  # sealed elsewhere (another machine): its signature vouches
            mf.adopt_verified(run, sealer.trust)
        data = run.read()
        gates = data.get("gates", {})
        gate = mf.gate_named(gate, gates)  # the name as recorded (an old snake_case name is accepted)
        if gate not in gates:
            waiting = [g for g, v in gates.items() if not v.get("approved_at")]
            raise UsageError(f"run {run.run_id} has no gate '{gate}' waiting"
                             + (f"; waiting: {', '.join(waiting)}" if waiting else ""))
        g = gates[gate]
        if g.get("approved_at"):
            raise UsageError(f"gate '{gate}' was already approved by {g['approved_by']} at {g['approved_at']}")
        sha = params_sha256(run.env, b)
        if g.get("params_sha256") and g["params_sha256"] != sha:
            raise UsageError(f"params/{run.env}.yaml changed since gate '{gate}' asked; the question was put "
                             "for other params", hint=f"Resume first (hcbpg resume {run.run_id}): the gate asks "
                                                      "again with the params as they are now.")
        fields = {"run_id": run.run_id, "environment": run.env, "gate": gate, "step": g.get("step"),
                  "question": g.get("question"), "params_sha256": sha, "plan_sha256": g.get("plan_sha256"),
                  "approved_at": mf.utcnow(), "note": note, "via": "hcbpg approve"}
        proof = signing.sign_approval(fields, params, sealer.trust)
        with run.update() as record:
            g2 = record.gates[gate]
            g2.approved_by, g2.approved_at, g2.note = proof["principal"], fields["approved_at"], note
            g2.via, g2.machine, g2.operator, g2.proof = "hcbpg approve", socket.gethostname(), mf.operator_name(), proof
        run.log(f"gate {gate} approved by {proof['principal']} (key {proof['key_fingerprint']})")
        mf.seal(run, sealer)
    return run


def change_signers(env: str, *, base: Path | None = None) -> mf.Run:
    """Record in *env*'s chain that its allowed-signers file changed, signed by a key allowed before the change."""
    b = base or home()
    with env_lock(env, purpose="signers change", base=b):
        params = load_params(env, b)
        trust = signing.trust_for(params, env, b)
        problems = mf.verify_env(b, env, trust, signers_change=True)
        if problems:
            raise AuditError(f"the signers change of {env} is not recorded: its audit record does not verify; "
                             f"first: {problems[0]}", hint=f"See `hcbpg audit verify {env}`.")
        sealer = mf.Sealer(trust, signing.signing_key(params))
        return chain.record_signers_change(b, env, sealer, params_sha256=params_sha256(env, b),
                                        repo=notebooks_dir().parent)


def install_sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C so the step is marked interrupted and the record kept."""
    def handler(signum, frame):  # noqa: ANN001, ARG001
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
