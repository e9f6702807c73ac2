"""What replication needs on each server, from params alone: slot names, peers, the settings
file's values and the pg_hba lines for the replication role.  Pure."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hcbpg.desired import tls as desired_tls
from hcbpg.errors import ParamsError
from hcbpg.pg.conf import MANAGED_HEADER, SettingValue, quote_setting
from hcbpg.pg.conninfo import conninfo_quote, pgpass_field
from hcbpg.pg.hba import HbaRule, hba_name
from hcbpg.secrets import register

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Replication, Server


def slot_name(server_name: str) -> str:
    """The physical slot a replica streams through: ``server-postgres-2`` → ``server_postgres_2_slot``."""
    name = re.sub(r"[^a-z0-9_]", "_", server_name.lower()) + "_slot"
    if len(name) > 63:
        raise ValueError(f"slot name for {server_name} is longer than 63 characters")
    return name


def replication_params(params: "Params") -> "Replication":
    """``params.replication``, or a ParamsError naming the missing section."""
    if params.replication is None:
        raise ParamsError("params", ["replication: required for steps 10 and 11 (role, password, "
                                     "max_slot_wal_keep_size, ...)"])
    return params.replication


def bin_path(params: "Params", tool: str) -> str:
    """The versioned binary (pg_wrapper in /usr/bin might pick another major version)."""
    return f"/usr/lib/postgresql/{params.postgres.version}/bin/{tool}"


def postgres_home() -> str:
    return "/var/lib/postgresql"


def passfile_path() -> str:
    """``~postgres/.pgpass``: libpq's default for the postgres OS user, named explicitly in conninfo."""
    return f"{postgres_home()}/.pgpass"


def peers(params: "Params", server: "Server") -> list["Server"]:
    """Every other server: the ones that may stream from *server* or that it may stream from."""
    return [s for s in params.servers if s.name != server.name]


def replication_settings(params: "Params", server: "Server") -> dict[str, SettingValue]:
    """The replication settings every server gets (primary and replicas alike: roles change).

    * ``max_slot_wal_keep_size`` from params, so a dead replica's slot cannot fill the disk;
    * (``wal_log_hints = on``, which pg_rewind needs, is in step 02's identity part)
      (clusters are created without data checksums);
    * ``hot_standby = on`` so a replica answers read-only queries (the checks need it);
    * ``wal_keep_size`` (``replication.wal_keep_size``, default 512MB) so a crashed former primary
      still has the WAL back to the fork point after its crash recovery (which recycles archived
      segments): without it pg_rewind fails with "could not find previous WAL record" and the
      rejoin falls back to a full base backup.
    """
    rep = replication_params(params)
    # wal_log_hints (needed by pg_rewind) is in step 02's identity part: set before the first start
    return {"max_slot_wal_keep_size": rep.max_slot_wal_keep_size, "hot_standby": True,
            "wal_keep_size": rep.wal_keep_size}


def render_replication_settings(params: "Params", server: "Server") -> str:
    """conf.d/30-hcbpg-replication.conf for *server* (header, sorted ``name = value`` lines)."""
    settings = replication_settings(params, server)
    lines = [MANAGED_HEADER,
             f"# {server.name}: replication (step 10_replication; replication.* from params).",
             "# Read through include_dir = 'conf.d' at the end of postgresql.conf, so these values win over it.",
             ""]
    lines += [f"{k} = {quote_setting(settings[k])}" for k in sorted(settings)]
    return "\n".join(lines) + "\n"


def hba_rules_for(params: "Params", server: "Server") -> list[HbaRule]:
    """pg_hba lines on *server* for the replication role: each peer's private IP as a /32 only.

    ``replication`` (the keyword: walreceiver, pg_basebackup) and database ``postgres``
    (pg_rewind reads files through SQL functions there).  Every server gets them, so the
    pair needs no pg_hba change when the roles swap.
    """
    if params.replication is None:
        return []
    role = hba_name(params.replication.role)
    out = []
    for peer in peers(params, server):
        out.append(HbaRule("hostssl", "replication", role, "scram-sha-256", f"{peer.private_ip}/32",
                                 comment=f"streaming replication from {peer.name}"))
        out.append(HbaRule("hostssl", "postgres", role, "scram-sha-256", f"{peer.private_ip}/32",
                                 comment=f"pg_rewind from {peer.name} (reads files through SQL functions)"))
    return out


def render_passfile(params: "Params", server: "Server", password: str) -> str:
    """``~postgres/.pgpass`` on *server*: the replication role's password for each peer.

    Two lines per peer: database ``replication`` (walreceiver, pg_basebackup) and ``postgres``
    (pg_rewind's source connection).  libpq reads the password from here, so it never lands in
    postgresql.auto.conf or on a command line.
    """
    rep = replication_params(params)
    register(password)
    lines = []
    for peer in peers(params, server):
        for db in ("replication", "postgres"):
            lines.append(":".join(pgpass_field(x) for x in (peer.private_ip, str(params.postgres.port), db,
                                                            rep.role, password)))
    return "\n".join(lines) + "\n"


def render_primary_conninfo(params: "Params", primary: "Server", standby: "Server") -> str:
    """primary_conninfo for *standby*: host, port, role, passfile, application_name, TLS; never a password."""
    rep = replication_params(params)
    parts = {"host": primary.private_ip, "port": str(params.postgres.port), "user": rep.role,
             "passfile": passfile_path(), "application_name": standby.name,
             # verify-full: the replica checks the primary's certificate against the environment's CA
             **desired_tls.client_tls(params)}
    return " ".join(f"{k}={conninfo_quote(v)}" for k, v in parts.items())


def render_recovery_settings(current_auto_conf: str, params: "Params", primary: "Server",
                             standby: "Server") -> str:
    """postgresql.auto.conf with primary_conninfo and primary_slot_name for *standby* (other lines kept)."""
    want = {"primary_conninfo": render_primary_conninfo(params, primary, standby),
            "primary_slot_name": slot_name(standby.name)}
    kept = []
    for line in current_auto_conf.splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=", line)
        if m and m.group(1) in want:
            continue
        kept.append(line)
    if not kept:
        kept = ["# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    kept += [f"{k} = {quote_setting(v)}" for k, v in want.items()]
    return "\n".join(kept) + "\n"
