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

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.errors import HcbpgError
from hcbpg.ops import health, tls
from hcbpg.outcome import Check
from hcbpg.params import Params, Server, home, load_params


def _recorded_servers(env: str, params) -> list[dict]:  # noqa: ANN001
    """The servers' addresses pinned with their host keys (never read from an executed notebook)."""
    return list(hostkeys.pinned_servers(params))


def _cert_check(host: Host | None, params: Params, server: Server) -> Check:
    """The server's TLS certificate and when it expires (warn inside ``tls.renew_days``: run step 03)."""
    if host is None:
        return Check("TLS certificate", "fail", "unknown: server unreachable", server.name)
    try:
        return tls.check_server_cert(host, params, server)
    except HcbpgError as exc:
        return Check("TLS certificate", "fail", f"unknown: {exc.message.splitlines()[0][:200]}", server.name)


def cmd_status(args: argparse.Namespace) -> int:
    params = load_params(args.env, home())
    # paramiko logs a traceback for every unreachable host; the report says it in one line
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    hosts = health.open_hosts(params, recorded=_recorded_servers(args.env, params),
                              connect_timeout=args.connect_timeout)
    try:
        measurements = health.get_measurements(hosts, params)
        cert_checks = [_cert_check(hosts.get(s.name), params, s) for s in params.servers]
    finally:
        for h in hosts.values():
            if h is not None:
                h.close()
    checks = health.evaluate(measurements, health.thresholds_from(params)) + cert_checks
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
