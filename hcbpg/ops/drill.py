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
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.adapters.cluster import ClusterControl
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired.drill import (
    MARKER,
    DrillTarget,
    RestoreResult,
    _qualified,
    check_auto_conf,
    compare_fingerprints,
    parse_fingerprint_rows,
    render_fingerprint_query,
)
from hcbpg.errors import DatabaseError, ParamsError, SafetyCheckFailed, WaitTimeout
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops.cluster import get_cluster, get_psql
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.conf import parse_settings
from hcbpg.pg.pgbackrest import BackupRow, parse_pgbackrest_error, restore_options
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params


# fingerprints ----------------------------------------------------------------------------------

def get_tables(psql: "PsqlLike", dbname: str) -> list[tuple[str, str]]:
    rows = psql.query("SELECT n.nspname AS schema, c.relname AS name FROM pg_class c "
                      "JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                      "AND n.nspname !~ '^pg_(toast|temp)' ORDER BY 1, 2", dbname=dbname)
    return [(r["schema"], r["name"]) for r in rows]


def get_fingerprint(host: "HostLike", params: "Params", *, checksum_tables: Sequence[str] | None = None) -> dict[str, Any]:
    """Row counts of every table, checksums of *checksum_tables* (None: every table), sequences,
    extensions and databases of the app database, in one snapshot (one read-only statement)."""
    psql = get_psql(host, params)
    db = params.postgres.database
    tables = get_tables(psql, db)
    if checksum_tables is None:
        chosen = tables
    else:
        known = {_qualified(*t): t for t in tables}
        missing = [t for t in checksum_tables if t not in known]
        if missing:
            raise ParamsError("params", [f"drill.checksum_tables: no table {t} in {db} (write schema.table)"
                                         for t in missing])
        chosen = [known[t] for t in checksum_tables]
    # one statement: one snapshot; query() runs it as a read (a probe), so the fingerprint changes nothing
    fp = parse_fingerprint_rows(psql.query(render_fingerprint_query(tables, chosen), dbname=db))
    fp["database"] = db
    fp["host"] = host.name
    return fp


def ensure_baseline_backup(host: "HostLike", params: "Params", *,
                           checksum_tables: Sequence[str] | None = None,
                           quiesce: Callable[[], None] | None = None,
                           ) -> tuple[Outcome, BackupRow | None, dict[str, Any] | None]:
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
        taken.update(get_fingerprint(host, params, checksum_tables=checksum_tables))

    outcome, backup = pgb.ensure_full_backup(host, params, before=before)
    if not taken or backup is None:
        return outcome, backup, None
    taken.update(backup_label=backup.label, backup_type=backup.type, backup_stop=backup.stop,
                 wal_start=backup.wal_start, wal_stop=backup.wal_stop)
    return outcome, backup, taken


# the restore -----------------------------------------------------------------------------------

def _utcnow() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def get_marker(host: "HostLike") -> dict[str, Any] | None:
    text = host.read_text(MARKER)
    return json.loads(text) if text else None


def _require_scratch(host: "HostLike", params: "Params", target: DrillTarget) -> None:
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


def wait_for_promotion(psql: "PsqlLike", *, timeout: float, sleep: Callable[[float], None] = time.sleep) -> None:
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


def run_restore(host: "HostLike", params: "Params", target: DrillTarget, *, set_label: str | None = None,
                target_time: str | None = None, target_xid: str | None = None, force: bool = False,
                timeout: float = 3600, repo: int | None = None) -> RestoreResult:
    """Restore onto the scratch host: stop, empty the data directory, ``pgbackrest restore``, start, wait for promotion.

    When the scratch host already holds a finished restore of the same backup and target
    (its marker says so) and the cluster runs, nothing is done again unless *force*.  *repo* (1, 2): restore
    from that repository alone (its backups and WAL), e.g. with repo1's store lost.
    """
    opts = restore_options(set_label=set_label, target_time=target_time, target_xid=target_xid, repo=repo)
    result = RestoreResult(target.name, set_label, target_time or (f"xid {target_xid}" if target_xid else None), opts)
    if host.dry_run:
        # dry run: a restore is a one-shot whose steps read what the previous one did (the scratch host's name
        # before its data directory is emptied, the promotion): nothing to record but the plan itself
        result.restored_now = False
        return result
    marker = get_marker(host)
    cluster = get_cluster(host, params)
    if (not force and marker and marker.get("backup_label") == set_label and marker.get("target_time") == result.target_time
            and marker.get("options") == opts and cluster and cluster.get("running")):
        done = RestoreResult(**{k: v for k, v in marker.items() if k in RestoreResult.__dataclass_fields__})
        done.restored_now = False
        return done
    _require_scratch(host, params, target)
    data = desired_pgbackrest.pg_data_path(params)
    control = ClusterControl.of(host, params)
    started = time.monotonic()
    if cluster and cluster.get("running"):
        control.stop("fast", timeout=300)
    host.run(f"rm -f {MARKER}")
    host.run(f"find {shlex.quote(data)} -mindepth 1 -delete", sudo_user="postgres")  # the owner's, as the owner
    t = time.monotonic()
    pgb.run_pgbackrest(host, params, "restore", *opts, timeout=timeout)
    result.restore_s = round(time.monotonic() - t, 2)
    t = time.monotonic()
    control.start("--", "-t", str(int(timeout)), timeout=timeout + 60)
    wait_for_promotion(get_psql(host, params), timeout=timeout)
    result.recovery_s = round(time.monotonic() - t, 2)
    result.total_s = round(time.monotonic() - started, 2)
    result.finished_at = _utcnow()
    result.auto_conf = get_auto_conf(host, params)
    host.put_text(MARKER, json.dumps(result.record(), indent=2) + "\n", mode=0o644, owner="postgres")
    return result


# postgresql.auto.conf ---------------------------------------------------------------------------

def get_auto_conf(host: "HostLike", params: "Params") -> dict[str, str]:
    """The settings in the restored data directory's postgresql.auto.conf."""
    text = host.read_text(f"{desired_pgbackrest.pg_data_path(params)}/postgresql.auto.conf", sudo_user="postgres") or ""
    return parse_settings(text)


def get_auto_conf_text(host: "HostLike", params: "Params") -> str:
    """The restored postgresql.auto.conf, as it is on the scratch host."""
    return host.read_text(f"{desired_pgbackrest.pg_data_path(params)}/postgresql.auto.conf", sudo_user="postgres") or "(missing)"


def check_restore(host: "HostLike", params: "Params", target: DrillTarget, fingerprint: Mapping[str, Any],
                   result: RestoreResult) -> tuple[list[Check], dict[str, Any]]:
    """The drill's checks: promoted, recovery files gone, postgresql.auto.conf, ``pgbackrest verify`` of the whole
    repository, and the fingerprint comparison (unlogged tables expected empty)."""
    psql = get_psql(host, params)
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


def check_verify(host: "HostLike", params: "Params", target: str = "", *, timeout: float = 3600) -> Check:
    """``pgbackrest verify``: every backup file and archived WAL segment in the repository reads back with its
    checksum (read-only; run from the scratch host, never the primary)."""
    res = pgb.run_pgbackrest(host, params, "verify", "--log-level-console=info", check=False, timeout=timeout,
                             read_only=True)
    lines = [ln.strip() for ln in res.output.splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if "verify command end" in ln), lines[-1] if lines else "")
    if res.ok:
        return Check("pgbackrest verify", "pass", f"repository verified: {detail[-200:]}", target)
    parsed = parse_pgbackrest_error(res.output)
    return Check("pgbackrest verify", "fail", f"exit {res.exit_code}: "
                 + (f"[{parsed[0]:03d}] {parsed[1]}" if parsed else detail)[-400:], target)


def get_recovered(host: "HostLike", params: "Params") -> dict[str, Any]:
    """What a point-in-time restore recovered: the last replayed commit's time, the timeline, rows per table."""
    psql = get_psql(host, params)
    row = psql.query("SELECT pg_last_xact_replay_timestamp()::text AS last_commit, "
                     "(SELECT timeline_id FROM pg_control_checkpoint()) AS timeline, now()::text AS checked_at")[0]
    tables = {t: int(psql.value(sql.SQL("SELECT count(*) AS n FROM {}.{}").format(sql.Identifier(t.split('.')[0]),
                                                                                    sql.Identifier(t.split('.')[1])),
                                dbname=params.postgres.database))
              for t in (_qualified(*x) for x in get_tables(psql, params.postgres.database))}
    return {**row, "tables": tables}


