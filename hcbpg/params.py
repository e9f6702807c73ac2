"""Typed params for one environment (``params/<env>.yaml``), validated before anything runs: every section's
model, the checks that span sections, and loading.  The field types and the base model are in
:mod:`hcbpg.param_types`, the high-availability sections (jumpbox, Patroni, etcd) in :mod:`hcbpg.params_ha`.

Secrets are never values here, only references (see :mod:`hcbpg.secrets`).  Every
problem is reported with its dotted key, and all problems are reported at once.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hcbpg.errors import ParamsError
from hcbpg.param_types import (
    MAX_CONNECTIONS,
    PLACEHOLDER,
    SETTING_NAME,
    Address,
    Ident,
    Model,
    Name,
    Network,
    OwnDirectory,
    Port,
    PrivateNetwork,
    SecretRef,
    SiteRef,
    dotted_key,
    fields_at,
)
from hcbpg.params_alerting import AlertingParams
from hcbpg.params_ha import PATRONI_OWNED_SETTINGS, EtcdParams, Jumpbox, PatroniParams
from hcbpg.params_pgbackrest import PgBackRest, S3Repo  # noqa: F401 - S3Repo: re-exported
from hcbpg.secrets import is_secret_ref
from hcbpg.values import (
    ADMIN_MAX_PREFIX,
    control_problems,
    documentation_network,
    printable,
    read_yaml_file,
    wide_admin_ranges,
)


class Hetzner(Model):
    token: SecretRef
    api_endpoint: str = "https://api.hetzner.cloud/v1"
    location: str = "ash"
    network_zone: str = "us-east"
    server_type: str = "ccx13"
    image: str = "ubuntu-24.04"
    placement_group: Name = "hcb-postgres-placement"
    firewall: Name = "hcb-postgres-ssh-only"
    ssh_key_name: str = "hcb-postgres-ops"
    ssh_public_key_file: str
    #: who may reach SSH (the firewall's only rule); none listed: no SSH from outside the private network.
    #: together more than a /8 (0.0.0.0/1 + 128.0.0.0/1 is 0.0.0.0/0) is refused unless allow_weak_settings
    admin_source_ranges: list[Network] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=lambda: {"app": "hcb", "service": "postgres"})
    #: delete and rebuild protection on every server hcbpg creates (the API refuses both until it is lifted)
    protection: bool = False
    #: how often a running action (a server created, protection set) is polled: Hetzner's API allows 3,600
    #: requests an hour; the lab's stand-in answers on the same machine
    poll_interval_s: Annotated[float, Field(ge=0.05, le=30)] = 1.0


class NetworkParams(Model):
    name: Name = "hcb-private"
    ip_range: PrivateNetwork = "10.0.0.0/16"
    subnet: PrivateNetwork = "10.0.1.0/24"

    @model_validator(mode="after")
    def _subnet_inside(self) -> "NetworkParams":
        rng, sub = ipaddress.ip_network(self.ip_range), ipaddress.ip_network(self.subnet)
        if sub.version != rng.version or not sub.subnet_of(rng):  # type: ignore[arg-type]
            raise ValueError(f"subnet {sub} is not inside ip_range {rng}")
        return self


class Server(Model):
    name: Name
    private_ip: Address
    role: Literal["primary", "replica"]
    #: address the operator's SSH reaches; defaults to the public IP recorded by provisioning
    ssh_host: str | None = None


class Host(Model):
    name: Name
    private_ip: Address
    ssh_host: str | None = None


class Ssh(Model):
    user: str = "root"
    key_file: str = "~/.ssh/id_ed25519"
    connect_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    port: Port = 22
    #: the environment's pinned SSH host keys (default: params/<env>.known_hosts beside the params file)
    known_hosts: str | None = None


class Postgres(Model):
    version: Literal[15] = 15
    cluster: Ident = "main"
    port: Port = 5432
    database: Ident = "hcb_production"
    app_role: Ident = "rails"
    app_role_connection_limit: int = Field(500, ge=1, le=MAX_CONNECTIONS)
    app_role_password: SecretRef
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    #: where step 09 writes DATABASE_URL / BLAZER_DATABASE_URL (0600);
    #: default ~/.local/state/hcbpg/<env>/app-database-urls.env
    app_url_file: str | None = None
    #: auto_explain logs the plan of every statement slower than this (e.g. 500ms, 1s, 5s; -1 = off)
    auto_explain_min_duration: str = Field("1s", pattern=r"^(-1|\d+(us|ms|s|min))$")

    @field_validator("settings")
    @classmethod
    def _setting_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = [printable(k) for k in v if not SETTING_NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: not a PostgreSQL setting name (lowercase letters, digits and _, "
                             "one optional dot: work_mem, auto_explain.log_min_duration)")
        return v


class Sentinel(Model):
    """The row the runbook writes last on the source and reads back on the new primary."""

    table: Ident = "users"
    id: Annotated[int, Field(ge=-2 ** 63, le=2 ** 63 - 1)] = 1803  # a bigint
    column: Ident = "full_name"


class Online(Model):
    """The online transfer (``source.transfer: online``): Bucardo syncs the source into the primary
    while the app runs; the window only drains it."""

    #: the window's deadline for Bucardo to apply what the source recorded before the writes stopped
    drain_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    #: how the tables are first filled: ``stream`` (the streamed transfer in a snapshot taken after Bucardo's
    #: triggers exist, then Bucardo applies what changed since; measured faster) or ``bucardo`` (its onetimecopy)
    initial_copy: Literal["stream", "bucardo"] = "stream"
    #: how long the initial copy may take before 06b stops waiting (Bucardo's catching up after it)
    initial_copy_timeout_s: Annotated[float, Field(gt=0)] = 6 * 3600.0
    #: a table without a primary key or unique index is copied inside the window when it has at most
    #: this many rows; a larger one refuses the online mode
    window_copy_max_rows: Annotated[int, Field(ge=0)] = 100_000
    #: after traffic is on, how long changes on the new primary are synced back to the source (hours)
    way_back_hours: Annotated[float, Field(ge=0)] = 72.0
    #: how long the snapshots taken at the end of the window (source and primary as the writes stopped)
    #: are held for the exact verification after traffic is on (09b); the primary's vacuum waits on them
    snapshot_hold_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    #: adding Bucardo's triggers takes a lock on each table of the live source: each waited for at most
    #: this long (every session of Bucardo on the source carries it), so the app never queues behind us
    lock_timeout_ms: Annotated[int, Field(ge=100, le=60_000)] = 2000
    #: when a lock was not granted in time (nothing was added): tried again this many times, this far apart
    lock_retries: Annotated[int, Field(ge=0, le=100)] = 5
    lock_retry_wait_s: Annotated[float, Field(ge=0, le=3600)] = 10.0
    #: how long 06b waits for an anti-wraparound VACUUM on the source to end before adding the triggers
    vacuum_wait_s: Annotated[float, Field(ge=0, le=24 * 3600)] = 300.0


class Source(Model):
    """Where the data comes from: Heroku Postgres (or any PostgreSQL reachable from the primary)."""

    method: Literal["heroku", "pg_dump"] = "pg_dump"
    #: the source's postgres:// URL, used on the primary, never printed; method heroku has none (each step reads
    #: it with ``heroku pg:credentials:url --app APP``: Heroku rotates it)
    url: SecretRef | None = None
    #: the CA certificate (PEM file on the operator's machine) the source's server certificate chains to:
    #: when set, the primary connects with sslmode=verify-full against it; without it, sslmode=require
    #: (encrypted, but the server's identity is not checked)
    ca_file: str | None = None
    heroku_app: str | None = None
    #: parallel jobs for pg_dump (directory format) and pg_restore
    jobs: int = Field(2, ge=1, le=64)
    #: made the postgres user's (install -d -o postgres -m 0700) and emptied per run: a directory of its own
    dump_dir: OwnDirectory = "/var/tmp/hcbpg-dump"
    #: pg_restore jobs; None = 2 x jobs
    restore_jobs: int | None = Field(None, ge=1, le=64)
    #: wal_level=minimal during the restore (a restart before and after); only while archiving is off
    restore_wal_minimal: bool = False
    #: how the data moves for method pg_dump: stream (no dump files; each table's indexes right after
    #: its rows) or directory (pg_dump -Fd -j N on the primary, then pg_restore -j N); online: Bucardo
    #: syncs the data before the window (06b), the window drains it (07), a way back follows (09b, 16)
    transfer: Literal["directory", "stream", "online"] = "stream"
    #: how long 07 waits for the app's connections to the source to go
    quiet_timeout_s: float = Field(120.0, gt=0)
    events_table: Ident = "events"
    sentinel: Sentinel = Sentinel()
    online: Online = Online()

    @model_validator(mode="after")
    def _method(self) -> "Source":
        if self.method == "heroku" and not self.heroku_app:
            raise ValueError("heroku_app: method heroku needs heroku_app (the Heroku app name)")
        if (self.method == "heroku") == (self.url is not None):
            raise ValueError(f"url: method heroku reads the URL with `heroku pg:credentials:url --app {self.heroku_app}` "
                             "when a step connects: remove source.url (or use method pg_dump)" if self.url else
                             "url: method pg_dump needs url (a secret reference to the source's postgres:// URL)")
        return self


class Replication(Model):
    #: manual: hcbpg's own streaming replica and the gated failover of steps 10/11; patroni: Patroni over etcd
    #: (steps 10_high_availability, 11_switchover), with the jumpbox as etcd's third voter
    manager: Literal["manual", "patroni"] = "manual"
    patroni: PatroniParams | None = None
    etcd: EtcdParams | None = None
    role: Ident = "repuser"
    password: SecretRef
    connection_limit: int = Field(2, ge=1, le=MAX_CONNECTIONS)
    #: caps the WAL a slot may hold back, so a dead replica cannot fill the primary's disk
    max_slot_wal_keep_size: str = Field("10GB", pattern=r"^\d+(kB|MB|GB|TB)$")
    #: WAL kept regardless of slots, so pg_rewind can rejoin a crashed former primary
    wal_keep_size: str = Field("512MB", pattern=r"^\d+(kB|MB|GB|TB)$")
    #: a row written on the primary must be visible on the replica within this many seconds
    catch_up_timeout_s: float = Field(30.0, gt=0)
    #: name of a host whose data directory may be wiped even though it is not in recovery
    allow_wipe_host: Name | None = None

    @model_validator(mode="after")
    def _manager(self) -> "Replication":
        if self.manager == "patroni":
            missing = [k for k in ("patroni", "etcd") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"{missing[0]}: manager patroni needs replication.{' and replication.'.join(missing)}"
                                 " (see the commented example in params/production.yaml)")
            if self.connection_limit < 4:
                raise ValueError(f"connection_limit: {self.connection_limit} is too few under Patroni: a walreceiver, "
                                 "pg_basebackup's two and pg_rewind's one connect as the replication role; use 4 or more")
        return self


class Drill(Model):
    """The scratch host restore drills restore onto (never a server of the pair)."""

    name: Name = "drill-1"
    private_ip: Address
    ssh_host: str | None = None
    #: schema.table names to checksum; None = every table
    checksum_tables: list[str] | None = None
    #: a read-only S3 key for the drill host (a restore only reads the repository); None: the
    #: pgbackrest section's key, which can also write and delete backups
    s3_key: SecretRef | None = None
    s3_key_secret: SecretRef | None = None
    #: a point-in-time restore step 12 offers after the drill (one of the two, or neither): a time
    #: (``2026-12-02 18:00:00+00``) or a transaction id
    target_time: str | None = None
    target_xid: str | None = Field(default=None, pattern=r"^\d+$")

    @model_validator(mode="after")
    def _key_pair(self) -> "Drill":
        if (self.s3_key is None) != (self.s3_key_secret is None):
            raise ValueError("s3_key: a read-only S3 key for the drill needs both s3_key and s3_key_secret")
        if self.target_time and self.target_xid:
            raise ValueError("target_xid: set target_time or target_xid, not both")
        return self


class LoginRoleParams(Model):
    name: Ident
    password: SecretRef
    connection_limit: int = Field(10, ge=1, le=MAX_CONNECTIONS)


class MetabaseParams(Model):
    name: Ident = "metabase"
    password: SecretRef
    connection_limit: int = Field(10, ge=1, le=MAX_CONNECTIONS)
    #: pg_hba admits metabase only from this address (/32)
    jumpbox_ip: Address
    #: SSH address for the checks (default: jumpbox_ip)
    jumpbox_ssh_host: str | None = None
    tables: list[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")]] = Field(
        default_factory=list)


class BlazerParams(Model):
    """Blazer's read-only login (BLAZER_DATABASE_URL): reads every table, writes none."""

    name: Ident = "blazer"
    password: SecretRef
    connection_limit: int = Field(10, ge=1, le=MAX_CONNECTIONS)
    #: a Blazer query running longer than this is cancelled (ALTER ROLE ... SET statement_timeout)
    statement_timeout: str = Field("30s", pattern=r"^\d+(ms|s|min)$")


