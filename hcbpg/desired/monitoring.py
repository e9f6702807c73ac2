"""The monitoring hookup's files, pure: Vector's ``postgresql_metrics`` config and environment file,
prometheus-postgres-exporter's environment file and custom queries (hcbpg's replication queries and
what the alerting rules read), the exporters' TLS (one certificate per machine from the
environment's CA naming its private IP, and exporter-toolkit's web config that node exporter 1.5 and
postgres_exporter 0.11 both read through ``--web.config.file``), and what ``/metrics`` must say.

Every renderer takes the password or ``None``; ``None`` renders :data:`PLACEHOLDER`, which is what
plans, diffs and records show.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

import tomllib

from hcbpg.desired import tls as desired_tls
from hcbpg.desired.certs import CertSpec
from hcbpg.outcome import Check
from hcbpg.pg.conf import MANAGED_HEADER

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.desired.roles import RolesConfig
    from hcbpg.params import Params, Server

PLACEHOLDER = "<secret>"
VECTOR_CONFIG = "/etc/vector/hcbpg-postgresql.toml"
VECTOR_ENV = "/etc/default/vector"
VECTOR_ENDPOINT_VAR = "HCBPG_POSTGRESQL_ENDPOINT"
VECTOR_METRICS_PORT = 9598
EXPORTER_PACKAGE = "prometheus-postgres-exporter"
EXPORTER_ENV = "/etc/default/prometheus-postgres-exporter"
EXPORTER_BIN = "/usr/bin/prometheus-postgres-exporter"
EXPORTER_PORT = 9187
EXPORTER_PIDFILE = "/run/hcbpg-postgres-exporter.pid"
EXPORTER_LOG = "/var/log/hcbpg-postgres-exporter.log"
EXPORTER_QUERIES = "/etc/prometheus/hcbpg-postgres-queries.yaml"
EXPORTER_USER = "prometheus"
#: the exporters' TLS on each machine (node exporter everywhere, the PostgreSQL exporter on a database server): one
#: certificate naming the private IP, its key the exporters' user's (0600): not PostgreSQL's own key, which stays
#: postgres's alone
EXPORTER_TLS_DIR = "/etc/prometheus/hcbpg-tls"
EXPORTER_CERT = f"{EXPORTER_TLS_DIR}/exporter.crt"
EXPORTER_KEY = f"{EXPORTER_TLS_DIR}/exporter.key"
#: exporter-toolkit's web config (paths only, no secret: 0644 root), read by both exporters' --web.config.file
EXPORTER_WEB_CONFIG = "/etc/prometheus/hcbpg-exporter-web.yml"


def _toml_str(value: str) -> str:
    """A TOML basic string (quotes and backslashes escaped)."""
    if "\n" in value:
        raise ValueError("a TOML value here cannot span lines")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shell_value(value: str) -> str:
    """A value for an environment file read by systemd and by ``sh`` (single-quoted, no quotes inside)."""
    if "'" in value or "\n" in value:
        raise ValueError("environment file values cannot hold quotes or newlines")
    return f"'{value}'"


def postgres_url(role: str, password: str | None, server_ip: str, port: int, dbname: str, **query: str) -> str:
    """``postgresql://role:password@ip:port/db?…`` with the password URL-encoded (or the placeholder)."""
    pw = PLACEHOLDER if password is None else urllib.parse.quote(password, safe="")
    q = ("?" + urllib.parse.urlencode(query)) if query else ""
    return f"postgresql://{urllib.parse.quote(role, safe='')}:{pw}@{server_ip}:{port}/{dbname}{q}"


# Vector ----------------------------------------------------------------------------------------

#: the endpoint's sslmode.  Vector's driver (tokio-postgres) parses disable, prefer and require only and refuses
#: every other key (sslmode=verify-full, sslrootcert: "invalid value" / "unknown option": the source would not
#: build); verify-full is what the ``tls.ca_file`` of :func:`render_vector_config` gives it: with a CA file
#: Vector connects through OpenSSL, which checks the chain against that CA and the certificate's name against
#: the host dialled (the private IP, a SAN of the server's certificate), and require refuses a server without TLS
VECTOR_SSLMODE = "require"
#: what Vector's postgresql_metrics source accepts (its config struct denies unknown fields)
VECTOR_SOURCE_FIELDS = frozenset({"type", "endpoints", "include_databases", "exclude_databases",
                                  "scrape_interval_secs", "namespace", "tls"})
