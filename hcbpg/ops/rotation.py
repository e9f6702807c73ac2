"""Password rotation (step 14, on demand) for any login role named in params: a new password
through the secret backend, the role altered on the primary, old refused and new accepted over
the network, and the list of what else must learn the new password.

Order, so that a crash never loses the new password: the new value is first written to a 0600
*pending* file (outside outputs/), then the role is altered (only the SCRAM verifier travels),
then the value is stored through the secret reference (``file:`` 0600 or ``op://``), then the
pending file is removed.  A reference that cannot be written (``env:``) is refused before
anything changes.  The values are registered with the scrubber and printed nowhere.

Which roles: step 14's input ``rotate_roles`` (comma-separated, ``-p rotate_roles=...``), else the app role.
Sessions that are already connected stay connected: PostgreSQL checks a password only at login.

Which roles, where their passwords live and what the app moves to are planned in
:mod:`hcbpg.desired.rotation` (pure); this module rotates.

The app is rotated without an outage (:func:`run_app_rotation`): its privileges live in the group
role, and it has two logins in it (``rails`` and ``roles.app_rotation_role``, default ``rails_alt``),
one in use at a time.  The other login gets a new password and LOGIN, its DATABASE_URL is handed
out (0600 file), hcbpg waits until the old login has no sessions, then locks it (NOLOGIN).  The old
URL works until then, so no new connection is refused.  Each login's password lives at its own
secret reference (``postgres.app_role_password``, ``roles.app_rotation_password``); which one is in
use is read from the server (the one that may log in).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import migration as desired_migration
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.roles import RolesConfig
from hcbpg.desired.rotation import AppSwitch, Rotatable, check_storable, login_ref, plan_app_switch
from hcbpg.errors import SafetyCheckFailed, UsageError
from hcbpg.ops import handout
from hcbpg.ops.access import run_psql_as
from hcbpg.ops.app_database import get_role
from hcbpg.outcome import Check, Outcome
from hcbpg.params import home
from hcbpg.pg.scram import scram_matches, scram_verifier
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params


def _pending_path(params: "Params", role: str) -> Path:
    """Where a new password waits (0600) between ALTER ROLE and the secret store."""
    base = Path(os.environ.get("HCBPG_STATE_DIR") or (home() / ".hcbpg"))
    return base / "rotation" / f"{params.environment}-{role}.pending"


def run_rotation(psql: "PsqlLike", params: "Params", rot: Rotatable) -> tuple[Outcome, str, str]:
    """Rotate *rot*'s password; returns (outcome, old password, new password), both registered for scrubbing.

    Not for the app's role: changing the password of the login the app uses refuses its new connections
    until every process has the new URL; :func:`run_app_rotation` moves the app to its other login instead.
    """
    if rot.role == params.postgres.app_role:
        raise UsageError(f"{rot.role} is the app's login: its rotation moves the app to its other login "
                         "(run_app_rotation), so that no new connection is refused")
    check_storable(rot)
    old = hsecrets.resolve(rot.password_ref, key=rot.password_key)
    current = get_role(psql, rot.role)
    if current is None:
        raise SafetyCheckFailed(f"on {psql.host.name}: role {rot.role} does not exist; nothing to rotate",
                                hint="Run step 04 / 13 first.")
    if not scram_matches(old, current.get("rolpassword") or ""):
        raise SafetyCheckFailed(
            f"on {psql.host.name}: the stored password of {rot.role} is not the secret {rot.password_key}; "
            "refusing to rotate from an unknown state (nothing was changed)",
            hint=f"If a pending file exists at {_pending_path(params, rot.role)}, an earlier rotation stopped after "
                 "ALTER ROLE: store that value at the reference, delete the file and run again.")
    new = hsecrets.generate_password()
    pending = _pending_path(params, rot.role)
    hsecrets.write_private_file(pending, new + "\n")
    psql.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(rot.role),
                                                                   sql.Literal(scram_verifier(new))))
    hsecrets.store_secret(rot.password_ref, new, key=rot.password_key)
    pending.unlink()
    return (Outcome(f"password of {rot.role}", True, False,
                    actions=[f"ALTER ROLE {rot.role} PASSWORD [secret] on {psql.host.name}",
                             f"stored at {rot.password_key} ({rot.password_ref.split(':', 1)[0]}:)"]), old, new)


def check_rotation(host: "HostLike", params: "Params", rot: Rotatable, old: str, new: str, *,
                    server_ip: str) -> list[Check]:
    """From *host*: the new password logs in, the old one is refused (password authentication failed)."""
    port = params.postgres.port
    ok, output = run_psql_as(host, tls=desired_tls.conninfo_tls(params),
                         role=rot.role, password=new, server_ip=server_ip, port=port, dbname=rot.dbname,
                         script="SELECT current_user;\n",
                         display=f"psql as {rot.role}@{server_ip} with the NEW password")
    works = ok and rot.role in output
    out = [Check.of(f"{rot.role}: new password works", works,
                    f"logged in from {host.name}" if works else hsecrets.scrub(output)[-200:], host.name)]
    ok, output = run_psql_as(host, tls=desired_tls.conninfo_tls(params),
                         role=rot.role, password=old, server_ip=server_ip, port=port, dbname=rot.dbname,
                         script="SELECT 1;\n", display=f"psql as {rot.role}@{server_ip} with the OLD password "
                                                       "(must be refused)")
    refused = not ok and "password authentication failed" in output
    out.append(Check.of(f"{rot.role}: old password refused", refused,
                        "password authentication failed" if refused else ("ACCEPTED" if ok else hsecrets.scrub(output)[-200:]),
                        host.name))
    return out


def check_secret_matches(psql: "PsqlLike", rot: Rotatable) -> Check:
    """The stored verifier is the secret's (the reference now holds the new password)."""
    pw = hsecrets.resolve(rot.password_ref, key=rot.password_key)
    current = get_role(psql, rot.role) or {}
    ok = scram_matches(pw, current.get("rolpassword") or "")
    return Check.of(f"{rot.role}: {rot.password_key} matches the server", ok,
                    "the secret reference holds the password in force" if ok else "MISMATCH", psql.host.name)


