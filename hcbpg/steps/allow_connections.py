"""Step 03 (notebook ``03_allow_connections``): pg_hba.conf and listen_addresses on every server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from hcbpg.desired import server as desired_server
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import config as pg_config
from hcbpg.ops import server as pg_server
from hcbpg.ops import tls
from hcbpg.ops.cluster import get_cluster_running
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import app_host, hostlike, planning, server_hosts

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
    from hcbpg.pg.conf import SettingValue
    from hcbpg.pg.hba import HbaRule
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple[dict[str, "HostLike"], "HostLike | None"]:
    """A host per server (see :func:`hcbpg.steps.install_postgres.connect`), and the app host (only for a
    real run: the checks connect from it)."""
    hosts = {name: hostlike(rb, name, h) for name, h in server_hosts(rb).items()}
    app = app_host(rb) if rb.params.app_host and not rb.dry_run else None
    return hosts, app


def allow_connections(host: "HostLike", params: "Params", server: "Server", *,
                      extra_settings: "Mapping[str, SettingValue] | None" = None,
                      extra_rules: "Sequence[HbaRule]" = ()) -> list[Outcome]:
    """Step 03 on one server: TLS files, pg_hba.conf (so the new listener never meets the old rules), then settings.

    Refused while the cluster is not running (step 02 starts it)."""
    # dry run: step 02's start may only have been recorded (a plan of both steps on a fresh server)
    if not host.dry_run and not get_cluster_running(host, params):
        raise SafetyCheckFailed(f"on {server.name}: cluster {params.postgres.version}/{params.postgres.cluster} "
                                "is not running", hint="Run step 02 (install PostgreSQL) first.")
    # the certificate first, then ssl on (PostgreSQL refuses hostssl rules while ssl is off), then pg_hba
    return [*tls.ensure_server_tls(host, params, server),
            pg_config.ensure_settings(host, params, server, "tls"),
            pg_config.ensure_pg_hba(host, params, server, extra=extra_rules),
            pg_config.ensure_settings(host, params, server, "connections", extra=extra_settings)]


def get_plan(hosts: Mapping[str, "HostLike"], params: "Params") -> list[Outcome]:
    """What step 03 would do on every server, in params order (recorded on fresh dry-run hosts: nothing changes)."""
    return [o for s in params.servers for o in allow_connections(planning(hosts[s.name]), params, s)]


def apply(rb: "Run", hosts: Mapping[str, "HostLike"], app: "HostLike | None" = None) -> None:
    """Server by server, each one's outcomes tracked (and shown unless a dry run) as it finishes; then
    the CA certificate on the app host, so its clients can verify the servers."""
    params = rb.params
    for s in params.servers:
        rb.track(allow_connections(hostlike(rb, s.name, hosts[s.name]), params, s), show=not rb.dry_run)
    if params.app_host is not None:
        rb.track(tls.ensure_client_ca(hostlike(rb, params.app_host.name, app), params), show=not rb.dry_run)


def check_allowed(hosts: Mapping[str, "HostLike"], params: "Params", app: "HostLike | None") -> list[Check]:
    """Settings in force with no restart pending; connections from the app host accepted; each server's
    certificate; from the app host TLS verified, plaintext and a foreign CA refused."""
    out = [c for s in params.servers for c in pg_server.check_connections(hosts[s.name], params, s, app)]
    for s in params.servers:
        out.append(tls.check_server_cert(hosts[s.name], params, s))
        if app is not None:
            out += tls.check_tls_from(app, params, s)
    return out


def pg_hba_files(params: "Params") -> dict[str, str]:
    """Each server's pg_hba.conf as rendered from params (the record)."""
    return {s.name: desired_server.render_pg_hba(params, s) for s in params.servers}
