"""Step 15 (notebook ``15_health``): read-only measurements on every server, judged against thresholds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.ops import health
from hcbpg.ops.health import evaluate, figure_data, get_measurements, plot, thresholds_from  # noqa: F401 - the notebook's calls
from hcbpg.steps.targets import recorded_servers

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.steps.context import Run


def open_hosts(rb: "Run") -> dict[str, "Host | None"]:
    """A Host per server: ``ssh_host``, else the public IP step 01 recorded, else the private IP."""
    return health.open_hosts(rb.params, recorded=recorded_servers(rb), echo=print)
