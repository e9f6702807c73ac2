"""Helpers for tests: build throwaway notebooks and HCBPG_HOME trees."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent


def manual_production() -> dict:
    """The committed production params as they were before they switched to Patroni (issue 28): the manual
    replication (steps 10_replication / 11_failover), no jumpbox, no protection -- the base of the tests of what
    a manual environment does; params/production.yaml itself runs replication.manager patroni."""
    import yaml
    d = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    for key in ("manager", "patroni", "etcd"):
        d["replication"].pop(key, None)
    d["replication"]["connection_limit"] = 2
    d.pop("jumpbox", None)
    d.pop("alerting", None)  # the monitor runs on the jumpbox
    d["hetzner"].pop("protection", None)
    return d


def manual_lab() -> dict:
    """params/lab.yaml as it was before the rehearsal switched to Patroni (issue 28): the manual replication, no
    jumpbox (Metabase's jumpbox_ip stays), no protection, Hetzner's default network range -- the base of the unit
    tests of what a manual environment does."""
    import yaml
    d = yaml.safe_load((REPO / "params" / "lab.yaml").read_text())
    for key in ("manager", "patroni", "etcd"):
        d["replication"].pop(key, None)
    d["replication"]["connection_limit"] = 2
    d.pop("jumpbox", None)
    d.pop("alerting", None)  # the monitor runs on the jumpbox
    d["hetzner"].pop("protection", None)
    d["network"]["ip_range"] = "10.0.0.0/16"
    return d


def hcbpg(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and stdout as an operator sees them).  ``run`` and
    ``resume`` get ``--yes`` unless the test asks for the question (``--ask``, removed before the call)."""
    e = dict(os.environ)
    e.update(env or {})
    if args[:1] in (("run",), ("resume",)) and "--yes" not in args and "--ask" not in args:
        args = (*args, "--yes")  # the tests' environments are not the lab: a run asks first (tests/test_cli_confirm.py)
    args = tuple(a for a in args if a != "--ask")
    return subprocess.run([sys.executable, "-m", "hcbpg.cli", *args], capture_output=True, text=True,
                          env=e, timeout=timeout)


def _sigint_as_an_operator_has_it() -> None:  # runs in the child, between fork and exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def popen_for_ctrl_c(args: list[str], **kw) -> subprocess.Popen:  # noqa: ANN003
    """*args* started with SIGINT as an operator's terminal gives it (default action, not blocked), whatever this
    test process inherited or was left with: a child inherits an ignored or blocked SIGINT, and then Ctrl-C
    (the tests' SIGINT) never reaches the runner (seen in fresh-clone runs: a run that ignored the Ctrl-C)."""
    return subprocess.Popen(args, preexec_fn=_sigint_as_an_operator_has_it, **kw)  # noqa: PLW1509


def sigint_state(pid: int) -> str:
    """What /proc says of SIGINT in process *pid* (ignored, blocked, caught), and this process's handler."""
    bit = 1 << (signal.SIGINT - 1)
    try:
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
    except OSError as exc:
        return f"pid {pid}: {exc}"
    flags = {k: bool(int(status[k].strip(), 16) & bit) for k in ("SigIgn", "SigBlk", "SigCgt") if k in status}
    return f"pid {pid} SIGINT {flags}; the test process's handler {signal.getsignal(signal.SIGINT)!r}"


def past_newest_run(env_dir: Path) -> None:
    """Wait until a run started now is named by a later second than every run in *env_dir* (outputs/<env>):
    run directories are named by the second they start in.  What a fixed 1.05 s sleep made sure of, waiting
    only for what is left of the newest run's second (a CLI run before it has most often outlasted it)."""
    import datetime as dt
    import time
    stamps = [p.name.split("_", 1)[0] for p in env_dir.iterdir() if p.is_dir() and p.name[:1].isdigit()] \
        if env_dir.is_dir() else []
    newest = max(stamps, default="")
    while dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") <= newest:
        time.sleep(0.01)


PARAMS_CELL = 'env = "lab"\nrun_id = ""\nrun_dir = ""\ndry_run = False\n'


def write_notebook(path: Path, step: str, *cells: str, title: str = "test step") -> Path:
    """A runbook-shaped notebook: markdown, parameters cell, runbook.start, the given cells, finish."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell(PARAMS_CELL)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell(f"# {title}"), params,
                new_code_cell(f"from hcbpg.engine import runbook\nrb = runbook.start(env, step={step!r}, "
                              "run_id=run_id, run_dir=run_dir, dry_run=dry_run)")]
    nb.cells += [new_code_cell(c) for c in cells]
    nb.cells.append(new_code_cell("rb.finish()"))
    nbformat.write(nb, path)
    return path


def write_steps(nb_dir: Path, steps: list[tuple[str, str]]) -> None:
    lines = ["steps:"]
    for notebook, title in steps:
        lines.append(f"  - {{notebook: {notebook}, title: {title!r}}}")
    (nb_dir / "steps.yaml").write_text("\n".join(lines) + "\n")


def make_params(env: str, *, app_password_ref: str = "env:HCBPG_TEST_APP_PW",
                token_ref: str = "env:HCBPG_TEST_TOKEN") -> str:
    return f"""environment: {env}
hetzner:
  token: {token_ref}
  ssh_public_key_file: /dev/null
servers:
  - {{name: server-postgres-1, private_ip: 10.0.1.5, role: primary}}
postgres:
  app_role_password: {app_password_ref}
"""


LAB_LOCK = Path("/tmp/hcbpg-lab.lock")


def _lock_held_by_an_ancestor(path: Path) -> bool:
    """True when flock(1) in our ancestry holds *path* (``flock /tmp/hcbpg-lab.lock pytest ...``)."""
    ino = str(path.stat().st_ino)
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if "->" in f or len(f) < 6 or f[1] != "FLOCK":
            continue  # "->" marks a waiter, not a holder
        if f[5].rsplit(":", 1)[-1] == ino:
            holders.add(int(f[4]))
    pid = os.getpid()
    while pid > 1:
        if pid in holders:
            return True
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


@contextlib.contextmanager
def default_lab_lock(timeout: float = 1200):
    """Hold the machine's lab lock while a test uses the default lab (what params/lab.yaml points
    at): held already by our caller's flock(1), or waited for here, so that tests on parallel
    workers take turns; skip when another process keeps it longer than *timeout*."""
    import pytest

    from hcbpg.lab.core import flock_within
    LAB_LOCK.touch(exist_ok=True)
    if _lock_held_by_an_ancestor(LAB_LOCK):
        yield
        return
    fd = os.open(LAB_LOCK, os.O_RDWR)
    try:
        if not flock_within(fd, timeout, interval=1.0):
            pytest.skip(f"another process has used the lab for {timeout:.0f}s (it holds {LAB_LOCK})")
        yield
    finally:
        os.close(fd)


def secret_forms(value: str) -> list[bytes]:
    """The byte strings a secret scan looks for: the value and every encoding the record could hold it in.

    Written apart from the scrubber (hcbpg.secrets), so that a scan checks it rather than repeats it:
    URL-encoding (upper- and lowercase hex), JSON and HTML escapes, and base64 (standard and URL-safe)
    of the value starting at each of the three byte positions of a 3-byte group."""
    raw = value.encode()
    lower = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(value, safe=""))
    forms = {value, urllib.parse.quote(value, safe=""), lower,
             urllib.parse.quote_plus(value), json.dumps(value)[1:-1], html.escape(value),
             html.escape(value, quote=False)}
    out = {f.encode() for f in forms}
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            full = enc(b"\xff" * pad + raw)
            first = -(-pad * 4 // 3)             # characters that hold bits of the padding
            last = (pad + len(raw)) * 4 // 3      # characters made of whole value bits only
            out.add(full[first:last])
    return sorted(f for f in out if len(f) >= 8)


def _read_all(path: str) -> bytes | None:
    """A file's bytes (None: it is gone), read by os calls only."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


