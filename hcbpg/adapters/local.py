"""The operator's machine as an adapter: a command run here, from an argv (never a shell), finished, its output
captured, no stdin (a CLI that would prompt gets none).  Operations that ask this machine something (the Heroku
CLI, the kernel's routing table) take a :data:`LocalRunner` first, so a test gives them a double."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence

#: runs *argv* on the operator's machine and returns it finished, output captured
LocalRunner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]
#: a local command answers in seconds; past this it is waiting for something (a login prompt, the network)
LOCAL_TIMEOUT_S = 60.0


def run_local(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    """*argv* on this machine, no stdin, at most :data:`LOCAL_TIMEOUT_S` (``TimeoutExpired`` past it;
    ``FileNotFoundError`` when the program is not installed)."""
    return subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=LOCAL_TIMEOUT_S)
