"""The move of the database from the source (Heroku) into the primary: dump, restore, verify, cut over.

Everything runs on the primary itself: ``pg_dump`` pulls from the source over the network
(no laptop hop, no copy), ``pg_restore`` loads over the Unix socket as ``postgres`` and
``SET ROLE rails`` so that every object is owned by the app role.  The source URL never
reaches a command line or an output: it becomes a 0600 libpq service file on the
primary (in ``/run``, a tmpfs) that is removed when the step ends.

A run is: :func:`plan_migration` (read-only, the dry run shows it) → the transfer →
:func:`verify_restore` (object inventory, per-table row counts, sequences, the app host's
read/write and the sentinel).  For method ``pg_dump`` the transfer is :func:`run_stream` by
default (``source.transfer: stream``): one source session exports a snapshot; in it the schema
is dumped, each table's rows are piped into a fresh database and that table's indexes and keys
built right after them, then the foreign keys are checked; the inventory and every table's row
count are taken in the same snapshot.  ``source.transfer: directory`` (and method ``heroku``)
is :func:`run_dump` (``pg_dump -Fd -j N`` of that snapshot, counts in it) then
:func:`run_restore` (fresh database, extensions first, ``pg_restore -j N`` with restore-time
settings).  The cutover adds :func:`wait_for_source_quiet`,
:func:`run_sentinel_write` and :func:`run_rotate_password`; starting traffic adds
:func:`render_database_url` and :func:`record_downtime`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.psql import render
from hcbpg.engine import manifest as mf
from hcbpg.errors import (
    DatabaseError,
    HcbpgError,
    ParamsError,
    RemoteCommandError,
    SafetyCheckFailed,
    SecretError,
    VerificationFailed,
    WaitTimeout,
)
from hcbpg.ops import cluster as pg_cluster
from hcbpg.outcome import Check, Outcome, unified_diff

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.engine.runbook import Runbook
    from hcbpg.params import Params

#: the conf.d part that holds the restore-time settings; read last, removed after the restore
RESTORE_PART = "90-hcbpg-restore.conf"
#: where the source's service file lives on the primary (tmpfs: never on disk)
SECRET_DIR = "/run/hcbpg-migration"
SERVICE_NAME = "hcbpg_source"
APPLICATION_NAME = "hcbpg-migration"
#: COMMENT ON DATABASE written by hcbpg: a restore target may be dropped and restored again
MARKER_RESTORE = "hcbpg restore target"
#: ... and once traffic runs on it, it is live: never dropped without allow_destructive
MARKER_LIVE = "hcbpg live database"
GIB = 1024 ** 3

ROLLBACK = """\
How to roll back (nothing on the source was changed by hcbpg except the sentinel row's one column):
  1. Do NOT change DATABASE_URL / BLAZER_DATABASE_URL in Hatchbox: they still point at Heroku.
  2. Enable the processes again (Sidekiq, etc.) in Hatchbox.
  3. Turn maintenance mode off in Hatchbox: the app runs on the old (Heroku) database as before.
  4. Leave the primary as it is; fix the cause named above and repeat the cutover later
     (07 drops and restores hcb_production again: it is marked as an hcbpg restore target)."""


# the source URL -------------------------------------------------------------------

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


def render_service_file(conn: Mapping[str, str], *, name: str = SERVICE_NAME,
                        application_name: str = APPLICATION_NAME) -> str:
    """A libpq service file (pg_service.conf) with one section; values may not span lines."""
    lines = ["# written by hcbpg for the migration; removed when the step ends", f"[{name}]"]
    merged = {**conn, "application_name": application_name}
    if "sslmode" not in merged and merged.get("host") not in ("localhost", "127.0.0.1", "::1"):
        merged["sslmode"] = "require"  # Heroku only takes TLS; so do we by default
    for key in sorted(merged):
        value = merged[key]
        if "\n" in value or "\r" in value or not re.fullmatch(r"[a-z_]+", key):
            raise SecretError(f"source.url: parameter {key} cannot go into a service file")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def describe_source(conn: Mapping[str, str]) -> str:
    """The source as it may be printed: user@host:port/dbname, never the password."""
    return f"{conn.get('user', '?')}@{conn.get('host')}:{conn.get('port', '5432')}/{conn.get('dbname')}"


# URLs for the app ------------------------------------------------------------------

def render_database_url(params: "Params", password: str, *, host: str | None = None) -> str:
    """DATABASE_URL for the app: rails on the primary's private IP (contains the password)."""
    pg = params.postgres
    return (f"postgres://{urllib.parse.quote(pg.app_role, safe='')}:{urllib.parse.quote(password, safe='')}"
            f"@{host or params.primary.private_ip}:{pg.port}/{urllib.parse.quote(pg.database, safe='')}")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``[secret]`` (for printing)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:{hsecrets.REDACTED}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def handoff_path(params: "Params") -> Path:
    """Where the new DATABASE_URL is written for the operator: a 0600 file outside outputs/."""
    configured = getattr(params, "app_url_file", None) or getattr(params.postgres, "app_url_file", None)
    if configured:
        return Path(os.path.expanduser(configured))
    base = Path(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"))
    return base / "hcbpg" / params.environment / "app-database-urls.env"


def render_env_file(values: Mapping[str, str]) -> str:
    """``NAME=value`` lines (values single-quoted for a shell), for pasting into Hatchbox."""
    head = "# written by hcbpg (09_start_traffic): set these in Hatchbox, then delete this file\n"
    return head + "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def write_private_file(path: Path, text: str) -> None:
    """Write *text* to a 0600 file (directory 0700), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# SQL endpoints: psql with JSON results ---------------------------------------------

_JSON_MARK = "HCBPG-JSON "


class Endpoint:
    """psql on the primary, as the postgres OS user, against the source (service file) or the target."""

    def __init__(self, host: "Host", conn_cmd: str, *, label: str, env: str = "") -> None:
        self.host = host
        self.conn_cmd = conn_cmd
        self.label = label
        self.env = env

    def _cmd(self) -> str:
        return f"{self.env + ' ' if self.env else ''}{self.conn_cmd} -X -q -A -t -v ON_ERROR_STOP=1 -f -"

    def script(self, text: str, *, display: str, quiet: bool = False, timeout: float | None = None,
               check: bool = True) -> Any:
        """Run a psql script (SQL and meta-commands); raise DatabaseError naming the endpoint."""
        res = self.host.run(self._cmd(), sudo_user="postgres", stdin=text, display=display, quiet=quiet,
                            check=False, timeout=timeout)
        if check and not res.ok:
            raise DatabaseError(f"on {self.host.name}: psql against {self.label} failed: {display}\n    "
                                + hsecrets.scrub(res.output.strip()[-2000:]),
                                hint="Read the error above; what ran before this statement was applied.")
        return res

    def json(self, select: "sql.Composable | str", *, setup: str = "SET search_path = pg_catalog;") -> Any:
        """The JSON value of a one-value SELECT (search_path pinned so names come out schema-qualified)."""
        text = render(select).strip().rstrip(";")
        script = f"{setup}\nSELECT '{_JSON_MARK}' || ({text})::text;\n"
        res = self.script(script, display=f"query {self.label}", quiet=True)
        return parse_marked_json(res.stdout)

    def rows(self, select: "sql.Composable | str") -> list[dict[str, Any]]:
        text = render(select).strip().rstrip(";")
        # jsonb prints on one line (json_agg puts a newline between rows; the marker line must hold all)
        return self.json(f"SELECT coalesce(jsonb_agg(q), '[]'::jsonb) FROM ({text}) AS q") or []

    def execute(self, statements: Sequence["sql.Composable | str"], *, dry_run: bool = False) -> None:
        """Statements that change something, shown (scrubbed) one line each."""
        for st in statements:
            text = render(st).strip().rstrip(";") + ";"
            shown = f"psql {self.label}: {' '.join(text.split())}"
            if dry_run:
                self.host.echo(f"[{self.host.name}] [dry run] would run {hsecrets.scrub(shown)}")
                continue
            self.script(text + "\n", display=shown)


def parse_marked_json(stdout: str) -> Any:
    """The value after the last ``HCBPG-JSON`` marker in psql output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(_JSON_MARK):
            return json.loads(line[len(_JSON_MARK):])
    raise DatabaseError("psql printed no result line", hint="Run the query by hand to see what it prints.")


def target(host: "Host", params: "Params", database: str | None = None) -> Endpoint:
    """The target database on the primary, over the Unix socket as postgres (peer)."""
    pg = params.postgres
    db = database or pg.database
    return Endpoint(host, f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -d {shlex.quote(db)}",
                    label=f"{db} on {host.name}")


class Source(Endpoint):
    """The source database reached from the primary through a 0600 libpq service file.

    Use as a context manager: the file is written on enter and removed on exit.
    """

    def __init__(self, host: "Host", url: str) -> None:
        self.conn = parse_source_url(hsecrets.register(url))
        if self.conn.get("password"):
            hsecrets.register(self.conn["password"])
        self.service_file = f"{SECRET_DIR}/source.pgservice"
        super().__init__(host, f"psql -d service={SERVICE_NAME}",
                         label=f"the source ({describe_source(self.conn)})",
                         env=f"PGSERVICEFILE={self.service_file}")

        self._depth = 0

    def open(self) -> "Source":
        """Write the service file (nested opens share it; the last close removes it)."""
        if self._depth == 0:
            h = self.host
            h.run(f"install -d -m 0700 -o postgres -g postgres {SECRET_DIR}", quiet=True)
            h.put_text(self.service_file, render_service_file(self.conn), mode=0o600, owner="postgres")
        self._depth += 1
        return self

    def close(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self.host.run(f"rm -f {shlex.quote(self.service_file)}; rmdir {SECRET_DIR} 2>/dev/null || true",
                          quiet=True, check=False)

    def __enter__(self) -> "Source":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# catalog queries: the same SQL on both sides -------------------------------------------

_USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' "
            "AND n.nspname !~ '^pg_temp'")


def _not_ext_member(classid: str, objid: str) -> str:
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{classid}'::regclass "
            f"AND d.objid = {objid} AND d.deptype = 'e')")


INVENTORY_SQL = f"""
SELECT json_build_object(
 'schemas', (SELECT coalesce(json_object_agg(n.nspname, 'schema'), '{{}}') FROM pg_namespace n
             WHERE {_USER_NS} AND {_not_ext_member('pg_namespace', 'n.oid')}),
 'extensions', (SELECT coalesce(json_object_agg(e.extname, n.nspname || ' ' || e.extversion), '{{}}')
                FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace),
 'tables', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
              (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
               AND NOT a.attisdropped) || ' columns'), '{{}}')
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'p') AND {_USER_NS} AND {_not_ext_member('pg_class', 'c.oid')}),
 'indexes', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, pg_get_indexdef(c.oid)), '{{}}')
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('i', 'I') AND {_USER_NS} AND {_not_ext_member('pg_class', 'c.oid')}),
 'constraints', (SELECT coalesce(json_object_agg(n.nspname || '.' || coalesce(t.relname, ty.typname) || '.'
                   || co.conname, co.contype::text || ' ' || pg_get_constraintdef(co.oid)), '{{}}')
                 FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace
                 LEFT JOIN pg_class t ON t.oid = co.conrelid LEFT JOIN pg_type ty ON ty.oid = co.contypid
                 WHERE {_USER_NS} AND (t.oid IS NULL OR {_not_ext_member('pg_class', 't.oid')})
                 AND (ty.oid IS NULL OR {_not_ext_member('pg_type', 'ty.oid')})),
 'sequences', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname,
                 coalesce(s.last_value::text, 'not called')), '{{}}')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_sequences s ON s.schemaname = n.nspname AND s.sequencename = c.relname
               WHERE c.relkind = 'S' AND {_USER_NS} AND {_not_ext_member('pg_class', 'c.oid')}),
 'functions', (SELECT coalesce(json_object_agg(n.nspname || '.' || p.proname || '('
                 || pg_get_function_identity_arguments(p.oid) || ')', md5(coalesce(p.prosrc, '')
                 || coalesce(pg_get_function_sqlbody(p.oid), ''))), '{{}}')
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE {_USER_NS} AND {_not_ext_member('pg_proc', 'p.oid')}),
 'views', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname, c.relkind::text), '{{}}')
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('v', 'm') AND {_USER_NS} AND {_not_ext_member('pg_class', 'c.oid')}),
 'triggers', (SELECT coalesce(json_object_agg(n.nspname || '.' || c.relname || '.' || tg.tgname,
                pg_get_triggerdef(tg.oid)), '{{}}')
              FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT tg.tgisinternal AND {_USER_NS}),
 'types', (SELECT coalesce(json_object_agg(n.nspname || '.' || t.typname, t.typtype::text), '{{}}')
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE t.typtype IN ('e', 'd', 'r', 'm') AND {_USER_NS} AND {_not_ext_member('pg_type', 't.oid')})
)"""

COUNTS_SQL = f"""
SELECT coalesce(json_object_agg(name, n), '{{}}') FROM (
  SELECT n.nspname || '.' || c.relname AS name,
         (xpath('/row/n/text()', query_to_xml(format('SELECT count(*) AS n FROM %I.%I', n.nspname, c.relname),
                                               false, true, '')))[1]::text::bigint AS n
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND {_USER_NS} AND {_not_ext_member('pg_class', 'c.oid')}
  ORDER BY 1) q"""

#: what the restore depends on: extensions (with schema), database settings, encoding and locale
SOURCE_FACTS_SQL = """
SELECT json_build_object(
 'extensions', (SELECT coalesce(json_agg(json_build_object('name', e.extname, 'schema', n.nspname,
                  'version', e.extversion) ORDER BY e.extname), '[]')
                FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql'),
 'db_settings', (SELECT coalesce(json_agg(c ORDER BY c), '[]') FROM pg_db_role_setting s, unnest(s.setconfig) c
                 WHERE s.setrole = 0 AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())),
 'encoding', pg_encoding_to_char((SELECT encoding FROM pg_database WHERE datname = current_database())),
 'collate', (SELECT datcollate FROM pg_database WHERE datname = current_database()),
 'ctype', (SELECT datctype FROM pg_database WHERE datname = current_database()),
 'size_bytes', pg_database_size(current_database()),
 'large_objects', (SELECT count(*) FROM pg_largeobject_metadata),
 'version', current_setting('server_version_num')::int,
 'postmaster_start', pg_postmaster_start_time()::text,
 'user', current_user
)"""


@dataclass
class Inventory:
    """Objects of one database by kind (name -> definition), row counts per table."""

    objects: dict[str, dict[str, str]]
    rows: dict[str, int] = field(default_factory=dict)
    #: max(id) of the events table (the runbook's "newest events row"); None when there is none
    newest_event: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "rows": self.rows, "newest_event": self.newest_event}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Inventory":
        return cls({k: {n: str(v) for n, v in (o or {}).items()} for k, o in data["objects"].items()},
                   {k: int(v) for k, v in data["rows"].items()},
                   int(data["newest_event"]) if data.get("newest_event") is not None else None)


