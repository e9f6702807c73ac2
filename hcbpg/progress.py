"""Progress of long work, from the work itself: what, how far, the rate and the time left.

Foundation: it depends on nothing of hcbpg but :mod:`hcbpg.secrets` (every line is scrubbed),
so any layer may report progress.  Pure parts (:func:`render_line`, :class:`Rate`,
:class:`Throttle`) have injectable clocks; :class:`Reporter` prints a short record (a line per
kind of work at most every ``every`` seconds: it lands in the notebook) and, when the runner
asks for it through :data:`PROGRESS_FILE_ENV`, appends every sample as a JSON line to a file
the runner follows for the terminal's live view.

    rep = Reporter()
    rep.update("copy", "public.events", done=41_000_000, total=100_000_000, unit="bytes")
    # copy public.events: 41% 39.1 MB of 95.4 MB, 12.0 MB/s, 5s left
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hcbpg import secrets as hsecrets

#: the file (JSON lines) the runner follows to show live progress in its terminal
PROGRESS_FILE_ENV = "HCBPG_PROGRESS_FILE"
#: seconds between two lines of one kind of work in the notebook (default 5)
PROGRESS_EVERY_ENV = "HCBPG_PROGRESS_EVERY"
DEFAULT_EVERY = 5.0


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: float, unit: str) -> str:
    if unit == "bytes":
        return human_bytes(n)
    return f"{int(n):,} {unit}"


def human_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


@dataclass(frozen=True)
class Sample:
    """One look at one piece of work: *kind* (copy, index, basebackup, backup, download), *what*
    (a table, an index, a server), *done* of *total* (None: not known) in *unit*; *phase* as the
    work names it; *rate* per second and *eta* seconds when known."""

    kind: str
    what: str
    done: float
    total: float | None = None
    unit: str = "bytes"
    phase: str = ""
    rate: float | None = None
    eta: float | None = None
    detail: str = ""

    @property
    def percent(self) -> float | None:
        if not self.total or self.total <= 0:
            return None
        return max(0.0, min(100.0, 100.0 * self.done / self.total))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "done": self.done, "total": self.total, "unit": self.unit,
                "phase": self.phase, "rate": self.rate, "eta": self.eta, "percent": self.percent,
                "detail": self.detail}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sample":
        return cls(kind=str(d["kind"]), what=str(d["what"]), done=float(d["done"]),
                   total=None if d.get("total") is None else float(d["total"]), unit=str(d.get("unit", "bytes")),
                   phase=str(d.get("phase", "")), rate=d.get("rate"), eta=d.get("eta"),
                   detail=str(d.get("detail", "")))


def render_line(s: Sample) -> str:
    """``copy public.events: 41% 39.1 MB of 95.4 MB, 12.0 MB/s, 5s left``."""
    pct = s.percent
    parts = [f"{s.kind} {s.what}:"]
    if s.phase:
        parts.append(s.phase)
    if pct is not None:
        parts.append(f"{pct:.0f}%")
    rest = []
    if s.unit != "percent":  # work that reports only its percentage (pgBackRest's info): no amount, no rate
        amount = human_count(s.done, s.unit)
        if s.total:
            amount += f" of {human_count(s.total, s.unit)}"
        rest.append(amount)
        if s.rate is not None and s.rate > 0:
            rest.append(f"{human_count(s.rate, s.unit)}/s")
    if s.eta is not None:
        rest.append(f"{human_seconds(s.eta)} left")
    if s.detail:
        rest.append(s.detail)
    return " ".join(parts) + (" " + ", ".join(rest) if rest else "")


@dataclass
class Rate:
    """Rate and time left of one piece of work from its samples (over the last *window* seconds)."""

    window: float = 30.0
    points: list[tuple[float, float]] = field(default_factory=list)

    def add(self, t: float, done: float, *, started_ago: float | None = None) -> None:
        """A sample at *t*; *started_ago* (seconds, when the work tells when it began) gives the
        first sample a rate at once: the work stood at 0 that long ago."""
        if self.points and done < self.points[-1][1]:  # the work started over (a new attempt)
            self.points.clear()
        if not self.points and started_ago is not None and started_ago > 0 and done > 0:
            self.points.append((t - started_ago, 0.0))
        self.points.append((t, done))
        while len(self.points) > 2 and t - self.points[0][0] > self.window:
            self.points.pop(0)

    @property
    def per_second(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, d0), (t1, d1) = self.points[0], self.points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None

    def eta(self, total: float | None) -> float | None:
        r = self.per_second
        if not total or not r or r <= 0 or not self.points:
            return None
        return max(0.0, (total - self.points[-1][1]) / r)


@dataclass
class Throttle:
    """``ready(key)`` is true at most once every *every* seconds per key (first time: at once)."""

    every: float
    clock: Callable[[], float] = time.monotonic
    last: dict[str, float] = field(default_factory=dict)

    def ready(self, key: str) -> bool:
        now = self.clock()
        t = self.last.get(key)
        if t is not None and now - t < self.every:
            return False
        self.last[key] = now
        return True


def _every_from_env() -> float:
    try:
        return float(os.environ.get(PROGRESS_EVERY_ENV) or DEFAULT_EVERY)
    except ValueError:
        return DEFAULT_EVERY


class Reporter:
    """Takes samples of long work: prints a line per kind at most every *every* seconds (the
    notebook's short record), and appends each sample to the runner's progress file (when the
    runner set :data:`PROGRESS_FILE_ENV`) for the terminal's live view."""

    def __init__(self, *, echo: Callable[[str], None] = print, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic, live_file: str | None = None) -> None:
        self.echo = echo
        self.clock = clock
        self.throttle = Throttle(_every_from_env() if every is None else every, clock)
        self.rates: dict[tuple[str, str], Rate] = {}
        self.live_file = live_file if live_file is not None else os.environ.get(PROGRESS_FILE_ENV)
        self.printed: list[str] = []
        self._with_percent: set[str] = set()

    def sample(self, kind: str, what: str, *, done: float, total: float | None = None, unit: str = "bytes",
               phase: str = "", detail: str = "", started_ago: float | None = None) -> Sample:
        """The sample with its rate and time left (from earlier samples of the same work, or from
        when the work began, *started_ago* seconds, when it says)."""
        rate = self.rates.setdefault((kind, what), Rate())
        rate.add(self.clock(), done, started_ago=started_ago)
        return Sample(kind, hsecrets.scrub(what), done, total, unit, phase, rate.per_second, rate.eta(total),
                      hsecrets.scrub(detail))

    def update(self, kind: str, what: str, *, done: float, total: float | None = None, unit: str = "bytes",
               phase: str = "", detail: str = "", started_ago: float | None = None) -> Sample:
        s = self.sample(kind, what, done=done, total=total, unit=unit, phase=phase, detail=detail,
                        started_ago=started_ago)
        self._live(s)
        # the first sample that knows how far it is gets a line even within the interval
        first_percent = s.percent is not None and kind not in self._with_percent
        if first_percent:
            self._with_percent.add(kind)
            self.throttle.last.pop(kind, None)
        if self.throttle.ready(kind):
            line = render_line(s)
            self.printed.append(line)
            self.echo(line)
        return s

    def finish(self, kind: str, what: str, line: str) -> None:
        """The end of one piece of work: always printed (and sent to the live view)."""
        self.rates.pop((kind, what), None)
        self._live(Sample(kind, hsecrets.scrub(what), 0, None, "", "", None, None, hsecrets.scrub(line)), end=True)
        self.echo(hsecrets.scrub(line))

    def _live(self, s: Sample, *, end: bool = False) -> None:
        if not self.live_file:
            return
        try:
            with open(self.live_file, "a", encoding="utf-8") as f:
                f.write(json.dumps({**s.as_dict(), "end": end}) + "\n")
        except OSError:
            self.live_file = None  # the runner went away: the notebook's lines still tell


def read_samples(path: str, offset: int) -> tuple[list[tuple[Sample, bool]], int]:
    """The samples appended to *path* since *offset* (whole lines only) and the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    out = []
    for raw in data[:end].splitlines():
        try:
            d = json.loads(raw)
            out.append((Sample.from_dict(d), bool(d.get("end"))))
        except (ValueError, KeyError, TypeError):
            continue
    return out, offset + end + 1
