"""PostgreSQL on a server: packages and the PGDG apt repository, the cluster, and the config
files hcbpg owns (``pg_hba.conf`` and include files in ``conf.d/``).

Config files are rendered whole by pure ``render_*`` functions (deterministic, with a
"managed by hcbpg" header), compared with what is on the host, written atomically, checked
by PostgreSQL itself (``pg_hba_file_rules``, ``pg_file_settings``) and then reloaded; the
cluster is restarted only when ``pg_settings.pending_restart`` says a setting needs it.
"""

from __future__ import annotations

import re
import shlex
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from psycopg import sql

from hcbpg.adapters.psql import Psql
from hcbpg.desired.server import (
    SETTINGS_FILES,
    hba_path,
    render_pg_hba,
    render_settings,
    settings_path,
)
from hcbpg.errors import (
    DatabaseError,
    RemoteCommandError,
    SafetyCheckFailed,
    VerificationFailed,
    WaitTimeout,
)
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.conf import MANAGED_HEADER, SettingValue, parse_settings, plan_settings
from hcbpg.pg.hba import HbaRule, plan_pg_hba

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server

PGDG_KEY = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc"
PGDG_SOURCES = "/etc/apt/sources.list.d/pgdg.sources"
PGDG_URI = "https://apt.postgresql.org/pub/repos/apt"
#: the locale a new cluster gets: always present (Ubuntu cloud images, Debian) and UTF-8
CLUSTER_LOCALE = "C.UTF-8"
APT_ENV = "DEBIAN_FRONTEND=noninteractive"

# paths -------------------------------------------------------------------------

def psql_for(host: "Host", params: "Params") -> Psql:
    return Psql(host, version=params.postgres.version, cluster=params.postgres.cluster)


# packages and the PGDG repository ---------------------------------------------

def packages(params: "Params") -> list[str]:
    """The packages a server needs, in install order (postgresql-common ships the PGDG signing key)."""
    return ["postgresql-common", f"postgresql-{params.postgres.version}", "libpq-dev", "pgbackrest"]