class Roles(Model):
    """Roles built for rotation (step 13): the app's privileges live in a NOLOGIN group role."""

    group_role: Ident = "hcb_app"
    schemas: list[Ident] = Field(default_factory=lambda: ["public"])
    migrations: LoginRoleParams
    metabase: MetabaseParams | None = None
    monitoring: LoginRoleParams | None = None     # Vector's postgresql_metrics
    exporter: LoginRoleParams | None = None       # prometheus-postgres-exporter
    extensions: list[Ident] = Field(default_factory=list)
    blazer: BlazerParams | None = None           # Blazer's read-only login (BLAZER_DATABASE_URL)
    #: the app's second login in the group role: rotation alternates between postgres.app_role and this
    #: one, so the old URL keeps working until the app has moved (default: <app_role>_alt)
    app_rotation_role: Ident | None = None
    #: that login's password (default: a file beside postgres.app_role_password, for file: references)
    app_rotation_password: SecretRef | None = None
    #: grants to roles, or in schemas, the model does not know are reported and kept, unless listed here
    revoke_unknown_roles: list[Ident] = Field(default_factory=list)
    revoke_unknown_schemas: list[Ident] = Field(default_factory=list)


class Health(Model):
    """Thresholds of `hcbpg status` and step 15: each item is pass, warn or fail."""

    replay_lag_warn_s: Annotated[float, Field(ge=0)] = 30.0
    replay_lag_fail_s: Annotated[float, Field(ge=0)] = 300.0
    slot_retained_warn_mb: Annotated[float, Field(ge=0)] = 1024.0
    slot_retained_fail_mb: Annotated[float, Field(ge=0)] = 4096.0
    backup_age_warn_h: Annotated[float, Field(ge=0)] = 26.0
    backup_age_fail_h: Annotated[float, Field(ge=0)] = 50.0
    archive_age_warn_s: Annotated[float, Field(gt=0)] | None = None
    connections_warn_pct: Annotated[float, Field(ge=0)] = 80.0
    connections_fail_pct: Annotated[float, Field(ge=0)] = 95.0
    disk_warn_pct: Annotated[float, Field(ge=0)] = 80.0
    disk_fail_pct: Annotated[float, Field(ge=0)] = 90.0
    wal_warn_mb: Annotated[float, Field(ge=0)] = 2048.0
    wal_fail_mb: Annotated[float, Field(ge=0)] = 8192.0
    pending_restart: Literal["warn", "fail"] = "warn"
    require_archiving: bool = True
    #: the health job's dead-man's-switch base URL; it pings <url>/<server>-<check> (None: the site's)
    deadman_url: str | None = Field(default=None, pattern=r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/%]*)?$")
    #: when cron runs the health job on every server
    schedule: str = Field(default="*/5 * * * *", pattern=r"^[0-9A-Za-z*/,\-]+( [0-9A-Za-z*/,\-]+){4}$")
    #: more WAL segments than this waiting to be archived: archiving is not current
    archive_ready_max: int = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _warn_below_fail(self) -> "Health":
        for item in ("replay_lag", "slot_retained", "backup_age", "connections", "disk", "wal"):
            unit = {"replay_lag": "s", "slot_retained": "mb", "backup_age": "h", "connections": "pct",
                    "disk": "pct", "wal": "mb"}[item]
            warn, fail = getattr(self, f"{item}_warn_{unit}"), getattr(self, f"{item}_fail_{unit}")
            if warn >= fail:
                raise ValueError(f"{item}_warn_{unit}: {warn} must be below {item}_fail_{unit} ({fail})")
        return self


