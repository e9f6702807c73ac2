"""Step 02 (notebook ``02_install_postgres``): PostgreSQL 15 installed and its cluster configured on every server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.desired import capacity
from hcbpg.desired.capacity import ServerShape
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import server as pg_server
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import server_hosts, server_shape  # noqa: F401 - the notebook's call

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> dict[str, "Host | None"]:
    """An open Host per server (None in a dry run for a server not there yet)."""
    return server_hosts(rb)


def capacity_table(params: "Params", shape: ServerShape) -> list[dict[str, str]]:
    """Each capacity setting, its value for *shape* and why (the notebook's table)."""
    return capacity.capacity_table(params, shape)


def pgbouncer_note() -> str:
    """Whether a pooler is needed, and why."""
    return capacity.PGBOUNCER_NOTE


def ensure_installed(hosts: Mapping[str, "Host | None"], params: "Params", *, dry_run: bool,
                     shape: ServerShape | None = None) -> list[Outcome]:
    """Step 02's install on every server, in params order."""
    return [o for s in params.servers
            for o in pg_server.install_server(hosts[s.name], params, s, dry_run=dry_run, shape=shape)]


def apply(rb: "Run", hosts: Mapping[str, "Host | None"], shape: ServerShape | None = None) -> None:
    """Install server by server, each one's outcomes tracked (and shown unless a dry run) as it finishes."""
    params = rb.params
    for s in params.servers:
        rb.track(pg_server.install_server(hosts[s.name], params, s, dry_run=rb.dry_run, shape=shape),
                 show=not rb.dry_run)


def check_installed(hosts: Mapping[str, "Host"], params: "Params", shape: ServerShape | None = None) -> list[Check]:
    """Packages, cluster running on the port from params, settings in force, data checksums, on every server."""
    return [c for s in params.servers for c in pg_server.check_server(hosts[s.name], params, s, shape)]


def get_server_facts(hosts: Mapping[str, "Host"], params: "Params") -> dict[str, Any]:
    """What each server runs now (version, port, data directory), for later steps."""
    return {name: pg_cluster.get_server_facts(h, params) for name, h in hosts.items()}
