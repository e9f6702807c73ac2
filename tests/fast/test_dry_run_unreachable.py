"""A dry run remembers a server it found unreachable: the plan's later parts (steps 02, 03, 05 in notebook 22's dry run)
do not wait again for the same connect to fail (the lab's dry run of notebook 22 spent 29 s of its 52 s so).  A real run
tries every time: the server may have come up."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hcbpg.errors import HostUnreachable
from hcbpg.steps import targets


@pytest.fixture
def attempts(monkeypatch):
    tried: list[tuple[str, str]] = []

    def from_params(params, name, address):  # noqa: ANN001, ANN202
        tried.append((name, address))
        return SimpleNamespace(connect=lambda: (_ for _ in ()).throw(
            HostUnreachable(name, address, "hcb-jumpbox could not open a connection: No route to host")))

    monkeypatch.setattr(targets.Host, "from_params", staticmethod(from_params))
    monkeypatch.setattr(targets, "_DRY_RUN_UNREACHABLE", {})
    return tried


def _rb(dry_run: bool) -> SimpleNamespace:
    return SimpleNamespace(params=None, dry_run=dry_run)


def test_a_dry_run_tries_an_unreachable_server_once_and_says_why_again(attempts):
    rb = _rb(True)
    for _ in range(3):
        with pytest.raises(HostUnreachable) as caught:
            targets.open_server(rb, "server-postgres-1", "10.0.1.5")
    assert attempts == [("server-postgres-1", "10.0.1.5")]
    assert "No route to host" in caught.value.message and "earlier in this dry run" in caught.value.message
    with pytest.raises(HostUnreachable):  # another server, another run (the notebook run anew): tried
        targets.open_server(rb, "server-postgres-2", "10.0.1.6")
    with pytest.raises(HostUnreachable):
        targets.open_server(_rb(True), "server-postgres-1", "10.0.1.5")
    assert len(attempts) == 3


def test_a_real_run_tries_every_time(attempts):
    rb = _rb(False)
    for _ in range(2):
        with pytest.raises(HostUnreachable):
            targets.open_server(rb, "server-postgres-1", "10.0.1.5")
    assert len(attempts) == 2 and targets._DRY_RUN_UNREACHABLE == {}


def test_servers_are_connected_side_by_side_and_a_dead_one_costs_its_timeout_once(monkeypatch):
    """connect_servers (a failover's view, notebook 22's situation) opens every server at once: with two servers that
    do not answer, the wait is one connect timeout, not two; what answered is a Host, what did not is None."""
    import threading
    import time as _time

    from hcbpg.adapters.host import Host
    started: list[float] = []
    lock = threading.Lock()

    class Opened(Host):
        def __init__(self, name: str) -> None:  # noqa: D107 - a Host that is never connected
            self.name, self.closed = name, False

        def close(self) -> None:
            self.closed = True

    def from_params(params, name, address):  # noqa: ANN001, ANN202
        def connect():  # noqa: ANN202
            with lock:
                started.append(_time.monotonic())
            if name == "replica":
                return Opened(name)
            _time.sleep(0.3)  # the connect timeout of a server that does not answer
            raise HostUnreachable(name, address, "timed out")
        return SimpleNamespace(connect=connect)

    monkeypatch.setattr(targets.Host, "from_params", staticmethod(from_params))
    monkeypatch.setattr(targets, "_DRY_RUN_UNREACHABLE", {})
    rb = _rb(False)
    out = targets.open_servers(rb, {"primary": "10.0.1.5", "other": "10.0.1.7", "replica": "10.0.1.6"})
    assert isinstance(out["primary"], HostUnreachable) and isinstance(out["other"], HostUnreachable)
    assert isinstance(out["replica"], Opened)
    assert max(started) - min(started) < 0.25, started  # all began before the first timeout ended


def test_a_changed_host_key_is_raised_and_what_opened_is_closed(monkeypatch):
    from hcbpg.adapters.host import Host
    from hcbpg.errors import HostKeyError
    opened: list = []

    class Opened(Host):
        def __init__(self) -> None:  # noqa: D107
            self.closed = False
            opened.append(self)

        def close(self) -> None:
            self.closed = True

    def from_params(params, name, address):  # noqa: ANN001, ANN202
        def connect():  # noqa: ANN202
            if name == "primary":
                raise HostKeyError("primary", address, "/known_hosts", expected=["SHA256:pinned"],
                                   offered="SHA256:changed")
            return Opened()
        return SimpleNamespace(connect=connect)

    monkeypatch.setattr(targets.Host, "from_params", staticmethod(from_params))
    with pytest.raises(HostKeyError):
        targets.open_servers(_rb(False), {"primary": "10.0.1.5", "replica": "10.0.1.6"})
    assert opened and all(h.closed for h in opened)
