"""The restore drill (step 12): restore a backup onto a scratch host, start it, and compare it
with the primary as it was at the backup's point; never touches the primary.

The primary's side of the comparison is a *fingerprint* (per-table row counts, checksums
of chosen tables, sequences, extensions, databases) taken in one read-only snapshot just
before the backup it describes (step 08, while no traffic runs yet), recorded with the
backup's label.  The drill restores exactly that backup (``--set=<label> --type=immediate``:
recovery stops where the backup became consistent) and takes the same fingerprint on
the scratch host.  ``restore_options`` also builds point-in-time restores (``--type=time``).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.host import Host
from hcbpg.adapters.psql import Psql, render
from hcbpg.adapters.site import site_for
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired.capacity import ServerShape
from hcbpg.errors import DatabaseError, HcbpgError, HostUnreachable, ParamsError, SafetyCheckFailed, WaitTimeout
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.cluster import get_cluster, psql_for
from hcbpg.ops.server import install_server
from hcbpg.outcome import Check, Outcome
from hcbpg.params import Server
from hcbpg.pg.conf import parse_settings
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server

#: where the drill notes what it restored (outside the data directory, which the restore replaces)
MARKER = "/var/lib/postgresql/hcbpg-restore-drill.json"
#: nextval() logs sequence values this many ahead, so a restored sequence may be ahead by up to this
SEQ_LOG_VALS = 32


# the scratch host ------------------------------------------------------------------------------

@dataclass(frozen=True)
class DrillTarget:
    """The scratch host a drill restores onto (never one of params.servers)."""

    name: str
    private_ip: str
    ssh_host: str | None = None
    checksum_tables: tuple[str, ...] | None = None  # None: every table


def drill_target(params: "Params") -> DrillTarget:
    """The scratch host from params (``drill``: name, private_ip, ssh_host, checksum_tables), else the site's default
    (in the lab drill-1 at .30).

    Refuses any host that is one of params.servers or the app host.
    """
    d = getattr(params, "drill", None)
    if d is not None:
        tables = getattr(d, "checksum_tables", None)
        target = DrillTarget(d.name, str(d.private_ip), getattr(d, "ssh_host", None),
                             tuple(tables) if tables is not None else None)
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


def as_server(params: "Params", target: DrillTarget) -> "Server":
    return Server(name=target.name, private_ip=target.private_ip, role="replica", ssh_host=target.ssh_host)


def scratch_host(params: "Params", target: DrillTarget, *, dry_run: bool) -> "Host | None":
    """An open Host for the scratch host; a site that creates it (the lab) creates it first (a fresh server).

    In a dry run a scratch host that does not exist yet is None (the plan assumes a fresh one).
    """
    if not site_for(params).ensure_scratch_host(params, target.name, target.private_ip, dry_run=dry_run):
        return None
    address = target.ssh_host or target.private_ip
    host = Host.from_params(params, target.name, address)
    try:
        return host.connect()
    except HostUnreachable:
        if dry_run:
            print(f"[{target.name}] unreachable at {address}: the plan assumes a fresh server")
            return None
        raise


def prepare_scratch(host: "Host | None", params: "Params", target: DrillTarget, *, version: tuple[int, int, int] | None,
                    dry_run: bool, shape: ServerShape | None = None) -> list[Outcome]:
    """PostgreSQL (step 02's install) and pgBackRest pointed at the primary's repository (read only: restore).

    *shape* is the database servers' type: the scratch cluster gets the capacity settings step 02 gave
    the primary, because recovery refuses to start with ``max_connections``, ``max_worker_processes``
    (and the other settings WAL records) lower than on the server that wrote the backup."""
    server = as_server(params, target)
    outcomes = install_server(host, params, server, dry_run=dry_run, shape=shape)
    outcomes.append(pgb.ensure_paths(host, dry_run=dry_run, specs=pgb.paths_for(params)))
    v = version or pgb.get_installed_version(host)
    outcomes.append(pgb.ensure_pgbackrest_conf(host, params, server, version=v, dry_run=dry_run,
                                               repo_server=params.primary, read_only=True))
    return outcomes


# fingerprints ----------------------------------------------------------------------------------

def _qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def list_tables(psql: Psql, dbname: str) -> list[tuple[str, str]]:
    rows = psql.query("SELECT n.nspname AS schema, c.relname AS name FROM pg_class c "
                      "JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                      "AND n.nspname !~ '^pg_(toast|temp)' ORDER BY 1, 2", dbname=dbname)
    return [(r["schema"], r["name"]) for r in rows]


#: (kind, name, value) rows naming every unlogged table (relpersistence 'u') of the database
UNLOGGED_SQL = ("SELECT 'unlogged', n.nspname || '.' || c.relname, NULL FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p')")


def render_fingerprint_query(tables: Sequence[tuple[str, str]], checksum: Sequence[tuple[str, str]]) -> str:
    """One statement (one snapshot) giving (kind, name, value) rows: counts, checksums, sequences, extensions."""
    parts: list[sql.Composable] = [sql.SQL("SELECT 'meta'::text AS kind, 'taken_at'::text AS name, now()::text AS value")]
    for schema, name in tables:
        parts.append(sql.SQL("SELECT 'count', {}, count(*)::text FROM {}.{}").format(
            sql.Literal(_qualified(schema, name)), sql.Identifier(schema), sql.Identifier(name)))
    for schema, name in checksum:
        # order-independent: the md5 of the sorted md5s of every row's text form
        parts.append(sql.SQL("SELECT 'checksum', {}, md5(coalesce(string_agg(md5(t::text), '' ORDER BY md5(t::text)), '')) "
                             "FROM {}.{} AS t").format(
            sql.Literal(_qualified(schema, name)), sql.Identifier(schema), sql.Identifier(name)))
    parts.append(sql.SQL("SELECT 'sequence', schemaname || '.' || sequencename, last_value::text FROM pg_sequences"))
    parts.append(sql.SQL("SELECT 'extension', extname::text, extversion FROM pg_extension"))
    parts.append(sql.SQL("SELECT 'database', datname::text, NULL FROM pg_database WHERE datallowconn"))
    # an unlogged table's rows are in no WAL, so in no backup and on no replica: named, expected empty there
    parts.append(sql.SQL(UNLOGGED_SQL))
    return render(sql.SQL(" UNION ALL ").join(parts))


def parse_fingerprint_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    fp: dict[str, Any] = {"taken_at": None, "tables": {}, "checksums": {}, "sequences": {}, "extensions": {},
                          "databases": [], "unlogged": []}
    for r in rows:
        kind, name, value = r["kind"], r["name"], r["value"]
        if kind == "meta":
            fp[name] = value
        elif kind == "count":
            fp["tables"][name] = int(value)
        elif kind == "checksum":
            fp["checksums"][name] = value
        elif kind == "sequence":
            fp["sequences"][name] = int(value) if value is not None else None
        elif kind == "extension":
            fp["extensions"][name] = value
        elif kind == "database":
            fp["databases"].append(name)
        elif kind == "unlogged":
            fp["unlogged"].append(name)
    fp["databases"].sort()
    fp["unlogged"].sort()
    for k in ("tables", "checksums", "sequences", "extensions"):
        fp[k] = dict(sorted(fp[k].items()))
    return fp


def get_fingerprint(host: "Host", params: "Params", *, checksum_tables: Sequence[str] | None = None) -> dict[str, Any]:
    """Row counts of every table, checksums of *checksum_tables* (None: every table), sequences,
    extensions and databases of the app database, in one read-only snapshot (read-only transaction)."""
    psql = psql_for(host, params)
    db = params.postgres.database
    tables = list_tables(psql, db)
    if checksum_tables is None:
        chosen = tables
    else:
        known = {_qualified(*t): t for t in tables}
        missing = [t for t in checksum_tables if t not in known]
        if missing:
            raise ParamsError("params", [f"drill.checksum_tables: no table {t} in {db} (write schema.table)"
                                         for t in missing])
        chosen = [known[t] for t in checksum_tables]
    query = render_fingerprint_query(tables, chosen)
    script = ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;\n"
              f"SELECT coalesce(json_agg(q), '[]'::json) FROM ({query}) AS q;\nCOMMIT;\n")
    res = host.run(psql._cmd(db, " -A -t"), sudo_user=psql.os_user, stdin=script, quiet=True, check=False)
    if not res.ok:
        raise DatabaseError(f"on {host.name}: the fingerprint query failed in {db}: {hsecrets.scrub(res.output.strip())[-1500:]}",
                            hint="It only reads; nothing changed.")
    fp = parse_fingerprint_rows(json.loads(res.stdout.strip() or "[]"))
    fp["database"] = db
    fp["host"] = host.name
    return fp


def ensure_baseline_backup(host: "Host | None", params: "Params", *, dry_run: bool,
                           checksum_tables: Sequence[str] | None = None,
                           quiesce: Callable[[], None] | None = None,
                           ) -> tuple[Outcome, "pgb.BackupRow | None", dict[str, Any] | None]:
    """The first full backup (only when none exists), with the primary's fingerprint taken right before it.

    *quiesce* (optional) is called first, only when a backup is taken: whatever still writes to the
    primary (Bucardo's sync before an online cutover) stops there, so the backup holds exactly what
    the fingerprint describes; the caller starts it again after.

    Returns (outcome, backup, fingerprint); the fingerprint is None when no backup was taken
    now (the one recorded with the earlier backup still describes it).
    """
    taken: dict[str, Any] = {}

    def before() -> None:
        if quiesce is not None:
            quiesce()
        taken.update(get_fingerprint(host, params, checksum_tables=checksum_tables))  # type: ignore[arg-type]

    outcome, backup = pgb.ensure_full_backup(host, params, dry_run=dry_run, before=before)
    if not taken or backup is None:
        return outcome, backup, None
    taken.update(backup_label=backup.label, backup_type=backup.type, backup_stop=backup.stop,
                 wal_start=backup.wal_start, wal_stop=backup.wal_stop)
    return outcome, backup, taken


def compare_fingerprints(primary: Mapping[str, Any], restored: Mapping[str, Any], *, target: str = "") -> list[Check]:
    """Checks that the restored cluster matches the primary's fingerprint."""
    out = []
    pt, rt = primary.get("tables", {}), restored.get("tables", {})
    missing, extra = sorted(set(pt) - set(rt)), sorted(set(rt) - set(pt))
    out.append(Check.of("same tables", not missing and not extra,
                        f"{len(pt)} table(s)" if not missing and not extra else
                        f"missing: {', '.join(missing[:10]) or '-'}; extra: {', '.join(extra[:10]) or '-'}", target))
    unlogged = set(primary.get("unlogged") or ())
    if unlogged:
        not_empty = [f"{t}: {rt.get(t)}" for t in sorted(unlogged) if rt.get(t)]
        out.append(Check.of("unlogged tables restored empty", not not_empty,
                            f"{', '.join(sorted(unlogged))}: unlogged, so in no backup and on no replica; "
                            "restored empty, as expected" if not not_empty else "not empty: " + "; ".join(not_empty),
                            target))
    diff = [f"{t}: {pt[t]} vs {rt[t]}" for t in sorted(set(pt) & set(rt)) if pt[t] != rt[t] and t not in unlogged]
    total = sum(v for t, v in pt.items() if t not in unlogged)
    out.append(Check.of("row counts match", not diff,
                        f"{total} row(s) in {len(pt)} table(s)" if not diff else
                        f"{len(diff)} table(s) differ: " + "; ".join(diff[:10]), target))
    for t, md5 in primary.get("checksums", {}).items():
        if t in unlogged:
            continue
        got = restored.get("checksums", {}).get(t)
        out.append(Check.of(f"checksum {t}", got == md5, f"{md5[:12]}…" if got == md5 else f"{md5[:12]}… vs {str(got)[:12]}…",
                            target))
    ps, rs = primary.get("sequences", {}), restored.get("sequences", {})
    behind, ahead = [], []
    for s, v in ps.items():
        r = rs.get(s, "missing")
        if r == "missing" or (v is not None and (r is None or r < v)):
            behind.append(f"{s}: {v} vs {r}")
        elif v is not None and r is not None and r > v:
            ahead.append(r - v)
    out.append(Check.of("sequences not behind", not behind,
                        (f"{len(ps)} sequence(s); " + (f"{len(ahead)} ahead by up to {max(ahead)} (nextval logs "
                                                       f"{SEQ_LOG_VALS} ahead in WAL: expected)" if ahead else "all equal"))
                        if not behind else "; ".join(behind[:10]), target))
    pe, re_ = primary.get("extensions", {}), restored.get("extensions", {})
    out.append(Check.of("extensions match", pe == re_, ", ".join(f"{k} {v}" for k, v in pe.items()) if pe == re_ else
                        f"{pe} vs {re_}", target))
    out.append(Check.of("databases match", primary.get("databases") == restored.get("databases"),
                        ", ".join(primary.get("databases", [])), target))
    return out


def comparison_rows(primary: Mapping[str, Any], restored: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-table rows for a table: rows on the primary, rows restored, checksum match."""
    out = []
    for t in sorted(set(primary.get("tables", {})) | set(restored.get("tables", {}))):
        p, r = primary.get("tables", {}).get(t), restored.get("tables", {}).get(t)
        pc, rc = primary.get("checksums", {}).get(t), restored.get("checksums", {}).get(t)
        out.append({"table": t, "primary rows": p, "restored rows": r,
                    "checksum": "" if pc is None else ("same" if pc == rc else "DIFFERENT"),
                    "status": "pass" if p == r and (pc is None or pc == rc) else "fail"})
    return out


# the restore -----------------------------------------------------------------------------------

def restore_options(*, set_label: str | None = None, target_time: str | None = None,
                    target_xid: str | None = None) -> list[str]:
    """pgbackrest restore options: a backup (--set, stop at consistency), a point in time, a transaction, or the latest.

    Always ``--archive-mode=off``: the restored cluster must never push WAL into the
    primary's repository.  Recovery promotes at the target; a time or transaction target
    follows the latest timeline, so a target before a failover is found on the old one.
    """
    opts = ["--archive-mode=off", "--log-level-console=info"]
    if target_time or target_xid:
        opts += ["--type=time", f"--target={target_time}"] if target_time else ["--type=xid", f"--target={target_xid}"]
        opts += ["--target-action=promote"]
        if set_label:
            opts.append(f"--set={set_label}")
    elif set_label:
        opts += [f"--set={set_label}", "--type=immediate", "--target-action=promote"]
    return opts


@dataclass
class RestoreResult:
    """What one restore did and how long it took (time to recover)."""

    host: str
    backup_label: str | None
    target_time: str | None
    options: list[str]
    restore_s: float = 0.0
    recovery_s: float = 0.0
    total_s: float = 0.0
    finished_at: str = ""
    restored_now: bool = True
    auto_conf: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def outcome(self, dry_run: bool) -> Outcome:
        what = f"restore of {self.backup_label or 'the latest backup'} onto {self.host}"
        cmd = "pgbackrest restore " + " ".join(self.options)
        if dry_run:
            return Outcome(what, True, True, actions=["stop the scratch cluster, empty its data directory", cmd,
                                                      "start it and wait for promotion"])
        if not self.restored_now:
            return Outcome(what, False, False, actions=[f"already restored at {self.finished_at} (marker {MARKER})"])
        return Outcome(what, True, False, actions=[cmd, f"restore {self.restore_s}s, recovery {self.recovery_s}s, "
                                                        f"time to recover {self.total_s}s"])


def _utcnow() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_marker(host: "Host") -> dict[str, Any] | None:
    text = host.read_text(MARKER)
    return json.loads(text) if text else None


def _require_scratch(host: "Host", params: "Params", target: DrillTarget) -> None:
    """The host we are about to wipe says it is the scratch host (hostname) and is none of the servers."""
    hostname = host.probe("hostname").stdout.strip()
    ips = host.probe("hostname -I").stdout.split()
    servers = {s.private_ip: s.name for s in params.servers}
    clash = [f"{servers[ip]} ({ip})" for ip in ips if ip in servers]
    if hostname != target.name or clash:
        raise SafetyCheckFailed(
            f"refusing to wipe the data directory on {host.name}: its hostname is {hostname!r} (expected "
            f"{target.name!r})" + (f" and it has the address of {', '.join(clash)}" if clash else ""),
            hint="The drill restores only onto its own scratch server; check drill in params.")


def wait_for_promotion(psql: Psql, *, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until recovery has ended (``pg_is_in_recovery()`` is false)."""
    last = ""
    for _ in polling_loop(timeout, interval=0.5, sleep=sleep):
        try:
            if psql.value("SELECT pg_is_in_recovery() AS r") is False:
                return
        except DatabaseError as exc:  # still starting up
            last = exc.message.splitlines()[-1]
    raise WaitTimeout(f"on {psql.host.name}: recovery did not end within {timeout:.0f}s {last}".strip(),
                      what=f"{psql.host.name} promoted", timeout=timeout, last=last,
                      hint="Look at the server log under /var/log/postgresql/ on the scratch host.")


def run_restore(host: "Host | None", params: "Params", target: DrillTarget, *, set_label: str | None = None,
                target_time: str | None = None, target_xid: str | None = None, dry_run: bool, force: bool = False,
                timeout: float = 3600) -> RestoreResult:
    """Restore onto the scratch host: stop, empty the data directory, ``pgbackrest restore``, start, wait for promotion.

    When the scratch host already holds a finished restore of the same backup and target
    (its marker says so) and the cluster runs, nothing is done again unless *force*.
    """
    opts = restore_options(set_label=set_label, target_time=target_time, target_xid=target_xid)
    result = RestoreResult(target.name, set_label, target_time or (f"xid {target_xid}" if target_xid else None), opts)
    if host is None or dry_run:
        result.restored_now = False
        return result
    marker = read_marker(host)
    cluster = get_cluster(host, params)
    if (not force and marker and marker.get("backup_label") == set_label and marker.get("target_time") == result.target_time
            and cluster and cluster.get("running")):
        done = RestoreResult(**{k: v for k, v in marker.items() if k in RestoreResult.__dataclass_fields__})
        done.restored_now = False
        return done
    _require_scratch(host, params, target)
    data = desired_pgbackrest.pg_data_path(params)
    v, c = params.postgres.version, shlex.quote(params.postgres.cluster)
    started = time.monotonic()
    if cluster and cluster.get("running"):
        host.run(f"pg_ctlcluster {v} {c} stop -m fast", timeout=300)
    host.run(f"rm -f {MARKER}")
    host.run(f"find {shlex.quote(data)} -mindepth 1 -delete", sudo_user="postgres")  # the owner's, as the owner
    t = time.monotonic()
    pgb.run_pgbackrest(host, params, "restore", *opts, timeout=timeout)
    result.restore_s = round(time.monotonic() - t, 2)
    t = time.monotonic()
    host.run(f"pg_ctlcluster {v} {c} start -- -t {int(timeout)}", timeout=timeout + 60)
    wait_for_promotion(psql_for(host, params), timeout=timeout)
    result.recovery_s = round(time.monotonic() - t, 2)
    result.total_s = round(time.monotonic() - started, 2)
    result.finished_at = _utcnow()
    result.auto_conf = get_auto_conf(host, params)
    host.put_text(MARKER, json.dumps(result.record(), indent=2) + "\n", mode=0o644, owner="postgres")
    return result


# postgresql.auto.conf ---------------------------------------------------------------------------

def get_auto_conf(host: "Host", params: "Params") -> dict[str, str]:
    """The settings in the restored data directory's postgresql.auto.conf."""
    text = host.read_text(f"{desired_pgbackrest.pg_data_path(params)}/postgresql.auto.conf", sudo_user="postgres") or ""
    return parse_settings(text)


def read_auto_conf_text(host: "Host", params: "Params") -> str:
    """The restored postgresql.auto.conf, as it is on the scratch host."""
    return host.read_text(f"{desired_pgbackrest.pg_data_path(params)}/postgresql.auto.conf", sudo_user="postgres") or "(missing)"


def check_auto_conf(auto: Mapping[str, str], params: "Params", *, target: str = "") -> list[Check]:
    """postgresql.auto.conf holds what pgBackRest's restore wrote: restore_command for this stanza and
    archive_mode = off; anything else came from ALTER SYSTEM on the primary and is shown as a warning."""
    stanza = params.pgbackrest.stanza if params.pgbackrest else ""
    rc = auto.get("restore_command", "")
    out = [
        Check.of("restore_command from pgBackRest", f"--stanza={stanza}" in rc and "archive-get" in rc,
                 rc or "no restore_command", target),
        Check.of("archive_mode off in postgresql.auto.conf", auto.get("archive_mode", "").strip("'") == "off",
                 f"archive_mode = {auto.get('archive_mode', '(unset)')}: the drill never pushes WAL", target),
    ]
    expected = {"restore_command", "archive_mode", "recovery_target", "recovery_target_time",
                "recovery_target_action", "recovery_target_timeline", "recovery_target_lsn", "recovery_target_name"}
    other = sorted(set(auto) - expected)
    out.append(Check("no other settings (ALTER SYSTEM on the primary)", "warn" if other else "pass",
                     ", ".join(f"{k} = {auto[k]}" for k in other) if other else "only pgBackRest's lines", target))
    return out


def verify_restore(host: "Host", params: "Params", target: DrillTarget, fingerprint: Mapping[str, Any],
                   result: RestoreResult) -> tuple[list[Check], dict[str, Any]]:
    """The drill's checks: promoted, recovery files gone, postgresql.auto.conf, ``pgbackrest verify`` of the whole
    repository, and the fingerprint comparison (unlogged tables expected empty)."""
    psql = psql_for(host, params)
    in_recovery = psql.value("SELECT pg_is_in_recovery() AS r")
    data = desired_pgbackrest.pg_data_path(params)
    signal_left = host.exists(f"{data}/recovery.signal")
    checks = [Check.of("restored cluster is promoted", in_recovery is False,
                       "accepting writes (pg_is_in_recovery() = false)" if in_recovery is False else "still in recovery",
                       target.name),
              Check.of("recovery.signal removed", not signal_left,
                       "removed at promotion" if not signal_left else f"{data}/recovery.signal still there", target.name),
              Check.of("restored the recorded backup", result.backup_label == fingerprint.get("backup_label"),
                       f"{result.backup_label}", target.name)]
    checks += check_auto_conf(get_auto_conf(host, params), params, target=target.name)
    checks.append(check_verify(host, params, target.name))
    tables = target.checksum_tables
    if tables is None and fingerprint.get("checksums") is not None:
        tables = tuple(fingerprint["checksums"])
    restored = get_fingerprint(host, params, checksum_tables=list(tables) if tables is not None else None)
    checks += compare_fingerprints(fingerprint, restored, target=target.name)
    return checks, restored


def check_verify(host: "Host", params: "Params", target: str = "", *, timeout: float = 3600) -> Check:
    """``pgbackrest verify``: every backup file and archived WAL segment in the repository reads back with its
    checksum (read-only; run from the scratch host, never the primary)."""
    res = pgb.run_pgbackrest(host, params, "verify", "--log-level-console=info", check=False, timeout=timeout)
    lines = [ln.strip() for ln in res.output.splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if "verify command end" in ln), lines[-1] if lines else "")
    if res.ok:
        return Check("pgbackrest verify", "pass", f"repository verified: {detail[-200:]}", target)
    parsed = pgb.parse_pgbackrest_error(res.output)
    return Check("pgbackrest verify", "fail", f"exit {res.exit_code}: "
                 + (f"[{parsed[0]:03d}] {parsed[1]}" if parsed else detail)[-400:], target)


def get_recovered(host: "Host", params: "Params") -> dict[str, Any]:
    """What a point-in-time restore recovered: the last replayed commit's time, the timeline, rows per table."""
    psql = psql_for(host, params)
    row = psql.query("SELECT pg_last_xact_replay_timestamp()::text AS last_commit, "
                     "(SELECT timeline_id FROM pg_control_checkpoint()) AS timeline, now()::text AS checked_at")[0]
    tables = {t: int(psql.value(sql.SQL("SELECT count(*) AS n FROM {}.{}").format(sql.Identifier(t.split('.')[0]),
                                                                                    sql.Identifier(t.split('.')[1])),
                                dbname=params.postgres.database))
              for t in (_qualified(*x) for x in list_tables(psql, params.postgres.database))}
    return {**row, "tables": tables}


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
