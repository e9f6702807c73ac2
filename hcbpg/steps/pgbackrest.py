"""Step 05 (notebook ``05_pgbackrest``): pgBackRest installed and configured on the primary, the stanza created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired.backups import paths_for
from hcbpg.desired.pgbackrest import check_block_incremental
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.pgbackrest import check_configured  # noqa: F401 - the notebook's call
from hcbpg.outcome import Outcome
from hcbpg.steps.targets import hostlike, planning, server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run", server: "Server") -> tuple["HostLike", tuple[int, int, int] | None]:
    """The host for *server* (a dry run records on it; a server not there yet is an AbsentHost) and the
    pgBackRest version on it (None: not installed yet); says which."""
    host = hostlike(rb, server.name, server_host(rb, server))
    version = pgb.get_installed_version(host)
    print(f"pgBackRest on {server.name}: {desired_pgbackrest.format_version(version) if version else 'not installed yet'}")
    return host, version


def configure(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """Step 05 on the primary: install, directories, pgbackrest.conf, archiving settings (archive_mode off), stanza.

    The block-incremental rule is checked against the installed version before anything
    is written; the stanza is created only when ``info`` says it is missing.  Once step 08
    has started archiving, running this step again keeps it on.
    """
    outcomes = [pgb.ensure_installed(host)]
    version = pgb.get_installed_version(host)
    if version is not None:
        check_block_incremental(params, version)
    outcomes.append(pgb.ensure_paths(host, specs=paths_for(params)))
    outcomes.append(pgb.ensure_pgbackrest_conf(host, params, server, version=version))
    on = pgb.get_archive_mode_written(host, params)
    outcomes.append(pgb.ensure_archiving(host, params, server, archive_mode=on))
    outcomes.append(pgb.ensure_stanza(host, params))
    return outcomes


def get_plan(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """What :func:`configure` would change, on a fresh recording of *host* (nothing is changed)."""
    return configure(planning(host), params, server)


def get_conf_shown(host: "HostLike", params: "Params", server: "Server") -> str:
    """pgbackrest.conf as rendered for the version installed now, with ``<secret>`` placeholders."""
    return desired_pgbackrest.render_pgbackrest_conf(params, server, version=pgb.get_version(host))
