"""A server's PostgreSQL as steps 02 and 03 leave it: packages, cluster and config files
together, and the checks that prove it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from hcbpg.desired.capacity import ServerShape, render_capacity
from hcbpg.errors import (
    SafetyCheckFailed,
)
from hcbpg.ops.cluster import (
    check_data_checksums,
    check_psql_as_postgres,
    ensure_cluster_exists,
    ensure_cluster_running,
    get_cluster,
    get_cluster_running,
)
from hcbpg.ops.config import (
    check_pg_hba,
    check_settings,
    ensure_pg_hba,
    ensure_settings,
)
from hcbpg.ops.packages import ensure_packages, get_installed_packages, packages
from hcbpg.ops.tls import ensure_server_tls
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.conf import SettingValue
from hcbpg.pg.hba import HbaRule

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server


def check_server(host: "Host", params: "Params", server: "Server", shape: ServerShape | None = None) -> list[Check]:
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


def install_server(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool,
                   shape: ServerShape | None = None) -> list[Outcome]:
    """Step 02 on one server: packages (only what is missing), cluster (with data checksums),
    cluster_name and, given the server type, the capacity settings; then running.

    Both files are written before the first start, so a fresh cluster needs no restart for
    max_connections, shared_buffers or shared_preload_libraries (and none before data arrives).
    """
    outcomes = ensure_packages(host, params, dry_run=dry_run)
    outcomes.append(ensure_cluster_exists(host, params, dry_run=dry_run))
    outcomes.append(ensure_settings(host, params, server, "identity", dry_run=dry_run))
    if shape is not None:
        outcomes.append(ensure_settings(host, params, server, "capacity", dry_run=dry_run,
                                        extra=render_capacity(params, shape)))
    outcomes.append(ensure_cluster_running(host, params, dry_run=dry_run))
    return outcomes


def allow_connections(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool,
                      extra_settings: Mapping[str, SettingValue] | None = None,
                      extra_rules: Sequence[HbaRule] = ()) -> list[Outcome]:
    """Step 03 on one server: TLS files, pg_hba.conf (so the new listener never meets the old rules), then settings."""
    if host is not None and not dry_run and not get_cluster_running(host, params):
        raise SafetyCheckFailed(f"on {server.name}: cluster {params.postgres.version}/{params.postgres.cluster} "
                                "is not running", hint="Run step 02 (install PostgreSQL) first.")
    # the certificate first, then ssl on (PostgreSQL refuses hostssl rules while ssl is off), then pg_hba
    return [*ensure_server_tls(host, params, server, dry_run=dry_run),
            ensure_settings(host, params, server, "tls", dry_run=dry_run),
            ensure_pg_hba(host, params, server, dry_run=dry_run, extra=extra_rules),
            ensure_settings(host, params, server, "connections", dry_run=dry_run, extra=extra_settings)]


def check_connections(host: "Host", params: "Params", server: "Server", app: "Host | None" = None) -> list[Check]:
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
