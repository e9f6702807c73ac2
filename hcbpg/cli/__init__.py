"""The ``hcbpg`` command.  Exit codes: 0 done, 1 a step failed, 2 bad input or params, 3 waiting for approval."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from hcbpg import secrets as hsecrets
from hcbpg.engine import audit
from hcbpg.engine import manifest as mf
from hcbpg.engine.runner import Runner, approve, install_sigterm_as_interrupt
from hcbpg.errors import HcbpgError
from hcbpg.params import home, load_params


def _print_table(rows: list[dict[str, str]]) -> None:
    if not rows:
        print("no runs")
        return
    cols = list(rows[0])
    w = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(w[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w[c]) for c in cols))


def cmd_params_check(args: argparse.Namespace) -> int:
    p = load_params(args.env, home())
    print(f"params/{args.env}.yaml is valid: {len(p.servers)} server(s) "
          f"({', '.join(f'{s.name} {s.private_ip} {s.role}' for s in p.servers)}), "
          f"subnet {p.network.subnet}, database {p.postgres.database}, "
          f"{len(p.secret_refs())} secret reference(s) (not resolved here; `hcbpg run` preflight resolves them)")
    return 0


def _runner(args: argparse.Namespace, **kw):  # noqa: ANN202
    install_sigterm_as_interrupt()
    return Runner(progress_bar=not getattr(args, "quiet", False) and sys.stderr.isatty(),
                  log_output=getattr(args, "verbose", False), **kw)


def _finish(result) -> int:  # noqa: ANN001
    print(result.message)
    return result.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    return _finish(_runner(args).start(args.env, start=args.start, until=args.until, only=args.only))


def cmd_plan(args: argparse.Namespace) -> int:
    return _finish(_runner(args).start(args.env, dry_run=True, start=args.start, until=args.until,
                                       only=args.only))


def cmd_resume(args: argparse.Namespace) -> int:
    return _finish(_runner(args).resume(args.run_id))


def cmd_approve(args: argparse.Namespace) -> int:
    run = approve(args.run_id, args.gate, note=args.note)
    print(f"gate '{args.gate}' of run {run.run_id} approved by {mf.operator_name()}.\n"
          f"Continue with: hcbpg resume {run.run_id}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    _print_table(audit.runs_table(home(), args.env))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    problems = audit.verify(home(), args.env)
    if problems:
        print(f"audit trail does NOT verify ({len(problems)} problem(s)); first: {problems[0]}")
        for p in problems[1:]:
            print(f"  also: {p}")
        return 1
    n = len(mf.list_runs(home(), args.env))
    print(f"audit trail verified: {n} run(s){' of ' + args.env if args.env else ''}, every hash and link matches")
    return 0


def cmd_audit_html(args: argparse.Namespace) -> int:
    index = audit.render_html(mf.find_run(home(), args.run_id))
    print(f"wrote {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hcbpg", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)

    pp = sub.add_parser("params", help="check params").add_subparsers(dest="sub", required=True)
    c = pp.add_parser("check", help="validate params/ENV.yaml")
    c.add_argument("env")
    c.set_defaults(func=cmd_params_check)

    for name, func, helptext in (("run", cmd_run, "run the runbook's steps in order"),
                                 ("plan", cmd_plan, "dry run: show what every step would change")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("env")
        r.add_argument("--from", dest="start", metavar="STEP")
        r.add_argument("--until", metavar="STEP")
        r.add_argument("--only", metavar="STEP")
        r.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
        r.set_defaults(func=func)

    r = sub.add_parser("resume", help="continue a failed, interrupted or waiting run")
    r.add_argument("run_id")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=cmd_resume)

    a = sub.add_parser("approve", help="approve a gate of a waiting run")
    a.add_argument("run_id")
    a.add_argument("gate")
    a.add_argument("--note")
    a.set_defaults(func=cmd_approve)

    r = sub.add_parser("runs", help="list runs")
    r.add_argument("env", nargs="?")
    r.set_defaults(func=cmd_runs)

    au = sub.add_parser("audit", help="verify or render the audit trail").add_subparsers(dest="sub", required=True)
    v = au.add_parser("verify")
    v.add_argument("env", nargs="?")
    v.set_defaults(func=cmd_audit_verify)
    h = au.add_parser("html")
    h.add_argument("run_id")
    h.set_defaults(func=cmd_audit_html)

    for mod in ("hcbpg.cli.lab", "hcbpg.cli.rehearse", "hcbpg.engine.status", "hcbpg.engine.guide"):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue  # that part of hcbpg is not installed
            raise
        register: Callable[[argparse._SubParsersAction], None] = module.register
        register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HcbpgError as exc:
        print(f"hcbpg: {hsecrets.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hcbpg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
