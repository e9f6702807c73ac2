"""Patroni on the database servers: its files, the daemon, the adoption of a running pair, and the operator's
calls (switchover, pause, resume, restart) through its REST API (:class:`~hcbpg.adapters.patroni.PatroniApi`).

    ensure_patroni_packages(host)                      patroni installed (its own unit never started by apt)
    ensure_patroni_files(host, params, server, ...)    TLS (REST and etcd client), patroni.yml, secrets.yml, netrc
    ensure_patroni_running(host, params)               the daemon (systemd, or detached with a pidfile)
    get_member_status(host, params, server)            GET /patroni (None: Patroni does not answer)
    get_cluster(hosts, params)                         GET /cluster from the first member that answers
    ensure_dcs_config(host, params, server, shape)     PATCH /config with what differs from hcbpg's dynamic config
    run_restart(host, params, server)                  POST /restart
    run_switchover(host, params, server, plan)         POST /switchover
    ensure_paused(host, params, server, paused)        PATCH /config {"pause": ...}
    wait_for_member(hosts, params, name, want)         GET /cluster until *name* is as *want* says
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.adapters.patroni import PatroniApi
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import patroni as dp
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.patroni import ClusterView, Member, MemberStatus, PatroniSecrets, SwitchoverPlan
from hcbpg.desired.services import patroni_service
from hcbpg.errors import HcbpgError, PatroniError, SafetyCheckFailed, WaitTimeout
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.ha_files import ensure_cert, ensure_daemon_packages, ensure_text
from hcbpg.ops.replica import ensure_start_conf
from hcbpg.outcome import Outcome
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server


def get_api(host: "HostLike", params: "Params", server: "Server") -> PatroniApi:
    """Member *server*'s REST API, called on *host* (the member itself)."""
    return PatroniApi(host, server.name, dp.rest_url(params, server), ca=desired_tls.client_ca_path(params),
                      cert=dp.REST_CERT, key=dp.REST_KEY, netrc=dp.rest_netrc_path(params))


def ensure_patroni_packages(host: "HostLike", params: "Params") -> Outcome:
    """patroni (and curl, which hcbpg's REST calls use) installed; apt starts no daemon."""
    del params
    return ensure_daemon_packages(host, ("patroni", "curl"), stop_units=("patroni",))


def ensure_patroni_files(host: "HostLike", params: "Params", server: "Server", secrets: PatroniSecrets | None, *,
                         shape: ServerShape) -> list[Outcome]:
    """Everything Patroni reads on *server*: the TLS files, the config directory (``patroni.yml``, diffed;
    ``secrets.yml``, never shown), the REST netrc hcbpg's curl reads, and ``start.conf`` manual (only Patroni
    starts the cluster).  *secrets* None (a dry run without them): the secret files are planned, not written."""
    what = server.name
    # rendered first: a password a file cannot carry is refused before anything is written
    secrets_text = dp.render_patroni_secrets(params, secrets)
    netrc_text = dp.render_rest_netrc(params, server, secrets.rest_password if secrets else None)
    out = ensure_cert(host, params, dp.rest_cert_spec(server), dp.REST_CERT, dp.REST_KEY, owner="postgres",
                      what=f"Patroni REST certificate of {what}")
    out += ensure_cert(host, params, dp.ETCD_CLIENT_SPEC, dp.ETCD_CLIENT_CERT, dp.ETCD_CLIENT_KEY, owner="postgres",
                       what=f"Patroni's etcd client certificate on {what}", with_ca=False)
    out.append(ensure_text(host, dp.config_path(params), dp.render_patroni_yaml(params, server, shape=shape),
                           mode=0o600, owner="postgres", what=f"patroni.yml on {what}"))
    out.append(ensure_text(host, dp.secrets_path(params), secrets_text, mode=0o600,
                           owner="postgres", what=f"Patroni's secrets.yml on {what}", secret=True))
    out.append(ensure_text(host, dp.rest_netrc_path(params), netrc_text,
                           mode=0o600, owner="root", what=f"REST netrc on {what}", secret=True))
    out.append(ensure_start_conf(host, params, "manual"))
    out.append(_ensure_pgdata_link(host, params))
    return out


