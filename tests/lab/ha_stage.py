"""An HA cluster in a lab, as step 10_high_availability makes it (issue 28): the primary stage's clone, a replica
and the jumpbox (etcd's third voter), the pair replicating the manual way first, then Patroni adopting it.

What ``tests/lab/test_ha_steps.py`` does through the CLI, done here by calling the step's code directly
(``hcbpg.steps.ha.setup_ha``, the gated restart approved at once), for modules and benchmarks that need a
running cluster rather than the step itself (``tests/lab/test_ha_failover.py``, ``bench/failover.py``):

    data = ha_params_data(lab, replica_offset=71, jumpbox_offset=72, scope="hcb-failover")
    params = parse_params(data)
    cluster = build_ha_cluster(lab, primary_stage, params)   # hosts made, pair adopted, sync standby named
    ...
    destroy_ha_cluster(lab, params, cluster)

The primary is the stage's (its name and address are what the snapshot's configuration names); the replica and
the jumpbox take the offsets given: pick ones no other module of the same worker uses at the same time (modules
of one worker run one after another and destroy their hosts at their end).  No test functions here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hcbpg.adapters.cloud import make_client
from hcbpg.adapters.host import Host
from hcbpg.desired import migration as dm
from hcbpg.desired import patroni as dp
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.patroni import ClusterView, PatroniSecrets
from hcbpg.lab import Lab, app_load, create_server_host, destroy_server_host
from hcbpg.ops import failover as fo
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import tls as tls_ops
from hcbpg.ops.provisioning import get_server_shape
from hcbpg.params import Params
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import ha
from hcbpg.steps import install_postgres as install_step

from labparams import LAB_PATRONI, ensure_secret_file, lab_params, pgbackrest_section, replication_section
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, PrimaryStage, side_by_side

REPLICA = "server-postgres-2"
JUMPBOX = "hcb-jumpbox"

#: the app's table, as the lab source has it (what ``hcbpg/lab/ar_load.rb`` inserts into)
EVENTS_SQL = ("CREATE TABLE IF NOT EXISTS public.events (id bigserial PRIMARY KEY, user_id bigint NOT NULL, "
              "name varchar NOT NULL, properties jsonb NOT NULL DEFAULT '{}', created_at timestamp(6) NOT NULL);\n"
              "ALTER TABLE public.events OWNER TO rails;\n")


def ha_params_data(lab: Lab, *, replica_offset: int, jumpbox_offset: int, scope: str,
                   repo_path_prefix: str | None = None, **patroni_overrides: Any) -> dict:
    """Params (a dict) for the stage's primary, a replica at *replica_offset* and the jumpbox at *jumpbox_offset*
    of the lab's subnet, ``replication.manager: patroni`` with *scope*; *patroni_overrides* go into
    ``replication.patroni`` (``synchronous_mode=False``, ``ttl=...``).  pgBackRest's repository path is the scope's
    own unless *repo_path_prefix* says otherwise (the S3 store is the lab's, shared by every module)."""
    cfg = lab.cfg
    for name in ("patroni-rest-password", "etcd-patroni-password"):
        ensure_secret_file(cfg.secret_path(name))
    servers = [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary"),
               (REPLICA, cfg.address(replica_offset), "replica")]
    jb_ip = cfg.address(jumpbox_offset)
    patroni = {"scope": scope, "rest_password": f"file:{cfg.secret_path('patroni-rest-password')}",
               "watchdog": "off", "create_replica_methods": ["pgbackrest", "basebackup"], "bin": LAB_PATRONI,
               **patroni_overrides}
    return lab_params(
        lab, servers,
        pgbackrest=pgbackrest_section(lab, repo_path_prefix=repo_path_prefix or f"/pgbackrest-{scope}"),
        replication=replication_section(
            lab, manager="patroni", connection_limit=5, patroni=patroni,
            etcd={"patroni_password": f"file:{cfg.secret_path('etcd-patroni-password')}"}),
        jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip},
        allow_destructive=True)


@dataclass
class HaCluster:
    """The cluster's machines (open Hosts: both servers, then the jumpbox) and what building it took."""

    servers: dict[str, Host]
    jumpbox: Host
    shape: ServerShape
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def hosts(self) -> dict[str, Host]:
        """Every machine by name: the servers (params order) and the jumpbox."""
        return {**self.servers, JUMPBOX: self.jumpbox}

    def close(self) -> None:
        for h in self.hosts.values():
            h.close()


