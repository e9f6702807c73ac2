"""pgBackRest on the primary: its directories and config file, the archiving settings, the
stanza, ``check``, backups and ``info`` (steps 05_pgbackrest and 08_start_archiving).

The config file has to hold the repository key, key secret and cipher passphrase for
pgBackRest to work.  :func:`render_pgbackrest_conf` therefore renders ``<secret>`` in their
place for everything shown (plan, diff, record); the values are resolved from their
secret references and substituted only in the bytes written over SSH, which travel on
stdin (:meth:`hcbpg.host.Host.put_text`), never on a command line.

The runbook's hand-written config had three mistakes this module does not repeat:
``start-fast=compress-type=zsty`` (two options run together: ``start-fast=y`` and
``compress-type=zst``), ``repo1-block=y4`` (``y``; and block incremental needs pgBackRest
2.46: see :func:`check_block_incremental`) and an ``archive_command`` naming the stanza
``demo`` (it is rendered from params: :func:`archive_command`).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.pgbackrest import (
    CONF_PATH,
    SECRET_OPTIONS,
    check_block_incremental,
    format_version,
    parse_version,
    pgbackrest_params,
    redact_conf,
    render_pgbackrest_conf,
)
from hcbpg.desired.server import config_dir
from hcbpg.errors import PgBackRestError, SafetyCheckFailed
from hcbpg.ops.cluster import psql_for
from hcbpg.ops.config import apply_settings_file
from hcbpg.ops.packages import get_installed_packages
from hcbpg.ops.progress import Watcher
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.conf import MANAGED_HEADER, parse_settings, quote_setting
from hcbpg.progress import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host, Result
    from hcbpg.params import Params, Server

#: pgBackRest's error code for "archive_mode must be enabled", the expected ``check``
#: failure between step 05 and the cutover restore (archive_mode stays off until then)
ARCHIVE_MODE_DISABLED = 87
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


# versions ------------------------------------------------------------------------

# the config file -------------------------------------------------------------------

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

    ``restore_command`` is read only in recovery: on a standby it fetches from the repository
    the WAL its primary no longer holds (a slot invalidated by ``max_slot_wal_keep_size``, a
    replica down for hours), so it catches up without a rebuild; a primary ignores it.
    """
    return {
        "archive_command": archive_command(params),
        "archive_mode": bool(archive_mode),
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


def ensure_archiving(host: "Host | None", params: "Params", server: "Server", *, archive_mode: bool,
                     dry_run: bool) -> Outcome:
    """The archiving include file is ours and in force: reload, and restart only when PostgreSQL says so.

    archive_mode, wal_level and max_wal_senders need a restart (``pending_restart``);
    archive_command only a reload.
    """
    return apply_settings_file(host, params, server, archiving_path(params),
                               render_archiving(params, server, archive_mode=archive_mode),
                               what=f"settings {ARCHIVING_FILE} on {server.name}", dry_run=dry_run,
                               own_pending_only=True)


def check_archiving(host: "Host", params: "Params", server: "Server", *, archive_mode: bool) -> list[Check]:
    """One row per archiving setting: our file's entry is applied, the value is in force, no restart pending.

    (pg_settings names a file as the source only when its value differs from the built-in
    default, so wal_level = replica shows as "default": pg_file_settings says whether our
    entry is the one applied.)
    """
    path = archiving_path(params)
    desired = parse_settings(render_archiving(params, server, archive_mode=archive_mode))
    psql = psql_for(host, params)
    live = {r["name"]: r for r in psql.query(
        sql.SQL("SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY({})")
        .format(sql.Literal(list(desired))))}
    filed = {r["name"]: r for r in psql.query(
        sql.SQL("SELECT name, setting, applied, error FROM pg_file_settings WHERE sourcefile = {}")
        .format(sql.Literal(path)))}
    out = []
    for name, written in desired.items():
        r, f = live.get(name) or {}, filed.get(name)
        if f is None:
            out.append(Check(f"setting {name}", "fail", f"not in {path} as PostgreSQL reads it (wanted {written})",
                             server.name))
            continue
        value = r.get("setting")
        shown = value
        if name == "archive_command" and value == "(disabled)" and not archive_mode:
            # PostgreSQL shows archive_command as "(disabled)" while archive_mode is off
            value, shown = f["setting"], f"{f['setting']} (shown as (disabled) while archive_mode is off)"
        ok = bool(f["applied"]) and not f["error"] and not r.get("pending_restart") and value == f["setting"]
        detail = f"{name} = {shown}"
        if not f["applied"]:
            detail += f" (the entry in {path} is not applied: a later file overrides it?)"
        if f["error"]:
            detail += f" ({f['error']})"
        if r.get("pending_restart"):
            detail += " (restart pending)"
        out.append(Check.of(f"setting {name}", ok, detail, server.name))
    return out


# packages, directories, config file -------------------------------------------------------

def get_version(host: "Host") -> tuple[int, int, int]:
    """The installed pgBackRest's version (``pgbackrest version``)."""
    res = host.probe("pgbackrest version")
    if not res.ok:
        raise PgBackRestError(f"on {host.name}: `pgbackrest version` failed (exit {res.exit_code}): "
                              f"{hsecrets.scrub(res.output.strip())[-300:]}", host=host.name,
                              hint="Install pgbackrest (step 02 installs it with PostgreSQL).")
    return parse_version(res.stdout)


def ensure_installed(host: "Host | None", *, dry_run: bool, packages: Sequence[str] = ("pgbackrest", "curl")) -> Outcome:
    """pgbackrest (and curl, which the backup job pings with) are installed; only what is missing."""
    name = host.name if host else "(new server)"
    if host is None:
        return Outcome(f"packages {', '.join(packages)} on {name}", True, dry_run,
                       actions=[f"apt-get install {' '.join(packages)}"])
    installed = get_installed_packages(host, packages)
    missing = [p for p in packages if p not in installed]
    what = f"packages {', '.join(packages)} on {name}"
    if not missing:
        return Outcome(what, False, dry_run, actions=[f"{p} {installed[p]}" for p in packages])
    cmd = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
           + " ".join(shlex.quote(p) for p in missing))
    if not dry_run:
        host.run("DEBIAN_FRONTEND=noninteractive apt-get update -q", timeout=600)
        host.run(cmd, timeout=1200)
    return Outcome(what, True, dry_run, actions=[cmd])


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


