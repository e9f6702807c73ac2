"""The SQL adapter: psql run as the postgres OS user on a server, over SSH; the one place where a
psql failure becomes a :class:`~hcbpg.errors.DatabaseError`.

    Psql                  one cluster, any database of it (peer auth over the Unix socket)
    PsqlEndpoint          one database reached by a given psql command line, results as JSON
    └── ServiceFileEndpoint   ... through a 0600 libpq service file (the source of the migration)

``sudo -u postgres psql -X -q -v ON_ERROR_STOP=1`` with the SQL on stdin (PostgreSQL listens only
on the private network, which the operator is not on).  Statements are built with
``psycopg.sql`` (see :func:`render`), never by string formatting; results come back as JSON.
Every statement that changes something is printed with its host, exit status and duration,
secrets scrubbed.  Failures are mapped once, by :func:`map_psql_errors` (like httpx's
``map_httpcore_exceptions``): a psql that exits non-zero, or a :class:`RemoteCommandError` from
the host, becomes ``DatabaseError`` with host, database, statement and SQLSTATE, raised from it.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.dryrun import NOTHING_THERE_EXIT
from hcbpg.adapters.files import ensure_dir
from hcbpg.errors import DatabaseError, RemoteCommandError
from hcbpg.pg.cluster import psql_command
from hcbpg.pg.psql_output import JSON_MARK, parse_marked_json, parse_sqlstate
from hcbpg.secrets import scrub

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.adapters.host import Result

Composable = sql.Composable



def render(statement: "Composable | str") -> str:
    """SQL text of a ``psycopg.sql`` composition, rendered without a database connection."""
    if isinstance(statement, str):
        return statement
    return statement.as_string(None)


class PsqlExit(Exception):
    """psql ran and exited non-zero (raised by :func:`raise_for_exit`, mapped by :func:`map_psql_errors`)."""

    def __init__(self, result: "Result") -> None:
        self.result = result
        super().__init__(f"psql exited {result.exit_code}")


def raise_for_exit(result: "Result") -> "Result":
    """*result*, or PsqlExit when psql failed."""
    if not result.ok:
        raise PsqlExit(result)
    return result


@contextlib.contextmanager
def map_psql_errors(*, host: str, message: str, database: str | None = None, statement: str | None = None,
                    hint: str | None = None) -> Iterator[None]:
    """Turn a failed psql inside the block into DatabaseError: *message*, then the scrubbed tail of
    psql's output, with host, database, statement and SQLSTATE as fields (``raise ... from``)."""
    try:
        yield
    except PsqlExit as exc:
        output = exc.result.output
        raise DatabaseError(f"{message}\n    " + scrub(output.strip())[-2000:], host=host, database=database,
                            statement=scrub(statement) if statement else None, sqlstate=parse_sqlstate(output),
                            hint=hint) from exc
    except RemoteCommandError as exc:
        raise DatabaseError(f"{message}\n    {exc.output_tail.strip()}", host=host, database=database,
                            statement=scrub(statement) if statement else None,
                            sqlstate=parse_sqlstate(exc.output_tail), hint=hint) from exc