def patroni_secrets(params: Params) -> PatroniSecrets:
    """Patroni's passwords from params' references (as the step reads them)."""
    rep = params.replication
    assert rep is not None and rep.etcd is not None, "replication.manager patroni has replication.etcd"
    etcd = rep.etcd
    return PatroniSecrets(rest_password=resolve(dp.patroni_params(params).rest_password,
                                                key="replication.patroni.rest_password"),
                          etcd_password=resolve(etcd.patroni_password, key="replication.etcd.patroni_password"),
                          replication_password=resolve(rep.password, key="replication.password"))


def lab_shape(params: Params) -> ServerShape:
    """The server type as the lab's API stand-in reports it (what step 10's notebook reads)."""
    return get_server_shape(make_client(params, resolve(params.hetzner.token, key="hetzner.token")), params)


def build_ha_cluster(lab: Lab, primary_stage: PrimaryStage, params: Params, *,
                     echo: Callable[[str], None] = lambda _s: None) -> HaCluster:
    """The three hosts made (the primary from the stage), steps 02-03 on the replica, pgBackRest and archiving on
    the primary, then step 10's code: the manual pair (``setup_replication``, inside ``setup_ha``) adopted by
    Patroni over etcd on three members, the restart approved at once, the sync standby named (when synchronous
    mode).  The app's ``events`` table exists on the leader.  Hosts already made are destroyed on a failure."""
    assert params.jumpbox is not None and params.primary.name == STAGE_PRIMARY
    replica = next(s for s in params.servers if s.name != STAGE_PRIMARY)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    made: list[str] = []
    hosts: dict[str, Host] = {}
    try:
        primary_stage.clone()
        made.append(STAGE_PRIMARY)
        create_server_host(replica.name, replica.private_ip, [key], lab_dir=str(lab.lab_dir))
        made.append(replica.name)
        create_server_host(JUMPBOX, params.jumpbox.private_ip, [key], lab_dir=str(lab.lab_dir))
        made.append(JUMPBOX)
        timings["hosts_s"] = round(time.monotonic() - t0, 1)
        for s in params.servers:
            hosts[s.name] = Host.from_params(params, s.name, s.private_ip, echo=echo).connect()
        jumpbox = Host.from_params(params, JUMPBOX, params.jumpbox.private_ip, echo=echo).connect()
        hosts[JUMPBOX] = jumpbox
        t1 = time.monotonic()

        def replica_02_03() -> None:
            install_step.install_server(hosts[replica.name], params, replica)
            allow_step.allow_connections(hosts[replica.name], params, replica)

        # the replica's steps 02-03 beside the primary's pgBackRest with its first backup (different machines)
        _, (_, checks) = side_by_side(
            replica_02_03,
            lambda: fo.run_point_backups_at(hosts[STAGE_PRIMARY], params, params.primary, archive_mode=True))
        bad = [c for c in checks if not c.ok]
        if bad:
            raise AssertionError(f"pgBackRest on the primary: {bad}")
        timings["replica_02_03_backup_s"] = round(time.monotonic() - t1, 1)
        shape = lab_shape(params)
        t2 = time.monotonic()
        servers = {s.name: hosts[s.name] for s in params.servers}
        result = ha.setup_ha(ha.HaHosts(dict(servers), jumpbox, JUMPBOX), params, patroni_secrets(params), shape,
                             allow_destructive=True, dry_run=False, restart_approved=lambda: True, echo=echo)
        timings["setup_ha_s"] = round(time.monotonic() - t2, 1)
        timings.update({f"ha_{k}": v for k, v in result.timings.items()})
        view = ops_patroni.get_cluster(servers, params)
        if view is None or view.leader is None or view.leader.name != STAGE_PRIMARY:
            raise AssertionError(f"after setup_ha: {view}")
        servers[STAGE_PRIMARY].run(f"psql -X -q -v ON_ERROR_STOP=1 -d {params.postgres.database} -f -",
                                   sudo_user="postgres", stdin=EVENTS_SQL)
        timings["total_s"] = round(time.monotonic() - t0, 1)
        return HaCluster(servers, jumpbox, shape, timings)
    except BaseException:
        for h in hosts.values():
            h.close()
        for name in made:
            destroy_server_host(name, lab_dir=str(lab.lab_dir))
        raise


@contextlib.contextmanager
def running_ha_cluster(lab: Lab, primary_stage: PrimaryStage, params: Params) -> Iterator[HaCluster]:
    """:func:`build_ha_cluster` for a module (what it took printed), destroyed at its end: the body of each HA
    module's ``cluster`` fixture."""
    t0 = time.monotonic()
    c = build_ha_cluster(lab, primary_stage, params)
    print(f"\nHA cluster built in {time.monotonic() - t0:.0f} s: {c.timings}")
    try:
        yield c
    finally:
        destroy_ha_cluster(lab, params, c)


