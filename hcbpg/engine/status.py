"""``hcbpg status ENV``: the health report of step 15 from the command line, for cron or any monitor.

Runs on the operator machine and reaches every server over SSH.  Prints one row per server
and item (``--json``: the checks and the measurements) and exits 0 when nothing failed
(warnings allowed), 1 when an item failed, 2 on bad input (unknown environment, bad params).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from hcbpg.ops import health
from hcbpg.params import home, load_params


def _recorded_servers(env: str, params) -> list[dict]:  # noqa: ANN001
    """What step 01 recorded about the servers (public IPs), if any run recorded it."""
    try:
        from hcbpg.engine.runbook import Runbook  # noqa: PLC0415 - inside the try: any failure to read the runs falls back
        rb = Runbook(env, run_id="", run_dir="", dry_run=True, step="status", params=params, base=home())
        return list(rb.recall("servers", default=None) or [])
    except Exception:  # noqa: BLE001 - no runs yet, or unreadable ones: fall back to addresses in params
        return []


def cmd_status(args: argparse.Namespace) -> int:
    params = load_params(args.env, home())
    # paramiko logs a traceback for every unreachable host; the report says it in one line
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    hosts = health.open_hosts(params, recorded=_recorded_servers(args.env, params),
                              connect_timeout=args.connect_timeout)
    try:
        measurements = health.get_measurements(hosts, params)
    finally:
        for h in hosts.values():
            if h is not None:
                h.close()
    checks = health.evaluate(measurements, health.thresholds_from(params))
    code = health.exit_code(checks, strict=getattr(args, "strict", False))
    if args.json:
        json.dump({"environment": args.env, "exit_code": code,
                   "checks": health.report_rows(checks),
                   "measurements": [m.as_dict() for m in measurements]}, sys.stdout, indent=2, default=str)
        print()
    else:
        print(health.render_text(checks))
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status", help="health of every server: pass/warn/fail per item; exit 1 when an item failed",
        description="hcbpg status ENV: role, replication and lag, slots, last backup, archiving, connections, "
                    "disk and pending restarts of every server, judged against params health: thresholds. "
                    "Exit 0: nothing failed; 1: an item failed; 2: bad input.")
    p.add_argument("env", metavar="ENV")
    p.add_argument("--json", action="store_true", help="print checks and measurements as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too (for cron)")
    p.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="SSH connect timeout per server (default: params ssh.connect_timeout)")
    p.set_defaults(func=cmd_status)
