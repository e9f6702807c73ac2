"""Password rotation (step 14, on demand) for any login role named in params: a new password
through the secret backend, the role altered on the primary, old refused and new accepted over
the network, and the list of what else must learn the new password.

Order, so that a crash never loses the new password: the new value is first written to a 0600
*pending* file (outside outputs/), then the role is altered (only the SCRAM verifier travels),
then the value is stored through the secret reference (``file:`` 0600 or ``op://``), then the
pending file is removed.  A reference that cannot be written (``env:``) is refused before
anything changes.  The values are registered with the scrubber and printed nowhere.

Which roles: ``HCBPG_ROTATE_ROLES`` (comma-separated) if set, else the app role.  Rotating the
app role keeps ``postgres.app_role_password`` in sync, so every later step keeps working.
Sessions that are already connected stay connected: PostgreSQL checks a password only at login.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg import sql

from hcbpg import secrets as hsecrets
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.roles import RolesConfig
from hcbpg.errors import SafetyCheckFailed, SecretError, UsageError
from hcbpg.ops import migration, monitoring, replication
from hcbpg.ops.app_database import PASSWORD_KEY, get_role
from hcbpg.ops.privileges import psql_as
from hcbpg.outcome import Check, Outcome
from hcbpg.params import home
from hcbpg.pg.scram import scram_matches, scram_verifier

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.adapters.psql import Psql
    from hcbpg.params import Params

ROTATE_ENV = "HCBPG_ROTATE_ROLES"


@dataclass(frozen=True)
class Rotatable:
    """A login role whose password hcbpg can rotate, and where its password is also used."""

    role: str
    password_key: str
    password_ref: str
    #: where "old refused / new works" is tried from: app, jumpbox, server, replica
    verify_from: str
    dbname: str
    dependents: tuple[str, ...] = field(default_factory=tuple)


def rotatable_roles(params: "Params", cfg: RolesConfig) -> dict[str, Rotatable]:
    """Every login role in params with its secret reference and its dependents."""
    pg = params.postgres
    ip = params.primary.private_ip
    out = {pg.app_role: Rotatable(
        pg.app_role, PASSWORD_KEY, pg.app_role_password, "app", pg.database,
        (f"DATABASE_URL of the app (Hatchbox): postgres://{pg.app_role}:<new {PASSWORD_KEY}>@{ip}:{pg.port}/{pg.database}",
         "BLAZER_DATABASE_URL (Hatchbox), if it uses the app role",
         "Sidekiq and every other process that reads DATABASE_URL: restart them after the change"))}
    if cfg.migrations:
        m = cfg.migrations
        out[m.name] = Rotatable(m.name, m.password_key, m.password_ref, "app", pg.database,
                                (f"the deploy's migrations URL (e.g. MIGRATIONS_DATABASE_URL): "
                                 f"postgres://{m.name}:<new {m.password_key}>@{ip}:{pg.port}/{pg.database}",))
    if cfg.metabase:
        m = cfg.metabase
        out[m.name] = Rotatable(m.name, m.password_key, m.password_ref, "jumpbox", pg.database,
                                ("Metabase: Admin → Databases → hcb_production → password (via the jumpbox)",))
    if cfg.monitoring:
        m = cfg.monitoring
        out[m.name] = Rotatable(m.name, m.password_key, m.password_ref, "server", "postgres",
                                ("/etc/default/vector on every server (hcbpg rewrites it: step 13 or the "
                                 "monitoring hookup)",))
    if cfg.exporter:
        m = cfg.exporter
        out[m.name] = Rotatable(m.name, m.password_key, m.password_ref, "server", "postgres",
                                ("/etc/default/prometheus-postgres-exporter on every server (hcbpg rewrites it "
                                 "and restarts the exporter)",))
    if params.replication is not None:
        r = params.replication
        out[r.role] = Rotatable(r.role, "replication.password", r.password, "replica", "postgres",
                                ("the replication passfile on every server (step 10 rewrites it); a running "
                                 "replica keeps streaming until it reconnects",))
    return out


def roles_to_rotate(params: "Params", cfg: RolesConfig, environ: Mapping[str, str] | None = None) -> list[Rotatable]:
    """The roles this run rotates: ``HCBPG_ROTATE_ROLES`` or the app role (UsageError on an unknown name)."""
    env = os.environ if environ is None else environ
    known = rotatable_roles(params, cfg)
    names = [n.strip() for n in (env.get(ROTATE_ENV) or params.postgres.app_role).split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"{ROTATE_ENV}: {', '.join(unknown)} is not a login role hcbpg manages",
                         hint=f"Rotatable roles: {', '.join(known)}.")
    return [known[n] for n in names]


def pending_path(params: "Params", role: str) -> Path:
    """Where a new password waits (0600) between ALTER ROLE and the secret store."""
    base = Path(os.environ.get("HCBPG_STATE_DIR") or (home() / ".hcbpg"))
    return base / "rotation" / f"{params.environment}-{role}.pending"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def check_storable(rot: Rotatable) -> None:
    """Raise SecretError (before anything changes) when the reference cannot take a new value."""
    if not (rot.password_ref.startswith("file:") or rot.password_ref.startswith("op://")):
        raise SecretError(f"{rot.password_key}: {rot.password_ref} cannot store a new password, so {rot.role} "
                          "cannot be rotated; nothing was changed",
                          hint="Point it at file:PATH or op://vault/item/field first.")


def plan_rotation(rot: Rotatable) -> Outcome:
    """What rotating *rot* does (no secret in it)."""
    return Outcome(f"password of {rot.role}", True, True, actions=[
        "generate a new password; keep it in a 0600 pending file until it is stored",
        f"ALTER ROLE {rot.role} PASSWORD '<SCRAM-SHA-256 verifier computed here>' on the primary",
        f"store it at {rot.password_key} ({rot.password_ref.split(':', 1)[0]}:)",
        f"verify from the {rot.verify_from} host: the old password is refused, the new one works",
    ] + [f"then update: {d}" for d in rot.dependents])


def run_rotation(psql: "Psql", params: "Params", rot: Rotatable) -> tuple[Outcome, str, str]:
    """Rotate *rot*'s password; returns (outcome, old password, new password), both registered for scrubbing."""
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
            hint=f"If a pending file exists at {pending_path(params, rot.role)}, an earlier rotation stopped after "
                 "ALTER ROLE: store that value at the reference, delete the file and run again.")
    new = hsecrets.generate_password()
    pending = pending_path(params, rot.role)
    _write_private(pending, new + "\n")
    psql.execute(sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(rot.role),
                                                                   sql.Literal(scram_verifier(new))))
    hsecrets.store_secret(rot.password_ref, new, key=rot.password_key)
    pending.unlink()
    return (Outcome(f"password of {rot.role}", True, False,
                    actions=[f"ALTER ROLE {rot.role} PASSWORD [secret] on {psql.host.name}",
                             f"stored at {rot.password_key} ({rot.password_ref.split(':', 1)[0]}:)"]), old, new)


