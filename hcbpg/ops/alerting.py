"""The monitor (issue 25) on its machines: Prometheus and Alertmanager on the jumpbox, node exporter on every
database server and the jumpbox; what the monitor says, read on the jumpbox with curl (its APIs listen on
loopback only).

    ensure_monitor_packages(host)               prometheus, prometheus-alertmanager, node exporter (not started)
    ensure_node_exporter(host, params, name)    the package, the textfile directory, the daemon on name's private IP
    ensure_monitor_config(host, params, secrets)  rules, Prometheus's config, Alertmanager's (receivers' secrets
                                                resolved by the caller: written, never in a diff)
    ensure_monitor_running(host, params, reload=)  both daemons running; SIGHUP (reload) when their files changed
    get_alerts(host, params) / get_targets(...)  Alertmanager's alerts (the Heartbeat left out), Prometheus's targets

The daemons run as :mod:`hcbpg.desired.services` says, under systemd or detached with a pidfile
(:class:`~hcbpg.adapters.services.ServiceControl`).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.adapters.dryrun import AbsentHost
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import alerting as desired_alerting
from hcbpg.desired.alerting import ActiveAlert, TargetHealth
from hcbpg.desired.services import (
    ALERTMANAGER_DATA,
    PROMETHEUS_DATA,
    alertmanager_service,
    node_exporter_service,
    prometheus_service,
)
from hcbpg.errors import HcbpgError, ParamsError, SafetyCheckFailed
from hcbpg.ops.ha_files import ensure_cert, ensure_daemon_packages, ensure_text
from hcbpg.ops.monitoring import ensure_exporter_tls
from hcbpg.outcome import Outcome
from hcbpg.pg.services import ServiceSpec, render_start_command
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params

MONITOR_PACKAGES = ("prometheus", "prometheus-alertmanager", "prometheus-node-exporter")
NODE_PACKAGES = ("prometheus-node-exporter",)
#: the monitor's daemons' user (Debian's packages make it)
USER = "prometheus"


def _private_ip(params: "Params", name: str) -> str:
    if params.jumpbox is not None and params.jumpbox.name == name:
        return params.jumpbox.private_ip
    for s in params.servers:
        if s.name == name:
            return s.private_ip
    raise ParamsError("params", [f"{name}: neither a server nor the jumpbox: node exporter listens on a machine's "
                                 "private IP"])


def ensure_monitor_packages(host: "HostLike") -> Outcome:
    """Prometheus, Alertmanager and node exporter installed on the jumpbox, none started by its package."""
    return ensure_daemon_packages(host, MONITOR_PACKAGES, stop_units=MONITOR_PACKAGES)


def ensure_node_exporter(host: "HostLike", params: "Params", name: str) -> list[Outcome]:
    """Node exporter on machine *name* (a server or the jumpbox): installed, the textfile directory
    (:data:`~hcbpg.desired.alerting.TEXTFILE_DIR`, the prometheus user's), running on the private IP with TLS only
    (:func:`hcbpg.ops.monitoring.ensure_exporter_tls`: exporter-toolkit reads the certificate at each handshake, so a
    renewed one needs no restart)."""
    desired_alerting.alerting_params(params)
    ip = _private_ip(params, name)
    spec = node_exporter_service(params, ip)
    out = [ensure_daemon_packages(host, NODE_PACKAGES, stop_units=NODE_PACKAGES)]
    out += ensure_exporter_tls(host, params, name, ip)
    seen = Changes(host)
    if not host.probe(f"test -d {desired_alerting.TEXTFILE_DIR}").ok:
        # postgres's on a database server (the health job writes as postgres), root's on the jumpbox; 0755: node
        # exporter reads as others
        owner = "postgres" if any(s.name == name for s in params.servers) else "root"
        ensure_dir(host, desired_alerting.TEXTFILE_DIR, mode=0o755, owner=owner)
    out.append(seen.outcome(f"node exporter's textfile directory on {name}"))
    out.append(_ensure_daemon(host, spec, reload=False, what=f"node exporter on {name} "
                                                            f"({spec.argv[1].split('=', 1)[1]})"))
    return out


def _ensure_daemon(host: "HostLike", spec: ServiceSpec, *, reload: bool, what: str) -> Outcome:
    """*spec* running on *host* (started unless it runs); *reload*: a running one gets SIGHUP."""
    seen = Changes(host)
    if isinstance(host, AbsentHost):
        host.run(render_start_command(spec), display=f"start {spec.name}")
        return seen.outcome(what)
    control = ServiceControl.of(host)
    status = control.get_status(spec)
    if status.running and reload:
        host.run(f"kill -HUP {status.pid}", display=f"reload {spec.name} (SIGHUP)")
    elif not control.systemd and not status.running and status.pid is not None:
        _stop_outdated(host, spec, status.pid)
    control.ensure_running(spec)
    return seen.outcome(f"{what} ({control.manager})")


def _stop_outdated(host: "HostLike", spec: ServiceSpec, pid: int) -> None:
    """Without systemd, the pidfile's process running the same daemon with other options (params changed its
    port, address or retention) is not *spec* running, and holds its port: stopped (SIGTERM), so the spec's
    starts.  A pid another program took is left alone."""
    argv = host.probe(f"cat /proc/{pid}/cmdline").stdout.split("\0")
    if argv[:1] != [spec.argv[0]]:
        return
    host.run(f"kill -TERM {pid}", display=f"stop {spec.name} (pid {pid}: started with other options)")
    if not host.dry_run:
        wait_until(lambda: host.probe(f"test -d /proc/{pid}").ok, lambda alive: not alive,
                   timeout=spec.stop_timeout_s, interval=0.2, what=f"{spec.name} (pid {pid}) to stop on {host.name}")


def _missing_secrets(params: "Params", secrets: Mapping[str, str]) -> list[str]:
    return [ref for ref in desired_alerting.secret_refs(params) if not secrets.get(ref)]


def ensure_monitor_config(host: "HostLike", params: "Params", secrets: Mapping[str, str] | None) -> list[Outcome]:
    """The rules, Prometheus's config and Alertmanager's on the jumpbox (root:prometheus 0640).

    *secrets* maps each of :func:`~hcbpg.desired.alerting.secret_refs` to its value; Alertmanager's file is
    written with them and shown only as 'changed'.  None (a plan): compared and recorded with placeholders; a
    host that is not a dry run refuses to write without every secret (nothing written)."""
    desired_alerting.alerting_params(params)
    if secrets is None:
        if not host.dry_run:
            raise SafetyCheckFailed("the monitor's config: Alertmanager's receivers need their secrets, and none were "
                                    "given (nothing written)", hint="Resolve alerting's secret references first.")
        secrets_or_none: Mapping[str, str] | None = None
    else:
        missing = _missing_secrets(params, secrets)
        if missing:
            raise SafetyCheckFailed(f"the monitor's config: no value for {', '.join(missing)} (nothing written)",
                                    hint="Each secret reference under alerting must resolve (hcbpg doctor).")
        secrets_or_none = secrets
    out = [ensure_text(host, desired_alerting.RULES_PATH, desired_alerting.render_rules(params), mode=0o640,
                       owner="root", group=USER, what=f"alerting rules on {host.name}"),
           ensure_text(host, desired_alerting.PROMETHEUS_CONFIG, desired_alerting.render_prometheus_config(params),
                       mode=0o640, owner="root", group=USER, what=f"Prometheus's config on {host.name}")]
    am = desired_alerting.render_alertmanager_config(params, secrets_or_none)
    out.append(ensure_text(host, desired_alerting.ALERTMANAGER_CONFIG, am, mode=0o640, owner="root", group=USER,
                           what=f"Alertmanager's config on {host.name}", secret=True))
    seen = Changes(host)
    for d in (PROMETHEUS_DATA, ALERTMANAGER_DATA):
        if not host.probe(f"test -d {shlex.quote(d)}").ok:
            ensure_dir(host, d, mode=0o750, owner=USER)
    out.append(seen.outcome(f"the monitor's data directories on {host.name}"))
    if "etcd" in desired_alerting.scrape_targets(params):
        # Prometheus's client certificate for etcd's /metrics (etcd asks every client for one), the prometheus user's:
        # its config names it, and a scrape pool whose certificate is missing is never made (no target listed)
        out += ensure_cert(host, params, desired_alerting.ETCD_CLIENT_SPEC, desired_alerting.ETCD_CLIENT_CERT,
                           desired_alerting.ETCD_CLIENT_KEY, owner=USER, with_ca=False,
                           what=f"Prometheus's etcd client certificate on {host.name}")
    return out


def ensure_monitor_running(host: "HostLike", params: "Params", *, reload: bool = False) -> list[Outcome]:
    """Prometheus and Alertmanager running on the jumpbox; *reload* (their files changed): a running one gets
    SIGHUP (both read their config and rules again; a bad file is logged and the old one kept)."""
    if not isinstance(host, AbsentHost):
        for path in (desired_alerting.PROMETHEUS_CONFIG, desired_alerting.ALERTMANAGER_CONFIG):
            if host.read_text(path) is None and not host.dry_run:
                raise SafetyCheckFailed(f"{path} is not on {host.name}: the monitor has no config to start with",
                                        hint="ensure_monitor_config first (step 15b does both).")
    return [_ensure_daemon(host, spec, reload=reload, what=f"{spec.name} on {host.name}")
            for spec in (alertmanager_service(params), prometheus_service(params))]


# reads ------------------------------------------------------------------------------------------------------

def _curl(host: "HostLike", url: str) -> str:
    res = host.probe(shlex.join(["curl", "-sS", "--fail", "--max-time", "10", url]))
    if not res.ok:
        raise HcbpgError(f"the monitor on {host.name}: GET {url} failed: {res.output.strip()[-300:]}",
                         hint="Is it running? (step 15b starts it; its log is under /var/log/prometheus)")
    return res.stdout


def get_alerts(host: "HostLike", params: "Params") -> list[ActiveAlert]:
    """The alerts Alertmanager on the jumpbox holds now (the Heartbeat left out), asked on the jumpbox."""
    a = desired_alerting.alerting_params(params)
    return desired_alerting.parse_alerts(_curl(host, f"http://127.0.0.1:{a.alertmanager_port}/api/v2/alerts"))


def get_targets(host: "HostLike", params: "Params") -> list[TargetHealth]:
    """Every scrape target and its health as Prometheus on the jumpbox last saw it."""
    a = desired_alerting.alerting_params(params)
    return desired_alerting.parse_targets(_curl(host, f"http://127.0.0.1:{a.prometheus_port}/api/v1/targets"))


def wait_for_targets_up(host: "HostLike", params: "Params", *, timeout: float = 60.0,
                        sleep: Callable[[float], None] = time.sleep) -> list[TargetHealth]:
    """Every target of every job the config names up (each scraped once at least), else WaitTimeout naming the ones
    that are not."""
    def probe() -> list[TargetHealth]:
        try:
            return get_targets(host, params)
        except HcbpgError:
            return []  # not listening yet (its first seconds: the TSDB opening)

    jobs = set(desired_alerting.scrape_targets(params))

    def down(ts: list[TargetHealth]) -> str:
        missing = sorted(jobs - {t.job for t in ts})
        return "; ".join([f"{t.job}/{t.server} {t.health} {t.error}".strip() for t in ts if t.health != "up"]
                         + [f"job {j}: no target (its scrape pool was not made: Prometheus's log)" for j in missing]
                         ) or "no answer from Prometheus"

    return wait_until(probe, lambda ts: bool(ts) and jobs <= {t.job for t in ts} and all(t.health == "up" for t in ts),
                      timeout=timeout, interval=1.0, what=f"every scrape target up on {host.name}'s Prometheus",
                      describe=down, sleep=sleep)
