"""Step 14 (notebook ``14_password_rotation``, on demand): new passwords for login roles hcbpg manages,
what hcbpg keeps with them updated, old refused and new accepted over the network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from hcbpg.desired.roles import RolesConfig, roles_config  # noqa: F401 - the notebook's call
from hcbpg.ops import rotation
from hcbpg.ops.privileges import jumpbox_host
from hcbpg.ops.rotation import Rotatable, dependents_table, roles_to_rotate  # noqa: F401 - the notebook's calls
from hcbpg.outcome import Check
from hcbpg.steps.targets import app_host, primary_psql, server_hosts

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.adapters.psql import Psql
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple[dict[str, "Host | None"], "Psql | None"]:
    """An open Host per server, and psql on the primary (None when it is not there yet)."""
    hosts = server_hosts(rb)
    return hosts, primary_psql(rb, hosts)


def show_plan(rots: Sequence[Rotatable]) -> None:
    """Refuse a role whose secret cannot be written, else print what rotating it does; role by role."""
    for rot in rots:
        rotation.check_storable(rot)
        print(rotation.plan_rotation(rot))


def run_rotations(rb: "Run", rots: Sequence[Rotatable], psql: "Psql | None", cfg: RolesConfig,
                  hosts: Mapping[str, "Host | None"]) -> dict[str, tuple[str, str]]:
    """Rotate each role and update what hcbpg keeps with it (nothing in a dry run); role -> (old, new)."""
    rotated: dict[str, tuple[str, str]] = {}
    if rb.dry_run:
        return rotated
    for rot in rots:
        outcome, old, new = rotation.run_rotation(psql, rb.params, rot)  # type: ignore[arg-type]
        rb.track(outcome)
        rotated[rot.role] = (old, new)
        rb.track(rotation.update_hcbpg_dependents(rot, new, rb.params, cfg, hosts, dry_run=False))
    return rotated


def verify_host(rb: "Run", rot: Rotatable, cfg: RolesConfig, hosts: Mapping[str, "Host | None"]) -> "Host | None":
    """The host "old refused / new works" is tried from (None: not reachable, the check is a warning)."""
    params = rb.params
    if rot.verify_from == "app":
        return app_host(rb)
    if rot.verify_from == "jumpbox":
        return jumpbox_host(params, cfg)
    if rot.verify_from == "replica":
        return next((hosts.get(s.name) for s in params.replicas if hosts.get(s.name) is not None), None)
    return hosts.get(params.primary.name)


def verify_all(rb: "Run", rots: Sequence[Rotatable], rotated: Mapping[str, tuple[str, str]], cfg: RolesConfig,
               hosts: Mapping[str, "Host | None"], psql: "Psql") -> list[Check]:
    """For every rotated role: new works, old refused (from its host), and the secret matches the server."""
    out: list[Check] = []
    for rot in rots:
        old, new = rotated[rot.role]
        host = verify_host(rb, rot, cfg, hosts)
        if host is None:
            out.append(Check(f"{rot.role}: login checks", "warn", f"no SSH to the {rot.verify_from} host: not checked"))
        else:
            out += rotation.verify_rotation(host, rb.params, rot, old, new, server_ip=rb.params.primary.private_ip)
        out.append(rotation.check_secret_matches(psql, rot))
    return out