VECTOR_TLS_FIELDS = frozenset({"ca_file"})
VECTOR_ENDPOINT_KEYS = frozenset({"user", "password", "dbname", "options", "application_name", "sslmode", "host",
                                  "hostaddr", "port", "connect_timeout", "tcp_user_timeout", "keepalives",
                                  "keepalives_idle", "target_session_attrs", "channel_binding"})


def check_vector_config(config: str, env: str) -> list[str]:
    """What Vector would refuse in hcbpg's config and env file, as far as hcbpg can tell without Vector (Debian
    12 packages none): the source's and its tls table's fields, and the endpoint's query keys and sslmode as
    tokio-postgres parses them; [] when none."""
    problems: list[str] = []
    try:
        doc = tomllib.loads(config)
    except tomllib.TOMLDecodeError as exc:
        return [f"not TOML: {exc}"]
    for name, src in (doc.get("sources") or {}).items():
        if src.get("type") != "postgresql_metrics":
            continue
        problems += [f"sources.{name}.{k}: not a field of postgresql_metrics" for k in sorted(set(src) -
                                                                                              VECTOR_SOURCE_FIELDS)]
        tls = src.get("tls") or {}
        problems += [f"sources.{name}.tls.{k}: not a field (ca_file only)" for k in sorted(set(tls) -
                                                                                          VECTOR_TLS_FIELDS)]
    m = re.search(rf"^{VECTOR_ENDPOINT_VAR}='([^']*)'$", env, re.M)
    if m is None:
        return problems + [f"{VECTOR_ENDPOINT_VAR} is not set"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(m[1]).query)
    problems += [f"endpoint: {k} is not an option tokio-postgres knows" for k in sorted(set(query) -
                                                                                         VECTOR_ENDPOINT_KEYS)]
    mode = query.get("sslmode", ["prefer"])[-1]
    if mode not in ("disable", "prefer", "require"):
        problems.append(f"endpoint: sslmode={mode} (tokio-postgres: disable, prefer or require)")
    return problems


def render_vector_config(params: "Params", server: "Server", cfg: "RolesConfig", *,
                         appsignal: bool = False, scrape_interval_s: int = 15) -> str:
    """Vector's TOML for the postgresql_metrics source on *server* (no secret in it: ``${VAR}``).

    The sink is AppSignal when *appsignal* (key in ``APPSIGNAL_PUSH_API_KEY`` of the env file),
    else a Prometheus endpoint on the private IP that any scraper (or curl) can read.
    """
    lines = [
        MANAGED_HEADER,
        f"# Vector on {server.name}: PostgreSQL metrics through the private IP {server.private_ip},",
        f"# as role {cfg.monitoring.name if cfg.monitoring else '?'}; the endpoint (with the password) is "
        f"{VECTOR_ENDPOINT_VAR} in {VECTOR_ENV} (0600).",
        "",
        "[sources.hcbpg_postgresql]",
        'type = "postgresql_metrics"',
        f"endpoints = [{_toml_str('${' + VECTOR_ENDPOINT_VAR + '}')}]",
        f"include_databases = [{_toml_str('^' + re.escape(params.postgres.database) + '$')}, \"^postgres$\"]",
        'namespace = "postgresql"',
        f"scrape_interval_secs = {int(scrape_interval_s)}",
        "",
        # Vector's postgresql_metrics knows ca_file only here (deny_unknown_fields): with it, its OpenSSL connector
        # verifies the chain to the environment's CA and that the certificate names the address dialled
        "[sources.hcbpg_postgresql.tls]",
        f"ca_file = {_toml_str(desired_tls.client_ca_path(params))}",
        "",
        "[transforms.hcbpg_postgresql_tags]",
        'type = "remap"',
        'inputs = ["hcbpg_postgresql"]',
        f"source = {_toml_str(f'.tags.server = {_toml_str(server.name)}')}",
        "",
    ]
    if appsignal:
        lines += [
            "[sinks.hcbpg_appsignal]",
            'type = "appsignal"',
            'inputs = ["hcbpg_postgresql_tags"]',
            'push_api_key = "${APPSIGNAL_PUSH_API_KEY}"',
            "",
        ]
    else:
        lines += [
            "[sinks.hcbpg_prometheus]",
            'type = "prometheus_exporter"',
            'inputs = ["hcbpg_postgresql_tags"]',
            f"address = {_toml_str(f'{server.private_ip}:{VECTOR_METRICS_PORT}')}",
            "",
        ]
    return "\n".join(lines)


