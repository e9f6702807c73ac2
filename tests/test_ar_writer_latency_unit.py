"""The ActiveRecord writer's ``latency`` option (hcbpg.lab.app_load, ar_load.rb: what bench/backup_latency.py
measures): off by default (every other user's argv and log lines as before), on: each ack's line has the insert's
latency and ``Ack.sent_ms`` is the time it was sent.  The lab test of the writer is tests/lab/test_ar_writer.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hcbpg.lab import app_load
from hcbpg.lab.app_load import Ack, Writer

RUBY = Path("/usr/bin/ruby")


def test_latency_is_off_by_default_and_on_adds_one_word_to_the_argv():
    w = Writer("bench-backup-latency")
    plain = app_load.render_ar_command(w, pg_async=False)
    assert not any(a.startswith("latency=") for a in plain)
    assert app_load.render_ar_command(w, pg_async=False, latency=True) == [*plain, "latency=on"]


def test_an_ack_with_its_latency_was_sent_that_long_before_it():
    log = app_load.parse_log("i 7 1765000000900 10.0.1.5 12345\ni 8 1765000001000 10.0.1.5\n"
                             "i 9 1765000001100 10.0.1.5 1x\nstopped\n")
    assert log.acks == [Ack(7, 1765000000900, "10.0.1.5", 12345), Ack(8, 1765000001000, "10.0.1.5")]
    assert [a.sent_ms for a in log.acks] == [1765000000888, 1765000001000]
    assert log.inserted == [7, 8] and log.stopped


@pytest.mark.skipif(not RUBY.exists(), reason="ruby is not installed (scripts/install.sh installs it)")
def test_ar_load_rb_refuses_a_latency_that_is_not_on_or_off(tmp_path):
    script = Path(app_load.__file__).with_name("ar_load.rb")
    res = subprocess.run([str(RUBY), str(script), f"env_file={tmp_path / 'none.env'}", f"log={tmp_path / 'log'}",
                          "latency=yes"], capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "latency must be on or off" in res.stderr
