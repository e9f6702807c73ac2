"""``plan --diff`` / ``run --diff`` and saved plans (``plan --out FILE``, ``run --plan FILE``) with the real
runner and kernels: a toy step whose "world" is a file on this machine, so the world can be changed between
the plan and its apply.  The lab's own case (pg_hba.conf's diff, a server changed by hand) is in
tests/lab/test_server_steps.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbutil import hcbpg, write_notebook, write_steps

pytestmark = pytest.mark.timeout(300)

#: a step that makes the world file hold what params say (a config file, as steps 03 or 05 do)
SET_WORLD = """\
from pathlib import Path
from hcbpg.outcome import Outcome, unified_diff
world = Path({path!r})
current = world.read_text() if world.exists() else ''
desired = 'listen_addresses = 10.0.1.5\\nport = 5432\\n'
o = Outcome(f'world.conf on test-host', changed=current != desired, dry_run=dry_run,
            diff=unified_diff(current, desired, 'world.conf'))
if o.changed and not dry_run:
    world.write_text(desired)
rb.track(o)
"""


def _steps(home: Path, world: Path, *, surprise: bool = False) -> None:
    nb = home / "notebooks"
    write_notebook(nb / "00_world.ipynb", "00_world", SET_WORLD.format(path=str(world)))
    extra = ("from hcbpg.outcome import Outcome\n"
             "rb.track(Outcome('a surprise on test-host', changed=not dry_run, dry_run=dry_run))") if surprise else \
        "print('nothing here')"
    write_notebook(nb / "01_other.ipynb", "01_other", extra)
    write_notebook(nb / "02_last.ipynb", "02_last", "print('the last step ran')")
    write_steps(nb, [("00_world.ipynb", "world"), ("01_other.ipynb", "other"), ("02_last.ipynb", "last")])


def _runs(home: Path, env: str) -> list[Path]:
    return sorted(p for p in (home / "outputs" / env).iterdir() if p.is_dir())


def test_plan_diff_prints_each_change_and_a_saved_plan_applies_exactly_and_only_while_the_world_is_as_planned(
        home, env, tmp_path):
    world = tmp_path / "world.conf"
    world.write_text("listen_addresses = localhost\nport = 5432\n")
    _steps(home, world)
    plan_file = tmp_path / "change.plan"
    r = hcbpg("plan", env, "--diff", "--out", str(plan_file))
    assert r.returncode == 0, r.stdout + r.stderr
    # the diff on the terminal, under its step, as a plan shows it
    assert "~ world.conf on test-host: would change" in r.stdout, r.stdout
    assert "-listen_addresses = localhost" in r.stdout and "+listen_addresses = 10.0.1.5" in r.stdout
    assert "Saved plan" in r.stdout and "signed by test-operator" in r.stdout and f"--plan {plan_file}" in r.stdout
    assert world.read_text() == "listen_addresses = localhost\nport = 5432\n", "a plan changed the world"
    doc = json.loads(plan_file.read_text())
    assert doc["selection"]["steps"] == ["00_world", "01_other", "02_last"]
    assert [c["what"] for c in doc["steps"][0]["changes"]] == ["world.conf on test-host"]
    assert "BEGIN SSH SIGNATURE" in doc["signature"]

    # someone changes the world after the review: the plan is not applied, the terminal says what moved
    world.write_text("listen_addresses = *\nport = 5432\n")
    refused = hcbpg("run", env, "--plan", str(plan_file))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "The world changed since plan" in refused.stdout, refused.stdout
    assert "step 00_world: world.conf on test-host: a different change now" in refused.stdout
    assert world.read_text() == "listen_addresses = *\nport = 5432\n", "a refused plan changed the world"
    assert not any(json.loads((p / "manifest.json").read_text())["mode"] == "run" for p in _runs(home, env))

    # planned again and applied: exactly the planned change, the plan recorded with the run
    r = hcbpg("plan", env, "--out", str(plan_file))
    assert r.returncode == 0, r.stdout + r.stderr
    applied = hcbpg("run", env, "--plan", str(plan_file), "--diff")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "* world.conf on test-host: changed" in applied.stdout and "-listen_addresses = *" in applied.stdout
    assert world.read_text() == "listen_addresses = 10.0.1.5\nport = 5432\n"
    m = json.loads((_runs(home, env)[-1] / "manifest.json").read_text())
    assert m["mode"] == "run" and m["status"] == "succeeded"
    sel = m["selection"]["plan"]
    assert sel["signed_by"] == "test-operator" and len(sel["sha256"]) == 64
    assert sel["expected"] == {"00_world": ["world.conf on test-host"], "01_other": [], "02_last": []}
    recheck = json.loads((_runs(home, env)[-2] / "manifest.json").read_text())
    assert recheck["dry_run"] and recheck["run_id"] == sel["rechecked_in"]
    assert m["steps"][0]["diffs"][0]["what"] == "world.conf on test-host"

    # the same plan again: the world moved (by the plan itself), so it is not applied twice
    again = hcbpg("run", env, "--plan", str(plan_file))
    assert again.returncode == 2 and "no longer changes world.conf on test-host" in again.stdout, again.stdout


def test_a_plan_file_is_believed_only_signed_for_this_environment_params_and_code(home, env, tmp_path):
    world = tmp_path / "world.conf"
    _steps(home, world)
    plan_file = tmp_path / "p.plan"
    r = hcbpg("plan", env, "--out", str(plan_file))
    assert r.returncode == 0, r.stdout + r.stderr
    good = plan_file.read_text()

    def refused(text: str, *expect: str, extra: tuple[str, ...] = ()) -> None:
        plan_file.write_text(text)
        out = hcbpg("run", env, "--plan", str(plan_file), *extra)
        assert out.returncode == 2, out.stdout + out.stderr
        for e in expect:
            assert e in out.stdout + out.stderr, (e, out.stdout + out.stderr)
        assert not world.exists(), "a refused plan changed the world"

    # a diff edited after signing: the signature no longer holds
    doc = json.loads(good)
    doc["steps"][0]["changes"][0]["diff"] = doc["steps"][0]["changes"][0]["diff"].replace("10.0.1.5", "0.0.0.0")
    refused(json.dumps(doc), "is not believed", "changed after it was signed")
    # a step name with a terminal escape, shown in the confirmation before the file is verified: escaped there
    doc = json.loads(good)
    doc["selection"]["steps"][0] = "00_world\x1b[2J"
    plan_file.write_text(json.dumps(doc))
    out = hcbpg("run", env, "--plan", str(plan_file), "--ask")  # no terminal: the steps are listed, nothing runs
    assert "\x1b" not in out.stdout + out.stderr and "00_world\\x1b[2J" in out.stdout + out.stderr, out.stdout
    # not a plan at all, and a plan with selectors beside it
    refused("{}", "is not an hcbpg plan")
    refused(good, "no --from/--until/--only/-p with it", extra=("--only", "00"))
    # the params changed since: the plan no longer applies
    params = home / "params" / f"{env}.yaml"
    params.write_text(params.read_text() + "\n# changed after the plan\n")
    refused(good, "params/test.yaml changed since it was planned")
    params.write_text(params.read_text().replace("\n# changed after the plan\n", ""))
    # a step's notebook changed since
    nb = home / "notebooks" / "02_last.ipynb"
    write_notebook(nb, "02_last", "print('another last step')")
    refused(good, "the notebook of step 02_last changed since it was planned")


def test_a_run_of_a_saved_plan_stops_after_a_step_that_changes_what_the_plan_does_not_list(home, env, tmp_path):
    world = tmp_path / "world.conf"
    _steps(home, world, surprise=True)  # 01 changes something only when it runs for real
    plan_file = tmp_path / "p.plan"
    assert hcbpg("plan", env, "--out", str(plan_file)).returncode == 0
    r = hcbpg("run", env, "--plan", str(plan_file))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Step 01_other changed what the saved plan does not list: a surprise on test-host" in r.stdout, r.stdout
    m = json.loads((_runs(home, env)[-1] / "manifest.json").read_text())
    assert m["status"] == "failed"
    assert [s["status"] for s in m["steps"]] == ["succeeded", "succeeded", "pending"], "the run went on"
