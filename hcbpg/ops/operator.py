"""The operator's machine as a prerequisite of a run: what the Hetzner Cloud API token may do, and the public
address the servers will see SSH come from (against ``hetzner.admin_source_ranges``).  Read-only: nothing
here creates or changes anything, and nothing sends traffic anywhere but to the API the params name.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.adapters.cloud import map_cloud_errors
from hcbpg.adapters.local import LocalRunner
from hcbpg.desired.cloud import OPERATOR_ADDRESS_ENV, parse_route_source
from hcbpg.errors import CloudError
from hcbpg.outcome import Check

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.cloud import CloudLike
    from hcbpg.params import Params

#: the API's error codes for a token that may only read (``token_readonly``; older answers ``forbidden``)
READ_ONLY_CODES = ("token_readonly", "forbidden")


def get_token_rights(client: "CloudLike") -> str:
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


def check_token_rights(client: "CloudLike", params: "Params") -> Check:
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


def _route_source(local: LocalRunner, destination: str) -> tuple[str | None, bool]:
    try:
        proc = local(["ip", "-j", "route", "get", destination])
    except (OSError, subprocess.TimeoutExpired):
        return None, False
    return parse_route_source(proc.stdout) if proc.returncode == 0 else (None, False)


def get_operator_address(local: LocalRunner, given: str | None = None,
                         towards: Sequence[str] = ()) -> tuple[str | None, str]:
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
        src, on_link = _route_source(local, destination)
        if src and on_link:
            return src, f"this machine's address on the link to {destination}"
    for probe in ("1.1.1.1", "2606:4700:4700::1111"):
        src, _ = _route_source(local, probe)
        if src and ipaddress.ip_address(src).is_global:
            return src, "this machine's route to the internet"
    return None, "this machine has no public address of its own (behind NAT, or no route out)"
