"""One run per environment at a time: an exclusive lock for the whole of a run, approve or guided session.

An ``fcntl.flock`` on ``<state dir>/locks/<env>.lock`` (the kernel drops it when the holder dies,
so a killed run never leaves a stale lock on this machine), and in the same file a record of who
holds it (operator, pid, machine, since, what for) so that a second run is refused with that.
Two operators on different machines are kept apart by the lock on the primary
(:mod:`hcbpg.ops.server_lock`), taken by the steps that change it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hcbpg.engine import manifest as mf
from hcbpg.engine.state import lock_path, state_dir
from hcbpg.errors import UsageError

__all__ = ["EnvLock", "describe_holder", "env_lock", "lock_path", "read_holder", "state_dir"]


def describe_holder(record: dict[str, Any]) -> str:
    """``run 1a2b3c4d by alice (pid 4242 on ops-laptop) since 2026-12-02T17:50:01Z``, from a lock record."""
    what = record.get("purpose") or "a run"
    run = f" {record['run_id']}" if record.get("run_id") else ""
    return (f"{what}{run} by {record.get('operator', '?')} (pid {record.get('pid', '?')} on "
            f"{record.get('machine', '?')}) since {record.get('since', '?')}")


def read_holder(env: str, base: Path | None = None) -> dict[str, Any] | None:
    try:
        text = lock_path(env, base).read_text()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return None
    return rec if isinstance(rec, dict) else None


class EnvLock:
    """A held environment lock and its record."""

    def __init__(self, fd: int, record: dict[str, Any]) -> None:
        self.fd = fd
        self.record = record

    def note_run(self, run_id: str) -> None:
        """Name the run in the lock record (once it has an id), for whoever is refused."""
        self.record["run_id"] = run_id
        _write(self.fd, self.record)


@contextlib.contextmanager
def env_lock(env: str, *, purpose: str, base: Path | None = None) -> Iterator[EnvLock]:
    """Hold *env*'s lock for the block; refuses at once (UsageError) when another process holds it."""
    path = lock_path(env, base)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(env, base) or {}
            raise UsageError(f"{env} is in use: {describe_holder(holder)}; one run per environment at a time",
                             hint="Wait for it to end (hcbpg runs " + env + " shows its progress), or ask its "
                                  "operator. The lock goes with its process; nothing needs removing by hand.") \
                from None
        record = {"env": env, "purpose": purpose, "operator": mf.operator_name(), "pid": os.getpid(),
                  "machine": socket.gethostname(), "since": mf.utcnow(), "run_id": None}
        _write(fd, record)
        try:
            yield EnvLock(fd, record)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write(fd: int, record: dict[str, Any]) -> None:
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
