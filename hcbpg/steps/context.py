"""What a step module needs of the notebook's run context (``rb``), as a Protocol.

Steps never import the engine; :class:`hcbpg.engine.runbook.Runbook` satisfies this, and a
test may hand in any object with these members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.outcome import Check, Outcome
    from hcbpg.params import Params


class Run(Protocol):
    """The run a step is part of: params, dry run or not, secrets, records of earlier steps, outcomes."""

    env: str
    home: Path
    dry_run: bool
    params: "Params"
    #: the run's id (None in an ad hoc notebook run) and this step's key: named by the primary's change lock
    run_id: str | None
    step: str

    def at_finish(self, fn: "Callable[[], None]") -> None: ...

    def secret(self, key: str) -> str: ...

    def check_secrets(self) -> "list[Check]": ...

    def recall(self, name: str, default: Any = ...) -> Any: ...

    def track(self, outcome: "Outcome | Iterable[Outcome]", *, show: bool = True) -> "Outcome | list[Outcome]": ...

    def apply(self, ensure: "Callable[..., Outcome | Sequence[Outcome]]") -> "list[Outcome]": ...

    def gate(self, name: str, question: str, *, plan: Any = None) -> None: ...
