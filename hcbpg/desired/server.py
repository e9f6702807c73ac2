"""The desired state of one server's PostgreSQL config, composed in one place: where the
files live, every include file's settings and every pg_hba rule, from params alone.

pg_hba.conf and the conf.d files are written whole, so every step renders the same file from
the same composition here: a step that rendered only its own lines would drop the others'.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from hcbpg.desired import replication, roles, tls
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.pg.conf import MANAGED_HEADER, SETTING_NAME, SettingValue, one_line, quote_setting
from hcbpg.pg.hba import ALLOWED_METHODS, HbaRule, hba_name

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server


def all_hba_extra(params: "Params", server: "Server", cfg: roles.RolesConfig | None = None) -> list[HbaRule]:
    """Every step's extra pg_hba rules for *server*: replication's (when that module has them) and ours.

    pg_hba.conf is rendered whole, so a step that rendered only its own rules would drop the others'.
    """
    rules: list[HbaRule] = list(replication.hba_rules_for(params, server))
    rules += roles.roles_hba_rules(cfg or roles.roles_config(params), params, server)
    return rules


def config_dir(params: "Params") -> str:
    return f"/etc/postgresql/{params.postgres.version}/{params.postgres.cluster}"


def hba_path(params: "Params") -> str:
    return f"{config_dir(params)}/pg_hba.conf"


#: the conf.d include files hcbpg owns, one per concern, read in name order after postgresql.conf
SETTINGS_FILES = {
    "identity": "10-hcbpg-identity.conf",        # step 02: cluster_name
    "tls": "15-hcbpg-tls.conf",                  # step 03: ssl on, certificate, TLS 1.3 (before pg_hba's hostssl)
    "capacity": "15-hcbpg-capacity.conf",        # step 02: connections budget, memory, preloads (server type)
    "connections": "20-hcbpg-connections.conf",  # step 03: listen_addresses, password_encryption, postgres.settings
    "replication": "30-hcbpg-replication.conf",  # step 10: slot WAL cap, hot_standby, wal_keep_size
}


def settings_path(params: "Params", part: str) -> str:
    return f"{config_dir(params)}/conf.d/{SETTINGS_FILES[part]}"


def settings_for(params: "Params", server: "Server", part: str) -> dict[str, SettingValue]:
    """The settings hcbpg owns in the include file *part* (see SETTINGS_FILES) for *server*."""
    if part == "identity":
        # wal_log_hints needs a restart: set it before the first start so that step 10 (replication,
        # pg_rewind after a failover) never has to restart the primary for it
        # under Patroni its scope (Patroni passes it to PostgreSQL; the same value here keeps one truth)
        rep = params.replication
        name = rep.patroni.scope if rep is not None and rep.manager == "patroni" and rep.patroni else server.name
        return {"cluster_name": name, "wal_log_hints": True}
    if part == "tls":
        return tls.ssl_settings(params)
    if part == "capacity":
        return {}  # from the server type (hcbpg.desired.capacity), handed in as extra by step 02
    if part == "replication":
        if params.replication is None:
            return {}
        return replication.replication_settings(params, server)
    if part == "connections":
        out: dict[str, SettingValue] = {
            "listen_addresses": f"localhost,{server.private_ip}",
            "password_encryption": "scram-sha-256",
        }
        problems = []
        owned = set(out) | {"cluster_name", "port", "data_directory", "hba_file", "ident_file",
                            "external_pid_file", "include_dir"}
        owned |= {*tls.ssl_settings(params), "ssl_ca_file", "ssl_crl_file"}  # the TLS include file's
        for key, value in params.postgres.settings.items():
            if not SETTING_NAME.fullmatch(key):
                problems.append(f"postgres.settings.{key}: not a PostgreSQL setting name")
            elif key in owned:
                problems.append(f"postgres.settings.{key}: hcbpg sets {key} itself (or it belongs in "
                                "postgresql.conf); remove it from postgres.settings")
            else:
                out[key] = value
        if problems:
            raise ParamsError("params", problems)
        return out
    raise ValueError(f"unknown settings part {part!r}; known: {', '.join(SETTINGS_FILES)}")


_PART_TITLES = {
    "identity": "identity (step 02_install_postgres)",
    "tls": "TLS (step 03_allow_connections; tls.* from params)",
    "capacity": "capacity and memory (step 02_install_postgres; from params and the server type)",
    "connections": "connections (step 03_allow_connections; postgres.settings from params)",
    "replication": "replication (step 10_replication; replication.* from params)",
}


def render_settings(params: "Params", server: "Server", part: str = "connections", *,
                    extra: Mapping[str, SettingValue] | None = None) -> str:
    """The conf.d include file *part* for *server*: header, then ``name = value`` sorted by name.

    *extra* lets later steps add settings (archive_command, wal_level, ...) to a part.
    """
    settings = dict(settings_for(params, server, part))
    for key, value in (extra or {}).items():
        if not SETTING_NAME.fullmatch(key):
            raise SafetyCheckFailed(f"not a PostgreSQL setting name: {key!r}")
        settings[key] = value
    lines = [
        MANAGED_HEADER,
        f"# {one_line(server.name, 'the server name')}: {_PART_TITLES.get(part, part)}.",
        "# Read through include_dir = 'conf.d' at the end of postgresql.conf, so these values win over it.",
        "",
    ]
    lines += [f"{key} = {quote_setting(settings[key])}" for key in sorted(settings)]
    return "\n".join(lines) + "\n"


def params_hba_rules(params: "Params", server: "Server") -> list[HbaRule]:
    """Every rule a later step owns, derived from params alone, so that every step renders the same file.

    pg_hba.conf is written whole: if step 03 rendered only its own lines, re-running it would
    drop step 10's replication lines and step 13's role lines (and the other way round).
    """
    return [*replication.hba_rules_for(params, server),
            *roles.roles_hba_rules(roles.roles_config(params), params, server)]


def hba_rules(params: "Params", server: "Server", extra: Sequence[HbaRule] = ()) -> list[HbaRule]:
    """The rules for *server* in order: postgres over peer first, the app, the rules params imply
    for replication and roles, *extra* (minus duplicates), then local scram."""
    pg = params.postgres
    owned = params_hba_rules(params, server)
    rules = [
        HbaRule("local", "all", "postgres", "peer",
                comment="administration: the postgres OS user over the Unix socket"),
        HbaRule("hostssl", hba_name(pg.database), hba_name(pg.app_role), "scram-sha-256", params.network.subnet,
                comment=f"the app ({pg.app_role}) from the private subnet"),
        *owned,
        *[r for r in dict.fromkeys(extra) if r not in owned],
        HbaRule("local", "all", "all", "scram-sha-256", comment="everyone else on the socket: with a password"),
    ]
    # every network rule only over TLS, and a plaintext connection refused whatever it asks for
    rules = [replace(r, type="hostssl") if r.type == "host" else r for r in rules]
    rules.append(HbaRule("hostnossl", "all", "all", "reject", "0.0.0.0/0",
                         comment="no plaintext over the network: every client uses TLS (sslmode=verify-full)"))
    for r in rules:
        if r.address is not None:
            ipaddress.ip_network(r.address, strict=True)  # a CIDR without host bits, never a host name
        if r.method not in ALLOWED_METHODS:
            raise SafetyCheckFailed(f"pg_hba rule for {r.user}@{r.database}: method {r.method} is not allowed "
                                    f"(allowed: {', '.join(sorted(ALLOWED_METHODS))}; never trust or md5)")
    return rules


def render_pg_hba(params: "Params", server: "Server", *, extra: Sequence[HbaRule] = ()) -> str:
    """pg_hba.conf for *server*, whole: header, then the rules of :func:`hba_rules`, each with its comment."""
    lines = [
        MANAGED_HEADER,
        f"# pg_hba.conf of {one_line(server.name, 'the server name')}, rendered from params "
        f"({one_line(params.environment, 'environment')}).",
        "# First match wins. Only peer and scram-sha-256: never trust, never md5. Network rules are",
        "# hostssl only, and a final hostnossl rule rejects every plaintext connection.",
        "#",
        "# TYPE  DATABASE        USER            ADDRESS                 METHOD",
    ]
    for r in hba_rules(params, server, extra):
        lines.append("")
        if r.comment:
            lines.append(f"# {one_line(r.comment, 'a pg_hba.conf comment')}")
        lines.append(one_line(r.render(), "a pg_hba.conf rule"))
    return "\n".join(lines) + "\n"
