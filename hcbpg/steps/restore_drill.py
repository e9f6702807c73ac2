"""Step 12 (notebook ``12_restore_drill``): the recorded backup restored onto a scratch host, started and
compared with the primary's fingerprint; the primary is not contacted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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
             fingerprint: Mapping[str, Any]) -> list[Outcome]:
    """The scratch host's preparation, then the restore of the recorded backup, planned."""
    plan = drill.prepare_scratch(host, params, target, version=None, dry_run=True)
    plan.append(drill.RestoreResult(target.name, fingerprint["backup_label"], None,
                                    drill.restore_options(set_label=fingerprint["backup_label"])).outcome(dry_run=True))
    return plan


def get_record(result: drill.RestoreResult, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The backup used and the time to recover, as recorded (``restore_drill``)."""
    return result.record() | {"backup_type": fingerprint.get("backup_type"),
                              "backup_stop": fingerprint.get("backup_stop")}
