"""Step 11 (notebook ``11_failover``, on demand): fence, promote, new DATABASE_URL, the old primary rejoins,
pgBackRest on the new primary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.cloud import make_client
from hcbpg.desired.failover import FailoverPlan, plan_failover, promotion_outcome  # noqa: F401 - the notebook's call
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import failover as fo
from hcbpg.ops import provisioning as cloud
from hcbpg.ops import topology
from hcbpg.ops.topology import get_topology  # noqa: F401 - the notebook's call
from hcbpg.outcome import Check
from hcbpg.steps.replication import check_all, show_topology  # noqa: F401 - the notebook's call
from hcbpg.steps.targets import connect_servers, lock_environment

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> dict[str, "HostLike | None"]:
    """An open Host per server, None for one SSH cannot reach (a failover must go on without it).

    First the environment's lock in the backup bucket: this step wipes or promotes a server."""
    lock_environment(rb)
    return dict(connect_servers(rb))


def fence_through_cloud(rb: "Run", plan: FailoverPlan) -> None:
    """An unplanned failover whose old primary SSH cannot reach: after a gate naming it, power it off through
    the Hetzner Cloud API (it cannot come back as a second primary); nothing otherwise."""
    if plan.kind != "failover" or plan.old_reachable:
        print(f"{plan.old_primary} is reachable over SSH (or this is a switchover): hcbpg fences it itself")
        return
    old = plan.old_primary
    rb.gate(f"power-off-{old}",
            f"{old} cannot be reached over SSH. Power off the Hetzner Cloud server {old} now (a hard power off, "
            f"through the API) so that it cannot come back as a second primary?")
    client = make_client(rb.params, rb.secret("hetzner.token"))
    rb.track(cloud.ensure_powered_off(client, rb.params, old, dry_run=rb.dry_run))


def run_failover(rb: "Run", plan: FailoverPlan, hosts: Mapping[str, "HostLike | None"]) -> dict[str, Any]:
    """Fence, promote, check writes, write the new DATABASE_URL (nothing in a dry run); timings and facts."""
    if rb.dry_run:
        print("dry run: nothing fenced, nothing promoted")
        return {}
    result = fo.run_failover(hosts, plan, rb.params, app_password=rb.secret("postgres.app_role_password"))
    rb.track(promotion_outcome(plan, result))
    return result


def run_rejoin(rb: "Run", plan: FailoverPlan, hosts: Mapping[str, "HostLike | None"], result: dict[str, Any]) -> None:
    """The old primary rejoins as a replica of the new one (not in a dry run); noted in *result*."""
    if rb.dry_run:
        return
    outcomes, rejoin = fo.run_rejoin_old_primary(hosts, rb.params, plan, allow_destructive=rb.params.allow_destructive)
    rb.track(outcomes)
    result["rejoin"] = rejoin


def ensure_backups_follow(rb: "Run", plan: FailoverPlan, hosts: Mapping[str, "HostLike | None"]) -> list[Check]:
    """pgBackRest pointed at the new primary (not in a dry run); its checks, for the verify cell."""
    if rb.dry_run:
        return []
    params = rb.params
    archive_mode = fo.get_archive_mode(hosts.get(plan.old_primary), params) is not False
    new_host = _reachable(hosts, plan.new_primary)  # promoted over SSH by run_failover
    outcomes, backup_checks = fo.run_point_backups_at(new_host, params, params.server(plan.new_primary),
                                                  archive_mode=archive_mode)
    rb.track(outcomes)
    return backup_checks


def check_failover(rb: "Run", plan: FailoverPlan, hosts: Mapping[str, "HostLike | None"],
                   backup_checks: list[Check]) -> list[Check]:
    """The new primary accepts writes, every replica streams from it, backups work on it."""
    params = rb.params
    new_primary = params.server(plan.new_primary)
    psql = pg_cluster.get_psql(_reachable(hosts, new_primary.name), params)
    return ([fo.check_accepts_writes(psql, new_primary)]
            + check_all(hosts, params, rb.secret("replication.password")) + backup_checks)


def _reachable(hosts: Mapping[str, "HostLike | None"], name: str) -> "HostLike":
    host = hosts.get(name)
    if host is None:
        raise SafetyCheckFailed(f"cannot reach {name} over SSH", hint="Bring it back, then run the step again.")
    return host


def get_topology_record(hosts: Mapping[str, "HostLike | None"], params: "Params") -> dict[str, Any]:
    """Who is primary now, as recorded for later steps (``topology``)."""
    return topology.get_topology(hosts, params)[0].record()
