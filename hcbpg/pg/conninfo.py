"""libpq connection parameters: keyword values quoted and conninfo strings parsed, ``.pgpass``
lines, a ``postgres://`` URL parsed, a service file rendered, a URL for the app built and
redacted.  Pure: no I/O (passwords are registered with the scrubber)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg import secrets as hsecrets
from hcbpg.errors import SecretError
from hcbpg.values import control_characters

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

SERVICE_NAME = "hcbpg_source"
APPLICATION_NAME = "hcbpg-migration"


def parse_source_url(url: str) -> dict[str, str]:
    """libpq connection parameters of a ``postgres://`` URL (password included: treat as secret)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise SecretError("source.url: not a postgres:// URL",
                          hint="source.url must reference a URL like postgres://user:password@host:5432/dbname.")
    out: dict[str, str] = {}
    if parts.hostname:
        out["host"] = urllib.parse.unquote(parts.hostname)
    if parts.port:
        out["port"] = str(parts.port)
    db = urllib.parse.unquote(parts.path.lstrip("/"))
    if db:
        out["dbname"] = db
    if parts.username:
        out["user"] = urllib.parse.unquote(parts.username)
    if parts.password:
        out["password"] = urllib.parse.unquote(parts.password)
    for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        out[key] = value
    if "host" not in out or "dbname" not in out:
        raise SecretError("source.url: the URL names no host or no database",
                          hint="source.url must look like postgres://user:password@host:5432/dbname.")
    return out


#: the first libpq major version that knows ``require_auth``
REQUIRE_AUTH_LIBPQ = 16


def parse_libpq_major(version: str | None) -> int | None:
    """The major version of a libpq package version (``15.20-0+deb12u1``, ``1:16.4-1.pgdg24.04+1``), or None."""
    m = re.match(r"(?:\d+:)?(\d+)\.", version or "")
    return int(m.group(1)) if m else None


def render_service_file(conn: Mapping[str, str], *, name: str = SERVICE_NAME,
                        application_name: str = APPLICATION_NAME, sslrootcert: str | None = None,
                        require_auth: str | None = None) -> str:
    """A libpq service file (pg_service.conf) with one section; values may not span lines.

    With *sslrootcert* (the source's CA, ``source.ca_file``) the source is ``verify-full``;
    else a remote source is at least ``require`` (encrypted, its identity unchecked).
    *require_auth* (``scram-sha-256``; only for a libpq that knows it, 16 or later): the client
    refuses any other authentication the server asks for (a server that asks for a cleartext or
    MD5 password, or none, does not get one).
    """
    lines = ["# written by hcbpg for the migration; removed when the step ends", f"[{name}]"]
    merged = {**conn, "application_name": application_name}
    if sslrootcert:
        merged["sslmode"], merged["sslrootcert"] = "verify-full", sslrootcert
    elif "sslmode" not in merged and merged.get("host") not in ("localhost", "127.0.0.1", "::1"):
        merged["sslmode"] = "require"  # Heroku only takes TLS; so do we by default
    if require_auth:
        merged["require_auth"] = require_auth
    for key in sorted(merged):
        value = merged[key]
        if control_characters(value) or not re.fullmatch(r"[a-z_]+", key):
            raise SecretError(f"source.url: parameter {key} cannot go into a service file")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def describe_source(conn: Mapping[str, str]) -> str:
    """The source as it may be printed: user@host:port/dbname, never the password."""
    return f"{conn.get('user', '?')}@{conn.get('host')}:{conn.get('port', '5432')}/{conn.get('dbname')}"


def render_database_url(params: "Params", password: str, *, host: str | None = None,
                        query: Mapping[str, str] | None = None) -> str:
    """DATABASE_URL for the app: rails on the primary's private IP (contains the password); *query*
    adds libpq parameters (TLS: ``desired.tls.client_tls``)."""
    pg = params.postgres
    q = ("?" + urllib.parse.urlencode(dict(query), safe="/")) if query else ""
    return (f"postgres://{urllib.parse.quote(pg.app_role, safe='')}:{urllib.parse.quote(password, safe='')}"
            f"@{host or params.primary.private_ip}:{pg.port}/{urllib.parse.quote(pg.database, safe='')}{q}")


def render_role_url(params: "Params", role: str, password: str, *, host: str | None = None,
                    query: Mapping[str, str] | None = None) -> str:
    """The app's URL (:func:`render_database_url`, with whatever it adds) for another login *role*."""
    parts = urllib.parse.urlsplit(render_database_url(params, password, host=host, query=query))
    netloc = parts.netloc.split("@", 1)[1]
    user = f"{urllib.parse.quote(role, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{netloc}"))


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``[secret]`` (for printing)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:{hsecrets.REDACTED}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def conninfo_quote(value: str) -> str:
    """A libpq keyword value: bare when simple, else single-quoted with \\ and ' escaped."""
    if value and re.fullmatch(r"[A-Za-z0-9_.\-/]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_conninfo(text: str) -> dict[str, str]:
    """keyword=value pairs of a libpq connection string (quoted values unescaped)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        m = re.match(r"([A-Za-z_]+)\s*=\s*", text[i:])
        if not m:
            break
        key = m.group(1)
        i += m.end()
        if i < n and text[i] == "'":
            i += 1
            val = ""
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                val += text[i]
                i += 1
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            val = text[start:i]
        out[key] = val
    return out