def newest_event_sql(params: "Params") -> str:
    """max(id) of public.<events_table>, NULL when the table is not there (query_to_xml: no parse error)."""
    src = params.source
    table = src.events_table if src is not None else "events"
    q = render(sql.SQL("SELECT max(id) AS n FROM public.{}").format(sql.Identifier(table)))
    return (f"SELECT CASE WHEN to_regclass({render(sql.Literal('public.' + table))}) IS NOT NULL THEN "
            f"(xpath('/row/n/text()', query_to_xml({render(sql.Literal(q))}, false, true, '')))[1]::text::bigint END")


def get_inventory(endpoint: Endpoint, params: "Params", *, rows: bool = True) -> Inventory:
    """The database's objects (and exact row counts, one count(*) per table, and the newest event)."""
    data = endpoint.json(f"SELECT json_build_object('objects', ({INVENTORY_SQL}), "
                         f"'rows', ({COUNTS_SQL if rows else 'SELECT json_build_object()'}), "
                         f"'newest_event', ({newest_event_sql(params)}))")
    return Inventory.from_json(data)


def get_source_facts(source: "Source") -> dict[str, Any]:
    """Encoding, locale, size, version, extensions and database settings of the source."""
    with source:
        return source.json(SOURCE_FACTS_SQL)


# comparing -----------------------------------------------------------------------------

#: kinds compared by definition too (a changed index or constraint is a mismatch, not only a missing one)
KIND_LABELS = {
    "schemas": "schemas", "extensions": "extensions", "tables": "tables", "indexes": "indexes",
    "constraints": "constraints", "sequences": "sequences (values)", "functions": "functions",
    "views": "views", "triggers": "triggers", "types": "types",
}
#: objects a restore may legitimately add on the target (nothing today); kind -> names
IGNORED: dict[str, set[str]] = {}


