"""What each server is right now, and who is primary: ``pg_controldata`` and the live server
read into a :class:`~hcbpg.desired.topology.ServerState`, and the topology derived from all of
them (the planning itself, pure, is :mod:`hcbpg.desired.topology`)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg.desired.replication import bin_path
from hcbpg.desired.topology import (  # noqa: F401 - ServerState, Topology and Plan: the types of these operations
    DEFAULT_DATABASE_OIDS,
    Plan,
    ServerState,
    Topology,
    plan_topology,
)
from hcbpg.errors import (
    DatabaseError,
    HostUnreachable,
    SafetyCheckFailed,
)
from hcbpg.ops import cluster as pg_cluster
from hcbpg.pg.conf import parse_auto_conf
from hcbpg.pg.controldata import parse_controldata

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server


def get_controldata(host: "HostLike", params: "Params", pgdata: str) -> dict[str, str]:
    res = host.probe(f"{bin_path(params, 'pg_controldata')} -D {shlex.quote(pgdata)}")
    return parse_controldata(res.stdout) if res.ok else {}


def get_server_state(host: "HostLike | None", params: "Params", server: "Server") -> ServerState:
    """Inspect *server* without changing anything (*host* None: SSH cannot reach it → ``reachable=False``;
    an :class:`~hcbpg.adapters.dryrun.AbsentHost`: reachable, no cluster yet)."""
    st = ServerState(server.name, server.private_ip)
    if host is None:
        st.reachable = False
        st.error = "no SSH connection"
        return st
    try:
        cluster = pg_cluster.get_cluster(host, params)
    except HostUnreachable as exc:
        st.reachable, st.error = False, exc.message
        return st
    if cluster is None:
        return st
    st.cluster_exists = True
    st.pgdata = cluster.get("pgdata")
    st.running = bool(cluster.get("running"))
    q = shlex.quote(st.pgdata or "/nonexistent")
    st.standby_signal = host.probe(f"test -e {q}/standby.signal").ok
    if st.running:
        psql = pg_cluster.get_psql(host, params)
        try:
            row = psql.query(
                "SELECT pg_is_in_recovery() AS in_recovery, "
                "(SELECT system_identifier::text FROM pg_control_system()) AS sysid, "
                "(SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_tli, "
                "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "  AND pid <> pg_backend_pid()) AS clients, "
                "(SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database "
                "  WHERE datname NOT IN ('postgres', 'template0', 'template1')) AS dbs, "
                "(SELECT coalesce(json_agg(application_name ORDER BY application_name), '[]') "
                "  FROM pg_stat_replication WHERE state = 'streaming') AS streaming_to, "
                "current_setting('primary_conninfo') AS primary_conninfo, "
                "current_setting('primary_slot_name') AS primary_slot_name")[0]
        except DatabaseError as exc:
            st.error = exc.message
            return st
        st.in_recovery = bool(row["in_recovery"])
        st.system_identifier = row["sysid"]
        st.timeline = int(row["checkpoint_tli"])
        st.client_connections = int(row["clients"])
        st.databases = list(row["dbs"])
        st.streaming_to = list(row["streaming_to"])
        st.primary_conninfo = row["primary_conninfo"] or ""
        st.primary_slot_name = row["primary_slot_name"] or ""
        if st.in_recovery:
            wr = psql.query("SELECT status, sender_host, slot_name, received_tli FROM pg_stat_wal_receiver")
            if wr:
                st.receiver_status = wr[0]["status"]
                st.receiver_host = wr[0]["sender_host"]
                st.receiver_slot = wr[0]["slot_name"]
                if wr[0]["received_tli"]:
                    st.timeline = max(st.timeline or 0, int(wr[0]["received_tli"]))
        else:
            # the current timeline of a primary (the checkpoint's may lag right after promotion)
            tli = psql.value("SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int AS t")
            if tli:
                st.timeline = int(tli)
        return st
    ctl = get_controldata(host, params, st.pgdata or "")
    st.system_identifier = ctl.get("Database system identifier")
    tli = ctl.get("Latest checkpoint's TimeLineID")
    st.timeline = int(tli) if tli and tli.isdigit() else None
    st.control_state = ctl.get("Database cluster state")
    st.in_recovery = st.standby_signal
    res = host.probe(f"ls -1 {q}/base")
    if res.ok:
        st.databases = [f"oid {d}" for d in res.stdout.split() if d not in DEFAULT_DATABASE_OIDS and d.isdigit()]
    auto = host.read_text(f"{st.pgdata}/postgresql.auto.conf") or ""
    settings = parse_auto_conf(auto)
    st.primary_conninfo = settings.get("primary_conninfo", "")
    st.primary_slot_name = settings.get("primary_slot_name", "")
    return st


def get_topology(hosts: Mapping[str, "HostLike | None"], params: "Params") -> tuple[Topology, dict[str, ServerState]]:
    """Ask every server what it is (pg_is_in_recovery, timeline, databases) and pick the current primary."""
    states = {s.name: get_server_state(hosts.get(s.name), params, s) for s in params.servers}
    return plan_topology(list(states.values()), params), states


def get_current_primary(hosts: Mapping[str, "HostLike | None"], params: "Params") -> "Server":
    """The server that is primary right now (for steps that act on the primary: backups, roles)."""
    topo, _ = get_topology(hosts, params)
    if topo.primary is None:
        raise SafetyCheckFailed(topo.reason, hint="Start the primary, or promote a replica with step 11.")
    return params.server(topo.primary)


