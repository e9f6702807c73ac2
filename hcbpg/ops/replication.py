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

import shlex
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.psql import Psql, render
from hcbpg.desired import server as desired_server
from hcbpg.desired.replication import (
    hba_rules_for,
    passfile_path,
    peers,
    render_passfile,
    replication_params,
    slot_name,
)
from hcbpg.desired.server import render_settings
from hcbpg.errors import (
    DatabaseError,
    RemoteCommandError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import pgbackrest, schedule
from hcbpg.ops.app_database import get_role
from hcbpg.ops.replica import ensure_replica, get_replication_rows
from hcbpg.ops.topology import Topology, get_topology
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg import conf as pgconf
from hcbpg.pg import hba as pghba
from hcbpg.pg.conf import parse_auto_conf
from hcbpg.pg.conninfo import parse_conninfo
from hcbpg.pg.scram import scram_matches, scram_verifier
from hcbpg.secrets import scrub
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params, Server

PASSWORD_KEY = "replication.password"
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
# names and paths ---------------------------------------------------------------------

# rendering (pure) -----------------------------------------------------------------------

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

# topology ----------------------------------------------------------------------------------

# wipe safety (pure) -------------------------------------------------------------------------

# slots ---------------------------------------------------------------------------------------

def get_slots(psql: Psql) -> dict[str, dict[str, Any]]:
    rows = psql.query("SELECT slot_name, slot_type, active, restart_lsn::text AS restart_lsn, wal_status, "
                      "safe_wal_size FROM pg_replication_slots")
    return {r["slot_name"]: r for r in rows}


def ensure_slot(psql: "Psql | None", params: "Params", replica: "Server", *, dry_run: bool,
                host_name: str) -> Outcome:
    """The physical slot for *replica* exists on the primary (reserving WAL from now).

    A slot ``max_slot_wal_keep_size`` invalidated (``wal_status`` lost) is dropped and made again:
    the replica fetches the WAL it missed from the repository (``restore_command``), then
    streams through the new slot; no rebuild.
    """
    slot = slot_name(replica.name)
    what = f"replication slot {slot} on {host_name}"
    slots = get_slots(psql) if psql is not None else {}
    stmt = sql.SQL("SELECT pg_create_physical_replication_slot({}, true)").format(sql.Literal(slot))
    if slot in slots:
        if slots[slot]["slot_type"] != "physical":
            raise SafetyCheckFailed(f"on {host_name}: slot {slot} exists but is {slots[slot]['slot_type']}",
                                    hint=f"Drop it (SELECT pg_drop_replication_slot('{slot}')) and run again.")
        if slots[slot].get("wal_status") != "lost":
            return Outcome(what, False, dry_run)
        drop = sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(slot))
        if psql is not None:
            psql.execute([drop, stmt], dry_run=dry_run)
        return Outcome(what, True, dry_run, actions=[
            f"{slot} was invalidated (max_slot_wal_keep_size): made again; {replica.name} fetches the WAL it "
            "missed from the repository (restore_command), then streams", render(drop), render(stmt)])
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

# waiting and checking ------------------------------------------------------------------------------

def get_wal_lsn(psql: Psql) -> str:
    return str(psql.value("SELECT pg_current_wal_lsn()::text AS lsn"))


def wait_for_catch_up(replica_psql: Psql, lsn: str, *, timeout: float,
                      sleep: Callable[[float], None] = time.sleep) -> float:
    """Wait until the replica has replayed WAL up to *lsn*; returns the seconds it took."""
    started = time.monotonic()
    for _ in polling_loop(timeout, interval=0.2, sleep=sleep):
        done = replica_psql.value(sql.SQL("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), {}::pg_lsn) >= 0 AS ok")
                                  .format(sql.Literal(lsn)))
        if done:
            return time.monotonic() - started
    have = replica_psql.value("SELECT pg_last_wal_replay_lsn()::text AS l")
    raise WaitTimeout(f"{replica_psql.host.name} has replayed up to {have}, not yet {lsn}, after {timeout:.0f}s",
                      what=f"replay up to {lsn}", timeout=timeout, last=have,
                      hint="Look at replay lag in pg_stat_replication on the primary and at the replica's log.")


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
    return Check.of(name, ok, "cannot execute INSERT in a read-only transaction" if ok else scrub(res.output.strip())[-200:],
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
        Check.of("primary_conninfo verifies the primary's certificate", ci.get("sslmode") == "verify-full"
                 and bool(ci.get("sslrootcert")),
                 f"sslmode={ci.get('sslmode')} sslrootcert={ci.get('sslrootcert')}", standby.name),
    ]


