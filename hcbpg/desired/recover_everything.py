"""Production back after losing both database servers (notebook ``22_recover_everything``): the pure decisions.

    plan_decision(seen)                   refusals before anything is created: a server that still answers as a
                                          running primary (never two primaries), one still in the cloud
    choose_repo(reaches, nearer)          the repository to restore from: the one whose archive reaches furthest,
                                          the nearer one (the operator's) among equals
    render_latest_options(repo, label)    ``pgbackrest restore`` options: the newest state (the archive's end)
    phase_rows(marks)                     the recovery's phases in seconds, from the decision on: provisioning,
                                          the recovery (to the app's first write), after the clock
    newest_recovered_note(recovered)      what the restored server says it replayed last

Nothing here reads or changes anything; :mod:`hcbpg.steps.recover_everything` combines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hcbpg.desired import recover as dr

#: what the restore and its marker call this target (the archive's end: no recovery_target at all)
LATEST = dr.RecoveryTarget("latest", "end of the archive")


@dataclass(frozen=True)
class ServerSeen:
    """One database server as found before the decision: in the cloud (None: the API was not asked), whether SSH
    answered, and what its PostgreSQL answered (``primary``, ``replica``, ``down``: SSH answered, PostgreSQL did
    not; None: not asked)."""

    name: str
    in_cloud: bool | None
    ssh: bool
    postgres: str | None = None
    detail: str = ""

    def row(self) -> dict[str, str]:
        cloud = "?" if self.in_cloud is None else ("exists" if self.in_cloud else "gone")
        return {"server": self.name, "cloud": cloud, "SSH": "answers" if self.ssh else "no answer",
                "PostgreSQL": self.postgres or "-", "detail": self.detail}


def plan_decision(seen: Sequence[ServerSeen]) -> list[str]:
    """Why recovering everything is refused now (empty: the operator may decide).  A server that answers as a
    running primary is production still running (a second primary would split the app's writes); one that answers
    at all, or still exists in the cloud, is not lost (this notebook never deletes a server: the operator does,
    unprotecting it first, once sure)."""
    refusals = []
    for s in seen:
        if s.postgres == "primary":
            refusals.append(f"{s.name} answers as a running primary: production is not lost (never two primaries)")
        elif s.ssh:
            refusals.append(f"{s.name} answers over SSH (PostgreSQL {s.postgres or 'not asked'}): it is not lost; "
                            "notebook 20 or 11 is the way for a server that answers")
        elif s.in_cloud:
            refusals.append(f"{s.name} still exists in the cloud (unreachable): delete it first (disable its "
                            "protection, then delete it in the console) once you are sure it is lost; this "
                            "notebook never deletes a server")
    return refusals


def _archive_key(seg: str | None) -> tuple[int, str]:
    """Newest first: the timeline, then the segment (a newer timeline's archive reaches past an older one's)."""
    if not seg or len(seg) != 24:  # noqa: PLR2004 - TTTTTTTTLLLLLLLLSSSSSSSS
        return (-1, "")
    return (int(seg[:8], 16), seg[8:])


@dataclass
class RepoChoice:
    """The repository chosen, its newest backup and archive end, why, and each repository's answer."""

    repo: int | None
    backup: str | None
    archive_max: str | None
    rows: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        head = (f"restore from repo{self.repo}: backup {self.backup}, archive to {self.archive_max}"
                if self.repo is not None else "no repository to restore from")
        return "\n".join([head, *[f"note: {n}" for n in self.notes], *[f"refused: {r}" for r in self.refusals]])


def choose_repo(reaches: Mapping[int, "dr.RepoReach | str"], nearer: int | None = None) -> RepoChoice:
    """*reaches*: each repository's index -> what its ``pgbackrest info`` showed, or the error it answered with.
    The one whose archive reaches furthest (the newest state) among those with a backup; among equals the *nearer*
    one (restore time over the link counts), else the lowest index."""
    rows, usable = [], []
    for idx in sorted(reaches):
        r = reaches[idx]
        if isinstance(r, str):
            rows.append({"repo": f"repo{idx}", "backups": "-", "newest backup": "-", "archive to": "-",
                         "status": f"error: {r[:160]}"})
            continue
        newest = r.backups[-1] if r.backups else None
        rows.append({"repo": f"repo{idx}", "backups": str(len(r.backups)),
                     "newest backup": newest.label if newest else "-", "archive to": r.archive_max_segment or "-",
                     "status": "ok" if newest and r.archive_max_segment else "no backup" if not newest else "no WAL"})
        if newest is not None:
            usable.append(idx)
    if not usable:
        return RepoChoice(None, None, None, rows, refusals=["no repository answered with a backup to restore"])
    best = max(_archive_key(_seg(reaches[i])) for i in usable)
    tied = [i for i in usable if _archive_key(_seg(reaches[i])) == best]
    repo = nearer if nearer in tied else tied[0]
    chosen = reaches[repo]
    assert not isinstance(chosen, str)
    notes = []
    if len(tied) > 1:
        notes.append(f"repo{'/repo'.join(str(i) for i in tied)} reach the same WAL: "
                     + (f"repo{repo}, the nearer" if nearer == repo else f"repo{repo}"))
    elif nearer is not None and nearer != repo:
        notes.append(f"repo{nearer} is nearer but its archive ends earlier: repo{repo} holds newer WAL")
    refusals = [] if chosen.archive_max_segment else [f"repo{repo} holds no archived WAL"]
    return RepoChoice(repo, chosen.backups[-1].label, chosen.archive_max_segment, rows, notes, refusals)


def _seg(r: "dr.RepoReach | str") -> str | None:
    return None if isinstance(r, str) else r.archive_max_segment


def render_latest_options(repo: int, label: str | None) -> list[str]:
    """``pgbackrest restore`` to the newest state: no recovery target (PostgreSQL replays every archived segment of
    the newest timeline and promotes at the end), from *repo* alone (its restore_command too), *label* (the newest
    backup) named so a backup finished meanwhile is not picked silently."""
    opts = ["--delta", "--type=default", f"--repo={repo}", "--log-level-console=info"]
    if label:
        opts.append(f"--set={label}")
    return opts


def restore_plan(choice: RepoChoice, server: str) -> dr.RestorePlan:
    """notebook 20's plan object for :func:`hcbpg.ops.recover.run_restore_promoted` (the marker records it)."""
    assert choice.repo is not None
    return dr.RestorePlan(LATEST, server, None, choice.backup, render_latest_options(choice.repo, choice.backup),
                          list(choice.refusals), list(choice.notes))


#: the phases in the order they happen (each mark is when it ended): provisioning (the same whatever the data: the
#: servers, their packages and configuration, etcd and Patroni's files, nothing started under Patroni), then the
#: recovery on the clock (it ends at the app's first write through the handed-out URL), then what comes after the
#: clock (the replica, the cluster's checks, a backup of the new timeline: the notebook is not done without them)
PROVISIONING = ("provisioned", "installed", "ha prepared")
RECOVERY = ("restored", "patroni leads", "handed out", "first write")
AFTER_CLOCK = ("replica streaming", "ha checked", "timeline backup")
PHASES = ("decision", *PROVISIONING, *RECOVERY, *AFTER_CLOCK)
#: the mark that ends the recovery time
RECOVERED = RECOVERY[-1]


def phase_kind(phase: str) -> str:
    """What a phase counts as: ``provisioning``, ``recovery`` (on the clock) or ``after the clock``."""
    return "provisioning" if phase in PROVISIONING else "after the clock" if phase in AFTER_CLOCK else "recovery"


def phase_rows(marks: Mapping[str, datetime]) -> list[dict[str, str]]:
    """Each phase's seconds (from the previous mark), the time since the decision and what it counts as; then the
    recovery time (decision -> the app's first write), the same without provisioning (what the repository and the
    data cost: the bench's ratio), and the time after the clock (the replica, the checks, the backup)."""
    rows = []
    start = marks.get("decision")
    prev = start
    ends: dict[str, datetime] = {}
    for name in PHASES[1:]:
        at = marks.get(name)
        if at is None or prev is None or start is None:
            continue
        rows.append({"phase": name, "counts": phase_kind(name), "seconds": f"{(at - prev).total_seconds():.1f}",
                     "since decision": f"{(at - start).total_seconds():.1f}"})
        ends[phase_kind(name)] = at
        prev = at
    end = marks.get(RECOVERED)
    if start is not None and end is not None:
        total = (end - start).total_seconds()
        prov_end = ends.get("provisioning")
        prov = (prov_end - start).total_seconds() if prov_end is not None else 0.0
        rows.append({"phase": "total", "counts": "decision -> first write", "seconds": f"{total:.1f}",
                     "since decision": f"{total:.1f}"})
        rows.append({"phase": "total without provisioning", "counts": "recovery",
                     "seconds": f"{total - prov:.1f}", "since decision": ""})
        after = ends.get("after the clock")
        if after is not None:
            rows.append({"phase": "after the clock", "counts": "after the clock",
                         "seconds": f"{(after - end).total_seconds():.1f}",
                         "since decision": f"{(after - start).total_seconds():.1f}"})
    return rows


def newest_recovered_note(recovered: Mapping[str, Any]) -> str:
    """The newest commit the restored server replayed (its time), or that the backup held everything."""
    last = recovered.get("last_commit")
    return f"newest commit recovered: {last}" if last else "newest commit recovered: none replayed (the backup held it)"
