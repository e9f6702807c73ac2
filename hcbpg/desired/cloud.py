"""Hetzner Cloud provisioning, the pure half (step 01): what the project holds as plain data, the
firewall rules params ask for, :func:`plan_provision`, which compares the two and decides what to
create, fix or refuse, and the cloud-init a new server boots with; :mod:`hcbpg.ops.provisioning`
reads the project and applies the plan.

With a ``jumpbox`` in params (issue 28) the jumpbox is provisioned first, like a server (its own type and
firewall ``jumpbox.firewall``: SSH from the admin ranges), and the database servers' firewall ends with no
rule (no public inbound: SSH goes through the jumpbox), but only after SSH through the jumpbox worked on
every server in the same run (:func:`plan_public_ssh`); until then it keeps SSH from the admin ranges.
``hetzner.protection`` adds delete and rebuild protection on every provisioned machine."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hcbpg.errors import CloudError
from hcbpg.outcome import Check
from hcbpg.params import Params

ActionKind = Literal["create", "add", "update", "attach", "apply", "start", "none", "refuse"]
SUBNET_TYPE = "cloud"
PLACEMENT_TYPE = "spread"
SSH_RULE_DESCRIPTION = "SSH from the admin source ranges (hcbpg)"
JUMPBOX_RULE_DESCRIPTION = "SSH to the jumpbox from the admin source ranges (hcbpg)"
FirewallKind = Literal["db", "jumpbox"]


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
    #: delete and rebuild protection as the API reports them
    protection: tuple[bool, bool] = (False, False)


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
    #: the jumpbox's server type (params ``jumpbox.server_type``): its name, architecture and locations
    jumpbox_server_type: str | None = None
    jumpbox_architecture: str | None = None
    jumpbox_type_locations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Existing:
    """A read-only snapshot of the project's resources that provisioning cares about."""

    catalog: Catalog
    ssh_key: SeenKey | None = None
    ssh_key_same_fingerprint: SeenKey | None = None
    network: SeenNetwork | None = None
    firewall: SeenFirewall | None = None
    placement_group: SeenPlacementGroup | None = None
    #: every provisioned machine found by name: the database servers and the jumpbox
    servers: dict[str, SeenServer] = field(default_factory=dict)
    #: the jumpbox's firewall (params ``jumpbox.firewall``)
    jumpbox_firewall: SeenFirewall | None = None


@dataclass(frozen=True)
class Machine:
    """One server step 01 provisions: a database server or the jumpbox."""

    name: str
    role: str
    private_ip: str
    server_type: str
    firewall: str


def provisioned_machines(params: Params) -> list[Machine]:
    """What step 01 provisions, in creation order: the jumpbox first (when params have one), then the servers."""
    h = params.hetzner
    out = []
    if params.jumpbox is not None:
        jb = params.jumpbox
        out.append(Machine(jb.name, "jumpbox", jb.private_ip, jb.server_type, jb.firewall))
    out += [Machine(s.name, s.role, s.private_ip, h.server_type, h.firewall) for s in params.servers]
    return out


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


# inputs (pure) ------------------------------------------------------------------------------

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


def _ssh_rules(ranges: Sequence[str], description: str) -> list[Rule]:
    sources = tuple(sorted({str(ipaddress.ip_network(r)) for r in ranges}))
    return [Rule("in", "tcp", "22", sources, (), description)] if sources else []


def render_admin_ssh_rules(params: Params) -> list[Rule]:
    """SSH inbound from the admin source ranges, nothing else (no ranges: no rule): the database servers'
    firewall without a jumpbox, and with one until SSH through it was proven (:func:`plan_public_ssh`)."""
    return _ssh_rules(params.hetzner.admin_source_ranges, SSH_RULE_DESCRIPTION)