def open_app_host(lab: Lab, params: Params, where: Path) -> tuple[Host, dm.AppUrls]:
    """The lab's app host (connected) with the CA where the handed-out URL says, and the handed-out URLs (rendered
    under *where*: ``DATABASE_URL`` for the app role, both servers, target_session_attrs=read-write)."""
    host = Host.from_params(params, "app", lab.cfg.app_ip, echo=lambda _s: None).connect()
    try:
        tls_ops.ensure_client_ca(host, params)
        password = resolve(params.postgres.app_role_password, key="postgres.app_role_password")
        urls = dm.render_role_urls(params, {"DATABASE_URL": ("rails", password)},
                                   path=where / "app-database-urls.env", target="the lab app")
    except BaseException:
        host.close()
        raise
    return host, urls


def destroy_ha_cluster(lab: Lab, params: Params, cluster: HaCluster | None) -> None:
    """Close the cluster's hosts and destroy the three (whatever runs in them ends with them)."""
    if cluster is not None:
        cluster.close()
    for name in (*(s.name for s in params.servers), JUMPBOX):
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


def leader_name(cluster: HaCluster, params: Params) -> str | None:
    """The leader as ``GET /cluster`` says (None: no member answers or no leader)."""
    view = ops_patroni.get_cluster(cluster.servers, params)
    return view.leader.name if view is not None and view.leader is not None else None


# measuring an event (the failure tests and bench/failover.py) ------------------------------------------------

def now_ms() -> int:
    """Wall-clock milliseconds: the writers' logs are stamped with it (the lab's hosts share the machine's clock)."""
    return int(time.time() * 1000)


def query_json(host: Host, params: Params, sql: str) -> Any:
    """One query's JSON answer from the app's database on *host* (psql as postgres over the socket, SQL on stdin)."""
    out = host.run(f"psql -X -At -v ON_ERROR_STOP=1 -d {params.postgres.database} -f -", sudo_user="postgres",
                   stdin=sql, quiet=True).stdout
    return json.loads(out.strip() or "null")


def missing_acks(host: Host, params: Params, log: app_load.LoadLog) -> list[str]:
    """Every insert the writer's log acknowledged that *host* (the leader) lacks (``app_load.lost_writes``; the
    query is ``render_found_sql``'s without its ``transactions`` half: this database has only ``events``)."""
    ids = ",".join(map(str, log.inserted)) or "0"
    found = query_json(host, params, "SELECT json_build_object('inserted', (SELECT coalesce(json_agg(id), '[]') "
                                     f"FROM public.events WHERE id = ANY ('{{{ids}}}'::bigint[])))")
    return app_load.lost_writes(log, found or {})


def promoted_ms(host: Host, params: Params, server_name: str) -> int | None:
    """When the newest timeline began (``GET /history``'s last line, as the new leader *server_name* says), in
    wall-clock milliseconds; None when the history has no time."""
    history = ops_patroni.get_history(host, params, params.server(server_name))
    if not history or not history[-1].timestamp:
        return None
    return int(datetime.fromisoformat(history[-1].timestamp).timestamp() * 1000)


def wait_rejoined(servers: Mapping[str, Host], params: Params, name: str, *, timeout: float = 120.0,
                  interval: float = 0.25) -> tuple[int, ClusterView]:
    """GET /cluster (from the members in *servers*) until *name* is a replica that runs, lag 0, on the leader's
    timeline; when that was first seen (wall-clock ms) and the view."""
    deadline = time.monotonic() + timeout
    last: ClusterView | None = None
    while time.monotonic() < deadline:
        last = ops_patroni.get_cluster(servers, params)
        m = last.member(name) if last is not None else None
        leader = last.leader if last is not None else None
        if (last is not None and m is not None and leader is not None and not m.is_leader and m.state in dp.RUNNING_STATES
                and m.lag == 0 and m.timeline is not None and m.timeline == leader.timeline):
            return now_ms(), last
        time.sleep(interval)
    rows = "; ".join(f"{r['Member']} {r['Role']} {r['State']} TL {r['TL']} lag {r['Lag in MB']}"
                     for r in last.rows()) if last is not None else "no member answers"
    why = ""
    if last is not None and last.leader is not None and last.leader.name == name:
        # seen in the lab (2 of 17 cuts), likely Patroni 3.0.2's etcd3 code: a serializable read of a healed etcd
        # member that has not caught up shows the old leader key, and the leader key is put unconditionally
        why = (f" -- {name} holds the leader key again after the heal (likely Patroni 3.0.2: an unconditional put "
               "of the leader key once its lease is renewed, patroni#2689, after a serializable read of a healed "
               "etcd member that had not caught up, patroni#3318)")
    raise AssertionError(f"{name} did not rejoin within {timeout:.0f} s: {rows}{why}")


