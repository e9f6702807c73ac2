"""Production recovered to a point in time under Patroni (notebook ``20_recover_point_in_time``), and the named
restore points hcbpg creates before the steps that can lose data.

    run_restore_point(host, params, name)      pg_create_restore_point on the primary: name, LSN, time
    get_archiving_on(host, params)             whether the primary archives WAL (a restore point is useful only then)
    run_archive_now(host, params)              a commit and a WAL switch on the primary, waited for in the archive
    get_repo_reach(host, params)               the repository's backups and its newest archived WAL
    run_stop_patroni(host, params)             Patroni stopped (it stops PostgreSQL), PostgreSQL stopped if still up
    run_restore_promoted(host, params, plan)   pgbackrest restore --delta to the target, started, promoted, the
                                               target's settings reset, a marker written
    get_recovered(host, params)                promoted?, timeline, its history file's reason, last commit, rows
    get_marker(host)                           what a finished recovery on *host* wrote
    run_reset_dcs(host, params)                Patroni's keys of the scope removed from etcd (root by certificate)
    get_dcs_config / run_put_dcs_config        Patroni's dynamic configuration, kept across the reset
    run_move_aside(host, params, suffix)       the data directory renamed (kept), an empty one in its place

Everything takes the host first; nothing here decides: :mod:`hcbpg.desired.recover` plans and
:mod:`hcbpg.steps.recover` combines.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import patroni as dp
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired import recover as dr
from hcbpg.desired.certs import CertSpec
from hcbpg.desired.services import patroni_service
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import drill, failover
from hcbpg.ops import etcd as ops_etcd
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.cluster import get_psql
from hcbpg.ops.ha_files import ensure_cert
from hcbpg.outcome import Outcome
from hcbpg.pg.services import systemd_command
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server

#: what a finished recovery leaves on the recovered server (its target, when, the timeline)
MARKER = "/var/lib/postgresql/hcbpg-recovered.json"
#: what a recovery about to stop the cluster writes on the server it restores (its plan: a resume after a failure
#: finds the same server and old leader with no Patroni answering)
PLAN_MARKER = "/var/lib/postgresql/hcbpg-recovering.json"
#: the settings pgBackRest's restore wrote into postgresql.auto.conf that must not outlive the recovery (a replica
#: made of this server later would stop at the target again and promote)
TARGET_SETTINGS = ("recovery_target", "recovery_target_name", "recovery_target_time", "recovery_target_xid",
                   "recovery_target_lsn", "recovery_target_action", "recovery_target_inclusive")
_ROOT_DIR = "/run/hcbpg-etcd-recover"


# restore points -------------------------------------------------------------------------------------------------

def get_archiving_on(host: "HostLike", params: "Params") -> bool:
    """Whether PostgreSQL on *host* archives WAL (archive_mode on, a primary): a restore point is reachable only
    from archived WAL."""
    row = get_psql(host, params).query("SELECT current_setting('archive_mode') AS mode, pg_is_in_recovery() AS r")
    return bool(row) and row[0]["mode"] in ("on", "always") and row[0]["r"] is False


def run_restore_point(host: "HostLike", params: "Params", name: str) -> dict[str, Any]:
    """``pg_create_restore_point(name)`` on the primary *host*: the point's name, LSN and time (the record's)."""
    row = get_psql(host, params).query(
        sql.SQL("SELECT pg_create_restore_point({})::text AS lsn, now()::text AS at").format(sql.Literal(name)))
    return {"name": name, "lsn": row[0]["lsn"], "at": row[0]["at"], "server": host.name}


def run_archive_now(host: "HostLike", params: "Params", *, timeout: float = 180) -> dict[str, Any]:
    """On the primary *host*: a transaction (a commit record at now, so a time target before it is reached) and a
    WAL switch, waited for until the archiver reports that segment archived; the time and the next xid."""
    psql = get_psql(host, params)
    xid = int(psql.value("SELECT pg_current_xact_id()::text AS x"))
    row = psql.query("SELECT pg_walfile_name(pg_switch_wal()) AS seg, now()::text AS at")[0]
    seg = row["seg"]

    def archived() -> str:
        return str(psql.value("SELECT coalesce(last_archived_wal, '') AS w FROM pg_stat_archiver"))

    wait_until(archived, lambda w: len(w) == 24 and w >= seg, what=f"WAL segment {seg} archived",  # noqa: PLR2004
               timeout=timeout, interval=0.5, describe=lambda w: f"last archived {w or 'none'}",
               hint=f"`pgbackrest check` on {host.name} shows why archiving is stuck.")
    return {"archived_through": row["at"], "segment": seg, "next_xid": xid + 1}


def get_ancestry(host: "HostLike", params: "Params") -> dict[int, int | None]:
    """The timelines the primary *host*'s current one descends from, and where each ended (its history file)."""
    psql = get_psql(host, params)
    tl = int(str(psql.value("SELECT pg_walfile_name(pg_current_wal_lsn()) AS w"))[:8], 16)
    text = psql.value(sql.SQL("SELECT pg_read_file({}) AS t").format(sql.Literal(f"pg_wal/{tl:08X}.history"))) \
        if tl > 1 else ""
    return dr.parse_ancestry(tl, str(text or ""))


