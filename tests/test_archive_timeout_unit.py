"""archive_timeout (issue 24, a bound on the loss window): params in seconds or a duration, rendered with the
archiving settings (a reload applies it), reaching PostgreSQL under Patroni through the same conf.d file, and a
preflight warning when it is off."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcbpg.desired import backups
from hcbpg.desired import patroni as desired_patroni
from hcbpg.errors import ParamsError
from hcbpg.params import load_params, parse_params
from hcbpg.pg.conf import parse_settings
from hcbpg.steps import preflight

from pgbackrest_params import BASE

REPO = Path(__file__).resolve().parents[1]
PB = {"s3_key": "env:HCBPG_TEST_S3_KEY", "s3_key_secret": "env:HCBPG_TEST_S3_SECRET",
      "cipher_pass": "env:HCBPG_TEST_CIPHER"}


def params(**pb):
    return parse_params({**BASE, "pgbackrest": {**PB, **pb}})


class FakeRun:
    def __init__(self, p) -> None:  # noqa: ANN001
        self.params, self.env, self.home = p, p.environment, REPO


def test_archive_timeout_defaults_to_60_seconds_and_takes_a_duration():
    assert params().pgbackrest.archive_timeout == 60
    assert params(archive_timeout=30).pgbackrest.archive_timeout == 30
    assert params(archive_timeout="90s").pgbackrest.archive_timeout == 90
    assert params(archive_timeout="2min").pgbackrest.archive_timeout == 120
    assert params(archive_timeout="1h").pgbackrest.archive_timeout == 3600
    assert params(archive_timeout=0).pgbackrest.archive_timeout == 0


@pytest.mark.parametrize("bad", [-1, "soon", "5 fortnights", 86401, "2d", 1.5])
def test_archive_timeout_refuses_what_is_not_seconds(bad):
    with pytest.raises(ParamsError, match="archive_timeout"):
        params(archive_timeout=bad)


def test_archive_timeout_is_rendered_with_the_archiving_settings_in_seconds():
    p = params(archive_timeout="2min")
    text = backups.render_archiving(p, p.primary, archive_mode=True)
    # in seconds, as pg_settings shows it: check_archiving compares pg_file_settings' text with pg_settings'
    assert "archive_timeout = 120\n" in text
    assert parse_settings(text)["archive_timeout"] == "120"
    off = params(archive_timeout=0)
    assert "archive_timeout = 0\n" in backups.render_archiving(off, off.primary, archive_mode=False)


def test_archive_timeout_reaches_postgres_under_patroni_through_conf_d():
    # Patroni passes only the settings it owns on postgres' command line (dcs parameters); every other one,
    # archive_command and archive_timeout included, comes from hcbpg's conf.d file, which Patroni's base conf
    # includes: a value in the DCS parameters would be a second owner
    assert "archive_timeout" not in desired_patroni.PATRONI_OWNED
    assert "archive_command" not in desired_patroni.PATRONI_OWNED
    ha = load_params("production", REPO)
    assert ha.replication is not None and ha.replication.manager == "patroni"
    text = backups.render_archiving(ha, ha.primary, archive_mode=True)
    assert "archive_timeout = 60\n" in text


def test_preflight_warns_when_archive_timeout_is_off():
    on = [c for c in preflight.check_params(FakeRun(params())) if c.name == "pgbackrest.archive_timeout"]
    assert on == []
    off = [c for c in preflight.check_params(FakeRun(params(archive_timeout=0))) if c.name == "pgbackrest.archive_timeout"]
    assert [c.status for c in off] == ["warn"] and "loss window" in off[0].detail
