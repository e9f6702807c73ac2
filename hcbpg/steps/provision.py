"""Step 01 (notebook ``01_provision``): the servers, network, firewall and placement group on Hetzner Cloud."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hcbpg.ops import provisioning as cloud
from hcbpg.outcome import Check, Outcome

if TYPE_CHECKING:  # pragma: no cover
    import hcloud

    from hcbpg.params import Params
    from hcbpg.steps.context import Run


@dataclass(frozen=True)
class Api:
    """The Hetzner Cloud API client for this run, and the operator's SSH public key the servers get."""

    client: "hcloud.Client"
    ssh_public_key: str


def connect(rb: "Run") -> Api:
    """A client for the params' API endpoint with the token from ``hetzner.token``."""
    return Api(cloud.make_client(rb.params, rb.secret("hetzner.token")), cloud.read_ssh_public_key(rb.params))


def get_plan(api: Api, params: "Params") -> list[cloud.PlannedAction]:
    """What exists now and what provisioning would do to each resource (reads the API only)."""
    existing = cloud.get_existing(api.client, params, ssh_public_key=api.ssh_public_key)
    return cloud.plan_provision(params, existing, ssh_public_key=api.ssh_public_key)


def ensure_provisioned(api: Api, params: "Params", *, dry_run: bool
                       ) -> tuple[list[Outcome], list[cloud.ServerRecord]]:
    """Create what is missing and wait for it; the servers as they are (or would be)."""
    return cloud.ensure_provisioned(api.client, params, dry_run=dry_run, ssh_public_key=api.ssh_public_key)


def check_provisioned(api: Api, params: "Params", *, dry_run: bool) -> list[Check]:
    """Everything read back from the API and checked against params (dry run: missing is a warning)."""
    return cloud.get_provision_checks(api.client, params, dry_run=dry_run, ssh_public_key=api.ssh_public_key)
