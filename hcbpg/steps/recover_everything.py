"""Production back after losing both database servers (notebook ``22_recover_everything``, on demand, issue 24).

Each phase is another step's code; only the decision, the restore's source and the order are this notebook's own.
The order puts on the clock only what depends on the data: everything else is provisioning, made before the
restore, and the replica comes after the clock.

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
5. what of step 10 does not need the data (:func:`hcbpg.steps.ha.prepare_ha`): etcd made again on the three
   members (the jumpbox's surviving member has no quorum and only a lost cluster's state: its data moved aside,
   kept, once: the decision's marker says so), Patroni's packages, watchdog, TLS and files on both servers,
   start.conf manual; nothing started under Patroni.  Steps 3-5 are provisioning (the same whatever the data);
6. the restore on the params' primary (on the clock): the newest backup of the repository chosen before the gate
   from the jumpbox (both servers are gone: nothing archives, the choice cannot have changed; read on the server
   only when the jumpbox could not), replayed to the archive's end and promoted (notebook 20's
   :func:`hcbpg.ops.recover.run_restore_promoted`, its marker), verified;
7. Patroni leads it (:func:`hcbpg.steps.ha.lead_restored`): started beside the running primary, it adopts it
   (``-p lead=adopt``, the default and the faster: no restart, no new timeline) or, with ``-p lead=restart``,
   starts it itself after a fast stop; a restart left pending is made before the URL is handed out;
8. the app's URLs handed out again (step 09's file: the same URL when the servers keep their private IPs), then a
   transaction committed through the URL from the app host: the end of the recovery time;
9. after the clock (each phase marked, the notebook not done without them): the other server's own cluster moved
   aside and Patroni started there (it creates the replica from the repository, create_replica_methods), a commit
   through the URL while it is being built (synchronous mode, not strict: the leader writes without a sync
   standby), then step 10 as its second run (dynamic configuration, streaming, the sync standby, backups from
   the standby) and its checks; a full backup of the new timeline on the leader.

A rerun after a failure finds the decision's marker (before the restore) or the recovered server's (after it) and
goes on from there without asking again.
"""

from __future__ import annotations

import time
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
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import provisioning as cloud
from hcbpg.ops import recover as ops_recover
from hcbpg.ops import recover_everything as ops_re
from hcbpg.ops.cluster import get_psql
from hcbpg.outcome import Check, Outcome
from hcbpg.steps import allow_connections, ha, install_postgres, provision
from hcbpg.steps import pgbackrest as pgbackrest_step
from hcbpg.steps._migration import hand_out_urls
from hcbpg.steps.targets import (
    app_host,
    connect_jumpbox,
    connect_servers,
    lock_environment,
    server_host,
    server_shape,
)
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.steps.context import Run

__all__ = ["Situation", "ask", "complete_ha", "connect", "get_situation", "hand_out_again", "install", "lead",
           "prepare_ha", "provision_again", "restore_newest", "show_situation", "show_times", "take_backup"]

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
    #: the handed-out DATABASE_URL (holds the password: never recorded or shown)
    app_url: str | None = field(default=None, repr=False)
    #: the params' primary, opened once for the phases on the clock (each SSH connection through the jumpbox costs)
    primary_host: Any = field(default=None, repr=False)


def _primary_host(rb: "Run", sit: Situation) -> Any:
    """The params' primary over SSH, opened once per kernel (a resume opens it again)."""
    if sit.primary_host is None:
        sit.primary_host = server_host(rb, rb.params.primary)
    return sit.primary_host


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
    marks: dict[str, datetime] = {}
    jumpbox = connect_jumpbox(rb)
    if jumpbox is not None:
        try:
            decided = ops_re.get_decision(jumpbox)
            if decided is not None and decided.get("finished"):
                resume = None  # recovered before: the servers that answer now are production (refused below)
            elif decided is not None:
                # decided and not finished (a failure before the restore, or after the clock): the servers
                # answering are this run's; the marks written after the clock ended are kept
                marks = _marks(decided)
                resume = resume if resume is not None else decided
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
    return Situation(api, seen, choice, refusals, resume, {**marks, **_marks(resume)} if resume is not None else {})


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
    _put_decision(rb, sit, finished=False, new=True)