def _ensure_pgdata_link(host: "HostLike", params: "Params") -> Outcome:
    """The ``pgdata`` symlink in the cluster's config directory.  Debian's pg_wrapper (``psql --cluster``,
    ``pg_ctlcluster``) reads the data directory from postgresql.conf, which Patroni rewrites in place (truncated,
    then written); a lookup in between failed with 'Invalid data directory for cluster 15 main' (in 2 of 11 lab
    builds of a Patroni pair).  pg_wrapper's fallback, this link, answers while the file is being written."""
    pg = params.postgres
    link = f"/etc/postgresql/{pg.version}/{pg.cluster}/pgdata"
    target = f"/var/lib/postgresql/{pg.version}/{pg.cluster}"
    seen = Changes(host)
    if host.probe(f"readlink {shlex.quote(link)}").stdout.strip() != target:
        host.run(f"ln -sfn {shlex.quote(target)} {shlex.quote(link)}",
                 display=f"link {link} -> {target}")
    return seen.outcome(f"pgdata link on {host.name}")


def ensure_watchdog(host: "HostLike", params: "Params") -> Outcome:
    """The softdog watchdog for Patroni where params ask for one (``watchdog: automatic`` or ``required``): the
    module loaded now and at every boot, ``/dev/watchdog`` owned by postgres.  A leader whose Patroni hangs is then
    reset before its lease ends, so it cannot write beside a new leader.  A kernel without softdog: ``required``
    is refused (Patroni would not lead); ``automatic`` goes on without one, saying so (then only the lease guards
    that case: a hung Patroni's PostgreSQL keeps accepting writes until something stops it)."""
    p = dp.patroni_params(params)
    seen = Changes(host)
    if p.watchdog == "off":
        return seen.outcome(f"watchdog on {host.name}: off in params (the lease alone guards a hung Patroni)")
    has_device = host.probe(f"test -c {dp.WATCHDOG_DEVICE}").ok
    if not has_device and not host.probe("modprobe -n -q softdog").ok:
        if p.watchdog == "required":
            raise SafetyCheckFailed(f"on {host.name}: no watchdog device and no softdog module in this kernel, but "
                                    "replication.patroni.watchdog is required (Patroni would refuse to lead)",
                                    target=host.name, hint="Install the kernel's extra modules (linux-modules-extra-"
                                    "$(uname -r)) or set watchdog: automatic. Nothing was changed.")
        return Outcome(f"watchdog on {host.name}", False, host.dry_run,
                       actions=["no softdog in this kernel: Patroni runs without a watchdog (automatic)"])
    for path, text in dp.render_watchdog_files().items():
        ensure_text(host, path, text, mode=0o644, what=f"{path} on {host.name}")
    if not has_device:
        host.run("modprobe softdog", display="modprobe softdog (the kernel's software watchdog)")
    if host.probe(f"stat -c '%U %a' {dp.WATCHDOG_DEVICE}").stdout.strip() != "postgres 600":
        host.run(f"chown postgres:postgres {dp.WATCHDOG_DEVICE} && chmod 0600 {dp.WATCHDOG_DEVICE}")
    return seen.outcome(f"watchdog on {host.name}: softdog, {dp.WATCHDOG_DEVICE} Patroni's")


def get_patroni_running(host: "HostLike", params: "Params") -> bool:
    """Whether Patroni's daemon runs on *host* (its pidfile or its unit: a read)."""
    return ServiceControl.of(host).get_status(patroni_service(params)).running


def ensure_patroni_running(host: "HostLike", params: "Params") -> Outcome:
    seen = Changes(host)
    ServiceControl.of(host).ensure_running(patroni_service(params), wait_s=20)
    return seen.outcome(f"Patroni running on {host.name}")


def run_reload(host: "HostLike", params: "Params", server: "Server") -> None:
    """POST /reload: Patroni reads its config files again (and applies what needs no restart)."""
    get_api(host, params, server).post("/reload", {}, ok=(200, 202))


