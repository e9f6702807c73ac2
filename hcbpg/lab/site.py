"""The rehearsal lab as a :class:`hcbpg.adapters.site.Site`: named in params as ``site: hcbpg.lab.site:LabSite``.

The lab creates the drill's scratch host on demand, runs outsider commands in its outsider
network namespace, receives dead-man pings on its operator address, and its hosts have no
cron daemon (the tests run the backup job directly).
"""

from __future__ import annotations

import ipaddress
import os
from typing import TYPE_CHECKING

from hcbpg.adapters.site import OutsiderRunner

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: the lab's scratch host: drill-1 at .30 of the lab subnet
LAB_DRILL_NAME, LAB_DRILL_OFFSET = "drill-1", 30
#: the lab's dead-man receiver (hcbpg.lab.deadman) until params carry pgbackrest.deadman_url
LAB_DEADMAN_PORT = 8781


def lab_deadman_url(params: "Params") -> str:
    """The lab receiver's URL on the operator address of the lab subnet (10.0.1.1 by default)."""
    gw = ipaddress.ip_network(params.network.subnet)[1]
    return f"http://{gw}:{LAB_DEADMAN_PORT}/ping/hcbpg-backup-{params.environment}"


class LabSite:
    """The lab on this machine (``$HCBPG_LAB_DIR`` or /var/lib/hcbpg-lab)."""

    cron_runs_jobs = False

    def default_scratch_host(self, params: "Params") -> tuple[str, str] | None:
        return LAB_DRILL_NAME, str(ipaddress.ip_network(params.network.subnet)[LAB_DRILL_OFFSET])

    def ensure_scratch_host(self, params: "Params", name: str, private_ip: str, *, dry_run: bool) -> bool:
        from hcbpg.lab.core import LabConfig, read_state  # noqa: PLC0415 - the lab's modules only when used
        if name in read_state(LabConfig.load()).get("hosts", {}):
            return True
        if dry_run:
            print(f"[{name}] would create the lab scratch host at {private_ip}")
            return False
        from hcbpg.lab.hosts import create_server_host  # noqa: PLC0415 - the lab's modules only when used
        with open(os.path.expanduser(params.hetzner.ssh_public_key_file)) as f:
            key = f.read()
        created = create_server_host(name, private_ip, [key])
        print(f"[{name}] created lab scratch host at {created['ip']}")
        return True

    def outsider_runner(self, params: "Params") -> OutsiderRunner | None:
        try:
            from hcbpg.lab import Lab  # noqa: PLC0415 - the lab's modules only when used
            from hcbpg.lab.core import netns_list  # noqa: PLC0415 - the lab's modules only when used
            lab = Lab()
            if lab.cfg.outsider_netns not in netns_list():
                return None
        except Exception:  # noqa: BLE001 - no lab on this machine: "not available"
            return None

        def via_lab(cmd: str, stdin: str) -> tuple[int, str]:
            proc = lab.outsider_exec(cmd, input=stdin, timeout=60)
            return proc.returncode, proc.stdout + proc.stderr
        return via_lab

    def deadman_url(self, params: "Params") -> str | None:
        return lab_deadman_url(params)

    def health_deadman_url(self, params: "Params") -> str | None:
        gw = ipaddress.ip_network(params.network.subnet)[1]
        return f"http://{gw}:{LAB_DEADMAN_PORT}/ping/hcbpg-health-{params.environment}"
