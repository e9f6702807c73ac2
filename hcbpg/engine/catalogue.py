"""The ordered runbook: read from ``steps.yaml`` in the notebooks directory, the one place steps are listed.

The order depends on how the data moves (``source.transfer``): an entry with ``transfers: [...]`` is in
the runbook only for those transfers, so a notebook may be listed twice, at a different place for
each.  With ``online`` the primary is completed while Bucardo syncs (08 archiving and the first full
backup, 10 the replica, before the window of 07); the offline transfers restore first, then archive
and replicate what they restored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hcbpg import secrets as hsecrets
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
    #: the inputs it takes (``-p NAME=VALUE``): parameters of its notebook, recorded with the run
    inputs: tuple[str, ...] = ()

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


#: who manages replication when params name nobody (``replication.manager``'s default)
DEFAULT_MANAGER = "manual"


def _listed(entry: dict[str, Any], key: str, want: str) -> bool:
    only = entry.get(key)
    return only is None or want in ([only] if isinstance(only, str) else only)


def load_steps(directory: Path | None = None, *, transfer: str | None = None,
               manager: str | None = None, sections: Collection[str] | None = None) -> list[Step]:
    """The steps in order for *transfer* (``source.transfer``; None: the default transfer's order) and
    *manager* (``replication.manager``: an entry with ``managers: [...]`` is there only for those); an entry with
    ``sections: [...]`` is there only when params have each of those optional sections (*sections*: the ones
    params have; None: every entry, as for a listing without params)."""
    d = directory or notebooks_dir()
    path = d / "steps.yaml"
    data = yaml.safe_load(path.read_text())
    want = transfer or DEFAULT_TRANSFER
    who = manager or DEFAULT_MANAGER
    steps: list[Step] = []
    for entry in data["steps"]:
        if not _listed(entry, "transfers", want) or not _listed(entry, "managers", who):
            continue
        if sections is not None and not set(entry.get("sections") or ()) <= set(sections):
            continue
        nb = entry["notebook"]
        if any(s.notebook == nb for s in steps):
            raise UsageError(f"{path}: {nb} is listed twice for source.transfer {want}",
                             hint="Give each of its entries the transfers it is for (transfers: [...]).")
        steps.append(Step(key=Path(nb).stem, title=entry["title"], notebook=nb,
                          on_demand=bool(entry.get("on_demand", False)), changes=str(entry.get("changes") or ""),
                          gates=tuple(str(g) for g in entry.get("gates") or ()),
                          inputs=tuple(str(n) for n in entry.get("inputs") or ())))
    return steps


#: an input's name: a notebook parameter's (never one of the parameters every step has)
INPUT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
RESERVED = frozenset({"env", "run_id", "run_dir", "dry_run"})


def step_inputs(directory: Path | None = None) -> dict[str, tuple[str, ...]]:
    """notebook -> the inputs it takes, from every entry of steps.yaml (whatever the transfer)."""
    d = directory or notebooks_dir()
    data = yaml.safe_load((d / "steps.yaml").read_text())
    return {e["notebook"]: tuple(str(n) for n in e.get("inputs") or ()) for e in data["steps"]}


def parse_inputs(pairs: Sequence[str], steps: Sequence[Step]) -> dict[str, str]:
    """``NAME=VALUE`` pairs as the steps' inputs: each name one a selected step takes, given once, its value
    plain text (no control character, at most 1,000 characters, no secret hcbpg knows); else UsageError."""
    takes = {n: s.key for s in steps for n in s.inputs}
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not INPUT_NAME.match(name) or name in RESERVED:
            raise UsageError(f"-p {pair.split('=', 1)[0]!r}: an input is NAME=VALUE, NAME a step's input")
        if name not in takes:
            listed = ", ".join(f"{k} ({n})" for n, k in takes.items()) or "none"
            raise UsageError(f"-p {name}: no step of this run takes it; inputs of the selected steps: {listed}")
        if name in out:
            raise UsageError(f"-p {name}: given twice")
        if len(value) > 1000 or any(ord(ch) < 32 for ch in value) or hsecrets.scrub(value) != value:
            raise UsageError(f"-p {name}: its value must be plain text of at most 1,000 characters and no secret "
                             "(inputs are recorded in the run's record)")
        out[name] = value
    return out


def load_steps_for(params: Params, directory: Path | None = None) -> list[Step]:
    """The steps in order for *params*' transfer and replication manager."""
    return load_steps(directory, transfer=transfer_of(params), manager=manager_of(params),
                      sections=[name for name in ("alerting",) if getattr(params, name, None) is not None])


def manager_of(params: Params) -> str:
    """``replication.manager`` of *params* (the default when there is no replication section)."""
    return params.replication.manager if params.replication is not None else DEFAULT_MANAGER


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