def get_paths(host: "Host", specs: Iterable[PathSpec] = PATHS) -> dict[str, dict[str, Any]]:
    res = host.probe("stat -c '%n|%F|%a|%U|%G' " + " ".join(shlex.quote(s.path) for s in specs))
    return parse_stat(res.stdout)


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


def ensure_paths(host: "Host | None", *, dry_run: bool, specs: Iterable[PathSpec] = PATHS) -> Outcome:
    """/var/log/pgbackrest, /etc/pgbackrest, its conf.d and pgbackrest.conf exist with the runbook's owners and modes
    (and the spool directory, with *specs* from :func:`paths_for`)."""
    what = f"pgBackRest directories on {host.name if host else '(new server)'}"
    specs = tuple(specs)
    cmds = plan_paths({} if host is None else get_paths(host, specs), specs)
    if not cmds:
        return Outcome(what, False, dry_run)
    if host is not None and not dry_run:
        for s in specs:
            if s.kind == "directory":
                # made or set without following a symlink another user plants (the spool's or the log's
                # parent may be open to others)
                ensure_dir(host, s.path, mode=s.mode, owner=s.owner, group=s.group)
            else:
                for c in plan_paths(get_paths(host, (s,)), (s,)):
                    host.run(c)
    return Outcome(what, True, dry_run, actions=cmds)


