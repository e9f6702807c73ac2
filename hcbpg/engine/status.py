"""``hcbpg status ENV``: the health report of step 15 from the command line, for cron or any monitor.

Runs on the operator machine and reaches every server over SSH, all at once (an incident's report comes within
the connect timeout even with every server down).  Prints one row per server and item (``--json``: the checks and
the measurements); a server that cannot be reached is one line saying why in plain words ("unreachable: no SSH
answer in 5 s", "connection refused", "host key changed", "SSH key refused") instead of each of its items.
Each server's archive age (the newest archived WAL, WARN past its ``archive_timeout`` plus a margin) is an item; with
an ``alerting:`` section in params the alerts Alertmanager holds on the jumpbox (read there over SSH, as step 15b
does) follow the table: "none firing", each one firing (a critical one an item that failed), or a WARN row saying
the monitor cannot be reached.
Exits 0 when nothing failed (warnings allowed), 1 when an item failed, 2 on bad input (unknown environment, bad
params).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
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


def _plain_reason(exc: BaseException, timeout: float) -> str:
    """Why a server could not be reached, in plain words (not paramiko's): what ``hcbpg status`` prints on the
    server's one line."""
    import errno  # noqa: PLC0415 - see above: imported when a report is made
    import socket  # noqa: PLC0415 - see above: imported when a report is made

    from hcbpg.errors import HostKeyError, HostUnreachable  # noqa: PLC0415 - see above
    if isinstance(exc, HostKeyError):
        if exc.expected:
            return (f"host key changed: offered {exc.offered}, pinned {' or '.join(exc.expected)}; nothing was sent "
                    "(a rebuilt server, or someone else at its address)")
        return f"host key not pinned: offered {exc.offered}; nothing was sent (step 01 pins it)"
    no_answer = f"no SSH answer in {timeout:g} s"
    cause = exc.__cause__ if isinstance(exc, HostUnreachable) else exc
    words = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "no route to host",
             errno.ENETUNREACH: "network unreachable", errno.ECONNRESET: "connection reset by the server",
             errno.ETIMEDOUT: no_answer}
    if cause is not None:
        name = type(cause).__name__
        if name == "AuthenticationException":
            return "SSH key refused"
        if name == "NoValidConnectionsError":
            errs = [e for e in getattr(cause, "errors", {}).values() if isinstance(e, OSError)]
            for e in errs:
                if e.errno in words:
                    return words[e.errno]
            return "connection refused" if not errs else (errs[0].strerror or str(errs[0])).lower()
        if isinstance(cause, socket.gaierror):
            return "address not found (DNS)"
        if isinstance(cause, (socket.timeout, TimeoutError)):
            return no_answer
        if isinstance(cause, EOFError):
            return "connection closed by the server before SSH began"
        if isinstance(cause, OSError) and cause.errno in words:
            return words[cause.errno]
        text = str(cause)
        if name == "SSHException" and any(w in text for w in ("banner", "No existing session", "timed out",
                                                                 "Negotiation timed out")):
            if any(w in text.lower() for w in ("reset", "eof", "closed")):
                return "connection closed by the server before SSH began"
            return no_answer
    message = exc.message if isinstance(exc, HcbpgError) else str(exc)
    return message.splitlines()[0][:200] if message else type(exc).__name__


def get_unreachable(hosts: Mapping[str, Host], timeout: float) -> dict[str, str]:
    """Connect to every host at once (threads); the servers that gave no SSH session within *timeout* (plus a
    quarter of a second), each with the plain reason.  A host still connecting at the deadline is left to its
    thread (a daemon: it ends with the process) and said to give no answer."""
    return start_connecting(hosts, timeout)()