def parse_dpkg_query(text: str) -> dict[str, str]:
    """Installed packages from ``dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n'``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].strip() == "ii":
            out[parts[0]] = parts[2]
    return out


def get_installed_packages(host: "Host", names: Sequence[str]) -> dict[str, str]:
    """The subset of *names* that dpkg says is installed, with versions (read-only, no network)."""
    res = host.probe("dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n' "
                     + " ".join(shlex.quote(n) for n in names))
    return parse_dpkg_query(res.stdout)


def get_os_codename(host: "Host") -> str:
    """VERSION_CODENAME from /etc/os-release (bookworm, noble, ...)."""
    text = host.read_text("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RemoteCommandError(host.name, "read /etc/os-release", None,
                             "no VERSION_CODENAME in /etc/os-release",
                             hint="hcbpg supports Debian and Ubuntu servers only.")


def render_pgdg_sources(codename: str) -> str:
    """The deb822 sources file for apt.postgresql.org, signed by the key postgresql-common ships.

    This is what ``apt.postgresql.org.sh`` would write, without running a script as root.
    """
    if not re.fullmatch(r"[a-z]+", codename):
        raise ValueError(f"unexpected distribution codename {codename!r}")
    return "\n".join([
        MANAGED_HEADER,
        "# The PostgreSQL Global Development Group apt repository (https://wiki.postgresql.org/wiki/Apt).",
        "Types: deb",
        f"URIs: {PGDG_URI}",
        f"Suites: {codename}-pgdg",
        "Components: main",
        f"Signed-By: {PGDG_KEY}",
        "",
    ])


def ensure_pgdg_repo(host: "Host | None", *, dry_run: bool) -> Outcome:
    """The PGDG apt sources file exists with our content (no apt-get update here: see ensure_packages)."""
    what = f"PGDG apt repository on {host.name if host else '(new server)'}"
    if host is None:
        return Outcome(what, True, dry_run, actions=[f"write {PGDG_SOURCES} (after postgresql-common, "
                                                     "which ships the signing key)"])
    codename = get_os_codename(host)
    desired = render_pgdg_sources(codename)
    current = host.read_text(PGDG_SOURCES)
    if current == desired:
        return Outcome(what, False, dry_run)
    diff = unified_diff(current or "", desired, PGDG_SOURCES)
    if not dry_run and not host.exists(PGDG_KEY):
        raise SafetyCheckFailed(f"on {host.name}: the PGDG signing key {PGDG_KEY} is missing",
                                hint="Install postgresql-common first (ensure_packages does).")
    host.put_text(PGDG_SOURCES, desired, mode=0o644, owner="root", dry_run=dry_run)
    return Outcome(what, True, dry_run, diff=diff, actions=[f"write {PGDG_SOURCES}"])


def ensure_packages(host: "Host | None", params: "Params", *, dry_run: bool) -> list[Outcome]:
    """postgresql-common, the PGDG repository, postgresql-15, libpq-dev and pgbackrest, installing only what is missing.

    dpkg is asked first, so a host that has every package needs no network at all.
    """
    wanted = packages(params)
    name = host.name if host else "(new server)"
    if host is None:
        return [Outcome(f"packages on {name}", True, dry_run,
                        actions=["apt-get install postgresql-common (distribution repository)"]),
                ensure_pgdg_repo(None, dry_run=dry_run),
                Outcome(f"PostgreSQL packages on {name}", True, dry_run,
                        actions=[f"apt-get install {' '.join(wanted[1:])} (PGDG repository)"])]
    installed = get_installed_packages(host, wanted)
    outcomes: list[Outcome] = []

    def install(pkgs: list[str], origin: str) -> Outcome:
        o = Outcome(f"packages {', '.join(pkgs)} on {name}", True, dry_run,
                    actions=[f"apt-get install {' '.join(pkgs)} ({origin})"])
        if not dry_run:
            host.run(f"{APT_ENV} apt-get update -q", timeout=600)
            host.run(f"{APT_ENV} apt-get install -y -q --no-install-recommends "
                     + " ".join(shlex.quote(p) for p in pkgs), timeout=1800)
        return o

    if "postgresql-common" not in installed:
        outcomes.append(install(["postgresql-common"], "distribution repository, for the PGDG signing key"))
    repo = ensure_pgdg_repo(host, dry_run=dry_run)
    outcomes.append(repo)
    missing = [p for p in wanted[1:] if p not in installed]
    if missing:
        outcomes.append(install(missing, "PGDG repository"))
    else:
        outcomes.append(Outcome(f"packages {', '.join(wanted)} on {name}", False, dry_run,
                                actions=[f"{p} {installed[p]} already installed" for p in wanted]))
    return outcomes


# the cluster -------------------------------------------------------------------

def get_cluster(host: "Host", params: "Params") -> dict[str, Any] | None:
    """The cluster's entry from ``pg_lsclusters --json`` (None when it does not exist)."""
    import json
    res = host.probe("pg_lsclusters --json")
    if not res.ok:
        if "not found" in res.output or res.exit_code == 127:
            return None
        raise RemoteCommandError(host.name, "pg_lsclusters --json", res.exit_code, res.output[-2000:])
    for c in json.loads(res.stdout or "[]"):
        if int(c.get("version", 0)) == params.postgres.version and c.get("cluster") == params.postgres.cluster:
            return c
    return None


def _ctl(params: "Params", action: str) -> str:
    return f"pg_ctlcluster {params.postgres.version} {shlex.quote(params.postgres.cluster)} {action}"


def ensure_cluster_exists(host: "Host | None", params: "Params", *, dry_run: bool) -> Outcome:
    """The cluster exists (``pg_createcluster``, not started: settings are written before the first start)."""
    v, c = params.postgres.version, params.postgres.cluster
    what = f"cluster {v}/{c} on {host.name if host else '(new server)'}"
    cmd = (f"pg_createcluster --port {params.postgres.port} --locale {CLUSTER_LOCALE} "
           f"{v} {shlex.quote(c)}")
    if host is not None and get_cluster(host, params) is not None:
        return Outcome(what, False, dry_run)
    if not dry_run and host is not None:
        host.run(cmd)
    return Outcome(what, True, dry_run, actions=[cmd])


