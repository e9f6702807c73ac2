"""Patroni 3.0 on the database servers as each must run it, and what its REST API says (pure).

**Who owns each setting** (design section 3.3): Patroni passes its command-line options to postgres
(``max_connections``, ``wal_level`` ...: :data:`PATRONI_OWNED`), so a conf.d value of theirs would be silently
overridden; hcbpg puts their values (the ones its capacity budget computes) in Patroni's dynamic configuration
(:func:`dcs_parameters`, ``bootstrap.dcs`` once, then a PATCH of ``/config``).  Patroni also writes
``cluster_name`` (= the scope), listen, recovery and ``synchronous_standby_names`` per member.  hcbpg keeps
``pg_hba.conf`` whole (no ``postgresql.pg_hba`` here, so Patroni never writes it) and every other setting in
its conf.d files, which Debian's ``postgresql.conf`` (Patroni's ``postgresql.base.conf``) includes.

**Secrets are never in the config file.**  Patroni reads a directory of YAML files in name order and merges
them (``Config._load_config_path``), so the config is two files in :func:`config_dir`: ``patroni.yml``
(:func:`render_patroni_yaml`, no secret, shown in diffs and golden files) and ``secrets.yml``
(:func:`render_patroni_secrets`, 0600 postgres: the REST, etcd and replication passwords), merged last.
Environment variables (PATRONI_*_PASSWORD) would work under systemd but would be on the command line of a
daemon started without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import yaml

from hcbpg.desired import backups, capacity, tls
from hcbpg.desired import etcd as desired_etcd
from hcbpg.desired.certs import CertSpec
from hcbpg.desired.replication import slot_name as manual_slot_name
from hcbpg.errors import HcbpgError, ParamsError
from hcbpg.outcome import Check
from hcbpg.params_ha import FAILSAFE_EXTRA_S, PATRONI_OWNED_SETTINGS
from hcbpg.pg.conf import MANAGED_HEADER, SettingValue
from hcbpg.secrets import register

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, Server
    from hcbpg.params_ha import PatroniParams

#: PostgreSQL settings Patroni owns (never in hcbpg's conf.d under replication.manager patroni)
PATRONI_OWNED = PATRONI_OWNED_SETTINGS

#: Patroni's REST API user (basic auth; its password is replication.patroni.rest_password)
REST_USER = "patroni"
#: Patroni's etcd user (read-write under NAMESPACE only; its password is replication.etcd.patroni_password)
ETCD_USER = "patroni"
#: Patroni's prefix in etcd (its default)
NAMESPACE = "/service/"
TLS_DIR = "/etc/patroni/tls"
#: the REST API's certificate: SAN = the member's private IP and 127.0.0.1, EKU server + client (members call
#: each other's API with it when verify_client is set)
REST_CERT = f"{TLS_DIR}/rest.crt"
REST_KEY = f"{TLS_DIR}/rest.key"
#: the etcd client certificate: CN=patroni, EKU client (passes etcd's client-cert-auth)
ETCD_CLIENT_CERT = f"{TLS_DIR}/etcd-client.crt"
ETCD_CLIENT_KEY = f"{TLS_DIR}/etcd-client.key"
SECRET_PLACEHOLDER = "<secret>"
WATCHDOG_DEVICE = "/dev/watchdog"
#: the softdog module loaded at boot, and /dev/watchdog given to Patroni's user (watchdog automatic or required)
WATCHDOG_MODULES_LOAD = "/etc/modules-load.d/hcbpg-softdog.conf"
WATCHDOG_UDEV_RULE = "/etc/udev/rules.d/61-hcbpg-watchdog.rules"


def render_watchdog_files() -> dict[str, str]:
    """The files that make the softdog watchdog Patroni's at every boot: the module, and the device's owner."""
    return {WATCHDOG_MODULES_LOAD: f"{MANAGED_HEADER}\nsoftdog\n",
            WATCHDOG_UDEV_RULE: f"{MANAGED_HEADER}\nKERNEL==\"watchdog\", OWNER=\"postgres\", GROUP=\"postgres\", "
                                "MODE=\"0600\"\n"}


#: seconds before the lease ends that the watchdog fires (Patroni's default)
WATCHDOG_SAFETY_MARGIN = 5

#: the settings Patroni takes from the DCS only when its own validator accepts them: hot_standby and
#: wal_log_hints are always on under Patroni, listen/port/cluster_name are per member (config.py CMDLINE_OPTIONS)
_DCS_IGNORED = frozenset({"hot_standby", "wal_log_hints", "listen_addresses", "port", "cluster_name"})


def patroni_params(params: "Params") -> "PatroniParams":
    """``params.replication.patroni``, or a ParamsError naming the missing section."""
    if params.replication is None or params.replication.patroni is None:
        raise ParamsError("params", ["replication.patroni: required under replication.manager patroni"])
    return params.replication.patroni


def managed(params: "Params") -> bool:
    """True when Patroni manages the cluster (replication.manager patroni)."""
    return params.replication is not None and params.replication.manager == "patroni"


def instance(params: "Params") -> str:
    """The cluster's Debian name, Patroni's instance: ``15-main`` (unit ``patroni@15-main``)."""
    return f"{params.postgres.version}-{params.postgres.cluster}"


def config_dir(params: "Params") -> str:
    """The directory ``patroni`` is started with: it merges the YAML files in it by name."""
    return f"/etc/patroni/{instance(params)}.d"


def config_path(params: "Params") -> str:
    return f"{config_dir(params)}/patroni.yml"


def secrets_path(params: "Params") -> str:
    return f"{config_dir(params)}/secrets.yml"


def patroni_argv(params: "Params") -> tuple[str, ...]:
    """How Patroni is started: with its config directory (patroni.yml, then secrets.yml merged over it)."""
    return (patroni_params(params).bin, config_dir(params))


def pgpass_path(params: "Params") -> str:
    """Patroni's own pgpass (it rewrites it); hcbpg's ``~postgres/.pgpass`` stays untouched."""
    return f"/var/lib/postgresql/{instance(params)}.pgpass"


def slot_name(server_name: str) -> str:
    """The slot Patroni keeps for a member (its ``dcs.slot_name_from_member_name``): lowercased, ``-`` and ``.``
    as ``_``, any other character as ``u`` and its code point; ``server-postgres-2`` -> ``server_postgres_2``."""
    def replace(m: re.Match[str]) -> str:
        return "_" if m.group(0) in "-." else f"u{ord(m.group(0)):04d}"
    return re.sub(r"[^a-z0-9_]", replace, server_name.lower())[:63]


def dcs_parameters(params: "Params", shape: capacity.ServerShape) -> dict[str, SettingValue]:
    """The PostgreSQL settings Patroni passes on the command line, with the values hcbpg's desired state gives
    (capacity's connection budget and workers, archiving's senders, replication's wal_keep_size) or PostgreSQL's
    defaults hcbpg never changed; sorted by name.  Patroni's defaults would otherwise win (max_connections 100)."""
    cap = capacity.render_capacity(params, shape)
    senders = backups.archiving_settings(params, archive_mode=True)["max_wal_senders"] if params.pgbackrest else 10
    rep = params.replication
    out: dict[str, SettingValue] = {
        "max_connections": cap["max_connections"],
        "max_worker_processes": cap["max_worker_processes"],
        "max_wal_senders": senders,
        "max_replication_slots": 10,
        "max_locks_per_transaction": 64,
        "max_prepared_transactions": 0,
        "track_commit_timestamp": "off",
        "wal_level": "replica",
        "wal_keep_size": rep.wal_keep_size if rep else "512MB",
    }
    return dict(sorted(out.items()))


def dcs_config(params: "Params", shape: capacity.ServerShape) -> dict[str, Any]:
    """Patroni's dynamic configuration as hcbpg wants it (``bootstrap.dcs``, and what ``PATCH /config`` keeps)."""
    p = patroni_params(params)
    return {
        "ttl": p.ttl,
        "loop_wait": p.loop_wait,
        "retry_timeout": p.retry_timeout,
        "maximum_lag_on_failover": p.maximum_lag_on_failover,
        "primary_start_timeout": p.primary_start_timeout,
        "synchronous_mode": p.synchronous_mode,
        "synchronous_mode_strict": p.synchronous_mode_strict,
        "failsafe_mode": p.failsafe_mode,
        # the slots hcbpg's manual replication made: Patroni leaves them alone (it drops every slot it does not
        # know at once), so a replica handed over keeps its WAL until it streams through Patroni's own slot
        "ignore_slots": [{"name": manual_slot_name(s.name), "type": "physical"} for s in params.servers],
        "postgresql": {
            "use_pg_rewind": True,
            "use_slots": True,
            "remove_data_directory_on_rewind_failure": p.remove_data_directory_on_rewind_failure,
            "remove_data_directory_on_diverged_timelines": p.remove_data_directory_on_diverged_timelines,
            "parameters": dcs_parameters(params, shape),
        },
    }


def render_dcs_patch(current: Mapping[str, Any], params: "Params", shape: capacity.ServerShape) -> dict[str, Any]:
    """What ``PATCH /config`` must send so that Patroni's dynamic configuration *current* (``GET /config``) says
    what hcbpg wants: only the keys that differ, nested; empty when nothing does.  Keys hcbpg does not set
    (``pause``, another tool's) are left alone."""
    return _diff(current, dcs_config(params, shape))


def _diff(current: Mapping[str, Any], want: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in want.items():
        have = current.get(key) if isinstance(current, Mapping) else None
        if isinstance(value, Mapping):
            sub = _diff(have if isinstance(have, Mapping) else {}, value)
            if sub:
                out[key] = sub
        elif not _same(have, value):
            out[key] = value
    return out


def _same(have: Any, want: Any) -> bool:
    """Patroni keeps what it was sent; a value written as a string by hand ('on', '600') still counts."""
    if have == want:
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return str(have).lower() in (("on", "true") if want else ("off", "false")) if have is not None else False
    return have is not None and str(have) == str(want)


def members(params: "Params") -> list["Server"]:
    return list(params.servers)


def rest_url(params: "Params", server: "Server") -> str:
    return f"https://{server.private_ip}:{patroni_params(params).rest_port}"


def patroni_config(params: "Params", server: "Server", shape: capacity.ServerShape) -> dict[str, Any]:
    """The whole of ``patroni.yml`` for *server* as data (no secret)."""
    p = patroni_params(params)
    if params.replication is None:  # pragma: no cover - patroni_params refused already
        raise ParamsError("params", ["replication: required"])
    rep = params.replication
    pg = params.postgres
    ca = tls.client_ca_path(params)
    ip = server.private_ip
    client_tls = {"sslmode": "verify-full", "sslrootcert": ca}
    methods: dict[str, Any] = {}
    if "pgbackrest" in p.create_replica_methods:
        stanza = params.pgbackrest.stanza if params.pgbackrest else pg.database
        methods["pgbackrest"] = {
            # restores from the repository: the leader is not read; --delta reuses what the directory holds
            "command": f"/usr/bin/pgbackrest --stanza={stanza} --delta --type=standby restore",
            "keep_data": True, "no_params": True, "no_leader": True}
    if "basebackup" in p.create_replica_methods:
        methods["basebackup"] = [{"checkpoint": "fast"}]
    return {
        "scope": p.scope,
        "namespace": NAMESPACE,
        "name": server.name,
        "restapi": {
            "listen": f"{ip}:{p.rest_port}",
            "connect_address": f"{ip}:{p.rest_port}",
            "certfile": REST_CERT,
            "keyfile": REST_KEY,
            "cafile": ca,
            # unsafe verbs (POST, PATCH ...) need a certificate of the environment's CA, and basic auth
            "verify_client": "optional",
            "authentication": {"username": REST_USER},
            # the members only; static, so it holds with etcd down (failsafe)
            "allowlist": [s.private_ip for s in members(params)],
        },
        "ctl": {"cacert": ca, "certfile": REST_CERT, "keyfile": REST_KEY},
        "etcd3": {
            # the OTHER voters only, as proxies (no discovery of the member list): Patroni 3.0.2 reads etcd
            # serializably ("we can tolerate stale reads", dcs/etcd3.py), so after a network cut heals, the cut
            # member's own etcd, not caught up yet, still shows it the leader key it held, and it takes its
            # leadership back over the member promoted meanwhile (bench/failover.py: 2 of 17 cuts left no leader
            # running; patroni#2689, #3318). The two others held the quorum during the cut: they are current.
            "hosts": [f"{m.private_ip}:{desired_etcd.etcd_params(params).client_port}"
                      for m in desired_etcd.etcd_members(params) if m.name != server.name],
            "use_proxies": True,
            "protocol": "https",
            "cacert": ca,
            "cert": ETCD_CLIENT_CERT,
            "key": ETCD_CLIENT_KEY,
            # Patroni's client speaks to etcd's gRPC gateway, which ignores the certificate's CN: a user
            "username": ETCD_USER,
        },
        "bootstrap": {
            "dcs": dcs_config(params, shape),
            # initdb and pg_hba are read only if Patroni initialised a new cluster, which adopting the running
            # pair never does; `patroni --validate-config` requires both keys
            "initdb": [{"encoding": "UTF8"}],
            "pg_hba": ["local all postgres peer"],
        },
        "postgresql": {
            # the same addresses hcbpg's connections include gave listen_addresses: adopting needs no restart
            "listen": f"localhost,{ip}:{pg.port}",
            "connect_address": f"{ip}:{pg.port}",
            "data_dir": f"/var/lib/postgresql/{pg.version}/{pg.cluster}",
            "config_dir": f"/etc/postgresql/{pg.version}/{pg.cluster}",
            "bin_dir": f"/usr/lib/postgresql/{pg.version}/bin",
            "pgpass": pgpass_path(params),
            "use_unix_socket": True,
            "authentication": {
                # the unix socket and pg_hba's `local all postgres peer`: no password
                "superuser": {"username": "postgres"},
                "replication": {"username": rep.role, **client_tls},
                "rewind": {"username": rep.role, **client_tls},
            },
            "create_replica_methods": list(p.create_replica_methods),
            **methods,
            "pg_ctl_timeout": 60,
        },
        "watchdog": ({"mode": "off"} if p.watchdog == "off" else
                     {"mode": p.watchdog, "device": WATCHDOG_DEVICE, "safety_margin": WATCHDOG_SAFETY_MARGIN}),
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
    }


def rest_cert_spec(server: "Server") -> CertSpec:
    """The REST API's certificate: the member's name, private IP and 127.0.0.1; server and client (members
    call each other's API with it)."""
    return CertSpec(server.name, (server.private_ip, "127.0.0.1"), (server.name,), server=True, client=True)


#: Patroni's etcd client certificate: no subject at all (etcd's gateway refuses a certificate with a CN when
#: auth is on; Patroni signs in with its user and password instead), client authentication only
ETCD_CLIENT_SPEC = CertSpec(None, server=False, client=True)


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=True, default_flow_style=False, allow_unicode=True, width=1000)


def render_patroni_yaml(params: "Params", server: "Server", *, shape: capacity.ServerShape) -> str:
    """``patroni.yml`` of *server*, whole: header, then sorted YAML.  Holds no secret."""
    return (f"{MANAGED_HEADER}\n# Patroni on {server.name} (step 10_high_availability; replication.patroni from "
            f"params). Passwords are in secrets.yml beside it.\n" + _dump(patroni_config(params, server, shape)))


@dataclass(frozen=True)
class PatroniSecrets:
    """The passwords Patroni needs, resolved by the caller (replication.patroni.rest_password,
    replication.etcd.patroni_password, replication.password)."""

    rest_password: str = field(repr=False)
    etcd_password: str = field(repr=False)
    replication_password: str = field(repr=False)


def render_patroni_secrets(params: "Params", secrets: PatroniSecrets | None = None) -> str:
    """``secrets.yml``: the passwords only, merged over ``patroni.yml`` by Patroni; ``<secret>`` for each when
    *secrets* is None (for a diff or a golden file)."""
    if secrets is not None:
        for value in (secrets.rest_password, secrets.etcd_password, secrets.replication_password):
            register(value)
            if "\x00" in value:
                raise HcbpgError("a Patroni password holds a NUL character, which YAML cannot carry; nothing was "
                                 "written", hint="Store a password without control characters.")
    rest, etcd_pw, repl = ((secrets.rest_password, secrets.etcd_password, secrets.replication_password)
                           if secrets is not None else (SECRET_PLACEHOLDER,) * 3)
    data = {
        "restapi": {"authentication": {"username": REST_USER, "password": rest}},
        "etcd3": {"username": ETCD_USER, "password": etcd_pw},
        "postgresql": {"authentication": {"replication": {"password": repl}, "rewind": {"password": repl}}},
    }
    return f"{MANAGED_HEADER}\n# Patroni's passwords (0600 postgres), merged over patroni.yml.\n" + _dump(data)


def rest_netrc_path(params: "Params") -> str:
    """curl's netrc on each member (0600 root): hcbpg's REST calls read the basic-auth password here, never argv."""
    return f"/etc/patroni/{instance(params)}.netrc"


def render_rest_netrc(params: "Params", server: "Server", password: str | None = None) -> str:
    """The netrc curl reads (``--netrc-file``) for *server*'s REST API, at its private IP and 127.0.0.1; the
    password double-quoted with ``\\`` and ``"`` escaped (curl 7.84 and later: Debian 12 has 7.88.1, Ubuntu
    24.04 8.5); ``<secret>`` when *password* is None."""
    if password is None:
        password = SECRET_PLACEHOLDER
    else:
        register(password)
        if any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in password):
            raise HcbpgError("replication.patroni.rest_password holds a control character (a line break?), which a "
                             "netrc line cannot carry; nothing was written",
                             hint="Store a password without control characters.")
    quoted = '"' + password.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "".join(f"machine {host} login {REST_USER} password {quoted}\n" for host in (server.private_ip, "127.0.0.1"))


