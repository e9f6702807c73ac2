"""The notebook contract: committed without outputs, a parameters cell with exactly what the runner passes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import papermill as pm
import pytest

from hcbpg.engine.catalogue import load_steps, notebooks_dir, step_inputs

NOTEBOOKS = sorted(notebooks_dir().glob("*.ipynb"))
RUNNER_PARAMS = {"env", "run_id", "run_dir", "dry_run"}


def test_every_listed_step_has_its_notebook_and_every_notebook_is_listed():
    by_manager = {m: load_steps(manager=m) for m in ("manual", "patroni")}
    listed = {s.notebook for steps in by_manager.values() for s in steps}
    present = {p.name for p in NOTEBOOKS}
    assert present <= listed, f"notebooks not in steps.yaml: {present - listed}"
    missing = listed - present
    assert not missing, f"steps.yaml lists notebooks that do not exist: {sorted(missing)}"
    for m, steps in by_manager.items():
        assert len({s.number for s in steps}) == len(steps), f"step numbers must be unique ({m})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path: Path):
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_matches_what_the_runner_passes(path: Path):
    params = pm.inspect_notebook(str(path))
    # what every step gets, and the inputs steps.yaml declares for this one (-p NAME=VALUE)
    assert set(params) == RUNNER_PARAMS | set(step_inputs(path.parent).get(path.name, ())), path.name
    assert params["dry_run"]["default"] == "False"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_starts_its_own_step(path: Path):
    src = "".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])
    assert f'step="{path.stem}"' in src or f"step='{path.stem}'" in src
    assert "rb.finish()" in src


#: a cell deciding by the run's mode: the engine (rb.verify_applied, record_applied, when_applied, track_applied)
#: and the hosts (DryRunHost, AbsentHost) know whether this is a dry run
DRY_RUN_BRANCH = re.compile(r"\bif\s+(not\s+)?rb\.dry_run\b|\bnot\s+rb\.dry_run\b|\brb\.dry_run\s+else\b")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_branches_on_the_dry_run(path: Path):
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    branching = [src for src in cells if DRY_RUN_BRANCH.search(src)]
    assert not branching, f"{path.name}: cells that branch on rb.dry_run:\n" + "\n---\n".join(branching)


@pytest.mark.parametrize("src", ["if rb.dry_run:\n    print(1)", "if not rb.dry_run:\n    x()",
                                 "rb.track(x, show=not rb.dry_run)", "a = plan if rb.dry_run else b"])
def test_the_branch_check_finds_a_branch(src: str):
    assert DRY_RUN_BRANCH.search(src)
    assert not DRY_RUN_BRANCH.search("f(host, dry_run=rb.dry_run)\nrb.verify_applied(check, host)")


def test_step_13_moves_ownership_only_after_the_release_command_gate():
    """A deploy must keep working: the migrations role's URL is handed out, the gate asks that the release command
    uses it, and only then does ownership move to that role (``roles.apply``); the app's rights come first."""
    code = ["".join(c["source"]) for c in json.loads((notebooks_dir() / "13_roles.ipynb").read_text())["cells"]
            if c["cell_type"] == "code"]
    src = "\n".join(code)
    order = [src.index(call) for call in ("roles.apply_login_roles(", "roles.hand_out_urls(",
                                          "roles.release_command_gate(", "roles.apply(rb")]
    assert order == sorted(order), order
    assert src.count("roles.apply(rb") == 1
