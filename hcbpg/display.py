"""Showing things to the operator: tables (HTML in a notebook, aligned text in a log or
terminal) and plans.  Foundation: it depends on nothing of hcbpg, so every layer may show a
table; it never reads or changes a machine.

Text is laid out by ``rich`` (:func:`render_rich`): a table's columns, a recap's, a bar.  Without a
terminal (a log, a pipe, a notebook's text twin, ``NO_COLOR``) it writes no colour and no box codes.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.outcome import Outcome


def _in_ipython() -> Any:
    try:
        from IPython import get_ipython  # noqa: PLC0415 - IPython is there only inside a kernel
    except ImportError:
        return None
    return get_ipython()


def _display_html(markup: str, text: str) -> None:
    ip = _in_ipython()
    if ip is not None:
        from IPython.display import HTML, display  # noqa: PLC0415 - IPython only exists inside a kernel
        display(HTML(markup))
    else:
        print(text)


#: a width no line of a log reaches: nothing is wrapped or cut where no terminal is
UNLIMITED = 100_000
#: the notebook's tables: left-aligned (Jupyter's stylesheet right-aligns cells), top-aligned
CELL_STYLE = "text-align:left;vertical-align:top"


def render_rich(renderable: RenderableType, *, width: int | None = None, color: bool = False) -> str:
    """What ``rich`` prints for *renderable*, as a string: *width* columns (None: unlimited, never wrapped);
    colours only when *color* (a terminal) and ``NO_COLOR`` is not set."""
    color = color and not os.environ.get("NO_COLOR")
    buf = io.StringIO()
    console = Console(file=buf, width=width or UNLIMITED, force_terminal=color, no_color=not color,
                      color_system="standard" if color else None, highlight=False, emoji=False, markup=False,
                      soft_wrap=False, legacy_windows=False, force_jupyter=False)
    console.print(renderable, crop=False)
    return buf.getvalue()


def grid(*, header: bool = False) -> Table:
    """A borderless ``rich`` table: columns two spaces apart, no padding at the edges."""
    return Table(box=None, show_header=header, header_style="bold", pad_edge=False, padding=(0, 1),
                 show_edge=False, expand=False)


def render_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> tuple[str, str]:
    """An HTML table (left-aligned) and its plain-text twin (for logs)."""
    cols = columns or (list(rows[0]) if rows else [])
    head = "".join(f"<th style='{CELL_STYLE}'>{html.escape(c)}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = ""
        for c in cols:
            v = r.get(c, "")
            style = CELL_STYLE
            if c == "status":
                style += {"pass": ";color:#137333", "warn": ";color:#b06000",
                          "fail": ";color:#c5221f;font-weight:bold"}.get(str(v), "")
            cells += f"<td style='{style}'>{html.escape(str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return markup, text_table(rows, cols)


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, *,
               width: int | None = None, color: bool = False) -> str:
    """The one plain-text table of hcbpg (``rich``'s, borderless): a header line, then a line per row, each
    column as wide as its widest value and two spaces apart (a log, a terminal, the CLI's listings); *width*
    (a terminal's) wraps the widest cells at spaces, None never wraps; *color*: a bold header."""
    cols = list(columns or (list(rows[0]) if rows else []))
    table = grid(header=True)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    return "\n".join(line.rstrip() for line in render_rich(table, width=width, color=color).splitlines())


def show_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    markup, text = render_table(rows, columns)
    _display_html(markup, text)



def show_plan(outcomes: "Outcome | Sequence[Outcome]") -> int:
    """Print a plan (each outcome that changes, with its actions and diff) and a summary table
    of every outcome; returns how many would change."""
    items = [outcomes] if not isinstance(outcomes, Sequence) else list(outcomes)
    for o in items:
        if o.changed:
            print(str(o))
            print()
    show_table([{"what": o.what, "change": o.verb if o.changed else "unchanged",
                 "actions": "; ".join(o.actions) if o.changed else ""} for o in items])
    return sum(1 for o in items if o.changed)
