"""Password rotation (step 14), the pure half: which login roles hcbpg can rotate, where each one's
password lives and what else uses it (:class:`Rotatable`), the plan shown before the gate, and which of
the app's two logins it moves to (:func:`plan_app_switch`).  :mod:`hcbpg.ops.rotation` does the rotating."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hcbpg.desired.roles import RolesConfig
from hcbpg.errors import SafetyCheckFailed, SecretError, UsageError
from hcbpg.outcome import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: the environment variable naming the roles to rotate (comma-separated; default: the app role)
#: step 14's input naming the roles to rotate (``hcbpg run ENV --only 14 -p rotate_roles=metabase,vector``)
ROTATE_INPUT = "rotate_roles"
#: the secret key of the app role's password
APP_PASSWORD_KEY = "postgres.app_role_password"


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
        pg.app_role, APP_PASSWORD_KEY, pg.app_role_password, "app", pg.database,
        (f"DATABASE_URL of the app (Hatchbox): the app's other login ({' / '.join(cfg.app_logins)}) with its new "
         f"password, on {ip}:{pg.port}/{pg.database}: the full URL is in the 0600 handoff file",
         "every process that reads DATABASE_URL (web, Sidekiq, console): restart them; step 14 waits until "
         "none uses the old login any more, then locks it (until then the old URL keeps working)"))}
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


def roles_to_rotate(params: "Params", cfg: RolesConfig, names: str = "") -> list[Rotatable]:
    """The roles this run rotates: *names* (the step's input ``rotate_roles``, comma-separated) or the app
    role (UsageError on an unknown name)."""
    known = rotatable_roles(params, cfg)
    wanted = [n.strip() for n in (names or params.postgres.app_role).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UsageError(f"{ROTATE_INPUT}: {', '.join(unknown)} is not a login role hcbpg manages",
                         hint=f"Rotatable roles: {', '.join(known)}.")
    return [known[n] for n in wanted]


def check_storable(rot: Rotatable) -> None:
    """Raise SecretError (before anything changes) when the reference cannot take a new value."""
    if not (rot.password_ref.startswith("file:") or rot.password_ref.startswith("op://")):
        raise SecretError(f"{rot.password_key}: {rot.password_ref} cannot store a new password, so {rot.role} "
                          "cannot be rotated; nothing was changed",
                          hint="Point it at file:PATH or op://vault/item/field first.")


def plan_rotation(rot: Rotatable, cfg: RolesConfig | None = None) -> Outcome:
    """What rotating *rot* does (no secret in it)."""
    if cfg is not None and rot.role == cfg.app_role:
        a, b = cfg.app_logins
        return Outcome(f"password of the app ({a} / {b})", True, True, actions=[
            f"of {a} and {b}, the one that may not log in now gets a new password (SCRAM verifier computed here) "
            f"and LOGIN; it is a member of {cfg.group_role}, so it has every privilege already",
            "the new password is stored at its secret reference; the new DATABASE_URL goes to a 0600 file",
            "wait until the old login has no sessions (the app restarted with the new URL): no new connection is "
            "refused meanwhile, because the old URL keeps working",
            "then lock the old login (NOLOGIN)",
        ] + [f"then update: {d}" for d in rot.dependents])
    return Outcome(f"password of {rot.role}", True, True, actions=[
        "generate a new password; keep it in a 0600 pending file until it is stored",
        f"ALTER ROLE {rot.role} PASSWORD '<SCRAM-SHA-256 verifier computed here>' on the primary",
        f"store it at {rot.password_key} ({rot.password_ref.split(':', 1)[0]}:)",
        f"verify from the {rot.verify_from} host: the old password is refused, the new one works",
    ] + [f"then update: {d}" for d in rot.dependents])


def dependents_table(rots: Sequence[Rotatable]) -> list[dict[str, str]]:
    """What must be updated with the new password(s), one row each (no password in it)."""
    return [{"role": r.role, "update": d} for r in rots for d in r.dependents]


@dataclass(frozen=True)
class AppSwitch:
    """One app rotation: the login the app uses now, the one it moves to, and that one's secret."""

    old: str
    new: str
    new_key: str
    new_ref: str
    resume: bool = False   # an earlier run created the new login and handed it out; only wait and lock


def login_ref(params: "Params", cfg: RolesConfig, name: str) -> tuple[str, str]:
    """(secret key, secret reference) of the app's login *name*."""
    if name == params.postgres.app_role:
        return APP_PASSWORD_KEY, params.postgres.app_role_password
    assert cfg.rotation_login is not None and cfg.rotation_login.name == name
    return cfg.rotation_login.password_key, cfg.rotation_login.password_ref


def plan_app_switch(params: "Params", cfg: RolesConfig, logins: Mapping[str, Mapping[str, Any]],
                    handed_out: str | None) -> AppSwitch:
    """Which login the app leaves and which it moves to (pure; SafetyCheckFailed when unclear)."""
    if cfg.rotation_login is None:
        raise SafetyCheckFailed(
            f"no second login for the app: rotating {params.postgres.app_role} without an outage needs one",
            hint="Set roles.app_rotation_role and roles.app_rotation_password in params (or use file: secrets).")
    a, b = cfg.app_logins
    can = [n for n in (a, b) if logins.get(n, {}).get("rolcanlogin")]
    if not can:
        raise SafetyCheckFailed(f"neither {a} nor {b} may log in: the app has no login to rotate from",
                                hint="Run step 04 and 13 first.")
    if len(can) == 2:
        if handed_out not in can:
            raise SafetyCheckFailed(
                f"both {a} and {b} may log in and the handoff file does not say which one the app was given",
                hint="Look at which login the app uses (pg_stat_activity), then lock the other one with "
                     "ALTER ROLE ... NOLOGIN and run step 14 again.")
        old = b if handed_out == a else a
        key, ref = login_ref(params, cfg, handed_out)
        return AppSwitch(old, handed_out, key, ref, resume=True)
    old = can[0]
    new = b if old == a else a
    key, ref = login_ref(params, cfg, new)
    return AppSwitch(old, new, key, ref)

