"""Step 03 (notebook ``03_allow_connections``): pg_hba.conf and listen_addresses on every server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg.desired import server as desired_server
from hcbpg.ops import server as pg_server
from hcbpg.ops import tls
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import app_host, server_hosts

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple[dict[str, "Host | None"], "Host | None"]:
    """An open Host per server, and the app host (only for a real run: the checks connect from it)."""
    hosts = server_hosts(rb)
    app = app_host(rb) if rb.params.app_host and not rb.dry_run else None
    return hosts, app


def ensure_allowed(hosts: Mapping[str, "Host | None"], params: "Params", *, dry_run: bool) -> list[Outcome]:
    """pg_hba.conf and the include file's listen_addresses on every server, in params order."""
    return [o for s in params.servers for o in pg_server.allow_connections(hosts[s.name], params, s, dry_run=dry_run)]


def apply(rb: "Run", hosts: Mapping[str, "Host | None"], app: "Host | None" = None) -> None:
    """Server by server, each one's outcomes tracked (and shown unless a dry run) as it finishes; then
    the CA certificate on the app host, so its clients can verify the servers."""
    params = rb.params
    for s in params.servers:
        rb.track(pg_server.allow_connections(hosts[s.name], params, s, dry_run=rb.dry_run), show=not rb.dry_run)
    if params.app_host is not None:
        rb.track(tls.ensure_client_ca(app, params, dry_run=rb.dry_run), show=not rb.dry_run)


def check_allowed(hosts: Mapping[str, "Host"], params: "Params", app: "Host | None") -> list[Check]:
    """Settings in force with no restart pending; connections from the app host accepted; each server's
    certificate; from the app host TLS verified, plaintext and a foreign CA refused."""
    out = [c for s in params.servers for c in pg_server.check_connections(hosts[s.name], params, s, app)]
    for s in params.servers:
        out.append(tls.check_server_cert(hosts[s.name], params, s))
        if app is not None:
            out += tls.check_tls_from(app, params, s)
    return out


def render_pg_hba(params: "Params") -> dict[str, str]:
    """Each server's pg_hba.conf as rendered from params (the record)."""
    return {s.name: desired_server.render_pg_hba(params, s) for s in params.servers}
