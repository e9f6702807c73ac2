"""Step 01 (notebook ``01_provision``): the servers, network, firewall and placement group on Hetzner Cloud; with a
``jumpbox`` in params the jumpbox first, the servers' host keys read through it, and their public SSH closed once
SSH through it worked on each; delete and rebuild protection with ``hetzner.protection``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hcbpg.adapters import hostkeys
from hcbpg.adapters.cloud import make_client
from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.adapters.host import Host
from hcbpg.desired.addresses import ssh_route
from hcbpg.desired.cloud import PlannedAction, ServerRecord, plan_provision, ssh_key_fingerprint
from hcbpg.errors import HostKeyError, HostUnreachable, ParamsError, SafetyCheckFailed
from hcbpg.ops import provisioning as cloud
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import open_server

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.adapters.cloud import CloudLike
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


@dataclass(frozen=True)
class Api:
    """The Hetzner Cloud API client for this run, and the operator's SSH public key the servers get."""

    client: "CloudLike"
    ssh_public_key: str


def connect(rb: "Run") -> Api:
    """A client for the params' API endpoint with the token from ``hetzner.token``."""
    return Api(make_client(rb.params, rb.secret("hetzner.token")), read_ssh_public_key(rb.params))


def read_ssh_public_key(params: "Params") -> str:
    """The operator's SSH public key from ``hetzner.ssh_public_key_file``."""
    path = Path(params.hetzner.ssh_public_key_file).expanduser()
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ParamsError("params", [f"hetzner.ssh_public_key_file: cannot read {path}: {exc.strerror}"]) from None
    try:
        ssh_key_fingerprint(text)
    except ValueError as exc:
        raise ParamsError("params", [f"hetzner.ssh_public_key_file: {path}: {exc}"]) from None
    return text


def get_plan(api: Api, params: "Params") -> list[PlannedAction]:
    """What exists now and what provisioning would do to each resource (reads the API only)."""
    existing = cloud.get_existing(api.client, params, ssh_public_key=api.ssh_public_key)
    return plan_provision(params, existing, ssh_public_key=api.ssh_public_key)


def ensure_provisioned(api: Api, params: "Params", *, dry_run: bool
                       ) -> tuple[list[Outcome], list[ServerRecord]]:
    """Create what is missing and wait for it; the servers as they are (or would be)."""
    return cloud.ensure_provisioned(api.client, params, dry_run=dry_run, ssh_public_key=api.ssh_public_key)


def check_provisioned(api: Api, params: "Params", *, dry_run: bool) -> list[Check]:
    """Everything read back from the API and checked against params (dry run: missing is a warning)."""
    return cloud.get_provision_checks(api.client, params, dry_run=dry_run, ssh_public_key=api.ssh_public_key)


def host_key_gate(name: str, fingerprint: str) -> str:
    """The gate that confirms *fingerprint* for server *name* (another key asks again)."""
    return f"host-key-{name}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:8]}"


def _provisioned_address(params: "Params", r: ServerRecord) -> tuple[str | None, str | None]:
    """Where SSH reaches a machine step 01 provisions, and through which machine (the jumpbox) if any."""
    if params.jumpbox is None:
        return params.server(r.name).ssh_host or r.public_ip, None
    if r.id is None:
        return None, None  # not created yet: its key is generated and pinned when it is
    route = ssh_route(params, r.name, [{"name": r.name, "public_ip": r.public_ip}])
    return route.address, route.via


def ensure_host_keys_pinned(rb: "Run", servers: list[ServerRecord]) -> list[Outcome]:
    """Pin the host key of every server and the jumpbox (and of the app host and drill host) that has none
    pinned, after the operator confirmed it.

    Servers this step created are pinned already (their key was generated here).  For a server
    that existed before, its offered key is read (key exchange only: nothing is sent to it) and
    the run stops at a gate until the operator has compared the fingerprint with the one the
    Hetzner console shows; only then is it pinned.  With a jumpbox, a database server's key is read
    through the jumpbox (pinned first: it comes first in *servers*), at the server's private IP.
    """
    path = hostkeys.known_hosts_path(rb.params)
    out = []
    machines: list[tuple[str, str | None, bool, str | None]] = []
    for rec in servers:
        address, via = _provisioned_address(rb.params, rec)
        machines.append((rec.name, address, True, via))
    machines += [(name, address, False, None) for name, address in other_machines(rb.params)]
    for name, address, is_server, via in machines:
        what = f"pinned SSH host key of {name}"
        pins = hostkeys.pins_for(path, name)
        if pins:
            out.append(Outcome(what, changed=False, dry_run=rb.dry_run,
                               actions=[f"{p.keytype} {p.fingerprint}" for p in pins]))
            continue
        r = ServerRecord(name, "", "", public_ip=address)
        if address is None:
            # counted with the server's creation: the key is generated and pinned when it is created
            out.append(Outcome(what, changed=False, dry_run=rb.dry_run,
                               actions=["the server does not exist yet: its key is generated and pinned when "
                                        "it is created"]))
            continue
        if rb.dry_run and not is_server:
            # a plan contacts no machine besides the servers
            out.append(Outcome(what, changed=True, dry_run=True,
                               actions=["not pinned: a real run reads the key it offers and asks you to confirm "
                                        "its fingerprint at a gate"]))
            continue
        try:
            offered = _offered_key(rb.params, address, via)
        except (HostUnreachable, HostKeyError) as exc:
            if is_server and via is not None and rb.dry_run:
                out.append(Outcome(what, changed=True, dry_run=True,
                                   actions=[f"not pinned: a real run reads the key it offers through {via} once "
                                            f"{via} is pinned ({exc.message.splitlines()[0][:120]})"]))
                continue
            if is_server:
                raise
            # the app host, the drill host, the jumpbox: not this step's to create
            out.append(Outcome(what, changed=False, dry_run=rb.dry_run,
                               actions=[f"not reachable now ({exc.message.split(': ', 1)[-1][:120]}); run this "
                                        "step again once it is up: SSH to it is refused until its key is pinned"]))
            continue
        fingerprint = hostkeys.fingerprint_of_public(offered)
        where = f"{address} via {via}" if via else address
        print(f"[{r.name}] no pinned host key; {where} offers {offered.split()[0]} {fingerprint}")
        rb.gate(host_key_gate(r.name, fingerprint),
                f"{r.name} ({address}) offers SSH host key {fingerprint}: it is the ed25519 fingerprint the "
                "Hetzner console shows for this server (Console, the cloud-init 'ssh-ed25519' line, or "
                "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` typed in the console)")
        if rb.dry_run:
            out.append(Outcome(what, changed=True, dry_run=True,
                               actions=[f"would pin {fingerprint} once confirmed at the gate"]))
            continue
        hostkeys.pin(path, rb.params.environment, r.name, [offered], address=address)
        out.append(Outcome(what, changed=True, actions=[f"pinned {fingerprint} (confirmed at the gate) in {path}"]))
    return out


