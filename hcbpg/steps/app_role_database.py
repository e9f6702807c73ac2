"""Step 04 (notebook ``04_app_role_database``): the app's role and database on the primary, checked from
the app host and from outside the subnet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import app_host, outsider_runner, server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.adapters.psql import Psql
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple["Server", "Host | None", "Psql | None"]:
    """The primary, its Host, and psql on it (None while its cluster is not running)."""
    primary = rb.params.primary
    host = server_host(rb, primary)
    running = pg_cluster.get_cluster_running(host, rb.params)
    psql = pg_cluster.psql_for(host, rb.params) if running else None  # type: ignore[arg-type]  # running: host is there
    return primary, host, psql


def ensure_app_role_database(psql: "Psql | None", params: "Params", password: str, *, dry_run: bool) -> list[Outcome]:
    """The app role (with the secret's password) and its database, on the primary."""
    return roles.app_role_database(psql, params, password, dry_run=dry_run, host_name=params.primary.name)


def check_app_role_database(rb: "Run", psql: "Psql", password: str) -> list[Check]:
    """On the primary, then from the app host, then from outside the subnet (must be refused)."""
    params = rb.params
    app = app_host(rb)
    return (roles.check_role_database(psql, params, password)
            + roles.verify_app_access(app, psql, params, password, server_ip=params.primary.private_ip,
                                      outsider=outsider_runner(rb)))