def _names(items: Iterable[str], limit: int = 5) -> str:
    items = sorted(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def compare_objects(source: Inventory, target: Inventory, *, live_source: bool = False) -> list[Check]:
    """One check per kind of object: same names and same definitions on both sides.

    With *live_source* (a dry run while the app still writes to the source) a sequence the
    source has moved past the target's value is a warning, not a failure.
    """
    out: list[Check] = []
    for kind, label in KIND_LABELS.items():
        src = source.objects.get(kind, {})
        tgt = {k: v for k, v in target.objects.get(kind, {}).items() if k not in IGNORED.get(kind, set())}
        missing = set(src) - set(tgt)
        extra = set(tgt) - set(src)
        differ = {k for k in set(src) & set(tgt) if src[k] != tgt[k]}
        status = "pass"
        problems = []
        if missing:
            problems.append(f"missing on target: {_names(missing)}")
        if extra:
            problems.append(f"only on target: {_names(extra)}")
        if differ:
            if kind == "sequences":
                ahead = {k for k in differ if _seq_value(src[k]) > _seq_value(tgt[k])}
                desc = "; ".join(f"{k} source {src[k]} target {tgt[k]}" for k in sorted(differ)[:5])
                problems.append(f"values differ: {desc}")
                if live_source and ahead == differ and not (missing or extra):
                    status = "warn"
            else:
                problems.append(f"definitions differ: {_names(differ)}")
        if problems and status != "warn":
            status = "fail"
        detail = f"source {len(src)}, target {len(tgt)}"
        if problems:
            detail += ": " + "; ".join(problems)
            if status == "warn":
                detail += " (the source is live: the app wrote after the dump)"
        out.append(Check(f"{label}", status, detail, "source vs target"))
    return out


def _seq_value(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        return 0


def compare_rows(source: Mapping[str, int], target: Mapping[str, int], *,
                 approximate: bool = False) -> list[Check]:
    """One check per table: exact row count on the source (at the dump's snapshot) vs the target.

    *approximate*: the source counts were not taken in the dump's snapshot (Heroku backups
    while the app still writes); differences are then warnings.
    """
    out = []
    for name in sorted(set(source) | set(target)):
        s, t = source.get(name), target.get(name)
        if s is None:
            out.append(Check(f"rows {name}", "fail", f"table only on target ({t} rows)", "source vs target"))
        elif t is None:
            out.append(Check(f"rows {name}", "fail", f"table missing on target (source {s} rows)",
                             "source vs target"))
        elif s == t:
            out.append(Check(f"rows {name}", "pass", f"{t} rows", "source vs target"))
        else:
            status = "warn" if approximate else "fail"
            out.append(Check(f"rows {name}", status, f"source {s}, target {t} ({t - s:+d})", "source vs target"))
    return out


def comparison_table(source: Inventory, target: Inventory) -> list[dict[str, Any]]:
    """Counts per kind of object and total rows, for the notebook's table."""
    rows = [{"what": KIND_LABELS[k], "source": len(source.objects.get(k, {})),
             "target": len(target.objects.get(k, {}))} for k in KIND_LABELS]
    rows.append({"what": "rows (all tables)", "source": sum(source.rows.values()), "target": sum(target.rows.values())})
    for r in rows:
        r["status"] = "pass" if r["source"] == r["target"] else "fail"
    return rows


# the dump's table of contents ------------------------------------------------------------

_TOC_LINE = re.compile(r"^(?P<id>\d+); (?P<cat>\d+) (?P<oid>\d+) (?P<rest>.*)$")


def filter_toc(toc: str, *, precreated_schemas: Iterable[str]) -> tuple[str, list[str]]:
    """The ``pg_restore -l`` list without what hcbpg creates itself before the restore.

    Dropped: EXTENSION entries and their COMMENTs (created as superuser beforehand: the app
    role may not create untrusted extensions), and the SCHEMA entries of schemas created
    beforehand (``heroku_ext``).  Returns the new list and the lines dropped.
    """
    schemas = set(precreated_schemas)
    kept, dropped = [], []
    for line in toc.splitlines():
        m = _TOC_LINE.match(line)
        if not m:
            kept.append(line)
            continue
        rest = m.group("rest").split()
        drop = False
        if rest[:1] == ["EXTENSION"]:
            drop = True
        elif rest[:3] == ["COMMENT", "-", "EXTENSION"]:
            drop = True
        elif rest[:1] == ["SCHEMA"] and len(rest) >= 3 and rest[2] in schemas:
            drop = True
        elif rest[:3] == ["COMMENT", "-", "SCHEMA"] and len(rest) >= 4 and rest[3] in schemas:
            drop = True
        if drop:
            dropped.append(line)
            kept.append(";" + line)
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", dropped


def plan_prerequisites(facts: Mapping[str, Any], *, toc: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Schemas to create before the restore (where extensions live, e.g. heroku_ext) and the extensions."""
    exts = [e for e in facts.get("extensions", []) if e["name"] != "plpgsql"]
    schemas = sorted({e["schema"] for e in exts if e["schema"] not in ("public", "pg_catalog")})
    if toc is not None and re.search(r"\bheroku_ext\b", toc) and "heroku_ext" not in schemas:
        schemas.append("heroku_ext")
    return schemas, exts


# restore-time settings ------------------------------------------------------------------

def plan_restore_settings(*, mem_bytes: int, jobs: int, archive_mode: str, wal_senders_busy: int,
                          replication_slots: int, wal_minimal: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Settings for the restore, and why each (or why a fast one is left out).

    All of them take effect on a reload.  ``wal_level = minimal`` (*wal_minimal*) lets COPY into a
    table created in the same transaction and the index builds skip WAL (pg_restore -j truncates
    before COPY in the same transaction for exactly this), but it needs ``max_wal_senders = 0``
    and a restart before and after the restore, and it cannot be used once archiving is on or a
    replica or slot exists: the backup chain would break.  Measured on the lab's 2 cores with a
    1 GB database, the two restarts cost more than the WAL it saves, so it is opt-in.
    """
    mwm = max(64 * 1024 ** 2, min(2 * GIB, mem_bytes // (4 * max(jobs, 1))))
    settings: dict[str, Any] = {
        "maintenance_work_mem": f"{mwm // 1024 ** 2}MB",
        "max_wal_size": "16GB",
        "checkpoint_timeout": "1h",
        "synchronous_commit": False,
        "autovacuum": False,
    }
    notes = [f"maintenance_work_mem {mwm // 1024 ** 2}MB: each of the {jobs} restore jobs builds indexes "
             "and foreign keys with this much memory (a quarter of RAM shared by the jobs, at most 2GB)",
             "max_wal_size 16GB, checkpoint_timeout 1h: no checkpoint in the middle of the load",
             "synchronous_commit off: a crash loses the last commits of a restore we would redo anyway",
             "autovacuum off: it would compete with the load; ANALYZE runs right after the restore"]
    busy = archive_mode in ("on", "always") or wal_senders_busy or replication_slots
    if busy:
        notes.append("WAL stays complete (full_page_writes on, wal_level as it is): archiving, a replica or a "
                     "replication slot is already there")
        return settings, notes
    settings["full_page_writes"] = False
    notes.append("full_page_writes off: nothing is archived or replicated yet, and a crash during the restore "
                 "means restoring again anyway")
    if wal_minimal:
        settings.update({"wal_level": "minimal", "max_wal_senders": 0})
        notes.append("wal_level minimal (max_wal_senders 0): tables and indexes created by the restore are "
                     "written without WAL and synced at commit; costs a restart before and after")
    else:
        notes.append("wal_level stays replica: wal_level minimal would skip the WAL of the load but needs a "
                     "restart before and after, which cost more than it saved in the lab "
                     "(set source.restore_wal_minimal: true for a large database on slow disks)")
    return settings, notes


def render_restore_settings(settings: Mapping[str, Any], *, server: str) -> str:
    from hcbpg.pg.conf import MANAGED_HEADER, quote_setting
    lines = [MANAGED_HEADER,
             f"# {server}: restore-time settings (06/07 migration). Removed when the restore ends;",
             "# if you find this file after a crash, delete it and reload PostgreSQL (restart if it sets wal_level).", ""]
    lines += [f"{k} = {quote_setting(settings[k])}" for k in sorted(settings)]
    return "\n".join(lines) + "\n"


def restore_part_path(params: "Params") -> str:
    from hcbpg.desired.server import config_dir
    return f"{config_dir(params)}/conf.d/{RESTORE_PART}"


def render_reload_and_wait(params: "Params", *, timeout_s: int = 30) -> str:
    """One command (as postgres): reload, wait until the postmaster has read the files
    (``pg_conf_load_time`` moves), then print the settings that need a restart (comma-separated)."""
    pg = params.postgres
    q = f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -X -q -A -t -d postgres -c"
    loaded = f"$({q} 'SELECT pg_conf_load_time()')"
    return (f'before="{loaded}" && pg_ctlcluster {pg.version} {shlex.quote(pg.cluster)} reload && '
            f'for i in $(seq {timeout_s * 10}); do [ "{loaded}" != "$before" ] && break; sleep 0.1; done && '
            f'if [ "{loaded}" = "$before" ]; then echo "the config reload was not picked up within {timeout_s}s" >&2; '
            f"exit 1; fi && {q} \"SELECT coalesce(string_agg(name, ',' ORDER BY name), '') FROM pg_settings "
            'WHERE pending_restart"')


def _apply_config(host: "Host", params: "Params") -> list[str]:
    """Reload (one round trip), then restart if a changed setting needs it; returns what was done."""
    res = host.run(render_reload_and_wait(params), sudo_user="postgres",
                   display=f"pg_ctlcluster {params.postgres.version} {params.postgres.cluster} reload, "
                           "wait until it is read", timeout=60,
                   hint="Look at the server log under /var/log/postgresql/.")
    pending = [n for n in res.stdout.strip().split(",") if n]
    if pending:
        pg_cluster.restart(host, params)
        return [f"restart ({', '.join(pending)})"]
    return ["reload"]


def get_server_state(host: "Host", params: "Params") -> dict[str, Any]:
    psql = pg_cluster.psql_for(host, params)
    row = psql.query("SELECT current_setting('archive_mode') AS archive_mode, "
                     "(SELECT count(*) FROM pg_stat_replication) AS senders, "
                     "(SELECT count(*) FROM pg_replication_slots) AS slots, "
                     "pg_postmaster_start_time()::text AS postmaster_start")[0]
    mem = host.probe("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout.strip()
    row["mem_bytes"] = int(mem or 0) * 1024 or 8 * GIB
    return row


def ensure_restore_settings(host: "Host", params: "Params", settings: Mapping[str, Any], *,
                            dry_run: bool) -> Outcome:
    """Write the restore-time part and bring it into force (restart when wal_level changes)."""
    path = restore_part_path(params)
    desired = render_restore_settings(settings, server=host.name)
    current = host.read_text(path)
    what = f"restore-time settings {RESTORE_PART} on {host.name}"
    if current == desired:
        return Outcome(what, False, dry_run)
    actions = [f"write {path}", "reload, restart if wal_level changes"]
    if not dry_run:
        host.put_text(path, desired, mode=0o644, owner="postgres")
        actions = [f"write {path}"] + _apply_config(host, params)
    return Outcome(what, True, dry_run, diff=unified_diff(current or "", desired, path), actions=actions)


def remove_restore_settings(host: "Host", params: "Params", *, dry_run: bool) -> Outcome:
    """Remove the restore-time part and bring the normal settings back (restart when needed)."""
    path = restore_part_path(params)
    what = f"restore-time settings {RESTORE_PART} on {host.name} removed"
    current = host.read_text(path)
    if current is None:
        return Outcome(what, False, dry_run)
    actions = [f"remove {path}"]
    if not dry_run:
        host.run(f"rm -f {shlex.quote(path)}")
        actions += _apply_config(host, params)
    return Outcome(what, True, dry_run, diff=unified_diff(current, "", path), actions=actions)


def check_restore_settings_gone(host: "Host", params: "Params") -> Check:
    psql = pg_cluster.psql_for(host, params)
    path = restore_part_path(params)
    row = psql.query("SELECT current_setting('wal_level') AS wal_level, current_setting('fsync') AS fsync, "
                     "current_setting('full_page_writes') AS fpw, current_setting('autovacuum') AS autovacuum")[0]
    ok = (not host.exists(path) and row["wal_level"] != "minimal" and row["fpw"] == "on"
          and row["autovacuum"] == "on" and row["fsync"] == "on")
    return Check.of("restore-time settings removed", ok,
                    f"wal_level {row['wal_level']}, full_page_writes {row['fpw']}, autovacuum {row['autovacuum']}"
                    + ("" if not host.exists(path) else f"; {path} still there"), host.name)


# the target database --------------------------------------------------------------------

@dataclass
class TargetState:
    exists: bool
    comment: str | None = None
    owner: str | None = None
    other_sessions: list[dict[str, Any]] = field(default_factory=list)
    user_tables: int = 0


def get_target_state(host: "Host", params: "Params") -> TargetState:
    """The target database as it is now: exists, hcbpg's marker, who is connected, how many tables."""
    psql = pg_cluster.psql_for(host, params)
    db = params.postgres.database
    rows = psql.query(sql.SQL(
        "SELECT shobj_description(d.oid, 'pg_database') AS comment, r.rolname AS owner FROM pg_database d "
        "JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = {}").format(sql.Literal(db)))
    if not rows:
        return TargetState(False)
    sessions = psql.query(sql.SQL(
        "SELECT pid, usename, application_name, host(client_addr) AS client, state FROM pg_stat_activity "
        "WHERE datname = {} AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        .format(sql.Literal(db)))
    tables = psql.value("SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        f"WHERE c.relkind IN ('r', 'p') AND {_USER_NS}", dbname=db)
    return TargetState(True, rows[0]["comment"], rows[0]["owner"], sessions, int(tables or 0))


def plan_recreate(state: TargetState, *, database: str, server: str, allow_destructive: bool,
                  same_server_as_source: bool) -> list[str]:
    """Why dropping the target is allowed (actions), or SafetyCheckFailed saying what to do."""
    if same_server_as_source:
        raise SafetyCheckFailed(
            f"on {server}: the source URL leads to this very server; refusing to drop {database}",
            hint="source.url must point at the old database (Heroku), not at the new primary.")
    if not state.exists:
        return [f"create database {database}"]
    if state.other_sessions:
        who = ", ".join(f"pid {s['pid']} {s['usename']}@{s['client'] or 'socket'} ({s['application_name'] or '-'})"
                        for s in state.other_sessions[:5])
        raise SafetyCheckFailed(
            f"on {server}: {len(state.other_sessions)} client(s) are connected to {database} ({who}); "
            "refusing to drop it",
            hint="If the app already runs on this database, the migration is over: do not restore again. "
                 "Otherwise disconnect them (pg_terminate_backend) and run the step again.")
    comment = state.comment or ""
    if comment.startswith(MARKER_LIVE) and not allow_destructive:
        raise SafetyCheckFailed(
            f"on {server}: {database} is the live database ({comment}); refusing to drop it",
            hint="Set allow_destructive: true in params only if you really mean to replace production.")
    if allow_destructive:
        why = "allow_destructive is true in params"
    elif comment.startswith(MARKER_RESTORE):
        why = "it is an earlier hcbpg restore target"
    elif state.user_tables == 0:
        why = "it has no tables (as step 04 created it)"
    else:
        raise SafetyCheckFailed(
            f"on {server}: {database} has {state.user_tables} table(s) and is not an hcbpg restore target; "
            "refusing to drop it",
            hint="If this database may go, set allow_destructive: true in params for this run; otherwise "
                 "point postgres.database at another name.")
    return [f"drop database {database} ({why})", f"create database {database}"]


def _locale_available(host: "Host", name: str) -> bool:
    if name in ("C", "POSIX", "C.UTF-8", "C.utf8"):
        return True
    norm = name.lower().replace("-", "")
    out = host.probe("locale -a").stdout.lower().replace("-", "").split()
    return norm in out


def render_db_setting(database: str, setting: str) -> sql.Composable:
    """``ALTER DATABASE ... SET`` for one ``name=value`` of pg_db_role_setting (search_path as identifiers)."""
    name, _, value = setting.partition("=")
    db = sql.Identifier(database)
    if name == "search_path":
        items = [v.strip() for v in value.split(",") if v.strip()]
        names = [v[1:-1].replace('""', '"') if v.startswith('"') and v.endswith('"') else v for v in items]
        return sql.SQL("ALTER DATABASE {} SET search_path = {}").format(
            db, sql.SQL(", ").join(sql.Identifier(n) for n in names))
    return sql.SQL("ALTER DATABASE {} SET {} = {}").format(db, sql.Identifier(name), sql.Literal(value))


def plan_create_statements(params: "Params", facts: Mapping[str, Any], *, locale_ok: bool,
                           run_label: str) -> list[sql.Composable]:
    """CREATE DATABASE (the source's encoding and, when the server has it, its locale), marker, settings."""
    pg = params.postgres
    db, owner = sql.Identifier(pg.database), sql.Identifier(pg.app_role)
    create = sql.SQL("CREATE DATABASE {} WITH OWNER {} ENCODING {} TEMPLATE template0").format(
        db, owner, sql.Literal(facts.get("encoding") or "UTF8"))
    if locale_ok and facts.get("collate"):
        create += sql.SQL(" LC_COLLATE {} LC_CTYPE {}").format(sql.Literal(facts["collate"]),
                                                             sql.Literal(facts.get("ctype") or facts["collate"]))
    out: list[sql.Composable] = [create, sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        db, sql.Literal(f"{MARKER_RESTORE}: restore in progress ({run_label})"))]
    for setting in facts.get("db_settings", []):
        out.append(render_db_setting(pg.database, setting))
    return out


def run_statements(host: "Host", params: "Params", statements: Sequence["sql.Composable | str"], *, dbname: str,
                   dry_run: bool = False) -> None:
    """Statements in one psql call as postgres (each its own transaction, so CREATE DATABASE may be one),
    all shown; it stops at the first error."""
    texts = [render(st).strip().rstrip(";") + ";" for st in statements]
    if dry_run:
        pg_cluster.psql_for(host, params).execute(texts, dbname=dbname, dry_run=True)
        return
    pg = params.postgres
    shown = f"psql -d {dbname}: " + " ".join(" ".join(t.split()) for t in texts)
    res = host.run(f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -X -q -v ON_ERROR_STOP=1 "
                   f"-d {shlex.quote(dbname)} -f -", sudo_user="postgres", stdin="\n".join(texts) + "\n",
                   display=hsecrets.scrub(shown), check=False)
    if not res.ok:
        raise DatabaseError(f"on {host.name}: SQL failed in database {dbname}: {hsecrets.scrub(shown)}\n    "
                            + hsecrets.scrub(res.output.strip()[-2000:]),
                            hint="The statements before the failing one were applied; fix the cause and "
                                 "run the step again (it only does what is still missing).")


def plan_fresh_database(host: "Host", params: "Params", facts: Mapping[str, Any], *, run_label: str = "",
                        server_state: Mapping[str, Any] | None = None) -> tuple[list[sql.Composable], list[str]]:
    """The statements that drop (when allowed) and recreate the target database, and why (read-only:
    SafetyCheckFailed when it may not be dropped)."""
    pg = params.postgres
    state = get_target_state(host, params)
    server_start = (server_state or get_server_state(host, params))["postmaster_start"]
    actions = plan_recreate(state, database=pg.database, server=host.name,
                            allow_destructive=params.allow_destructive,
                            same_server_as_source=facts.get("postmaster_start") == server_start)
    locale_ok = _locale_available(host, str(facts.get("collate") or "C"))
    statements: list[sql.Composable] = []
    if state.exists:
        statements.append(sql.SQL("DROP DATABASE {}").format(sql.Identifier(pg.database)))
    created = plan_create_statements(params, facts, locale_ok=locale_ok, run_label=run_label)
    statements += created
    if not locale_ok:
        actions.append(f"the source's locale {facts.get('collate')} is not on {host.name}: the database gets "
                       "the cluster's default (text sorts may differ)")
    return statements, actions + [" ".join(render(s).split()) for s in created]


def ensure_fresh_database(host: "Host", params: "Params", facts: Mapping[str, Any], *, dry_run: bool,
                          run_label: str = "", server_state: Mapping[str, Any] | None = None) -> Outcome:
    """Drop (when allowed) and recreate the target database, owned by the app role."""
    pg = params.postgres
    statements, actions = plan_fresh_database(host, params, facts, run_label=run_label, server_state=server_state)
    run_statements(host, params, statements, dbname="postgres", dry_run=dry_run)
    return Outcome(f"database {pg.database} on {host.name} (fresh, owner {pg.app_role})", True, dry_run,
                   actions=actions)


def prerequisite_statements(params: "Params", schemas: Sequence[str],
                            extensions: Sequence[Mapping[str, str]]) -> list[sql.Composable]:
    role = sql.Identifier(params.postgres.app_role)
    st: list[sql.Composable] = [sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
        sql.Identifier(s), role) for s in schemas]
    st += [sql.SQL("CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}").format(
        sql.Identifier(e["name"]), sql.Identifier(e["schema"])) for e in extensions]
    return st


def ensure_prerequisites(host: "Host", params: "Params", schemas: Sequence[str],
                         extensions: Sequence[Mapping[str, str]], *, dry_run: bool) -> Outcome:
    """Schemas the extensions live in (heroku_ext, owned by the app role) and the extensions, as superuser."""
    st = prerequisite_statements(params, schemas, extensions)
    if st:
        run_statements(host, params, st, dbname=params.postgres.database, dry_run=dry_run)
    return Outcome(f"schemas and extensions in {params.postgres.database} on {host.name}", bool(st), dry_run,
                   actions=[" ".join(render(s).split()) for s in st])


def render_prepare_sql(params: "Params", database_statements: Sequence["sql.Composable | str"],
                       object_statements: Sequence["sql.Composable | str"]) -> str:
    """One psql script (run against ``postgres``): the fresh database, then in it the schemas and extensions."""
    db = params.postgres.database
    lines = ["\\set ON_ERROR_STOP 1"]
    lines += [render(st).strip().rstrip(";") + ";" for st in database_statements]
    lines.append("\\connect '" + db.replace("'", "''") + "'")
    lines += [render(st).strip().rstrip(";") + ";" for st in object_statements]
    return "\n".join(lines) + "\n"


def check_extensions_available(host: "Host", params: "Params", extensions: Sequence[Mapping[str, str]]) -> Check:
    names = [e["name"] for e in extensions]
    have = {r["name"] for r in pg_cluster.psql_for(host, params).query(
        sql.SQL("SELECT name FROM pg_available_extensions WHERE name = ANY({})").format(sql.Literal(names)))}
    missing = [n for n in names if n not in have]
    return Check.of("extensions available on the primary", not missing,
                    f"{', '.join(names) or 'none needed'}" if not missing else f"missing: {', '.join(missing)} "
                    "(install the package that ships them)", host.name)


# dump --------------------------------------------------------------------------------------

def dump_path(params: "Params", tag: str) -> str:
    src = params.source
    assert src is not None
    return f"{src.dump_dir.rstrip('/')}/{tag}"


def render_pg_dump(params: "Params", out_dir: str, *, snapshot_env: str | None = "HCBPG_SNAPSHOT") -> str:
    """pg_dump of the source in directory format with parallel jobs (no secret on the command line)."""
    src = params.source
    assert src is not None
    parts = [f"PGSERVICEFILE={SECRET_DIR}/source.pgservice", "pg_dump", f"-d service={SERVICE_NAME}",
             "-Fd", f"-j {src.jobs}",
             # the dump is read once, right away, on the same disk: compressing only costs CPU
             "-Z 0", "--no-sync", "--lock-wait-timeout=60s",
             f"-f {shlex.quote(out_dir)}"]
    if snapshot_env:
        parts.append(f'--snapshot="${snapshot_env}"')
    return " ".join(parts)


def render_dump_session(params: "Params", out_dir: str, *, with_counts: bool = True) -> str:
    """One source session: export a snapshot, run pg_dump on it, then inventory and counts in it.

    Because the counts are taken in the dump's own snapshot they are exact even while the
    app still writes (the dry run), and the comparison needs no quiet source.
    """
    status = f"{out_dir}.pg_dump-exit"
    lines = [
        "\\set ON_ERROR_STOP 1",
        # Heroku may set timeouts per role: the snapshot must outlive the whole dump
        "SET statement_timeout = 0;",
        "SET idle_in_transaction_session_timeout = 0;",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;",
        "SELECT pg_export_snapshot() AS hcbpg_snapshot \\gset",
        "\\setenv HCBPG_SNAPSHOT :hcbpg_snapshot",
        f"\\! {render_pg_dump(params, out_dir)} 2> {shlex.quote(out_dir + '.pg_dump-log')}; "
        f"echo $? > {shlex.quote(status)}",
        "SET search_path = pg_catalog;",
    ]
    if with_counts:
        lines += [f"SELECT '{_JSON_MARK}' || json_build_object('objects', ({INVENTORY_SQL}), "
                  f"'rows', ({COUNTS_SQL}), 'newest_event', ({newest_event_sql(params)}))::text;"]
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


@dataclass
class DumpResult:
    path: str
    format: str                 # "directory" or "custom"
    seconds: float
    bytes: int
    source: Inventory | None    # inventory and counts at the dump's snapshot (None: count later)


def prepare_dump_dir(host: "Host", params: "Params", tag: str, *, dry_run: bool) -> str:
    path = dump_path(params, tag)
    src = params.source
    assert src is not None
    if not dry_run:
        host.run(f"install -d -m 0700 -o postgres -g postgres {shlex.quote(src.dump_dir)} && "
                 f"rm -rf {shlex.quote(path)} {shlex.quote(path)}.pg_dump-*", quiet=True)
    return path


def check_disk_space(host: "Host", params: "Params", facts: Mapping[str, Any]) -> Check:
    """The dump dir and the data directory have room for the dump plus the restored database (2x the source + 10%)."""
    src = params.source
    assert src is not None
    # read-only: df on the dump dir, or on its nearest existing parent
    res = host.probe(f"d={shlex.quote(src.dump_dir)}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; "
                     "df -B1 --output=avail \"$d\" | tail -1")
    avail = int(res.stdout.strip() or "0")
    need = int(int(facts.get("size_bytes") or 0) * 2.2)
    return Check.of("disk space for dump and restore", avail >= need,
                    f"{avail / GIB:.1f} GiB free, need about {need / GIB:.1f} GiB", host.name)


def run_dump(host: "Host", params: "Params", source: Source, tag: str, *, with_counts: bool = True) -> DumpResult:
    """pg_dump -Fd -j N on the primary from the source, in a snapshot we hold; counts in that snapshot."""
    path = prepare_dump_dir(host, params, tag, dry_run=False)
    started = time.monotonic()
    res = source.script(render_dump_session(params, path, with_counts=with_counts),
                        display=f"pg_dump -Fd -j {params.source.jobs} of {source.label} into {path} "
                                "(in an exported snapshot, then inventory and row counts in that snapshot)",
                        timeout=24 * 3600)
    seconds = time.monotonic() - started
    status = (host.read_text(f"{path}.pg_dump-exit") or "").strip()
    if status != "0":
        log = host.read_text(f"{path}.pg_dump-log") or ""
        raise RemoteCommandError(host.name, f"pg_dump of {source.label}", int(status) if status.isdigit() else None,
                                 hsecrets.scrub(log[-3000:]),
                                 hint="Nothing was restored. Fix the cause (connection, locks, disk) and run "
                                      "the step again.")
    inv = Inventory.from_json(parse_marked_json(res.stdout)) if with_counts else None
    size = int(host.probe(f"du -sb {shlex.quote(path)} | cut -f1").stdout.strip() or 0)
    return DumpResult(path, "directory", seconds, size, inv)


# stream: no dump files for the data -----------------------------------------------------------

def transfer_method(params: "Params") -> str:
    """How the data moves for method pg_dump: ``stream`` (the default) or ``directory`` (pg_dump -Fd, then pg_restore)."""
    src = params.source
    return str(getattr(src, "transfer", None) or "stream")


def render_toc_filter(schemas: Iterable[str]) -> str:
    """A sed program doing what :func:`filter_toc` does, for a list made on the primary."""
    alts = ["EXTENSION - ", "COMMENT - EXTENSION "]
    for sch in schemas:
        if not re.fullmatch(r"[A-Za-z0-9_]+", sch):
            raise ValueError(f"schema name {sch!r} cannot go into the list filter")
        alts += [f"SCHEMA - {sch} ", f"COMMENT - SCHEMA {sch} "]
    return "s/^([0-9]+; [0-9]+ [0-9]+ (" + "|".join(alts) + "))/;\\1/"


#: the niceness of the sessions off the critical path (see :func:`render_stream_scripts`)
LOW_PRIORITY = 10

#: separates the fields of the build plan (names with control characters are left to the final pass)
_US = "\x1f"

#: how costly an index build is, for the order of a table's builds: GIN, GiST and SP-GiST first (they
#: build on one CPU, several times slower per row than a B-tree: the lab's GIN over jsonb took 13 s
#: where the same table's primary key took 2), then the largest
_BUILD_COST = ("CASE WHEN (SELECT a.amname FROM pg_am a WHERE a.oid = {index}.relam) IN ('gin', 'gist', 'spgist') "
               "THEN 0 ELSE 1 END AS slow, pg_relation_size({index}.oid) AS size")

#: the build plan, in the source's snapshot: for each plain table, the entries built right after its
#: rows, the costliest first.  One line per entry: table oid, kind, "classid objid" of its TOC entry,
#: the start of that TOC entry's text (desc, schema, tag) and, for keys, the unique index and the ALTER TABLE.
#:   I: a plain index (not a constraint's), restored from the dump by pg_restore as it is;
#:   K: a primary key or unique constraint: its unique index is built like any other index (so at
#:      the same time as the table's other indexes), then ADD CONSTRAINT ... USING INDEX.  Keys that
#:      are deferrable, clustered on, or the replica identity stay with pg_restore;
#:   F: a (validated) foreign key between plain tables, once every table is loaded: added NOT VALID
#:      (no scan), then VALIDATE CONSTRAINT, N at a time.  VALIDATE checks every row as ADD does, but
#:      locks the referenced table only in ROW SHARE mode, so the checks of different tables run at once.
BUILDS_SQL = f"""
SELECT b FROM (
  SELECT concat_ws(E'\\x1f', t.oid, 'I', '1259 ' || ic.oid, format('INDEX %s %s ', n.nspname, ic.relname)) AS b,
         n.nspname || t.relname || ic.relname AS names, t.oid AS tbl, {_BUILD_COST.format(index='ic')}
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  WHERE t.relkind = 'r' AND NOT t.relispartition AND {_USER_NS} AND {_not_ext_member('pg_class', 't.oid')}
    AND i.indisvalid AND ic.relnamespace = t.relnamespace
    AND NOT EXISTS (SELECT 1 FROM pg_constraint co WHERE co.conindid = ic.oid AND co.conrelid = t.oid
                    AND co.contype IN ('p', 'u', 'x'))
  UNION ALL
  SELECT concat_ws(E'\\x1f', t.oid, 'K', '2606 ' || co.oid,
                   format('CONSTRAINT %s %s %s ', n.nspname, t.relname, co.conname),
                   pg_get_indexdef(co.conindid) || ';',
                   format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s USING INDEX %I;', n.nspname, t.relname,
                          co.conname, CASE co.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, co.conname)),
         n.nspname || t.relname || co.conname || pg_get_indexdef(co.conindid), t.oid,
         {_BUILD_COST.format(index='ic')}
  FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class ic ON ic.oid = co.conindid JOIN pg_index i ON i.indexrelid = ic.oid
  WHERE co.contype IN ('p', 'u') AND t.relkind = 'r' AND NOT t.relispartition AND {_USER_NS}
    AND {_not_ext_member('pg_class', 't.oid')} AND ic.relname = co.conname AND ic.relnamespace = t.relnamespace
    AND NOT co.condeferrable AND NOT i.indisclustered AND NOT i.indisreplident AND i.indisvalid
  UNION ALL
  SELECT concat_ws(E'\\x1f', t.oid, 'F', '2606 ' || co.oid,
                   format('FK CONSTRAINT %s %s %s ', n.nspname, t.relname, co.conname),
                   format('ALTER TABLE ONLY %I.%I ADD CONSTRAINT %I %s NOT VALID;', n.nspname, t.relname, co.conname,
                          pg_get_constraintdef(co.oid)),
                   format('ALTER TABLE ONLY %I.%I VALIDATE CONSTRAINT %I;', n.nspname, t.relname, co.conname),
                   -- the TOC entry of the referenced key: the foreign key waits for pg_restore unless it was built
                   coalesce((SELECT '2606 ' || k.oid FROM pg_constraint k WHERE k.conindid = co.conindid
                             AND k.conrelid = co.confrelid AND k.contype IN ('p', 'u', 'x')),
                            '1259 ' || co.conindid)),
         n.nspname || t.relname || co.conname || pg_get_constraintdef(co.oid), t.oid, 2, 0
  FROM pg_constraint co JOIN pg_class t ON t.oid = co.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
  JOIN pg_class r ON r.oid = co.confrelid
  WHERE co.contype = 'f' AND co.convalidated AND co.conparentid = 0 AND t.relkind = 'r' AND NOT t.relispartition
    AND r.relkind = 'r' AND NOT r.relispartition AND {_USER_NS} AND {_not_ext_member('pg_class', 't.oid')}
) q WHERE names !~ '[[:cntrl:]]' ORDER BY tbl, slow, size DESC, b;"""

#: the tables to copy, largest first: oid, COPY format, name.  Binary when every column's type (its
#: base type for a domain, and its element type for an array) is a base or enum type, or a built-in
#: one, whose send and receive functions are the server's own (internal language, as citext's
#: are): then both ends read and write the same bytes on any server; text otherwise.
TABLES_SQL = f"""
SELECT c.oid || ' ' || CASE WHEN coalesce(b.ok, true) THEN 'binary' ELSE 'text' END || ' '
       || format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT bool_and(x.typsend <> 0 AND x.typreceive <> 0 AND (x.typtype IN ('b', 'e') OR x.oid < 16384)
                  AND (SELECT bool_and(p.prolang = 12) FROM pg_proc p
                       WHERE p.oid IN (x.typsend::oid, x.typreceive::oid))) AS ok
  FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
  CROSS JOIN LATERAL (VALUES (bt.oid), (CASE WHEN bt.typcategory = 'A' THEN nullif(bt.typelem, 0) END)) v(t)
  JOIN pg_type x ON x.oid = v.t
  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) b ON true
WHERE c.relkind = 'r' AND {_USER_NS} AND {_not_ext_member('pg_class', 'c.oid')}
ORDER BY pg_relation_size(c.oid) DESC, 1;"""

#: splits the build plan over the tables (argv: the plan, then the filtered ``pg_restore -l`` list):
#: each matched TOC entry (same classid and oid, and its text starts with the same desc, schema and
#: tag) becomes ``build/<table oid>.<n>.list`` (I) or ``.sql`` plus a line of ``<table oid>.keys`` (K),
#: and is commented out of the list printed for the final pass.  Anything unmatched stays in it, and
#: so does a foreign key whose referenced key stays with pg_restore (F lines name that key's entry).
SPLIT_AWK = r"""BEGIN { FS = "\037" }
FILENAME == ARGV[1] {
    want[$3] = FNR; tbl[FNR] = $1; kind[FNR] = $2; toc[FNR] = $4; mk[FNR] = $5; alt[FNR] = $6; dep[FNR] = $7
    next
}
{
    i = 0
    if (match($0, /^[0-9]+; [0-9]+ [0-9]+ /)) {
        split(substr($0, 1, RLENGTH), h, " ")
        k = h[2] " " h[3]
        if ((k in want) && index(substr($0, RLENGTH + 1), toc[want[k]]) == 1) i = want[k]
        # a foreign key only when its referenced key is built before it (pg_dump lists keys first)
        if (i && kind[i] == "F" && !(dep[i] in built)) i = 0
    }
    if (!i) { print; next }
    built[k] = 1
    print ";" $0
    f = W "/build/" tbl[i] "." sprintf("%06d", i)
    if (kind[i] == "I") { print $0 > (f ".list"); close(f ".list") }
    else if (kind[i] == "F") {
        a = W "/fk-add.sql"; print mk[i] >> a; close(a)
        a = W "/fk-validate"; print alt[i] >> a; close(a)
    } else {
        print mk[i] > (f ".sql"); close(f ".sql")
        a = W "/build/" tbl[i] ".keys"; print alt[i] >> a; close(a)
    }
}
"""


def _target_psql(params: "Params") -> str:
    """psql against the target database on the primary, as the scripts run it (as postgres)."""
    pg = params.postgres
    return f"psql --cluster {pg.version}/{shlex.quote(pg.cluster)} -X -q -v ON_ERROR_STOP=1 -d {shlex.quote(pg.database)}"


def render_on_target(params: "Params") -> list[str]:
    """The shell function ``on_target N psql-args...``: psql against the target database, its server
    process at niceness N (0: left as it is).

    The postgres OS user may lower its own processes' CPU priority, never raise it: the session
    prints its backend's pid first, and that process is reniced, and so is its autogroup (PostgreSQL
    starts each backend in a session of its own, and with autogroup scheduling, on by default on
    Ubuntu, a nice value counts only within its session).  A lowered session starts no parallel
    workers: the postmaster would fork them at normal priority.
    """
    tgt = _target_psql(params)
    return [
        "on_target() {",
        '  local n=$1; shift',
        f'  if [ "$n" = 0 ]; then {tgt} "$@"; return; fi',
        f'  PGOPTIONS="-c max_parallel_maintenance_workers=0" nice -n "$n" {tgt} -A -t -c "SELECT pg_backend_pid()" '
        '"$@" | { IFS= read -r pid || true; renice -n "$n" -p "$pid" > /dev/null 2>&1 || true; '
        '{ echo "$n" > "/proc/$pid/autogroup"; } 2> /dev/null || true; cat > /dev/null; }',
        "}"]


def render_stream_scripts(params: "Params", work: str, schemas: Iterable[str], *, prepare: str | None = None,
                          reload_settings: bool = False, remove_part: str | None = None) -> tuple[str, str, str]:
    """The shell scripts of a streamed transfer: the whole of it, the work on one table, one index build.

    Schema in the snapshot (pg_dump --schema-only), pre-data restored as the app role, then
    ``source.jobs`` tables at a time, largest first: the table's rows piped ``COPY TO STDOUT | COPY FROM STDIN``
    in the same snapshot, then right away that table's indexes, the costliest first, ``source.jobs`` at
    a time (primary keys and unique constraints as a unique index, then ``ADD CONSTRAINT ... USING
    INDEX``) and ANALYZE.  The critical path (the largest table's rows, then its costliest index)
    keeps its CPU priority; every other session's server process runs at :data:`LOW_PRIORITY`
    (:func:`render_on_target`), so the other tables take the CPU the chain leaves.
    Then sequence values, then the rest of post-data (foreign keys, triggers, what the build plan
    did not match) with pg_restore -j N.  Each phase leaves an ``hcbpg-time`` line.

    The inventory and exact row counts are taken by one more session in the same snapshot
    (``counts.out``) once every table is loaded, while the foreign keys are checked.  While the schema is dumped: *prepare* (:func:`render_prepare_sql`:
    the fresh database, its schemas and extensions) runs, and with *reload_settings* the server
    reloads the restore-time settings already written.  *remove_part*: the restore-time settings
    file, removed (and the server reloaded) as soon as the load is done.  Both only for settings
    that need no restart.
    """
    pg = params.postgres
    w = shlex.quote(work)
    jobs = restore_jobs(params)
    src_jobs = params.source.jobs if params.source is not None else 2
    cl = f"--cluster {pg.version}/{shlex.quote(pg.cluster)}"
    role = shlex.quote(pg.app_role)
    restore = f"pg_restore {cl} --no-owner --no-acl --role={role} --exit-on-error"
    tgt = _target_psql(params)
    head = ["set -euo pipefail",
            # psql's pg_wrapper exports PGCLUSTER/PGPORT/PGHOST for the source session: not ours to inherit
            "unset PGCLUSTER PGPORT PGHOST PGDATABASE PGUSER",
            f"export PGSERVICEFILE={SECRET_DIR}/source.pgservice"]
    main = "\n".join(head + [
        'stamp() { echo "hcbpg-time $1 - $(date +%s.%N)"; }',
        "stamp start"]
        + ([f"cat > {w}/prepare.sql <<'HCBPG_PREPARE_SQL'", prepare.rstrip("\n"), "HCBPG_PREPARE_SQL",
            f"psql {cl} -X -q -v ON_ERROR_STOP=1 -d postgres -f {w}/prepare.sql & preppid=$!"] if prepare else [])
        + ([f"{render_reload_and_wait(params)} > /dev/null & reloadpid=$!"] if reload_settings else [])
        + [
        f'pg_dump -d service={SERVICE_NAME} --schema-only -Fc --lock-wait-timeout=60s --snapshot="$HCBPG_SNAPSHOT" '
        f"-f {w}/schema.dump",
        f"pg_restore -l {w}/schema.dump | sed -E {shlex.quote(render_toc_filter(schemas))} > {w}/schema.list",
        f"mkdir -p {w}/build",
        f"awk -v W={w} -f {w}/split.awk {w}/builds {w}/schema.list > {w}/post.list"]
        + (['wait "$preppid"'] if prepare else []) + (['wait "$reloadpid"'] if reload_settings else []) + [
        f"{restore} -L {w}/schema.list --section=pre-data -d {shlex.quote(pg.database)} {w}/schema.dump",
        "stamp pre-data",
        # source.jobs tables at a time, largest first: the largest table's chain (its rows, then its
        # costliest index: a GIN one builds on one CPU) is the critical path.  Its sessions keep their
        # CPU priority; every other session runs reniced (copy-one.sh), so the smaller tables fill
        # the CPU the chain leaves instead of slowing it.  Measured on the lab's 2 cores: 2 lanes got
        # the largest table's rows in sooner than 4; the largest table's rows first on their own
        # finished no sooner (the lab's source shares the CPU; on a remote source it would idle a core).
        f"xargs -r -d '\\n' -P {src_jobs} -n 1 bash {w}/copy-one.sh < {w}/tables",
        "stamp tables",
        # the inventory and exact row counts, in the same snapshot, while the foreign keys are checked
        f"cat > {w}/counts.sql <<'HCBPG_COUNTS_SQL'",
        "SET search_path = pg_catalog;",
        f"SELECT '{_JSON_MARK}' || json_build_object('objects', ({INVENTORY_SQL}), "
        f"'rows', ({COUNTS_SQL}), 'newest_event', ({newest_event_sql(params)}))::text;",
        "HCBPG_COUNTS_SQL",
        f'psql -X -q -A -t -v ON_ERROR_STOP=1 -d service={SERVICE_NAME} -c "BEGIN ISOLATION LEVEL REPEATABLE READ, '
        'READ ONLY" -c "SET TRANSACTION SNAPSHOT \'$HCBPG_SNAPSHOT\'" '
        f'-f {w}/counts.sql -c "COMMIT" > {w}/counts.out & countspid=$!',
        f"{tgt} -f {w}/sequences.sql",
        f"if [ -f {w}/fk-add.sql ]; then",
        f"  {tgt} -c \"SET ROLE {pg.app_role}\" -f {w}/fk-add.sql",
        f"  xargs -r -d '\\n' -P {jobs} -n 1 {tgt} -c \"SET ROLE {pg.app_role}\" -c < {w}/fk-validate",
        "fi",
        "stamp foreign-keys",
        f"{restore} -L {w}/post.list --section=post-data -j {jobs} -d {shlex.quote(pg.database)} {w}/schema.dump",
        "stamp post-data",
        # what the workers did not ANALYZE: partitioned tables and materialized views
        f"{tgt} -c \"SET ROLE {pg.app_role}\" -At -c \"SELECT format('ANALYZE %I.%I;', n.nspname, c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('p', 'm') AND "
        f"{_USER_NS}\" > {w}/analyze.sql",
        f"{tgt} -c \"SET ROLE {pg.app_role}\" -f {w}/analyze.sql",
        "stamp end"]
        + ([f"rm -f {shlex.quote(remove_part)}", render_reload_and_wait(params) + " > /dev/null",
            "stamp settings"] if remove_part else [])
        + ['wait "$countspid"', "stamp counted", ""])
    on_target = render_on_target(params)
    one = "\n".join(head + [
        f"W={w}",
        'read -r oid fmt t <<< "$1"',
        'stamp() { echo "hcbpg-time $1 $oid $(date +%s.%N)" >> "$W/times"; }',
        *on_target,
        # the largest table (the first) is the critical path: its rows, then its costliest index; its
        # sessions keep their priority, every other table's run reniced, so they take the CPU it leaves
        f'if [ "$1" = "$(head -n 1 "$W/tables")" ]; then n=0; else n={LOW_PRIORITY}; fi',
        f'nice -n "$n" psql -X -q -v ON_ERROR_STOP=1 -d service={SERVICE_NAME} '
        '-c "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" '
        '-c "SET TRANSACTION SNAPSHOT \'$HCBPG_SNAPSHOT\'" -c "COPY $t TO STDOUT (FORMAT $fmt)" -c "COMMIT" '
        # FREEZE (the table truncated in the same transaction, as pg_restore -j does): the rows are
        # loaded frozen and the visibility map set, so nothing rewrites their pages for hint bits,
        # foreign-key checks can read indexes only, and no VACUUM is owed after the cutover
        '| on_target "$n" -c "BEGIN" -c "TRUNCATE ONLY $t" -c "COPY $t FROM STDIN (FORMAT $fmt, FREEZE)" -c "COMMIT"',
        "stamp copied",
        "shopt -s nullglob",
        # in plan order, the costliest first: that one at the table's priority, the others reniced
        'items=("$W/build/$oid".[0-9]*)',
        f'if [ "${{#items[@]}}" -gt 0 ]; then printf \'%s\\n\' "${{items[@]}}" | '
        f'awk -v n="$n" \'{{ print (NR == 1 ? n : {LOW_PRIORITY}), $0 }}\' | '
        f"xargs -d '\\n' -P {src_jobs} -n 1 bash \"$W/build-one.sh\"; fi",
        f'if [ -f "$W/build/$oid.keys" ]; then on_target "$n" -c "SET ROLE {pg.app_role}" -f "$W/build/$oid.keys"; fi',
        f'on_target "$n" -c "SET ROLE {pg.app_role}" -c "ANALYZE $t"',
        "stamp built",
        ""])
    build = "\n".join(head + [
        f"W={w}",
        *on_target,
        'read -r n f <<< "$1"',
        'case "$f" in',
        # the index's statement as pg_restore writes it (with its SET lines), run by psql
        f'  *.list) {restore} -L "$f" -f - "$W/schema.dump" | on_target "$n" -f - ;;',
        f'  *.sql) on_target "$n" -c "SET ROLE {pg.app_role}" -f "$f" ;;',
        '  *) echo "build-one.sh: what is $f?" >&2; exit 2 ;;',
        "esac",
        ""])
    return main, one, build


def render_bundle(files: Mapping[str, tuple[str, str]]) -> str:
    """Shell lines that write each file (path -> (mode, text)) from a quoted here-document, so that one
    upload carries them all."""
    lines = []
    for n, (path, (mode, text)) in enumerate(files.items()):
        end = f"HCBPG_FILE_{n}"
        if any(line == end for line in text.splitlines()):
            raise ValueError(f"{path}: holds the line {end}")
        lines += [f"cat > {shlex.quote(path)} <<'{end}'", text.rstrip("\n"), end, f"chmod {mode} {shlex.quote(path)}"]
    return "\n".join(lines) + "\n"


def render_stream_session(params: "Params", work: str) -> str:
    """The source session of a streamed transfer: it exports the snapshot and holds it while the transfer
    runs; tables, sequences and the build plan are read in it first."""
    status = f"{work}/stream.exit"
    tables = TABLES_SQL.strip()
    seqs = ("SELECT format('SELECT pg_catalog.setval(%L, %s, %s);', format('%I.%I', schemaname, sequencename), "
            "coalesce(last_value, start_value), (last_value IS NOT NULL)::text) FROM pg_sequences "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1;")
    return "\n".join([
        "\\set ON_ERROR_STOP 1",
        "SET statement_timeout = 0;",
        "SET idle_in_transaction_session_timeout = 0;",
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;",
        "SELECT pg_export_snapshot() AS hcbpg_snapshot \\gset",
        "\\setenv HCBPG_SNAPSHOT :hcbpg_snapshot",
        "SET search_path = pg_catalog;",
        f"\\o {work}/tables", tables,
        f"\\o {work}/sequences.sql", seqs,
        f"\\o {work}/builds", BUILDS_SQL.strip(),
        "\\o",
        f"\\! bash {shlex.quote(work)}/files.sh > {shlex.quote(work)}/stream.log 2>&1 && "
        f"bash {shlex.quote(work)}/stream.sh >> {shlex.quote(work)}/stream.log 2>&1; echo $? > {shlex.quote(status)}",
        "COMMIT;", ""])


def summarize_stream_times(log: str, tables: str = "") -> list[str]:
    """The phases of a streamed transfer from its ``hcbpg-time`` lines (and each table's copy and build)."""
    names = {}
    for line in tables.splitlines():
        oid, _, rest = line.partition(" ")
        names[oid] = rest.partition(" ")[2]
    marks: dict[tuple[str, str], float] = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "hcbpg-time":
            try:
                marks[(parts[1], parts[2])] = float(parts[3])
            except ValueError:
                continue
    start = marks.get(("start", "-"))
    if start is None:
        return []
    out = []
    prev = start
    for phase, what in (("pre-data", "schema dumped and pre-data restored"),
                        ("tables", "rows copied, indexes and keys built, tables analyzed"),
                        ("foreign-keys", "sequences set, foreign keys added and validated"),
                        ("post-data", "the rest of post-data (triggers, comments, what was not matched)"),
                        ("end", "ANALYZE of partitioned tables and materialized views"),
                        ("settings", "restore-time settings removed"),
                        ("counted", "waited for the inventory and row counts (taken meanwhile)")):
        t = marks.get((phase, "-"))
        if t is not None:
            out.append(f"{what}: {t - prev:.1f}s")
            prev = t
    per_table = sorted(((marks.get(("copied", oid)), marks.get(("built", oid)), oid)
                        for (kind, oid) in marks if kind == "copied"), key=lambda x: -(x[1] or x[0] or 0))
    for copied, built, oid in per_table[:3]:
        name = names.get(oid, f"table {oid}")
        out.append(f"{name}: rows copied at +{(copied or start) - start:.1f}s"
                   + (f", indexes built at +{built - start:.1f}s" if built is not None else ""))
    return out


_FILE_MARK = "----- hcbpg file "


def read_files(host: "Host", directory: str, names: Sequence[str]) -> dict[str, str]:
    """Several small files of one directory in one round trip ('' for a missing one)."""
    d = shlex.quote(directory)
    cmd = "; ".join(f"echo {shlex.quote(_FILE_MARK + n)}; cat {d}/{shlex.quote(n)} 2>/dev/null" for n in names)
    text = host.run(cmd, quiet=True, check=False).stdout
    out = {n: "" for n in names}
    current: str | None = None
    lines: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(_FILE_MARK) and line.strip()[len(_FILE_MARK):] in out:
            if current is not None:
                out[current] = "".join(lines)
            current, lines = line.strip()[len(_FILE_MARK):], []
        else:
            lines.append(line)
    if current is not None:
        out[current] = "".join(lines)
    return out


def use_stream(params: "Params", facts: Mapping[str, Any]) -> bool:
    """The streamed transfer applies: method pg_dump, ``source.transfer: stream``, and no large objects
    on the source (their data is not in a schema-only dump: such a source moves as a directory dump)."""
    src = params.source
    return (src is not None and src.method == "pg_dump" and transfer_method(params) == "stream"
            and not int(facts.get("large_objects") or 0))


def stream_plan_actions(params: "Params") -> list[str]:
    """What the streamed transfer does, for the plan."""
    jobs = restore_jobs(params)
    return [f"pg_restore --section=pre-data of the schema (as {params.postgres.app_role}, --no-owner --no-acl)",
            f"{params.source.jobs if params.source else 2} tables at a time, largest first: COPY ... TO STDOUT (binary when every column type allows) "
            "| COPY ... FROM STDIN (FREEZE, in the snapshot), then that table's indexes, the costliest first (keys "
            "as a unique index, then ADD CONSTRAINT ... USING INDEX), then ANALYZE",
            f"the largest table's rows and its costliest index keep their CPU priority; every other session is "
            f"reniced to {LOW_PRIORITY} and starts no parallel workers",
            "sequence values from the snapshot",
            f"foreign keys: ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT, {jobs} at a time",
            f"pg_restore --section=post-data -j {jobs} of the rest (triggers, comments, anything not matched)"]


def run_stream(host: "Host", params: "Params", source: "Source", facts: Mapping[str, Any], tag: str, *,
               run_label: str = "") -> tuple[DumpResult, RestoreResult]:
    """Fresh database and settings, then schema, rows and indexes straight from the source (no dump files).

    Each table is analyzed by the worker that loaded it, right after its indexes: the restore's
    ``analyze_seconds`` is then the ANALYZE of what no worker loaded (partitioned tables, materialized views).
    """
    src = params.source
    assert src is not None
    state = get_server_state(host, params)
    settings, notes = plan_restore_settings(mem_bytes=state["mem_bytes"], jobs=restore_jobs(params),
                                            archive_mode=state["archive_mode"],
                                            wal_senders_busy=int(state["senders"]),
                                            replication_slots=int(state["slots"]),
                                            wal_minimal=bool(getattr(src, "restore_wal_minimal", False)))
    schemas, exts = plan_prerequisites(facts)
    work = prepare_dump_dir(host, params, tag, dry_run=False)
    host.run(f"install -d -m 0700 -o postgres -g postgres {shlex.quote(work)}", quiet=True)
    started = time.monotonic()
    # nothing changes yet: the safety checks (SafetyCheckFailed) and the statements
    fresh, fresh_actions = plan_fresh_database(host, params, facts, run_label=run_label, server_state=state)
    # settings that need a restart (wal_level) come and go from here; the others by a reload in the script
    # (while the schema is dumped) and are removed as soon as the load is done
    restart = "wal_level" in settings
    main, one, build = render_stream_scripts(params, work, schemas,
                                      prepare=render_prepare_sql(params, fresh,
                                                                 prerequisite_statements(params, schemas, exts)),
                                      reload_settings=not restart,
                                      remove_part=None if restart else restore_part_path(params))
    files = {f"{work}/stream.sh": ("0700", main), f"{work}/copy-one.sh": ("0700", one),
             f"{work}/build-one.sh": ("0700", build), f"{work}/split.awk": ("0600", SPLIT_AWK)}
    try:
        if restart:
            ensure_restore_settings(host, params, settings, dry_run=False)
        else:  # the script reloads them
            host.put_text(restore_part_path(params), render_restore_settings(settings, server=host.name),
                          mode=0o644, owner="postgres")
        host.put_text(f"{work}/files.sh", render_bundle(files), mode=0o700, owner="postgres")  # one upload
        source.script(render_stream_session(params, work),
                            display=f"stream {source.label} into {params.postgres.database} "
                                    f"({'; '.join(fresh_actions[:1])}; restore-time settings): schema, then "
                                    f"{src.jobs} tables at a time in one exported snapshot (rows, then "
                                    "that table's indexes and keys, ANALYZE), then foreign keys and the rest; "
                                    "then inventory and row counts in that snapshot",
                            timeout=24 * 3600)
        out = read_files(host, work, ["stream.exit", "stream.log", "times", "tables", "counts.out"])
        status, log = out["stream.exit"].strip(), out["stream.log"]
        if status != "0":
            raise RemoteCommandError(host.name, f"streamed transfer from {source.label}",
                                     int(status) if status.isdigit() else None, hsecrets.scrub(log[-3000:]),
                                     hint="The database is half restored; run the step again (it starts over).")
        inv = Inventory.from_json(parse_marked_json(out["counts.out"]))
        phases = summarize_stream_times(log + out["times"], out["tables"])
        transfer_s = time.monotonic() - started
    finally:
        remove_restore_settings(host, params, dry_run=False)
    host.run(f"rm -rf {shlex.quote(work)}", quiet=True, check=False)  # kept after a failure: its logs
    target(host, params).execute([sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(params.postgres.database),
        sql.Literal(f"{MARKER_RESTORE}: restored by hcbpg at {mf.utcnow()} ({run_label})"))])
    total = time.monotonic() - started
    analyze = next((float(p.rsplit(": ", 1)[1].rstrip("s")) for p in phases if p.startswith("ANALYZE of")), 0.0)
    dump = DumpResult(work, "stream", 0.0, 0, inv)
    return dump, RestoreResult(total, analyze, [], settings,
                               notes + fresh_actions + [f"streamed in {transfer_s:.1f}s"] + phases)


# heroku -------------------------------------------------------------------------------------

LocalRunner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _local(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=3600)


def render_heroku_commands(app: str) -> tuple[list[str], list[str]]:
    """``heroku pg:backups:capture`` and ``heroku pg:backups:url`` for *app* (run where heroku is logged in)."""
    return (["heroku", "pg:backups:capture", "--app", app], ["heroku", "pg:backups:url", "--app", app])


def render_download(out_file: str) -> tuple[str, str]:
    """curl on the primary reading the signed URL from its config on stdin (never from argv)."""
    return (f"curl -fsS --retry 3 --retry-delay 2 --config - -o {shlex.quote(out_file)}",
            'url = "{url}"\n')


def run_heroku_dump(host: "Host", params: "Params", tag: str, *, local: LocalRunner = _local) -> DumpResult:
    """Capture a Heroku backup, then download it on the primary itself (no laptop hop)."""
    src = params.source
    assert src is not None and src.heroku_app
    capture, url_cmd = render_heroku_commands(src.heroku_app)
    started = time.monotonic()
    for argv in (capture, url_cmd):
        proc = local(argv)
        if proc.returncode != 0:
            raise RemoteCommandError("operator machine", " ".join(argv), proc.returncode,
                                     hsecrets.scrub((proc.stdout + proc.stderr)[-2000:]),
                                     hint="Log in with `heroku login` (or set HEROKU_API_KEY) and check the app name "
                                          "in params source.heroku_app.")
        print(f"[local] $ {' '.join(argv)}  -> exit 0")
    url = hsecrets.register(proc.stdout.strip().splitlines()[-1].strip())
    path = prepare_dump_dir(host, params, tag, dry_run=False) + ".dump"
    cmd, cfg = render_download(path)
    host.run(f"{cmd} && chown postgres:postgres {shlex.quote(path)}",
             stdin=cfg.format(url=url.replace('"', '\\"')),
             display=f"curl the Heroku backup of {src.heroku_app} into {path} (URL on stdin)", timeout=24 * 3600)
    size = int(host.probe(f"stat -c %s {shlex.quote(path)}").stdout.strip() or 0)
    return DumpResult(path, "custom", time.monotonic() - started, size, None)


# restore -------------------------------------------------------------------------------------

@dataclass
class RestoreResult:
    seconds: float
    analyze_seconds: float
    skipped_toc: list[str]
    settings: dict[str, Any]
    notes: list[str]


def restore_jobs(params: "Params") -> int:
    """pg_restore's jobs: ``source.restore_jobs`` when set, else twice ``source.jobs``.

    After the data, the restore mixes CPU-bound index builds with foreign-key checks that
    read and wait for locks; more jobs than cores keeps the cores busy while one job waits.
    On the lab's 1 GB source, 2 and 4 jobs measured the same: there the chain of the largest
    table (COPY, primary key, GIN index, then the foreign keys that lock it) is the critical path.
    """
    src = params.source
    assert src is not None
    return int(getattr(src, "restore_jobs", None) or 2 * src.jobs)


def render_pg_restore(params: "Params", dump: str, list_file: str, *, jobs: int) -> str:
    pg = params.postgres
    return (f"pg_restore --cluster {pg.version}/{shlex.quote(pg.cluster)} -j {jobs} --no-owner --no-acl "
            f"--role={shlex.quote(pg.app_role)} --exit-on-error -L {shlex.quote(list_file)} "
            f"-d {shlex.quote(pg.database)} {shlex.quote(dump)}")


def run_restore(host: "Host", params: "Params", dump: DumpResult, facts: Mapping[str, Any], *,
                run_label: str = "") -> RestoreResult:
    """Fresh database, restore-time settings, extensions, pg_restore -j N, ANALYZE, settings back."""
    src = params.source
    assert src is not None
    state = get_server_state(host, params)
    settings, notes = plan_restore_settings(mem_bytes=state["mem_bytes"], jobs=restore_jobs(params),
                                            archive_mode=state["archive_mode"],
                                            wal_senders_busy=int(state["senders"]),
                                            replication_slots=int(state["slots"]),
                                            wal_minimal=bool(getattr(src, "restore_wal_minimal", False)))
    started = time.monotonic()
    toc = host.run(f"pg_restore -l {shlex.quote(dump.path)}", sudo_user="postgres", quiet=True).stdout
    schemas, exts = plan_prerequisites(facts, toc=toc)
    listed, skipped = filter_toc(toc, precreated_schemas=schemas)
    list_file = f"{dump.path}.list"
    ensure_fresh_database(host, params, facts, dry_run=False, run_label=run_label, server_state=state)
    try:
        ensure_restore_settings(host, params, settings, dry_run=False)
        ensure_prerequisites(host, params, schemas, exts, dry_run=False)
        host.put_text(list_file, listed, mode=0o600, owner="postgres")
        host.run(render_pg_restore(params, dump.path, list_file, jobs=restore_jobs(params)), sudo_user="postgres",
                 timeout=24 * 3600, hint="The database is half restored; run the step again (it starts over).")
        t = time.monotonic()
        pg = params.postgres
        host.run(f"vacuumdb --cluster {pg.version}/{shlex.quote(pg.cluster)} --analyze-only -j {src.jobs} "
                 f"-d {shlex.quote(pg.database)} -q", sudo_user="postgres", timeout=24 * 3600)
        analyze = time.monotonic() - t
    finally:
        remove_restore_settings(host, params, dry_run=False)
    target(host, params).execute([sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(params.postgres.database),
        sql.Literal(f"{MARKER_RESTORE}: restored by hcbpg at {mf.utcnow()} ({run_label})"))])
    return RestoreResult(time.monotonic() - started, analyze, skipped, settings, notes)


def remove_dump(host: "Host", dump: DumpResult, *, dry_run: bool = False) -> Outcome:
    what = f"dump {dump.path} on {host.name} removed"
    if not dry_run:
        host.run(f"rm -rf {shlex.quote(dump.path)} {shlex.quote(dump.path)}.*", quiet=True)
    return Outcome(what, True, dry_run)


# from the app host --------------------------------------------------------------------------

def app_psql(app: "Host", params: "Params", password: str, script: str, *, server_ip: str, display: str) -> Any:
    """psql on the app host as the app role (password on stdin, never argv); SQL on stdin."""
    pg = params.postgres
    conninfo = f"host={server_ip} port={pg.port} dbname={pg.database} user={pg.app_role} connect_timeout=10"
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -f -")
    return app.run(cmd, stdin=password + "\n" + script, check=False, display=display)


def _sentinel_sql(params: "Params", value: str | None) -> str:
    src = params.source
    assert src is not None
    s = src.sentinel
    t, c = sql.Identifier(s.table), sql.Identifier(s.column)
    parts = [sql.SQL("SELECT 'newest-event=' || coalesce((SELECT max(id) FROM {})::text, 'none');").format(
        sql.Identifier(src.events_table))]
    if value is not None:
        parts.append(sql.SQL("UPDATE {} SET {} = {} WHERE id = {};").format(t, c, sql.Literal(value), sql.Literal(s.id)))
    parts.append(sql.SQL("SELECT 'sentinel=' || coalesce({}::text, '<null>') FROM {} WHERE id = {};").format(
        c, t, sql.Literal(s.id)))
    return "\n".join(render(p) for p in parts) + "\n"


def parse_app_output(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        if "=" in line and line.split("=", 1)[0] in ("newest-event", "sentinel"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def check_from_app(app: "Host", params: "Params", password: str, *, server_ip: str,
                   newest_event: int | None, write: str | None = None, expect: str | None = None) -> list[Check]:
    """The runbook's check from the app host: read the newest events row, write (optionally) and read the sentinel."""
    src = params.source
    assert src is not None
    s = src.sentinel
    what = f"{s.table}.{s.column} of id {s.id}"
    res = app_psql(app, params, password, _sentinel_sql(params, write), server_ip=server_ip,
                   display=f"psql as {params.postgres.app_role}@{server_ip}: newest {src.events_table} row, "
                           + (f"write and read {what}" if write is not None else f"read {what}"))
    got = parse_app_output(res.stdout) if res.ok else {}
    err = hsecrets.scrub(res.output.strip()[-300:]) if not res.ok else ""
    out = []
    ev = got.get("newest-event")
    out.append(Check.of(f"newest {src.events_table} row read from the app host",
                        res.ok and (newest_event is None or ev == str(newest_event)),
                        err or f"id {ev}" + (f" (source: {newest_event})" if newest_event is not None else ""),
                        app.name))
    wanted = write if write is not None else expect
    value = got.get("sentinel")
    label = "sentinel written and read back from the app host" if write is not None else \
        "last-write sentinel from the source read back from the app host"
    out.append(Check.of(label, res.ok and value is not None and (wanted is None or value == wanted),
                        err or (f"{what} = {value!r}" if value is not None else f"no row with id {s.id}"), app.name))
    return out


# verification ---------------------------------------------------------------------------------

@dataclass
class Verification:
    checks: list[Check]
    table: list[dict[str, Any]]
    seconds: float
    source: Inventory
    target: Inventory


def verify_restore(host: "Host", params: "Params", source: Source, dump: DumpResult, *, live_source: bool,
                   app: "Host | None" = None, password: str | None = None, sentinel_write: str | None = None,
                   sentinel_expect: str | None = None) -> Verification:
    """Objects, per-table rows, sequences, the restore settings gone, and the app host's read/write."""
    started = time.monotonic()
    src_inv = dump.source
    approximate = False
    if src_inv is None:  # a Heroku backup: count the source now (exact only when the app is stopped)
        src_inv = get_inventory(source, params)
        approximate = live_source
    tgt_inv = get_inventory(target(host, params), params)
    checks = compare_objects(src_inv, tgt_inv, live_source=live_source)
    checks += compare_rows(src_inv.rows, tgt_inv.rows, approximate=approximate)
    owner = get_target_state(host, params).owner
    checks.append(Check.of(f"database owned by {params.postgres.app_role}", owner == params.postgres.app_role,
                           f"owner {owner}", host.name))
    checks.append(check_table_owners(host, params))
    checks.append(check_restore_settings_gone(host, params))
    if app is not None and password is not None:
        checks += check_from_app(app, params, password, server_ip=params.primary.private_ip,
                                 newest_event=src_inv.newest_event, write=sentinel_write, expect=sentinel_expect)
    return Verification(checks, comparison_table(src_inv, tgt_inv), time.monotonic() - started, src_inv, tgt_inv)


def check_table_owners(host: "Host", params: "Params") -> Check:
    """Every table, sequence, view and function the restore made belongs to the app role."""
    role = params.postgres.app_role
    rows = target(host, params).rows(sql.SQL(
        "SELECT n.nspname || '.' || c.relname AS name, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','S','v','m') AND "
        + _USER_NS + " AND " + _not_ext_member('pg_class', 'c.oid') + " AND pg_get_userbyid(c.relowner) <> {}")
        .format(sql.Literal(role)))
    return Check.of(f"objects owned by {role}", not rows,
                    "all tables, sequences and views" if not rows else
                    f"{len(rows)} not: " + _names(f"{r['name']} ({r['owner']})" for r in rows), host.name)


def verify(rb: "Runbook", checks: Sequence[Check], *, rollback: str | None = None) -> list[Check]:
    """rb.verify, with the rollback instructions in the error when something failed."""
    try:
        return rb.verify(checks)
    except VerificationFailed as exc:
        if rollback:
            raise VerificationFailed(exc.message, failures=exc.failures,
                                     hint="The run stops here, before any traffic gate.\n" + rollback) from None
        raise


# cutover ---------------------------------------------------------------------------------------

def get_source_sessions(source: Source) -> list[dict[str, Any]]:
    """Client sessions on the source database other than ours (and our pg_dump workers)."""
    with source:
        return _source_sessions(source)


def _source_sessions(source: Source) -> list[dict[str, Any]]:
    return source.rows(
        "SELECT pid, usename, application_name, host(client_addr) AS client, state, "
        "backend_xid IS NOT NULL AS writing, now() - backend_start AS age FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' "
        f"AND application_name NOT IN ('{APPLICATION_NAME}', 'pg_dump')")


def check_source_quiet(sessions: Sequence[Mapping[str, Any]]) -> Check:
    """No other client on the source: the app and its processes are really stopped."""
    if not sessions:
        return Check("no other connections on the source", "pass", "only hcbpg is connected", "source")
    who = "; ".join(f"pid {s['pid']} {s['usename']}@{s.get('client') or 'socket'} "
                    f"{s.get('application_name') or '-'} {s.get('state')}{' WRITING' if s.get('writing') else ''}"
                    for s in sessions[:5])
    return Check("no other connections on the source", "fail", f"{len(sessions)} other: {who}", "source")


def wait_for_source_quiet(source: Source, *, timeout: float = 120.0, interval: float = 2.0,
                          sleep: Callable[[float], None] = time.sleep) -> Check:
    """Poll until no other client is connected to the source (processes take a moment to stop)."""
    deadline = time.monotonic() + timeout
    while True:
        check = check_source_quiet(get_source_sessions(source))
        if check.ok or time.monotonic() >= deadline:
            if not check.ok:
                raise WaitTimeout(
                    f"the source still has other connections after {timeout:.0f}s: {check.detail}",
                    hint="Stop the remaining processes in Hatchbox (web, Sidekiq, cron, consoles), then run the "
                         "step again. Nothing was changed yet.\n" + ROLLBACK)
            return check
        sleep(interval)


def sentinel_value(run_id: str | None) -> str:
    """The last write's value: says who wrote it, when, in which run (not secret)."""
    return f"hcbpg last write {mf.utcnow()} run {run_id or 'ad-hoc'}"


def run_sentinel_write(source: Source, params: "Params", value: str) -> Outcome:
    """The runbook's last write on the source: UPDATE users SET full_name = ... WHERE id = 1803, read back."""
    src = params.source
    assert src is not None
    s = src.sentinel
    t, c = sql.Identifier(s.table), sql.Identifier(s.column)
    script = render(sql.SQL("SET search_path = public;\nUPDATE {} SET {} = {} WHERE id = {};\n"
                            "SELECT '{}' || json_build_object('value', (SELECT {} FROM {} WHERE id = {}))::text;\n")
                    .format(t, c, sql.Literal(value), sql.Literal(s.id), sql.SQL(_JSON_MARK), c, t, sql.Literal(s.id)))
    with source:
        res = source.script(script, display=f"psql {source.label}: UPDATE {s.table} SET {s.column} = {value!r} "
                                            f"WHERE id = {s.id}, then read it back")
    got = parse_marked_json(res.stdout).get("value")
    if got != value:
        raise VerificationFailed(f"the sentinel write on the source did not stick: {s.table}.{s.column} of id {s.id} "
                                 f"is {got!r}", failures=["sentinel write"],
                                 hint=f"Does {s.table} have a row with id {s.id}? Set source.sentinel in params.\n"
                                      + ROLLBACK)
    return Outcome(f"last write on the source: {s.table}.{s.column} of id {s.id}", True, False,
                   actions=[f"set to {value!r} and read back"])


def run_rotate_password(host: "Host | None", params: "Params", *, dry_run: bool) -> tuple[Outcome, str | None, str | None]:
    """A new password for the app role: stored through the secret backend first, then set (as a verifier).

    Returns the outcome, the old and the new password (both registered with the scrubber).
    """
    from hcbpg.ops import app_database as roles
    pg = params.postgres
    old = hsecrets.resolve(pg.app_role_password, key=roles.PASSWORD_KEY)
    what = f"password of role {pg.app_role} on {host.name if host else params.primary.name} rolled"
    where = pg.app_role_password.split(":", 1)[0] + ":"
    if dry_run:
        return Outcome(what, True, True, actions=[f"generate a new password, store it at {roles.PASSWORD_KEY} "
                                                  f"({where}...), ALTER ROLE {pg.app_role} PASSWORD (verifier)"]), old, None
    if host is None:
        raise SafetyCheckFailed(f"{params.primary.name} is not reachable: cannot roll the password")
    new = hsecrets.generate_password()
    # stored before it is set: a password that is set but stored nowhere would lock everyone out
    hsecrets.store_secret(pg.app_role_password, new, key=roles.PASSWORD_KEY)
    stmt = sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(pg.app_role),
                                                            sql.Literal(roles.scram_verifier(new)))
    pg_cluster.psql_for(host, params).execute(stmt)
    return Outcome(what, True, False, actions=[f"new password stored at {roles.PASSWORD_KEY} ({where}...)",
                                               f"ALTER ROLE {pg.app_role} WITH PASSWORD [secret] (SCRAM verifier)"]), old, new


def check_passwords(app: "Host", params: "Params", *, old: str, new: str, server_ip: str) -> list[Check]:
    """From the app host: the new password works, the old one is refused."""
    r_new = app_psql(app, params, new, "SELECT 'ok';\n", server_ip=server_ip,
                     display=f"psql as {params.postgres.app_role}@{server_ip} with the new password")
    r_old = app_psql(app, params, old, "SELECT 'ok';\n", server_ip=server_ip,
                     display=f"psql as {params.postgres.app_role}@{server_ip} with the old password (must be refused)")
    return [
        Check.of("new rails password works", r_new.ok and "ok" in r_new.stdout,
                 "connected" if r_new.ok else hsecrets.scrub(r_new.output.strip()[-200:]), app.name),
        Check.of("old rails password refused", not r_old.ok and "password authentication failed" in r_old.output,
                 "refused: password authentication failed" if not r_old.ok else "the OLD password still works",
                 app.name),
    ]


# start traffic --------------------------------------------------------------------------------

@dataclass
class AppUrls:
    path: Path
    shown: dict[str, str]      # redacted: postgres://rails:[secret]@10.0.1.5:5432/hcb_production
    written: bool


def write_app_urls(params: "Params", password: str, *, dry_run: bool = False) -> AppUrls:
    """DATABASE_URL and BLAZER_DATABASE_URL into a 0600 file for the operator (nothing printed but redacted URLs)."""
    url = hsecrets.register(render_database_url(params, password))
    values = {"DATABASE_URL": url, "BLAZER_DATABASE_URL": url}
    path = handoff_path(params)
    if not dry_run:
        write_private_file(path, render_env_file(values))
    return AppUrls(path, {k: redact_url(v) for k, v in values.items()}, not dry_run)


def show_urls(urls: AppUrls) -> None:
    for k, v in urls.shown.items():
        print(f"{k}={v}")
    print(f"the real values are {'in' if urls.written else 'would be written to'} {urls.path} (mode 0600)")


def check_url_from_app(app: "Host", params: "Params", url: str) -> Check:
    """The new DATABASE_URL works from the app host (its parts as libpq params; password on stdin)."""
    conn = parse_source_url(url)
    conninfo = " ".join(f"{k}={v}" for k, v in conn.items() if k != "password") + " connect_timeout=10"
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -c 'SELECT current_user, current_database(), pg_is_in_recovery()'")
    res = app.run(cmd, stdin=conn.get("password", "") + "\n", check=False,
                  display=f"psql {redact_url(url)} from the app host")
    ok = res.ok and res.stdout.strip().startswith(f"{params.postgres.app_role}|{params.postgres.database}|f")
    return Check.of("new DATABASE_URL works from the app host", ok,
                    f"connected as {res.stdout.strip()}" if res.ok else hsecrets.scrub(res.output.strip()[-200:]),
                    app.name)


def live_since(host: "Host | None", params: "Params") -> str | None:
    """The live marker of the target database (step 09 sets it when traffic starts), or None."""
    if host is None:
        return None
    state = get_target_state(host, params)
    comment = state.comment or "" if state.exists else ""
    return comment if comment.startswith(MARKER_LIVE) else None


def skip_if_live(rb: Any, host: "Host | None") -> None:
    """End a migration step early when the migration is complete: the app already runs on the target.

    Re-running the runbook must never restore over the live database; with nothing left to
    do the step is recorded as done with no change (the runbook's second run changes nothing).
    """
    marker = live_since(host, rb.params)
    if marker:
        rb.skip(f"{rb.params.postgres.database} on {host.name} is live ({marker}): the migration is "
                "complete, there is nothing to restore or switch. Replacing a live database is not a "
                "re-run of this step: it is a new migration with its own plan.")


def mark_live(host: "Host", params: "Params", *, dry_run: bool) -> Outcome:
    """Mark the database live: later migration runs refuse to drop it without allow_destructive."""
    st = sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(params.postgres.database),
                                                         sql.Literal(f"{MARKER_LIVE}: traffic started {mf.utcnow()}"))
    target(host, params).execute([st], dry_run=dry_run)
    return Outcome(f"database {params.postgres.database} on {host.name} marked live", True, dry_run,
                   actions=[" ".join(render(st).split())])


def compute_downtime(gates: Mapping[str, Mapping[str, Any]], phases: Mapping[str, float], *,
                     start_gate: str = "maintenance-on", end_gate: str = "maintenance-off") -> dict[str, Any]:
    """Downtime from the maintenance-on approval to the traffic-on approval, with the phases' durations."""
    start = (gates.get(start_gate) or {}).get("approved_at")
    end = (gates.get(end_gate) or {}).get("approved_at")
    total = None
    if start and end:
        total = round((mf.parse_time(end) - mf.parse_time(start)).total_seconds(), 3)
    return {"maintenance_on_at": start, "traffic_on_at": end, "total_s": total,
            "phases_s": {k: round(float(v), 3) for k, v in phases.items()}}


def record_downtime(rb: "Runbook", phases: Mapping[str, float]) -> dict[str, Any]:
    """Write the downtime into the run's manifest (``downtime``) and the notebook (scrap)."""
    gates: dict[str, Any] = {}
    if rb.run is not None:
        gates = rb.run.read().get("gates", {})
        if not (gates.get("maintenance-on") or {}).get("approved_at"):
            gates = _gates_from_earlier_runs(rb) or gates
    dt = compute_downtime(gates, phases)
    if rb.run is not None and not rb.dry_run:
        with rb.run.update() as data:
            data["downtime"] = dt
    rb.record("downtime", dt)
    return dt


def _gates_from_earlier_runs(rb: "Runbook") -> dict[str, Any]:
    """The maintenance-on approval may be in the run that did the cutover when 09 runs alone."""
    merged: dict[str, Any] = {}
    for run in mf.list_runs(rb.home, rb.env):
        try:
            g = run.read().get("gates", {})
        except HcbpgError:
            continue
        if (g.get("maintenance-on") or {}).get("approved_at"):
            merged["maintenance-on"] = g["maintenance-on"]
    if rb.run is not None:
        merged.update({k: v for k, v in rb.run.read().get("gates", {}).items() if v.get("approved_at")})
    return merged


def show_plan(outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        print(str(o))


# the whole move, as the notebooks run it -------------------------------------------------------

@dataclass
class Plan:
    outcomes: list[Outcome]
    checks: list[Check]
    facts: dict[str, Any]


def plan_migration(host: "Host", params: "Params", source: Source, *, dry_run: bool = True) -> Plan:
    """What the dump and restore will do, and their preconditions (read-only; outcomes say "would change").

    *dry_run*: a primary without a running cluster gives a plan that says so instead of an error.
    """
    src = params.source
    if src is None:
        raise ParamsError("params", ["source: required for the migration steps (method, url, ...)"])
    if not pg_cluster.get_cluster_running(host, params):
        if dry_run:
            return Plan(plan_without_primary(params, why=f"PostgreSQL is not running on {host.name} yet"), [], {})
        raise SafetyCheckFailed(f"on {host.name}: PostgreSQL {params.postgres.version}/{params.postgres.cluster} "
                                "is not running", hint="Run steps 02-04 first (install, connections, app role).")
    with source:
        facts = get_source_facts(source)
    state = get_server_state(host, params)
    tstate = get_target_state(host, params)
    same = facts.get("postmaster_start") == state["postmaster_start"]
    why = plan_recreate(tstate, database=params.postgres.database, server=host.name,
                        allow_destructive=params.allow_destructive, same_server_as_source=same)
    schemas, exts = plan_prerequisites(facts)
    settings, notes = plan_restore_settings(mem_bytes=state["mem_bytes"], jobs=restore_jobs(params),
                                            archive_mode=state["archive_mode"],
                                            wal_senders_busy=int(state["senders"]),
                                            replication_slots=int(state["slots"]),
                                            wal_minimal=bool(getattr(src, "restore_wal_minimal", False)))
    d = dump_path(params, "<run>")
    if src.method == "heroku":
        capture, url = render_heroku_commands(src.heroku_app or "?")
        dump_actions = [" ".join(capture) + "   (on this machine)", " ".join(url) + "   (on this machine)",
                        render_download(d + ".dump")[0] + "   (on the primary, URL on stdin)"]
    elif use_stream(params, facts):
        dump_actions = ["in one REPEATABLE READ session on the source: pg_export_snapshot(), pg_dump --schema-only "
                        "in that snapshot, then inventory and row counts in it (source.transfer: stream)"]
    else:
        dump_actions = ["in one REPEATABLE READ session on the source: pg_export_snapshot(), then "
                        + render_pg_dump(params, d) + ", then inventory and row counts in that snapshot"]
    outcomes = [
        Outcome(f"dump of the source {describe_source(source.conn)} ({facts['size_bytes'] / GIB:.2f} GiB, "
                f"PostgreSQL {facts['version']})", True, True, actions=dump_actions),
        Outcome(f"database {params.postgres.database} on {host.name}", True, True,
                actions=why + [f"CREATE SCHEMA {s} AUTHORIZATION {params.postgres.app_role}" for s in schemas]
                + [f"CREATE EXTENSION {e['name']} WITH SCHEMA {e['schema']} (source has {e['version']})" for e in exts]
                + [f"ALTER DATABASE ... SET {s}" for s in facts.get("db_settings", [])]),
        Outcome(f"restore-time settings {RESTORE_PART} on {host.name}", True, True,
                diff=render_restore_settings(settings, server=host.name), actions=notes),
        Outcome(f"restore into {params.postgres.database}", True, True,
                actions=(stream_plan_actions(params) if use_stream(params, facts) else
                         [render_pg_restore(params, d, d + ".list", jobs=restore_jobs(params)), "vacuumdb --analyze-only"])
                + [f"remove {RESTORE_PART} (restart if wal_level changed)"]),
    ]
    checks = [Check("source reachable from the primary", "pass",
                    f"{describe_source(source.conn)}: {facts['encoding']}, collation {facts['collate']}", host.name),
              Check.of("source is PostgreSQL 15 or older than the primary's pg_dump",
                       int(facts["version"]) < 160000, f"server_version_num {facts['version']}", "source"),
              check_extensions_available(host, params, exts),
              check_disk_space(host, params, facts)]
    return Plan(outcomes, checks, facts)


@dataclass
class MigrationResult:
    dump: DumpResult
    restore: RestoreResult
    verification: Verification
    phases: dict[str, float]
    outcomes: list[Outcome] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the notebook records (no secrets): phases, sizes, counts, checks."""
        v = self.verification
        return {"phases": self.phases, "dump_bytes": self.dump.bytes, "dump_format": self.dump.format,
                "analyze_s": round(self.restore.analyze_seconds, 3), "restore_settings": {
                    k: (v2 if not isinstance(v2, bool) else ("on" if v2 else "off"))
                    for k, v2 in self.restore.settings.items()},
                "tables": len(v.target.rows), "rows": sum(v.target.rows.values()),
                "objects": {r["what"]: r["target"] for r in v.table},
                "checks": {"pass": sum(c.status == "pass" for c in v.checks),
                           "warn": sum(c.status == "warn" for c in v.checks),
                           "fail": sum(c.status == "fail" for c in v.checks)}}


def run_migration(host: "Host", params: "Params", source: Source, facts: Mapping[str, Any], *, tag: str,
                  run_label: str, live_source: bool, app: "Host | None" = None, password: str | None = None,
                  sentinel_write: str | None = None, sentinel_expect: str | None = None,
                  keep_dump: bool = False) -> MigrationResult:
    """Dump, restore and verify: what 06 and 07 do, timed per phase (the checks are not raised here)."""
    src = params.source
    assert src is not None
    with source:
        if src.method == "pg_dump" and transfer_method(params) == "stream" and not use_stream(params, facts):
            print(f"the source has {facts.get('large_objects')} large objects: they move with a directory dump "
                  "(source.transfer: directory), not streamed")
        if use_stream(params, facts):
            dump, restore = run_stream(host, params, source, facts, tag, run_label=run_label)
            print(f"streamed (schema, rows, indexes, ANALYZE) in {restore.seconds:.1f}s")
            for note in restore.notes[restore.notes.index(next(n for n in restore.notes
                                                               if n.startswith("streamed in"))) + 1:]:
                print(f"  {note}")
        else:
            if src.method == "heroku":
                dump = run_heroku_dump(host, params, tag)
            else:
                dump = run_dump(host, params, source, tag)
            print(f"dump: {dump.bytes / GIB:.2f} GiB in {dump.seconds:.1f}s ({dump.format} format)")
            try:
                restore = run_restore(host, params, dump, facts, run_label=run_label)
            finally:
                if not keep_dump:
                    remove_dump(host, dump)
            print(f"restore: {restore.seconds:.1f}s (of which ANALYZE {restore.analyze_seconds:.1f}s)")
        ver = verify_restore(host, params, source, dump, live_source=live_source, app=app, password=password,
                             sentinel_write=sentinel_write, sentinel_expect=sentinel_expect)
    print(f"verify: {ver.seconds:.1f}s")
    phases = {"dump_s": round(dump.seconds, 3), "restore_s": round(restore.seconds, 3),
              "verify_s": round(ver.seconds, 3)}
    outcomes = [Outcome(f"database {params.postgres.database} on {host.name} dropped, recreated and restored",
                        True, False, actions=[f"dump {dump.bytes / GIB:.2f} GiB in {dump.seconds:.1f}s",
                                              f"restore in {restore.seconds:.1f}s",
                                              f"skipped from the dump (created beforehand): {len(restore.skipped_toc)} "
                                              "entries"])]
    return MigrationResult(dump, restore, ver, phases, outcomes)


# small helpers for the notebooks ----------------------------------------------------------------

def dump_tag(rb: "Runbook") -> str:
    """The dump's directory name under source.dump_dir: run and step."""
    return f"{rb.run_id or 'adhoc'}-{rb.step}"


def run_label(rb: "Runbook") -> str:
    return f"run {rb.run_id or 'ad hoc'}, step {rb.step}"


def dry_run_sentinel() -> str:
    """The value 06 writes on the restored copy (never on the source)."""
    return f"hcbpg dry run {mf.utcnow()}"


def plan_without_primary(params: "Params", *, why: str = "the primary is not provisioned yet") -> list[Outcome]:
    """The plan when the primary is not ready (a dry run before provisioning or before 02-04)."""
    return [Outcome(f"dump of the source into {params.postgres.database} on {params.primary.name}", True, True,
                    actions=[f"{why}: dump, restore and verify would run after steps 01-04"])]


def show_comparison(result: MigrationResult) -> None:
    """The source/target table of objects and rows (each kind pass or fail)."""
    from hcbpg.display import show_table
    show_table(result.verification.table, ["what", "source", "target", "status"])


def check_source_quiet_step(rb: "Runbook", source: "Source | None", *, timeout: float = 120.0) -> Check:
    """07: wait until the source has no other connections (a dry run only looks: the app still runs)."""
    if source is None:
        return Check("no other connections on the source", "warn", "no primary yet: not checked", "source")
    if rb.dry_run:
        try:
            c = check_source_quiet(get_source_sessions(source))
        except HcbpgError as exc:
            return Check("no other connections on the source", "warn",
                         f"dry run: could not look ({exc.message.splitlines()[0][:200]})", "source")
        if not c.ok:
            c = Check(c.name, "warn", c.detail + " (dry run: the app still runs; the real run waits for them to go)",
                      c.target)
        return c
    src = rb.params.source
    return wait_for_source_quiet(source, timeout=float(getattr(src, "quiet_timeout_s", None) or timeout))


def record_phases(rb: "Runbook", phases: Mapping[str, float]) -> None:
    """07: the phase durations into the manifest's ``downtime`` (09 adds start, end and total)."""
    if rb.run is None or rb.dry_run:
        return
    with rb.run.update() as data:
        dt = data.setdefault("downtime", {})
        dt["phases_s"] = {k: round(float(v), 3) for k, v in phases.items()}


def show_downtime(dt: Mapping[str, Any]) -> None:
    from hcbpg.display import show_table
    rows = [{"what": "maintenance on (approved)", "value": dt.get("maintenance_on_at") or "-"},
            {"what": "traffic on (approved)", "value": dt.get("traffic_on_at") or "-"},
            {"what": "downtime", "value": f"{dt['total_s']:.1f} s" if dt.get("total_s") is not None else "-"}]
    rows += [{"what": k, "value": f"{v:.1f} s"} for k, v in (dt.get("phases_s") or {}).items()]
    show_table(rows, ["what", "value"])
