"""The cutover's own operations: the source quiet (waited for), the last write on the source (the
sentinel), and the app role's password rolled."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.psql import render
from hcbpg.desired.migration import ROLLBACK, check_source_quiet
from hcbpg.errors import VerificationFailed, WaitTimeout
from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.migration.source import get_source_sessions
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import scram
from hcbpg.pg.psql_output import JSON_MARK, parse_marked_json
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike
    from hcbpg.params import Params


def wait_for_source_quiet(source: "SourceLike", *, timeout: float = 120.0, interval: float = 0.5,
                          sleep: Callable[[float], None] = time.sleep,
                          clock: Callable[[], float] | None = None) -> Check:
    """Poll until no other client is connected to the source (processes take a moment to stop).

    Every half second: the wait is downtime (one query on pg_stat_activity each time)."""
    check: Check | None = None
    elapsed = 0.0
    # the clock is looked up at call time, so that a patched time.monotonic is seen
    for elapsed in polling_loop(  # noqa: B007 - the last elapsed time is reported after the loop
            timeout, interval=interval, sleep=sleep, clock=clock or time.monotonic):
        check = check_source_quiet(get_source_sessions(source))
        if check.ok:
            return check
    detail = check.detail if check is not None else "not looked at"
    raise WaitTimeout(
        f"the source still has other connections after {timeout:.0f}s: {detail}",
        what="no other connections on the source", timeout=timeout, elapsed=elapsed, last=detail,
        hint="Stop the remaining processes in Hatchbox (web, Sidekiq, cron, consoles), then run the "
             "step again. Nothing was changed yet.\n" + ROLLBACK)


def run_sentinel_write(source: "SourceLike", params: "Params", value: str) -> Outcome:
    """The runbook's last write on the source: UPDATE users SET full_name = ... WHERE id = 1803, read back."""
    src = params.source
    assert src is not None
    s = src.sentinel
    t, c = sql.Identifier(s.table), sql.Identifier(s.column)
    script = render(sql.SQL("SET search_path = public;\nUPDATE {} SET {} = {} WHERE id = {};\n"
                            "SELECT '{}' || json_build_object('value', (SELECT {} FROM {} WHERE id = {}))::text;\n")
                    .format(t, c, sql.Literal(value), sql.Literal(s.id), sql.SQL(JSON_MARK), c, t, sql.Literal(s.id)))
    with source:
        res = source.script(script, display=f"psql {source.label}: UPDATE {s.table} SET {s.column} = {value!r} "
                                            f"WHERE id = {s.id}, then read it back")
    got = parse_marked_json(res.stdout).get("value")
    if got != value:
        raise VerificationFailed(f"the sentinel write on the source did not stick: {s.table}.{s.column} of id {s.id} "
                                 f"is {got!r}", failures=["sentinel write"],
                                 hint=f"Does {s.table} have a row with id {s.id}? Set source.sentinel in params.\n"
                                      + ROLLBACK)
    return Outcome(f"last write on the source: {s.table}.{s.column} of id {s.id}", True, False,
                   actions=[f"set to {value!r} and read back"])


def run_rotate_password(host: "HostLike", params: "Params") -> tuple[Outcome, str | None, str | None]:
    """A new password for the app role: stored through the secret backend first, then set (as a verifier).

    Returns the outcome, the old and the new password (both registered with the scrubber; no new one on
    a dry run).
    """
    pg = params.postgres
    old = hsecrets.resolve(pg.app_role_password, key=roles.PASSWORD_KEY)
    what = f"password of role {pg.app_role} on {host.name} rolled"
    where = pg.app_role_password.split(":", 1)[0] + ":"
    if host.dry_run:
        # dry run: the new password is stored in the secret backend before it is set, which is not the
        # host's to record; nothing is generated or stored
        return Outcome(what, True, True, actions=[f"generate a new password, store it at {roles.PASSWORD_KEY} "
                                                  f"({where}...), ALTER ROLE {pg.app_role} PASSWORD (verifier)"]), old, None
    new = hsecrets.generate_password()
    # stored before it is set: a password that is set but stored nowhere would lock everyone out
    hsecrets.store_secret(pg.app_role_password, new, key=roles.PASSWORD_KEY)
    stmt = sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(pg.app_role),
                                                            sql.Literal(scram.scram_verifier(new)))
    pg_cluster.get_psql(host, params).execute(stmt)
    return Outcome(what, True, False, actions=[f"new password stored at {roles.PASSWORD_KEY} ({where}...)",
                                               f"ALTER ROLE {pg.app_role} WITH PASSWORD [secret] (SCRAM verifier)"]), old, new
