"""A run that changes an environment other than the lab asks first (Terraform's ``apply``): it shows what
will run and wants the environment's name typed, unless ``--yes``.  Without a terminal to ask on and
without ``--yes``, nothing runs."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from hcbpg.errors import UsageError
from hcbpg.params import Params


def is_lab(params: Params) -> bool:
    """The lab (a site that builds its own hosts, as params/lab.yaml sets) asks nothing: it is made to be redone."""
    return params.site is not None and params.site.startswith("hcbpg.lab.")


def confirm_run(params: Params, env: str, steps: Sequence[str], *, what: str, yes: bool,
                ask: Callable[[str], str] | None = None, interactive: bool | None = None,
                echo: Callable[[str], None] = print) -> None:
    """Go on when *yes*, when *params* are the lab's, or when the operator types *env*; else UsageError."""
    if yes or is_lab(params):
        return
    echo(f"{what} changes {env}: {len(steps)} step(s): {', '.join(steps) or '-'}")
    tty = sys.stdin.isatty() if interactive is None else interactive
    if not tty:
        raise UsageError(f"{what} changes {env} and there is no terminal to confirm it on: nothing was run",
                         hint=f"Run it on a terminal and type {env} when asked, or pass --yes (after `hcbpg plan "
                              f"{env}` showed what it changes).")
    answer = (ask or input)(f"Type the environment's name ({env}) to go on: ")
    if answer.strip() != env:
        raise UsageError(f"not confirmed ({answer.strip()!r} is not {env!r}): nothing was run")
