"""The fast tier's shared parts: operation specs on the recording double (state in → commands,
writes and Outcome out), in the manner of pyinfra's operation specs.

Each spec test says which public ``ensure_*`` of :mod:`hcbpg.ops` it covers and in which case:

    @covers("hcbpg.ops.config.ensure_pg_hba", "fresh", "second run", "dry run", "refusal")
    def test_pg_hba(...): ...

``tests/fast/test_coverage.py`` fails while a public ``ensure_*`` lacks a spec for one of
:data:`CASES`.  The cases:

- fresh: a server with nothing of ours yet (a :class:`RecordingHost` with the state of a fresh
  install, or an :class:`~hcbpg.adapters.dryrun.AbsentHost` where the server is not there) →
  the commands and writes expected, ``changed``;
- second run: the state the first run left → nothing run or written, not changed;
- dry run: a :class:`~hcbpg.adapters.dryrun.DryRunHost` over the fresh state → the same
  journal as the fresh run, nothing written on the double, ``changed`` and ``dry_run``;
- refusal: a precondition that does not hold (or a command that fails) → the error, and
  nothing changed (or what was changed put back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

#: the primary of :func:`params_data`
PRIMARY = {"name": "server-postgres-1", "private_ip": "10.0.1.5", "role": "primary"}


def params_data(*, servers: list[dict[str, Any]] | None = None, **sections: Any) -> dict[str, Any]:
    """The least params a spec needs (a lab environment, one primary ``server-postgres-1`` on 10.0.1.5, the
    token and the app's password by ``env:`` reference) with *sections* added, as the dict ``parse_params``
    reads; a new dict on each call."""
    data: dict[str, Any] = {
        "environment": "lab",
        "hetzner": {"token": "env:HCBPG_TEST_TOKEN", "ssh_public_key_file": "/dev/null"},
        "network": {"ip_range": "10.0.0.0/16", "subnet": "10.0.1.0/24"},
        "servers": [dict(s) for s in servers] if servers is not None else [dict(PRIMARY)],
        "postgres": {"app_role_password": "env:HCBPG_TEST_APP_PW"},
    }
    data.update(sections)
    return data


#: the cases every public ``ensure_*`` has a spec for
CASES = ("fresh", "second run", "dry run", "refusal")

#: qualified name of an ensure_* → the cases some test covers
COVERED: dict[str, set[str]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def covers(target: str, *cases: str) -> Callable[[F], F]:
    """Register that the decorated test covers *target* (``hcbpg.ops.module.ensure_x``) in *cases*."""
    unknown = set(cases) - set(CASES)
    if unknown or not cases:
        raise ValueError(f"covers({target!r}): cases must be among {CASES}, got {cases}")

    def mark(fn: F) -> F:
        COVERED.setdefault(target, set()).update(cases)
        return fn
    return mark
