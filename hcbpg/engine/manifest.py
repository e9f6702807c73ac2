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

Nothing in a record is believed about itself: a run is *open* (may be unsigned) only while a
runner holds the environment's lock for it now; every manifest hcbpg writes is kept as written in
the state dir, and only that version is ever updated or sealed; each seal records the allowed
signers it was sealed against (a change of them is a signed ``signers`` record in the chain), its
signature is verified at its seal's time, and this machine's anchor bounds those times.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import fcntl
import getpass
import hashlib
import json
import os
import secrets as _stdlib_secrets
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcbpg import secrets as hsecrets
from hcbpg.engine import signing, state
from hcbpg.engine.manifest_model import Attempt, Manifest, StepEntry, parse_manifest
from hcbpg.errors import AuditError, CloudError, UsageError
from hcbpg.ops import audit_anchor
from hcbpg.procs import process_alive

FORMAT = 1
#: a step's statuses that count as done (a resume does not run it again): ``skipped`` is a step that ended
#: itself early with nothing to do (rb.skip: the other transfer method's step, a migration already live)
DONE = frozenset({"succeeded", "skipped"})
TERMINAL = DONE | {"failed"}
SIG_NAME = "manifest.json.sig"
def gate_key(name: str) -> str:
    """A gate's name in the one style (kebab-case): ``rotate_passwords`` and ``rotate-passwords`` are one gate."""
    return name.strip().replace("_", "-")


def gate_named(name: str, gates: Mapping[str, Any]) -> str:
    """The recorded gate *name* means: itself when recorded, else the one recorded gate with its key (a name
    in the old snake_case style, or a new name for a gate an older run recorded in it); *name* otherwise."""
    if name in gates:
        return name
    same = [g for g in gates if gate_key(g) == gate_key(name)]
    return same[0] if len(same) == 1 else name


#: the characters of a step's error message the record keeps (the whole of any message hcbpg writes)
MAX_EVALUE = 8000


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


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> bytes:
    """Scrub *text* and write it atomically (tmp file + rename); returns the bytes written."""
    data = hsecrets.scrub(text).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return data


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

    @property
    def home(self) -> Path:
        return self.path.parent.parent.parent

    @property
    def written_path(self) -> Path:
        """The last version of this manifest that hcbpg wrote on this machine: in the state dir, not in outputs/."""
        return state.state_dir(self.home) / "written" / self.env / f"{self.path.name}.manifest.json"

    def load(self) -> Manifest:
        """The manifest, typed (AuditError when it is not one hcbpg writes); :meth:`read` gives it raw."""
        return parse_manifest(self.read(), str(self.manifest_path))

    def write(self, data: Manifest) -> None:
        written = atomic_write_text(self.manifest_path, data.to_json())
        self.remember(written)

    def remember(self, content: bytes) -> None:
        """Keep *content* as the last version of the manifest written (or verified) by hcbpg here."""
        hsecrets.write_private_file(self.written_path, content)

    def unlike_written(self) -> str | None:
        """Why the manifest is not the version hcbpg last wrote here (None: byte for byte the same)."""
        try:
            ours = self.written_path.read_bytes()
        except FileNotFoundError:
            return (f"hcbpg did not write it on this machine ({self.written_path} is missing): it was made or "
                    "changed elsewhere")
        try:
            now = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return "it was removed"
        if now == ours:
            return None
        diff = list(difflib.unified_diff(ours.decode(errors="replace").splitlines(),
                                         now.decode(errors="replace").splitlines(),
                                         "written by hcbpg", "now", n=0, lineterm=""))
        shown = [ln for ln in diff[2:] if not ln.startswith("@@")][:12]
        return "it differs from the version hcbpg last wrote: " + "; ".join(shown)

    @contextlib.contextmanager
    def update(self) -> Iterator[Manifest]:
        """Read-modify-write the manifest under an exclusive lock (runner and kernels share it).

        Refused when the manifest is not the version hcbpg last wrote (or verified) here: a change made
        outside hcbpg is never carried into a version hcbpg writes, and so never signed."""
        lock = self.path / ".manifest.lock"
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                why = self.unlike_written()
                if why is not None:
                    raise AuditError(f"{self.manifest_path}: not written: {why}",
                                     hint=f"See `hcbpg audit verify {self.env}`. Restore the record from git, "
                                          "or start a new run.")
                data = self.load()
                yield data
                self.write(data)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def log(self, line: str) -> None:
        """Append a (scrubbed) line to the run's log."""
        with open(self.path / "run.log", "a") as fh:
            fh.write(f"{utcnow()} {hsecrets.scrub(line)}\n")


