"""Production back after losing both database servers (notebook ``22_recover_everything``): what is read and
changed on the machines besides what steps 01-05, 10 and notebook 20 do already.

    get_postgres_role(host, params)     'primary', 'replica' or 'down' (a server that still answers)
    get_repo_reaches(host, params)      each repository's backups and archive end (or the error it answered)
    run_stop_postgres(host, params)     PostgreSQL stopped (a fresh server's 15/main, before the restore over it)
    get_decision / run_put_decision     the decision's marker on the jumpbox (survives the servers: a resume after a
                                        failure before the restore is not refused for servers it made)
    run_etcd_fresh(host, params)        etcd stopped on a surviving member and its data directory moved aside
                                        (kept): with two of three voters lost the member has no quorum and holds
                                        only Patroni's state of a cluster that is gone

Everything takes the host first; :mod:`hcbpg.desired.recover_everything` decides.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import recover as dr
from hcbpg.desired.etcd import etcd_params
from hcbpg.desired.services import etcd_service
from hcbpg.errors import HcbpgError
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.cluster import get_cluster_running, get_psql
from hcbpg.outcome import Outcome

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
