"""Step 11 under Patroni (notebook ``11_switchover``, on demand) and step 11b (``11b_maintenance``).

Step 11 chooses its mode from the cluster, not from params:

* **switchover** -- the leader recorded by step 10 (or the last step 11) still leads: the candidate is checked
  (running, on the leader's timeline, within ``maximum_lag_on_failover``, not ``nofailover``, the sync standby in
  synchronous mode), the gate ``switchover`` asks, a ``CHECKPOINT`` makes the old leader's shutdown short, then
  ``POST /switchover`` (what ``patronictl switchover`` sends); the new leader and the old one streaming again are
  waited for, and pgBackRest is proven on the new leader (its check and a backup).
* **after-failover** -- Patroni already failed over: what happened is reported (when, from whom to whom, the
  WAL the old leader had past the fork point), then the old leader: rejoined already (Patroni rewound it), or
  Patroni started on it again, or rebuilt from the repository (``POST /reinitialize``, gate ``rebuild-SERVER``).

Step 11b pauses or resumes Patroni's automatic failover (``patronictl pause`` / ``resume``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.dryrun import dry_run_of
from hcbpg.desired import patroni as dp
from hcbpg.desired.patroni import AfterFailover, ClusterView, SwitchoverPlan
from hcbpg.errors import SafetyCheckFailed, UsageError
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import failover as fo
from hcbpg.ops import patroni as ops_patroni
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.ha import HaHosts, show_cluster
from hcbpg.steps.ha import connect as connect  # noqa: PLC0414 - the notebook's call

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params
    from hcbpg.steps.context import Run

__all__ = ["connect", "show_cluster"]


@dataclass
class Plan:
    """What step 11 does now: a switchover (its checked plan) or the report after a failover."""

    mode: str
    switchover: SwitchoverPlan | None = None
    after: AfterFailover | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def gate(self) -> str | None:
        if self.mode == "switchover":
            return "switchover"
        if self.after is not None and self.after.action == "reinitialize":
            return f"rebuild-{self.after.old_leader}"
        return None

    def __str__(self) -> str:
        if self.switchover is not None:
            sp = self.switchover
            head = f"switchover: {sp.leader} -> {sp.candidate}"
            return head + ("" if sp.ok else "\nrefused:\n  " + "\n  ".join(sp.reasons))
        a = self.after
        if a is None:
            return self.mode
        lines = [f"after-failover: {a.old_leader} led timeline {a.old_timeline}; now {a.new_leader or 'no leader'}"
                 + (f" (since {a.at})" if a.at else ""), f"about {a.old_leader}: {a.action}", *a.notes]
        return "\n".join(lines)


def get_plan(hosts: HaHosts, params: "Params", recorded: Mapping[str, Any], *, candidate: str = "") -> Plan:
    """Switchover or after-failover, from the cluster now and the topology recorded before."""
    view = ops_patroni.get_cluster(hosts.servers, params)
    if view is None:
        raise SafetyCheckFailed("no member's Patroni answers GET /cluster",
                                hint="`hcbpg status` shows each member and etcd; nothing was changed.")
    leader = view.leader
    recorded_leader = recorded.get("primary") or (leader.name if leader else None)
    recorded_tl = recorded.get("timeline")
    if candidate and candidate not in {s.name for s in params.servers}:
        raise UsageError(f"-p candidate={candidate}: not a server in params "
                         f"({', '.join(s.name for s in params.servers)})")
    if leader is not None and leader.name == recorded_leader and (recorded_tl in (None, leader.timeline)):
        return Plan("switchover", switchover=dp.plan_switchover(view, candidate or None, params=params))
    old = params.server(str(recorded_leader))
    old_host = hosts.servers.get(old.name)
    leader_host = hosts.servers.get(leader.name) if leader is not None else None
    history = ops_patroni.get_history(leader_host, params, params.server(leader.name)) if (
        leader is not None and leader_host is not None) else []
    after = dp.plan_after_failover(view, history, recorded_leader=old.name,
                                   recorded_timeline=int(recorded_tl or 0),
                                   old_leader_reachable=old_host is not None,
                                   old_patroni_running=ops_patroni.get_patroni_running(old_host, params)
                                   if old_host is not None else None)
    return Plan("after-failover", after=after)


def show_plan(plan: Plan) -> None:
    print(plan)


def ask(rb: "Run", plan: Plan) -> None:
    """The plan's gate: ``switchover`` for a planned switchover, ``rebuild-SERVER`` before a rebuild."""
    if plan.mode == "switchover":
        sp = plan.switchover
        if sp is None or not sp.ok:
            raise SafetyCheckFailed("the switchover is refused: " + "; ".join(sp.reasons if sp else ()),
                                    hint="Nothing was changed. `hcbpg status` shows the members.")
        rb.gate("switchover", f"Switch over from {sp.leader} to {sp.candidate} (a few seconds without writes; "
                              "no acknowledged commit is lost)?", plan=[sp.leader, sp.candidate])
    elif plan.after is not None and plan.after.action == "reinitialize":
        old = plan.after.old_leader
        rb.gate(f"rebuild-{old}", f"Rebuild {old} from the repository as a replica of {plan.after.new_leader} "
                                  f"(its data directory is replaced)?", plan=[old, plan.after.new_leader])


