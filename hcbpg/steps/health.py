"""Step 15 (notebook ``15_health``): read-only measurements on every server, judged against thresholds
(the rules: :mod:`hcbpg.desired.health`); ``hcbpg status`` opens its hosts here too."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.host import Host
from hcbpg.desired.addresses import ssh_route
from hcbpg.desired.health_report import evaluate, figure_data, plot, thresholds_from  # noqa: F401 - the notebook's calls
from hcbpg.ops.health import get_measurements  # noqa: F401 - the notebook's call
from hcbpg.steps.targets import recorded_servers

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def open_server_hosts(params: "Params", *, recorded: Sequence[Mapping[str, Any]] | None = None,
                      connect_timeout: float | None = None,
                      echo: Callable[[str], None] = lambda s: None) -> dict[str, Host]:
    """A Host per server (connected on its first command): with a jumpbox in params at its private IP through
    the jumpbox, else ``ssh_host``, else the address pinned with its host key, else the private IP."""
    out: dict[str, Host] = {}
    for s in params.servers:
        address = ssh_route(params, s.name, recorded).address or s.private_ip
        out[s.name] = Host.from_params(params, s.name, address, command_timeout=120.0, echo=echo,
                                       connect_timeout=connect_timeout or params.ssh.connect_timeout)
    return out


def open_hosts(rb: "Run") -> dict[str, Host]:
    """A Host per server: ``ssh_host``, else the public IP step 01 recorded, else the private IP."""
    return open_server_hosts(rb.params, recorded=recorded_servers(rb), echo=print)
