"""Step 10 (notebook ``10_replication``): every server other than the current primary made its streaming replica."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.ops import replication as rep
from hcbpg.ops import topology
from hcbpg.ops.replication import check_all  # noqa: F401 - the notebook's call
from hcbpg.ops.topology import get_topology, show_topology  # noqa: F401 - the notebook's calls
from hcbpg.outcome import Outcome
from hcbpg.steps import online
from hcbpg.steps.targets import connect_servers, lock_environment

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> dict[str, "Host | None"]:
    """An open Host per server, None for one SSH cannot reach.

    First the environment's lock in the backup bucket: this step wipes or promotes a server."""
    lock_environment(rb)
    return connect_servers(rb)


def get_plan(hosts: Mapping[str, "Host | None"], params: "Params", password: str
             ) -> tuple[list[Outcome], dict[str, Any]]:
    """What would change on each server, and per replica its plan (as text)."""
    plan, _, planned = rep.setup_replication(hosts, params, password, allow_destructive=params.allow_destructive,
                                             dry_run=True)
    return plan, planned


def apply(rb: "Run", hosts: Mapping[str, "Host | None"], password: str, plan: list[Outcome],
          planned: dict[str, Any]) -> dict[str, Any]:
    """In a dry run the plan is what is tracked; else set replication up for real.  Per replica: plan and timings."""
    if rb.dry_run:
        rb.track(plan, show=False)
        return planned
    params = rb.params
    with _bucardo_paused(hosts, params, plan):
        outcomes, _, results = rep.setup_replication(hosts, params, password,
                                                     allow_destructive=params.allow_destructive, dry_run=False)
    rb.track(outcomes)
    return results


def _bucardo_paused(hosts: Mapping[str, "Host | None"], params: "Params", plan: list[Outcome]) -> Any:
    """With the online transfer this step runs while Bucardo syncs into the primary: its daemon is stopped
    while the primary changes (a restart for the replication settings: it does not survive its database
    going away), and started after. Nothing planned on the primary, or no sync: nothing is stopped."""
    return online.paused_if_syncing(hosts.get(params.primary.name), params,
                                    "the primary's changes for replication (a restart)",
                                    changes=any(o.changed and params.primary.name in o.what for o in plan))


def show_auto_conf(hosts: Mapping[str, "Host | None"], params: "Params") -> None:
    """Print each replica's postgresql.auto.conf (where its primary_conninfo lives)."""
    for name in topology.get_topology(hosts, params)[0].replicas:
        print(f"postgresql.auto.conf on {name}:\n" + rep.get_auto_conf_text(hosts[name], params))  # type: ignore[arg-type]


def get_topology_record(hosts: Mapping[str, "Host | None"], params: "Params") -> dict[str, Any]:
    """Who is primary now, as recorded for later steps (``topology``)."""
    return topology.get_topology(hosts, params)[0].record()
