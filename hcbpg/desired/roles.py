"""The roles model (params ``roles:``): which login roles exist, who owns the database, and
the pg_hba lines those roles need.  Pure: secrets stay references here."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hcbpg.pg.hba import HbaRule, hba_name

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server


@dataclass(frozen=True)
class LoginRole:
    """A login role hcbpg creates, with the params key of its password's secret reference."""

    name: str
    password_key: str
    password_ref: str
    connection_limit: int


@dataclass(frozen=True)
class RolesConfig:
    """Params ``roles:`` as this module uses it (see the report for the pydantic model)."""

    database: str
    app_role: str
    group_role: str = "hcb_app"
    schemas: tuple[str, ...] = ("public",)
    migrations: LoginRole | None = None
    metabase: LoginRole | None = None
    metabase_tables: tuple[str, ...] = ()
    jumpbox_ip: str | None = None
    jumpbox_ssh_host: str | None = None
    monitoring: LoginRole | None = None
    exporter: LoginRole | None = None
    extensions: tuple[str, ...] = ()
    #: Blazer's read-only login (not in login_roles(): it is read-only through pg_read_all_data)
    blazer: LoginRole | None = None
    blazer_statement_timeout: str = "30s"
    #: the app's second login in the group role, which rotation alternates with app_role
    rotation_login: LoginRole | None = None
    #: postgres.app_role_password (the app role's secret reference)
    app_password_ref: str = ""
    #: roles and schemas the model does not know whose grants step 13 revokes (else reported, left alone)
    revoke_roles: tuple[str, ...] = ()
    revoke_schemas: tuple[str, ...] = ()

    @property
    def app_logins(self) -> tuple[str, str]:
        """The app's two logins in the group role: rotation moves the app from one to the other."""
        return (self.app_role, self.rotation_login.name if self.rotation_login else f"{self.app_role}_alt")

    def secret_roles(self) -> list[LoginRole]:
        """Every login whose password hcbpg keeps: the login roles, Blazer's and the app's rotation login."""
        return [*self.login_roles(), *(r for r in (self.blazer, self.rotation_login) if r is not None)]

    def login_roles(self) -> list[LoginRole]:
        return [r for r in (self.migrations, self.metabase, self.monitoring, self.exporter) if r is not None]

    @property
    def owner(self) -> str:
        """Who owns the database and its objects: the migrations role (else the app role, as before)."""
        return self.migrations.name if self.migrations else self.app_role


#: Until params.py has a ``roles:`` section, the lab's values (jumpbox and listed tables) live
#: here; every other environment must set ``roles:`` in params to get a metabase role.
_INTERIM_ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "lab": {"metabase_tables": ("events", "transactions"), "jumpbox_ip_offset": 40,
            "extensions": ("citext", "pg_stat_statements"), "blazer": True},
}


def _default_ref(params: "Params", name: str) -> str | None:
    """A secret file beside the app role's (``file:`` refs only): ``<dir>/<role>-password``."""
    ref = params.postgres.app_role_password
    if ref.startswith("file:"):
        directory = ref[5:].rsplit("/", 1)[0]
        return f"file:{directory}/{name}-password"
    return None


