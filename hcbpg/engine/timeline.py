"""The timeline of a run for the HTML audit's index: each step's attempts as bars from start to end, the gates
(asked, approved) marked, the downtime window shaded, and the run's totals; an inline SVG (no script, nothing
fetched), pure: it reads the manifest's dict only.

A run resumed hours later (a gate approved the next morning) would squash every bar into a few pixels: an idle
stretch longer than :data:`BREAK_AFTER_S` is drawn as a fixed-width break that says how long it was."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hcbpg import clock

#: colours by status (the notebook tables' pass/warn/fail palette)
STATUS_COLOURS = {"succeeded": "#137333", "skipped": "#9aa0a6", "failed": "#c5221f", "interrupted": "#b06000",
                  "waiting": "#1a73e8", "running": "#1a73e8"}
#: an idle stretch (no attempt running) longer than this is drawn as a break, not to scale
BREAK_AFTER_S = 120.0
BREAK_PX = 28.0
LABEL_PX, ROW_PX, PLOT_PX, RIGHT_PX = 170.0, 22.0, 640.0, 120.0


def _t(s: str | None) -> float | None:
    if not s:
        return None
    try:
        return clock.parse_time(s).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Span:
    """One bar: *row* (the step's index), *start* and *end* in epoch seconds, *status*, *title* (a tooltip)."""

    row: int
    start: float
    end: float
    status: str
    title: str


@dataclass(frozen=True)
class Mark:
    """A gate: asked at *asked*, approved at *approved* (None: still waiting), in the row of its step."""

    row: int
    name: str
    asked: float | None
    approved: float | None
    by: str


@dataclass(frozen=True)
class Timeline:
    """What the SVG draws, and the totals under it."""

    steps: list[str]
    spans: list[Span]
    gates: list[Mark]
    window: tuple[float, float] | None  # maintenance on → traffic on
    downtime_s: float | None
    start: float
    end: float
    totals: dict[str, Any]


def plan_timeline(data: dict[str, Any]) -> Timeline:
    """The bars, marks and totals of a manifest (a step never run has a row and no bar)."""
    steps = [s["key"] for s in data.get("steps", [])]
    row = {k: i for i, k in enumerate(steps)}
    spans: list[Span] = []
    for i, s in enumerate(data.get("steps", [])):
        for a in s.get("attempts") or []:
            start, end = _t(a.get("start")), _t(a.get("end"))
            if start is None:
                continue
            if end is None:  # still running, or killed: to its start plus what it recorded, at least a sliver
                end = start + float(a.get("duration_s") or 0)
            status = str(a.get("status") or s.get("status") or "")
            spans.append(Span(i, start, max(end, start), status,
                              f"{s['key']} attempt {a.get('n')}: {status}, {end - start:.1f} s"))
    gates: list[Mark] = []
    for name, g in (data.get("gates") or {}).items():
        r = row.get(str(g.get("step") or ""), -1)
        gates.append(Mark(r, name, _t(g.get("requested_at")), _t(g.get("approved_at")),
                          str(g.get("approved_by") or "")))
    dt = data.get("downtime") or {}
    on, off = _t(dt.get("maintenance_on_at")), _t(dt.get("traffic_on_at"))
    window = (on, off) if on is not None and off is not None and off >= on else None
    times = [t for sp in spans for t in (sp.start, sp.end)] + [t for m in gates for t in (m.asked, m.approved) if t]
    created = _t(data.get("created"))
    start = min(times + ([created] if created else [])) if times or created else 0.0
    end = max(times + [start])
    by_status: dict[str, int] = {}
    for s in data.get("steps", []):
        by_status[s.get("status", "")] = by_status.get(s.get("status", ""), 0) + 1
    totals = {"wall_s": round(end - start, 3), "steps_s": round(sum(sp.end - sp.start for sp in spans), 3),
              "steps": len(steps), "by_status": by_status,
              "changes": sum(int(s.get("changes") or 0) for s in data.get("steps", [])),
              "attempts": len(spans), "gates": len(gates),
              "gates_waited_s": round(sum((m.approved - m.asked) for m in gates if m.approved and m.asked), 3)}
    return Timeline(steps, spans, gates, window, dt.get("total_s"), start, end, totals)


def _segments(spans: Sequence[Span], start: float, end: float) -> list[tuple[float, float, bool]]:
    """The time axis as (from, to, is_break) pieces: idle stretches longer than BREAK_AFTER_S are breaks."""
    out: list[tuple[float, float, bool]] = []
    cursor = t = start  # cursor: where the current to-scale piece began; t: the latest busy moment so far
    for a, b in sorted((sp.start, sp.end) for sp in spans) + [(end, end)]:
        if a - t > BREAK_AFTER_S:
            if t > cursor:
                out.append((cursor, t, False))
            out.append((t, a, True))
            cursor = a
        t = max(t, b)
    if t > cursor or not out:
        out.append((cursor, t, False))
    return out


class _Axis:
    """Epoch seconds → x pixels over the segments (breaks a fixed width, the rest to scale)."""

    def __init__(self, segments: list[tuple[float, float, bool]]) -> None:
        self.segments = segments
        scaled = sum(b - a for a, b, brk in segments if not brk) or 1.0
        breaks = sum(1 for *_, brk in segments if brk)
        self.per_s = max(PLOT_PX - BREAK_PX * breaks, PLOT_PX / 2) / scaled

    def x(self, t: float) -> float:
        x = LABEL_PX
        for a, b, brk in self.segments:
            width = BREAK_PX if brk else (b - a) * self.per_s
            if t <= b or (a, b, brk) == self.segments[-1]:
                if brk:
                    return x + (BREAK_PX * (t - a) / (b - a) if b > a else 0)
                return x + max(0.0, min(t, b) - a) * self.per_s
            x += width
        return x


def human(s: float) -> str:
    """``4.1 s``, ``2 min 05 s``, ``3 h 12 min``."""
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def render_timeline_svg(data: dict[str, Any]) -> str:
    """The run's timeline as an inline ``<svg>`` (with ``<title>`` tooltips; no script)."""
    tl = plan_timeline(data)
    axis = _Axis(_segments(tl.spans, tl.start, tl.end))
    top = 26.0
    height = top + ROW_PX * max(len(tl.steps), 1) + 34
    width = LABEL_PX + PLOT_PX + RIGHT_PX
    esc = html.escape
    out = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="11" role="img" '
           f'aria-label="timeline of run {esc(str(data.get("run_id", "")))}">']
    bottom = top + ROW_PX * max(len(tl.steps), 1)
    if tl.window:  # the downtime window behind everything, over every row
        x0, x1 = axis.x(tl.window[0]), axis.x(tl.window[1])
        label = f"downtime {human(tl.downtime_s)}" if tl.downtime_s is not None else "downtime"
        out.append(f'<rect class="downtime" x="{x0:.1f}" y="{top - 14:.1f}" width="{max(x1 - x0, 2):.1f}" '
                   f'height="{bottom - top + 14:.1f}" fill="#fce8e6" stroke="#c5221f" stroke-dasharray="3,2">'
                   f'<title>{esc(label)}: maintenance on → traffic on</title></rect>')
        out.append(f'<text x="{x0:.1f}" y="{top - 4:.1f}" fill="#c5221f" font-weight="bold">{esc(label)}</text>')
    for i, key in enumerate(tl.steps):
        y = top + ROW_PX * i
        if i % 2:
            out.append(f'<rect x="0" y="{y:.1f}" width="{width:.0f}" height="{ROW_PX:.0f}" fill="#000" '
                       f'fill-opacity="0.03"/>')
        out.append(f'<text x="{LABEL_PX - 8:.0f}" y="{y + 15:.1f}" text-anchor="end">{esc(key)}</text>')
    for a, b, brk in axis.segments:
        if brk:
            x = axis.x(a)
            out.append(f'<g class="break"><rect x="{x + 4:.1f}" y="{top:.1f}" width="{BREAK_PX - 8:.1f}" '
                       f'height="{bottom - top:.1f}" fill="none" stroke="#bbb" stroke-dasharray="2,3"/>'
                       f'<text x="{x + BREAK_PX / 2:.1f}" y="{bottom + 26:.1f}" text-anchor="middle" fill="#666">'
                       f'⋯ {esc(human(b - a))}</text><title>idle {esc(human(b - a))} (not to scale)</title></g>')
    for sp in tl.spans:
        x0, x1 = axis.x(sp.start), axis.x(sp.end)
        y = top + ROW_PX * sp.row
        colour = STATUS_COLOURS.get(sp.status, "#5f6368")
        out.append(f'<rect class="step {esc(sp.status)}" x="{x0:.1f}" y="{y + 4:.1f}" width="{max(x1 - x0, 2):.1f}" '
                   f'height="{ROW_PX - 8:.0f}" rx="2" fill="{colour}"><title>{esc(sp.title)}</title></rect>')
        out.append(f'<text class="duration" x="{x1 + 4:.1f}" y="{y + 15:.1f}" fill="#444">'
                   f'{esc(human(sp.end - sp.start))}</text>')
    for m in tl.gates:
        y = top + ROW_PX * max(m.row, 0)
        if m.asked is not None and m.approved is not None and m.approved > m.asked:  # the wait for the approval
            xa, xb = axis.x(m.asked), axis.x(m.approved)
            out.append(f'<rect class="gate-wait" x="{xa:.1f}" y="{y + 8:.1f}" width="{max(xb - xa, 1):.1f}" height="6" '
                       f'fill="#1a73e8" fill-opacity="0.35"/>')
        at = m.approved if m.approved is not None else m.asked
        if at is None:
            continue
        x = axis.x(at)
        state = f"approved by {m.by}" if m.approved is not None else "waiting for approval"
        fill = "#1a73e8" if m.approved is not None else "#fff"
        out.append(f'<g class="gate"><path d="M{x:.1f},{y + 2:.1f} l5,7 l-5,7 l-5,-7 z" fill="{fill}" '
                   f'stroke="#1a73e8" stroke-width="1.5"/><title>gate {esc(m.name)}: {esc(state)}</title></g>')
    # the time axis: the start, the end, and the downtime's edges, as times of day (UTC)
    ticks = {tl.start, tl.end} | (set(tl.window) if tl.window else set())
    placed: list[float] = []
    for t in sorted(ticks):
        x = axis.x(t)
        if any(abs(x - p) < 60 for p in placed):
            continue
        placed.append(x)
        stamp = _hms(t)
        out.append(f'<line x1="{x:.1f}" y1="{bottom:.1f}" x2="{x:.1f}" y2="{bottom + 4:.1f}" stroke="#666"/>'
                   f'<text x="{x:.1f}" y="{bottom + 15:.1f}" text-anchor="middle" fill="#666">{esc(stamp)}</text>')
    out.append(f'<line x1="{LABEL_PX:.0f}" y1="{bottom:.1f}" x2="{LABEL_PX + PLOT_PX:.0f}" y2="{bottom:.1f}" '
               f'stroke="#999"/>')
    out.append("</svg>")
    return "".join(out)


