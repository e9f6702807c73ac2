"""Step 04 (notebook ``04_app_role_database``): the app's role and database on the primary, checked from
the app host and from outside the subnet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.adapters.dryrun import AbsentHost
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import app_host, hostlike, outsider_runner, planning, server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple["Server", "HostLike", "PsqlLike"]:
    """The primary, its host, and psql on it (on a dry run while its cluster is not running: a psql where
    nothing is there yet)."""
    primary = rb.params.primary
    host = hostlike(rb, primary.name, server_host(rb, primary))
    there = host if not host.dry_run or pg_cluster.get_cluster_running(host, rb.params) else AbsentHost(primary.name)
    return primary, host, pg_cluster.get_psql(there, rb.params)


def app_role_database(psql: "PsqlLike", params: "Params", password: str) -> list[Outcome]:
    """Step 04 on the primary: the role, then the database it owns, then the grants.

    Refused while PostgreSQL is not running there (steps 02 and 03 come first)."""
    host = psql.host
    if not host.dry_run and not pg_cluster.get_cluster_running(host, params):
        raise SafetyCheckFailed(f"on {host.name}: PostgreSQL is not running, so the role and database cannot "
                                "be created", hint="Run step 02 (install PostgreSQL) and 03 first.")
    return [roles.ensure_role(psql, params, password),
            roles.ensure_database(psql, params),
            roles.ensure_grants(psql, params)]


def get_plan(psql: "PsqlLike", params: "Params", password: str) -> list[Outcome]:
    """What step 04 would do on the primary (recorded on a fresh dry-run host: nothing changes)."""
    return app_role_database(pg_cluster.get_psql(planning(psql.host), params), params, password)


def ensure_app_role_database(psql: "PsqlLike", params: "Params", password: str) -> list[Outcome]:
    """The app role (with the secret's password) and its database, on the primary (*psql* from :func:`connect`:
    on a dry run it records instead of changing)."""
    return app_role_database(psql, params, password)


def check_app_role_database(rb: "Run", psql: "PsqlLike", password: str) -> list[Check]:
    """On the primary, then from the app host, then from outside the subnet (must be refused)."""
    params = rb.params
    app = app_host(rb)
    return (roles.check_role_database(psql, params, password)
            + roles.check_app_access(app, psql, params, password, server_ip=params.primary.private_ip,
                                     outsider=outsider_runner(rb)))
