"""The source generator is deterministic and sized as asked (no root needed)."""

from __future__ import annotations

import pytest

from hcbpg.errors import LabError
from hcbpg.lab import source


def test_same_size_and_seed_render_the_same_sql():
    size = source.plan_size(rows=50_000)
    assert source.render_seed_sql(size) == source.render_seed_sql(size)
    assert source.render_seed_sql(size, seed=1) != source.render_seed_sql(size, seed=2)


def test_small_sizes_still_hold_the_sentinel_user():
    size = source.plan_size(rows=100)
    assert size.users >= source.SENTINEL_USER_ID


def test_size_in_mb_scales_rows():
    small, big = source.plan_size(mb=100), source.plan_size(mb=1000)
    assert 10 < big.rows / small.rows < 11  # a fixed base (catalogs) plus rows


def test_rows_and_mb_are_exclusive():
    with pytest.raises(LabError):
        source.plan_size(rows=10, mb=10)

