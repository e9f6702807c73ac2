"""The figure of step 15's health report (pure): the numbers it draws, the bars in the order and with the
labels they are drawn with (:func:`bars`, tested without matplotlib), and the drawing (:func:`plot`).

Every panel is a horizontal bar chart sorted largest first, its value written at the end of each bar and a
bar at 0 drawn as a tick with its "0" (it must not vanish: an idle role is a fact worth seeing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from hcbpg.desired.health import Measurement, ThresholdsLike, age

Level = Literal["pass", "warn", "fail"]
#: the bar colours by level (colour-blind safe: blue, orange, red)
COLOURS: dict[str, str] = {"pass": "#4c78a8", "warn": "#f58518", "fail": "#e45756"}


def figure_data(measurements: Sequence[Measurement]) -> dict[str, Any]:
    """The numbers the figure draws (also recorded by step 15): replay lag (s) and backup age (h) per server,
    connections ``(in use, limit)`` per ``server · role`` (a role without a limit: the server's max_connections)."""
    lag: dict[str, float] = {}
    backup_age: dict[str, float] = {}
    conns: dict[str, tuple[int, int]] = {}
    for m in measurements:
        if not m.running:
            continue
        if m.in_recovery and m.replay_lag_s is not None:
            lag[m.server] = float(m.replay_lag_s)
        for r in m.replication:
            if r.get("replay_lag_s") is not None:
                lag[f"{m.server} → {r.get('application_name')}"] = float(r["replay_lag_s"])
        if m.backup:
            backup_age[m.server] = (m.now - float(m.backup["stop"])) / 3600
        for c in m.connections:
            limit = int(c["limit"]) if int(c["limit"]) >= 0 else m.max_connections
            conns[f"{m.server} · {c['role']}"] = (int(c["in_use"]), limit)
    return {"replay_lag_s": lag, "backup_age_h": backup_age, "connections": conns}


@dataclass(frozen=True)
class Bar:
    """One bar as drawn: *label* on the axis, *value* its length, *text* written at its end (a connection's
    limit and share of it), *level* its colour; *limit* a connection's limit (None for the other panels)."""

    label: str
    value: float
    text: str
    level: Level = "pass"
    limit: float | None = None


def _level(value: float, warn: float | None, fail: float | None) -> Level:
    if fail is not None and value >= fail:
        return "fail"
    if warn is not None and value >= warn:
        return "warn"
    return "pass"


def _sorted(bars: list[Bar]) -> list[Bar]:
    """Largest first (then by name, so equal bars keep one order); the first is drawn at the top."""
    return sorted(bars, key=lambda b: (-b.value, b.label))


def bars(data: dict[str, Any], t: ThresholdsLike) -> dict[str, list[Bar]]:
    """The three panels' bars from :func:`figure_data`: replay lag and backup age against their thresholds,
    connections in use against each role's limit (``12 / 500 (2%)``; the level from the connection thresholds)."""
    lag = [Bar(k, v, age(v) if v >= 1 else f"{v * 1000:.0f} ms", _level(v, t.replay_lag_warn_s, t.replay_lag_fail_s))
           for k, v in data["replay_lag_s"].items()]
    backup = [Bar(k, v, age(v * 3600), _level(v, t.backup_age_warn_h, t.backup_age_fail_h))
              for k, v in data["backup_age_h"].items()]
    conns = []
    for k, (used, limit) in data["connections"].items():
        k = k.replace("\n", " · ")  # recorded before as "server\nrole": one line on the axis either way
        pct = 100.0 * used / limit if limit else (100.0 if used else 0.0)
        conns.append(Bar(k, float(used), f"{used} / {limit} ({pct:.0f}%)",
                         _level(pct, t.connections_warn_pct, t.connections_fail_pct), float(limit)))
    return {"replay_lag_s": _sorted(lag), "backup_age_h": _sorted(backup), "connections": _sorted(conns)}


PANELS = (("replay_lag_s", "replay lag (s)", "(no standby)"),
          ("backup_age_h", "age of the last backup (h)", "(no backup)"),
          ("connections", "connections in use / limit", "(no connections measured)"))


def _panel(ax, items: list[Bar], title: str, empty: str, *, warn: float | None = None,  # noqa: ANN001 - an Axes
           fail: float | None = None) -> None:
    """One sorted horizontal bar chart: the value at each bar's end, a 0 as a tick, thresholds dashed."""
    ax.set_title(title, fontsize=11)
    limits = [f"{name} ≥ {v:g}" for name, v in (("warn", warn), ("fail", fail)) if v is not None]
    if limits:  # said even when a threshold lies beyond every bar and is not drawn
        ax.set_xlabel("thresholds: " + ", ".join(limits), fontsize=8, color="#666666", loc="right")
    ax.spines[["top", "right", "left"]].set_visible(False)  # no spine over the ticks of the zeros
    if not items:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="#666666")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ys = list(range(len(items)))
    # the scale is the bars' own (a limit of 600 beside 12 in use would flatten every bar: the text says it)
    top = max([b.value for b in items] + [1e-9])
    ax.barh(ys, [b.value for b in items], color=[COLOURS[b.level] for b in items], height=0.7)
    for y, b in zip(ys, items, strict=True):
        if b.value == 0:  # a zero-length bar draws nothing: a tick at 0 says it is there and 0
            ax.plot([0, 0], [y - 0.35, y + 0.35], color=COLOURS[b.level], lw=2)
        ax.text(b.value + top * 0.01, y, " " + b.text, va="center", fontsize=9)
    for value, name, colour in ((warn, "warn", COLOURS["warn"]), (fail, "fail", COLOURS["fail"])):
        if value is not None and value <= top * 1.5:  # a threshold far beyond every bar would squash them
            ax.axvline(value, color=colour, ls="--", lw=1, label=name, zorder=3)
    ax.set_yticks(ys, [b.label for b in items], fontsize=9)
    ax.invert_yaxis()  # the largest at the top
    ax.set_xlim(0, top * 1.35)  # room for the values' text
    ax.grid(axis="x", color="#eeeeee")
    ax.set_axisbelow(True)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, frameon=False)