def hash_attempt(run: Run, att: Attempt, *, only_missing: bool = False) -> None:
    """The sha256 of *att*'s notebook into the record (when its file is there; *only_missing*: if not hashed yet)."""
    if att.notebook and not (only_missing and att.sha256) and (run.path / att.notebook).is_file():
        att.sha256 = sha256_file(run.path / att.notebook)


def list_runs(home: Path, env: str | None = None) -> list[Run]:
    """Runs, oldest first (directory names start with a UTC timestamp)."""
    base = outputs_dir(home)
    envs = [env] if env else sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if base.is_dir() else []
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
        data = Manifest(
            format=FORMAT, run_id=run_id, environment=env, mode=mode, dry_run=dry_run, status="created",
            created=utcnow(), finished=None, operator=operator_name(), machine=socket.gethostname(),
            git=git_state(repo), params_sha256=params_sha256, selection=selection, previous=prev, gates={},
            runner=None,
            steps=[StepEntry(key=s["key"], title=s["title"], notebook=s["notebook"], status="pending", attempts=[],
                             changes=None, sha256=None) for s in steps])
        run.write(data)
        atomic_write_text(edir / "HEAD", run.path.name + "\n")
    return run


def is_newest(run: Run, home: Path) -> bool:
    runs = list_runs(home, run.env)
    return bool(runs) and runs[-1].path == run.path


# verification -----------------------------------------------------------------------

def verify_env(home: Path, env: str, trust: signing.Trust | None = None, *, orphan_ok: bool = False,
               signers_change: bool = False) -> list[str]:
    """Recompute every hash and the chain of one environment; returns problems, first first.

    With *trust*: also every manifest's signature (at the time it was sealed), the allowed signers
    each was sealed against, the hash of every ``run.log``, the chain head recorded outside
    ``outputs/`` and this machine's anchor.  Only an *open* newest run (a live runner holds the
    environment's lock for it now) may be unsealed; with *orphan_ok* also one whose runner died, when
    its manifest is byte for byte the version hcbpg last wrote here (``run`` and ``resume`` seal it
    next).  *signers_change*: the allowed-signers file may differ from the last one sealed (it is
    about to be recorded)."""
    problems: list[str] = []
    runs = list_runs(home, env)
    pending = runs[-1] if runs and (is_open(runs[-1]) or (orphan_ok and needs_orphan_seal(runs[-1])
                                                          and runs[-1].unlike_written() is None)) else None
    if trust is not None:
        problems += verify_trust(runs, trust, pending=pending, signers_change=signers_change, home=home)
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
        being_written = pending is not None and run.path == pending.path
        for step in data.get("steps", []):
            for att in step.get("attempts", []):
                if att.get("status") == "running" and being_written:
                    continue  # being written now, or sealed next (its notebook is hashed then)
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


#: the lock purposes of processes that write a run's manifest while they hold the lock
WRITERS = ("run", "plan", "resume", "guided run")


def is_open(run: Run) -> bool:
    """A live runner (run, resume, guide) holds the environment's lock for this run now: it is writing it.

    Never what the manifest says of itself (a status and a pid are easy to write).  The process that
    holds the lock does not count as another writer: it verifies before it writes."""
    holder = state.lock_held_now(run.env, run.home)
    return (holder is not None and holder.get("run_id") == run.run_id and holder.get("purpose") in WRITERS
            and holder.get("pid") != os.getpid() and holder.get("machine") == socket.gethostname())


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
    if is_open(run):
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


def anchor_path(home: Path, env: str) -> Path:
    """This machine's anchor of *env*'s record: the newest run sealed here (never committed, not in outputs/)."""
    return state.state_dir(home) / "anchors" / f"{env}.json"


