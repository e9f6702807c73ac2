"""Step 05 (notebook ``05_pgbackrest``): pgBackRest installed and configured on the primary, the stanza created."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.adapters.dryrun import AbsentHost, dry_run_of
from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired.backups import paths_for
from hcbpg.desired.pgbackrest import check_block_incremental
from hcbpg.desired.repo_history import expire_on_jumpbox
from hcbpg.errors import ParamsError
from hcbpg.ops import pgbackrest as pgb
from hcbpg.ops import repo_history
from hcbpg.ops.pgbackrest import check_configured  # noqa: F401 - the notebook's call
from hcbpg.outcome import Outcome
from hcbpg.steps.targets import connect_jumpbox, hostlike, planning, server_host

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server
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


def protect_history(rb: "Run") -> list[Outcome]:
    """With a repository admin key (``pgbackrest.admin_s3_key``): versioning on the bucket, turned on with the admin
    key (and Object Lock's default retention with ``object_lock_days``), the lifecycle rule that removes noncurrent
    versions (``noncurrent_version_expiry_days``), and expiry on the jumpbox
    (:mod:`hcbpg.ops.repo_history`); the servers then do not expire.  Without one:
    nothing (the servers' key expires, as before)."""
    params = rb.params
    if not expire_on_jumpbox(params):
        print("no repository admin key (pgbackrest.admin_s3_key): the servers' key expires backups itself")
        return []
    if params.jumpbox is None:
        raise ParamsError("params", ["jumpbox: pgbackrest.admin_s3_key moves expiry to the jumpbox; add the jumpbox "
                                     "section (step 01 creates it)"])
    store = ObjectStore.from_params(params, rb.secret("pgbackrest.admin_s3_key"),
                                    rb.secret("pgbackrest.admin_s3_key_secret"))
    outcomes = [repo_history.ensure_bucket_versioning(store, dry_run=rb.dry_run)]
    pb = desired_pgbackrest.pgbackrest_params(params)
    if pb.object_lock_days is not None:
        outcomes.append(repo_history.ensure_bucket_object_lock(store, pb.object_lock_mode, pb.object_lock_days,
                                                               dry_run=rb.dry_run))
    # versioning keeps every version: the lifecycle rule removes them pgbackrest.noncurrent_version_expiry_days after
    outcomes.append(repo_history.ensure_noncurrent_version_expiry(store, pb.noncurrent_version_expiry_days,
                                                                  dry_run=rb.dry_run))
    jb = connect_jumpbox(rb)
    host = dry_run_of(jb, rb.dry_run) if jb is not None else AbsentHost(params.jumpbox.name)
    return outcomes + repo_history.ensure_expiry_on_jumpbox(host, params)
