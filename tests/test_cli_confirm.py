"""A run that changes an environment other than the lab asks first (hcbpg.cli.confirm): the environment's
name typed, or --yes; without a terminal and without --yes nothing runs."""

from __future__ import annotations

import pytest

from hcbpg.cli.confirm import confirm_run
from hcbpg.errors import UsageError
from hcbpg.params import load_params

from nbutil import hcbpg, make_params, write_notebook, write_steps


def _one_step(home):
    nb = home / "notebooks"
    write_notebook(nb / "00_a.ipynb", "00_a", "print('ran')")
    write_steps(nb, [("00_a.ipynb", "a")])


def test_without_a_terminal_and_without_yes_nothing_runs_and_nothing_is_recorded(home, env):
    _one_step(home)
    r = hcbpg("run", env, "--ask")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "hcbpg run test changes test: 1 step(s): 00_a" in r.stdout
    assert "no terminal to confirm it on: nothing was run" in r.stderr and "--yes" in r.stderr, r.stderr
    assert not (home / "outputs" / env).exists() or not any((home / "outputs" / env).iterdir())
    r = hcbpg("run", env, "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert hcbpg("plan", env).returncode == 0  # a dry run asks nothing


def test_the_typed_name_must_be_the_environments(home, env):
    params = load_params(env, home)
    shown: list[str] = []
    with pytest.raises(UsageError, match="not confirmed"):
        confirm_run(params, env, ["00_a"], what="hcbpg run test", yes=False, interactive=True,
                    ask=lambda q: "production", echo=shown.append)
    assert shown == ["hcbpg run test changes test: 1 step(s): 00_a"]
    asked: list[str] = []
    confirm_run(params, env, ["00_a"], what="hcbpg run test", yes=False, interactive=True,
                ask=lambda q: asked.append(q) or "test", echo=shown.append)
    assert asked == ["Type the environment's name (test) to go on: "]


def test_the_lab_and_yes_ask_nothing(home):
    (home / "params" / "lablike.yaml").write_text(make_params("lablike") + "site: hcbpg.lab.site:LabSite\n")
    lab = load_params("lablike", home)
    def never(_: str) -> str:
        raise AssertionError("asked")
    confirm_run(lab, "lablike", ["00_a"], what="hcbpg run lablike", yes=False, interactive=False, ask=never)
