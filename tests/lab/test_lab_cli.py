"""`hcbpg lab` refuses clearly (exit 2) where the lab cannot run."""

from __future__ import annotations

import os
import re
import sys

import pytest

from nbutil import REPO


def test_lab_commands_refuse_to_run_without_root(monkeypatch, capsys):
    from hcbpg.cli import lab as cli
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert cli.main(["lab", "status"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_lab_commands_refuse_to_run_off_linux(monkeypatch, capsys):
    from hcbpg.cli import lab as cli
    monkeypatch.setattr("sys.platform", "darwin")
    assert cli.main(["lab", "up"]) == 2
    assert "needs Linux" in capsys.readouterr().err


def _without_lab_packages(monkeypatch):  # noqa: ANN001
    """As if moto and cheroot (the ``hcbpg[lab]`` extra) were not installed."""
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("moto", "cheroot") else real(name, *a, **k))


def test_lab_up_without_the_lab_extra_names_what_to_install(monkeypatch, capsys, tmp_path):
    from hcbpg.cli import lab as cli
    from hcbpg.lab.core import lab_unavailable_reason
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("lab up reaches the packages' check only as root on Linux")
    _without_lab_packages(monkeypatch)
    lab_dir = tmp_path / "lab"
    assert cli.main(["lab", "--lab-dir", str(lab_dir), "up"]) != 0
    err = capsys.readouterr().err
    assert "moto and cheroot" in err and "pip install 'hcbpg[lab]'" in err, err
    assert not (lab_dir / "state.json").exists()  # refused before anything was made
    assert "hcbpg[lab]" in (lab_unavailable_reason() or "")  # lab tests skip, saying so


def test_rehearse_without_the_lab_extra_names_what_to_install_before_it_sets_anything_aside(
        home, monkeypatch, capsys):
    from hcbpg.cli import main
    from hcbpg.lab.lifecycle import Lab

    def no_lab(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("rehearse brought a lab up without the lab's packages")
    monkeypatch.setattr(Lab, "up", no_lab)  # never the machine's default lab, whatever happens
    _without_lab_packages(monkeypatch)
    assert main(["rehearse"]) != 0
    err = capsys.readouterr().err
    assert "moto and cheroot" in err and "pip install 'hcbpg[lab]'" in err, err
    assert not (home / "outputs").exists()


def test_an_operators_install_does_not_pull_the_lab_packages():
    """moto and cheroot are the ``lab`` extra only, and only hcbpg.lab imports them."""
    import ast

    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = [re.split(r"[\[<>=; ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]]
    assert not {"moto", "cheroot"} & set(base), base
    lab = [re.split(r"[\[<>=; ]", d, maxsplit=1)[0].lower() for d in project["optional-dependencies"]["lab"]]
    assert {"moto", "cheroot"} <= set(lab), lab
    importers = []
    for path in (REPO / "hcbpg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("moto", "cheroot") for n in names):
                importers.append(str(path.relative_to(REPO)))
    assert importers and all(p.startswith("hcbpg/lab/") for p in importers), importers
