"""The PostgreSQL cluster on a server (Debian's pg_createcluster/pg_ctlcluster, through
:class:`~hcbpg.adapters.cluster.ClusterControl`): create it, start it, reload or restart it, and read
what it says about itself."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.dryrun import AbsentHost as _Absent
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired.packages import packages
from hcbpg.desired.services import patroni_service
from hcbpg.errors import (
    DatabaseError,
    RemoteCommandError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check, Outcome
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params

__all__ = ["check_data_checksums", "check_psql_as_postgres", "ensure_cluster_exists",
           "ensure_cluster_running", "get_cluster", "get_cluster_running", "get_pending_restart", "get_psql",
           "get_patroni_managed", "get_restart_contexts", "get_server_facts", "run_reload", "run_restart"]


def get_psql(host: "HostLike", params: "Params") -> "PsqlLike":
    """psql as the postgres OS user on the cluster params describe."""
    return ClusterControl.of(host, params).psql()


def get_cluster(host: "HostLike", params: "Params") -> dict[str, Any] | None:
    """The cluster's entry from ``pg_lsclusters --json`` (None when it does not exist)."""
    return ClusterControl.of(host, params).get()


def get_patroni_managed(host: "HostLike", params: "Params") -> bool:
    """Whether Patroni runs for this cluster on *host* (replication.manager patroni and its daemon up): then only
    Patroni starts, stops and restarts PostgreSQL (pg_ctlcluster's would be undone, or race its own)."""
    if params.replication is None or params.replication.manager != "patroni" or isinstance(host, _Absent):
        return False
    return ServiceControl.of(host).get_status(patroni_service(params)).running


def _refuse_under_patroni(host: "HostLike", params: "Params", action: str) -> None:
    if get_patroni_managed(host, params):
        raise SafetyCheckFailed(
            f"on {host.name}: Patroni manages cluster {params.postgres.version}/{params.postgres.cluster}; "
            f"hcbpg does not {action} it with pg_ctlcluster (Patroni would undo it or race it)", target=host.name,
            hint="A restart goes through Patroni (POST /restart: steps do it themselves); to work on a member, pause "
                 "Patroni first (step 11b, -p mode=pause). Nothing was changed.")


def ensure_cluster_exists(host: "HostLike", params: "Params") -> Outcome:
    """The cluster exists (``pg_createcluster``, not started: settings are written before the first start)."""
    cluster = ClusterControl.of(host, params)
    seen = Changes(host)
    if cluster.get() is None:
        cluster.create()
    return seen.outcome(f"cluster {cluster.version}/{cluster.name} on {host.name}")


def ensure_cluster_running(host: "HostLike", params: "Params") -> Outcome:
    """The cluster is running (``pg_ctlcluster ... start``; systemd units are not assumed).

    Refused when the cluster does not exist, unless this run (a dry run) would have created it.
    """
    control = ClusterControl.of(host, params)
    v, c = control.version, control.name
    seen = Changes(host)
    cluster = control.get()
    if cluster is not None and cluster.get("running"):
        return seen.outcome(f"cluster {v}/{c} running on {host.name}")
    # dry run: pg_createcluster was recorded, not run, so the cluster a dry run would start is not seen
    if cluster is None and not (host.dry_run and control.create_command() in host.journal):
        raise SafetyCheckFailed(f"on {host.name}: cluster {v}/{c} does not exist",
                                hint="ensure_cluster_exists creates it.")
    log = (cluster or {}).get("logfile") or f"/var/log/postgresql/postgresql-{v}-{c}.log"
    _refuse_under_patroni(host, params, "start")
    try:
        control.start()
    except RemoteCommandError as exc:
        tail = host.probe(f"tail -n 20 {shlex.quote(log)}").stdout
        raise RemoteCommandError(host.name, exc.command, exc.exit_status, exc.output_tail + "\n" + tail,
                                 hint=f"The server log is {log}.") from exc
    return seen.outcome(f"cluster {v}/{c} running on {host.name}")


def get_cluster_running(host: "HostLike", params: "Params") -> bool:
    """Whether the cluster exists and runs (False on a server not there yet)."""
    return ClusterControl.of(host, params).running()


