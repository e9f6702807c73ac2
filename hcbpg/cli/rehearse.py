"""``hcbpg rehearse``: bring the lab up, run the whole runbook against it, summarise, tear it down.

Gates are approved automatically and recorded as approved by the rehearsal, so the audit
record of a rehearsal reads like a production run's, with an honest approver.
"""

from __future__ import annotations

import argparse
import time

from hcbpg.engine import manifest as mf
from hcbpg.engine.runner import Runner, install_sigterm_as_interrupt
from hcbpg.params import home

APPROVER = "hcbpg rehearse (automatic)"


def rehearse(*, keep: bool = False, source_rows: int | None = None, source_mb: int | None = None,
             start: str | None = None, until: str | None = None, verbose: bool = False) -> int:
    from hcbpg.lab import Lab  # noqa: PLC0415 - the lab loads only for `hcbpg rehearse`

    install_sigterm_as_interrupt()
    lab = Lab()
    t0 = time.monotonic()
    print("lab up …", flush=True)
    status = lab.up(source_rows=source_rows, source_mb=source_mb)
    t_lab = time.monotonic() - t0
    print(f"lab up in {t_lab:.1f}s: " + ", ".join(f"{h['name']} {h['ip']}" for h in status["hosts"]), flush=True)
    result = None
    try:
        runner = Runner(auto_approve=APPROVER, log_output=verbose, progress_bar=False)
        result = runner.start("lab", start=start, until=until)
        print(result.message)
        _print_summary(result.run, t_lab, time.monotonic() - t0)
        return result.exit_code
    finally:
        if keep:
            print("lab kept (--keep): `hcbpg lab status` shows it, `hcbpg lab down` removes it")
        else:
            t1 = time.monotonic()
            lab.down()
            print(f"lab down in {time.monotonic() - t1:.1f}s")


def _print_summary(run: mf.Run, t_lab: float, total: float) -> None:
    data = run.read()
    steps = data["steps"]
    changes = sum(s.get("changes") or 0 for s in steps)
    ok = sum(1 for s in steps if s["status"] == "succeeded")
    approvals = [f"{g} ({v.get('approved_by')})" for g, v in data.get("gates", {}).items() if v.get("approved_at")]
    print(f"\nRehearsal summary: {ok}/{len(steps)} steps succeeded, {changes} change(s), "
          f"lab up {t_lab:.1f}s, total {total:.1f}s")
    if approvals:
        print("Gates approved by the rehearsal: " + ", ".join(approvals))
    if data.get("downtime"):
        d = data["downtime"]
        print(f"Downtime (maintenance on → traffic on): {d.get('total_s', '?')} s")
    rel = run.path.relative_to(home()) if run.path.is_relative_to(home()) else run.path
    print(f"Audit trail: {rel} (hcbpg audit html {run.run_id} renders it)")


def cmd_rehearse(args: argparse.Namespace) -> int:
    return rehearse(keep=args.keep, source_rows=args.source_rows, source_mb=args.source_mb,
                    start=args.start, until=args.until, verbose=args.verbose)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rehearse", help="lab up, the whole runbook against it, summary, lab down")
    r.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--source-rows", type=int, help="rows of the Heroku-like source's users table")
    size.add_argument("--source-mb", type=int, help="approximate size of the source database")
    r.add_argument("--from", dest="start", metavar="STEP")
    r.add_argument("--until", metavar="STEP")
    r.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
    r.set_defaults(func=cmd_rehearse)


__all__ = ["rehearse", "register", "APPROVER"]