def get_member_status(host: "HostLike", params: "Params", server: "Server") -> MemberStatus | None:
    """GET /patroni of *server*, None when its Patroni does not answer."""
    try:
        return dp.parse_member_status(get_api(host, params, server).get_json("/patroni", timeout_s=3))
    except PatroniError:
        return None


def get_cluster(hosts: Mapping[str, "HostLike | None"], params: "Params") -> ClusterView | None:
    """GET /cluster from the first member (params order) whose Patroni answers; None when none does."""
    for s in params.servers:
        host = hosts.get(s.name)
        if host is None:
            continue
        try:
            return dp.parse_cluster(get_api(host, params, s).get_json("/cluster", ok=(200,), timeout_s=3))
        except (PatroniError, HcbpgError):
            continue
    return None


def get_history(host: "HostLike", params: "Params", server: "Server") -> list[dp.HistoryEntry]:
    return dp.parse_history(json.dumps(get_api(host, params, server).get_json("/history", ok=(200,))))


def ensure_dcs_config(host: "HostLike", params: "Params", server: "Server", shape: ServerShape) -> Outcome:
    """Patroni's dynamic configuration says what hcbpg wants (ttl, loop_wait, synchronous mode, failsafe, the
    settings Patroni owns): GET /config, then PATCH only what differs.  ``bootstrap.dcs`` is read only when a
    cluster is initialised, never when Patroni adopts a running one: this is how the values get there."""
    api = get_api(host, params, server)
    current = api.get_json("/config", ok=(200,)) if not host.dry_run or get_member_status(
        host, params, server) is not None else {}
    patch = dp.render_dcs_patch(current if isinstance(current, Mapping) else {}, params, shape)
    seen = Changes(host)
    if patch:
        api.patch("/config", patch, display=f"PATCH /config on {server.name}: {json.dumps(patch, sort_keys=True)}")
    return seen.outcome(f"Patroni's dynamic configuration (asked on {server.name})",
                        diff="" if not patch else json.dumps(patch, indent=1, sort_keys=True))


def run_restart(host: "HostLike", params: "Params", server: "Server", *, only_pending: bool = True) -> None:
    """POST /restart: Patroni restarts *server*'s PostgreSQL (with *only_pending*, only if a restart is pending:
    ``{"restart_pending": true}``)."""
    get_api(host, params, server).post("/restart", {"restart_pending": True} if only_pending else {},
                                       ok=(200, 202), timeout_s=120)


def run_cluster_restart(host: "HostLike", params: "Params") -> None:
    """Restart PostgreSQL on *host*: through Patroni (``POST /restart``, then the member running again with no
    restart pending) where Patroni runs it, else ``pg_ctlcluster ... restart``."""
    if not pg_cluster.get_patroni_managed(host, params):
        pg_cluster.run_restart(host, params)
        return
    server = next((s for s in params.servers if s.name == host.name), None)
    if server is None:
        raise SafetyCheckFailed(f"{host.name} is not a server in params: Patroni cannot restart it")
    run_restart(host, params, server, only_pending=False)
    if not host.dry_run:
        wait_for_member({host.name: host}, params, server.name,
                        lambda m: m.state in dp.RUNNING_STATES and not m.pending_restart,
                        what=f"{server.name} running after Patroni's restart", timeout=180)


def run_reinitialize(host: "HostLike", params: "Params", server: "Server") -> None:
    """POST /reinitialize on *server* (a replica): its data directory replaced by Patroni's
    create_replica_methods (pgBackRest from the repository first); refused by Patroni on the leader."""
    get_api(host, params, server).post("/reinitialize", {"force": True}, ok=(200,), timeout_s=60)


def run_switchover(host: "HostLike", params: "Params", plan: SwitchoverPlan) -> tuple[int, str]:
    """POST /switchover with *plan*'s leader and candidate, asked on the leader (*host*)."""
    body = plan.body()
    leader = params.server(body["leader"])
    return get_api(host, params, leader).post("/switchover", body, ok=(200,), timeout_s=90)


