"""What the terminal of ``hcbpg run`` shows while a step runs, and the recap at the end.

* :class:`CellOutput`: papermill's ``stdout_file``/``stderr_file``: every line a cell prints,
  scrubbed, to the runner's ``progress`` as it comes (``hcbpg run -v``).  papermill's own
  ``log_output`` sends it to its logger, which has only the run log's handler (papermill #496).
* :class:`ProgressFollower`: follows the step's progress file (the kernel's
  :class:`hcbpg.progress.Reporter` appends every sample) and hands each sample to a live view:
  :class:`LiveLines` (a line per kind of work every few seconds, for a log or a pipe) or the
  CLI's bar on a terminal (:func:`render_live_bar`, ``rich``'s).
* :func:`render_recap`: one line per step from the manifest, like Ansible's recap (columns by ``rich``).
* :func:`colour_report`: the statuses of those in colour, on a terminal only.
* :func:`render_failure`: why a step failed, above the recap: each failed check with its whole reason
  (wrapped, never cut; one reason shared by several checks said once), or the error's whole message
  (the way Ansible prints a failed task's ``msg``).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import textwrap
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.highlighter import RegexHighlighter
from rich.progress_bar import ProgressBar
from rich.text import Text
from rich.theme import Theme

from hcbpg import progress as hprogress
from hcbpg import secrets as hsecrets
from hcbpg.display import UNLIMITED, grid, render_rich

CELL_PREFIX = "      | "


class CellOutput:
    """A file-like sink for papermill's cell output: whole lines, scrubbed, to *emit*."""

    def __init__(self, emit: Callable[[str], None], prefix: str = CELL_PREFIX) -> None:
        self.emit = emit
        self.prefix = prefix
        self.buf = ""
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.buf += text.replace("\r\n", "\n").replace("\r", "\n")
            *lines, self.buf = self.buf.split("\n")
        for line in lines:
            self.emit(self.prefix + hsecrets.scrub(line))
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        with self.lock:
            rest, self.buf = self.buf, ""
        if rest:
            self.emit(self.prefix + hsecrets.scrub(rest))


class LiveLines:
    """The live view without a terminal: a line per kind of work at most every *every* seconds."""

    def __init__(self, emit: Callable[[str], None], *, every: float = 2.0) -> None:
        self.emit = emit
        self.throttle = hprogress.Throttle(every)

    def __call__(self, sample: hprogress.Sample, end: bool) -> None:
        if end:
            return  # the notebook's own line says it
        if self.throttle.ready(sample.kind):
            self.emit("      ~ " + hsecrets.scrub(hprogress.render_line(sample)))


#: the live bar's length in columns (the line after it is what the work says)
BAR_WIDTH = 24


