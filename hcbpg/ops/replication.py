"""Streaming replication (step 10): who is primary right now, the replication role, slots, pg_hba
lines and settings for it, and rebuilding a server as a streaming replica of the current primary.

Roles at runtime.  ``servers[].role`` in params is the *intended initial layout*; after a
failover (step 11) the real roles differ.  The current roles are discovered by asking every
server (:func:`get_topology`): the primary is the running server that is not in recovery (on
the highest timeline, because a promotion starts a new one); every other server should be
its replica.  Steps record what they found as ``topology`` (``rb.record``); later steps call
:func:`current_primary` instead of reading ``params.primary``.

Symmetry: every server gets the same replication setup (pg_hba lines for each *peer's*
private IP as a /32, a passfile naming each peer, the replication settings), so a failover
changes no config file; only which server streams from which.

Wipe safety (:func:`plan_replica_rebuild`, pure): the data directory of a server is only
replaced when the run allows destructive steps, the server is not the current primary, and
it is in recovery, or holds nothing but the default databases and no clients, or is named
by ``replication.allow_wipe_host``.  The checks run against the live server before anything
is stopped.
"""

from __future__ import annotations

import re
import shlex
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Mapping, Sequence

from psycopg import sql

from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.adapters.psql import Psql, render
from hcbpg.desired import server as desired_server
from hcbpg.desired.replication import (
    bin_path,
    hba_rules_for,
    passfile_path,
    peers,
    postgres_home,
    replication_params,
    slot_name,
)
from hcbpg.desired.server import render_settings
from hcbpg.errors import (
    DatabaseError,
    HostUnreachable,
    RemoteCommandError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops.app_database import get_role
from hcbpg.pg.scram import scram_matches, scram_verifier
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg import conf as pgconf
from hcbpg.pg import hba as pghba
from hcbpg.pg.conf import parse_auto_conf
from hcbpg.pg.conninfo import _pgpass_field, conninfo_quote, parse_conninfo
from hcbpg.secrets import register, scrub

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server

PASSWORD_KEY = "replication.password"
#: databases every fresh cluster has; anything else means the cluster holds data
DEFAULT_DATABASES = ("postgres", "template0", "template1")
#: OIDs of the default databases' directories under base/ (PostgreSQL 15: template1, template0, postgres)
DEFAULT_DATABASE_OIDS = ("1", "4", "5")
#: the conf.d include file for replication settings (see :func:`ensure_replication_settings`)
SETTINGS_FILE = "30-hcbpg-replication.conf"
#: the functions pg_rewind needs on its source server (pg_rewind docs: non-superuser source)
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)
PROBE_TABLE = "hcbpg_replication_probe"
BASEBACKUP_LOG = "hcbpg-basebackup.log"
BASEBACKUP_EXIT = "hcbpg-basebackup.exit"


# names and paths ---------------------------------------------------------------------

# rendering (pure) -----------------------------------------------------------------------

def render_passfile(params: "Params", server: "Server", password: str) -> str:
    """``~postgres/.pgpass`` on *server*: the replication role's password for each peer.

    Two lines per peer: database ``replication`` (walreceiver, pg_basebackup) and ``postgres``
    (pg_rewind's source connection).  libpq reads the password from here, so it never lands in
    postgresql.auto.conf or on a command line.
    """
    rep = replication_params(params)
    register(password)
    lines = []
    for peer in peers(params, server):
        for db in ("replication", "postgres"):
            lines.append(":".join(_pgpass_field(x) for x in (peer.private_ip, str(params.postgres.port), db,
                                                            rep.role, password)))
    return "\n".join(lines) + "\n"


def render_primary_conninfo(params: "Params", primary: "Server", standby: "Server") -> str:
    """primary_conninfo for *standby*: host, port, role, passfile, application_name; never a password."""
    rep = replication_params(params)
    parts = {"host": primary.private_ip, "port": str(params.postgres.port), "user": rep.role,
             "passfile": passfile_path(), "application_name": standby.name, "sslmode": "prefer"}
    return " ".join(f"{k}={conninfo_quote(v)}" for k, v in parts.items())


def render_recovery_settings(current_auto_conf: str, params: "Params", primary: "Server",
                             standby: "Server") -> str:
    """postgresql.auto.conf with primary_conninfo and primary_slot_name for *standby* (other lines kept)."""
    want = {"primary_conninfo": render_primary_conninfo(params, primary, standby),
            "primary_slot_name": slot_name(standby.name)}
    kept = []
    for line in current_auto_conf.splitlines():
        m = re.match(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=", line)
        if m and m.group(1) in want:
            continue
        kept.append(line)
    if not kept:
        kept = ["# Do not edit this file manually!", "# It will be overwritten by the ALTER SYSTEM command."]
    kept += [f"{k} = {pgconf.quote_setting(v)}" for k, v in want.items()]
    return "\n".join(kept) + "\n"


# the replication role ------------------------------------------------------------------

def _wrong_password(params: "Params", host_name: str) -> SafetyCheckFailed:
    rep = replication_params(params)
    return SafetyCheckFailed(
        f"on {host_name}: role {rep.role} already exists with a different password than the secret "
        f"{PASSWORD_KEY} ({rep.password}); refusing to change it, because running replicas would stop streaming",
        hint=f"Point {PASSWORD_KEY} at the password {rep.role} has now, or set the new password on the primary "
             f"and in ~postgres/.pgpass on every server together. Nothing was changed.")


def plan_replication_role(params: "Params", current: Mapping[str, Any] | None, password: str, *,
                          host_name: str) -> list[sql.Composable]:
    """Statements that bring the replication role to params: REPLICATION LOGIN, CONNECTION LIMIT, password.

    The password is sent as a SCRAM verifier computed here; a different existing password is refused.
    """
    rep = replication_params(params)
    ident = sql.Identifier(rep.role)
    if current is None:
        return [sql.SQL("CREATE ROLE {} WITH REPLICATION LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                        "CONNECTION LIMIT {} PASSWORD {}").format(
            ident, sql.Literal(rep.connection_limit), sql.Literal(scram_verifier(password)))]
    parts: list[sql.Composable] = []
    for col, word, want in (("rolreplication", "REPLICATION", True), ("rolcanlogin", "LOGIN", True),
                            ("rolsuper", "NOSUPERUSER", False), ("rolcreatedb", "NOCREATEDB", False),
                            ("rolcreaterole", "NOCREATEROLE", False)):
        if bool(current[col]) != want:
            parts.append(sql.SQL(word))
    if int(current["rolconnlimit"]) != rep.connection_limit:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(rep.connection_limit)))
    stored = current.get("rolpassword") or ""
    if not stored:
        parts.append(sql.SQL("PASSWORD {}").format(sql.Literal(scram_verifier(password))))
    elif not scram_matches(password, stored):
        raise _wrong_password(params, host_name)
    if not parts:
        return []
    return [sql.SQL("ALTER ROLE {} WITH ").format(ident) + sql.SQL(" ").join(parts)]


def plan_rewind_grants(params: "Params", granted: Mapping[str, bool]) -> list[sql.Composable]:
    """GRANT EXECUTE on the functions pg_rewind needs, for those not yet granted."""
    role = sql.Identifier(replication_params(params).role)
    return [sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(f), role)
            for f in REWIND_FUNCTIONS if not granted.get(f)]


