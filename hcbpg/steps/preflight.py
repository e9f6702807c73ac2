"""Step 00 (notebook ``00_preflight``): params valid and edited (no placeholder left outside the lab), alerts that
reach a human (a real site's params have an ``alerting:`` section whose receivers and heartbeat are no placeholders),
secrets resolvable, the operator's tools present (the Heroku CLI logged in with access to the app for method heroku),
the Hetzner token read-write, the operator's address inside the admin ranges, every target reachable over SSH;
and the table of what the run will touch.  Nothing here changes anything.

``hcbpg doctor ENV`` runs these same checks (:func:`preflight`) before any run exists, with the signing key's.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbpg import secrets as hsecrets
from hcbpg.adapters.cloud import make_client
from hcbpg.adapters.host import Host
from hcbpg.adapters.hostkeys import known_hosts_path, pinned_address
from hcbpg.adapters.local import LocalRunner, run_local
from hcbpg.adapters.site import PRODUCTION, site_for
from hcbpg.desired.addresses import app_ssh_address, ssh_address, ssh_route
from hcbpg.desired.cloud import check_admin_range
from hcbpg.errors import HcbpgError, HostKeyError, HostUnreachable, SecretError
from hcbpg.ops import app_database as roles
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import operator
from hcbpg.ops.migration.source import get_heroku_account, get_heroku_source_url
from hcbpg.outcome import Check
from hcbpg.params import params_path, params_sha256
from hcbpg.pg import scram as scram
from hcbpg.pg.conninfo import describe_source, parse_source_url
from hcbpg.secrets import is_secret_ref
from hcbpg.steps.targets import recorded_servers

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params
    from hcbpg.steps.context import Run

#: Python packages the steps import on the operator's side (module name, what needs it)
OPERATOR_MODULES = (
    ("fabric", "SSH to the servers"),
    ("paramiko", "SSH to the servers"),
    ("psycopg", "SQL checks from the app host"),
    ("hcloud", "Hetzner Cloud API (step 01)"),
    ("papermill", "running the notebooks"),
    ("scrapbook", "passing results between steps"),
)


#: what each placeholder stands for, so its row says what to put there
PLACEHOLDER_FIX = {
    "pgbackrest.deadman_url": "the team's healthchecks.io ping URL (step 08 fails until then)",
    "hetzner.admin_source_ranges": "the office / VPN ranges SSH may come from (this one reaches nobody: step 01's "
                                   "firewall would lock every operator out)",
    "alerting.receivers.slack.webhook_url": "the 1Password item holding the team's Slack webhook URL (no alert "
                                            "reaches anyone until then)",
    "alerting.heartbeat_url": "the 1Password item holding the dead-man's ping URL the Heartbeat goes to (a dead "
                              "monitor goes unnoticed until then)",
}


def check_params(rb: "Run") -> list[Check]:
    """The params file validated (runbook.start already refused an invalid one), and no placeholder left:
    each one fails on a real site (production, staging), warns in the lab."""
    path = params_path(rb.env, rb.home)
    out = [Check("params valid", "pass", f"{path.name} sha256 {params_sha256(rb.env, rb.home)[:12]}", str(path))]
    real = site_for(rb.params) is PRODUCTION
    for key, value in rb.params.placeholders().items():
        fix = PLACEHOLDER_FIX.get(key.split("[")[0], "the value this environment uses")
        out.append(Check(f"placeholder {key}", "fail" if real else "warn",
                         f"{key} is still the placeholder {value!r}: set it in {path.name} to {fix}",
                         f"params/{path.name}"))
    if rb.params.pgbackrest is not None and rb.params.pgbackrest.archive_timeout == 0:
        out.append(Check("pgbackrest.archive_timeout", "warn", "0: off, so nothing bounds the loss window (on a quiet "
                         "database the newest WAL can wait hours to be archived): set it to 60 or so",
                         f"params/{path.name}"))
    return out


#: what marks a receiver's or the heartbeat's value as a placeholder (case-insensitive): params' CHANGE-ME, and the
#: documentation domains and words an example ships with
ALERTING_PLACEHOLDERS = ("change-me", "changeme", "replace", "example.com", "example.org", "example.net", ".example",
                         "your-", "xxxxxxxx")


def _placeholder_marker(text: str) -> str | None:
    low = text.lower()
    return next((m for m in ALERTING_PLACEHOLDERS if m in low), None)


def _alerting_values(params: "Params") -> dict[str, str]:
    """Every string of the receivers and the heartbeat, by dotted key (what a page goes to)."""
    a = params.alerting
    if a is None:
        return {}
    out = {"alerting.heartbeat_url": a.heartbeat_url}
    for kind in ("slack", "email", "webhook"):
        receiver = getattr(a.receivers, kind)
        if receiver is None:
            continue
        for field, value in receiver.model_dump().items():
            for i, v in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(v, str):
                    out[f"alerting.receivers.{kind}.{field}" + (f"[{i}]" if isinstance(value, list) else "")] = v
    return out


def _resolve(ref: str, key: str) -> str:
    return hsecrets.resolve(ref, key=key)


def check_alerting(rb: "Run", *, resolve: Callable[[str, str], str] = _resolve) -> list[Check]:
    """Alerts reach a human (issue 25): on a real site (production, staging) params without an ``alerting:``
    section, or whose receivers or heartbeat URL are placeholders (in params, or in the value a secret reference
    resolves to: never shown), fail; in the lab they warn.  Params always name a receiver at least (their model
    refuses none).  *resolve* (ref, key) -> value: the secret backend."""
    params = rb.params
    real = site_for(params) is PRODUCTION
    path = params_path(rb.env, rb.home)
    if params.alerting is None:
        if not real:
            return []
        return [Check("alerting", "fail", f"{path.name} has no alerting section: nothing would page anyone when the "
                      "database fails at night (no Prometheus, no Alertmanager, no dead-man for the monitor). Add it "
                      "as params/production.yaml shows: receivers and heartbeat_url as secret references",
                      f"params/{path.name}")]
    listed = params.placeholders()  # CHANGE-ME in params: check_params has a row for each already
    rows: list[Check] = []
    for key, value in _alerting_values(params).items():
        if key in listed:
            continue
        marker = _placeholder_marker(value)
        if marker is not None:
            rows.append(Check(f"placeholder {key}", "fail" if real else "warn",
                              f"{key} is still a placeholder ({marker!r} in {value!r}): set it in {path.name} to "
                              "where this environment's alerts must go", f"params/{path.name}"))
            continue
        if not is_secret_ref(value):
            continue
        try:
            resolved = resolve(value, key)
        except HcbpgError:
            continue  # its "secret" row says why it does not resolve
        marker = _placeholder_marker(resolved)
        if marker is not None:  # the value is never shown: only the marker found in it
            rows.append(Check(f"placeholder {key}", "fail" if real else "warn",
                              f"the secret {value} resolves to a placeholder (it contains {marker!r}): put the real "
                              "URL or address in it", f"params/{path.name}"))
    if rows or any(k.startswith("alerting.") for k in listed):
        return rows
    a = params.alerting
    receivers = [k for k in ("slack", "email", "webhook") if getattr(a.receivers, k) is not None]
    return [Check("alerting", "pass", f"alerts go to {', '.join(receivers)}; the heartbeat to the dead-man every "
                  f"{a.heartbeat_interval} (step 15b sets the monitor up on the jumpbox)", f"params/{path.name}")]


def check_heroku(rb: "Run", *, local: LocalRunner = run_local) -> list[Check]:
    """With ``source.method: heroku``: the Heroku CLI installed and logged in, and its account reaches the app's
    database (``heroku pg:credentials:url``: the URL is read, registered with the scrubber and never shown).
    No rows for method pg_dump."""
    src = rb.params.source
    if src is None or src.method != "heroku" or not src.heroku_app:
        return []
    target = f"heroku app {src.heroku_app}"
    try:
        account = get_heroku_account(local=local)
    except HcbpgError as exc:
        return [Check("heroku CLI logged in", "fail", f"{exc.message}. {exc.hint or ''}".strip(), "operator")]
    out = [Check("heroku CLI logged in", "pass", f"as {account}", "operator")]
    try:
        conn = parse_source_url(get_heroku_source_url(local, src.heroku_app))
    except HcbpgError as exc:
        out.append(Check("source URL from heroku pg:credentials:url", "fail", f"{exc.message}. {exc.hint or ''}"
                         .strip(), target))
        return out
    out.append(Check("source URL from heroku pg:credentials:url", "pass",
                     f"{describe_source(conn)} (read when each step connects; never shown)", target))
    return out


def check_operator_address(rb: "Run", given: str | None = None,
                           existing: dict[str, str | None] | None = None) -> Check:
    """The operator's public address (``--from``, ``HCBPG_OPERATOR_ADDRESS`` or this machine's own: on the link to
    a server or the app host, or towards the internet) is inside ``hetzner.admin_source_ranges``."""
    params = rb.params
    # with a jumpbox the operator's SSH goes to the jumpbox only (its address is the one to check)
    jb = params.jumpbox
    if jb is not None:
        pinned = pinned_address(known_hosts_path(params), jb.name)
        first_hops = [ssh_route(params, jb.name, [{"name": jb.name, "public_ip": pinned}]).address]
    else:
        first_hops = [_address(rb, s.name, existing) for s in params.servers]
    towards = [a for a in [*first_hops,
                           app_ssh_address(params) if params.app_host is not None else None] if a]
    address, how = operator.get_operator_address(run_local, given, towards)
    return check_admin_range(params, address, how)


def _key_file_check(label: str, path_text: str, *, private: bool) -> Check:
    path = Path(os.path.expanduser(path_text))
    if not path.is_file():
        return Check(label, "fail", f"{path} does not exist", "operator")
    if not os.access(path, os.R_OK):
        return Check(label, "fail", f"{path} is not readable", "operator")
    mode = stat.S_IMODE(path.stat().st_mode)
    if private and mode & 0o077:
        return Check(label, "fail", f"{path} has mode {mode:04o}; a private key must be 0600 (chmod 600 {path})",
                     "operator")
    return Check(label, "pass", f"{path} (mode {mode:04o})", "operator")


def check_tools(rb: "Run") -> list[Check]:
    """What the operator's machine needs: Python packages and the SSH key pair named in params."""
    out = []
    for module, why in OPERATOR_MODULES:
        # found, not imported: importing papermill and scrapbook costs seconds and proves no more
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError) as exc:
            out.append(Check(f"python package {module}", "fail", f"missing ({why}): {exc}", "operator"))
            continue
        if not found:
            out.append(Check(f"python package {module}", "fail", f"missing ({why})", "operator"))
            continue
        try:
            version = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            version = "installed"
        out.append(Check(f"python package {module}", "pass", f"{version} ({why})", "operator"))
    out.append(_key_file_check("ssh.key_file", rb.params.ssh.key_file, private=True))
    out.append(_key_file_check("hetzner.ssh_public_key_file", rb.params.hetzner.ssh_public_key_file, private=False))
    return out


