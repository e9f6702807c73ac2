"""What the benches on a Patroni pair share (bench/backup_latency.py, bench/failover.py): a scratch lab of their own
(own dir, bridge, subnets), the cluster step 10 makes (``tests/lab/ha_stage.build_ha_cluster``: the primary through
steps 02-04, a replica and the jumpbox as etcd's third voter), the lab's app host writing through the handed-out
``DATABASE_URL`` (the lab's ActiveRecord writer, ``hcbpg/lab/ar_load.rb``, libpq's blocking connect), and the run's
end.  A bench imports it as ``_ha`` (bench/ is on its own ``sys.path``); it needs tests/ and tests/lab there too.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import log_line

from hcbpg.adapters.host import Host
from hcbpg.lab import Lab, app_load
from hcbpg.lab.core import lab_unavailable_reason, scratch_config
from hcbpg.lab.hosts import remove_tree
from hcbpg.params import Params, parse_params

import ha_stage as hs
from stages import build_primary_stage

#: where the bench's replica and jumpbox go in the scratch lab's subnet
REPLICA_OFFSET, JUMPBOX_OFFSET = 71, 72


@dataclass
class HaBench:
    """The scratch lab, the params, the cluster, the app host and its writer."""

    lab: Lab
    params: Params
    cluster: hs.HaCluster
    app: Host
    writer: app_load.Writer


def scratch_lab(prefix: str, script: str) -> Lab | None:
    """A new scratch lab's handle (stale scratch labs swept first); None, said, when no lab can run here."""
    reason = lab_unavailable_reason()
    if reason:
        print(f"{script}: cannot run here: {reason}")
        return None
    Lab.sweep_scratch()
    return Lab(scratch_config(prefix).lab_dir)


def build_cluster(lab: Lab, *, scope: str) -> tuple[dict[str, Any], hs.HaCluster]:
    """The lab up, the primary stage (in a temporary directory, removed after) and the HA cluster on it; the
    params' data (to change before parsing) and the cluster."""
    t = time.monotonic()
    lab.up(source_rows=1000)
    log_line(f"lab up in {time.monotonic() - t:.0f} s ({lab.lab_dir})")
    where = Path(tempfile.mkdtemp(prefix=f"hcbpg-bench-{scope}-"))
    try:
        stage = build_primary_stage(lab, where)
        log_line(f"primary through steps 02-04 in {stage.seconds:.0f} s")
        data = hs.ha_params_data(lab, replica_offset=REPLICA_OFFSET, jumpbox_offset=JUMPBOX_OFFSET, scope=scope)
        cluster = hs.build_ha_cluster(lab, stage, parse_params(data))
    finally:
        remove_tree(where)
    log_line(f"HA cluster (etcd x3, Patroni adopting the pair) in {cluster.timings['total_s']:.0f} s: "
             f"{cluster.timings}")
    return data, cluster


def start_app_writer(lab: Lab, params: Params, *, name: str, rate: float,
                     latency: bool = False) -> tuple[Host, app_load.Writer]:
    """The lab's app host (connected, with the CA and the handed-out URLs' 0600 file) and the ActiveRecord writer
    started on it: *rate* inserts a second through the multi-host ``DATABASE_URL`` (*latency*: each timed)."""
    app, urls = hs.open_app_host(lab, params, lab.lab_dir)
    try:
        app_load.put_env_file(app, urls.text)
        writer = app_load.start_ar_writer(app, name=name, rate=rate, pg_async=False, latency=latency)
    except BaseException:
        app.close()
        raise
    return app, writer


def end(lab: Lab, bench: HaBench | None, *, keep: bool) -> None:
    """The app host closed; then the lab kept (its dir printed) or the cluster destroyed and the lab taken down."""
    if bench is not None:
        bench.app.close()
    if keep:
        print(f"lab kept: {lab.lab_dir}")
        return
    if bench is not None:
        hs.destroy_ha_cluster(lab, bench.params, bench.cluster)
    lab.down(purge=True)
