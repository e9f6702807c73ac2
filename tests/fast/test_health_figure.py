"""The health figure of step 15 (hcbpg.desired.health_figure): the bars as drawn, sorted with their values,
a 0 kept, and the drawing itself (matplotlib, Agg)."""

from __future__ import annotations

import pytest

from hcbpg.desired import health_figure as hf
from hcbpg.desired.health import Measurement, Thresholds

NOW = 1_800_000_000.0
ROLES = [("rails", 500, 37), ("metabase", 10, 9), ("blazer", 5, 0), ("vector", 3, 1), ("postgres", -1, 2),
         ("hcbpg_exporter", 3, 1), ("sidekiq", 40, 12), ("pgbouncer", 100, 0), ("replicator", 5, 1),
         ("readonly", 10, 0), ("analytics", 20, 19)]


def _measurements() -> list[Measurement]:
    common = dict(reachable=True, running=True, now=NOW, max_connections=600, total_connections=80)
    primary = Measurement("server-postgres-1", "10.0.1.5", "primary", in_recovery=False,
                          replication=[{"application_name": "server-postgres-2", "replay_lag_s": 0.0}],
                          backup={"stop": NOW - 30 * 3600},
                          connections=[{"role": r, "limit": lim, "in_use": n} for r, lim, n in ROLES], **common)
    replica = Measurement("server-postgres-2", "10.0.1.6", "replica", in_recovery=True, replay_lag_s=45.0,
                          connections=[{"role": r, "limit": lim, "in_use": n // 2} for r, lim, n in ROLES], **common)
    return [primary, replica]


def test_connections_are_sorted_largest_first_with_their_values_and_zeros_kept():
    drawn = hf.bars(hf.figure_data(_measurements()), Thresholds())
    conns = drawn["connections"]
    assert len(conns) == 2 * len(ROLES)  # 22 bars: none dropped, the zeros included
    assert [b.value for b in conns] == sorted((b.value for b in conns), reverse=True)
    assert conns[0].label == "server-postgres-1 · rails" and conns[0].text == "37 / 500 (7%)"
    zeros = [b for b in conns if b.value == 0]
    assert {b.label for b in zeros} >= {"server-postgres-1 · blazer", "server-postgres-1 · pgbouncer",
                                        "server-postgres-2 · vector"}
    assert next(b for b in zeros if b.label == "server-postgres-1 · blazer").text == "0 / 5 (0%)"
    by = {b.label: b for b in conns}
    assert by["server-postgres-1 · metabase"].level == "warn"  # 9/10: 90% >= 80
    assert by["server-postgres-1 · analytics"].level == "fail"  # 19/20: 95% >= 95
    assert by["server-postgres-1 · postgres"].text == "2 / 600 (0%)"  # no limit: max_connections
    assert "\n" not in "".join(by)  # one line per label


def test_lag_and_backup_age_bars_carry_their_level():
    drawn = hf.bars(hf.figure_data(_measurements()), Thresholds())
    assert [(b.label, b.text, b.level) for b in drawn["replay_lag_s"]] == [
        ("server-postgres-2", "45s", "warn"), ("server-postgres-1 → server-postgres-2", "0 ms", "pass")]
    assert [(b.label, b.text, b.level) for b in drawn["backup_age_h"]] == [("server-postgres-1", "30.0 h", "warn")]
    data = {"replay_lag_s": {"a": 0.0074}, "backup_age_h": {"a": 46 / 3600}, "connections": {}}
    assert [b.text for b in hf.bars(data, Thresholds())["replay_lag_s"]] == ["7 ms"]
    assert [b.text for b in hf.bars(data, Thresholds())["backup_age_h"]] == ["46s"]
    recorded = {"replay_lag_s": {}, "backup_age_h": {}, "connections": {"server-postgres-1\nrails": [3, 500]}}
    assert [b.label for b in hf.bars(recorded, Thresholds())["connections"]] == ["server-postgres-1 · rails"]


def test_the_figure_draws_every_label_in_order_with_its_value_and_a_tick_for_zero():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    fig = hf.plot(_measurements(), Thresholds())
    lag, backup, conns = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [p[1] for p in hf.PANELS]
    labels = [t.get_text() for t in conns.get_yticklabels()]
    drawn = hf.bars(hf.figure_data(_measurements()), Thresholds())["connections"]
    assert labels == [b.label for b in drawn]
    texts = [t.get_text().strip() for t in conns.texts]
    assert texts == [b.text for b in drawn]
    zero_ticks = [ln for ln in conns.lines if list(ln.get_xdata()) == [0, 0]]
    assert len(zero_ticks) == sum(1 for b in drawn if b.value == 0)
    assert conns.yaxis_inverted()  # the largest at the top
    fig.canvas.draw()  # renders without error
    empty = hf.plot([Measurement("server-postgres-1", "10.0.1.5", "primary", reachable=False)], Thresholds())
    assert [t.get_text() for t in empty.axes[2].texts] == ["(no connections measured)"]
