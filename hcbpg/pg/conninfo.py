"""libpq connection parameters: keyword values quoted and conninfo strings parsed, ``.pgpass``
lines, a ``postgres://`` URL parsed, a service file rendered, a URL for the app built and
redacted.  Pure: no I/O (passwords are registered with the scrubber)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping, Sequence
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
    """The URL with every password replaced by ``[secret]`` (for printing): a ``postgres://`` URL's own and
    any ``password=`` of its query, or an opaque multi-host Rails URL's (:func:`redact_rails_url`)."""
    if is_rails_url(url):
        return redact_rails_url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.query:
        parts = parts._replace(query=_redact_query(parts.query))
    if parts.password is None:
        return urllib.parse.urlunsplit(parts)
    netloc = f"{parts.username}:{hsecrets.REDACTED}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _redact_query(query: str) -> str:
    return "&".join(f"password={hsecrets.REDACTED}" if p.split("=", 1)[0].lower() == "password" else p
                    for p in query.split("&"))


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


# The multi-host URL Rails keeps (issue 28) ---------------------------------------------------------------
#
# ActiveRecord (6.1 and main: ``ActiveRecord::DatabaseConfigurations::ConnectionUrlResolver``) parses
# DATABASE_URL itself before the pg gem sees it.  ``postgres://u:p@h1:5432,h2:5432/db`` raises
# URI::InvalidURIError, and a hierarchical URL's own host/port win over the query's host list (6.1), so
# the form handed out is the *opaque* one, ``postgresql:DB?host=h1,h2&port=p1,p2&key=value...``, which
# the resolver reads as: opaque part split at the first ``?``; the database is what comes before it;
# the query split on ``&``, each pair on its first ``=``; keys kept as written; blank values dropped
# (``compact_blank``, *before* unescaping); then every value ``%XX``-unescaped (``URI::Parser#unescape``:
# ``+`` stays ``+``).  The adapter gives libpq the keys it knows (``PG::Connection.conndefaults``), so
# ``host``/``port`` lists, ``target_session_attrs`` and the TLS keys reach libpq intact.

#: what an opaque Rails URL's scheme may be (ActiveRecord maps ``postgres`` to the postgresql adapter)
RAILS_SCHEMES = ("postgresql", "postgres")

#: libpq's connection keywords (PostgreSQL 15's conninfo options, plus PostgreSQL 16's require_auth): the
#: keys ActiveRecord's postgresql adapter passes on to PG.connect, and the ones rails_url_conninfo keeps
LIBPQ_KEYWORDS = frozenset({
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "channel_binding", "connect_timeout",
    "client_encoding", "options", "application_name", "fallback_application_name", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication",
    "gssencmode", "sslmode", "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslrootcert",
    "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
    "krbsrvname", "gsslib", "service", "target_session_attrs", "require_auth",
})

#: keys of the URL itself: the database is the opaque part, host and port come from *hosts*
_URL_OWN_KEYS = frozenset({"host", "port", "dbname", "database", "adapter"})

#: what a value keeps unencoded: ',' separates hosts and ports for libpq, '/' is in paths; neither is a
#: delimiter of ActiveRecord's query parsing, and both are legal in an opaque URI (RFC 2396 uric)
_RAILS_SAFE = "/,"

_RAILS_KEY = re.compile(r"[a-z_]+")

#: one character Ruby's URI::Parser (RFC 2396) accepts in a URI (uric, and '%' of an escape)
_URIC = re.compile(r"[A-Za-z0-9;/?:@&=+$,\-_.!~*'()%]")


def _rails_value(value: str, what: str) -> str:
    if "\x00" in value:
        raise SecretError(f"{what}: a NUL character cannot go into a connection URL")
    return rails_url_value(value)


def rails_url_value(value: str) -> str:
    """*value* percent-encoded as :func:`render_rails_url` writes it (``/`` and ``,`` kept as they are)."""
    return urllib.parse.quote(value, safe=_RAILS_SAFE)


def render_rails_url(dbname: str, hosts: Sequence[tuple[str, int]], query: Mapping[str, str], *,
                     scheme: str = "postgresql") -> str:
    """The opaque multi-host URL ActiveRecord keeps whole: ``postgresql:DB?host=h1,h2&port=p1,p2&...``.

    Every value (and the database) is percent-encoded, so ``& = % # + ? '`` ``"`` a space or any
    non-ASCII character in a password arrives as written; *query* keys are libpq keywords in the
    order given (``user``, ``password``, ``sslmode``, ``target_session_attrs`` ...).
    """
    if scheme not in RAILS_SCHEMES:
        raise ValueError(f"scheme {scheme!r}: ActiveRecord's postgresql adapter is postgresql: or postgres:")
    if not hosts:
        raise ValueError("a Rails URL needs at least one host")
    if not dbname:
        raise ValueError("a Rails URL needs a database name")
    for key in query:
        if not _RAILS_KEY.fullmatch(key) or key not in LIBPQ_KEYWORDS:
            raise ValueError(f"{printable_key(key)}: not a libpq connection keyword")
        if key in _URL_OWN_KEYS:
            raise ValueError(f"{key}: the URL's own (the database and the hosts are given apart)")
    for host, port in hosts:
        if not host or "," in host or not 0 < int(port) < 65536:
            raise ValueError(f"{printable_key(host)}:{port}: not a host and port for a host list")
    pairs = [("host", ",".join(h for h, _ in hosts)), ("port", ",".join(str(int(p)) for _, p in hosts))]
    pairs += list(query.items())
    return (f"{scheme}:{_rails_value(dbname, 'the database')}?"
            + "&".join(f"{k}={_rails_value(v, k)}" for k, v in pairs))


