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


# scrapbook's own names for its format (scrapbook.schemas): importing scrapbook imports pandas, pyarrow, papermill
# and boto3, measured at 0.6 s of CPU in every step's kernel (rb.finish glues the summary) and in the runner.  The
# values hcbpg records (text and JSON) are written and read here in scrapbook's format, byte for byte as
# scrapbook's glue and read_notebook do; anything else goes through scrapbook itself.
_GLUE_PREFIX = "application/scrapbook.scrap"
_RECORD_PREFIX = "application/papermill.record"
_SCRAP_VERSION = 1
_JSON_TYPES = (list, dict, int, float, bool)


def _encoder_of(value: Any) -> str | None:
    """The encoder scrapbook's registry picks for *value* (text before json), or None: left to scrapbook."""
    if isinstance(value, str):
        return "text"
    if isinstance(value, _JSON_TYPES):
        return "json"
    return None


def glue(name: str, value: Any) -> None:
    """``scrapbook.glue(name, value)``: one raw display output that holds the scrap (inside a kernel)."""
    encoder = _encoder_of(value)
    if not isinstance(name, str) or encoder is None:
        _scrapbook().glue(name, value)
        return
    from IPython.display import display  # noqa: PLC0415 - IPython only exists inside a kernel
    payload = {"name": name, "data": value, "encoder": encoder, "version": _SCRAP_VERSION}
    display({f"{_GLUE_PREFIX}.{encoder}+json": payload},
            metadata={"scrapbook": {"name": name, "data": True, "display": False}}, raw=True)


class _NotPlain(Exception):
    """A notebook holds something the plain reader leaves to scrapbook."""


def _decoded(payload: Any) -> tuple[str, Any]:
    """A text or json scrap's name and value, as scrapbook decodes it (else _NotPlain)."""
    if not isinstance(payload, dict) or type(payload.get("version")) is not int or payload["version"] != _SCRAP_VERSION:
        raise _NotPlain
    name, data, encoder = payload.get("name"), payload.get("data"), payload.get("encoder")
    if not isinstance(name, str) or not isinstance(data, (str, *_JSON_TYPES)) or encoder not in ("text", "json"):
        raise _NotPlain
    if encoder == "text":
        return name, data if isinstance(data, str) else str(data)
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            pass
    return name, data


def _plain_scraps(path: Path) -> dict[str, Any]:
    """The data scraps of a v4 notebook written by :func:`glue` (else _NotPlain)."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _NotPlain from exc
    if not isinstance(nb, dict) or nb.get("nbformat") != 4 or not isinstance(nb.get("cells"), list):  # noqa: PLR2004 - nbformat 4
        raise _NotPlain
    scraps: dict[str, Any] = {}
    for cell in nb["cells"]:
        outputs = cell.get("outputs", []) if isinstance(cell, dict) else None
        if not isinstance(outputs, list):
            raise _NotPlain
        for output in outputs:
            if not isinstance(output, dict):
                raise _NotPlain
            metadata = output.get("metadata", {})
            if not isinstance(metadata, dict) or "papermill" in metadata:
                raise _NotPlain
            sb_meta = metadata.get("scrapbook", {})
            if not isinstance(sb_meta, dict) or sb_meta.get("display"):
                raise _NotPlain
            data = output.get("data", {})
            if not isinstance(data, dict):
                raise _NotPlain
            for sig, payload in data.items():
                if sig.startswith(_RECORD_PREFIX):
                    raise _NotPlain
                if sig.startswith(_GLUE_PREFIX):
                    name, value = _decoded(payload)
                    scraps[name] = value  # a later scrap of the same name replaces it
    return scraps


def read_scraps(path: Path) -> dict[str, Any]:
    """``{name: scrap.data}`` of ``scrapbook.read_notebook(path).scraps`` (raises as it does)."""
    try:
        return _plain_scraps(Path(path))
    except _NotPlain:
        return {name: scrap.data for name, scrap in _scrapbook().read_notebook(str(path)).scraps.items()}


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
        json.dumps(value)  # fail here, not in a later step, if it is not JSON
        self.values[name] = value
        if _in_ipython() is not None:
            glue(name, value)

    def recall(self, name: str, default: Any = _MISSING, *, own: bool = False) -> Any:
        """A value recorded by an earlier step: this run first, then earlier runs of this environment
        (see :meth:`hcbpg.engine.runbook.Runbook.recall`); with *own*, this step's earlier runs count too."""
        if name in self.values:
            return self.values[name]
        self.verify()
        runs = mf.list_runs(self.home, self.env)
        if self.run is not None:
            runs = [r for r in runs if r.path != self.run.path] + [self.run]
        for run in reversed(runs):
            current = self.run is not None and run.path == self.run.path
            if not current and not mf.is_sealed(run):
                continue  # only sealed runs, whose signatures verify() checked, besides this open one
            recorded = recorded_notebooks(run)
            for nb in sorted(run.path.glob("[0-9]*.ipynb"), reverse=True):
                if ".attempt-" in nb.name or (nb.stem == self.step and not own) or nb.name not in recorded:
                    continue  # a file the manifest does not name was not written by hcbpg
                if recorded[nb.name] is None and not current:
                    continue  # an earlier run's attempt without a hash is not read
                # a hashed notebook's sha256 was compared with its file by verify() (verify_env)
                try:
                    scraps = read_scraps(nb)
                except Exception:  # noqa: BLE001 - a partial notebook of a crashed run
                    continue
                if name in scraps:
                    return scraps[name]
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