def read_anchor(home: Path, env: str) -> dict[str, Any] | None:
    try:
        rec = json.loads(anchor_path(home, env).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise AuditError(f"{anchor_path(home, env)}: not valid JSON: {exc}") from None
    return rec if isinstance(rec, dict) else None


def write_anchor(run: Run, manifest_sha256: str, sealed_at: str) -> None:
    path = anchor_path(run.home, run.env)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"run": run.path.name, "manifest_sha256": manifest_sha256, "sealed_at": sealed_at,
                               "by": operator_name()}) + "\n")
    os.replace(tmp, path)


def signers_record(trust: signing.Trust) -> dict[str, str]:
    """What a seal records of the allowed-signers file it is verified against: its sha256 and its text."""
    try:
        content = trust.allowed_signers.read_bytes()
    except FileNotFoundError:
        raise AuditError(f"no allowed-signers file at {trust.allowed_signers}") from None
    return {"sha256": hashlib.sha256(content).hexdigest(), "text": content.decode(errors="replace")}


def seal(run: Run, sealer: Sealer, *, note: str | None = None) -> None:
    """Hash run.log into the manifest, sign the manifest, record the head outside outputs/ and the anchor here.

    Only a manifest that is the version hcbpg last wrote (or verified) on this machine is sealed
    (:meth:`Run.update` refuses any other), and the bytes signed are the bytes hcbpg wrote."""
    log = run.path / "run.log"
    signers = signers_record(sealer.trust)
    at = utcnow()
    with run.update() as data:
        data.run_log_sha256 = sha256_file(log) if log.is_file() else None
        data.sealed = {"at": at, "by": operator_name(), "machine": socket.gethostname(),
                          "allowed_signers": signers, **({"note": note} if note else {}),
                          **({"anchor": sealer.trust.bucket.where} if sealer.trust.bucket else {})}
    content = run.written_path.read_bytes()
    if run.manifest_path.read_bytes() != content:
        raise AuditError(f"{run.manifest_path}: changed while it was being sealed; not signed")
    signature = signing.sign(content, sealer.key, signing.NS_MANIFEST)
    sha = hashlib.sha256(content).hexdigest()
    if sealer.trust.bucket is not None:  # first: a seal the bucket does not know is no seal (never skipped)
        try:
            sealer.trust.bucket.append(run=run.path.name, run_id=run.run_id, manifest_sha256=sha, sealed_at=at,
                                       by=operator_name())
        except CloudError:
            (run.path / SIG_NAME).unlink(missing_ok=True)  # an earlier seal's: the run is unsealed, sealed next time
            raise
    tmp = run.path / f".{SIG_NAME}.{os.getpid()}.tmp"
    tmp.write_text(signature)  # not through the scrubber: a signature is not a secret, and must stay exact
    os.replace(tmp, run.path / SIG_NAME)
    write_head(sealer.trust, run, sha)
    write_anchor(run, sha, at)


def seal_orphan(run: Run, sealer: Sealer) -> None:
    """Seal a run whose runner stopped without doing so (SIGKILL, power loss): hash what it left.

    Refused (AuditError, saying what differs) unless the manifest is the version hcbpg last wrote here."""
    with run.update() as data:
        for s in data.steps:
            for a in s.attempts:
                if a.status == "running":
                    a.status = "interrupted"
                    a.note = "the runner stopped without recording an end (killed?)"
                hash_attempt(run, a, only_missing=True)
            if s.status == "running":
                s.status = "interrupted"
        if data.status == "running":
            data.status = "interrupted"
    seal(run, sealer, note="sealed when the next run started: its runner had stopped without sealing")


