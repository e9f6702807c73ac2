"""The PostgreSQL cluster on a server (Debian's pg_createcluster/pg_ctlcluster): create it,
start it, reload or restart it, and read what it says about itself."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.psql import Psql
from hcbpg.errors import (
    DatabaseError,
    RemoteCommandError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops.packages import get_installed_packages, packages
from hcbpg.outcome import Check, Outcome
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params


#: the locale a new cluster gets: always present (Ubuntu cloud images, Debian) and UTF-8
CLUSTER_LOCALE = "C.UTF-8"


def psql_for(host: "Host", params: "Params") -> Psql:
    return Psql(host, version=params.postgres.version, cluster=params.postgres.cluster)


def get_cluster(host: "Host", params: "Params") -> dict[str, Any] | None:
    """The cluster's entry from ``pg_lsclusters --json`` (None when it does not exist)."""
    res = host.probe("pg_lsclusters --json")
    if not res.ok:
        if "not found" in res.output or res.exit_code == 127:
            return None
        raise RemoteCommandError(host.name, "pg_lsclusters --json", res.exit_code, res.output)
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
    # data checksums at initdb: a torn or bit-flipped page is reported instead of read as data
    cmd = (f"pg_createcluster --port {params.postgres.port} --locale {CLUSTER_LOCALE} "
           f"{v} {shlex.quote(c)} -- --data-checksums")
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


def _conf_load_time(psql: Psql) -> str:
    return str(psql.value("SELECT pg_conf_load_time()::text AS t"))


def reload(host: "Host", params: "Params", *, timeout: float = 30.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """Reload the cluster's config and wait until the postmaster has read it (pg_conf_load_time moves)."""
    psql = psql_for(host, params)
    before = _conf_load_time(psql)
    host.run(_ctl(params, "reload"))
    for _ in polling_loop(timeout, interval=0.1, sleep=sleep):
        if _conf_load_time(psql) != before:
            return
    raise WaitTimeout(f"on {host.name}: the config reload was not picked up within {timeout:.0f}s",
                      what="the config reload", timeout=timeout, last=before,
                      hint="Look at the server log under /var/log/postgresql/.")


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


def check_data_checksums(host: "Host", params: "Params") -> Check:
    """Data checksums are on (new clusters get them at initdb; the replica inherits the primary's).

    An existing cluster without them is a warning that says how to enable them offline.
    """
    on = psql_for(host, params).value("SELECT current_setting('data_checksums') AS v") == "on"
    cluster = get_cluster(host, params) or {}
    pgdata = cluster.get("pgdata") or f"/var/lib/postgresql/{params.postgres.version}/{params.postgres.cluster}"
    v, c = params.postgres.version, params.postgres.cluster
    how = (f"this cluster was created without them; to enable them offline (the server is down for a "
           f"read of every page): pg_ctlcluster {v} {c} stop && sudo -u postgres "
           f"/usr/lib/postgresql/{v}/bin/pg_checksums --enable --progress -D {pgdata} && "
           f"pg_ctlcluster {v} {c} start (on the primary, then rebuild the replica with step 10)")
    return Check("data checksums", "pass" if on else "warn", "on (initdb --data-checksums)" if on else how,
                 host.name)


def check_psql_as_postgres(host: "Host", params: "Params") -> Check:
    """psql works as the postgres OS user (peer authentication over the socket)."""
    try:
        version = psql_for(host, params).value("SELECT current_setting('server_version') AS v")
        return Check("psql as postgres", "pass", f"PostgreSQL {version}", host.name)
    except DatabaseError as exc:
        return Check("psql as postgres", "fail", exc.message.splitlines()[-1].strip(), host.name)


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
