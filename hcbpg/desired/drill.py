"""The restore drill's pure half (step 12): the scratch host, the fingerprint query and its comparison,
what a restore did, what postgresql.auto.conf must hold after it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.outcome import Check, Outcome
from hcbpg.params import Server
from hcbpg.pg.compose import render

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: where the drill notes what it restored (outside the data directory, which the restore replaces)
MARKER = "/var/lib/postgresql/hcbpg-restore-drill.json"
#: nextval() logs sequence values this many ahead, so a restored sequence may be ahead by up to this
SEQ_LOG_VALS = 32


@dataclass(frozen=True)
class DrillTarget:
    """The scratch host a drill restores onto (never one of params.servers)."""

    name: str
    private_ip: str
    ssh_host: str | None = None
    checksum_tables: tuple[str, ...] | None = None  # None: every table


def as_server(params: "Params", target: DrillTarget) -> "Server":
    return Server(name=target.name, private_ip=target.private_ip, role="replica", ssh_host=target.ssh_host)


def _qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


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
