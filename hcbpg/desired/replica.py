"""A streaming replica's files and commands (pure): where ``start.conf`` is, the values it may hold,
and the pg_basebackup command line that builds a replica."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from hcbpg.desired import server as desired_server
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.replication import bin_path, passfile_path, replication_params, slot_name

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server


#: what ``start.conf`` may say (postgresql-common): systemd starts the cluster at boot, only by hand, never
START_CONF_VALUES = ("auto", "manual", "disabled")


def start_conf_path(params: "Params") -> str:
    """The cluster's ``start.conf`` (``auto``: systemd starts it at boot; ``manual``: it does not)."""
    return f"{desired_server.config_dir(params)}/start.conf"


def render_basebackup_command(params: "Params", primary: "Server", standby: "Server", pgdata: str) -> str:
    """pg_basebackup as postgres on the standby: -R (recovery config), -P (progress), WAL streamed, our slot."""
    rep = replication_params(params)
    conninfo = (f"host={primary.private_ip} port={params.postgres.port} user={rep.role} "
                f"passfile={passfile_path()} application_name={standby.name} {desired_tls.conninfo_tls(params)}")
    return (f"{bin_path(params, 'pg_basebackup')} -d {shlex.quote(conninfo)} -D {shlex.quote(pgdata)} "
            f"-R -P -v -w -X stream --checkpoint=fast --slot {slot_name(standby.name)}")



def start_conf_value(text: str | None) -> str:
    """What a ``start.conf`` says: its first line that is not a comment (postgresql-common writes a
    commented header above it); ``auto`` when the file is missing or says nothing."""
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return line
    return "auto"
