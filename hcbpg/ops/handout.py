"""The database URLs handed to the operator: one 0600 file per target, each the target's whole current set.

* the app's file (``postgres.app_url_file``, by default ``~/.local/state/hcbpg/<env>/app-database-urls.env``):
  ``DATABASE_URL`` (the app's login now) and ``BLAZER_DATABASE_URL`` (Blazer's read-only login, from the
  cutover on: Blazer runs inside the app and reads its URL beside the app's in Hatchbox);
* the release command's file (``release-database-urls.env`` beside it): ``MIGRATIONS_DATABASE_URL``.

Every step that changes a value in a file (09 hands the app's out, 13 makes the migrations login,
14 rotates a password) rewrites that file whole from the logins as they are now, so the operator never
holds two files that disagree, nor Blazer the app's read-write login.  The values are secrets: the files
are 0600 outside ``outputs/`` and only redacted URLs are ever printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hcbpg.desired import migration as desired_migration
from hcbpg.desired.migration import AppUrls
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import privileges
from hcbpg.outcome import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.secretstore import SecretStoreLike
    from hcbpg.desired.roles import RolesConfig
    from hcbpg.params import Params


def get_app_urls(secrets: "SecretStoreLike", params: "Params", cfg: "RolesConfig", *, login: str,
                 password: str) -> AppUrls:
    """The app's file: DATABASE_URL of *login* (the app's login now) and, with ``roles.blazer``,
    BLAZER_DATABASE_URL of Blazer's read-only login (never the app's), its password from *secrets*."""
    values = {"DATABASE_URL": (login, password)}
    if cfg.blazer is not None:
        values["BLAZER_DATABASE_URL"] = (cfg.blazer.name, privileges.get_role_password(secrets, cfg, cfg.blazer.name))
    return desired_migration.render_role_urls(params, values, path=desired_migration.handoff_path(params),
                                              target="the app (Hatchbox: web, Sidekiq, every process)")


def get_release_urls(secrets: "SecretStoreLike", params: "Params", cfg: "RolesConfig") -> AppUrls | None:
    """The release command's file: MIGRATIONS_DATABASE_URL (None without ``roles.migrations``)."""
    if cfg.migrations is None:
        return None
    pw = privileges.get_role_password(secrets, cfg, cfg.migrations.name)
    return desired_migration.render_role_urls(params, {"MIGRATIONS_DATABASE_URL": (cfg.migrations.name, pw)},
                                              path=desired_migration.release_urls_path(params),
                                              target="the release command only (Hatchbox: rails db:migrate)")


def ensure_urls_file(secrets: "SecretStoreLike", urls: AppUrls) -> Outcome:
    """*urls* as their file's whole content (0600, directory 0700) through *secrets* (a dry-run store writes
    nothing); unchanged when it holds them already.  The outcome names the values redacted."""
    path = Path(urls.path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise SafetyCheckFailed(f"{path} is not a regular file (a symlink or another kind): the URLs, which hold "
                                "passwords, are not written through it",
                                hint=f"Look at who made {path}; remove it if it is not yours, then run the step "
                                     "again. Nothing was written.")
    changed = secrets.get_private_file(path) != urls.text
    if changed:
        secrets.put_private_file(path, urls.text)
    actions = [f"{k}={v}" for k, v in urls.shown.items()] if changed else []
    return Outcome(f"handed-out URLs {path} (0600)", changed, secrets.dry_run, actions=actions)
