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
import shlex
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired import pgbackrest_server
from hcbpg.desired.backups import (
    ARCHIVING_FILE,
    PATHS,
    PathSpec,
    archiving_path,
    parse_stat,
    paths_for,
    plan_paths,
    render_archiving,
    resolve_conf_secrets,
)
from hcbpg.desired.pgbackrest import (
    CONF_PATH,
    format_version,
    parse_version,
    pgbackrest_params,
    redact_conf,
    render_pgbackrest_conf,
)
from hcbpg.errors import PgBackRestError
from hcbpg.ops.cluster import get_psql
from hcbpg.ops.config import ensure_settings_file
from hcbpg.ops.packages import get_installed_packages
from hcbpg.ops.progress import Watcher
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.conf import parse_settings
from hcbpg.pg.pgbackrest import (
    ARCHIVE_MODE_DISABLED,
    BackupRow,
    parse_backup_percent,
    parse_info_json,
    parse_pgbackrest_error,
    parse_repo_status,
    parse_stanza_status,
    pgbackrest_cmd,
)
from hcbpg.progress import Reporter

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result
    from hcbpg.params import Params, Server


def _cmd(params: "Params", command: str, *options: str) -> str:
    return pgbackrest_cmd(pgbackrest_params(params).stanza, command, *options)


# archiving settings (a conf.d include file of PostgreSQL) ---------------------------

def ensure_archiving(host: "HostLike", params: "Params", server: "Server", *, archive_mode: bool,
                     restart: bool = True) -> Outcome:
    """The archiving include file is ours and in force: reload, and restart only when PostgreSQL says so.

    archive_mode, wal_level and max_wal_senders need a restart (``pending_restart``);
    archive_command only a reload.  With *restart* false that restart is left to the caller
    (:func:`hcbpg.ops.config.ensure_settings_file`).
    """
    return ensure_settings_file(host, params, server, archiving_path(params),
                               render_archiving(params, server, archive_mode=archive_mode),
                               what=f"settings {ARCHIVING_FILE} on {server.name}", own_pending_only=True,
                               restart=restart)


def check_archiving(host: "HostLike", params: "Params", server: "Server", *, archive_mode: bool) -> list[Check]:
    """One row per archiving setting: our file's entry is applied, the value is in force, no restart pending.

    (pg_settings names a file as the source only when its value differs from the built-in
    default, so wal_level = replica shows as "default": pg_file_settings says whether our
    entry is the one applied.)
    """
    path = archiving_path(params)
    desired = parse_settings(render_archiving(params, server, archive_mode=archive_mode))
    psql = get_psql(host, params)
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

def get_version(host: "HostLike") -> tuple[int, int, int]:
    """The installed pgBackRest's version (``pgbackrest version``)."""
    res = host.probe("pgbackrest version")
    if not res.ok:
        raise PgBackRestError(f"on {host.name}: `pgbackrest version` failed (exit {res.exit_code}): "
                              f"{hsecrets.scrub(res.output.strip())[-300:]}", host=host.name,
                              hint="Install pgbackrest (step 02 installs it with PostgreSQL).")
    return parse_version(res.stdout)


def ensure_installed(host: "HostLike", *, packages: Sequence[str] = ("pgbackrest", "curl")) -> Outcome:
    """pgbackrest (and curl, which the backup job pings with) are installed; only what is missing."""
    seen = Changes(host)
    what = f"packages {', '.join(packages)} on {host.name}"
    installed = get_installed_packages(host, packages)
    missing = [p for p in packages if p not in installed]
    if not missing:
        return Outcome(what, False, host.dry_run, actions=[f"{p} {installed[p]}" for p in packages])
    cmd = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
           + " ".join(shlex.quote(p) for p in missing))
    host.run("DEBIAN_FRONTEND=noninteractive apt-get update -q", timeout=600)
    host.run(cmd, timeout=1200)
    return seen.outcome(what, actions=[cmd])


def get_paths(host: "HostLike", specs: Iterable[PathSpec] = PATHS) -> dict[str, dict[str, object]]:
    """Kind, mode, owner and group of each of *specs* that exists (``stat``)."""
    res = host.probe("stat -c '%n|%F|%a|%U|%G' " + " ".join(shlex.quote(s.path) for s in specs))
    return parse_stat(res.stdout)


