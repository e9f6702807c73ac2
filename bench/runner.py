"""Runner overhead per notebook over a bare papermill.execute_notebook of the same notebooks.

Both sides run the same N small notebooks in the same process run, alternating, so machine
load affects both alike.  Prints per-notebook times, the overhead and the ratio.
Target: overhead at most 0.5 s per notebook.

Everything it needs is made in a temporary directory and removed at the end: HCBPG_HOME with params
and notebooks, the state dir, and a throwaway SSH key that signs the runs' record with its
allowed_signers (never the operator's key or record).  From a clone where ``bash scripts/test`` (or
``scripts/rehearse``) installed the virtualenv:

    .venv/bin/python bench/runner.py [--notebooks 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import papermill as pm  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.engine.runner import Runner

from nbutil import allowed_signer_line, make_params, make_signing_key, write_notebook, write_steps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebooks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hcbpg-bench-"))
    home = tmp / "home"
    (home / "params").mkdir(parents=True)
    nb_dir = home / "notebooks"
    nb_dir.mkdir()
    # a throwaway signing key, allowed in this home's params/allowed_signers: the runner signs every
    # run's record, and the operator's key and record are never touched
    key = make_signing_key(tmp / "signing", "bench-operator")
    (home / "params" / "allowed_signers").write_text(allowed_signer_line("bench-operator", key) + "\n")
    os.environ.update(HCBPG_HOME=str(home), HCBPG_NOTEBOOKS=str(nb_dir), HCBPG_STATE_DIR=str(tmp / "state"),
                      HCBPG_OPERATOR="bench-operator", HCBPG_SIGNING_KEY=str(key),
                      HCBPG_TEST_APP_PW="bench-password-123", HCBPG_TEST_TOKEN="bench-token-1234567")
    for var in ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS", "HCBPG_AUTO_APPROVE"):
        os.environ.pop(var, None)
    (home / "params" / "bench.yaml").write_text(make_params("bench"))
    names = []
    for i in range(args.notebooks):
        name = f"{i:02d}_step{i}"
        write_notebook(nb_dir / f"{name}.ipynb", name, "x = sum(range(10000))\nrb.record('x', x)")
        names.append((f"{name}.ipynb", f"step {i}"))
    write_steps(nb_dir, names)

    from hcbpg.engine.runner import Runner
    runner = Runner(progress=lambda line: None, progress_bar=False)

    bare_times, ours_times = [], []
    try:
        _rounds(args.rounds, names, nb_dir, tmp, runner, bare_times, ours_times)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bare, ours = statistics.median(bare_times), statistics.median(ours_times)
    print(f"notebooks per run: {len(names)}, rounds: {args.rounds}")
    print(f"bare papermill.execute_notebook: {bare:.3f} s/notebook "
          f"(rounds: {', '.join(f'{t:.3f}' for t in bare_times)})")
    print(f"hcbpg runner:                    {ours:.3f} s/notebook "
          f"(rounds: {', '.join(f'{t:.3f}' for t in ours_times)})")
    print(f"overhead: {ours - bare:+.3f} s/notebook (target <= 0.5 s); ratio ours/bare: {ours / bare:.2f}x")


def _rounds(rounds: int, names: list[tuple[str, str]], nb_dir: Path, tmp: Path, runner: "Runner",
            bare_times: list[float], ours_times: list[float]) -> None:
    """Each round: the notebooks by bare papermill, then the same by the runner (times per notebook)."""
    for r in range(rounds):
        out = tmp / f"bare{r}"
        out.mkdir()
        t0 = time.perf_counter()
        for nb, _ in names:
            pm.execute_notebook(str(nb_dir / nb), str(out / nb), progress_bar=False,
                                parameters={"env": "bench", "run_id": "", "run_dir": "", "dry_run": False})
        bare_times.append((time.perf_counter() - t0) / len(names))
        t0 = time.perf_counter()
        res = runner.start("bench")
        assert res.exit_code == 0, res.message
        ours_times.append((time.perf_counter() - t0) / len(names))


if __name__ == "__main__":
    main()
