"""Monitoring hookup on each server: Vector's ``postgresql_metrics`` source (config rendered and
installed; Vector itself comes from its own apt repository) and, as the alternative that ships
in Debian, ``prometheus-postgres-exporter`` (installed, configured and run).

Both connect to the server's **private IP** (the team's notes: never localhost, so the
pg_hba line is the one that admits them) as their own role from :mod:`hcbpg.privileges`.
The password lives only in a 0600 environment file (``/etc/default/vector``,
``/etc/default/prometheus-postgres-exporter``); configs reference it as ``${VAR}``.  Every
renderer takes the password or ``None``; ``None`` renders :data:`PLACEHOLDER`, which is what
plans, diffs and records show.

Both exporters a machine runs (node exporter, :mod:`hcbpg.ops.alerting`; the PostgreSQL exporter here) serve
TLS only, with one certificate of the environment's CA naming the machine's private IP
(:func:`ensure_exporter_tls`): a certificate of their own, since PostgreSQL's key is postgres's alone.
"""

from __future__ import annotations

import shlex
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.desired import alerting as desired_alerting
from hcbpg.desired.monitoring import (
    EXPORTER_BIN,
    EXPORTER_CERT,
    EXPORTER_ENV,
    EXPORTER_KEY,
    EXPORTER_LOG,
    EXPORTER_PACKAGE,
    EXPORTER_PIDFILE,
    EXPORTER_QUERIES,
    EXPORTER_USER,
    EXPORTER_WEB_CONFIG,
    PLACEHOLDER,  # noqa: F401 - what plans and diffs show for a password
    VECTOR_CONFIG,
    VECTOR_ENV,
    evaluate_exporter_metrics,
    exporter_cert_spec,
    exporter_listen,
    exporter_url,
    redact,
    render_exporter_env,
    render_exporter_queries,
    render_exporter_web_config,
    render_vector_config,
    render_vector_env,
)
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops.ha_files import ensure_cert, ensure_text
from hcbpg.ops.packages import get_installed_packages
from hcbpg.outcome import Check, Outcome, unified_diff
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.desired.roles import RolesConfig
    from hcbpg.params import Params, Server


def _no_password(what: str, path: str) -> SafetyCheckFailed:
    return SafetyCheckFailed(f"{what}: {path} holds a password, and none was given to write it (nothing changed)",
                             hint="Resolve the role's password (step 13 does) and run the step again.")


def _has_systemd(host: "HostLike") -> bool:
    return host.probe("test -d /run/systemd/system").ok


def get_exporter_running(host: "HostLike") -> bool:
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


def ensure_exporter_tls(host: "HostLike", params: "Params", name: str, private_ip: str) -> list[Outcome]:
    """The exporters' TLS on machine *name*: the environment's CA where clients find it, a certificate naming
    *private_ip* (key 0600, the exporters' user's; issued again when it expires, its CA or its names changed) and
    exporter-toolkit's web config that makes both exporters serve TLS only.  The exporters' user must exist
    (their package made it) unless *host* is a dry run."""
    out = ensure_cert(host, params, exporter_cert_spec(name, private_ip), EXPORTER_CERT, EXPORTER_KEY,
                      owner=EXPORTER_USER, what=f"the exporters' TLS certificate on {name} ({private_ip})")
    out.append(ensure_text(host, EXPORTER_WEB_CONFIG, render_exporter_web_config(params), mode=0o644, owner="root",
                           what=f"the exporters' web config on {name} (TLS only)"))
    return out


def _exporter_queries() -> str:
    return render_exporter_queries(desired_alerting.EXPORTER_QUERIES)


