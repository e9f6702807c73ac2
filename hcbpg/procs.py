"""Processes on this machine: whether one recorded earlier (a runner, a lock holder) still runs."""

from __future__ import annotations

import os


def process_alive(pid: int) -> bool:
    """True when process *pid* exists on this machine (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
