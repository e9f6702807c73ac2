"""What a server needs for pgBackRest beside its config file (:mod:`hcbpg.desired.pgbackrest`): its
directories, the archiving include file of PostgreSQL, the secret values of the config file; and the
checks of what ``info`` and the bucket list (pure)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.desired.pgbackrest import CONF_PATH, SECRET_OPTIONS, pgbackrest_params
from hcbpg.desired.server import config_dir
from hcbpg.errors import SafetyCheckFailed
from hcbpg.outcome import Check
from hcbpg.pg.conf import MANAGED_HEADER, quote_setting
from hcbpg.pg.pgbackrest import BackupRow, format_bytes

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server

#: the conf.d include file hcbpg owns for archiving (read after 10-identity and 20-connections)
ARCHIVING_FILE = "30-hcbpg-archiving.conf"


@dataclass(frozen=True)
class PathSpec:
    """A directory or file pgBackRest needs, with the owner and mode the runbook gives it."""

    path: str
    kind: str  # "directory" | "file"
    mode: int
    owner: str
    group: str


#: the runbook's "Install" block, as data (the conf file's content is ensure_pgbackrest_conf's)
PATHS = (
    PathSpec("/var/log/pgbackrest", "directory", 0o770, "postgres", "postgres"),
    PathSpec("/etc/pgbackrest", "directory", 0o755, "root", "root"),
    PathSpec("/etc/pgbackrest/conf.d", "directory", 0o755, "root", "root"),
    PathSpec(CONF_PATH, "file", 0o640, "postgres", "postgres"),
)


def paths_for(params: "Params") -> tuple[PathSpec, ...]:
    """:data:`PATHS` plus the spool directory of asynchronous archiving (``pgbackrest.spool_path``)."""
    pb = pgbackrest_params(params)
    if not pb.archive_async:
        return PATHS
    return (*PATHS, PathSpec(pb.spool_path.rstrip("/"), "directory", 0o750, "postgres", "postgres"))


# directories -------------------------------------------------------------------------------------

def parse_stat(text: str) -> dict[str, dict[str, Any]]:
    """``stat -c '%n|%F|%a|%U|%G'`` lines by path: kind, mode, owner, group."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.rsplit("|", 4)
        if len(parts) == 5:
            p, kind, mode, owner, group = parts
            out[p] = {"kind": {"directory": "directory", "symbolic link": "symbolic link"}.get(kind, "file"),
                      "mode": int(mode, 8),
                      "owner": owner, "group": group}
    return out


def plan_paths(current: Mapping[str, Mapping[str, Any]], specs: Iterable[PathSpec] = PATHS) -> list[str]:
    """Shell commands that give each path its kind, owner and mode (empty when all are right)."""
    cmds = []
    for s in specs:
        cur = current.get(s.path)
        q = shlex.quote(s.path)
        if cur is None:
            if s.kind == "directory":
                cmds.append(f"install -d -m {s.mode:04o} -o {s.owner} -g {s.group} {q}")
            else:
                cmds.append(f"install -m {s.mode:04o} -o {s.owner} -g {s.group} /dev/null {q}")
            continue
        if cur["kind"] != s.kind:
            raise SafetyCheckFailed(f"{s.path} is a {cur['kind']}, expected a {s.kind}",
                                    hint="Move it aside by hand; hcbpg does not delete it.")
        if (cur["owner"], cur["group"]) != (s.owner, s.group):
            cmds.append(f"chown -h {s.owner}:{s.group} {q}")
        if cur["mode"] != s.mode:
            cmds.append(f"chmod {s.mode:04o} {q}")
    return cmds


# the config file's secrets ----------------------------------------------------------------------

def resolve_conf_secrets(params: "Params", *, read_only: bool = False) -> dict[str, str]:
    """The secret option values from their references (each registered with the scrubber).

    *read_only* (the restore-drill host): the drill's read-only S3 key when params give one."""
    pb = pgbackrest_params(params)
    refs = {"repo1-s3-key": pb.s3_key, "repo1-s3-key-secret": pb.s3_key_secret}
    keys = dict(SECRET_OPTIONS)
    if read_only and params.drill is not None and params.drill.s3_key and params.drill.s3_key_secret:
        refs = {"repo1-s3-key": params.drill.s3_key, "repo1-s3-key-secret": params.drill.s3_key_secret}
        keys.update({"repo1-s3-key": "drill.s3_key", "repo1-s3-key-secret": "drill.s3_key_secret"})
    if pb.cipher_type != "none" and pb.cipher_pass:
        refs["repo1-cipher-pass"] = pb.cipher_pass
    if pb.repo2 is not None:  # the second repository's own keys and passphrase
        refs.update({"repo2-s3-key": pb.repo2.s3_key, "repo2-s3-key-secret": pb.repo2.s3_key_secret})
        if pb.repo2.cipher_type != "none" and pb.repo2.cipher_pass:
            refs["repo2-cipher-pass"] = pb.repo2.cipher_pass
    return {opt: hsecrets.resolve(ref, key=keys[opt]) for opt, ref in refs.items()}


