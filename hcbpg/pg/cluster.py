"""Debian's cluster tools as command lines (pure): ``pg_ctlcluster`` and ``pg_createcluster`` for one cluster.

Built here only: :class:`~hcbpg.adapters.cluster.ClusterControl` runs them on a host, and a rendered
script that reloads by itself (:func:`hcbpg.desired.migration.render_reload_and_wait`) embeds the same line.
"""

from __future__ import annotations

import shlex

__all__ = ["CLUSTER_LOCALE", "bin_path", "create_command", "ctl_command", "drop_command", "local_tool",
           "psql_command"]

#: the locale a new cluster gets: always present (Ubuntu cloud images, Debian) and UTF-8
CLUSTER_LOCALE = "C.UTF-8"


def bin_path(version: int, tool: str) -> str:
    """A PostgreSQL program of *version* where Debian and Ubuntu install it (``/usr/lib/postgresql/V/bin``)."""
    return f"/usr/lib/postgresql/{int(version)}/bin/{tool}"


def local_tool(version: int, port: int, tool: str) -> str:
    """*tool* (psql, pg_restore) of the cluster of *version* on *port*, as the postgres OS user runs it on the
    server, through Debian's default socket directory.  Not pg_wrapper's ``TOOL --cluster V/NAME``: the wrapper
    (Perl) reads the cluster's configuration on every call (~20 ms of CPU, of a ~35 ms statement), and read it
    half written while Patroni rewrote postgresql.conf ("Invalid data directory")."""
    return f"{bin_path(version, tool)} -p {int(port)}"


def psql_command(version: int, port: int, dbname: str) -> str:
    """psql on database *dbname* of that cluster (:func:`local_tool`), quiet, stopping at the first error."""
    return f"{local_tool(version, port, 'psql')} -X -q -v ON_ERROR_STOP=1 -d {shlex.quote(dbname)}"


def ctl_command(version: int, name: str, action: str, *args: str) -> str:
    """``pg_ctlcluster VERSION NAME ACTION [ARGS]`` (*args* are passed as words, quoted)."""
    tail = "".join(" " + shlex.quote(a) for a in args)
    return f"pg_ctlcluster {int(version)} {shlex.quote(name)} {action}{tail}"


def create_command(version: int, name: str, *, port: int, locale: str = CLUSTER_LOCALE) -> str:
    """``pg_createcluster``: the cluster with data checksums at initdb (a torn or bit-flipped page is
    reported instead of read as data), not started."""
    return (f"pg_createcluster --port {int(port)} --locale {shlex.quote(locale)} "
            f"{int(version)} {shlex.quote(name)} -- --data-checksums")


def drop_command(version: int, name: str) -> str:
    """``pg_dropcluster --stop``: the cluster stopped, its data directory and configuration removed."""
    return f"pg_dropcluster --stop {int(version)} {shlex.quote(name)}"
