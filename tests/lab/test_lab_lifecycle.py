"""`lab up` is idempotent, survives a kill -9 halfway, and `lab down` leaves nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hcbpg.lab import Lab

pytestmark = pytest.mark.lab


def cli(lab: Lab, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hcbpg.cli.lab", "lab", "--lab-dir", str(lab.lab_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


def test_down_after_killed_up_leaves_nothing(make_test_lab):
    lab = make_test_lab("hcbpg-lab-killed-")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "hcbpg.cli.lab", "lab", "--lab-dir", str(lab.lab_dir),
                                 "up", "--source-rows", "2000"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # kill it once a host exists: namespaces, mounts and services are half made
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(h.get("pid") for h in _hosts(lab)):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert lab.leftovers(), "the killed `lab up` had made nothing yet; the test proves nothing"

        up = cli(lab, "up", "--source-rows", "2000")
        assert up.returncode == 0, up.stderr
        st = json.loads(cli(lab, "status", "--json").stdout)
        assert {(h["name"], h["role"]) for h in st["hosts"]} >= {("app", "app"), ("source", "source")}
        for key in ("ssh_key", "secrets_file", "hcloud_endpoint", "s3_endpoint"):
            assert st[key]
        assert oct(os.stat(st["secrets_file"]).st_mode & 0o777) == "0o600"
        again = cli(lab, "up", "--source-rows", "2000")
        assert again.returncode == 0 and "already seeded" in again.stderr

        proc = subprocess.Popen([sys.executable, "-m", "hcbpg.cli.lab", "lab", "--lab-dir", str(lab.lab_dir),
                                 "down"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.wait(timeout=120)
        assert proc.returncode == 0
        assert lab.leftovers() == []
    finally:
        lab.down(purge=True)
    assert lab.leftovers() == []
    assert not lab.lab_dir.exists()


def _hosts(lab: Lab) -> list[dict]:
    try:
        return list(json.loads(lab.cfg.state_file.read_text())["hosts"].values())
    except (OSError, ValueError, KeyError):
        return []


def test_scratch_labs_made_at_the_same_time_get_different_subnets():
    """Parallel test workers each make a scratch lab at session start: no two may pick one N."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from hcbpg.lab import lab_unavailable_reason
    from hcbpg.lab.core import scratch_config
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(f"lab tests need root and network namespaces: {reason}")
    with ThreadPoolExecutor(6) as pool:
        cfgs = list(pool.map(lambda _: scratch_config("hcbpg-lab-scratch-"), range(6)))
    try:
        assert len({c.subnet for c in cfgs}) == 6, [c.subnet for c in cfgs]
        assert len({c.bridge for c in cfgs}) == 6
    finally:
        for c in cfgs:
            shutil.rmtree(c.lab_dir, ignore_errors=True)
