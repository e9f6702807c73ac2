"""Where the operator's SSH reaches each machine: the one place that rule lives.

A server is reached at ``servers[].ssh_host`` from params when set, else at the public IP
that step 01 recorded (``rb.recall("servers")``).  The app host is reached at
``app_host.ssh_host``, else at its private IP.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.host import Host
from hcbpg.errors import HcbpgError, HostUnreachable, ParamsError

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.engine.runbook import Runbook
    from hcbpg.params import Params, Server


def recorded_server(recorded: Iterable[Mapping[str, Any]] | None, name: str) -> Mapping[str, Any] | None:
    """The record step 01 made for server *name*, if any."""
    for entry in recorded or ():
        if entry.get("name") == name:
            return entry
    return None


def ssh_address(params: "Params", server_name: str,
                recorded_servers: Iterable[Mapping[str, Any]] | None = None) -> str | None:
    """The address SSH uses for *server_name*: params ``ssh_host``, else the recorded public IP, else None."""
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


def recorded_servers(rb: "Runbook") -> list[dict[str, Any]]:
    """What step 01 recorded about the servers ([] when nothing was recorded yet)."""
    value = rb.recall("servers", default=None)
    return list(value or [])


def server_host(rb: "Runbook", server: "Server") -> Host | None:
    """An open Host for *server*; in a dry run None when the server is not there yet.

    A dry run before provisioning (``hcbpg plan`` on a fresh lab) cannot reach servers that
    step 01 would create; the steps then plan for a fresh server instead of failing.
    """
    address = ssh_address(rb.params, server.name, recorded_servers(rb))
    if address is None:
        if rb.dry_run:
            print(f"[{server.name}] not provisioned yet: the plan assumes a fresh server (step 01 creates it)")
            return None
        raise HcbpgError(
            f"server {server.name}: no address to reach it over SSH (servers[].ssh_host is not set and "
            "step 01 recorded no public IP for it)",
            hint="Run step 01 (provision) first, or set ssh_host for this server in params.")
    host = Host.from_params(rb.params, server.name, address)
    try:
        return host.connect()
    except HostUnreachable as exc:
        if rb.dry_run:
            print(f"[{server.name}] unreachable at {address} ({exc.message.split(': ', 1)[-1]}); "
                  "dry run: the plan assumes a fresh server (step 01 would create it)")
            return None
        raise


def app_host(rb: "Runbook") -> Host:
    """An open Host for the app host (raises HostUnreachable naming it)."""
    params = rb.params
    address = app_ssh_address(params)
    assert params.app_host is not None
    return Host.from_params(params, params.app_host.name, address).connect()


def outsider_runner(rb: "Runbook") -> "Callable[[str, str], tuple[int, str]] | None":
    """How to run a command from an address outside the private subnet (None: not available here).

    In the lab: the lab's outsider network namespace (another subnet, routed to the lab's).
    Elsewhere: the operator's own machine, which is not on the private network, so a
    connection from it must fail.
    """
    def local(argv_prefix: list[str]) -> "Callable[[str, str], tuple[int, str]]":
        def run(cmd: str, stdin: str) -> tuple[int, str]:
            try:
                proc = subprocess.run([*argv_prefix, "sh", "-c", cmd], input=stdin, capture_output=True,
                                      text=True, timeout=60)
            except subprocess.TimeoutExpired:
                return 124, "timed out"
            return proc.returncode, proc.stdout + proc.stderr
        return run

    if rb.params.environment == "lab":
        try:
            from hcbpg.lab import Lab
            lab = Lab()
            if lab.cfg.outsider_netns not in __import__("hcbpg.lab.core", fromlist=["netns_list"]).netns_list():
                return None
        except Exception:  # noqa: BLE001 - no lab on this machine: "not available"
            return None

        def via_lab(cmd: str, stdin: str) -> tuple[int, str]:
            proc = lab.outsider_exec(cmd, input=stdin, timeout=60)
            return proc.returncode, proc.stdout + proc.stderr
        return via_lab
    if shutil.which("psql"):
        return local([])
    return None