def get_rewind_grants(psql: Psql, params: "Params") -> dict[str, bool]:
    role = replication_params(params).role
    if get_role(psql, role) is None:
        return {f: False for f in REWIND_FUNCTIONS}
    cols = sql.SQL(", ").join(
        sql.SQL("has_function_privilege({}, {}, 'EXECUTE') AS {}").format(sql.Literal(role), sql.Literal(f),
                                                                       sql.Identifier(f"f{i}"))
        for i, f in enumerate(REWIND_FUNCTIONS))
    row = psql.query(sql.SQL("SELECT ") + cols)[0]
    return {f: bool(row[f"f{i}"]) for i, f in enumerate(REWIND_FUNCTIONS)}


def ensure_replication_role(psql: "Psql | None", params: "Params", password: str, *, dry_run: bool,
                            host_name: str) -> Outcome:
    """Role repuser on the primary: REPLICATION LOGIN, CONNECTION LIMIT, the secret's password, pg_rewind grants."""
    rep = replication_params(params)
    what = f"replication role {rep.role} on {host_name}"
    current = get_role(psql, rep.role) if psql is not None else None
    statements = plan_replication_role(params, current, password, host_name=host_name)
    statements += plan_rewind_grants(params, get_rewind_grants(psql, params) if psql is not None else {})
    if not statements:
        return Outcome(what, False, dry_run)
    actions = [scrub(" ".join(render(s).split())) for s in statements]
    if psql is not None:
        psql.execute(statements, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=actions)


# files on a server -----------------------------------------------------------------------

def ensure_passfile(host: "Host | None", params: "Params", server: "Server", password: str, *,
                    dry_run: bool) -> Outcome:
    """``~postgres/.pgpass`` (0600, postgres) holds the replication password for each peer."""
    path = passfile_path()
    what = f"{path} on {server.name}"
    desired = render_passfile(params, server, password)
    if host is None:
        return Outcome(what, True, dry_run, actions=[f"write {path} (mode 0600, owner postgres)"])
    current = host.read_text(path)
    st = host.probe(f"stat -c '%a %U' {shlex.quote(path)}").stdout.strip()
    if current == desired and st == "600 postgres":
        return Outcome(what, False, dry_run)
    actions = [f"write {path} (mode 0600, owner postgres; {len(peers(params, server))} peer(s), password not shown)"]
    host.put_text(path, desired, mode=0o600, owner="postgres", group="postgres", dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=actions)


def settings_path(params: "Params") -> str:
    return f"{desired_server.config_dir(params)}/conf.d/{SETTINGS_FILE}"


def ensure_replication_settings(host: "Host | None", params: "Params", server: "Server", *,
                                dry_run: bool) -> Outcome:
    """conf.d/30-hcbpg-replication.conf is ours and in force (reload; restart only for pending_restart).

    Delegates to :func:`hcbpg.postgres.ensure_settings` once postgres.py knows the
    ``replication`` part; until then the same contract is kept here.
    """
    if "replication" in desired_server.SETTINGS_FILES:
        return pg_config.ensure_settings(host, params, server, "replication", dry_run=dry_run)
    path = settings_path(params)
    what = f"settings {SETTINGS_FILE} on {server.name}"
    desired = render_settings(params, server)
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", desired, path), actions=[f"write {path}"])
    current = host.read_text(path)
    running = pg_cluster.get_cluster_running(host, params)
    psql = pg_cluster.psql_for(host, params)
    names = list(pgconf.parse_settings(desired))
    changed_names = list(pgconf.plan_settings(current, desired))
    actions: list[str] = []
    diff = unified_diff(current or "", desired, path)
    if current != desired:
        actions.append(f"write {path} ({', '.join(changed_names)})")
    if dry_run:
        if running:
            needs = pg_cluster.get_restart_contexts(psql, changed_names) if current != desired else []
            pending = pg_cluster.get_pending_restart(psql, names)
            if needs or pending:
                actions.append(f"restart the cluster ({', '.join(sorted(set(needs) | set(pending)))} need it)")
            elif current != desired:
                actions.append("reload")
        return Outcome(what, bool(actions), dry_run, diff=diff, actions=actions)
    if current != desired:
        host.put_text(path, desired, mode=0o644, owner="postgres", group="postgres")
        if running:
            errors = psql.query(sql.SQL("SELECT sourceline, name, error FROM pg_file_settings "
                                        "WHERE sourcefile = {} AND error IS NOT NULL "
                                        # a postmaster setting that changed reads so until the restart below
                                        "AND error <> 'setting could not be applied'").format(sql.Literal(path)))
            if errors:
                if current is None:
                    host.run(f"rm -f {shlex.quote(path)}")
                else:
                    host.put_text(path, current, mode=0o644, owner="postgres", group="postgres")
                raise DatabaseError(
                    f"on {server.name}: PostgreSQL rejects {path}, so the previous version was put back: "
                    + "; ".join(f"line {e['sourceline']} {e['name']}: {e['error']}" for e in errors),
                    hint="Fix replication.* in params and run the step again.")
    if running:
        if current != desired:
            pg_cluster.reload(host, params)
            actions.append("reload")
        pending = pg_cluster.get_pending_restart(psql, names)
        if pending:
            pg_cluster.restart(host, params)
            actions.append(f"restart the cluster ({', '.join(pending)} need it)")
    return Outcome(what, bool(actions), dry_run, diff=diff, actions=actions)


def ensure_hba(host: "Host | None", params: "Params", server: "Server", *, dry_run: bool) -> Outcome:
    """pg_hba.conf with the replication lines of :func:`hba_rules_for` (through postgres.ensure_pg_hba).

    Only the lines postgres.hba_rules does not render itself yet are passed as extra, so this
    keeps working once step 03 renders them from params too.
    """
    return pg_config.ensure_pg_hba(host, params, server, dry_run=dry_run, extra=hba_extra(params, server))


def hba_extra(params: "Params", server: "Server") -> list[pghba.HbaRule]:
    """The replication lines that postgres.hba_rules does not already render for *server*."""
    existing = desired_server.hba_rules(params, server)
    return [r for r in hba_rules_for(params, server) if r not in existing]


# what a server is right now --------------------------------------------------------------