# archiving settings (a conf.d include file of PostgreSQL) ---------------------------

def archive_command(params: "Params") -> str:
    """``pgbackrest --stanza=<stanza> archive-push %p``, with the stanza from params."""
    return f"pgbackrest --stanza={pgbackrest_params(params).stanza} archive-push %p"


def restore_command(params: "Params") -> str:
    """``pgbackrest --stanza=<stanza> archive-get %f "%p"``: a standby falls back to the archive."""
    return f'pgbackrest --stanza={pgbackrest_params(params).stanza} archive-get %f "%p"'


def archiving_settings(params: "Params", *, archive_mode: bool) -> dict[str, Any]:
    """The settings of the archiving include file; archive_mode stays off until after the cutover restore.

    ``archive_timeout`` (seconds, params ``pgbackrest.archive_timeout``; a reload applies it) switches to a new WAL
    segment once that long has passed with something written, so the newest archived WAL is never older than that
    (plus the push) and a server lost with its disk loses at most that much; 0 is off.
    ``restore_command`` is read only in recovery: on a standby it fetches from the repository
    the WAL its primary no longer holds (a slot invalidated by ``max_slot_wal_keep_size``, a
    replica down for hours), so it catches up without a rebuild; a primary ignores it.
    """
    return {
        "archive_command": archive_command(params),
        "archive_mode": bool(archive_mode),
        "archive_timeout": pgbackrest_params(params).archive_timeout,
        "max_wal_senders": 10,
        "restore_command": restore_command(params),
        "wal_level": "replica",
    }


def archiving_path(params: "Params") -> str:
    return f"{config_dir(params)}/conf.d/{ARCHIVING_FILE}"


def render_archiving(params: "Params", server: "Server", *, archive_mode: bool) -> str:
    """The conf.d include file with archive_command (right stanza), archive_mode, wal_level, max_wal_senders."""
    settings = archiving_settings(params, archive_mode=archive_mode)
    when = ("on: every WAL segment goes to the repository (step 08_start_archiving)" if archive_mode else
            "off until after the cutover restore (step 08_start_archiving turns it on)")
    lines = [
        MANAGED_HEADER,
        f"# {server.name}: WAL archiving to pgBackRest (steps 05_pgbackrest and 08_start_archiving).",
        f"# archive_mode is {when}.",
        "",
    ]
    lines += [f"{k} = {quote_setting(settings[k])}" for k in sorted(settings)]
    return "\n".join(lines) + "\n"


# what info and the bucket say --------------------------------------------------------------------

def check_backups(rows: Sequence[BackupRow], server: "Server", *, types: Iterable[str] = ("full",)) -> list[Check]:
    """A good backup of each of *types* exists, and none is marked as having errors."""
    out = []
    for t in types:
        have = [r for r in rows if r.type == t and not r.error]
        out.append(Check.of(f"a {t} backup exists", bool(have),
                            f"{have[-1].label} ({format_bytes(have[-1].repo_size)} in the repository)" if have
                            else f"no {t} backup in info", server.name))
    bad = [r.label for r in rows if r.error]
    out.append(Check.of("no backup has errors", not bad, ", ".join(bad) or f"{len(rows)} backup(s)", server.name))
    return out


def check_repo_objects(files: Sequence[Mapping[str, Any]], rows: Sequence[BackupRow], server: "Server") -> list[Check]:
    """The bucket holds the stanza's info files, WAL, and a directory of files for every backup of repo1 (*files* is
    ``repo-ls`` of repo1, the default repository: repo2's backups are in its own store)."""
    paths = [str(f["path"]) for f in files]
    out = [
        Check.of("archive.info in the bucket", any(p.startswith("archive/") and p.endswith("archive.info") for p in paths),
                 "archive/<stanza>/archive.info", server.name),
        Check.of("backup.info in the bucket", any(p.startswith("backup/") and p.endswith("backup.info") for p in paths),
                 "backup/<stanza>/backup.info", server.name),
    ]
    wal = [p for p in paths if p.startswith("archive/") and re.search(r"/[0-9A-F]{24}", p)]
    out.append(Check.of("WAL segments in the bucket", bool(wal), f"{len(wal)} WAL file(s)", server.name))
    for r in (r for r in rows if r.repo == 1):
        n = sum(1 for p in paths if f"/{r.label}/" in p)
        out.append(Check.of(f"backup {r.label} in the bucket", n > 0, f"{n} object(s)", server.name))
    return out
