"""The audit head anchored in the backup bucket: an append-only sequence no pusher of the repository can rewrite.

Every seal of an environment's record (params ``audit.anchor: bucket``) creates the next object of
``hcbpg-audit/<repository path>/<env>/<seq:08d>.json`` with ``If-None-Match: *`` (never overwritten:
of two writers of one number, the second is refused and takes the next), holding the run, its
manifest's sha256, the seal's time, who sealed it and the sha256 of the previous object.  When the
bucket has S3 Object Lock enabled, each object is written with retention (the bucket's default rule,
else GOVERNANCE for ``audit.anchor_retain_days``), so not even the bucket's key can delete or change
that version before it expires.

Verification reads the sequence back and refuses a record that is rolled back (a run the bucket names
is missing), rewritten (a manifest differs from the version last anchored for its run) or extended
without the bucket (a sealed run after the first anchored one that the bucket does not name); the
signed seal of each run also names the bucket it was anchored in, so turning the anchor off in params
or pointing it at another bucket is refused too.  What it protects against: anyone who can push to
the repository (or edit ``outputs/`` and the head file) but holds no S3 key of the bucket.  It does
not protect against a holder of that key where Object Lock is off (the objects can be deleted).
"""

from __future__ import annotations

import datetime as _dt
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hcbpg.desired.audit_anchor import Entry, Local, anchor_prefix, parse_entries, plan_verify, render_entry
from hcbpg.errors import CloudError, HcbpgError
from hcbpg.params import Params


class AnchorStoreLike(Protocol):
    """What the anchor needs from a bucket (:class:`hcbpg.adapters.objectstore.ObjectStore`, or moto's in tests)."""

    name: str

    def create(self, key: str, body: bytes, *, lock: tuple[str, _dt.datetime] | None = None) -> str | None: ...

    def get(self, key: str) -> tuple[bytes, str] | None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def object_lock(self) -> tuple[str | None, int | None] | None: ...


