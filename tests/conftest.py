from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from nbutil import MOTO_BUCKET, REPO, allowed_signer_line, hcbpg, make_params, make_signing_key  # noqa: E402,F401 - REPO, hcbpg re-exported for older imports


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



#: the longest test files (minutes each, measured with --durations), started first so that
#: with parallel workers (scripts/test) the longest file does not start last
LONGEST_FIRST = ("test_replication.py", "test_server_steps.py", "test_migration.py", "test_backups.py",
                 "test_day_two.py", "test_rehearse.py")


def pytest_collection_modifyitems(session, config, items):
    """Order files longest first (the order inside a file stays: its tests build on each other)."""
    def rank(item) -> int:  # noqa: ANN001
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # stable
