"""The runbook's ledger: what a step changed (its operations' outcomes) and what it checked.

A part of :class:`hcbpg.engine.runbook.Runbook` (``rb.track``, ``rb.verify``, ``rb.changes``).  The
checks so far go into the run's manifest as they are made, so the recap shows them even when the
step fails on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import overload

from hcbpg import secrets as hsecrets
from hcbpg.display import show_table
from hcbpg.engine import manifest as mf
from hcbpg.errors import VerificationFailed
from hcbpg.outcome import Check, Outcome

#: the checks not passed a step's manifest entry keeps (with their reasons), and the characters of each reason
MAX_NOT_PASSED = 200
MAX_DETAIL = 4000
#: the changes a step's manifest entry keeps (each with its diff, scrubbed), and the characters of each diff
MAX_CHANGES = 500
MAX_DIFF = 20000


class Ledger:
    """The outcomes and checks of one step (*run* None: an ad hoc notebook run, nothing recorded)."""

    def __init__(self, run: mf.Run | None, *, step: str) -> None:
        self.run = run
        self.step = step
        self.outcomes: list[Outcome] = []
        self.checks: list[Check] = []

    @overload
    def track(self, outcome: Outcome, *, show: bool = True) -> Outcome: ...
    @overload
    def track(self, outcome: Iterable[Outcome], *, show: bool = True) -> list[Outcome]: ...

    def track(self, outcome: Outcome | Iterable[Outcome], *, show: bool = True) -> Outcome | list[Outcome]:
        """Count an operation's outcome(s) toward this step's changes and show them."""
        items = [outcome] if isinstance(outcome, Outcome) else list(outcome)
        for o in items:
            self.outcomes.append(o)
            if show:
                print(str(o))
        self._record_changes([o for o in items if o.changed])
        return outcome if isinstance(outcome, Outcome) else items

    def _record_changes(self, changed: list[Outcome]) -> None:
        """Each change into the manifest as it is tracked (what, actions, diff; scrubbed): ``--diff`` shows
        them and a saved plan (``plan --out``) is made of them."""
        if self.run is None or not changed:
            return
        with self.run.update() as data:
            step = data.step(self.step)
            have = list(step.diffs)
            for o in changed:
                item = change_record(o)
                if item not in have and len(have) < MAX_CHANGES:  # a plan shown, then tracked as applied: once
                    have.append(item)
            step.diffs = have

    @property
    def changes(self) -> int:
        """How many of the tracked outcomes changed something."""
        return sum(1 for o in self.outcomes if o.changed)

    def counts(self) -> dict[str, int]:
        """The checks so far by status."""
        return {k: sum(c.status == k for c in self.checks) for k in ("pass", "warn", "fail")}

    def verify(self, checks: Iterable[Check], *, title: str = "checks") -> list[Check]:
        """Show checks as a table; fail the step if any failed."""
        rows = list(checks)
        self.checks += rows
        show_table([{"check": c.name, "target": c.target, "status": c.status, "detail": c.detail} for c in rows])
        self._record_checks()
        failed = [c for c in rows if c.status == "fail"]
        if failed:
            raise VerificationFailed(
                f"{len(failed)} of {len(rows)} {title} failed: " + "; ".join(
                    f"{c.name}{' on ' + c.target if c.target else ''}: {c.detail}" for c in failed),
                failures=[c.name for c in failed])
        return rows

    def _record_checks(self) -> None:
        """The step's checks so far into the manifest (counts, and the ones not passed by name)."""
        if self.run is None:
            return
        # each with its reason, whole (scrubbed): the terminal and --json give it without opening the notebook
        not_passed = [{"name": c.name, "target": c.target, "status": c.status,
                       "detail": hsecrets.scrub(str(c.detail or ""))[:MAX_DETAIL]}
                      for c in self.checks if c.status != "pass"][:MAX_NOT_PASSED]
        with self.run.update() as data:
            data.step(self.step).checks = {**self.counts(), "not_passed": not_passed}


def change_record(o: Outcome) -> dict[str, object]:
    """One change as the manifest keeps it: what, the actions and the diff (scrubbed, the diff capped)."""
    return {"what": hsecrets.scrub(o.what), "actions": [hsecrets.scrub(a) for a in o.actions],
            "diff": hsecrets.scrub(o.diff)[:MAX_DIFF]}