def ensure_cluster_running(host: "Host | None", params: "Params", *, dry_run: bool) -> Outcome:
    """The cluster is running (``pg_ctlcluster ... start``; systemd units are not assumed)."""
    v, c = params.postgres.version, params.postgres.cluster
    what = f"cluster {v}/{c} running on {host.name if host else '(new server)'}"
    cluster = get_cluster(host, params) if host is not None else None
    if cluster is not None and cluster.get("running"):
        return Outcome(what, False, dry_run)
    if host is not None and not dry_run:
        if cluster is None:
            raise SafetyCheckFailed(f"on {host.name}: cluster {v}/{c} does not exist",
                                    hint="ensure_cluster_exists creates it.")
        log = cluster.get("logfile") or f"/var/log/postgresql/postgresql-{v}-{c}.log"
        try:
            host.run(_ctl(params, "start"), timeout=180)
        except RemoteCommandError as exc:
            tail = host.probe(f"tail -n 20 {shlex.quote(log)}").stdout
            exc.output_tail += "\n" + tail
            raise RemoteCommandError(host.name, exc.command, exc.exit_status, exc.output_tail,
                                     hint=f"The server log is {log}.") from exc
    return Outcome(what, True, dry_run, actions=[_ctl(params, "start")])


def get_cluster_running(host: "Host | None", params: "Params") -> bool:
    if host is None:
        return False
    cluster = get_cluster(host, params)
    return bool(cluster and cluster.get("running"))


# settings (conf.d include files) -------------------------------------------------

def _conf_load_time(psql: Psql) -> str:
    return str(psql.value("SELECT pg_conf_load_time()::text AS t"))


