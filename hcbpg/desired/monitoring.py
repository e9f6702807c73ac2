"""The monitoring hookup's files, pure: Vector's ``postgresql_metrics`` config and environment file,
prometheus-postgres-exporter's environment file and custom queries, and what its ``/metrics`` must say.

Every renderer takes the password or ``None``; ``None`` renders :data:`PLACEHOLDER`, which is what
plans, diffs and records show.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg.desired import tls as desired_tls
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
        "[sources.hcbpg_postgresql.tls]",
        f"ca_file = {_toml_str(desired_tls.client_ca_path(params))}",
        "verify_certificate = true",
        "verify_hostname = true",
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
    # Vector's driver knows sslmode=require only; the [sources...tls] section makes it verify the
    # certificate and its name against the environment's CA
    url = postgres_url(role, password, server.private_ip, params.postgres.port, "postgres", sslmode="require")
    lines = [MANAGED_HEADER, f"# Environment of Vector on {server.name} (mode 0600: it holds a password).",
             "VECTOR_CONFIG_DIR=/etc/vector", f"{VECTOR_ENDPOINT_VAR}={_shell_value(url)}"]
    if appsignal:
        lines.append(f"APPSIGNAL_PUSH_API_KEY={_shell_value(appsignal_key or PLACEHOLDER)}")
    return "\n".join(lines) + "\n"


# prometheus-postgres-exporter -------------------------------------------------------------------

def exporter_listen(server: "Server") -> str:
    return f"{server.private_ip}:{EXPORTER_PORT}"


def render_exporter_env(params: "Params", server: "Server", cfg: "RolesConfig", password: str | None) -> str:
    """``/etc/default/prometheus-postgres-exporter`` (the Debian unit's EnvironmentFile) for *server*."""
    role = cfg.exporter.name if cfg.exporter else "postgres_exporter"
    # to the private IP, so pg_hba's hostssl rule applies: lib/pq verifies the certificate and its name
    dsn = postgres_url(role, password, server.private_ip, params.postgres.port, "postgres",
                       sslmode="verify-full", sslrootcert=desired_tls.client_ca_path(params))
    # pg_hba admits the exporter to the postgres database only: the statistics it reads are cluster-wide
    args = f"--web.listen-address={exporter_listen(server)} --extend.query-path={EXPORTER_QUERIES}"
    return "\n".join([
        MANAGED_HEADER,
        f"# prometheus-postgres-exporter on {server.name}: connects as {role} to the private IP, serves",
        f"# metrics on http://{exporter_listen(server)}/metrics. Mode 0600: it holds a password.",
        f"DATA_SOURCE_NAME={_shell_value(dsn)}",
        f"ARGS={_shell_value(args)}",
    ]) + "\n"


def render_exporter_queries() -> str:
    """Custom queries: replication lag and role on every server, WAL each slot holds back (0.11 has no
    replication collector of its own; pg_stat_replication_* comes built in, on the primary)."""
    return MANAGED_HEADER + """
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
        return [Check("exporter answers", "fail", f"no answer from http://{exporter_listen(server)}/metrics", target)]
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


def files_shown(params: "Params", server: "Server", cfg: "RolesConfig") -> Mapping[str, str]:
    """What the operator sees of each file (passwords as the placeholder)."""
    return {VECTOR_CONFIG: render_vector_config(params, server, cfg),
            VECTOR_ENV: render_vector_env(params, server, cfg, None),
            EXPORTER_ENV: render_exporter_env(params, server, cfg, None),
            EXPORTER_QUERIES: render_exporter_queries()}
