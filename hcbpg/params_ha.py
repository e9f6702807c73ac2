"""The high-availability sections of params (issue 28): the jumpbox, Patroni and etcd, each with the checks
that span its own fields.  :class:`hcbpg.params.Replication` and :class:`hcbpg.params.Params` hold them and
check what spans sections (manager patroni needs a jumpbox and pgBackRest; no Patroni-owned setting in
``postgres.settings``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hcbpg.param_types import Address, Model, Name, Network, OwnDirectory, Port, SecretRef


class Jumpbox(Model):
    """The small server step 01 creates beside the database servers: the only SSH way in, and etcd's third voter."""

    name: Name = "hcb-jumpbox"
    #: inside network.subnet; roles.metabase.jumpbox_ip must be this address
    private_ip: Address
    #: a small shared-vCPU type offered in hetzner.location (cx22 is not offered in ash: cpx11)
    server_type: str = "cpx11"
    #: its firewall: SSH from hetzner.admin_source_ranges and ssh_extra_sources
    firewall: Name = "hcb-jumpbox-ssh"
    #: more sources allowed to reach its SSH (e.g. Metabase's tunnel), CIDRs
    ssh_extra_sources: list[Network] = Field(default_factory=list)
    #: address the operator's SSH reaches; default: its public IP recorded by provisioning
    ssh_host: str | None = None


#: PostgreSQL settings Patroni owns under ``replication.manager: patroni``: its command-line options (it passes
#: them to postgres, so a conf.d value would be silently overridden; hcbpg puts the values in the DCS) and what
#: it writes per member (cluster_name = the scope, listen, recovery, synchronous_standby_names, hba/ident file).
#: Patroni 3.0.2: patroni/postgresql/config.py CMDLINE_OPTIONS, get_server_parameters, recovery parameters.
PATRONI_OWNED_SETTINGS = frozenset({
    "listen_addresses", "port", "cluster_name", "wal_level", "hot_standby", "max_connections", "max_wal_senders",
    "wal_keep_size", "wal_keep_segments", "max_prepared_transactions", "max_locks_per_transaction",
    "track_commit_timestamp", "max_replication_slots", "max_worker_processes", "wal_log_hints",
    "primary_conninfo", "primary_slot_name", "recovery_target_timeline", "synchronous_standby_names",
    "hba_file", "ident_file",
})

#: how long an isolated leader may spend asking the other members before it demotes under failsafe_mode:
#: Patroni's POST /failsafe to each member (timeout 2 s, one retry) -- design section 5
FAILSAFE_EXTRA_S = 4


ReplicaMethod = Literal["pgbackrest", "basebackup"]
REPLICA_METHODS: tuple[ReplicaMethod, ...] = ("pgbackrest", "basebackup")


