"""hcbpg's private state on this machine, outside ``outputs/`` and never committed: where it is, and
whether an environment's lock is held right now (the only meaning of a run being *open*).

The lock itself is taken and described by :mod:`hcbpg.engine.locks`; the manifest module asks here,
below it, so that a record never has to say for itself that it is open.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

from hcbpg.params import home


def state_dir(base: Path | None = None) -> Path:
    """hcbpg's private state on this machine (scrub registries, locks, audit anchors): outside ``outputs/``."""
    return Path(os.environ.get("HCBPG_STATE_DIR") or ((base or home()) / ".hcbpg"))


def lock_path(env: str, base: Path | None = None) -> Path:
    return state_dir(base) / "locks" / f"{env}.lock"


def lock_held_now(env: str, base: Path | None = None) -> dict[str, Any] | None:
    """The holder's record when a live process holds *env*'s lock right now (None: nobody holds it).

    The kernel drops an ``flock`` with its holder, so a held lock is a live process, whatever any
    manifest says.  A probe that gets the lock gives it back at once."""
    try:
        fd = os.open(lock_path(env, base), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            data = os.pread(fd, 1 << 16, 0)
            try:
                rec = json.loads(data)
            except json.JSONDecodeError:
                rec = {}
            return rec if isinstance(rec, dict) else {}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
