"""``hcbpg lab up | status | down``: the rehearsal lab from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

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
    if st["hosts"]:
        print(f"  {'host':<20} {'role':<7} {'ip':<15} {'state':<8} services")
        for x in st["hosts"]:
            svc = " ".join(f"{k}:{'up' if v else 'down'}" for k, v in x["services"].items())
            print(f"  {x['name']:<20} {x['role']:<7} {x['ip']:<15} "
                  f"{'running' if x['running'] else 'stopped':<8} {svc}")
    for name, svc in st["services"].items():
        url = st["s3_endpoint"] if name == "s3" else st["hcloud_endpoint"]
        print(f"  service {name:<7} {url:<28} {'running' if svc['running'] else 'stopped'}")
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
