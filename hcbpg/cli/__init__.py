"""The ``hcbpg`` command: executable runbooks from Heroku Postgres to self-hosted PostgreSQL 15.

Exit codes: 0 done; 1 a step (or a check, or the audit trail) failed; 2 bad input or params;
3 waiting for approval (``hcbpg approve``, then ``hcbpg resume``); 70 hcbpg itself failed (an
unexpected error: one line, and the path of a log holding the traceback); 130 interrupted (Ctrl-C or
SIGTERM: the step is recorded as interrupted; ``hcbpg resume`` continues).
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import shtab

from hcbpg import progress as hprogress
from hcbpg import secrets as hsecrets
from hcbpg.cli import completion, confirm
from hcbpg.cli.completion import HELP, complete_as
from hcbpg.display import text_table
from hcbpg.engine import audit
from hcbpg.engine import manifest as mf
from hcbpg.engine.runner import Runner, approve, change_signers, install_sigterm_as_interrupt
from hcbpg.engine.state import state_dir
from hcbpg.engine.terminal import LiveLines, colour_report, render_live_bar, skip_reason
from hcbpg.errors import HcbpgError, UsageError
from hcbpg.params import home, load_params
from hcbpg.values import printable

EXIT_CODES = ("exit codes: 0 done; 1 a step, a check or the audit trail failed; 2 bad input or params; "
              "3 waiting for approval; 70 hcbpg itself failed (unexpected error: see the log it names); "
              "130 interrupted (Ctrl-C, SIGTERM)")
#: an unexpected exception: a bug in hcbpg, not a failed step (sysexits' EX_SOFTWARE)
EXIT_INTERNAL = 70
#: options naming steps: an empty one would select nothing and so run everything
STEP_OPTIONS = (("start", "--from"), ("until", "--until"), ("only", "--only"))


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    print()


def _stamp(line: str) -> str:
    """``HH:MM:SS `` before a line (and the same indent before the lines that follow in it)."""
    t = time.strftime("%H:%M:%S")
    return t + " " + line.replace("\n", "\n" + " " * (len(t) + 1))


class Terminal:
    """Where ``hcbpg run`` writes while it runs: step lines (timestamped) to *out*; the live view of
    long work as a bar redrawn in place on a terminal (stderr), else a line every few seconds."""

    def __init__(self, out: Any = None, *, quiet: bool = False, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar_shown = False
        self.lines = LiveLines(self.line)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        self._clear_bar()
        print(_stamp(text), file=self.out, flush=True)

    def _clear_bar(self) -> None:
        if self.bar_shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.bar_shown = False

    def live(self, sample: hprogress.Sample, end: bool) -> None:
        if self.quiet:
            return
        if not self.tty:
            self.lines(sample, end)
            return
        if end:
            self._clear_bar()
            return
        import shutil  # noqa: PLC0415 - only a terminal needs its width
        width = shutil.get_terminal_size((100, 20)).columns
        sys.stderr.write("\r\033[K" + render_live_bar(sample, width - 1))  # rich's bar, scrubbed, cut to fit
        sys.stderr.flush()
        self.bar_shown = True


def cmd_params_check(args: argparse.Namespace) -> int:
    p = load_params(args.env, home())
    left = p.placeholders()
    if getattr(args, "json", False):
        _print_json({"environment": args.env, "valid": True,
                     "servers": [{"name": s.name, "private_ip": str(s.private_ip), "role": s.role} for s in p.servers],
                     "subnet": str(p.network.subnet), "database": p.postgres.database,
                     "secret_references": sorted(p.secret_refs()), "placeholders": left})
        return 0
    print(f"params/{args.env}.yaml is valid: {len(p.servers)} server(s) "
          f"({', '.join(f'{s.name} {s.private_ip} {s.role}' for s in p.servers)}), "
          f"subnet {p.network.subnet}, database {p.postgres.database}, "
          f"{len(p.secret_refs())} secret reference(s) (not resolved here; `hcbpg doctor {args.env}` and a run's "
          "preflight resolve them)")
    if left:  # valid as a file, not ready: preflight and doctor refuse them outside the lab
        print(f"but {len(left)} placeholder(s) are left to edit (preflight and `hcbpg doctor {args.env}` refuse "
              "them outside the lab):")
        for key, value in left.items():
            print(f"  {key}: {value}")
    return 0


def _runner(args: argparse.Namespace, **kw):  # noqa: ANN202
    install_sigterm_as_interrupt()
    quiet = getattr(args, "quiet", False)
    as_json = getattr(args, "json", False)
    # with --json, stdout holds the JSON alone: what the run shows meanwhile goes to stderr
    term = Terminal(sys.stderr if as_json else sys.stdout, quiet=quiet)
    verbose = getattr(args, "verbose", False)
    # -v: cell output to the terminal as it comes (papermill's stdout_file/stderr_file, scrubbed) and,
    # as before, to the run log (log_output: papermill's logger has only the run log's handler)
    # one progress bar: hcbpg's own (term.live, on a terminal); papermill's cell bar would fight it on one line
    return Runner(progress_bar=False, log_output=verbose, show_diff=getattr(args, "diff", False),
                  stream_cells=verbose and not quiet, progress=term.line, live=term.live, **kw)


def _run_json(result) -> dict[str, Any]:  # noqa: ANN001
    """A run's end as JSON: status, exit code, each step's changes and checks, the message."""
    data = result.run.read()
    steps = []
    for s in data["steps"]:
        summary = s.get("summary") or {}
        steps.append({"key": s["key"], "title": s.get("title"), "status": s["status"],
                      "skip_reason": skip_reason(s) or None,
                      "changes": s.get("changes"), "changed": summary.get("changed", []),
                      "checks": s.get("checks") or summary.get("checks") or {},
                      "duration_s": s.get("duration_s")})
    return {"run_id": data["run_id"], "environment": data["environment"], "mode": data["mode"],
            "dry_run": data["dry_run"], "status": result.status, "exit_code": result.exit_code,
            "steps": steps, "gates": data.get("gates", {}), "record": str(result.run.path),
            "message": hsecrets.scrub(result.message)}


def _finish(result, args: argparse.Namespace | None = None) -> int:  # noqa: ANN001
    if args is not None and getattr(args, "json", False):
        _print_json(_run_json(result))
    else:  # the statuses in colour on a terminal only: a log or a pipe gets the message byte for byte
        print(colour_report(result.message, color=sys.stdout.isatty()))
    return result.exit_code


def cmd_run(args: argparse.Namespace) -> int:
    from hcbpg.engine import catalogue  # noqa: PLC0415 - only a run reads the catalogue here

    params = load_params(args.env, home())
    plan_file = Path(args.plan) if args.plan else None
    if plan_file is not None:  # the plan's steps (verified again by the runner before anything runs)
        keys = _plan_steps_said(plan_file)
    else:
        keys = [s.key for s in catalogue.select(catalogue.load_steps_for(params),
                                                start=args.start, until=args.until, only=args.only)]
    confirm.confirm_run(params, args.env, keys, what=f"hcbpg run {args.env}", yes=args.yes,
                        echo=_err if getattr(args, "json", False) else print)
    return _finish(_runner(args).start(args.env, start=args.start, until=args.until, only=args.only,
                                       inputs=args.inputs, plan_file=plan_file), args)


def _plan_steps_said(path: Path) -> list[str]:
    """The steps a plan file names, for the confirmation only (not believed: the runner verifies the file)."""
    try:
        steps = json.loads(path.read_text())["selection"]["steps"]
        return [printable(str(k))[:80] for k in steps][:100]  # shown before the file is verified: escaped, short
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is not an hcbpg plan (or cannot be read)",
                         hint="Give the file `hcbpg plan --out` wrote.") from None


def cmd_plan(args: argparse.Namespace) -> int:
    runner = _runner(args)
    result = runner.start(args.env, dry_run=True, start=args.start, until=args.until, only=args.only,
                          inputs=args.inputs)
    if args.out and result.status == "succeeded":
        result.message += "\n" + runner.save_plan(result, Path(args.out))
    elif args.out:
        result.message += f"\nNo plan saved to {args.out}: the plan did not succeed."
    return _finish(result, args)


def cmd_resume(args: argparse.Namespace) -> int:
    run = mf.find_run(home(), args.run_id)
    data = run.read()
    left = [s["key"] for s in data.get("steps", []) if s.get("status") not in mf.DONE]
    confirm.confirm_run(load_params(run.env, home()), run.env, left, what=f"hcbpg resume {run.run_id}",
                        yes=args.yes or bool(data.get("dry_run")), echo=_err if getattr(args, "json", False) else print)
    return _finish(_runner(args).resume(args.run_id), args)


def _err(line: str) -> None:
    print(line, file=sys.stderr)


def cmd_approve(args: argparse.Namespace) -> int:
    run = approve(args.run_id, args.gate, note=args.note)
    # who the record names: the signing key's principal (the allowed-signers file), not the OS user
    gates = run.read()["gates"]
    args.gate = mf.gate_named(args.gate, gates)
    g = gates[args.gate]
    proof = g.get("proof") or {}
    print(f"gate '{args.gate}' of run {run.run_id} approved by {g['approved_by']} (signed with "
          f"{proof.get('key_fingerprint', 'no key')}; OS user {mf.operator_name()}).\n"
          f"Continue with: hcbpg resume {run.run_id}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        _print_json(audit.runs_json(home(), args.env))
        return 0
    rows = audit.runs_table(home(), args.env)
    print(text_table(rows) if rows else "no runs")
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    """The runbook of ENV in order (its source.transfer's), then the steps run only with --only: what each
    may change and the gates it asks for."""
    from hcbpg.engine import catalogue  # noqa: PLC0415 - only this command reads the catalogue here

    params = load_params(args.env, home())
    transfer = catalogue.transfer_of(params)
    steps = sorted(catalogue.load_steps_for(params), key=lambda s: s.on_demand)  # the runbook's order first
    order = {s.key: n for n, s in enumerate(steps, 1) if not s.on_demand}
    if getattr(args, "json", False):
        _print_json({"environment": args.env, "transfer": transfer,
                     "steps": [{"key": s.key, "title": s.title, "on_demand": s.on_demand, "order": order.get(s.key),
                                "changes": s.changes, "gates": list(s.gates), "inputs": list(s.inputs)}
                               for s in steps]})
        return 0
    print(f"The runbook of {args.env} (source.transfer: {transfer}), in order; on-demand steps run with --only:")
    print(text_table([{"when": str(order[s.key]) if s.key in order else "on demand (--only)", "step": s.key,
                       "gates": ", ".join(s.gates) or "-", "inputs": ", ".join(f"-p {i}=" for i in s.inputs) or "-",
                       "changes": s.changes or "-"} for s in steps]))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    problems = audit.verify(home(), args.env)
    if getattr(args, "json", False):
        _print_json({"environment": args.env, "verified": not problems,
                     "runs": len(mf.list_runs(home(), args.env)), "problems": problems})
        return 1 if problems else 0
    if problems:
        print(f"audit trail does NOT verify ({len(problems)} problem(s)); first: {problems[0]}")
        for p in problems[1:]:
            print(f"  also: {p}")
        return 1
    n = len(mf.list_runs(home(), args.env))
    print(f"audit trail verified: {n} run(s){' of ' + args.env if args.env else ''}, every hash and link matches")
    return 0


def cmd_audit_signers(args: argparse.Namespace) -> int:
    run = change_signers(args.env)
    change = run.read()["signers_change"]
    print(f"the change of who may sign {args.env} ({change['change']}) is recorded in run {run.run_id}, signed by "
          f"{mf.operator_name()}; commit it with the allowed-signers file")
    return 0


def cmd_audit_html(args: argparse.Namespace) -> int:
    index = audit.render_html(mf.find_run(home(), args.run_id), code=not getattr(args, "no_code", False))
    print(f"wrote {index}")
    return 0


def _sub(sub: argparse._SubParsersAction, name: str, helptext: str, example: str,
         description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with an example and the exit codes."""
    return sub.add_parser(name, help=helptext, description=description or helptext,
                          epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _version() -> str:
    try:
        return metadata.version("hcbpg")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hcbpg", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  hcbpg params check lab\n  hcbpg doctor production\n  hcbpg plan lab\n"
                                        "  hcbpg run lab -v\n"
                                        "  hcbpg status lab --watch 5\n"
                                        "  hcbpg --print-completion bash > /etc/bash_completion.d/hcbpg")
    ap.add_argument("--version", action="version", version=f"hcbpg {_version()}")
    shtab.add_argument_to(ap, ["--print-completion"], help="print a shell completion script",
                          preamble=completion.PREAMBLE)
    sub = ap.add_subparsers(dest="command", required=True)

    pp = _sub(sub, "params", "check params", "hcbpg params check lab").add_subparsers(dest="sub", required=True)
    c = _sub(pp, "check", "validate params/ENV.yaml (exit 2 naming the key on error)", "hcbpg params check lab --json")
    complete_as(c.add_argument("env", help=HELP["env"]), "envs")
    c.add_argument("--json", action="store_true", help="print the servers, subnet, database and secret references")
    c.set_defaults(func=cmd_params_check)

    for name, func, helptext, example in (
            ("run", cmd_run, "run the runbook's steps in order", "hcbpg run lab --from 05 --until 07 -v"),
            ("plan", cmd_plan, "dry run: show what every step would change", "hcbpg plan staging --json")):
        r = _sub(sub, name, helptext, example)
        complete_as(r.add_argument("env", help=HELP["env"]), "envs")
        complete_as(r.add_argument("--from", dest="start", metavar="STEP", help="start at this step: " + HELP["step"]),
                    "steps")
        complete_as(r.add_argument("--until", metavar="STEP", help="stop after this step"), "steps")
        complete_as(r.add_argument("--only", metavar="STEP", help="only these steps (comma-separated); on-demand "
                                   "steps run only this way"), "steps")
        r.add_argument("-v", "--verbose", action="store_true",
                       help="show every cell's output (scrubbed) in the terminal as it comes")
        r.add_argument("-q", "--quiet", action="store_true", help="print only the end: recap and what to do next")
        r.add_argument("--json", action="store_true",
                       help="print the end as JSON (steps, changes, checks, gates) on stdout; lines go to stderr")
        r.add_argument("-p", "--input", dest="inputs", action="append", default=[], metavar="NAME=VALUE",
                       help="an input of a selected step (`hcbpg steps ENV` lists them), e.g. -p rotate_roles=metabase; "
                            "recorded with the run")
        r.add_argument("--diff", action="store_true",
                       help="print each change with its diff after each step (what a plan would change, what a run "
                            "changed)")
        if name == "run":
            r.add_argument("-y", "--yes", action="store_true",
                           help="do not ask for the environment's name (any environment but the lab asks)")
            r.add_argument("--plan", metavar="FILE",
                           help="apply exactly this saved plan (`hcbpg plan ENV --out FILE`): refused unless it is "
                                "signed by an allowed signer and planning it again now gives the same changes")
        else:
            r.add_argument("--out", metavar="FILE",
                           help="save the plan, signed with your key, for `hcbpg run ENV --plan FILE`")
        r.set_defaults(func=func)

    r = _sub(sub, "resume", "continue a failed, interrupted or waiting run", "hcbpg resume 6f0c2a1e -v")
    complete_as(r.add_argument("run_id", help=HELP["run_id"]), "runs")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="show every cell's output (scrubbed) in the terminal as it comes")
    r.add_argument("-q", "--quiet", action="store_true", help="print only the end: recap and what to do next")
    r.add_argument("--json", action="store_true", help="print the end as JSON on stdout")
    r.add_argument("-y", "--yes", action="store_true",
                   help="do not ask for the environment's name (any environment but the lab asks)")
    r.set_defaults(func=cmd_resume)

    a = _sub(sub, "approve", "approve a gate of a waiting run",
             "hcbpg approve 6f0c2a1e maintenance-on --note 'app in maintenance, checked'")
    complete_as(a.add_argument("run_id", help=HELP["run_id"]), "runs")
    complete_as(a.add_argument("gate", help=HELP["gate"]), "gates")
    a.add_argument("--note")
    a.set_defaults(func=cmd_approve)

    r = _sub(sub, "steps", "list the runbook's steps for ENV: order, what each changes, its gates",
             "hcbpg steps production --json")
    complete_as(r.add_argument("env", help=HELP["env"] + "; its source.transfer orders the steps"), "envs")
    r.add_argument("--json", action="store_true", help="print the steps as JSON")
    r.set_defaults(func=cmd_steps)

    r = _sub(sub, "runs", "list runs (one line each: status, steps done, changes)", "hcbpg runs lab --json")
    complete_as(r.add_argument("env", nargs="?", help=HELP["env"] + " (default: every one)"), "envs")
    r.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    r.set_defaults(func=cmd_runs)

    au = _sub(sub, "audit", "verify or render the audit trail",
              "hcbpg audit verify production").add_subparsers(dest="sub", required=True)
    v = _sub(au, "verify", "check every run's hashes and the chain between runs (exit 1 on a problem)",
             "hcbpg audit verify production --json")
    complete_as(v.add_argument("env", nargs="?", help=HELP["env"] + " (default: every one)"), "envs")
    v.add_argument("--json", action="store_true", help="print verified, runs and problems as JSON")
    v.set_defaults(func=cmd_audit_verify)
    h = _sub(au, "html", "render a run's notebooks and an index (each step's checks and changes) to HTML",
             "hcbpg audit html 6f0c2a1e --no-code")
    complete_as(h.add_argument("run_id", help=HELP["run_id"]), "runs")
    h.add_argument("--no-code", action="store_true", help="leave the code cells out (for reviewers)")
    h.set_defaults(func=cmd_audit_html)
    sg = _sub(au, "signers", "record that the allowed-signers file changed, signed by a key allowed before it",
              "hcbpg audit signers production")
    complete_as(sg.add_argument("env", help=HELP["env"]), "envs")
    sg.set_defaults(func=cmd_audit_signers)

    for mod in ("hcbpg.cli.lab", "hcbpg.cli.rehearse", "hcbpg.cli.lock", "hcbpg.engine.status", "hcbpg.engine.doctor",
                "hcbpg.engine.guide"):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue  # that part of hcbpg is not installed
            raise
        register: Callable[[argparse._SubParsersAction], None] = module.register
        register(sub)
    if "doctor" in sub.choices:  # its ENV completes as every other command's (the engine does not know the CLI's kinds)
        complete_as(next(a for a in sub.choices["doctor"]._actions if a.dest == "env"), "envs")
    _add_epilogs(ap)
    return ap


