"""What the alerting lab modules share: the receiver on the machine's lab bridge address (hcbpg.lab.deadman: every
request a JSON line) taking the alerts (a webhook receiver) and the Heartbeat (the dead-man) at secret URLs
(``file:`` references with a token in their path), the lab's alerting section (scrape and evaluation every 2 s,
``for`` 4 s, group wait 1 s, heartbeat every 2 s), and waiting for a POST."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hcbpg.adapters.host import Host
from hcbpg.lab import deadman
from hcbpg.lab.deadman import Receiver
from hcbpg.params import Params

HEARTBEAT_S = 2.0


@contextlib.contextmanager
def open_hosts(params: Params, echo: Callable[[str], None]) -> Iterator[dict[str, Host]]:
    """An open Host for the params' primary and its jumpbox (what each prints goes to *echo*), closed after."""
    assert params.jumpbox is not None
    hs = {params.primary.name: Host.from_params(params, params.primary.name, params.primary.private_ip),
          params.jumpbox.name: Host.from_params(params, params.jumpbox.name, params.jumpbox.private_ip)}
    for h in hs.values():
        h.echo = echo
    try:
        yield hs
    finally:
        for h in hs.values():
            h.close()
#: the lab's settings (issue 25's performance figures are taken with them)
LAB_ALERTING: dict[str, Any] = {
    "scrape_interval": "2s", "evaluation_interval": "2s", "for_duration": "4s", "group_wait": "1s",
    "group_interval": "2s", "repeat_interval": "1m", "heartbeat_interval": f"{HEARTBEAT_S:g}s"}


def start_receiver(gateway_ip: str, where: Path) -> Receiver:
    """The receiver (hcbpg.lab.deadman.start_receiver) on *gateway_ip*, its files under *where*, the lab's settings."""
    return deadman.start_receiver(gateway_ip, where, settings=LAB_ALERTING)


def received(log: Path, since: float, kind: str, *needles: str) -> list[dict]:
    """The receiver's requests to /alerts/... or /deadman/... after *since* (whose body holds every needle)."""
    return [p for p in deadman.read_pings(log) if p["time"] >= since and p["path"].startswith(f"/{kind}/")
            and all(n in p["body"] for n in needles)]


def wait_received(log: Path, since: float, kind: str, *needles: str, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = received(log, since, kind, *needles)
        if got:
            return got[0]
        time.sleep(0.2)
    raise AssertionError(f"no {kind} POST with {needles!r} within {timeout:g}s; last requests: "
                         f"{[(p['path'][:9], p['body'][:160]) for p in deadman.read_pings(log)[-5:]]}")
