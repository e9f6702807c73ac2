from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent


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
    return h


def hcbpg(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and stdout as an operator sees them)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "hcbpg.cli", *args], capture_output=True, text=True,
                          env=e, timeout=timeout)