def _reach(name: str, address: str, rb: "Run") -> Check:
    try:
        host = Host.from_params(rb.params, name, address)  # through the jumpbox when params have one
    except HostUnreachable as exc:  # the jumpbox has no address yet
        return Check("reachable over SSH", "fail", exc.message, name)
    where = host.where
    try:
        res = host.probe(". /etc/os-release && echo \"$PRETTY_NAME\" && id -un")
        lines = res.stdout.strip().splitlines()
        if not res.ok or len(lines) < 2:
            return Check("reachable over SSH", "fail", f"{where}: shell did not answer (exit {res.exit_code})", name)
        return Check("reachable over SSH", "pass", f"{lines[1]}@{where}: {lines[0]}", name)
    except HostUnreachable as exc:
        return Check("reachable over SSH", "fail", exc.message, name)
    except HostKeyError as exc:
        # refused before logging in: a row that names both fingerprints, not a crash of the preflight
        return Check("reachable over SSH", "fail", exc.message, name)
    finally:
        host.close()


def get_cloud_servers(rb: "Run") -> tuple[dict[str, str | None] | None, Check]:
    """Which params servers exist in the Hetzner Cloud project (name -> public IPv4), and a check row.

    Asking the API, not earlier runs' records, keeps a rebuilt project (or lab) from sending
    preflight after servers that are gone.  None when the API cannot be asked.
    """
    found, row, _client = _cloud_servers(rb)
    return found, row


