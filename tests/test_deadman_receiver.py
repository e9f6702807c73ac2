"""hcbpg.lab.deadman.start_receiver: the alerts' and the Heartbeat's receiver at two secret URLs (what the alerting
lab modules and bench/monitor_memory.py use), on the loopback: its URL files 0600, params' alerting section built
from them, a POST to each URL recorded with its kind, and the receiver ended by its process."""

from __future__ import annotations

import stat
import time
import urllib.request

from hcbpg.lab import deadman


def _url(ref: str) -> str:
    assert ref.startswith("file:")
    with open(ref[5:]) as f:
        return f.read().strip()


def test_the_receiver_records_a_post_to_each_secret_url_and_its_files_are_0600(tmp_path):
    r = deadman.start_receiver("127.0.0.1", tmp_path, settings={"scrape_interval": "2s", "group_wait": "1s"})
    try:
        for name in ("hook-url", "deadman-url"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        hook, dead = _url(r.refs["hook"]), _url(r.refs["deadman"])
        assert hook.split("/")[3] == "alerts" and dead.split("/")[3] == "deadman"
        assert r.values == [hook.rsplit("/", 1)[1], dead.rsplit("/", 1)[1]] and all(len(v) == 24 for v in r.values)
        assert r.alerting_section(group_wait="3s") == {
            "scrape_interval": "2s", "group_wait": "3s", "receivers": {"webhook": {"url": r.refs["hook"]}},
            "heartbeat_url": r.refs["deadman"]}
        since = time.time()
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the loopback, never a proxy
        for url, body in ((hook, b'{"status": "firing"}'), (dead, b"")):
            with direct.open(urllib.request.Request(url, data=body, method="POST"), timeout=10) as resp:
                assert resp.status == 200
        got = [p for p in deadman.read_pings(r.log) if p["time"] >= since]
        assert [(p["path"].split("/")[1], p["method"], p["body"]) for p in got] == [
            ("alerts", "POST", '{"status": "firing"}'), ("deadman", "POST", "")]
    finally:
        r.stop()
    assert r.proc.returncode is not None


def test_a_receiver_without_settings_gives_only_its_urls(tmp_path):
    r = deadman.start_receiver("127.0.0.1", tmp_path)
    try:
        assert r.alerting_section() == {"receivers": {"webhook": {"url": r.refs["hook"]}},
                                        "heartbeat_url": r.refs["deadman"]}
    finally:
        r.stop()