@dataclass
class ServerState:
    """What one server's PostgreSQL is right now (live when running, from disk when stopped)."""

    name: str
    private_ip: str
    reachable: bool = True
    cluster_exists: bool = False
    running: bool = False
    pgdata: str | None = None
    #: pg_is_in_recovery() when running; standby.signal on disk when stopped; None: unknown
    in_recovery: bool | None = None
    standby_signal: bool = False
    #: non-default databases (names when running, "oid N" when stopped)
    databases: list[str] = field(default_factory=list)
    client_connections: int = 0
    system_identifier: str | None = None
    timeline: int | None = None
    #: pg_controldata's "Database cluster state" (stopped clusters)
    control_state: str | None = None
    #: wal receiver (replicas): status, sender host, slot
    receiver_status: str | None = None
    receiver_host: str | None = None
    receiver_slot: str | None = None
    #: recovery settings in force or on disk
    primary_conninfo: str = ""
    primary_slot_name: str = ""
    #: application_name of each replica streaming from this server
    streaming_to: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_controldata(text: str) -> dict[str, str]:
    """``pg_controldata`` output as a dict (key → value, both stripped)."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def get_controldata(host: "Host", params: "Params", pgdata: str) -> dict[str, str]:
    res = host.probe(f"{bin_path(params, 'pg_controldata')} -D {shlex.quote(pgdata)}")
    return parse_controldata(res.stdout) if res.ok else {}


def get_server_state(host: "Host | None", params: "Params", server: "Server") -> ServerState:
    """Inspect *server* without changing anything (unreachable → ``reachable=False``)."""
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
        psql = pg_cluster.psql_for(host, params)
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


# topology ----------------------------------------------------------------------------------

@dataclass
class Topology:
    """Which server is primary right now and which are (or should become) its replicas."""

    primary: str | None
    replicas: list[str]
    unreachable: list[str]
    #: how the primary was chosen, for the operator
    reason: str
    servers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The JSON-safe form steps record as ``topology``."""
        return {"primary": self.primary, "replicas": self.replicas, "unreachable": self.unreachable,
                "reason": self.reason, "discovered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "servers": self.servers}


def plan_topology(states: Sequence[ServerState], params: "Params") -> Topology:
    """The current primary among *states* (pure).

    Candidates are running servers not in recovery.  Among several, the highest timeline wins
    (a promotion starts a new one), then the one holding non-default databases, then the one
    with replicas streaming from it, then the params' primary (the intended initial layout).
    Two candidates with data on the same timeline is a split brain: refused.
    """
    summary = {s.name: {"reachable": s.reachable, "running": s.running, "in_recovery": s.in_recovery,
                        "timeline": s.timeline, "databases": len(s.databases),
                        "streaming_to": s.streaming_to} for s in states}
    unreachable = [s.name for s in states if not s.reachable]
    cands = [s for s in states if s.running and s.in_recovery is False]
    intended = params.primary.name
    if not cands:
        return Topology(None, [s.name for s in states], unreachable,
                        "no running server is out of recovery: there is no primary right now", summary)

    def rank(s: ServerState) -> tuple[int, int, int, int]:
        return (s.timeline or 0, 1 if s.databases else 0, len(s.streaming_to), 1 if s.name == intended else 0)

    cands.sort(key=rank, reverse=True)
    best = cands[0]
    if len(cands) > 1:
        second = cands[1]
        if best.databases and second.databases and rank(best)[:2] == rank(second)[:2]:
            raise SafetyCheckFailed(
                f"split brain: {best.name} and {second.name} both accept writes, both hold data and are on "
                f"the same timeline {best.timeline}; hcbpg cannot tell which one is the primary",
                hint="Stop the one the app does not use (pg_ctlcluster 15 main stop on it), then run the step "
                     "again; nothing was changed.")
        reason = (f"{best.name}: running and not in recovery; preferred over "
                  + ", ".join(s.name for s in cands[1:]) + " (timeline, data, replicas, then params' primary)")
    else:
        reason = f"{best.name}: the only running server not in recovery (timeline {best.timeline})"
    return Topology(best.name, [s.name for s in states if s.name != best.name], unreachable, reason, summary)


def get_topology(hosts: Mapping[str, "Host | None"], params: "Params") -> tuple[Topology, dict[str, ServerState]]:
    """Ask every server what it is (pg_is_in_recovery, timeline, databases) and pick the current primary."""
    states = {s.name: get_server_state(hosts.get(s.name), params, s) for s in params.servers}
    return plan_topology(list(states.values()), params), states


def current_primary(hosts: Mapping[str, "Host | None"], params: "Params") -> "Server":
    """The server that is primary right now (for steps that act on the primary: backups, roles)."""
    topo, _ = get_topology(hosts, params)
    if topo.primary is None:
        raise SafetyCheckFailed(topo.reason, hint="Start the primary, or promote a replica with step 11.")
    return params.server(topo.primary)


# wipe safety (pure) -------------------------------------------------------------------------

@dataclass
class Plan:
    """What making *target* a replica of *primary* takes."""

    target: str
    primary: str
    action: Literal["none", "start", "rebuild"]
    method: Literal["base_backup", "rewind", ""] = ""
    reasons: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    #: why wiping is allowed (the condition that held)
    allowed_by: str = ""

    @property
    def destructive(self) -> bool:
        return self.action == "rebuild"

    def __str__(self) -> str:
        head = {"none": f"{self.target}: already a replica of {self.primary}; nothing to do",
                "start": f"{self.target}: configured as a replica of {self.primary} but stopped: start it",
                "rebuild": f"{self.target}: rebuild as a replica of {self.primary} ({self.method.replace('_', ' ')})"}[self.action]
        lines = [head] + [f"  because {r}" for r in self.reasons]
        if self.allowed_by:
            lines.append(f"  allowed: {self.allowed_by}")
        lines += [f"  {i}. {s}" for i, s in enumerate(self.steps, 1)]
        return "\n".join(lines)


def _is_replica_of(target: ServerState, primary: ServerState, slot: str) -> tuple[bool, list[str]]:
    """Whether *target* is configured to stream from *primary* through *slot*; else why not."""
    why = []
    if target.in_recovery is not True:
        why.append("it is not in recovery (not a replica)")
    if target.system_identifier and primary.system_identifier and target.system_identifier != primary.system_identifier:
        why.append(f"its data is another cluster (system identifier {target.system_identifier}, "
                   f"primary's {primary.system_identifier})")
    host = parse_conninfo(target.primary_conninfo).get("host")
    if host != primary.private_ip:
        why.append(f"primary_conninfo points at {host or 'nothing'}, not {primary.private_ip}")
    if target.primary_slot_name != slot:
        why.append(f"primary_slot_name is {target.primary_slot_name or 'unset'}, not {slot}")
    if "password" in parse_conninfo(target.primary_conninfo):
        why.append("primary_conninfo holds a password (it must come from the passfile)")
    return not why, why


def plan_replica_rebuild(target: ServerState, params: "Params", target_name: str, allow_destructive: bool, *,
                         primary: ServerState) -> Plan:
    """What it takes to make *target* a streaming replica of *primary*; raises SafetyCheckFailed when
    that needs a wipe that is not allowed (pure: the states were read from the live servers).

    Wiping is allowed only when the run allows destructive steps, the target is not the
    current primary, and one of: it is in recovery; it holds only the default databases and
    has no clients; ``replication.allow_wipe_host`` names it.
    """
    rep = replication_params(params)
    if target_name == primary.name:
        raise SafetyCheckFailed(
            f"refusing to rebuild {target_name} as a replica: it is the current primary "
            f"(running, not in recovery, timeline {primary.timeline})",
            hint="To make it a replica, fail over first (step 11 promotes the replica and rebuilds the old "
                 "primary). Nothing was stopped or deleted.")
    if not target.reachable:
        raise SafetyCheckFailed(f"cannot inspect {target_name}: {target.error or 'unreachable'}",
                                hint="Bring the server back (or fix SSH), then run the step again. Nothing was changed.")
    if not target.cluster_exists:
        raise SafetyCheckFailed(
            f"{target_name} has no PostgreSQL {params.postgres.version}/{params.postgres.cluster} cluster",
            hint="Run step 02 (install PostgreSQL) on it first. Nothing was changed.")
    slot = slot_name(target_name)
    ok, why = _is_replica_of(target, primary, slot)
    if ok and target.running:
        return Plan(target_name, primary.name, "none")
    if ok and not target.running:
        return Plan(target_name, primary.name, "start", reasons=["it is stopped"],
                    steps=[f"start PostgreSQL on {target_name}", "wait until it streams"])
    plan = Plan(target_name, primary.name, "rebuild", reasons=why)
    if not allow_destructive:
        raise SafetyCheckFailed(
            f"refusing to replace the data directory of {target_name} ({target.pgdata}): destructive steps are not "
            f"allowed for this run (allow_destructive: false in params/{params.environment}.yaml); "
            f"{target_name} needs a rebuild because " + "; ".join(why),
            hint="If replacing that data directory is intended, set allow_destructive: true for this run and "
                 "run the step again. Nothing was stopped or deleted.")
    if target.in_recovery:
        plan.allowed_by = ("it is in recovery (a replica)" if target.running
                           else "it is stopped with standby.signal (a replica or a fenced former primary)")
    elif not target.databases and not target.client_connections:
        plan.allowed_by = "it holds only the default databases (postgres, template0, template1) and has no clients"
    elif rep.allow_wipe_host == target_name:
        plan.allowed_by = f"replication.allow_wipe_host names {target_name}"
    elif (not target.running and target.system_identifier == primary.system_identifier
          and (target.timeline or 0) < (primary.timeline or 0)):
        raise SafetyCheckFailed(
            f"refusing to rewind {target_name} ({target.pgdata}): it is a former primary (timeline {target.timeline}; "
            f"{primary.name} is on timeline {primary.timeline}) that was never fenced, so it may hold transactions "
            f"committed after the failover, which a rewind discards",
            hint=f"Save what you need from it first (start it with standby.signal absent on another port, or copy "
                 f"{target.pgdata}); then set replication.allow_wipe_host: {target_name} in "
                 f"params/{params.environment}.yaml and run the step again. Nothing was stopped or deleted.")
    else:
        held = []
        if target.databases:
            held.append(f"databases {', '.join(target.databases)}")
        if target.client_connections:
            held.append(f"{target.client_connections} client connection(s)")
        raise SafetyCheckFailed(
            f"refusing to replace the data directory of {target_name} ({target.pgdata}): it is not in recovery "
            f"and holds {' and '.join(held)}, so it may be a primary in use",
            hint=f"Check that nothing uses {target_name}; if its data may go, set replication.allow_wipe_host: "
                 f"{target_name} in params/{params.environment}.yaml and run the step again. "
                 "Nothing was stopped or deleted.")
    same_cluster = bool(target.system_identifier and target.system_identifier == primary.system_identifier)
    plan.method = "rewind" if same_cluster else "base_backup"
    if plan.method == "rewind":
        plan.steps = [f"stop PostgreSQL on {target_name} (if running) and keep it from starting as a primary "
                      "(standby.signal)",
                      f"pg_rewind {target_name} from {primary.name} (falls back to a new base backup if it fails)",
                      f"write primary_conninfo (no password) and primary_slot_name {slot}",
                      f"start {target_name} and wait until it streams"]
    else:
        plan.steps = [f"stop PostgreSQL on {target_name}",
                      f"delete everything in {target.pgdata}",
                      f"pg_basebackup -R -P -X stream --slot {slot} from {primary.name} ({primary.private_ip})",
                      f"start {target_name} and wait until it streams"]
    return plan


# slots ---------------------------------------------------------------------------------------

def get_slots(psql: Psql) -> dict[str, dict[str, Any]]:
    rows = psql.query("SELECT slot_name, slot_type, active, restart_lsn::text AS restart_lsn, wal_status, "
                      "safe_wal_size FROM pg_replication_slots")
    return {r["slot_name"]: r for r in rows}


def ensure_slot(psql: "Psql | None", params: "Params", replica: "Server", *, dry_run: bool,
                host_name: str) -> Outcome:
    """The physical slot for *replica* exists on the primary (reserving WAL from now)."""
    slot = slot_name(replica.name)
    what = f"replication slot {slot} on {host_name}"
    slots = get_slots(psql) if psql is not None else {}
    if slot in slots:
        if slots[slot]["slot_type"] != "physical":
            raise SafetyCheckFailed(f"on {host_name}: slot {slot} exists but is {slots[slot]['slot_type']}",
                                    hint=f"Drop it (SELECT pg_drop_replication_slot('{slot}')) and run again.")
        return Outcome(what, False, dry_run)
    stmt = sql.SQL("SELECT pg_create_physical_replication_slot({}, true)").format(sql.Literal(slot))
    if psql is not None:
        psql.execute(stmt, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=[render(stmt)])


def ensure_no_stale_slots(psql: "Psql | None", params: "Params", *, keep: Iterable[str], dry_run: bool,
                          host_name: str) -> Outcome:
    """Drop inactive hcbpg slots (``<server>_slot``) that *keep* does not name: they would hold WAL forever.

    A former primary keeps its old slots through pg_rewind (pg_replslot is not copied).
    """
    what = f"stale replication slots on {host_name}"
    if psql is None:
        return Outcome(what, False, dry_run)
    ours = {slot_name(s.name) for s in params.servers}
    stale = [n for n, s in get_slots(psql).items() if n in ours and n not in set(keep) and not s["active"]]
    if not stale:
        return Outcome(what, False, dry_run)
    stmts = [sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(n)) for n in sorted(stale)]
    psql.execute(stmts, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=[render(s) for s in stmts])


