"""The jupyter stack (papermill, scrapbook, nbformat, nbconvert), imported without jsonschema's
optional RFC 3987 parser.

They all import nbformat and so jsonschema, which imports ``rfc3987_syntax`` when it is installed
(a jupyter-events extra, for JupyterLab); that module builds a grammar at import time, measured at
about 1 s of CPU for every process that imports it (``python -X importtime``): each step's kernel,
each ``hcbpg run``/``plan``/``audit html``.  It only checks the ``iri`` string formats, which
nbformat's notebook schema does not use.

papermill also imports pyarrow (numpy with it) at import time for its HDFS handler, measured at 0.12 s of CPU
in every process that runs a notebook; hcbpg writes notebooks through its own handler only
(:mod:`hcbpg.engine.runner`), so :func:`load_papermill` imports papermill without it.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import cast


def skip_iri_parser() -> None:
    """Make ``import rfc3987_syntax`` fail fast (ImportError: jsonschema then leaves ``iri`` unchecked),
    unless jsonschema is imported already (then it is too late, and harmless to leave)."""
    if "jsonschema" not in sys.modules:
        # None in sys.modules makes that import fail fast (ImportError), on purpose
        sys.modules.setdefault("rfc3987_syntax", cast("ModuleType", None))


def load(name: str) -> ModuleType:
    """``import name`` (a module of the jupyter stack) after :func:`skip_iri_parser`."""
    skip_iri_parser()
    return importlib.import_module(name)


#: what papermill imports for storage backends hcbpg does not use (pyarrow: HDFS)
_PAPERMILL_UNUSED = ("pyarrow",)


def load_papermill() -> ModuleType:
    """``import papermill`` (after :func:`skip_iri_parser`), its HDFS handler left out: pyarrow is hidden while
    papermill is imported (ImportError: papermill leaves that handler out), and can be imported as ever after."""
    skip_iri_parser()
    if "papermill.iorw" in sys.modules:
        return importlib.import_module("papermill")
    hidden = [n for n in _PAPERMILL_UNUSED if n not in sys.modules]
    for n in hidden:
        sys.modules[n] = cast("ModuleType", None)  # None in sys.modules makes that import fail fast, on purpose
    try:
        return importlib.import_module("papermill")
    finally:
        for n in hidden:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]
