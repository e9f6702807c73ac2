"""``hcbpg steps ENV``: the runbook in ENV's order with what each step changes and its gates; the gates
declared in notebooks/steps.yaml are the ones the steps' code asks for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from nbutil import REPO, hcbpg

GATE_CALL = re.compile(r"""\bgate\(\s*f?["']([^"']+)["']""")


def _code(path: Path) -> str:
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return path.read_text()


def _pattern(declared: str) -> str:
    """A declared gate as the code writes it: SERVER / FINGERPRINT are filled in by an f-string."""
    return re.sub(r"SERVER|FINGERPRINT", "{}", declared)


def test_every_gate_the_code_asks_for_is_declared_with_its_step_and_none_other():
    entries = yaml.safe_load((REPO / "notebooks" / "steps.yaml").read_text())["steps"]
    declared = {_pattern(g) for e in entries for g in e.get("gates") or ()}
    assert all(e.get("changes") for e in entries), [e["notebook"] for e in entries if not e.get("changes")]
    found: set[str] = set()
    for path in [*sorted((REPO / "notebooks").glob("*.ipynb")), *sorted((REPO / "hcbpg" / "steps").glob("*.py"))]:
        for name in GATE_CALL.findall(_code(path)):
            found.add(re.sub(r"\{[^}]*\}", "{}", name))
    # provision's host-key gate is made by host_key_gate(): f"host-key-{name}-{...}"; notebook 11 asks
    # plan.gate, FailoverPlan's "switchover" or "failover"
    from hcbpg.desired.failover import FailoverPlan
    found.discard("{}")
    found.add("host-key-{}-{}")
    found |= {FailoverPlan(kind=k, old_primary="a", new_primary="b", old_reachable=True).gate
              for k in ("switchover", "failover")}
    assert found == declared, (found - declared, declared - found)
    assert all(re.fullmatch(r"[a-z0-9{}]+(-[a-z0-9{}]+)*", g) for g in declared), declared  # one style: kebab-case
    # a gate named in a notebook belongs to that notebook's step
    for e in entries:
        in_nb = {re.sub(r"\{[^}]*\}", "{}", n) for n in GATE_CALL.findall(_code(REPO / "notebooks" / e["notebook"]))}
        assert in_nb <= {_pattern(g) for g in e.get("gates") or ()}, (e["notebook"], in_nb)


def test_steps_lists_the_environments_order_with_changes_and_gates(tmp_path):
    r = hcbpg("steps", "lab")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert "source.transfer: online" in lines[0]
    keys = [line.split()[1] for line in lines[2:] if line.strip() and line.split()[0].isdigit()]
    assert keys.index("08_start_archiving") < keys.index("07_cutover")  # online: archiving while Bucardo syncs
    cut = next(line for line in lines if " 07_cutover " in line)
    assert "maintenance-on, processes-stopped" in cut and "sentinel row" in cut, cut
    # the lab runs Patroni (replication.manager patroni): its on-demand steps are switchover and maintenance
    assert any(line.startswith("on demand (--only)") and "11_switchover" in line for line in lines), r.stdout
    r = hcbpg("steps", "lab", "--json")
    data = json.loads(r.stdout)
    assert data["transfer"] == "online"
    orders = [s["order"] for s in data["steps"] if not s["on_demand"]]
    assert orders == list(range(1, len(orders) + 1)) and all(isinstance(o, int) for o in orders)
    assert {s["key"] for s in data["steps"] if s["on_demand"]} == {"11_switchover", "11b_maintenance",
                                                                    "14_password_rotation", "16_online_cleanup",
                                                                    "20_recover_point_in_time", "21_repository_as_of",
                                                                    "22_recover_everything"}
    r = hcbpg("steps", "no-such-env")
    assert r.returncode == 2 and "no-such-env" in r.stderr, r.stdout + r.stderr