def render_firewall_rules(params: Params, kind: FirewallKind = "db") -> list[Rule]:
    """The rules a firewall ends with.  ``db`` (``hetzner.firewall``): SSH from the admin source ranges; with a
    jumpbox, no rule at all (Hetzner then drops all public inbound: SSH goes through the jumpbox, the private
    network is never filtered).  ``jumpbox`` (``jumpbox.firewall``): SSH from the admin source ranges and
    ``jumpbox.ssh_extra_sources``."""
    jb = params.jumpbox
    if kind == "jumpbox":
        if jb is None:
            raise ValueError("params have no jumpbox: there is no jumpbox firewall")
        return _ssh_rules([*params.hetzner.admin_source_ranges, *jb.ssh_extra_sources], JUMPBOX_RULE_DESCRIPTION)
    return [] if jb is not None else render_admin_ssh_rules(params)


def describe_rules(rules: Sequence[Rule]) -> str:
    """The rules in one line (``no rules: no public inbound`` when empty)."""
    return "; ".join(str(r) for r in rules) or "no rules: no public inbound"


def same_rules(a: Sequence[Rule], b: Sequence[Rule]) -> bool:
    """Whether two rule lists allow the same (order and descriptions do not count)."""
    return sorted(a, key=str) == sorted(b, key=str)


def plan_public_ssh(params: Params, current: Sequence[Rule] | None,
                    answers: Mapping[str, str | None]) -> PlannedAction:
    """Whether the database servers' firewall may lose its public SSH now (params with a jumpbox).

    *current*: its rules now (None: it does not exist yet); *answers*: server name -> None when an SSH command
    through the jumpbox succeeded on it in this run, else why not (a server missing: not tried).  ``none`` when
    the firewall has its final rules already, ``update`` to them when every server of params answered, else
    ``refuse`` naming each server that did not: the operator is never locked out."""
    h, jb = params.hetzner, params.jumpbox
    if jb is None:
        return PlannedAction("firewall_ssh", h.firewall, "none", "no jumpbox in params: SSH stays open to the "
                             "admin source ranges")
    final = render_firewall_rules(params, "db")
    if current is not None and same_rules(current, final):
        return PlannedAction("firewall_ssh", h.firewall, "none", f"{describe_rules(final)}; SSH through {jb.name}")
    now = describe_rules(current) if current is not None else "not created yet"
    unproven = {s.name: answers.get(s.name, "not tried") for s in params.servers if s.name not in answers
                or answers[s.name] is not None}
    if unproven:
        why = "; ".join(f"{name}: {reason}" for name, reason in unproven.items())
        return PlannedAction("firewall_ssh", h.firewall, "refuse",
                             f"rules stay [{now}]: SSH through {jb.name} did not work on every server ({why})")
    return PlannedAction("firewall_ssh", h.firewall, "update",
                         f"rules are [{now}], set them to [{describe_rules(final)}]: an SSH command through "
                         f"{jb.name} succeeded on every server in this run")


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
    jb_type = params.jumpbox.server_type if params.jumpbox is not None else None
    if jb_type is not None and cat.jumpbox_server_type is None:
        out.append(PlannedAction("server_type", jb_type, "refuse",
                                 f"the API has no server type '{jb_type}' for the jumpbox; fix jumpbox.server_type"))
    elif jb_type is not None and cat.location is not None and cat.location not in cat.jumpbox_type_locations:
        out.append(PlannedAction("server_type", jb_type, "refuse",
                                 f"server type {jb_type} (jumpbox.server_type) is not offered in {h.location} "
                                 f"(offered in {', '.join(cat.jumpbox_type_locations) or 'no location'}); cpx11 is "
                                 "offered in every location"))
    elif jb_type is not None and cat.architecture is not None and cat.jumpbox_architecture != cat.architecture:
        out.append(PlannedAction("server_type", jb_type, "refuse",
                                 f"server type {jb_type} (jumpbox.server_type) is {cat.jumpbox_architecture}, the "
                                 f"database servers' {cat.architecture}: pick a {cat.architecture} type"))
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

    # firewalls: the jumpbox's (its server is created first), then the database servers'
    jb = params.jumpbox
    if jb is not None:
        out.append(_plan_firewall(jb.firewall, existing.jumpbox_firewall, render_firewall_rules(params, "jumpbox")))
    fw = existing.firewall
    opening = rules_before_proof(params, fw)
    out.append(_plan_firewall(h.firewall, fw, opening))
    final = render_firewall_rules(params, "db")
    if jb is not None and not same_rules(opening, final):
        out.append(PlannedAction("firewall_ssh", h.firewall, "update",
                                 f"then set its rules to [{describe_rules(final)}], once an SSH command through "
                                 f"{jb.name} succeeded on every server in this run (until then: "
                                 f"[{describe_rules(opening)}])"))

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

    # servers: the jumpbox first
    ours = {m.name for m in provisioned_machines(params)}
    for s in provisioned_machines(params):
        seen = existing.servers.get(s.name)
        m_fw = existing.jumpbox_firewall if s.role == "jumpbox" else fw
        holder = net.member_ips.get(s.private_ip) if net else None
        taken = holder is not None and holder != s.name
        if seen is None:
            if taken:
                out.append(PlannedAction("server", s.name, "refuse",
                                         f"private IP {s.private_ip} is already held by server {holder}"
                                         + (" (also in params)" if holder in ours else "")
                                         + "; pick a free address in "
                                         + ("jumpbox.private_ip" if s.role == "jumpbox" else "servers[].private_ip")))
                continue
            out.append(PlannedAction("server", s.name, "create",
                                     f"{s.server_type}, {h.image}, {h.location}, private IP {s.private_ip}, "
                                     f"labels {format_labels(h.labels)}, firewall {s.firewall}, "
                                     f"placement group {h.placement_group}"))
            out += _plan_protection(params, s.name, None)
            continue
        problems = []
        if seen.server_type != s.server_type:
            problems.append(f"type {seen.server_type} (params: {s.server_type})")
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
        if m_fw is None or m_fw.id not in seen.firewall_ids:
            out.append(PlannedAction("server_firewall", s.name, "apply", f"apply firewall {s.firewall}"))
        if pg is None or seen.placement_group_id is None:
            out.append(PlannedAction("server_placement", s.name, "refuse",
                                     f"server {s.name} is not in placement group {h.placement_group}; joining one "
                                     "needs the server powered off: power it off in the console, add it to the "
                                     "group (hcloud server add-to-placement-group), power it on, run again"))
        missing = {k: v for k, v in h.labels.items() if seen.labels.get(k) != v}
        if missing:
            out.append(PlannedAction("server_labels", s.name, "update", f"set labels {format_labels(missing)}"))
        out += _plan_protection(params, s.name, seen)
    return out


