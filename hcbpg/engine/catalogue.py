"""The ordered runbook: read from ``steps.yaml`` in the notebooks directory, the one place steps are listed.

The order depends on how the data moves (``source.transfer``): an entry with ``transfers: [...]`` is in
the runbook only for those transfers, so a notebook may be listed twice, at a different place for
each.  With ``online`` the primary is completed while Bucardo syncs (08 archiving and the first full
backup, 10 the replica, before the window of 07); the offline transfers restore first, then archive
and replicate what they restored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from hcbpg.errors import UsageError
from hcbpg.params import Params


@dataclass(frozen=True)
class Step:
    key: str          # "02_install_postgres": also the notebook's file stem
    title: str
    notebook: str     # file name inside the notebooks directory
    #: steps like failover or rotation run only when asked for with --only
    on_demand: bool = False
    #: what the step may change, in a few words (``hcbpg steps``)
    changes: str = ""
    #: the gates it asks for (SERVER, FINGERPRINT: filled in when asked)
    gates: tuple[str, ...] = ()

    @property
    def number(self) -> str:
        return self.key.split("_", 1)[0]

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "title": self.title, "notebook": self.notebook}


def notebooks_dir() -> Path:
    """``HCBPG_NOTEBOOKS`` or the package's sibling ``notebooks/`` directory."""
    env = os.environ.get("HCBPG_NOTEBOOKS")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "notebooks"


#: the transfer a runbook is ordered for when params name none (``source.transfer``'s default)
DEFAULT_TRANSFER = "stream"


def load_steps(directory: Path | None = None, *, transfer: str | None = None) -> list[Step]:
    """The steps in order for *transfer* (``source.transfer``; None: the default transfer's order)."""
    d = directory or notebooks_dir()
    path = d / "steps.yaml"
    data = yaml.safe_load(path.read_text())
    want = transfer or DEFAULT_TRANSFER
    steps: list[Step] = []
    for entry in data["steps"]:
        only = entry.get("transfers")
        if only is not None and want not in ([only] if isinstance(only, str) else only):
            continue
        nb = entry["notebook"]
        if any(s.notebook == nb for s in steps):
            raise UsageError(f"{path}: {nb} is listed twice for source.transfer {want}",
                             hint="Give each of its entries the transfers it is for (transfers: [...]).")
        steps.append(Step(key=Path(nb).stem, title=entry["title"], notebook=nb,
                          on_demand=bool(entry.get("on_demand", False)), changes=str(entry.get("changes") or ""),
                          gates=tuple(str(g) for g in entry.get("gates") or ())))
    return steps


def transfer_of(params: Params) -> str:
    """``source.transfer`` of *params* (the default when there is no source section)."""
    return params.source.transfer if params.source is not None else DEFAULT_TRANSFER


def match(steps: list[Step], spec: str) -> int:
    """Index of the step named by *spec*: its number ("02"), its key, or the name after the number."""
    for i, s in enumerate(steps):
        if spec in (s.key, s.number, s.key.split("_", 1)[-1], s.notebook):
            return i
    raise UsageError(f"no step '{spec}'; steps are: {', '.join(s.key for s in steps)}")


def select(steps: list[Step], *, start: str | None = None, until: str | None = None,
           only: str | None = None) -> list[Step]:
    """The steps a run executes, in order."""
    if only:
        if start or until:
            raise UsageError("--only cannot be combined with --from or --until")
        return [steps[match(steps, o)] for o in only.split(",")]
    lo = match(steps, start) if start else 0
    hi = match(steps, until) if until else len(steps) - 1
    if lo > hi:
        raise UsageError(f"--from {start} comes after --until {until}")
    return [s for s in steps[lo:hi + 1] if not s.on_demand]
