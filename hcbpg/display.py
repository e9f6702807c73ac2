"""Showing things to the operator: tables (HTML in a notebook, aligned text in a log or
terminal) and plans.  Foundation: it depends on nothing of hcbpg, so every layer may show a
table; it never reads or changes a machine.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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


def render_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> tuple[str, str]:
    """An HTML table and its plain-text twin (for logs)."""
    cols = columns or (list(rows[0]) if rows else [])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = ""
        for c in cols:
            v = r.get(c, "")
            style = ""
            if c == "status":
                style = {"pass": "color:#137333", "warn": "color:#b06000",
                         "fail": "color:#c5221f;font-weight:bold"}.get(str(v), "")
            cells += f"<td style='{style}'>{html.escape(str(v))}</td>"
        body += f"<tr>{cells}</tr>"
    markup = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return markup, text_table(rows, cols)


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The one plain-text table of hcbpg: a header line, then a line per row, each column padded to its
    widest value and two spaces apart (a log, a terminal, the CLI's listings)."""
    cols = list(columns or (list(rows[0]) if rows else []))
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


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
