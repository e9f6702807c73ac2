"""Recovery of production to a point in time (notebook ``20_recover_point_in_time``), pure: the target as the
operator wrote it, the repository's reach (pgBackRest's ``info``), the backup to start from, pgBackRest's restore
options, the refusals, and the restore points hcbpg records before the steps that can lose data.

    parse_target(text)                       'time:...', 'xid:...', 'lsn:...', 'name:...' (or recognised bare)
    restore_point_name(step, run_id)         hcbpg-before-<step>-<run id>
    parse_repo_reach(info_json, stanza)      backups (label, stop time, stop LSN) and the newest archived WAL
    plan_restore(target, reach, ...)         the backup, the options, and why it is refused (if it is)
    render_restore_options(target, label)    ``pgbackrest restore`` options (--delta, --type, --target-action)
    parse_history_file(text)                 a timeline history file's last line: the switch point and its reason
    check_recovered(plan, recovered)         the restored server's checks before Patroni leads it
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hcbpg.errors import UsageError
from hcbpg.outcome import Check

__all__ = ["KINDS", "RESTORE_POINT_PREFIX", "RecoveryTarget", "RepoReach", "RestorePlan", "check_recovered",
           "format_lsn", "parse_ancestry", "parse_history_file", "parse_lsn", "parse_repo_reach", "parse_target", "plan_restore",
           "render_restore_options", "restore_point_name", "restore_points_listed"]

#: what a target can be (pgBackRest's --type)
KINDS = ("time", "xid", "lsn", "name")
#: every restore point hcbpg creates starts so
RESTORE_POINT_PREFIX = "hcbpg-before-"
#: a WAL segment's size (PostgreSQL's default, which hcbpg never changes)
SEGMENT = 16 * 1024 * 1024
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")


def parse_lsn(text: str) -> int:
    """``'0/3000148'`` -> its byte position."""
    if not _LSN.match(text.strip()):
        raise UsageError(f"not an LSN: {text!r} (write it as PostgreSQL prints it, e.g. 0/3000148)")
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(pos: int) -> str:
    return f"{pos >> 32:X}/{pos & 0xFFFFFFFF:X}"


def _parse_time(text: str) -> datetime:
    t = text.strip().replace(" ", "T", 1)
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    if re.search(r"[+-]\d\d$", t):
        t += ":00"  # PostgreSQL's '+00'
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise UsageError(f"not a time: {text!r} (ISO 8601, e.g. 2027-01-15T08:00:00Z; without an offset: UTC)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RecoveryTarget:
    """Where to recover to: *kind* (time, xid, lsn, name) and its *value* (a time is kept in UTC, ISO 8601)."""

    kind: str
    value: str

    @property
    def when(self) -> datetime | None:
        return _parse_time(self.value) if self.kind == "time" else None

    @property
    def lsn(self) -> int | None:
        return parse_lsn(self.value) if self.kind == "lsn" else None

    @property
    def pgbackrest_value(self) -> str:
        """The value as pgBackRest passes it to PostgreSQL (a time with an explicit UTC offset)."""
        if self.kind == "time":
            when = self.when
            assert when is not None
            return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        return self.value

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def parse_target(text: str) -> RecoveryTarget:
    """The operator's target: ``time:``, ``xid:``, ``lsn:`` or ``name:`` and a value; bare, an LSN (``0/3000148``),
    a number (a transaction id), a restore point's name (``hcbpg-before-...``) or else a time."""
    raw = (text or "").strip()
    if not raw:
        raise UsageError("-p target=...: a time, xid:N, an LSN or a restore point's name is needed",
                         hint="The notebook lists the restore points hcbpg recorded.")
    kind, sep, value = raw.partition(":")
    if not sep or kind not in KINDS:
        if _LSN.match(raw):
            kind, value = "lsn", raw
        elif raw.isdigit():
            kind, value = "xid", raw
        elif raw.startswith(RESTORE_POINT_PREFIX):
            kind, value = "name", raw
        else:
            kind, value = "time", raw
    value = value.strip()
    if kind == "time":
        return RecoveryTarget("time", _parse_time(value).astimezone(UTC).isoformat())
    if kind == "lsn":
        return RecoveryTarget("lsn", format_lsn(parse_lsn(value)))
    if kind == "xid":
        if not value.isdigit() or int(value) < 3:  # noqa: PLR2004 - 3 is the first normal transaction id
            raise UsageError(f"xid:{value}: a transaction id is a number from 3")
        return RecoveryTarget("xid", str(int(value)))
    if not _NAME.match(value):
        raise UsageError(f"name:{value}: not a restore point's name (letters, digits, '_.:-', at most 63)")
    return RecoveryTarget("name", value)