def _plan_firewall(name: str, seen: SeenFirewall | None, rules: Sequence[Rule]) -> PlannedAction:
    desc = describe_rules(rules)
    if seen is None:
        return PlannedAction("firewall", name, "create", desc)
    if not same_rules(seen.rules, rules):
        return PlannedAction("firewall", name, "update", f"rules are [{describe_rules(seen.rules)}], set them to [{desc}]")
    return PlannedAction("firewall", name, "none", desc)


def rules_before_proof(params: Params, seen: SeenFirewall | None) -> list[Rule]:
    """The rules the database servers' firewall gets before SSH through the jumpbox is proven: its final rules
    without a jumpbox or once it has them (public SSH is never opened again), else SSH from the admin ranges."""
    final = render_firewall_rules(params, "db")
    if params.jumpbox is None or (seen is not None and same_rules(seen.rules, final)):
        return final
    return render_admin_ssh_rules(params)


def _plan_protection(params: Params, name: str, seen: SeenServer | None) -> list[PlannedAction]:
    """Delete and rebuild protection (``hetzner.protection``): enabled, never lifted by hcbpg."""
    if not params.hetzner.protection:
        return []
    if seen is None:
        return [PlannedAction("server_protection", name, "update", "enable delete and rebuild protection once "
                              "it is created")]
    if seen.protection != (True, True):
        return [PlannedAction("server_protection", name, "update", f"enable delete and rebuild protection (now "
                              f"delete {_on(seen.protection[0])}, rebuild {_on(seen.protection[1])})")]
    return [PlannedAction("server_protection", name, "none", "delete and rebuild protection on")]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def protection_row(name: str, protection: tuple[bool, bool] | None, *, dry_run: bool) -> Check:
    """The check row of one machine's delete and rebuild protection (None: the machine does not exist)."""
    label = "delete and rebuild protection"
    if protection == (True, True):
        return Check(label, "pass", "delete on, rebuild on", name)
    now = "missing" if protection is None else f"delete {_on(protection[0])}, rebuild {_on(protection[1])}"
    if dry_run:
        return Check(label, "warn", f"{now} (dry run: would be enabled)", name)
    return Check(label, "fail", now, name)