def get_repo_reach(host: "HostLike", params: "Params") -> dr.RepoReach:
    stanza = params.pgbackrest.stanza if params.pgbackrest else params.postgres.database
    return dr.parse_repo_reach(pgb.get_info_json(host, params), stanza)


# stopping, restoring, verifying ---------------------------------------------------------------------------------

def run_stop_patroni(host: "HostLike", params: "Params") -> Outcome:
    """Patroni stopped on *host* (it stops its PostgreSQL as it ends) and, under systemd, not started at the next
    boot (it would rewind or rebuild the data left intact; starting it again enables it); PostgreSQL stopped too if
    it still runs.  The data directory is left as it is."""
    seen = Changes(host)
    control = ServiceControl.of(host)
    spec = patroni_service(params)
    control.ensure_stopped(spec)
    if control.systemd:
        host.run(systemd_command("disable", spec), display=f"systemctl disable {spec.name} (not at the next boot)")
    cluster = ClusterControl.of(host, params)
    if not host.dry_run and cluster.running():
        cluster.stop("fast", timeout=300)
    return seen.outcome(f"Patroni and PostgreSQL stopped on {host.name}")


def get_marker(host: "HostLike", path: str = MARKER) -> dict[str, Any] | None:
    """The recovered server's marker (or, with *path* PLAN_MARKER, the plan a recovery started with)."""
    text = host.read_text(path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def run_restore_promoted(host: "HostLike", params: "Params", plan: dr.RestorePlan, *, run_id: str | None,
                         extra: Mapping[str, Any] | None = None, timeout: float = 3600,
                         archive_now: bool = True) -> dict[str, Any]:
    """On *host* (Patroni and PostgreSQL stopped): ``pgbackrest restore`` with *plan*'s options (the data
    directory reused), PostgreSQL started outside Patroni and waited for until promoted at the target, the target's
    settings reset in postgresql.auto.conf, the marker written.  Refused while Patroni or PostgreSQL runs.
    *archive_now* False: the new timeline's first segment is not archived here (the caller does it with
    :func:`run_archive_now` before anything restores from the archive; notebook 22 after its clock)."""
    control = ClusterControl.of(host, params)
    if ops_patroni.get_patroni_running(host, params) or control.running():
        raise SafetyCheckFailed(f"on {host.name}: Patroni or PostgreSQL still runs; the restore replaces its data",
                                target=host.name, hint="The step stops both first; run it again.")
    started = time.monotonic()
    host.run(f"rm -f {MARKER}")
    pgb.run_pgbackrest(host, params, "restore", *plan.options, timeout=timeout)
    restore_s = time.monotonic() - started
    t = time.monotonic()
    control.start("--", "-t", str(int(timeout)), timeout=timeout + 60)
    psql = get_psql(host, params)
    drill.wait_for_promotion(psql, timeout=timeout)
    recovery_s = time.monotonic() - t
    psql.execute([f"ALTER SYSTEM RESET {s}" for s in TARGET_SETTINGS] + ["SELECT pg_reload_conf()"])
    # the new timeline's first segment (the one it branched in) archived before anything restores from the archive:
    # else a replica restoring it finds only the old timeline's segment there, replays the old leader's WAL past the
    # target (PostgreSQL tries the older timeline for a segment the newer one has not archived yet, and stays on it)
    archived = run_archive_now(host, params) if archive_now else {"segment": None}
    marker = {"target": str(plan.target), "server": host.name, "backup": plan.backup, "run_id": run_id,
              "restore_s": round(restore_s, 1), "recovery_s": round(recovery_s, 1),
              "finished_at": datetime.now().astimezone().isoformat(),
              "timeline": psql.value("SELECT timeline_id FROM pg_control_checkpoint() AS t"),
              "archived_segment": archived["segment"], **(extra or {})}
    run_put_marker(host, marker)
    return marker


def run_put_marker(host: "HostLike", marker: Mapping[str, Any], path: str = MARKER) -> None:
    """The recovered server's marker (what it was recovered to, by which run, whether it was verified), or the
    plan's (*path* PLAN_MARKER)."""
    host.put_text(path, json.dumps(dict(marker), indent=1) + "\n", mode=0o644, owner="postgres")


def get_recovered(host: "HostLike", params: "Params") -> dict[str, Any]:
    """What the recovered server holds: whether it is in recovery, its timeline and that timeline's history file
    (PostgreSQL wrote why recovery stopped there), the last replayed commit's time, rows per table."""
    psql = get_psql(host, params)
    out = drill.get_recovered(host, params)
    out["in_recovery"] = psql.value("SELECT pg_is_in_recovery() AS r")
    tl = int(out.get("timeline") or 0)
    history = None
    if tl > 1:
        text = psql.value(sql.SQL("SELECT pg_read_file({}) AS t").format(sql.Literal(f"pg_wal/{tl:08X}.history")))
        history = dr.parse_history_file(str(text or ""))
    out["history"] = history
    return out


# Patroni's state in etcd ----------------------------------------------------------------------------------------

def get_dcs_config(host: "HostLike", params: "Params", server: "Server") -> dict[str, Any]:
    """Patroni's dynamic configuration (GET /config) as the member *server* reads it from etcd."""
    data = ops_patroni.get_api(host, params, server).get_json("/config", ok=(200,))
    return dict(data) if isinstance(data, Mapping) else {}


def wait_for_dcs_config(host: "HostLike", params: "Params", server: "Server", *, timeout: float = 120) -> dict[str, Any]:
    """GET /config until it answers 200: a member that has just initialised the scope has not written its
    configuration yet (Patroni answers 502 until then)."""
    api = ops_patroni.get_api(host, params, server)

    def probe() -> tuple[int, str]:
        return api.get("/config", timeout_s=5)

    status, body = wait_until(probe, lambda r: r[0] == 200, what=f"Patroni's configuration on {server.name}",  # noqa: PLR2004
                              timeout=timeout, interval=1.0, describe=lambda r: f"GET /config answered {r[0]}")
    data = json.loads(body)
    return dict(data) if isinstance(data, Mapping) else {}


def run_put_dcs_config(host: "HostLike", params: "Params", server: "Server", config: Mapping[str, Any]) -> Outcome:
    """PATCH /config with what differs from *config* (kept from before the reset: a scope adopted anew starts
    from bootstrap's values only when Patroni initialises a cluster, never when it adopts one)."""
    seen = Changes(host)
    current = wait_for_dcs_config(host, params, server) if not host.dry_run else {}
    patch = {k: v for k, v in config.items() if current.get(k) != v}
    if patch:
        ops_patroni.get_api(host, params, server).patch("/config", patch, display=f"PATCH /config on {server.name} "
                                                        f"(the dynamic configuration as before the recovery)")
        if not host.dry_run:
            # Patroni applies it in its next loop by rewriting postgresql.conf in place: a psql --cluster reading
            # the file meanwhile fails ('Invalid data directory for cluster 15 main', seen in the lab)
            time.sleep(2 * dp.patroni_params(params).loop_wait + 1)
    return seen.outcome(f"Patroni's dynamic configuration on {server.name}",
                        diff=json.dumps(patch, indent=1, sort_keys=True) if patch else "")


def get_dcs_keys(host: "HostLike", params: "Params") -> list[str]:
    """The keys under the scope's prefix in etcd (asked as root: the member's certificate may read nothing)."""
    return [k for k in _as_root(host, params, "get", "--prefix", "--keys-only", _prefix(params), read=True)
            .splitlines() if k.strip()]


def run_reset_dcs(host: "HostLike", params: "Params") -> Outcome:
    """Patroni's keys of the scope removed from etcd (what ``patronictl remove`` does): the leader, the members,
    the initialize key with the system identifier, the history, the status.  Only with Patroni stopped on every
    member: the recovered server's Patroni then initialises the scope from its running primary."""
    seen = Changes(host)
    _as_root(host, params, "del", "--prefix", _prefix(params), read=False)
    return seen.outcome(f"Patroni's state in etcd ({_prefix(params)}) removed")


def _prefix(params: "Params") -> str:
    return f"{dp.NAMESPACE}{dp.patroni_params(params).scope}/"


def _as_root(host: "HostLike", params: "Params", *args: str, read: bool) -> str:
    """etcdctl *args* with a one-day root certificate made for this call and removed after (as step 10 sets
    authentication up): Patroni's user reads by password, which hcbpg never puts on a command line."""
    ensure_cert(host, params, CertSpec("root", server=False, client=True), f"{_ROOT_DIR}/root.crt",
                f"{_ROOT_DIR}/root.key", owner="root", days=1, what="etcd's root certificate (removed after)",
                dir_mode=0o700)
    try:
        ctl = ops_etcd.get_etcdctl(host, params, cert=f"{_ROOT_DIR}/root.crt", key=f"{_ROOT_DIR}/root.key")
        if read:
            return host.probe(ctl.command(*args)).stdout
        return ctl.run_ctl(*args, display=f"etcdctl {' '.join(args)} (as root, by certificate)").stdout
    finally:
        host.run(f"rm -rf {_ROOT_DIR}", quiet=True, display=f"remove {_ROOT_DIR} (etcd's root certificate)")


def run_timeline_backup(host: "HostLike", params: "Params", server: "Server") -> dict[str, Any]:
    """A full backup on the recovered leader *host*, of its new timeline: a replica made from the repository
    restores the newest backup, and a backup taken after the target on the old timeline is no ancestor of the new
    one (PostgreSQL refuses it: 'requested timeline N is not a child of this server's history').  pgBackRest is
    made ready there first (configuration, archiving, stanza, schedules, its check), as after a failover."""
    outcomes, checks = failover.run_point_backups_at(host, params, server, archive_mode=True, full_backup=False)
    bad = [c for c in checks if not c.ok]
    if bad:
        raise SafetyCheckFailed(f"pgBackRest on {server.name} before its full backup: "
                                + "; ".join(f"{c.name}: {c.detail}" for c in bad), target=server.name)
    row = pgb.run_backup(host, params, type="full")
    return {"label": row.label, "stop": row.stop, "changed": [o.what for o in outcomes if o.changed]}


# the old leader -------------------------------------------------------------------------------------------------

def run_move_aside(host: "HostLike", params: "Params", suffix: str) -> str:
    """The data directory renamed to ``<data>.<suffix>`` (kept, intact) and an empty one made in its place
    (postgres, 0700), for Patroni to create a replica in; refused while Patroni or PostgreSQL runs."""
    data = desired_pgbackrest.pg_data_path(params)
    aside = f"{data}.{suffix}"
    if ops_patroni.get_patroni_running(host, params) or ClusterControl.of(host, params).running():
        raise SafetyCheckFailed(f"on {host.name}: Patroni or PostgreSQL runs; its data directory stays",
                                target=host.name, hint="Nothing was moved.")
    if host.exists(aside):
        raise SafetyCheckFailed(f"on {host.name}: {aside} exists already", target=host.name,
                                hint="Remove or rename it by hand after reading it; nothing was moved.")
    host.run(f"mv {shlex.quote(data)} {shlex.quote(aside)} && install -d -m 0700 -o postgres -g postgres "
             f"{shlex.quote(data)}", display=f"move {data} aside to {aside} (kept) and make an empty {data}")
    return aside
