"""The HTML audit index's timeline (hcbpg.engine.timeline): bars from the manifest's attempts, gates and the
downtime window marked, a long idle stretch drawn as a break, totals; an inline SVG with no script. Pure,
on a manifest fixture; and the index written by audit.render_html carries it."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from hcbpg.engine import timeline as tl

SVG = "{http://www.w3.org/2000/svg}"


def _att(n, status, start, end):
    return {"n": n, "status": status, "start": start, "end": end, "notebook": f"x-{n}.ipynb"}


def manifest() -> dict:
    """A run: preflight, a provision that failed once and succeeded on resume three hours later, a skipped
    step, the cutover with its gate and downtime, and a step never reached."""
    return {
        "run_id": "abcd1234", "environment": "lab", "mode": "run", "status": "failed",
        "created": "2027-01-15T08:00:00.000000Z",
        "steps": [
            {"key": "00_preflight", "status": "succeeded", "changes": 0,
             "attempts": [_att(1, "succeeded", "2027-01-15T08:00:01.000000Z", "2027-01-15T08:00:05.000000Z")]},
            {"key": "01_provision", "status": "succeeded", "changes": 4,
             "attempts": [_att(1, "failed", "2027-01-15T08:00:05.000000Z", "2027-01-15T08:00:35.000000Z"),
                          _att(2, "succeeded", "2027-01-15T11:00:35.000000Z", "2027-01-15T11:01:05.000000Z")]},
            {"key": "06_dry_run_restore", "status": "skipped", "changes": 0,
             "attempts": [_att(1, "skipped", "2027-01-15T11:01:05.000000Z", "2027-01-15T11:01:06.000000Z")]},
            {"key": "07_cutover", "status": "succeeded", "changes": 2,
             "attempts": [_att(1, "succeeded", "2027-01-15T11:01:06.000000Z", "2027-01-15T11:01:26.000000Z")]},
            {"key": "09_start_traffic", "status": "failed", "changes": 1,
             "attempts": [_att(1, "failed", "2027-01-15T11:01:26.000000Z", "2027-01-15T11:01:30.000000Z")]},
            {"key": "10_replication", "status": "pending", "attempts": []},
        ],
        "gates": {
            "maintenance-on": {"step": "07_cutover", "requested_at": "2027-01-15T11:01:10.000000Z",
                               "approved_at": "2027-01-15T11:01:16.000000Z", "approved_by": "alice"},
            "maintenance-off": {"step": "09_start_traffic", "requested_at": "2027-01-15T11:01:28.000000Z",
                                "approved_at": None},
        },
        "downtime": {"maintenance_on_at": "2027-01-15T11:01:16.000000Z",
                     "traffic_on_at": "2027-01-15T11:01:29.500000Z", "total_s": 13.5,
                     "phases_s": {"drain_s": 0.4, "sequences_s": 0.2, "lag_rows_at_open": 1.0}},
    }


def test_each_attempt_is_a_bar_in_its_steps_row_from_start_to_end():
    plan = tl.plan_timeline(manifest())
    assert plan.steps[-1] == "10_replication"  # a step never run keeps its row
    assert [(s.row, s.status, round(s.end - s.start, 3)) for s in plan.spans] == [
        (0, "succeeded", 4.0), (1, "failed", 30.0), (1, "succeeded", 30.0), (2, "skipped", 1.0),
        (3, "succeeded", 20.0), (4, "failed", 4.0)]
    svg = ET.fromstring(tl.render_timeline_svg(manifest()))
    bars = [r for r in svg.iter(SVG + "rect") if (r.get("class") or "").startswith("step ")]
    assert [r.get("class") for r in bars] == ["step succeeded", "step failed", "step succeeded", "step skipped",
                                              "step succeeded", "step failed"]
    assert [r.find(SVG + "title").text for r in bars][1] == "01_provision attempt 1: failed, 30.0 s"
    xs = [float(r.get("x")) for r in bars]
    assert xs == sorted(xs)  # later attempts further right
    ys = [float(r.get("y")) for r in bars]
    assert ys[1] == ys[2] and ys[0] < ys[1] < ys[3]  # the two attempts of 01 on one row
    labels = [t.text for t in svg.iter(SVG + "text")]
    for key in plan.steps:
        assert key in labels


def test_three_idle_hours_are_a_break_that_says_how_long_not_three_hours_of_width():
    svg_text = tl.render_timeline_svg(manifest())
    svg = ET.fromstring(svg_text)
    breaks = [g for g in svg.iter(SVG + "g") if g.get("class") == "break"]
    assert len(breaks) == 1 and "⋯ 3 h 00 min" in "".join(breaks[0].itertext())
    bars = [r for r in svg.iter(SVG + "rect") if (r.get("class") or "").startswith("step ")]
    width = {r.find(SVG + "title").text.split(":")[0]: float(r.get("width")) for r in bars}
    # the failed and the succeeded attempt of 01 both took 30 s: the same width, to scale (not squashed)
    assert abs(width["01_provision attempt 1"] - width["01_provision attempt 2"]) < 0.1
    assert abs(width["01_provision attempt 1"] / width["00_preflight attempt 1"] - 30 / 4) < 0.05
    x = {r.find(SVG + "title").text.split(":")[0]: float(r.get("x")) for r in bars}
    gap = x["01_provision attempt 2"] - (x["01_provision attempt 1"] + width["01_provision attempt 1"])
    assert abs(gap - tl.BREAK_PX) < 0.5  # three hours drawn as one break's width


def test_gates_and_the_downtime_window_are_marked():
    svg = ET.fromstring(tl.render_timeline_svg(manifest()))
    gates = {g.find(SVG + "title").text for g in svg.iter(SVG + "g") if g.get("class") == "gate"}
    assert gates == {"gate maintenance-on: approved by alice", "gate maintenance-off: waiting for approval"}
    waits = [r for r in svg.iter(SVG + "rect") if r.get("class") == "gate-wait"]
    assert len(waits) == 1  # the approved gate's wait (6 s); the waiting one has no end yet
    window = next(r for r in svg.iter(SVG + "rect") if r.get("class") == "downtime")
    cut = next(r for r in svg.iter(SVG + "rect") if r.get("class") == "step succeeded"
               and r.find(SVG + "title").text.startswith("07_cutover"))
    x0, w = float(window.get("x")), float(window.get("width"))
    cx, cw = float(cut.get("x")), float(cut.get("width"))
    # 07 ran 11:01:06-26 and the window opened at 11:01:16: it starts half-way through 07's bar
    assert abs(x0 - (cx + cw / 2)) < 0.5 and w > 0
    assert "downtime 13.5 s" in "".join(svg.itertext())


def test_totals_count_the_run():
    t = tl.plan_timeline(manifest()).totals
    assert t["steps"] == 6 and t["attempts"] == 6 and t["changes"] == 7 and t["gates"] == 2
    assert t["by_status"] == {"succeeded": 3, "skipped": 1, "failed": 1, "pending": 1}
    assert t["steps_s"] == 89.0 and t["gates_waited_s"] == 6.0
    assert t["wall_s"] == 3 * 3600 + 90.0
    html = tl.render_totals_html(manifest())
    for part in ("3 h 01 min", "1 min 29 s", "6 (1 failed, 1 pending, 1 skipped, 3 succeeded)", "13.5 s",
                 "2, 6.0 s waiting for approval"):
        assert part in html, (part, html)
    window = tl.render_downtime_html(manifest())
    assert window.index("drain") < window.index("sequences") and "lag rows at open" in window
    assert tl.render_downtime_html({"steps": []}) == ""


def test_a_run_with_nothing_run_yet_and_an_attempt_without_an_end_still_draw():
    bare = {"run_id": "x", "created": "2027-01-15T08:00:00.000000Z", "steps": [{"key": "00_a", "attempts": []}]}
    ET.fromstring(tl.render_timeline_svg(bare))
    killed = manifest()
    killed["steps"][4]["attempts"][0].update(end=None, status="interrupted", duration_s=None)
    svg = ET.fromstring(tl.render_timeline_svg(killed))
    assert any(r.get("class") == "step interrupted" for r in svg.iter(SVG + "rect"))


def test_the_audit_index_holds_the_timeline_with_no_script_and_nothing_fetched(tmp_path):
    from hcbpg.engine import audit
    from hcbpg.engine import manifest as mf
    run_dir = tmp_path / "home" / "outputs" / "lab" / "20270115T080000Z_abcd1234"
    run_dir.mkdir(parents=True)
    data = {**manifest(), "operator": "alice", "machine": "laptop", "git": {"commit": "abc"}, "params_sha256": "0"}
    for s in data["steps"]:
        s["notebook"] = s["key"] + ".ipynb"
    (run_dir / "manifest.json").write_text(json.dumps(data))
    index = Path(audit.render_html(mf.Run(run_dir))).read_text()
    assert "<h2>Timeline</h2>" in index and '<svg class="timeline"' in index and "<h2>Cutover window</h2>" in index
    assert "<script" not in index.lower()
    assert not [u for u in re.findall(r"(?:src|href)=['\"](https?:[^'\"]+)", index)], "nothing from the network"
    ET.fromstring(index[index.index('<svg class="timeline"'):index.index("</svg>") + 6])
