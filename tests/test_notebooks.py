"""The notebook contract: committed without outputs, a parameters cell with exactly what the runner passes."""

from __future__ import annotations

import json
from pathlib import Path

import papermill as pm
import pytest

from hcbpg.engine.catalogue import load_steps, notebooks_dir

NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))
RUNNER_PARAMS = {"env", "run_id", "run_dir", "dry_run"}


def test_every_listed_step_has_its_notebook_and_every_notebook_is_listed():
    steps = load_steps()
    listed = {s.notebook for s in steps}
    present = {p.name for p in NOTEBOOKS}
    assert present <= listed, f"notebooks not in steps.yaml: {present - listed}"
    missing = listed - present
    assert not missing, f"steps.yaml lists notebooks that do not exist: {sorted(missing)}"
    assert len({s.number for s in steps}) == len(steps), "step numbers must be unique"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_matches_what_the_runner_passes(path: Path):
    params = pm.inspect_notebook(str(path))
    assert set(params) == RUNNER_PARAMS, path.name
    assert params["dry_run"]["default"] == "False"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_its_own_step(path: Path):
    src = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    assert f'step="{path.stem}"' in src or f"step='{path.stem}'" in src
    assert "rb.finish()" in src


def test_step_13_moves_ownership_only_after_the_release_command_gate():
    """A deploy must keep working: the migrations role's URL is handed out, the gate asks that the release command
    uses it, and only then does ownership move to that role (``roles.apply``); the app's rights come first."""
    code = ["".join(c["source"]) for c in json.loads((notebooks_dir() / "13_roles.ipynb").read_text())["cells"]
            if c["cell_type"] == "code"]
    src = "\n".join(code)
    order = [src.index(call) for call in ("roles.apply_login_roles(", "roles.hand_out_release_urls(",
                                          "roles.release_command_gate(", "roles.apply(rb")]
    assert order == sorted(order), order
    assert src.count("roles.apply(rb") == 1
