"""The online transfer's way back and clean-up: the primary's changes recorded from 06b (armed), synced
back to the source from 09b until the period ends, then Bucardo removed from the source, the target
and the primary (16), with the source's foreign keys as they were."""

from __future__ import annotations

import datetime
import json
import time
from typing import TYPE_CHECKING

from hcbpg import clock
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.textfile_metrics import TEXTFILE_DIR, WAYBACK_TEXTFILE, render_textfile_metrics
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops.migration import bucardo_service as bs
from hcbpg.ops.migration.bucardo import HOME, ensure_running, get_state, run_bucardo, run_stop
from hcbpg.ops.migration.source import get_source_writer, get_target
from hcbpg.ops.migration.window import get_held_snapshots, run_release_snapshots
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import bucardo as bp
from hcbpg.pg import templates

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import EndpointLike, HostLike, SourceLike
    from hcbpg.params import Params

__all__ = ["CUSTOMCODE", "DEFERRED_FILE", "UNTIL_FILE", "check_removed", "ensure_way_back", "ensure_way_back_armed",
           "get_leftovers", "get_way_back", "run_cleanup"]

#: when the way back ends (UTC, ISO), and the foreign keys it made deferrable on the source
UNTIL_FILE = f"{HOME}/way-back-until"
DEFERRED_FILE = f"{HOME}/deferrable-fks.json"
#: our customcode for the owner-only target (the source's role only owns its tables)
CUSTOMCODE = "hcbpg_owner_only"
CUSTOMCODE_FILE = f"{HOME}/{CUSTOMCODE}.pl"


def get_way_back(host: "HostLike") -> str | None:
    """When the way back ends (UTC), or None when it is not set up."""
    text = host.read_text(UNTIL_FILE, sudo_user="postgres")
    return text.strip() if text else None


def ensure_way_back_armed(host: "HostLike", params: "Params", source: "SourceLike", plan: bp.SyncPlan) -> Outcome:
    """06b, before the window: the way back's sync added, inactive. Adding it puts Bucardo's triggers on
    the primary's tables, so every change made there from now on is recorded, above all every write
    of the app once traffic is on, even before 09b starts the sync. Bucardo's own forward writes run
    as ``session_replication_role = replica`` and fire no trigger: nothing of the forward sync is
    recorded to go back."""
    what = f"way back armed: changes on {params.postgres.database} ({host.name}) recorded from now on"
    seen = Changes(host)
    if bp.BACK_SYNC not in get_state(host, params)["syncs"]:
        *objects, customcode = bp.render_back_sync_commands(plan, source_dbname=source.conn.get("dbname", ""),
                                                            customcode=CUSTOMCODE, customcode_file=CUSTOMCODE_FILE)
        for st in objects:
            run_bucardo(host, st)
        host.put_text(CUSTOMCODE_FILE, templates.render_script("bucardo-owner-only.pl",
                                                               {"PREFIX": bp.OWNER_ONLY_PREFIX}),
                      mode=0o600, owner="postgres")
        run_bucardo(host, customcode)
    return seen.outcome(what)


def ensure_way_back(host: "HostLike", params: "Params", source: "SourceLike", plan: bp.SyncPlan) -> Outcome:
    """09b, traffic on: the forward sync ended (its schema and triggers dropped on the source), then the
    way back armed in 06b started, until the period ends: it applies every change the primary recorded
    since the window, then each new one. The source's role only owns its tables: our customcode
    replaces session_replication_role by deferred foreign keys.  Refused when it was not armed."""
    src = params.source
    assert src is not None
    what = f"way back: {params.postgres.database} on {host.name} -> the source"
    state = get_state(host, params)
    back = state["syncs"].get(bp.BACK_SYNC)
    if back is None:
        raise SafetyCheckFailed(f"on {host.name}: the way back was not armed before the window (no sync "
                                f"{bp.BACK_SYNC}): the writes made on the primary since traffic went on were not "
                                "recorded and cannot be synced back", hint="A rollback to Heroku now would lose "
                                "them. Decide with the team: stay on the new primary, or plan a reverse migration.")
    seen = Changes(host)
    bs.ensure_service(host, source)  # tmpfs: gone if the primary restarted since 06b
    if back.get("status") == "active":
        ensure_running(host, params)
        _ensure_wayback_metric(host, params, get_way_back(host))
        return seen.outcome(what, actions=[f"sync {bp.BACK_SYNC} runs, until {get_way_back(host)}", *seen.made])
    until = time.time() + src.online.way_back_hours * 3600
    until_s = datetime.datetime.fromtimestamp(until, datetime.timezone.utc).strftime(clock.FORMAT)
    with source:
        fks = source.json(bp.NOT_DEFERRABLE_FKS_SQL) or []
        run_stop(host, params)
        if bp.FORWARD_SYNC in state["syncs"]:
            run_bucardo(host, f"remove sync {bp.FORWARD_SYNC}")
        on_source = get_source_writer(host, source)
        on_source.execute([f"DROP SCHEMA IF EXISTS {bp.SCHEMA} CASCADE"])
        host.put_text(DEFERRED_FILE, json.dumps(fks) + "\n", mode=0o600, owner="postgres")
        on_source.execute(bp.render_deferrable(fks, deferrable=True))
    run_bucardo(host, f"validate {bp.BACK_SYNC}")
    run_bucardo(host, f"update sync {bp.BACK_SYNC} status=active")
    host.put_text(UNTIL_FILE, until_s + "\n", mode=0o600, owner="postgres")
    _ensure_wayback_metric(host, params, until_s)
    ensure_running(host, params)
    actions = ["bucardo stop", f"bucardo remove sync {bp.FORWARD_SYNC}; its schema bucardo (delta tables, triggers) "
               "dropped on the source",
               f"{len(fks)} foreign keys on the source made DEFERRABLE INITIALLY IMMEDIATE (restored by the clean-up)",
               f"bucardo validate {bp.BACK_SYNC}", f"bucardo update sync {bp.BACK_SYNC} status=active",
               "bucardo start", f"until {until_s} (source.online.way_back_hours)"]
    if plan.in_window:
        actions.append(f"NOT synced back (no key): {', '.join(plan.in_window)}")
    return seen.outcome(what, actions=actions)