def ensure_paths(host: "HostLike", *, specs: Iterable[PathSpec] = PATHS) -> Outcome:
    """/var/log/pgbackrest, /etc/pgbackrest, its conf.d and pgbackrest.conf exist with the runbook's owners and modes
    (and the spool directory, with *specs* from :func:`~hcbpg.desired.backups.paths_for`); refused (nothing
    changed) when one is of the wrong kind (a symbolic link where a file belongs)."""
    seen = Changes(host)
    what = f"pgBackRest directories on {host.name}"
    specs = tuple(specs)
    cmds = plan_paths(get_paths(host, specs), specs)
    if not cmds:
        return Outcome(what, False, host.dry_run)
    for s in specs:
        if s.kind == "directory":
            # made or set without following a symlink another user plants (the spool's or the log's
            # parent may be open to others)
            ensure_dir(host, s.path, mode=s.mode, owner=s.owner, group=s.group)
        else:
            for c in plan_paths(get_paths(host, (s,)), (s,)):
                host.run(c)
    return seen.outcome(what, actions=cmds)


def get_standby_answers(host: "HostLike", params: "Params", server: "Server") -> bool:
    """Whether *server*'s pgbackrest.conf may name the other database server as pg2 (backups from the standby,
    :mod:`hcbpg.desired.pgbackrest_server`): ``pgbackrest.backup_standby`` on, *server* one of params' servers,
    and the other's TLS server answering ``pgbackrest server-ping`` from *host* (5 s of I/O at most).  Before
    step 10 starts the TLS servers (steps 05/08), or with the other server gone, the file has no pg2, so
    ``pgbackrest check`` and ``backup`` never name a pg2 that does not answer.

    The port is tried first (a TCP connect, 5 s at most): pgBackRest 2.45's server-ping retries a refused
    connection until its I/O timeout runs out twice (10 s), and steps 05 and 08 ask four times before step 10
    starts any TLS server (40 s of a rehearsal); a port that accepts still gets the server-ping (TLS, auth)."""
    if not pgbackrest_server.enabled(params):
        return False
    other = pgbackrest_server.peer(params, server)
    if other is None:
        return False
    port = pgbackrest_params(params).tls_server_port
    ip = shlex.quote(other.private_ip)
    connect = shlex.quote(f": </dev/tcp/{other.private_ip}/{port}")
    res = host.probe(f"timeout 5 bash -c {connect} 2>/dev/null && timeout 20 pgbackrest server-ping --io-timeout=5 "
                     f"--tls-server-address={ip} --tls-server-port={port}", sudo_user="postgres")
    return res.ok


def ensure_pgbackrest_conf(host: "HostLike", params: "Params", server: "Server", *,
                           version: tuple[int, int, int] | None,
                           repo_server: "Server | None" = None, read_only: bool = False,
                           standby: bool | None = None) -> Outcome:
    """pgbackrest.conf is ours (0640 postgres); the diff shows ``<secret>``, never a value.

    *repo_server* names whose repository the file points at (default: *server*; a restore
    drill host reads the primary's).  *read_only*: the drill's read-only S3 key (params
    ``drill.s3_key``), when given, so that the scratch host cannot delete backups.  *standby*: whether the
    file names the other database server as pg2 (backups from the standby); None: when its TLS server
    answers (:func:`get_standby_answers`).
    """
    seen = Changes(host)
    repo_for = repo_server or server
    if standby is None:
        standby = repo_for is server and get_standby_answers(host, params, server)

    def titled(text: str) -> str:
        return text.replace(f"# pgBackRest for {repo_for.name},", f"# pgBackRest for {server.name} "
                            f"(repository of {repo_for.name}),") if repo_for is not server else text
    shown = titled(render_pgbackrest_conf(params, repo_for, version=version, standby=standby))
    what = f"{CONF_PATH} on {server.name}"
    current = host.read_text(CONF_PATH)
    if current is None and host.dry_run:
        # dry run: no file there, so it is written whole whatever the secrets are: the plan (of a server not
        # there yet, too) records the file as shown and does not resolve the secret references
        real = shown
    else:
        real = titled(render_pgbackrest_conf(params, repo_for, version=version, standby=standby,
                                             secrets=resolve_conf_secrets(params, read_only=read_only)))
    if current == real:
        return Outcome(what, False, host.dry_run)
    diff = unified_diff(redact_conf(current or ""), shown, CONF_PATH)
    actions = [f"write {CONF_PATH} (mode 0640, owner postgres:postgres)"]
    if not diff:
        actions.append("only secret values change (not shown)")
    host.put_text(CONF_PATH, real, mode=0o640, owner="postgres", group="postgres")
    return seen.outcome(what, diff=diff, actions=actions)