def wait_for_acks_on(app: Host, writer: app_load.Writer, server_ip: str, since_ms: int, *, count: int = 1,
                     timeout: float = 60.0) -> list[app_load.Ack]:
    """The writer's acks from *server_ip* stamped at or after *since_ms*, once there are *count* of them."""
    deadline = time.monotonic() + timeout
    acks: list[app_load.Ack] = []
    while time.monotonic() < deadline:
        acks = [a for a in app_load.read_writer_log(app, writer).acks if a.t_ms >= since_ms and a.server == server_ip]
        if len(acks) >= count:
            return acks
        time.sleep(0.2)
    log = app_load.read_writer_log(app, writer)
    err = [e for e in log.errors if e.t_ms >= since_ms]
    raise AssertionError(f"{len(acks)} ack(s) from {server_ip} within {timeout:.0f} s after the event; "
                         f"{len(err)} error(s) since: {sorted({e.cls for e in err})}")


@dataclass
class EventFigures:
    """What one event cost, seen from the app (times in seconds from *t0*, the fault or the request).

    gap_s: the longest stretch without an acknowledged write between 1 s before t0 and 1 s after the first ack on
    the new leader; first_ack_s: t0 to that first ack; promoted_s: t0 to the new timeline's start (GET /history);
    lost: acknowledged writes missing on the new leader; split_brain: writes the old leader acknowledged after its
    lease could have ended (t0 + ttl - loop_wait) or after the new leader's first ack; rejoined_s: t0 to the old
    leader streaming again, lag 0, on the new timeline."""

    event: str
    old_leader: str
    new_leader: str
    t0_ms: int
    gap_s: float
    first_ack_s: float
    promoted_s: float | None
    lost: int
    split_brain: int
    rejoined_s: float | None = None
    acks: int = 0
    errors: int = 0
    isolated_acks: int = 0

    def row(self) -> dict[str, Any]:
        return asdict(self)


def measure(event: str, *, t0_ms: int, log: app_load.LoadLog, old: tuple[str, str], new: tuple[str, str],
            lost: int, promoted_at_ms: int | None, lease_end_ms: int | None,
            local: app_load.LoadLog | None = None, rejoined_at_ms: int | None = None) -> EventFigures:
    """The figures of one event from the app writer's *log* (and the old leader's own *local* writer's), *old* and
    *new* as (name, address)."""
    new_acks = [a for a in log.acks if a.t_ms >= t0_ms and a.server == new[1]]
    if not new_acks:
        raise AssertionError(f"{event}: no ack from the new leader {new[0]}")
    first = new_acks[0].t_ms
    old_acks = [a for a in log.acks if a.t_ms >= t0_ms and a.server == old[1]]
    isolated = [a for a in (local.acks if local is not None else []) if a.t_ms >= t0_ms]
    late = [a for a in (*old_acks, *isolated)
            if a.t_ms > first or (lease_end_ms is not None and a.t_ms > lease_end_ms)]
    window = [a for a in log.acks if t0_ms - 1000 <= a.t_ms <= first + 1000]
    return EventFigures(
        event=event, old_leader=old[0], new_leader=new[0], t0_ms=t0_ms,
        gap_s=app_load.longest_gap_ms(window, since_ms=t0_ms - 1000, until_ms=first + 1000) / 1000,
        first_ack_s=(first - t0_ms) / 1000,
        promoted_s=None if promoted_at_ms is None else (promoted_at_ms - t0_ms) / 1000,
        lost=lost, split_brain=len(late),
        rejoined_s=None if rejoined_at_ms is None else (rejoined_at_ms - t0_ms) / 1000,
        acks=len([a for a in log.acks if a.t_ms >= t0_ms and a.t_ms <= first + 1000]),
        errors=len([e for e in log.errors if t0_ms <= e.t_ms <= first]), isolated_acks=len(isolated))


__all__ = ["EVENTS_SQL", "JUMPBOX", "REPLICA", "STAGE_PRIMARY", "STAGE_PRIMARY_OFFSET", "EventFigures", "HaCluster",
           "build_ha_cluster", "destroy_ha_cluster", "ha_params_data", "lab_shape", "leader_name", "measure",
           "missing_acks", "now_ms", "open_app_host", "patroni_secrets", "promoted_ms", "query_json",
           "running_ha_cluster", "wait_for_acks_on", "wait_rejoined"]
