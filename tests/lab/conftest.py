"""Fixtures for lab tests.

``lab`` (session scope) brings up a rehearsal lab and tears it down at the end of the
session.  By default it is a lab of its own, beside any lab the operator keeps: its
own dir (``/var/lib/hcbpg-lab-test-*``; not under /tmp, which hosts do not share),
bridge ``hcbt<N>`` and subnets ``10.0.<N>.0/24`` (hosts) and ``10.1.<N>.0/24``
(outsider), with N picked free.  Addresses keep their offsets: app ``.10``, source
``.20``, servers where you create them (``lab.cfg.address(5)``).

With ``HCBPG_LAB_TEST_DEFAULT=1`` it uses the default lab (``/var/lib/hcbpg-lab``,
10.0.1.0/24, what ``params/lab.yaml`` points at) instead, and leaves it up if it was
up before.  Tests using it are skipped (with the reason) when not root or when
``ip netns`` does not work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hcbpg.lab import Lab, lab_unavailable_reason
from hcbpg.lab.core import scratch_config


def new_test_lab(prefix: str = "hcbpg-lab-test-") -> Lab:
    """A Lab in a fresh dir with its own bridge and subnets (not yet up)."""
    return Lab(scratch_config(prefix).lab_dir)


def skip_unless_lab_possible() -> None:
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(f"lab tests need root and network namespaces: {reason}")


@pytest.fixture
def make_test_lab():
    """``make_test_lab(prefix)`` -> a new Lab with its own dir, bridge and subnets (not up;
    the test brings it up and must ``down(purge=True)`` it)."""
    skip_unless_lab_possible()
    return new_test_lab


@pytest.fixture(scope="module")
def monkeypatch_module():
    """A monkeypatch for a module's fixtures (the module-scoped ``env`` of a file that builds on its state)."""
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A running rehearsal lab (app, source, S3, API stand-in) for the whole session."""
    skip_unless_lab_possible()
    if os.environ.get("HCBPG_LAB_TEST_DEFAULT") == "1":
        the_lab = Lab()
        was_up = the_lab.status()["up"]
        the_lab.up()
        yield the_lab
        if not was_up:
            the_lab.down()
        return
    Lab.sweep_scratch()  # labs of earlier test runs that were killed before their teardown
    the_lab = new_test_lab()
    try:
        the_lab.up(source_rows=20_000)
        yield the_lab
    finally:
        the_lab.down(purge=True)


@pytest.fixture(scope="session")
def primary_stage(lab, tmp_path_factory):
    """A primary through steps 02-04, built once per worker and snapshotted: ``primary_stage.clone()`` gives a
    module a running server made from it (see stages.py)."""
    from stages import build_primary_stage
    return build_primary_stage(lab, tmp_path_factory.mktemp("stages"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """When a lab test fails because SSH to a lab host failed, add what that host's sshd logged
    (an auth refusal says why there: bad modes, wrong key...) to the test's report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed or call.excinfo is None:
        return
    from hcbpg.errors import HostUnreachable
    exc = call.excinfo.value
    while exc is not None and not isinstance(exc, HostUnreachable):
        exc = exc.__cause__ or exc.__context__
    the_lab = item.funcargs.get("lab")
    if exc is None or the_lab is None:
        return
    from hcbpg.lab.core import read_state
    from hcbpg.lab.hosts import sshd_log_tail
    state = read_state(the_lab.cfg)
    names = [n for n, h in state.get("hosts", {}).items() if n == exc.host or f"@{h.get('ip')}:" in exc.address]
    for name in names:
        rep.sections.append((f"sshd log of lab host {name}", sshd_log_tail(the_lab.cfg, name) or "(empty)"))
        # who listens on port 22 there, whether its sshd runs, and which keys it would accept
        probe = ("ss -tlnp 'sport = :22'; ps -eo pid,args | grep '[s]shd'; ls -la /root/.ssh; "
                 "cut -c1-60 /root/.ssh/authorized_keys; ip -4 -o addr show")
        try:
            cp = the_lab.exec(name, probe)
            seen = (cp.stdout + cp.stderr).strip()
        except Exception as e:  # noqa: BLE001 - a diagnostic must not hide the failure
            seen = f"could not look: {type(e).__name__}: {e}"
        rep.sections.append((f"sshd and keys on lab host {name}", seen or "(nothing)"))