def adopt_verified(run: Run, trust: signing.Trust) -> None:
    """Take a sealed manifest that verified (made on another machine, say) as the version hcbpg last wrote here.

    Its signature is checked again over the exact bytes kept, so nothing but signed bytes is adopted."""
    content = run.manifest_path.read_bytes()
    try:
        sig = (run.path / SIG_NAME).read_text()
        sealed_at = parse_time(json.loads(content)["sealed"]["at"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        raise AuditError(f"{run.manifest_path}: not sealed; hcbpg did not write it here and no signature "
                         "vouches for it") from None
    signing.verify(content, sig, trust.allowed_signers, signing.NS_MANIFEST, at=sealed_at)
    run.remember(content)


def lines_changed(old: str, new: str) -> str:
    o, n = set(old.splitlines()), set(new.splitlines())
    added = [ln.split()[0] + " " + (ln.split()[-1][:16] + "…" if len(ln.split()) > 1 else "")
             for ln in new.splitlines() if ln.strip() and not ln.startswith("#") and ln not in o]
    removed = [ln.split()[0] for ln in old.splitlines() if ln.strip() and not ln.startswith("#") and ln not in n]
    return "; ".join([*(f"added {a}" for a in added), *(f"removed {r}" for r in removed)]) or "whitespace/comments"


def verify_trust(runs: list[Run], trust: signing.Trust, *, pending: Run | None = None,
                 signers_change: bool = False, home: Path | None = None) -> list[str]:
    """Signatures (at their sealing time), the allowed signers each run was sealed against, run.log hashes,
    the head recorded outside outputs/ and this machine's anchor (problems, first first).

    *pending*: the newest run, open or about to be sealed: not signed yet, rightly."""
    problems: list[str] = []
    by_dir = {r.path.name: r for r in runs}
    home = home or (runs[0].home if runs else None)
    signers_sha: str | None = None
    signers_text: str | None = None
    signers_from: str | None = None
    last_time: _dt.datetime | None = None
    now = _dt.datetime.now(_dt.timezone.utc)
    with contextlib.ExitStack() as stack:
        tmpdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hcbpg-signers-")))

        def signers_file(text: str) -> Path:
            p = tmpdir / hashlib.sha256(text.encode()).hexdigest()
            if not p.exists():
                p.write_text(text)
            return p

        for run in runs:
            try:
                data = run.read()
            except AuditError:
                continue  # reported by the chain check
            if pending is not None and run.path == pending.path:
                continue  # its runner is writing it, or it is sealed next
            sig = run.path / SIG_NAME
            sealed = data.get("sealed") if isinstance(data.get("sealed"), dict) else None
            if not sig.is_file() or sealed is None:
                why = f"{SIG_NAME} is missing" if not sig.is_file() else "it was never sealed"
                if data.get("status") == "running":
                    why += (f"; it says it is running, but no runner holds the lock of {trust.env} for it now: "
                            "a record cannot say for itself that it is open")
                diff = run.unlike_written()
                if diff is not None:
                    why += f"; {diff}"
                problems.append(f"{run.manifest_path}: not signed ({why})")
                continue
            try:
                at = parse_time(sealed["at"])
            except (KeyError, TypeError, ValueError):
                problems.append(f"{run.manifest_path}: its seal has no valid time")
                continue
            if last_time is not None and at < last_time:
                problems.append(f"{run.manifest_path}: sealed at {sealed['at']}, before the run before it was "
                                "sealed: a seal's time cannot go back")
            if at > now + _dt.timedelta(minutes=5):
                problems.append(f"{run.manifest_path}: sealed at {sealed['at']}, in the future")
            last_time = max(at, last_time) if last_time else at
            # the allowed signers it was sealed against, and who may change them
            rec = sealed.get("allowed_signers")
            against = trust.allowed_signers
            if isinstance(rec, dict) and isinstance(rec.get("text"), str):
                text = rec["text"]
                sha = hashlib.sha256(text.encode()).hexdigest()
                if sha != rec.get("sha256"):
                    problems.append(f"{run.manifest_path}: the allowed signers recorded in its seal do not match "
                                    "their sha256")
                if data.get("mode") == "signers" and signers_text is not None:
                    against = signers_file(signers_text)  # a change of who may sign: by a key allowed before
                    ch = data.get("signers_change") or {}
                    if ch.get("from_sha256") != signers_sha or ch.get("to_sha256") != sha:
                        problems.append(f"{run.manifest_path}: a signers change from {str(ch.get('from_sha256'))[:12]}… "
                                        f"to {str(ch.get('to_sha256'))[:12]}…, but the runs around it were sealed "
                                        f"against {str(signers_sha)[:12]}… and {sha[:12]}…")
                else:
                    against = signers_file(text)
                    if signers_sha is not None and sha != signers_sha:
                        problems.append(f"{run.manifest_path}: sealed against other allowed signers ({sha[:12]}…: "
                                        f"{lines_changed(signers_text or '', text)}) than the run before it "
                                        f"({signers_sha[:12]}…), with no signed signers change between them")
                signers_sha, signers_text, signers_from = sha, text, run.path.name
            try:
                signing.verify(run.manifest_path.read_bytes(), sig.read_text(), against, signing.NS_MANIFEST, at=at)
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
    if signers_sha is not None and not signers_change:
        try:
            current = trust.allowed_signers.read_bytes()
        except FileNotFoundError:
            current = b""
        if hashlib.sha256(current).hexdigest() != signers_sha:
            problems.append(f"{trust.allowed_signers}: changed since {signers_from} was sealed "
                            f"({lines_changed(signers_text or '', current.decode(errors='replace'))}), and no "
                            f"signed signers change records it: `hcbpg audit signers {trust.env}`, signed by a key "
                            "already allowed, does")
    if home is not None:
        problems += _verify_anchor(runs, home, trust.env, pending)
    problems += _verify_bucket(runs, trust, pending)
    try:
        head = read_head(trust)
    except AuditError as exc:
        return problems + [str(exc)]
    if head is None:
        if runs and not (len(runs) == 1 and pending is not None):  # the first run, still open, has no head yet
            problems.append(f"{trust.head_file}: missing: no record outside outputs/ of the newest run of "
                            f"{trust.env} (restore it from git)")
        return problems
    name, sha = head
    if name not in by_dir:
        problems.append(f"{trust.head_file}: names {name} as the newest sealed run of {trust.env}, "
                        f"and that run was removed from outputs/{trust.env}")
        return problems
    head_run = by_dir[name]
    if not (pending is not None and head_run.path == pending.path):
        actual = sha256_file(head_run.manifest_path)
        if actual != sha:
            problems.append(f"{head_run.manifest_path}: differs from the head recorded in {trust.head_file} "
                            f"(sha256 {actual[:12]}…, recorded {sha[:12]}…)")
    later = runs[[r.path.name for r in runs].index(name) + 1:]
    for r in later:
        if not (pending is not None and r.path == pending.path):
            problems.append(f"{r.path}: newer than the head recorded in {trust.head_file} ({name})")
    return problems


def _verify_bucket(runs: list[Run], trust: signing.Trust, pending: Run | None) -> list[str]:
    """The record against the head anchored in the backup bucket (:mod:`hcbpg.ops.audit_anchor`)."""
    local = [audit_anchor.Local.of(r.path.name, r.manifest_path.read_bytes() if r.manifest_path.is_file() else None,
                                   is_sealed(r)) for r in runs]
    pend = pending.path.name if pending is not None else None
    return (trust.bucket.verify(local, pending=pend) if trust.bucket is not None
            else audit_anchor.plan_verify(None, [], local, env=trust.env, pending=pend))


def _verify_anchor(runs: list[Run], home: Path, env: str, pending: Run | None) -> list[str]:
    """The newest run sealed on this machine is still in the record, unchanged, and nothing after it
    claims to be sealed before it (a retired key cannot add a back-dated record after the anchor)."""
    try:
        anchor = read_anchor(home, env)
    except AuditError as exc:
        return [str(exc)]
    if anchor is None:
        return []
    where = anchor_path(home, env)
    names = [r.path.name for r in runs]
    if anchor.get("run") not in names:
        return [f"{where}: this machine sealed {anchor.get('run')} of {env} at {anchor.get('sealed_at')}, and it "
                f"is not in outputs/{env}: the record was rewritten or rolled back"]
    problems = []
    i = names.index(anchor["run"])
    run = runs[i]
    if not (pending is not None and run.path == pending.path) and sha256_file(run.manifest_path) != \
            anchor.get("manifest_sha256"):
        problems.append(f"{run.manifest_path}: differs from the version this machine sealed ({where})")
    try:
        bound = parse_time(str(anchor.get("sealed_at")))
    except ValueError:
        return problems + [f"{where}: no valid time"]
    for r in runs[i + 1:]:
        if pending is not None and r.path == pending.path:
            continue
        try:
            at = parse_time(r.read()["sealed"]["at"])
        except (AuditError, KeyError, TypeError, ValueError):
            continue  # named by the signature check
        if at < bound:
            problems.append(f"{r.manifest_path}: sealed at {at:%Y-%m-%dT%H:%M:%SZ}, before {anchor['run']} "
                            f"(anchored here at {anchor['sealed_at']}) that it follows: back-dated")
    return problems
