"""The locks that keep two runs apart (pure): who holds one (:class:`Holder`, as recorded in the lock),
and whether a run may take it.

    the primary's change lock      /var/lib/hcbpg/change.lock on the primary (:mod:`hcbpg.ops.server_lock`)
    the environment's lock         hcbpg-locks/<repository path>/<env>.json in the backup bucket
                                   (:mod:`hcbpg.ops.env_lock`), for the steps that wipe or promote a server
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg.clock import utcnow
from hcbpg.desired.pgbackrest import repo_path
from hcbpg.procs import process_alive

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

LOCK_DIR = "/var/lib/hcbpg"
LOCK_PATH = f"{LOCK_DIR}/change.lock"
ENV_LOCK_PREFIX = "hcbpg-locks"
#: the steps that take the environment's lock: they wipe a server's data directory or promote one
DESTRUCTIVE_STEPS = ("10_replication", "11_failover")


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


def plan_take_change_lock(current: Holder | None, me: Holder, *, raw: str | None = None,
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


def plan_take_env_lock(current: Holder | None, me: Holder, *, raw: bytes | None = None) -> tuple[str, str]:
    """``(decision, why)``: ``ours`` (this run holds it: a resume) or ``refuse`` (anyone else, alive or not)."""
    if current is None:
        text = (raw or b"").decode(errors="replace").strip()
        return "refuse", f"an object hcbpg cannot read: {text[:200]!r}"
    if current.run_id == me.run_id and current.env == me.env:
        return "ours", f"held by this run ({current.describe()})"
    return "refuse", current.describe()


def lock_key(params: Params) -> str:
    """``hcbpg-locks/<repository path>/<env>.json``: beside pgBackRest's repository, never inside it."""
    return f"{ENV_LOCK_PREFIX}/{repo_path(params).strip('/')}/{params.environment}.json"


def describe_lock(text: str | None) -> Mapping[str, Any] | None:
    """The lock file as a mapping, for status output (None when free)."""
    h = parse_holder(text)
    return dict(h.__dict__) if h else None