def run(rb: "Run", hosts: HaHosts, plan: Plan) -> dict[str, Any]:
    """Carry the plan out (nothing in a dry run); timings and what was done."""
    params = rb.params
    if rb.dry_run:
        print("dry run: nothing switched over, nothing rebuilt")
        return {}
    if plan.mode == "switchover":
        assert plan.switchover is not None
        return _switchover(rb, hosts, params, plan.switchover)
    after = plan.after
    assert after is not None
    result: dict[str, Any] = {"mode": "after-failover", "action": after.action, "old_leader": after.old_leader,
                              "new_leader": after.new_leader, "lost_bytes": after.lost_bytes}
    old = params.server(after.old_leader)
    old_host = hosts.servers.get(old.name)
    if after.action == "start-patroni" and old_host is not None:
        rb.track(ops_patroni.ensure_patroni_running(old_host, params))
    elif after.action == "reinitialize" and old_host is not None:
        ops_patroni.run_reinitialize(old_host, params, old)
        rb.track(Outcome(f"{old.name} rebuilt by Patroni", True, False, actions=["POST /reinitialize"]))
    elif after.action == "fence":
        raise SafetyCheckFailed(f"{old.name} does not answer over SSH", target=old.name,
                                hint="Power it off through the Hetzner console (or step 11 with "
                                     "replication.manager manual's fencing), then run this step again.")
    if after.action in ("start-patroni", "reinitialize", "wait"):
        ops_patroni.wait_for_member(hosts.servers, params, old.name,
                                    lambda m: not m.is_leader and m.state in dp.RUNNING_STATES and m.lag is not None,
                                    what=f"{old.name} streaming from the new leader", timeout=300)
    return result


def _switchover(rb: "Run", hosts: HaHosts, params: "Params", sp: SwitchoverPlan) -> dict[str, Any]:
    assert sp.leader is not None and sp.candidate is not None
    leader_host = hosts.servers[sp.leader]
    if leader_host is None:
        raise SafetyCheckFailed(f"cannot reach the leader {sp.leader}", hint="Nothing was changed.")
    # a checkpoint now: the old leader's shutdown checkpoint (inside the switchover) is then short
    pg_cluster.get_psql(leader_host, params).execute("CHECKPOINT")
    t0 = time.monotonic()
    ops_patroni.run_switchover(leader_host, params, sp)
    ops_patroni.wait_for_member(hosts.servers, params, sp.candidate, lambda m: m.is_leader and m.state in
                                dp.RUNNING_STATES, what=f"{sp.candidate} the leader", timeout=60)
    promoted = time.monotonic() - t0
    ops_patroni.wait_for_member(hosts.servers, params, sp.leader, lambda m: not m.is_leader and m.state in
                                dp.RUNNING_STATES and m.lag == 0, what=f"{sp.leader} streaming again", timeout=120)
    rejoined = time.monotonic() - t0
    rb.track(Outcome(f"switchover {sp.leader} -> {sp.candidate}", True, False,
                     actions=["CHECKPOINT on the leader", "POST /switchover"]))
    return {"mode": "switchover", "from": sp.leader, "to": sp.candidate, "promoted_s": round(promoted, 1),
            "rejoined_s": round(rejoined, 1)}


def ensure_backups_follow(rb: "Run", hosts: HaHosts) -> list[Check]:
    """pgBackRest on the leader now: configuration, archiving, the stanza's check and a backup (the schedule
    backs up only where ``pg_is_in_recovery()`` is false, so the new leader's cron takes them from now)."""
    if rb.dry_run:
        return []
    view = ops_patroni.get_cluster(hosts.servers, rb.params)
    if view is None or view.leader is None:
        return [Check("a leader", "fail", "no leader to back up from")]
    leader = rb.params.server(view.leader.name)
    host = hosts.servers[leader.name]
    if host is None:
        return [Check("pgBackRest on the leader", "fail", f"cannot reach {leader.name}")]
    outcomes, checks = fo.run_point_backups_at(host, rb.params, leader, archive_mode=True)
    rb.track(outcomes)
    return checks


def check_all(rb: "Run", hosts: HaHosts, backup_checks: list[Check]) -> list[Check]:
    view = ops_patroni.get_settled_cluster(hosts.servers, rb.params)
    return dp.check_cluster(view, rb.params, statuses=ops_patroni.get_member_statuses(hosts.servers, rb.params)) + [
        *backup_checks]


def get_topology_record(hosts: HaHosts, params: "Params") -> dict[str, Any]:
    view: ClusterView | None = ops_patroni.get_cluster(hosts.servers, params)
    return dp.topology_record(view) if view is not None else {"primary": None, "manager": "patroni"}


# step 11b ---------------------------------------------------------------------------------------------------

def maintenance(rb: "Run", hosts: HaHosts, mode: str) -> Outcome:
    """Pause (no automatic failover: for maintenance on a member) or resume Patroni, asked on the leader."""
    if mode not in ("pause", "resume"):
        raise UsageError(f"-p mode={mode!r}: pause or resume")
    view = ops_patroni.get_cluster(hosts.servers, rb.params)
    if view is None or view.leader is None:
        raise SafetyCheckFailed("no leader answers", hint="`hcbpg status`; nothing was changed.")
    leader = rb.params.server(view.leader.name)
    host = hosts.servers[leader.name]
    if host is None:
        raise SafetyCheckFailed(f"cannot reach the leader {leader.name}", hint="Nothing was changed.")
    return rb.track(ops_patroni.ensure_paused(dry_run_of(host, rb.dry_run), rb.params, leader, mode == "pause"))