#: what every application URL adds under Patroni (design section 6): each dead host costs at most connect_timeout,
#: and a connection to a host that vanished ends within about tcp_user_timeout instead of TCP's ~15 minutes
CLIENT_FAILOVER_OPTIONS: tuple[tuple[str, str], ...] = (
    ("connect_timeout", "2"), ("keepalives", "1"), ("keepalives_idle", "5"), ("keepalives_interval", "2"),
    ("keepalives_count", "2"), ("tcp_user_timeout", "5000"))


def app_hosts(params: "Params") -> list[tuple[str, int]]:
    """Every database server, in params order, as a libpq host list: the app tries each until one is read-write."""
    return [(s.private_ip, params.postgres.port) for s in params.servers]


def app_url_query(params: "Params", user: str, password: str, *,
                  target_session_attrs: str = "read-write") -> dict[str, str]:
    """The query of an app's multi-host URL (pg.conninfo.render_rails_url): login, TLS, which member it wants
    (``read-write``: the leader; ``prefer-standby``: Blazer, Metabase), then the failover options."""
    if target_session_attrs not in ("read-write", "prefer-standby", "any", "read-only", "primary", "standby"):
        raise ValueError(f"target_session_attrs {target_session_attrs!r} is not one libpq 14+ knows")
    return {"user": user, "password": password, **tls.client_tls(params),
            "target_session_attrs": target_session_attrs, **dict(CLIENT_FAILOVER_OPTIONS)}


