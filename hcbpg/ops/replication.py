"""Streaming replication (step 10), the operations on one server: the replication role, its passfile,
slots and the probe table on the primary, and the checks that a replica streams, replays and refuses
writes.  Step 10 itself (who is primary, which server is made whose replica) is composed in
:mod:`hcbpg.steps.replication`; the settings and pg_hba lines are :mod:`hcbpg.ops.config`'s
(rendered in :mod:`hcbpg.desired.server`), the rebuild of a replica :mod:`hcbpg.ops.replica`'s.

Every ``ensure_*`` here is one code path (pyinfra's model): it reads (``probe``, ``Psql.query``),
decides, then writes through the adapter, and its ``changed`` is what the host's journal gained, so
a :class:`~hcbpg.adapters.dryrun.DryRunHost` gives the dry run and an
:class:`~hcbpg.adapters.dryrun.AbsentHost` the plan for a server not there yet.

Symmetry: every server gets the same replication setup (pg_hba lines for each *peer's*
private IP as a /32, a passfile naming each peer, the replication settings), so a failover
changes no config file; only which server streams from which.
"""

from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.base import Changes
from hcbpg.adapters.psql import render
from hcbpg.desired.replication import (
    PASSWORD_KEY,
    REWIND_FUNCTIONS,
    passfile_path,
    peers,
    plan_replication_role,
    plan_rewind_grants,
    render_passfile,
    replication_params,
    slot_name,
)
from hcbpg.errors import DatabaseError, SafetyCheckFailed, WaitTimeout
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.app_database import get_role
from hcbpg.ops.replica import get_replication_rows
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.bucardo import SCHEMA as BUCARDO_SCHEMA
from hcbpg.pg.conf import parse_auto_conf
from hcbpg.pg.conninfo import parse_conninfo
from hcbpg.pg.inventory import not_ext_member
from hcbpg.secrets import scrub
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params, Server

__all__ = ["PASSWORD_KEY"]  # the secret's key, for the steps and checks that name it

PROBE_TABLE = "hcbpg_replication_probe"


# the replication role ------------------------------------------------------------------

def get_rewind_grants(psql: "PsqlLike", params: "Params") -> dict[str, bool]:
    """Whether the replication role may EXECUTE each function pg_rewind needs (all False: no such role)."""
    role = replication_params(params).role
    if get_role(psql, role) is None:
        return {f: False for f in REWIND_FUNCTIONS}
    cols = sql.SQL(", ").join(
        sql.SQL("has_function_privilege({}, {}, 'EXECUTE') AS {}").format(sql.Literal(role), sql.Literal(f),
                                                                       sql.Identifier(f"f{i}"))
        for i, f in enumerate(REWIND_FUNCTIONS))
    rows = psql.query(sql.SQL("SELECT ") + cols)
    return {f: bool(rows[0][f"f{i}"]) if rows else False for i, f in enumerate(REWIND_FUNCTIONS)}


def ensure_replication_role(psql: "PsqlLike", params: "Params", password: str) -> Outcome:
    """Role repuser on the primary: REPLICATION LOGIN, CONNECTION LIMIT, the secret's password, pg_rewind grants."""
    rep = replication_params(params)
    name = psql.host.name
    seen = Changes(psql.host)
    statements = plan_replication_role(params, get_role(psql, rep.role), password, host_name=name)
    statements += plan_rewind_grants(params, get_rewind_grants(psql, params))
    if statements:
        psql.execute(statements)
    return seen.outcome(f"replication role {rep.role} on {name}",
                        actions=[scrub(" ".join(render(s).split())) for s in statements])


# files on a server -----------------------------------------------------------------------

def ensure_passfile(host: "HostLike", params: "Params", server: "Server", password: str) -> Outcome:
    """``~postgres/.pgpass`` (0600, postgres) holds the replication password for each peer."""
    path = passfile_path()
    seen = Changes(host)
    desired = render_passfile(params, server, password)
    current = host.read_text(path)
    st = host.probe(f"stat -c '%a %U' {shlex.quote(path)}").stdout.strip()
    if current != desired or st != "600 postgres":
        host.put_text(path, desired, mode=0o600, owner="postgres", group="postgres")
    return seen.outcome(f"{path} on {server.name}", actions=[
        f"write {path} (mode 0600, owner postgres; {len(peers(params, server))} peer(s), password not shown)"])


# slots ---------------------------------------------------------------------------------------

def get_slots(psql: "PsqlLike") -> dict[str, dict[str, Any]]:
    """The replication slots of the cluster, by name."""
    rows = psql.query("SELECT slot_name, slot_type, active, restart_lsn::text AS restart_lsn, wal_status, "
                      "safe_wal_size FROM pg_replication_slots")
    return {r["slot_name"]: r for r in rows}


