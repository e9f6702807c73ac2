"""One polling helper with a deadline, for every ``wait_for_*`` in hcbpg (like Patroni's
``polling_loop``/``Retry``): the clock and the sleep are injectable, so tests need no real time.

    value = wait_until(lambda: psql.value("SELECT ..."), lambda v: v == "t",
                       what="the replica to catch up", timeout=60, interval=0.2,
                       hint="Look at pg_stat_replication on the primary.")

The probe is called first without sleeping; ``WaitTimeout`` carries what was awaited, for how
long, and the last value the probe returned (rendered by *describe*, default ``repr``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from hcbpg.errors import WaitTimeout

T = TypeVar("T")

_UNSET: object = object()


@dataclass
class Deadline:
    """A deadline on an injectable clock: ``remaining``, ``expired``, ``elapsed``."""

    timeout: float
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started = self.clock()

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def remaining(self) -> float:
        return max(0.0, self.timeout - self.elapsed)

    @property
    def expired(self) -> bool:
        return self.elapsed >= self.timeout


def polling_loop(timeout: float, *, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> Iterator[float]:
    """Yield the elapsed seconds, first at once, then every *interval*, until *timeout* has passed.

    The caller breaks out when its condition holds; a loop that ends without ``break`` has
    timed out (``for ... else: raise ...``).
    """
    deadline = Deadline(timeout, clock)
    while True:
        yield deadline.elapsed
        if deadline.expired:
            return
        sleep(min(interval, max(deadline.remaining, 0.0)) if deadline.remaining > 0 else 0.0)
        if deadline.expired:
            yield deadline.elapsed  # one last look at the deadline itself
            return


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], *, what: str, timeout: float,
               interval: float = 1.0, hint: str | None = None, describe: Callable[[T], str] = repr,
               sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> T:
    """Call *probe* until ``done(value)``; return that value, or raise WaitTimeout at the deadline."""
    last: object = _UNSET
    elapsed = 0.0
    for elapsed in polling_loop(timeout, interval=interval, sleep=sleep, clock=clock):  # noqa: B007 - read after the loop
        value = probe()
        last = value
        if done(value):
            return value
    seen = "nothing" if last is _UNSET else describe(last)  # type: ignore[arg-type]
    raise WaitTimeout(f"gave up waiting for {what} after {elapsed:.0f}s (last seen: {seen})",
                      what=what, timeout=timeout, elapsed=elapsed, last=None if last is _UNSET else last,
                      hint=hint)