def ensure_pgbackrest_conf(host: "Host | None", params: "Params", server: "Server", *,
                           version: tuple[int, int, int] | None, dry_run: bool,
                           repo_server: "Server | None" = None, read_only: bool = False) -> Outcome:
    """pgbackrest.conf is ours (0640 postgres); the diff shows ``<secret>``, never a value.

    *repo_server* names whose repository the file points at (default: *server*; a restore
    drill host reads the primary's).  *read_only*: the drill's read-only S3 key (params
    ``drill.s3_key``), when given, so that the scratch host cannot delete backups.
    """
    repo_for = repo_server or server
    shown = render_pgbackrest_conf(params, repo_for, version=version)
    shown = shown.replace(f"# pgBackRest for {repo_for.name},", f"# pgBackRest for {server.name} "
                          f"(repository of {repo_for.name}),") if repo_for is not server else shown
    what = f"{CONF_PATH} on {server.name}"
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", shown, CONF_PATH), actions=[f"write {CONF_PATH}"])
    values = resolve_conf_secrets(params, read_only=read_only)
    real = render_pgbackrest_conf(params, repo_for, version=version, secrets=values)
    if repo_for is not server:
        real = real.replace(f"# pgBackRest for {repo_for.name},", f"# pgBackRest for {server.name} "
                            f"(repository of {repo_for.name}),")
    current = host.read_text(CONF_PATH)
    if current == real:
        return Outcome(what, False, dry_run)
    diff = unified_diff(redact_conf(current or ""), shown, CONF_PATH)
    actions = [f"write {CONF_PATH} (mode 0640, owner postgres:postgres)"]
    if not diff:
        actions.append("only secret values change (not shown)")
    host.put_text(CONF_PATH, real, mode=0o640, owner="postgres", group="postgres", dry_run=dry_run)
    return Outcome(what, True, dry_run, diff=diff, actions=actions)


# running pgBackRest ---------------------------------------------------------------------------

_ERROR_RE = re.compile(r"(?:^|\s)ERROR:\s*\[(\d{3})\]:\s*(.*)$")
_LOG_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ P\d+\s+[A-Z]+:")
_ABORTED_RE = re.compile(r"aborted with exception \[(\d{3})\]")


def parse_pgbackrest_error(output: str) -> tuple[int, str] | None:
    """``(87, "archive_mode must be enabled")`` from pgBackRest's output; None when it shows no error.

    Reads console lines (``2025-... P00  ERROR: [087]: ...``) and stderr lines
    (``ERROR: [087]: ...``); indented lines after the error are part of its message.
    """
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = _ERROR_RE.search(line)
        if not m:
            continue
        msg = [m.group(2).strip()]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or _LOG_PREFIX_RE.match(nxt) or _ERROR_RE.search(nxt) or not nxt[:1].isspace():
                break
            msg.append(nxt.strip())
        return int(m.group(1)), "\n".join(msg)
    m = _ABORTED_RE.search(output)
    if m:
        return int(m.group(1)), f"aborted with exception [{m.group(1)}]"
    return None


def pgbackrest_cmd(params: "Params", command: str, *options: str) -> str:
    """A pgbackrest command line for the stanza (no secrets: those are in the config file)."""
    opts = " ".join(shlex.quote(o) for o in options)
    return f"pgbackrest --stanza={shlex.quote(pgbackrest_params(params).stanza)} {opts + ' ' if opts else ''}{command}"


def run_pgbackrest(host: "Host", params: "Params", command: str, *options: str, check: bool = True,
                   quiet: bool = False, timeout: float | None = None) -> "Result":
    """Run a pgbackrest command as postgres; a failure raises PgBackRestError with pgBackRest's own code and message."""
    cmd = pgbackrest_cmd(params, command, *options)
    res = host.run(cmd, sudo_user="postgres", check=False, quiet=quiet, timeout=timeout)
    if check and not res.ok:
        raise pgbackrest_error(host, cmd, res)
    return res


def pgbackrest_error(host: "Host", cmd: str, res: "Result") -> PgBackRestError:
    parsed = parse_pgbackrest_error(res.output)
    code, message = parsed if parsed else (None, hsecrets.scrub(res.output.strip())[-1500:] or "no output")
    return PgBackRestError(
        f"on {host.name}: `{cmd}` failed (exit {res.exit_code}): "
        + (f"[{code:03d}] " if code is not None else "") + hsecrets.scrub(message),
        code=code, host=host.name,
        hint="pgBackRest's log is /var/log/pgbackrest/ on the server; fix the cause and run the step again.")