def tuning_notes(params: "Params", *, version: str | None = None) -> list[str]:
    """Why the lease timing is safe, in the values of *params* (the notebook prints these lines), and what a
    Patroni *version* does to them."""
    p = patroni_params(params)
    extra = FAILSAFE_EXTRA_S if p.failsafe_mode else 0
    stop = p.loop_wait + p.retry_timeout + extra
    notes = [
        f"leader lease ttl {p.ttl} s >= loop_wait {p.loop_wait} + 2 x retry_timeout {p.retry_timeout}"
        + (f" + {extra} (failsafe's POST /failsafe to each member)" if extra else "")
        + f" = {p.loop_wait + 2 * p.retry_timeout + extra}",
        f"an isolated leader stops writing by {stop} s after its last refresh; a replica may take the lease at "
        f"{p.ttl} s: {p.ttl - stop} s between",
        f"a crashed leader is replaced about {p.ttl - p.loop_wait}-{p.ttl + 2} s after the crash (the lease ends, "
        "the replica's watch wakes it, promote)",
    ]
    if p.watchdog != "off":
        notes.append(f"the watchdog fires {WATCHDOG_SAFETY_MARGIN} s before the lease ends "
                     f"({p.ttl - WATCHDOG_SAFETY_MARGIN} s after the last refresh) on a leader whose Patroni hangs")
    major = _version(version)
    if major is not None and major >= (3, 2) and (p.ttl < 20 or p.retry_timeout < 3):
        notes.append(f"Patroni {version} raises ttl below 20 to 20 and retry_timeout below 3 to 3 "
                     "(config.py _validate_and_adjust_timeouts, since 3.2.0): the lease is longer than params say")
    return notes


