"""The dump: ``pg_dump -Fd -j N`` on the primary in a snapshot the source session exports (inventory
and exact counts in the same snapshot), or a Heroku backup downloaded on the primary."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.psql import JSON_MARK, parse_marked_json
from hcbpg.desired.migration import check_source_names
from hcbpg.errors import RemoteCommandError
from hcbpg.ops.migration.source import SECRET_DIR
from hcbpg.ops.progress import watch_file_growth
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import templates
from hcbpg.pg.conninfo import SERVICE_NAME
from hcbpg.pg.inventory import COUNTS_SQL, INVENTORY_SQL, Inventory, newest_event_sql
from hcbpg.pg.restore import GIB
from hcbpg.pg.stream import REFUSED_NAMES_SQL

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params


def dump_path(params: "Params", tag: str) -> str:
    src = params.source
    assert src is not None
    return f"{src.dump_dir.rstrip('/')}/{tag}"


def render_pg_dump(params: "Params", out_dir: str, *, snapshot_env: str | None = "HCBPG_SNAPSHOT",
                   schema_only: bool = False) -> str:
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
    if schema_only:  # the online transfer: Bucardo copies the rows; never Bucardo's own schema
        parts.append("--schema-only --exclude-schema=bucardo")
    return " ".join(parts)


def render_dump_session(params: "Params", out_dir: str, *, with_counts: bool = True,
                        schema_only: bool = False) -> str:
    """One source session: export a snapshot, run pg_dump on it, then inventory and counts in it.

    Because the counts are taken in the dump's own snapshot they are exact even while the
    app still writes (the dry run), and the comparison needs no quiet source.
    """
    return templates.render_script("dump-session.psql.tmpl", {
        "PG_DUMP": render_pg_dump(params, out_dir, schema_only=schema_only),
        "LOG": shlex.quote(out_dir + ".pg_dump-log"),
        "STATUS": shlex.quote(f"{out_dir}.pg_dump-exit"),
        "REFUSED": out_dir + ".pg_dump-refused-names.json",  # a psql argument: hcbpg's own path
        "REFUSED_NAMES_SQL": REFUSED_NAMES_SQL.strip(),
        "COUNTS_SELECT": f"SELECT '{JSON_MARK}' || json_build_object('objects', ({INVENTORY_SQL}), "
                         f"'rows', ({COUNTS_SQL}), 'newest_event', ({newest_event_sql(params)}))::text;",
    }, {"COUNTS": with_counts})


@dataclass
class DumpResult:
    path: str
    format: str                 # "directory" or "custom"
    seconds: float
    bytes: int
    source: Inventory | None    # inventory and counts at the dump's snapshot (None: count later)


def prepare_dump_dir(host: "HostLike", params: "Params", tag: str, *, dry_run: bool) -> str:
    path = dump_path(params, tag)
    src = params.source
    assert src is not None
    if not dry_run:
        ensure_dir(host, src.dump_dir, mode=0o700, owner="postgres")
        host.run(f"rm -rf {shlex.quote(path)} {shlex.quote(path)}.pg_dump-*", quiet=True)
    return path


def check_disk_space(host: "HostLike", params: "Params", facts: Mapping[str, Any]) -> Check:
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


def run_dump(host: "HostLike", params: "Params", source: "SourceLike", tag: str, *, with_counts: bool = True,
             schema_only: bool = False) -> DumpResult:
    """pg_dump -Fd -j N on the primary from the source, in a snapshot we hold; counts in that snapshot."""
    path = prepare_dump_dir(host, params, tag, dry_run=False)
    assert params.source is not None  # prepare_dump_dir asserted it
    started = time.monotonic()
    res = source.script(render_dump_session(params, path, with_counts=with_counts, schema_only=schema_only),
                        display=f"pg_dump -Fd -j {params.source.jobs} of {source.label} into {path} "
                                "(in an exported snapshot, then inventory and row counts in that snapshot)",
                        timeout=24 * 3600)
    seconds = time.monotonic() - started
    # read in the dump's own snapshot: a table created after the plan's check is refused here
    check_source_names({"control_char_names": json.loads(host.read_text(f"{path}.pg_dump-refused-names.json")
                                                         or "[]")})
    status = (host.read_text(f"{path}.pg_dump-exit") or "").strip()
    if status != "0":
        log = host.read_text(f"{path}.pg_dump-log") or ""
        raise RemoteCommandError(host.name, f"pg_dump of {source.label}", int(status) if status.isdigit() else None,
                                 hsecrets.scrub(log)[-3000:],
                                 hint="Nothing was restored. Fix the cause (connection, locks, disk) and run "
                                      "the step again.")
    inv = Inventory.from_json(parse_marked_json(res.stdout)) if with_counts else None
    size = int(host.probe(f"du -sb {shlex.quote(path)} | cut -f1").stdout.strip() or 0)
    return DumpResult(path, "directory", seconds, size, inv)


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


def run_heroku_dump(host: "HostLike", params: "Params", tag: str, *, local: LocalRunner = _local) -> DumpResult:
    """Capture a Heroku backup, then download it on the primary itself (no laptop hop)."""
    src = params.source
    assert src is not None and src.heroku_app
    capture, url_cmd = render_heroku_commands(src.heroku_app)
    started = time.monotonic()
    for argv in (capture, url_cmd):
        proc = local(argv)
        if proc.returncode != 0:
            raise RemoteCommandError("operator machine", " ".join(argv), proc.returncode,
                                     hsecrets.scrub(proc.stdout + proc.stderr)[-2000:],
                                     hint="Log in with `heroku login` (or set HEROKU_API_KEY) and check the app name "
                                          "in params source.heroku_app.")
        print(f"[local] $ {' '.join(argv)}  -> exit 0")
    url = hsecrets.register(proc.stdout.strip().splitlines()[-1].strip())
    path = prepare_dump_dir(host, params, tag, dry_run=False) + ".dump"
    cmd, cfg = render_download(path)
    with watch_file_growth(host, path, kind="download", what=f"the Heroku backup of {src.heroku_app}"):
        # as postgres, in its directory: root writing there could be sent through a planted symlink
        host.run(cmd, sudo_user="postgres",
                 stdin=cfg.format(url=url.replace('"', '\\"')),
                 display=f"curl the Heroku backup of {src.heroku_app} into {path} (URL on stdin)", timeout=24 * 3600)
    size = int(host.probe(f"stat -c %s {shlex.quote(path)}").stdout.strip() or 0)
    return DumpResult(path, "custom", time.monotonic() - started, size, None)


def remove_dump(host: "HostLike", dump: DumpResult, *, dry_run: bool = False) -> Outcome:
    what = f"dump {dump.path} on {host.name} removed"
    if not dry_run:
        host.run(f"rm -rf {shlex.quote(dump.path)} {shlex.quote(dump.path)}.*", quiet=True)
    return Outcome(what, True, dry_run)
