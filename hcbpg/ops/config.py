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
    VerificationFailed,
)
from hcbpg.ops.cluster import (
    get_cluster_running,
    get_pending_restart,
    get_restart_contexts,
    psql_for,
    reload,
    restart,
)
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.conf import SettingValue, parse_settings, plan_settings
from hcbpg.pg.hba import HbaRule, plan_pg_hba

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server


def _restore(host: "Host", path: str, previous: str | None, **file_kw: Any) -> None:
    if previous is None:
        host.run(f"rm -f {shlex.quote(path)}")
    else:
        host.put_text(path, previous, **file_kw)


def ensure_settings(host: "Host | None", params: "Params", server: "Server", part: str, *, dry_run: bool,
                    extra: Mapping[str, SettingValue] | None = None) -> Outcome:
    """The conf.d include file *part* has our settings, and they are in force (reload; restart only when pending_restart).

    When the cluster is not running yet the file is only written; the first start reads it.
    """
    return apply_settings_file(host, params, server, settings_path(params, part),
                               render_settings(params, server, part, extra=extra),
                               what=f"settings {SETTINGS_FILES[part]} on {server.name}", dry_run=dry_run)


def apply_settings_file(host: "Host | None", params: "Params", server: "Server", path: str, desired: str, *,
                        what: str, dry_run: bool, own_pending_only: bool = False) -> Outcome:
    """Write the include file *path* whole as *desired* and put it in force.

    Written only when it differs; then PostgreSQL must accept it (``pg_file_settings`` shows no
    error, else the previous version goes back) and read it (an active ``include_dir``); then a
    reload, and a restart only when ``pending_restart`` says so.  Pending restarts count for any
    setting (one removed from a file goes back to its default, which may need a restart too,
    possibly since an earlier, interrupted run), or with *own_pending_only* for this file's only.
    A dry run says what it would do.  *host* None: the server does not exist yet.
    """
    file_kw: dict[str, Any] = dict(mode=0o644, owner="postgres", group="postgres")
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", desired, path), actions=[f"write {path}"])
    current = host.read_text(path)
    running = get_cluster_running(host, params)
    psql = psql_for(host, params)
    names = list(parse_settings(desired))
    pending_of = names if own_pending_only else None
    actions: list[str] = []
    changed_names = list(plan_settings(current, desired))
    if current != desired:
        actions.append(f"write {path}" + (f" ({', '.join(changed_names)})" if changed_names else ""))
    if dry_run:
        if current != desired:
            if running:
                needs = get_restart_contexts(psql, changed_names)
                actions.append(f"restart the cluster ({', '.join(needs)} need it)" if needs else "reload")
            else:
                actions.append("(cluster not running: read at its first start)")
        elif running and get_pending_restart(psql, pending_of):
            actions.append(f"restart the cluster ({', '.join(get_pending_restart(psql, pending_of))} pending)")
        return Outcome(what, bool(actions), dry_run, diff=unified_diff(current or "", desired, path),
                       actions=actions)
    if current != desired:
        host.put_text(path, desired, **file_kw)
        if running:
            errors = psql.query(sql.SQL("SELECT sourceline, name, error FROM pg_file_settings "
                                        "WHERE sourcefile = {} AND error IS NOT NULL "
                                        # a changed postmaster-level setting reports this until the restart
                                        "AND error <> 'setting could not be applied'").format(sql.Literal(path)))
            if errors:
                _restore(host, path, current, **file_kw)
                raise DatabaseError(
                    f"on {server.name}: PostgreSQL rejects {path}, so the previous version was put back: "
                    + "; ".join(f"line {e['sourceline']} {e['name']}: {e['error']}" for e in errors),
                    hint="Fix the settings in params (or the value hcbpg renders) and run the step again.")
            seen = psql.value(sql.SQL("SELECT count(*) AS n FROM pg_file_settings WHERE sourcefile = {}")
                              .format(sql.Literal(path)))
            if not seen and names:
                _restore(host, path, current, **file_kw)
                raise SafetyCheckFailed(
                    f"on {server.name}: PostgreSQL does not read {path}: postgresql.conf has no active "
                    "include_dir = 'conf.d'",
                    hint="Debian's postgresql.conf ends with include_dir = 'conf.d'; put it back.")
    if running:
        if current != desired:
            reload(host, params)
            actions.append("reload")
        pending = get_pending_restart(psql, pending_of)
        if pending:
            restart(host, params)
            actions.append(f"restart the cluster ({', '.join(pending)} need it)")
    return Outcome(what, bool(actions), dry_run, diff=unified_diff(current or "", desired, path), actions=actions)


def check_settings(host: "Host", params: "Params", server: "Server", part: str,
                   extra: Mapping[str, SettingValue] | None = None) -> list[Check]:
    """One row per setting of *part*: in force, from our file, no restart pending."""
    path = settings_path(params, part)
    desired = parse_settings(render_settings(params, server, part, extra=extra))
    psql = psql_for(host, params)
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


def ensure_pg_hba(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool,
                  extra: Sequence[HbaRule] = ()) -> Outcome:
    """pg_hba.conf is exactly ours, PostgreSQL accepts it (pg_hba_file_rules) and it is loaded (reload)."""
    path = hba_path(params)
    what = f"pg_hba.conf on {server.name}"
    desired = render_pg_hba(params, server, extra=extra)
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", desired, path), actions=[f"write {path}", "reload"])
    current = host.read_text(path)
    running = get_cluster_running(host, params)
    added, removed = plan_pg_hba(current, desired)
    actions = [f"add rule: {r.render()}" for r in added] + [f"remove rule: {r.render()}" for r in removed]
    diff = unified_diff(current or "", desired, path)
    if current == desired:
        return Outcome(what, False, dry_run)
    actions.append(f"write {path}")
    if running:
        actions.append("reload")
    if dry_run:
        return Outcome(what, True, dry_run, diff=diff, actions=actions)
    file_kw: dict[str, Any] = dict(mode=0o640, owner="postgres", group="postgres")
    host.put_text(path, desired, **file_kw)
    if running:
        psql = psql_for(host, params)
        errors = psql.query("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL")
        if errors:
            _restore(host, path, current, **file_kw)
            raise DatabaseError(
                f"on {server.name}: PostgreSQL rejects the new {path}, so the previous version was put back: "
                + "; ".join(f"line {e['line_number']}: {e['error']}" for e in errors))
        reload(host, params)
    return Outcome(what, True, dry_run, diff=diff, actions=actions)


def check_pg_hba(host: "Host", params: "Params", server: "Server", *, extra: Sequence[HbaRule] = ()) -> list[Check]:
    """pg_hba.conf on disk is ours, has no errors and was loaded after it was last written."""
    path = hba_path(params)
    desired = render_pg_hba(params, server, extra=extra)
    current = host.read_text(path)
    psql = psql_for(host, params)
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


def require(checks: Sequence[Check], what: str) -> None:
    """Raise VerificationFailed when a check failed (for library callers without a notebook)."""
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise VerificationFailed(f"{what}: " + "; ".join(f"{c.name} on {c.target}: {c.detail}" for c in failed),
                                 failures=[c.name for c in failed])
