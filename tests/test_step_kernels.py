"""The runner's step kernels (hcbpg.engine.runner.StepKernels): the next step's kernel started ahead, with its own
progress file, in the run's directory, the runbook already imported; each shut down after its step, the one
started ahead of a step that does not run shut down unused."""

from __future__ import annotations

import json
from pathlib import Path

from hcbpg import progress as hprogress
from hcbpg.engine.runner import PRELOADED, StepKernels


def _ask(km, code: str) -> tuple[str, int]:  # noqa: ANN001 - a jupyter_client KernelManager
    """What *code* printed in the kernel, and the execution count of its cell."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute(code)
        out, count = "", -1
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out += msg["content"]["text"]
            elif msg["msg_type"] == "execute_input":
                count = msg["content"]["execution_count"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out, count
    finally:
        kc.stop_channels()


def test_the_next_kernel_starts_ahead_with_its_own_progress_file_and_each_is_shut_down(tmp_path: Path):
    kernels = StepKernels("python3", tmp_path, lambda sample, end: None)
    first = kernels.take(more=True)
    try:
        ahead = kernels._next
        assert ahead is not None, "the next step's kernel was not started ahead"
        assert first[0].is_alive() and ahead[0].is_alive()
        assert first[1].path != ahead[1].path, "two steps shared a progress file"
        probe = ("import os, sys, json; print(json.dumps([os.getcwd(), "
                 f"os.environ.get({hprogress.PROGRESS_FILE_ENV!r}), [m in sys.modules for m in {PRELOADED!r}]]))")
        out, count = _ask(ahead[0], probe)
        cwd, progress_file, loaded = json.loads(out)
        assert Path(cwd) == tmp_path and progress_file == ahead[1].path
        assert all(loaded), f"not imported ahead: {dict(zip(PRELOADED, loaded, strict=True))}"
        assert count == 1, "the imports ahead took a place in the notebook's history"
        kernels.done(first)
        assert not first[0].is_alive() and not Path(first[1].dir).exists()
        second = kernels.take(more=False)
        assert second is ahead and kernels._next is None, "the kernel started ahead was not the one used"
        kernels.done(second)
        assert not second[0].is_alive()
        # a kernel started ahead of a step that does not run (the run stopped) is shut down unused
        third = kernels.take(more=True)
        unused = kernels._next
        assert unused is not None
        kernels.done(third)
        kernels.close()
        assert not unused[0].is_alive() and not Path(unused[1].dir).exists()
        assert kernels._next is None
    finally:
        for km in kernels.made:
            if km.has_kernel and km.is_alive():
                km.shutdown_kernel(now=True)


def test_the_first_kernel_started_as_the_run_opens_is_the_one_its_step_takes(tmp_path: Path):
    kernels = StepKernels("python3", tmp_path, lambda sample, end: None)
    try:
        kernels.prestart()
        early = kernels._next
        assert early is not None and early[0].is_alive(), "the first step's kernel was not started ahead"
        kernels.prestart()
        assert kernels._next is early, "a second prestart started another kernel"
        this = kernels.take(more=False)
        assert this is early and kernels._next is None and len(kernels.made) == 1
        out, _ = _ask(this[0], "import os; print(os.getcwd())")
        assert Path(out.strip()) == tmp_path
        kernels.done(this)
        assert not this[0].is_alive() and not Path(this[1].dir).exists()
    finally:
        kernels.close()
        for km in kernels.made:
            if km.has_kernel and km.is_alive():
                km.shutdown_kernel(now=True)
