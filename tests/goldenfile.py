"""One golden-file check for the render tests: ``golden(name, text)`` against ``tests/golden/<name>``.

``HCBPG_UPDATE_GOLDEN=1`` (re)writes the file after a deliberate change; otherwise a missing
golden file fails with how to create it, and a mismatch fails with a unified diff. Files are
compared byte for byte (no newline translation).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
UPDATE_ENV = "HCBPG_UPDATE_GOLDEN"


def golden(name: str, text: str, *, directory: Path = GOLDEN) -> None:
    """Assert that *text* equals the golden file *name*, or rewrite it under HCBPG_UPDATE_GOLDEN=1."""
    path = directory / name
    if os.environ.get(UPDATE_ENV) == "1":
        path.write_bytes(text.encode())
    if not path.is_file():
        raise AssertionError(f"no golden file {path}: run the test with {UPDATE_ENV}=1 to create it, "
                             "then review and commit it")
    expected = path.read_bytes().decode()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True), text.splitlines(keepends=True),
                                            fromfile=f"golden/{name}", tofile="rendered"))
        raise AssertionError(f"{name} differs from its golden file (rerun with {UPDATE_ENV}=1 if the change "
                             f"is intended):\n{diff}")