class Tls(Model):
    """TLS for every PostgreSQL connection: the environment's private CA and the servers' certificates."""

    #: the CA's certificate (public; default params/<env>.postgres-ca.crt, committed with params)
    ca_cert: str | None = None
    #: the CA's private key (a secret reference; default file:<state dir>/tls/<env>-postgres-ca.key);
    #: a ``file:`` that does not exist yet is created with a new CA on the first run
    ca_key: SecretRef | None = None
    #: how long a server certificate is valid, and how many days before its end step 03 renews it
    cert_days: int = Field(default=397, ge=2, le=825)
    renew_days: int = Field(default=30, ge=1)
    #: TLS 1.3 only: every client hcbpg configures (libpq 12+, lib/pq, pg gem on libpq) speaks it
    min_protocol: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.3"
    #: add require_auth=scram-sha-256 to clients: needs libpq 16+ on every client (the lab's is 15: off)
    require_auth: bool = False

    @model_validator(mode="after")
    def _renew_inside(self) -> "Tls":
        if self.renew_days >= self.cert_days:
            raise ValueError(f"renew_days: {self.renew_days} must be below cert_days ({self.cert_days})")
        return self


class Audit(Model):
    """Where the audit record's trust lives outside ``outputs/`` (see hcbpg.engine.signing).

    Relative paths are under ``params/``.  The signing key itself is the operator's
    (``HCBPG_SIGNING_KEY``, else ``signing_key``, else ``ssh.key_file``), never a shared one."""

    #: who may sign this environment's record: ssh-keygen's allowed_signers format; default
    #: ``params/<env>.allowed_signers``, else ``params/allowed_signers``
    allowed_signers: str | None = None
    #: the newest sealed run and its manifest's sha256 (committed); default ``params/<env>.audit-head``
    head_file: str | None = None
    #: the operator's SSH key that signs (a private key, or a ``.pub`` whose key is in ssh-agent)
    signing_key: str | None = None
    #: ``bucket``: every seal also appends the head to the backup bucket (``hcbpg-audit/...``, create-only,
    #: Object Lock retention when the bucket has it) and verification reads it back (hcbpg.ops.audit_anchor);
    #: needs the pgbackrest section.  ``none``: the head is kept beside the params and on this machine only
    anchor: Literal["none", "bucket"] = "none"
    #: days each anchor object is retained when the bucket has Object Lock and no default retention rule
    anchor_retain_days: int = Field(default=400, ge=1, le=36500)
    #: a lab's: its bucket is torn down with it, so once the bucket is gone verification reads this machine's
    #: copy of the sequence instead (a fresh clone has none and fails); anywhere else a gone bucket fails
    anchor_copy_when_gone: bool = False


