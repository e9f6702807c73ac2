"""Results that operations hand back to notebooks: what changed (with its diff) and checks that pass or fail."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Outcome:
    """What one ``ensure_*`` did (or, in a dry run, would do)."""

    what: str                      # "pg_hba.conf on server-postgres-1"
    changed: bool
    dry_run: bool = False
    diff: str = ""
    actions: list[str] = field(default_factory=list)

    @property
    def verb(self) -> str:
        if not self.changed:
            return "unchanged"
        return "would change" if self.dry_run else "changed"

    def __str__(self) -> str:
        out = f"{self.what}: {self.verb}"
        if self.actions:
            out += "\n" + "\n".join(f"  - {a}" for a in self.actions)
        if self.diff:
            out += "\n" + self.diff
        return out


#: the status of a :class:`Check`
Status = Literal["pass", "warn", "fail"]


@dataclass
class Check:
    """One verification row: pass, warn or fail, with what was seen."""

    name: str
    status: Status
    detail: str = ""
    target: str = ""

    @classmethod
    def of(cls, name: str, ok: bool, detail: str = "", target: str = "") -> "Check":
        return cls(name, "pass" if ok else "fail", detail, target)

    @property
    def ok(self) -> bool:
        return self.status != "fail"


def unified_diff(old: str, new: str, name: str) -> str:
    """A unified diff of two versions of a text file ('' when equal)."""
    if old == new:
        return ""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{name} (current)", tofile=f"{name} (hcbpg)"))