def ensure_paused(host: "HostLike", params: "Params", server: "Server", paused: bool) -> Outcome:
    """Maintenance mode (``patronictl pause``/``resume``): no automatic failover while paused."""
    seen = Changes(host)
    api = get_api(host, params, server)
    # a plan reads it too (a GET changes nothing): else it would miss a resume and invent a pause
    current = api.get_json("/config", ok=(200,)) if not host.dry_run or get_member_status(
        host, params, server) is not None else {}
    now = bool(current.get("pause")) if isinstance(current, Mapping) else False
    if now != paused:
        api.patch("/config", {"pause": True if paused else None},
                  display=f"PATCH /config pause={'true' if paused else 'null'} on {server.name}")
    return seen.outcome(f"Patroni {'paused' if paused else 'resumed'} (automatic failover "
                        f"{'off' if paused else 'on'})")


def wait_for_member(hosts: Mapping[str, "HostLike | None"], params: "Params", name: str,
                    want: Callable[[Member], bool], *, what: str, timeout: float = 120.0) -> ClusterView:
    """GET /cluster until member *name* satisfies *want*; the view then."""
    def probe() -> ClusterView | None:
        return get_cluster(hosts, params)

    def done(v: ClusterView | None) -> bool:
        m = v.member(name) if v is not None else None
        return m is not None and want(m)

    view = wait_until(probe, done, what=what, timeout=timeout, interval=0.5,
                      describe=lambda v: "no member answers" if v is None else "; ".join(
                          f"{r['Member']} {r['Role']} {r['State']} TL {r['TL']} lag {r['Lag in MB']}"
                          for r in v.rows()),
                      hint=f"Patroni's log on {name}: /var/log/patroni/patroni.log (or journalctl -u patroni@...).")
    assert view is not None
    return view


def get_settled_cluster(hosts: Mapping[str, "HostLike | None"], params: "Params", *,
                        timeout: float = 30.0) -> ClusterView | None:
    """GET /cluster until every replica runs within ``maximum_lag_on_failover`` (at most *timeout* seconds), the
    last view either way, for a step's checks to judge.  Patroni publishes a member's WAL position once a loop: right
    after a WAL switch (a backup's start and stop) a streaming replica shows a segment or two behind for a moment
    (a step 11 after a failover read 32 MiB once and failed its check in a fresh-clone run); a replica really
    lagging still shows so at the deadline."""
    max_lag = dp.patroni_params(params).maximum_lag_on_failover

    def settled(v: ClusterView | None) -> bool:
        return v is not None and v.leader is not None and all(
            m.is_leader or (m.state in dp.RUNNING_STATES and m.lag is not None and m.lag <= max_lag)
            for m in v.members)
    try:
        return wait_until(lambda: get_cluster(hosts, params), settled, what="every replica within the lag bound",
                          timeout=timeout, interval=0.5)
    except WaitTimeout:
        return get_cluster(hosts, params)


def wait_for_sync_standby(hosts: Mapping[str, "HostLike | None"], params: "Params", *,
                          timeout: float = 60.0) -> ClusterView:
    """GET /cluster until a member is the sync standby (synchronous_mode: Patroni names one within a loop or two
    of a replica streaming)."""
    view = wait_until(lambda: get_cluster(hosts, params),
                      lambda v: v is not None and any(m.is_sync_standby for m in v.members), what="a sync standby",
                      timeout=timeout, interval=0.5,
                      describe=lambda v: "no member answers" if v is None else "; ".join(
                          f"{r['Member']} {r['Role']} {r['State']}" for r in v.rows()))
    assert view is not None
    return view


def get_member_statuses(hosts: Mapping[str, "HostLike | None"], params: "Params") -> dict[str, MemberStatus | None]:
    """GET /patroni of every server (None where it does not answer): it answers with etcd down too."""
    out: dict[str, MemberStatus | None] = {}
    for s in params.servers:
        host = hosts.get(s.name)
        out[s.name] = get_member_status(host, params, s) if host is not None else None
    return out