def reload(host: "Host", params: "Params", *, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Reload the cluster's config and wait until the postmaster has read it (pg_conf_load_time moves)."""
    psql = psql_for(host, params)
    before = _conf_load_time(psql)
    host.run(_ctl(params, "reload"))
    deadline = time.monotonic() + timeout
    while _conf_load_time(psql) == before:
        if time.monotonic() > deadline:
            raise WaitTimeout(f"on {host.name}: the config reload was not picked up within {timeout:.0f}s",
                              hint="Look at the server log under /var/log/postgresql/.")
        sleep(0.1)


def restart(host: "Host", params: "Params") -> None:
    host.run(_ctl(params, "restart"), timeout=300)


def get_pending_restart(psql: Psql, names: Iterable[str] | None = None) -> list[str]:
    """Settings the running server has read but can only apply after a restart."""
    rows = psql.query("SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
    pending = [r["name"] for r in rows]
    if names is None:
        return pending
    wanted = set(names)
    return [n for n in pending if n in wanted]


def get_restart_contexts(psql: Psql, names: Iterable[str]) -> list[str]:
    """Which of *names* can only change with a restart (context = postmaster)."""
    rows = psql.query(sql.SQL("SELECT name FROM pg_settings WHERE context = 'postmaster' AND name = ANY({}) "
                              "ORDER BY name").format(sql.Literal(list(names))))
    return [r["name"] for r in rows]


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
    file_kw = dict(mode=0o644, owner="postgres", group="postgres")
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


# pg_hba.conf -------------------------------------------------------------------

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
    file_kw = dict(mode=0o640, owner="postgres", group="postgres")
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


def check_psql_as_postgres(host: "Host", params: "Params") -> Check:
    """psql works as the postgres OS user (peer authentication over the socket)."""
    try:
        version = psql_for(host, params).value("SELECT current_setting('server_version') AS v")
        return Check("psql as postgres", "pass", f"PostgreSQL {version}", host.name)
    except DatabaseError as exc:
        return Check("psql as postgres", "fail", exc.message.splitlines()[-1].strip(), host.name)


def check_server(host: "Host", params: "Params", server: "Server") -> list[Check]:
    """Step 02's checks: packages, cluster running, cluster_name, psql as postgres."""
    installed = get_installed_packages(host, packages(params))
    out = [Check.of(f"package {p}", p in installed, installed.get(p, "not installed"), server.name)
           for p in packages(params)]
    cluster = get_cluster(host, params)
    running = bool(cluster and cluster.get("running"))
    out.append(Check.of(f"cluster {params.postgres.version}/{params.postgres.cluster} running", running,
                        f"port {cluster.get('port')}" if cluster else "no cluster", server.name))
    if running:
        out.append(Check.of("cluster port", str(cluster.get("port")) == str(params.postgres.port),
                            f"port {cluster.get('port')} (params say {params.postgres.port})", server.name))
        out.append(check_psql_as_postgres(host, params))
        out += check_settings(host, params, server, "identity")
    return out


def require(checks: Sequence[Check], what: str) -> None:
    """Raise VerificationFailed when a check failed (for library callers without a notebook)."""
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise VerificationFailed(f"{what}: " + "; ".join(f"{c.name} on {c.target}: {c.detail}" for c in failed),
                                 failures=[c.name for c in failed])


# what steps 02 and 03 do on one server ---------------------------------------------------

def install_server(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> list[Outcome]:
    """Step 02 on one server: packages (only what is missing), cluster, cluster_name, running.

    cluster_name is written before the first start, so a fresh cluster needs no restart.
    """
    outcomes = ensure_packages(host, params, dry_run=dry_run)
    outcomes.append(ensure_cluster_exists(host, params, dry_run=dry_run))
    outcomes.append(ensure_settings(host, params, server, "identity", dry_run=dry_run))
    outcomes.append(ensure_cluster_running(host, params, dry_run=dry_run))
    return outcomes


def allow_connections(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool,
                      extra_settings: Mapping[str, SettingValue] | None = None,
                      extra_rules: Sequence[HbaRule] = ()) -> list[Outcome]:
    """Step 03 on one server: pg_hba.conf first (so the new listener never meets the old rules), then settings."""
    if host is not None and not dry_run and not get_cluster_running(host, params):
        raise SafetyCheckFailed(f"on {server.name}: cluster {params.postgres.version}/{params.postgres.cluster} "
                                "is not running", hint="Run step 02 (install PostgreSQL) first.")
    return [ensure_pg_hba(host, params, server, dry_run=dry_run, extra=extra_rules),
            ensure_settings(host, params, server, "connections", dry_run=dry_run, extra=extra_settings)]


def check_connections(host: "Host", params: "Params", server: "Server", app: "Host | None" = None) -> list[Check]:
    """Step 03's checks: settings in force, pg_hba ours and loaded, and the port open from the app host."""
    out = check_settings(host, params, server, "connections") + check_pg_hba(host, params, server)
    if app is not None:
        port = params.postgres.port
        res = app.probe(f"timeout 5 bash -c '</dev/tcp/{server.private_ip}/{port}'")
        out.append(Check.of(f"port {port} open from {app.name}", res.ok,
                            f"{server.private_ip}:{port} accepts TCP" if res.ok else
                            f"{server.private_ip}:{port} does not accept TCP (exit {res.exit_code})", server.name))
    return out


def get_server_facts(host: "Host", params: "Params") -> dict[str, Any]:
    """Non-secret facts about a server's PostgreSQL, for the step's record."""
    cluster = get_cluster(host, params) or {}
    installed = get_installed_packages(host, packages(params))
    facts: dict[str, Any] = {"packages": installed, "cluster": f"{params.postgres.version}/{params.postgres.cluster}",
                             "running": bool(cluster.get("running")), "port": cluster.get("port"),
                             "data_directory": cluster.get("pgdata")}
    if cluster.get("running"):
        facts["server_version"] = psql_for(host, params).value("SELECT current_setting('server_version') AS v")
    return facts


def show_plan(outcomes: Sequence[Outcome]) -> int:
    """Print a plan (each outcome with its actions and diff) and a summary table; returns how many change."""
    from hcbpg.display import show_table
    for o in outcomes:
        if o.changed:
            print(str(o))
            print()
    show_table([{"what": o.what, "change": o.verb if o.changed else "unchanged",
                 "actions": "; ".join(o.actions) if o.changed else ""} for o in outcomes])
    return sum(1 for o in outcomes if o.changed)
