"""The host seam: what one command did (:class:`Result`) and the protocol every host adapter
offers (:class:`HostLike`), so operations take the real SSH :class:`~hcbpg.adapters.host.Host`
or a test double such as :class:`~hcbpg.adapters.recording.RecordingHost` alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hcbpg.outcome import Outcome


@dataclass
class Result:
    """What one remote command did (stdout and stderr are raw; scrub before showing)."""

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@runtime_checkable
class HostLike(Protocol):
    """One machine that runs shell commands and reads and writes whole files (what ops use)."""

    #: the host's name in the params (shown in every line and error)
    name: str
    #: where the host prints its one line per command
    echo: Callable[[str], None]
    #: True on a host that only records what it would change (:class:`~hcbpg.adapters.dryrun.DryRunHost`)
    dry_run: bool
    #: what was changed (or, on a dry run, would have been), in order: each ``run`` command as shown and
    #: ``write <path>`` per file; ``probe`` and reads are not in it.  ``changed`` of an ``ensure_*``
    #: comes from here (:class:`Changes`), so a real run and a dry run are one code path.
    journal: list[str]

    def run(self, cmd: str, *, sudo_user: str | None = None, check: bool = True, stdin: str | None = None,
            quiet: bool = False, display: str | None = None, timeout: float | None = None,
            hint: str | None = None) -> Result:
        """Run a shell command line as root (or *sudo_user*); raise RemoteCommandError on failure if *check*."""
        ...

    def probe(self, cmd: str, **kw: Any) -> Result:
        """A read-only command: quiet, never raises on a non-zero exit."""
        ...

    def exists(self, path: str) -> bool:
        """Whether *path* exists on the host."""
        ...

    def read_text(self, path: str, *, sudo_user: str | None = None) -> str | None:
        """The file's text, or None when it does not exist."""
        ...

    def put_text(self, path: str, text: str, *, mode: int = 0o644, owner: str = "root",
                 group: str | None = None, dry_run: bool = False) -> None:
        """Write *text* to *path* whole and atomically (never on a dry run)."""
        ...


@runtime_checkable
class PsqlLike(Protocol):
    """The SQL adapter ops use: one cluster on one host (:class:`~hcbpg.adapters.psql.Psql`).

    Reads (``query``, ``value``) are probes: they run on a dry run too and are not changes;
    ``execute`` and ``script`` change, through the host's ``run`` (so a DryRunHost records them).
    """

    host: HostLike

    def query(self, statement: Any, *, dbname: str = "postgres") -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts."""
        ...

    def value(self, statement: Any, *, dbname: str = "postgres") -> Any:
        """The single value of a one-row, one-column query (None when no row)."""
        ...

    def execute(self, statements: Any, *, dbname: str = "postgres", dry_run: bool = False) -> None:
        """Statements that change something, one psql call each."""
        ...

    def script(self, statements: Any, *, dbname: str, hint: str) -> None:
        """Statements in one psql call, stopping at the first error."""
        ...

    def attempt(self, statement: Any, *, dbname: str = "postgres") -> Result:
        """One statement that may be refused, run quietly; psql's Result (never raises)."""
        ...


class EndpointLike(Protocol):
    """psql against one database reached from a host by *conn_cmd* (:class:`~hcbpg.adapters.psql.PsqlEndpoint`):
    results come back as JSON.  ``json`` and ``rows`` read (probes); ``execute`` and ``script`` change,
    through the host's ``run`` (unless ``script(read=True)``)."""

    host: HostLike
    conn_cmd: str
    label: str
    env: str
    database: str | None

    def script(self, text: str, *, display: str, quiet: bool = False, timeout: float | None = None,
               check: bool = True, read: bool = False) -> Any:
        """Run a psql script; raise DatabaseError naming the endpoint."""
        ...

    def json(self, select: Any, *, setup: str = "SET search_path = pg_catalog;") -> Any:
        """The JSON value of a one-value SELECT."""
        ...

    def rows(self, select: Any) -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts."""
        ...

    def execute(self, statements: Any, *, dry_run: bool = False) -> None:
        """Statements that change something, one line shown each."""
        ...


class SourceLike(EndpointLike, Protocol):
    """The migration's source database reached from the primary through a libpq service file written
    while it is open (``with source:``; :class:`~hcbpg.ops.migration.source.Source`)."""

    #: the source's connection parameters (the password registered with the scrubber)
    conn: dict[str, str]
    #: the source's CA on the primary, when its certificate is verified
    sslrootcert: str | None

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


class Changes:
    """What a host's journal gained since this object was made: the changes one ``ensure_*`` made
    (or, on a dry run, would make).

        seen = Changes(host)
        ...                                   # reads, then writes and runs
        return seen.outcome(what, diff=diff)  # changed = bool(seen.made)
    """

    def __init__(self, host: HostLike) -> None:
        self.host = host
        self.mark = len(host.journal)

    @property
    def made(self) -> list[str]:
        """The journal lines since the mark."""
        return self.host.journal[self.mark:]

    def __bool__(self) -> bool:
        return len(self.host.journal) > self.mark

    def outcome(self, what: str, *, diff: str = "", actions: list[str] | None = None) -> Outcome:
        """An :class:`~hcbpg.outcome.Outcome`: changed when the journal grew; *actions* default to its lines."""
        made = self.made
        return Outcome(what, bool(made), self.host.dry_run, diff=diff if made else "",
                       actions=list(actions) if actions is not None and made else list(made))
