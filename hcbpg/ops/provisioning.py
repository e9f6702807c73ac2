"""Provisioning on Hetzner Cloud (step 01): SSH key, private network, SSH-only firewall, placement group, servers.
This module is over 800 lines because plan, apply and verify of the Hetzner objects share their plain data
classes; the pure plan is the next to move out.

The cloud client (``hcloud.Client``) is an adapter handed in by the caller.  ``get_existing``
reads what the project holds, ``plan_provision`` (pure) decides what is missing or differs,
and ``ensure_provisioned`` creates only what is missing, fixes what is safe to fix (firewall
rules, a missing network attachment, missing labels) and refuses everything else with a
message, before changing anything.  Nothing here ever deletes a resource.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import hcloud
import requests
from hcloud.actions.domain import ActionFailedException, ActionTimeoutException
from hcloud.firewalls.domain import Firewall, FirewallResource, FirewallRule
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.networks.domain import Network, NetworkSubnet
from hcloud.placement_groups.domain import PlacementGroup
from hcloud.server_types.domain import ServerType
from hcloud.servers.domain import Server
from hcloud.ssh_keys.domain import SSHKey

from hcbpg.adapters import hostkeys
from hcbpg.desired.capacity import ServerShape
from hcbpg.errors import CloudError, ParamsError, WaitTimeout
from hcbpg.outcome import Check, Outcome
from hcbpg.params import Params
from hcbpg.wait import polling_loop

SUBNET_TYPE = "cloud"
PLACEMENT_TYPE = "spread"
SSH_RULE_DESCRIPTION = "SSH from the admin source ranges (hcbpg)"
DEFAULT_WAIT_TIMEOUT = 600.0

ActionKind = Literal["create", "add", "update", "attach", "apply", "start", "none", "refuse"]


# plain data: what exists, what is planned, what was provisioned ------------------------------------

@dataclass(frozen=True)
class Rule:
    """A firewall rule normalized for comparison (description does not count)."""

    direction: str
    protocol: str
    port: str | None
    source_ips: tuple[str, ...] = ()
    destination_ips: tuple[str, ...] = ()
    description: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        ips = self.source_ips if self.direction == "in" else self.destination_ips
        port = f" port {self.port}" if self.port else ""
        return f"{self.direction} {self.protocol}{port} {'from' if self.direction == 'in' else 'to'} {', '.join(ips)}"


@dataclass(frozen=True)
class SeenKey:
    id: int
    name: str
    fingerprint: str


@dataclass(frozen=True)
class SeenNetwork:
    id: int
    name: str
    ip_range: str
    #: (ip_range, network_zone, type) of each subnet
    subnets: tuple[tuple[str, str, str], ...]
    #: private IP -> name of the server that holds it (every server in the network)
    member_ips: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SeenFirewall:
    id: int
    name: str
    rules: tuple[Rule, ...]
    server_ids: tuple[int, ...]


@dataclass(frozen=True)
class SeenPlacementGroup:
    id: int
    name: str
    type: str
    server_ids: tuple[int, ...]


@dataclass(frozen=True)
class SeenServer:
    id: int
    name: str
    status: str
    server_type: str
    location: str
    image: str | None
    labels: dict[str, str]
    #: network id -> private IP
    private_ips: dict[int, str]
    public_ip: str | None
    firewall_ids: tuple[int, ...]
    placement_group_id: int | None


@dataclass(frozen=True)
class Catalog:
    """What the API offers for the params' choices (None where it has no such thing)."""

    server_type: str | None = None
    architecture: str | None = None
    server_type_locations: tuple[str, ...] = ()
    location: str | None = None
    location_zone: str | None = None
    image_id: int | None = None
    known_server_types: tuple[str, ...] = ()
    known_locations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Existing:
    """A read-only snapshot of the project's resources that provisioning cares about."""

    catalog: Catalog
    ssh_key: SeenKey | None = None
    ssh_key_same_fingerprint: SeenKey | None = None
    network: SeenNetwork | None = None
    firewall: SeenFirewall | None = None
    placement_group: SeenPlacementGroup | None = None
    servers: dict[str, SeenServer] = field(default_factory=dict)


@dataclass(frozen=True)
class PlannedAction:
    """One row of the plan: what would happen to one resource (or why it is refused)."""

    kind: str         # ssh_key, network, subnet, firewall, placement_group, server, server_network, ...
    name: str
    action: ActionKind
    detail: str = ""

    @property
    def changes(self) -> bool:
        return self.action not in ("none", "refuse")

    def row(self) -> dict[str, str]:
        return {"resource": self.kind, "name": self.name, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class ServerRecord:
    """What later steps need to know about a provisioned server."""

    name: str
    role: str
    private_ip: str
    id: int | None = None
    public_ip: str | None = None
    status: str = "missing"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "public_ip": self.public_ip, "private_ip": self.private_ip, "id": self.id}


