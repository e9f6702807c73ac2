"""Backups from the standby (issue 24): pgBackRest's TLS server on a database server (its certificate from the
environment's CA, pgbackrest.conf naming the other server as pg2, ``pgbackrest server`` running), and a check that
the other server's TLS server answers.  What and why: :mod:`hcbpg.desired.pgbackrest_server`.

    ensure_pgbackrest_server(host, params, server)   certificate, pgbackrest.conf, the daemon (restarted onto new files)
    get_server_answers(host, params, address)        pgbackrest server-ping to a TLS server (a probe)
    ensure_backup_standby(hosts, params)             both servers' TLS servers, then both files with pg2 (step 10)
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import pgbackrest_server as dps
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops.ha_files import ensure_cert
from hcbpg.ops.pgbackrest import ensure_pgbackrest_conf, get_version
from hcbpg.outcome import Outcome
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server


def get_server_answers(host: "HostLike", params: "Params", address: str) -> bool:
    """Whether a pgBackRest TLS server answers at *address* (``pgbackrest server-ping`` from *host*, as postgres),
    within seconds: pgBackRest 2.45 retries a connection that is not answered until io-timeout (60 s by default)
    runs out, twice, so a stopped server would hold each probe two minutes."""
    pb = params.pgbackrest
    port = pb.tls_server_port if pb is not None else 8432
    res = host.probe(f"timeout 20 pgbackrest server-ping --io-timeout=5 --tls-server-address={shlex.quote(address)} "
                     f"--tls-server-port={port}", sudo_user="postgres")
    return res.ok


def ensure_pgbackrest_server(host: "HostLike", params: "Params", server: "Server", *,
                             wait_s: float = 60.0, standby: bool | None = True) -> list[Outcome]:
    """*server* serves pgBackRest over TLS to the other database server: its certificate (the environment's CA, the
    server's name), pgbackrest.conf with pg2 and backup-standby, ``pgbackrest server`` running (restarted when the
    certificate or the file changed) and answering on its private address.  Nothing with ``backup_standby`` off;
    refused, nothing changed, when *server* has no other database server to back up from.  *standby*: whether the
    file names pg2 (None: when the other's TLS server answers; step 10 then writes both files again,
    :func:`ensure_backup_standby`)."""
    if not dps.enabled(params):
        return [Outcome(f"pgBackRest TLS server on {server.name}", False, host.dry_run,
                        actions=["pgbackrest.backup_standby off (or one server): backups from the primary"])]
    other = dps.peer(params, server)
    if other is None:
        raise SafetyCheckFailed(f"pgBackRest TLS server: {server.name} is not one of params' database servers, so "
                                "it has no standby to name", target=server.name,
                                hint="Run it on the servers of params' servers list. Nothing was changed.")
    out = ensure_cert(host, params, dps.cert_spec(server), dps.CERT, dps.KEY, owner="postgres",
                      what=f"pgBackRest TLS certificate of {server.name}")
    version = None if host.dry_run and not host.probe("command -v pgbackrest").ok else get_version(host)
    out.append(ensure_pgbackrest_conf(host, params, server, version=version, standby=standby))
    control = ServiceControl.of(host)
    spec = dps.server_service(params)
    changed = any(o.changed for o in out)
    if changed and control.get_status(spec).running:
        # the server reads its certificate and config at start: onto the new ones
        out.append(control.ensure_stopped(spec))
    out.append(control.ensure_running(spec, wait_s=20))
    if not host.dry_run:
        wait_until(lambda: get_server_answers(host, params, server.private_ip), bool,
                   what=f"pgBackRest's TLS server on {server.name} ({server.private_ip}:"
                        f"{params.pgbackrest.tls_server_port if params.pgbackrest else 8432})",
                   timeout=wait_s, interval=1.0, hint=f"Read {dps.SERVER_LOG} on {server.name}.")
    return out


def ensure_backup_standby(hosts: "Mapping[str, HostLike]", params: "Params") -> list[Outcome]:
    """Backups from the standby on the pair (step 10, after the replica streams): each server's TLS server
    (:func:`ensure_pgbackrest_server`, pg2 only where the other already answers), then each pgbackrest.conf
    again, with pg2 now that both answer.  A dry run plans the files with pg2 (what the run ends with).
    Nothing with ``backup_standby`` off or one server; refused, nothing changed, when *hosts* lacks one of
    params' servers.  *hosts*: params' servers by name."""
    if not dps.enabled(params):
        return []
    missing = [s.name for s in params.servers if s.name not in hosts]
    if missing:
        raise SafetyCheckFailed(f"backups from the standby need both database servers; no host for "
                                f"{', '.join(missing)}", target=missing[0],
                                hint="Reach every server of params (or set pgbackrest.backup_standby off). "
                                     "Nothing was changed.")
    dry_run = any(h.dry_run for h in hosts.values())
    standby = True if dry_run else None
    out: list[Outcome] = []
    for s in params.servers:
        out += ensure_pgbackrest_server(hosts[s.name], params, s, standby=standby)
    if dry_run:
        return out
    for s in params.servers:
        host = hosts[s.name]
        out.append(ensure_pgbackrest_conf(host, params, s, version=get_version(host), standby=None))
    return out


__all__ = ["ensure_backup_standby", "ensure_pgbackrest_server", "get_server_answers"]