# the app: rotation without an outage -----------------------------------------------------------------

#: how long step 14 waits for the app to leave its old login (every process restarted with the new URL)
APP_IDLE_TIMEOUT_S = 1800.0


def get_app_logins(psql: "PsqlLike", cfg: RolesConfig) -> dict[str, dict[str, Any]]:
    """The app's two logins as they are (LOGIN, group membership, stored verifier, sessions now)."""
    rows = psql.query(sql.SQL(
        "SELECT r.rolname, r.rolcanlogin, pg_has_role(r.oid, {g}, 'USAGE') AS in_group, a.rolpassword, "
        "(SELECT count(*) FROM pg_stat_activity s WHERE s.usename = r.rolname) AS sessions "
        "FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = ANY({names})").format(
        g=sql.Literal(cfg.group_role), names=sql.Literal(list(cfg.app_logins))))
    for r in rows:
        if r.get("rolpassword"):
            hsecrets.register(r["rolpassword"])
    return {r["rolname"]: r for r in rows}


def _handed_out_login(params: "Params") -> str | None:
    """The user of the DATABASE_URL last written to the app's handoff file (None: no file)."""
    path = desired_migration.handoff_path(params)
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("DATABASE_URL="):
            url = line.split("=", 1)[1].strip("'")
            return urllib.parse.unquote(urllib.parse.urlsplit(url).username or "") or None
    return None


