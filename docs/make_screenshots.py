"""The README's pictures from a real rehearsal's record: ``docs/health-figure.png`` (step 15's figure, drawn by
the current code from the numbers the run's 15_health notebook recorded) and ``docs/audit-index.png`` (the top
of the run's HTML audit index: the timeline, the totals and the cutover window).

    .venv/bin/python docs/make_screenshots.py [RUN_DIR]

RUN_DIR: a run directory (default: the newest succeeded run under outputs/lab/ with a 15_health notebook, as
``hcbpg rehearse`` leaves it). The run's record is not touched: its HTML is rendered from a copy. Needs the
Debian chromium (/usr/bin/chromium) and playwright (the test extra).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def newest_rehearsal() -> Path:
    """The newest succeeded lab run with a health step."""
    for run in sorted((REPO / "outputs" / "lab").glob("*_*"), reverse=True):
        try:
            data = json.loads((run / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if data.get("status") == "succeeded" and (run / "15_health.ipynb").is_file():
            return run
    raise SystemExit("no succeeded lab run with 15_health under outputs/lab: run `hcbpg rehearse` first")


def recorded_figure_data(run: Path) -> dict:
    """The figure's numbers step 15 recorded (scrap ``health``, key ``figures``)."""
    nb = json.loads((run / "15_health.ipynb").read_text())
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            scrap = out.get("data", {}).get("application/scrapbook.scrap.json+json")
            if scrap and scrap.get("name") == "health":
                return scrap["data"]["figures"]
    raise SystemExit(f"{run}/15_health.ipynb recorded no health figures")


def health_figure(run: Path, target: Path) -> None:
    import matplotlib  # noqa: PLC0415 - after sys.path has the repository (run as a script)

    matplotlib.use("Agg")
    from hcbpg.desired.health_figure import plot_data  # noqa: PLC0415 - after sys.path has the repository
    from hcbpg.params import load_params  # noqa: PLC0415 - after sys.path has the repository

    fig = plot_data(recorded_figure_data(run), load_params("lab", REPO).health)
    fig.suptitle(f"step 15 health figure, rehearsal run {run.name.split('_', 1)[1]}", x=0.01, ha="left",
                 fontsize=10, color="#555555")
    fig.savefig(target, dpi=90, bbox_inches="tight")


def audit_index(run: Path, target: Path) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - the test extra: only this picture needs it

    from hcbpg.engine import audit  # noqa: PLC0415 - after sys.path has the repository
    from hcbpg.engine import manifest as mf  # noqa: PLC0415 - after sys.path has the repository

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "home" / "outputs" / run.parent.name / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("html"))
        index = audit.render_html(mf.Run(copy), code=False)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 900}, device_scale_factor=1)
            page.goto(index.as_uri())
            last = page.locator("table.downtime, table.totals").last.bounding_box()
            height = (last["y"] + last["height"] + 16) if last else 900
            page.screenshot(path=str(target), full_page=True, clip={"x": 0, "y": 0, "width": 1000, "height": height})
            browser.close()


def main(argv: list[str]) -> int:
    run = Path(argv[0]).resolve() if argv else newest_rehearsal()
    sys.path.insert(0, str(REPO))
    health_figure(run, DOCS / "health-figure.png")
    audit_index(run, DOCS / "audit-index.png")
    print(f"from {run}: {DOCS / 'health-figure.png'}, {DOCS / 'audit-index.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