#: examples for the subcommands that other modules register without one
EXAMPLES = {
    "hcbpg lab": "hcbpg lab up",
    "hcbpg lab up": "hcbpg lab up",
    "hcbpg lab status": "hcbpg lab status --json",
    "hcbpg lab down": "hcbpg lab down",
    "hcbpg rehearse": "hcbpg rehearse --keep",
    "hcbpg lock": "hcbpg lock production   (a stale one: hcbpg lock production --break RUN_ID)",
    "hcbpg guide": "hcbpg guide staging --from 03 --until 03   (then: hcbpg guide finish RUN_ID)",
}


def _add_epilogs(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's --help ends with an example (its usage line, when it gave none) and the exit codes."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                if not p.epilog:
                    example = EXAMPLES.get(p.prog) or f"{p.prog} {_example_args(p)}".rstrip()
                    p.epilog = f"example:\n  {example}\n\n{EXIT_CODES}"
                    p.formatter_class = argparse.RawDescriptionHelpFormatter
                elif EXIT_CODES not in p.epilog:
                    p.epilog += f"\n\n{EXIT_CODES}"
                _add_epilogs(p)


def _example_args(p: argparse.ArgumentParser) -> str:
    """``lab`` for an ENV argument, ``RUN_ID`` for a run id: the positional arguments of an example."""
    words = []
    for a in p._actions:
        if a.option_strings or isinstance(a, argparse._SubParsersAction):
            continue
        label = a.metavar or a.dest
        name = label.upper() if isinstance(label, str) else ""
        words.append("lab" if name in ("ENV", "ENVIRONMENT") else name)
    return " ".join(w for w in words if w)


def check_step_options(args: argparse.Namespace) -> None:
    """Refuse an empty or blank ``--from/--until/--only`` (UsageError): it cannot mean "every step"."""
    for dest, flag in STEP_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None and not value.strip():
            raise UsageError(f"{flag} is empty: name a step (its number, e.g. 07, or its key)",
                             hint=f"Leave {flag} out to run every step of the runbook.")
        if dest == "only" and value and any(not part.strip() for part in value.split(",")):
            raise UsageError(f"--only {value!r} has an empty step name between its commas")


def write_crash_log(exc: BaseException, argv: Sequence[str] | None) -> Path:
    """The traceback of an unexpected error, scrubbed, in a 0600 file in hcbpg's state dir (outside outputs/)."""
    text = hsecrets.scrub(f"hcbpg {_version()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
                          f"pid {os.getpid()}\nargv: {list(sys.argv[1:] if argv is None else argv)}\n\n"
                          + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    name = f"crash-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.log"
    for folder in (state_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path
    raise OSError("no directory to write the traceback to")


def _report_error(args: argparse.Namespace | None, message: str, exit_code: int, **extra: str) -> int:
    """The error on stderr, and with --json as ``{"error", "exit_code", ...}`` on stdout too."""
    print(f"hcbpg: {message}", file=sys.stderr)
    if args is not None and getattr(args, "json", False):  # a script reading stdout gets the error as JSON too
        _print_json({"error": message, "exit_code": exit_code, **extra})
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--complete"] and len(argv) == 2:  # the completion script asks for values (hidden)
        return completion.print_values(argv[1])
    # `kill -USR1 PID` of an hcbpg that seems stuck prints where each of its threads waits (file, line and
    # function names only: no value, so no secret) on its stderr, and it goes on
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, OSError, ValueError):  # stderr without a file descriptor (called in-process, captured)
        pass
    try:
        ap = build_parser()
        args = ap.parse_args(argv)
        check_step_options(args)
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, so that a reader gone (BrokenPipeError) is told apart from a bug
        return code
    except HcbpgError as exc:
        return _report_error(args, hsecrets.scrub(str(exc)), exc.exit_code)
    except KeyboardInterrupt:
        print("hcbpg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hcbpg runs --json | head`: the reader left, which is not a bug (Python's advice:
        # point stdout at devnull so the interpreter's final flush does not raise again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a line and a log
        first = (hsecrets.scrub(str(exc)).strip().splitlines() or [""])[0][:300]
        what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        try:
            log = str(write_crash_log(exc, argv))
        except OSError as log_exc:
            log = f"(not written: {log_exc})"
        return _report_error(args, f"unexpected error ({what}); this is a bug in hcbpg, the traceback is in {log}",
                             EXIT_INTERNAL, log=log)


if __name__ == "__main__":
    sys.exit(main())