def _version(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"(?:\d+:)?(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


# what the REST API says ------------------------------------------------------------------------------------

#: roles of GET /cluster (3.0.2: leader, standby_leader, sync_standby, replica; later: quorum_standby)
LEADER_ROLES = ("leader", "standby_leader", "primary", "master")
#: a member that runs and replays (3.0.2 says running; 3.0.4 and later say streaming or in archive recovery)
RUNNING_STATES = ("running", "streaming")


@dataclass(frozen=True)
class Member:
    """One member as ``GET /cluster`` lists it (Patroni 3.0.2's ``cluster_as_json``)."""

    name: str
    role: str
    state: str
    host: str | None = None
    port: int | None = None
    api_url: str | None = None
    timeline: int | None = None
    #: bytes behind the leader's last known position; None for the leader and for 'unknown'
    lag: int | None = None
    pending_restart: bool = False
    tags: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_leader(self) -> bool:
        return self.role in LEADER_ROLES

    @property
    def is_sync_standby(self) -> bool:
        return self.role == "sync_standby"

    @property
    def nofailover(self) -> bool:
        return bool(self.tags.get("nofailover", False))


@dataclass(frozen=True)
class ClusterView:
    members: tuple[Member, ...]
    paused: bool = False
    #: a switchover scheduled for later: {'at', 'from', 'to'}
    scheduled_switchover: Mapping[str, str] | None = None

    @property
    def leader(self) -> Member | None:
        return next((m for m in self.members if m.is_leader), None)

    @property
    def replicas(self) -> list[Member]:
        return [m for m in self.members if not m.is_leader]

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def rows(self) -> list[dict[str, str]]:
        """One row per member, the columns of ``patronictl list``: Member, Host, Role, State, TL, Lag in MB."""
        out = []
        for m in self.members:
            role = {"leader": "Leader", "standby_leader": "Standby Leader", "sync_standby": "Sync Standby",
                    "replica": "Replica"}.get(m.role, m.role)
            out.append({"Member": m.name, "Host": m.host or "", "Role": role, "State": m.state,
                        "TL": "" if m.timeline is None else str(m.timeline),
                        "Lag in MB": "" if m.is_leader else ("unknown" if m.lag is None else f"{m.lag / 1048576:g}")})
        return out


def parse_cluster(data: str | Mapping[str, Any]) -> ClusterView:
    """``GET /cluster`` (JSON text or already decoded) -> :class:`ClusterView`."""
    if isinstance(data, str):
        text = data
        try:
            data = json.loads(text)
        except ValueError:
            raise HcbpgError(f"Patroni's GET /cluster answered no JSON: {text.strip()[:200]!r}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("members"), list):
        raise HcbpgError("Patroni's GET /cluster: expected an object with a members list")
    members = []
    for m in data["members"]:
        lag = m.get("lag")
        members.append(Member(
            name=str(m["name"]), role=str(m.get("role", "")), state=str(m.get("state", "")),
            host=m.get("host"), port=m.get("port"), api_url=m.get("api_url"),
            timeline=int(m["timeline"]) if m.get("timeline") is not None else None,
            lag=int(lag) if isinstance(lag, int) else None,
            pending_restart=bool(m.get("pending_restart", False)), tags=dict(m.get("tags") or {})))
    return ClusterView(tuple(members), paused=bool(data.get("pause", False)),
                       scheduled_switchover=data.get("scheduled_switchover"))


@dataclass(frozen=True)
class SwitchoverPlan:
    """What ``POST /switchover`` would send, and why it may not (an empty *reasons*: it may)."""

    leader: str | None
    candidate: str | None
    reasons: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.reasons

    def body(self) -> dict[str, str]:
        if not self.ok or self.leader is None or self.candidate is None:
            raise HcbpgError("no switchover to send: " + "; ".join(self.reasons))
        return {"leader": self.leader, "candidate": self.candidate}


def plan_switchover(view: ClusterView, candidate: str | None, *, params: "Params") -> SwitchoverPlan:
    """Check a switchover to *candidate* (None: the best replica) before sending it: a leader, the candidate a
    running replica on the leader's timeline, within maximum_lag_on_failover, not tagged nofailover, the sync
    standby in synchronous mode, and no switchover already scheduled."""
    p = patroni_params(params)
    leader = view.leader
    reasons: list[str] = []
    if leader is None:
        reasons.append("no leader: nothing to switch over from (after a failover, run step 11 in after-failover mode)")
    elif leader.state not in RUNNING_STATES:
        reasons.append(f"the leader {leader.name} is {leader.state}, not running")
    if view.scheduled_switchover:
        reasons.append(f"a switchover is already scheduled ({dict(view.scheduled_switchover)})")
    if candidate is None:
        eligible = [m for m in view.replicas if not _candidate_reasons(m, leader, p)]
        eligible.sort(key=lambda m: (not m.is_sync_standby, m.lag if m.lag is not None else 1 << 62, m.name))
        if not eligible:
            reasons.append("no replica may take over: " + "; ".join(
                f"{m.name}: {', '.join(_candidate_reasons(m, leader, p))}" for m in view.replicas) if view.replicas
                else "no replica in the cluster")
            return SwitchoverPlan(leader.name if leader else None, None, tuple(reasons))
        candidate = eligible[0].name
    m = view.member(candidate)
    if m is None:
        reasons.append(f"{candidate} is not a member (members: {', '.join(x.name for x in view.members)})")
    elif m.is_leader:
        reasons.append(f"{candidate} is the leader already")
    else:
        reasons += [f"{candidate}: {r}" for r in _candidate_reasons(m, leader, p)]
    return SwitchoverPlan(leader.name if leader else None, candidate, tuple(reasons))


def _candidate_reasons(m: Member, leader: Member | None, p: "PatroniParams") -> list[str]:
    out = []
    if m.state not in RUNNING_STATES:
        out.append(f"state {m.state or 'unknown'}, not running")
    if m.nofailover:
        out.append("tagged nofailover")
    if m.lag is None:
        out.append("its lag is unknown")
    elif m.lag > p.maximum_lag_on_failover:
        out.append(f"{m.lag} bytes behind, more than maximum_lag_on_failover ({p.maximum_lag_on_failover})")
    if leader is not None and leader.timeline is not None and m.timeline is not None and m.timeline != leader.timeline:
        out.append(f"on timeline {m.timeline}, the leader on {leader.timeline}")
    if p.synchronous_mode and not m.is_sync_standby:
        out.append("not the sync standby (in synchronous mode only it has every acknowledged commit)")
    return out


@dataclass(frozen=True)
class MemberStatus:
    """``GET /patroni`` of one member (3.0.2's ``get_postgresql_status``); it answers with etcd down too."""

    state: str
    role: str
    timeline: int | None = None
    system_identifier: str | None = None
    pending_restart: bool = False
    failsafe_active: bool = False
    #: when this member last reached etcd (epoch seconds)
    dcs_last_seen: int | None = None
    cluster_unlocked: bool = False
    sync_standby: bool = False
    watchdog_failed: bool = False
    version: str | None = None
    scope: str | None = None
    #: the leader's walsenders: application_name, client_addr, state, sync_state
    replication: tuple[Mapping[str, Any], ...] = ()

    @property
    def is_primary(self) -> bool:
        return self.role in ("master", "primary")


def parse_member_status(data: str | Mapping[str, Any]) -> MemberStatus:
    """``GET /patroni`` (JSON text or decoded) -> :class:`MemberStatus`."""
    if isinstance(data, str):
        text = data
        try:
            data = json.loads(text)
        except ValueError:
            raise HcbpgError(f"Patroni's GET /patroni answered no JSON: {text.strip()[:200]!r}") from None
    if not isinstance(data, Mapping) or "state" not in data:
        raise HcbpgError("Patroni's GET /patroni: expected an object with a state")
    patroni = data.get("patroni") or {}
    seen = data.get("dcs_last_seen")
    return MemberStatus(
        state=str(data["state"]), role=str(data.get("role", "")),
        timeline=int(data["timeline"]) if data.get("timeline") is not None else None,
        system_identifier=str(data["database_system_identifier"]) if data.get("database_system_identifier") else None,
        pending_restart=bool(data.get("pending_restart", False)),
        failsafe_active=bool(data.get("failsafe_mode_is_active", False)),
        dcs_last_seen=int(seen) if isinstance(seen, (int, float)) else None,
        cluster_unlocked=bool(data.get("cluster_unlocked", False)), sync_standby=bool(data.get("sync_standby", False)),
        watchdog_failed=bool(data.get("watchdog_failed", False)),
        version=patroni.get("version"), scope=patroni.get("scope"),
        replication=tuple(data.get("replication") or ()))


@dataclass(frozen=True)
class HistoryEntry:
    """One line of ``GET /history``: the timeline that *ended* at *lsn*, why, when, and who led after it."""

    timeline: int
    lsn: int
    reason: str
    timestamp: str | None = None
    new_leader: str | None = None


def parse_history(data: str | list[Any]) -> list[HistoryEntry]:
    """``GET /history`` (the DCS's /history: ``[timeline, lsn, reason, timestamp, new_leader]`` per line; older
    lines have only the first three or four)."""
    if isinstance(data, str):
        text = data
        try:
            data = json.loads(text)
        except ValueError:
            raise HcbpgError(f"Patroni's GET /history answered no JSON: {text.strip()[:200]!r}") from None
    if not isinstance(data, list):
        raise HcbpgError("Patroni's GET /history: expected a list")
    out = []
    for line in data:
        if not isinstance(line, list) or len(line) < 3:
            raise HcbpgError(f"Patroni's GET /history: a line is not [timeline, lsn, reason, ...]: {line!r}"[:300])
        out.append(HistoryEntry(int(line[0]), int(line[1]), str(line[2]),
                                str(line[3]) if len(line) > 3 and line[3] is not None else None,
                                str(line[4]) if len(line) > 4 and line[4] is not None else None))
    return out


# after a failover ----------------------------------------------------------------------------------------------

def parse_lsn(text: str) -> int:
    """A PostgreSQL LSN as written (``0/3000060``) -> bytes."""
    m = re.fullmatch(r"\s*([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})\s*", text)
    if not m:
        raise ValueError(f"{text[:40]!r} is not an LSN (like 0/3000060)")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


#: what step 11 does about the former leader after a failover
#: none: no failover happened; rejoined: it streams from the new leader (Patroni rewound it); wait: Patroni is
#: on it (starting, rewinding, creating a replica); reinitialize: it is in the cluster but stopped or failed
#: (gate rebuild-SERVER, POST /reinitialize); start-patroni: its host answers but its Patroni is not in the
#: cluster; fence: its host does not answer (power it off through the cloud before anything else)
AfterFailoverAction = Literal["none", "rejoined", "wait", "reinitialize", "start-patroni", "fence"]

_BUSY_STATES = ("starting", "restarting", "creating replica", "running custom bootstrap script", "stopping")


@dataclass(frozen=True)
class AfterFailover:
    """What happened since step 10/11 recorded the topology, and what to do about the former leader."""

    happened: bool
    action: AfterFailoverAction
    old_leader: str
    new_leader: str | None = None
    #: the timeline the old leader led, and where it ended (the fork point)
    old_timeline: int | None = None
    fork_lsn: int | None = None
    at: str | None = None
    #: WAL the old leader had written past the fork point (commits it acknowledged that were lost), when known
    lost_bytes: int | None = None
    notes: tuple[str, ...] = ()


def plan_after_failover(view: ClusterView, history: list[HistoryEntry], *, recorded_leader: str,
                        recorded_timeline: int, old_leader_last_lsn: int | None = None,
                        old_leader_reachable: bool = True, old_patroni_running: bool | None = None) -> AfterFailover:
    """Compare the cluster now with the leader and timeline recorded before (pure): did a failover or switchover
    happen, when, from whom to whom, how much WAL the old leader had past the fork point, and what to do with it."""
    leader = view.leader
    old = view.member(recorded_leader)
    if leader is not None and leader.name == recorded_leader and (leader.timeline in (None, recorded_timeline)):
        return AfterFailover(False, "none", recorded_leader, recorded_leader, recorded_timeline,
                             notes=(f"{recorded_leader} still leads on timeline {recorded_timeline}",))
    fork = next((h for h in history if h.timeline == recorded_timeline), None)
    notes: list[str] = []
    if leader is None:
        notes.append("no leader now: Patroni is electing one, or no member may be promoted (in synchronous mode only "
                     "the sync standby may; step 11 can force another, losing what it lacks)")
    action: AfterFailoverAction
    new_leader = (fork.new_leader if fork and fork.new_leader else None) or (leader.name if leader else None)
    lost = None
    if fork is not None and old_leader_last_lsn is not None:
        lost = max(0, old_leader_last_lsn - fork.lsn)
        notes.append(f"{recorded_leader} had {lost} bytes of WAL past the fork point "
                     + ("(nothing acknowledged was lost)" if lost == 0 else
                        "(commits it acknowledged there are not on the new timeline)"))
    if fork is None and leader is not None:
        notes.append(f"/history has no line for timeline {recorded_timeline}: the fork point is not known")
    if leader is not None and leader.name == recorded_leader:
        action = "rejoined"  # it leads again on a later timeline (switched over and back)
        notes.append(f"{recorded_leader} leads again, on timeline {leader.timeline}")
    elif old_leader_reachable and old_patroni_running is False:
        action = "start-patroni"
        notes.append(f"{recorded_leader}'s host answers but its Patroni does not run: start it (it rewinds or rebuilds "
                     "its data as a replica)")
    elif old is not None and not old.is_leader and old.state in RUNNING_STATES and old.lag is not None and (
            leader is None or old.timeline is None or old.timeline == leader.timeline):
        action = "rejoined"
    elif old is not None and old.state in _BUSY_STATES:
        action = "wait"
    elif old is not None:
        action = "reinitialize"
        notes.append(f"{recorded_leader} is {old.state or 'in an unknown state'} in the cluster: rebuild it from the "
                     "repository (POST /reinitialize)")
    elif old_leader_reachable:
        action = "start-patroni"
        notes.append(f"{recorded_leader}'s host answers but its Patroni is not in the cluster: start it (it rewinds "
                     "or rebuilds its data as a replica)")
    else:
        action = "fence"
        notes.append(f"{recorded_leader} does not answer: power it off through the cloud before anything else")
    return AfterFailover(True, action, recorded_leader, new_leader, recorded_timeline,
                         fork.lsn if fork else None, fork.timestamp if fork else None, lost, tuple(notes))


def topology_record(view: ClusterView) -> dict[str, Any]:
    """What steps 10 and 11 record as ``topology`` for later steps (the leader, its timeline, the replicas)."""
    leader = view.leader
    return {"primary": leader.name if leader else None, "timeline": leader.timeline if leader else None,
            "replicas": [m.name for m in view.replicas], "manager": "patroni"}


def check_cluster(view: ClusterView | None, params: "Params", *,
                  statuses: Mapping[str, MemberStatus | None] | None = None) -> list[Check]:
    """The cluster as the operator must see it: a leader, every member running on its timeline, the sync standby
    in synchronous mode, not paused, failsafe not active (etcd reachable)."""
    p = patroni_params(params)
    if view is None:
        rows = [Check("Patroni cluster", "fail", "no member's Patroni answers GET /cluster")]
        for name, st in (statuses or {}).items():
            if st is not None and st.failsafe_active:
                rows.append(Check("failsafe active", "warn", f"{name} is {st.role} and keeps serving because every "
                                  "member answers it (failsafe_mode); etcd is not reachable: no automatic failover "
                                  "until it is back", name))
        return rows
    out: list[Check] = []
    leader = view.leader
    out.append(Check("leader present", "pass" if leader else "fail",
                     f"{leader.name} (timeline {leader.timeline})" if leader else "no leader"))
    for m in view.members:
        if m.is_leader:
            continue
        ok = m.state in RUNNING_STATES and m.lag is not None and m.lag <= p.maximum_lag_on_failover
        # replaying from the archive while its walreceiver reconnects (a leader restarted a moment ago): not lost
        catching_up = m.state == "in archive recovery" and m.lag is not None
        out.append(Check("member streaming", "pass" if ok else "warn" if catching_up else "fail",
                         f"{m.role} {m.state}, lag {m.lag if m.lag is not None else 'unknown'} bytes, timeline "
                         f"{m.timeline}", m.name))
    missing = [s.name for s in params.servers if view.member(s.name) is None]
    if missing:
        out.append(Check("every server a member", "fail", f"not in the cluster: {', '.join(missing)}"))
    if p.synchronous_mode:
        sync = [m.name for m in view.members if m.is_sync_standby]
        out.append(Check("sync standby", "pass" if sync else "warn",
                         f"{', '.join(sync)}" if sync else "none: commits are acknowledged without a standby "
                         "(synchronous_mode is not strict: writes go on, a failover may lose the newest)"))
    if view.paused:
        out.append(Check("maintenance mode", "warn", "paused: Patroni will not fail over (step 11b resumes)"))
    for name, st in (statuses or {}).items():
        if st is not None and st.failsafe_active:
            out.append(Check("failsafe active", "warn", f"{name} keeps serving because every member answers it "
                             "(failsafe_mode); etcd is not reachable", name))
    return out
