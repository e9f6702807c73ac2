"""Failover's plan (pure): a planned switchover when the primary is up, an unplanned failover when
it is not (:func:`plan_failover`); the new DATABASE_URL the operator gets, and where it is written."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hcbpg.desired import migration as desired_migration
from hcbpg.desired import patroni as desired_patroni
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.topology import ServerState, Topology
from hcbpg.errors import SafetyCheckFailed
from hcbpg.outcome import Outcome
from hcbpg.params import home
from hcbpg.pg import conninfo
from hcbpg.secrets import register

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server


@dataclass
class FailoverPlan:
    kind: Literal["switchover", "failover"]
    old_primary: str
    new_primary: str
    old_reachable: bool
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def gate(self) -> str:
        return "switchover" if self.kind == "switchover" else "failover"

    @property
    def question(self) -> str:
        if self.kind == "switchover":
            return (f"Planned switchover: stop {self.old_primary}, promote {self.new_primary}. The app gets errors "
                    f"until DATABASE_URL points at {self.new_primary}. Is the app ready to be repointed?")
        if self.old_reachable:
            return (f"UNPLANNED failover: {self.old_primary} is reachable over SSH but PostgreSQL is not running. "
                    f"hcbpg fences it (stop, standby.signal) and promotes {self.new_primary}; transactions "
                    f"{self.new_primary} had not received are lost. Proceed?")
        return (f"UNPLANNED failover: {self.old_primary} cannot be reached. Power it off (Hetzner console) or "
                f"otherwise make sure it cannot accept writes, then confirm: promote {self.new_primary}; "
                "transactions it had not received are lost.")

    def __str__(self) -> str:
        lines = [f"{self.kind}: {self.old_primary} → {self.new_primary}"]
        lines += [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def plan_failover(topology: Topology, states: Mapping[str, ServerState], params: "Params",
                  *, previous_primary: str | None = None) -> FailoverPlan:
    """Planned switchover when the primary is up, unplanned failover when it is not (pure).

    *previous_primary* (the recorded topology's) names the old primary when no server is
    primary now; else the server that is not a running replica.
    """
    standbys = [s for s in states.values() if s.running and s.in_recovery]
    if topology.primary is not None:
        old = topology.primary
        kind: Literal["switchover", "failover"] = "switchover"
    else:
        others = [n for n in states if n not in {s.name for s in standbys}]
        old = previous_primary if previous_primary in others else (others[0] if others else "")
        if not old:
            raise SafetyCheckFailed("no primary and no server that could have been one: every server is a running "
                                    "replica", hint="Promote one by hand (SELECT pg_promote()) after checking them.")
        kind = "failover"
    candidates = [s for s in standbys if s.name != old]
    if not candidates:
        raise SafetyCheckFailed(
            "no running replica to promote (servers: "
            + ", ".join(f"{n}: {'running' if s.running else 'stopped'}"
                        f"{', in recovery' if s.in_recovery else ''}" for n, s in states.items()) + ")",
            hint="Start the replica (or rebuild it with step 10) first. Nothing was changed.")
    following = [s for s in candidates if conninfo.parse_conninfo(s.primary_conninfo).get("host") ==
                 params.server(old).private_ip]
    new = (following or candidates)[0]
    ostate = states[old]
    plan = FailoverPlan(kind, old, new.name, ostate.reachable)
    if kind == "switchover":
        if new.name not in ostate.streaming_to:
            plan.warnings.append(f"{new.name} is not streaming from {old} right now; the switchover waits for it to "
                                 "replay the final checkpoint and stops if it cannot")
        plan.steps = [f"check {new.name} streams from {old}",
                      f"stop {old} cleanly (fast shutdown) and fence it (standby.signal, start.conf manual)",
                      f"wait until {new.name} has replayed {old}'s shutdown checkpoint (no committed row lost)",
                      f"promote {new.name} (pg_promote) and check it accepts writes",
                      f"write the new DATABASE_URL (host {new.private_ip}) for the operator",
                      f"rejoin {old} as a replica of {new.name} (pg_rewind, else a new base backup)",
                      f"point pgBackRest (archiving, stanza, check, backup) at {new.name}"]
    else:
        fence = (f"fence {old}: stop PostgreSQL (immediate), standby.signal, start.conf manual" if ostate.reachable
                 else f"{old} is unreachable: the operator fences it (power off) and confirms at the gate")
        plan.steps = [fence,
                      f"promote {new.name} (pg_promote) and check it accepts writes",
                      f"write the new DATABASE_URL (host {new.private_ip}) for the operator",
                      (f"rejoin {old} as a replica of {new.name} (pg_rewind, else a new base backup)" if ostate.reachable
                       else f"rejoin {old} later: run step 10 when it is back (it is rebuilt as a replica)"),
                      f"point pgBackRest (archiving, stanza, check, backup) at {new.name}"]
        plan.warnings.append("asynchronous replication: transactions the replica had not received are lost")
    return plan


def render_database_url(params: "Params", server: "Server", password: str, *, login: str | None = None) -> str:
    """The app's DATABASE_URL after a failover to *server*, for *login* (default: the app role), built like
    step 09's (``sslmode=verify-full`` with the environment's CA); registered with the scrubber.

    Manual replication: one host, *server*'s private IP.  Under Patroni the URL names every server and
    does not change in a failover (``target_session_attrs=read-write`` finds the new leader): that URL.
    """
    register(password)
    role = login or params.postgres.app_role
    if desired_patroni.managed(params):
        return register(desired_migration.render_app_url(params, role, password))
    return register(conninfo.render_role_url(params, role, password, host=server.private_ip,
                                             query=desired_tls.client_tls(params)))


def redacted_database_url(params: "Params", server: "Server", *, login: str | None = None) -> str:
    return conninfo.redact_url(render_database_url(params, server, "[secret]", login=login))


def database_url_path(params: "Params") -> Path:
    """Where the new DATABASE_URL is written for the operator: outside outputs/, 0600."""
    base = Path(os.environ.get("HCBPG_STATE_DIR") or (home() / ".hcbpg"))
    return base / "database-url" / f"{params.environment}.url"


def promotion_outcome(plan: FailoverPlan, result: Mapping[str, Any]) -> Outcome:
    """The promotion as an Outcome for the step's record (the DATABASE_URL redacted, its file named)."""
    return Outcome(f"{plan.new_primary} promoted ({plan.kind} from {plan.old_primary})", True,
                   actions=[f"fenced {plan.old_primary}: {result.get('fence', {}).get('state', 'unreachable')}",
                            f"promoted in {result.get('promote_s')}s",
                            f"new DATABASE_URL {result.get('database_url')} written to {result.get('database_url_file')}"])

