"""The typed run record: ``manifest.json`` as pydantic models, written only by the engine.

A manifest is read raw (a dict) wherever it is *verified*: nothing in a record is believed about
itself, and a tampered one must be reported, not refused by a validator.  Every *write* goes
through :class:`Manifest` (``Run.update()`` yields one), so the keys and their types are known in
one place.

Serialization is the old dict's, byte for byte: a key is written when it was read or assigned, in
the order it first appeared (as a dict keeps insertion order), never because it has a default, and
unknown keys are kept as they came (``extra="allow"``).  So a manifest written before this model
reads and writes back to the same bytes, and signatures and the hash chain mean what they meant.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_serializer, model_validator
from pydantic_core.core_schema import SerializerFunctionWrapHandler, ValidatorFunctionWrapHandler

from hcbpg.errors import AuditError, UsageError

#: a duration as written: ``round(x, 3)`` (an int when nothing was summed)
Seconds = int | float | None


class _Ordered(BaseModel):
    """A model that writes the keys it was given or assigned, in the order they first appeared."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    _keys: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        model = handler(data)
        if isinstance(data, dict):
            model._keys = list(data)
        return model

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if not name.startswith("_") and name not in self._keys:
            self._keys.append(name)

    def has(self, name: str) -> bool:
        """Whether *name* is in the record (read or assigned), as ``name in dict`` was."""
        return name in self._keys

    def drop(self, name: str) -> None:
        """Leave *name* out of the record (``dict.pop``)."""
        if name in self._keys:
            self._keys.remove(name)

    @model_serializer(mode="wrap")
    def _in_order(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        return {k: out[k] for k in self._keys if k in out}

    def dump(self) -> dict[str, Any]:
        """The record as the JSON object it is written as."""
        return self.model_dump(mode="python")


class Attempt(_Ordered):
    """One execution of a step's notebook (by the runner, or in a guided kernel)."""

    n: int = 0
    status: str = "running"
    start: str | None = None
    end: str | None = None
    duration_s: Seconds = None
    notebook: str | None = None
    sha256: str | None = None
    pid: int | None = None
    via: str | None = None
    operator: str | None = None
    note: str | None = None
    error: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = []


class StepEntry(_Ordered):
    """One step of the run: its notebook, status, attempts and what it changed."""

    key: str = ""
    title: str = ""
    notebook: str = ""
    status: str = "pending"
    attempts: list[Attempt] = []
    changes: int | None = None
    sha256: str | None = None
    start: str | None = None
    end: str | None = None
    duration_s: Seconds = None
    code_sha256: str | None = None
    checks: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    #: each change made (or, in a plan, that would be made): what, actions, diff (hcbpg.engine.ledger)
    diffs: list[dict[str, Any]] = []

    def attempt(self, n: int | None) -> Attempt | None:
        """Attempt number *n* (None: none)."""
        return next((a for a in self.attempts if a.n == n), None) if n is not None else None


class GateEntry(_Ordered):
    """A gate asked in a step, and its approval (signed ``proof``) once given."""

    question: str = ""
    step: str | None = None
    requested_at: str | None = None
    approved_at: str | None = None
    params_sha256: str | None = None
    plan_sha256: str | None = None
    set_aside: list[dict[str, Any]] = []
    approved_by: str | None = None
    note: str | None = None
    via: str | None = None
    operator: str | None = None
    machine: str | None = None
    proof: dict[str, Any] | None = None

    def asked_again(self, fresh: GateEntry) -> GateEntry:
        """*fresh* with this entry kept under ``set_aside`` when it was approved (what was approved before,
        and why not now, stays for the reader), or this entry's earlier set-aside ones."""
        if self.approved_at:
            earlier = self.set_aside
            self.drop("set_aside")
            fresh.set_aside = [*earlier, self.dump()]
        elif self.set_aside:
            fresh.set_aside = self.set_aside
        return fresh


class Manifest(_Ordered):
    """A run's ``manifest.json``."""

    format: int = 1
    run_id: str = ""
    environment: str = ""
    mode: str = "run"
    dry_run: bool = False
    status: str = "created"
    created: str | None = None
    finished: str | None = None
    operator: str | None = None
    machine: str | None = None
    git: dict[str, Any] = {}
    params_sha256: str | None = None
    selection: dict[str, Any] = {}
    previous: dict[str, Any] | None = None
    gates: dict[str, GateEntry] = {}
    runner: dict[str, Any] | None = None
    steps: list[StepEntry] = []
    sessions: list[dict[str, Any]] = []
    params_history: list[dict[str, Any]] = []
    #: the migration's phases (07 writes them, 09 adds start, end and total)
    downtime: dict[str, Any] = {}
    run_log_sha256: str | None = None
    sealed: dict[str, Any] | None = None
    signers_change: dict[str, Any] | None = None
    #: what ``hcbpg guide finish`` found when it closed a guided run
    guide_finished: dict[str, Any] | None = None

    def step(self, key: str) -> StepEntry:
        """The step *key* of this run."""
        for s in self.steps:
            if s.key == key:
                return s
        raise UsageError(f"run {self.run_id} has no step {key}")

    def to_json(self) -> str:
        """The text of ``manifest.json``."""
        return json.dumps(self.dump(), indent=2, sort_keys=False) + "\n"


def parse_manifest(data: dict[str, Any], where: str) -> Manifest:
    """A manifest read raw, typed; AuditError naming *where* and the first field that is not as hcbpg writes it."""
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"])
        raise AuditError(f"{where}: not a manifest hcbpg writes ({at}: {first['msg']})") from None