class PatroniParams(Model):
    """Patroni on the database servers (``replication.manager: patroni``): the leader lease and its timing."""

    #: the cluster's name in the DCS; PostgreSQL's cluster_name on every member becomes this
    scope: Name
    #: the leader lease (s): a replica may take the leader key this long after the leader's last refresh
    ttl: int = Field(12, ge=1, le=3600)
    #: seconds between two runs of Patroni's loop (each refreshes the lease)
    loop_wait: int = Field(2, ge=1, le=3600)
    #: how long a DCS or PostgreSQL call is retried before the leader gives up and demotes
    retry_timeout: int = Field(3, ge=1, le=3600)
    #: a replica further behind than this (bytes of WAL) is never promoted automatically
    maximum_lag_on_failover: int = Field(1048576, ge=0)
    #: a primary PostgreSQL that crashed under a live Patroni gets this long to come back before a failover
    primary_start_timeout: int = Field(30, ge=0, le=3600)
    #: a commit is acknowledged once the sync standby has it: no acknowledged write is lost in a failover;
    #: each commit waits a private-network round trip, and a dead standby blocks commits until it is dropped
    synchronous_mode: bool = True
    #: strict: with no sync standby, commits wait (never unprotected) -- a dead replica stops every write
    synchronous_mode_strict: bool = False
    #: the leader keeps serving while the DCS is down as long as every member answers it (#1593, #2625)
    failsafe_mode: bool = True
    #: off: none; automatic: used when /dev/watchdog exists; required: Patroni refuses to lead without it
    watchdog: Literal["off", "automatic", "required"] = "automatic"
    #: Patroni's REST API (TLS, basic auth) on each member's private IP
    rest_port: Port = 8008
    rest_password: SecretRef
    #: Patroni's program on the servers (the package's; the lab runs 3.0.4 from its own venv: Debian 12's 3.0.2
    #: may take back leadership after a network cut heals)
    bin: str = Field("/usr/bin/patroni", pattern=r"^/[A-Za-z0-9._/-]+$", max_length=200)
    #: how Patroni builds a new replica: pgBackRest restores from the repository (the primary is not read),
    #: basebackup streams from the leader through a slot
    create_replica_methods: list[ReplicaMethod] = Field(default_factory=lambda: list(REPLICA_METHODS), min_length=1)
    #: Patroni wipes a non-leader's data directory when pg_rewind fails or its timeline diverged (it is
    #: rebuilt with create_replica_methods); false: it stays stopped for the operator
    remove_data_directory_on_rewind_failure: bool = True
    remove_data_directory_on_diverged_timelines: bool = True

    @model_validator(mode="after")
    def _timing(self) -> "PatroniParams":
        extra = FAILSAFE_EXTRA_S if self.failsafe_mode else 0
        need = self.loop_wait + 2 * self.retry_timeout + extra
        if self.ttl < need:
            with_failsafe = f" + {FAILSAFE_EXTRA_S} (failsafe_mode's POST /failsafe to each member)" if extra else ""
            raise ValueError(
                f"ttl: {self.ttl} is below loop_wait + 2 * retry_timeout{with_failsafe} = {self.loop_wait} + "
                f"2 * {self.retry_timeout}{f' + {extra}' if extra else ''} = {need}: an isolated leader would "
                f"still be writing when a replica takes the lease; raise ttl to {need} or lower loop_wait / "
                "retry_timeout")
        if self.synchronous_mode_strict and not self.synchronous_mode:
            raise ValueError("synchronous_mode_strict: true needs synchronous_mode: true (strict only changes what "
                             "synchronous mode does without a standby)")
        dups = sorted({m for m in self.create_replica_methods if self.create_replica_methods.count(m) > 1})
        if dups:
            raise ValueError(f"create_replica_methods: {', '.join(dups)} listed twice")
        return self


class EtcdParams(Model):
    """etcd on both database servers and the jumpbox: the three voters Patroni's leader lease lives in."""

    client_port: Port = 2379
    peer_port: Port = 2380
    #: etcd's data directory (hcbpg's own; never the package's /var/lib/etcd/default)
    data_dir: OwnDirectory = "/var/lib/etcd/hcbpg"
    #: raft heartbeat and election timeout (ms); etcd requires election >= 5 x heartbeat
    heartbeat_ms: int = Field(100, ge=10, le=10_000)
    election_ms: int = Field(1000, ge=50, le=50_000)
    #: Patroni's etcd user (read-write under its namespace only)
    patroni_password: SecretRef

    @model_validator(mode="after")
    def _consistent(self) -> "EtcdParams":
        if self.election_ms < 5 * self.heartbeat_ms:
            raise ValueError(f"election_ms: {self.election_ms} is below 5 x heartbeat_ms ({5 * self.heartbeat_ms}); "
                             "etcd refuses to start with that")
        if self.client_port == self.peer_port:
            raise ValueError(f"peer_port: {self.peer_port} is client_port too; etcd needs two ports")
        if self.data_dir in ("/var/lib/etcd", "/var/lib/etcd/default"):
            raise ValueError(f"data_dir: {self.data_dir} is the etcd package's own (its default member); "
                             "use a directory of hcbpg's, e.g. /var/lib/etcd/hcbpg")
        return self