def ensure_exporter(host: "HostLike", params: "Params", server: "Server", cfg: "RolesConfig",
                    password: str | None) -> Outcome:
    """prometheus-postgres-exporter installed, its env file ours (0600), serving TLS only (its certificate and web
    config: :func:`ensure_exporter_tls`), running (restarted when a file changed).

    *password* None (a plan): the env file is compared and recorded as shown (``<secret>``); a host that is
    not a dry run refuses to write it without the password."""
    seen = Changes(host)
    what = f"prometheus-postgres-exporter on {server.name}"
    shown = render_exporter_env(params, server, cfg, None)
    installed = EXPORTER_PACKAGE in get_installed_packages(host, [EXPORTER_PACKAGE])
    queries = _exporter_queries()
    current_queries = host.read_text(EXPORTER_QUERIES)
    current = host.read_text(EXPORTER_ENV)
    desired = render_exporter_env(params, server, cfg, password) if password is not None else None
    env_changes = desired is None or current != desired
    if env_changes and desired is None and not host.dry_run:
        # dry run: a plan is made without the password (it is resolved only to apply), so it records the file
        # as shown; a real write without it is refused (before anything changed)
        raise _no_password(what, EXPORTER_ENV)
    actions = [] if installed else [f"apt-get install {EXPORTER_PACKAGE}"]
    if not installed:
        host.run(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
                 f"{EXPORTER_PACKAGE}", timeout=900)
        if _has_systemd(host):  # the package starts it with an empty DSN; ours comes next
            host.run(f"systemctl stop {EXPORTER_PACKAGE}", check=False)
    # after the package: it makes the exporters' user, who owns the key
    tls = ensure_exporter_tls(host, params, server.name, server.private_ip)
    tls_changed = [o for o in tls if o.changed]
    for o in tls_changed:
        actions += list(o.actions) if o.actions else [o.what]
    if current_queries != queries:
        actions.append(f"write {EXPORTER_QUERIES}")
    if env_changes:
        actions.append(f"write {EXPORTER_ENV} (0600)")
    diff = unified_diff(redact(current or "", password), shown, EXPORTER_ENV) if current != desired else ""
    diff += unified_diff(current_queries or "", queries, EXPORTER_QUERIES)
    diff += "".join(o.diff for o in tls_changed if o.diff)
    running = get_exporter_running(host)
    if env_changes or current_queries != queries or tls_changed or not running:
        actions.append("restart" if running else "start")
    if not actions:
        return Outcome(what, False, host.dry_run)
    if current_queries != queries:
        host.run(f"mkdir -p {EXPORTER_QUERIES.rsplit('/', 1)[0]}")
        host.put_text(EXPORTER_QUERIES, queries, mode=0o644, owner="root")
    if env_changes:
        host.put_text(EXPORTER_ENV, desired if desired is not None else shown, mode=0o600, owner="root")
    if _has_systemd(host):
        host.run(f"systemctl enable {EXPORTER_PACKAGE} && systemctl restart {EXPORTER_PACKAGE}")
    else:
        host.run(_stop_cmd(), display="stop prometheus-postgres-exporter (start-stop-daemon)")
        host.run(_start_cmd(), display="start prometheus-postgres-exporter (start-stop-daemon, as prometheus)")
    return seen.outcome(what, diff=diff, actions=actions)


def run_stop_exporter(host: "HostLike") -> None:
    """Stop the exporter (the unit, or our pidfile's process)."""
    if _has_systemd(host):
        host.run(f"systemctl stop {EXPORTER_PACKAGE}", check=False)
    else:
        host.run(_stop_cmd(), check=False, display="stop prometheus-postgres-exporter")


def _exporter_ca(host: "HostLike") -> str | None:
    """The CA the exporter trusts for PostgreSQL (``sslrootcert`` of its env file, hcbpg's): the one that signed
    its own certificate too."""
    env = host.read_text(EXPORTER_ENV) or ""
    for line in env.splitlines():
        if line.startswith("DATA_SOURCE_NAME="):
            query = urllib.parse.urlsplit(line.split("=", 1)[1].strip("'")).query
            found = urllib.parse.parse_qs(query).get("sslrootcert")
            return found[-1] if found else None
    return None


