"""Runner overhead per notebook over a bare papermill.execute_notebook of the same notebooks.

Both sides run the same N small notebooks in the same process run, alternating, so machine
load affects both alike.  Prints per-notebook times, the overhead and the ratio.
Target: overhead at most 0.5 s per notebook.

    python bench/runner.py [--notebooks 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import papermill as pm  # noqa: E402

from nbutil import make_params, write_notebook, write_steps  # noqa: E402


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
    os.environ.update(HCBPG_HOME=str(home), HCBPG_NOTEBOOKS=str(nb_dir), HCBPG_STATE_DIR=str(tmp / "state"),
                      HCBPG_TEST_APP_PW="bench-password-123", HCBPG_TEST_TOKEN="bench-token-1234567")
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
    for r in range(args.rounds):
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
    bare, ours = statistics.median(bare_times), statistics.median(ours_times)
    print(f"notebooks per run: {len(names)}, rounds: {args.rounds}")
    print(f"bare papermill.execute_notebook: {bare:.3f} s/notebook "
          f"(rounds: {', '.join(f'{t:.3f}' for t in bare_times)})")
    print(f"hcbpg runner:                    {ours:.3f} s/notebook "
          f"(rounds: {', '.join(f'{t:.3f}' for t in ours_times)})")
    print(f"overhead: {ours - bare:+.3f} s/notebook (target <= 0.5 s); ratio ours/bare: {ours / bare:.2f}x")


if __name__ == "__main__":
    main()