def _conf_load_time(psql: "PsqlLike") -> str:
    return str(psql.value("SELECT pg_conf_load_time()::text AS t"))


def run_reload(host: "HostLike", params: "Params", *, timeout: float = 30.0,
               sleep: Callable[[float], None] = time.sleep) -> None:
    """Reload the cluster's config and wait until the postmaster has read it (pg_conf_load_time moves).

    On a dry run the reload is only recorded: there is nothing to wait for."""
    control = ClusterControl.of(host, params)
    psql = control.psql()
    before = _conf_load_time(psql)
    control.reload()
    if host.dry_run:  # dry run: nothing reloaded, so pg_conf_load_time never moves
        return
    for _ in polling_loop(timeout, interval=0.1, sleep=sleep):
        if _conf_load_time(psql) != before:
            return
    raise WaitTimeout(f"on {host.name}: the config reload was not picked up within {timeout:.0f}s",
                      what="the config reload", timeout=timeout, last=before,
                      hint="Look at the server log under /var/log/postgresql/.")


def run_restart(host: "HostLike", params: "Params") -> None:
    """Restart the cluster (``pg_ctlcluster ... restart``); refused where Patroni runs it (its restart:
    :func:`hcbpg.ops.patroni.run_cluster_restart`)."""
    _refuse_under_patroni(host, params, "restart")
    ClusterControl.of(host, params).restart()


def get_pending_restart(psql: "PsqlLike", names: Iterable[str] | None = None) -> list[str]:
    """Settings the running server has read but can only apply after a restart."""
    rows = psql.query("SELECT name FROM pg_settings WHERE pending_restart ORDER BY name")
    pending = [r["name"] for r in rows]
    if names is None:
        return pending
    wanted = set(names)
    return [n for n in pending if n in wanted]


def get_restart_contexts(psql: "PsqlLike", names: Iterable[str]) -> list[str]:
    """Which of *names* can only change with a restart (context = postmaster)."""
    rows = psql.query(sql.SQL("SELECT name FROM pg_settings WHERE context = 'postmaster' AND name = ANY({}) "
                              "ORDER BY name").format(sql.Literal(list(names))))
    return [r["name"] for r in rows]


def check_data_checksums(host: "HostLike", params: "Params") -> Check:
    """Data checksums are on (new clusters get them at initdb; the replica inherits the primary's).

    An existing cluster without them is a warning that says how to enable them offline.
    """
    control = ClusterControl.of(host, params)
    on = control.psql().value("SELECT current_setting('data_checksums') AS v") == "on"
    cluster = control.get() or {}
    v, c = control.version, control.name
    pgdata = cluster.get("pgdata") or f"/var/lib/postgresql/{v}/{c}"
    how = (f"this cluster was created without them; to enable them offline (the server is down for a "
           f"read of every page): {control.command('stop')} && sudo -u postgres "
           f"/usr/lib/postgresql/{v}/bin/pg_checksums --enable --progress -D {pgdata} && "
           f"{control.command('start')} (on the primary, then rebuild the replica with step 10)")
    return Check("data checksums", "pass" if on else "warn", "on (initdb --data-checksums)" if on else how,
                 host.name)


def check_psql_as_postgres(host: "HostLike", params: "Params") -> Check:
    """psql works as the postgres OS user (peer authentication over the socket)."""
    try:
        version = get_psql(host, params).value("SELECT current_setting('server_version') AS v")
        return Check("psql as postgres", "pass", f"PostgreSQL {version}", host.name)
    except DatabaseError as exc:
        return Check("psql as postgres", "fail", exc.message.splitlines()[-1].strip(), host.name)


def get_server_facts(host: "HostLike", params: "Params") -> dict[str, Any]:
    """Non-secret facts about a server's PostgreSQL, for the step's record."""
    cluster = get_cluster(host, params) or {}
    installed = get_installed_packages(host, packages(params))
    facts: dict[str, Any] = {"packages": installed, "cluster": f"{params.postgres.version}/{params.postgres.cluster}",
                             "running": bool(cluster.get("running")), "port": cluster.get("port"),
                             "data_directory": cluster.get("pgdata")}
    if cluster.get("running"):
        facts["server_version"] = get_psql(host, params).value("SELECT current_setting('server_version') AS v")
    return facts
