"""The config files hcbpg owns on a server: conf.d include files and pg_hba.conf.

Rendered whole by :mod:`hcbpg.desired.server`, compared with what is on the host, written
atomically, checked by PostgreSQL itself (``pg_hba_file_rules``, ``pg_file_settings``) and
then reloaded; the cluster is restarted only when ``pg_settings.pending_restart`` says a
setting needs it (and the previous file is put back when PostgreSQL rejects the new one)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.base import Changes
from hcbpg.desired.server import (
    SETTINGS_FILES,
    hba_path,
    render_pg_hba,
    render_settings,
    settings_path,
)
from hcbpg.errors import (
    DatabaseError,
    SafetyCheckFailed,
)
from hcbpg.ops.cluster import (
    get_cluster_running,
    get_pending_restart,
    get_psql,
    get_restart_contexts,
    run_reload,
)
from hcbpg.ops.patroni import run_cluster_restart
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.conf import SettingValue, parse_settings, plan_settings
from hcbpg.pg.hba import HbaRule, plan_pg_hba

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params, Server


def _restore(host: "HostLike", path: str, previous: str | None, **file_kw: Any) -> None:
    if previous is None:
        host.run(f"rm -f {shlex.quote(path)}")
    else:
        host.put_text(path, previous, **file_kw)


def ensure_settings(host: "HostLike", params: "Params", server: "Server", part: str, *,
                    extra: Mapping[str, SettingValue] | None = None) -> Outcome:
    """The conf.d include file *part* has our settings, and they are in force (reload; restart only when pending_restart).

    When the cluster is not running yet the file is only written; the first start reads it.
    """
    return ensure_settings_file(host, params, server, settings_path(params, part),
                               render_settings(params, server, part, extra=extra),
                               what=f"settings {SETTINGS_FILES[part]} on {server.name}")


def ensure_settings_file(host: "HostLike", params: "Params", server: "Server", path: str, desired: str, *,
                        what: str, own_pending_only: bool = False, restart: bool = True) -> Outcome:
    """Write the include file *path* whole as *desired* and put it in force.

    Written only when it differs; then PostgreSQL must accept it (``pg_file_settings`` shows no
    error, else the previous version goes back) and read it (an active ``include_dir``); then a
    reload, and a restart only when ``pending_restart`` says so.  Pending restarts count for any
    setting (one removed from a file goes back to its default, which may need a restart too,
    possibly since an earlier, interrupted run), or with *own_pending_only* for this file's only.
    With *restart* false a pending restart is named but left to the caller (a cluster about to be stopped
    and rebuilt: its next start reads the file; a later run of this function restarts it if still pending).
    """
    file_kw: dict[str, Any] = dict(mode=0o644, owner="postgres", group="postgres")
    seen = Changes(host)
    current = host.read_text(path)
    running = get_cluster_running(host, params)
    psql = get_psql(host, params)
    names = list(parse_settings(desired))
    pending_of = names if own_pending_only else None
    actions: list[str] = []
    changed_names = list(plan_settings(current, desired))
    if current != desired:
        actions.append(f"write {path}" + (f" ({', '.join(changed_names)})" if changed_names else ""))
        host.put_text(path, desired, **file_kw)
        if running and not host.dry_run:  # dry run: PostgreSQL cannot judge a file that was not written
            _judge_settings_file(host, psql, server, path, current, names, file_kw)
        elif not running:
            actions.append("(cluster not running: read at its first start)")
    if running:
        if current != desired:
            run_reload(host, params)
            actions.append("reload")
        pending = get_pending_restart(psql, pending_of)
        if host.dry_run and current != desired:
            # dry run: the server has not read the new file, so pending_restart cannot say; the settings' context does
            pending = sorted(set(pending) | set(get_restart_contexts(psql, changed_names)))
        if pending and not restart:
            actions.append(f"restart left to the caller ({', '.join(pending)} need it)")
        elif pending:
            run_cluster_restart(host, params)
            actions.append(f"restart the cluster ({', '.join(pending)} need it)")
    return seen.outcome(what, diff=unified_diff(current or "", desired, path), actions=actions)


def _judge_settings_file(host: "HostLike", psql: "PsqlLike", server: "Server", path: str, previous: str | None,
                         names: list[str], file_kw: dict[str, Any]) -> None:
    """PostgreSQL accepts the file just written at *path* and reads it; else *previous* goes back, and an error."""
    errors = psql.query(sql.SQL("SELECT sourceline, name, error FROM pg_file_settings "
                                "WHERE sourcefile = {} AND error IS NOT NULL "
                                # a changed postmaster-level setting reports this until the restart
                                "AND error <> 'setting could not be applied'").format(sql.Literal(path)))
    if errors:
        _restore(host, path, previous, **file_kw)
        raise DatabaseError(
            f"on {server.name}: PostgreSQL rejects {path}, so the previous version was put back: "
            + "; ".join(f"line {e['sourceline']} {e['name']}: {e['error']}" for e in errors),
            hint="Fix the settings in params (or the value hcbpg renders) and run the step again.")
    seen = psql.value(sql.SQL("SELECT count(*) AS n FROM pg_file_settings WHERE sourcefile = {}")
                      .format(sql.Literal(path)))
    if not seen and names:
        _restore(host, path, previous, **file_kw)
        raise SafetyCheckFailed(
            f"on {server.name}: PostgreSQL does not read {path}: postgresql.conf has no active "
            "include_dir = 'conf.d'",
            hint="Debian's postgresql.conf ends with include_dir = 'conf.d'; put it back.")


def check_settings(host: "HostLike", params: "Params", server: "Server", part: str,
                   extra: Mapping[str, SettingValue] | None = None) -> list[Check]:
    """One row per setting of *part*: in force, from our file, no restart pending."""
    path = settings_path(params, part)
    desired = parse_settings(render_settings(params, server, part, extra=extra))
    psql = get_psql(host, params)
    rows = {r["name"]: r for r in psql.query(
        sql.SQL("SELECT name, setting, sourcefile, pending_restart FROM pg_settings WHERE name = ANY({})")
        .format(sql.Literal(list(desired))))}
    out = []
    for name, written in desired.items():
        r = rows.get(name)
        if r is None:
            out.append(Check(f"setting {name}", "fail", "unknown to this server", server.name))
            continue
        ok = r["sourcefile"] == path and not r["pending_restart"]
        detail = f"{name} = {r['setting']!s}"
        if r["sourcefile"] != path:
            detail += f" (from {r['sourcefile'] or 'default'}, expected {path}: wanted {written})"
        if r["pending_restart"]:
            detail += " (restart pending)"
        out.append(Check.of(f"setting {name}", ok, detail, server.name))
    return out


def ensure_pg_hba(host: "HostLike", params: "Params", server: "Server", *,
                  extra: Sequence[HbaRule] = ()) -> Outcome:
    """pg_hba.conf is exactly ours, PostgreSQL accepts it (pg_hba_file_rules) and it is loaded (reload)."""
    path = hba_path(params)
    desired = render_pg_hba(params, server, extra=extra)
    seen = Changes(host)
    current = host.read_text(path)
    if current == desired:
        return seen.outcome(f"pg_hba.conf on {server.name}")
    running = get_cluster_running(host, params)
    added, removed = plan_pg_hba(current, desired)
    actions = [f"add rule: {r.render()}" for r in added] + [f"remove rule: {r.render()}" for r in removed]
    actions.append(f"write {path}")
    file_kw: dict[str, Any] = dict(mode=0o640, owner="postgres", group="postgres")
    host.put_text(path, desired, **file_kw)
    if running:
        actions.append("reload")
        if not host.dry_run:  # dry run: PostgreSQL cannot judge a file that was not written
            errors = get_psql(host, params).query(
                "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")
            if errors:
                _restore(host, path, current, **file_kw)
                raise DatabaseError(
                    f"on {server.name}: PostgreSQL rejects the new {path}, so the previous version was put back: "
                    + "; ".join(f"line {e['line_number']}: {e['error']}" for e in errors))
        run_reload(host, params)
    return seen.outcome(f"pg_hba.conf on {server.name}", diff=unified_diff(current or "", desired, path),
                        actions=actions)


def check_pg_hba(host: "HostLike", params: "Params", server: "Server", *, extra: Sequence[HbaRule] = ()) -> list[Check]:
    """pg_hba.conf on disk is ours, has no errors and was loaded after it was last written."""
    path = hba_path(params)
    desired = render_pg_hba(params, server, extra=extra)
    current = host.read_text(path)
    psql = get_psql(host, params)
    rows = psql.query(sql.SQL(
        "SELECT (SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL) AS errors, "
        "(SELECT count(*) FROM pg_hba_file_rules WHERE auth_method IN ('trust', 'md5', 'password')) AS weak, "
        "pg_conf_load_time() >= (pg_stat_file({})).modification AS loaded, "
        "current_setting('hba_file') AS hba_file").format(sql.Literal(path)))[0]
    return [
        Check.of("pg_hba.conf is hcbpg's", current == desired,
                 "matches the rendered file" if current == desired else "differs from the rendered file", server.name),
        Check.of("pg_hba.conf in use", rows["hba_file"] == path, f"hba_file = {rows['hba_file']}", server.name),
        Check.of("pg_hba.conf has no errors", rows["errors"] == 0, f"{rows['errors']} error line(s)", server.name),
        Check.of("no trust/md5/password rules", rows["weak"] == 0, f"{rows['weak']} weak rule(s)", server.name),
        Check.of("pg_hba.conf loaded", bool(rows["loaded"]),
                 "reloaded after the last write" if rows["loaded"] else "written after the last reload", server.name),
    ]

