"""What the benches share to say what they measured: a timestamped progress line, a quiet echo for hosts, the
percentile of a sample, the table (hcbpg's one text table, ``hcbpg.display.show_table``) and the matplotlib
figure's start and end.  A bench imports it as ``_report`` (bench/ is on its own ``sys.path``, being the
script's folder).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from hcbpg.display import show_table


def quiet(_: str) -> None:
    """A host's echo that prints nothing (the bench prints its own lines)."""


def log_line(text: str) -> None:
    """*text* after the time of day, at once (a bench's progress)."""
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The *q* quantile (0..1) by linear interpolation between the nearest ranks; NaN for no values."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def cell(value: Any, fmt: str = "") -> str:
    """A table's cell: ``-`` for None, else *value* formatted with *fmt* (``str`` when none)."""
    return "-" if value is None else format(value, fmt)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *,
                formats: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
                note: str | None = None) -> None:
    """A blank line, then *rows*' *columns* (each cell through :func:`cell` with its column's format in *formats*),
    each headed by its name in *headers* or else its key, then *note* when given."""
    fmts, heads = formats or {}, headers or {}
    names = [heads.get(c, c) for c in columns]
    print()
    show_table([{n: cell(r.get(c), fmts.get(c, "")) for n, c in zip(names, columns, strict=True)} for r in rows],
               names)
    if note:
        print(note)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display); None, said, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: PLC0415 - only the benchmark plots
    except ImportError:
        print("matplotlib is not installed: no plot (the JSON has every figure)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - only the benchmark plots
    return plt


def save_figure(fig: Any, path: str) -> None:
    """Lay *fig* out, write it to *path* (PNG, 110 dpi) and say where."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")