def _ensure_wayback_metric(host: "HostLike", params: "Params", until_s: str | None) -> None:
    """With a monitor (params' alerting): the way back's end in node exporter's textfile on the primary, a file of
    its own (rule WayBackPastEnd); the clean-up removes it."""
    if params.alerting is None or not until_s:
        return
    text = render_textfile_metrics(now=0.0, wayback_until=clock.parse_time(until_s).timestamp())
    if host.read_text(WAYBACK_TEXTFILE) == text:
        return
    if not host.probe(f"test -d {TEXTFILE_DIR}").ok:  # before step 15b: as 15b makes it on a database server
        ensure_dir(host, TEXTFILE_DIR, mode=0o755, owner="postgres")
    host.put_text(WAYBACK_TEXTFILE, text, mode=0o644, owner="postgres")


# clean-up -----------------------------------------------------------------------------------------

def get_leftovers(endpoint: "EndpointLike") -> dict[str, list[str]]:
    """Bucardo's objects (triggers, functions, delta tables, its schema) in the database of *endpoint*."""
    return endpoint.json(bp.LEFTOVERS_SQL) or {}


def run_cleanup(host: "HostLike", params: "Params", source: "SourceLike") -> tuple[Outcome, list[dict[str, str]]]:
    """Bucardo removed everywhere: daemon, its schema in the source and the target (triggers, functions,
    delta tables), the source's foreign keys as they were, the control database and role, its files.
    Returns the outcome and what was found to remove (where, what)."""
    removed: list[dict[str, str]] = []
    with source:
        on_source = get_leftovers(source)
        fks = json.loads(host.read_text(DEFERRED_FILE, sudo_user="postgres") or "[]")
        on_target = get_leftovers(get_target(host, params))
        for where, found in (("source", on_source), (f"{params.postgres.database} on {host.name}", on_target)):
            removed += [{"where": where, "what": f"{k[:-1]} {n}"} for k, v in found.items() for n in v]
        removed += [{"where": "source", "what": f"foreign key {fk['table']}.{fk['name']} NOT DEFERRABLE again"}
                    for fk in fks]
        state = get_state(host, params)
        if state["control_db"]:
            removed.append({"where": host.name, "what": f"database {bp.CONTROL_DB}, role bucardo"})
        files = any(bs.get_present(host, p) for p in (bs.SERVICE_FILE, bs.SERVICE_LINK, HOME))
        if files:
            removed.append({"where": host.name, "what": f"{bs.SERVICE_FILE}, {bs.SERVICE_LINK}, {HOME}"})
        try:  # 09b never ran: the window's snapshots are still held (the primary's vacuum waits on them)
            held = get_held_snapshots(host)
        except SafetyCheckFailed:  # a hold that never completed: nothing to end
            held = None
        if held:
            removed.append({"where": f"source and {host.name}", "what": "the sessions holding the window's snapshots"})
        if removed:
            if held:
                run_release_snapshots(host, params, source, held)
            if state["control_db"]:
                run_stop(host, params)
            get_source_writer(host, source).execute([f"DROP SCHEMA IF EXISTS {bp.SCHEMA} CASCADE"]
                                                + bp.render_deferrable(fks, deferrable=False))
    if removed:
        get_target(host, params).execute([f"DROP SCHEMA IF EXISTS {bp.SCHEMA} CASCADE"])
        get_target(host, params, "postgres").execute([f"DROP DATABASE IF EXISTS {bp.CONTROL_DB} WITH (FORCE)",
                                                  "DROP ROLE IF EXISTS bucardo"])
        host.run(f"rm -rf {HOME} {bs.SERVICE_DIR} {bs.SERVICE_LINK}", quiet=True)
    if params.alerting is not None and host.probe(f"test -e {WAYBACK_TEXTFILE}").ok:  # the monitor's WayBackPastEnd
        removed.append({"where": host.name, "what": WAYBACK_TEXTFILE})
        host.run(f"rm -f {WAYBACK_TEXTFILE}", quiet=True)
    # changed is what was found, not the journal: opening the source writes its service file on the primary
    return Outcome("Bucardo removed", bool(removed), host.dry_run,
                   actions=[f"{r['where']}: {r['what']}" for r in removed]), removed


def check_removed(host: "HostLike", params: "Params", source: "SourceLike") -> list[Check]:
    """After the clean-up: nothing of Bucardo on the source, the target or the primary's cluster."""
    with source:
        checks = [bp.check_no_leftovers("source", get_leftovers(source))]
    checks.append(bp.check_no_leftovers(f"{params.postgres.database} on {host.name}",
                                        get_leftovers(get_target(host, params))))
    state = get_state(host, params)
    checks.append(Check.of("no Bucardo control database or daemon", not state["control_db"] and not state["running"],
                           "gone" if not state["control_db"] else f"database {bp.CONTROL_DB} still there", host.name))
    checks.append(Check.of("no Bucardo files", not any(bs.get_present(host, p) for p in (bs.SERVICE_DIR, bs.SERVICE_LINK, HOME)),
                           "gone", host.name))
    return checks