def printable_key(text: str) -> str:
    """*text* with its control characters shown escaped, cut to 80 characters (for an error message)."""
    return text.encode("unicode_escape").decode("ascii")[:80]


def parse_rails_url(url: str) -> dict[str, str]:
    """What ActiveRecord 6.1's resolver makes of an opaque DATABASE_URL: ``adapter``, ``database`` and each
    query key (values unescaped; blank ones dropped as ``compact_blank`` does).  Contains the password.

    Only the opaque form is accepted: a hierarchical one (``postgresql://...``) loses its query's host list
    in Rails 6.1, so hcbpg never hands it out.
    """
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in RAILS_SCHEMES:
        raise SecretError("DATABASE_URL: not a postgresql: URL",
                          hint="the handed-out URL looks like postgresql:hcb_production?host=h1,h2&port=...")
    if rest.startswith("/"):
        raise SecretError("DATABASE_URL: a hierarchical URL (postgresql://...), not the opaque form Rails keeps",
                          hint="Rails 6.1 drops the query's host list from postgresql://...; hand out "
                               "postgresql:DB?host=h1,h2&... (render_rails_url)")
    bad = next((i for i, ch in enumerate(url) if not _URIC.fullmatch(ch)), None)
    if bad is not None or re.search(r"%(?![0-9A-Fa-f]{2})", url):
        where = f"character {bad + 1}" if bad is not None else "a '%' not followed by two hex digits"
        raise SecretError(f"DATABASE_URL: {where} is not allowed in a URI: Rails refuses it (URI::InvalidURIError)",
                          hint="percent-encode every value (render_rails_url does)")
    database, _, query = rest.partition("?")
    pairs = query.split("&") if query else []
    while pairs and not pairs[-1]:
        pairs.pop()  # Ruby's String#split drops trailing empty fields
    raw: dict[str, str | None] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not key:
            raise SecretError("DATABASE_URL: an empty pair or an empty key in its query ('&&', '&=')")
        raw[key] = value if eq else None  # a key without '=' has no value: nil, dropped like a blank one
    raw["adapter"] = "postgresql"  # the URL's own win over the query's (Hash#merge)
    raw["database"] = database
    return {k: _unescape(v) for k, v in raw.items() if v is not None and v.strip() != ""}


def _unescape(value: str) -> str:
    """``URI::Parser#unescape``: each ``%XX`` a byte, everything else (``+`` too) as it is; UTF-8."""
    return urllib.parse.unquote_to_bytes(value).decode("utf-8", errors="surrogateescape")


def rails_url_keywords(url: str) -> dict[str, str]:
    """libpq's keywords of an opaque Rails URL, as ActiveRecord hands them to ``PG.connect`` (``database`` ->
    ``dbname``, ``username`` -> ``user``, unknown keys dropped).  Contains the password."""
    config = parse_rails_url(url)
    config.pop("adapter", None)
    if "database" in config:
        config["dbname"] = config.pop("database")
    if "username" in config:
        config["user"] = config.pop("username")
    return {k: v for k, v in config.items() if k in LIBPQ_KEYWORDS}


def rails_url_conninfo(url: str, *, with_password: bool = False) -> str:
    """The libpq conninfo of an opaque Rails URL (:func:`rails_url_keywords`).  The password is left out
    unless *with_password* (give it on stdin or in a passfile instead)."""
    config = rails_url_keywords(url)
    if not with_password:
        config.pop("password", None)
    return " ".join(f"{k}={conninfo_quote(v)}" for k, v in config.items())


def redact_rails_url(url: str) -> str:
    """An opaque Rails URL with its ``password=`` value replaced by ``[secret]`` (for printing)."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    return head + "?" + _redact_query(query)


def is_rails_url(url: str) -> bool:
    """Whether *url* is the opaque form (``postgresql:DB?...``, no ``//``) rather than ``postgres://...``."""
    scheme, sep, rest = url.partition(":")
    return bool(sep) and scheme.lower() in RAILS_SCHEMES and not rest.startswith("/")


def parse_app_url(url: str) -> dict[str, str]:
    """libpq's keywords of a handed-out URL, either form (``postgres://`` with one host, or the opaque
    multi-host Rails form as ActiveRecord hands it to ``PG.connect``).  Contains the password."""
    return rails_url_keywords(url) if is_rails_url(url) else parse_source_url(url)


def describe_app_url(url: str) -> str:
    """A handed-out URL as it may be printed: user@host1,host2:ports/dbname and who it asks for, never the
    password (no value of the URL but these)."""
    conn = parse_app_url(url)
    tsa = conn.get("target_session_attrs")
    return describe_source(conn) + (f" ({tsa})" if tsa else "")