def get_exporter_metrics(host: "HostLike", server: "Server", *, ca_file: str | None = None, timeout: float = 20.0,
                         sleep: Callable[[float], None] = time.sleep) -> str:
    """The exporter's /metrics over TLS from the server itself (the endpoint is on the private IP), verified
    against *ca_file* (default: the CA of the exporter's env file); '' when it never answers."""
    ca = ca_file or _exporter_ca(host)
    if ca is None:
        return ""
    cmd = shlex.join(["curl", "-fsS", "--max-time", "5", "--cacert", ca, exporter_url(server)])
    for _ in polling_loop(timeout, interval=0.5, sleep=sleep):
        res = host.probe(cmd)
        if res.ok and "pg_up" in res.stdout:
            return res.stdout
    return ""


def get_plain_http_refused(host: "HostLike", server: "Server") -> tuple[bool, str]:
    """Whether the exporter refuses plain HTTP (a TLS-only listener answers it 400); (refused, what curl said)."""
    url = f"http://{exporter_listen(server)}/metrics"
    res = host.probe(shlex.join(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url]))
    code = res.stdout.strip()
    return code != "200", f"GET {url}: HTTP {code}" if code and code != "000" else res.output.strip()[-200:]


def check_exporter(host: "HostLike", server: "Server", *, ca_file: str | None = None) -> list[Check]:
    """The exporter's endpoint answers over TLS on the private IP with the server up and the replication figures,
    and refuses plain HTTP."""
    checks = evaluate_exporter_metrics(get_exporter_metrics(host, server, ca_file=ca_file), server)
    refused, detail = get_plain_http_refused(host, server)
    checks.append(Check.of("exporter refuses plain HTTP", refused, detail, server.name))
    return checks


def ensure_vector_config(host: "HostLike", params: "Params", server: "Server", cfg: "RolesConfig",
                         password: str | None, *, appsignal_key: str | None = None) -> Outcome:
    """Vector's config and env file on *server*; reloads Vector when it is installed (``vector validate`` first).

    *password* None (a plan): the env file is compared and recorded as shown (``<secret>``); a host that is
    not a dry run refuses to write it without the password."""
    seen = Changes(host)
    what = f"Vector postgresql_metrics config on {server.name}"
    appsignal = appsignal_key is not None
    config = render_vector_config(params, server, cfg, appsignal=appsignal)
    env_shown = render_vector_env(params, server, cfg, None, appsignal=appsignal)
    env = render_vector_env(params, server, cfg, password, appsignal_key=appsignal_key, appsignal=appsignal) \
        if password is not None else None
    cur_conf, cur_env = host.read_text(VECTOR_CONFIG), host.read_text(VECTOR_ENV)
    actions, diff = [], ""
    if cur_conf != config:
        actions.append(f"write {VECTOR_CONFIG}")
        diff += unified_diff(cur_conf or "", config, VECTOR_CONFIG)
    env_changes = env is None or cur_env != env
    if env_changes:
        actions.append(f"write {VECTOR_ENV} (0600)")
        diff += unified_diff(redact(cur_env or "", password), env_shown, VECTOR_ENV)
    installed = host.probe("command -v vector").ok
    note = [] if installed else ["(vector is not installed here: config only)"]
    if not actions:
        return Outcome(what, False, host.dry_run, actions=note)
    if env_changes and env is None and not host.dry_run:
        # dry run: a plan is made without the password, so it records the file as shown; a real write is refused
        raise _no_password(what, VECTOR_ENV)
    if installed:
        actions.append("vector validate, then restart vector")
    host.run("mkdir -p /etc/vector")
    if cur_conf != config:
        host.put_text(VECTOR_CONFIG, config, mode=0o644, owner="root")
    if env_changes:
        host.put_text(VECTOR_ENV, env if env is not None else env_shown, mode=0o600, owner="root")
    if installed:
        host.run(f"set -a && . {VECTOR_ENV} && set +a && vector validate --no-environment {VECTOR_CONFIG}")
        if _has_systemd(host):
            host.run("systemctl restart vector")
    return seen.outcome(what, diff=diff, actions=actions + note)


def check_vector_files(host: "HostLike", params: "Params", server: "Server", cfg: "RolesConfig") -> list[Check]:
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
