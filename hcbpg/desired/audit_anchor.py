"""The audit anchor's sequence, pure: the body of each object, the sequence read back from ``(key, body)``
pairs, and what it says is wrong with the record in ``outputs/`` (:mod:`hcbpg.ops.audit_anchor` reads and
writes the bucket)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from hcbpg.desired.pgbackrest import repo_path
from hcbpg.params import Params

PREFIX = "hcbpg-audit"
FORMAT = 1
_KEY = re.compile(r"(\d{8})\.json")


def anchor_prefix(params: Params) -> str:
    """``hcbpg-audit/<repository path>/<env>/``: beside pgBackRest's repository, never inside it."""
    return f"{PREFIX}/{repo_path(params).strip('/')}/{params.environment}/"


@dataclass(frozen=True)
class Entry:
    """One object of the sequence: its key, the sha256 of its body and what it says."""

    key: str
    sha256: str
    rec: dict[str, Any]
    body: bytes


def render_entry(*, env: str, seq: int, previous_sha256: str | None, fields: dict[str, Any]) -> bytes:
    """An anchor's body: *fields* (``kind`` ``seal``: run, run_id, manifest_sha256, sealed_at, by, machine;
    ``set-aside``: at, by, machine, why) with its place in the sequence."""
    return (json.dumps({"format": FORMAT, "env": env, "seq": seq, **fields, "previous_sha256": previous_sha256},
                       sort_keys=True) + "\n").encode()


def parse_entries(where: str, env: str, objects: list[tuple[str, bytes]]) -> tuple[list[Entry], list[str]]:
    """The sequence from ``(key, body)`` pairs in key order: entries, and what is wrong with it (gaps, a broken
    link, an object that is not an anchor)."""
    entries: list[Entry] = []
    problems: list[str] = []
    for key, body in objects:
        m = _KEY.fullmatch(key.rsplit("/", 1)[-1])
        try:
            rec = json.loads(body)
        except ValueError:
            rec = None
        if m is None or not isinstance(rec, dict) or rec.get("env") != env or rec.get("seq") != int(m.group(1)):
            problems.append(f"{where}{key.rsplit('/', 1)[-1]}: not an audit anchor of {env}")
            continue
        sha = hashlib.sha256(body).hexdigest()
        prev = entries[-1] if entries else None
        if rec["seq"] != (prev.rec["seq"] + 1 if prev else 0):
            problems.append(f"{where}{key.rsplit('/', 1)[-1]}: follows "
                            f"{prev.key.rsplit('/', 1)[-1] if prev else 'nothing'}: anchors are missing before it")
        elif rec.get("previous_sha256") != (prev.sha256 if prev else None):
            problems.append(f"{where}{key.rsplit('/', 1)[-1]}: its link to the anchor before it does not hold")
        entries.append(Entry(key, sha, rec, body))
    return entries, problems


@dataclass(frozen=True)
class Local:
    """A run of the record in ``outputs/`` as verification sees it."""

    run: str                    # its directory name
    manifest_sha256: str | None  # None: unreadable
    sealed: bool
    anchored_in: str | None     # the bucket its signed seal says it was anchored in

    @classmethod
    def of(cls, run: str, manifest: bytes | None, sealed: bool) -> "Local":
        try:
            seal = json.loads(manifest or b"{}").get("sealed")
        except (ValueError, AttributeError):
            seal = None
        where = seal.get("anchor") if isinstance(seal, dict) else None
        return cls(run, hashlib.sha256(manifest).hexdigest() if manifest is not None else None, sealed,
                   where if isinstance(where, str) else None)


def plan_verify(where: str | None, entries: list[Entry], local: list[Local], *, env: str,
                pending: str | None) -> list[str]:
    """What the bucket's sequence says is wrong with the record in ``outputs/`` (*where*: the anchor's
    ``s3://bucket/prefix/``, None when params have it off); *pending*: the run being written or sealed next."""
    if where is None:
        named = next((r for r in reversed(local) if r.anchored_in), None)
        return [] if named is None else [
            f"{named.run}: its signed seal says it was anchored in {named.anchored_in}, and params/{env}.yaml has "
            "no bucket anchor (audit.anchor): turning it off would let the record be rolled back unseen"]
    problems: list[str] = []
    names = [r.run for r in local]
    last: dict[str, Entry] = {}
    cut = max((i + 1 for i, e in enumerate(entries) if e.rec.get("kind") == "set-aside"), default=0)
    for e in entries[cut:]:  # a record set aside (hcbpg rehearse, a new lab) is no longer this record
        last[str(e.rec.get("run"))] = e
    for run, e in last.items():
        if run not in names:
            problems.append(f"{e.key.rsplit('/', 1)[-1]} in {where} names run {run} of {env}, sealed at "
                            f"{e.rec.get('sealed_at')} by {e.rec.get('by')}, and it is not in outputs/{env}: "
                            "the record was rolled back or runs were deleted")
    anchored = [i for i, r in enumerate(local) if r.run in last]
    first = anchored[0] if anchored else len(local)
    for i, r in enumerate(local):
        if r.run == pending:
            continue
        if r.run in last:
            if r.manifest_sha256 != last[r.run].rec.get("manifest_sha256"):
                problems.append(f"{r.run}: its manifest differs from the version anchored in {where}"
                                f"{last[r.run].key.rsplit('/', 1)[-1]} (sealed at {last[r.run].rec.get('sealed_at')}): "
                                "rewritten")
        elif r.sealed and (i > first or r.anchored_in):
            problems.append(f"{r.run}: sealed, and {where} names no anchor of it: sealed without the bucket "
                            "(by someone without its key?) or its anchor was removed")
        if r.anchored_in and r.anchored_in != where:
            problems.append(f"{r.run}: its signed seal says it was anchored in {r.anchored_in}, not in {where} "
                            f"(params/{env}.yaml points the anchor elsewhere)")
    return problems
