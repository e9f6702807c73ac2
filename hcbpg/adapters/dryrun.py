"""Hosts that change nothing: a dry run, and a server that is not there yet (pyinfra's model).

    DryRunHost(host)      reads the real *host* (probes, files) and records every command and
                          write instead of doing it: an ``ensure_*`` runs its one code path, and
                          what it would change is its journal
    AbsentHost(name)      a server that does not exist yet: "nothing is there" (every probe says
                          command not found, no file exists); it records like a dry run

An operation does not ask which one it has: it reads, decides, runs and writes, and its
``changed`` is what the journal gained (:class:`~hcbpg.adapters.base.Changes`).  A file written
on a dry run is seen by later reads of the same DryRunHost (the would-be state), never on the
server.  Commands that only read must be probes (``host.probe``, ``Psql.query``): a ``run`` on a
DryRunHost returns exit 0 with no output, since nothing ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hcbpg.adapters.base import HostLike, Result
from hcbpg.secrets import scrub

#: the exit status a probe gets on an AbsentHost (the shell's "command not found")
NOTHING_THERE_EXIT = 127


class DryRunHost:
    """A :class:`~hcbpg.adapters.base.HostLike` that reads *inner* and records what it would change."""

    dry_run = True

    def __init__(self, inner: HostLike | None, *, name: str | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.inner = inner
        if name is None:
            if inner is None:
                raise ValueError("a DryRunHost without a host to read needs a name")
            name = inner.name
        self.name: str = name
        self.echo: Callable[[str], None] = echo or (inner.echo if inner is not None else print)
        #: HostLike: what would have been run or written, in order
        self.journal: list[str] = []
        #: files this dry run would have written: later reads see them
        self.files: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})" if self.inner is not None else \
            f"{type(self).__name__}({self.name!r})"

    # what would change -----------------------------------------------------------------
    def run(self, cmd: str, *, sudo_user: str | None = None, check: bool = True, stdin: str | None = None,
            quiet: bool = False, display: str | None = None, timeout: float | None = None,
            hint: str | None = None) -> Result:
        """Record *cmd* (as shown) and say so; nothing runs: exit 0, no output."""
        shown = scrub(display if display is not None else (cmd if not sudo_user else f"[as {sudo_user}] {cmd}"))
        self.journal.append(shown)
        if not quiet:
            self.echo(f"[{self.name}] [dry run] would run: {shown}")
        return Result(self.name, shown, 0, "", "", 0.0)

    def put_text(self, path: str, text: str, *, mode: int = 0o644, owner: str = "root",
                 group: str | None = None, dry_run: bool = False) -> None:
        """Record the write (later reads see *text*); nothing is written."""
        self.journal.append(f"write {path}")
        self.files[path] = text
        self.echo(f"[{self.name}] [dry run] would write {path} ({len(text.encode())} bytes, mode {mode:04o}, "
                  f"owner {owner}:{group or owner})")

    # reads: the real host, as this dry run would have left it ---------------------------
    def probe(self, cmd: str, **kw: Any) -> Result:
        if self.inner is None:
            return Result(self.name, cmd, NOTHING_THERE_EXIT, "", f"{self.name} does not exist yet", 0.0)
        return self.inner.probe(cmd, **kw)

    def exists(self, path: str) -> bool:
        if path in self.files:
            return True
        return self.inner is not None and self.inner.exists(path)

    def read_text(self, path: str, *, sudo_user: str | None = None) -> str | None:
        if path in self.files:
            return self.files[path]
        if self.inner is None:
            return None
        return self.inner.read_text(path, sudo_user=sudo_user)


class AbsentHost(DryRunHost):
    """A server that does not exist yet: nothing is there, and what would be done is recorded."""

    def __init__(self, name: str, *, echo: Callable[[str], None] | None = None) -> None:
        super().__init__(None, name=name, echo=echo)


def dry_run_of(host: HostLike, dry_run: bool) -> HostLike:
    """*host* itself, or a :class:`DryRunHost` over it when *dry_run* (idempotent: a DryRunHost stays itself)."""
    if not dry_run or host.dry_run:
        return host
    return DryRunHost(host)