# rebuilding a replica ---------------------------------------------------------------------------

def _ctl(params: "Params", action: str) -> str:
    return f"pg_ctlcluster {params.postgres.version} {shlex.quote(params.postgres.cluster)} {action}"


def run_stop(host: "Host", params: "Params", *, mode: str = "fast") -> None:
    """Stop the cluster (fast: clean shutdown; immediate if that does not finish)."""
    if not pg_cluster.get_cluster_running(host, params):
        return
    res = host.run(_ctl(params, f"stop -m {mode}"), check=False, timeout=180)
    if not res.ok and pg_cluster.get_cluster_running(host, params):
        host.run(_ctl(params, "stop -m immediate"), timeout=120)


def _safe_pgdata(pgdata: str | None, params: "Params") -> str:
    """The data directory, refused unless it looks like a cluster's (never /, never a parent of one)."""
    if not pgdata or not re.fullmatch(r"/[A-Za-z0-9_./-]+", pgdata) or ".." in pgdata:
        raise SafetyCheckFailed(f"unexpected data directory {pgdata!r}; refusing to delete anything in it")
    parts = [p for p in pgdata.split("/") if p]
    if len(parts) < 3:
        raise SafetyCheckFailed(f"data directory {pgdata} is too close to / to be wiped by hcbpg",
                                hint="Clear it by hand if that is intended.")
    return pgdata


