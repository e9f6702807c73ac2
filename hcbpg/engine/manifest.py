"""Run directories and their ``manifest.json``: the tamper-evident audit record of every run.

Layout: ``outputs/<env>/<UTC timestamp>_<run id>/`` holds one executed notebook per step
(earlier attempts kept as ``NN_name.attempt-K.ipynb``), ``manifest.json`` and ``run.log``.
Each manifest names the previous run of its environment and the sha256 of that run's
manifest, so the runs of one environment form a hash chain; ``outputs/<env>/HEAD`` names
the newest run so that removing it is noticed too.  Every write goes through the scrubber.

Whenever a run stops (done, failed, at a gate, interrupted) its manifest is *sealed*: the
sha256 of ``run.log`` is written into it, the manifest is signed with the operator's SSH key
(``manifest.json.sig``, see :mod:`hcbpg.engine.signing`) and the environment's head file outside
``outputs/`` (``params/<env>.audit-head``) records that run and its manifest's sha256.  So a
rewrite of ``outputs/`` (notebook, hash, later manifests and ``HEAD`` together) breaks a
signature, and removing the newest runs leaves the head naming a run that is gone.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import getpass
import hashlib
import json
import os
import secrets as _stdlib_secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbpg import secrets as hsecrets
from hcbpg.engine import signing
from hcbpg.errors import AuditError, UsageError
from hcbpg.procs import process_alive

FORMAT = 1
TERMINAL = {"succeeded", "failed"}
SIG_NAME = "manifest.json.sig"


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str) -> _dt.datetime:
    return _dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=_dt.timezone.utc)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def code_sha256(notebook: Path) -> str:
    """sha256 of a notebook's code (its code cells but the parameters cell): what a step will do."""
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"
             and "parameters" not in c.get("metadata", {}).get("tags", [])
             and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    code = "\n\x00".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)
    return hashlib.sha256(code.encode()).hexdigest()


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Scrub *text* and write it atomically (tmp file + rename)."""
    text = hsecrets.scrub(text)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def operator_name() -> str:
    return os.environ.get("HCBPG_OPERATOR") or getpass.getuser()


def git_state(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def outputs_dir(home: Path) -> Path:
    return home / "outputs"


def env_dir(home: Path, env: str) -> Path:
    return outputs_dir(home) / env


def new_run_id() -> str:
    return _stdlib_secrets.token_hex(4)


@dataclass
class Run:
    """One run directory and its manifest."""

    path: Path

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def run_id(self) -> str:
        return self.path.name.split("_", 1)[1]

    @property
    def env(self) -> str:
        return self.path.parent.name

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise AuditError(f"{self.manifest_path} is missing") from None
        except json.JSONDecodeError as exc:
            raise AuditError(f"{self.manifest_path} is not valid JSON: {exc}") from None

    def write(self, data: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(data, indent=2, sort_keys=False) + "\n")

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the manifest under an exclusive lock (runner and kernels share it)."""
        lock = self.path / ".manifest.lock"
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                data = self.read()
                yield data
                self.write(data)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def step(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        for s in data["steps"]:
            if s["key"] == key:
                return s
        raise UsageError(f"run {self.run_id} has no step {key}")

    def log(self, line: str) -> None:
        """Append a (scrubbed) line to the run's log."""
        with open(self.path / "run.log", "a") as fh:
            fh.write(f"{utcnow()} {hsecrets.scrub(line)}\n")


def list_runs(home: Path, env: str | None = None) -> list[Run]:
    """Runs, oldest first (directory names start with a UTC timestamp)."""
    base = outputs_dir(home)
    envs = [env] if env else sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    runs: list[Run] = []
    for e in envs:
        d = base / e
        if d.is_dir():
            runs += [Run(p) for p in sorted(d.iterdir()) if p.is_dir() and "_" in p.name
                     and not p.name.startswith(".")]
    return runs


def find_run(home: Path, run_id: str) -> Run:
    matches = [r for r in list_runs(home) if r.run_id == run_id or r.path.name == run_id]
    if not matches:
        raise UsageError(f"no run with id {run_id} under {outputs_dir(home)}",
                         hint="`hcbpg runs` lists the runs.")
    if len(matches) > 1:
        raise UsageError(f"run id {run_id} is ambiguous: " + ", ".join(str(m.path) for m in matches))
    return matches[0]


def create_run(home: Path, env: str, *, steps: list[dict[str, Any]], mode: str, dry_run: bool,
               params_sha256: str, selection: dict[str, Any], repo: Path,
               seal_with: "Sealer | None" = None) -> Run:
    """Create the run directory and its first manifest, linked to the previous run.

    *seal_with*: seal the previous run first when its runner stopped without sealing it (killed)."""
    edir = env_dir(home, env)
    edir.mkdir(parents=True, exist_ok=True)
    with open(edir / ".chain.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        previous = list_runs(home, env)
        prev = None
        if previous:
            p = previous[-1]
            if seal_with is not None and needs_orphan_seal(p):
                seal_orphan(p, seal_with)
            prev = {"run_id": p.run_id, "dir": p.path.name, "manifest_sha256": sha256_file(p.manifest_path)}
        run_id = new_run_id()
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        run = Run(edir / f"{stamp}_{run_id}")
        run.path.mkdir()
        data = {
            "format": FORMAT,
            "run_id": run_id,
            "environment": env,
            "mode": mode,
            "dry_run": dry_run,
            "status": "created",
            "created": utcnow(),
            "finished": None,
            "operator": operator_name(),
            "machine": socket.gethostname(),
            "git": git_state(repo),
            "params_sha256": params_sha256,
            "selection": selection,
            "previous": prev,
            "gates": {},
            "runner": None,
            "steps": [
                {"key": s["key"], "title": s["title"], "notebook": s["notebook"], "status": "pending",
                 "attempts": [], "changes": None, "sha256": None}
                for s in steps
            ],
        }
        run.write(data)
        atomic_write_text(edir / "HEAD", run.path.name + "\n")
    return run


def is_newest(run: Run, home: Path) -> bool:
    runs = list_runs(home, run.env)
    return bool(runs) and runs[-1].path == run.path


# verification -----------------------------------------------------------------------

def verify_env(home: Path, env: str, trust: signing.Trust | None = None) -> list[str]:
    """Recompute every hash and the chain of one environment; returns problems, first first.

    With *trust*: also every manifest's signature, the hash of every ``run.log`` and the chain
    head recorded outside ``outputs/``."""
    problems: list[str] = []
    runs = list_runs(home, env)
    if trust is not None:
        problems += verify_trust(runs, trust)
    by_dir = {r.path.name: r for r in runs}
    head = env_dir(home, env) / "HEAD"
    if runs:
        if not head.is_file():
            problems.append(f"{head} is missing: the chain head of {env} was removed")
        else:
            name = head.read_text().strip()
            if name not in by_dir:
                problems.append(f"{env_dir(home, env) / name}: the newest run named by HEAD was removed")
            elif name != runs[-1].path.name:
                problems.append(f"{head}: names {name}, but the newest run is {runs[-1].path.name}")
    for i, run in enumerate(runs):
        try:
            data = run.read()
        except AuditError as exc:
            problems.append(str(exc))
            continue
        prev = data.get("previous")
        expected_prev = runs[i - 1] if i else None
        if prev is None and expected_prev is not None:
            problems.append(f"{run.manifest_path}: has no link to the previous run {expected_prev.path.name}")
        elif prev is not None:
            if prev["dir"] not in by_dir:
                problems.append(f"{env_dir(home, env) / prev['dir']}: run {prev['run_id']} was removed "
                                f"(named as previous by {run.manifest_path})")
            else:
                actual = sha256_file(by_dir[prev["dir"]].manifest_path)
                if actual != prev["manifest_sha256"]:
                    problems.append(f"{by_dir[prev['dir']].manifest_path}: changed after the next run "
                                    f"started (sha256 {actual[:12]}…, recorded {prev['manifest_sha256'][:12]}…)")
                if expected_prev is not None and prev["dir"] != expected_prev.path.name:
                    problems.append(f"{run.manifest_path}: links to {prev['dir']} but the run before it "
                                    f"is {expected_prev.path.name}")
        open_run = is_open(run, data)
        for step in data.get("steps", []):
            for att in step.get("attempts", []):
                if att.get("status") == "running" and open_run:
                    continue  # being written now
                if not att.get("notebook") and str(att.get("note", "")).startswith("superseded"):
                    continue  # a guided start repeated in the same notebook: its file is the later attempt's
                if not att.get("notebook") or not att.get("sha256"):
                    problems.append(f"{run.manifest_path}: attempt {att.get('n')} of step {step.get('key')} "
                                    "has no hash: its notebook cannot be checked")
                    continue
                f = run.path / att["notebook"]
                if not f.is_file():
                    problems.append(f"{f}: removed (recorded in {run.manifest_path})")
                elif sha256_file(f) != att["sha256"]:
                    problems.append(f"{f}: changed since it was recorded (sha256 mismatch)")
    return problems


# sealing ----------------------------------------------------------------------------

def pid_alive(pid: int | None, machine: str | None) -> bool:
    """True when *pid* runs on this machine (*machine* is where it was recorded)."""
    return pid is not None and pid > 0 and machine == socket.gethostname() and process_alive(pid)


def is_open(run: Run, data: dict[str, Any] | None = None) -> bool:
    """A run whose runner (or JupyterLab) is alive and writing its manifest: not sealed yet, rightly."""
    try:
        d = data if data is not None else run.read()
    except AuditError:
        return False
    r = d.get("runner") or {}
    return d.get("status") == "running" and (pid_alive(r.get("pid"), r.get("machine"))
                                              or pid_alive(r.get("jupyter_pid"), r.get("machine")))


@dataclass(frozen=True)
class Sealer:
    """What seals a run: the environment's trust files and the operator's signing key."""

    trust: signing.Trust
    key: Path


def is_sealed(run: Run) -> bool:
    """The manifest has a signature file and ``run.log`` is hashed in it (not checked here: see verify)."""
    try:
        return (run.path / SIG_NAME).is_file() and "sealed" in run.read()
    except AuditError:
        return False


def needs_orphan_seal(run: Run) -> bool:
    """A run left ``running`` by a runner that died (SIGKILL, power loss), or never sealed at all."""
    try:
        data = run.read()
    except AuditError:
        return False
    if is_open(run, data):
        return False
    return data.get("status") == "running" or not is_sealed(run)


def read_head(trust: signing.Trust) -> tuple[str, str] | None:
    """``(run dir, manifest sha256)`` from the environment's head file; None when there is none."""
    try:
        lines = [ln for ln in trust.head_file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    except FileNotFoundError:
        return None
    if len(lines) != 1 or len(lines[0].split()) != 2:
        raise AuditError(f"{trust.head_file}: expected one line 'RUN_DIR SHA256'")
    name, sha = lines[0].split()
    return name, sha


def write_head(trust: signing.Trust, run: Run, manifest_sha256: str) -> None:
    trust.head_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(trust.head_file, (
        f"# hcbpg audit head of {trust.env}: the newest sealed run and the sha256 of its manifest.json.\n"
        f"# Written at the end of every run; commit it with outputs/{trust.env} (hcbpg audit verify checks it).\n"
        f"{run.path.name} {manifest_sha256}\n"))


def seal(run: Run, sealer: Sealer, *, note: str | None = None) -> None:
    """Hash run.log into the manifest, sign the manifest, record the head outside outputs/."""
    log = run.path / "run.log"
    with run.update() as data:
        data["run_log_sha256"] = sha256_file(log) if log.is_file() else None
        data["sealed"] = {"at": utcnow(), "by": operator_name(), "machine": socket.gethostname(),
                          **({"note": note} if note else {})}
    content = run.manifest_path.read_bytes()
    signature = signing.sign(content, sealer.key, signing.NS_MANIFEST)
    tmp = run.path / f".{SIG_NAME}.{os.getpid()}.tmp"
    tmp.write_text(signature)  # not through the scrubber: a signature is not a secret, and must stay exact
    os.replace(tmp, run.path / SIG_NAME)
    write_head(sealer.trust, run, hashlib.sha256(content).hexdigest())


def seal_orphan(run: Run, sealer: Sealer) -> None:
    """Seal a run whose runner stopped without doing so (SIGKILL, power loss): hash what it left."""
    with run.update() as data:
        for s in data["steps"]:
            for a in s["attempts"]:
                if a["status"] == "running":
                    a["status"] = "interrupted"
                    a["note"] = "the runner stopped without recording an end (killed?)"
                if a.get("notebook") and not a.get("sha256") and (run.path / a["notebook"]).is_file():
                    a["sha256"] = sha256_file(run.path / a["notebook"])
            if s["status"] == "running":
                s["status"] = "interrupted"
        if data["status"] == "running":
            data["status"] = "interrupted"
    seal(run, sealer, note="sealed when the next run started: its runner had stopped without sealing")


def verify_trust(runs: list[Run], trust: signing.Trust) -> list[str]:
    """Signatures, run.log hashes and the head recorded outside outputs/ (problems, first first)."""
    problems: list[str] = []
    by_dir = {r.path.name: r for r in runs}
    for i, run in enumerate(runs):
        try:
            data = run.read()
        except AuditError:
            continue  # reported by the chain check
        newest = i == len(runs) - 1
        if newest and is_open(run, data):
            continue  # its runner is writing it; it is sealed when it stops
        sig = run.path / SIG_NAME
        if not sig.is_file():
            problems.append(f"{run.manifest_path}: not signed ({SIG_NAME} is missing)")
        else:
            try:
                signing.verify(run.manifest_path.read_bytes(), sig.read_text(), trust.allowed_signers,
                               signing.NS_MANIFEST)
            except AuditError as exc:
                problems.append(f"{run.manifest_path}: signature does not hold: {exc.message}")
        log = run.path / "run.log"
        if "run_log_sha256" not in data:
            problems.append(f"{log}: not hashed in {run.manifest_path}")
        elif data["run_log_sha256"] is not None:
            if not log.is_file():
                problems.append(f"{log}: removed (hashed in {run.manifest_path})")
            elif sha256_file(log) != data["run_log_sha256"]:
                problems.append(f"{log}: changed since the run was sealed (sha256 mismatch)")
    try:
        head = read_head(trust)
    except AuditError as exc:
        return problems + [str(exc)]
    if head is None:
        if runs and not (len(runs) == 1 and is_open(runs[0])):  # the first run, still open, has no head yet
            problems.append(f"{trust.head_file}: missing: no record outside outputs/ of the newest run of "
                            f"{trust.env} (restore it from git)")
        return problems
    name, sha = head
    if name not in by_dir:
        problems.append(f"{trust.head_file}: names {name} as the newest sealed run of {trust.env}, "
                        f"and that run was removed from outputs/{trust.env}")
        return problems
    head_run = by_dir[name]
    if not (head_run.path == runs[-1].path and is_open(head_run)):
        actual = sha256_file(head_run.manifest_path)
        if actual != sha:
            problems.append(f"{head_run.manifest_path}: differs from the head recorded in {trust.head_file} "
                            f"(sha256 {actual[:12]}…, recorded {sha[:12]}…)")
    later = runs[[r.path.name for r in runs].index(name) + 1:]
    for r in later:
        if not (r.path == runs[-1].path and is_open(r)):
            problems.append(f"{r.path}: newer than the head recorded in {trust.head_file} ({name})")
    return problems