def run_app_rotation(psql: "PsqlLike", params: "Params", cfg: RolesConfig, *, timeout: float = APP_IDLE_TIMEOUT_S,
                     interval: float = 1.0, echo: Callable[[str], None] = print) -> tuple[Outcome, AppSwitch, str]:
    """Rotate the app's password without refusing one new connection: a fresh password on the app's *other*
    login (member of the group role, so it has every privilege already), its DATABASE_URL handed out
    (0600 file), then wait until the old login has no sessions, then lock it (NOLOGIN).

    Returns (outcome, the switch, the new password).  A second run after a timeout resumes at the wait.
    """
    switch = plan_app_switch(params, cfg, get_app_logins(psql, cfg), _handed_out_login(params))
    actions = []
    if switch.resume:
        new_pw = hsecrets.resolve(switch.new_ref, key=switch.new_key)
        actions.append(f"{switch.new} was created and handed out by an earlier run: waiting for {switch.old}")
    else:
        old_key, old_ref = login_ref(params, cfg, switch.old)
        old_pw = hsecrets.resolve(old_ref, key=old_key)
        stored = get_app_logins(psql, cfg)[switch.old].get("rolpassword") or ""
        if not scram_matches(old_pw, stored):
            raise SafetyCheckFailed(f"on {psql.host.name}: the password of {switch.old} (the app's login now) is not "
                                    f"the secret {old_key}; refusing to rotate from an unknown state",
                                    hint="Point the reference at the password the app uses; nothing was changed.")
        check_storable(Rotatable(switch.new, switch.new_key, switch.new_ref, "app", params.postgres.database))
        handout.get_app_urls(SecretStore(), params, cfg, login=switch.new, password="")  # the others resolve: before any change
        new_pw = hsecrets.generate_password()
        pending = _pending_path(params, switch.new)
        hsecrets.write_private_file(pending, new_pw + "\n")
        ident, verifier = sql.Identifier(switch.new), sql.Literal(scram_verifier(new_pw))
        exists = switch.new in get_app_logins(psql, cfg)
        stmts: list[sql.Composable] = [
            sql.SQL("ALTER ROLE {} WITH LOGIN INHERIT CONNECTION LIMIT {} PASSWORD {}").format(
                ident, sql.Literal(params.postgres.app_role_connection_limit), verifier) if exists else
            sql.SQL("CREATE ROLE {} WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "CONNECTION LIMIT {} PASSWORD {} IN ROLE {}").format(
                ident, sql.Literal(params.postgres.app_role_connection_limit), verifier,
                sql.Identifier(cfg.group_role))]
        if exists and not get_app_logins(psql, cfg)[switch.new]["in_group"]:
            stmts.append(sql.SQL("GRANT {} TO {}").format(sql.Identifier(cfg.group_role), ident))
        psql.execute(stmts)
        hsecrets.store_secret(switch.new_ref, new_pw, key=switch.new_key)
        pending.unlink()
        # the app's file, whole: the new DATABASE_URL, and Blazer's read-only URL as it was
        urls = handout.get_app_urls(SecretStore(), params, cfg, login=switch.new, password=new_pw)
        handout.ensure_urls_file(SecretStore(), urls)
        actions += [f"{'ALTER' if exists else 'CREATE'} ROLE {switch.new} LOGIN PASSWORD [secret] "
                    f"(member of {cfg.group_role}) on {psql.host.name}",
                    f"stored at {switch.new_key} ({switch.new_ref.split(':', 1)[0]}:)",
                    f"new DATABASE_URL {urls.shown['DATABASE_URL']} written to {urls.path} (0600)"]
        echo(f"the app's new DATABASE_URL ({switch.new}) is in {urls.path}: set it in Hatchbox and restart every "
             f"process; waiting up to {timeout:.0f}s until {switch.old} has no sessions")
    wait_for_login_idle(psql, switch.old, timeout=timeout, interval=interval)
    psql.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(sql.Identifier(switch.old)))
    actions.append(f"{switch.old} has no sessions: ALTER ROLE {switch.old} NOLOGIN (locked)")
    return Outcome(f"app login {switch.old} -> {switch.new}", True, False, actions=actions), switch, new_pw


def wait_for_login_idle(psql: "PsqlLike", login: str, *, timeout: float, interval: float = 1.0) -> int:
    """Until *login* has no session on the server (the app has moved to its new URL)."""
    return int(wait_until(
        lambda: int(psql.value(sql.SQL("SELECT count(*) AS n FROM pg_stat_activity WHERE usename = {}")
                               .format(sql.Literal(login))) or 0),
        lambda n: n == 0, what=f"the app to leave login {login} (sessions of {login})", timeout=timeout,
        interval=interval, describe=lambda n: f"{n} session(s)",
        hint=f"Set the new DATABASE_URL in Hatchbox and restart every process (web, Sidekiq, console); then run "
             f"step 14 again: it resumes here and locks {login}."))


def check_app_switch(host: "HostLike", params: "Params", cfg: RolesConfig, switch: AppSwitch, new: str, *,
                      server_ip: str) -> list[Check]:
    """From the app host: the new login works with the new password; the old one, with its own password, is locked."""
    port = params.postgres.port
    ok, output = run_psql_as(host, tls=desired_tls.conninfo_tls(params),
                         role=switch.new, password=new, server_ip=server_ip, port=port,
                         dbname=params.postgres.database, script="SELECT current_user;\n",
                         display=f"psql as {switch.new}@{server_ip} with the NEW password")
    works = ok and switch.new in output
    out = [Check.of(f"{switch.new}: new password works", works, f"logged in from {host.name}" if works
                    else hsecrets.scrub(output)[-200:], host.name)]
    old_key, old_ref = login_ref(params, cfg, switch.old)
    ok, output = run_psql_as(host, tls=desired_tls.conninfo_tls(params),
                         role=switch.old, password=hsecrets.resolve(old_ref, key=old_key), server_ip=server_ip,
                         port=port, dbname=params.postgres.database, script="SELECT 1;\n",
                         display=f"psql as {switch.old}@{server_ip} with its own password (locked: must be refused)")
    locked = not ok and "not permitted to log in" in output
    out.append(Check.of(f"{switch.old}: locked", locked, "refused: role is not permitted to log in" if locked
                        else ("ACCEPTED" if ok else hsecrets.scrub(output)[-200:]), host.name))
    return out
