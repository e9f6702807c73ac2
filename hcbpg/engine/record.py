"""The runbook's record of values between steps: ``rb.record`` glues one into the notebook, ``rb.recall``
reads it back in a later step, only from a record that verifies.

A part of :class:`hcbpg.engine.runbook.Runbook`.  Values travel in the executed notebooks (scrapbook);
recall reads only notebooks the manifests of sealed runs name (and this open run's), after the
environment's chain (every notebook's hash, signatures, head) was checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hcbpg.display import _in_ipython
from hcbpg.engine import jupyter, signing
from hcbpg.engine import manifest as mf
from hcbpg.errors import AuditError, HcbpgError

_MISSING = object()


def _scrapbook() -> Any:
    """scrapbook, imported in a step's kernel without jsonschema's RFC 3987 parser (:mod:`hcbpg.engine.jupyter`)."""
    return jupyter.load("scrapbook")


def recorded_notebooks(run: mf.Run) -> dict[str, str | None]:
    """The notebooks *run*'s manifest names, with their sha256 (None while a step of an open run, run or guided,
    has not been hashed yet); empty when the manifest cannot be read."""
    try:
        data = run.read()
    except HcbpgError:
        return {}
    out: dict[str, str | None] = {}
    for step in data.get("steps", []):
        for att in step.get("attempts", []):
            if att.get("notebook"):
                out[att["notebook"]] = att.get("sha256") or out.get(att["notebook"])
    return out


class Record:
    """Values recorded by this step, and those of earlier steps of the environment."""

    def __init__(self, run: mf.Run | None, *, env: str, step: str, home: Path,
                 trust: Callable[[], signing.Trust]) -> None:
        self.run = run
        self.env = env
        self.step = step
        self.home = home
        self._trust = trust
        self.values: dict[str, Any] = {}
        self._verified = False  # the environment's record, checked once before recall reads it

    def record(self, name: str, value: Any) -> None:
        """Glue a (non-secret) value into this notebook for later steps (scrapbook)."""
        sb = _scrapbook()
        json.dumps(value)  # fail here, not in a later step, if it is not JSON
        self.values[name] = value
        if _in_ipython() is not None:
            sb.glue(name, value)

    def recall(self, name: str, default: Any = _MISSING) -> Any:
        """A value recorded by an earlier step: this run first, then earlier runs of this environment
        (see :meth:`hcbpg.engine.runbook.Runbook.recall`)."""
        if name in self.values:
            return self.values[name]
        self.verify()
        sb = _scrapbook()
        runs = mf.list_runs(self.home, self.env)
        if self.run is not None:
            runs = [r for r in runs if r.path != self.run.path] + [self.run]
        for run in reversed(runs):
            current = self.run is not None and run.path == self.run.path
            if not current and not mf.is_sealed(run):
                continue  # only sealed runs, whose signatures verify() checked, besides this open one
            recorded = recorded_notebooks(run)
            for nb in sorted(run.path.glob("[0-9]*.ipynb"), reverse=True):
                if ".attempt-" in nb.name or nb.stem == self.step or nb.name not in recorded:
                    continue  # a file the manifest does not name was not written by hcbpg
                if recorded[nb.name] is None and not current:
                    continue  # an earlier run's attempt without a hash is not read
                # a hashed notebook's sha256 was compared with its file by verify() (verify_env)
                try:
                    scraps = sb.read_notebook(str(nb)).scraps
                except Exception:  # noqa: BLE001 - a partial notebook of a crashed run
                    continue
                if name in scraps:
                    return scraps[name].data
        if default is _MISSING:
            raise HcbpgError(f"no earlier step of {self.env} recorded '{name}'",
                             hint="Run the step that records it first (see `hcbpg runs`).")
        return default

    def verify(self) -> None:
        """The environment's record verifies (once per step): what recall reads was written by hcbpg."""
        if self._verified:
            return
        if mf.list_runs(self.home, self.env):
            problems = mf.verify_env(self.home, self.env, self._trust())
            if problems:
                raise AuditError(f"{self.step}: values of earlier steps are not read from a record that does not "
                                 f"verify ({len(problems)} problem(s)); first: {problems[0]}",
                                 hint=f"See `hcbpg audit verify {self.env}`. Restore the record from git, or run "
                                      "the step that records the value again.")
        self._verified = True
