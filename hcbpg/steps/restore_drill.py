"""Step 12 (notebook ``12_restore_drill``): the recorded backup restored onto a scratch host, started and
compared with the primary's fingerprint; the primary is not contacted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.desired.capacity import ServerShape
from hcbpg.ops import drill
from hcbpg.ops.drill import (  # noqa: F401 - the notebook's calls
    comparison_rows,
    prepare_scratch,
    read_auto_conf_text,
    run_restore,
    scratch_host,
    verify_restore,
)
from hcbpg.outcome import Outcome
from hcbpg.steps.targets import server_shape  # noqa: F401 - the notebook's call

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def get_target(rb: "Run") -> tuple[dict[str, Any], drill.DrillTarget]:
    """The fingerprint step 08 recorded and the scratch host to restore onto; says what will happen."""
    params = rb.params
    fingerprint = drill.require_fingerprint(rb.recall("backup_fingerprint", default=None), dry_run=rb.dry_run)
    target = drill.drill_target(params)
    print(f"restore {fingerprint['backup_label'] or 'the latest backup'} onto {target.name} ({target.private_ip}); "
          f"the primary {params.primary.name} is not contacted")
    return fingerprint, target


def get_plan(host: "Host | None", params: "Params", target: drill.DrillTarget,
             fingerprint: Mapping[str, Any], shape: ServerShape | None = None) -> list[Outcome]:
    """The scratch host's preparation (capacity as the database servers' *shape* renders it), then the
    restore of the recorded backup, planned."""
    plan = drill.prepare_scratch(host, params, target, version=None, dry_run=True, shape=shape)
    plan.append(drill.RestoreResult(target.name, fingerprint["backup_label"], None,
                                    drill.restore_options(set_label=fingerprint["backup_label"])).outcome(dry_run=True))
    return plan


def get_point_in_time_target(params: "Params") -> dict[str, str] | None:
    """The point-in-time target params ask for (``drill.target_time`` or ``drill.target_xid``), else None."""
    d = params.drill
    if d is None or not (d.target_time or d.target_xid):
        print("no point-in-time target in params (drill.target_time or drill.target_xid): none restored")
        return None
    return {"target_time": d.target_time} if d.target_time else {"target_xid": d.target_xid or ""}


def run_point_in_time(rb: "Run", host: "Host | None", target: drill.DrillTarget,
                      pitr: Mapping[str, str] | None) -> dict[str, Any] | None:
    """Restore onto the scratch host to the target (it replaces the drill's restore there); what it recovered."""
    if pitr is None:
        return None
    result = drill.run_restore(host, rb.params, target, dry_run=rb.dry_run, target_time=pitr.get("target_time"),
                               target_xid=pitr.get("target_xid"))
    rb.track(result.outcome(rb.dry_run))
    if rb.dry_run or host is None:
        return None
    recovered = drill.get_recovered(host, rb.params)
    print(f"recovered to {result.target_time}: last commit replayed {recovered['last_commit']}, "
          f"timeline {recovered['timeline']}")
    return {**result.record(), "recovered": recovered}


def get_record(result: drill.RestoreResult, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The backup used and the time to recover, as recorded (``restore_drill``)."""
    return result.record() | {"backup_type": fingerprint.get("backup_type"),
                              "backup_stop": fingerprint.get("backup_stop")}