def ensure_slot(psql: "PsqlLike", params: "Params", replica: "Server") -> Outcome:
    """The physical slot for *replica* exists on the primary (reserving WAL from now).

    A slot ``max_slot_wal_keep_size`` invalidated (``wal_status`` lost) is dropped and made again:
    the replica fetches the WAL it missed from the repository (``restore_command``), then
    streams through the new slot; no rebuild.
    """
    slot = slot_name(replica.name)
    name = psql.host.name
    seen = Changes(psql.host)
    slots = get_slots(psql)
    create = sql.SQL("SELECT pg_create_physical_replication_slot({}, true)").format(sql.Literal(slot))
    statements: list[sql.Composable] = [create]
    actions = [render(create)]
    if slot in slots:
        if slots[slot]["slot_type"] != "physical":
            raise SafetyCheckFailed(f"on {name}: slot {slot} exists but is {slots[slot]['slot_type']}",
                                    hint=f"Drop it (SELECT pg_drop_replication_slot('{slot}')) and run again.")
        if slots[slot].get("wal_status") != "lost":
            statements = []
        else:
            drop = sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(slot))
            statements = [drop, create]
            actions = [f"{slot} was invalidated (max_slot_wal_keep_size): made again; {replica.name} fetches the "
                       "WAL it missed from the repository (restore_command), then streams", render(drop),
                       render(create)]
    if statements:
        psql.execute(statements)
    return seen.outcome(f"replication slot {slot} on {name}", actions=actions)


def ensure_no_stale_slots(psql: "PsqlLike", params: "Params", *, keep: Iterable[str]) -> Outcome:
    """Drop inactive hcbpg slots (``<server>_slot``) that *keep* does not name: they would hold WAL forever.

    A former primary keeps its old slots through pg_rewind (pg_replslot is not copied).
    """
    seen = Changes(psql.host)
    ours = {slot_name(s.name) for s in params.servers}
    stale = [n for n, s in get_slots(psql).items() if n in ours and n not in set(keep) and not s["active"]]
    statements = [sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(n)) for n in sorted(stale)]
    if statements:
        psql.execute(statements)
    return seen.outcome(f"stale replication slots on {psql.host.name}", actions=[render(s) for s in statements])


# the probe table ------------------------------------------------------------------------------

def ensure_probe_table(psql: "PsqlLike") -> Outcome:
    """Table hcbpg_replication_probe in database postgres on the primary (rows the checks write and read back)."""
    seen = Changes(psql.host)
    stmt = sql.SQL("CREATE TABLE IF NOT EXISTS {} (token text PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now(), "
                   "written_on text NOT NULL DEFAULT current_setting('cluster_name'))").format(sql.Identifier(PROBE_TABLE))
    if not psql.value(sql.SQL("SELECT to_regclass({}) IS NOT NULL AS e").format(sql.Literal(f"public.{PROBE_TABLE}"))):
        psql.execute(stmt)
    return seen.outcome(f"table {PROBE_TABLE} in database postgres on {psql.host.name}",
                        actions=[" ".join(render(stmt).split())])


# waiting and checking ------------------------------------------------------------------------------

def get_wal_lsn(psql: "PsqlLike") -> str:
    """The primary's current WAL position."""
    return str(psql.value("SELECT pg_current_wal_lsn()::text AS lsn"))


