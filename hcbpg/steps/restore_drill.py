"""Step 12 (notebook ``12_restore_drill``): the recorded backup restored onto a scratch host, started and
compared with the primary's fingerprint; the primary is not contacted."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.host import Host
from hcbpg.adapters.site import site_for
from hcbpg.desired.backups import paths_for
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.drill import DrillTarget, RestoreResult, as_server, comparison_rows  # noqa: F401 - the notebook's
from hcbpg.desired.drill_schedule import DRILL_STATE
from hcbpg.desired.textfile_metrics import DRILL_TEXTFILE, TEXTFILE_DIR, render_textfile_metrics
from hcbpg.errors import HcbpgError, HostUnreachable, ParamsError, SafetyCheckFailed
from hcbpg.ops import drill, drill_schedule
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.drill import check_restore, get_auto_conf_text, run_restore  # noqa: F401 - the notebook's calls
from hcbpg.outcome import Outcome
from hcbpg.pg.pgbackrest import restore_options
from hcbpg.steps.install_postgres import install_server
from hcbpg.steps.targets import connect_jumpbox, planning, server_shape  # noqa: F401 - the notebook's call

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params
    from hcbpg.steps.context import Run


def drill_target(params: "Params") -> DrillTarget:
    """The scratch host from params (``drill``: name, private_ip, ssh_host, checksum_tables), else the site's default
    (in the lab drill-1 at .30).

    Refuses any host that is one of params.servers or the app host.
    """
    d = params.drill
    if d is not None:
        tables = d.checksum_tables
        target = DrillTarget(d.name, str(d.private_ip), d.ssh_host, tuple(tables) if tables is not None else None)
    elif (default := site_for(params).default_scratch_host(params)) is not None:
        target = DrillTarget(*default)
    else:
        raise ParamsError("params", ["drill: required for the restore drill: the scratch server "
                                     "(name, private_ip, ssh_host) to restore onto"])
    taken = {s.name: s.private_ip for s in params.servers}
    if params.app_host is not None:
        taken[params.app_host.name] = params.app_host.private_ip
    for name, ip in taken.items():
        if target.name == name or target.private_ip == ip:
            raise SafetyCheckFailed(
                f"the drill's scratch host {target.name} ({target.private_ip}) is {name} ({ip}): a restore "
                "drill wipes its target's data directory and must never run on a real server",
                hint="Set drill.name and drill.private_ip in params to a scratch server of its own.")
    return target


def scratch_host(params: "Params", target: DrillTarget, *, dry_run: bool) -> "HostLike":
    """The scratch host; a site that creates it (the lab) creates it first (a fresh server).  On a dry run
    a recording over it, or an AbsentHost when it does not exist yet (the plan assumes a fresh one)."""
    if not site_for(params).ensure_scratch_host(params, target.name, target.private_ip, dry_run=dry_run):
        return AbsentHost(target.name)
    address = target.ssh_host or target.private_ip
    try:
        return dry_run_of(Host.from_params(params, target.name, address).connect(), dry_run)
    except HostUnreachable:
        if dry_run:
            print(f"[{target.name}] unreachable at {address}: the plan assumes a fresh server")
            return AbsentHost(target.name)
        raise


def prepare_scratch(host: "HostLike", params: "Params", target: DrillTarget, *,
                    version: tuple[int, int, int] | None = None, shape: ServerShape | None = None) -> list[Outcome]:
    """PostgreSQL (step 02's install) and pgBackRest pointed at the primary's repository (read only: restore).

    *shape* is the database servers' type: the scratch cluster gets the capacity settings step 02 gave
    the primary, because recovery refuses to start with ``max_connections``, ``max_worker_processes``
    (and the other settings WAL records) lower than on the server that wrote the backup."""
    server = as_server(params, target)
    outcomes = install_server(host, params, server, shape=shape)
    outcomes.append(pgb.ensure_paths(host, specs=paths_for(params)))
    v = version or pgb.get_installed_version(host)
    outcomes.append(pgb.ensure_pgbackrest_conf(host, params, server, version=v, repo_server=params.primary,
                                               read_only=True))
    return outcomes


def require_fingerprint(fp: Any, *, dry_run: bool = False) -> dict[str, Any]:
    """The fingerprint recorded by step 08, or a clear error (a dry run plans without one)."""
    if dry_run and not (isinstance(fp, dict) and fp.get("backup_label")):
        print("no backup fingerprint recorded yet (step 08 records it): the plan restores the latest backup")
        return {"backup_label": None}
    if not isinstance(fp, dict) or not fp.get("backup_label"):
        raise HcbpgError("no backup fingerprint recorded: step 08_start_archiving records the primary's "
                         "fingerprint with the first full backup",
                         hint="Run step 08_start_archiving first (its record is what the drill compares with).")
    return fp


def get_target(rb: "Run") -> tuple[dict[str, Any], DrillTarget]:
    """The fingerprint step 08 recorded and the scratch host to restore onto; says what will happen."""
    params = rb.params
    fingerprint = require_fingerprint(rb.recall("backup_fingerprint", default=None), dry_run=rb.dry_run)
    target = drill_target(params)
    print(f"restore {fingerprint['backup_label'] or 'the latest backup'} onto {target.name} ({target.private_ip}); "
          f"the primary {params.primary.name} is not contacted")
    return fingerprint, target


def get_plan(host: "HostLike", params: "Params", target: DrillTarget,
             fingerprint: Mapping[str, Any], shape: ServerShape | None = None) -> list[Outcome]:
    """The scratch host's preparation (capacity as the database servers' *shape* renders it), then the
    restore of the recorded backup, planned on a fresh recording of *host*."""
    plan = prepare_scratch(planning(host), params, target, shape=shape)
    plan.append(RestoreResult(target.name, fingerprint["backup_label"], None,
                              restore_options(set_label=fingerprint["backup_label"])).outcome(dry_run=True))
    return plan


def get_point_in_time_target(params: "Params") -> dict[str, str] | None:
    """The point-in-time target params ask for (``drill.target_time`` or ``drill.target_xid``), else None."""
    d = params.drill
    if d is None or not (d.target_time or d.target_xid):
        print("no point-in-time target in params (drill.target_time or drill.target_xid): none restored")
        return None
    return {"target_time": d.target_time} if d.target_time else {"target_xid": d.target_xid or ""}


def run_point_in_time(rb: "Run", host: "HostLike", target: DrillTarget,
                      pitr: Mapping[str, str] | None) -> dict[str, Any] | None:
    """Restore onto the scratch host to the target (it replaces the drill's restore there); what it recovered."""
    if pitr is None:
        return None
    result = drill.run_restore(host, rb.params, target, target_time=pitr.get("target_time"),
                               target_xid=pitr.get("target_xid"))
    rb.track(result.outcome(host.dry_run))
    if host.dry_run:
        return None
    recovered = drill.get_recovered(host, rb.params)
    print(f"recovered to {result.target_time}: last commit replayed {recovered['last_commit']}, "
          f"timeline {recovered['timeline']}")
    return {**result.record(), "recovered": recovered}


def get_record(result: RestoreResult, fingerprint: Mapping[str, Any]) -> dict[str, Any]:
    """The backup used and the time to recover, as recorded (``restore_drill``)."""
    return result.record() | {"backup_type": fingerprint.get("backup_type"),
                              "backup_stop": fingerprint.get("backup_stop")}


def run_mark_drill_success(rb: "Run") -> None:
    """After a drill whose checks passed, with params' alerting and a jumpbox: the drill's end into the jumpbox's
    node exporter textfile (``hcbpg-drill.prom``), which the DrillTooOld rule reads; else nothing."""
    params = rb.params
    if params.alerting is None or params.jumpbox is None or rb.dry_run:
        return
    jb = connect_jumpbox(rb)
    if jb is None:
        return
    try:
        if not jb.probe(f"test -d {TEXTFILE_DIR}").ok:  # before step 15b (the rehearsal's order): as 15b makes it
            ensure_dir(jb, TEXTFILE_DIR, mode=0o755, owner="root")
        now = time.time()
        jb.put_text(DRILL_TEXTFILE, render_textfile_metrics(now=now, drill_success=now), mode=0o644, owner="root")
        print(f"drill success written to {DRILL_TEXTFILE} on {params.jumpbox.name} (rule DrillTooOld)")
    finally:
        jb.close()


def run_scheduled_drill(rb: "Run") -> dict[str, Any] | None:
    """With a jumpbox and pgBackRest in params: the weekly drill installed on the jumpbox
    (:func:`hcbpg.ops.drill_schedule.ensure_drill_schedule`) and run once now, as its cron runs it (the newest
    backup of the next repository in turn, read and verified; its metric written); a failed run fails the step.
    Returns what the run found (None on a dry run or without a jumpbox)."""
    params = rb.params
    if params.jumpbox is None or params.pgbackrest is None:
        print("no jumpbox in params: the weekly drill on the jumpbox is not installed")
        return None
    try:
        jb = connect_jumpbox(rb)
    except HostUnreachable:
        if not rb.dry_run:
            raise
        jb = None
    if jb is None:
        print(f"{params.jumpbox.name} is not reachable yet: the plan installs the weekly drill there")
        return None
    try:
        rb.track(drill_schedule.ensure_drill_schedule(dry_run_of(jb, rb.dry_run), params))
        if rb.dry_run:
            return None
        res = drill_schedule.run_drill_job(jb)
        print(res.output.strip()[-1500:])
        state = json.loads(jb.read_text(DRILL_STATE) or "{}")
        repo = state.get("last_repo")
        return {"repo": repo, **(state.get("repos", {}).get(str(repo), {}))}
    finally:
        jb.close()
