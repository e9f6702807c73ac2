"""Guided runs: the operator executes the steps cell by cell in JupyterLab, with the same audit record as a
headless run.

Pipeline: select steps → create the run directory (``mode: guided``, linked into the hash
chain) → prepare parameterized copies of the steps' notebooks there (papermill, not
executed, written through the scrubbing writer) → start JupyterLab on that directory
(localhost, random token, the run's scrub registry in its environment) → the kernels
record each step as it runs (see ``hcbpg.runbook``) → when JupyterLab stops,
``finish``: scrub every file of the run again, hash the notebooks into the manifest, close
the run.  The committed notebooks are only ever read.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets as _stdlib_secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hcbpg import secrets as hsecrets
from hcbpg.engine import jupyter
from hcbpg.engine import manifest as mf
from hcbpg.engine.catalogue import load_steps_for, notebooks_dir, select
from hcbpg.engine.locks import env_lock
from hcbpg.engine.runbook import AUTO_APPROVE_ENV, GUIDED_ENV, HEADLESS_ENV, scrub_file_for
from hcbpg.engine.runner import (
    SCHEME,
    _register_writer,
    _resolve_param_secrets,
    refuse_if_open_in_jupyterlab,
    refuse_unless_verified,
    sealer_for,
)
from hcbpg.errors import HcbpgError, UsageError
from hcbpg.params import home, load_params, params_sha256

STARTUP_DEADLINE_S = 120.0
STOP_DEADLINE_S = 30.0
#: JupyterLab front-end plugins a guided run does not want (a news prompt over the runbook)
DISABLED_LAB_PLUGINS = ("@jupyterlab/apputils-extension:announcements",)


@dataclass
class GuidedRun:
    """A prepared guided run: its record and the notebooks the operator opens."""

    run: mf.Run
    notebooks: list[str]

    @property
    def state_dir(self) -> Path:
        return guide_state_dir(self.run)


def guide_state_dir(run: mf.Run) -> Path:
    """Per-run working files of the Jupyter server (config, checkpoints, log): outside ``outputs/``."""
    return scrub_file_for(run.path).parent.parent / "guide" / run.path.name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- prepare ----------------------------------------------------------------------------

def prepare(env: str, *, start: str | None = None, until: str | None = None,
            base: Path | None = None, nb_dir: Path | None = None) -> GuidedRun:
    """Create a guided run and its parameterized (not executed) notebook copies."""
    jupyter.load_papermill()
    import papermill as pm  # noqa: PLC0415 - papermill (jupyter) is heavy; only a guided run needs it

    b = base or home()
    nbd = nb_dir or notebooks_dir()
    params = load_params(env, b)  # validates before anything is created
    refuse_if_open_in_jupyterlab(b, env)
    steps = select(load_steps_for(params, nbd), start=start, until=until)
    if not steps:
        raise UsageError("no steps selected")
    for s in steps:
        if not (nbd / s.notebook).is_file():
            raise UsageError(f"step {s.key}: notebook {nbd / s.notebook} is missing")
    sealer = sealer_for(params, env, b)
    refuse_unless_verified(b, env, sealer.trust, doing=f"no guided run of {env} was started")
    run = mf.create_run(b, env, steps=[s.as_dict() for s in steps], mode="guided", dry_run=False,
                        params_sha256=params_sha256(env, b),
                        selection={"from": start, "until": until, "only": None}, repo=nbd.parent,
                        seal_with=sealer)
    with run.update() as data:  # what a gate approves includes the step's code
        for st, s in zip(data.steps, steps, strict=True):
            st.code_sha256 = mf.code_sha256(nbd / s.notebook)
    os.environ[hsecrets.SCRUB_FILE_ENV] = str(scrub_file_for(run.path))
    _resolve_param_secrets(params)
    _register_writer()
    for s in steps:
        pm.execute_notebook(
            str(nbd / s.notebook), SCHEME + str(run.path / s.notebook),
            parameters={"env": env, "run_id": run.run_id, "run_dir": str(run.path), "dry_run": False},
            prepare_only=True, progress_bar=False, cwd=str(run.path),
        )
    run.log(f"guided run prepared by {mf.operator_name()}: {', '.join(s.key for s in steps)}")
    return GuidedRun(run, [s.notebook for s in steps])


# -- the Jupyter server -------------------------------------------------------------------

def _write_server_config(g: GuidedRun) -> tuple[Path, Path]:
    """A Jupyter config for this run only: checkpoints outside the run, no terminals, no LSP."""
    d = g.state_dir
    (d / "checkpoints").mkdir(parents=True, exist_ok=True, mode=0o700)
    (d / "workspaces").mkdir(exist_ok=True, mode=0o700)
    labconfig = d / "jupyter-config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {p: True for p in DISABLED_LAB_PLUGINS}}, indent=1))
    config = {
        "ServerApp": {
            "ip": "127.0.0.1",
            "open_browser": False,
            "root_dir": str(g.run.path),
            # a terminal would act outside the record; everything goes through the notebooks
            "terminals_enabled": False,
            "jpserver_extensions": {"jupyter_lsp": False},
        },
        # an absolute dir: checkpoints (copies of the notebooks) stay out of the run directory
        "FileCheckpoints": {"checkpoint_dir": str(d / "checkpoints")},
        "LabApp": {"workspaces_dir": str(d / "workspaces"),
                   "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                   "news_url": None},
    }
    path = d / "jupyter_server_config.json"
    path.write_text(json.dumps(config, indent=1))
    return path, d / "jupyter-config"


def _server_env(g: GuidedRun, token: str, config_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in (HEADLESS_ENV, AUTO_APPROVE_ENV):
        env.pop(var, None)
    env.update({
        GUIDED_ENV: "1",
        hsecrets.SCRUB_FILE_ENV: str(scrub_file_for(g.run.path)),
        "HCBPG_HOME": str(home()),
        # the token is passed in the environment, not on the command line `ps` shows
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_PATH": os.pathsep.join(filter(None, [str(config_path),
                                                             os.environ.get("JUPYTER_CONFIG_PATH")])),
    })
    return env


def _wait_ready(proc: subprocess.Popen[bytes], port: int, token: str, deadline_s: float,
                stop: Callable[[], bool] = lambda: False) -> None:
    deadline = time.monotonic() + deadline_s
    url = f"http://127.0.0.1:{port}/api/status"
    while time.monotonic() < deadline:
        if stop():
            raise HcbpgError("stopped by the operator before JupyterLab was up")
        if proc.poll() is not None:
            raise HcbpgError(f"JupyterLab exited during startup with code {proc.returncode}")
        req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise HcbpgError(f"JupyterLab did not answer on port {port} within {deadline_s:.0f}s")


def serve(g: GuidedRun, *, port: int | None = None, progress: Callable[[str], None] = print,
          deadline_s: float = STARTUP_DEADLINE_S) -> int:
    """Run JupyterLab on the run directory until it stops, then finish the run; returns the exit code."""
    port = port or _free_port()
    token = hsecrets.register(_stdlib_secrets.token_hex(24))  # scrubbed from the record like any secret
    config_path, config_dir = _write_server_config(g)
    log_path = g.state_dir / "jupyter.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--port-retries=0",
           f"--config={config_path}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, cwd=str(g.run.path), env=_server_env(g, token, config_dir),
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
    with g.run.update() as data:
        data.status = "running"
        data.runner = {"pid": os.getpid(), "machine": socket.gethostname(), "started": mf.utcnow(),
                       "operator": mf.operator_name(), "kind": "guide", "jupyter_pid": proc.pid, "port": port}
        data.sessions = [*data.sessions, dict(data.runner)]
    g.run.log(f"JupyterLab started (pid {proc.pid}, port {port})")

    stopping = {"signal": None}

    def on_signal(signum, frame):  # noqa: ANN001, ARG001
        stopping["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            _wait_ready(proc, port, token, deadline_s, stop=lambda: stopping["signal"] is not None)
        except HcbpgError as exc:
            _stop(proc)
            g.run.log(f"JupyterLab did not start: {exc}")
            finish(g.run.run_id, base=home(), progress=progress)
            raise HcbpgError(f"{exc}; the run was closed with its steps pending",
                             hint=f"See {g.run.path / 'jupyter.log'}, fix the cause and start a new guided run, "
                                  f"or run the steps headless: hcbpg resume {g.run.run_id}") from None
        first = g.notebooks[0]
        progress(f"JupyterLab is serving guided run {g.run.run_id} ({g.run.env}) from {g.run.path}\n"
                 f"  open: http://127.0.0.1:{port}/lab/tree/{first}?token={token}\n"
                 f"  steps: {', '.join(g.notebooks)}\n"
                 f"Run each notebook top to bottom (Run > Run All Cells); gates ask you in place.\n"
                 f"When done: File > Shut Down (or Ctrl-C here); the run is then hashed and closed.\n"
                 f"  (from another shell: hcbpg runs {g.run.env} shows the progress)")
        while proc.poll() is None and stopping["signal"] is None:
            time.sleep(0.2)
        if proc.poll() is None:
            progress("stopping JupyterLab (its kernels are shut down first) ...")
            _stop(proc)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    g.run.log(f"JupyterLab stopped (exit code {proc.returncode})")
    result = finish(g.run.run_id, base=home(), progress=progress)
    return result


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets the server shut its kernels down and save nothing itself; SIGKILL at the deadline."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- finish ---------------------------------------------------------------------------------

def _scrub_tree(root: Path) -> list[str]:
    """Scrub every text file under *root* (except the manifest, always written scrubbed); returns what changed."""
    changed = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.is_symlink() or p.name in ("manifest.json", ".manifest.lock"):
            continue
        try:
            text = p.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        clean = hsecrets.scrub(text)
        if clean != text:
            mf.atomic_write_text(p, clean, mode=p.stat().st_mode & 0o777)
            changed.append(str(p.relative_to(root)))
    return changed


def finish(run_id: str, *, base: Path | None = None, progress: Callable[[str], None] = print) -> int:
    """Scrub, hash and close a guided run; afterwards `hcbpg audit verify` covers it. Returns the exit code."""
    b = base or home()
    run = mf.find_run(b, run_id)
    data = run.read()
    if data.get("mode") != "guided":
        raise UsageError(f"run {run.run_id} is a {data.get('mode')} run, not a guided one",
                         hint=f"Continue it with: hcbpg resume {run.run_id}")
    runner = data.get("runner") or {}
    if runner.get("kind") != "guide" or data.get("guide_finished"):
        progress(f"guided run {run.run_id} was already finished ({data['status']}); nothing to do")
        return 0
    if runner.get("pid") != os.getpid() and mf.pid_alive(runner.get("jupyter_pid"), runner.get("machine")):
        raise UsageError(f"JupyterLab of run {run.run_id} is still running (pid {runner['jupyter_pid']})",
                         hint="Shut it down (File > Shut Down, or Ctrl-C in `hcbpg guide`): that finishes the run.")
    if not mf.is_newest(run, b):
        raise UsageError(f"run {run.run_id} is no longer the newest run of {run.env}: finishing it would "
                         "rewrite a manifest that a later run's hash chain covers")
    sealer = sealer_for(load_params(run.env, b), run.env, b)  # refuses before anything is changed
    scrub_file = scrub_file_for(run.path)
    os.environ[hsecrets.SCRUB_FILE_ENV] = str(scrub_file)
    hsecrets.SCRUBBER.load_file(scrub_file)
    state = guide_state_dir(run)
    log = state / "jupyter.log"
    if log.is_file():  # the server's own log, scrubbed (the token is registered), as part of the record
        mf.atomic_write_text(run.path / "jupyter.log", log.read_text(errors="replace"))
    scrubbed = _scrub_tree(run.path)
    now = mf.utcnow()
    with run.update() as d:
        for s in d.steps:
            if not s.attempts:
                continue  # pending: its prepared copy stays, a resume replaces it
            att = s.attempts[-1]
            if att.status == "running":
                att.status = "interrupted"
                att.note = "the guided session ended before the step finished (rb.finish() did not run)"
            att.end = att.end or now
            mf.hash_attempt(run, att)
            s.status = att.status
            s.end = att.end
            s.sha256 = att.sha256
        statuses = [s.status for s in d.steps]
        if all(st in mf.DONE for st in statuses):
            d.status, d.finished = "succeeded", now
        elif "failed" in statuses:
            d.status, d.finished = "failed", now
        elif "awaiting-approval" in statuses:
            d.status, d.finished = "awaiting-approval", None
        else:
            d.status, d.finished = "interrupted", None
        recorded = {a.notebook for st in d.steps for a in st.attempts if a.notebook}
        recorded |= {st.notebook for st in d.steps}
        # files the operator made in JupyterLab (or a notebook wrote): named and hashed, for the reader
        other = {str(f.relative_to(run.path)): mf.sha256_file(f) for f in sorted(run.path.rglob("*"))
                 if f.is_file() and f.name not in ("manifest.json", ".manifest.lock", "run.log", "jupyter.log")
                 and str(f.relative_to(run.path)) not in recorded}
        d.guide_finished = {"at": now, "by": mf.operator_name(), "scrubbed_files": scrubbed, "other_files": other}
        if d.sessions:
            d.sessions[-1]["ended"] = now
        steps = [(s.key, s.status) for s in d.steps]
        status = d.status
    run.log(f"guided run finished by {mf.operator_name()}: {status}")
    mf.seal(run, sealer)
    scrub_file.unlink(missing_ok=True)
    shutil.rmtree(state, ignore_errors=True)
    lines = [f"Guided run {run.run_id} of {run.env} finished: {status}"]
    for key, st_status in steps:
        lines.append(f"  {key:<28} {st_status}")
    lines.append(f"Audit record: {run.path} (hcbpg audit verify {run.env})")
    if status != "succeeded":
        lines.append(f"Run the steps not yet done headless with: hcbpg resume {run.run_id}")
    progress("\n".join(lines))
    return 0 if status == "succeeded" else (3 if status == "awaiting-approval" else
                                            1 if status == "failed" else 0)


# -- CLI ---------------------------------------------------------------------------------------

def cmd_guide(args: argparse.Namespace) -> int:
    if args.target == "finish":
        if not args.run_id:
            raise UsageError("usage: hcbpg guide finish RUN_ID")
        return finish(args.run_id)
    if args.run_id:
        raise UsageError(f"unexpected argument {args.run_id!r}",
                         hint="Start a guided run with: hcbpg guide ENV [--from STEP] [--until STEP]")
    with env_lock(args.target, purpose="guided run", base=home()) as lock:  # the whole JupyterLab session
        g = prepare(args.target, start=args.start, until=args.until)
        lock.note_run(g.run.run_id)
        print(f"hcbpg guided run of {g.run.env}: {len(g.notebooks)} step(s), run {g.run.run_id}\n"
              f"  record: {g.run.path}", flush=True)
        return serve(g, port=args.port, progress=lambda line: print(line, flush=True))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "guide", help="run steps by hand in JupyterLab, recorded like a headless run",
        description="hcbpg guide ENV [--from STEP] [--until STEP]: prepare a guided run and serve it in "
                    "JupyterLab; hcbpg guide finish RUN_ID: scrub, hash and close it.")
    p.add_argument("target", metavar="ENV|finish",
                   help="the environment (params/ENV.yaml) to prepare a guided run of, or `finish` to close one")
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="with finish: the guided run's id")
    p.add_argument("--from", dest="start", metavar="STEP", help="the first step (number, key or name)")
    p.add_argument("--until", metavar="STEP", help="the last step")
    p.add_argument("--port", type=int, help="port for JupyterLab on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=cmd_guide)