def render_vector_env(params: "Params", server: "Server", cfg: "RolesConfig", password: str | None, *,
                      appsignal_key: str | None = None, appsignal: bool = False) -> str:
    """``/etc/default/vector``: the config dir and the endpoint with the password (placeholder when None)."""
    role = cfg.monitoring.name if cfg.monitoring else "vector"
    url = postgres_url(role, password, server.private_ip, params.postgres.port, "postgres",
                       sslmode=VECTOR_SSLMODE)
    lines = [MANAGED_HEADER, f"# Environment of Vector on {server.name} (mode 0600: it holds a password).",
             "VECTOR_CONFIG_DIR=/etc/vector", f"{VECTOR_ENDPOINT_VAR}={_shell_value(url)}"]
    if appsignal:
        lines.append(f"APPSIGNAL_PUSH_API_KEY={_shell_value(appsignal_key or PLACEHOLDER)}")
    return "\n".join(lines) + "\n"


# prometheus-postgres-exporter -------------------------------------------------------------------

def exporter_listen(server: "Server") -> str:
    return f"{server.private_ip}:{EXPORTER_PORT}"


def exporter_url(server: "Server") -> str:
    """The PostgreSQL exporter's metrics over TLS (its certificate names the private IP)."""
    return f"https://{exporter_listen(server)}/metrics"


def exporter_cert_spec(name: str, private_ip: str) -> CertSpec:
    """The exporters' certificate on machine *name*: its private IP (what Prometheus dials) and its name, server
    authentication only."""
    return CertSpec(name, (private_ip,), (name,))


#: exporter-toolkit's min_version for params.tls.min_protocol
_TLS_VERSION = {"TLSv1.2": "TLS12", "TLSv1.3": "TLS13"}


def render_exporter_web_config(params: "Params") -> str:
    """exporter-toolkit's web config (``--web.config.file``): TLS with the machine's exporter certificate, at least
    params' TLS version; no client certificate asked (what the exporters serve is no secret, what matters is that
    Prometheus verifies whom it scrapes, and that nothing goes in plain text)."""
    return MANAGED_HEADER + "\n" + "\n".join([
        "# exporter-toolkit web config of node exporter and prometheus-postgres-exporter (--web.config.file):",
        "# TLS only; a plain HTTP request gets 400.",
        "tls_server_config:",
        f"  cert_file: {EXPORTER_CERT}",
        f"  key_file: {EXPORTER_KEY}",
        f"  min_version: {_TLS_VERSION[params.tls.min_protocol]}",
    ]) + "\n"


def render_exporter_env(params: "Params", server: "Server", cfg: "RolesConfig", password: str | None) -> str:
    """``/etc/default/prometheus-postgres-exporter`` (the Debian unit's EnvironmentFile) for *server*."""
    role = cfg.exporter.name if cfg.exporter else "postgres_exporter"
    # to the private IP, so pg_hba's hostssl rule applies: lib/pq verifies the certificate and its name
    dsn = postgres_url(role, password, server.private_ip, params.postgres.port, "postgres",
                       sslmode="verify-full", sslrootcert=desired_tls.client_ca_path(params))
    # pg_hba admits the exporter to the postgres database only: the statistics it reads are cluster-wide
    args = (f"--web.listen-address={exporter_listen(server)} --extend.query-path={EXPORTER_QUERIES} "
            f"--web.config.file={EXPORTER_WEB_CONFIG}")
    return "\n".join([
        MANAGED_HEADER,
        f"# prometheus-postgres-exporter on {server.name}: connects as {role} to the private IP, serves",
        f"# metrics on {exporter_url(server)} (TLS). Mode 0600: it holds a password.",
        f"DATA_SOURCE_NAME={_shell_value(dsn)}",
        f"ARGS={_shell_value(args)}",
    ]) + "\n"


_REPLICATION_QUERIES = """
# Read by prometheus-postgres-exporter through --extend.query-path.
pg_replication:
  query: >-
    SELECT pg_is_in_recovery()::int AS is_replica,
    CASE WHEN NOT pg_is_in_recovery() THEN 0
         WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
         ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))) END AS lag
  master: true
  metrics:
    - is_replica:
        usage: "GAUGE"
        description: "1 on a replica (in recovery), 0 on the primary"
    - lag:
        usage: "GAUGE"
        description: "Replay lag behind the primary in seconds (0 when all received WAL is replayed)"

pg_replication_slots:
  query: >-
    SELECT slot_name, active::int AS active,
    (CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), restart_lsn)
          ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) END)::float8 AS retained_bytes
    FROM pg_replication_slots
  master: true
  metrics:
    - slot_name:
        usage: "LABEL"
        description: "Name of the replication slot"
    - active:
        usage: "GAUGE"
        description: "1 when a client streams through the slot"
    - retained_bytes:
        usage: "GAUGE"
        description: "WAL the slot holds back, in bytes"
"""