def plot(measurements: Sequence[Measurement], t: ThresholdsLike):  # noqa: ANN201 - a matplotlib Figure
    """Replay lag (s) and backup age (h) side by side, each against its warn and fail thresholds, and under them
    the connections in use of every server and role against its limit, sorted, with their values."""
    return plot_data(figure_data(measurements), t)


def plot_data(data: dict[str, Any], t: ThresholdsLike):  # noqa: ANN201 - a matplotlib Figure
    """:func:`plot` from :func:`figure_data`'s numbers (as step 15 records them: a run's figure drawn again)."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy (fonts): only the health figure needs it

    drawn = bars(data, t)
    rows_top = max(len(drawn["replay_lag_s"]), len(drawn["backup_age_h"]), 1)
    rows_conn = max(len(drawn["connections"]), 1)
    heights = [0.6 + 0.32 * rows_top, 0.6 + 0.3 * rows_conn]
    fig = plt.figure(figsize=(13, sum(heights) + 0.8))
    grid = fig.add_gridspec(2, 2, height_ratios=heights, hspace=0.25 + 1.2 / sum(heights), wspace=0.45)
    _panel(fig.add_subplot(grid[0, 0]), drawn["replay_lag_s"], PANELS[0][1], PANELS[0][2],
           warn=t.replay_lag_warn_s, fail=t.replay_lag_fail_s)
    _panel(fig.add_subplot(grid[0, 1]), drawn["backup_age_h"], PANELS[1][1], PANELS[1][2],
           warn=t.backup_age_warn_h, fail=t.backup_age_fail_h)
    _panel(fig.add_subplot(grid[1, :]), drawn["connections"], PANELS[2][1], PANELS[2][2])
    return fig
