"""``hcbpg doctor ENV``: every prerequisite of a run, checked without changing anything, each with how to fix it.

The same checks as a run's start and its preflight, through the same functions (one code path): the signing key
and the allowed signers (:func:`hcbpg.engine.signing.check_can_sign`, which ``run`` and ``plan`` refuse on), the
audit record they would continue (:func:`hcbpg.engine.runner.refuse_unless_verified`), then step 00's checks
(:func:`hcbpg.steps.preflight.preflight`: placeholders, every secret reference, the operator's tools, the Heroku
CLI and its access to the app, the Hetzner token's rights, the operator's address against the admin ranges, each
host over SSH).  No run is created, no lock is taken, nothing is written.  Exit 2 when anything fails, else 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from hcbpg import secrets as hsecrets
from hcbpg.engine import signing
from hcbpg.engine.runner import refuse_unless_verified
from hcbpg.errors import HcbpgError
from hcbpg.outcome import Check
from hcbpg.params import Params, home, load_params

#: ``hcbpg doctor``'s exit code when a prerequisite is missing (bad input or setup, as the CLI's 2)
EXIT_MISSING = 2


def check_signing(params: Params, env: str, base: Path) -> list[Check]:
    """The operator's key signs and ``params/<env>.allowed_signers`` accepts it (``run`` and ``plan`` refuse
    otherwise, with the same reason); then the record a run would continue verifies."""
    trust = signing.trust_for(params, env, base)
    try:
        who = signing.check_can_sign(params, trust)
    except HcbpgError as exc:
        return [Check("signing key allowed", "fail", f"{exc.message} {exc.hint or ''}".strip(),
                      str(trust.allowed_signers))]
    out = [Check("signing key allowed", "pass", f"signs as {who.principal} ({who.fingerprint})",
                 str(trust.allowed_signers))]
    try:
        refuse_unless_verified(base, env, trust, doing=f"a run of {env} would be refused")
    except HcbpgError as exc:
        out.append(Check("audit record verifies", "fail", f"{exc.message} {exc.hint or ''}".strip(), env))
    else:
        out.append(Check("audit record verifies", "pass", "every signature, hash and link; the head and its anchor",
                         env))
    return out


def run_doctor(env: str, *, base: Path | None = None, operator_address: str | None = None) -> list[Check]:
    """Every prerequisite of a run of *env*, as check rows (see the module's docstring).  Read-only."""
    # step 00's code and the runbook (paramiko, psycopg, hcloud) are imported when the doctor runs, not each time
    # the CLI builds its parser (every command registers this one)
    from hcbpg.engine import runbook  # noqa: PLC0415 - see above
    from hcbpg.steps import preflight  # noqa: PLC0415 - see above
    b = base or home()
    params = load_params(env, b)  # invalid params: ParamsError, exit 2 with each key
    rb = runbook.Runbook(env, run_id="", run_dir="", dry_run=True, step="doctor", params=params, base=b)
    return check_signing(params, env, b) + preflight.preflight(rb, operator_address=operator_address)


def render_report(checks: list[Check], env: str, *, width: int | None = None) -> str:
    """One line per check (``FAIL  name on target: reason``), the reason whole (wrapped at *width* on a terminal,
    never cut), then what to do."""
    lines = []
    for c in checks:
        head = f"{c.status.upper():<5} {c.name}" + (f" on {c.target}" if c.target else "")
        text = f"{head}: {c.detail}" if c.detail else head
        lines += textwrap.wrap(text, width, subsequent_indent=" " * 6, break_long_words=False,
                               break_on_hyphens=False) if width else [text]
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    end = (f"{len(failed)} prerequisite(s) of {env} missing ({len(warned)} warning(s)): fix each FAIL above, then "
           f"run `hcbpg doctor {env}` again. Nothing was changed." if failed else
           f"every prerequisite of {env} holds ({len(checks)} check(s), {len(warned)} warning(s)); nothing was changed.")
    lines += [""] + (textwrap.wrap(end, width, break_on_hyphens=False) if width else [end])
    return hsecrets.scrub("\n".join(lines))


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = run_doctor(args.env, operator_address=args.from_address)
    failed = [c for c in checks if c.status == "fail"]
    if args.json:
        data: dict[str, Any] = {"environment": args.env, "ok": not failed,
                                "exit_code": EXIT_MISSING if failed else 0,
                                "checks": [{"name": c.name, "target": c.target, "status": c.status,
                                            "detail": c.detail} for c in checks]}
        print(hsecrets.scrub(json.dumps(data, indent=2)))
    else:
        import shutil  # noqa: PLC0415 - only a terminal needs its width
        width = shutil.get_terminal_size((100, 20)).columns - 1 if sys.stdout.isatty() else None
        print(render_report(checks, args.env, width=width))
    return EXIT_MISSING if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="check every prerequisite of a run of ENV without changing anything; exit 2 if one is missing",
        description="hcbpg doctor ENV: the signing key and allowed signers, the audit record, placeholders left in "
                    "params (refused outside the lab), every secret reference (resolved, never shown), the "
                    "operator's tools, the Heroku CLI logged in with access to the app (method heroku), the "
                    "Hetzner API token's rights, the operator's address against hetzner.admin_source_ranges, each "
                    "host over SSH: one line each, with how to fix it. The same checks as step 00 (preflight) "
                    "and the start of `hcbpg run`. Exit 0: every prerequisite holds (warnings allowed); 2: one "
                    "is missing or bad input.",
        epilog="examples:\n  hcbpg doctor production\n  hcbpg doctor production --from 198.51.100.7 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("env", metavar="ENV", help="the environment: params/ENV.yaml in the hcbpg home")
    p.add_argument("--from", dest="from_address", metavar="ADDRESS",
                   help="your public IP address, checked against hetzner.admin_source_ranges (default: "
                        "HCBPG_OPERATOR_ADDRESS, else this machine's own public address when it has one)")
    p.add_argument("--json", action="store_true", help="print environment, ok, exit_code and every check as JSON")
    p.set_defaults(func=cmd_doctor)
