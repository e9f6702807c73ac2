"""Gate names in one style (kebab-case); approve accepts a gate's old snake_case name, and a run recorded
with an old name is approved by its new one."""

from __future__ import annotations

import json

import pytest

from hcbpg.engine.manifest import gate_key, gate_named

from nbutil import hcbpg, write_notebook, write_steps


def test_one_gate_whatever_the_style():
    gates = {"rotate-passwords": {}, "maintenance-on": {}}
    assert gate_named("rotate_passwords", gates) == "rotate-passwords"
    assert gate_named("release-command", {"release_command": {}}) == "release_command"
    assert gate_named("no_such", gates) == "no_such"
    assert gate_key("power_off_server_postgres_1") == "power-off-server-postgres-1"


@pytest.mark.parametrize(("asked", "typed"), [("rotate-passwords", "rotate_passwords"),
                                              ("release_command", "release-command")])
def test_approve_takes_either_style_and_records_the_gate_as_it_was_asked(home, env, asked, typed):
    nb = home / "notebooks"
    write_notebook(nb / "00_gate.ipynb", "00_gate", f"rb.gate('{asked}', 'Is it done?')\nprint('past the gate')")
    write_steps(nb, [("00_gate.ipynb", "gate")])
    assert hcbpg("run", env).returncode == 3
    (run,) = [p for p in (home / "outputs" / env).iterdir() if p.is_dir()]
    rid = run.name.split("_", 1)[1]
    r = hcbpg("approve", rid, typed, "--note", "checked")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"gate '{asked}' of run {rid} approved by test-operator" in r.stdout, r.stdout
    gates = json.loads((run / "manifest.json").read_text())["gates"]
    assert list(gates) == [asked] and gates[asked]["approved_at"]
    r = hcbpg("resume", rid)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "past the gate" in (run / "00_gate.ipynb").read_text()
