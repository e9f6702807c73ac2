"""Shell completion of hcbpg's values: environments, steps, run ids and gates (``--print-completion``).

shtab writes the completion script from the parser; the arguments whose values live in the operator's
home (``params/*.yaml``, ``outputs/``) complete through a small shell function that asks
``hcbpg --complete KIND`` at the moment of the TAB.  What it prints is names read from the home, one per
line, never run: the shell only offers them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

#: the help text of each kind of positional, one wording everywhere
HELP = {
    "env": "the environment: params/ENV.yaml in the hcbpg home (lab, staging, production)",
    "run_id": "a run's id (the 8 characters `hcbpg runs` lists) or its directory name",
    "gate": "the gate's name, as the waiting run printed it (`hcbpg runs` shows waiting runs)",
    "step": "a step: its number (07), its key (07_cutover) or its name (cutover); `hcbpg steps ENV` lists them",
}

KINDS = ("envs", "steps", "runs", "gates")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

BASH_PREAMBLE = """
_hcbpg_values() {
  compgen -W "$(hcbpg --complete "$1" 2>/dev/null)" -- "$2"
}
_shtab_hcbpg_envs() { _hcbpg_values envs "$1"; }
_shtab_hcbpg_steps() { _hcbpg_values steps "$1"; }
_shtab_hcbpg_runs() { _hcbpg_values runs "$1"; }
_shtab_hcbpg_gates() { _hcbpg_values gates "$1"; }
"""

ZSH_PREAMBLE = """
_shtab_hcbpg_envs() { compadd -- ${(f)"$(hcbpg --complete envs 2>/dev/null)"}; }
_shtab_hcbpg_steps() { compadd -- ${(f)"$(hcbpg --complete steps 2>/dev/null)"}; }
_shtab_hcbpg_runs() { compadd -- ${(f)"$(hcbpg --complete runs 2>/dev/null)"}; }
_shtab_hcbpg_gates() { compadd -- ${(f)"$(hcbpg --complete gates 2>/dev/null)"}; }
"""

PREAMBLE = {"bash": BASH_PREAMBLE, "zsh": ZSH_PREAMBLE}


def complete_as(action: argparse.Action, kind: str) -> argparse.Action:
    """Mark *action* to complete with values of *kind* (one of :data:`KINDS`)."""
    action.complete = {"bash": f"_shtab_hcbpg_{kind}", "zsh": f"_shtab_hcbpg_{kind}"}  # type: ignore[attr-defined]
    return action


def values(kind: str, base: Path) -> list[str]:
    """The values of *kind* found in the home *base*: names only (each checked to be a plain name)."""
    from hcbpg.engine import catalogue  # noqa: PLC0415 - loaded when a TAB asks
    from hcbpg.engine import manifest as mf  # noqa: PLC0415 - loaded when a TAB asks

    out: list[str] = []
    if kind == "envs":
        out = sorted(p.stem for p in (base / "params").glob("*.yaml"))
    elif kind == "steps":
        try:
            out = [name for s in catalogue.load_steps() for name in (s.key, s.number)]
        except Exception:  # noqa: BLE001 - a completion offers nothing rather than failing the shell
            out = []
    elif kind in ("runs", "gates"):
        for run in mf.list_runs(base):
            try:
                data = run.read()
            except Exception:  # noqa: BLE001 - an unreadable record offers nothing
                continue
            if kind == "runs":
                out.append(str(data.get("run_id") or ""))
            elif data.get("status") == "awaiting-approval":
                out += [g for g, v in (data.get("gates") or {}).items() if not v.get("approved_at")]
    return sorted({v for v in out if v and _NAME.match(v)})


def print_values(kind: str) -> int:
    from hcbpg.params import home  # noqa: PLC0415 - loaded when a TAB asks

    if kind not in KINDS:
        print(f"hcbpg --complete: one of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    print("\n".join(values(kind, home())))
    return 0
