"""tests/lab/labparams.pgbackrest_section: a repository prefix of the calling module's own by default (the lab
modules of a worker share its S3 store; two that used repo1's default prefix broke CI), an explicit one kept."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

LAB_TESTS = Path(__file__).parent / "lab"
sys.path.insert(0, str(LAB_TESTS))

import labparams  # noqa: E402


def _lab(tmp_path: Path) -> SimpleNamespace:
    cfg = SimpleNamespace(s3_endpoint="https://10.9.9.1:9443", ca_cert=tmp_path / "ca.crt",
                          secret_path=lambda name: tmp_path / "secrets" / name)
    return SimpleNamespace(cfg=cfg)


def test_the_default_prefix_is_the_calling_modules_own(tmp_path):
    section = labparams.pgbackrest_section(_lab(tmp_path))
    assert section["repo_path_prefix"] == "/pgbackrest-test-lab-repo-prefix-unit"


def test_through_a_shared_helper_it_is_still_the_module_that_called_the_helper(tmp_path):
    # a function defined in a file named like the shared helpers (ha_stage.py): skipped, this module is the owner
    ns: dict = {"pgbackrest_section": labparams.pgbackrest_section}
    exec(compile("def helper(lab):\n    return pgbackrest_section(lab)\n", str(LAB_TESTS / "ha_stage.py"), "exec"), ns)
    assert ns["helper"](_lab(tmp_path))["repo_path_prefix"] == "/pgbackrest-test-lab-repo-prefix-unit"
    other: dict = {"helper": ns["helper"], "lab": _lab(tmp_path)}
    exec(compile("got = helper(lab)\n", str(LAB_TESTS / "test_some_module.py"), "exec"), other)
    assert other["got"]["repo_path_prefix"] == "/pgbackrest-test-some-module"


def test_an_explicit_prefix_is_kept(tmp_path):
    section = labparams.pgbackrest_section(_lab(tmp_path), repo_path_prefix="/pgbackrest-mine", process_max=4)
    assert section["repo_path_prefix"] == "/pgbackrest-mine" and section["process_max"] == 4


def test_no_two_lab_modules_name_the_same_prefix_nor_another_modules_default():
    defaults = {labparams.default_repo_path_prefix(p.stem): p.name for p in LAB_TESTS.glob("test_*.py")}
    assert len(defaults) == len(list(LAB_TESTS.glob("test_*.py")))
    explicit: dict[str, str] = {}
    for p in sorted(LAB_TESTS.glob("*.py")):
        for prefix in re.findall(r"""repo_path_prefix["']?\s*[=:]\s*f?["'](/pgbackrest[^"'{]*)["']""", p.read_text()):
            assert prefix not in explicit or explicit[prefix] == p.name, (prefix, explicit[prefix], p.name)
            explicit[prefix] = p.name
            assert defaults.get(prefix, p.name) == p.name, (prefix, defaults.get(prefix), p.name)
    assert "/pgbackrest-notebooks" in explicit  # the scan sees the modules' explicit prefixes