def _cloud_servers(rb: "Run") -> tuple[dict[str, str | None] | None, Check, Any]:
    """:func:`get_cloud_servers`, and the client that answered (None when the API could not be asked)."""
    params = rb.params
    try:
        token = rb.secret("hetzner.token")
    except SecretError:
        return None, Check("Hetzner Cloud API reachable", "fail", "not asked: the secret hetzner.token cannot be "
                           "resolved (see its row above)", params.hetzner.api_endpoint), None
    try:
        client = make_client(params, token, timeout=params.ssh.connect_timeout * 3)
        found: dict[str, str | None] = {}
        for server in params.servers:
            seen = client.servers.get_by_name(server.name)
            if seen is not None:
                ipv4 = seen.public_net.ipv4 if seen.public_net else None
                found[server.name] = ipv4.ip if ipv4 else None
    except Exception as exc:  # noqa: BLE001 - any failure here is one failed row, with its reason
        reason = exc.message if isinstance(exc, HcbpgError) else f"{type(exc).__name__}: {exc}"
        return None, Check("Hetzner Cloud API reachable", "fail", reason[:300], params.hetzner.api_endpoint), None
    return found, Check("Hetzner Cloud API reachable", "pass",
                        f"{len(found)} of {len(params.servers)} server(s) exist", params.hetzner.api_endpoint), client


