"""pgBackRest's own language, pure: its command lines, the errors it prints (``[087]``), and what
``info --output=json`` says (stanza status, backups, a running backup's progress)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

#: pgBackRest's error code for "archive_mode must be enabled", the expected ``check``
#: failure between step 05 and the cutover restore (archive_mode stays off until then)
ARCHIVE_MODE_DISABLED = 87


_ERROR_RE = re.compile(r"(?:^|\s)ERROR:\s*\[(\d{3})\]:\s*(.*)$")
_LOG_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ P\d+\s+[A-Z]+:")
_ABORTED_RE = re.compile(r"aborted with exception \[(\d{3})\]")


def parse_pgbackrest_error(output: str) -> tuple[int, str] | None:
    """``(87, "archive_mode must be enabled")`` from pgBackRest's output; None when it shows no error.

    Reads console lines (``2025-... P00  ERROR: [087]: ...``) and stderr lines
    (``ERROR: [087]: ...``); indented lines after the error are part of its message.
    """
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = _ERROR_RE.search(line)
        if not m:
            continue
        msg = [m.group(2).strip()]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or _LOG_PREFIX_RE.match(nxt) or _ERROR_RE.search(nxt) or not nxt[:1].isspace():
                break
            msg.append(nxt.strip())
        return int(m.group(1)), "\n".join(msg)
    m = _ABORTED_RE.search(output)
    if m:
        return int(m.group(1)), f"aborted with exception [{m.group(1)}]"
    return None


def pgbackrest_cmd(stanza: str, command: str, *options: str) -> str:
    """A pgbackrest command line for *stanza* (no secrets: those are in the config file)."""
    opts = " ".join(shlex.quote(o) for o in options)
    return f"pgbackrest --stanza={shlex.quote(stanza)} {opts + ' ' if opts else ''}{command}"


def parse_stanza_status(text: str, stanza: str) -> tuple[int, str] | None:
    """The stanza's status (code, message) from ``info --output=json``; None when it is not listed.

    Codes: 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data, ...
    """
    for st in json.loads(text or "[]"):
        if st.get("name") == stanza:
            s = st.get("status") or {}
            return int(s.get("code", -1)), str(s.get("message", ""))
    return None



# info --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupRow:
    """One backup from ``info --output=json``."""

    label: str
    type: str
    start: str            # ISO 8601, UTC
    stop: str
    duration_s: int
    size: int             # database size
    delta: int            # changed since the prior backup
    repo_size: int        # stored in the repository (compressed, encrypted)
    repo_delta: int
    wal_start: str
    wal_stop: str
    prior: str | None
    error: bool = False
    repo: int = 1         # the repository holding it (``database.repo-key``)

    def row(self) -> dict[str, Any]:
        """For a table: sizes human-readable, duration in seconds."""
        return {"repo": f"repo{self.repo}", "label": self.label, "type": self.type, "start": self.start,
                "duration": f"{self.duration_s}s",
                "size": format_bytes(self.size), "delta": format_bytes(self.delta),
                "repo size": format_bytes(self.repo_size), "WAL start": self.wal_start,
                "WAL stop": self.wal_stop, "prior": self.prior or "", "error": "yes" if self.error else ""}

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def format_bytes(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _iso(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(int(ts), tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def parse_info_json(text: str, stanza: str | None = None) -> list[BackupRow]:
    """The backups in ``pgbackrest info --output=json`` (of *stanza*, or of every stanza), oldest first."""
    out = []
    for st in json.loads(text or "[]"):
        if stanza is not None and st.get("name") != stanza:
            continue
        for b in st.get("backup") or []:
            ts = b.get("timestamp") or {}
            info = b.get("info") or {}
            repo = info.get("repository") or {}
            arch = b.get("archive") or {}
            db = b.get("database") or {}
            start, stop = ts.get("start"), ts.get("stop")
            out.append(BackupRow(
                label=b["label"], type=b.get("type", ""), start=_iso(start), stop=_iso(stop),
                duration_s=int(stop - start) if start is not None and stop is not None else 0,
                size=int(info.get("size") or 0), delta=int(info.get("delta") or 0),
                repo_size=int(repo.get("size") or 0), repo_delta=int(repo.get("delta") or 0),
                wal_start=arch.get("start") or "", wal_stop=arch.get("stop") or "",
                prior=b.get("prior"), error=bool(b.get("error", False)), repo=int(db.get("repo-key") or 1)))
    return sorted(out, key=lambda r: (r.start, r.label, r.repo))


def parse_repo_status(text: str, stanza: str) -> dict[int, tuple[int, str]]:
    """Each repository's status (code, message) for *stanza* from ``info --output=json`` (``repo[].key``,
    ``repo[].status``, pgBackRest 2.33+), by repository index; empty when the stanza is not listed."""
    for st in json.loads(text or "[]"):
        if st.get("name") == stanza:
            return {int(r["key"]): (int((r.get("status") or {}).get("code", -1)),
                                    str((r.get("status") or {}).get("message", "")))
                    for r in st.get("repo") or [] if "key" in r}
    return {}


def parse_archive_ranges(text: str, stanza: str) -> dict[int, tuple[str, str]]:
    """The WAL each repository holds for *stanza* (its newest database's archive: ``(min, max)`` segment names)
    from ``info --output=json``, by repository index; a repository with no WAL is absent."""
    out: dict[int, tuple[str, str]] = {}
    for st in json.loads(text or "[]"):
        if st.get("name") != stanza:
            continue
        for a in st.get("archive") or []:
            repo = int((a.get("database") or {}).get("repo-key") or 1)
            lo, hi = a.get("min"), a.get("max")
            if lo and hi:
                old = out.get(repo)
                out[repo] = (min(old[0], lo), max(old[1], hi)) if old else (lo, hi)
    return out


def parse_backup_progress(text: str, stanza: str) -> tuple[int, int] | None:
    """(bytes done, bytes in all) of the stanza's running backup from ``info --output=json``
    (``status.lock.backup``: ``held``, ``size-cplt`` and ``size``, pgBackRest 2.41 and later);
    None when no backup runs or this pgBackRest does not say."""
    try:
        stanzas = json.loads(text or "[]")
    except ValueError:
        return None
    for st in stanzas if isinstance(stanzas, list) else []:
        if st.get("name") != stanza:
            continue
        lock = ((st.get("status") or {}).get("lock") or {}).get("backup") or {}
        if not lock.get("held") or lock.get("size") is None:
            return None
        total = int(lock.get("size") or 0)
        return min(int(lock.get("size-cplt") or 0), total), total
    return None


_PERCENT_RE = re.compile(r"backup/expire running - (\d+)\.(\d\d)% complete")


def parse_backup_percent(text: str) -> float | None:
    """The running backup's percentage from ``pgbackrest info`` (text: ``status: ok (backup/expire
    running - 45.12% complete)``, pgBackRest 2.41 and later; JSON carries it only from 2.48 on)."""
    m = _PERCENT_RE.search(text or "")
    return int(m.group(1)) + int(m.group(2)) / 100 if m else None



# restore -----------------------------------------------------------------------------------------

def restore_options(*, set_label: str | None = None, target_time: str | None = None,
                    target_xid: str | None = None, repo: int | None = None) -> list[str]:
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
    if repo is not None:
        # one repository only (its backups and its WAL): without it pgBackRest takes the first that has the set
        opts.append(f"--repo={int(repo)}")
    return opts
