"""Where the operator's SSH reaches each machine: the one place that rule lives (pure).

A server is reached at ``servers[].ssh_host`` from params when set, else at the public IP
pinned with its host key by step 01 (``hcbpg.adapters.hostkeys.pinned_servers``).  The app host is reached at
``app_host.ssh_host``, else at its private IP.  With a ``jumpbox`` in params (issue 28), the jumpbox is the only
way in: a database server is reached at its private IP through it (:func:`ssh_route`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg.errors import ParamsError

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params


def recorded_server(recorded: Iterable[Mapping[str, Any]] | None, name: str) -> Mapping[str, Any] | None:
    """The record step 01 made for server *name*, if any."""
    for entry in recorded or ():
        if entry.get("name") == name:
            return entry
    return None


def ssh_address(params: "Params", server_name: str,
                recorded_servers: Iterable[Mapping[str, Any]] | None = None) -> str | None:
    """The address SSH uses for *server_name*: params ``ssh_host``, else the address pinned with its host key, else None."""
    server = params.server(server_name)
    if server.ssh_host:
        return server.ssh_host
    rec = recorded_server(recorded_servers, server_name)
    if rec and rec.get("public_ip"):
        return str(rec["public_ip"])
    return None


def app_ssh_address(params: "Params") -> str:
    """The address SSH uses for the app host: ``app_host.ssh_host``, else its private IP."""
    if params.app_host is None:
        raise ParamsError("params", ["app_host: required for this step (the host the app connects from)"])
    return params.app_host.ssh_host or params.app_host.private_ip


@dataclass(frozen=True)
class Route:
    """How SSH reaches a machine: at *address* (None: not known yet, step 01 records it), through the machine
    named *via* when set (the jumpbox: *address* is then one the jumpbox reaches, the private IP)."""

    address: str | None
    via: str | None = None


def ssh_route(params: "Params", name: str,
              recorded_servers: Iterable[Mapping[str, Any]] | None = None) -> Route:
    """The SSH route to machine *name* (a database server or the jumpbox).

    Without ``jumpbox`` in params: a server directly at :func:`ssh_address`.  With it: the jumpbox directly at
    ``jumpbox.ssh_host``, else the public IP recorded for it (*recorded_servers*, as for a server); a database
    server at its private IP through the jumpbox (its firewall takes SSH from the jumpbox only: §7.4 of the
    design).  Any other name: ParamsError.
    """
    jb = params.jumpbox
    if jb is not None and name == jb.name:
        rec = recorded_server(recorded_servers, name)
        return Route(jb.ssh_host or (str(rec["public_ip"]) if rec and rec.get("public_ip") else None))
    if name not in {s.name for s in params.servers}:
        raise ParamsError("params", [f"{name}: not a server nor the jumpbox; SSH has no route to it"])
    if jb is not None:
        return Route(params.server(name).private_ip, via=jb.name)
    return Route(ssh_address(params, name, recorded_servers))