class CmdlineWatch:
    """Samples every process's command line (``/proc/*/cmdline``) while a block runs, so that a test can
    ask afterwards whether a secret was ever on one (lab hosts live in network and mount namespaces, not
    pid namespaces, so their sshd sessions, shells, psql and pgbackrest are sampled too).  Values made
    during the block (a rotated password) can be asked for after it."""

    def __init__(self, interval: float = 0.02) -> None:
        import threading
        self.interval = interval
        self.seen: dict[bytes, int] = {}   # each distinct command line, with a pid that had it
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        # plain os calls, not Path objects: a scan of a few hundred processes every 20 ms costs a third of the CPU
        # it did (measured 1.2 ms against 2.8 ms a scan), CPU the suite's other worker needs
        while not self._stop.is_set():
            for name in os.listdir("/proc"):
                if name.isdigit():
                    argv = _read_all(f"/proc/{name}/cmdline")
                    if argv is not None:
                        self.seen.setdefault(argv, int(name))
            self.samples += 1
            self._stop.wait(self.interval)

    def found(self, secrets: list[str]) -> list[str]:
        """The command lines (their program, and pid) that held one of *secrets*."""
        def program(argv: bytes) -> str:
            return argv.split(b"\0", 1)[0][-40:].decode(errors="replace")
        return [f"pid {pid} ({program(argv)})"
                for argv, pid in self.seen.items() for v in secrets if v and v.encode() in argv]

    def __enter__(self) -> "CmdlineWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_signing_key(directory: Path, comment: str) -> Path:
    """A throwaway ed25519 key that signs this test's audit record (never committed)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = directory / "id_ed25519"
    if not key.is_file():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], check=True)
    return key


def allowed_signer_line(principal: str, key: Path) -> str:
    from hcbpg.engine.signing import render_allowed_signer
    return render_allowed_signer(principal, key.with_name(key.name + ".pub").read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file hcbpg hands out (values shell-quoted), unquoted."""
    import shlex
    return {k: shlex.split(v)[0] for k, v in (line.split("=", 1) for line in path.read_text().splitlines()
                                             if "=" in line)}


#: the one bucket of the ``moto_s3`` fixture (tests/conftest.py)
MOTO_BUCKET = "hcb-test-postgres"


def run_as_operator(path: Path) -> str:
    """Execute a notebook of a guided run in place, in a kernel like JupyterLab's (not headless); its cells'
    outputs as JSON text."""
    import nbclient  # noqa: PLC0415 - the jupyter stack is heavy
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=120,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])


def subparsers(parser):  # noqa: ANN001, ANN201 - an argparse.ArgumentParser; yields its subcommands' parsers
    """Every subcommand's parser under *parser*, depth first."""
    import argparse  # noqa: PLC0415
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in a.choices.values():
                yield sp
                yield from subparsers(sp)