def get_info_json(host: "Host", params: "Params") -> str:
    """``pgbackrest info --output=json`` for the stanza (read-only)."""
    return run_pgbackrest(host, params, "info", "--output=json", quiet=True).stdout


def parse_stanza_status(text: str, stanza: str) -> tuple[int, str] | None:
    """The stanza's status (code, message) from ``info --output=json``; None when it is not listed.

    Codes: 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data, ...
    """
    for st in json.loads(text or "[]"):
        if st.get("name") == stanza:
            s = st.get("status") or {}
            return int(s.get("code", -1)), str(s.get("message", ""))
    return None


def ensure_stanza(host: "Host | None", params: "Params", *, dry_run: bool) -> Outcome:
    """The stanza exists in the repository (``stanza-create`` only when info says it is missing)."""
    pb = pgbackrest_params(params)
    what = f"stanza {pb.stanza} on {host.name if host else '(new server)'}"
    cmd = pgbackrest_cmd(params, "stanza-create", "--log-level-console=info")
    if host is None:
        return Outcome(what, True, dry_run, actions=[cmd])
    status = parse_stanza_status(get_info_json(host, params), pb.stanza)
    if status is not None and status[0] not in (1, 3):  # 1 missing stanza path, 3 missing stanza data
        return Outcome(what, False, dry_run, actions=[f"info: {status[1]}"])
    if not dry_run:
        run_pgbackrest(host, params, "stanza-create", "--log-level-console=info")
    return Outcome(what, True, dry_run, actions=[cmd])


def check_stanza(host: "Host", params: "Params", server: "Server", *, archiving: bool) -> Check:
    """``pgbackrest check``: passes; before the cutover (*archiving* false) [087] is the expected answer.

    Any other failure raises PgBackRestError with pgBackRest's own message.
    """
    cmd = pgbackrest_cmd(params, "check", "--log-level-console=info")
    res = run_pgbackrest(host, params, "check", "--log-level-console=info", check=False)
    if res.ok:
        return Check("pgbackrest check", "pass", "archiving and the repository work", server.name)
    parsed = parse_pgbackrest_error(res.output)
    if not archiving and parsed and parsed[0] == ARCHIVE_MODE_DISABLED:
        return Check("pgbackrest check", "pass",
                     f"[087] {parsed[1]}: expected until archive_mode is on (step 08)", server.name)
    raise pgbackrest_error(host, cmd, res)


