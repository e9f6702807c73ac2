"""The pgBackRest section of params (``pgbackrest:``): one repository's fields (:class:`S3Repo`), which the section
itself holds flat for repo1 and ``pgbackrest.repo2`` holds for a second repository, and the options every
repository shares (:class:`PgBackRest`).  Re-exported by :mod:`hcbpg.params`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from hcbpg.param_types import Endpoint, Ident, Model, OwnDirectory, SecretRef

_CRON = r"^[0-9A-Za-z*/,\-]+( [0-9A-Za-z*/,\-]+){4}$"


class S3Repo(Model):
    """One pgBackRest repository in an S3-compatible store: where it is, its keys, its encryption, its retention
    and its backup schedules.  ``pgbackrest:`` holds repo1's fields flat (:class:`PgBackRest`);
    ``pgbackrest.repo2:`` is a second one, at another provider or region, with keys and passphrase of its own."""

    s3_bucket: str
    s3_endpoint: Endpoint
    s3_region: str
    s3_uri_style: Literal["host", "path"] = "host"
    s3_verify_tls: bool = True
    s3_ca_file: str | None = None
    s3_key: SecretRef
    s3_key_secret: SecretRef
    repo_path_prefix: str = "/pgbackrest"
    cipher_type: Literal["aes-256-cbc", "none"] = "aes-256-cbc"
    cipher_pass: SecretRef | None = None
    retention_full_type: Literal["time", "count"] = "time"
    retention_full: int = Field(30, ge=1, le=9999999)  # pgBackRest's own bound
    #: cron schedules in the server's time zone (UTC on Hetzner images); the backup job runs one backup at a
    #: time, so two repositories' backups on one schedule run one after the other
    schedule_full: str = Field("30 6 * * 0", pattern=_CRON)
    schedule_diff: str = Field("30 6 * * 1-6", pattern=_CRON)
    #: the repository's admin key: the only one that can delete object versions and change the bucket's
    #: versioning, policy, lifecycle and object lock; never on a database server (the jumpbox's expiry and the
    #: operator's recovery use it).  With it the servers do not expire (expire-auto=n): the jumpbox does
    admin_s3_key: SecretRef | None = None
    admin_s3_key_secret: SecretRef | None = None
    #: S3 Object Lock's default retention on every new version, in days (None: none), where the provider offers it
    #: (the bucket made with Object Lock on; set with the admin key by step 05); GOVERNANCE: the admin key may
    #: still delete with the bypass, COMPLIANCE: nobody can before the days are over
    object_lock_days: int | None = Field(None, ge=1, le=36500)
    object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] = "GOVERNANCE"
    #: the bucket's lifecycle rule (set with the admin key by step 05): a version overwritten or deleted (a delete
    #: marker made it noncurrent) is removed this many days later; how far back the way back (notebook 21) can
    #: reach after an attack, so longer than the time to notice one; None: every version kept for ever
    noncurrent_version_expiry_days: int | None = Field(30, ge=1, le=36500)

    @model_validator(mode="after")
    def _repo_consistent(self) -> "S3Repo":
        if (self.admin_s3_key is None) != (self.admin_s3_key_secret is None):
            raise ValueError("admin_s3_key: the repository's admin key needs both admin_s3_key and "
                             "admin_s3_key_secret")
        if self.object_lock_days is not None and self.admin_s3_key is None:
            raise ValueError("object_lock_days: Object Lock is set with the repository's admin key: add "
                             "admin_s3_key and admin_s3_key_secret")
        if self.cipher_type != "none" and self.cipher_pass is None:
            raise ValueError(f"cipher_pass: cipher_type {self.cipher_type} needs cipher_pass "
                             "(a secret reference)")
        if not self.repo_path_prefix.startswith("/"):
            raise ValueError("repo_path_prefix: must be an absolute path such as /pgbackrest")
        return self


class PgBackRest(S3Repo):
    """pgBackRest on the database servers: the stanza, repo1's fields (flat, from :class:`S3Repo`), the options
    every repository shares, and an optional second repository (``repo2``)."""

    stanza: Ident = "hcb_production"
    repo_type: Literal["s3"] = "s3"
    s3_bucket: str = "hcb-production-postgres"
    s3_endpoint: Endpoint = "fsn1.your-objectstorage.com"
    s3_region: str = "fsn1"
    process_max: int = Field(4, ge=1, le=64)
    bundle: bool = True
    block: bool = False
    compress_type: Literal["zst", "lz4", "gz", "bz2", "none"] = "zst"
    start_fast: bool = True
    #: dead-man's-switch ping URL (healthchecks.io style); the job adds /start and /fail?status=N
    deadman_url: str | None = Field(None, pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/%]*)?$")
    #: push WAL in the background from spool_path, so an unreachable repository cannot fill pg_wal
    archive_async: bool = True
    spool_path: OwnDirectory = "/var/spool/pgbackrest"
    #: unarchived WAL past this is dropped from the archive (the cluster keeps running; the next backup
    #: closes the gap); None: a fifth of the server type's disk
    archive_push_queue_max: str | None = Field(None, pattern=r"^\d+(MB|GB|TB)$")
    #: archive_timeout: with anything written, the current WAL segment is archived at least this often, which
    #: bounds what a server lost with its disk loses (the newest archived WAL at most this old, plus the push);
    #: seconds, or a duration (90s, 2min, 1h); 0: off (preflight warns: no bound on the loss window)
    archive_timeout: Annotated[int, Field(ge=0, le=86400)] = 60
    #: how long PostgreSQL's archive_command (pgbackrest archive-push, asynchronous) waits for the background push
    #: of a segment before it reports a failure (pgBackRest's archive-timeout, seconds; its default 60): a frozen
    #: repository shows in pg_stat_archiver (and pages: ArchivingFailing) after about this long; shorter reports
    #: sooner, but a push slower than it counts as a failure (retried at once, nothing lost)
    archive_push_timeout: Annotated[int, Field(ge=5, le=3600)] = 60
    #: archive-push's io-timeout (seconds without progress before a try fails; pgBackRest's default 60): against an
    #: unreachable repository an asynchronous run stalls about 16 times it (80 s at 5, measured with 2.45) before
    #: the next run can drop WAL past archive_push_queue_max (hcbpg.desired.pgbackrest)
    archive_push_io_timeout: Annotated[int, Field(ge=1, le=600)] = 5
    #: a second repository (another provider or region): WAL goes to both, backups to each on its own schedule
    repo2: S3Repo | None = None
    #: when the jumpbox runs ``pgbackrest expire`` (repositories with an admin key), in its time zone (UTC)
    expire_schedule: str = Field("15 7 * * *", pattern=_CRON)
    #: backups copy the data files from the standby (pgBackRest's backup-standby; the leader's job still runs them
    #: and reads only the start and stop from the primary): each server runs pgBackRest's TLS server on its private
    #: address at tls_server_port and names the other as pg2 (hcbpg.desired.pgbackrest_server); needs a replica
    backup_standby: bool = False
    tls_server_port: int = Field(8432, ge=1, le=65535)

    @field_validator("archive_timeout", mode="before")
    @classmethod
    def _archive_timeout_seconds(cls, v: Any) -> Any:
        """``90s``, ``2min``, ``1h`` as seconds (PostgreSQL's units); any other text is left for the int check."""
        m = re.fullmatch(r"(\d+)(s|min|h)", v.strip()) if isinstance(v, str) else None
        return int(m[1]) * {"s": 1, "min": 60, "h": 3600}[m[2]] if m else v

    @model_validator(mode="after")
    def _consistent(self) -> "PgBackRest":
        if self.block and not self.bundle:
            raise ValueError("block: block incremental (block: true) needs bundling: set bundle: true "
                             "or block: false")
        return self

    def repos(self) -> "list[tuple[int, S3Repo]]":
        """``[(1, self), (2, repo2)]``: each repository with its pgBackRest index (repo2 only when set)."""
        return [(1, self)] + ([(2, self.repo2)] if self.repo2 is not None else [])
