"""Completion of hcbpg's values (environments, steps, run ids, gates) and help on every positional."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from hcbpg.cli import build_parser

from nbutil import hcbpg, subparsers, write_notebook, write_steps


def test_every_positional_of_every_subcommand_has_help():
    missing = [f"{sp.prog} {a.dest}" for sp in subparsers(build_parser()) for a in sp._actions
               if not a.option_strings and not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, missing


def test_values_complete_from_the_home_in_bash(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_gate.ipynb", "00_gate", "rb.gate('maintenance-on', 'Is maintenance mode on?')\n"
                   "print('past the gate')")
    write_steps(nb, [("00_gate.ipynb", "gate")])
    assert hcbpg("run", env).returncode == 3  # waits at its gate
    (run,) = [p for p in (home / "outputs" / env).iterdir() if p.is_dir()]
    rid = run.name.split("_", 1)[1]
    assert hcbpg("--complete", "envs").stdout.split() == ["test"]
    assert hcbpg("--complete", "runs").stdout.split() == [rid]
    assert hcbpg("--complete", "gates").stdout.split() == ["maintenance-on"]
    assert hcbpg("--complete", "steps").stdout.split() == ["00", "00_gate"]
    assert hcbpg("--complete", "nonsense").returncode == 2
    script = hcbpg("--print-completion", "bash").stdout
    assert "_shtab_hcbpg_runs" in script and "hcbpg --complete" in script
    # the real bash, with the script sourced: `hcbpg approve <TAB>` offers the run, its gate after it
    bindir = home / "bin"
    bindir.mkdir()
    (bindir / "hcbpg").write_text(f"#!/bin/sh\nexec {sys.executable} -m hcbpg.cli \"$@\"\n")
    (bindir / "hcbpg").chmod(0o755)
    (home / "completion.bash").write_text(script)
    env_vars = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    probe = (f"source {home / 'completion.bash'}; COMP_WORDS=(hcbpg approve ''); COMP_CWORD=2; "
             "_shtab_hcbpg; printf '%s\\n' \"${COMPREPLY[@]}\"; "
             f"COMP_WORDS=(hcbpg approve {rid} ''); COMP_CWORD=3; _shtab_hcbpg; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    out = subprocess.run([shutil.which("bash") or "/bin/bash", "-c", probe], capture_output=True, text=True,
                         env=env_vars, timeout=60)
    assert out.stdout.split() == [rid, "maintenance-on"], out.stdout + out.stderr
