"""Open Hosts for a run: every server, the app host, a vantage point outside the subnet.

Where SSH goes is decided in :mod:`hcbpg.desired.addresses` (pure); what differs in the lab
is the site's (:mod:`hcbpg.adapters.site`).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hcbpg.adapters import hostkeys
from hcbpg.adapters.base import HostLike
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost, dry_run_of
from hcbpg.adapters.host import Host
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.adapters.site import OutsiderRunner, site_for
from hcbpg.desired.addresses import Route, app_ssh_address, ssh_route
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.locks import holder_for, lock_key
from hcbpg.errors import HcbpgError, HostUnreachable, SafetyCheckFailed
from hcbpg.ops import env_lock, server_lock

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.psql import Psql
    from hcbpg.desired.roles import RolesConfig
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def server_shape(rb: "Run") -> ServerShape:
    """The database servers' type (params ``hetzner.server_type``) as the Hetzner API reports it (cores,
    RAM, disk): the capacity settings follow it."""
    # the Hetzner client (hcloud, ~60 ms to import) only for the steps that ask: every step's kernel imports this
    # module as it starts (hcbpg.engine.runner.PRELOADED), most of them never talk to the cloud
    from hcbpg.adapters.cloud import make_client  # noqa: PLC0415 - see above
    from hcbpg.ops import provisioning as cloud  # noqa: PLC0415 - see above
    return cloud.get_server_shape(make_client(rb.params, rb.secret("hetzner.token")), rb.params)


def recorded_servers(rb: "Run") -> list[dict[str, Any]]:
    """The servers' addresses as pinned with their host keys (step 01 writes them from the cloud API).

    Not ``rb.recall("servers")``: an executed notebook under ``outputs/`` is not a trusted source
    of where to send credentials.
    """
    return list(hostkeys.pinned_servers(rb.params))


#: what a dry run found unreachable, by (run object, server, address): nothing a dry run does brings a server up,
#: so the plan's later parts do not wait for the same connect to fail again (each attempt through the jumpbox
#: waits for its ARP to fail, 3 s in the lab; a dropped SYN waits the whole ssh.connect_timeout). A real run
#: tries every time: the server may have come up meanwhile.  Keyed by the run object's id, which the entry keeps
#: alive (so the id is never another run's): a dry run started again (a notebook run anew in the guide) tries again
_DRY_RUN_UNREACHABLE: dict[tuple[int, str, str], tuple[object, str]] = {}


def open_server(rb: "Run", name: str, address: str) -> Host:
    """An open Host for the server *name* at *address* (HostUnreachable naming it); in a dry run, one already
    found unreachable by this run is refused again at once, saying so."""
    key = (id(rb), name, address)
    if rb.dry_run and key in _DRY_RUN_UNREACHABLE:
        raise HostUnreachable(name, address, f"{_DRY_RUN_UNREACHABLE[key][1]} (found so earlier in this dry run)")
    try:
        return Host.from_params(rb.params, name, address).connect()
    except HostUnreachable as exc:
        if rb.dry_run:
            _DRY_RUN_UNREACHABLE[key] = (rb, exc.reason)
        raise


def _close_opened(opened: Iterable[Host | HostUnreachable]) -> None:
    for h in opened:
        if isinstance(h, Host):
            h.close()


def open_servers(rb: "Run", addresses: Mapping[str, str]) -> dict[str, Host | HostUnreachable]:
    """:func:`open_server` for each server name -> address, all at once (a thread each): a server that does not
    answer costs its connect timeout once, not once per server behind it.  What could not be reached is its
    HostUnreachable; any other error (a changed host key) is raised, in params' order, once every attempt ended
    and what opened was closed."""
    with ThreadPoolExecutor(max_workers=max(1, len(addresses)), thread_name_prefix="hcbpg-connect") as pool:
        futures = {name: pool.submit(open_server, rb, name, address) for name, address in addresses.items()}
    out: dict[str, Host | HostUnreachable] = {}
    failed: BaseException | None = None
    for name, future in futures.items():
        error = future.exception()
        if error is None:
            out[name] = future.result()
        elif isinstance(error, HostUnreachable):
            out[name] = error
        elif failed is None:
            failed = error
    if failed is not None:
        _close_opened(out.values())
        raise failed
    return out


def _server_route(rb: "Run", server: "Server", recorded: list[dict[str, Any]]) -> "Route | None":
    """How SSH reaches *server*; None (said) in a dry run before step 01 recorded its address, else refused."""
    route = ssh_route(rb.params, server.name, recorded)
    if route.address is None:
        if rb.dry_run:
            print(f"[{server.name}] not provisioned yet: the plan assumes a fresh server (step 01 creates it)")
            return None
        raise HcbpgError(
            f"server {server.name}: no address to reach it over SSH (servers[].ssh_host is not set and "
            "step 01 recorded no public IP for it)",
            hint="Run step 01 (provision) first, or set ssh_host for this server in params.")
    return route


def _opened(rb: "Run", server: "Server", opened: Host | HostUnreachable, route: "Route") -> Host | None:
    """The Host :func:`open_servers` opened for *server*, its primary lock taken; unreachable: None (said) in a
    dry run, else raised."""
    if isinstance(opened, HostUnreachable):
        if rb.dry_run:
            where = f"{route.address} via {route.via}" if route.via else route.address
            print(f"[{server.name}] unreachable at {where} ({opened.reason}); "
                  "dry run: the plan assumes a fresh server (step 01 would create it)")
            return None
        raise opened
    if server.role == "primary" and not rb.dry_run:
        lock_primary(rb, opened)
    return opened


def server_host(rb: "Run", server: "Server") -> Host | None:
    """An open Host for *server*; in a dry run None when the server is not there yet.

    A dry run before provisioning (``hcbpg plan`` on a fresh lab) cannot reach servers that
    step 01 would create; the steps then plan for a fresh server instead of failing.
    With a jumpbox in params: at its private IP through the jumpbox (refused naming it when the
    jumpbox has no address yet).
    """
    return server_hosts(rb, [server])[server.name]


def hostlike(rb: "Run", name: str, host: "HostLike | None") -> "HostLike":
    """What an operation gets for the server *name*: *host*; a :class:`DryRunHost` over it on a dry run
    (reads are real, changes are recorded); an :class:`AbsentHost` when it is not there yet."""
    if host is None:
        return AbsentHost(name)
    return dry_run_of(host, rb.dry_run)


def planning(host: "HostLike") -> "HostLike":
    """A fresh :class:`DryRunHost` over what *host* reads (an :class:`AbsentHost` for a server not there):
    a plan made before the apply, whose recorded writes the apply must not see as done."""
    if isinstance(host, DryRunHost):
        return AbsentHost(host.name) if host.inner is None else DryRunHost(host.inner)
    return DryRunHost(host)


def target_for(name: str, host: "HostLike | None", *, dry_run: bool) -> "HostLike":
    """What an operation gets for the server *name* when a step plans or applies outside a Run's hosts:
    an :class:`AbsentHost` when there is no *host*; a fresh :class:`DryRunHost` over it for a plan."""
    if host is None:
        return AbsentHost(name)
    return planning(host) if dry_run else host


def jumpbox_address(params: "Params") -> str | None:
    """Where SSH reaches params' jumpbox: ``jumpbox.ssh_host``, else the address step 01 pinned with its host key
    (``recorded_servers`` lists the database servers only); None before step 01 made it."""
    jb = params.jumpbox
    if jb is None:
        return None
    return ssh_route(params, jb.name, [{"name": jb.name, "public_ip": hostkeys.pinned_address(
        hostkeys.known_hosts_path(params), jb.name)}]).address


def connect_jumpbox(rb: "Run") -> Host | None:
    """An open Host for params' jumpbox; a dry run before step 01 made it gets None, a real run an error."""
    params = rb.params
    assert params.jumpbox is not None  # the callers refuse params without one first
    address = jumpbox_address(params)
    if address is not None:
        return Host.from_params(params, params.jumpbox.name, address).connect()
    if not rb.dry_run:
        raise HcbpgError(f"the jumpbox {params.jumpbox.name} has no SSH address (jumpbox.ssh_host unset and step 01 "
                         f"pinned none in {hostkeys.known_hosts_path(params)})", hint="Run step 01 first.")
    return None