# adapter -----------------------------------------------------------------------------------

def make_client(params: Params, token: str, *, poll_interval: float = 1.0, timeout: float = 30.0) -> hcloud.Client:
    """An hcloud client for the params' API endpoint (the real API or the lab's stand-in)."""
    if not token or not token.strip():
        raise CloudError("the Hetzner Cloud API token is empty",
                         hint=f"Put a read-write API token where params hetzner.token points ({params.hetzner.token}).")
    return hcloud.Client(token=token.strip(), api_endpoint=params.hetzner.api_endpoint,
                         poll_interval=poll_interval, timeout=timeout, application_name="hcbpg")


_HINTS = {
    "unauthorized": "The API token was refused: check the token that params hetzner.token points to "
                    "(a read-write token of the right project).",
    "forbidden": "The token may be read-only: create a read-write API token for the project.",
    "token_readonly": "The token is read-only: create a read-write API token for the project.",
    "uniqueness_error": "A resource with that name was created meanwhile (or by hand); run the step again: "
                        "it finds existing resources by name and creates only what is missing.",
    "rate_limit_exceeded": "The API rate limit was hit; wait a minute and run the step again.",
    "resource_limit_exceeded": "The project hit a resource limit (servers, IPs); ask Hetzner to raise it.",
    "ip_not_available": "The private IP is taken or outside the network's subnets: check servers[].private_ip "
                        "and network.subnet in params.",
    "placement_error": "The placement group cannot take another server in this location; try again later or "
                       "ask Hetzner support.",
    "resource_unavailable": "The server type is sold out in this location right now; try again later.",
}


@contextlib.contextmanager
def api_call(what: str) -> Iterator[None]:
    """Turn hcloud/requests failures of *what* into a CloudError that says what to do next."""
    try:
        yield
    except hcloud.APIException as exc:
        details = ""
        fields = (exc.details or {}).get("fields") if isinstance(exc.details, dict) else None
        if fields:
            details = "; ".join(f"{f.get('name')}: {', '.join(f.get('messages', []))}" for f in fields)
        hint = _HINTS.get(str(exc.code), "Nothing after this call was changed. Fix the cause and run the step "
                                         "again: it finds what exists and creates only what is missing.")
        err = CloudError(f"Hetzner Cloud API: {what} failed: {exc.message} ({exc.code})"
                         + (f" [{details}]" if details else ""), hint=hint)
        err.code = exc.code  # type: ignore[attr-defined]
        raise err from exc
    except (ActionFailedException, ActionTimeoutException) as exc:
        raise CloudError(f"Hetzner Cloud API: {what}: {exc.message}",
                         hint="Look at the action in the Hetzner console; run the step again once it is resolved.") from exc
    except requests.RequestException as exc:
        raise CloudError(f"Hetzner Cloud API: {what}: cannot reach the API ({type(exc).__name__}: {exc})",
                         hint="Check params hetzner.api_endpoint and the network; nothing was changed by this call.") from exc


