"""The operator's machine as a prerequisite of a run: what the Hetzner Cloud API token may do, and the public
address the servers will see SSH come from (against ``hetzner.admin_source_ranges``).  Read-only: nothing
here creates or changes anything, and nothing sends traffic anywhere but to the API the params name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.adapters.cloud import map_cloud_errors
from hcbpg.errors import CloudError
from hcbpg.outcome import Check

if TYPE_CHECKING:  # pragma: no cover
    import hcloud

    from hcbpg.params import Params

#: the operator's public address when this machine cannot tell it (behind NAT): ``hcbpg doctor --from`` sets it
OPERATOR_ADDRESS_ENV = "HCBPG_OPERATOR_ADDRESS"
#: the API's error codes for a token that may only read (``token_readonly``; older answers ``forbidden``)
READ_ONLY_CODES = ("token_readonly", "forbidden")


def get_token_rights(client: "hcloud.Client") -> str:
    """``read-write`` or ``read-only``: what the client's API token may do, asked with a write that cannot
    succeed (``POST /ssh_keys`` with no name and no key).  A read-write token gets ``invalid_input`` (nothing
    is created); a read-only one gets ``token_readonly`` before the input is looked at.  CloudError otherwise
    (a refused token, an unreachable API)."""
    try:
        with map_cloud_errors("the token's rights (an empty SSH key, refused by design)"):
            client.request("POST", "/ssh_keys", json={})
    except CloudError as exc:
        if exc.code in READ_ONLY_CODES:
            return "read-only"
        if exc.code == "invalid_input":
            return "read-write"
        raise
    raise CloudError("Hetzner Cloud API: an SSH key without a name or a key was accepted: this is not the API "
                     "hcbpg knows", hint="Check params hetzner.api_endpoint.")


def check_token_rights(client: "hcloud.Client", params: "Params") -> Check:
    """A check row: the token may write (step 01 creates servers, the network, the firewall)."""
    where = params.hetzner.api_endpoint
    try:
        rights = get_token_rights(client)
    except CloudError as exc:
        return Check("Hetzner Cloud API token read-write", "fail", exc.message[:300], where)
    if rights == "read-write":
        return Check("Hetzner Cloud API token read-write", "pass", "the token may write (asked with an empty SSH "
                     "key, which the API refused as invalid input: nothing was created)", where)
    return Check("Hetzner Cloud API token read-write", "fail",
                 f"the token of {params.hetzner.token} is read-only: step 01 creates servers with it. Create a "
                 "token with Read & Write in the Hetzner Console (the project's Security > API tokens) and store "
                 "it there", where)


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


def _route_source(destination: str) -> tuple[str | None, bool]:
    try:
        proc = subprocess.run(["ip", "-j", "route", "get", destination], capture_output=True, text=True, timeout=10,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return parse_route_source(proc.stdout) if proc.returncode == 0 else (None, False)


def get_operator_address(given: str | None = None, towards: Sequence[str] = ()) -> tuple[str | None, str]:
    """The address the servers see SSH from this machine come from, and how it was found: *given* (``--from``),
    else ``HCBPG_OPERATOR_ADDRESS``, else this machine's own source address towards a host it reaches on the
    link (*towards*: the servers' and app host's SSH addresses, as in the lab) or towards the internet when
    that address is public (``ip route get``: the kernel's routing table is read, no packet is sent).
    (None, why) when it cannot be told from here (behind NAT the public address is the router's: no "what is
    my IP" service is asked)."""
    for value, how in ((given, "given with --from"), (os.environ.get(OPERATOR_ADDRESS_ENV), OPERATOR_ADDRESS_ENV)):
        if value:
            return value.strip(), how
    for destination in towards:
        src, on_link = _route_source(destination)
        if src and on_link:
            return src, f"this machine's address on the link to {destination}"
    for probe in ("1.1.1.1", "2606:4700:4700::1111"):
        src, _ = _route_source(probe)
        if src and ipaddress.ip_address(src).is_global:
            return src, "this machine's route to the internet"
    return None, "this machine has no public address of its own (behind NAT, or no route out)"


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
