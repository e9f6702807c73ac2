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
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.migration import check_source_names
from hcbpg.errors import RemoteCommandError
from hcbpg.ops.migration.source import SECRET_DIR
from hcbpg.ops.progress import run_file_growth_watcher
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.dump import dump_path, render_download, render_dump_session, render_heroku_commands
from hcbpg.pg.inventory import Inventory
from hcbpg.pg.psql_output import JSON_MARK, parse_marked_json
from hcbpg.pg.restore import GIB
from hcbpg.pg.stream import render_counts_select

#: the source's libpq service file on the primary (:class:`hcbpg.ops.migration.source.Source` writes it)
SERVICE_FILE = f"{SECRET_DIR}/source.pgservice"

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params


@dataclass
class DumpResult:
    path: str
    format: str                 # "directory" or "custom"
    seconds: float
    bytes: int
    source: Inventory | None    # inventory and counts at the dump's snapshot (None: count later)


def run_prepare_dump_dir(host: "HostLike", params: "Params", tag: str) -> str:
    """The work directory of run *tag* (its path), made fresh: ``source.dump_dir`` as postgres's own
    (0700), whatever an earlier run left under the tag removed."""
    path = dump_path(params, tag)
    src = params.source
    assert src is not None
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
    path = run_prepare_dump_dir(host, params, tag)
    assert params.source is not None  # prepare_dump_dir asserted it
    started = time.monotonic()
    session = render_dump_session(params, path, service_file=SERVICE_FILE, counts_select=render_counts_select(params, JSON_MARK),
                                  with_counts=with_counts, schema_only=schema_only)
    res = source.script(session,
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
    path = run_prepare_dump_dir(host, params, tag) + ".dump"
    cmd, cfg = render_download(path)
    with run_file_growth_watcher(host, path, kind="download", what=f"the Heroku backup of {src.heroku_app}"):
        # as postgres, in its directory: root writing there could be sent through a planted symlink
        host.run(cmd, sudo_user="postgres",
                 stdin=cfg.format(url=url.replace('"', '\\"')),
                 display=f"curl the Heroku backup of {src.heroku_app} into {path} (URL on stdin)", timeout=24 * 3600)
    size = int(host.probe(f"stat -c %s {shlex.quote(path)}").stdout.strip() or 0)
    return DumpResult(path, "custom", time.monotonic() - started, size, None)


def ensure_dump_removed(host: "HostLike", dump: DumpResult) -> Outcome:
    """The dump and its side files (``<path>.*``: list, pg_dump's log and exit status) gone from the primary;
    nothing runs when none is there."""
    changes = Changes(host)
    q = shlex.quote(dump.path)
    if host.probe(f"ls -d {q} {q}.* 2>/dev/null | head -n 1").stdout.strip():
        host.run(f"rm -rf {q} {q}.*", quiet=True)
    return changes.outcome(f"dump {dump.path} on {host.name} removed")
