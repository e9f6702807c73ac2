"""The terminal's tables, recap and bar laid out by ``rich`` (hcbpg.display, hcbpg.engine.terminal): the same
content as the hand-written printers gave, no colour or box codes off a terminal or with NO_COLOR; the notebook's
HTML tables left-aligned."""

from __future__ import annotations

import re

from hcbpg.display import render_table, text_table
from hcbpg.engine.terminal import render_live_bar, render_recap
from hcbpg.progress import Sample

ESC = re.compile(r"\033\[[0-9;]*m")
ROWS = [{"run": "69330cc4", "status": "succeeded", "detail": "every step"},
        {"run": "a1", "status": "failed", "detail": "07_cutover: 1 of 36 checks failed"}]


def test_a_table_off_a_terminal_is_plain_columns_two_spaces_apart():
    text = text_table(ROWS)
    assert "\033" not in text and "│" not in text and "─" not in text
    assert text.splitlines() == ["run       status     detail",
                                 "69330cc4  succeeded  every step",
                                 "a1        failed     07_cutover: 1 of 36 checks failed"]
    assert text_table(ROWS, ["status"]).splitlines()[1] == "succeeded"


def test_a_table_on_a_terminal_has_a_bold_header_unless_no_color(monkeypatch):
    coloured = text_table(ROWS, color=True)
    assert "\033[1m" in coloured
    assert [line.rstrip() for line in ESC.sub("", coloured).splitlines()] == text_table(ROWS).splitlines()
    monkeypatch.setenv("NO_COLOR", "1")
    assert text_table(ROWS, color=True) == text_table(ROWS)


def test_a_narrow_terminal_wraps_a_long_cell_at_spaces_and_loses_no_word():
    long = {"run": "x", "status": "failed", "detail": "the schema of the source and the primary differ: " * 3}
    text = text_table([long], width=60)
    assert all(len(line) <= 60 for line in text.splitlines()), text
    words = " ".join(line[len("x    failed  "):].strip() for line in text.splitlines()[1:]).split()
    assert words == long["detail"].split()


def _data():
    step = {"key": "00_preflight", "status": "succeeded", "duration_s": 4.08, "changes": 0,
            "checks": {"pass": 26, "warn": 0, "fail": 0, "not_passed": []}}
    skipped = {"key": "06b_online_sync", "status": "skipped", "duration_s": 0.5, "changes": 0,
               "attempts": [{"note": "skipped: the offline transfer moves the data in 07"}], "checks": {}}
    failed = {"key": "07_cutover", "status": "failed", "duration_s": 41.25, "changes": 3,
              "checks": {"pass": 12, "warn": 1, "fail": 1, "not_passed": [
                  {"name": "rows public.users", "target": "", "status": "fail", "detail": "9 != 10"},
                  {"name": "backup age", "target": "server-postgres-1", "status": "warn", "detail": "27 h"}]}}
    return {"steps": [step, skipped, failed]}


def test_the_recap_keeps_its_columns_and_the_lines_under_a_step():
    lines = render_recap(_data())
    assert not any("\033" in line for line in lines)
    recap = [line for line in lines if re.match(r"\s+\d\d\w*_\w+\s+\w+\s+ok=", line)]
    assert len(recap) == 3
    assert re.search(r"succeeded\s+ok=26\s+changed=0\s+warnings=0\s+failed=0\s+skipped=0\s+4\.1s$", recap[0])
    assert re.search(r"skipped\s+ok=0\s+changed=0\s+warnings=0\s+failed=0\s+skipped=1\s+0\.5s$", recap[1])
    assert re.search(r"failed\s+ok=12\s+changed=3\s+warnings=1\s+failed=1\s+skipped=0\s+41\.2s$", recap[2])
    assert len({line.index("ok=") for line in recap}) == 1 and len({len(line) for line in recap}) == 1  # aligned
    status_col = recap[0].index("succeeded")
    under = [line for line in lines if line not in recap]
    assert [line.strip() for line in under] == ["skipped: the offline transfer moves the data in 07",
                                                "failed checks: rows public.users",
                                                "warnings: backup age on server-postgres-1"]
    assert all(line.index(line.strip()) == status_col for line in under)  # under the status column


def test_the_live_bar_fits_the_width_and_is_plain_without_colour(monkeypatch):
    s = Sample("copy", "public.events", done=41, total=100, unit="rows", rate=10, eta=59)
    bar = render_live_bar(s, 200)
    assert "\033[32m" in bar and ESC.sub("", bar).endswith("copy public.events: 41% 41 rows of 100 rows, 10 rows/s, "
                                                            "59s left")
    assert len(ESC.sub("", render_live_bar(s, 50))) == 50
    plain = render_live_bar(s, 50, color=False)
    assert "\033" not in plain and plain.startswith("━") and plain.endswith("…")
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033" not in render_live_bar(s, 50)
    assert render_live_bar(Sample("index", "i on t", done=0), 80).startswith("(how far: not known)")


def test_the_notebooks_tables_are_left_aligned_and_their_rows_bare():
    markup, text = render_table([{"check": "x", "status": "fail", "detail": "y"}])
    cells = re.findall(r"<t[dh] style='([^']*)'", markup)
    assert len(cells) == 6 and all(c.startswith("text-align:left") for c in cells)
    assert "<tr><td" in markup and "font-weight:bold" in markup  # rows as before; a failure stands out
    assert text.splitlines()[0].split() == ["check", "status", "detail"]


def test_a_runs_end_is_coloured_on_a_terminal_only_and_its_words_unchanged(monkeypatch):
    from hcbpg.engine.terminal import colour_report
    text = "\n".join(["Step 07_cutover failed: 1 of 14 checks failed", "  ✗ rows public.users:", "      9 != 10",
                      "Recap:", *render_recap(_data())])
    assert colour_report(text, color=False) == text
    coloured = colour_report(text, color=True)
    assert ESC.sub("", coloured) == text
    recap = coloured.splitlines()[4:]
    assert "\033[32msucceeded" in recap[0] and "failed=0  skipped=0" in ESC.sub("", recap[0])
    assert "\033[1;31mfailed=1" in coloured and "\033[33mwarnings=1" in coloured and "\033[36mskipped=1" in coloured
    assert "failed=0" in coloured and "\033[1;31mfailed=0" not in coloured  # a zero is not an alarm
    monkeypatch.setenv("NO_COLOR", "1")
    assert colour_report(text, color=True) == text
