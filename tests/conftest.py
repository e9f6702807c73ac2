from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nbutil import MOTO_BUCKET, REPO, allowed_signer_line, hcbpg, make_params, make_signing_key  # noqa: E402,F401 - REPO, hcbpg re-exported for older imports


@pytest.fixture(scope="session", autouse=True)
def _no_packet_to_lab_addresses_beyond_the_gateway():
    """The labs' address space is routed nowhere but to a lab's bridge (hcbpg.lab.hosts.ensure_address_guard), from
    the first test on: tests that aim at params/lab.yaml's addresses with no lab up (an unreachable server, `status`
    of a lab that is down) sent them through the machine's default gateway, where something answered (strace of the
    tests outside tests/lab: connect() to 10.0.1.10:22, 10.0.1.20:5432, 10.0.1.1:8780 and 9443, 10.0.1.250:9444)."""
    if sys.platform.startswith("linux") and os.geteuid() == 0 and shutil.which("ip"):
        from hcbpg.lab.hosts import ensure_address_guard
        ensure_address_guard()
    yield


@pytest.fixture(scope="module", autouse=True)
def _scrubber_of_the_module():
    """The test process's scrubber forgets at each module's end what the module registered, and the run's variables
    a runner in this process set (``HCBPG_SCRUB_FILE``, ``HCBPG_HEADLESS``, ``HCBPG_AUTO_APPROVE``) are put back.
    A process of hcbpg scrubs one run's few dozen secrets; a test worker collected every module's (3,357 spellings by
    the end of tests/fast alone) and compiled its regex again after each new secret: the fast tier took 190 s
    instead of 87 s.  And a module that ran the Runner in this process (test_online, test_migration) left
    HCBPG_SCRUB_FILE naming its last run's registry: every later module appended its secrets there and scrubbed with
    all of them (the fast tier 150 s again when it ran after such a module).  Every secret a module resolves is
    registered again when resolved (``resolve`` keeps nothing)."""
    from hcbpg.secrets import SCRUBBER
    names = ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS", "HCBPG_AUTO_APPROVE")
    env = {n: os.environ.get(n) for n in names}
    kept = SCRUBBER.spellings
    yield
    for n, v in env.items():
        if v is None:
            os.environ.pop(n, None)
        else:
            os.environ[n] = v
    SCRUBBER.reset(kept)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An HCBPG_HOME with its own params/, notebooks/ and outputs/ (notebooks dir via HCBPG_NOTEBOOKS)."""
    h = tmp_path / "home"
    (h / "params").mkdir(parents=True)
    (h / "notebooks").mkdir()
    monkeypatch.setenv("HCBPG_HOME", str(h))
    monkeypatch.setenv("HCBPG_NOTEBOOKS", str(h / "notebooks"))
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HCBPG_OPERATOR", "test-operator")
    for var in ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS", "HCBPG_AUTO_APPROVE"):
        monkeypatch.delenv(var, raising=False)
    key = make_signing_key(tmp_path / "signing", "test-operator")
    monkeypatch.setenv("HCBPG_SIGNING_KEY", str(key))
    (h / "params" / "allowed_signers").write_text(allowed_signer_line("test-operator", key) + "\n")
    return h


@pytest.fixture
def moto_s3():
    """A boto3 S3 client on moto in this process (the code the lab's S3 server runs), with one empty
    bucket ``nbutil.MOTO_BUCKET``; everything in it is gone after the test."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s")
        client.create_bucket(Bucket=MOTO_BUCKET)
        yield client


@pytest.fixture
def env(home, monkeypatch):
    """The environment ``test`` in *home*: params from ``nbutil.make_params``, its secrets in the env."""
    monkeypatch.setenv("HCBPG_TEST_APP_PW", "app-password-0123456789")
    monkeypatch.setenv("HCBPG_TEST_TOKEN", "hcloud-token-0123456789")
    (home / "params" / "test.yaml").write_text(make_params("test"))
    return "test"


# -- the order of the suite on parallel workers ---------------------------------------------------------------
# Test files run whole on one worker each (scripts/test: --dist loadfile), longest first so that the longest does
# not start last; how long each test took is what the previous full run wrote to DURATIONS (scripts/test sets
# HCBPG_STORE_DURATIONS=1), never a list kept by hand.  Files with a test marked ``default_lab`` (it uses the
# machine's default lab, one at a time under its lock) run as one unit on one worker instead of waiting for each other.

#: seconds each test took in the last full run (setup + call + teardown), by node id
ROOT = Path(__file__).resolve().parent.parent
DURATIONS = ROOT / "tests" / "durations.json"
DEFAULT_LAB_GROUP = "default-lab"


def recorded_durations() -> dict[str, float]:
    try:
        data = json.loads(DURATIONS.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}


@functools.cache
def _scope_of_file(path: str) -> str:
    """The unit of work a test file belongs to: itself, or DEFAULT_LAB_GROUP when a test of it is marked
    ``default_lab`` (read from its source: the xdist controller sees node ids only)."""
    try:
        uses_default_lab = "mark.default_lab" in (ROOT / path).read_text()
    except OSError:
        uses_default_lab = False
    return DEFAULT_LAB_GROUP if uses_default_lab else path


def _scope(nodeid: str) -> str:
    return _scope_of_file(nodeid.split("::", 1)[0])


def pytest_collection_modifyitems(session, config, items):
    """Order the work longest first (by the recorded durations; a test not recorded yet counts as the median lab
    test when it is a lab test); the order inside a file stays: its tests build on each other."""
    known = recorded_durations()
    lab_times = sorted(v for k, v in known.items() if "tests/lab/" in k) or [60.0]
    unknown_lab = lab_times[len(lab_times) // 2]
    per_scope: dict[str, float] = {}
    first: dict[str, int] = {}
    for n, item in enumerate(items):
        guess = unknown_lab if item.get_closest_marker("lab") else 0.1
        scope = _scope(item.nodeid)
        per_scope[scope] = per_scope.get(scope, 0.0) + known.get(item.nodeid, guess)
        first.setdefault(scope, n)
    items.sort(key=lambda item: (-per_scope[_scope(item.nodeid)], first[_scope(item.nodeid)]))  # stable in a scope


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: a run without pytest-xdist never calls it
def pytest_xdist_make_scheduler(config, log):
    """--dist loadfile, with the files of ``default_lab`` tests as one unit, in the order of the collection (longest
    first) instead of xdist's own (files with the most tests first, which started the one-test rehearsal last)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    config.option.loadscopereorder = False
    return Scheduling(config, log)


_DURATIONS_SEEN: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Collect each test's duration (on the controller under xdist: the workers' reports arrive here)."""
    _DURATIONS_SEEN[report.nodeid] = _DURATIONS_SEEN.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    """With HCBPG_STORE_DURATIONS=1 (scripts/test), write what this run measured into DURATIONS (tests that did not
    run keep their old figure, tests that no longer exist go when the whole suite ran)."""
    if os.environ.get("HCBPG_STORE_DURATIONS") != "1" or hasattr(session.config, "workerinput"):
        return
    if not _DURATIONS_SEEN or exitstatus == pytest.ExitCode.INTERRUPTED:
        return
    data = recorded_durations()
    if session.config.args_source == pytest.Config.ArgsSource.TESTPATHS:  # the whole suite ran
        collected = set(_DURATIONS_SEEN)
        data = {k: v for k, v in data.items() if k in collected}
    data.update({k: round(v, 2) for k, v in _DURATIONS_SEEN.items()})
    DURATIONS.write_text(json.dumps(dict(sorted(data.items())), indent=0) + "\n")
