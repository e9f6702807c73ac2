"""Step 15b (notebook ``15b_alerting``, issue 25): the monitor on the jumpbox.  Only with an ``alerting:`` section
in params (steps.yaml lists the step for such params only; run by name without one, it skips itself).

Node exporter on every database server and on the jumpbox (its textfile directory for hcbpg's own metrics);
Prometheus and Alertmanager on the jumpbox with the rules and configs rendered from params
(:mod:`hcbpg.desired.alerting`), the receivers' secrets resolved here and written only into Alertmanager's 0640 file;
both daemons reloaded (SIGHUP) when their files changed.  The health job's config on each server gains its
textfile section (node exporter's textfile: pgBackRest's info, the certificates' ends) and the job runs once on
each (as postgres, as cron would), so a fresh monitor has those facts at once.  Then every scrape target up, and
the alerts that fire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hcbpg import secrets as hsecrets
from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.desired import alerting as desired_alerting
from hcbpg.display import show_table
from hcbpg.errors import HcbpgError, SafetyCheckFailed
from hcbpg.ops import alerting as ops_alerting
from hcbpg.ops import schedule as ops_schedule
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import connect_jumpbox, connect_servers

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


@dataclass
class MonitorHosts:
    """The step's machines: each database server (None: unreachable) and the jumpbox (the monitor)."""

    servers: dict[str, "HostLike | None"]
    jumpbox: "HostLike | None"
    jumpbox_name: str


def skip_unless_alerting(rb: "Run") -> None:
    """End the step early when params have no ``alerting:`` section (nothing is monitored, nothing changes)."""
    if rb.params.alerting is None:
        rb.skip("params have no alerting section: no monitor is set up (see params/production.yaml's comments).")


def connect(rb: "Run") -> MonitorHosts:
    """An open Host per server and the jumpbox (its address as step 01 pinned it)."""
    params = rb.params
    if params.jumpbox is None:
        raise HcbpgError("step 15b_alerting runs the monitor on the jumpbox, and params name none",
                         hint="Add the jumpbox section (step 01 makes it), or remove the alerting section.")
    servers: dict[str, HostLike | None] = dict(connect_servers(rb))
    jumpbox: HostLike | None = connect_jumpbox(rb)
    return MonitorHosts(servers, jumpbox, params.jumpbox.name)


def resolve_secrets(params: "Params") -> dict[str, str]:
    """Each secret reference Alertmanager's config needs, resolved (never printed, never a parameter)."""
    return {ref: hsecrets.resolve(ref, key="alerting (a receiver or the heartbeat)")
            for ref in desired_alerting.secret_refs(params)}


def _target(name: str, host: "HostLike | None", *, dry_run: bool) -> "HostLike":
    if host is None:
        if dry_run:
            return AbsentHost(name)
        raise SafetyCheckFailed(f"cannot reach {name} over SSH", target=name,
                                hint="Bring it back (or fix SSH), then run the step again. Nothing was changed on it.")
    return dry_run_of(host, dry_run)


def setup_alerting(hosts: MonitorHosts, params: "Params", secrets: dict[str, str] | None, *,
                   dry_run: bool) -> list[Outcome]:
    """The whole step (a plan when *dry_run*: *secrets* may be None then, Alertmanager's file compared with
    placeholders)."""
    out: list[Outcome] = []
    for s in params.servers:
        out += ops_alerting.ensure_node_exporter(_target(s.name, hosts.servers.get(s.name), dry_run=dry_run), params,
                                                 s.name)
    for s in params.servers:  # the health job writes node exporter's textfile once its config says so
        out += ops_schedule.ensure_health_schedule(_target(s.name, hosts.servers.get(s.name), dry_run=dry_run),
                                                   params, s)
    jb = _target(hosts.jumpbox_name, hosts.jumpbox, dry_run=dry_run)
    out.append(ops_alerting.ensure_monitor_packages(jb))
    out += ops_alerting.ensure_node_exporter(jb, params, hosts.jumpbox_name)
    files = ops_alerting.ensure_monitor_config(jb, params, None if dry_run else secrets)
    out += files
    out += ops_alerting.ensure_monitor_running(jb, params, reload=any(o.changed for o in files))
    return out


def get_plan(hosts: MonitorHosts, params: "Params") -> list[Outcome]:
    """What the step would change (nothing is changed; no secret is resolved)."""
    return setup_alerting(hosts, params, None, dry_run=True)


def apply(rb: "Run", hosts: MonitorHosts, plan: list[Outcome]) -> list[Outcome]:
    """Set the monitor up (a dry run tracks the plan)."""
    if rb.dry_run:
        rb.track(plan, show=False)
        return plan
    result = setup_alerting(hosts, rb.params, resolve_secrets(rb.params), dry_run=False)
    rb.track(result)
    run_health_jobs(hosts, rb.params)
    return result


def run_health_jobs(hosts: MonitorHosts, params: "Params") -> dict[str, int]:
    """The health job once on each reachable server (its textfile written now, not at cron's next run); each
    server's exit status (1: a check failed, which its pings and ``hcbpg status`` say; not this step's failure)."""
    out = {}
    for s in params.servers:
        host = hosts.servers.get(s.name)
        if host is not None:
            out[s.name] = ops_schedule.run_health_job(host, timeout=120).exit_code
    return out


def check_monitor(hosts: MonitorHosts, params: "Params", *, timeout: float = 90.0) -> list[Check]:
    """Every scrape target up (waited for: the first scrapes), and no alert firing (each one a warning)."""
    if hosts.jumpbox is None:
        return [Check.of("monitor", False, "the jumpbox is not reachable", hosts.jumpbox_name)]
    jb = hosts.jumpbox
    try:
        targets = ops_alerting.wait_for_targets_up(jb, params, timeout=timeout)
    except HcbpgError:
        targets = ops_alerting.get_targets(jb, params)
    checks = [Check.of(f"scrape {t.job}", t.health == "up", t.error or t.url, t.server) for t in targets]
    checks += [Check.of(f"scrape {job}", False, "no target: Prometheus made no scrape pool for it (its log says why)",
                        hosts.jumpbox_name)
               for job in desired_alerting.scrape_targets(params) if job not in {t.job for t in targets}]
    alerts = ops_alerting.get_alerts(jb, params)
    checks += [Check(f"alert {a.name}", "warn", f"{a.severity}: {a.summary}", a.server or hosts.jumpbox_name)
               for a in alerts]
    if not alerts:
        checks.append(Check.of("alerts", True, "none firing", hosts.jumpbox_name))
    return checks


def show_alerts(hosts: MonitorHosts, params: "Params") -> None:
    """The alerts Alertmanager holds now (the Heartbeat left out)."""
    if hosts.jumpbox is None:
        print("the jumpbox is not reachable")
        return
    alerts = ops_alerting.get_alerts(hosts.jumpbox, params)
    if not alerts:
        print("no alert firing")
        return
    show_table([{"alert": a.name, "server": a.server, "severity": a.severity, "since": a.starts_at,
                 "summary": a.summary} for a in alerts])
