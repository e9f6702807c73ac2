"""The health report of step 15 and ``hcbpg status``: the rules' verdicts as checks, the tables and
the figures (pure; the measuring is :mod:`hcbpg.ops.health`, the rules :mod:`hcbpg.desired.health`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.desired import health as rules
from hcbpg.desired.health import ITEMS, Measurement, actual_role, age, mb, parse_df  # noqa: F401 - the report's vocabulary
from hcbpg.desired.health_figure import bars, figure_data, plot  # noqa: F401 - the report's figure
from hcbpg.display import text_table
from hcbpg.outcome import Check, Status
from hcbpg.params import Health

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: the thresholds are params ``health:`` itself (one model, defaults in :class:`hcbpg.params.Health`)
Thresholds = Health


def thresholds_from(params: "Params") -> Thresholds:
    """Params ``health:`` (its defaults when the file has none)."""
    return params.health


def evaluate(measurements: Sequence[Measurement], t: Thresholds) -> list[Check]:
    """Every item for every server, pass/warn/fail (target = server name): :func:`hcbpg.desired.health.evaluate`."""
    return [Check(v.name, _STATUS[v.status], v.detail, v.target) for v in rules.evaluate(measurements, t)]


_STATUS: dict[str, Status] = {"pass": "pass", "warn": "warn", "fail": "fail"}


def exit_code(checks: Sequence[Check], *, strict: bool = False) -> int:
    """0 when nothing failed (warnings allowed), 1 otherwise; *strict* (``hcbpg status --strict``, for cron):
    a warning is 1 too."""
    bad = ("fail", "warn") if strict else ("fail",)
    return 1 if any(c.status in bad for c in checks) else 0


def report_rows(checks: Sequence[Check]) -> list[dict[str, str]]:
    return [{"server": c.target, "item": c.name, "status": c.status, "detail": c.detail} for c in checks]


def render_text(checks: Sequence[Check]) -> str:
    """The report as a plain table (the command's output; ``rich`` lays out the columns)."""
    rows = [{"SERVER": r["server"], "ITEM": r["item"], "STATUS": r["status"].upper(), "DETAIL": r["detail"]}
            for r in report_rows(checks)]
    lines = [text_table(rows, ["SERVER", "ITEM", "STATUS", "DETAIL"])]
    lines += ["", _summary_line(checks, warnings=sum(1 for c in checks if c.status == "warn"))]
    return "\n".join(lines)


def _summary_line(checks: Sequence[Check], *, warnings: int) -> str:
    """The report's last line: the failed items by server, or OK with the count of *warnings*."""
    failed = [c for c in checks if c.status == "fail"]
    if not failed:
        return f"OK: {len(checks)} item(s), {warnings} warning(s)"
    by_server: dict[str, list[str]] = {}
    for c in failed:
        by_server.setdefault(c.target, []).append(c.name)
    return (f"FAIL: {len(failed)} item(s) failed: "
            + "; ".join(f"{s}: {', '.join(names)}" for s, names in by_server.items()))


def _compact_row(m: Measurement, checks: Sequence[Check]) -> dict[str, str]:
    """One server on one line, like ``patronictl list``: what an operator looks at first."""
    worst = {c.status for c in checks if c.target == m.server}
    state = ("unreachable" if not m.reachable else "stopped" if not m.running else
             "streaming" if (m.receiver or {}).get("status") == "streaming" else
             "running" if not m.in_recovery else f"recovering ({(m.receiver or {}).get('status') or 'no receiver'})")
    lag = "-" if not m.in_recovery else ("?" if m.replay_lag_s is None else age(m.replay_lag_s))
    if not m.in_recovery and m.replication:
        known = [r["replay_lag_s"] for r in m.replication if r.get("replay_lag_s") is not None]
        lag = f"{len(m.replication)} replica(s)" + (f", max {age(max(known))}" if known else "")
    retained = max([int(sl.get("retained_bytes") or 0) for sl in m.slots] or [0])
    slots = f"{len(m.slots)}: {mb(retained)}" if m.slots else "-"
    backup = ("-" if m.in_recovery or not m.running else
              age(m.now - float(m.backup["stop"])) + " ago" if m.backup else "none")
    arch = m.archiver or {}
    archive = ("-" if not m.running else "n/a (replica)" if m.in_recovery else
               "off" if m.archive_mode == "off" else
               "FAILING" if arch.get("last_failed_time") and (arch.get("last_failed_time") or 0) >
               (arch.get("last_archived_time") or 0) else
               (age(m.now - float(arch["last_archived_time"])) + " ago") if arch.get("last_archived_time") else
               "nothing yet")
    disk = f"{m.disk['used_pct']:.0f}%" if m.disk else "?"
    return {"server": m.server, "role": actual_role(m) or m.expected_role, "state": state,
            "tl": "?" if m.timeline is None else str(m.timeline), "lag": lag, "slots": slots, "backup": backup,
            "archive": archive, "conn": f"{m.total_connections}/{m.max_connections}" if m.running else "-",
            "disk": disk, "status": "FAIL" if "fail" in worst else "WARN" if "warn" in worst else "OK"}


def render_compact(measurements: Sequence[Measurement], checks: Sequence[Check]) -> str:
    """One line per server (role, state, timeline, lag, slot retention, last backup age, archiving,
    connections used/max, disk), then only the items that are not PASS (``hcbpg status``)."""
    rows = [_compact_row(m, checks) for m in measurements]
    cols = ["server", "role", "state", "tl", "lag", "slots", "backup", "archive", "conn", "disk", "status"]
    lines = [text_table([{c.upper(): r[c] for c in cols} for r in rows], [c.upper() for c in cols])]
    bad = [c for c in checks if c.status != "pass"]
    lines.append("")
    for c in bad:
        lines.append(f"{c.status.upper():<4}  {c.target}: {c.name}: {c.detail}")
    lines.append(_summary_line(checks, warnings=len(bad)))
    return "\n".join(lines)
