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
import time
from typing import TYPE_CHECKING

from hcbpg.errors import HcbpgError, UsageError
from hcbpg.params import Params, Server, home, load_params

if TYPE_CHECKING:
    from hcbpg.adapters.host import Host
    from hcbpg.outcome import Check

# the SSH, health and TLS stack is imported when a report is made, not by every `hcbpg` command line (each builds
# the parser, which registers this command): measured 0.28 s of CPU a process


def _recorded_servers(env: str, params) -> list[dict]:  # noqa: ANN001
    """The servers' addresses pinned with their host keys (never read from an executed notebook)."""
    from hcbpg.adapters import hostkeys  # noqa: PLC0415 - see above: imported when a report is made
    return list(hostkeys.pinned_servers(params))


def _cert_check(host: Host | None, params: Params, server: Server) -> Check:
    """The server's TLS certificate and when it expires (warn inside ``tls.renew_days``: run step 03)."""
    from hcbpg.ops import tls  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.outcome import Check  # noqa: PLC0415 - see above: imported when a report is made
    if host is None:
        return Check("TLS certificate", "fail", "unknown: server unreachable", server.name)
    try:
        return tls.check_server_cert(host, params, server)
    except HcbpgError as exc:
        return Check("TLS certificate", "fail", f"unknown: {exc.message.splitlines()[0][:200]}", server.name)


def cmd_status(args: argparse.Namespace) -> int:
    if not getattr(args, "watch", None):
        return _status_once(args)
    if args.watch <= 0:
        raise UsageError("--watch needs a positive number of seconds")
    code = 0
    tty = sys.stdout.isatty()
    try:
        while True:
            if tty:
                sys.stdout.write("\033[H\033[2J")  # clear the screen, like watch(1)
            print(f"hcbpg status {args.env}, every {args.watch:g}s (Ctrl-C stops): {time.strftime('%H:%M:%S')}")
            code = _status_once(args)
            sys.stdout.flush()
            if getattr(args, "count", None) is not None:
                args.count -= 1
                if args.count <= 0:
                    return code
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return code


def _status_once(args: argparse.Namespace) -> int:
    from hcbpg.desired import health_report  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.ops import health  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.steps.health import open_server_hosts  # noqa: PLC0415 - see above: imported when a report is made
    params = load_params(args.env, home())
    # paramiko logs a traceback for every unreachable host; the report says it in one line
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    hosts = open_server_hosts(params, recorded=_recorded_servers(args.env, params),
                              connect_timeout=args.connect_timeout)
    try:
        measurements = health.get_measurements(hosts, params)
        cert_checks = [_cert_check(hosts.get(s.name), params, s) for s in params.servers]
    finally:
        for h in hosts.values():
            if h is not None:
                h.close()
    checks = health_report.evaluate(measurements, health_report.thresholds_from(params)) + cert_checks
    code = health_report.exit_code(checks, strict=getattr(args, "strict", False))
    if args.json:
        json.dump({"environment": args.env, "exit_code": code,
                   "checks": health_report.report_rows(checks),
                   "measurements": [m.as_dict() for m in measurements]}, sys.stdout, indent=2, default=str)
        print()
    elif getattr(args, "all", False):
        print(health_report.render_text(checks))
    else:
        print(health_report.render_compact(measurements, checks))
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status", help="health of every server: pass/warn/fail per item; exit 1 when an item failed",
        description="hcbpg status ENV: one line per server (role, state, timeline, lag, slot retention, last "
                    "backup age, archiving, connections used/max, disk), then the items that are not PASS, "
                    "judged against params health: thresholds; --all: every item. "
                    "Exit 0: nothing failed; 1: an item failed; 2: bad input.",
        epilog="examples:\n  hcbpg status lab\n  hcbpg status production --watch 5\n  hcbpg status staging --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env", metavar="ENV")
    p.add_argument("--json", action="store_true", help="print checks and measurements as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too (for cron)")
    p.add_argument("--all", action="store_true", help="every item of every server, not only those not PASS")
    p.add_argument("--watch", type=float, metavar="N", help="show it again every N seconds until Ctrl-C")
    p.add_argument("--count", type=int, metavar="K", help=argparse.SUPPRESS)  # --watch K times (tests)
    p.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="SSH connect timeout per server (default: params ssh.connect_timeout)")
    p.set_defaults(func=cmd_status)