def _address(rb: "Run", name: str, existing: dict[str, str | None] | None) -> str | None:
    """Where SSH reaches server *name*: with a jumpbox in params its private IP (through the jumpbox,
    ``Host.from_params``), else ``ssh_host``, the public IP the cloud API reports, or the one pinned."""
    if rb.params.jumpbox is not None:
        return ssh_route(rb.params, name).address
    server = rb.params.server(name)
    return server.ssh_host or (existing or {}).get(name) or ssh_address(
        rb.params, name, recorded_servers(rb))


def check_reachable(rb: "Run", cloud_servers: tuple[dict[str, str | None] | None, Check] | None = None
                    ) -> list[Check]:
    """The Hetzner Cloud API, the app host, and every server that exists already answer."""
    params = rb.params
    existing, api_row = cloud_servers or get_cloud_servers(rb)
    out = [api_row]
    pinned = {s["name"]: s["public_ip"] for s in recorded_servers(rb)}
    for server in params.servers:
        if existing is not None and server.name not in existing:
            # not created yet is the expected state before step 01; a server that was provisioned (its key
            # and address are pinned) and is gone from the project is not
            was = pinned.get(server.name)
            out.append(Check("reachable over SSH", "warn", f"gone: provisioned before (pinned at {was}) but not "
                             "in the Hetzner Cloud project now; step 01 creates it again", server.name) if was else
                       Check("reachable over SSH", "pass", "expected: not created yet (step 01 creates it, "
                             "step 02 connects)", server.name))
            continue
        address = _address(rb, server.name, existing)
        if address is None:
            out.append(Check("reachable over SSH", "pass", "expected: no address known yet (step 01 records it)",
                             server.name))
            continue
        out.append(_reach(server.name, address, rb))
    if params.app_host is not None:
        out.append(_reach(params.app_host.name, app_ssh_address(params), rb))
    return out


