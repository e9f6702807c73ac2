"""What replication needs on each server, from params alone: slot names, peers, the settings
file's values and the pg_hba lines for the replication role.  Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.desired import tls as desired_tls
from hcbpg.errors import ParamsError, SafetyCheckFailed, SecretError
from hcbpg.pg.cluster import bin_path as pg_bin_path
from hcbpg.pg.conf import MANAGED_HEADER, SettingValue, quote_setting
from hcbpg.pg.conninfo import conninfo_quote, pgpass_field
from hcbpg.pg.hba import HbaRule, hba_name
from hcbpg.pg.scram import scram_matches, scram_verifier
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
    return pg_bin_path(params.postgres.version, tool)


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
    * ``wal_retrieve_retry_interval = 1s`` (PostgreSQL's default 5s): how long a replica waits before it tries
      again to stream (or to restore from the archive) after a failed try.  Under Patroni a replica that starts
      asks for its slot before the leader's next loop has made it ("replication slot ... does not exist"), and a
      rejoined old leader meets the new one still promoting: each such failed try cost 5 s of not streaming
      (measured in the lab: slot missing at 31.0 s, streaming at 36.1 s).  A try is a connection, or one
      archive-get, a second.
    """
    rep = replication_params(params)
    # wal_log_hints (needed by pg_rewind) is in step 02's identity part: set before the first start
    return {"max_slot_wal_keep_size": rep.max_slot_wal_keep_size, "hot_standby": True,
            "wal_keep_size": rep.wal_keep_size, "wal_retrieve_retry_interval": "1s"}


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
    if params.replication.manager == "patroni":
        # Patroni asks its own PostgreSQL for the timeline over a replication connection to localhost
        for address in ("127.0.0.1/32", "::1/128"):
            out.append(HbaRule("hostssl", "replication", role, "scram-sha-256", address,
                               comment="Patroni's own replication connection (its timeline) on this server"))
    return out


def render_passfile(params: "Params", server: "Server", password: str) -> str:
    """``~postgres/.pgpass`` on *server*: the replication role's password for each peer.

    Two lines per peer: database ``replication`` (walreceiver, pg_basebackup) and ``postgres``
    (pg_rewind's source connection).  libpq reads the password from here, so it never lands in
    postgresql.auto.conf or on a command line.
    """
    rep = replication_params(params)
    register(password)
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        # a .pgpass line cannot escape a line break: the rest would be read as another entry
        raise SecretError(f"the secret {PASSWORD_KEY} ({rep.password}) holds a control character (a line break?), "
                          "which ~postgres/.pgpass cannot hold; nothing was written",
                          hint=f"Store a password without control characters at {rep.password}.")
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


# the replication role (pure: planned from what the primary holds) --------------------------------

#: the secret that holds the replication role's password
PASSWORD_KEY = "replication.password"
#: the functions pg_rewind needs on its source server (pg_rewind docs: non-superuser source)
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)


def wrong_password(params: "Params", host_name: str) -> SafetyCheckFailed:
    """The refusal when the replication role exists with another password than the secret's."""
    rep = replication_params(params)
    return SafetyCheckFailed(
        f"on {host_name}: role {rep.role} already exists with a different password than the secret "
        f"{PASSWORD_KEY} ({rep.password}); refusing to change it, because running replicas would stop streaming",
        hint=f"Point {PASSWORD_KEY} at the password {rep.role} has now, or set the new password on the primary "
             f"and in ~postgres/.pgpass on every server together. Nothing was changed.")


def plan_replication_role(params: "Params", current: Mapping[str, Any] | None, password: str, *,
                          host_name: str) -> list[sql.Composable]:
    """Statements that bring the replication role to params: REPLICATION LOGIN, CONNECTION LIMIT, password.

    The password is sent as a SCRAM verifier computed here; a different existing password is refused.
    """
    rep = replication_params(params)
    ident = sql.Identifier(rep.role)
    if current is None:
        return [sql.SQL("CREATE ROLE {} WITH REPLICATION LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                        "CONNECTION LIMIT {} PASSWORD {}").format(
            ident, sql.Literal(rep.connection_limit), sql.Literal(scram_verifier(password)))]
    parts: list[sql.Composable] = []
    for col, word, want in (("rolreplication", "REPLICATION", True), ("rolcanlogin", "LOGIN", True),
                            ("rolsuper", "NOSUPERUSER", False), ("rolcreatedb", "NOCREATEDB", False),
                            ("rolcreaterole", "NOCREATEROLE", False)):
        if bool(current[col]) != want:
            parts.append(sql.SQL(word))
    if int(current["rolconnlimit"]) != rep.connection_limit:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(rep.connection_limit)))
    stored = current.get("rolpassword") or ""
    if not stored:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(password))))
    elif not scram_matches(password, stored):
        raise wrong_password(params, host_name)
    if not parts:
        return []
    return [sql.SQL("ALTER ROLE {} WITH ").format(ident) + sql.SQL(" ").join(parts)]


def plan_rewind_grants(params: "Params", granted: Mapping[str, bool]) -> list[sql.Composable]:
    """GRANT EXECUTE on the functions pg_rewind needs, for those not yet granted."""
    role = sql.Identifier(replication_params(params).role)
    return [sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(f), role)
            for f in REWIND_FUNCTIONS if not granted.get(f)]
