"""Step 05 (notebook ``05_pgbackrest``): pgBackRest installed and configured on the primary, the stanza created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired.backups import paths_for
from hcbpg.desired.pgbackrest import check_block_incremental
from hcbpg.desired.repo_history import admin_secret_keys, expire_on_jumpbox, shared_bucket_conflicts
from hcbpg.errors import ParamsError
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import repo_history
from hcbpg.ops.pgbackrest import check_configured  # noqa: F401 - the notebook's call
from hcbpg.outcome import Check, Outcome
from hcbpg.steps.targets import connect_jumpbox, hostlike, planning, server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.adapters.objectstore import ObjectStoreLike
    from hcbpg.params import Params, S3Repo, Server
    from hcbpg.steps.context import Run


def connect(rb: "Run", server: "Server") -> tuple["HostLike", tuple[int, int, int] | None]:
    """The host for *server* (a dry run records on it; a server not there yet is an AbsentHost) and the
    pgBackRest version on it (None: not installed yet); says which."""
    host = hostlike(rb, server.name, server_host(rb, server))
    version = pgb.get_installed_version(host)
    print(f"pgBackRest on {server.name}: {desired_pgbackrest.format_version(version) if version else 'not installed yet'}")
    return host, version


def configure(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """Step 05 on the primary: install, directories, pgbackrest.conf, archiving settings (archive_mode off), stanza.

    The block-incremental rule is checked against the installed version before anything
    is written; the stanza is created only when ``info`` says it is missing.  Once step 08
    has started archiving, running this step again keeps it on.
    """
    outcomes = [pgb.ensure_installed(host)]
    version = pgb.get_installed_version(host)
    if version is not None:
        check_block_incremental(params, version)
    outcomes.append(pgb.ensure_paths(host, specs=paths_for(params)))
    outcomes.append(pgb.ensure_pgbackrest_conf(host, params, server, version=version))
    on = pgb.get_archive_mode_written(host, params)
    outcomes.append(pgb.ensure_archiving(host, params, server, archive_mode=on))
    outcomes.append(pgb.ensure_stanza(host, params))
    return outcomes


def get_plan(host: "HostLike", params: "Params", server: "Server") -> list[Outcome]:
    """What :func:`configure` would change, on a fresh recording of *host* (nothing is changed)."""
    return configure(planning(host), params, server)


def get_conf_shown(host: "HostLike", params: "Params", server: "Server") -> str:
    """pgbackrest.conf as rendered for the version installed now, with ``<secret>`` placeholders."""
    return desired_pgbackrest.render_pgbackrest_conf(params, server, version=pgb.get_version(host))


def admin_stores(rb: "Run") -> "list[tuple[int, S3Repo, ObjectStoreLike]]":
    """Each repository with an admin key (``pgbackrest.admin_s3_key``, ``pgbackrest.repo2.admin_s3_key``), its
    number and its bucket through that key (its own endpoint and secrets), the store named ``repo<n> s3://bucket``."""
    out: list[tuple[int, S3Repo, ObjectStoreLike]] = []
    for n, repo in desired_pgbackrest.pgbackrest_params(rb.params).repos():
        if repo.admin_s3_key is None:
            continue
        key, key_secret = admin_secret_keys(n)
        out.append((n, repo, ObjectStore.of_repo(repo, rb.secret(key), rb.secret(key_secret), label=f"repo{n}")))
    return out


def protect_history(rb: "Run") -> list[Outcome]:
    """For every repository with an admin key (repo1's ``pgbackrest.admin_s3_key``, repo2's
    ``pgbackrest.repo2.admin_s3_key``), on its bucket with that key: versioning, Object Lock's default retention
    (its ``object_lock_days``), the lifecycle rule that removes noncurrent versions (its
    ``noncurrent_version_expiry_days``); then expiry of every repository on the jumpbox
    (:mod:`hcbpg.ops.repo_history`); the servers then do not expire.  Without any admin key: nothing (the servers'
    key expires, as before).  A repository without an admin key beside one with it is named: its history is not
    protected."""
    params = rb.params
    if not expire_on_jumpbox(params):
        print("no repository admin key (pgbackrest.admin_s3_key): the servers' key expires backups itself")
        return []
    if params.jumpbox is None:
        raise ParamsError("params", ["jumpbox: pgbackrest.admin_s3_key moves expiry to the jumpbox; add the jumpbox "
                                     "section (step 01 creates it)"])
    conflicts = shared_bucket_conflicts(params)
    if conflicts:
        raise ParamsError("params", conflicts)
    outcomes: list[Outcome] = []
    protected = admin_stores(rb)
    for n in _unprotected(params, protected):
        print(f"repo{n} has no admin key: its bucket's versioning and lifecycle are not managed here, and a server's "
              "key may erase its history")
    for _n, repo, store in protected:
        outcomes.append(repo_history.ensure_bucket_versioning(store, dry_run=rb.dry_run))
        if repo.object_lock_days is not None:
            outcomes.append(repo_history.ensure_bucket_object_lock(store, repo.object_lock_mode,
                                                                   repo.object_lock_days, dry_run=rb.dry_run))
        # versioning keeps every version: the lifecycle rule removes them noncurrent_version_expiry_days after
        outcomes.append(repo_history.ensure_noncurrent_version_expiry(store, repo.noncurrent_version_expiry_days,
                                                                      dry_run=rb.dry_run))
    jb = connect_jumpbox(rb)
    host = dry_run_of(jb, rb.dry_run) if jb is not None else AbsentHost(params.jumpbox.name)
    return outcomes + repo_history.ensure_expiry_on_jumpbox(host, params)


def check_history(rb: "Run") -> list[Check]:
    """Step 05's checks of the repositories' history (none without an admin key): for each repository with one,
    versioning on, Object Lock's default retention where asked, hcbpg's lifecycle rule (and a warning of other rules
    that remove objects); a repository without an admin key beside one with it warns; the jumpbox's expiry files."""
    params = rb.params
    if not expire_on_jumpbox(params):
        print("no repository admin key: no history to check (the servers' key expires backups itself)")
        return []
    protected = admin_stores(rb)
    checks = [Check("history protected", "warn", f"repo{n} has no admin key (pgbackrest{'' if n == 1 else f'.repo{n}'}"
                    ".admin_s3_key): a server's key may erase its history", f"repo{n}")
              for n in _unprotected(params, protected)]
    for _n, repo, store in protected:
        checks += repo_history.check_bucket_versioning(store)
        checks += repo_history.check_bucket_object_lock(store, repo.object_lock_mode, repo.object_lock_days)
        checks += repo_history.check_noncurrent_version_expiry(store, repo.noncurrent_version_expiry_days)
    jb = connect_jumpbox(rb)  # a real run has it (connect_jumpbox refuses otherwise)
    return checks + (repo_history.check_expiry_on_jumpbox(jb, params) if jb is not None else [])


def _unprotected(params: "Params", protected: "list[tuple[int, S3Repo, ObjectStoreLike]]") -> list[int]:
    have = {n for n, _, _ in protected}
    return [n for n, _ in desired_pgbackrest.pgbackrest_params(params).repos() if n not in have]
