"""Notebooks show their tables and nothing after them: no code cell ends with a bare call whose value Jupyter
would print as ``Out[n]: [Check(...)]`` (a call's value is shown unless the cell ends with ``;``)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _last_bare_calls(source: str) -> list[str]:
    """A code cell whose last statement is a call not ending in ``;`` (print's value is None)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.split("\n"))
    body = ast.parse(code).body
    last = body[-1] if body else None
    if not (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)):
        return []
    if isinstance(last.value.func, ast.Name) and last.value.func.id == "print":
        return []
    line = source.split("\n")[last.end_lineno - 1][last.end_col_offset:]
    return [] if line.lstrip().startswith(";") else [ast.unparse(last)[:80]]


def test_no_notebook_cell_leaves_a_raw_repr_after_its_table():
    found = []
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "code":
                found += [f"{nb.name}: {c}" for c in _last_bare_calls("".join(cell["source"]))]
    assert not found, "end these cells with ';' (Jupyter prints what the last call returns):\n" + "\n".join(found)
