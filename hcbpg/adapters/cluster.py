"""Cluster control on a server: Debian's ``pg_createcluster``, ``pg_ctlcluster`` and ``pg_lsclusters``,
run here and nowhere else (their command lines: :mod:`hcbpg.pg.cluster`).

    ClusterControl(host, version, name)     one cluster on one host: create, start, stop, reload,
                                            restart, what pg_lsclusters says of it, psql on it

A command that changes the cluster goes through the host's ``run`` (a DryRunHost records it);
``get`` is a probe.  Systemd units are not assumed: the lab's servers have none.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.psql import Psql
from hcbpg.errors import RemoteCommandError
from hcbpg.pg.cluster import CLUSTER_LOCALE, create_command, ctl_command, drop_command

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result
    from hcbpg.params import Params

__all__ = ["ClusterControl"]


class ClusterControl:
    """One PostgreSQL cluster (*version*/*name*) on *host*."""

    def __init__(self, host: "HostLike", version: int, name: str, *, port: int = 5432) -> None:
        self.host = host
        self.version = version
        self.name = name
        self.port = port

    @classmethod
    def of(cls, host: "HostLike", params: "Params") -> "ClusterControl":
        """The cluster params describe (``postgres.version``, ``.cluster``, ``.port``) on *host*."""
        pg = params.postgres
        return cls(host, pg.version, pg.cluster, port=pg.port)

    def __repr__(self) -> str:
        return f"ClusterControl({self.host.name!r}, {self.version}/{self.name})"

    # the command lines ------------------------------------------------------------------------
    def command(self, action: str, *args: str) -> str:
        """The ``pg_ctlcluster`` line for *action* on this cluster."""
        return ctl_command(self.version, self.name, action, *args)

    def create_command(self, *, locale: str = CLUSTER_LOCALE) -> str:
        """The ``pg_createcluster`` line for this cluster (see :func:`create_command`)."""
        return create_command(self.version, self.name, port=self.port, locale=locale)

    # reads --------------------------------------------------------------------------------------
    def get(self) -> dict[str, Any] | None:
        """This cluster's entry in ``pg_lsclusters --json`` (None: it does not exist, or no PostgreSQL)."""
        res = self.host.probe("pg_lsclusters --json")
        if not res.ok:
            if "not found" in res.output or res.exit_code == 127:
                return None
            raise RemoteCommandError(self.host.name, "pg_lsclusters --json", res.exit_code, res.output)
        for c in json.loads(res.stdout or "[]"):
            if int(c.get("version", 0)) == self.version and c.get("cluster") == self.name:
                return dict(c)
        return None

    def running(self) -> bool:
        """Whether the cluster exists and runs."""
        c = self.get()
        return bool(c and c.get("running"))

    def psql(self) -> Psql:
        """psql as the postgres OS user on this cluster."""
        return Psql(self.host, version=self.version, port=self.port)

    # changes ------------------------------------------------------------------------------------
    def create(self) -> "Result":
        """``pg_createcluster`` (not started: the settings are written before the first start)."""
        return self.host.run(self.create_command())

    def drop(self, *, timeout: float = 300) -> "Result":
        """``pg_dropcluster --stop``: stopped, data directory and configuration removed (callers decide it may go)."""
        return self.host.run(drop_command(self.version, self.name), timeout=timeout)

    def start(self, *args: str, timeout: float = 180, hint: str | None = None) -> "Result":
        """``pg_ctlcluster ... start [ARGS]``."""
        return self.host.run(self.command("start", *args), timeout=timeout, hint=hint)

    def stop(self, mode: str = "fast", *, check: bool = True, timeout: float = 300) -> "Result":
        """``pg_ctlcluster ... stop -m MODE``."""
        return self.host.run(self.command("stop", "-m", mode), check=check, timeout=timeout)

    def reload(self, *, check: bool = True, quiet: bool = False) -> "Result":
        """``pg_ctlcluster ... reload`` (does not wait until the postmaster has read the files)."""
        return self.host.run(self.command("reload"), check=check, quiet=quiet)

    def restart(self, *, timeout: float = 300) -> "Result":
        """``pg_ctlcluster ... restart``."""
        return self.host.run(self.command("restart"), timeout=timeout)