# running pgBackRest ---------------------------------------------------------------------------

def run_pgbackrest(host: "HostLike", params: "Params", command: str, *options: str, check: bool = True,
                   quiet: bool = False, timeout: float | None = None, read_only: bool = False) -> "Result":
    """Run a pgbackrest command as postgres; a failure raises PgBackRestError with pgBackRest's own code and message.

    *read_only* (info, repo-ls, verify): a probe, which runs on a dry run too and is no change."""
    cmd = _cmd(params, command, *options)
    if read_only:
        res = host.probe(cmd, sudo_user="postgres", timeout=timeout)
    else:
        res = host.run(cmd, sudo_user="postgres", check=False, quiet=quiet, timeout=timeout)
    if check and not res.ok:
        raise _pgbackrest_error(host, cmd, res)
    return res


def _pgbackrest_error(host: "HostLike", cmd: str, res: "Result") -> PgBackRestError:
    parsed = parse_pgbackrest_error(res.output)
    code, message = parsed if parsed else (None, hsecrets.scrub(res.output.strip())[-1500:] or "no output")
    return PgBackRestError(
        f"on {host.name}: `{cmd}` failed (exit {res.exit_code}): "
        + (f"[{code:03d}] " if code is not None else "") + hsecrets.scrub(message),
        code=code, host=host.name,
        hint="pgBackRest's log is /var/log/pgbackrest/ on the server; fix the cause and run the step again.")


def get_info_json(host: "HostLike", params: "Params", *options: str) -> str:
    """``pgbackrest info --output=json`` for the stanza (read-only)."""
    return run_pgbackrest(host, params, "info", "--output=json", *options, read_only=True).stdout


def ensure_stanza(host: "HostLike", params: "Params") -> Outcome:
    """The stanza exists in every repository (``stanza-create``, which creates it in each, only when info says it
    is missing from one)."""
    seen = Changes(host)
    pb = pgbackrest_params(params)
    what = f"stanza {pb.stanza} on {host.name}" + (f" in repo{', repo'.join(str(n) for n, _ in pb.repos())}"
                                                   if pb.repo2 is not None else "")
    cmd = _cmd(params, "stanza-create", "--log-level-console=info")
    info = run_pgbackrest(host, params, "info", "--output=json", read_only=True, check=False)
    if info.ok:
        status = parse_stanza_status(info.stdout, pb.stanza)
        repos = parse_repo_status(info.stdout, pb.stanza)
        if status is not None and repos and any(repos.get(n, (1, ""))[0] in (1, 3) for n, _ in pb.repos()):
            # one repository without the stanza (repo2 added to a cluster archiving into repo1): created there
            status = (1, "; ".join(f"repo{n}: {repos[n][1] if n in repos else 'not listed'}" for n, _ in pb.repos()))
    elif host.dry_run:
        # dry run: pgBackRest's install and config are recorded, not done, so info cannot answer: the stanza
        # is planned as missing
        status = None
    else:
        raise _pgbackrest_error(host, _cmd(params, "info", "--output=json"), info)
    if status is not None and status[0] not in (1, 3):  # 1 missing stanza path, 3 missing stanza data
        return Outcome(what, False, host.dry_run, actions=[f"info: {status[1]}"])
    run_pgbackrest(host, params, "stanza-create", "--log-level-console=info")
    return seen.outcome(what, actions=[cmd])