def render_exporter_queries(rule_queries: str) -> str:
    """The exporter's custom queries file: replication lag and role on every server, WAL each slot holds back
    (0.11 has no replication collector of its own; pg_stat_replication_* comes built in, on the primary), then
    *rule_queries*: what the alerting rules read (:data:`hcbpg.desired.alerting.EXPORTER_QUERIES`, their one
    source; passed in because that module imports this one)."""
    return MANAGED_HEADER + _REPLICATION_QUERIES + "\n" + rule_queries.strip("\n") + "\n"


#: the password of a connection URL and the AppSignal key, in an env file as hcbpg writes it
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s']+:)[^@\s']*(@)")
_APPSIGNAL_KEY = re.compile(r"^(APPSIGNAL_PUSH_API_KEY=)'[^'\n]*'$", re.M)


def redact(text: str, password: str | None) -> str:
    """*text* with the password (raw and URL-encoded) replaced by the placeholder; the password of every
    connection URL and the AppSignal key too, whether *password* is known or not (a plan has none, and the
    file on the server holds the one in force)."""
    if password:
        text = text.replace(urllib.parse.quote(password, safe=""), PLACEHOLDER).replace(password, PLACEHOLDER)
    text = _URL_PASSWORD.sub(lambda m: f"{m[1]}{PLACEHOLDER}{m[2]}", text)
    return _APPSIGNAL_KEY.sub(lambda m: f"{m[1]}'{PLACEHOLDER}'", text)


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> metric name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def evaluate_exporter_metrics(text: str, server: "Server") -> list[Check]:
    """pg_up is 1, and the replication figures are there (lag on a replica, WAL positions on the primary)."""
    m = parse_metrics(text)
    target = server.name
    if not text:
        return [Check("exporter answers", "fail", f"no answer from {exporter_url(server)}", target)]
    up = [v for _, v in m.get("pg_up", [])]
    out = [Check.of("exporter: pg_up", up == [1.0], f"pg_up {up[0]:g}" if up else "no pg_up metric", target)]
    is_replica = [v for _, v in m.get("pg_replication_is_replica", [])]
    lag = [v for _, v in m.get("pg_replication_lag", [])] or [v for _, v in m.get("pg_replication_lag_seconds", [])]
    senders = (m.get("pg_stat_replication_pg_wal_lsn_diff", []) or m.get("pg_stat_replication_pg_current_wal_lsn_bytes", [])
               or [x for k, v in m.items() if k.startswith("pg_stat_replication_") for x in v][:1])
    if is_replica == [1.0]:
        out.append(Check.of("exporter: replication figures", bool(lag),
                            f"replica, pg_replication_lag {lag[0]:g}s" if lag else "no pg_replication_lag", target))
    else:
        detail = (f"primary, {len(senders)} standby(s) in pg_stat_replication: "
                  + ", ".join(f"{lab.get('application_name', '?')} {v:g} bytes behind" for lab, v in senders)
                  if senders else "primary, no standby connected (pg_stat_replication is empty)")
        slots = m.get("pg_replication_slots_retained_bytes", [])
        if slots:
            detail += "; slots: " + ", ".join(f"{lab.get('slot_name', '?')} holds {v:g} bytes" for lab, v in slots)
        out.append(Check("exporter: replication figures", "pass" if senders or is_replica else "warn", detail, target))
    return out


def files_shown(params: "Params", server: "Server", cfg: "RolesConfig", rule_queries: str) -> Mapping[str, str]:
    """What the operator sees of each file (passwords as the placeholder)."""
    return {VECTOR_CONFIG: render_vector_config(params, server, cfg),
            VECTOR_ENV: render_vector_env(params, server, cfg, None),
            EXPORTER_ENV: render_exporter_env(params, server, cfg, None),
            EXPORTER_QUERIES: render_exporter_queries(rule_queries),
            EXPORTER_WEB_CONFIG: render_exporter_web_config(params)}