def run_wipe(host: "Host", params: "Params", state: ServerState, plan: Plan) -> None:
    """Stop PostgreSQL and delete the contents of the data directory (only for a rebuild *plan*)."""
    if plan.action != "rebuild" or not plan.allowed_by:
        raise SafetyCheckFailed(f"run_wipe on {state.name} without a rebuild plan that allows it")
    pgdata = _safe_pgdata(state.pgdata, params)
    if host.probe(f"ls -A {shlex.quote(pgdata)}/pg_tblspc").stdout.strip():
        raise SafetyCheckFailed(f"{state.name}: {pgdata} uses tablespaces; hcbpg does not rebuild those",
                                hint="Rebuild this replica by hand. Nothing was deleted.")
    run_stop(host, params)
    host.run(f"find {shlex.quote(pgdata)} -mindepth 1 -delete",
             display=f"delete everything in {pgdata} (allowed: {plan.allowed_by})")


@dataclass
class BaseBackupProgress:
    phase: str
    streamed: int
    total: int | None

    @property
    def percent(self) -> float | None:
        return 100.0 * self.streamed / self.total if self.total else None

    def line(self, elapsed: float) -> str:
        mb = lambda b: f"{b / 1048576:.1f} MB"  # noqa: E731
        pct = f"{self.percent:5.1f}% " if self.percent is not None else ""
        total = f" of {mb(self.total)}" if self.total else ""
        return f"{self.phase}: {pct}({mb(self.streamed)}{total}) after {elapsed:.1f}s"


def get_basebackup_progress(psql: Psql) -> BaseBackupProgress | None:
    """pg_stat_progress_basebackup on the primary (None when no base backup runs)."""
    rows = psql.query("SELECT phase, backup_streamed, backup_total FROM pg_stat_progress_basebackup")
    if not rows:
        return None
    r = rows[0]
    return BaseBackupProgress(r["phase"], int(r["backup_streamed"] or 0),
                              int(r["backup_total"]) if r["backup_total"] is not None else None)


_PROGRESS_RE = re.compile(r"\d+/\d+ kB \(\d+%\), \d+/\d+ tablespaces?")


def _own_progress(log_tail: str) -> str:
    """pg_basebackup's last -P line (``34567/115800 kB (29%), 0/1 tablespace``), else its last line."""
    found = _PROGRESS_RE.findall(log_tail)
    if found:
        return found[-1]
    lines = log_tail.replace("\r", "\n").strip().splitlines()
    return lines[-1].strip() if lines else ""


def render_basebackup_command(params: "Params", primary: "Server", standby: "Server", pgdata: str) -> str:
    """pg_basebackup as postgres on the standby: -R (recovery config), -P (progress), WAL streamed, our slot."""
    rep = replication_params(params)
    conninfo = (f"host={primary.private_ip} port={params.postgres.port} user={rep.role} "
                f"passfile={passfile_path()} application_name={standby.name}")
    return (f"{bin_path(params, 'pg_basebackup')} -d {shlex.quote(conninfo)} -D {shlex.quote(pgdata)} "
            f"-R -P -v -w -X stream --checkpoint=fast --slot {slot_name(standby.name)}")


def run_base_backup(host: "Host", primary_psql: Psql, params: "Params", primary: "Server", standby: "Server",
                    pgdata: str, *, timeout: float = 6 * 3600, poll: float = 1.0,
                    echo: Callable[[str], None] = print,
                    sleep: Callable[[float], None] = time.sleep) -> float:
    """Run pg_basebackup on *standby* (detached, so a dropped SSH session does not kill it) and print
    its progress every *poll* seconds: the primary's pg_stat_progress_basebackup and pg_basebackup's
    own -P line.  Returns the duration in seconds; raises RemoteCommandError when it fails."""
    home = postgres_home()
    log, done = f"{home}/{BASEBACKUP_LOG}", f"{home}/{BASEBACKUP_EXIT}"
    cmd = render_basebackup_command(params, primary, standby, pgdata)
    inner = f"{cmd}; echo $? > {done}"
    host.run(f"rm -f {done} {log} && nohup setsid sh -c {shlex.quote(inner)} > {log} 2>&1 < /dev/null &",
             sudo_user="postgres", display=f"[as postgres] {cmd}  (detached; log {log})")
    started = time.monotonic()
    last_line = ""
    last_print = 0.0
    seen_progress = False
    while True:
        elapsed = time.monotonic() - started
        code_text = host.read_text(done)
        if code_text is not None and code_text.strip():
            break
        if elapsed > timeout:
            raise WaitTimeout(f"on {standby.name}: pg_basebackup did not finish within {timeout:.0f}s",
                              hint=f"It may still run: look at {log} on {standby.name}.")
        prog = get_basebackup_progress(primary_psql)
        own = _own_progress(host.probe(f"tail -c 2000 {log}").stdout)
        if prog is not None:
            seen_progress = True
        state = (prog.line(elapsed) if prog else
                 f"{'finishing (last WAL, sync to disk)' if seen_progress else 'starting'} after {elapsed:.1f}s")
        line = state + (f" | {own}" if own else "")
        if line != last_line and (elapsed - last_print >= poll or not last_line):
            echo(f"[{standby.name}] base backup {scrub(line)}")
            last_line, last_print = line, elapsed
        sleep(poll)
    duration = time.monotonic() - started
    code = int(code_text.strip() or "1")
    output = host.read_text(log) or ""
    final = output.replace("\r", "\n").strip().splitlines()
    echo(f"[{standby.name}] base backup finished with exit code {code} in {duration:.1f}s"
         + (f": {scrub(_own_progress(output))}" if _own_progress(output) else "")
         + (f"; {scrub(final[-1])}" if final else ""))
    if code != 0:
        raise RemoteCommandError(standby.name, cmd, code, scrub(output[-3000:]),
                                 hint="The data directory is incomplete; fix the cause and run the step again "
                                      "(it rebuilds the replica).")
    return duration


def run_write_recovery(host: "Host", params: "Params", primary: "Server", standby: "Server", pgdata: str) -> None:
    """standby.signal plus primary_conninfo (no password) and primary_slot_name in postgresql.auto.conf."""
    path = f"{pgdata}/postgresql.auto.conf"
    current = host.read_text(path) or ""
    desired = render_recovery_settings(current, params, primary, standby)
    if desired != current:
        host.put_text(path, desired, mode=0o600, owner="postgres", group="postgres")
    if not host.exists(f"{pgdata}/standby.signal"):
        host.put_text(f"{pgdata}/standby.signal", "", mode=0o600, owner="postgres", group="postgres")


def run_rewind(host: "Host", params: "Params", primary: "Server", standby: "Server", pgdata: str) -> None:
    """pg_rewind *standby*'s data directory from *primary* over libpq, as postgres (the server must be stopped)."""
    rep = replication_params(params)
    source = (f"host={primary.private_ip} port={params.postgres.port} user={rep.role} dbname=postgres "
              f"passfile={passfile_path()}")
    conf = f"{desired_server.config_dir(params)}/postgresql.conf"
    host.run(f"{bin_path(params, 'pg_rewind')} -D {shlex.quote(pgdata)} --source-server={shlex.quote(source)} "
             f"--config-file={shlex.quote(conf)} -P", sudo_user="postgres", timeout=6 * 3600,
             hint="pg_rewind failed; the step falls back to a new base backup.")


