"""The README's production quickstart, followed as written (issue 27, item 6): its ``sh`` block is read from the
README itself, so the two cannot drift, and run command by command in a fresh home with the committed params, in
an empty network namespace (``unshare --net``: nothing can reach Heroku, Hetzner, 1Password or the servers).

It goes as far as a machine without production can: the two lines that need the real accounts (``op signin``,
``heroku login``) are the only ones not run, and the commands that then need production itself are where it
stops.  What it checks there: ``params check`` names each placeholder; ``doctor`` exits 2 listing each placeholder
and every missing prerequisite (the allowed signers before step 2, 1Password, the Heroku CLI, the hosts); and
``plan`` refuses with a reason the doctor gave.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hcbpg.params import load_params

from nbutil import REPO

#: the README's lines that need production's own accounts: not run here (the doctor must then name them missing)
NEEDS_ACCOUNTS = ('eval "$(op signin)"', "heroku login")
#: the first command that needs production itself (the servers, the secrets): the test stops before it
STOP_AT = "hcbpg run production"


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def quickstart_commands() -> list[str]:
    """The commands of the first ``sh`` block under "## Production quickstart" (comments after ``#`` dropped)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Production quickstart"):]
    section = section[:section.index("\n## ", 1)]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S)
    assert block, "the quickstart has no ```sh block"
    out = []
    for line in block.group(1).splitlines():
        command = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment (never inside this block's quotes)
        if command and not command.startswith("#"):
            out.append(command)
    return out


class Operator:
    """A fresh operator: HOME with an SSH key pair, an empty HCBPG_HOME holding the committed params, no 1Password
    CLI and no Heroku CLI on PATH, ``hcbpg`` on PATH; each command in ``unshare --net`` from the home."""

    def __init__(self, tmp: Path) -> None:
        self.home, self.user, self.bin = tmp / "home", tmp / "user", tmp / "bin"
        (self.home / "params").mkdir(parents=True)
        shutil.copy(REPO / "params" / "production.yaml", self.home / "params")
        (self.user / ".ssh").mkdir(parents=True, mode=0o700)
        # the key pair an operator has (the README's line 1 asks for a passphrase when it makes one)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@hcb",
                        "-f", str(self.user / ".ssh" / "id_ed25519")], check=True)
        self.bin.mkdir()
        hcbpg = self.bin / "hcbpg"
        hcbpg.write_text(f"#!/bin/sh\nexec {sys.executable} -m hcbpg.cli \"$@\"\n")
        hcbpg.chmod(0o755)
        path = [str(self.bin)] + [p for p in os.environ.get("PATH", "").split(os.pathsep)
                                  if p and not any(os.path.exists(os.path.join(p, t)) for t in ("op", "heroku"))]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("OP_", "HCBPG_", "HEROKU_"))}
        self.env.update(HOME=str(self.user), USER="alice", HCBPG_HOME=str(self.home), PATH=os.pathsep.join(path),
                        PYTHONPATH=str(REPO))

    def sh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["unshare", "--net", "--", "bash", "-c", command], capture_output=True, text=True,
                              env=self.env, cwd=self.home, timeout=300)


def _doctor(op: Operator) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = op.sh("hcbpg doctor production --json")
    return proc, json.loads(proc.stdout)


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare --net (an empty network namespace)")
def test_the_quickstart_from_a_fresh_home_gets_as_far_as_production_allows(tmp_path):
    commands = quickstart_commands()
    assert any(c.startswith("hcbpg doctor production") for c in commands), commands
    op = Operator(tmp_path)
    params = load_params("production", REPO)

    # before anything: the doctor names the allowed signers the quickstart's line 2 adds, and plan refuses with
    # the doctor's reason for it (issue 27: the first plan was refused for a file the quickstart never mentioned)
    proc, before = _doctor(op)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    signing = {c["name"]: c for c in before["checks"]}["signing key allowed"]
    assert signing["status"] == "fail" and "production.allowed_signers" in signing["detail"], signing
    plan = op.sh("hcbpg plan production")
    assert plan.returncode != 0 and "allowed-signers" in plan.stderr, plan.stderr
    refusal = plan.stderr.removeprefix("hcbpg: ").split("\n")[0]
    assert refusal.split(": ", 1)[1] in signing["detail"], (refusal, signing["detail"])

    ran, skipped = [], []
    for command in commands:
        if command.startswith(STOP_AT):
            break
        if command in NEEDS_ACCOUNTS:
            skipped.append(command)
            continue
        proc = op.sh(command)
        ran.append((command, proc))
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, (command, out[-3000:])
        if command == "hcbpg params check production":
            assert proc.returncode == 0 and "is valid" in proc.stdout, out
            for key, value in params.placeholders().items():  # valid, and not "just valid": each placeholder named
                assert f"{key}: {value}" in proc.stdout, (key, proc.stdout)
        elif command == "hcbpg doctor production":
            assert proc.returncode == 2, out
            assert "prerequisite(s) of production missing" in proc.stdout
        elif command == "hcbpg plan production":
            assert proc.returncode == 1, out  # the audit record cannot be checked: nothing started
            assert "no run of production was started" in out, out
        else:  # the set-up lines (the key pair, the allowed signers) work as written
            assert proc.returncode == 0, (command, out)
    assert skipped == list(NEEDS_ACCOUNTS), skipped
    assert [c for c, _ in ran][-3:] == ["hcbpg params check production", "hcbpg doctor production",
                                        "hcbpg plan production"], ran

    # after the quickstart's set-up: the key signs; what is left is what needs production's accounts and hosts
    proc, after = _doctor(op)
    assert proc.returncode == 2 and after["exit_code"] == 2 and not after["ok"]
    rows = {(c["name"], c["target"]): c for c in after["checks"]}
    failed = {name for (name, _), c in rows.items() if c["status"] == "fail"}
    assert rows[("signing key allowed", str(op.home / "params" / "production.allowed_signers"))]["status"] == "pass"
    assert "alice@hcb" in rows[("signing key allowed", str(op.home / "params" / "production.allowed_signers"))]["detail"]
    for key in params.placeholders():  # each placeholder, refused for production
        assert f"placeholder {key}" in failed, key
    op_refs = {k for k, v in params.secret_refs().items() if v.startswith("op://")}
    assert {f"secret {k}" for k in op_refs} <= failed  # each 1Password item: step 3 was not done
    assert all("1Password CLI" in c["detail"] for (n, _), c in rows.items() if n.startswith("secret "))
    assert "heroku CLI logged in" in failed  # step 4 was not done
    assert "Hetzner Cloud API reachable" in failed and "reachable over SSH" in failed
    assert "audit record verifies" in failed
    # plan refuses with the doctor's reason: the record's anchor in the bucket needs a key from 1Password
    audit = next(c for (n, _), c in rows.items() if n == "audit record verifies")
    plan = dict(ran)["hcbpg plan production"]
    reason = plan.stderr.removeprefix("hcbpg: ").split("\n")[0]
    assert "pgbackrest.s3_key" in reason and reason.split(": ", 1)[1] in audit["detail"], (reason, audit["detail"])
    assert not list((op.home / "outputs").glob("production/*")), "nothing was recorded"