def _hms(t: float) -> str:
    import datetime as _dt  # noqa: PLC0415 - only the axis labels need it

    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).strftime("%H:%M:%S")


def render_totals_html(data: dict[str, Any]) -> str:
    """The run's totals under the timeline: wall time, time in steps, steps by status, changes, gates, downtime."""
    tl = plan_timeline(data)
    t = tl.totals
    statuses = ", ".join(f"{n} {html.escape(k)}" for k, n in sorted(t["by_status"].items()))
    rows = [("wall time", human(t["wall_s"])), ("time in steps", human(t["steps_s"])),
            ("steps", f"{t['steps']} ({statuses})" if statuses else str(t["steps"])),
            ("attempts", str(t["attempts"])), ("changes", str(t["changes"])),
            ("gates", f"{t['gates']}, {human(t['gates_waited_s'])} waiting for approval" if t["gates"] else "0"),
            ("downtime", human(tl.downtime_s) if tl.downtime_s is not None else "none (no cutover in this run)")]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="totals">{cells}</table>'


def render_downtime_html(data: dict[str, Any]) -> str:
    """The cutover window: when maintenance went on and traffic on, the total, and each phase as a bar of its
    share (phases in seconds; other figures the window recorded, e.g. the lag at opening, as plain values)."""
    dt = data.get("downtime") or {}
    if not dt:
        return ""
    esc = html.escape
    phases = {k: float(v) for k, v in (dt.get("phases_s") or {}).items() if isinstance(v, (int, float))}
    timed = {k: v for k, v in phases.items() if k.endswith("_s") and not k.startswith("lag_")}
    other = {k: v for k, v in phases.items() if k not in timed}
    longest = max(list(timed.values()) + [1e-9])
    rows = [f"<tr><th>maintenance on</th><td colspan='2'>{esc(str(dt.get('maintenance_on_at') or '-'))}</td></tr>",
            f"<tr><th>traffic on</th><td colspan='2'>{esc(str(dt.get('traffic_on_at') or '-'))}</td></tr>",
            f"<tr><th>downtime</th><td colspan='2'><b>"
            f"{esc(human(float(dt['total_s']))) if dt.get('total_s') is not None else '-'}</b></td></tr>"]
    for k, v in sorted(timed.items(), key=lambda kv: -kv[1]):
        bar = f"<svg width='160' height='10'><rect width='{max(160 * v / longest, 1):.1f}' height='10' " \
              f"fill='#c5221f' fill-opacity='0.7'/></svg>"
        rows.append(f"<tr><td>{esc(k.removesuffix('_s').replace('_', ' '))}</td><td class='num'>{v:.3f} s</td>"
                    f"<td>{bar}</td></tr>")
    for k, v in other.items():
        rows.append(f"<tr><td>{esc(k.replace('_', ' '))}</td><td class='num'>{v:g}</td><td></td></tr>")
    return f"<table class='downtime'>{''.join(rows)}</table>"
