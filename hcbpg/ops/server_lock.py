"""A lock on the primary for the steps that change it: one run at a time across operators' machines.

The environment lock (``hcbpg.engine.locks``) keeps two runs apart on one machine; two operators
on two laptops meet only at the servers.  So a step that is about to change the primary first
writes ``/var/lib/hcbpg/change.lock`` there (created with ``set -C``: it fails if the file exists),
naming the run, step, operator, machine, pid and time.  The step releases it when it finishes; a
failed step leaves it, and then only the same run (its resume) takes it over, or, on the machine
that holds it, a run that finds the holder's processes gone (stale).  Anyone else is refused with
who holds it and since when.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg.clock import utcnow
from hcbpg.errors import SafetyCheckFailed
from hcbpg.outcome import Outcome
from hcbpg.procs import process_alive

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host

LOCK_DIR = "/var/lib/hcbpg"
LOCK_PATH = f"{LOCK_DIR}/change.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or wants) the lock."""

    run_id: str
    env: str
    step: str
    operator: str
    machine: str
    pid: int
    runner_pid: int
    since: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True) + "\n"

    def describe(self) -> str:
        return (f"step {self.step} of run {self.run_id} ({self.env}) by {self.operator} "
                f"(pid {self.runner_pid} on {self.machine}) since {self.since}")


def holder_for(*, run_id: str, env: str, step: str, operator: str) -> Holder:
    """This process as a holder (the kernel's pid, and its parent's: the runner or JupyterLab)."""
    return Holder(run_id, env, step, operator, socket.gethostname(), os.getpid(), os.getppid(), utcnow())


def parse_holder(text: str | None) -> Holder | None:
    """The holder recorded in the lock file; None when there is none or it cannot be read."""
    if not text or not text.strip():
        return None
    try:
        d = json.loads(text)
        return Holder(**{k: d[k] for k in Holder.__dataclass_fields__})
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def plan_take(current: Holder | None, me: Holder, *, raw: str | None = None,
              alive: Callable[[int], bool] = process_alive) -> tuple[str, str]:
    """``(decision, why)``: take (free), ours (this run holds it), stale (its holder is gone), refuse."""
    if current is None:
        if raw and raw.strip():
            return "refuse", f"{LOCK_PATH} holds something hcbpg cannot read: {raw.strip()[:200]!r}"
        return "take", "free"
    if current.run_id == me.run_id and current.env == me.env:
        return "ours", f"held by this run ({current.describe()})"
    if current.machine == me.machine and not alive(current.pid) and not alive(current.runner_pid):
        return "stale", f"{current.describe()}: its processes are gone on {current.machine}"
    return "refuse", current.describe()


def ensure_change_lock(host: "Host", me: Holder, *, dry_run: bool) -> Outcome:
    """Hold the primary's change lock for *me*, or refuse (SafetyCheckFailed) naming who holds it."""
    what = f"change lock {LOCK_PATH} on {host.name}"
    if dry_run:
        return Outcome(what, False, dry_run, actions=[f"take {LOCK_PATH} (a dry run changes nothing: not taken)"])
    take = (f"install -d -m 0700 {LOCK_DIR} && (set -C; cat > {shlex.quote(LOCK_PATH)})")
    res = host.run(take, stdin=me.to_json(), check=False, quiet=True, display=f"take {LOCK_PATH}")
    if res.ok:
        return Outcome(what, True, dry_run, actions=[f"took it for {me.describe()}"])
    raw = host.read_text(LOCK_PATH)
    decision, why = plan_take(parse_holder(raw), me, raw=raw)
    if decision == "refuse":
        raise SafetyCheckFailed(
            f"{host.name} is being changed by another run: {why}",
            hint=f"Wait for that run to finish, or ask its operator. If it is over (hcbpg runs {me.env} on "
                 f"its machine), remove {LOCK_PATH} on {host.name} and run this step again.")
    host.put_text(LOCK_PATH, me.to_json(), mode=0o600)
    note = "took it over from this run's earlier attempt" if decision == "ours" else f"took over a stale lock: {why}"
    print(f"[{host.name}] {note}")
    return Outcome(what, True, dry_run, actions=[note])


def release_change_lock(host: "Host", me: Holder) -> bool:
    """Remove the lock if this run holds it; returns whether it did."""
    current = parse_holder(host.read_text(LOCK_PATH))
    if current is None or current.run_id != me.run_id or current.env != me.env:
        return False
    host.run(f"rm -f {shlex.quote(LOCK_PATH)}", quiet=True, display=f"release {LOCK_PATH}")
    return True


def describe_lock(text: str | None) -> Mapping[str, Any] | None:
    """The lock file as a mapping, for status output (None when free)."""
    h = parse_holder(text)
    return dict(h.__dict__) if h else None