def format_labels(labels: dict[str, str]) -> str:
    """``k=v,k=v`` in key order (``(none)`` when empty)."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def refusals(plan: Sequence[PlannedAction]) -> list[PlannedAction]:
    """The rows of *plan* that refuse."""
    return [a for a in plan if a.action == "refuse"]


def raise_refusals(plan: Sequence[PlannedAction]) -> None:
    """CloudError naming every refused row of *plan* (before anything is changed)."""
    refused = refusals(plan)
    if refused:
        lines = "\n".join(f"  - {a.kind} {a.name}: {a.detail}" for a in refused)
        raise CloudError(f"provisioning refused, nothing was changed ({len(refused)} problem(s)):\n{lines}",
                         hint="Fix params or the existing resources as described, then run the step again.")


def render_cloud_init(keytype: str, private_openssh: str, public_line: str) -> str:
    """cloud-init user_data that makes the host key (*keytype*, its private OpenSSH text and public line) the
    server's only SSH host key (it holds the private key)."""
    body = "".join(f"    {line}\n" for line in private_openssh.strip().splitlines())
    return ("#cloud-config\n"
            "# hcbpg: this host key was generated by hcbpg and is pinned in the environment's known_hosts\n"
            "ssh_deletekeys: true\n"
            "ssh_genkeytypes: []\n"
            "ssh_keys:\n"
            f"  {keytype}_private: |\n{body}"
            f"  {keytype}_public: {public_line}\n")


# the operator's machine ----------------------------------------------------------------------------

#: the operator's public address when this machine cannot tell it (behind NAT): ``hcbpg doctor --from`` sets it
OPERATOR_ADDRESS_ENV = "HCBPG_OPERATOR_ADDRESS"


def parse_route_source(output: str) -> tuple[str | None, bool]:
    """The source address (``prefsrc``) in ``ip -j route get ADDRESS`` output (None when there is none), and
    whether the destination is on the link (no gateway: it sees that very address)."""
    try:
        routes = json.loads(output or "[]")
    except ValueError:
        return None, False
    for route in routes if isinstance(routes, list) else []:
        if isinstance(route, dict) and route.get("prefsrc"):
            return str(route["prefsrc"]), not route.get("gateway")
    return None, False


def check_admin_range(params: "Params", address: str | None, how: str) -> Check:
    """A check row: *address* (the operator's public one) is inside ``hetzner.admin_source_ranges``, so step 01's
    firewall lets this machine's SSH in.  Unknown: a warning saying how to tell it."""
    ranges = params.hetzner.admin_source_ranges
    label = "operator's address in hetzner.admin_source_ranges"
    if not ranges:
        return Check(label, "pass", "no admin ranges: the firewall does not limit SSH by source", "operator")
    if address is None:
        return Check(label, "warn", f"not checked: {how}. Give it with `hcbpg doctor ENV --from YOUR.PUBLIC.IP` "
                     f"(or {OPERATOR_ADDRESS_ENV}); ranges: {', '.join(ranges)}", "operator")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return Check(label, "fail", f"{address!r} ({how}) is not an IP address", "operator")
    inside = [r for r in ranges if ip in ipaddress.ip_network(r)]
    if inside:
        return Check(label, "pass", f"{ip} ({how}) is in {inside[0]}", "operator")
    return Check(label, "fail", f"{ip} ({how}) is in none of {', '.join(ranges)}: step 01's firewall would keep "
                 "this machine's SSH out. Add your office / VPN range to hetzner.admin_source_ranges, or run "
                 "hcbpg from inside one", "operator")