def restore_point_name(step: str, run_id: str | None) -> str:
    """The restore point hcbpg creates before *step* in run *run_id* (at most 63 characters: PostgreSQL's)."""
    name = f"{RESTORE_POINT_PREFIX}{step}-{run_id or 'adhoc'}"
    return name[:63]


def restore_points_listed(recorded: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The restore points as recorded (newest last, one per name): name, step, lsn, at."""
    seen: dict[str, dict[str, Any]] = {}
    for p in recorded:
        if isinstance(p, Mapping) and isinstance(p.get("name"), str) and p.get("lsn"):
            seen[p["name"]] = {k: p.get(k) for k in ("name", "step", "run_id", "lsn", "at", "server")}
    return sorted(seen.values(), key=lambda p: parse_lsn(str(p["lsn"])))


@dataclass(frozen=True)
class Backup:
    label: str
    type: str
    stop: datetime
    lsn_stop: int
    #: the timeline the backup started on (its first WAL segment's), 0 when info does not say
    timeline: int = 0
    lsn_start: int = 0


@dataclass(frozen=True)
class RepoReach:
    """What the repository can restore: its backups (oldest first) and the end of the newest archived WAL."""

    backups: tuple[Backup, ...]
    archive_max_segment: str | None

    @property
    def archive_end_lsn(self) -> int | None:
        """The position just past the newest archived segment (of its timeline)."""
        seg = self.archive_max_segment
        if not seg or len(seg) != 24:  # noqa: PLR2004 - TTTTTTTTLLLLLLLLSSSSSSSS
            return None
        return (int(seg[8:16], 16) << 32) + int(seg[16:24], 16) * SEGMENT + SEGMENT


def parse_repo_reach(info_json: str, stanza: str) -> RepoReach:
    """``pgbackrest info --output=json`` -> the stanza's backups (with errors left out) and newest archived WAL."""
    try:
        data = json.loads(info_json)
    except ValueError:
        raise UsageError(f"pgbackrest info answered no JSON: {info_json.strip()[:200]!r}") from None
    entry = next((s for s in data if isinstance(s, Mapping) and s.get("name") == stanza), None)
    if entry is None:
        return RepoReach((), None)
    backups = []
    for b in entry.get("backup", []):
        if b.get("error"):
            continue
        stop = datetime.fromtimestamp(int(b["timestamp"]["stop"]), UTC)
        first = str((b.get("archive") or {}).get("start") or "")
        backups.append(Backup(str(b["label"]), str(b.get("type", "")), stop, parse_lsn(str(b["lsn"]["stop"])),
                              int(first[:8], 16) if len(first) == 24 else 0,  # noqa: PLR2004 - a segment's name
                              parse_lsn(str(b["lsn"]["start"])) if b["lsn"].get("start") else 0))
    newest = None
    for a in entry.get("archive", []):
        mx = a.get("max")
        if isinstance(mx, str) and (newest is None or mx[8:] > newest[8:] or (mx[8:] == newest[8:] and mx > newest)):
            newest = mx
    return RepoReach(tuple(sorted(backups, key=lambda b: b.stop)), newest)


@dataclass
class RestorePlan:
    """The recovery decided before anything stops: onto which server, from which backup, with which options,
    and every reason it is refused (empty: it may go on)."""

    target: RecoveryTarget
    server: str
    old_leader: str | None
    backup: str | None
    options: list[str]
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the restore point's recorded LSN and time (a name target)
    point: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.refusals

    def gate_plan(self) -> list[str]:
        return [str(self.target), self.server, self.old_leader or "", self.backup or ""]

    def record(self) -> dict[str, Any]:
        return {"target": str(self.target), "server": self.server, "old_leader": self.old_leader,
                "backup": self.backup, "options": self.options, "point": self.point}

    def __str__(self) -> str:
        lines = [f"recover to {self.target} on {self.server} (old leader {self.old_leader or '-'} left stopped, "
                 f"its data intact)", f"from backup {self.backup or '-'}: pgbackrest restore {' '.join(self.options)}"]
        lines += [f"note: {n}" for n in self.notes]
        if self.refusals:
            lines += ["refused:", *[f"  {r}" for r in self.refusals]]
        return "\n".join(lines)


def render_restore_options(target: RecoveryTarget, label: str | None) -> list[str]:
    """``pgbackrest restore`` options: the data directory reused (--delta), recovery to *target* and promoted there,
    WAL archiving kept on (the recovered server is production: its new timeline goes to the repository)."""
    opts = ["--delta", f"--type={target.kind}", f"--target={target.pgbackrest_value}", "--target-action=promote",
            "--log-level-console=info"]
    if label:
        opts.append(f"--set={label}")
    return opts


def parse_ancestry(timeline: int, history: str | None) -> dict[int, int | None]:
    """The timelines the current one (*timeline*) descends from, each with the position it ended at (None: the
    current one, still going), from the current timeline's history file (PostgreSQL lists every ancestor)."""
    out: dict[int, int | None] = {timeline: None}
    for line in (history or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():  # noqa: PLR2004 - timeline and switch point
            out[int(parts[0])] = parse_lsn(parts[1])
    return out


def _on_ancestry(b: Backup, ancestry: Mapping[int, int | None] | None) -> bool:
    """Whether backup *b* lies on the current timeline's history: its timeline is an ancestor and it started before
    that timeline ended (a backup of a timeline's branch that a later recovery left is no ancestor)."""
    if ancestry is None or not b.timeline:
        return True
    if b.timeline not in ancestry:
        return False
    end = ancestry[b.timeline]
    return end is None or b.lsn_stop <= end


def plan_restore(target: RecoveryTarget, reach: RepoReach, *, server: str, old_leader: str | None,
                 archived_through: datetime | None, current_xid: int | None,
                 points: Sequence[Mapping[str, Any]] = (),
                 ancestry: Mapping[int, int | None] | None = None) -> RestorePlan:
    """Which backup *target* starts from and why it is refused: a target before the oldest backup finished (no
    consistent state before it), after the newest archived WAL (*archived_through*: when the primary's WAL was
    last switched and archived; the archive's last segment for an LSN; the primary's next transaction for an
    xid), a restore point hcbpg did not record (PostgreSQL would replay to the end and promote there)."""
    refusals: list[str] = []
    notes: list[str] = []
    point: dict[str, Any] | None = None
    backups = [b for b in reach.backups if _on_ancestry(b, ancestry)]
    left = [b.label for b in reach.backups if b not in backups]
    if left:
        notes.append(f"left out (on a timeline the current one does not descend from): {', '.join(left)}")
    if not backups:
        refusals.append("the repository holds no backup to restore" + (" on the current timeline's history"
                                                                        if left else ""))
    end = reach.archive_end_lsn
    chosen: Backup | None = None
    if target.kind == "name":
        point = next((dict(p) for p in points if p.get("name") == target.value), None)
        if point is None:
            refusals.append(f"restore point {target.value!r} is not in the verified record of this environment "
                            "(PostgreSQL would replay every WAL and promote at the end, not at the point)")
    lsn = target.lsn if target.kind == "lsn" else (parse_lsn(str(point["lsn"])) if point else None)
    when = target.when
    if lsn is not None and backups:
        fits = [b for b in backups if b.lsn_stop <= lsn]
        if not fits:
            refusals.append(f"{target} is before the oldest backup ({backups[0].label} ends at "
                            f"{format_lsn(backups[0].lsn_stop)})")
        chosen = fits[-1] if fits else None
        if end is not None and lsn >= end:
            refusals.append(f"{target} is after the newest archived WAL (segment {reach.archive_max_segment} ends "
                            f"at {format_lsn(end)})")
        if end is None:
            refusals.append("the repository holds no archived WAL")
    elif when is not None and backups:
        fits = [b for b in backups if b.stop <= when]
        if not fits:
            refusals.append(f"{target} is before the oldest backup ({backups[0].label} finished "
                            f"{backups[0].stop.isoformat()})")
        chosen = fits[-1] if fits else None
        if archived_through is None:
            notes.append("the primary did not answer: the newest archived WAL's time is not known")
        elif when > archived_through:
            refusals.append(f"{target} is after the newest archived WAL (archived through "
                            f"{archived_through.isoformat()})")
    elif target.kind == "xid" and backups:
        chosen = backups[0]
        notes.append("a transaction's time is not known: restoring from the oldest backup (replays the most WAL)")
        if current_xid is not None and int(target.value) >= current_xid:
            refusals.append(f"{target} has not been assigned yet (the primary's next transaction is {current_xid})")
    if target.kind == "time" and point is None:
        notes.append("recovery includes the transactions that committed at the target time exactly")
    return RestorePlan(target, server, old_leader, chosen.label if chosen else None,
                       render_restore_options(target, chosen.label if chosen else None), refusals, notes, point)


def parse_history_file(text: str) -> dict[str, Any] | None:
    """A timeline history file's last line (``1\\t0/3000148\\tat restore point "x"``): the parent timeline, the
    switch point and PostgreSQL's reason; None for an empty file."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        return None
    parts = lines[-1].split("\t")
    if len(parts) < 3:  # noqa: PLR2004 - timeline, LSN, reason
        parts = lines[-1].split(None, 2)
    return {"parent_timeline": int(parts[0]), "switch_lsn": parts[1].strip(),
            "reason": parts[2].strip() if len(parts) > 2 else ""}  # noqa: PLR2004


def check_recovered(plan: RestorePlan, recovered: Mapping[str, Any]) -> list[Check]:
    """The restored server before Patroni leads it: promoted, on a new timeline that says it stopped at the
    target (the history file's reason: the restore point's name, the time, the transaction), its last replayed
    commit not after a time target, the switch point not past an LSN target."""
    t = plan.target
    s = plan.server
    checks = [Check.of("recovered server promoted", recovered.get("in_recovery") is False,
                       "accepting writes" if recovered.get("in_recovery") is False else "still in recovery", s)]
    hist = recovered.get("history") or {}
    reason = str(hist.get("reason", ""))
    # PostgreSQL's words (xlogrecovery.c): 'at restore point "N"', 'before|after transaction X', 'before|after
    # LSN X/Y', 'before|after <time>'
    if t.kind == "name":
        ok = reason == f'at restore point "{t.value}"'
    elif t.kind == "xid":
        ok = reason in (f"before transaction {t.value}", f"after transaction {t.value}")
    elif t.kind == "lsn":
        ok = reason in (f"before LSN {t.value}", f"after LSN {t.value}")
    else:
        ok = reason.startswith(("before ", "after ")) and "transaction" not in reason and "LSN" not in reason
    checks.append(Check.of("recovery stopped at the target", ok, f"timeline {recovered.get('timeline')}: "
                           f"{reason or 'no history file'} (switch at {hist.get('switch_lsn', '?')})", s))
    last = recovered.get("last_commit")
    if t.kind == "time":
        when = t.when
        assert when is not None
        seen = _parse_time(str(last)) if last else None
        checks.append(Check("newest commit not after the target", "pass" if seen is None or seen <= when else "fail",
                            f"last replayed commit {last or 'none replayed'}; target {when.isoformat()}", s))
    else:
        checks.append(Check("newest commit replayed", "pass", f"{last or 'none replayed (the backup held it all)'}",
                            s))
    if t.kind == "lsn" and hist.get("switch_lsn"):
        lsn = t.lsn
        assert lsn is not None
        checks.append(Check.of("switch point not past the LSN", parse_lsn(str(hist["switch_lsn"])) <= lsn + 1,
                               f"{hist['switch_lsn']} vs {t.value}", s))
    tables = recovered.get("tables") or {}
    checks.append(Check("tables and rows", "pass", f"{len(tables)} table(s), "
                        f"{sum(int(v) for v in tables.values())} row(s)", s))
    return checks
