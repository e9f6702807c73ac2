"""Monitoring hookup on each server: Vector's ``postgresql_metrics`` source (config rendered and
installed; Vector itself comes from its own apt repository) and, as the alternative that ships
in Debian, ``prometheus-postgres-exporter`` (installed, configured and run).

Both connect to the server's **private IP** (the team's notes: never localhost, so the
pg_hba line is the one that admits them) as their own role from :mod:`hcbpg.privileges`.
The password lives only in a 0600 environment file (``/etc/default/vector``,
``/etc/default/prometheus-postgres-exporter``); configs reference it as ``${VAR}``.  Every
renderer takes the password or ``None``; ``None`` renders :data:`PLACEHOLDER`, which is what
plans, diffs and records show.
"""

from __future__ import annotations

import re
import shlex
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hcbpg.desired import tls as desired_tls
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.pg.conf import MANAGED_HEADER
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
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


def redact(text: str, password: str | None) -> str:
    """*text* with the password (raw and URL-encoded) replaced by the placeholder."""
    if not password:
        return text
    return text.replace(urllib.parse.quote(password, safe=""), PLACEHOLDER).replace(password, PLACEHOLDER)


def _has_systemd(host: "Host") -> bool:
    return host.probe("test -d /run/systemd/system").ok


def get_exporter_running(host: "Host") -> bool:
    """True when the exporter runs (systemd unit active, or our pidfile's process alive)."""
    if _has_systemd(host):
        return host.probe(f"systemctl is-active --quiet {EXPORTER_PACKAGE}").ok
    return host.probe(f"start-stop-daemon --status --pidfile {EXPORTER_PIDFILE}").ok


def _start_cmd() -> str:
    # no systemd (the lab): what the unit does, with start-stop-daemon; the env file is sourced
    # inside the shell, so the password never shows on a command line
    # the log lies in /var/log (Ubuntu's is writable by the syslog group): made with O_EXCL (noclobber), never
    # through a symlink, and its owner set with chown -h
    return (f"{{ [ ! -L {EXPORTER_LOG} ] || {{ echo '{EXPORTER_LOG} is a symbolic link' >&2; exit 77; }}; }} && "
            f"{{ [ -e {EXPORTER_LOG} ] || (set -C; umask 137; : > {EXPORTER_LOG}); }} && "
            f"chown -h {EXPORTER_USER} {EXPORTER_LOG} && "
            f"set -a && . {EXPORTER_ENV} && set +a && "
            f"start-stop-daemon --start --background --make-pidfile --pidfile {EXPORTER_PIDFILE} "
            f"--chuid {EXPORTER_USER} --output {EXPORTER_LOG} --exec {EXPORTER_BIN} -- $ARGS")


def _stop_cmd() -> str:
    return f"start-stop-daemon --stop --oknodo --retry 10 --pidfile {EXPORTER_PIDFILE} && rm -f {EXPORTER_PIDFILE}"


def ensure_exporter(host: "Host | None", params: "Params", server: "Server", cfg: "RolesConfig",
                    password: str | None, *, dry_run: bool) -> Outcome:
    """prometheus-postgres-exporter installed, its env file ours (0600), running (restarted when the file changed)."""
    what = f"prometheus-postgres-exporter on {server.name}"
    shown = render_exporter_env(params, server, cfg, None)
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", shown, EXPORTER_ENV),
                       actions=[f"apt-get install {EXPORTER_PACKAGE}", f"write {EXPORTER_ENV}", "start"])
    actions = []
    if EXPORTER_PACKAGE not in get_installed_packages(host, [EXPORTER_PACKAGE]):
        actions.append(f"apt-get install {EXPORTER_PACKAGE}")
        if not dry_run:
            host.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                     f"{EXPORTER_PACKAGE}", timeout=900)
            if _has_systemd(host):  # the package starts it with an empty DSN; ours comes next
                host.run(f"systemctl stop {EXPORTER_PACKAGE}", check=False)
    queries = render_exporter_queries()
    current_queries = host.read_text(EXPORTER_QUERIES)
    if current_queries != queries:
        actions.append(f"write {EXPORTER_QUERIES}")
    current = host.read_text(EXPORTER_ENV)
    desired = render_exporter_env(params, server, cfg, password) if password is not None else None
    changed_file = desired is None or current != desired or current_queries != queries
    diff = unified_diff(redact(current or "", password), shown, EXPORTER_ENV) if current != desired else ""
    diff += unified_diff(current_queries or "", queries, EXPORTER_QUERIES)
    if desired is None or current != desired:
        actions.append(f"write {EXPORTER_ENV} (0600)")
    running = get_exporter_running(host)
    if changed_file or not running:
        actions.append("restart" if running else "start")
    if dry_run or not actions:
        return Outcome(what, bool(actions), dry_run, diff=diff, actions=actions)
    if current_queries != queries:
        host.run(f"mkdir -p {EXPORTER_QUERIES.rsplit('/', 1)[0]}")
        host.put_text(EXPORTER_QUERIES, queries, mode=0o644, owner="root")
    if desired is None or current != desired:
        assert desired is not None, "the exporter's password is needed to write its env file"
        host.put_text(EXPORTER_ENV, desired, mode=0o600, owner="root")
    if _has_systemd(host):
        host.run(f"systemctl enable {EXPORTER_PACKAGE} && systemctl restart {EXPORTER_PACKAGE}")
    else:
        host.run(_stop_cmd(), display="stop prometheus-postgres-exporter (start-stop-daemon)")
        host.run(_start_cmd(), display="start prometheus-postgres-exporter (start-stop-daemon, as prometheus)")
    return Outcome(what, True, dry_run, diff=diff, actions=actions)


