"""Provisioning on Hetzner Cloud (step 01): SSH key, private network, SSH-only firewall, placement group, servers;
with a ``jumpbox`` in params the jumpbox first (its own SSH firewall), and the database servers' public SSH closed
once SSH through the jumpbox worked on each (:func:`ensure_public_ssh_closed`); delete and rebuild protection
(:func:`ensure_protection`).

The cloud client is an adapter handed in by the caller (:mod:`hcbpg.adapters.cloud`, which maps its
errors).  ``get_existing`` reads what the project holds, ``plan_provision`` (pure,
:mod:`hcbpg.desired.cloud`) decides what is missing or differs, and ``ensure_provisioned`` creates
only what is missing, fixes what is safe to fix (firewall rules, a missing network attachment,
missing labels) and refuses everything else with a message, before changing anything.  Nothing
here ever deletes a resource.

The two ``ensure_*`` here keep a ``dry_run`` flag: the API has no dry-run mode and a recording client
would have to invent the ids of what it "created"; a dry run is the plan (:func:`plan_provision`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from hcloud.firewalls.domain import Firewall, FirewallResource, FirewallRule
from hcloud.images.domain import Image
from hcloud.locations.domain import Location
from hcloud.networks.domain import Network, NetworkSubnet
from hcloud.placement_groups.domain import PlacementGroup
from hcloud.server_types.domain import ServerType
from hcloud.servers.domain import Server
from hcloud.ssh_keys.domain import SSHKey

from hcbpg.adapters import hostkeys
from hcbpg.adapters.cloud import DEFAULT_WAIT_TIMEOUT, client_interval, map_cloud_errors, wait_for_actions
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.cloud import (
    PLACEMENT_TYPE,
    SUBNET_TYPE,
    Catalog,
    Existing,
    PlannedAction,
    Rule,
    SeenFirewall,
    SeenKey,
    SeenNetwork,
    SeenPlacementGroup,
    SeenServer,
    ServerRecord,
    describe_rules,
    format_labels,
    plan_provision,
    plan_public_ssh,
    protection_row,
    provisioned_machines,
    raise_refusals,
    render_cloud_init,
    render_firewall_rules,
    rules_before_proof,
    same_rules,
    ssh_key_fingerprint,
)
from hcbpg.errors import CloudError, HcbpgError, ParamsError, SafetyCheckFailed
from hcbpg.outcome import Check, Outcome

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.adapters.cloud import CloudLike
    from hcbpg.params import Params


def ensure_powered_off(client: "CloudLike", params: "Params", name: str, *, dry_run: bool,
                       timeout: float = DEFAULT_WAIT_TIMEOUT) -> Outcome:
    """Fence *name* through the Hetzner Cloud API: a hard power off (only the server of that name in params).

    For an unplanned failover whose old primary SSH cannot reach: powered off, it cannot come
    back as a second primary.  Already off: nothing changes.
    """
    params.server(name)  # only a server of these params, never anything else in the project
    what = f"{name} powered off (Hetzner Cloud API)"
    with map_cloud_errors(f"looking up server {name}"):
        server = client.servers.get_by_name(name)
    if server is None:
        raise CloudError(f"Hetzner Cloud API: there is no server {name} in the project",
                         hint="Power it off in the console (or make sure it is gone) before going on.")
    if server.status == "off":
        return Outcome(what, False, dry_run, actions=["already off"])
    # dry run: the API has no dry-run mode (see the module docstring); the plan is the power off not sent
    if dry_run:
        return Outcome(what, True, dry_run, actions=[f"power off {name} (id {server.id}, now {server.status})"])
    with map_cloud_errors(f"powering off {name}"):
        action = client.servers.power_off(server)
    wait_for_actions([action], what=f"powering off {name}", timeout=timeout, interval=client_interval(client))
    return Outcome(what, True, dry_run, actions=[f"powered off {name} (id {server.id}, was {server.status})"])


def _rule_of(r: Any) -> Rule:
    norm = lambda ips: tuple(sorted(str(ipaddress.ip_network(i, strict=False)) for i in (ips or [])))  # noqa: E731
    return Rule(r.direction, r.protocol, r.port, norm(r.source_ips), norm(r.destination_ips), r.description)


def _hcloud_rule(rule: Rule) -> FirewallRule:
    return FirewallRule(direction=rule.direction, protocol=rule.protocol, port=rule.port,
                        source_ips=list(rule.source_ips), destination_ips=list(rule.destination_ips),
                        description=rule.description)


# read ----------------------------------------------------------------------------------------

def get_server_shape(client: "CloudLike", params: "Params") -> ServerShape:
    """The server type of params (cores, RAM, disk) as the API reports it: capacity settings follow it."""
    with map_cloud_errors(f"reading server type {params.hetzner.server_type}"):
        st = client.server_types.get_by_name(params.hetzner.server_type)
    if st is None:
        raise ParamsError("params", [f"hetzner.server_type: the API has no server type "
                                     f"'{params.hetzner.server_type}'"])
    return ServerShape(name=cast(str, st.name), cores=int(cast(int, st.cores)), memory_gb=float(cast(float, st.memory)),
                       disk_gb=int(cast(int, st.disk)), cpu_type=st.cpu_type or "dedicated")


def get_existing(client: "CloudLike", params: "Params", *, ssh_public_key: str | None = None) -> Existing:
    """Read (never change) the resources provisioning manages, found by name."""
    h = params.hetzner
    with map_cloud_errors("reading the server type, location and image"):
        st = client.server_types.get_by_name(h.server_type)
        loc = client.locations.get_by_name(h.location)
        img = (client.images.get_by_name_and_architecture(h.image, cast(str, st.architecture)) if st is not None else None)
        known_types = tuple(sorted(cast(str, t.name) for t in client.server_types.get_all())) if st is None else ()
        known_locs = tuple(sorted(cast(str, x.name) for x in client.locations.get_all())) if loc is None else ()
        jb = params.jumpbox
        jst: Any = (st if jb.server_type == h.server_type else client.server_types.get_by_name(jb.server_type)) \
            if jb is not None else None
    catalog = Catalog(
        server_type=st.name if st else None, architecture=st.architecture if st else None,
        server_type_locations=tuple(cast(str, x.location.name) for x in (st.locations or []) if x.available is not False)
        if st else (),
        location=loc.name if loc else None, location_zone=loc.network_zone if loc else None,
        image_id=img.id if img else None, known_server_types=known_types, known_locations=known_locs,
        jumpbox_server_type=jst.name if jst else None, jumpbox_architecture=jst.architecture if jst else None,
        jumpbox_type_locations=tuple(cast(str, x.location.name) for x in (jst.locations or [])
                                     if x.available is not False) if jst else ())

    with map_cloud_errors(f"reading SSH key {h.ssh_key_name}"):
        # hcloud types every model field Optional (models double as id-only references); read ones are filled
        key: Any = client.ssh_keys.get_by_name(h.ssh_key_name)
        same_fp: Any = None
        if ssh_public_key:
            fp = ssh_key_fingerprint(ssh_public_key)
            if key is None or key.fingerprint != fp:
                same_fp = client.ssh_keys.get_by_fingerprint(fp)
    with map_cloud_errors(f"reading network {params.network.name}"):
        net: Any = client.networks.get_by_name(params.network.name)
    with map_cloud_errors(f"reading firewall {h.firewall}"):
        fw: Any = client.firewalls.get_by_name(h.firewall)
    jfw: Any = None
    if params.jumpbox is not None:
        with map_cloud_errors(f"reading firewall {params.jumpbox.firewall}"):
            jfw = client.firewalls.get_by_name(params.jumpbox.firewall)
    with map_cloud_errors(f"reading placement group {h.placement_group}"):
        pg: Any = client.placement_groups.get_by_name(h.placement_group)
    servers: dict[str, SeenServer] = {}
    with map_cloud_errors("reading servers"):
        for m in provisioned_machines(params):
            found = client.servers.get_by_name(m.name)
            if found is not None:
                servers[m.name] = _seen_server(found)
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
        firewall=_seen_firewall(fw, servers) if fw else None,
        placement_group=SeenPlacementGroup(pg.id, pg.name, pg.type, tuple(pg.servers or [])) if pg else None,
        servers=servers,
        jumpbox_firewall=_seen_firewall(jfw, servers) if jfw else None,
    )


def _seen_firewall(fw: Any, servers: dict[str, SeenServer]) -> SeenFirewall:
    return SeenFirewall(fw.id, fw.name, tuple(_rule_of(r) for r in fw.rules or []),
                        tuple(sorted(_firewall_server_ids(fw, servers))))


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
        protection=(bool((s.protection or {}).get("delete")), bool((s.protection or {}).get("rebuild"))),
    )


# apply --------------------------------------------------------------------------------------

def ensure_provisioned(client: "CloudLike", params: "Params", *, dry_run: bool, ssh_public_key: str,
                       wait_timeout: float = DEFAULT_WAIT_TIMEOUT) -> tuple[list[Outcome], list[ServerRecord]]:
    """Create what is missing, fix what is safe to fix; refuse (before any change) what is not."""
    existing = get_existing(client, params, ssh_public_key=ssh_public_key)
    plan = plan_provision(params, existing, ssh_public_key=ssh_public_key)
    raise_refusals(plan)
    # dry run: the API has no dry-run mode (see the module docstring); the plan is what would be done
    if dry_run:
        return _outcomes(params, plan, dry_run=True), _records(params, existing)

    h, n = params.hetzner, params.network
    by = {(a.kind, a.name): a for a in plan}
    interval = client_interval(client)

    def wait(actions: Sequence[Any], what: str) -> None:
        wait_for_actions(actions, what=what, timeout=wait_timeout, interval=interval)

    def planned(kind: str, name: str) -> str:
        a = by.get((kind, name))
        return a.action if a else "none"

    # SSH key
    if planned("ssh_key", h.ssh_key_name) == "create":
        with map_cloud_errors(f"creating SSH key {h.ssh_key_name}"):
            created = client.ssh_keys.create(name=h.ssh_key_name, public_key=ssh_public_key, labels=dict(h.labels))
        key_id = created.id
    else:
        key_id = (existing.ssh_key or existing.ssh_key_same_fingerprint).id  # type: ignore[union-attr]

    # network
    if planned("network", n.name) == "create":
        with map_cloud_errors(f"creating network {n.name}"):
            network = client.networks.create(
                name=n.name, ip_range=n.ip_range, labels=dict(h.labels),
                subnets=[NetworkSubnet(ip_range=n.subnet, network_zone=h.network_zone, type=SUBNET_TYPE)])
        net_id = cast(int, network.id)
    else:
        net_id = existing.network.id  # type: ignore[union-attr]
    if planned("subnet", n.subnet) == "add":
        with map_cloud_errors(f"adding subnet {n.subnet} to network {n.name}"):
            action = client.networks.add_subnet(
                Network(id=net_id), NetworkSubnet(ip_range=n.subnet, network_zone=h.network_zone, type=SUBNET_TYPE))
        wait([action], f"adding subnet {n.subnet}")

    # firewalls: the jumpbox's, then the database servers' (SSH from the admin ranges until SSH through the
    # jumpbox is proven: ensure_public_ssh_closed)
    fw_ids: dict[str, int] = {}
    wanted = [(h.firewall, existing.firewall, rules_before_proof(params, existing.firewall))]
    if params.jumpbox is not None:
        wanted.insert(0, (params.jumpbox.firewall, existing.jumpbox_firewall, render_firewall_rules(params, "jumpbox")))
    for fw_name, seen_fw, fw_rules in wanted:
        rules = [_hcloud_rule(r) for r in fw_rules]
        if planned("firewall", fw_name) == "create":
            with map_cloud_errors(f"creating firewall {fw_name}"):
                resp = client.firewalls.create(name=fw_name, rules=rules, labels=dict(h.labels))
            wait(cast(list[Any], resp.actions), f"creating firewall {fw_name}")
            fw_ids[fw_name] = cast(int, resp.firewall.id)
        else:
            fw_ids[fw_name] = seen_fw.id  # type: ignore[union-attr]
            if planned("firewall", fw_name) == "update":
                with map_cloud_errors(f"setting the rules of firewall {fw_name}"):
                    actions = client.firewalls.set_rules(Firewall(id=fw_ids[fw_name]), rules)
                wait(actions, f"setting the rules of firewall {fw_name}")

    # placement group
    if planned("placement_group", h.placement_group) == "create":
        with map_cloud_errors(f"creating placement group {h.placement_group}"):
            pg_resp = client.placement_groups.create(name=h.placement_group, type=PLACEMENT_TYPE,
                                                     labels=dict(h.labels))
        if pg_resp.action is not None:
            wait([pg_resp.action], f"creating placement group {h.placement_group}")
        pg_id = pg_resp.placement_group.id
    else:
        pg_id = existing.placement_group.id  # type: ignore[union-attr]

    # servers, the jumpbox first
    known_hosts = hostkeys.known_hosts_path(params)
    for s in provisioned_machines(params):
        fw_id = fw_ids[s.firewall]
        if planned("server", s.name) == "create":
            # the server's host key is made here and pinned before the server exists, so the very
            # first SSH connection to it is verified; the private half lives only in user_data
            host_key = hostkeys.generate_host_key(f"root@{s.name}")
            hostkeys.pin(known_hosts, params.environment, s.name, [host_key.public_line])
            print(f"[{s.name}] new SSH host key {host_key.fingerprint}, pinned in {known_hosts}")
            with map_cloud_errors(f"creating server {s.name}"):
                srv_resp = client.servers.create(
                    name=s.name, server_type=ServerType(name=s.server_type),
                    image=Image(id=existing.catalog.image_id), location=Location(name=h.location),
                    ssh_keys=[SSHKey(id=key_id)], firewalls=[Firewall(id=fw_id)],
                    placement_group=PlacementGroup(id=pg_id), labels=dict(h.labels), start_after_create=True,
                    user_data=render_cloud_init(host_key.keytype, host_key.private_openssh,
                                                        host_key.public_line))
            del host_key
            wait([srv_resp.action, *srv_resp.next_actions], f"creating server {s.name}")
            server_id = cast(int, srv_resp.server.id)
            attach = True
        else:
            server_id = existing.servers[s.name].id
            attach = planned("server_network", s.name) == "attach"
            if planned("server_firewall", s.name) == "apply":
                with map_cloud_errors(f"applying firewall {s.firewall} to {s.name}"):
                    actions = client.firewalls.apply_to_resources(
                        Firewall(id=fw_id), [FirewallResource(type="server", server=Server(id=server_id))])
                wait(actions, f"applying firewall {s.firewall} to {s.name}")
            if planned("server_labels", s.name) == "update":
                labels = {**existing.servers[s.name].labels, **h.labels}
                with map_cloud_errors(f"setting labels on {s.name}"):
                    client.servers.update(Server(id=server_id), labels=labels)
        if planned("server_power", s.name) == "start":
            with map_cloud_errors(f"powering on {s.name}"):
                action = client.servers.power_on(Server(id=server_id))
            wait([action], f"powering on {s.name}")
        if attach:
            # a fixed private IP needs attach_to_network: create(networks=...) assigns one itself
            with map_cloud_errors(f"attaching {s.name} to {n.name} as {s.private_ip}"):
                action = client.servers.attach_to_network(Server(id=server_id), Network(id=net_id), ip=s.private_ip)
            wait([action], f"attaching {s.name} to {n.name}")

    after = get_existing(client, params, ssh_public_key=ssh_public_key)
    records = _records(params, after)
    for r in records:
        # the address later steps reach the machine at, beside its pinned key (from the API, not outputs/); with a
        # jumpbox a database server is reached at its private IP through it
        address = r.private_ip if params.jumpbox is not None and r.role != "jumpbox" else r.public_ip
        keys = [f"{p.keytype} {p.key}" for p in hostkeys.pins_for(known_hosts, r.name)]
        if keys and address:
            hostkeys.pin(known_hosts, params.environment, r.name, keys, address=address)
    return _outcomes(params, plan, dry_run=False), records


def _outcomes(params: "Params", plan: Sequence[PlannedAction], *, dry_run: bool) -> list[Outcome]:
    """One Outcome per resource, its planned changes as actions."""
    groups: dict[str, list[PlannedAction]] = {}
    titles = {"ssh_key": "SSH key", "network": "network", "subnet": "network", "firewall": "firewall",
              "placement_group": "placement group"}
    for a in plan:
        if a.kind in ("server_type", "location", "image", "firewall_ssh", "server_protection"):
            continue  # the catalog refuses only; public SSH and protection have their own ensure_*
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


def _records(params: "Params", existing: Existing) -> list[ServerRecord]:
    out = []
    for s in provisioned_machines(params):
        seen = existing.servers.get(s.name)
        if seen is None:
            out.append(ServerRecord(s.name, s.role, s.private_ip))
        else:
            out.append(ServerRecord(s.name, s.role, s.private_ip, seen.id, seen.public_ip, seen.status))
    return out


# verify (read-only) --------------------------------------------------------------------------

def get_provision_checks(client: "CloudLike", params: "Params", *, dry_run: bool = False,
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
    jb = params.jumpbox
    if jb is None:
        name = "firewall allows only SSH inbound"
        # step 01 sets the rules params say (ensure_provisioned: 'update'): a plan shows that, it does not fail
        planned = f"its rules would be set to {describe_rules(want)}"
    else:
        name = f"firewall allows no public inbound (SSH through {jb.name})"
        planned = f"public SSH is closed once SSH through {jb.name} works on every server"
    if fw is not None and dry_run and not same_rules(fw.rules, want):
        checks.append(Check(name, "warn", f"{describe_rules(fw.rules)} (dry run: {planned})", h.firewall))
    else:
        check(name, bool(fw) and same_rules(fw.rules, want),  # type: ignore[union-attr]
              describe_rules(fw.rules) if fw else "missing", h.firewall, missing=fw is None)
    if jb is not None:
        jfw = ex.jumpbox_firewall
        check("jumpbox firewall allows only SSH inbound",
              bool(jfw) and same_rules(jfw.rules, render_firewall_rules(params, "jumpbox")),  # type: ignore[union-attr]
              describe_rules(jfw.rules) if jfw else "missing", jb.firewall, missing=jfw is None)
    pg = ex.placement_group
    check("placement group", bool(pg) and pg.type == PLACEMENT_TYPE,  # type: ignore[union-attr]
          f"{pg.type}, servers {list(pg.server_ids)}" if pg else "missing", h.placement_group, missing=pg is None)
    for s in provisioned_machines(params):
        seen = ex.servers.get(s.name)
        if h.protection:
            checks.append(protection_row(s.name, seen.protection if seen else None, dry_run=dry_run))
        if seen is None:
            check("server exists", False, "missing", s.name, missing=True)
            continue
        m_fw = ex.jumpbox_firewall if s.role == "jumpbox" else fw
        check("server running", seen.status == "running", seen.status, s.name)
        check("server type and location", (seen.server_type, seen.location) == (s.server_type, h.location),
              f"{seen.server_type} in {seen.location}", s.name)
        check("image", seen.image in (None, h.image), str(seen.image), s.name)
        missing_labels = {k: v for k, v in h.labels.items() if seen.labels.get(k) != v}
        check("labels", not missing_labels, format_labels(seen.labels), s.name)
        ip = seen.private_ips.get(net.id) if net else None
        check("private IP", ip == s.private_ip, f"{ip or 'not attached'} in {n.name} (params: {s.private_ip})",
              s.name, missing=ip is None)
        check("firewall applied", bool(m_fw) and m_fw.id in seen.firewall_ids,  # type: ignore[union-attr]
              s.firewall if m_fw and m_fw.id in seen.firewall_ids else "not applied", s.name, missing=m_fw is None)
        check("in placement group", bool(pg) and seen.placement_group_id == pg.id,  # type: ignore[union-attr]
              h.placement_group if pg and seen.placement_group_id == pg.id else "not in it", s.name,
              missing=pg is None)
        check("public IPv4", bool(seen.public_ip), str(seen.public_ip), s.name)
    return checks


# the jumpbox path and protection (issue 28) ------------------------------------------------------

def ensure_public_ssh_closed(client: "CloudLike", params: "Params", hosts: Mapping[str, "HostLike"], *,
                             dry_run: bool, timeout: float = DEFAULT_WAIT_TIMEOUT) -> list[Outcome]:
    """With a jumpbox in params: the database servers' firewall (``hetzner.firewall``) loses its public SSH rule
    (no rule left: Hetzner drops all public inbound), only once ``true`` ran on every server through *hosts*
    (each server's Host through the jumpbox, made by the caller) in this run: the operator is never locked out.

    Refused (SafetyCheckFailed, the firewall unchanged) when a server did not answer; a dry run says what it would
    do (its hosts' probes are real: a server not there yet is an AbsentHost and answers nothing).  Without a
    jumpbox: nothing to do (no Outcome)."""
    jb, h = params.jumpbox, params.hetzner
    if jb is None:
        return []
    what = f"public SSH closed on firewall {h.firewall}"
    with map_cloud_errors(f"reading firewall {h.firewall}"):
        fw: Any = client.firewalls.get_by_name(h.firewall)
    current = tuple(_rule_of(r) for r in fw.rules or []) if fw is not None else None
    final = render_firewall_rules(params, "db")
    answers: dict[str, str | None] = {}
    reached: list[str] = []
    if current is None or not same_rules(current, final):
        for s in params.servers:
            host = hosts.get(s.name)
            if host is None:
                answers[s.name] = "no SSH connection to it"
                continue
            try:
                res = host.probe("true", timeout=max(10.0, params.ssh.connect_timeout))
            except HcbpgError as exc:
                answers[s.name] = exc.message.splitlines()[0][:200]
                continue
            said = (res.stderr or res.stdout).strip()
            answers[s.name] = None if res.ok else (said.splitlines()[-1][:200] if said else f"exit {res.exit_code}")
            if res.ok:
                where = getattr(host, "where", None)  # a Host says "10.0.1.5 via hcb-jumpbox"
                reached.append(f"`true` ran on {s.name} at {where}" if where else
                               f"`true` ran on {s.name} through {jb.name}")
    plan = plan_public_ssh(params, current, answers)
    if plan.action == "none":
        return [Outcome(what, False, dry_run, actions=[plan.detail])]
    if dry_run:
        return [Outcome(what, True, True, actions=[f"would set the rules of {h.firewall} to "
                                                   f"[{describe_rules(final)}] once SSH through {jb.name} works on "
                                                   f"every server: {plan.detail}"])]
    if plan.action == "refuse":
        raise SafetyCheckFailed(f"public SSH to the database servers not closed: {plan.detail}", target=h.firewall,
                                reasons=[f"{k}: {v}" for k, v in answers.items() if v is not None],
                                hint=f"Fix SSH through {jb.name} to each server (its firewall, its key, the "
                                     "jumpbox), then run step 01 again; the firewall keeps SSH from the admin ranges.")
    with map_cloud_errors(f"setting the rules of firewall {h.firewall}"):
        actions = client.firewalls.set_rules(fw, [_hcloud_rule(r) for r in final])
    wait_for_actions(actions, what=f"setting the rules of firewall {h.firewall}", timeout=timeout,
                     interval=client_interval(client))
    return [Outcome(what, True, False, actions=[*reached, plan.detail])]


def ensure_protection(client: "CloudLike", params: "Params", *, dry_run: bool,
                      timeout: float = DEFAULT_WAIT_TIMEOUT) -> list[Outcome]:
    """Delete and rebuild protection (``hetzner.protection``) on every provisioned machine, the jumpbox too: the
    API then refuses to delete or rebuild them until it is lifted.  Never lifted here.  A machine missing is a
    CloudError (a dry run: enabled once created).  ``hetzner.protection`` off: nothing (no Outcome)."""
    if not params.hetzner.protection:
        return []
    out = []
    for m in provisioned_machines(params):
        what = f"delete and rebuild protection on {m.name}"
        with map_cloud_errors(f"reading server {m.name}"):
            server: Any = client.servers.get_by_name(m.name)
        if server is None:
            if dry_run:
                out.append(Outcome(what, True, True, actions=["enable once the server is created"]))
                continue
            raise CloudError(f"Hetzner Cloud API: there is no server {m.name} to protect",
                             hint="Run step 01 again: it creates the server first.")
        prot = server.protection or {}
        now = f"delete {'on' if prot.get('delete') else 'off'}, rebuild {'on' if prot.get('rebuild') else 'off'}"
        if prot.get("delete") and prot.get("rebuild"):
            out.append(Outcome(what, False, dry_run, actions=["already on (delete and rebuild)"]))
            continue
        if dry_run:
            out.append(Outcome(what, True, True, actions=[f"enable delete and rebuild protection (now {now})"]))
            continue
        with map_cloud_errors(f"enabling delete and rebuild protection on {m.name}"):
            action = client.servers.change_protection(server, delete=True, rebuild=True)
        wait_for_actions([action], what=f"protecting {m.name}", timeout=timeout, interval=client_interval(client))
        out.append(Outcome(what, True, False, actions=[f"enabled delete and rebuild protection (was {now})"]))
    return out