def wait_for_actions(actions: Sequence[Any], *, what: str, timeout: float = DEFAULT_WAIT_TIMEOUT,
                     interval: float = 1.0, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> None:
    """Poll hcloud actions until all succeeded; CloudError on an error, WaitTimeout at the deadline."""
    pending = [a for a in actions if a is not None]
    for _ in polling_loop(timeout, interval=interval, sleep=sleep, clock=clock):
        still = []
        for action in pending:
            with api_call(f"{what}: polling action {action.id}"):
                action.reload()
            if action.status == "error":
                err = action.error or {}
                raise CloudError(f"Hetzner Cloud API: {what}: action {action.command} ({action.id}) failed: "
                                 f"{err.get('message', 'no message')} ({err.get('code', 'error')})",
                                 hint="Look at the resource in the Hetzner console; run the step again once "
                                      "the cause is fixed.")
            if action.status != "success":
                still.append(action)
        if not still:
            return
        pending = still
    names = ", ".join(f"{a.command} ({a.id})" for a in pending)
    raise WaitTimeout(f"{what}: actions still running after {timeout:.0f}s: {names}", what=what, timeout=timeout,
                      last=names, hint="The API may be slow; run the step again later: it picks up what exists.")


def ensure_powered_off(client: hcloud.Client, params: Params, name: str, *, dry_run: bool,
                       timeout: float = DEFAULT_WAIT_TIMEOUT) -> Outcome:
    """Fence *name* through the Hetzner Cloud API: a hard power off (only the server of that name in params).

    For an unplanned failover whose old primary SSH cannot reach: powered off, it cannot come
    back as a second primary.  Already off: nothing changes.
    """
    params.server(name)  # only a server of these params, never anything else in the project
    what = f"{name} powered off (Hetzner Cloud API)"
    with api_call(f"looking up server {name}"):
        server = client.servers.get_by_name(name)
    if server is None:
        raise CloudError(f"Hetzner Cloud API: there is no server {name} in the project",
                         hint="Power it off in the console (or make sure it is gone) before going on.")
    if server.status == "off":
        return Outcome(what, False, dry_run, actions=["already off"])
    if dry_run:
        return Outcome(what, True, dry_run, actions=[f"power off {name} (id {server.id}, now {server.status})"])
    with api_call(f"powering off {name}"):
        action = client.servers.power_off(server)
    wait_for_actions([action], what=f"powering off {name}", timeout=timeout, interval=_client_interval(client))
    return Outcome(what, True, dry_run, actions=[f"powered off {name} (id {server.id}, was {server.status})"])


def _client_interval(client: hcloud.Client) -> float:
    """The client's own poll interval (so tests against the stand-in stay fast)."""
    func = getattr(getattr(client, "_client", None), "_poll_interval_func", None)
    try:
        return float(func(1)) if func else 1.0
    except Exception:  # noqa: BLE001 - a custom backoff function we cannot call this way
        return 1.0


# inputs ------------------------------------------------------------------------------------

def read_ssh_public_key(params: Params) -> str:
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


def ssh_key_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint Hetzner shows for an OpenSSH public key (``aa:bb:…``)."""
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ValueError("not an OpenSSH public key (expected 'ssh-ed25519 AAAA… comment'); "
                         "did you point at the private key?")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64") from None
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - Hetzner's fingerprint format
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def render_firewall_rules(params: Params) -> list[Rule]:
    """The firewall's rules: SSH inbound from the admin source ranges, nothing else (no ranges: no rule)."""
    sources = tuple(sorted({str(ipaddress.ip_network(r)) for r in params.hetzner.admin_source_ranges}))
    if not sources:
        return []
    return [Rule("in", "tcp", "22", sources, (), SSH_RULE_DESCRIPTION)]


def _rule_of(r: Any) -> Rule:
    norm = lambda ips: tuple(sorted(str(ipaddress.ip_network(i, strict=False)) for i in (ips or [])))  # noqa: E731
    return Rule(r.direction, r.protocol, r.port, norm(r.source_ips), norm(r.destination_ips), r.description)


def _hcloud_rule(rule: Rule) -> FirewallRule:
    return FirewallRule(direction=rule.direction, protocol=rule.protocol, port=rule.port,
                        source_ips=list(rule.source_ips), destination_ips=list(rule.destination_ips),
                        description=rule.description)


# read ----------------------------------------------------------------------------------------

def get_server_shape(client: hcloud.Client, params: Params) -> ServerShape:
    """The server type of params (cores, RAM, disk) as the API reports it: capacity settings follow it."""
    with api_call(f"reading server type {params.hetzner.server_type}"):
        st = client.server_types.get_by_name(params.hetzner.server_type)
    if st is None:
        raise ParamsError("params", [f"hetzner.server_type: the API has no server type "
                                     f"'{params.hetzner.server_type}'"])
    return ServerShape(name=cast(str, st.name), cores=int(cast(int, st.cores)), memory_gb=float(cast(float, st.memory)),
                       disk_gb=int(cast(int, st.disk)), cpu_type=st.cpu_type or "dedicated")


def get_existing(client: hcloud.Client, params: Params, *, ssh_public_key: str | None = None) -> Existing:
    """Read (never change) the resources provisioning manages, found by name."""
    h = params.hetzner
    with api_call("reading the server type, location and image"):
        st = client.server_types.get_by_name(h.server_type)
        loc = client.locations.get_by_name(h.location)
        img = (client.images.get_by_name_and_architecture(h.image, cast(str, st.architecture)) if st is not None else None)
        known_types = tuple(sorted(cast(str, t.name) for t in client.server_types.get_all())) if st is None else ()
        known_locs = tuple(sorted(cast(str, x.name) for x in client.locations.get_all())) if loc is None else ()
    catalog = Catalog(
        server_type=st.name if st else None, architecture=st.architecture if st else None,
        server_type_locations=tuple(cast(str, x.location.name) for x in (st.locations or []) if x.available is not False)
        if st else (),
        location=loc.name if loc else None, location_zone=loc.network_zone if loc else None,
        image_id=img.id if img else None, known_server_types=known_types, known_locations=known_locs)

    with api_call(f"reading SSH key {h.ssh_key_name}"):
        # hcloud types every model field Optional (models double as id-only references); read ones are filled
        key: Any = client.ssh_keys.get_by_name(h.ssh_key_name)
        same_fp: Any = None
        if ssh_public_key:
            fp = ssh_key_fingerprint(ssh_public_key)
            if key is None or key.fingerprint != fp:
                same_fp = client.ssh_keys.get_by_fingerprint(fp)
    with api_call(f"reading network {params.network.name}"):
        net: Any = client.networks.get_by_name(params.network.name)
    with api_call(f"reading firewall {h.firewall}"):
        fw: Any = client.firewalls.get_by_name(h.firewall)
    with api_call(f"reading placement group {h.placement_group}"):
        pg: Any = client.placement_groups.get_by_name(h.placement_group)
    servers: dict[str, SeenServer] = {}
    with api_call("reading servers"):
        for s in params.servers:
            found = client.servers.get_by_name(s.name)
            if found is not None:
                servers[s.name] = _seen_server(found)
        member_ips: dict[str, str] = {}
        if net is not None and net.servers:
            for other in client.servers.get_all():
                for p in other.private_net or []:
                    if p.network.id == net.id:
                        member_ips[p.ip] = cast(str, other.name)
    return Existing(
        catalog=catalog,
        ssh_key=SeenKey(key.id, key.name, key.fingerprint) if key else None,
        ssh_key_same_fingerprint=SeenKey(same_fp.id, same_fp.name, same_fp.fingerprint) if same_fp else None,
        network=SeenNetwork(net.id, net.name, net.ip_range,
                            tuple((sub.ip_range, sub.network_zone, sub.type) for sub in net.subnets or []),
                            member_ips) if net else None,
        firewall=SeenFirewall(fw.id, fw.name, tuple(_rule_of(r) for r in fw.rules or []),
                              tuple(sorted(_firewall_server_ids(fw, servers)))) if fw else None,
        placement_group=SeenPlacementGroup(pg.id, pg.name, pg.type, tuple(pg.servers or [])) if pg else None,
        servers=servers,
    )


def _firewall_server_ids(fw: Any, servers: dict[str, SeenServer]) -> set[int]:
    ids = {sid for s in servers.values() for sid in [s.id] if fw.id in s.firewall_ids}
    for res in fw.applied_to or []:
        if res.type == "server" and res.server is not None:
            ids.add(res.server.id)
    return ids


def _seen_server(s: Any) -> SeenServer:
    pub = s.public_net
    return SeenServer(
        id=s.id, name=s.name, status=s.status,
        server_type=s.server_type.name if s.server_type else "",
        location=s.location.name if s.location else "",
        image=s.image.name if s.image else None,
        labels=dict(s.labels or {}),
        private_ips={p.network.id: p.ip for p in s.private_net or []},
        public_ip=pub.ipv4.ip if pub and pub.ipv4 else None,
        firewall_ids=tuple(sorted(f.firewall.id for f in (pub.firewalls or []))) if pub else (),
        placement_group_id=s.placement_group.id if s.placement_group else None,
    )


# plan (pure) ---------------------------------------------------------------------------------

def plan_provision(params: Params, existing: Existing, *, ssh_public_key: str | None = None) -> list[PlannedAction]:
    """What provisioning would do, resource by resource; ``refuse`` rows say why it cannot."""
    h, n = params.hetzner, params.network
    out: list[PlannedAction] = []
    cat = existing.catalog

    # the catalog: bad input is refused before anything is created
    if cat.server_type is None:
        out.append(PlannedAction("server_type", h.server_type, "refuse",
                                 f"the API has no server type '{h.server_type}' (known: "
                                 f"{', '.join(cat.known_server_types) or 'none'}); fix hetzner.server_type"))
    if cat.location is None:
        out.append(PlannedAction("location", h.location, "refuse",
                                 f"the API has no location '{h.location}' (known: "
                                 f"{', '.join(cat.known_locations) or 'none'}); fix hetzner.location"))
    elif cat.location_zone != h.network_zone:
        out.append(PlannedAction("location", h.location, "refuse",
                                 f"location {h.location} is in network zone {cat.location_zone}, params say "
                                 f"hetzner.network_zone {h.network_zone}; make them agree"))
    if cat.server_type is not None and cat.location is not None and cat.location not in cat.server_type_locations:
        out.append(PlannedAction("server_type", h.server_type, "refuse",
                                 f"server type {h.server_type} is not offered in {h.location} (offered in "
                                 f"{', '.join(cat.server_type_locations)})"))
    if cat.server_type is not None and cat.image_id is None:
        out.append(PlannedAction("image", h.image, "refuse",
                                 f"the API has no image '{h.image}' for {cat.architecture}; fix hetzner.image"))

    # SSH key
    fp = ssh_key_fingerprint(ssh_public_key) if ssh_public_key else None
    key, other = existing.ssh_key, existing.ssh_key_same_fingerprint
    if key is not None:
        if fp is None or key.fingerprint == fp:
            out.append(PlannedAction("ssh_key", h.ssh_key_name, "none", f"exists ({key.fingerprint})"))
        else:
            out.append(PlannedAction("ssh_key", h.ssh_key_name, "refuse",
                                     f"an SSH key named {h.ssh_key_name} exists with fingerprint {key.fingerprint}, "
                                     f"but {h.ssh_public_key_file} has {fp}; hcbpg does not replace keys: set "
                                     "hetzner.ssh_key_name to a new name or fix the key file"))
    elif other is not None:
        out.append(PlannedAction("ssh_key", h.ssh_key_name, "none",
                                 f"this public key is already uploaded as '{other.name}'; it is used as is"))
    else:
        out.append(PlannedAction("ssh_key", h.ssh_key_name, "create", f"upload {fp or 'the public key'}"))

    # network and subnet
    net = existing.network
    if net is None:
        out.append(PlannedAction("network", n.name, "create",
                                 f"ip_range {n.ip_range}, {SUBNET_TYPE} subnet {n.subnet} in {h.network_zone}"))
    elif net.ip_range != n.ip_range:
        out.append(PlannedAction("network", n.name, "refuse",
                                 f"network {n.name} exists with ip_range {net.ip_range}, params say {n.ip_range}; "
                                 "hcbpg does not change a network other servers use: fix network.ip_range"))
    else:
        out.append(PlannedAction("network", n.name, "none", f"exists ({net.ip_range})"))
        same = [s for s in net.subnets if s[0] == n.subnet]
        if same:
            _, zone, stype = same[0]
            if zone != h.network_zone:
                out.append(PlannedAction("subnet", n.subnet, "refuse",
                                         f"subnet {n.subnet} exists in network zone {zone}, params say "
                                         f"{h.network_zone}"))
            else:
                out.append(PlannedAction("subnet", n.subnet, "none", f"exists ({stype}, {zone})"))
        else:
            overlap = [s[0] for s in net.subnets
                       if ipaddress.ip_network(s[0]).overlaps(ipaddress.ip_network(n.subnet))]
            if overlap:
                out.append(PlannedAction("subnet", n.subnet, "refuse",
                                         f"network {n.name} has subnet {overlap[0]}, which overlaps {n.subnet}; "
                                         "set network.subnet to that subnet or to one that does not overlap"))
            else:
                out.append(PlannedAction("subnet", n.subnet, "add", f"{SUBNET_TYPE} subnet in {h.network_zone}"))

    # firewall
    rules = render_firewall_rules(params)
    desc = "; ".join(str(r) for r in rules)
    fw = existing.firewall
    if fw is None:
        out.append(PlannedAction("firewall", h.firewall, "create", desc))
    elif sorted(fw.rules, key=str) != sorted(rules, key=str):
        now = "; ".join(str(r) for r in fw.rules) or "no rules"
        out.append(PlannedAction("firewall", h.firewall, "update", f"rules are [{now}], set them to [{desc}]"))
    else:
        out.append(PlannedAction("firewall", h.firewall, "none", desc))

    # placement group
    pg = existing.placement_group
    if pg is None:
        out.append(PlannedAction("placement_group", h.placement_group, "create", PLACEMENT_TYPE))
    elif pg.type != PLACEMENT_TYPE:
        out.append(PlannedAction("placement_group", h.placement_group, "refuse",
                                 f"placement group {h.placement_group} exists with type {pg.type}, not "
                                 f"{PLACEMENT_TYPE}; rename hetzner.placement_group or fix it by hand"))
    else:
        out.append(PlannedAction("placement_group", h.placement_group, "none", PLACEMENT_TYPE))

    # servers
    ours = {s.name for s in params.servers}
    for s in params.servers:
        seen = existing.servers.get(s.name)
        holder = net.member_ips.get(s.private_ip) if net else None
        taken = holder is not None and holder != s.name
        if seen is None:
            if taken:
                out.append(PlannedAction("server", s.name, "refuse",
                                         f"private IP {s.private_ip} is already held by server {holder}"
                                         + (" (also in params)" if holder in ours else "")
                                         + "; pick a free address in servers[].private_ip"))
                continue
            out.append(PlannedAction("server", s.name, "create",
                                     f"{h.server_type}, {h.image}, {h.location}, private IP {s.private_ip}, "
                                     f"labels {_fmt_labels(h.labels)}, firewall {h.firewall}, "
                                     f"placement group {h.placement_group}"))
            continue
        problems = []
        if seen.server_type != h.server_type:
            problems.append(f"type {seen.server_type} (params: {h.server_type})")
        if seen.location != h.location:
            problems.append(f"location {seen.location} (params: {h.location})")
        if seen.image is not None and seen.image != h.image:
            problems.append(f"image {seen.image} (params: {h.image})")
        ip_now = seen.private_ips.get(net.id) if net else None
        if ip_now is not None and ip_now != s.private_ip:
            problems.append(f"private IP {ip_now} in {n.name} (params: {s.private_ip})")
        if pg is not None and seen.placement_group_id not in (None, pg.id):
            problems.append("another placement group")
        if problems:
            out.append(PlannedAction("server", s.name, "refuse",
                                     f"exists but differs: {'; '.join(problems)}. hcbpg never deletes or rebuilds "
                                     "a server: change it by hand or change params, then run again"))
            continue
        out.append(PlannedAction("server", s.name, "none",
                                 f"exists (id {seen.id}, {seen.status}, public IP {seen.public_ip})"))
        if seen.status == "off":
            out.append(PlannedAction("server_power", s.name, "start", "the server is off: power it on"))
        if ip_now is None:
            if taken:
                out.append(PlannedAction("server_network", s.name, "refuse",
                                         f"private IP {s.private_ip} is already held by server {holder}"))
            else:
                out.append(PlannedAction("server_network", s.name, "attach",
                                         f"attach to {n.name} with private IP {s.private_ip}"))
        if fw is None or fw.id not in seen.firewall_ids:
            out.append(PlannedAction("server_firewall", s.name, "apply", f"apply firewall {h.firewall}"))
        if pg is None or seen.placement_group_id is None:
            out.append(PlannedAction("server_placement", s.name, "refuse",
                                     f"server {s.name} is not in placement group {h.placement_group}; joining one "
                                     "needs the server powered off: power it off in the console, add it to the "
                                     "group (hcloud server add-to-placement-group), power it on, run again"))
        missing = {k: v for k, v in h.labels.items() if seen.labels.get(k) != v}
        if missing:
            out.append(PlannedAction("server_labels", s.name, "update", f"set labels {_fmt_labels(missing)}"))
    return out


def _fmt_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def refusals(plan: Sequence[PlannedAction]) -> list[PlannedAction]:
    return [a for a in plan if a.action == "refuse"]


def _raise_refusals(plan: Sequence[PlannedAction]) -> None:
    refused = refusals(plan)
    if refused:
        lines = "\n".join(f"  - {a.kind} {a.name}: {a.detail}" for a in refused)
        raise CloudError(f"provisioning refused, nothing was changed ({len(refused)} problem(s)):\n{lines}",
                         hint="Fix params or the existing resources as described, then run the step again.")


# apply --------------------------------------------------------------------------------------

def ensure_provisioned(client: hcloud.Client, params: Params, *, dry_run: bool, ssh_public_key: str,
                       wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> tuple[list[Outcome], list[ServerRecord]]:
    """Create what is missing, fix what is safe to fix; refuse (before any change) what is not."""
    existing = get_existing(client, params, ssh_public_key=ssh_public_key)
    plan = plan_provision(params, existing, ssh_public_key=ssh_public_key)
    _raise_refusals(plan)
    if dry_run:
        return _outcomes(params, plan, dry_run=True), _records(params, existing)

    h, n = params.hetzner, params.network
    by = {(a.kind, a.name): a for a in plan}
    interval = _client_interval(client)

    def wait(actions: Sequence[Any], what: str) -> None:
        wait_for_actions(actions, what=what, timeout=wait_timeout, interval=interval)

    def planned(kind: str, name: str) -> str:
        a = by.get((kind, name))
        return a.action if a else "none"

    # SSH key
    if planned("ssh_key", h.ssh_key_name) == "create":
        with api_call(f"creating SSH key {h.ssh_key_name}"):
            created = client.ssh_keys.create(name=h.ssh_key_name, public_key=ssh_public_key, labels=dict(h.labels))
        key_id = created.id
    else:
        key_id = (existing.ssh_key or existing.ssh_key_same_fingerprint).id  # type: ignore[union-attr]

    # network
    if planned("network", n.name) == "create":
        with api_call(f"creating network {n.name}"):
            network = client.networks.create(
                name=n.name, ip_range=n.ip_range, labels=dict(h.labels),
                subnets=[NetworkSubnet(ip_range=n.subnet, network_zone=h.network_zone, type=SUBNET_TYPE)])
        net_id = cast(int, network.id)
    else:
        net_id = existing.network.id  # type: ignore[union-attr]
    if planned("subnet", n.subnet) == "add":
        with api_call(f"adding subnet {n.subnet} to network {n.name}"):
            action = client.networks.add_subnet(
                Network(id=net_id), NetworkSubnet(ip_range=n.subnet, network_zone=h.network_zone, type=SUBNET_TYPE))
        wait([action], f"adding subnet {n.subnet}")

    # firewall
    rules = [_hcloud_rule(r) for r in render_firewall_rules(params)]
    if planned("firewall", h.firewall) == "create":
        with api_call(f"creating firewall {h.firewall}"):
            resp = client.firewalls.create(name=h.firewall, rules=rules, labels=dict(h.labels))  # type: ignore[arg-type]
        wait(cast(list[Any], resp.actions), f"creating firewall {h.firewall}")
        fw_id = resp.firewall.id
    else:
        fw_id = existing.firewall.id  # type: ignore[union-attr]
        if planned("firewall", h.firewall) == "update":
            with api_call(f"setting the rules of firewall {h.firewall}"):
                actions = client.firewalls.set_rules(Firewall(id=fw_id), rules)
            wait(actions, f"setting the rules of firewall {h.firewall}")

    # placement group
    if planned("placement_group", h.placement_group) == "create":
        with api_call(f"creating placement group {h.placement_group}"):
            pg_resp = client.placement_groups.create(name=h.placement_group, type=PLACEMENT_TYPE,
                                                     labels=dict(h.labels))
        if pg_resp.action is not None:
            wait([pg_resp.action], f"creating placement group {h.placement_group}")
        pg_id = pg_resp.placement_group.id
    else:
        pg_id = existing.placement_group.id  # type: ignore[union-attr]

    # servers
    known_hosts = hostkeys.known_hosts_path(params)
    for s in params.servers:
        if planned("server", s.name) == "create":
            # the server's host key is made here and pinned before the server exists, so the very
            # first SSH connection to it is verified; the private half lives only in user_data
            host_key = hostkeys.generate_host_key(f"root@{s.name}")
            hostkeys.pin(known_hosts, params.environment, s.name, [host_key.public_line])
            print(f"[{s.name}] new SSH host key {host_key.fingerprint}, pinned in {known_hosts}")
            with api_call(f"creating server {s.name}"):
                srv_resp = client.servers.create(
                    name=s.name, server_type=ServerType(name=h.server_type),
                    image=Image(id=existing.catalog.image_id), location=Location(name=h.location),
                    ssh_keys=[SSHKey(id=key_id)], firewalls=[Firewall(id=fw_id)],
                    placement_group=PlacementGroup(id=pg_id), labels=dict(h.labels), start_after_create=True,
                    user_data=render_cloud_init(host_key))
            del host_key
            wait([srv_resp.action, *srv_resp.next_actions], f"creating server {s.name}")
            server_id = cast(int, srv_resp.server.id)
            attach = True
        else:
            server_id = existing.servers[s.name].id
            attach = planned("server_network", s.name) == "attach"
            if planned("server_firewall", s.name) == "apply":
                with api_call(f"applying firewall {h.firewall} to {s.name}"):
                    actions = client.firewalls.apply_to_resources(
                        Firewall(id=fw_id), [FirewallResource(type="server", server=Server(id=server_id))])
                wait(actions, f"applying firewall {h.firewall} to {s.name}")
            if planned("server_labels", s.name) == "update":
                labels = {**existing.servers[s.name].labels, **h.labels}
                with api_call(f"setting labels on {s.name}"):
                    client.servers.update(Server(id=server_id), labels=labels)
        if planned("server_power", s.name) == "start":
            with api_call(f"powering on {s.name}"):
                action = client.servers.power_on(Server(id=server_id))
            wait([action], f"powering on {s.name}")
        if attach:
            # a fixed private IP needs attach_to_network: create(networks=...) assigns one itself
            with api_call(f"attaching {s.name} to {n.name} as {s.private_ip}"):
                action = client.servers.attach_to_network(Server(id=server_id), Network(id=net_id), ip=s.private_ip)
            wait([action], f"attaching {s.name} to {n.name}")

    after = get_existing(client, params, ssh_public_key=ssh_public_key)
    records = _records(params, after)
    for r in records:
        # the address later steps reach the server at, beside its pinned key (from the API, not outputs/)
        keys = [f"{p.keytype} {p.key}" for p in hostkeys.pins_for(known_hosts, r.name)]
        if keys and r.public_ip:
            hostkeys.pin(known_hosts, params.environment, r.name, keys, address=r.public_ip)
    return _outcomes(params, plan, dry_run=False), records


def render_cloud_init(host_key: hostkeys.HostKeyPair) -> str:
    """cloud-init user_data that makes *host_key* the server's only SSH host key (holds the private key)."""
    body = "".join(f"    {line}\n" for line in host_key.private_openssh.strip().splitlines())
    return ("#cloud-config\n"
            "# hcbpg: this host key was generated by hcbpg and is pinned in the environment's known_hosts\n"
            "ssh_deletekeys: true\n"
            "ssh_genkeytypes: []\n"
            "ssh_keys:\n"
            f"  {host_key.keytype}_private: |\n{body}"
            f"  {host_key.keytype}_public: {host_key.public_line}\n")


def _outcomes(params: Params, plan: Sequence[PlannedAction], *, dry_run: bool) -> list[Outcome]:
    """One Outcome per resource, its planned changes as actions."""
    groups: dict[str, list[PlannedAction]] = {}
    titles = {"ssh_key": "SSH key", "network": "network", "subnet": "network", "firewall": "firewall",
              "placement_group": "placement group"}
    for a in plan:
        if a.kind in ("server_type", "location", "image"):
            continue
        if a.kind.startswith("server"):
            what = f"server {a.name}"
        elif a.kind == "subnet":
            what = f"network {params.network.name}"
        else:
            what = f"{titles.get(a.kind, a.kind)} {a.name}"
        groups.setdefault(what, []).append(a)
    out = []
    for what, acts in groups.items():
        changes = [a for a in acts if a.changes]
        out.append(Outcome(what=what, changed=bool(changes), dry_run=dry_run,
                           actions=[f"{a.action} {a.kind}: {a.detail}" for a in changes]))
    return out


def _records(params: Params, existing: Existing) -> list[ServerRecord]:
    out = []
    for s in params.servers:
        seen = existing.servers.get(s.name)
        if seen is None:
            out.append(ServerRecord(s.name, s.role, s.private_ip))
        else:
            out.append(ServerRecord(s.name, s.role, s.private_ip, seen.id, seen.public_ip, seen.status))
    return out


# verify (read-only) --------------------------------------------------------------------------

def get_provision_checks(client: hcloud.Client, params: Params, *, dry_run: bool = False,
                         ssh_public_key: str | None = None) -> list[Check]:
    """Checks that everything provisioning manages is there as params say (dry run: missing is a warning)."""
    h, n = params.hetzner, params.network
    ex = get_existing(client, params, ssh_public_key=ssh_public_key)
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str, target: str = "", *, missing: bool = False) -> None:
        if missing and dry_run:
            checks.append(Check(name, "warn", f"{detail} (dry run: would be created)", target))
        else:
            checks.append(Check.of(name, ok, detail, target))

    key = ex.ssh_key or ex.ssh_key_same_fingerprint
    check("SSH key uploaded", key is not None, f"{key.name} {key.fingerprint}" if key else "missing",
          h.ssh_key_name, missing=key is None)
    net = ex.network
    subnet_ok = bool(net) and any(s[0] == n.subnet and s[1] == h.network_zone for s in net.subnets)  # type: ignore[union-attr]
    check("private network", bool(net) and net.ip_range == n.ip_range and subnet_ok,  # type: ignore[union-attr]
          f"{net.ip_range}, subnets {', '.join(f'{s[0]} ({s[1]})' for s in net.subnets)}" if net else "missing",
          n.name, missing=net is None)
    fw = ex.firewall
    want = render_firewall_rules(params)
    check("firewall allows only SSH inbound", bool(fw) and sorted(fw.rules, key=str) == sorted(want, key=str),  # type: ignore[union-attr]
          "; ".join(str(r) for r in fw.rules) if fw else "missing", h.firewall, missing=fw is None)
    pg = ex.placement_group
    check("placement group", bool(pg) and pg.type == PLACEMENT_TYPE,  # type: ignore[union-attr]
          f"{pg.type}, servers {list(pg.server_ids)}" if pg else "missing", h.placement_group, missing=pg is None)
    for s in params.servers:
        seen = ex.servers.get(s.name)
        if seen is None:
            check("server exists", False, "missing", s.name, missing=True)
            continue
        check("server running", seen.status == "running", seen.status, s.name)
        check("server type and location", (seen.server_type, seen.location) == (h.server_type, h.location),
              f"{seen.server_type} in {seen.location}", s.name)
        check("image", seen.image in (None, h.image), str(seen.image), s.name)
        missing_labels = {k: v for k, v in h.labels.items() if seen.labels.get(k) != v}
        check("labels", not missing_labels, _fmt_labels(seen.labels), s.name)
        ip = seen.private_ips.get(net.id) if net else None
        check("private IP", ip == s.private_ip, f"{ip or 'not attached'} in {n.name} (params: {s.private_ip})",
              s.name, missing=ip is None)
        check("firewall applied", bool(fw) and fw.id in seen.firewall_ids,  # type: ignore[union-attr]
              h.firewall if fw and fw.id in seen.firewall_ids else "not applied", s.name, missing=fw is None)
        check("in placement group", bool(pg) and seen.placement_group_id == pg.id,  # type: ignore[union-attr]
              h.placement_group if pg and seen.placement_group_id == pg.id else "not in it", s.name,
              missing=pg is None)
        check("public IPv4", bool(seen.public_ip), str(seen.public_ip), s.name)
    return checks
