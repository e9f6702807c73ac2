"""The dump, decided without I/O: where it goes, the ``pg_dump`` command line and the source session it
runs in, Heroku's backup and credentials commands (and the URL in the latter's output), and its table of
contents (``pg_restore -l``): what hcbpg creates itself before the restore is filtered out of it, in
Python and as the equivalent sed program for a list made on the primary."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.pg import templates
from hcbpg.pg.conninfo import SERVICE_NAME
from hcbpg.pg.inventory import USER_NS, render_control_char_names_sql

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: the schemas a transfer moves: the user's, never Bucardo's own (the online transfer's delta tables)
TRANSFER_NS = USER_NS + " AND n.nspname <> 'bucardo'"

#: the transfer's names that hold a control character (a JSON array, each quoted by the server); read
#: first in the session that exports the snapshot, so in the very snapshot every copy uses: any refuses
#: the transfer before a name reaches a script
REFUSED_NAMES_SQL = render_control_char_names_sql(TRANSFER_NS)

#: the names of the triggers Bucardo puts on a synced table (delta, kick, truncate)
BUCARDO_TRIGGER_PREFIX = "bucardo_"
_TOC_LINE = re.compile(r"^(?P<id>\d+); (?P<cat>\d+) (?P<oid>\d+) (?P<rest>.*)$")


def filter_toc(toc: str, *, precreated_schemas: Iterable[str]) -> tuple[str, list[str]]:
    """The ``pg_restore -l`` list without what hcbpg creates itself before the restore.

    Dropped: EXTENSION entries and their COMMENTs (created as superuser beforehand: the app
    role may not create untrusted extensions), the SCHEMA entries of schemas created
    beforehand (``heroku_ext``), and the triggers Bucardo put on the source's tables
    (``bucardo_*``: the online transfer's; its schema is never dumped).  Returns the new list and
    the lines dropped.
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
        elif rest[:1] == ["TRIGGER"] and len(rest) >= 4 and rest[3].startswith(BUCARDO_TRIGGER_PREFIX):
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


def render_toc_filter(schemas: Iterable[str]) -> str:
    """A sed program doing what :func:`filter_toc` does, for a list made on the primary."""
    alts = ["EXTENSION - ", "COMMENT - EXTENSION ", f"TRIGGER [^ ]+ [^ ]+ {BUCARDO_TRIGGER_PREFIX}"]
    for sch in schemas:
        if not re.fullmatch(r"[A-Za-z0-9_]+", sch):
            raise ValueError(f"schema name {sch!r} cannot go into the list filter")
        alts += [f"SCHEMA - {sch} ", f"COMMENT - SCHEMA {sch} "]
    return "s/^([0-9]+; [0-9]+ [0-9]+ (" + "|".join(alts) + "))/;\\1/"


def dump_path(params: "Params", tag: str) -> str:
    src = params.source
    assert src is not None
    return f"{src.dump_dir.rstrip('/')}/{tag}"


def render_pg_dump(params: "Params", out_dir: str, *, service_file: str, snapshot_env: str | None = "HCBPG_SNAPSHOT",
                   schema_only: bool = False) -> str:
    """pg_dump of the source in directory format with parallel jobs (no secret on the command line);
    *service_file*: the source's libpq service file on the primary."""
    src = params.source
    assert src is not None
    parts = [f"PGSERVICEFILE={service_file}", "pg_dump", f"-d service={SERVICE_NAME}",
             "-Fd", f"-j {src.jobs}",
             # the dump is read once, right away, on the same disk: compressing only costs CPU
             "-Z 0", "--no-sync", "--lock-wait-timeout=60s",
             f"-f {shlex.quote(out_dir)}"]
    if snapshot_env:
        parts.append(f'--snapshot="${snapshot_env}"')
    if schema_only:  # the online transfer: Bucardo copies the rows; never Bucardo's own schema
        parts.append("--schema-only --exclude-schema=bucardo")
    return " ".join(parts)


def render_dump_session(params: "Params", out_dir: str, *, service_file: str, counts_select: str,
                        with_counts: bool = True, schema_only: bool = False) -> str:
    """One source session: export a snapshot, run pg_dump on it, then inventory and counts in it.

    Because the counts are taken in the dump's own snapshot they are exact even while the
    app still writes (the dry run), and the comparison needs no quiet source.  *counts_select*: the
    SELECT that prints them (:func:`hcbpg.pg.stream.render_counts_select`).
    """
    return templates.render_script("dump-session.psql.tmpl", {
        "PG_DUMP": render_pg_dump(params, out_dir, service_file=service_file, schema_only=schema_only),
        "LOG": shlex.quote(out_dir + ".pg_dump-log"),
        "STATUS": shlex.quote(f"{out_dir}.pg_dump-exit"),
        "REFUSED": out_dir + ".pg_dump-refused-names.json",  # a psql argument: hcbpg's own path
        "REFUSED_NAMES_SQL": REFUSED_NAMES_SQL.strip(),
        "COUNTS_SELECT": counts_select,
    }, {"COUNTS": with_counts})


def render_heroku_commands(app: str) -> tuple[list[str], list[str]]:
    """``heroku pg:backups:capture`` and ``heroku pg:backups:url`` for *app* (run where heroku is logged in)."""
    return (["heroku", "pg:backups:capture", "--app", app], ["heroku", "pg:backups:url", "--app", app])


def render_heroku_credentials_command(app: str) -> list[str]:
    """``heroku pg:credentials:url --app APP``: the app's database credentials, as the CLI prints them now
    (Heroku rotates them, so they are read when used).  Its output holds the password: never shown."""
    return ["heroku", "pg:credentials:url", "--app", app]


def render_heroku_whoami_command() -> list[str]:
    """``heroku auth:whoami``: the account the CLI is logged in as (exit 100 or 1 when it is not)."""
    return ["heroku", "auth:whoami"]


def parse_heroku_credentials_url(output: str) -> str | None:
    """The ``postgres://`` URL in ``heroku pg:credentials:url`` output, or None when there is none.

    The CLI prints (indented in newer versions)::

        Connection information for default credential.
        Connection info string:
           "dbname=d4 host=ec2-1.compute-1.amazonaws.com port=5432 user=u9 password=p0 sslmode=require"
        Connection URL:
           postgres://u9:p0@ec2-1.compute-1.amazonaws.com:5432/d4

    The line after ``Connection URL:`` is taken; without that header, the one line that is a URL."""
    lines = [line.strip() for line in output.splitlines()]
    urls = [line for line in lines if line.startswith(("postgres://", "postgresql://"))]
    if "Connection URL:" in lines:
        after = [line for line in lines[lines.index("Connection URL:") + 1:] if line]
        return after[0] if after and after[0] in urls else None
    return urls[0] if len(urls) == 1 else None


def render_download(out_file: str) -> tuple[str, str]:
    """curl on the primary reading the signed URL from its config on stdin (never from argv)."""
    return (f"curl -fsS --retry 3 --retry-delay 2 --config - -o {shlex.quote(out_file)}",
            'url = "{url}"\n')
