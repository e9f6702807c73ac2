"""Step 21 (notebook ``21_repository_as_of``, on demand): the way back after an attack on the repository.

The repository as it was at a time T (before the attack) is copied, version by version, into a clean prefix of
the same bucket with the repository's admin key (pgBackRest 2.45 has no ``--repo-target-time``), then restored
from there onto the drill's scratch host (the drill's code path) and checked: what was committed and archived
before T is there.  Nothing is written before the gate; the live repository is never changed.

Either repository (input ``repo``: 1, the default, or 2): its bucket, path, admin key and cipher passphrase; the
copy goes into a clean prefix of that repository's bucket, and the scratch host restores from it as its repo1
(:func:`hcbpg.desired.repo_history.repo_as_repo1`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired.drill import DrillTarget, RestoreResult
from hcbpg.desired.repo_history import AsOfPlan, key_prefix, plan_as_of, plan_as_of_inputs
from hcbpg.ops import drill
from hcbpg.ops import repo_history as ops_rh
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import restore_drill

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params
    from hcbpg.steps.context import Run

#: the step's inputs (``-p as_of=... -p target_prefix=... -p repo=2``)
AS_OF_INPUT, PREFIX_INPUT, REPO_INPUT = "as_of", "target_prefix", "repo"


@dataclass
class AsOf:
    """What the notebook works with: the bucket (admin key), the plan, params pointing at the copy."""

    store: ObjectStore
    plan: AsOfPlan
    params: "Params"   # repo1 at the clean prefix (the chosen repository's bucket and keys): what the restore reads
    repo: int = 1      # which repository of params it goes back in


def connect(rb: "Run", as_of: str, target_prefix: str = "", repo: object = 1) -> AsOf:
    """Read every version under the repository (*repo*: 1 or 2) with its admin key and plan the copy as of *as_of*
    (read only)."""
    i = plan_as_of_inputs(rb.params, as_of, target_prefix, repo)
    store = ObjectStore.from_params(i.source, rb.secret(i.admin_keys[0]), rb.secret(i.admin_keys[1]))
    src = key_prefix(desired_pgbackrest.repo_path(i.source))
    dst = key_prefix(desired_pgbackrest.repo_path(i.target))
    plan = plan_as_of(ops_rh.get_versions(store, src), i.as_of, source_prefix=src, target_prefix=dst)
    return AsOf(store, plan, i.target, i.repo)


def table_of_plan(a: AsOf) -> list[dict[str, Any]]:
    """The plan as a table: what is copied, what did not exist at T, what changed after T."""
    s = a.plan.summary()
    backup_infos = [c for c in a.plan.copies if c.source_key.endswith("/backup.info")]
    return [
        {"what": "as of (T)", "value": s["as_of"]},
        {"what": "repository", "value": f"repo{a.repo}"},
        {"what": "from", "value": f"{a.store.name}/{s['source_prefix']}"},
        {"what": "to (clean prefix)", "value": f"{a.store.name}/{s['target_prefix']}"},
        {"what": "object versions copied", "value": f"{s['objects']} ({s['bytes']} bytes)"},
        {"what": "keys absent at T", "value": s["absent_at_t"]},
        {"what": "keys changed after T (what an attack touched)", "value": s["changed_after_t"]},
        {"what": "backup.info as of T", "value": ", ".join(c.version_id for c in backup_infos) or "none: no backup"},
    ]


def copy(rb: "Run", a: AsOf) -> Outcome:
    """The copy (after the gate): each version into the clean prefix, its marker last."""
    return rb.track(ops_rh.run_copy_as_of(a.store, a.plan, dry_run=rb.dry_run))


def restore(rb: "Run", a: AsOf) -> tuple["HostLike", DrillTarget, RestoreResult]:
    """The drill's scratch host set up on the copy and restored from it (the newest backup there, then every WAL
    segment archived before T), promoted."""
    target = restore_drill.drill_target(a.params)
    host = restore_drill.scratch_host(a.params, target, dry_run=rb.dry_run)
    rb.track(restore_drill.prepare_scratch(host, a.params, target))
    return host, target, drill.run_restore(host, a.params, target, force=True)


def check_restored(host: "HostLike", a: AsOf, result: RestoreResult) -> list[Check]:
    """Promoted, and its last replayed commit at or before T (nothing of after the attack replayed)."""
    rec = drill.get_recovered(host, a.params)
    last = rec.get("last_commit")
    when = dt.datetime.fromisoformat(str(last)) if last else None
    return [Check.of("restored from the copy as of T", result.total_s > 0, f"in {result.total_s}s", host.name),
            Check("last commit recovered at or before T", "warn" if when is None else
                  "pass" if when <= a.plan.as_of else "fail",
                  f"{last or 'none replayed (the backup alone)'} (T {a.plan.as_of.isoformat()})", host.name)]


def get_record(a: AsOf, result: RestoreResult | None) -> dict[str, Any]:
    return {**a.plan.summary(), "repo": a.repo, "restore": result.record() if result is not None else None}