def verify_rotation(host: "Host", params: "Params", rot: Rotatable, old: str, new: str, *,
                    server_ip: str) -> list[Check]:
    """From *host*: the new password logs in, the old one is refused (password authentication failed)."""
    port = params.postgres.port
    ok, output = psql_as(host, tls=desired_tls.conninfo_tls(params),
                         role=rot.role, password=new, server_ip=server_ip, port=port, dbname=rot.dbname,
                         script="SELECT current_user;\n",
                         display=f"psql as {rot.role}@{server_ip} with the NEW password")
    works = ok and rot.role in output
    out = [Check.of(f"{rot.role}: new password works", works,
                    f"logged in from {host.name}" if works else hsecrets.scrub(output)[-200:], host.name)]
    ok, output = psql_as(host, tls=desired_tls.conninfo_tls(params),
                         role=rot.role, password=old, server_ip=server_ip, port=port, dbname=rot.dbname,
                         script="SELECT 1;\n", display=f"psql as {rot.role}@{server_ip} with the OLD password "
                                                       "(must be refused)")
    refused = not ok and "password authentication failed" in output
    out.append(Check.of(f"{rot.role}: old password refused", refused,
                        "password authentication failed" if refused else ("ACCEPTED" if ok else hsecrets.scrub(output)[-200:]),
                        host.name))
    return out


def check_secret_matches(psql: "Psql", rot: Rotatable) -> Check:
    """The stored verifier is the secret's (the reference now holds the new password)."""
    pw = hsecrets.resolve(rot.password_ref, key=rot.password_key)
    current = get_role(psql, rot.role) or {}
    ok = scram_matches(pw, current.get("rolpassword") or "")
    return Check.of(f"{rot.role}: {rot.password_key} matches the server", ok,
                    "the secret reference holds the password in force" if ok else "MISMATCH", psql.host.name)


def dependents_table(rots: Sequence[Rotatable]) -> list[dict[str, str]]:
    """What must be updated with the new password(s), one row each (no password in it)."""
    return [{"role": r.role, "update": d} for r in rots for d in r.dependents]


def update_hcbpg_dependents(rot: Rotatable, new: str, params: "Params", cfg: RolesConfig,
                            hosts: Mapping[str, "Host | None"], *, dry_run: bool) -> list[Outcome]:
    """What hcbpg itself keeps with the password: exporter / Vector env files, replication passfiles,
    and for the app role a 0600 handoff file with the new DATABASE_URL (outside outputs/)."""
    out: list[Outcome] = []
    servers = [s for s in params.servers if hosts.get(s.name) is not None]
    if cfg.exporter and rot.role == cfg.exporter.name:
        out += [monitoring.ensure_exporter(hosts[s.name], params, s, cfg, new, dry_run=dry_run) for s in servers]
    if cfg.monitoring and rot.role == cfg.monitoring.name:
        out += [monitoring.ensure_vector_config(hosts[s.name], params, s, cfg, new, dry_run=dry_run) for s in servers]
    if params.replication is not None and rot.role == params.replication.role:
        out += [replication.ensure_passfile(hosts[s.name], params, s, new, dry_run=dry_run) for s in servers]
    if rot.role == params.postgres.app_role:
        path = migration.handoff_path(params)
        if not dry_run:
            urls = migration.write_app_urls(params, new)
            path = getattr(urls, "path", path)
        out.append(Outcome(f"new DATABASE_URL and BLAZER_DATABASE_URL for the app in {path} (0600)", True, dry_run,
                           actions=["paste them into Hatchbox, restart the app's processes, then delete the file"]))
    return out