def _offered_key(params: "Params", address: str, via: str | None) -> str:
    """The host key *address* offers, read directly or through the jumpbox *via* (its own pinned Host)."""
    if via is None:
        return hostkeys.get_offered_host_key(address, params.ssh.port, params.ssh.connect_timeout)
    jb_address = ssh_route(params, via, [{"name": via, "public_ip": hostkeys.pinned_address(
        hostkeys.known_hosts_path(params), via)}]).address
    if jb_address is None:
        raise HostUnreachable(via, "?", f"the jumpbox {via} has no SSH address yet (step 01 pins it when it creates it)")
    with Host.from_params(params, via, jb_address) as gateway:
        return hostkeys.get_offered_host_key(address, params.ssh.port, params.ssh.connect_timeout, gateway=gateway)


def other_machines(params: "Params") -> list[tuple[str, str]]:
    """(name, SSH address) of the machines besides the servers and the jumpbox step 01 provisions that hcbpg logs
    in to (Metabase's jumpbox only when params have no ``jumpbox``: with one, it is that provisioned machine)."""
    out = []
    if params.app_host is not None:
        out.append((params.app_host.name, params.app_host.ssh_host or params.app_host.private_ip))
    if params.drill is not None:
        out.append((params.drill.name, params.drill.ssh_host or params.drill.private_ip))
    if params.roles is not None and params.roles.metabase is not None and params.jumpbox is None:
        mb = params.roles.metabase
        out.append(("jumpbox", mb.jumpbox_ssh_host or mb.jumpbox_ip))
    return out


def check_host_keys(params: "Params", *, dry_run: bool) -> list[Check]:
    """Every server and the jumpbox have a pinned host key (dry run: missing is a warning)."""
    path = hostkeys.known_hosts_path(params)
    rows = []
    names = ([params.jumpbox.name] if params.jumpbox is not None else []) + [s.name for s in params.servers]
    for name in names:
        pins = hostkeys.pins_for(path, name)
        detail = ", ".join(f"{p.keytype} {p.fingerprint}" for p in pins) or f"none in {path}"
        rows.append(Check("SSH host key pinned", "pass" if pins else ("warn" if dry_run else "fail"), detail,
                          name))
    return rows


def close_public_ssh(rb: "Run", api: Api) -> list[Outcome]:
    """With a jumpbox in params: run ``true`` on every database server through the jumpbox, then (only when each
    answered) remove the public SSH rule of the servers' firewall (:func:`hcbpg.ops.provisioning.
    ensure_public_ssh_closed`).  A server not reachable yet is an AbsentHost on a dry run; on a real run its
    error stops the step with the firewall unchanged.  Without a jumpbox: nothing."""
    params = rb.params
    if params.jumpbox is None:
        return []
    hosts: dict[str, "HostLike"] = {}
    opened: list[Host] = []
    try:
        for s in params.servers:
            route = ssh_route(params, s.name)
            try:
                host = open_server(rb, s.name, route.address or s.private_ip)
            except (HostUnreachable, HostKeyError) as exc:
                if not rb.dry_run:
                    raise SafetyCheckFailed(
                        f"public SSH to the database servers not closed: SSH to {s.name} through {route.via} failed: "
                        f"{exc.message}", target=params.hetzner.firewall, reasons=[f"{s.name}: {exc.message}"],
                        hint=f"{params.hetzner.firewall} keeps SSH from the admin ranges. Fix the way through "
                             f"{route.via} (its firewall, the pinned keys), then run step 01 again.") from exc
                print(f"[{s.name}] not reachable through {route.via} ({exc.message.splitlines()[0][:160]}); "
                      "dry run: planned as a server not there yet")
                hosts[s.name] = AbsentHost(s.name)
                continue
            opened.append(host)
            hosts[s.name] = dry_run_of(host, rb.dry_run)
        return cloud.ensure_public_ssh_closed(api.client, params, hosts, dry_run=rb.dry_run)
    finally:
        for h in opened:
            h.close()


def ensure_protected(api: Api, params: "Params", *, dry_run: bool) -> list[Outcome]:
    """Delete and rebuild protection on every provisioned machine (``hetzner.protection``; off: nothing)."""
    return cloud.ensure_protection(api.client, params, dry_run=dry_run)
