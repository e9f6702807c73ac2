"""``hcbpg lab up | status | down``: the rehearsal lab from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hcbpg.display import text_table
from hcbpg.errors import LabError


def _lab(args: argparse.Namespace, log: bool = True) -> Any:
    from hcbpg.lab.core import check_platform  # noqa: PLC0415 - the lab loads only for lab commands; production paths never import it
    from hcbpg.lab.lifecycle import Lab  # noqa: PLC0415 - the lab loads only for lab commands
    try:
        check_platform()
    except LabError as exc:
        exc.exit_code = 2
        raise
    return Lab(getattr(args, "lab_dir", None),
               log=(lambda m: print(f"lab: {m}", file=sys.stderr, flush=True)) if log else None)


def _print_status(st: dict[str, Any]) -> None:
    print(f"lab {st['lab_dir']}: {'up' if st['up'] else 'not up'} "
          f"(bridge {st['bridge']}, operator {st['operator_ip']}, subnet {st['subnet']})")
    rows = [{"host": x["name"], "role": x["role"], "ip": x["ip"], "state": "running" if x["running"] else "stopped",
             "services": " ".join(f"{k}:{'up' if v else 'down'}" for k, v in x["services"].items())}
            for x in st["hosts"]]
    rows += [{"host": f"service {name}", "role": "", "ip": st["s3_endpoint"] if name == "s3" else st["hcloud_endpoint"],
              "state": "running" if svc["running"] else "stopped", "services": ""}
             for name, svc in st["services"].items()]
    if rows:
        print("\n".join(f"  {line}".rstrip() for line in text_table(rows).splitlines()))
    print(f"  ssh key {st['ssh_key']} (user root), secrets {st['secrets_file']}, CA {st['ca_file']}")
    print(f"  outsider {st['outsider']['ip']} (netns {st['outsider']['netns']})")


def cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    st = lab.up(source_rows=args.source_rows, source_mb=args.source_mb)
    _print_status(st)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    lab = _lab(args, log=False)
    st = lab.status()
    if args.json:
        print(json.dumps(st, indent=2))
        return 0  # the JSON says whether the lab is up
    _print_status(st)
    return 0 if st["up"] else 1


def cmd_down(args: argparse.Namespace) -> int:
    lab = _lab(args)
    removed = lab.down(purge=args.purge)
    for r in removed:
        print(f"removed {r}")
    left = lab.leftovers()
    for x in left:
        print(f"still there: {x}", file=sys.stderr)
    return 1 if left else 0


def start_app_load(lab: Any, rate: float) -> str:
    """The lab's app writes on the source from the app host (:mod:`hcbpg.lab.app_load`) until stopped."""
    from hcbpg.lab import app_load  # noqa: PLC0415 - the lab loads only for lab commands
    from hcbpg.ops.migration import parse_source_url  # noqa: PLC0415 - only the lab's app needs the parser here

    conn = parse_source_url(lab.secret("source-url"))
    lab.exec("app", f"umask 077 && cat > {app_load.SERVICE_FILE}", input=app_load.render_service_file(conn),
             check=True)
    counts = lab.exec("source", ["psql", "-X", "-At", "-d", conn["dbname"], "-c",
                                 "SELECT (SELECT count(*) FROM users) || ' ' || (SELECT count(*) FROM transactions)"],
                      user="postgres", check=True).stdout.split()
    lab.exec("app", app_load.render_start(rate, users=int(counts[0]), transactions=int(counts[1])), check=True)
    return f"the lab's app writes on the source from the app host, {rate:g} inserts and updates a second"


def stop_app_load(lab: Any) -> str:
    """Maintenance mode on for the lab's app: its writes stop; returns once its last one is logged."""
    from hcbpg.lab import app_load  # noqa: PLC0415 - the lab loads only for lab commands

    lab.exec("app", app_load.STOP_COMMAND, check=True)
    return "the lab's app is in maintenance mode: its writes stopped"


def check_app_load(lab: Any, primary: str, database: str) -> tuple[Any, list[str]]:
    """What the lab's app wrote, and every write of it missing in *database* on lab host *primary*."""
    from hcbpg.lab import app_load  # noqa: PLC0415 - the lab loads only for lab commands

    log = app_load.parse_log(lab.exec("app", f"cat {app_load.LOG}", check=True).stdout)

    def query(q: str) -> Any:
        return json.loads(lab.exec(primary, ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", database],
                                   input=q + ";\n", user="postgres", check=True).stdout)

    return log, app_load.check_on_primary(log, query)


def cmd_app_load(args: argparse.Namespace) -> int:
    lab = _lab(args, log=False)
    if args.action == "start":
        print(start_app_load(lab, args.rate))
    elif args.action == "stop":
        print(stop_app_load(lab))
    else:
        log, lost = check_app_load(lab, args.primary, args.database)
        print(f"the lab's app wrote {log.writes} rows before maintenance-on; {len(lost)} missing on {args.primary}"
              + "".join(f"\n  {x}" for x in lost[:20]))
        return 1 if lost or not log.stopped else 0
    return 0


def register(subparsers: Any) -> None:
    """Add ``lab`` and its subcommands to the main parser's subparsers."""
    p = subparsers.add_parser("lab", help="the rehearsal lab: up, status, down (root, Linux)",
                              description=__doc__)
    p.add_argument("--lab-dir", default=None,
                   help="lab directory (default $HCBPG_LAB_DIR or /var/lib/hcbpg-lab)")
    sub = p.add_subparsers(dest="lab_command", required=True)
    up = sub.add_parser("up", help="bring the lab up (idempotent)")
    size = up.add_mutually_exclusive_group()
    size.add_argument("--source-rows", type=int, default=None,
                      help="rows in the Heroku-like source (default 20000)")
    size.add_argument("--source-mb", type=float, default=None,
                      help="approximate size of the source database in MB")
    up.set_defaults(func=cmd_up)
    st = sub.add_parser("status", help="hosts, addresses and services (exit 1 when not up)")
    st.add_argument("--json", action="store_true",
                    help="machine-readable; exits 0 and says \"up\": true/false")
    st.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="remove everything the lab made")
    down.add_argument("--purge", action="store_true",
                      help="also remove the lab's SSH key, secrets and CA")
    down.set_defaults(func=cmd_down)
    load = sub.add_parser("app-load", help="the lab's app writing on the source: start, stop (maintenance on), check")
    load.add_argument("action", choices=["start", "stop", "check"],
                      help="start the app's writes, stop them, or check every write reached the new primary")
    load.add_argument("--rate", type=float, default=2.0, help="inserts and updates a second (start)")
    load.add_argument("--primary", default="server-postgres-1", help="lab host of the new primary (check)")
    load.add_argument("--database", default="hcb_production", help="database on the new primary (check)")
    load.set_defaults(func=cmd_app_load)


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m hcbpg.cli.lab``) until the main CLI registers us."""
    ap = argparse.ArgumentParser(prog="hcbpg")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
