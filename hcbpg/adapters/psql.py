"""The SQL adapter: statements run as the postgres superuser on the server, through psql over SSH.

``sudo -u postgres psql -X -q -v ON_ERROR_STOP=1`` with the SQL on stdin (peer auth over the
Unix socket: PostgreSQL listens only on the private network, which the operator is not on).
Statements are built with ``psycopg.sql`` (see :func:`render`), never by string formatting;
results come back as JSON.  Every statement that changes something is printed with its
host, exit status and duration, secrets scrubbed.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Any

from psycopg import sql

from hcbpg.adapters.host import Host
from hcbpg.errors import DatabaseError, RemoteCommandError
from hcbpg.secrets import scrub

Composable = sql.Composable


def render(statement: "Composable | str") -> str:
    """SQL text of a ``psycopg.sql`` composition, rendered without a database connection."""
    if isinstance(statement, str):
        return statement
    return statement.as_string(None)


class Psql:
    """psql as the postgres OS user on one server, for one cluster."""

    def __init__(self, host: Host, *, version: int = 15, cluster: str = "main", os_user: str = "postgres") -> None:
        self.host = host
        self.version = version
        self.cluster = cluster
        self.os_user = os_user

    def _cmd(self, dbname: str, extra: str = "") -> str:
        return (f"psql --cluster {self.version}/{shlex.quote(self.cluster)} -X -q -v ON_ERROR_STOP=1 "
                f"-d {shlex.quote(dbname)}{extra}")

    def query(self, statement: "Composable | str", *, dbname: str = "postgres") -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts (quiet: reads are not printed)."""
        text = render(statement).strip().rstrip(";")
        wrapped = f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({text}) AS q;\n"
        res = self.host.run(self._cmd(dbname, " -A -t"), sudo_user=self.os_user, stdin=wrapped,
                            quiet=True, check=False)
        if not res.ok:
            raise DatabaseError(
                f"on {self.host.name}: query failed in database {dbname}: {scrub(text)}\n    "
                + scrub(res.output.strip()[-2000:]),
                hint="Is the cluster running (pg_lsclusters)? The query was read-only; nothing changed.")
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
            try:
                self.host.run(self._cmd(dbname), sudo_user=self.os_user, stdin=text + "\n", display=shown)
            except RemoteCommandError as exc:
                raise DatabaseError(f"on {self.host.name}: SQL failed in database {dbname}: {exc.command}\n"
                                    f"    {exc.output_tail.strip()}",
                                    hint="The statements before this one were applied; fix the cause and "
                                         "run the step again (it only does what is still missing).") from exc
