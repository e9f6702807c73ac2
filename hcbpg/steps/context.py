"""What a step module needs of the notebook's run context (``rb``): the one ``Run`` protocol.

Steps never import the engine; :class:`hcbpg.engine.runbook.Runbook` satisfies this, and a
test may hand in any object with these members.  Steps do not touch the run's manifest: what
they add to the record goes through these methods (``record``, ``note_downtime``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, overload

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.outcome import Check, Outcome
    from hcbpg.params import Params


class Run(Protocol):
    """The run a step is part of: params, dry run or not, secrets, gates, records of earlier steps, outcomes."""

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

    def record(self, name: str, value: Any) -> None: ...

    def recall(self, name: str, default: Any = ..., *, own: bool = False) -> Any: ...

    @overload
    def track(self, outcome: "Outcome", *, show: bool = True) -> "Outcome": ...
    @overload
    def track(self, outcome: "Iterable[Outcome]", *, show: bool = True) -> "list[Outcome]": ...

    def track(self, outcome: "Outcome | Iterable[Outcome]", *, show: bool = True) -> "Outcome | list[Outcome]": ...

    def verify(self, checks: "Iterable[Check]", *, title: str = "checks") -> "list[Check]": ...

    def track_applied(self, outcome: "Outcome | Iterable[Outcome]") -> "list[Outcome]": ...

    def verify_applied(self, make: "Callable[..., Iterable[Check]]", *args: Any, title: str = "checks",
                       **kwargs: Any) -> "list[Check]": ...

    def when_applied(self, fn: "Callable[..., Any]", *args: Any, **kwargs: Any) -> Any: ...

    def record_applied(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None: ...

    def gate(self, name: str, question: str, *, plan: Any = None) -> None: ...

    def approval(self, name: str, *, earlier_runs: bool = False) -> dict[str, Any] | None: ...

    def note_downtime(self, downtime: Mapping[str, Any], *, merge: bool = False) -> None: ...

    def skip(self, reason: str) -> None: ...
