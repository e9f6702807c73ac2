"""The two ends of the migration as psql endpoints on the primary: the source through a 0600 libpq
service file in ``/run`` (written on enter, removed on exit), the target over the Unix socket; the
source's URL (a secret reference, or with method heroku the Heroku CLI's answer at the moment of use);
and the source's facts and sessions."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.local import LOCAL_TIMEOUT_S, LocalRunner, run_local
from hcbpg.adapters.psql import PsqlEndpoint, ServiceFileEndpoint
from hcbpg.errors import ParamsError, SecretError
from hcbpg.outcome import Outcome, unified_diff
from hcbpg.pg.conninfo import APPLICATION_NAME, SERVICE_NAME, describe_source, parse_source_url, render_service_file
from hcbpg.pg.dump import parse_heroku_credentials_url, render_heroku_credentials_command, render_heroku_whoami_command
from hcbpg.pg.inventory import SOURCE_FACTS_SQL

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params

#: where the source's service file lives on the primary (tmpfs: never on disk)
SECRET_DIR = "/run/hcbpg-migration"


def get_target(host: "HostLike", params: "Params", database: str | None = None) -> PsqlEndpoint:
    """The target database on the primary, over the Unix socket as postgres (peer)."""
    pg = params.postgres
    db = database or pg.database
    return PsqlEndpoint(host, f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -d {shlex.quote(db)}",
                        label=f"{db} on {host.name}", database=db)


class Source(ServiceFileEndpoint):
    """The source database reached from the primary through a 0600 libpq service file in :data:`SECRET_DIR`.

    Use as a context manager: the file is written on enter and removed on exit.
    """

    def __init__(self, host: "HostLike", url: str, *, sslrootcert: str | None = None) -> None:
        self.conn = parse_source_url(hsecrets.register(url))
        #: the source's CA on the primary (``source.ca_file``): every connection to the source verifies with it
        self.sslrootcert = sslrootcert
        if self.conn.get("password"):
            hsecrets.register(self.conn["password"])
        super().__init__(host, service_name=SERVICE_NAME,
                         service_text=render_service_file(self.conn, sslrootcert=sslrootcert),
                         directory=SECRET_DIR, label=f"the source ({describe_source(self.conn)})",
                         database=self.conn.get("dbname"))


#: the Heroku CLI answers in seconds; past this it is waiting for something (a login prompt, the network)
HEROKU_TIMEOUT_S = LOCAL_TIMEOUT_S
HEROKU_LOGIN_HINT = ("Log in with `heroku login` (or set HEROKU_API_KEY) as an account with access to the app, "
                     "and check params source.heroku_app.")


def _heroku(argv: Sequence[str], local: LocalRunner) -> "subprocess.CompletedProcess[str]":
    """*argv* run; SecretError (never its output: it may hold the password) when heroku is missing or hangs."""
    try:
        return local(argv)
    except FileNotFoundError:
        raise SecretError(f"`{argv[0]}` is not installed on this machine (method heroku reads the source's URL with "
                          "it)", hint="Install the Heroku CLI (https://devcenter.heroku.com/articles/heroku-cli), "
                                      "then `heroku login`.") from None
    except subprocess.TimeoutExpired:
        raise SecretError(f"`{' '.join(argv)}` did not answer within {HEROKU_TIMEOUT_S:.0f} s",
                          hint=HEROKU_LOGIN_HINT) from None


def get_heroku_account(local: LocalRunner = run_local) -> str:
    """The account ``heroku`` is logged in as (``heroku auth:whoami``); SecretError when it is not."""
    argv = render_heroku_whoami_command()
    proc = _heroku(argv, local)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SecretError(f"the Heroku CLI is not logged in (`{' '.join(argv)}` exit {proc.returncode})",
                          hint=HEROKU_LOGIN_HINT)
    return lines[-1].strip()


def get_heroku_source_url(local: LocalRunner, app: str) -> str:
    """The source's URL as ``heroku pg:credentials:url --app APP`` gives it now, registered with the scrubber.

    Read at the moment of use (Heroku rotates the credentials); it goes to the primary only inside the
    0600 service files on tmpfs, never on a command line, and the CLI's output is never shown."""
    argv = render_heroku_credentials_command(app)
    proc = _heroku(argv, local)
    url = parse_heroku_credentials_url(proc.stdout) if proc.returncode == 0 else None
    if url is None:
        # the CLI's own words when it failed (no access, unknown app: stderr, which holds no credential);
        # nothing of its stdout, which may
        said = hsecrets.scrub(proc.stderr).strip().splitlines()[-1:] if proc.returncode else []
        raise SecretError(f"`{' '.join(argv)}` gave no database URL (exit {proc.returncode}"
                          + (f": {said[0][:200]}" if said else "") + ")", hint=HEROKU_LOGIN_HINT)
    hsecrets.register(url)
    conn = parse_source_url(url)
    if conn.get("password"):
        hsecrets.register(conn["password"])
    return url


