"""Step 05 (notebook ``05_pgbackrest``): pgBackRest installed and configured on the primary, the stanza created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.pgbackrest import check_configured, configure_pgbackrest  # noqa: F401 - the notebook's calls
from hcbpg.steps.targets import server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run", server: "Server") -> tuple["Host | None", tuple[int, int, int] | None]:
    """An open Host for *server* and the pgBackRest version on it (None: not installed yet); says which."""
    host = server_host(rb, server)
    version = pgb.get_installed_version(host)
    print(f"pgBackRest on {server.name}: {desired_pgbackrest.format_version(version) if version else 'not installed yet'}")
    return host, version


def render_conf(host: "Host", params: "Params", server: "Server") -> str:
    """pgbackrest.conf as rendered for the version installed now, with ``<secret>`` placeholders."""
    return desired_pgbackrest.render_pgbackrest_conf(params, server, version=pgb.get_version(host))