class Psql:
    """psql as the postgres OS user on one server, for the cluster of PostgreSQL *version* on *port*."""

    def __init__(self, host: "HostLike", *, version: int = 15, port: int = 5432, os_user: str = "postgres") -> None:
        self.host = host
        self.version = version
        self.port = port
        self.os_user = os_user

    def _cmd(self, dbname: str, extra: str = "") -> str:
        # the cluster's own psql on its port (params), not pg_wrapper's: see hcbpg.pg.cluster.local_tool
        return psql_command(self.version, self.port, dbname) + extra

    def query(self, statement: "Composable | str", *, dbname: str = "postgres") -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts (quiet: reads are not printed)."""
        text = render(statement).strip().rstrip(";")
        wrapped = f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({text}) AS q;\n"
        with map_psql_errors(host=self.host.name, database=dbname, statement=text,
                             message=f"on {self.host.name}: query failed in database {dbname}: {scrub(text)}",
                             hint="Is the cluster running (pg_lsclusters)? The query was read-only; nothing changed."):
            # a read: probe, so a dry run reads the real server and the journal does not count it
            res = self.host.probe(self._cmd(dbname, " -A -t"), sudo_user=self.os_user, stdin=wrapped)
            if self.host.dry_run and res.exit_code == NOTHING_THERE_EXIT:
                return []  # a server (or PostgreSQL) not there yet: nothing is there
            raise_for_exit(res)
        out = res.stdout.strip()
        return json.loads(out) if out else []

    def value(self, statement: "Composable | str", *, dbname: str = "postgres") -> Any:
        """The single value of a one-row, one-column query (None when no row)."""
        rows = self.query(statement, dbname=dbname)
        if not rows:
            return None
        return next(iter(rows[0].values()))

    def execute(self, statements: "Composable | str | Sequence[Composable | str]", *,
                dbname: str = "postgres", dry_run: bool = False) -> None:
        """Run statements that change something; each is shown (scrubbed) with host, status, duration.

        Statements run one psql call each, outside an explicit transaction, because some
        (CREATE DATABASE) cannot run inside one.
        """
        items = [statements] if isinstance(statements, (str, sql.Composable)) else list(statements)
        for st in items:
            text = render(st).strip()
            if not text.endswith(";"):
                text += ";"
            shown = f"psql -d {dbname}: {' '.join(text.split())}"
            if dry_run:
                self.host.echo(f"[{self.host.name}] [dry run] would run {scrub(shown)}")
                continue
            with map_psql_errors(host=self.host.name, database=dbname, statement=text,
                                 message=f"on {self.host.name}: SQL failed in database {dbname}: {scrub(shown)}",
                                 hint="The statements before this one were applied; fix the cause and "
                                      "run the step again (it only does what is still missing)."):
                self.host.run(self._cmd(dbname), sudo_user=self.os_user, stdin=text + "\n", display=shown)

    def attempt(self, statement: "Composable | str", *, dbname: str = "postgres") -> "Result":
        """Run one statement that may be refused, quietly, and hand back psql's Result (never raises):
        a check that writes, such as a probe row, or a write a replica must refuse."""
        text = render(statement).strip().rstrip(";") + ";"
        return self.host.run(self._cmd(dbname), sudo_user=self.os_user, stdin=text + "\n", quiet=True, check=False)

    def script(self, statements: "Sequence[Composable | str]", *, dbname: str, hint: str) -> None:
        """Statements in one psql call (each its own transaction, so CREATE DATABASE may be one), all
        shown on one line; it stops at the first error."""
        texts = [render(st).strip().rstrip(";") + ";" for st in statements]
        shown = scrub(f"psql -d {dbname}: " + " ".join(" ".join(t.split()) for t in texts))
        with map_psql_errors(host=self.host.name, database=dbname, statement="\n".join(texts),
                             message=f"on {self.host.name}: SQL failed in database {dbname}: {shown}", hint=hint):
            raise_for_exit(self.host.run(self._cmd(dbname, " -f -"), sudo_user=self.os_user,
                                         stdin="\n".join(texts) + "\n", display=shown, check=False))


class PsqlEndpoint:
    """psql on a server, as the postgres OS user, against one database reached by *conn_cmd*;
    results of queries come back as JSON on a marked line."""

    def __init__(self, host: "HostLike", conn_cmd: str, *, label: str, env: str = "", database: str | None = None) -> None:
        self.host = host
        self.conn_cmd = conn_cmd
        self.label = label
        self.env = env
        self.database = database

    def _cmd(self) -> str:
        return f"{self.env + ' ' if self.env else ''}{self.conn_cmd} -X -q -A -t -v ON_ERROR_STOP=1 -f -"

    def script(self, text: str, *, display: str, quiet: bool = False, timeout: float | None = None,
               check: bool = True, read: bool = False) -> Any:
        """Run a psql script (SQL and meta-commands); raise DatabaseError naming the endpoint.

        *read*: the script only reads (a probe: it runs on a dry run too and is not a change)."""
        call = self.host.probe if read else self.host.run
        if not check:
            return call(self._cmd(), sudo_user="postgres", stdin=text, display=display, quiet=quiet,
                        check=False, timeout=timeout)
        with map_psql_errors(host=self.host.name, database=self.database, statement=display,
                             message=f"on {self.host.name}: psql against {self.label} failed: {display}",
                             hint="Read the error above; what ran before this statement was applied."):
            return raise_for_exit(call(self._cmd(), sudo_user="postgres", stdin=text, display=display,
                                       quiet=quiet, check=False, timeout=timeout))

    def json(self, select: "Composable | str", *, setup: str = "SET search_path = pg_catalog;") -> Any:
        """The JSON value of a one-value SELECT (search_path pinned so names come out schema-qualified)."""
        text = render(select).strip().rstrip(";")
        script = f"{setup}\nSELECT '{JSON_MARK}' || ({text})::text;\n"
        res = self.script(script, display=f"query {self.label}", quiet=True, read=True)
        return parse_marked_json(res.stdout)

    def rows(self, select: "Composable | str") -> list[dict[str, Any]]:
        """Rows of a SELECT as dicts."""
        text = render(select).strip().rstrip(";")
        # jsonb prints on one line (json_agg puts a newline between rows; the marker line must hold all)
        return self.json(f"SELECT coalesce(jsonb_agg(q), '[]'::jsonb) FROM ({text}) AS q") or []

    def execute(self, statements: "Sequence[Composable | str]", *, dry_run: bool = False) -> None:
        """Statements that change something, shown (scrubbed) one line each."""
        for st in statements:
            text = render(st).strip().rstrip(";") + ";"
            shown = f"psql {self.label}: {' '.join(text.split())}"
            if dry_run:
                self.host.echo(f"[{self.host.name}] [dry run] would run {scrub(shown)}")
                continue
            self.script(text + "\n", display=shown)


class ServiceFileEndpoint(PsqlEndpoint):
    """A database reached through a 0600 libpq service file (``service=NAME``) on the server, so that
    no secret is on a command line.

    Use as a context manager: the file is written on enter and removed on exit (nested opens
    share it; the last close removes it).
    """

    def __init__(self, host: "HostLike", *, service_name: str, service_text: str, directory: str, label: str,
                 database: str | None = None) -> None:
        self.service_file = f"{directory}/source.pgservice"
        self.directory = directory
        self._service_text = service_text
        super().__init__(host, f"psql -d service={service_name}", label=label,
                         env=f"PGSERVICEFILE={self.service_file}", database=database)
        self._depth = 0

    def open(self) -> "ServiceFileEndpoint":
        """Write the service file (nested opens share it; the last close removes it)."""
        if self._depth == 0:
            h = self.host
            ensure_dir(h, self.directory, mode=0o700, owner="postgres")
            h.put_text(self.service_file, self._service_text, mode=0o600, owner="postgres")
        self._depth += 1
        return self

    def close(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.host.run(f"rm -f {shlex.quote(self.service_file)}; rmdir {self.directory} 2>/dev/null || true",
                          quiet=True, check=False)

    def __enter__(self) -> "ServiceFileEndpoint":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