def check_stanza(host: "HostLike", params: "Params", server: "Server", *, archiving: bool) -> Check:
    """``pgbackrest check``: passes; before the cutover (*archiving* false) [087] is the expected answer.

    Any other failure raises PgBackRestError with pgBackRest's own message.
    """
    cmd = _cmd(params, "check", "--log-level-console=info")
    res = run_pgbackrest(host, params, "check", "--log-level-console=info", check=False)
    if res.ok:
        return Check("pgbackrest check", "pass", "archiving and the repository work", server.name)
    parsed = parse_pgbackrest_error(res.output)
    if not archiving and parsed and parsed[0] == ARCHIVE_MODE_DISABLED:
        return Check("pgbackrest check", "pass",
                     f"[087] {parsed[1]}: expected until archive_mode is on (step 08)", server.name)
    raise _pgbackrest_error(host, cmd, res)


# backups ---------------------------------------------------------------------------------------

def get_backups(host: "HostLike", params: "Params") -> list[BackupRow]:
    """The stanza's backups as ``info`` lists them (of every repository: each row names its ``repo``), oldest first."""
    return parse_info_json(get_info_json(host, params), pgbackrest_params(params).stanza)


def run_backup(host: "HostLike", params: "Params", *, type: str = "full", timeout: float = 3600,
               reporter: Reporter | None = None, repo: int | None = None) -> BackupRow:
    """Take one backup (``--type=full|diff|incr``; into repository *repo*, default repo1) and return its row
    from ``info``; while it runs, its progress (the percentage ``info`` reports, pgBackRest 2.41+) goes to
    *reporter* (default: a new one)."""
    if type not in ("full", "diff", "incr"):
        raise ValueError(f"backup type must be full, diff or incr, not {type!r}")
    into = [f"--repo={int(repo)}"] if repo is not None else []
    before = {(b.repo, b.label) for b in get_backups(host, params)}
    rep = reporter or Reporter()
    stanza = pgbackrest_params(params).stanza

    def sample() -> None:
        text = run_pgbackrest(host, params, "info", read_only=True, check=False).stdout
        pct = parse_backup_percent(text)
        if pct is not None:
            rep.update("backup", f"{type} of stanza {stanza}", done=pct, total=100.0, unit="percent")

    with Watcher(sample, interval=2.0):  # info reads the repository: every 2 s, not faster
        run_pgbackrest(host, params, "backup", *into, f"--type={type}", "--log-level-console=info", timeout=timeout)
    new = [b for b in get_backups(host, params) if (b.repo, b.label) not in before and b.repo == (repo or 1)]
    if not new:
        raise PgBackRestError(f"on {host.name}: the {type} backup finished but info lists no new backup",
                              host=host.name)
    return new[-1]


def ensure_full_backup(host: "HostLike", params: "Params", *, before: Callable[[], None] | None = None,
                       ) -> tuple[Outcome, BackupRow | None]:
    """A full backup exists in every repository: take one (``--repo=N``) only where there is none.

    *before* (optional) is called just before repo1's backup starts (the restore drill's
    fingerprint of the primary is taken there).  Returns repo1's full backup (None on a dry run
    that plans one).
    """
    seen = Changes(host)
    pb = pgbackrest_params(params)
    repos = [n for n, _ in pb.repos()]
    what = f"first full backup on {host.name}" + (f" in repo{', repo'.join(map(str, repos))}" if len(repos) > 1 else "")

    def cmd(n: int) -> str:
        return _cmd(params, "backup", *([f"--repo={n}"] if len(repos) > 1 else []), "--type=full",
                    "--log-level-console=info")
    info = run_pgbackrest(host, params, "info", "--output=json", read_only=True, check=False)
    if not info.ok and not host.dry_run:
        raise _pgbackrest_error(host, _cmd(params, "info", "--output=json"), info)
    if not info.ok:
        # dry run: pgBackRest is not configured yet (step 05 is recorded, not done): there is no repository
        # to ask, and a backup is planned
        for n in repos:
            host.run(cmd(n), sudo_user="postgres")
        return seen.outcome(what, actions=[cmd(n) + " (pgBackRest is not configured yet)" for n in repos]), None
    fulls = [b for b in parse_info_json(info.stdout, pb.stanza) if b.type == "full" and not b.error]
    have = {n: [b for b in fulls if b.repo == n] for n in repos}
    missing = [n for n in repos if not have[n]]
    exists = [f"{have[n][-1].label} exists" + (f" in repo{n}" if len(repos) > 1 else "") for n in repos if have[n]]
    first = have[1][-1] if have[1] else None
    if not missing:
        return Outcome(what, False, host.dry_run, actions=exists), first
    if host.dry_run:
        # dry run: the backup is recorded, not taken, so there is no new backup in info to return
        for n in missing:
            host.run(cmd(n), sudo_user="postgres")
        return seen.outcome(what, actions=exists + [cmd(n) for n in missing]), first
    actions = list(exists)
    for n in missing:
        if n == 1 and before is not None:
            before()
        row = run_backup(host, params, type="full", repo=n if len(repos) > 1 else None)
        actions += [cmd(n), f"took {row.label} in {row.duration_s}s"]
        if n == 1:
            first = row
    return seen.outcome(what, actions=actions), first