def rebuild_replica(host: "Host", params: "Params", target: ServerState, plan: Plan, *,
                    primary_host: "Host", primary: "Server", standby: "Server",
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Carry out a rebuild *plan*: pg_rewind (when planned; falls back) or wipe + pg_basebackup; then start.

    Returns timings and the method used, for the record.
    """
    result: dict[str, Any] = {"target": standby.name, "primary": primary.name, "method": plan.method}
    pgdata = _safe_pgdata(target.pgdata, params)
    primary_psql = pg_cluster.psql_for(primary_host, params)
    t0 = time.monotonic()
    if plan.method == "rewind":
        run_stop(host, params)
        # pg_rewind recovers an uncleanly stopped target in single-user mode, which refuses to run with
        # standby.signal; the fence file comes back right after (nothing else starts the cluster meanwhile)
        host.run(f"rm -f {shlex.quote(pgdata)}/standby.signal")
        try:
            # pg_rewind takes the source's timeline from its control file, which a just-promoted primary
            # updates only at its next checkpoint; before that it sees "the same timeline" and does nothing
            primary_psql.execute("CHECKPOINT")
            run_rewind(host, params, primary, standby, pgdata)
            run_write_recovery(host, params, primary, standby, pgdata)
            result["rewind_s"] = round(time.monotonic() - t0, 2)
            t1 = time.monotonic()
            pg_cluster.ensure_cluster_running(host, params, dry_run=False)
            wait_for_streaming(primary_host, params, standby)
            result["start_to_streaming_s"] = round(time.monotonic() - t1, 2)
            return result
        except (RemoteCommandError, WaitTimeout) as exc:
            detail = exc.output_tail if isinstance(exc, RemoteCommandError) else exc.message
            last = [ln for ln in detail.strip().splitlines() if "FATAL" in ln or "error" in ln] or detail.strip().splitlines() or ["?"]
            echo(f"[{standby.name}] rewind did not bring it back ({scrub(last[-1].strip())}); "
                 "falling back to a new base backup")
            result["method"] = "base_backup (after pg_rewind failed)"
            plan = Plan(plan.target, plan.primary, "rebuild", "base_backup", plan.reasons,
                        allowed_by=plan.allowed_by or "pg_rewind failed on a fenced former primary")
    if result["method"] != "rewind":
        run_wipe(host, params, target, plan)
        result["base_backup_s"] = round(run_base_backup(host, primary_psql, params, primary, standby, pgdata,
                                                        echo=echo), 2)
        run_write_recovery(host, params, primary, standby, pgdata)
    t1 = time.monotonic()
    pg_cluster.ensure_cluster_running(host, params, dry_run=False)
    wait_for_streaming(primary_host, params, standby)
    result["start_to_streaming_s"] = round(time.monotonic() - t1, 2)
    return result


def ensure_replica(host: "Host | None", params: "Params", standby: "Server", *, primary_host: "Host | None",
                   primary: "Server", allow_destructive: bool, dry_run: bool,
                   echo: Callable[[str], None] = print) -> tuple[Outcome, Plan, dict[str, Any]]:
    """*standby* streams from *primary*: inspect it live, plan (wipe safety), then start or rebuild it."""
    what = f"{standby.name} as a replica of {primary.name}"
    if dry_run and (host is None or primary_host is None):
        plan = Plan(standby.name, primary.name, "rebuild", "base_backup", ["the server is not reachable yet"],
                    steps=["inspect it live (wipe safety) before anything is stopped",
                           f"pg_basebackup -R -P -X stream --slot {slot_name(standby.name)} from {primary.name}",
                           "start it and wait until it streams"])
        return Outcome(what, True, dry_run, actions=plan.steps), plan, {}
    target = get_server_state(host, params, standby)
    pstate = get_server_state(primary_host, params, primary)
    plan = plan_replica_rebuild(target, params, standby.name, allow_destructive, primary=pstate)
    if plan.action == "none":
        return Outcome(what, False, dry_run), plan, {}
    actions = list(plan.steps)
    if dry_run or host is None:
        return Outcome(what, True, dry_run, actions=actions), plan, {}
    if plan.action == "start":
        t0 = time.monotonic()
        pg_cluster.ensure_cluster_running(host, params, dry_run=False)
        wait_for_streaming(primary_host, params, standby)
        return Outcome(what, True, dry_run, actions=actions), plan, {"start_to_streaming_s": round(time.monotonic() - t0, 2)}
    result = rebuild_replica(host, params, target, plan, primary_host=primary_host, primary=primary,
                             standby=standby, echo=echo)
    return Outcome(what, True, dry_run, actions=actions + [f"done: {result}"]), plan, result


# waiting and checking ------------------------------------------------------------------------------

def get_replication_rows(psql: Psql) -> list[dict[str, Any]]:
    """pg_stat_replication joined with the slots on the primary (lags in seconds and bytes)."""
    return psql.query(
        "SELECT r.application_name, host(r.client_addr) AS client_addr, r.state, r.sync_state, "
        "s.slot_name, s.active AS slot_active, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint AS replay_lag_bytes, "
        "extract(epoch FROM r.replay_lag)::float AS replay_lag_s, "
        "extract(epoch FROM r.write_lag)::float AS write_lag_s "
        "FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid "
        "ORDER BY r.application_name")


def wait_for_streaming(primary_host: "Host", params: "Params", standby: "Server", *, timeout: float = 120.0,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Wait until the primary's pg_stat_replication shows *standby* streaming through its slot."""
    psql = pg_cluster.psql_for(primary_host, params)
    slot = slot_name(standby.name)
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while True:
        last = get_replication_rows(psql)
        for r in last:
            if r["slot_name"] == slot and r["state"] == "streaming" and r["slot_active"]:
                return r
        if time.monotonic() > deadline:
            raise WaitTimeout(
                f"{standby.name} is not streaming from {primary_host.name} through slot {slot} after {timeout:.0f}s; "
                f"pg_stat_replication shows: {last or 'no rows'}",
                hint=f"Look at the server log of {standby.name} (/var/log/postgresql/) for connection or "
                     "authentication errors (pg_hba, passfile).")
        sleep(0.5)


def get_wal_lsn(psql: Psql) -> str:
    return str(psql.value("SELECT pg_current_wal_lsn()::text AS lsn"))


def wait_for_catch_up(replica_psql: Psql, lsn: str, *, timeout: float,
                      sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until the replica has replayed WAL up to *lsn*; returns the seconds it took."""
    started = time.monotonic()
    while True:
        done = replica_psql.value(sql.SQL("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), {}::pg_lsn) >= 0 AS ok")
                                  .format(sql.Literal(lsn)))
        if done:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            have = replica_psql.value("SELECT pg_last_wal_replay_lsn()::text AS l")
            raise WaitTimeout(f"{replica_psql.host.name} has replayed up to {have}, not yet {lsn}, after {timeout:.0f}s",
                              hint="Look at replay lag in pg_stat_replication on the primary and at the replica's log.")
        sleep(0.2)


def ensure_probe_table(psql: "Psql | None", *, dry_run: bool, host_name: str) -> Outcome:
    """Table hcbpg_replication_probe in database postgres on the primary (rows the checks write and read back)."""
    what = f"table {PROBE_TABLE} in database postgres on {host_name}"
    if psql is not None and psql.value(sql.SQL("SELECT to_regclass({}) IS NOT NULL AS e").format(
            sql.Literal(f"public.{PROBE_TABLE}"))):
        return Outcome(what, False, dry_run)
    stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} (token text PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now(), "
                   "written_on text NOT NULL DEFAULT current_setting('cluster_name'))").format(sql.Identifier(PROBE_TABLE))
    if psql is not None:
        psql.execute(stmt, dry_run=dry_run)
    return Outcome(what, True, dry_run, actions=[" ".join(render(stmt).split())])


def write_probe_row(psql: Psql) -> str:
    """Insert a fresh token into the probe table (quietly: a check, not a change) and return it."""
    token = uuid.uuid4().hex
    psql.host.run(psql._cmd("postgres"), sudo_user=psql.os_user, quiet=True,  # noqa: SLF001 - same adapter family
                  stdin=render(sql.SQL("INSERT INTO {} (token) VALUES ({});\n").format(
                      sql.Identifier(PROBE_TABLE), sql.Literal(token))))
    return token


def check_row_replicates(primary_psql: Psql, replica_psql: Psql, *, timeout: float,
                         sleep: Callable[[float], None] = time.sleep) -> Check:
    """A row written on the primary is read on the replica within *timeout* seconds."""
    name = "row written on the primary is read on the replica"
    try:
        token = write_probe_row(primary_psql)
    except RemoteCommandError as exc:
        return Check(name, "fail", f"could not write on {primary_psql.host.name}: {exc.output_tail.strip()[-200:]}",
                     replica_psql.host.name)
    started = time.monotonic()
    while True:
        seen = replica_psql.value(sql.SQL("SELECT count(*) AS n FROM {} WHERE token = {}").format(
            sql.Identifier(PROBE_TABLE), sql.Literal(token)))
        elapsed = time.monotonic() - started
        if seen:
            return Check(name, "pass", f"seen after {elapsed:.2f}s (bound {timeout:.0f}s)", replica_psql.host.name)
        if elapsed > timeout:
            return Check(name, "fail", f"not seen after {timeout:.0f}s", replica_psql.host.name)
        sleep(0.1)


def check_refuses_writes(replica_psql: Psql) -> Check:
    """The replica refuses a write (read-only transaction)."""
    name = "replica refuses writes"
    res = replica_psql.host.run(replica_psql._cmd("postgres"), sudo_user=replica_psql.os_user, quiet=True,  # noqa: SLF001
                                check=False, stdin=f"INSERT INTO {PROBE_TABLE} (token) VALUES ('refused');\n")
    if res.ok:
        return Check(name, "fail", "a write was ACCEPTED on the replica", replica_psql.host.name)
    ok = "read-only transaction" in res.output
    return Check.of(name, ok, "cannot execute INSERT in a read-only transaction" if ok else res.output.strip()[-200:],
                    replica_psql.host.name)


def check_auto_conf(host: "Host", params: "Params", standby: "Server", primary: "Server", password: str) -> list[Check]:
    """postgresql.auto.conf on the replica: primary_conninfo to the primary, our slot, and no password."""
    st = pg_cluster.get_cluster(host, params) or {}
    text = host.read_text(f"{st.get('pgdata')}/postgresql.auto.conf") or ""
    settings = parse_auto_conf(text)
    ci = parse_conninfo(settings.get("primary_conninfo", ""))
    no_pw = "password" not in ci and password not in text
    return [
        Check.of("postgresql.auto.conf holds no password", no_pw,
                 f"primary_conninfo keys: {', '.join(sorted(ci))}" if no_pw else "a password is in postgresql.auto.conf",
                 standby.name),
        Check.of("primary_conninfo points at the primary", ci.get("host") == primary.private_ip,
                 f"host={ci.get('host')} user={ci.get('user')} passfile={ci.get('passfile')}", standby.name),
        Check.of("primary_slot_name", settings.get("primary_slot_name") == slot_name(standby.name),
                 settings.get("primary_slot_name", "unset"), standby.name),
    ]


def get_auto_conf_text(host: "Host", params: "Params") -> str:
    """postgresql.auto.conf of the cluster (scrubbed), to show the operator."""
    st = pg_cluster.get_cluster(host, params) or {}
    return scrub(host.read_text(f"{st.get('pgdata')}/postgresql.auto.conf") or "")


def check_replication(primary_host: "Host", replica_host: "Host", params: "Params", standby: "Server",
                      primary: "Server", password: str) -> list[Check]:
    """Step 10's checks for one replica: streaming with its slot active, a row replicates in time,
    replay lag, writes refused, cluster_name, passfile mode, no password in postgresql.auto.conf."""
    rep = replication_params(params)
    ppsql, rpsql = pg_cluster.psql_for(primary_host, params), pg_cluster.psql_for(replica_host, params)
    slot = slot_name(standby.name)
    rows = [r for r in get_replication_rows(ppsql) if r["slot_name"] == slot]
    out = []
    if rows:
        r = rows[0]
        out.append(Check.of("replica streaming, slot active", r["state"] == "streaming" and bool(r["slot_active"]),
                            f"{r['application_name']} from {r['client_addr']}: {r['state']}, slot {slot} "
                            f"{'active' if r['slot_active'] else 'inactive'}", primary.name))
    else:
        out.append(Check("replica streaming, slot active", "fail", f"no pg_stat_replication row uses slot {slot}",
                         primary.name))
    out.append(check_row_replicates(ppsql, rpsql, timeout=rep.catch_up_timeout_s))
    rows = [r for r in get_replication_rows(ppsql) if r["slot_name"] == slot]
    if rows:
        lag_b, lag_s = rows[0]["replay_lag_bytes"], rows[0]["replay_lag_s"]
        out.append(Check("replay lag", "pass" if (lag_s or 0) < rep.catch_up_timeout_s else "warn",
                         f"{lag_b} bytes behind, replay_lag {lag_s if lag_s is not None else 0:.3f}s", standby.name))
    out.append(check_refuses_writes(rpsql))
    keep = rpsql.value("SELECT current_setting('max_slot_wal_keep_size') AS v")
    want = ppsql.value("SELECT current_setting('max_slot_wal_keep_size') AS v")
    out.append(Check.of("max_slot_wal_keep_size on the primary", want not in (None, "-1"),
                        f"{want} (params: {rep.max_slot_wal_keep_size}; replica: {keep})", primary.name))
    cname = rpsql.value("SELECT current_setting('cluster_name') AS v")
    out.append(Check.of("cluster_name", cname == standby.name, str(cname), standby.name))
    st = replica_host.probe(f"stat -c '%a %U' {passfile_path()}").stdout.strip()
    out.append(Check.of("passfile ~postgres/.pgpass", st == "600 postgres", st or "missing", standby.name))
    out += check_auto_conf(replica_host, params, standby, primary, password)
    return out


def get_table_counts(psql: Psql, dbname: str) -> dict[str, int]:
    """Exact row counts of every user table in *dbname* (for comparing primary and replica)."""
    tables = psql.query("SELECT format('%I.%I', schemaname, relname) AS t FROM pg_stat_user_tables ORDER BY 1",
                        dbname=dbname)
    if not tables:
        return {}
    parts = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS t, count(*) AS n FROM {}").format(sql.Literal(t["t"]), sql.SQL(t["t"]))
        for t in tables)
    return {r["t"]: int(r["n"]) for r in psql.query(parts, dbname=dbname)}


def check_counts_match(primary_psql: Psql, replica_psql: Psql, dbname: str, *, timeout: float) -> Check:
    """Once the replica has replayed the primary's current WAL position, per-table row counts are equal."""
    lsn = get_wal_lsn(primary_psql)
    waited = wait_for_catch_up(replica_psql, lsn, timeout=timeout)
    a, b = get_table_counts(primary_psql, dbname), get_table_counts(replica_psql, dbname)
    diff = {t: (a.get(t), b.get(t)) for t in sorted(set(a) | set(b)) if a.get(t) != b.get(t)}
    return Check.of(f"row counts in {dbname} match", not diff,
                    f"{len(a)} table(s), {sum(a.values())} row(s), caught up in {waited:.2f}s" if not diff
                    else f"differ: {diff}", replica_psql.host.name)


# the step ----------------------------------------------------------------------------------------

def primary_outcomes(primary_host: "Host | None", params: "Params", primary: "Server", replicas: Sequence["Server"],
                     password: str, *, dry_run: bool) -> list[Outcome]:
    """Step 10 on the primary: settings, pg_hba, passfile, role repuser, a slot per replica, the probe table."""
    psql = (pg_cluster.psql_for(primary_host, params)
            if primary_host is not None and pg_cluster.get_cluster_running(primary_host, params) else None)
    out = [ensure_replication_settings(primary_host, params, primary, dry_run=dry_run),
           ensure_hba(primary_host, params, primary, dry_run=dry_run),
           ensure_passfile(primary_host, params, primary, password, dry_run=dry_run),
           ensure_replication_role(psql, params, password, dry_run=dry_run, host_name=primary.name)]
    out += [ensure_slot(psql, params, r, dry_run=dry_run, host_name=primary.name) for r in replicas]
    out.append(ensure_no_stale_slots(psql, params, keep=[slot_name(r.name) for r in replicas], dry_run=dry_run,
                                     host_name=primary.name))
    out.append(ensure_probe_table(psql, dry_run=dry_run, host_name=primary.name))
    return out


def replica_config_outcomes(host: "Host | None", params: "Params", standby: "Server", password: str, *,
                            dry_run: bool) -> list[Outcome]:
    """Step 10 on a replica before (re)building: settings, pg_hba and passfile (all in /etc or ~postgres,
    so they survive the data directory being replaced)."""
    return [ensure_replication_settings(host, params, standby, dry_run=dry_run),
            ensure_hba(host, params, standby, dry_run=dry_run),
            ensure_passfile(host, params, standby, password, dry_run=dry_run)]


def replica_cleanup_outcomes(host: "Host | None", params: "Params", standby: "Server", *, dry_run: bool) -> list[Outcome]:
    """After a replica streams: drop inactive hcbpg slots it carried over from an earlier life."""
    psql = pg_cluster.psql_for(host, params) if host is not None and pg_cluster.get_cluster_running(host, params) else None
    return [ensure_no_stale_slots(psql, params, keep=[], dry_run=dry_run, host_name=standby.name)]


def setup_replication(hosts: Mapping[str, "Host | None"], params: "Params", password: str, *,
                      allow_destructive: bool, dry_run: bool,
                      echo: Callable[[str], None] = print) -> tuple[list[Outcome], Topology, dict[str, Any]]:
    """Step 10, whole: discover the current primary, set it up, make every other server its streaming replica.

    Returns the outcomes, the topology found before any change, and per replica its plan
    (as text) and timings.
    """
    topo, _states = get_topology(hosts, params)
    if topo.primary is None and dry_run and all(hosts.get(s.name) is None for s in params.servers):
        # a plan before provisioning (`hcbpg plan` on a fresh environment): the intended layout
        topo = Topology(params.primary.name, [s.name for s in params.replicas], [s.name for s in params.servers],
                        "no server is reachable yet: planning the intended layout from params", {})
    if topo.primary is None:
        raise SafetyCheckFailed(topo.reason, hint="Start the primary (or promote a replica with step 11), then run "
                                                  "this step again. Nothing was changed.")
    primary = params.server(topo.primary)
    primary_host = hosts.get(primary.name)
    if primary_host is None and not dry_run:
        raise SafetyCheckFailed(f"cannot reach the primary {primary.name}", hint="Nothing was changed.")
    replicas = [params.server(n) for n in topo.replicas]
    outcomes = primary_outcomes(primary_host, params, primary, replicas, password, dry_run=dry_run)
    results: dict[str, Any] = {}
    for r in replicas:
        host = hosts.get(r.name)
        outcomes += replica_config_outcomes(host, params, r, password, dry_run=dry_run)
        outcome, plan, result = ensure_replica(host, params, r, primary_host=primary_host, primary=primary,
                                               allow_destructive=allow_destructive, dry_run=dry_run, echo=echo)
        echo(str(plan))
        outcomes.append(outcome)
        if not dry_run:
            outcomes += replica_cleanup_outcomes(host, params, r, dry_run=dry_run)
        results[r.name] = {"plan": plan.action, "method": plan.method, **result}
    return outcomes, topo, results


def topology_rows(states: Mapping[str, ServerState], topology: Topology) -> list[dict[str, Any]]:
    """One row per server for the notebook's table: what it is now and what params intended."""
    rows = []
    for name, s in states.items():
        now = ("primary" if name == topology.primary else
               "replica" if s.in_recovery and s.running else
               "unreachable" if not s.reachable else "stopped" if not s.running else "not a replica yet")
        rows.append({"server": name, "now": now, "params role": "", "running": s.running,
                     "in recovery": s.in_recovery, "timeline": s.timeline,
                     "databases": ", ".join(s.databases) or "(defaults)",
                     "streams from": s.receiver_host or "", "streaming to": ", ".join(s.streaming_to)})
    return rows


def show_topology(params: "Params", topology: Topology, states: Mapping[str, ServerState]) -> None:
    """Print how the current primary was chosen and a table of every server."""
    from hcbpg.display import show_table
    rows = topology_rows(states, topology)
    for r in rows:
        r["params role"] = params.server(r["server"]).role
    print(f"current primary: {topology.primary or 'none'} ({topology.reason})")
    show_table(rows)


def check_all(hosts: Mapping[str, "Host | None"], params: "Params", password: str) -> list[Check]:
    """Step 10's checks for every replica of the current primary (a failing row per unreachable one)."""
    topo, states = get_topology(hosts, params)
    if topo.primary is None or hosts.get(topo.primary) is None:
        return [Check("a primary is running", "fail", topo.reason)]
    primary = params.server(topo.primary)
    out: list[Check] = []
    for name in topo.replicas:
        if hosts.get(name) is None:
            # after an unplanned failover the old primary may be gone for good: the pair is not whole,
            # which the operator must see, but the new primary is fine
            out.append(Check("replica reachable", "warn", f"{states[name].error or 'unreachable'}: not a replica "
                             "yet; run step 10 when it is back (or replace it)", name))
            continue
        out += check_replication(hosts[topo.primary], hosts[name], params, params.server(name), primary, password)  # type: ignore[arg-type]
    return out