def get_source_url(local: LocalRunner, params: "Params", secret: Callable[[str], str]) -> str:
    """The source's ``postgres://`` URL: with method heroku from the Heroku CLI now, else ``source.url``'s secret."""
    src = params.source
    if src is None:
        raise ParamsError("params", ["source: these params have no source section (where the data comes from)"])
    if src.method == "heroku":
        assert src.heroku_app is not None  # params refuse method heroku without it
        return get_heroku_source_url(local, src.heroku_app)
    return secret("source.url")


#: where the source's CA (``source.ca_file``) is put on the primary
SOURCE_CA_PATH = "/etc/hcbpg/tls/source-ca.crt"


def _source_ca_pem(params: "Params") -> str | None:
    """``source.ca_file`` as read on this machine (None without one); ParamsError when unreadable or no PEM."""
    src = params.source
    if src is None or not src.ca_file:
        return None
    try:
        pem = Path(os.path.expanduser(src.ca_file)).read_text()
    except OSError as exc:
        raise ParamsError("params", [f"source.ca_file: cannot read {src.ca_file}: {exc.strerror}"]) from None
    if "BEGIN CERTIFICATE" not in pem:
        raise ParamsError("params", [f"source.ca_file: {src.ca_file} holds no PEM certificate"])
    return pem


def ensure_source_ca(host: "HostLike", params: "Params") -> Outcome:
    """``source.ca_file`` on the primary at :data:`SOURCE_CA_PATH` (unchanged without one or when it is there)."""
    what = f"the source's CA {SOURCE_CA_PATH} on {host.name}"
    seen = Changes(host)
    pem = _source_ca_pem(params)
    if pem is None:
        return seen.outcome(f"{what}: no source.ca_file")
    current = host.read_text(SOURCE_CA_PATH)
    if current != pem:
        ensure_dir(host, "/etc/hcbpg/tls", mode=0o755)
        host.put_text(SOURCE_CA_PATH, pem, mode=0o644)
    return seen.outcome(what, diff=unified_diff(current or "", pem, SOURCE_CA_PATH))


def get_source_ca(host: "HostLike", params: "Params") -> str | None:
    """Where the source's CA is on the primary when it holds ``source.ca_file`` (the path libpq verifies
    the source with), else None."""
    pem = _source_ca_pem(params)
    return SOURCE_CA_PATH if pem is not None and host.read_text(SOURCE_CA_PATH) == pem else None


def get_source_facts(source: "SourceLike") -> dict[str, Any]:
    """Encoding, locale, size, version, extensions and database settings of the source."""
    with source:
        return source.json(SOURCE_FACTS_SQL)


def get_source_writer(host: "HostLike", source: "SourceLike") -> PsqlEndpoint:
    """The open *source* as an endpoint whose changes go through *host* (the op's HostLike: on a dry run
    they are recorded, not run); its reads are the same as the source's."""
    return PsqlEndpoint(host, source.conn_cmd, label=source.label, env=source.env, database=source.database)


def get_source_sessions(source: "SourceLike") -> list[dict[str, Any]]:
    """Client sessions on the source database other than ours (and our pg_dump workers)."""
    with source:
        return _source_sessions(source)


def _source_sessions(source: "SourceLike") -> list[dict[str, Any]]:
    return source.rows(
        "SELECT pid, usename, application_name, host(client_addr) AS client, state, "
        "backend_xid IS NOT NULL AS writing, now() - backend_start AS age FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        f"AND application_name NOT IN ('{APPLICATION_NAME}', 'pg_dump') "
        # the online transfer's Bucardo daemon (MCP, CTL, KID sessions): it is drained, not stopped
        "AND NOT (application_name ~ '^bucardo (MCP|CTL|KID|VAC)' AND usename = current_user)")