#: params keys whose secret reference must belong to one environment only (checked across params/)
PER_ENVIRONMENT_SECRETS = ("pgbackrest.s3_key", "pgbackrest.s3_key_secret", "pgbackrest.cipher_pass",
                           "drill.s3_key", "drill.s3_key_secret")


class Params(Model):
    environment: Name
    hetzner: Hetzner
    network: NetworkParams = NetworkParams()
    servers: list[Server] = Field(min_length=1)
    app_host: Host | None = None
    #: where the app servers are on the private network (CIDRs inside network.ip_range); pg_hba admits
    #: the app from these; empty: from network.subnet.  app_host is one of them (the one hcbpg checks from)
    app_servers: list[PrivateNetwork] = Field(default_factory=list)
    #: the jumpbox (step 01): SSH's only way in and etcd's third voter; needed by replication.manager patroni
    jumpbox: Jumpbox | None = None
    ssh: Ssh = Ssh()
    postgres: Postgres
    pgbackrest: PgBackRest | None = None
    source: Source | None = None
    replication: Replication | None = None
    drill: Drill | None = None
    roles: Roles | None = None
    health: Health = Health()
    #: the monitor on the jumpbox and where its alerts go (hcbpg.params_alerting); None: no monitor
    alerting: AlertingParams | None = None
    tls: Tls = Tls()
    #: steps that may run destructive actions (wipe a data directory, drop a database)
    allow_destructive: bool = False
    #: where the run happens (hcbpg.adapters.site): e.g. ``hcbpg.lab.site:LabSite``; None: production,
    #: or the lab for the environment called ``lab``
    site: SiteRef | None = None
    audit: Audit = Audit()
    #: True only for a lab or a throwaway environment: permits cipher_type none, s3_verify_tls false,
    #: SSH open to the whole internet and secret references shared with another environment.
    #: Every other environment (staging too: it holds a copy of production's data) refuses them.
    allow_weak_settings: bool = False

    @field_validator("servers")
    @classmethod
    def _unique_names(cls, v: list[Server]) -> list[Server]:
        names = [s.name for s in v]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ValueError(f"server names must be unique; repeated: {', '.join(dups)}")
        ips = [s.private_ip for s in v]
        dups = sorted({n for n in ips if ips.count(n) > 1})
        if dups:
            raise ValueError(f"private IPs must be unique; repeated: {', '.join(dups)}")
        if sum(1 for s in v if s.role == "primary") != 1:
            raise ValueError("exactly one server must have role: primary")
        return v

    @model_validator(mode="after")
    def _anchor_has_a_bucket(self) -> "Params":
        if self.audit.anchor == "bucket" and self.pgbackrest is None:
            raise ValueError("audit.anchor: bucket writes the audit head to the backup bucket, and these params "
                             "have no pgbackrest section (add it, or set audit.anchor: none)")
        return self

    @model_validator(mode="after")
    def _high_availability(self) -> "Params":
        """The jumpbox's place on the network, and what Patroni needs from the rest of the params."""
        problems = []
        jb = self.jumpbox
        if jb is not None:
            subnet = ipaddress.ip_network(self.network.subnet)
            ip = ipaddress.ip_address(jb.private_ip)
            if ip not in subnet:
                problems.append(f"jumpbox.private_ip: {ip} is outside the subnet {subnet}")
            elif ip in (subnet.network_address, subnet.broadcast_address):
                problems.append(f"jumpbox.private_ip: {ip} is the network or broadcast address of {subnet}")
            others = [(f"servers[{i}]", s.name, s.private_ip) for i, s in enumerate(self.servers)]
            others += [(k, h.name, h.private_ip) for k, h in (("app_host", self.app_host), ("drill", self.drill))
                       if h is not None]
            for key, name, addr in others:
                if addr == jb.private_ip:
                    problems.append(f"jumpbox.private_ip: {jb.private_ip} is {key}'s ({name}) too")
                if name == jb.name:
                    problems.append(f"jumpbox.name: {jb.name} is {key}'s name too")
            if jb.firewall == self.hetzner.firewall:
                problems.append(f"jumpbox.firewall: {jb.firewall} is hetzner.firewall too; the jumpbox's firewall "
                                "opens SSH, the database servers' does not: give it its own name")
            if self.roles and self.roles.metabase and self.roles.metabase.jumpbox_ip != jb.private_ip:
                problems.append(f"roles.metabase.jumpbox_ip: {self.roles.metabase.jumpbox_ip} is not "
                                f"jumpbox.private_ip ({jb.private_ip}); Metabase's route goes through the jumpbox")
        rep = self.replication
        if rep is not None and rep.manager == "patroni":
            if jb is None:
                problems.append("jumpbox: replication.manager patroni needs the jumpbox (etcd's third voter: two "
                                "database servers alone cannot keep a quorum when one dies)")
            elif len(self.servers) % 2:
                problems.append(f"servers: replication.manager patroni runs etcd on the {len(self.servers)} "
                                f"server(s) and the jumpbox: {len(self.servers) + 1} voters; etcd needs an odd "
                                "number (two servers and the jumpbox make three)")
            if self.pgbackrest is None:
                problems.append("pgbackrest: replication.manager patroni needs the pgbackrest section (archive, "
                                "and a replica restored from the repository)")
            owned = sorted(k for k in self.postgres.settings if k in PATRONI_OWNED_SETTINGS)
            problems += [f"postgres.settings.{k}: Patroni owns {k} under replication.manager patroni (hcbpg "
                         "sets it through Patroni's dynamic configuration); remove it from postgres.settings"
                         for k in owned]
            if rep.patroni and rep.etcd:
                ports = {"postgres.port": self.postgres.port, "replication.patroni.rest_port": rep.patroni.rest_port,
                         "replication.etcd.client_port": rep.etcd.client_port,
                         "replication.etcd.peer_port": rep.etcd.peer_port, "ssh.port": self.ssh.port}
                seen: dict[int, str] = {}
                for key, port in ports.items():
                    if port in seen:
                        problems.append(f"{key}: {port} is {seen[port]} too; each service needs its own port")
                    seen.setdefault(port, key)
        if self.alerting is not None and jb is None:
            problems.append("alerting: the monitor (Prometheus, Alertmanager) runs on the jumpbox, and these params "
                            "name none: add the jumpbox section (step 01 makes it) or remove alerting")
        if problems:
            raise ValueError("\n".join(problems))  # one line each, naming its key (see format_validation_error)
        return self

    @model_validator(mode="after")
    def _addresses_inside(self) -> "Params":
        subnet = ipaddress.ip_network(self.network.subnet)
        problems = []
        for i, s in enumerate(self.servers):
            ip = ipaddress.ip_address(s.private_ip)
            if ip not in subnet:
                problems.append(f"servers[{i}].private_ip: {ip} ({s.name}) is outside the subnet {subnet}")
            elif ip in (subnet.network_address, subnet.broadcast_address):
                problems.append(f"servers[{i}].private_ip: {ip} is the network or broadcast address of {subnet}")
        rng = ipaddress.ip_network(self.network.ip_range)
        app_nets = [ipaddress.ip_network(n) for n in self.app_servers] or [subnet]
        for i, n in enumerate(self.app_servers):
            net = ipaddress.ip_network(n)
            if net.version != rng.version or not net.subnet_of(rng):  # type: ignore[arg-type]
                problems.append(f"app_servers[{i}]: {n} is outside the private network {rng}")
        if self.app_host and not any(ipaddress.ip_address(self.app_host.private_ip) in n for n in app_nets):
            where = f"the subnet {subnet}" if not self.app_servers else f"app_servers ({', '.join(self.app_servers)})"
            problems.append(f"app_host.private_ip: {self.app_host.private_ip} is outside {where}")
        if self.roles and self.roles.metabase and ipaddress.ip_address(self.roles.metabase.jumpbox_ip) not in rng:
            problems.append(f"roles.metabase.jumpbox_ip: {self.roles.metabase.jumpbox_ip} is outside the "
                            f"private network {rng}")
        if self.roles:
            names = [self.postgres.app_role, self.roles.group_role] + [
                r.name for r in (self.roles.migrations, self.roles.metabase, self.roles.monitoring,
                                 self.roles.exporter, self.roles.blazer) if r is not None]
            if self.roles.app_rotation_role:
                names.append(self.roles.app_rotation_role)
            if self.replication:
                names.append(self.replication.role)
            dups = sorted({n for n in names if names.count(n) > 1})
            problems += [f"roles.revoke_unknown_roles: {n} is a role hcbpg manages or PostgreSQL's own" for n in
                         self.roles.revoke_unknown_roles if n in names or n == "postgres" or n.startswith("pg_")]
            problems += [f"roles.revoke_unknown_schemas: {n} is in roles.schemas or a system schema" for n in self.roles
                         .revoke_unknown_schemas if n in self.roles.schemas or n.startswith(("pg_", "information_"))]
            if dups:
                problems.append(f"roles: role names must differ from each other, postgres.app_role and "
                                f"replication.role; repeated: {', '.join(dups)}")
        if problems:
            raise ValueError("\n".join(problems))  # one line each, naming its key (see format_validation_error)
        return self

    @model_validator(mode="after")
    def _no_weak_settings(self) -> "Params":
        """Production-grade environments refuse settings that leave backups or SSH open."""
        if self.allow_weak_settings:
            return self
        problems = []
        why = "(allowed only with allow_weak_settings: true, for a lab or a throwaway environment)"
        if self.pgbackrest and self.pgbackrest.cipher_type == "none":
            problems.append("pgbackrest.cipher_type: none leaves every backup of the bank's data readable "
                            f"by anyone with the bucket; use aes-256-cbc {why}")
        if self.pgbackrest and not self.pgbackrest.s3_verify_tls:
            problems.append("pgbackrest.s3_verify_tls: false sends the S3 keys to whoever answers; "
                            f"give s3_ca_file for a private CA instead {why}")
        wide = wide_admin_ranges(self.hetzner.admin_source_ranges)
        if wide:
            problems.append(f"hetzner.admin_source_ranges: {'; '.join(wide)}: that opens SSH to the internet; "
                            f"list the office / VPN ranges, no more than a /{ADMIN_MAX_PREFIX} in all {why}")
        if problems:
            raise ValueError("\n".join(problems))  # one line each (see format_validation_error)
        return self

    # convenience -------------------------------------------------------------
    @property
    def primary(self) -> Server:
        return next(s for s in self.servers if s.role == "primary")

    @property
    def replicas(self) -> list[Server]:
        return [s for s in self.servers if s.role == "replica"]

    def server(self, name: str) -> Server:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    def placeholders(self) -> dict[str, str]:
        """Values the operator must still edit, by dotted key: those containing ``CHANGE-ME``, and admin
        ranges in the documentation networks (TEST-NET-1/2/3, 2001:db8::/32), which reach nobody."""
        return {**self._strings_where(lambda v: PLACEHOLDER in v), **{f"hetzner.admin_source_ranges[{i}]": r for i, r
                in enumerate(self.hetzner.admin_source_ranges) if documentation_network(r)}}

    def secret_refs(self) -> dict[str, str]:
        """Every secret reference in these params, by dotted key."""
        return self._strings_where(is_secret_ref)

    def _strings_where(self, keep: Callable[[str], bool]) -> dict[str, str]:
        """Every string value in these params for which *keep* holds, by dotted key (``a.b[0].c``)."""
        out: dict[str, str] = {}

        def walk(obj: Any, prefix: str) -> None:
            if isinstance(obj, BaseModel):
                for name in type(obj).model_fields:
                    walk(getattr(obj, name), f"{prefix}.{name}" if prefix else name)
            elif isinstance(obj, list):
                for i, x in enumerate(obj):
                    walk(x, f"{prefix}[{i}]")
            elif isinstance(obj, str) and keep(obj):
                out[prefix] = obj

        walk(self, "")
        return out