def wait_for_catch_up(replica_psql: "PsqlLike", lsn: str, *, timeout: float,
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


def run_write_probe_row(psql: "PsqlLike") -> str:
    """Insert a fresh token into the probe table (quietly: a check, not a change) and return it."""
    token = uuid.uuid4().hex
    stmt = sql.SQL("INSERT INTO {} (token) VALUES ({})").format(sql.Identifier(PROBE_TABLE), sql.Literal(token))
    res = psql.attempt(stmt)
    if not res.ok:
        raise DatabaseError(f"on {psql.host.name}: cannot write a probe row into {PROBE_TABLE}: "
                            + scrub(res.output.strip())[-200:], host=psql.host.name, database="postgres",
                            statement=render(stmt),
                            hint="Is it the primary, and did step 10 create the probe table?")
    return token


def check_row_replicates(primary_psql: "PsqlLike", replica_psql: "PsqlLike", *, timeout: float,
                         sleep: Callable[[float], None] = time.sleep) -> Check:
    """A row written on the primary is read on the replica within *timeout* seconds."""
    name = "row written on the primary is read on the replica"
    try:
        token = run_write_probe_row(primary_psql)
    except DatabaseError as exc:
        return Check(name, "fail", f"could not write on {primary_psql.host.name}: {exc.message[-200:]}",
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


def check_refuses_writes(replica_psql: "PsqlLike") -> Check:
    """The replica refuses a write (read-only transaction)."""
    name = "replica refuses writes"
    res = replica_psql.attempt(sql.SQL("INSERT INTO {} (token) VALUES ('refused')").format(sql.Identifier(PROBE_TABLE)))
    if res.ok:
        return Check(name, "fail", "a write was ACCEPTED on the replica", replica_psql.host.name)
    ok = "read-only transaction" in res.output
    return Check.of(name, ok, "cannot execute INSERT in a read-only transaction" if ok else scrub(res.output.strip())[-200:],
                    replica_psql.host.name)


def check_auto_conf(host: "HostLike", params: "Params", standby: "Server", primary: "Server", password: str) -> list[Check]:
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


def get_replication_tls(primary_psql: "PsqlLike", standby: "Server") -> dict[str, Any] | None:
    """The walsender of *standby* joined with pg_stat_ssl on the primary (None: not connected)."""
    rows = primary_psql.query(
        sql.SQL("SELECT s.ssl, s.version, s.cipher FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                "WHERE r.application_name = {}").format(sql.Literal(standby.name)))
    return rows[0] if rows else None


def check_replication_tls(primary_psql: "PsqlLike", standby: "Server") -> Check:
    """The replication connection of *standby* is encrypted (pg_stat_ssl on the primary)."""
    row = get_replication_tls(primary_psql, standby)
    if row is None:
        return Check("replication over TLS", "fail", f"no walsender for {standby.name}", primary_psql.host.name)
    return Check.of("replication over TLS", bool(row["ssl"]),
                    f"{row['version']} {row['cipher']}" if row["ssl"] else "NOT ENCRYPTED", standby.name)


def get_auto_conf_text(host: "HostLike", params: "Params") -> str:
    """postgresql.auto.conf of the cluster (scrubbed), to show the operator."""
    st = pg_cluster.get_cluster(host, params) or {}
    return scrub(host.read_text(f"{st.get('pgdata')}/postgresql.auto.conf") or "")


def check_replication(primary_host: "HostLike", replica_host: "HostLike", params: "Params", standby: "Server",
                      primary: "Server", password: str) -> list[Check]:
    """Step 10's checks for one replica: streaming with its slot active, a row replicates in time,
    replay lag, writes refused, cluster_name, passfile mode, no password in postgresql.auto.conf."""
    rep = replication_params(params)
    ppsql, rpsql = pg_cluster.get_psql(primary_host, params), pg_cluster.get_psql(replica_host, params)
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


#: unlogged tables (relpersistence 'u'): their rows are never in WAL, so on no replica and in no backup.
#: Not Bucardo's own (its schema's stage tables are unlogged by design: scratch space of a sync, whose
#: rows a restore need not have) nor an extension's: only the application's tables are named
UNLOGGED_TABLES_SQL = ("SELECT format('%I.%I', n.nspname, c.relname) AS t FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p') "
                       f"AND n.nspname <> '{BUCARDO_SCHEMA}' AND {not_ext_member('pg_class', 'c.oid')} ORDER BY 1")


def get_unlogged_tables(psql: "PsqlLike", dbname: str) -> list[str]:
    """The unlogged tables of *dbname*: a failover or a restore has them empty."""
    return [r["t"] for r in psql.query(UNLOGGED_TABLES_SQL, dbname=dbname)]


def check_unlogged_tables(psql: "PsqlLike", dbname: str, target: str = "") -> Check:
    """A warning naming every unlogged table: a failover or a restore empties it (pass when there is none)."""
    names = get_unlogged_tables(psql, dbname)
    return Check("unlogged tables", "warn" if names else "pass",
                 (f"{', '.join(names)}: unlogged, so never in WAL: a replica, a backup and a point-in-time restore "
                  "do not have their rows, and a failover or a restore leaves them EMPTY (make them logged with "
                  "ALTER TABLE ... SET LOGGED if their rows matter)") if names else f"none in {dbname}", target)


def get_table_counts(psql: "PsqlLike", dbname: str) -> dict[str, int]:
    """Exact row counts of every logged user table in *dbname* (for comparing primary and replica).

    Unlogged tables are left out: a standby cannot read them at all, and they hold no rows there.
    """
    tables = psql.query("SELECT format('%I.%I', s.schemaname, s.relname) AS t, s.schemaname AS schema, "
                        "s.relname AS name FROM pg_stat_user_tables s "
                        "JOIN pg_class c ON c.oid = s.relid WHERE c.relpersistence <> 'u' ORDER BY 1",
                        dbname=dbname)
    if not tables:
        return {}
    parts = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS t, count(*) AS n FROM {}").format(sql.Literal(t["t"]),
                                                                sql.Identifier(t["schema"], t["name"]))
        for t in tables)
    return {r["t"]: int(r["n"]) for r in psql.query(parts, dbname=dbname)}


def check_counts_match(primary_psql: "PsqlLike", replica_psql: "PsqlLike", dbname: str, *, timeout: float) -> Check:
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
