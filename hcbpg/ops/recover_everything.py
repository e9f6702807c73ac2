"""Production back after losing both database servers (notebook ``22_recover_everything``): what is read and
changed on the machines besides what steps 01-05, 10 and notebook 20 do already.

    get_postgres_role(host, params)     'primary', 'replica' or 'down' (a server that still answers)
    get_repo_reaches(host, params)      each repository's backups and archive end (or the error it answered)
    get_promoted(host, params)          the restored server, cheaply: in recovery?, timeline, the last replayed
                                        commit's time (the row counts come after the clock)
    run_stop_postgres(host, params)     PostgreSQL stopped (a fresh server's 15/main, before the restore over it)
    get_decision / run_put_decision     the decision's marker on the jumpbox (survives the servers: a resume after a
                                        failure before the restore is not refused for servers it made)
    run_etcd_fresh(host, params)        etcd stopped on a surviving member and its data directory moved aside
                                        (kept): with two of three voters lost the member has no quorum and holds
                                        only Patroni's state of a cluster that is gone
    run_make_room(host, params, sysid)  a server made again, not the restored one: the cluster step 02 made there
                                        (none of production's) stopped and moved aside (kept), so that Patroni
                                        creates the restored leader's replica in an empty directory
    check_commit_from_app(app, params, url)
                                        a transaction committed through the handed-out URL from the app host (an
                                        xid and its commit record: synchronous replication would hold it)

Everything takes the host first; :mod:`hcbpg.desired.recover_everything` decides.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import recover as dr
from hcbpg.desired.etcd import etcd_params
from hcbpg.desired.pgbackrest import pg_data_path
from hcbpg.desired.services import etcd_service
from hcbpg.errors import HcbpgError
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import recover as ops_recover
from hcbpg.ops.cluster import get_cluster_running, get_psql
from hcbpg.ops.topology import get_controldata
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.conninfo import conninfo_quote, parse_app_url, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


def get_postgres_role(host: "HostLike", params: "Params") -> str:
    """What PostgreSQL on *host* answers as: ``primary`` (accepts writes), ``replica`` or ``down``."""
    if not get_cluster_running(host, params):
        return "down"
    try:
        in_recovery = get_psql(host, params).value("SELECT pg_is_in_recovery() AS r")
    except HcbpgError:
        return "down"
    return "replica" if in_recovery else "primary"


def get_promoted(host: "HostLike", params: "Params") -> dict[str, Any]:
    """One query, whatever the database's size: whether the restored server is still in recovery, its timeline and
    the last commit it replayed (:func:`hcbpg.ops.recover.get_recovered` also counts every table's rows)."""
    row = get_psql(host, params).query(
        "SELECT pg_is_in_recovery() AS in_recovery, pg_last_xact_replay_timestamp()::text AS last_commit, "
        "(SELECT timeline_id FROM pg_control_checkpoint()) AS timeline")[0]
    return dict(row)


def get_repo_reaches(host: "HostLike", params: "Params", *, config: str | None = None
                     ) -> dict[int, "dr.RepoReach | str"]:
    """``pgbackrest info --repo=N`` for each repository in params, as *host*'s pgbackrest.conf (or *config*: the
    jumpbox's drill configuration) reaches it: its backups and newest archived WAL, or the error it answered
    with (a store unreachable)."""
    pb = params.pgbackrest
    if pb is None:
        return {}
    out: dict[int, dr.RepoReach | str] = {}
    for idx, _repo in pb.repos():
        try:
            out[idx] = dr.parse_repo_reach(pgb.get_info_json(host, params, f"--repo={idx}",
                                                                    *([f"--config={config}"] if config else [])), pb.stanza)
        except HcbpgError as exc:
            out[idx] = exc.message
    return out


def run_etcd_fresh(host: "HostLike", params: "Params", *, suffix: str | None = None) -> Outcome:
    """etcd stopped on *host* and its data directory renamed (kept) so that it starts as a member of a new cluster
    with the servers made again (the same names, addresses and token: ``initial-cluster-state: new`` bootstraps
    only an empty data directory; step 10's ensure_etcd makes it again).  Nothing when the directory is empty or missing."""
    seen = Changes(host)
    data = etcd_params(params).data_dir
    if not host.exists(f"{data}/member"):
        return seen.outcome(f"etcd's data on {host.name}: empty already")
    ServiceControl.of(host).ensure_stopped(etcd_service(params))
    aside = f"{data}.lost-{suffix or datetime.now().strftime('%Y%m%dT%H%M%S')}"
    host.run(f"mv {shlex.quote(data)} {shlex.quote(aside)}",
             display=f"move etcd's data {data} aside to {aside} (kept): a new cluster with the servers made again")
    return seen.outcome(f"etcd's data on {host.name} moved aside", actions=[f"kept as {aside}"])


def run_stop_postgres(host: "HostLike", params: "Params") -> Outcome:
    """PostgreSQL stopped on *host* (fast) if it runs: the restore replaces its data directory."""
    seen = Changes(host)
    cluster = ClusterControl.of(host, params)
    if not host.dry_run and cluster.running():
        cluster.stop("fast", timeout=300)
    return seen.outcome(f"PostgreSQL stopped on {host.name}")


#: the decision's marker on the jumpbox: its run, when, the phases so far, whether the recovery finished
DECISION = "/var/lib/hcbpg/recover-everything.json"


def get_decision(host: "HostLike") -> dict[str, Any] | None:
    """The decision's marker on the jumpbox *host* (None: none, or unreadable)."""
    text = host.read_text(DECISION)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return dict(data) if isinstance(data, Mapping) else None


def run_put_decision(host: "HostLike", decision: Mapping[str, Any]) -> None:
    host.run(f"install -d -m 0755 {shlex.quote(DECISION.rsplit('/', 1)[0])}", quiet=True)
    host.put_text(DECISION, json.dumps(dict(decision), indent=1) + "\n", mode=0o644, owner="root")


def run_make_room(host: "HostLike", params: "Params", leader_sysid: str | None, *, suffix: str) -> Outcome:
    """On a server made again that is not the restored leader: the cluster step 02 made there (another system
    identifier: none of production's data) stopped and its data directory moved aside (kept), an empty one in its
    place, so that Patroni, started there, creates the leader's replica (create_replica_methods) instead of exiting
    on the system identifier's mismatch.  Nothing when Patroni runs there already, when the directory holds no
    cluster, or when it holds the leader's system (a replica already).  Refused without the leader's identifier."""
    seen = Changes(host)
    if ops_patroni.get_patroni_running(host, params):
        return seen.outcome(f"{host.name}'s data directory: Patroni runs there already")
    sysid = get_controldata(host, params, pg_data_path(params)).get("Database system identifier")
    if not sysid:
        return seen.outcome(f"{host.name}'s data directory: empty already (Patroni creates the replica in it)")
    if not leader_sysid:
        raise HcbpgError(f"the restored leader's system identifier is unknown: {host.name}'s cluster is not moved",
                         hint="Run the notebook again once the leader answers.")
    if sysid == leader_sysid:
        return seen.outcome(f"{host.name}'s data directory holds the leader's system {sysid} already")
    control = ClusterControl.of(host, params)
    if not host.dry_run and control.running():
        control.stop("fast", timeout=180)
    aside = ops_recover.run_move_aside(host, params, suffix)
    return seen.outcome(f"{host.name}'s own cluster (system {sysid}, made by step 02) moved aside",
                        actions=[f"PostgreSQL stopped, kept as {aside}: Patroni creates the replica of {leader_sysid}"])


def check_commit_from_app(app: "HostLike", params: "Params", url: str, *, wait_s: int = 10) -> Check:
    """A transaction committed through *url* (every host of a multi-host URL with its ``target_session_attrs``;
    the password on stdin) from the app host: ``txid_current()`` gives it an xid, so its commit writes a record
    that synchronous replication would wait for; a wait longer than *wait_s* is cancelled and fails the check
    (PostgreSQL then warns 'canceling wait for synchronous replication')."""
    conn = parse_app_url(url)
    conninfo = " ".join(f"{k}={conninfo_quote(v)}" for k, v in {"connect_timeout": "10", **conn}.items()
                        if k != "password")
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -c {shlex.quote(f'SET statement_timeout = {int(wait_s * 1000)}')} "
           "-c 'SELECT current_user, current_database(), pg_is_in_recovery(), txid_current()'")
    res = app.run(cmd, stdin=conn.get("password", "") + "\n", check=False,
                  display=f"psql {redact_url(url)} from the app host: a commit")
    out = res.stdout.strip()
    blocked = "synchronous replication" in res.output
    ok = res.ok and not blocked and out.startswith(f"{params.postgres.app_role}|{params.postgres.database}|f|")
    detail = (f"committed xid {out.rsplit('|', 1)[-1]} as {params.postgres.app_role}" if ok else
              f"the commit waited over {wait_s} s for synchronous replication" if blocked else
              hsecrets.scrub(res.output.strip())[-200:])
    return Check.of("a commit through the handed-out DATABASE_URL from the app host", ok, detail, app.name)
