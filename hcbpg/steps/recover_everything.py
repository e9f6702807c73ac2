"""Production back after losing both database servers (notebook ``22_recover_everything``, on demand, issue 24).

Each phase is another step's code, in the order the runbook ran them; only the decision and the restore's
source are this notebook's own:

1. what is left: each server in the cloud (step 01's reading of the API), over SSH, and what its PostgreSQL
   answers; refused while either answers as a running primary (never two primaries), answers at all (notebooks 20
   and 11 are for a server that answers), or still exists in the cloud (the operator deletes it, unprotecting it
   first: this notebook never deletes a server).  Each repository's ``pgbackrest info`` is read from the jumpbox
   (the one machine left) with the weekly drill's configuration when step 12 installed it, else from the first
   server made again;
2. gate ``recover-everything``: the decision (the recovery time counts from here);
3. step 01: the servers made again through the API (new host keys, generated and pinned as step 01 pins them;
   an existing server's key behind its ``host-key-SERVER-FINGERPRINT`` gate), public SSH closed, protection;
4. steps 02 and 03 on both, step 05's pgBackRest configuration with archiving on (step 08's setting);
5. the restore on the params' primary: the newest backup of the repository whose archive reaches furthest (the
   nearer one among equals: ``-p nearer=N``), replayed to the archive's end and promoted (notebook 20's
   :func:`hcbpg.ops.recover.run_restore_promoted`, its marker), verified;
6. etcd made again (its surviving member on the jumpbox has no quorum and only a lost cluster's state: its data
   moved aside, kept), then step 10: Patroni adopts the recovered primary and makes the other server its replica;
7. the app's URLs handed out again (step 09's file: the same URL when the servers keep their private IPs), the
   URL checked from the app host read-write (the phase ends at the first answer as a primary): the recovery time;
8. after the clock: a full backup of the new timeline (and the backup schedules) on the leader.

A rerun after a failure finds the recovered server's marker and goes on from there without asking again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.dryrun import AbsentHost
from hcbpg.adapters.secretstore import secret_store
from hcbpg.desired import patroni as dp
from hcbpg.desired import recover_everything as dre
from hcbpg.desired.drill_schedule import DRILL_CONF_PATH
from hcbpg.desired.roles import roles_config
from hcbpg.display import show_table
from hcbpg.errors import HcbpgError, SafetyCheckFailed, UsageError
from hcbpg.ops import handout, privileges
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import provisioning as cloud
from hcbpg.ops import recover as ops_recover
from hcbpg.ops import recover_everything as ops_re
from hcbpg.ops.cluster import get_psql
from hcbpg.ops.migration.app_checks import check_url_from_app
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import allow_connections, ha, install_postgres, provision
from hcbpg.steps import pgbackrest as pgbackrest_step
from hcbpg.steps._migration import hand_out_urls
from hcbpg.steps.targets import app_host, connect_jumpbox, connect_servers, lock_environment, server_shape
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.steps.context import Run

__all__ = ["Situation", "ask", "connect", "get_situation", "hand_out_again", "install", "make_ha", "provision_again",
           "restore_newest", "show_situation", "show_times", "take_backup"]

#: the record's name for this notebook's result (the phases' marks, the repository, the newest commit)
RECORD = "recover_everything"


@dataclass
class Situation:
    """What is left before the decision, the repository chosen, and the marks of the phases done so far."""

    api: provision.Api
    seen: list[dre.ServerSeen]
    choice: dre.RepoChoice | None
    refusals: list[str]
    resume: dict[str, Any] | None = None
    marks: dict[str, datetime] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)


def connect(rb: "Run") -> provision.Api:
    """The Hetzner Cloud API client (step 01's); the servers are reached phase by phase."""
    params = rb.params
    if params.jumpbox is None or not dp.managed(params) or params.pgbackrest is None:
        raise UsageError(f"step {rb.step} needs a jumpbox, replication.manager: patroni and pgbackrest in params")
    return provision.connect(rb)


def _nearer(nearer: str) -> int | None:
    text = str(nearer or "").strip().removeprefix("repo")
    if not text:
        return None
    if not text.isdigit():
        raise UsageError(f"-p nearer={nearer}: a repository's index (1 or 2) or empty")
    return int(text)


def get_situation(rb: "Run", api: provision.Api, nearer: str = "") -> Situation:
    """Each server as the cloud, SSH and PostgreSQL show it (nothing changed), the repository to restore from,
    and the refusals; a recovery this notebook started (its marker on a server made again) is resumed."""
    params = rb.params
    existing = cloud.get_existing(api.client, params, ssh_public_key=api.ssh_public_key)
    hosts = connect_servers(rb)
    seen: list[dre.ServerSeen] = []
    resume = None
    try:
        for s in params.servers:
            host = hosts.get(s.name)
            role = None
            if host is not None:
                marker = ops_recover.get_marker(host)
                if marker and marker.get("target") == str(dre.LATEST):
                    resume = marker
                role = ops_re.get_postgres_role(host, params)
            seen.append(dre.ServerSeen(s.name, s.name in existing.servers, host is not None, role))
    finally:
        for h in hosts.values():
            if h is not None:
                h.close()
    choice = None
    jumpbox = connect_jumpbox(rb)
    if jumpbox is not None:
        try:
            decided = ops_re.get_decision(jumpbox)
            if decided is not None and decided.get("finished"):
                resume = None  # recovered before: the servers that answer now are production (refused below)
            elif resume is None and decided is not None:
                # decided and not finished (a failure before the restore): the servers answering are this run's
                resume = decided
            # the weekly drill's configuration (step 12): the servers' keys for every repository, read-only use
            if jumpbox.exists(DRILL_CONF_PATH):
                choice = dre.choose_repo(ops_re.get_repo_reaches(jumpbox, params, config=DRILL_CONF_PATH),
                                         _nearer(nearer))
        finally:
            jumpbox.close()
    if choice is None:
        print(f"the repositories are read from the first server once it is made again (no {DRILL_CONF_PATH} on "
              "the jumpbox: step 12 installs it)")
    refusals = [] if resume is not None else dre.plan_decision(seen)
    if choice is not None and choice.refusals and resume is None:
        refusals += choice.refusals
    return Situation(api, seen, choice, refusals, resume, _marks(resume))


def _marks(resume: Mapping[str, Any] | None) -> dict[str, datetime]:
    raw = (resume or {}).get("marks") or {}
    return {k: datetime.fromisoformat(v) for k, v in raw.items() if isinstance(v, str)}


def show_situation(sit: Situation) -> None:
    show_table([s.row() for s in sit.seen])
    if sit.choice is not None:
        show_table(sit.choice.rows)
        print(sit.choice)
    if sit.resume is not None:
        print(f"a recovery of everything ran before (run {sit.resume.get('run_id')}, {sit.resume.get('finished_at')}):"
              " going on with it, not asked again")
    for r in sit.refusals:
        print(f"refused: {r}")


def ask(rb: "Run", sit: Situation) -> None:
    """Refused plans stop here (nothing changed); else the environment's lock and gate ``recover-everything``: the
    decision, from which the recovery time counts."""
    if sit.refusals:
        raise SafetyCheckFailed("recovering everything is refused: " + "; ".join(sit.refusals),
                                hint="Nothing was changed.")
    lock_environment(rb)
    if sit.resume is not None:
        return
    rb.gate("recover-everything", "Both database servers are lost: make them again through the API, restore production from "
                  + (f"repo{sit.choice.repo} (backup {sit.choice.backup}, WAL to {sit.choice.archive_max})"
                     if sit.choice is not None else "the repository whose archive reaches furthest")
                  + ", and hand the app's URLs out again?",
            plan=[s.name for s in sit.seen] + ([f"repo{sit.choice.repo}"] if sit.choice is not None else []))
    sit.marks["decision"] = datetime.now().astimezone()
    _put_decision(rb, sit, finished=False)


def _put_decision(rb: "Run", sit: Situation, *, finished: bool) -> None:
    """The decision's marker on the jumpbox (the one machine left): a resume after a failure goes on."""
    if rb.dry_run:
        return
    jumpbox = connect_jumpbox(rb)
    if jumpbox is None:
        return
    try:
        ops_re.run_put_decision(jumpbox, {"run_id": rb.run_id, "marks": _iso_marks(sit), "finished": finished})
    finally:
        jumpbox.close()


def _mark(sit: Situation, phase: str) -> None:
    sit.marks.setdefault(phase, datetime.now().astimezone())


def provision_again(rb: "Run", sit: Situation) -> list[Any]:
    """Step 01 as notebook 01 runs it: create what is missing, pin the new host keys, close public SSH, protect."""
    outcomes, servers = provision.ensure_provisioned(sit.api, rb.params, dry_run=rb.dry_run)
    rb.track(outcomes)
    rb.track(provision.ensure_host_keys_pinned(rb, servers))
    rb.track(provision.close_public_ssh(rb, sit.api))
    rb.track(provision.ensure_protected(sit.api, rb.params, dry_run=rb.dry_run))
    rb.verify(provision.check_provisioned(sit.api, rb.params, dry_run=rb.dry_run)
              + provision.check_host_keys(rb.params, dry_run=rb.dry_run), title="step 01's checks")
    rb.record("servers", [s.as_dict() for s in servers])
    _mark(sit, "provisioned")
    return servers


def install(rb: "Run", sit: Situation) -> None:
    """Steps 02 and 03 on both servers, then step 05's pgBackRest configuration with archiving on (step 08's
    setting: the recovered primary's new timeline is archived from its first segment)."""
    params = rb.params
    hosts = install_postgres.connect(rb)
    shape = server_shape(rb)
    install_postgres.apply(rb, hosts, shape)
    rb.verify_applied(install_postgres.check_installed, hosts, params, shape, title="step 02's checks")
    hosts3, app = allow_connections.connect(rb)
    allow_connections.apply(rb, hosts3, app)
    rb.verify_applied(allow_connections.check_allowed, hosts3, params, app, title="step 03's checks")
    for s in params.servers:
        host, _version = pgbackrest_step.connect(rb, s)
        rb.track(pgbackrest_step.configure(host, params, s))
        rb.track(pgb.ensure_archiving(host, params, s, archive_mode=True, restart=False))
    _mark(sit, "installed")


def restore_newest(rb: "Run", sit: Situation, nearer: str = "") -> dict[str, Any]:
    """On the params' primary: the repository chosen (read there now when the jumpbox could not), PostgreSQL
    stopped, notebook 20's restore to the archive's end, promoted, verified; its marker carries the phases."""
    params = rb.params
    server = params.primary
    if rb.dry_run:
        print(f"dry run: {server.name} would be restored from the repository whose archive reaches furthest")
        return {}
    hosts = connect_servers(rb)
    host = hosts.get(server.name)
    if host is None:
        raise SafetyCheckFailed(f"cannot reach {server.name} over SSH after step 01", target=server.name)
    marker = ops_recover.get_marker(host)
    if marker is None or marker.get("target") != str(dre.LATEST):
        choice = dre.choose_repo(ops_re.get_repo_reaches(host, params), _nearer(nearer))
        show_table(choice.rows)
        print(choice)
        if choice.repo is None or choice.refusals:
            raise SafetyCheckFailed("no repository to restore from: " + "; ".join(choice.refusals),
                                    target=server.name, hint="pgbackrest info --repo=N on the jumpbox shows why.")
        sit.choice = choice
        plan = dre.restore_plan(choice, server.name)
        rb.track(ops_re.run_stop_postgres(host, params))  # step 02 started 15/main; no Patroni here yet
        marker = ops_recover.run_restore_promoted(host, params, plan, run_id=rb.run_id, extra={
            "repo": choice.repo, "archive_max": choice.archive_max, "marks": _iso_marks(sit)})
        rb.track(Outcome(f"{server.name} restored from repo{choice.repo} to the archive's end and promoted", True,
                         False, actions=[f"pgbackrest restore {' '.join(plan.options)}",
                                         f"promoted on timeline {marker['timeline']} ({marker['restore_s']} s "
                                         f"restore, {marker['recovery_s']} s recovery)"]))
    recovered = ops_recover.get_recovered(host, params)
    rb.verify([Check.of("recovered server promoted", recovered.get("in_recovery") is False,
                        "accepting writes" if recovered.get("in_recovery") is False else "still in recovery",
                        server.name),
               Check("tables and rows", "pass", f"{len(recovered.get('tables') or {})} table(s), "
                     f"{sum(int(v) for v in (recovered.get('tables') or {}).values())} row(s)", server.name)],
              title="the recovered server, before Patroni leads it")
    print(dre.newest_recovered_note(recovered))
    _mark(sit, "restored")
    marker = {**marker, "marks": _iso_marks(sit)}
    ops_recover.run_put_marker(host, marker)
    for h in hosts.values():
        if h is not None:
            h.close()
    sit.result.update(server=server.name, repo=marker.get("repo"), backup=marker.get("backup"),
                      restore_s=marker.get("restore_s"), recovery_s=marker.get("recovery_s"),
                      last_commit=recovered.get("last_commit"), timeline=marker.get("timeline"))
    return sit.result


def _iso_marks(sit: Situation) -> dict[str, str]:
    return {k: v.isoformat() for k, v in sit.marks.items()}


def make_ha(rb: "Run", sit: Situation) -> ha.HaResult:
    """etcd made again on all three members (the jumpbox's lost cluster moved aside once), then step 10: Patroni
    adopts the recovered primary and makes the other server its replica (the restart under Patroni approved: the
    app has no database until it is done)."""
    params = rb.params
    if rb.dry_run:
        # step 10's plan needs the servers it would change: they are made by this run
        print(f"dry run: etcd made again on {', '.join(s.name for s in params.servers)} and the jumpbox (its lost "
              f"cluster's data moved aside), then step 10: Patroni leads {params.primary.name} (restored) and makes "
              "the other server its replica")
        return ha.HaResult()
    hosts = ha.HaHosts(dict(connect_servers(rb)), connect_jumpbox(rb), params.jumpbox.name if params.jumpbox else "")
    primary = hosts.servers.get(params.primary.name)
    marker = ops_recover.get_marker(primary) if primary is not None else None
    if marker is not None and not marker.get("etcd_fresh"):
        if hosts.jumpbox is None:
            raise SafetyCheckFailed(f"cannot reach {hosts.jumpbox_name}: etcd's third member", target=hosts.jumpbox_name)
        rb.track(ops_re.run_etcd_fresh(hosts.jumpbox, params, suffix=rb.run_id or None))
        assert primary is not None
        ops_recover.run_put_marker(primary, {**marker, "etcd_fresh": True})
    res = ha.setup_ha(hosts, params, ha.secrets(rb), server_shape(rb), allow_destructive=params.allow_destructive,
                      dry_run=False)
    rb.track(res.outcomes)
    rb.verify_applied(ha.check_all, hosts, params, res.before, title="step 10's checks")
    _mark(sit, "patroni (leader and replica)")
    sit.result.update({f"ha_{k}": v for k, v in res.timings.items()})
    return res


def hand_out_again(rb: "Run", sit: Situation) -> None:
    """The app's URLs handed out as step 09 wrote them (the login the recovered database's roles name), then the
    URL from the app host until it answers as a primary: the end of the recovery time."""
    params = rb.params
    cfg = roles_config(params)
    hosts = connect_servers(rb)
    host = hosts.get(params.primary.name)
    if rb.dry_run or host is None:
        print("dry run: the app's URLs would be handed out again" if rb.dry_run else
              f"cannot reach {params.primary.name}: the URLs are not handed out")
        return
    login, password = privileges.get_app_login(get_psql(host, params), cfg)
    urls = hand_out_urls(rb, lambda: handout.get_app_urls(secret_store(False), params, cfg, login=login,
                                                          password=password), "the app")
    _mark(sit, "handed out")
    if urls is None or params.app_host is None:
        print("no app host in params: the URL is not checked from it")
        return
    app = app_host(rb)
    url = urls.values["DATABASE_URL"]
    try:
        check = wait_until(lambda: check_url_from_app(app, params, url), lambda c: c.ok,
                           what="the handed-out DATABASE_URL answering read-write from the app host", timeout=300,
                           interval=1.0, describe=lambda c: c.detail)
    finally:
        app.close()
    _mark(sit, "first write")
    rb.verify([check], title="the app's URL")
    for h in hosts.values():
        if h is not None:
            h.close()


def show_times(rb: "Run", sit: Situation) -> dict[str, Any]:
    """The recovery time per phase (decision -> the handed-out URL answering read-write), recorded with the
    repository and the newest commit recovered."""
    rows = dre.phase_rows(sit.marks)
    if rows:
        show_table(rows)
    if sit.result.get("last_commit") is not None or "server" in sit.result:
        print(dre.newest_recovered_note(sit.result))
    value = {**sit.result, "marks": _iso_marks(sit), "phases": rows}
    if not rb.dry_run:
        rb.record(RECORD, value)
        if "first write" in sit.marks:
            _put_decision(rb, sit, finished=True)
    return value


def take_backup(rb: "Run", sit: Situation) -> dict[str, Any]:
    """After the clock: pgBackRest made ready on the leader (schedules, check) and a full backup of the new
    timeline (a replica made later from the repository needs one of it)."""
    params = rb.params
    if rb.dry_run:
        return {}
    hosts = connect_servers(rb)
    view = ha.get_cluster(ha.HaHosts(dict(hosts), None, ""), params)
    leader = view.leader.name if view is not None and view.leader is not None else params.primary.name
    host = hosts.get(leader)
    if host is None or isinstance(host, AbsentHost):
        raise HcbpgError(f"cannot reach the leader {leader} for its backup")
    try:
        taken = ops_recover.run_timeline_backup(host, params, params.server(leader))
    finally:
        for h in hosts.values():
            if h is not None:
                h.close()
    rb.track(Outcome(f"full backup of the new timeline on {leader}", True, False, actions=[f"took {taken['label']}"]))
    sit.result["timeline_backup"] = taken["label"]
    return taken
