"""The two ends of the migration as psql endpoints on the primary: the source through a 0600 libpq
service file in ``/run`` (written on enter, removed on exit), the target over the Unix socket; and
the source's facts and sessions."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.adapters.psql import PsqlEndpoint, ServiceFileEndpoint
from hcbpg.pg.conninfo import APPLICATION_NAME, SERVICE_NAME, describe_source, parse_source_url, render_service_file
from hcbpg.pg.inventory import SOURCE_FACTS_SQL

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params

#: where the source's service file lives on the primary (tmpfs: never on disk)
SECRET_DIR = "/run/hcbpg-migration"


def target(host: "Host", params: "Params", database: str | None = None) -> PsqlEndpoint:
    """The target database on the primary, over the Unix socket as postgres (peer)."""
    pg = params.postgres
    db = database or pg.database
    return PsqlEndpoint(host, f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -d {shlex.quote(db)}",
                        label=f"{db} on {host.name}", database=db)


class Source(ServiceFileEndpoint):
    """The source database reached from the primary through a 0600 libpq service file in :data:`SECRET_DIR`.

    Use as a context manager: the file is written on enter and removed on exit.
    """

    def __init__(self, host: "Host", url: str) -> None:
        self.conn = parse_source_url(hsecrets.register(url))
        if self.conn.get("password"):
            hsecrets.register(self.conn["password"])
        super().__init__(host, service_name=SERVICE_NAME, service_text=render_service_file(self.conn),
                         directory=SECRET_DIR, label=f"the source ({describe_source(self.conn)})",
                         database=self.conn.get("dbname"))


def get_source_facts(source: "Source") -> dict[str, Any]:
    """Encoding, locale, size, version, extensions and database settings of the source."""
    with source:
        return source.json(SOURCE_FACTS_SQL)


def get_source_sessions(source: Source) -> list[dict[str, Any]]:
    """Client sessions on the source database other than ours (and our pg_dump workers)."""
    with source:
        return _source_sessions(source)


def _source_sessions(source: Source) -> list[dict[str, Any]]:
    return source.rows(
        "SELECT pid, usename, application_name, host(client_addr) AS client, state, "
        "backend_xid IS NOT NULL AS writing, now() - backend_start AS age FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        f"AND application_name NOT IN ('{APPLICATION_NAME}', 'pg_dump') "
        # the online transfer's Bucardo daemon (MCP, CTL, KID sessions): it is drained, not stopped
        "AND NOT (application_name ~ '^bucardo (MCP|CTL|KID|VAC)' AND usename = current_user)")