def start_connecting(hosts: Mapping[str, Host], timeout: float) -> Callable[[], dict[str, str]]:
    """:func:`get_unreachable` in two halves: the connections start now, the function returned waits for them
    (the caller does its own work, e.g. its imports, meanwhile)."""
    import threading  # noqa: PLC0415 - see above: imported when a report is made
    failed: dict[str, BaseException] = {}
    done: set[str] = set()

    def connect(name: str, host: Host) -> None:
        try:
            host.connect()
        except BaseException as exc:  # noqa: BLE001 - every way a connection fails is one line of the report
            failed[name] = exc
        finally:
            done.add(name)

    threads = [threading.Thread(target=connect, args=(n, h), name=f"status-connect-{n}", daemon=True)
               for n, h in hosts.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout + 0.25

    def wait_for_connections() -> dict[str, str]:
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        out: dict[str, str] = {}
        for name in hosts:
            if name in failed:
                out[name] = _plain_reason(failed[name], timeout)
            elif name not in done:
                out[name] = f"no SSH answer in {timeout:g} s"
        return out
    return wait_for_connections


def _open_hosts(params: Params, env: str, timeout: float) -> dict[str, Host]:
    """A Host per server, as step 15 opens them (:func:`hcbpg.steps.health.open_server_hosts`, whose module is
    imported while the connections are made): with a jumpbox in params at its private IP through the jumpbox
    (``desired.addresses.ssh_route``), else ``ssh_host``, else the address pinned with its host key, else the
    private IP; a refused key said at once, not after the retries for a server just provisioned."""
    from hcbpg.adapters.host import Host  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.desired.addresses import ssh_route  # noqa: PLC0415 - see above: imported when a report is made
    recorded = _recorded_servers(env, params)
    out: dict[str, Host] = {}
    for s in params.servers:
        out[s.name] = Host.from_params(params, s.name, ssh_route(params, s.name, recorded).address or s.private_ip,
                                       connect_timeout=timeout, command_timeout=120.0, echo=lambda line: None)
        out[s.name].auth_retry_waits = ()
        if (gateway := out[s.name].gateway) is not None:
            gateway.auth_retry_waits = ()
    return out


def _high_availability(up: Mapping[str, Host], params: Params) -> tuple[list[dict[str, str]] | None, list[Check]]:
    """Under Patroni: the cluster's rows (Member, Host, Role, State, TL, Lag) and its checks (a leader, the
    replicas streaming, the sync standby, maintenance mode, failsafe active), and etcd's members and quorum as
    the first reachable voter sees them.  (None, []) under the manual replication."""
    from hcbpg.desired import patroni as dp  # noqa: PLC0415 - see above: imported when a report is made
    if not dp.managed(params):
        return None, []
    from hcbpg.ops import etcd as ops_etcd  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.ops import patroni as ops_patroni  # noqa: PLC0415 - see above: imported when a report is made
    view = ops_patroni.get_cluster(up, params)
    checks = dp.check_cluster(view, params, statuses=ops_patroni.get_member_statuses(up, params))
    first = next(iter(up.values()), None)
    if first is not None:
        checks += ops_etcd.check_etcd(first, params)
    return (view.rows() if view is not None else []), checks


def _open_monitor(params: Params, timeout: float) -> tuple[str, Host | None, str | None]:
    """(the jumpbox's name, a Host for it, None) when params have an ``alerting:`` section and a jumpbox with an
    address; (name, None, why) when the monitor cannot be asked; ("", None, None) without the section (nothing
    to show).  Its address as step 15b reaches it (:func:`hcbpg.steps.targets.jumpbox_address`)."""
    if params.alerting is None:
        return "", None, None
    if params.jumpbox is None:
        return "jumpbox", None, "params name no jumpbox, where the monitor runs"
    from hcbpg.adapters.host import Host  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.steps.targets import jumpbox_address  # noqa: PLC0415 - see above: imported when a report is made
    name = params.jumpbox.name
    address = jumpbox_address(params)
    if address is None:
        return name, None, "the jumpbox has no SSH address (jumpbox.ssh_host unset, step 01 pinned none)"
    host = Host.from_params(params, name, address, connect_timeout=timeout, command_timeout=30.0,
                            echo=lambda line: None)
    host.auth_retry_waits = ()
    return name, host, None


def _get_alerts(monitor: Host | None, params: Params) -> tuple[list | None, str | None]:
    """(the alerts Alertmanager holds, None), or (None, why the monitor could not be asked)."""
    from hcbpg.ops import alerting as ops_alerting  # noqa: PLC0415 - see above: imported when a report is made
    if monitor is None:
        return None, "no SSH connection to the jumpbox"
    try:
        return ops_alerting.get_alerts(monitor, params), None
    except HcbpgError as exc:
        return None, exc.message.splitlines()[0][:300]


def _archive_checks(host: Host, params: Params) -> list[Check]:
    """The server's archive age as a row (none where nothing archives); a read that fails is a WARN row."""
    from hcbpg.desired import monitor_report  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.ops.archiver import get_archive_age  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.outcome import Check  # noqa: PLC0415 - see above: imported when a report is made
    try:
        row = monitor_report.check_archive_age(get_archive_age(host, params),
                                               monitor_report.alerting_thresholds(params))
    except HcbpgError as exc:
        return [Check(monitor_report.ARCHIVE_AGE_ITEM, "warn", f"unknown: {exc.message.splitlines()[-1][:200]}",
                      host.name)]
    return [row] if row is not None else []


def _status_once(args: argparse.Namespace) -> int:
    params = load_params(args.env, home())
    # paramiko logs a traceback for every unreachable host; the report says it in one line
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    timeout = args.connect_timeout or params.ssh.connect_timeout
    hosts = _open_hosts(params, args.env, timeout)
    monitor_name, monitor, monitor_error = _open_monitor(params, timeout)
    # every server at once: with all of them down the report comes within the connect timeout; the rest of the
    # report's stack is imported meanwhile
    wait_for_connections = start_connecting(hosts, timeout)
    wait_for_monitor = start_connecting({monitor_name: monitor} if monitor is not None else {}, timeout)
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - see above: imported when a report is made

    from hcbpg.desired import health_report, monitor_report  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.engine.terminal import colour_report  # noqa: PLC0415 - see above: imported when a report is made
    from hcbpg.ops import health, tls  # noqa: PLC0415, F401 - see above (tls: for _cert_check, imported now)
    from hcbpg.outcome import Check  # noqa: PLC0415 - see above: imported when a report is made
    down = wait_for_connections()
    up = {n: h for n, h in hosts.items() if n not in down}
    if monitor is not None and (monitor_down := wait_for_monitor()):
        monitor_error, monitor = f"the jumpbox {monitor_name}: {monitor_down[monitor_name]}", None
    alerts: list | None = None
    try:
        measurements = health.get_measurements(up, params)
        with ThreadPoolExecutor(max_workers=max(1, len(params.servers))) as pool:
            cert_checks = list(pool.map(lambda s: _cert_check(up.get(s.name), params, s),
                                        [s for s in params.servers if s.name in up]))
            archive_checks = [c for cs in pool.map(lambda h: _archive_checks(h, params),
                                                   [up[m.server] for m in measurements
                                                    if m.server in up and m.running]) for c in cs]
        cluster_rows, ha_checks = _high_availability(up, params)
        if monitor_name and monitor_error is None:
            alerts, monitor_error = _get_alerts(monitor, params)
    finally:
        for h in up.values():
            h.close()
        if monitor is not None:
            monitor.close()
    alert_checks = (monitor_report.check_alerts(alerts, monitor_name, error=monitor_error) if monitor_name else [])
    for m in measurements:
        if m.server in down:
            m.error = f"unreachable: {down[m.server]}"
    # a server that cannot be reached is one line (its items are not measured); the others are judged as
    # before, against every server (replication names the one that is missing)
    judged = health_report.evaluate(measurements, health_report.thresholds_from(params))
    checks: list[Check] = []
    for s in params.servers:
        if s.name in down:
            checks.append(Check("unreachable", "fail", down[s.name], s.name))
        else:
            checks += [c for c in judged if c.target == s.name]
    checks += ([c for c in judged if c.target not in {s.name for s in params.servers}] + cert_checks + ha_checks
               + archive_checks + alert_checks)
    code = health_report.exit_code(checks, strict=getattr(args, "strict", False))
    if args.json:
        json.dump({"environment": args.env, "exit_code": code,
                   "unreachable": down,
                   "checks": health_report.report_rows(checks),
                   **({"cluster": cluster_rows} if cluster_rows is not None else {}),
                   **({"alerts": None if alerts is None else [dataclasses.asdict(a) for a in alerts],
                       "monitor": {"host": monitor_name, "error": monitor_error}} if monitor_name else {}),
                   "measurements": [m.as_dict() for m in measurements]}, sys.stdout, indent=2, default=str)
        print()
        return code
    if cluster_rows:
        from hcbpg.display import render_table  # noqa: PLC0415 - see above: imported when a report is made
        print("Patroni cluster (as patronictl list shows it):\n" + render_table(cluster_rows)[1] + "\n")
    if getattr(args, "all", False):
        print(colour_report(health_report.render_text(checks), color=sys.stdout.isatty()))
    else:
        print(colour_report(health_report.render_compact(measurements, checks), color=sys.stdout.isatty()))
    if monitor_name:
        print("\n" + monitor_report.render_alerts(alerts, monitor_name, error=monitor_error))
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "status", help="health of every server: pass/warn/fail per item; exit 1 when an item failed",
        description="hcbpg status ENV: one line per server (role, state, timeline, lag, slot retention, last "
                    "backup age, archiving, connections used/max, disk), then the items that are not PASS, "
                    "judged against params health: thresholds (the archive's age against archive_timeout plus a "
                    "margin); a server that cannot be reached is one line saying why; with params alerting: the "
                    "alerts that fire on the jumpbox's Alertmanager (a critical one fails); "
                    "--all: every item. "
                    "Exit 0: nothing failed; 1: an item failed; 2: bad input.",
        epilog="examples:\n  hcbpg status lab\n  hcbpg status production --watch 5\n  hcbpg status staging --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env", metavar="ENV", help="the environment: params/ENV.yaml in the hcbpg home")
    p.add_argument("--json", action="store_true", help="print checks and measurements as JSON")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too (for cron)")
    p.add_argument("--all", action="store_true", help="every item of every server, not only those not PASS")
    p.add_argument("--watch", type=float, metavar="N", help="show it again every N seconds until Ctrl-C")
    p.add_argument("--count", type=int, metavar="K", help=argparse.SUPPRESS)  # --watch K times (tests)
    p.add_argument("--connect-timeout", type=float, default=None, metavar="S",
                   help="SSH connect timeout per server (default: params ssh.connect_timeout)")
    p.set_defaults(func=cmd_status)
