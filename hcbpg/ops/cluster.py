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
from hcbpg.desired.replication import bin_path
from hcbpg.desired.services import patroni_service
from hcbpg.errors import (
    DatabaseError,
    RemoteCommandError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.checksums import (
    CLUSTER_CONTENTS_SQL,
    DATABASE_OBJECTS_SQL,
    ClusterContents,
    checksum_enable_estimate,
    parse_checksums_on,
)
from hcbpg.pg.cluster import drop_command
from hcbpg.pg.controldata import parse_controldata
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params

__all__ = ["check_data_checksums", "check_psql_as_postgres", "ensure_cluster_exists",
           "ensure_cluster_running", "get_cluster", "get_cluster_contents", "get_cluster_running",
           "get_data_checksums", "get_pending_restart", "get_psql",
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


def _pgdata(control: ClusterControl, cluster: dict[str, Any] | None) -> str:
    return str((cluster or {}).get("pgdata") or f"/var/lib/postgresql/{control.version}/{control.name}")


def get_data_checksums(host: "HostLike", params: "Params") -> bool | None:
    """Whether the cluster's data directory has data checksums (``pg_controldata``: stopped or running); None when
    there is no cluster or pg_controldata does not say."""
    control = ClusterControl.of(host, params)
    cluster = control.get()
    if cluster is None:
        return None
    res = host.probe(f"LC_ALL=C {bin_path(params, 'pg_controldata')} -D {shlex.quote(_pgdata(control, cluster))}")
    return parse_checksums_on(parse_controldata(res.stdout)) if res.ok else None


def get_cluster_contents(host: "HostLike", params: "Params") -> ClusterContents:
    """What the running cluster holds beyond what initdb made (:mod:`hcbpg.pg.checksums`: "holds nothing")."""
    psql = get_psql(host, params)
    rows = psql.query(CLUSTER_CONTENTS_SQL)
    cluster = rows[0] if rows else {}
    objects = {db: psql.query(DATABASE_OBJECTS_SQL, dbname=db) for db in cluster.get("connectable") or []}
    return ClusterContents.from_rows(cluster, objects)


def _enable_checksums_how(control: ClusterControl, pgdata: str) -> str:
    v = control.version
    return (f"{control.command('stop')} && sudo -u postgres /usr/lib/postgresql/{v}/bin/pg_checksums --enable "
            f"--progress -D {pgdata} && {control.command('start')} (on the primary, then rebuild the replica with "
            "step 10)")


def ensure_cluster_exists(host: "HostLike", params: "Params") -> Outcome:
    """The cluster exists with data checksums (``pg_createcluster``, not started: settings are written before the
    first start).

    One that exists without checksums (the automatic ``15/main`` of a postgresql-15 installed before hcbpg's
    createcluster.d drop-in) is dropped and created again when it holds nothing (:mod:`hcbpg.pg.checksums`; a
    stopped one is started to look), and refused when it holds data, with what ``pg_checksums --enable`` would
    cost: nothing is changed then (one started to look is stopped again).
    """
    control = ClusterControl.of(host, params)
    v, c = control.version, control.name
    what = f"cluster {v}/{c} on {host.name}"
    seen = Changes(host)
    cluster = control.get()
    if cluster is None:
        control.create()
        return seen.outcome(what)
    if get_data_checksums(host, params) is not False:
        return seen.outcome(what)
    _refuse_under_patroni(host, params, "drop and recreate")
    why = f"{v}/{c} was created without data checksums"
    if not cluster.get("running") and host.dry_run:
        # a stopped cluster cannot be asked what it holds without starting it: the plan says what a run does
        control.start()
        control.drop()
        control.create()
        return seen.outcome(what, actions=[f"{why} and is stopped: start it to see what it holds; if nothing, drop it "
                                           "and create it again with checksums (a run refuses one holding data)",
                                           *seen.made])
    started = False
    if not cluster.get("running"):
        control.start()
        started = True
    contents = get_cluster_contents(host, params)
    if not contents.empty:
        if started:
            control.stop()
        raise SafetyCheckFailed(
            f"on {host.name}: cluster {why} and holds data ({contents.summary()}): hcbpg does not drop it",
            target=host.name, reasons=[f"holds {contents.summary()}"],
            hint=f"pg_checksums --enable turns them on in place: {checksum_enable_estimate(contents.bytes)} (on the "
                 f"primary that is downtime): {_enable_checksums_how(control, _pgdata(control, cluster))}. If the "
                 f"data is not needed: pg_dropcluster --stop {v} {c}, then run step 02 again. Nothing was changed.")
    control.drop()
    control.create()
    return seen.outcome(what, actions=[f"{why} and holds nothing initdb did not make: dropped, created again "
                                       "with checksums", *seen.made])


def ensure_cluster_running(host: "HostLike", params: "Params") -> Outcome:
    """The cluster is running (``pg_ctlcluster ... start``; systemd units are not assumed).

    Refused when the cluster does not exist, unless this run (a dry run) would have created it.
    """
    control = ClusterControl.of(host, params)
    v, c = control.version, control.name
    seen = Changes(host)
    cluster = control.get()
    # dry run: pg_createcluster was recorded, not run, so the cluster a dry run would start (a new one, or one
    # dropped and made again with checksums) is not seen
    planned = host.dry_run and control.create_command() in host.journal
    if cluster is not None and cluster.get("running") and not planned:
        return seen.outcome(f"cluster {v}/{c} running on {host.name}")
    if cluster is None and not planned:
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
    """Whether the cluster exists and runs (False on a server not there yet, and on a dry run that would drop it
    and make it again, until that run would start it: settings are then read at its first start)."""
    control = ClusterControl.of(host, params)
    if host.dry_run:
        journal = host.journal
        drop = drop_command(control.version, control.name)
        if drop in journal and control.command("start") not in journal[journal.index(drop):]:
            return False
    return control.running()


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
    """Data checksums are on (step 02 creates the cluster with them, or drops an empty one made without them;
    the replica inherits the primary's): pass, else fail with how to enable them offline."""
    control = ClusterControl.of(host, params)
    on = control.psql().value("SELECT current_setting('data_checksums') AS v") == "on"
    how = ("this cluster was created without them; to enable them offline (the server is down for a read and "
           f"rewrite of every page): {_enable_checksums_how(control, _pgdata(control, control.get()))}")
    return Check.of("data checksums", on, "on (initdb --data-checksums)" if on else how, host.name)


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
