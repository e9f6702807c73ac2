"""The checks that a server's PostgreSQL is as steps 02 and 03 leave it: packages, cluster and config files
together (the steps compose the operations: :mod:`hcbpg.steps.install_postgres`, :mod:`hcbpg.steps.allow_connections`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired.capacity import ServerShape, render_capacity
from hcbpg.desired.packages import packages
from hcbpg.ops.cluster import (
    check_data_checksums,
    check_psql_as_postgres,
    get_cluster,
)
from hcbpg.ops.config import (
    check_pg_hba,
    check_settings,
)
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server


def check_server(host: "HostLike", params: "Params", server: "Server", shape: ServerShape | None = None) -> list[Check]:
    """Step 02's checks: packages, cluster running, cluster_name, capacity settings (given the server
    type), data checksums, psql as postgres."""
    installed = get_installed_packages(host, packages(params))
    out = [Check.of(f"package {p}", p in installed, installed.get(p, "not installed"), server.name)
           for p in packages(params)]
    cluster = get_cluster(host, params)
    running = bool(cluster and cluster.get("running"))
    out.append(Check.of(f"cluster {params.postgres.version}/{params.postgres.cluster} running", running,
                        f"port {cluster.get('port')}" if cluster else "no cluster", server.name))
    if running:
        assert cluster is not None  # running implies a cluster
        out.append(Check.of("cluster port", str(cluster.get("port")) == str(params.postgres.port),
                            f"port {cluster.get('port')} (params say {params.postgres.port})", server.name))
        out.append(check_psql_as_postgres(host, params))
        out += check_settings(host, params, server, "identity")
        if shape is not None:
            out += check_settings(host, params, server, "capacity", extra=render_capacity(params, shape))
        out.append(check_data_checksums(host, params))
    return out


def check_connections(host: "HostLike", params: "Params", server: "Server", app: "HostLike | None" = None) -> list[Check]:
    """Step 03's checks: settings in force, pg_hba ours and loaded, and the port open from the app host."""
    out = (check_settings(host, params, server, "tls") + check_settings(host, params, server, "connections")
           + check_pg_hba(host, params, server))
    if app is not None:
        port = params.postgres.port
        res = app.probe(f"timeout 5 bash -c '</dev/tcp/{server.private_ip}/{port}'")
        out.append(Check.of(f"port {port} open from {app.name}", res.ok,
                            f"{server.private_ip}:{port} accepts TCP" if res.ok else
                            f"{server.private_ip}:{port} does not accept TCP (exit {res.exit_code})", server.name))
    return out