def roles_config(params: "Params") -> RolesConfig:
    """The roles model for *params*: params ``roles:`` when present, else the defaults (see module doc)."""
    pg = params.postgres
    section = params.roles
    if section is not None:
        def login(sub: Any, key: str) -> LoginRole | None:
            if sub is None:
                return None
            return LoginRole(sub.name, f"roles.{key}.password", sub.password, sub.connection_limit)
        mb = section.metabase
        return RolesConfig(
            database=pg.database, app_role=pg.app_role, group_role=section.group_role,
            schemas=tuple(section.schemas),
            migrations=login(section.migrations, "migrations"),
            metabase=login(mb, "metabase"),
            metabase_tables=tuple(mb.tables) if mb else (),
            jumpbox_ip=mb.jumpbox_ip if mb else None,
            jumpbox_ssh_host=mb.jumpbox_ssh_host if mb else None,
            monitoring=login(section.monitoring, "monitoring"),
            exporter=login(section.exporter, "exporter"),
            extensions=tuple(section.extensions),
            blazer=login(section.blazer, "blazer"),
            blazer_statement_timeout=section.blazer.statement_timeout if section.blazer else "30s",
            rotation_login=_rotation_login(params, section.app_rotation_role, section.app_rotation_password),
            app_password_ref=pg.app_role_password,
            revoke_roles=tuple(section.revoke_unknown_roles), revoke_schemas=tuple(section.revoke_unknown_schemas))
    interim = _INTERIM_ENV_DEFAULTS.get(params.environment, {})

    def default_login(name: str, key: str, limit: int) -> LoginRole | None:
        ref = _default_ref(params, name)
        return LoginRole(name, f"roles.{key}.password", ref, limit) if ref else None

    jumpbox_ip = None
    if "jumpbox_ip_offset" in interim:
        net = ipaddress.ip_network(params.network.subnet)
        jumpbox_ip = str(net.network_address + int(interim["jumpbox_ip_offset"]))
    metabase = default_login("metabase", "metabase", 10) if jumpbox_ip else None
    return RolesConfig(
        database=pg.database, app_role=pg.app_role,
        migrations=default_login("hcb_migrations", "migrations", 10),
        metabase=metabase, metabase_tables=tuple(interim.get("metabase_tables", ())) if metabase else (),
        jumpbox_ip=jumpbox_ip if metabase else None,
        monitoring=default_login("vector", "monitoring", 5),
        exporter=default_login("postgres_exporter", "exporter", 5),
        extensions=tuple(interim.get("extensions", ())),
        blazer=default_login("blazer", "blazer", 10) if interim.get("blazer") else None,
        rotation_login=_rotation_login(params, None, None) if interim else None,
        app_password_ref=pg.app_role_password)


def _rotation_login(params: "Params", name: str | None, ref: str | None) -> LoginRole | None:
    """The app's second login (same connection limit as the app's): its name and password reference."""
    name = name or f"{params.postgres.app_role}_alt"
    ref = ref or _default_ref(params, name)
    if ref is None:
        return None
    return LoginRole(name, "roles.app_rotation_password", ref, params.postgres.app_role_connection_limit)


def with_jumpbox(cfg: RolesConfig, jumpbox_ip: str, ssh_host: str | None = None) -> RolesConfig:
    """*cfg* with another jumpbox address (tests and labs with their own subnet)."""
    return replace(cfg, jumpbox_ip=jumpbox_ip, jumpbox_ssh_host=ssh_host)


def app_networks(params: "Params") -> list[str]:
    """Where the app servers are: params ``app_servers``, else the servers' subnet."""
    return list(params.app_servers) or [params.network.subnet]


def roles_hba_rules(cfg: RolesConfig, params: "Params", server: "Server") -> list[HbaRule]:
    """The pg_hba lines step 13 adds (``extra`` for :func:`hcbpg.postgres.ensure_pg_hba`)."""
    db = hba_name(cfg.database)
    out = []
    app_nets = [n for n in app_networks(params) if n != params.network.subnet]
    for net in app_nets:
        for login in cfg.app_logins if cfg.rotation_login is not None else cfg.app_logins[:1]:
            out.append(HbaRule("hostssl", db, hba_name(login), "scram-sha-256", net,
                               comment=f"the app ({login}) from the app servers' network {net}"))
    rot = cfg.app_logins[1]
    if cfg.rotation_login is not None:  # the rotation login exists only in step 13's model
        out.append(HbaRule("hostssl", db, hba_name(rot), "scram-sha-256", params.network.subnet,
                           comment=f"the app's rotation login ({rot}) from the private subnet"))
    if cfg.blazer:
        for net in app_networks(params):
            out.append(HbaRule("hostssl", db, hba_name(cfg.blazer.name), "scram-sha-256", net,
                               comment=f"Blazer ({cfg.blazer.name}, read-only) from the app servers"))
    if cfg.migrations:
        for net in dict.fromkeys([params.network.subnet, *app_networks(params)]):
            out.append(HbaRule("hostssl", db, hba_name(cfg.migrations.name), "scram-sha-256", net,
                               comment="migrations (Rails db:migrate, the release command) from "
                                       + ("the private subnet" if net == params.network.subnet
                                          else "the app servers")))
    if cfg.metabase and cfg.jumpbox_ip:
        out.append(HbaRule("hostssl", db, hba_name(cfg.metabase.name), "scram-sha-256", f"{cfg.jumpbox_ip}/32",
                           comment="Metabase, read-only, only through the jumpbox"))
    for role, what in ((cfg.monitoring, "Vector postgresql_metrics"), (cfg.exporter, "prometheus-postgres-exporter")):
        if role:
            out.append(HbaRule("hostssl", "postgres", hba_name(role.name), "scram-sha-256", f"{server.private_ip}/32",
                               comment=f"{what}, on this server, to its private IP"))
    return out