def _put_decision(rb: "Run", sit: Situation, *, finished: bool, new: bool = False, **extra: Any) -> None:
    """The decision's marker on the jumpbox (the one machine left): a resume after a failure goes on.  A *new*
    decision starts a marker afresh; else what it holds (etcd made again) is kept."""
    if rb.dry_run:
        return
    jumpbox = connect_jumpbox(rb)
    if jumpbox is None:
        return
    try:
        kept = {} if new else (ops_re.get_decision(jumpbox) or {})
        ops_re.run_put_decision(jumpbox, {**kept, **extra, "run_id": rb.run_id, "marks": _iso_marks(sit),
                                          "finished": finished})
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
    host = _primary_host(rb, sit)
    if host is None:
        raise SafetyCheckFailed(f"cannot reach {server.name} over SSH after step 01", target=server.name)
    parts: dict[str, float] = {}
    t = time.monotonic()
    marker = ops_recover.get_marker(host)
    if marker is None or marker.get("target") != str(dre.LATEST):
        # chosen before the gate from the jumpbox: both servers are gone, nothing archives since, it holds
        choice = sit.choice
        if choice is None or choice.repo is None:
            choice = dre.choose_repo(ops_re.get_repo_reaches(host, params), _nearer(nearer))
            show_table(choice.rows)
        print(choice)
        if choice.repo is None or choice.refusals:
            raise SafetyCheckFailed("no repository to restore from: " + "; ".join(choice.refusals),
                                    target=server.name, hint="pgbackrest info --repo=N on the jumpbox shows why.")
        sit.choice = choice
        plan = dre.restore_plan(choice, server.name)
        rb.track(ops_re.run_stop_postgres(host, params))  # stopped in provisioning already (prepare_ha)
        parts["before_restore_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        # the new timeline's first segment is archived after the clock, before the replica restores from the archive
        marker = ops_recover.run_restore_promoted(host, params, plan, run_id=rb.run_id, archive_now=False, extra={
            "repo": choice.repo, "archive_max": choice.archive_max, "marks": _iso_marks(sit)})
        parts["restore_promoted_s"] = round(time.monotonic() - t, 2)
        rb.track(Outcome(f"{server.name} restored from repo{choice.repo} to the archive's end and promoted", True,
                         False, actions=[f"pgbackrest restore {' '.join(plan.options)}",
                                         f"promoted on timeline {marker['timeline']} ({marker['restore_s']} s "
                                         f"restore, {marker['recovery_s']} s recovery)"]))
    t = time.monotonic()
    recovered = ops_re.get_promoted(host, params)  # the row counts after the clock: they grow with the data
    parts["verify_s"] = round(time.monotonic() - t, 2)
    rb.verify([Check.of("recovered server promoted", recovered.get("in_recovery") is False,
                        "accepting writes" if recovered.get("in_recovery") is False else "still in recovery",
                        server.name),
               Check("timeline", "pass", f"{recovered.get('timeline')} (the restore's own)", server.name)],
              title="the recovered server, before Patroni leads it")
    print(dre.newest_recovered_note(recovered))
    _mark(sit, "restored")
    marker = {**marker, "marks": _iso_marks(sit)}
    ops_recover.run_put_marker(host, marker)
    sit.result.update(server=server.name, repo=marker.get("repo"), backup=marker.get("backup"),
                      restore_s=marker.get("restore_s"), recovery_s=marker.get("recovery_s"),
                      last_commit=recovered.get("last_commit"), timeline=marker.get("timeline"),
                      **{f"restored_{k}": v for k, v in parts.items()})
    return sit.result


def _iso_marks(sit: Situation) -> dict[str, str]:
    return {k: v.isoformat() for k, v in sit.marks.items()}


def _ha_hosts(rb: "Run") -> ha.HaHosts:
    params = rb.params
    return ha.HaHosts(dict(connect_servers(rb)), connect_jumpbox(rb), params.jumpbox.name if params.jumpbox else "")


def _close(hosts: ha.HaHosts) -> None:
    for h in [*hosts.servers.values(), hosts.jumpbox]:
        close = getattr(h, "close", None)  # the Hosts connect_servers and connect_jumpbox opened
        if close is not None:
            close()


def prepare_ha(rb: "Run", sit: Situation) -> ha.HaResult:
    """Provisioning still (nothing of it needs the data): etcd made again on all three members (the jumpbox's lost
    cluster moved aside once: the decision's marker says so), then what of step 10 does not need the data
    (Patroni's packages, watchdog, TLS, files; start.conf manual); nothing started under Patroni."""
    params = rb.params
    if rb.dry_run:
        # the servers are made by this run: step 10's plan needs them
        print(f"dry run: etcd made again on {', '.join(s.name for s in params.servers)} and the jumpbox (its lost "
              "cluster's data moved aside), Patroni's packages and files on both servers; nothing started")
        return ha.HaResult()
    hosts = _ha_hosts(rb)
    try:
        if hosts.jumpbox is None:
            raise SafetyCheckFailed(f"cannot reach {hosts.jumpbox_name}: etcd's third member", target=hosts.jumpbox_name)
        primary = hosts.servers.get(params.primary.name)
        old = ops_recover.get_marker(primary) if primary is not None else None  # a run before this order kept it there
        if not (ops_re.get_decision(hosts.jumpbox) or {}).get("etcd_fresh") and not (old or {}).get("etcd_fresh"):
            rb.track(ops_re.run_etcd_fresh(hosts.jumpbox, params, suffix=rb.run_id or None))
            _put_decision(rb, sit, finished=False, etcd_fresh=True)
        res = ha.prepare_ha(hosts, params, ha.secrets(rb), server_shape(rb), dry_run=False)
        rb.track(res.outcomes)
        if primary is not None and (old or {}).get("target") != str(dre.LATEST):
            # step 02's fresh cluster on the primary: the restore replaces it (not yet restored: no marker)
            rb.track(ops_re.run_stop_postgres(primary, params))
    finally:
        _close(hosts)
    _mark(sit, "ha prepared")
    return res


#: how Patroni is handed the restored primary (-p lead=...): adopt it running, or start it after a fast stop
LEAD_MODES = ("adopt", "restart")


def lead(rb: "Run", sit: Situation, how: str = "adopt") -> ha.HaResult:
    """On the clock: Patroni started on the restored primary and waited for until it leads, running, with no
    restart pending (:func:`hcbpg.steps.ha.lead_restored`); ``how``: ``adopt`` (PostgreSQL running: no restart, no
    new timeline) or ``restart`` (stopped fast, started by Patroni)."""
    params = rb.params
    if how not in LEAD_MODES:
        raise UsageError(f"-p lead={how}: one of {', '.join(LEAD_MODES)}")
    if rb.dry_run:
        print(f"dry run: Patroni started on {params.primary.name} "
              + ("beside the running restored primary (it adopts it)" if how == "adopt" else
                 "after a fast stop (it starts the restored primary itself)") + ", waited for as the leader")
        return ha.HaResult()
    # only the primary: Patroni's API answers there (the other server is not under Patroni yet)
    hosts = ha.HaHosts({params.primary.name: _primary_host(rb, sit)}, None, params.jumpbox.name if params.jumpbox
                       else "")
    res = ha.lead_restored(hosts, params, params.primary, stop_first=how == "restart", dry_run=False)
    rb.track(res.outcomes)
    _mark(sit, "patroni leads")
    ha.show_cluster(hosts, params)
    sit.result.update({f"lead_{k}": v for k, v in res.timings.items()}, lead=how,
                      restart_pending=res.restart_pending)
    if res.before.get(params.primary.name):
        sit.result["system_identifier"] = res.before[params.primary.name]
    return res


def hand_out_again(rb: "Run", sit: Situation) -> None:
    """The app's URLs handed out as step 09 wrote them (the login the recovered database's roles name), then a
    transaction committed through the URL from the app host (retried until it commits): the end of the recovery
    time."""
    params = rb.params
    cfg = roles_config(params)
    if rb.dry_run:
        print("dry run: the app's URLs would be handed out again")
        return
    host = _primary_host(rb, sit)
    if host is None:
        print(f"cannot reach {params.primary.name}: the URLs are not handed out")
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
    sit.app_url = url
    try:
        check = wait_until(lambda: ops_re.check_commit_from_app(app, params, url), lambda c: c.ok,
                           what="a commit through the handed-out DATABASE_URL from the app host", timeout=300,
                           interval=0.5, describe=lambda c: c.detail)
    finally:
        app.close()
    _mark(sit, dre.RECOVERED)
    rb.verify([check], title="the app's URL")


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
        if dre.RECOVERED in sit.marks:
            # finished once the last phase after the clock is done: a failure before it resumes (not refused)
            _put_decision(rb, sit, finished=dre.AFTER_CLOCK[-1] in sit.marks)
    return value


def _after_restore(rb: "Run", sit: Situation, host: "HostLike") -> None:
    """After the clock, before the replica: the new timeline's first segment archived (a replica restoring from the
    archive must find it there, else it replays the lost leader's WAL past the branch), once (the marker says so);
    the rows of every table counted (what the restore brought back, grows with the data: off the clock)."""
    params = rb.params
    marker = ops_recover.get_marker(host) or {}
    if marker.get("target") == str(dre.LATEST) and not marker.get("archived_segment"):
        archived = ops_recover.run_archive_now(host, params)
        rb.track(Outcome(f"the new timeline's WAL archived on {host.name}", True, False,
                         actions=[f"pg_switch_wal: {archived['segment']} archived"]))
        ops_recover.run_put_marker(host, {**marker, "archived_segment": archived["segment"]})
    recovered = ops_recover.get_recovered(host, params)
    tables = recovered.get("tables") or {}
    rb.verify([Check("tables and rows", "pass", f"{len(tables)} table(s), {sum(int(v) for v in tables.values())} "
                     "row(s)", host.name)], title="what the restore brought back")
    sit.result["tables"] = len(tables)


def complete_ha(rb: "Run", sit: Situation) -> ha.HaResult:
    """After the clock: the other server's own cluster (step 02's) moved aside, kept, and Patroni started there: it
    creates the leader's replica (create_replica_methods: from the repository, else pg_basebackup); a commit through
    the handed-out URL while the replica is being built (synchronous mode is not strict: the leader writes without
    a sync standby); the replica streaming; then step 10 as its second run (dynamic configuration, the sync
    standby, backups from the standby) and step 10's checks."""
    params = rb.params
    if rb.dry_run:
        print(f"dry run: {', '.join(s.name for s in params.servers if s.name != params.primary.name)} made the "
              f"replica of {params.primary.name} under Patroni, then step 10's second run and its checks")
        return ha.HaResult()
    hosts = _ha_hosts(rb)
    try:
        leader = ha.get_cluster(hosts, params)
        name = leader.leader.name if leader is not None and leader.leader is not None else params.primary.name
        leader_host = hosts.servers.get(name)
        if leader_host is None:
            raise SafetyCheckFailed(f"cannot reach the leader {name}", target=name)
        sysid = ha.get_system_identifier(leader_host, params)
        before = {name: sysid}
        _after_restore(rb, sit, leader_host)
        t0 = time.monotonic()
        others = [s for s in params.servers if s.name != name]
        for s in others:
            host = hosts.servers.get(s.name)
            if host is None:
                raise SafetyCheckFailed(f"cannot reach {s.name}: its replica is not made", target=s.name)
            rb.track(ops_re.run_make_room(host, params, sysid, suffix=f"fresh-{rb.run_id or 'adhoc'}"))
            rb.track(ops_patroni.ensure_patroni_running(host, params))
        checks = []
        if sit.app_url is not None and params.app_host is not None:
            # the replica's member listed first (Patroni shows it 'creating replica' while it restores), so the
            # commit below is made while it is being built; its state then is said with the check
            view = wait_until(lambda: ha.get_cluster(hosts, params),
                              lambda v: v is not None and all(v.member(s.name) is not None for s in others),
                              what="the replica's member listed by Patroni", timeout=120, interval=0.3,
                              describe=lambda v: "no member answers" if v is None else
                              ", ".join(m.name for m in v.members))
            states = ", ".join(f"{s.name} {m.state if m else 'not listed'}" for s in others
                               for m in [view.member(s.name) if view else None])
            app = app_host(rb)
            try:
                c = ops_re.check_commit_from_app(app, params, sit.app_url)
            finally:
                app.close()
            checks.append(Check(c.name + " while the replica is being built", c.status,
                                f"{c.detail}; then: {states}", c.target))
        for s in others:
            ops_patroni.wait_for_member(hosts.servers, params, s.name,
                                        lambda m: m.state in dp.RUNNING_STATES and m.lag is not None,
                                        what=f"{s.name} streaming under Patroni", timeout=1800)
        sit.result["ha_replica_s"] = round(time.monotonic() - t0, 1)
        res = ha.setup_ha(hosts, params, ha.secrets(rb), server_shape(rb), allow_destructive=params.allow_destructive,
                          dry_run=False)
        rb.track(res.outcomes)
        if checks:
            rb.verify(checks, title="the app writes while the replica is being built")
        _mark(sit, "replica streaming")
        rb.verify_applied(ha.check_all, hosts, params, before, title="step 10's checks")
        _mark(sit, "ha checked")
    finally:
        _close(hosts)
    sit.result.update({f"ha_{k}": v for k, v in res.timings.items()})
    return res


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
    _mark(sit, "timeline backup")
    if sit.primary_host is not None:
        sit.primary_host.close()
        sit.primary_host = None
    return taken