# info -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupRow:
    """One backup from ``info --output=json``."""

    label: str
    type: str
    start: str            # ISO 8601, UTC
    stop: str
    duration_s: int
    size: int             # database size
    delta: int            # changed since the prior backup
    repo_size: int        # stored in the repository (compressed, encrypted)
    repo_delta: int
    wal_start: str
    wal_stop: str
    prior: str | None
    error: bool = False

    def row(self) -> dict[str, Any]:
        """For a table: sizes human-readable, duration in seconds."""
        return {"label": self.label, "type": self.type, "start": self.start, "duration": f"{self.duration_s}s",
                "size": format_bytes(self.size), "delta": format_bytes(self.delta),
                "repo size": format_bytes(self.repo_size), "WAL start": self.wal_start,
                "WAL stop": self.wal_stop, "prior": self.prior or "", "error": "yes" if self.error else ""}

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def format_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _iso(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def parse_info_json(text: str, stanza: str | None = None) -> list[BackupRow]:
    """The backups in ``pgbackrest info --output=json`` (of *stanza*, or of every stanza), oldest first."""
    out = []
    for st in json.loads(text or "[]"):
        if stanza is not None and st.get("name") != stanza:
            continue
        for b in st.get("backup") or []:
            ts = b.get("timestamp") or {}
            info = b.get("info") or {}
            repo = info.get("repository") or {}
            arch = b.get("archive") or {}
            start, stop = ts.get("start"), ts.get("stop")
            out.append(BackupRow(
                label=b["label"], type=b.get("type", ""), start=_iso(start), stop=_iso(stop),
                duration_s=int(stop - start) if start is not None and stop is not None else 0,
                size=int(info.get("size") or 0), delta=int(info.get("delta") or 0),
                repo_size=int(repo.get("size") or 0), repo_delta=int(repo.get("delta") or 0),
                wal_start=arch.get("start") or "", wal_stop=arch.get("stop") or "",
                prior=b.get("prior"), error=bool(b.get("error", False))))
    return sorted(out, key=lambda r: (r.start, r.label))


def get_backups(host: "Host", params: "Params") -> list[BackupRow]:
    return parse_info_json(get_info_json(host, params), pgbackrest_params(params).stanza)


def parse_backup_progress(text: str, stanza: str) -> tuple[int, int] | None:
    """(bytes done, bytes in all) of the stanza's running backup from ``info --output=json``
    (``status.lock.backup``: ``held``, ``size-cplt`` and ``size``, pgBackRest 2.41 and later);
    None when no backup runs or this pgBackRest does not say."""
    try:
        stanzas = json.loads(text or "[]")
    except ValueError:
        return None
    for st in stanzas if isinstance(stanzas, list) else []:
        if st.get("name") != stanza:
            continue
        lock = ((st.get("status") or {}).get("lock") or {}).get("backup") or {}
        if not lock.get("held") or lock.get("size") is None:
            return None
        total = int(lock.get("size") or 0)
        return min(int(lock.get("size-cplt") or 0), total), total
    return None


_PERCENT_RE = re.compile(r"backup/expire running - (\d+)\.(\d\d)% complete")


def parse_backup_percent(text: str) -> float | None:
    """The running backup's percentage from ``pgbackrest info`` (text: ``status: ok (backup/expire
    running - 45.12% complete)``, pgBackRest 2.41 and later; JSON carries it only from 2.48 on)."""
    m = _PERCENT_RE.search(text or "")
    return int(m.group(1)) + int(m.group(2)) / 100 if m else None


def run_backup(host: "Host", params: "Params", *, type: str = "full", timeout: float = 3600,
               reporter: Reporter | None = None) -> BackupRow:
    """Take one backup (``--type=full|diff|incr``) and return its row from ``info``; while it runs,
    its progress (the percentage ``info`` reports, pgBackRest 2.41+) goes to *reporter* (default: a new one)."""
    if type not in ("full", "diff", "incr"):
        raise ValueError(f"backup type must be full, diff or incr, not {type!r}")
    before = {b.label for b in get_backups(host, params)}
    rep = reporter or Reporter()
    stanza = pgbackrest_params(params).stanza

    def sample() -> None:
        text = run_pgbackrest(host, params, "info", quiet=True, check=False).stdout
        pct = parse_backup_percent(text)
        if pct is not None:
            rep.update("backup", f"{type} of stanza {stanza}", done=pct, total=100.0, unit="percent")

    with Watcher(sample, interval=2.0):  # info reads the repository: every 2 s, not faster
        run_pgbackrest(host, params, "backup", f"--type={type}", "--log-level-console=info", timeout=timeout)
    new = [b for b in get_backups(host, params) if b.label not in before]
    if not new:
        raise PgBackRestError(f"on {host.name}: the {type} backup finished but info lists no new backup",
                              host=host.name)
    return new[-1]


def ensure_full_backup(host: "Host | None", params: "Params", *, dry_run: bool,
                       before: "Any | None" = None) -> tuple[Outcome, BackupRow | None]:
    """A full backup exists in the repository: take one only when there is none.

    *before* (optional) is called just before the backup starts (the restore drill's
    fingerprint of the primary is taken there).
    """
    what = f"first full backup on {host.name if host else '(new server)'}"
    cmd = pgbackrest_cmd(params, "backup", "--type=full", "--log-level-console=info")
    if host is None:
        return Outcome(what, True, dry_run, actions=[cmd]), None
    try:
        rows = get_backups(host, params)
    except PgBackRestError:
        if not dry_run:
            raise
        # planning before step 05 has configured pgBackRest: there is no repository to ask yet
        return Outcome(what, True, dry_run, actions=[cmd + " (pgBackRest is not configured yet)"]), None
    fulls = [b for b in rows if b.type == "full" and not b.error]
    if fulls:
        return Outcome(what, False, dry_run, actions=[f"{fulls[-1].label} exists"]), fulls[-1]
    if dry_run:
        return Outcome(what, True, dry_run, actions=[cmd]), None
    if before is not None:
        before()
    row = run_backup(host, params, type="full")
    return Outcome(what, True, dry_run, actions=[cmd, f"took {row.label} in {row.duration_s}s"]), row


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


def get_repo_files(host: "Host", params: "Params") -> list[dict[str, Any]]:
    """Objects in the bucket under this stanza, as pgBackRest's S3 client lists them (``repo-ls``)."""
    res = run_pgbackrest(host, params, "repo-ls", "--recurse", "--output=json", quiet=True)
    data = json.loads(res.stdout or "{}")
    return [{"path": k, "type": v.get("type"), "size": v.get("size")} for k, v in sorted(data.items())
            if v.get("type") == "file"]


def check_repo_objects(files: Sequence[Mapping[str, Any]], rows: Sequence[BackupRow], server: "Server") -> list[Check]:
    """The bucket holds the stanza's info files, WAL, and a directory of files for every backup."""
    paths = [str(f["path"]) for f in files]
    out = [
        Check.of("archive.info in the bucket", any(p.startswith("archive/") and p.endswith("archive.info") for p in paths),
                 "archive/<stanza>/archive.info", server.name),
        Check.of("backup.info in the bucket", any(p.startswith("backup/") and p.endswith("backup.info") for p in paths),
                 "backup/<stanza>/backup.info", server.name),
    ]
    wal = [p for p in paths if p.startswith("archive/") and re.search(r"/[0-9A-F]{24}", p)]
    out.append(Check.of("WAL segments in the bucket", bool(wal), f"{len(wal)} WAL file(s)", server.name))
    for r in rows:
        n = sum(1 for p in paths if f"/{r.label}/" in p)
        out.append(Check.of(f"backup {r.label} in the bucket", n > 0, f"{n} object(s)", server.name))
    return out


# what steps 05 and 08 do on the primary --------------------------------------------------------

def get_installed_version(host: "Host | None") -> tuple[int, int, int] | None:
    """The installed pgBackRest's version, or None when it is not installed (or there is no host yet)."""
    if host is None or "pgbackrest" not in get_installed_packages(host, ["pgbackrest"]):
        return None
    return get_version(host)


def configure_pgbackrest(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> list[Outcome]:
    """Step 05 on the primary: install, directories, pgbackrest.conf, archiving settings (archive_mode off), stanza.

    The block-incremental rule is checked against the installed version before anything
    is written; the stanza is created only when ``info`` says it is missing.
    """
    outcomes = [ensure_installed(host, dry_run=dry_run)]
    version = get_installed_version(host)
    if version is not None:
        check_block_incremental(params, version)
    outcomes.append(ensure_paths(host, dry_run=dry_run, specs=paths_for(params)))
    conf = ensure_pgbackrest_conf(host, params, server, version=version, dry_run=dry_run)
    outcomes.append(conf)
    # once step 08 has started archiving, running this step again must not stop it
    on = get_archive_mode_written(host, params)
    outcomes.append(ensure_archiving(host, params, server, archive_mode=on, dry_run=dry_run))
    if dry_run and (host is None or conf.changed or version is None):
        pb = pgbackrest_params(params)
        outcomes.append(Outcome(f"stanza {pb.stanza} on {server.name}", True, dry_run,
                                actions=[pgbackrest_cmd(params, "stanza-create", "--log-level-console=info")
                                         + " (unless info lists it)"]))
    else:
        outcomes.append(ensure_stanza(host, params, dry_run=dry_run))
    return outcomes


def configure_standby(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> list[Outcome]:
    """pgBackRest on a standby (step 10): installed, directories, pgbackrest.conf (the cluster's one repository)
    and the archiving settings with archive_mode on.

    The standby then falls back to the archive (``restore_command``) when its primary no longer
    holds the WAL it needs, and archives into the same stanza as soon as it is promoted.
    """
    outcomes = [ensure_installed(host, dry_run=dry_run)]
    version = get_installed_version(host)
    outcomes.append(ensure_paths(host, dry_run=dry_run, specs=paths_for(params)))
    outcomes.append(ensure_pgbackrest_conf(host, params, server, version=version, dry_run=dry_run))
    outcomes.append(ensure_archiving(host, params, server, archive_mode=True, dry_run=dry_run))
    return outcomes


def check_conf(host: "Host", params: "Params", server: "Server", *, repo_server: "Server | None" = None,
               read_only: bool = False) -> list[Check]:
    """pgbackrest.conf on the server is what hcbpg renders (secrets compared, never shown) with mode 0640 postgres."""
    version = get_version(host)
    repo_for = repo_server or server
    real = render_pgbackrest_conf(params, repo_for, version=version,
                                  secrets=resolve_conf_secrets(params, read_only=read_only))
    if repo_for is not server:
        real = real.replace(f"# pgBackRest for {repo_for.name},", f"# pgBackRest for {server.name} "
                            f"(repository of {repo_for.name}),")
    current = host.read_text(CONF_PATH)
    specs = paths_for(params)
    paths = get_paths(host, specs)
    out = [Check("pgBackRest version", "pass", format_version(version), server.name),
           Check("block incremental", "pass",
                 "on (pgBackRest 2.46+, bundling on)" if pgbackrest_params(params).block else "off", server.name),
           Check.of("pgbackrest.conf is hcbpg's", current == real,
                    "matches the rendered file (secret values compared, not shown)" if current == real else
                    "differs from the rendered file", server.name)]
    for spec in specs:
        cur = paths.get(spec.path)
        want = f"{spec.kind} {spec.mode:04o} {spec.owner}:{spec.group}"
        got = f"{cur['kind']} {cur['mode']:04o} {cur['owner']}:{cur['group']}" if cur else "missing"
        out.append(Check.of(f"{spec.path}", got == want, got if got == want else f"{got}, expected {want}", server.name))
    return out


def get_archive_mode_written(host: "Host | None", params: "Params") -> bool:
    """True when hcbpg's archiving include file already says archive_mode = on (step 08 ran)."""
    if host is None:
        return False
    text = host.read_text(archiving_path(params)) or ""
    return parse_settings(text).get("archive_mode", "off").strip("'") == "on"


def check_configured(host: "Host", params: "Params", server: "Server") -> list[Check]:
    """Step 05's checks: conf and paths, archiving settings, stanza, ``check`` ([087] expected until step 08)."""
    on = get_archive_mode_written(host, params)
    out = check_conf(host, params, server)
    out += check_archiving(host, params, server, archive_mode=on)
    status = parse_stanza_status(get_info_json(host, params), pgbackrest_params(params).stanza)
    out.append(Check.of(f"stanza {pgbackrest_params(params).stanza}", status is not None and status[0] in (0, 2),
                        status[1] if status else "not in info", server.name))
    out.append(check_stanza(host, params, server, archiving=on))
    return out


def start_archiving(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> list[Outcome]:
    """Step 08's first change: archive_mode on (a restart), so every WAL segment goes to the repository."""
    return [ensure_archiving(host, params, server, archive_mode=True, dry_run=dry_run)]


def check_archiving_started(host: "Host", params: "Params", server: "Server") -> list[Check]:
    """Step 08's checks on archiving: settings in force (archive_mode on) and ``pgbackrest check`` passes."""
    return (check_conf(host, params, server) + check_archiving(host, params, server, archive_mode=True)
            + [check_stanza(host, params, server, archiving=True)])
