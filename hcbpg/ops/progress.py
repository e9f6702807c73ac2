"""Polling the work's own progress while a long call blocks: a thread samples the target's
``pg_stat_progress_copy`` and ``pg_stat_progress_create_index`` (through :func:`hcbpg.wait.polling_loop`)
and hands each sample to a :class:`hcbpg.progress.Reporter`; the base backup, pgBackRest and the
Heroku download sample from their own loops through the same reporter.

    with run_restore_watcher(host, params, sizes=get_source_sizes(source)):
        host.run(...)  # the long call
"""

from __future__ import annotations

import contextlib
import shlex
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.errors import HcbpgError
from hcbpg.ops import cluster as pg_cluster
from hcbpg.pg.progress import (
    RESTORE_PROGRESS_SQL,
    SOURCE_SIZES_SQL,
    Progress,
    parse_sizes,
    plan_copy_progress,
    plan_index_progress,
)
from hcbpg.progress import Reporter
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import EndpointLike, HostLike, PsqlLike
    from hcbpg.params import Params

#: seconds between two looks at the progress views (each is one psql over the open SSH connection)
POLL_INTERVAL = 0.5


def get_source_sizes(source: "EndpointLike") -> dict[str, tuple[int, int | None]]:
    """The source's tables: name -> (heap bytes, estimated rows); empty when it cannot be read
    (progress then shows what was done, without a percentage)."""
    try:
        return parse_sizes(source.rows(SOURCE_SIZES_SQL))
    except HcbpgError:
        return {}


def _report(reporter: Reporter, p: Progress) -> None:
    reporter.update(p.kind, p.what, done=p.done, total=p.total, unit=p.unit, phase=p.phase, detail=p.detail,
                    started_ago=p.started_ago)


class Watcher:
    """A daemon thread calling *sample* every *interval* seconds until stopped; a failed look is
    skipped (the database may not exist yet), never raised: progress must not fail the work."""

    def __init__(self, sample: Callable[[], None], *, interval: float = POLL_INTERVAL) -> None:
        self.sample = sample
        self.interval = interval
        self.stopped = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._loop, name="hcbpg-progress", daemon=True)

    def _sleep(self, s: float) -> None:
        self.stopped.wait(s)

    def _loop(self) -> None:
        for _ in polling_loop(float("inf"), interval=self.interval, sleep=self._sleep):
            if self.stopped.is_set():
                return
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a look that fails is skipped; the work goes on
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])

    def __enter__(self) -> "Watcher":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)


def get_restore_progress(psql: "PsqlLike", database: str, sizes: Mapping[str, tuple[int, int | None]],
                   reporter: Reporter) -> list[Progress]:
    """One look at the COPYs and index builds running in *database*, reported; returns them."""
    (row,) = psql.query(RESTORE_PROGRESS_SQL, dbname=database)
    found = plan_copy_progress(list(row["copy"] or []), sizes) + plan_index_progress(list(row["index"] or []))
    for p in found:
        _report(reporter, p)
    return found


@contextlib.contextmanager
def run_restore_watcher(host: "HostLike", params: "Params", *, sizes: Mapping[str, tuple[int, int | None]],
                  reporter: Reporter | None = None, database: str | None = None,
                  interval: float = POLL_INTERVAL) -> Iterator[Reporter]:
    """While the block runs: the rows copied into and the indexes built in the target database,
    against the source's *sizes*, every *interval* seconds."""
    rep = reporter or Reporter()
    pg = params.postgres
    psql = pg_cluster.get_psql(host, params)
    db = database or pg.database
    seen: dict[str, Any] = {}

    def sample() -> None:
        for p in get_restore_progress(psql, db, sizes, rep):
            seen[f"{p.kind} {p.what}"] = p

    with Watcher(sample, interval=interval):
        yield rep
    copies = sum(1 for k in seen if k.startswith("copy "))
    builds = sum(1 for k in seen if k.startswith("index "))
    if seen:
        rep.echo(f"progress: watched {copies} table copy(ies) and {builds} index build(s) as they ran")


@contextlib.contextmanager
def run_file_growth_watcher(host: "HostLike", path: str, *, kind: str, what: str, total: int | None = None,
                      reporter: Reporter | None = None, interval: float = 1.0) -> Iterator[Reporter]:
    """While the block runs: the size of *path* on *host* (a download), against *total* when known."""
    rep = reporter or Reporter()

    def sample() -> None:
        res = host.probe(f"stat -c %s {shlex.quote(path)}")
        if res.ok and res.stdout.strip().isdigit():
            rep.update(kind, what, done=int(res.stdout.strip()), total=total, unit="bytes")

    with Watcher(sample, interval=interval):
        yield rep