def check_app_role_password(rb: "Run", existing: dict[str, str | None] | None = None) -> list[Check]:
    """When the primary already has the app role, its password is the secret's (else step 04 would refuse).

    Checked here so that a wrong ``postgres.app_role_password`` stops the run before any step
    changes anything.  Read-only; skipped (no row) while the primary or its role does not exist.
    """
    params = rb.params
    primary = params.primary
    if existing is not None and primary.name not in existing:
        return []
    address = _address(rb, primary.name, existing)
    if address is None:
        return []
    try:
        password = rb.secret(roles.PASSWORD_KEY)
        with Host.from_params(params, primary.name, address) as host:
            if not pg_cluster.get_cluster_running(host, params):
                return []
            role = roles.get_role(pg_cluster.get_psql(host, params), params.postgres.app_role)
    except HcbpgError:
        return []  # unreachable or no secret: the rows above already say so
    if role is None:
        return []
    stored = role.get("rolpassword") or ""
    ok = scram.scram_matches(password, stored) or scram.md5_matches(password, params.postgres.app_role, stored)
    detail = (f"role {params.postgres.app_role} exists; its password is the secret's" if ok else
              f"role {params.postgres.app_role} exists with a different password than {roles.PASSWORD_KEY}: "
              "step 04 would refuse; point the key at the password the role has")
    return [Check.of(f"{roles.PASSWORD_KEY} matches the role", ok, detail, primary.name)]


def target_rows(rb: "Run") -> list[dict[str, Any]]:
    """One row per machine the run touches: role, private IP, where SSH goes, what happens there."""
    params = rb.params
    recorded = recorded_servers(rb)
    rows = []
    for s in params.servers:
        route = ssh_route(params, s.name, recorded)
        via = f" via {route.via}" if route.via else ""
        rows.append({"host": s.name, "role": s.role, "private_ip": s.private_ip,
                     "ssh": f"{params.ssh.user}@{route.address}{via}" if route.address else "(public IP from step 01)",
                     "what happens": "provisioned (01); PostgreSQL 15 installed and configured (02, 03)"
                                     + ("; role and database created (04)" if s.role == "primary" else "")})
    if params.app_host is not None:
        rows.append({"host": params.app_host.name, "role": "app", "private_ip": params.app_host.private_ip,
                     "ssh": f"{params.ssh.user}@{app_ssh_address(params)}",
                     "what happens": "read-only: connection checks as "
                                     f"{params.postgres.app_role} (04); scratch table created and dropped"})
    rows.append({"host": "Hetzner Cloud API", "role": "cloud", "private_ip": "",
                 "ssh": params.hetzner.api_endpoint,
                 "what happens": f"servers, network {params.network.name}, firewall, placement group (01)"})
    return rows


def preflight(rb: "Run", *, operator_address: str | None = None, local: LocalRunner = run_local) -> list[Check]:
    """Every preflight check, in this order: params (placeholders), secrets, the operator's tools (Heroku CLI),
    the Hetzner API and its token's rights, the operator's address against the admin ranges, reachability,
    the app role's password.  ``hcbpg doctor`` runs it too (*operator_address*: its ``--from``)."""
    checks = check_params(rb) + check_alerting(rb) + rb.check_secrets() + check_tools(rb) + check_heroku(rb,
                                                                                                      local=local)
    found, api_row, client = _cloud_servers(rb)
    if client is not None:
        checks.append(operator.check_token_rights(client, rb.params))
    checks.append(check_operator_address(rb, operator_address, found))
    try:
        checks += check_reachable(rb, (found, api_row))
    except HcbpgError as exc:
        checks.append(Check("reachable over SSH", "fail", exc.message))
    checks += check_app_role_password(rb, found)
    return checks