class BucketAnchor:
    """One environment's sequence in its bucket; the store is made (and the S3 key read) on first use."""

    def __init__(self, env: str, bucket: str, prefix: str, store: Callable[[], AnchorStoreLike], *,
                 retain_days: int = 400, copy: Path | None = None, copy_when_gone: bool = False) -> None:
        self.env = env
        self.prefix = prefix
        self.where = f"s3://{bucket}/{prefix}"
        self.retain_days = retain_days
        self._make = store
        self._store: AnchorStoreLike | None = None
        #: this machine's copy of the sequence as last read (state dir); read instead of the bucket only
        #: when *copy_when_gone* (a lab's bucket goes with the lab) and the bucket cannot be reached
        self.copy = copy
        self.copy_when_gone = copy_when_gone

    @classmethod
    def from_params(cls, params: Params, *, copy: Path | None = None) -> "BucketAnchor | None":
        """The anchor params ``audit.anchor: bucket`` asks for, with the S3 key from its references; else None.

        *copy*: where this machine keeps a copy of the sequence, read in its place when the bucket is gone
        and params ``audit.anchor_copy_when_gone`` (the lab: its S3 store is torn down with it)."""
        pb = params.pgbackrest
        if params.audit.anchor != "bucket" or pb is None:
            return None

        def make() -> AnchorStoreLike:
            from hcbpg.adapters.objectstore import ObjectStore  # noqa: PLC0415 - boto3 is heavy: loaded when used

            return ObjectStore.of_backup_bucket(params)
        return cls(params.environment, pb.s3_bucket, anchor_prefix(params), make,
                   retain_days=params.audit.anchor_retain_days, copy=copy,
                   copy_when_gone=params.audit.anchor_copy_when_gone)

    @property
    def store(self) -> AnchorStoreLike:
        if self._store is None:
            self._store = self._make()
        return self._store

    def get_entries(self) -> tuple[list[Entry], list[str]]:
        """The sequence as the bucket holds it now (CloudError when it cannot be read)."""
        objects = []
        for key in self.store.keys(self.prefix):
            got = self.store.get(key)
            if got is not None:
                objects.append((key[len(self.prefix):], got[0]))
        self._keep_copy(objects)
        return parse_entries(self.where, self.env, objects)

    def _keep_copy(self, objects: list[tuple[str, bytes]]) -> None:
        if self.copy is not None:
            self.copy.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.copy.with_name(f".{self.copy.name}.tmp")
            tmp.write_text(json.dumps({"where": self.where, "objects": [[k, b.decode()] for k, b in objects]}) + "\n")
            tmp.replace(self.copy)

    def _read_copy(self) -> list[tuple[str, bytes]] | None:
        try:
            rec = json.loads(self.copy.read_text()) if self.copy is not None else None
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("where") != self.where:
            return None
        return [(str(k), str(b).encode()) for k, b in rec.get("objects", [])]

    def verify(self, local: list[Local], *, pending: str | None) -> list[str]:
        try:
            entries, problems = self.get_entries()
        except HcbpgError as exc:
            kept = self._read_copy() if self.copy_when_gone else None
            if kept is None:
                return [f"{self.where}: the audit anchor of {self.env} cannot be read, so the record cannot be "
                        f"checked against it: {exc.message}"]
            entries, problems = parse_entries(self.where, self.env, kept)  # the lab's bucket went with the lab
        return problems + plan_verify(self.where, entries, local, env=self.env, pending=pending)

    def append(self, *, run: str, run_id: str, manifest_sha256: str, sealed_at: str, by: str) -> str:
        """Create the next object of the sequence; its key.  CloudError, loudly, when the bucket cannot be
        written or does not enforce ``If-None-Match`` (the sequence would not be append-only)."""
        try:
            return self._append({"kind": "seal", "run": run, "run_id": run_id, "manifest_sha256": manifest_sha256,
                                 "sealed_at": sealed_at, "by": by, "machine": socket.gethostname()})
        except HcbpgError as exc:  # the bucket, or its S3 key's reference
            raise CloudError(f"the audit head of {self.env} could not be anchored in {self.where}, so run {run} is "
                             f"not sealed: {exc.message}",
                             hint="Make the bucket reachable (pgbackrest.s3_endpoint, the S3 key), then `hcbpg resume` "
                                  "or the next run seals it; or set audit.anchor: none in params, knowingly.") from exc

    def append_set_aside(self, *, at: str, by: str, why: str) -> str:
        """Record that the environment's record was set aside: verification starts again after this object."""
        return self._append({"kind": "set-aside", "at": at, "by": by, "machine": socket.gethostname(), "why": why})

    def _append(self, fields: dict[str, Any], attempts: int = 5) -> str:
        lock = self._lock()
        for _ in range(attempts):
            entries, problems = self.get_entries()
            if problems:
                raise CloudError(f"{self.where} is not a clean sequence: {problems[0]}")
            seq = entries[-1].rec["seq"] + 1 if entries else 0
            body = render_entry(env=self.env, seq=seq, previous_sha256=entries[-1].sha256 if entries else None,
                                fields=fields)
            key = f"{self.prefix}{seq:08d}.json"
            if self.store.create(key, body, lock=lock) is not None:
                if self.store.create(key, body, lock=lock) is not None:
                    raise CloudError(f"{self.store.name} ignored If-None-Match: a second create of {key} succeeded, "
                                     "so an anchor there could be overwritten")
                self._keep_copy([*((e.key, e.body) for e in entries), (f"{seq:08d}.json", body)])
                return key
        raise CloudError(f"{self.where}: {attempts} other seals took the next number first")

    def _lock(self) -> tuple[str, _dt.datetime] | None:
        got = self.store.object_lock()
        if got is None:
            return None
        mode, days = got
        return (mode or "GOVERNANCE",
                _dt.datetime.now(_dt.timezone.utc) + _dt.timedelta(days=days or self.retain_days))
