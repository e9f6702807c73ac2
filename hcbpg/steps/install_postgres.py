"""Step 02 (notebook ``02_install_postgres``): PostgreSQL 15 installed and its cluster configured on every server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.desired import capacity
from hcbpg.desired.capacity import ServerShape
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import server as pg_server
from hcbpg.ops.cluster import ensure_cluster_exists, ensure_cluster_running
from hcbpg.ops.config import ensure_settings
from hcbpg.ops.packages import ensure_createcluster_conf, ensure_packages
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import hostlike, planning, server_hosts, server_shape  # noqa: F401 - the notebook's call

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> dict[str, "HostLike"]:
    """A host per server: the open Host; on a dry run one that records instead of changing, or, for a server
    not there yet, one where nothing is there."""
    return {name: hostlike(rb, name, h) for name, h in server_hosts(rb).items()}


def capacity_table(params: "Params", shape: ServerShape) -> list[dict[str, str]]:
    """Each capacity setting, its value for *shape* and why (the notebook's table)."""
    return capacity.capacity_table(params, shape)


def pgbouncer_note() -> str:
    """Whether a pooler is needed, and why."""
    return capacity.PGBOUNCER_NOTE


def install_server(host: "HostLike", params: "Params", server: "Server", *,
                   shape: ServerShape | None = None) -> list[Outcome]:
    """Step 02 on one server: createcluster's drop-in (no automatic cluster, data checksums) before any package,
    packages (only what is missing), cluster (with data checksums: an empty one made without them is made again,
    one holding data refused), cluster_name and, given the server type, the capacity settings; then running.

    Both files are written before the first start, so a fresh cluster needs no restart for
    max_connections, shared_buffers or shared_preload_libraries (and none before data arrives).
    """
    outcomes = [ensure_createcluster_conf(host, params)]
    outcomes += ensure_packages(host, params)
    outcomes.append(ensure_cluster_exists(host, params))
    outcomes.append(ensure_settings(host, params, server, "identity"))
    if shape is not None:
        outcomes.append(ensure_settings(host, params, server, "capacity", extra=capacity.render_capacity(params, shape)))
    outcomes.append(ensure_cluster_running(host, params))
    return outcomes


def get_plan(hosts: Mapping[str, "HostLike"], params: "Params", shape: ServerShape | None = None) -> list[Outcome]:
    """What step 02 would do on every server, in params order (recorded on fresh dry-run hosts: nothing changes)."""
    return [o for s in params.servers for o in install_server(planning(hosts[s.name]), params, s, shape=shape)]


def apply(rb: "Run", hosts: Mapping[str, "HostLike"], shape: ServerShape | None = None) -> None:
    """Install server by server, each one's outcomes tracked (and shown unless a dry run) as it finishes."""
    params = rb.params
    for s in params.servers:
        rb.track(install_server(hostlike(rb, s.name, hosts[s.name]), params, s, shape=shape),
                 show=not rb.dry_run)


def check_installed(hosts: Mapping[str, "HostLike"], params: "Params", shape: ServerShape | None = None) -> list[Check]:
    """Packages, cluster running on the port from params, settings in force, data checksums, on every server."""
    return [c for s in params.servers for c in pg_server.check_server(hosts[s.name], params, s, shape)]


def get_server_facts(hosts: Mapping[str, "HostLike"], params: "Params") -> dict[str, Any]:
    """What each server runs now (version, port, data directory), for later steps."""
    return {name: pg_cluster.get_server_facts(h, params) for name, h in hosts.items()}
