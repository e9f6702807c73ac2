"""Step inputs on the command line (``-p NAME=VALUE``, as papermill's ``-p``) instead of environment variables:
declared per step in steps.yaml, refused before anything is created when no selected step takes them, never a
secret, recorded with the run and given to the step's notebook again on resume."""

from __future__ import annotations

import json

from hcbpg.desired import rotation as desired_rotation

from nbutil import hcbpg, write_notebook


def _steps(home) -> None:
    nb = home / "notebooks"
    write_notebook(nb / "00_greet.ipynb", "00_greet",
                   "greeting = globals().get('greeting', '')\nprint('greeting is', repr(greeting))\n"
                   "import os\nassert not os.path.exists(os.environ.get('HCBPG_TEST_FAIL', '/nonexistent'))")
    write_notebook(nb / "01_other.ipynb", "01_other", "print('other')")
    (nb / "steps.yaml").write_text("steps:\n"
                                   "  - {notebook: 00_greet.ipynb, title: greet, inputs: [greeting]}\n"
                                   "  - {notebook: 01_other.ipynb, title: other}\n")


def _run(home, env):
    (run,) = [p for p in (home / "outputs" / env).iterdir() if p.is_dir()]
    return run, json.loads((run / "manifest.json").read_text())


def test_an_input_reaches_its_step_is_recorded_and_is_given_again_on_resume(home, env, tmp_path):
    _steps(home)
    fail = tmp_path / "fail-now"
    fail.write_text("")
    r = hcbpg("run", env, "-p", "greeting=hello world", env={"HCBPG_TEST_FAIL": str(fail)})
    assert r.returncode == 1, r.stdout + r.stderr  # the step fails after printing its input
    run, m = _run(home, env)
    assert m["selection"]["inputs"] == {"greeting": "hello world"}
    assert "greeting is 'hello world'" in (run / "00_greet.ipynb").read_text()
    fail.unlink()
    r = hcbpg("resume", m["run_id"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "greeting is 'hello world'" in (run / "00_greet.ipynb").read_text()  # the recorded input, again
    assert "greeting" not in (run / "01_other.ipynb").read_text()  # only the step that takes it
    assert hcbpg("audit", "verify", env).returncode == 0


def test_an_input_no_selected_step_takes_a_reserved_name_or_a_secret_is_refused_before_anything_runs(home, env):
    _steps(home)
    for args, words in ((("-p", "greeting=hi", "--only", "01"), "no step of this run takes it"),
                        (("-p", "colour=red"), "no step of this run takes it"),
                        (("-p", "dry_run=True"), "an input is NAME=VALUE"),
                        (("-p", "greeting"), "an input is NAME=VALUE"),
                        (("-p", "greeting=app-password-0123456789"), "no secret"),  # the test env's app password
                        (("-p", "greeting=a", "-p", "greeting=b"), "given twice")):
        r = hcbpg("run", env, *args)
        assert r.returncode == 2 and words in r.stderr, (args, r.stdout + r.stderr)
        assert "app-password-0123456789" not in r.stdout + r.stderr
    assert not (home / "outputs" / env).exists() or not any((home / "outputs" / env).iterdir())


def test_step_14_takes_the_roles_to_rotate_as_its_input_not_from_the_environment():
    import yaml

    from nbutil import REPO
    entries = yaml.safe_load((REPO / "notebooks" / "steps.yaml").read_text())["steps"]
    (e,) = [e for e in entries if e["notebook"] == "14_password_rotation.ipynb"]
    assert e["inputs"] == [desired_rotation.ROTATE_INPUT]
    nb = (REPO / "notebooks" / "14_password_rotation.ipynb").read_text()
    assert "HCBPG_ROTATE_ROLES" not in nb and 'rotate_roles = \\"\\"' in nb
