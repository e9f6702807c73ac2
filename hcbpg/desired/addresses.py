"""Where the operator's SSH reaches each machine: the one place that rule lives (pure).

A server is reached at ``servers[].ssh_host`` from params when set, else at the public IP
pinned with its host key by step 01 (``hcbpg.adapters.hostkeys.pinned_servers``).  The app host is reached at
``app_host.ssh_host``, else at its private IP.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