def jumpbox_host(params: "Params", cfg: "RolesConfig") -> Host | None:
    """An open Host for the jumpbox; None when SSH cannot reach it.  With ``jumpbox`` in params: the machine step 01
    provisions, by its name and route (``jumpbox.ssh_host``, else the address pinned with its key); else Metabase's
    ``jumpbox`` (``jumpbox_ssh_host``, else its private IP)."""
    jb = params.jumpbox
    if jb is not None:
        address = jumpbox_address(params)
        if address is None:
            return None
        host = Host.from_params(params, jb.name, address)
    elif not cfg.jumpbox_ip:
        return None
    else:
        host = Host.from_params(params, "jumpbox", cfg.jumpbox_ssh_host or cfg.jumpbox_ip)
    try:
        return host.connect()
    except HostUnreachable:
        return None


def lock_primary(rb: "Run", host: Host) -> None:
    """Take the primary's change lock for this step (refused while another run holds it); released at
    ``rb.finish()``.  A failed step keeps it, so that only its resume, or a stale-lock check, takes it."""
    me = holder_for(run_id=rb.run_id or f"ad-hoc-{os.getpid()}", env=rb.env, step=rb.step,
                    operator=os.environ.get("HCBPG_OPERATOR") or getpass.getuser())
    server_lock.ensure_change_lock(host, me)

    def release() -> None:
        server_lock.release_change_lock(host, me)

    rb.at_finish(release)


