"""The cutover's own operations: the source quiet (waited for), the last write on the source (the
sentinel), and the app role's password rolled."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg import secrets as hsecrets
from hcbpg.adapters.psql import JSON_MARK, parse_marked_json, render
from hcbpg.errors import SafetyCheckFailed, VerificationFailed, WaitTimeout
from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.migration.source import Source, get_source_sessions
from hcbpg.outcome import Check, Outcome
from hcbpg.pg import scram
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params


ROLLBACK = """\
How to roll back (nothing on the source was changed by hcbpg except the sentinel row's one column):
  1. Do NOT change DATABASE_URL / BLAZER_DATABASE_URL in Hatchbox: they still point at Heroku.
  2. Enable the processes again (Sidekiq, etc.) in Hatchbox.
  3. Turn maintenance mode off in Hatchbox: the app runs on the old (Heroku) database as before.
  4. Leave the primary as it is; fix the cause named above and repeat the cutover later
     (07 drops and restores hcb_production again: it is marked as an hcbpg restore target)."""


ROLLBACK_WAY_BACK = """\
How to roll back now that traffic runs on the new primary (online transfer, the way back armed):
  1. Turn maintenance mode on in Hatchbox; disable the processes (Sidekiq, etc.).
  2. On the primary, start the way back if 09b has not (hcbpg run ENV --from 09b) and wait until
     `bucardo status hcbpg_back` shows a run ended after the last write: every write made on the new
     primary since traffic went on is then on Heroku too.
  3. Set DATABASE_URL / BLAZER_DATABASE_URL in Hatchbox back to their Heroku values; enable the
     processes; turn maintenance mode off: the app runs on Heroku, with nothing lost.
  4. Run 16_online_cleanup to end the way back and remove Bucardo; fix the cause and cut over again."""


def check_source_quiet(sessions: Sequence[Mapping[str, Any]]) -> Check:
    """No other client on the source: the app and its processes are really stopped."""
    if not sessions:
        return Check("no other connections on the source", "pass", "only hcbpg is connected", "source")
    who = "; ".join(f"pid {s['pid']} {s['usename']}@{s.get('client') or 'socket'} "
                    f"{s.get('application_name') or '-'} {s.get('state')}{' WRITING' if s.get('writing') else ''}"
                    for s in sessions[:5])
    return Check("no other connections on the source", "fail", f"{len(sessions)} other: {who}", "source")


def wait_for_source_quiet(source: Source, *, timeout: float = 120.0, interval: float = 0.5,
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


def sentinel_value(run_id: str | None) -> str:
    """The last write's value: says who wrote it, when, in which run (not secret)."""
    return f"hcbpg last write {clock.utcnow()} run {run_id or 'ad-hoc'}"


def run_sentinel_write(source: Source, params: "Params", value: str) -> Outcome:
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


def run_rotate_password(host: "Host | None", params: "Params", *, dry_run: bool) -> tuple[Outcome, str | None, str | None]:
    """A new password for the app role: stored through the secret backend first, then set (as a verifier).

    Returns the outcome, the old and the new password (both registered with the scrubber).
    """
    pg = params.postgres
    old = hsecrets.resolve(pg.app_role_password, key=roles.PASSWORD_KEY)
    what = f"password of role {pg.app_role} on {host.name if host else params.primary.name} rolled"
    where = pg.app_role_password.split(":", 1)[0] + ":"
    if dry_run:
        return Outcome(what, True, True, actions=[f"generate a new password, store it at {roles.PASSWORD_KEY} "
                                                  f"({where}...), ALTER ROLE {pg.app_role} PASSWORD (verifier)"]), old, None
    if host is None:
        raise SafetyCheckFailed(f"{params.primary.name} is not reachable: cannot roll the password")
    new = hsecrets.generate_password()
    # stored before it is set: a password that is set but stored nowhere would lock everyone out
    hsecrets.store_secret(pg.app_role_password, new, key=roles.PASSWORD_KEY)
    stmt = sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(pg.app_role),
                                                            sql.Literal(scram.scram_verifier(new)))
    pg_cluster.psql_for(host, params).execute(stmt)
    return Outcome(what, True, False, actions=[f"new password stored at {roles.PASSWORD_KEY} ({where}...)",
                                               f"ALTER ROLE {pg.app_role} WITH PASSWORD [secret] (SCRAM verifier)"]), old, new
