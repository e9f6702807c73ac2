"""A recording test double for :class:`~hcbpg.adapters.base.HostLike` (in the manner of httpx's
``MockTransport``): commands are answered from a script of ``(pattern, reply)`` pairs or by a
handler function, files live in a dict, and every call is recorded in order.

    host = RecordingHost("server-postgres-1",
                         script=[(r"^dpkg-query", "postgresql-15\\tii \\t15.8\\n"),
                                 (r"apt-get (update|install)", "")],
                         files={"/etc/os-release": "VERSION_CODENAME=noble\\n"})
    ensure_packages(host, params, dry_run=False)
    assert host.ran == [...]          # what was run or written, in order

A command that neither the script nor the handler answers raises :class:`UnscriptedCommand`
naming it, so a test never passes on a command it did not expect.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hcbpg.adapters.base import Result
from hcbpg.errors import RemoteCommandError


class UnscriptedCommand(AssertionError):
    """The code under test ran a command that the double has no answer for."""


@dataclass
class Call:
    """One call on the double: ``kind`` is run, probe, read, exists or write."""

    kind: str
    command: str
    sudo_user: str | None = None
    stdin: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


#: what a scripted command answers: a Result, its stdout (exit 0), or a function of the call
#: returning either (``None`` from a function: not answered, try the next entry)
Reply = Result | str | Callable[[Call], Result | str | None]
Pattern = str | re.Pattern[str]


class RecordingHost:
    """A :class:`~hcbpg.adapters.base.HostLike` that answers from a script and records every call.

    *script*: ``(pattern, reply)`` pairs, tried in order, a pattern matching with ``re.search``
    against the command line (a mapping works too). *handler*: called with the :class:`Call`
    when no pattern matched; it returns a reply or ``None``. *files*: the host's files, read by
    ``read_text``/``exists`` and written by ``put_text`` (no command involved).
    """

    def __init__(self, name: str = "host", script: Iterable[tuple[Pattern, Reply]] | Mapping[Pattern, Reply] = (),
                 *, handler: Callable[[Call], Result | str | None] | None = None,
                 files: Mapping[str, str] | None = None, user: str = "root") -> None:
        self.name = name
        self.user = user
        items = script.items() if isinstance(script, Mapping) else script
        self.script: list[tuple[re.Pattern[str], Reply]] = [
            (p if isinstance(p, re.Pattern) else re.compile(p), r) for p, r in items]
        self.handler = handler
        self.files: dict[str, str] = dict(files or {})
        #: every call, in order
        self.calls: list[Call] = []
        #: every file written (not on a dry run): (path, text, mode, owner, group)
        self.written: list[tuple[str, str, int, str, str]] = []
        #: what the host printed
        self.echoed: list[str] = []
        #: HostLike: this double runs what it is told (wrap it in a DryRunHost for a dry run)
        self.dry_run = False
        #: HostLike: each run command and ``write <path>``, in order
        self.journal: list[str] = []
        self.echo: Callable[[str], None] = self.echoed.append

    def __repr__(self) -> str:
        return f"RecordingHost({self.name!r})"

    # what happened -------------------------------------------------------------------
    @property
    def commands(self) -> list[str]:
        """Every command line run or probed, in order."""
        return [c.command for c in self.calls if c.kind in ("run", "probe")]

    @property
    def ran(self) -> list[str]:
        """What would change the host, in order: each ``run`` command and ``write <path>`` per file written."""
        return [c.command if c.kind == "run" else f"write {c.command}"
                for c in self.calls if c.kind == "run" or (c.kind == "write" and not c.options.get("dry_run"))]

    # HostLike ---------------------------------------------------------------------------
    def run(self, cmd: str, *, sudo_user: str | None = None, check: bool = True, stdin: str | None = None,
            quiet: bool = False, display: str | None = None, timeout: float | None = None,
            hint: str | None = None) -> Result:
        """Answer *cmd* from the script; raise RemoteCommandError on a non-zero exit when *check*."""
        call = Call("run", cmd, sudo_user, stdin, {"check": check, "quiet": quiet, "display": display,
                                                   "timeout": timeout})
        self.journal.append(display if display is not None else cmd)
        return self._answer(call, check=check, hint=hint)

    def probe(self, cmd: str, **kw: Any) -> Result:
        """A read-only command: answered like :meth:`run`, never raises on a non-zero exit."""
        call = Call("probe", cmd, kw.pop("sudo_user", None), kw.pop("stdin", None), kw)
        return self._answer(call, check=False, hint=None)

    def exists(self, path: str) -> bool:
        self.calls.append(Call("exists", path))
        return path in self.files

    def read_text(self, path: str, *, sudo_user: str | None = None) -> str | None:
        self.calls.append(Call("read", path, sudo_user))
        return self.files.get(path)

    def put_text(self, path: str, text: str, *, mode: int = 0o644, owner: str = "root",
                 group: str | None = None, dry_run: bool = False) -> None:
        self.calls.append(Call("write", path, None, text, {"mode": mode, "owner": owner, "group": group,
                                                           "dry_run": dry_run}))
        if dry_run:
            self.echo(f"[{self.name}] [dry run] would write {path}")
            return
        self.journal.append(f"write {path}")
        self.files[path] = text
        self.written.append((path, text, mode, owner, group or owner))

    # answering ---------------------------------------------------------------------------
    def _answer(self, call: Call, *, check: bool, hint: str | None) -> Result:
        self.calls.append(call)
        result = self._lookup(call)
        if check and not result.ok:
            raise RemoteCommandError(self.name, call.command, result.exit_code, result.output, hint=hint)
        return result

    def _lookup(self, call: Call) -> Result:
        for pattern, reply in self.script:
            if pattern.search(call.command):
                answer = reply(call) if callable(reply) else reply
                if answer is not None:
                    return self._result(call, answer)
        if self.handler is not None:
            answer = self.handler(call)
            if answer is not None:
                return self._result(call, answer)
        scripted = ", ".join(repr(p.pattern) for p, _ in self.script) or "none"
        raise UnscriptedCommand(f"{self!r}: no answer for {call.kind} {shlex.quote(call.command)} "
                                f"(scripted patterns: {scripted}; handler: {'yes' if self.handler else 'no'})")

    def _result(self, call: Call, answer: Result | str) -> Result:
        if isinstance(answer, Result):
            return answer
        return Result(self.name, call.command, 0, answer, "", 0.0)