def lock_environment(rb: "Run") -> None:
    """Take the environment's lock in the backup bucket for this destructive step (steps 10 and 11),
    refused naming the holder while another run holds it; released at ``rb.finish()``.  A failed step,
    or one waiting at its gate, keeps it for its resume.  A dry run takes nothing."""
    if rb.dry_run:
        return
    if rb.params.pgbackrest is None:
        raise SafetyCheckFailed(
            f"{rb.step} wipes or promotes a server and takes the environment's lock in the backup bucket, "
            "but params have no pgbackrest section (no bucket)",
            hint="Configure pgBackRest (params pgbackrest, step 05) before this step.")
    store = ObjectStore.from_params(rb.params, rb.secret("pgbackrest.s3_key"), rb.secret("pgbackrest.s3_key_secret"))
    key = lock_key(rb.params)
    me = holder_for(run_id=rb.run_id or f"ad-hoc-{os.getpid()}", env=rb.env, step=rb.step,
                    operator=os.environ.get("HCBPG_OPERATOR") or getpass.getuser())
    out = env_lock.ensure_env_lock(store, key, me)
    print(f"{out.what}: {'; '.join(out.actions)}")

    def release() -> None:
        env_lock.release_env_lock(store, key, me)

    rb.at_finish(release)


def server_hosts(rb: "Run", servers: "Sequence[Server] | None" = None) -> dict[str, Host | None]:
    """:func:`server_host` for every server in params (or *servers*), by name: connected side by side."""
    recorded = recorded_servers(rb)
    wanted = list(rb.params.servers if servers is None else servers)
    routes = {s.name: _server_route(rb, s, recorded) for s in wanted}
    opened = open_servers(rb, {n: r.address for n, r in routes.items() if r is not None and r.address is not None})
    out: dict[str, Host | None] = {}
    try:
        for s in wanted:
            route = routes[s.name]
            out[s.name] = None if route is None else _opened(rb, s, opened[s.name], route)
    except BaseException:
        _close_opened(opened.values())
        raise
    return out


def connect_servers(rb: "Run") -> dict[str, Host | None]:
    """An open Host per server, None for a server SSH cannot reach (a failover must go on without it); connected
    side by side, so a dead server costs its connect timeout once."""
    out: dict[str, Host | None] = {}
    recorded = recorded_servers(rb)
    addresses: dict[str, str] = {}
    for s in rb.params.servers:
        address = ssh_route(rb.params, s.name, recorded).address
        if address is None:
            print(f"[{s.name}] no SSH address (ssh_host unset and step 01 recorded none)")
        else:
            addresses[s.name] = address
    opened = open_servers(rb, addresses)
    for s in rb.params.servers:
        h = opened.get(s.name)
        if isinstance(h, HostUnreachable):
            print(f"[{s.name}] unreachable: {h.message}")
        out[s.name] = h if isinstance(h, Host) else None
    return out


def app_host(rb: "Run") -> Host:
    """An open Host for the app host (raises HostUnreachable naming it)."""
    params = rb.params
    address = app_ssh_address(params)
    assert params.app_host is not None
    return Host.from_params(params, params.app_host.name, address).connect()


def outsider_runner(rb: "Run") -> OutsiderRunner | None:
    """How to run a command from an address outside the private subnet (None: not available here).

    In the lab: the lab's outsider network namespace (another subnet, routed to the lab's).
    Elsewhere: the operator's own machine, which is not on the private network, so a
    connection from it must fail.
    """
    return site_for(rb.params).outsider_runner(rb.params)


def primary_psql(rb: "Run", hosts: Mapping[str, Host | None]) -> "Psql | None":
    """psql on the primary's Host in *hosts* (None when there is no Host for it)."""
    primary = rb.params.primary
    host = hosts[primary.name]
    return ClusterControl.of(host, rb.params).psql() if host is not None else None