def get_replication_tls(primary_psql: Psql, standby: "Server") -> dict[str, Any] | None:
    """The walsender of *standby* joined with pg_stat_ssl on the primary (None: not connected)."""
    rows = primary_psql.query(
        sql.SQL("SELECT s.ssl, s.version, s.cipher FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                "WHERE r.application_name = {}").format(sql.Literal(standby.name)))
    return rows[0] if rows else None


def check_replication_tls(primary_psql: Psql, standby: "Server") -> Check:
    """The replication connection of *standby* is encrypted (pg_stat_ssl on the primary)."""
    row = get_replication_tls(primary_psql, standby)
    if row is None:
        return Check("replication over TLS", "fail", f"no walsender for {standby.name}", primary_psql.host.name)
    return Check.of("replication over TLS", bool(row["ssl"]),
                    f"{row['version']} {row['cipher']}" if row["ssl"] else "NOT ENCRYPTED", standby.name)


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
    out.append(check_replication_tls(ppsql, standby))
    out.append(check_row_replicates(ppsql, rpsql, timeout=rep.catch_up_timeout_s))
    rows = [r for r in get_replication_rows(ppsql) if r["slot_name"] == slot]
    if rows:
        lag_b, lag_s = rows[0]["replay_lag_bytes"], rows[0]["replay_lag_s"]
        out.append(Check("replay lag", "pass" if (lag_s or 0) < rep.catch_up_timeout_s else "warn",
                         f"{lag_b} bytes behind, replay_lag {lag_s if lag_s is not None else 0:.3f}s", standby.name))
    out.append(check_refuses_writes(rpsql))
    db = params.postgres.database
    if ppsql.value(sql.SQL("SELECT count(*) AS n FROM pg_database WHERE datname = {}").format(sql.Literal(db))):
        out.append(check_unlogged_tables(ppsql, db, standby.name))
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


#: unlogged tables (relpersistence 'u'): their rows are never in WAL, so on no replica and in no backup
UNLOGGED_TABLES_SQL = ("SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p') ORDER BY 1")


def get_unlogged_tables(psql: Psql, dbname: str) -> list[str]:
    """The unlogged tables of *dbname*: a failover or a restore has them empty."""
    return [r["t"] for r in psql.query(UNLOGGED_TABLES_SQL, dbname=dbname)]


def check_unlogged_tables(psql: Psql, dbname: str, target: str = "") -> Check:
    """A warning naming every unlogged table: a failover or a restore empties it (pass when there is none)."""
    names = get_unlogged_tables(psql, dbname)
    return Check("unlogged tables", "warn" if names else "pass",
                 (f"{', '.join(names)}: unlogged, so never in WAL: a replica, a backup and a point-in-time restore "
                  "do not have their rows, and a failover or a restore leaves them EMPTY (make them logged with "
                  "ALTER TABLE ... SET LOGGED if their rows matter)") if names else f"none in {dbname}", target)


def get_table_counts(psql: Psql, dbname: str) -> dict[str, int]:
    """Exact row counts of every logged user table in *dbname* (for comparing primary and replica).

    Unlogged tables are left out: a standby cannot read them at all, and they hold no rows there.
    """
    tables = psql.query("SELECT format('%I.%I', s.schemaname, s.relname) AS t FROM pg_stat_user_tables s "
                        "JOIN pg_class c ON c.oid = s.relid WHERE c.relpersistence <> 'u' ORDER BY 1",
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
    unlogged = get_unlogged_tables(primary_psql, dbname)
    note = (f"; unlogged, not replicated and expected empty on the replica: {', '.join(unlogged)}"
            if unlogged else "")
    return Check.of(f"row counts in {dbname} match", not diff,
                    (f"{len(a)} table(s), {sum(a.values())} row(s), caught up in {waited:.2f}s" if not diff
                     else f"differ: {diff}") + note, replica_psql.host.name)


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
    so they survive the data directory being replaced); with a repository in params, pgBackRest too (its
    ``restore_command`` is the replica's fallback to the archive) and both schedules (backups run only
    where ``pg_is_in_recovery()`` is false, so this one starts taking them when it is promoted)."""
    out = [ensure_replication_settings(host, params, standby, dry_run=dry_run),
           ensure_hba(host, params, standby, dry_run=dry_run),
           ensure_passfile(host, params, standby, password, dry_run=dry_run)]
    if params.pgbackrest is not None:
        out += pgbackrest.configure_standby(host, params, standby, dry_run=dry_run)
        out += schedule.ensure_schedules(host, params, standby, dry_run=dry_run)
    return out


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