def render_live_bar(sample: hprogress.Sample, width: int, *, color: bool = True) -> str:
    """One line of at most *width* columns for a terminal: ``rich``'s bar of *sample* (a pulse when the total is
    not known), then its line (:func:`hcbpg.progress.render_line`, scrubbed), cut with an ellipsis to fit."""
    pct = sample.percent
    color = color and not os.environ.get("NO_COLOR")
    bar: ProgressBar | Text = ProgressBar(
        total=None if pct is None else 100.0, completed=pct or 0.0, width=BAR_WIDTH, pulse=pct is None,
        style="bright_black", complete_style="green", finished_style="green")
    if pct is None and not color:  # a pulse without colour is a row of identical dashes: say it instead
        bar = Text("(how far: not known)")
    text = Text(hsecrets.scrub(hprogress.render_line(sample)), no_wrap=True)
    text.truncate(max(width - BAR_WIDTH - 2, 8), overflow="ellipsis")  # the bar keeps its length, the words give way
    table = grid()
    table.add_column(width=BAR_WIDTH, no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_row(bar, text)
    return render_rich(table, color=color).rstrip("\n").split("\n")[0]


class ProgressFollower:
    """For the time of one step: a private progress file (its path in the kernel's environment,
    :data:`hcbpg.progress.PROGRESS_FILE_ENV`) and a thread handing its new samples to *live*."""

    def __init__(self, live: Callable[[hprogress.Sample, bool], None], *, interval: float = 0.5) -> None:
        self.live = live
        self.interval = interval
        self.stop = threading.Event()
        self.dir = tempfile.mkdtemp(prefix="hcbpg-progress-")  # 0700, ours alone
        #: the file the step's kernel appends its samples to: named in the kernel's environment
        #: (``hprogress.PROGRESS_FILE_ENV``) by whoever starts that kernel (see :meth:`kernel_env`)
        self.path = os.path.join(self.dir, "samples.jsonl")
        open(self.path, "w").close()
        self.thread = threading.Thread(target=self._loop, name="hcbpg-progress-follower", daemon=True)

    def kernel_env(self) -> dict[str, str]:
        """The environment for the kernel whose samples this follows: this process's, and the samples' file."""
        return {**os.environ, hprogress.PROGRESS_FILE_ENV: self.path}

    def start(self) -> "ProgressFollower":
        return self.__enter__()

    def close(self) -> None:
        self.__exit__()

    def __enter__(self) -> "ProgressFollower":
        self.thread.start()
        return self

    def _loop(self) -> None:
        offset = 0
        while True:
            stopping = self.stop.wait(self.interval)
            samples, offset = hprogress.read_samples(self.path, offset)
            for sample, end in samples:
                try:
                    self.live(sample, end)
                except Exception:  # noqa: BLE001, S110 - the live view must never fail the step
                    pass
            if stopping:
                return

    def __exit__(self, *exc: object) -> None:
        """Stop following (the last samples shown first) and remove the file; also for one never started."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def recap_counts(step: dict[str, Any]) -> dict[str, Any]:
    """ok / changed / warnings / failed of one manifest step, and its failing checks by name."""
    checks = step.get("checks") or (step.get("summary") or {}).get("checks") or {}
    failed_checks = [c for c in checks.get("not_passed", []) if c.get("status") == "fail"]
    failed = int(checks.get("fail") or 0)
    if step.get("status") == "failed" and not failed:
        failed = 1  # the step failed on something other than a check: that is one failure
    return {"ok": int(checks.get("pass") or 0), "changed": int(step.get("changes") or 0),
            "warnings": int(checks.get("warn") or 0), "failed": failed,
            "skipped": 1 if step.get("status") == "skipped" else 0,
            "failed_checks": [c["name"] + (f" on {c['target']}" if c.get("target") else "") for c in failed_checks],
            "warned_checks": [c["name"] + (f" on {c['target']}" if c.get("target") else "")
                              for c in checks.get("not_passed", []) if c.get("status") == "warn"]}


def skip_reason(step: dict[str, Any]) -> str:
    """Why a ``skipped`` step ended itself early (its last attempt's note), '' for any other."""
    if step.get("status") != "skipped" or not step.get("attempts"):
        return ""
    note = str(step["attempts"][-1].get("note") or "")
    return note.removeprefix("skipped: ")


def render_recap(data: dict[str, Any]) -> list[str]:
    """One line per step: ``  07_cutover  failed  ok=12 changed=3 warnings=0 failed=1 skipped=0  41.2s``
    (Ansible's recap, its columns laid out by ``rich``: a step that ended itself early with nothing to do is
    ``skipped``, with its reason under it), and under a step that failed or warned, the checks' names."""
    steps = data.get("steps", [])
    table = grid()
    for _ in range(7):  # step, status, ok, changed, warnings, failed, skipped: no header, none measured
        table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)  # seconds
    counts = [recap_counts(s) for s in steps]
    for s, c in zip(steps, counts, strict=True):
        table.add_row(s["key"], s["status"], *(f"{k}={c[k]}" for k in ("ok", "changed", "warnings", "failed",
                                                                        "skipped")),
                      f"{s.get('duration_s') or 0:.1f}s")
    rows = render_rich(table).splitlines() if steps else []  # a row is one line: never wrapped
    lines: list[str] = []
    cols = report_width()
    pad = " " * (max([len(s["key"]) for s in steps] + [0]) + 4)  # under the status column
    for s, c, row in zip(steps, counts, rows, strict=True):
        lines.append("  " + row.rstrip())
        if c["skipped"] and skip_reason(s):
            lines += _wrapped(f"skipped: {hsecrets.scrub(skip_reason(s))}", cols, pad + "  ", first=pad)
        if c["failed_checks"]:
            lines += _wrapped(f"failed checks: {hsecrets.scrub(', '.join(c['failed_checks']))}", cols, pad + "  ",
                              first=pad)
        if c["warned_checks"]:
            lines += _wrapped(f"warnings: {hsecrets.scrub(', '.join(c['warned_checks']))}", cols, pad + "  ",
                              first=pad)
    return lines


def report_width() -> int:
    """The width reasons are wrapped at: the terminal's (60 to 120 columns); a log or a pipe gets each
    reason on one line (never cut either way), so a search for a message finds it whole."""
    if not os.isatty(1):
        return 100_000
    return max(60, min(120, shutil.get_terminal_size((100, 24)).columns))


#: the error a step fails with when its own checks failed (hcbpg.errors.VerificationFailed)
CHECKS_FAILED = "VerificationFailed"


def _wrapped(text: str, width: int, indent: str, first: str | None = None) -> list[str]:
    """*text* wrapped at *width*, each of its own lines kept, no word ever cut (a long URL overflows)."""
    out: list[str] = []
    for i, para in enumerate(text.splitlines() or [""]):
        lead = first if (first is not None and i == 0) else indent
        out += textwrap.wrap(para, width, initial_indent=lead, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False, drop_whitespace=True) or [lead.rstrip()]
    return out


def failed_checks(step: dict[str, Any]) -> list[dict[str, Any]]:
    """A manifest step's failed checks (name, target, status, detail)."""
    checks = step.get("checks") or (step.get("summary") or {}).get("checks") or {}
    return [c for c in checks.get("not_passed", []) if c.get("status") == "fail"]


def render_failure(data: dict[str, Any], key: str, error: dict[str, Any] | None, *,
                   width: int | None = None) -> list[str]:
    """Why step *key* failed: each failed check with its whole reason, checks that fail for one same
    reason on one line of names; then the error itself when it is not just "the checks failed"."""
    width = width or report_width()
    step: dict[str, Any] = next((s for s in data.get("steps", []) if s.get("key") == key), {})
    failed = failed_checks(step)
    error = error or {}
    ename, evalue = str(error.get("ename") or "error"), str(error.get("evalue") or "")
    lines: list[str] = []
    if failed:
        counts = step.get("checks") or {}
        total = sum(int(counts.get(k) or 0) for k in ("pass", "warn", "fail")) or len(failed)
        lines.append(f"Step {key} failed: {len(failed)} of {total} checks failed")
        by_reason: dict[str, list[str]] = {}
        for c in failed:
            name = str(c.get("name")) + (f" on {c['target']}" if c.get("target") else "")
            by_reason.setdefault(str(c.get("detail") or "(no reason given)"), []).append(name)
        for reason, names in by_reason.items():
            head = ", ".join(names) + (f" ({len(names)} checks, one reason)" if len(names) > 1 else "") + ":"
            lines += _wrapped(head, width, "      ", first="  ✗ ")
            lines += _wrapped(reason, width, "      ")
        if ename != CHECKS_FAILED:  # it failed on something else too
            lines += _wrapped(evalue, width, "      ", first=f"  and then {ename}: ")
    else:
        lines.append(f"Step {key} failed ({ename}):")
        lines += _wrapped(evalue, width, "    ")
    return [hsecrets.scrub(line) for line in lines]


class _ReportHighlighter(RegexHighlighter):
    """The words of a recap, a failure report and ``hcbpg status`` that an operator looks for first."""

    base_style = "hcbpg."
    highlights = [r"(?P<bad>\bfailed=[1-9]\d*|\bfailed\b(?!=)|\bFAIL\b|✗|\bunreachable\b)",
                  r"(?P<warn>\bwarnings=[1-9]\d*|\bWARN\b|\binterrupted\b|\bwaiting\b)",
                  r"(?P<good>\bsucceeded\b|\bOK\b)",
                  r"(?P<skip>\bskipped=[1-9]\d*|\bskipped\b(?!=))"]


_THEME = Theme({"hcbpg.bad": "bold red", "hcbpg.warn": "yellow", "hcbpg.good": "green", "hcbpg.skip": "cyan"})


def colour_report(text: str, *, color: bool) -> str:
    """*text* (a run's end: failure, recap, what next; or ``hcbpg status``) with its statuses in colour when
    *color* (stdout is a terminal) and ``NO_COLOR`` is not set; otherwise *text* itself, byte for byte."""
    if not color or os.environ.get("NO_COLOR") or not text:
        return text
    buf = io.StringIO()
    console = Console(file=buf, width=UNLIMITED, force_terminal=True, color_system="standard", theme=_THEME,
                      highlighter=_ReportHighlighter(), markup=False, emoji=False, soft_wrap=True,
                      legacy_windows=False, force_jupyter=False)
    console.print(text, crop=False, end="")
    return buf.getvalue()