def get_repo_files(host: "HostLike", params: "Params") -> list[dict[str, Any]]:
    """Objects in the bucket under this stanza, as pgBackRest's S3 client lists them (``repo-ls``)."""
    res = run_pgbackrest(host, params, "repo-ls", "--recurse", "--output=json", read_only=True)
    data = json.loads(res.stdout or "{}")
    return [{"path": k, "type": v.get("type"), "size": v.get("size")} for k, v in sorted(data.items())
            if v.get("type") == "file"]


# what steps 05, 08 and 10 look at on a server ----------------------------------------------------

def get_installed_version(host: "HostLike") -> tuple[int, int, int] | None:
    """The installed pgBackRest's version, or None when it is not installed (or the server is not there yet)."""
    if "pgbackrest" not in get_installed_packages(host, ["pgbackrest"]):
        return None
    return get_version(host)


def ensure_standby_pgbackrest(host: "HostLike", params: "Params", server: "Server", *,
                              restart: bool = True) -> list[Outcome]:
    """pgBackRest on a standby (step 10): installed, directories, pgbackrest.conf (the cluster's one repository)
    and the archiving settings with archive_mode on (*restart* false: the restart it needs is the caller's).

    The standby then falls back to the archive (``restore_command``) when its primary no longer
    holds the WAL it needs, and archives into the same stanza as soon as it is promoted.
    """
    outcomes = [ensure_installed(host)]
    version = get_installed_version(host)
    outcomes.append(ensure_paths(host, specs=paths_for(params)))
    outcomes.append(ensure_pgbackrest_conf(host, params, server, version=version))
    outcomes.append(ensure_archiving(host, params, server, archive_mode=True, restart=restart))
    return outcomes


def check_conf(host: "HostLike", params: "Params", server: "Server", *, repo_server: "Server | None" = None,
               read_only: bool = False) -> list[Check]:
    """pgbackrest.conf on the server is what hcbpg renders (secrets compared, never shown) with mode 0640 postgres
    (pg2 when the other server's TLS server answers, as :func:`ensure_pgbackrest_conf` writes it)."""
    version = get_version(host)
    repo_for = repo_server or server
    standby = repo_for is server and get_standby_answers(host, params, server)
    real = render_pgbackrest_conf(params, repo_for, version=version, standby=standby,
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


def get_archive_mode_written(host: "HostLike", params: "Params") -> bool:
    """True when hcbpg's archiving include file already says archive_mode = on (step 08 ran)."""
    text = host.read_text(archiving_path(params)) or ""
    return parse_settings(text).get("archive_mode", "off").strip("'") == "on"


def check_configured(host: "HostLike", params: "Params", server: "Server") -> list[Check]:
    """Step 05's checks: conf and paths, archiving settings, stanza, ``check`` ([087] expected until step 08)."""
    on = get_archive_mode_written(host, params)
    out = check_conf(host, params, server)
    out += check_archiving(host, params, server, archive_mode=on)
    status = parse_stanza_status(get_info_json(host, params), pgbackrest_params(params).stanza)
    out.append(Check.of(f"stanza {pgbackrest_params(params).stanza}", status is not None and status[0] in (0, 2),
                        status[1] if status else "not in info", server.name))
    out.append(check_stanza(host, params, server, archiving=on))
    return out


def check_archiving_started(host: "HostLike", params: "Params", server: "Server") -> list[Check]:
    """Step 08's checks on archiving: settings in force (archive_mode on) and ``pgbackrest check`` passes."""
    return (check_conf(host, params, server) + check_archiving(host, params, server, archive_mode=True)
            + [check_stanza(host, params, server, archiving=True)])
