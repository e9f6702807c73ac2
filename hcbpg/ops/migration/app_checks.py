"""Checks from the app host, as the app role over the private network (password on stdin, never
argv): the newest events row and the sentinel, the rolled passwords, the new DATABASE_URL."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.migration import parse_app_output, render_sentinel_sql
from hcbpg.outcome import Check
from hcbpg.pg.conninfo import conninfo_quote, parse_app_url, redact_url

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


def run_app_psql(app: "HostLike", params: "Params", password: str, script: str, *, server_ip: str, display: str) -> Any:
    """psql on the app host as the app role (password on stdin, never argv); SQL on stdin."""
    pg = params.postgres
    conninfo = (f"host={server_ip} port={pg.port} dbname={pg.database} user={pg.app_role} connect_timeout=10 "
                f"{desired_tls.conninfo_tls(params)}")
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -f -")
    return app.run(cmd, stdin=password + "\n" + script, check=False, display=display)


def check_from_app(app: "HostLike", params: "Params", password: str, *, server_ip: str,
                   newest_event: int | None, write: str | None = None, expect: str | None = None) -> list[Check]:
    """The runbook's check from the app host: read the newest events row, write (optionally) and read the sentinel."""
    src = params.source
    assert src is not None
    s = src.sentinel
    what = f"{s.table}.{s.column} of id {s.id}"
    res = run_app_psql(app, params, password, render_sentinel_sql(params, write), server_ip=server_ip,
                   display=f"psql as {params.postgres.app_role}@{server_ip}: newest {src.events_table} row, "
                           + (f"write and read {what}" if write is not None else f"read {what}"))
    got = parse_app_output(res.stdout) if res.ok else {}
    err = hsecrets.scrub(res.output.strip())[-300:] if not res.ok else ""
    out = []
    ev = got.get("newest-event")
    out.append(Check.of(f"newest {src.events_table} row read from the app host",
                        res.ok and (newest_event is None or ev == str(newest_event)),
                        err or f"id {ev}" + (f" (source: {newest_event})" if newest_event is not None else ""),
                        app.name))
    wanted = write if write is not None else expect
    value = got.get("sentinel")
    label = "sentinel written and read back from the app host" if write is not None else \
        "last-write sentinel from the source read back from the app host"
    out.append(Check.of(label, res.ok and value is not None and (wanted is None or value == wanted),
                        err or (f"{what} = {value!r}" if value is not None else f"no row with id {s.id}"), app.name))
    return out


def check_passwords(app: "HostLike", params: "Params", *, old: str, new: str, server_ip: str) -> list[Check]:
    """From the app host: the new password works, the old one is refused."""
    r_new = run_app_psql(app, params, new, "SELECT 'ok';\n", server_ip=server_ip,
                     display=f"psql as {params.postgres.app_role}@{server_ip} with the new password")
    r_old = run_app_psql(app, params, old, "SELECT 'ok';\n", server_ip=server_ip,
                     display=f"psql as {params.postgres.app_role}@{server_ip} with the old password (must be refused)")
    return [
        Check.of("new rails password works", r_new.ok and "ok" in r_new.stdout,
                 "connected" if r_new.ok else hsecrets.scrub(r_new.output.strip())[-200:], app.name),
        Check.of("old rails password refused", not r_old.ok and "password authentication failed" in r_old.output,
                 "refused: password authentication failed" if not r_old.ok else "the OLD password still works",
                 app.name),
    ]


def check_url_from_app(app: "HostLike", params: "Params", url: str) -> Check:
    """The new DATABASE_URL works from the app host (its parts as libpq params, every host of a multi-host
    URL with its ``target_session_attrs``; password on stdin)."""
    conn = parse_app_url(url)
    conninfo = " ".join(f"{k}={conninfo_quote(v)}" for k, v in {"connect_timeout": "10", **conn}.items()
                        if k != "password")
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t -v ON_ERROR_STOP=1 "
           f"-d {shlex.quote(conninfo)} -c 'SELECT current_user, current_database(), pg_is_in_recovery()'")
    res = app.run(cmd, stdin=conn.get("password", "") + "\n", check=False,
                  display=f"psql {redact_url(url)} from the app host")
    ok = res.ok and res.stdout.strip().startswith(f"{params.postgres.app_role}|{params.postgres.database}|f")
    return Check.of("new DATABASE_URL works from the app host", ok,
                    f"connected as {res.stdout.strip()}" if res.ok else hsecrets.scrub(res.output.strip())[-200:],
                    app.name)