# loading ------------------------------------------------------------------------

def home() -> Path:
    """Where ``params/`` and ``outputs/`` live: ``HCBPG_HOME`` or the repository root."""
    env = os.environ.get("HCBPG_HOME")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent


def params_path(env: str, base: Path | None = None) -> Path:
    return (base or home()) / "params" / f"{env}.yaml"


def format_validation_error(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = dotted_key(loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = fields_at(Params, loc)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys here: {', '.join(known)}"
            problems.append(f"{key}: unknown key{hint}")
        elif err["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        elif msg.split(":")[0] in ("block", "cipher_pass", "repo_path_prefix", "s3_key", "url", "heroku_app", "ttl",
                                   "synchronous_mode_strict", "create_replica_methods", "election_ms", "peer_port",
                                   "data_dir", "patroni", "etcd", "connection_limit") and ":" in msg:
            sub, rest = msg.split(":", 1)
            problems.append(f"{key + '.' if key else ''}{sub}:{rest}")
        elif not key:
            # top-level checks name their own keys, one problem a line
            problems += [line if re.match(r"^[a-z_]+[.\[:]", line) and line.split(".")[0].split("[")[0].split(":")[0]
                         in Params.model_fields else f"(top level): {line}" for line in msg.split("\n")]
        else:
            problems.append(f"{key or '(top level)'}: {msg}")
    return [printable(p) for p in problems]  # one line each, whatever a key or a message held


def _covers(outer: str, inner: str) -> bool:
    """True when the dotted key *outer* is *inner* or one of its parents (``a.b`` covers ``a.b[0].c``)."""
    return inner == outer or inner.startswith((outer + ".", outer + "["))


def parse_params(data: Any, *, source: str = "params") -> Params:
    """Validate already-loaded params data; raises ParamsError listing every problem, one line each.

    Control characters are looked for in the data as loaded first, so each is named by its exact
    key (a mapping's entry too), and the model's own complaint about the same value is dropped.
    No input ends in another exception: a check that fails unexpectedly is a problem too.
    """
    if not isinstance(data, dict):
        raise ParamsError(source, ["the file must hold a mapping of keys (YAML), not "
                                   f"{type(data).__name__}"])
    controls = control_problems(data)
    try:
        params = Params.model_validate(data)
    except ValidationError as exc:
        others = [p for p in format_validation_error(exc)
                  if not any(_covers(k, p.split(":", 1)[0]) or _covers(p.split(":", 1)[0], k) for k in controls)]
        raise ParamsError(source, [f"{k}: {v}" for k, v in controls.items()] + others) from None
    except (TypeError, ArithmeticError, RecursionError, LookupError, AttributeError) as exc:
        # a check that did not foresee this input: still an answer about the params, not a traceback
        raise ParamsError(source, [f"(top level): these params could not be checked ({type(exc).__name__}: "
                                   f"{printable(str(exc))[:200]}); compare them with params/production.yaml"]) from None
    if controls:  # the model accepted them (a check missing there): refused all the same
        raise ParamsError(source, [f"{k}: {v}" for k, v in controls.items()])
    return params


def load_params(env: str, base: Path | None = None) -> Params:
    """Load and validate ``params/<env>.yaml``."""
    path = params_path(env, base)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ParamsError(str(path), [f"no params for environment '{env}' (have: {', '.join(available) or 'none'})"])
    params = parse_params(read_yaml_file(path), source=str(path))
    if params.environment != env:
        raise ParamsError(str(path), [f"environment: says '{params.environment}' but the file is for '{env}'"])
    shared = shared_secret_refs(params, path)
    if shared:
        raise ParamsError(str(path), shared)
    return params


def _dotted(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def shared_secret_refs(params: Params, path: Path) -> list[str]:
    """Problems: a per-environment secret reference (S3 key, cipher passphrase) that another params
    file beside *path* uses too.  An environment with allow_weak_settings may share."""
    if params.allow_weak_settings:
        return []
    mine = {k: v for k, v in params.secret_refs().items() if k in PER_ENVIRONMENT_SECRETS}
    problems = []
    for other in sorted(path.parent.glob("*.yaml")):
        if other.resolve() == path.resolve():
            continue
        try:
            data = read_yaml_file(other)
        except (OSError, ParamsError):
            continue  # that file's own check reports it
        refs = {k: _dotted(data, k) for k in PER_ENVIRONMENT_SECRETS}
        for key, ref in mine.items():
            users = [k for k, v in refs.items() if v == ref]
            if users:
                problems.append(f"{key}: {ref} is also {users[0]} of {other.name}; each environment needs "
                                "its own S3 key and cipher passphrase, so that one leaked or rotated "
                                "credential touches one environment only")
    return problems


def params_sha256(env: str, base: Path | None = None) -> str:
    return hashlib.sha256(params_path(env, base).read_bytes()).hexdigest()
