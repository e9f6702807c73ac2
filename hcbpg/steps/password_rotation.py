"""Step 14 (notebook ``14_password_rotation``, on demand): new passwords for login roles hcbpg manages,
what hcbpg keeps with them updated, old refused and new accepted over the network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import rotation as desired_rotation
from hcbpg.desired.roles import RolesConfig, roles_config  # noqa: F401 - the notebook's call
from hcbpg.desired.rotation import AppSwitch, Rotatable, dependents_table  # noqa: F401 - the notebook's calls
from hcbpg.ops import handout, monitoring, privileges, replication, rotation
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import app_host, jumpbox_host, primary_psql, server_hosts

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.adapters.psql import Psql
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def connect(rb: "Run") -> tuple[dict[str, "Host | None"], "Psql | None"]:
    """An open Host per server, and psql on the primary (None when it is not there yet)."""
    hosts = server_hosts(rb)
    return hosts, primary_psql(rb, hosts)


def roles_to_rotate(params: "Params", cfg: RolesConfig, names: str = "") -> list[Rotatable]:
    """The roles this run rotates: *names* (the step's input ``rotate_roles``, ``-p rotate_roles=...``) or the
    app role."""
    return desired_rotation.roles_to_rotate(params, cfg, names)


def show_plan(rots: Sequence[Rotatable], cfg: RolesConfig | None = None) -> None:
    """Refuse a role whose secret cannot be written, else print what rotating it does; role by role."""
    for rot in rots:
        desired_rotation.check_storable(rot)
        print(desired_rotation.plan_rotation(rot, cfg))


@dataclass(frozen=True)
class Rotated:
    """What one rotation did: the old and new password, and for the app the login it moved to."""

    old: str
    new: str
    switch: AppSwitch | None = None


def run_rotations(rb: "Run", rots: Sequence[Rotatable], psql: "Psql | None", cfg: RolesConfig,
                  hosts: Mapping[str, "Host | None"]) -> dict[str, Rotated]:
    """Rotate each role and update what hcbpg keeps with it (nothing in a dry run).

    The app moves to its other login (no new connection is refused); every other role gets a new password.
    """
    rotated: dict[str, Rotated] = {}
    if rb.dry_run:
        return rotated
    for rot in rots:
        if rot.role == rb.params.postgres.app_role:
            outcome, switch, new = rotation.run_app_rotation(psql, rb.params, cfg)  # type: ignore[arg-type]
            rb.track(outcome)
            rotated[rot.role] = Rotated("", new, switch)
            continue
        outcome, old, new = rotation.run_rotation(psql, rb.params, rot)  # type: ignore[arg-type]
        rb.track(outcome)
        rotated[rot.role] = Rotated(old, new)
        rb.track(update_hcbpg_dependents(rot, new, rb.params, cfg, hosts))
        rb.track(hand_out_again(rot, rb.params, cfg, psql))  # type: ignore[arg-type]
    return rotated


def hand_out_again(rot: Rotatable, params: "Params", cfg: RolesConfig, psql: "Psql") -> list[Outcome]:
    """The handed-out file holding *rot*'s URL, rewritten whole with its new password: the app's
    (BLAZER_DATABASE_URL, beside the app's DATABASE_URL as it is now) or the release command's."""
    store = SecretStore()
    if cfg.blazer is not None and rot.role == cfg.blazer.name:
        login, password = privileges.get_app_login(psql, cfg)
        return [handout.ensure_urls_file(store, handout.get_app_urls(store, params, cfg, login=login, password=password))]
    if cfg.migrations is not None and rot.role == cfg.migrations.name:
        urls = handout.get_release_urls(store, params, cfg)
        return [handout.ensure_urls_file(store, urls)] if urls is not None else []
    return []


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


def verify_all(rb: "Run", rots: Sequence[Rotatable], rotated: Mapping[str, Rotated], cfg: RolesConfig,
               hosts: Mapping[str, "Host | None"], psql: "Psql") -> list[Check]:
    """For every rotated role: new works, old refused or locked (from its host), the secret matches the server."""
    out: list[Check] = []
    ip = rb.params.primary.private_ip
    for rot in rots:
        done = rotated[rot.role]
        host = verify_host(rb, rot, cfg, hosts)
        if host is None:
            out.append(Check(f"{rot.role}: login checks", "warn", f"no SSH to the {rot.verify_from} host: not checked"))
        elif done.switch is not None:
            out += rotation.check_app_switch(host, rb.params, cfg, done.switch, done.new, server_ip=ip)
        else:
            out += rotation.check_rotation(host, rb.params, rot, done.old, done.new, server_ip=ip)
        if done.switch is not None:
            s = done.switch
            out.append(rotation.check_secret_matches(psql, Rotatable(s.new, s.new_key, s.new_ref, "app", rot.dbname)))
        else:
            out.append(rotation.check_secret_matches(psql, rot))
    return out


def update_hcbpg_dependents(rot: Rotatable, new: str, params: "Params", cfg: RolesConfig,
                            hosts: Mapping[str, "Host | None"]) -> list[Outcome]:
    """What hcbpg itself keeps with the password, on every server it reaches: exporter / Vector env files,
    replication passfiles (the app's new DATABASE_URL is written by :func:`~hcbpg.ops.rotation.run_app_rotation`)."""
    out: list[Outcome] = []
    reached = [(s, h) for s in params.servers if (h := hosts.get(s.name)) is not None]
    if cfg.exporter and rot.role == cfg.exporter.name:
        out += [monitoring.ensure_exporter(h, params, s, cfg, new) for s, h in reached]
    if cfg.monitoring and rot.role == cfg.monitoring.name:
        out += [monitoring.ensure_vector_config(h, params, s, cfg, new) for s, h in reached]
    if params.replication is not None and rot.role == params.replication.role:
        out += [replication.ensure_passfile(h, params, s, new) for s, h in reached]
    return out