def stop_exporter(host: "Host") -> None:
    if _has_systemd(host):
        host.run(f"systemctl stop {EXPORTER_PACKAGE}", check=False)
    else:
        host.run(_stop_cmd(), check=False, display="stop prometheus-postgres-exporter")


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


def get_exporter_metrics(host: "Host", server: "Server", *, timeout: float = 20.0,
                         sleep=time.sleep) -> str:  # noqa: ANN001
    """The exporter's /metrics from the server itself (the endpoint is on the private IP); '' when it never answers."""
    url = f"http://{exporter_listen(server)}/metrics"
    for _ in polling_loop(timeout, interval=0.5, sleep=sleep):
        res = host.probe(f"curl -fsS --max-time 5 {shlex.quote(url)}")
        if res.ok and "pg_up" in res.stdout:
            return res.stdout
    return ""


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


def check_exporter(host: "Host", server: "Server") -> list[Check]:
    """The exporter's endpoint answers on the private IP with the server up and the replication figures."""
    return evaluate_exporter_metrics(get_exporter_metrics(host, server), server)


def ensure_vector_config(host: "Host | None", params: "Params", server: "Server", cfg: "RolesConfig",
                         password: str | None, *, dry_run: bool, appsignal_key: str | None = None) -> Outcome:
    """Vector's config and env file on *server*; reloads Vector when it is installed (``vector validate`` first)."""
    what = f"Vector postgresql_metrics config on {server.name}"
    appsignal = appsignal_key is not None
    config = render_vector_config(params, server, cfg, appsignal=appsignal)
    env_shown = render_vector_env(params, server, cfg, None, appsignal=appsignal)
    if host is None:
        return Outcome(what, True, dry_run, diff=unified_diff("", config, VECTOR_CONFIG)
                       + unified_diff("", env_shown, VECTOR_ENV), actions=[f"write {VECTOR_CONFIG}", f"write {VECTOR_ENV}"])
    env = render_vector_env(params, server, cfg, password, appsignal_key=appsignal_key, appsignal=appsignal) \
        if password is not None else None
    cur_conf, cur_env = host.read_text(VECTOR_CONFIG), host.read_text(VECTOR_ENV)
    actions, diff = [], ""
    if cur_conf != config:
        actions.append(f"write {VECTOR_CONFIG}")
        diff += unified_diff(cur_conf or "", config, VECTOR_CONFIG)
    if env is None or cur_env != env:
        actions.append(f"write {VECTOR_ENV} (0600)")
        diff += unified_diff(redact(cur_env or "", password), env_shown, VECTOR_ENV)
    installed = host.probe("command -v vector").ok
    if actions and installed:
        actions.append("vector validate, then restart vector")
    if dry_run or not actions:
        return Outcome(what, bool(actions), dry_run, diff=diff,
                       actions=actions + ([] if installed else ["(vector is not installed here: config only)"]))
    host.run("mkdir -p /etc/vector")
    if cur_conf != config:
        host.put_text(VECTOR_CONFIG, config, mode=0o644, owner="root")
    if env is not None and cur_env != env:
        host.put_text(VECTOR_ENV, env, mode=0o600, owner="root")
    if installed:
        host.run(f"set -a && . {VECTOR_ENV} && set +a && vector validate --no-environment {VECTOR_CONFIG}")
        if _has_systemd(host):
            host.run("systemctl restart vector")
    else:
        actions.append("(vector is not installed here: config only)")
    return Outcome(what, True, dry_run, diff=diff, actions=actions)


def check_vector_files(host: "Host", params: "Params", server: "Server", cfg: "RolesConfig") -> list[Check]:
    """Vector's files are ours: config as rendered, env file 0600 root with the endpoint on the private IP."""
    config = host.read_text(VECTOR_CONFIG)
    st = host.probe(f"stat -c '%a %U' {VECTOR_ENV}").stdout.strip()
    env = host.read_text(VECTOR_ENV) or ""
    want_ip = f"@{server.private_ip}:{params.postgres.port}/"
    return [
        Check.of("vector config", config == render_vector_config(params, server, cfg,
                                                                 appsignal="APPSIGNAL_PUSH_API_KEY" in env),
                 VECTOR_CONFIG, server.name),
        Check.of("vector env file 0600 root", st == "600 root", st or "missing", server.name),
        Check.of("vector endpoint on the private IP", want_ip in env,
                 f"endpoint …{want_ip}postgres" if want_ip in env else "endpoint is not the private IP", server.name),
    ]


def files_shown(params: "Params", server: "Server", cfg: "RolesConfig") -> Mapping[str, str]:
    """What the operator sees of each file (passwords as the placeholder)."""
    return {VECTOR_CONFIG: render_vector_config(params, server, cfg),
            VECTOR_ENV: render_vector_env(params, server, cfg, None),
            EXPORTER_ENV: render_exporter_env(params, server, cfg, None),
            EXPORTER_QUERIES: render_exporter_queries()}
