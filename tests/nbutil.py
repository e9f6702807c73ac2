"""Helpers for tests: build throwaway notebooks and HCBPG_HOME trees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent


def hcbpg(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and stdout as an operator sees them)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "hcbpg.cli", *args], capture_output=True, text=True,
                          env=e, timeout=timeout)


PARAMS_CELL = 'env = "lab"\nrun_id = ""\nrun_dir = ""\ndry_run = False\n'


def write_notebook(path: Path, step: str, *cells: str, title: str = "test step") -> Path:
    """A runbook-shaped notebook: markdown, parameters cell, runbook.start, the given cells, finish."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell(PARAMS_CELL)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell(f"# {title}"), params,
                new_code_cell(f"from hcbpg import runbook\nrb = runbook.start(env, step={step!r}, "
                              "run_id=run_id, run_dir=run_dir, dry_run=dry_run)")]
    nb.cells += [new_code_cell(c) for c in cells]
    nb.cells.append(new_code_cell("rb.finish()"))
    nbformat.write(nb, path)
    return path


def write_steps(nb_dir: Path, steps: list[tuple[str, str]]) -> None:
    lines = ["steps:"]
    for notebook, title in steps:
        lines.append(f"  - {{notebook: {notebook}, title: {title!r}}}")
    (nb_dir / "steps.yaml").write_text("\n".join(lines) + "\n")


def make_params(env: str, *, app_password_ref: str = "env:HCBPG_TEST_APP_PW",
                token_ref: str = "env:HCBPG_TEST_TOKEN") -> str:
    return f"""environment: {env}
hetzner:
  token: {token_ref}
  ssh_public_key_file: /dev/null
servers:
  - {{name: server-postgres-1, private_ip: 10.0.1.5, role: primary}}
postgres:
  app_role_password: {app_password_ref}
"""
