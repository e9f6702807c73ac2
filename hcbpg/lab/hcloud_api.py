"""The rehearsal lab's Hetzner Cloud API stand-in: the part of the API that provisioning uses.
It is over 800 lines because it is one self-contained fake of an external API, run as its own
process: each resource's routes, validation and state sit side by side, as in the API reference.

A WSGI app (served threaded by cheroot) that speaks enough of ``https://api.hetzner.cloud/v1``
for hcloud-python 2.x: locations, datacenters, server types, images, SSH keys, networks
with subnets, firewalls, placement groups, servers and actions.  State lives in one JSON
file (written atomically under an exclusive ``flock`` on ``<state>.lock``; readers may take
a shared lock, see :func:`read_state`).  Errors have the real API's shape
(``{"error": {"code", "message", "details"}}``), lists page with ``meta.pagination`` and
filter by ``name`` and ``label_selector``, and every action goes ``running`` → ``success``
only after it has been read once while running, so ``wait_until_finished`` really polls.

Servers become lab hosts through two hooks: ``on_server_created(name, private_ip,
authorized_keys, host_keys)`` is called once per server, as soon as its private IP is known (at create
when created with ``networks``, otherwise at ``attach_to_network``), and may return
``{"public_ip": ...}``; ``on_server_deleted(name)`` tears the host down.  The action that
triggered a hook stays ``running`` until the hook returns, and turns ``error`` if it raises.
``host_keys`` are the ``ssh_keys:`` of a ``#cloud-config`` ``user_data`` (``ed25519_private``,
``ed25519_public``, ...), which cloud-init installs as the server's SSH host keys; the hook
installs them the same way.  Like the real API, ``user_data`` is never returned by a GET,
and the keys are dropped from the state once the host is built.

A third hook, ``on_firewall_changed(name, rules, private_ranges)``, makes firewalls real: it is called for
a server whenever what filters it may have changed (its host built, a firewall created with it, applied,
removed or given new rules), with the inbound rules of every firewall applied to it (None: none applied,
nothing filtered) and the ip_ranges of its networks (never filtered, as on Hetzner); the lab applies them
as iptables in the host's namespace (``hcbpg.lab.hosts.apply_firewall``, ``--enforce-firewalls``).
Delete and rebuild protection (``change_protection``) is kept and a protected server's delete is
refused (422 ``protected``), as the API does.

    python -m hcbpg.lab.hcloud_api --bind 10.0.1.1 --port 8780 --state PATH --token-file PATH
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import copy
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import signal
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOG = logging.getLogger("hcbpg.lab.hcloud_api")

CreatedHook = Callable[[str, str | None, list[str], dict[str, str]], dict | None]
DeletedHook = Callable[[str], None]
#: (server name, inbound rules of the firewalls applied to it or None when none is, its networks' ip_ranges)
FirewallHook = Callable[[str, "list[dict[str, Any]] | None", list[str]], None]

DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 50
PUBLIC_V4 = ipaddress.ip_network("203.0.113.0/24")   # TEST-NET-3: documentation only, never contacted
PUBLIC_V6 = "2001:db8:{n:x}::/64"                     # documentation prefix
NETWORK_ZONES = ("eu-central", "us-east", "us-west", "ap-southeast")
STATE_VERSION = 1

# the static catalog ------------------------------------------------------------------------

LOCATIONS: list[dict[str, Any]] = [
    {"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE", "city": "Falkenstein",
     "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central"},
    {"id": 2, "name": "nbg1", "description": "Nuremberg DC Park 1", "country": "DE", "city": "Nuremberg",
     "latitude": 49.452102, "longitude": 11.076665, "network_zone": "eu-central"},
    {"id": 3, "name": "hel1", "description": "Helsinki DC Park 1", "country": "FI", "city": "Helsinki",
     "latitude": 60.169855, "longitude": 24.938379, "network_zone": "eu-central"},
    {"id": 4, "name": "ash", "description": "Ashburn, VA", "country": "US", "city": "Ashburn, VA",
     "latitude": 39.045821, "longitude": -77.487073, "network_zone": "us-east"},
    {"id": 5, "name": "hil", "description": "Hillsboro, OR", "country": "US", "city": "Hillsboro, OR",
     "latitude": 45.54222, "longitude": -122.951924, "network_zone": "us-west"},
    {"id": 6, "name": "sin", "description": "Singapore", "country": "SG", "city": "Singapore",
     "latitude": 1.283333, "longitude": 103.833333, "network_zone": "ap-southeast"},
]
DATACENTER_NAMES = {"fsn1": "fsn1-dc14", "nbg1": "nbg1-dc3", "hel1": "hel1-dc2", "ash": "ash-dc1",
                    "hil": "hil-dc1", "sin": "sin-dc1"}

ALL_LOCATIONS = [loc["name"] for loc in LOCATIONS]
SERVER_TYPES: list[dict[str, Any]] = [
    {"id": 22, "name": "cx22", "description": "CX22", "category": "cost_optimized", "cores": 2, "memory": 4.0,
     "disk": 40, "storage_type": "local", "cpu_type": "shared", "architecture": "x86",
     "_locations": ["fsn1", "nbg1", "hel1"], "_monthly": "3.79"},
    {"id": 96, "name": "cpx11", "description": "CPX 11", "category": "regular_purpose", "cores": 2,
     "memory": 2.0, "disk": 40, "storage_type": "local", "cpu_type": "shared", "architecture": "x86",
     "_locations": ALL_LOCATIONS, "_monthly": "4.99"},
    {"id": 98, "name": "ccx13", "description": "CCX13 Dedicated CPU", "category": "dedicated", "cores": 2,
     "memory": 8.0, "disk": 80, "storage_type": "local", "cpu_type": "dedicated", "architecture": "x86",
     "_locations": ALL_LOCATIONS, "_monthly": "14.49"},
    {"id": 99, "name": "ccx23", "description": "CCX23 Dedicated CPU", "category": "dedicated", "cores": 4,
     "memory": 16.0, "disk": 160, "storage_type": "local", "cpu_type": "dedicated", "architecture": "x86",
     "_locations": ALL_LOCATIONS, "_monthly": "28.99"},
    {"id": 45, "name": "cax11", "description": "CAX11", "category": "cost_optimized", "cores": 2,
     "memory": 4.0, "disk": 40, "storage_type": "local", "cpu_type": "shared", "architecture": "arm",
     "_locations": ["fsn1", "nbg1", "hel1"], "_monthly": "3.79"},
]
IMAGES: list[dict[str, Any]] = [
    {"id": 161547269, "name": "ubuntu-24.04", "description": "Ubuntu 24.04", "os_flavor": "ubuntu",
     "os_version": "24.04", "architecture": "x86"},
    {"id": 161547270, "name": "ubuntu-24.04", "description": "Ubuntu 24.04", "os_flavor": "ubuntu",
     "os_version": "24.04", "architecture": "arm"},
    {"id": 67794396, "name": "ubuntu-22.04", "description": "Ubuntu 22.04", "os_flavor": "ubuntu",
     "os_version": "22.04", "architecture": "x86"},
    {"id": 114690387, "name": "debian-12", "description": "Debian 12", "os_flavor": "debian",
     "os_version": "12", "architecture": "x86"},
]
CATALOG_CREATED = "2016-01-30T23:55:00+00:00"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# errors ----------------------------------------------------------------------------------------

class ApiError(Exception):
    """An error answered in the real API's shape."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def invalid_input(fld: str, message: str) -> ApiError:
    return ApiError(400, "invalid_input", f"invalid input in field '{fld}': {message}",
                    {"fields": [{"name": fld, "messages": [message]}]})


def not_found(kind: str, ident: Any) -> ApiError:
    return ApiError(404, "not_found", f"{kind} with ID {ident} not found", {})


def uniqueness(kind: str, fld: str, value: Any) -> ApiError:
    return ApiError(409, "uniqueness_error", f"{kind} with the same {fld} already exists ({value})",
                    {"fields": [{"name": fld}]})


def unprocessable(code: str, message: str) -> ApiError:
    return ApiError(422, code, message, {})


# state file ---------------------------------------------------------------------------------------

def empty_state() -> dict[str, Any]:
    return {"version": STATE_VERSION, "next_id": {}, "ssh_keys": [], "networks": [], "firewalls": [],
            "placement_groups": [], "servers": [], "actions": []}


class StateFile:
    """The stand-in's JSON state: one writer (this process, under an exclusive flock), any readers."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _load(self) -> dict[str, Any]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return empty_state()
        data = json.loads(self.path.read_text())
        if data.get("version") != STATE_VERSION:
            raise RuntimeError(f"{self.path}: state version {data.get('version')} is not {STATE_VERSION}")
        return data

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """Load, let the caller change, write back atomically if anything changed."""
        with self._thread_lock, open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self._load()
                before = json.dumps(state, sort_keys=True)
                yield state
                after = json.dumps(state, sort_keys=True, indent=1)
                if json.dumps(json.loads(after), sort_keys=True) != before:
                    fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
                    with os.fdopen(fd, "w") as f:
                        f.write(after + "\n")
                    os.chmod(tmp, 0o600)
                    os.replace(tmp, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def read_state(path: Path | str) -> dict[str, Any]:
    """A consistent snapshot of a stand-in's state file (shared lock), for other processes."""
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    if not path.exists():
        return empty_state()
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            return json.loads(path.read_text())
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# label selectors ------------------------------------------------------------------------------

_LABEL_KEY = re.compile(r"^([a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]{0,61}[a-zA-Z0-9])?$")
_LABEL_VALUE = re.compile(r"^([a-zA-Z0-9]([-a-zA-Z0-9_.]{0,61}[a-zA-Z0-9])?)?$")


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def parse_label_selector(selector: str) -> Callable[[dict[str, str]], bool]:
    """A predicate for the API's label selector syntax (``k=v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``)."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for expr in _split_top(selector):
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^()]*)\)", expr)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                tests.append(lambda lb, k=key, vs=values: lb.get(k) in vs)  # type: ignore[misc]  # mypy cannot infer a lambda whose defaults bind the loop variables
            else:
                tests.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)  # type: ignore[misc]  # mypy cannot infer a lambda whose defaults bind the loop variables
            continue
        m = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*([^=!\s]*)", expr)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                tests.append(lambda lb, k=key, v=value: lb.get(k) != v)  # type: ignore[misc]  # mypy cannot infer a lambda whose defaults bind the loop variables
            else:
                tests.append(lambda lb, k=key, v=value: lb.get(k) == v)  # type: ignore[misc]  # mypy cannot infer a lambda whose defaults bind the loop variables
            continue
        m = re.fullmatch(r"(!?)([^=!\s(),]+)", expr)
        if m:
            neg, key = m.groups()
            tests.append((lambda lb, k=key: k not in lb) if neg else (lambda lb, k=key: k in lb))  # type: ignore[misc]  # mypy cannot infer a lambda whose defaults bind the loop variables
            continue
        raise invalid_input("label_selector", f"cannot parse {expr!r} in label selector {selector!r}")
    return lambda labels: all(t(labels or {}) for t in tests)


def _check_labels(labels: Any, fld: str = "labels") -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise invalid_input(fld, "must be an object of string keys and values")
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise invalid_input(fld, f"label key {k!r} is not valid")
        if not isinstance(v, str) or not _LABEL_VALUE.match(v):
            raise invalid_input(fld, f"label value {v!r} of {k!r} is not valid")
    return dict(labels)


_HOSTNAME = re.compile(r"^(?=.{1,63}$)[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_NAME = re.compile(r"^\S.{0,127}$")


def _check_name(value: Any, *, hostname: bool = False) -> str:
    if not isinstance(value, str) or not value:
        raise invalid_input("name", "is required and must be a string")
    if hostname and not _HOSTNAME.match(value):
        raise invalid_input("name", f"{value!r} is not a valid hostname (RFC 1123)")
    if not _NAME.match(value):
        raise invalid_input("name", f"{value!r} is not a valid name")
    return value


def ssh_fingerprint(public_key: str) -> str:
    """The MD5 fingerprint the API reports (``aa:bb:...``); raises invalid_input for a malformed key."""
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise invalid_input("public_key", "is not an OpenSSH public key ('ssh-ed25519 AAAA... comment')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_input("public_key", "the key data is not valid base64") from None
    if not blob.startswith(len(parts[0]).to_bytes(4, "big") + parts[0].encode()):
        raise invalid_input("public_key", f"the key data does not hold a {parts[0]} key")
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - the API's fingerprint format
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


# request plumbing -----------------------------------------------------------------------------------

@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict[str, Any]
    spawn: list[Callable[[], None]] = field(default_factory=list)

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


ROUTES: list[tuple[str, re.Pattern[str], str]] = []


def route(method: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        ROUTES.append((method, re.compile("^" + pattern + "$"), fn.__name__))
        return fn
    return deco


_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content", 400: "400 Bad Request",
                401: "401 Unauthorized", 404: "404 Not Found", 405: "405 Method Not Allowed",
                409: "409 Conflict", 422: "422 Unprocessable Entity", 500: "500 Internal Server Error"}


class HcloudStandin:
    """The WSGI app.  ``action_seconds``: how long an action nobody polls takes to finish."""

    def __init__(self, state_path: Path | str, token: str, *,
                 on_server_created: CreatedHook | None = None,
                 on_server_deleted: DeletedHook | None = None,
                 on_firewall_changed: FirewallHook | None = None,
                 action_seconds: float = 2.0,
                 reserved_ips: Iterable[str] = (),
                 read_only_tokens: Iterable[str] = ()) -> None:
        if not token:
            raise ValueError("the stand-in needs a non-empty API token")
        self.state = StateFile(state_path)
        self._token = token.strip()
        #: tokens made with "Read" only: every request but a GET is refused (403 token_readonly), as the API does
        self._read_only = [t.strip().encode() for t in read_only_tokens if t.strip()]
        self.on_server_created = on_server_created
        self.on_server_deleted = on_server_deleted
        self.on_firewall_changed = on_firewall_changed
        #: one firewall hook at a time, each reading the state it applies: the last one applies the newest rules
        self._firewall_lock = threading.Lock()
        self.action_seconds = action_seconds
        self.reserved_ips = {str(ipaddress.ip_address(ip)) for ip in reserved_ips}
        self._threads: list[threading.Thread] = []
        self._resume_pending_work()

    # WSGI ----------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        correlation = uuid.uuid4().hex[:16]
        try:
            status, payload = self._handle(environ)
        except ApiError as exc:
            status, payload = exc.status, exc.body()
        except Exception as exc:  # noqa: BLE001 - answer like the API, log the details here
            LOG.exception("internal error on %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            status, payload = 500, ApiError(500, "server_error", f"internal error: {exc}").body()
        body = b"" if status == 204 else json.dumps(payload).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   ("X-Correlation-Id", correlation)]
        start_response(_STATUS_TEXT.get(status, f"{status} Status"), headers)
        return [body]

    def _authorized(self, environ: dict[str, Any]) -> bool:
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token.encode())

    def _handle(self, environ: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and any(hmac.compare_digest(given.strip().encode(), t) for t in self._read_only):
            if environ["REQUEST_METHOD"].upper() != "GET":
                raise ApiError(403, "token_readonly", "The token is only allowed to perform GET requests", {})
        elif not self._authorized(environ):
            raise ApiError(401, "unauthorized", "unable to authenticate", {})
        method = environ["REQUEST_METHOD"].upper()
        path = environ.get("PATH_INFO", "") or "/"
        if path.startswith("/v1/") or path == "/v1":
            path = path[3:] or "/"
        path = path.rstrip("/") or "/"
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        body: dict[str, Any] = {}
        if method in ("POST", "PUT"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ApiError(400, "json_error", "the request body is not valid JSON", {}) from None
                if not isinstance(body, dict):
                    raise ApiError(400, "json_error", "the request body must be a JSON object", {})
        req = Request(method, path, query, body)
        for m, pattern, name in ROUTES:
            match = pattern.match(path)
            if match and m == method:
                handler = getattr(self, name)
                with self.state.transaction() as st:
                    self._tick(st)
                    result = handler(st, req, *match.groups())
                for fn in req.spawn:
                    self._start(fn)
                return result
        if any(p.match(path) for _, p, _ in ROUTES):
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed on {path}", {})
        raise ApiError(404, "not_found", f"no route for {method} {path}", {})

    # background work (hooks) -----------------------------------------------------------------------
    def _start(self, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, daemon=True, name="hcloud-standin-hook")
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no hook is running (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))

    def _resume_pending_work(self) -> None:
        """Hooks interrupted by a restart run again: a lab host half-built is rebuilt."""
        with self.state.transaction() as st:
            works = [(a["id"], a["_work"]) for a in st["actions"]
                     if a["status"] == "running" and a.get("_pending") and a.get("_work")]
        for action_id, work in works:
            LOG.info("resuming %s for action %s", work["kind"], action_id)
            self._start(self._work_fn(action_id, work))

    def _work_fn(self, action_id: int, work: dict[str, Any]) -> Callable[[], None]:
        def run() -> None:
            result: Any = None
            error: str | None = None
            try:
                if work["kind"] == "create_host" and self.on_server_created is not None:
                    result = self.on_server_created(work["name"], work["private_ip"], list(work["authorized_keys"]),
                                                    dict(work.get("host_keys") or {}))
                elif work["kind"] == "destroy_host" and self.on_server_deleted is not None:
                    self.on_server_deleted(work["name"])
                if work["kind"] in ("create_host", "firewall") and self.on_firewall_changed is not None:
                    self._apply_firewalls(work["server_id"])
            except Exception as exc:  # noqa: BLE001 - the action reports it
                LOG.exception("%s for server %s failed", work["kind"], work["name"])
                error = f"{type(exc).__name__}: {exc}"
            with self.state.transaction() as st:
                action = _find(st["actions"], action_id)
                if action is None:
                    return
                action["_pending"] = False
                action.get("_work", {}).pop("host_keys", None)  # private keys: not kept once installed
                server = _find(st["servers"], work.get("server_id"))
                if error is not None:
                    _finish_action(st, action, error=error)
                    if server is not None and work["kind"] == "create_host":
                        server["status"] = "off"
                    return
                if server is not None and work["kind"] == "create_host":
                    server["host_created"] = True
                    if isinstance(result, dict) and result.get("public_ip"):
                        server["public_ipv4"]["ip"] = str(ipaddress.ip_address(result["public_ip"]))
                self._tick(st)
        return run

    def _apply_firewalls(self, server_id: int) -> None:
        """Call the firewall hook with what filters server *server_id* now (read under the hook's lock)."""
        assert self.on_firewall_changed is not None
        with self._firewall_lock:
            with self.state.transaction() as st:
                server = _find(st["servers"], server_id)
                if server is None or server["status"] == "deleting":
                    return
                name = server["name"]
                rules = _server_inbound_rules(st, server)
                ranges = [n["ip_range"] for p in server["private_net"] for n in st["networks"] if n["id"] == p["network"]]
            self.on_firewall_changed(name, rules, ranges)

    def _firewall_work(self, st: dict[str, Any], server_id: int) -> dict[str, Any] | None:
        """The hook's work for a firewall change on server *server_id* (None while its host is not built: the
        host's creation applies the firewalls then)."""
        server = _find(st["servers"], server_id)
        if self.on_firewall_changed is None or server is None or not server.get("host_created"):
            return None
        return {"kind": "firewall", "server_id": server_id, "name": server["name"]}

    def _firewall_actions(self, st: dict[str, Any], req: Request, fw: dict[str, Any],
                          server_ids: Iterable[int]) -> list[dict[str, Any]]:
        """One ``apply_firewall`` action per server, running until the hook applied what filters it now."""
        return [self._new_action(st, "apply_firewall", [("firewall", fw["id"]), ("server", sid)],
                                 work=self._firewall_work(st, sid), req=req) for sid in server_ids]

    def _resource_action(self, st: dict[str, Any], req: Request, command: str, fw: dict[str, Any],
                         res: dict[str, Any]) -> dict[str, Any]:
        """The action of applying *fw* to (or removing it from) one resource, the API's one per resource; for a
        server it runs until the hook applied what filters it now.  A label selector's servers get one
        ``apply_firewall`` action each beside it (the stand-in's own: they carry the hook's work)."""
        if res["type"] == "server":
            return self._new_action(st, command, [("firewall", fw["id"]), ("server", res["server"]["id"])],
                                    work=self._firewall_work(st, res["server"]["id"]), req=req)
        action = self._new_action(st, command, [("firewall", fw["id"])])
        match = parse_label_selector(res["label_selector"]["selector"])
        self._firewall_actions(st, req, fw, [s["id"] for s in st["servers"] if match(s["labels"])])
        return action

    # actions ----------------------------------------------------------------------------------------
    def _new_action(self, st: dict[str, Any], command: str, resources: list[tuple[str, int]], *,
                    effects: list[list[Any]] | None = None, work: dict[str, Any] | None = None,
                    req: Request | None = None) -> dict[str, Any]:
        action: dict[str, Any] = {"id": _next_id(st, "action"), "command": command, "status": "running", "progress": 0,
                  "started": _now(), "finished": None, "error": None,
                  "resources": [{"id": rid, "type": rtype} for rtype, rid in resources],
                  "_t": time.time(), "_polls": 0, "_effects": effects or [], "_pending": False}
        if work is not None and req is not None:
            hook = {"create_host": self.on_server_created, "destroy_host": self.on_server_deleted,
                    "firewall": self.on_firewall_changed}[work["kind"]]
            if hook is not None:
                action["_pending"] = True
                action["_work"] = work
                req.spawn.append(self._work_fn(action["id"], work))
        st["actions"].append(action)
        return action

    def _tick(self, st: dict[str, Any]) -> None:
        """Finish every action whose work is done and that was polled once (or is old enough)."""
        now = time.time()
        for action in st["actions"]:
            if action["status"] != "running" or action.get("_pending"):
                continue
            if action["_polls"] >= 1 or now - action["_t"] >= self.action_seconds:
                _finish_action(st, action)

    # ---- catalog -----------------------------------------------------------------------------------
    @route("GET", r"/locations")
    def list_locations(self, st: dict, req: Request) -> tuple[int, dict]:
        return _listing(req, "locations", [dict(x) for x in LOCATIONS], labels=False)

    @route("GET", r"/locations/(\d+)")
    def get_location(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"location": _catalog_get(LOCATIONS, ident, "location")}

    @route("GET", r"/datacenters")
    def list_datacenters(self, st: dict, req: Request) -> tuple[int, dict]:
        return _listing(req, "datacenters", [_datacenter(loc["name"]) for loc in LOCATIONS], labels=False)

    @route("GET", r"/datacenters/(\d+)")
    def get_datacenter(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        for loc in LOCATIONS:
            if loc["id"] == int(ident):
                return 200, {"datacenter": _datacenter(loc["name"])}
        raise not_found("datacenter", ident)

    @route("GET", r"/server_types")
    def list_server_types(self, st: dict, req: Request) -> tuple[int, dict]:
        return _listing(req, "server_types", [_server_type(t) for t in SERVER_TYPES], labels=False)

    @route("GET", r"/server_types/(\d+)")
    def get_server_type(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"server_type": _server_type(_catalog_get(SERVER_TYPES, ident, "server type"))}

    @route("GET", r"/images")
    def list_images(self, st: dict, req: Request) -> tuple[int, dict]:
        items = [_image(i) for i in IMAGES]
        arch = req.query.get("architecture")
        if arch:
            items = [i for i in items if i["architecture"] in arch]
        types = req.query.get("type")
        if types:
            items = [i for i in items if i["type"] in types]
        return _listing(req, "images", items)

    @route("GET", r"/images/(\d+)")
    def get_image(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"image": _image(_catalog_get(IMAGES, ident, "image"))}

    # ---- actions ------------------------------------------------------------------------------------
    @route("GET", r"/actions")
    def list_actions(self, st: dict, req: Request) -> tuple[int, dict]:
        ids = {int(i) for i in req.query.get("id", []) if i.isdigit()}
        items = [a for a in st["actions"] if not ids or a["id"] in ids]
        statuses = req.query.get("status")
        if statuses:
            items = [a for a in items if a["status"] in statuses]
        return _listing(req, "actions", [_public(a) for a in items], labels=False, names=False)

    @route("GET", r"/(?:servers|networks|firewalls|placement_groups|ssh_keys|images)?/?(?:\d+/)?actions/(\d+)")
    def get_action(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        action = _find(st["actions"], int(ident))
        if action is None:
            raise not_found("action", ident)
        if action["status"] == "running":
            action["_polls"] += 1
        return 200, {"action": _public(action)}

    @route("GET", r"/(servers|networks|firewalls)/(\d+)/actions")
    def list_resource_actions(self, st: dict, req: Request, kind: str, ident: str) -> tuple[int, dict]:
        rtype = kind[:-1]
        items = [_public(a) for a in st["actions"]
                 if any(r["type"] == rtype and r["id"] == int(ident) for r in a["resources"])]
        return _listing(req, "actions", items, labels=False, names=False)

    # ---- SSH keys ------------------------------------------------------------------------------------
    @route("GET", r"/ssh_keys")
    def list_ssh_keys(self, st: dict, req: Request) -> tuple[int, dict]:
        items = [_public(k) for k in st["ssh_keys"]]
        fp = req.q("fingerprint")
        if fp:
            items = [k for k in items if k["fingerprint"] == fp]
        return _listing(req, "ssh_keys", items)

    @route("GET", r"/ssh_keys/(\d+)")
    def get_ssh_key(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"ssh_key": _public(_get(st, "ssh_keys", ident, "SSH key"))}

    @route("POST", r"/ssh_keys")
    def create_ssh_key(self, st: dict, req: Request) -> tuple[int, dict]:
        name = _check_name(req.body.get("name"))
        public_key = req.body.get("public_key")
        if not isinstance(public_key, str):
            raise invalid_input("public_key", "is required and must be a string")
        fp = ssh_fingerprint(public_key)
        labels = _check_labels(req.body.get("labels"))
        _unique_name(st, "ssh_keys", "SSH key", name)
        if any(k["fingerprint"] == fp for k in st["ssh_keys"]):
            raise uniqueness("SSH key", "public_key", fp)
        key = {"id": _next_id(st, "ssh_key"), "name": name, "fingerprint": fp,
               "public_key": public_key.strip(), "labels": labels, "created": _now()}
        st["ssh_keys"].append(key)
        return 201, {"ssh_key": _public(key)}

    @route("PUT", r"/ssh_keys/(\d+)")
    def update_ssh_key(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        key = _update(st, "ssh_keys", ident, "SSH key", req.body)
        return 200, {"ssh_key": _public(key)}

    @route("DELETE", r"/ssh_keys/(\d+)")
    def delete_ssh_key(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        key = _get(st, "ssh_keys", ident, "SSH key")
        st["ssh_keys"].remove(key)
        return 204, {}

    # ---- networks ----------------------------------------------------------------------------------
    @route("GET", r"/networks")
    def list_networks(self, st: dict, req: Request) -> tuple[int, dict]:
        return _listing(req, "networks", [_network(st, n) for n in st["networks"]])

    @route("GET", r"/networks/(\d+)")
    def get_network(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"network": _network(st, _get(st, "networks", ident, "network"))}

    @route("POST", r"/networks")
    def create_network(self, st: dict, req: Request) -> tuple[int, dict]:
        name = _check_name(req.body.get("name"))
        ip_range = _private_range(req.body.get("ip_range"), "ip_range")
        labels = _check_labels(req.body.get("labels"))
        net: dict[str, Any] = {"id": 0, "name": name, "ip_range": str(ip_range), "subnets": [], "routes": [],
               "labels": labels, "protection": {"delete": False}, "created": _now(),
               "expose_routes_to_vswitch": bool(req.body.get("expose_routes_to_vswitch", False))}
        for i, sub in enumerate(req.body.get("subnets") or []):
            net["subnets"].append(_new_subnet(net, sub, f"subnets[{i}]"))
        for i, r in enumerate(req.body.get("routes") or []):
            net["routes"].append(_new_route(net, r, f"routes[{i}]"))
        _unique_name(st, "networks", "network", name)
        net["id"] = _next_id(st, "network")
        st["networks"].append(net)
        return 201, {"network": _network(st, net)}

    @route("PUT", r"/networks/(\d+)")
    def update_network(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        net = _update(st, "networks", ident, "network", req.body)
        if "expose_routes_to_vswitch" in req.body:
            net["expose_routes_to_vswitch"] = bool(req.body["expose_routes_to_vswitch"])
        return 200, {"network": _network(st, net)}

    @route("DELETE", r"/networks/(\d+)")
    def delete_network(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        net = _get(st, "networks", ident, "network")
        users = [s["name"] for s in st["servers"] if any(p["network"] == net["id"] for p in s["private_net"])]
        if users:
            raise unprocessable("resource_in_use", f"network {net['name']} still has servers attached: "
                                                   f"{', '.join(users)}")
        st["networks"].remove(net)
        return 204, {}

    @route("POST", r"/networks/(\d+)/actions/add_subnet")
    def add_subnet(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        net = _get(st, "networks", ident, "network")
        net["subnets"].append(_new_subnet(net, req.body, "ip_range"))
        action = self._new_action(st, "add_subnet", [("network", net["id"])])
        return 201, {"action": _public(action)}

    @route("POST", r"/networks/(\d+)/actions/delete_subnet")
    def delete_subnet(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        net = _get(st, "networks", ident, "network")
        rng: Any = req.body.get("ip_range")  # a subnet's ip_range once `sub` is found
        sub = next((s for s in net["subnets"] if s["ip_range"] == rng), None)
        if sub is None:
            raise invalid_input("ip_range", f"network {net['name']} has no subnet {rng}")
        inside = [s["name"] for s in st["servers"] for p in s["private_net"]
                  if p["network"] == net["id"] and ipaddress.ip_address(p["ip"]) in ipaddress.ip_network(rng)]
        if inside:
            raise unprocessable("resource_in_use", f"subnet {rng} still has servers: {', '.join(inside)}")
        net["subnets"].remove(sub)
        action = self._new_action(st, "delete_subnet", [("network", net["id"])])
        return 201, {"action": _public(action)}

    # ---- firewalls -----------------------------------------------------------------------------------
    @route("GET", r"/firewalls")
    def list_firewalls(self, st: dict, req: Request) -> tuple[int, dict]:
        return _listing(req, "firewalls", [_firewall(st, f) for f in st["firewalls"]])

    @route("GET", r"/firewalls/(\d+)")
    def get_firewall(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"firewall": _firewall(st, _get(st, "firewalls", ident, "firewall"))}

    @route("POST", r"/firewalls")
    def create_firewall(self, st: dict, req: Request) -> tuple[int, dict]:
        name = _check_name(req.body.get("name"))
        labels = _check_labels(req.body.get("labels"))
        rules = _check_rules(req.body.get("rules") or [])
        apply_to = [_check_resource(st, r, f"apply_to[{i}]") for i, r in enumerate(req.body.get("apply_to") or [])]
        _unique_name(st, "firewalls", "firewall", name)
        fw: dict[str, Any] = {"id": _next_id(st, "firewall"), "name": name, "labels": labels, "rules": rules,
                              "applied_to": [], "created": _now()}
        st["firewalls"].append(fw)
        actions = []
        for res in apply_to:
            fw["applied_to"].append(res)
            actions.append(self._resource_action(st, req, "apply_firewall", fw, res))
        return 201, {"firewall": _firewall(st, fw), "actions": [_public(a) for a in actions]}

    @route("PUT", r"/firewalls/(\d+)")
    def update_firewall(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"firewall": _firewall(st, _update(st, "firewalls", ident, "firewall", req.body))}

    @route("DELETE", r"/firewalls/(\d+)")
    def delete_firewall(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        fw = _get(st, "firewalls", ident, "firewall")
        if fw["applied_to"]:
            raise unprocessable("resource_in_use", f"firewall {fw['name']} is still applied to resources")
        st["firewalls"].remove(fw)
        return 204, {}

    @route("POST", r"/firewalls/(\d+)/actions/set_rules")
    def set_rules(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        fw = _get(st, "firewalls", ident, "firewall")
        if "rules" not in req.body:
            raise invalid_input("rules", "is required (an empty list removes every rule)")
        fw["rules"] = _check_rules(req.body["rules"] or [])
        actions = [self._new_action(st, "set_firewall_rules", [("firewall", fw["id"])])]
        actions += self._firewall_actions(st, req, fw, _firewall_server_ids(st, fw))
        return 201, {"actions": [_public(a) for a in actions]}

    @route("POST", r"/firewalls/(\d+)/actions/apply_to_resources")
    def apply_firewall(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        fw = _get(st, "firewalls", ident, "firewall")
        actions = []
        for i, r in enumerate(req.body.get("apply_to") or []):
            res = _check_resource(st, r, f"apply_to[{i}]")
            if res in fw["applied_to"]:
                raise unprocessable("firewall_already_applied",
                                    f"firewall {fw['name']} is already applied to {json.dumps(res)}")
            fw["applied_to"].append(res)
            actions.append(self._resource_action(st, req, "apply_firewall", fw, res))
        return 201, {"actions": [_public(a) for a in actions]}

    @route("POST", r"/firewalls/(\d+)/actions/remove_from_resources")
    def remove_firewall(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        fw = _get(st, "firewalls", ident, "firewall")
        actions = []
        for i, r in enumerate(req.body.get("remove_from") or []):
            res = _check_resource(st, r, f"remove_from[{i}]")
            if res not in fw["applied_to"]:
                raise unprocessable("firewall_already_removed",
                                    f"firewall {fw['name']} is not applied to {json.dumps(res)}")
            fw["applied_to"].remove(res)
            actions.append(self._resource_action(st, req, "remove_firewall", fw, res))
        return 201, {"actions": [_public(a) for a in actions]}

    # ---- placement groups -----------------------------------------------------------------------------
    @route("GET", r"/placement_groups")
    def list_placement_groups(self, st: dict, req: Request) -> tuple[int, dict]:
        items = [_placement_group(st, p) for p in st["placement_groups"]]
        types = req.query.get("type")
        if types:
            items = [p for p in items if p["type"] in types]
        return _listing(req, "placement_groups", items)

    @route("GET", r"/placement_groups/(\d+)")
    def get_placement_group(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"placement_group": _placement_group(st, _get(st, "placement_groups", ident, "placement group"))}

    @route("POST", r"/placement_groups")
    def create_placement_group(self, st: dict, req: Request) -> tuple[int, dict]:
        name = _check_name(req.body.get("name"))
        if req.body.get("type") != "spread":
            raise invalid_input("type", f"{req.body.get('type')!r} is not a placement group type (spread)")
        labels = _check_labels(req.body.get("labels"))
        _unique_name(st, "placement_groups", "placement group", name)
        pg = {"id": _next_id(st, "placement_group"), "name": name, "type": "spread", "labels": labels,
              "created": _now()}
        st["placement_groups"].append(pg)
        return 201, {"placement_group": _placement_group(st, pg), "action": None}

    @route("PUT", r"/placement_groups/(\d+)")
    def update_placement_group(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        pg = _update(st, "placement_groups", ident, "placement group", req.body)
        return 200, {"placement_group": _placement_group(st, pg)}

    @route("DELETE", r"/placement_groups/(\d+)")
    def delete_placement_group(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        pg = _get(st, "placement_groups", ident, "placement group")
        if any(s.get("placement_group") == pg["id"] for s in st["servers"]):
            raise unprocessable("resource_in_use", f"placement group {pg['name']} still has servers")
        st["placement_groups"].remove(pg)
        return 204, {}

    # ---- servers --------------------------------------------------------------------------------------
    @route("GET", r"/servers")
    def list_servers(self, st: dict, req: Request) -> tuple[int, dict]:
        items = [_server(st, s) for s in st["servers"]]
        statuses = req.query.get("status")
        if statuses:
            items = [s for s in items if s["status"] in statuses]
        return _listing(req, "servers", items)

    @route("GET", r"/servers/(\d+)")
    def get_server(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        return 200, {"server": _server(st, _get(st, "servers", ident, "server"))}

    @route("POST", r"/servers")
    def create_server(self, st: dict, req: Request) -> tuple[int, dict]:
        b = req.body
        name = _check_name(b.get("name"), hostname=True)
        stype = _catalog_find(SERVER_TYPES, b.get("server_type"), "server_type")
        loc_ref = b.get("location")
        if loc_ref is None and b.get("datacenter") is not None:
            dc = str(b["datacenter"])
            loc_ref = next((n for n, d in DATACENTER_NAMES.items() if d == dc), dc)
        if loc_ref is None:
            loc = next(x for x in LOCATIONS if x["name"] in stype["_locations"])
        else:
            loc = _catalog_find(LOCATIONS, loc_ref, "location")
        if loc["name"] not in stype["_locations"]:
            raise unprocessable("unsupported_location_for_server_type",
                                f"server type {stype['name']} is not available in location {loc['name']}")
        image = _find_image(b.get("image"), stype["architecture"])
        labels = _check_labels(b.get("labels"))
        keys = []
        for i, ref in enumerate(b.get("ssh_keys") or []):
            key = _by_id_or_name(st["ssh_keys"], ref)
            if key is None:
                raise invalid_input(f"ssh_keys[{i}]", f"SSH key {ref!r} not found")
            keys.append(key)
        networks = []
        for i, ref in enumerate(b.get("networks") or []):
            net = _find(st["networks"], ref if isinstance(ref, int) else -1)
            if net is None:
                raise invalid_input(f"networks[{i}]", f"network {ref!r} not found")
            networks.append(net)
        firewalls = []
        for i, ref in enumerate(b.get("firewalls") or []):
            fid = ref.get("firewall") if isinstance(ref, dict) else None
            fw = _find(st["firewalls"], fid if isinstance(fid, int) else -1)
            if fw is None:
                raise invalid_input(f"firewalls[{i}]", f"firewall {ref!r} not found")
            firewalls.append(fw)
        pg = None
        if b.get("placement_group") is not None:
            pg = _find(st["placement_groups"], b["placement_group"] if isinstance(b["placement_group"], int) else -1)
            if pg is None:
                raise invalid_input("placement_group", f"placement group {b['placement_group']!r} not found")
            if sum(1 for s in st["servers"] if s.get("placement_group") == pg["id"]) >= 10:
                raise unprocessable("placement_error", f"placement group {pg['name']} is full (10 servers)")
        _unique_name(st, "servers", "server", name)
        server_id = _next_id(st, "server")
        server: dict[str, Any] = {
            "id": server_id, "name": name, "status": "initializing", "created": _now(),
            "server_type": stype["name"], "location": loc["name"], "image": image["id"], "labels": labels,
            "ssh_keys": [k["id"] for k in keys], "authorized_keys": [k["public_key"] for k in keys],
            "private_net": [], "placement_group": pg["id"] if pg else None,
            "public_ipv4": {"id": _next_id(st, "primary_ip"), "ip": _free_public_ip(st)},
            "public_ipv6": {"id": _next_id(st, "primary_ip"), "ip": PUBLIC_V6.format(n=server_id % 0xFFFF)},
            "protection": {"delete": False, "rebuild": False}, "host_created": False,
            "_host_keys": _cloud_init_host_keys(b.get("user_data")),
        }
        for net in networks:
            server["private_net"].append(self._attachment(st, server, net, None, None))
        st["servers"].append(server)
        for fw in firewalls:
            res = {"type": "server", "server": {"id": server_id}}
            if res not in fw["applied_to"]:
                fw["applied_to"].append(res)
        start = b.get("start_after_create", True) is not False
        work = None
        if server["private_net"]:
            work = self._create_host_work(server)
        action = self._new_action(st, "create_server", [("server", server_id)],
                                  effects=[["server_status", server_id, "running" if start else "off"]],
                                  work=work, req=req)
        if work is not None and not action["_pending"]:
            server["host_created"] = True  # no hook configured: nothing to build
        next_actions = [self._new_action(st, "start_server", [("server", server_id)])] if start else []
        next_actions += [self._new_action(st, "attach_to_network", [("server", server_id), ("network", n["id"])])
                         for n in networks]
        root_password = None if keys else secrets.token_urlsafe(18)
        return 201, {"server": _server(st, server), "action": _public(action),
                     "next_actions": [_public(a) for a in next_actions], "root_password": root_password}

    def _create_host_work(self, server: dict[str, Any]) -> dict[str, Any]:
        keys = server.pop("_host_keys", None) or {}
        return {"kind": "create_host", "server_id": server["id"], "name": server["name"],
                "private_ip": server["private_net"][0]["ip"], "authorized_keys": list(server["authorized_keys"]),
                "host_keys": keys}

    def _attachment(self, st: dict, server: dict, net: dict, ip: Any, ip_range: Any) -> dict[str, Any]:
        if any(p["network"] == net["id"] for p in server["private_net"]):
            raise unprocessable("server_already_attached",
                                f"server {server['name']} is already attached to network {net['name']}")
        subnets = [ipaddress.ip_network(s["ip_range"]) for s in net["subnets"] if s["type"] in ("cloud", "server")]
        loc_zone = next(x["network_zone"] for x in LOCATIONS if x["name"] == server["location"])
        zoned = [ipaddress.ip_network(s["ip_range"]) for s in net["subnets"]
                 if s["type"] in ("cloud", "server") and s["network_zone"] == loc_zone]
        used = {p["ip"] for s in st["servers"] for p in s["private_net"] if p["network"] == net["id"]}
        gateway = str(next(ipaddress.ip_network(net["ip_range"]).hosts()))
        if ip_range is not None:
            try:
                wanted = ipaddress.ip_network(str(ip_range))
            except ValueError:
                raise invalid_input("ip_range", f"{ip_range!r} is not a network in CIDR notation") from None
            if wanted not in subnets:
                raise unprocessable("no_subnet_available", f"network {net['name']} has no subnet {wanted}")
            zoned = [wanted]
        if ip is not None:
            try:
                addr = ipaddress.ip_address(str(ip))
            except ValueError:
                raise invalid_input("ip", f"{ip!r} is not an IP address") from None
            inside = [s for s in subnets if addr in s]
            if not inside:
                raise unprocessable("ip_not_available",
                                    f"IP {addr} is not inside any subnet of network {net['name']} "
                                    f"({', '.join(str(s) for s in subnets) or 'it has no subnets'})")
            if inside[0] not in zoned:
                raise unprocessable("ip_not_available", f"subnet {inside[0]} of network {net['name']} is not in "
                                                        f"network zone {loc_zone} of location {server['location']}")
            if (str(addr) in used or str(addr) in self.reserved_ips or str(addr) == gateway
                    or addr in (inside[0].network_address, inside[0].broadcast_address)):
                raise unprocessable("ip_not_available", f"IP {addr} is not available in network {net['name']}")
            chosen = str(addr)
        else:
            chosen = ""
            for sub in zoned:
                for host in sub.hosts():
                    h = str(host)
                    if h in used or h in self.reserved_ips or h == gateway or host == next(sub.hosts()):
                        continue  # the first address of each subnet is kept for the lab bridge
                    chosen = h
                    break
                if chosen:
                    break
            if not chosen:
                raise unprocessable("no_subnet_available",
                                    f"no subnet of network {net['name']} in zone {loc_zone} has a free IP")
        sid = server["id"]
        mac = f"86:00:00:{(sid >> 16) & 0xFF:02x}:{(sid >> 8) & 0xFF:02x}:{sid & 0xFF:02x}"
        return {"network": net["id"], "ip": chosen, "alias_ips": [], "mac_address": mac}

    @route("PUT", r"/servers/(\d+)")
    def update_server(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        if "name" in req.body:
            _check_name(req.body["name"], hostname=True)
        return 200, {"server": _server(st, _update(st, "servers", ident, "server", req.body))}

    @route("DELETE", r"/servers/(\d+)")
    def delete_server(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        if server["status"] == "deleting":
            raise unprocessable("locked", f"server {server['name']} is already being deleted")
        if server["protection"].get("delete"):
            raise unprocessable("protected", f"server {server['name']} is protected against deletion: "
                                             "disable its delete protection first (change_protection)")
        server["status"] = "deleting"
        for fw in st["firewalls"]:
            fw["applied_to"] = [r for r in fw["applied_to"]
                                if not (r["type"] == "server" and r["server"]["id"] == server["id"])]
        work = {"kind": "destroy_host", "server_id": server["id"], "name": server["name"]}
        action = self._new_action(st, "delete_server", [("server", server["id"])],
                                  effects=[["remove_server", server["id"]]], work=work, req=req)
        return 200, {"action": _public(action)}

    @route("POST", r"/servers/(\d+)/actions/change_protection")
    def change_protection(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        wanted = {k: req.body[k] for k in ("delete", "rebuild") if req.body.get(k) is not None}
        for k, v in wanted.items():
            if not isinstance(v, bool):
                raise invalid_input(k, f"{v!r} is not a boolean")
        new = {**server["protection"], **wanted}
        if new["delete"] != new["rebuild"]:
            raise invalid_input("rebuild", "delete and rebuild protection must have the same value")
        server["protection"] = new
        action = self._new_action(st, "change_protection", [("server", server["id"])])
        return 201, {"action": _public(action)}

    @route("POST", r"/servers/(\d+)/actions/attach_to_network")
    def attach_to_network(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        ref = req.body.get("network")
        net = _find(st["networks"], ref if isinstance(ref, int) else -1)
        if net is None:
            raise not_found("network", ref)
        att = self._attachment(st, server, net, req.body.get("ip"), req.body.get("ip_range"))
        alias = req.body.get("alias_ips") or []
        att["alias_ips"] = [str(ipaddress.ip_address(a)) for a in alias]
        server["private_net"].append(att)
        work = None
        if not server.get("host_created") and not _host_work_pending(st, server["id"]):
            work = self._create_host_work(server)
        action = self._new_action(st, "attach_to_network", [("server", server["id"]), ("network", net["id"])],
                                  work=work, req=req)
        if work is not None and not action["_pending"]:
            server["host_created"] = True
        return 201, {"action": _public(action)}

    @route("POST", r"/servers/(\d+)/actions/detach_from_network")
    def detach_from_network(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        ref: Any = req.body.get("network")  # a network id once `att` is found
        att = next((p for p in server["private_net"] if p["network"] == ref), None)
        if att is None:
            raise unprocessable("server_not_attached", f"server {server['name']} is not attached to network {ref}")
        server["private_net"].remove(att)
        action = self._new_action(st, "detach_from_network", [("server", server["id"]), ("network", ref)])
        return 201, {"action": _public(action)}

    @route("POST", r"/servers/(\d+)/actions/add_to_placement_group")
    def add_to_placement_group(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        ref = req.body.get("placement_group")
        pg = _find(st["placement_groups"], ref if isinstance(ref, int) else -1)
        if pg is None:
            raise not_found("placement group", ref)
        if server.get("placement_group") is not None:
            raise unprocessable("server_already_in_placement_group",
                                f"server {server['name']} is already in a placement group")
        if server["status"] != "off":
            raise unprocessable("server_not_stopped",
                                f"server {server['name']} must be powered off to join a placement group")
        server["placement_group"] = pg["id"]
        action = self._new_action(st, "add_to_placement_group", [("server", server["id"])])
        return 201, {"action": _public(action)}

    @route("POST", r"/servers/(\d+)/actions/remove_from_placement_group")
    def remove_from_placement_group(self, st: dict, req: Request, ident: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        server["placement_group"] = None
        action = self._new_action(st, "remove_from_placement_group", [("server", server["id"])])
        return 201, {"action": _public(action)}

    @route("POST", r"/servers/(\d+)/actions/(poweron|poweroff|shutdown)")
    def power(self, st: dict, req: Request, ident: str, verb: str) -> tuple[int, dict]:
        server = _get(st, "servers", ident, "server")
        target = "running" if verb == "poweron" else "off"
        command = {"poweron": "start_server", "poweroff": "stop_server", "shutdown": "shutdown_server"}[verb]
        work = None
        if (verb == "poweron" and server["private_net"] and not server.get("host_created")
                and not _host_work_pending(st, server["id"])):
            work = self._create_host_work(server)  # its lab host failed to build before: try again
        action = self._new_action(st, command, [("server", server["id"])],
                                  effects=[["server_status", server["id"], target]], work=work, req=req)
        if work is not None and not action["_pending"]:
            server["host_created"] = True
        return 201, {"action": _public(action)}


# helpers over state -------------------------------------------------------------------------

_HOST_KEY_NAMES = {f"{kind}_{part}" for kind in ("ed25519", "ecdsa", "rsa") for part in ("private", "public")}


def _cloud_init_host_keys(user_data: Any) -> dict[str, str]:
    """The ``ssh_keys:`` of a ``#cloud-config`` user_data (what cloud-init makes the host keys)."""
    if user_data is None:
        return {}
    if not isinstance(user_data, str) or len(user_data) > 32 * 1024:
        raise invalid_input("user_data", "user_data must be a string of at most 32 KiB")
    if not user_data.startswith("#cloud-config"):
        return {}
    import yaml  # noqa: PLC0415 - only for servers created with user_data

    try:
        doc = yaml.safe_load(user_data) or {}
    except yaml.YAMLError as exc:
        raise invalid_input("user_data", f"not valid cloud-config YAML: {exc}") from None
    keys = doc.get("ssh_keys") if isinstance(doc, dict) else None
    if not isinstance(keys, dict):
        return {}
    return {k: str(v) for k, v in keys.items() if k in _HOST_KEY_NAMES and isinstance(v, str)}


def _next_id(st: dict[str, Any], kind: str) -> int:
    base = {"action": 1000, "server": 5000000, "ssh_key": 7000, "network": 9000, "firewall": 11000,
            "placement_group": 13000, "primary_ip": 20000}.get(kind, 1)
    nid = st["next_id"].get(kind, base) + 1
    st["next_id"][kind] = nid
    return nid


def _find(items: list[dict[str, Any]], ident: Any) -> dict[str, Any] | None:
    if ident is None:
        return None
    for item in items:
        if item["id"] == ident:
            return item
    return None


def _by_id_or_name(items: list[dict[str, Any]], ref: Any) -> dict[str, Any] | None:
    for item in items:
        if item["id"] == ref or (isinstance(ref, str) and (item["name"] == ref or str(item["id"]) == ref)):
            return item
    return None


def _get(st: dict[str, Any], collection: str, ident: str, kind: str) -> dict[str, Any]:
    item = _find(st[collection], int(ident))
    if item is None:
        raise not_found(kind, ident)
    return item


def _unique_name(st: dict[str, Any], collection: str, kind: str, name: str, *, except_id: int | None = None) -> None:
    if any(x["name"] == name and x["id"] != except_id for x in st[collection]):
        raise uniqueness(kind, "name", name)


def _update(st: dict[str, Any], collection: str, ident: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    item = _get(st, collection, ident, kind)
    if "name" in body:
        name = _check_name(body["name"])
        _unique_name(st, collection, kind, name, except_id=item["id"])
        item["name"] = name
    if "labels" in body:
        item["labels"] = _check_labels(body["labels"])
    return item


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: copy.deepcopy(v) for k, v in item.items() if not k.startswith("_")}


def _finish_action(st: dict[str, Any], action: dict[str, Any], *, error: str | None = None) -> None:
    action["finished"] = _now()
    if error is not None:
        action.update(status="error", error={"code": "action_failed", "message": error, "details": {}})
        return
    action.update(status="success", progress=100)
    for effect in action.get("_effects", []):
        if effect[0] == "server_status":
            server = _find(st["servers"], effect[1])
            if server is not None and server["status"] != "deleting":
                server["status"] = effect[2]
        elif effect[0] == "remove_server":
            server = _find(st["servers"], effect[1])
            if server is not None:
                st["servers"].remove(server)


def _host_work_pending(st: dict[str, Any], server_id: int) -> bool:
    return any(a["status"] == "running" and a.get("_pending") and (a.get("_work") or {}).get("kind") == "create_host"
               and a["_work"].get("server_id") == server_id for a in st["actions"])


def _free_public_ip(st: dict[str, Any]) -> str:
    used = {s["public_ipv4"]["ip"] for s in st["servers"]}
    for host in PUBLIC_V4.hosts():
        if int(host) & 0xFF < 2:
            continue
        if str(host) not in used:
            return str(host)
    raise unprocessable("resource_limit_exceeded", f"no free public IPv4 left in {PUBLIC_V4}")


def _private_range(value: Any, fld: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        raise invalid_input(fld, f"{value!r} is not a network in CIDR notation without host bits") from None
    if not isinstance(net, ipaddress.IPv4Network) or not net.is_private:
        raise invalid_input(fld, f"{net} is not a private IPv4 range (RFC 1918)")
    if net.prefixlen > 30:
        raise invalid_input(fld, f"{net} is too small")
    return net


def _new_subnet(net: dict[str, Any], sub: Any, fld: str) -> dict[str, Any]:
    if not isinstance(sub, dict):
        raise invalid_input(fld, "a subnet is an object with type, ip_range and network_zone")
    stype = sub.get("type")
    if stype not in ("cloud", "server", "vswitch"):
        raise invalid_input(f"{fld}.type", f"{stype!r} is not a subnet type (cloud, server, vswitch)")
    zone = sub.get("network_zone")
    if zone not in NETWORK_ZONES:
        raise invalid_input(f"{fld}.network_zone", f"{zone!r} is not a network zone ({', '.join(NETWORK_ZONES)})")
    if sub.get("ip_range") is None:
        raise invalid_input(f"{fld}.ip_range", "is required by this stand-in")
    rng = _private_range(sub.get("ip_range"), f"{fld}.ip_range")
    whole = ipaddress.ip_network(net["ip_range"])
    if not rng.subnet_of(whole):  # type: ignore[arg-type]
        raise invalid_input(f"{fld}.ip_range", f"{rng} is not inside the network's ip_range {whole}")
    for other in net["subnets"]:
        if rng.overlaps(ipaddress.ip_network(other["ip_range"])):
            raise invalid_input(f"{fld}.ip_range", f"{rng} overlaps subnet {other['ip_range']}")
    return {"type": stype, "ip_range": str(rng), "network_zone": zone,
            "gateway": str(next(whole.hosts())), "vswitch_id": sub.get("vswitch_id")}


def _new_route(net: dict[str, Any], r: Any, fld: str) -> dict[str, Any]:
    if not isinstance(r, dict):
        raise invalid_input(fld, "a route is an object with destination and gateway")
    try:
        dest = ipaddress.ip_network(str(r.get("destination")))
        gw = ipaddress.ip_address(str(r.get("gateway")))
    except ValueError as exc:
        raise invalid_input(fld, str(exc)) from None
    if gw not in ipaddress.ip_network(net["ip_range"]):
        raise invalid_input(f"{fld}.gateway", f"{gw} is not inside {net['ip_range']}")
    return {"destination": str(dest), "gateway": str(gw)}


_PORT = re.compile(r"^(any|\d{1,5}(-\d{1,5})?)$")


def _check_rules(rules: Any) -> list[dict[str, Any]]:
    if not isinstance(rules, list):
        raise invalid_input("rules", "must be a list")
    out = []
    for i, r in enumerate(rules):
        fld = f"rules[{i}]"
        if not isinstance(r, dict):
            raise invalid_input(fld, "a rule is an object")
        direction = r.get("direction")
        if direction not in ("in", "out"):
            raise invalid_input(f"{fld}.direction", f"{direction!r} is not 'in' or 'out'")
        protocol = r.get("protocol")
        if protocol not in ("tcp", "udp", "icmp", "esp", "gre"):
            raise invalid_input(f"{fld}.protocol", f"{protocol!r} is not tcp, udp, icmp, esp or gre")
        port = r.get("port")
        if protocol in ("tcp", "udp"):
            if not isinstance(port, str) or not _PORT.match(port):
                raise invalid_input(f"{fld}.port", f"{protocol} rules need a port ('22', '8000-8100' or 'any')")
            if "-" in port:
                lo, hi = (int(x) for x in port.split("-"))
                if not 1 <= lo < hi <= 65535:
                    raise invalid_input(f"{fld}.port", f"{port} is not a port range")
            elif port != "any" and not 1 <= int(port) <= 65535:
                raise invalid_input(f"{fld}.port", f"{port} is not a port")
        elif port is not None:
            raise invalid_input(f"{fld}.port", f"{protocol} rules take no port")
        ips: dict[str, list[str]] = {}
        for key in ("source_ips", "destination_ips"):
            vals = r.get(key) or []
            if not isinstance(vals, list):
                raise invalid_input(f"{fld}.{key}", "must be a list of CIDRs")
            norm = []
            for v in vals:
                try:
                    norm.append(str(ipaddress.ip_network(str(v), strict=True)))
                except ValueError:
                    raise invalid_input(f"{fld}.{key}", f"{v!r} is not a CIDR without host bits") from None
            ips[key] = norm
        if direction == "in" and (not ips["source_ips"] or ips["destination_ips"]):
            raise invalid_input(f"{fld}.source_ips", "inbound rules need source_ips and take no destination_ips")
        if direction == "out" and (not ips["destination_ips"] or ips["source_ips"]):
            raise invalid_input(f"{fld}.destination_ips", "outbound rules need destination_ips and take no source_ips")
        description = r.get("description")
        if description is not None and not isinstance(description, str):
            raise invalid_input(f"{fld}.description", "must be a string")
        out.append({"direction": direction, "source_ips": ips["source_ips"],
                    "destination_ips": ips["destination_ips"], "protocol": protocol,
                    "port": port, "description": description})
    return out


def _check_resource(st: dict[str, Any], r: Any, fld: str) -> dict[str, Any]:
    if not isinstance(r, dict) or r.get("type") not in ("server", "label_selector"):
        raise invalid_input(f"{fld}.type", "must be 'server' or 'label_selector'")
    if r["type"] == "server":
        sid = (r.get("server") or {}).get("id")
        if _find(st["servers"], sid) is None:
            raise invalid_input(f"{fld}.server", f"server {sid!r} not found")
        return {"type": "server", "server": {"id": sid}}
    sel = (r.get("label_selector") or {}).get("selector")
    if not isinstance(sel, str) or not sel:
        raise invalid_input(f"{fld}.label_selector", "needs a selector")
    parse_label_selector(sel)
    return {"type": "label_selector", "label_selector": {"selector": sel}}


def _resource_ids(res: dict[str, Any]) -> list[tuple[str, int]]:
    return [("server", res["server"]["id"])] if res["type"] == "server" else []


def _firewall_server_ids(st: dict[str, Any], fw: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    for res in fw["applied_to"]:
        if res["type"] == "server":
            ids.append(res["server"]["id"])
        else:
            match = parse_label_selector(res["label_selector"]["selector"])
            ids += [s["id"] for s in st["servers"] if match(s["labels"])]
    return sorted(set(ids))


def _server_inbound_rules(st: dict[str, Any], server: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The inbound rules of every firewall applied to *server* (None when none is: nothing filters it)."""
    applied = [fw for fw in st["firewalls"] if server["id"] in _firewall_server_ids(st, fw)]
    if not applied:
        return None
    return [copy.deepcopy(r) for fw in applied for r in fw["rules"] if r["direction"] == "in"]


# rendering ----------------------------------------------------------------------------------------

def _catalog_get(items: list[dict[str, Any]], ident: str, kind: str) -> dict[str, Any]:
    for x in items:
        if x["id"] == int(ident):
            return {k: v for k, v in x.items() if not k.startswith("_")}
    raise not_found(kind, ident)


def _catalog_find(items: list[dict[str, Any]], ref: Any, fld: str) -> dict[str, Any]:
    if ref is None:
        raise invalid_input(fld, "is required")
    found = _by_id_or_name(items, ref)
    if found is None:
        raise invalid_input(fld, f"{ref!r} does not exist")
    return found


def _find_image(ref: Any, architecture: str) -> dict[str, Any]:
    if ref is None:
        raise invalid_input("image", "is required")
    for img in IMAGES:
        if img["id"] == ref or str(img["id"]) == str(ref):
            if img["architecture"] != architecture:
                raise unprocessable("invalid_input", f"image {ref} is for {img['architecture']}, the server type is "
                                                     f"{architecture}")
            return img
    for img in IMAGES:
        if img["name"] == ref and img["architecture"] == architecture:
            return img
    raise invalid_input("image", f"image {ref!r} does not exist for architecture {architecture}")


def _location(name: str) -> dict[str, Any]:
    return dict(next(x for x in LOCATIONS if x["name"] == name))


def _datacenter(loc_name: str) -> dict[str, Any]:
    loc = _location(loc_name)
    ids = [t["id"] for t in SERVER_TYPES if loc_name in t["_locations"]]
    return {"id": loc["id"], "name": DATACENTER_NAMES[loc_name], "description": f"{loc['city']} DC",
            "location": loc, "server_types": {"supported": ids, "available": ids, "available_for_migration": ids}}


def _server_type(t: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in t.items() if not k.startswith("_")}
    gross = t["_monthly"]
    out["prices"] = [{"location": loc, "price_hourly": {"net": "0.0200", "gross": "0.0238"},
                      "price_monthly": {"net": gross, "gross": gross},
                      "included_traffic": 21990232555520,
                      "price_per_tb_traffic": {"net": "1.0000", "gross": "1.1900"}} for loc in t["_locations"]]
    out["deprecated"] = False
    out["deprecation"] = None
    out["included_traffic"] = 21990232555520
    out["locations"] = [{"id": _location(loc)["id"], "name": loc, "deprecation": None, "available": True,
                         "recommended": True} for loc in t["_locations"]]
    return out


def _image(i: dict[str, Any]) -> dict[str, Any]:
    return {"id": i["id"], "type": "system", "status": "available", "name": i["name"],
            "description": i["description"], "image_size": None, "disk_size": 5, "created": CATALOG_CREATED,
            "created_from": None, "bound_to": None, "os_flavor": i["os_flavor"], "os_version": i["os_version"],
            "rapid_deploy": True, "protection": {"delete": False}, "deprecated": None, "deprecation": None,
            "labels": {}, "deleted": None, "architecture": i["architecture"]}


def _network(st: dict[str, Any], net: dict[str, Any]) -> dict[str, Any]:
    out = _public(net)
    out["servers"] = [s["id"] for s in st["servers"] if any(p["network"] == net["id"] for p in s["private_net"])]
    out["load_balancers"] = []
    return out


def _firewall(st: dict[str, Any], fw: dict[str, Any]) -> dict[str, Any]:
    out = _public(fw)
    applied = []
    for res in fw["applied_to"]:
        item = copy.deepcopy(res)
        if res["type"] == "label_selector":
            match = parse_label_selector(res["label_selector"]["selector"])
            item["applied_to_resources"] = [{"type": "server", "server": {"id": s["id"]}}
                                            for s in st["servers"] if match(s["labels"])]
        applied.append(item)
    out["applied_to"] = applied
    return out


def _placement_group(st: dict[str, Any], pg: dict[str, Any]) -> dict[str, Any]:
    out = _public(pg)
    out["servers"] = [s["id"] for s in st["servers"] if s.get("placement_group") == pg["id"]]
    return out


def _server(st: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
    ip4 = s["public_ipv4"]["ip"]
    firewalls = [{"id": fw["id"], "status": "applied"} for fw in st["firewalls"]
                 if s["id"] in _firewall_server_ids(st, fw)]
    pg = _find(st["placement_groups"], s.get("placement_group"))
    stype = next(t for t in SERVER_TYPES if t["name"] == s["server_type"])
    return {
        "id": s["id"], "name": s["name"], "status": s["status"], "created": s["created"],
        "public_net": {
            "ipv4": {"id": s["public_ipv4"]["id"], "ip": ip4, "blocked": False,
                     "dns_ptr": f"static.{'.'.join(reversed(ip4.split('.')))}.clients.your-server.de"},
            "ipv6": {"id": s["public_ipv6"]["id"], "ip": s["public_ipv6"]["ip"], "blocked": False, "dns_ptr": []},
            "floating_ips": [], "firewalls": firewalls,
        },
        "private_net": [copy.deepcopy(p) for p in s["private_net"]],
        "server_type": _server_type(stype),
        "datacenter": _datacenter(s["location"]),
        "location": _location(s["location"]),
        "image": _image(next(i for i in IMAGES if i["id"] == s["image"])),
        "iso": None, "rescue_enabled": False, "locked": False, "backup_window": None,
        "outgoing_traffic": 0, "ingoing_traffic": 0, "included_traffic": 21990232555520,
        "protection": dict(s["protection"]), "labels": dict(s["labels"]), "volumes": [], "load_balancers": [],
        "primary_disk_size": stype["disk"],
        "placement_group": _placement_group(st, pg) if pg else None,
    }


def _listing(req: Request, key: str, items: list[dict[str, Any]], *, labels: bool = True,
             names: bool = True) -> tuple[int, dict[str, Any]]:
    """Filter by name / label_selector, sort, and page like the API (``meta.pagination``)."""
    name = req.q("name")
    if names and name is not None:
        items = [i for i in items if i.get("name") == name]
    selector = req.q("label_selector")
    if labels and selector:
        match = parse_label_selector(selector)
        items = [i for i in items if match(i.get("labels") or {})]
    sort = req.q("sort")
    if sort:
        fld, _, order = sort.partition(":")
        if items and fld not in items[0]:
            raise invalid_input("sort", f"cannot sort by {fld}")
        items = sorted(items, key=lambda i: (i.get(fld) is None, i.get(fld)), reverse=order == "desc")
    else:
        items = sorted(items, key=lambda i: i["id"])
    try:
        page = int(req.q("page") or 1)
        per_page = int(req.q("per_page") or DEFAULT_PER_PAGE)
    except ValueError:
        raise invalid_input("page", "page and per_page must be whole numbers") from None
    if page < 1:
        raise invalid_input("page", "must be 1 or more")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise invalid_input("per_page", f"must be between 1 and {MAX_PER_PAGE}")
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    chunk = items[(page - 1) * per_page: page * per_page]
    meta = {"pagination": {"page": page, "per_page": per_page, "previous_page": page - 1 if page > 1 else None,
                           "next_page": page + 1 if page < last else None, "last_page": last,
                           "total_entries": total}}
    return 200, {key: chunk, "meta": meta}


# serving ------------------------------------------------------------------------------------------

class RunningStandin:
    """A stand-in served by cheroot on a background thread; ``url`` is the ``api_endpoint``."""

    def __init__(self, app: HcloudStandin, host: str = "127.0.0.1", port: int = 0, *, threads: int = 8) -> None:
        from cheroot import wsgi  # noqa: PLC0415 - cheroot only when the stand-in is served

        self.app = app
        self._server = wsgi.Server((host, port), app, numthreads=threads, server_name="hcloud-standin")
        self._server.expiration_interval = 0.05  # how often serve() looks at the stop flag: fast shutdown
        self._server.prepare()
        self.host, self.port = self._server.bind_addr[0], self._server.bind_addr[1]
        self.url = f"http://{self.host}:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve, daemon=True, name="hcloud-standin")
        self._thread.start()

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(10)
        self.app.wait_idle()

    def __enter__(self) -> "RunningStandin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _lab_created(name: str, private_ip: str | None, authorized_keys: list[str],
                 host_keys: dict[str, str] | None = None) -> dict | None:
    try:
        from hcbpg.lab import hosts  # noqa: PLC0415 - another module of the lab, late on purpose: the stand-in also runs without it
        fn = hosts.create_server_host
    except (ImportError, AttributeError) as exc:
        LOG.warning("no lab host for %s: hcbpg.lab.hosts.create_server_host is not available (%s)", name, exc)
        return None
    # a server created without a private network has no IP: passed on as before, for create_host to refuse
    # created through the API: the creator pins its host keys (hcbpg from the keys it generated);
    # the lab does not vouch for them
    return fn(name, private_ip, authorized_keys, host_keys=host_keys or None, pin=False)  # type: ignore[arg-type]


def _lab_firewall(name: str, rules: list[dict[str, Any]] | None, private_ranges: list[str]) -> None:
    from hcbpg.lab import hosts  # noqa: PLC0415 - another module of the lab, late on purpose (see _lab_created)
    from hcbpg.lab.core import LabConfig  # noqa: PLC0415 - as above
    if not hosts.apply_firewall(LabConfig.load(None), name, rules, private_ranges):
        LOG.warning("firewall of %s not applied: no lab host of that name", name)


def _lab_deleted(name: str) -> None:
    try:
        from hcbpg.lab import hosts  # noqa: PLC0415 - the stand-in also runs without the lab's hosts (ImportError handled)
        fn = hosts.destroy_server_host
    except (ImportError, AttributeError) as exc:
        LOG.warning("lab host %s not torn down: hcbpg.lab.hosts.destroy_server_host is not available (%s)", name, exc)
        return
    fn(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcbpg.lab.hcloud_api",
                                     description="The lab's Hetzner Cloud API stand-in.")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8780)
    parser.add_argument("--state", required=True, help="JSON state file (created if missing)")
    parser.add_argument("--token-file", required=True, help="file holding the API token clients must send")
    parser.add_argument("--reserve-ip", action="append", default=[],
                        help="a private IP never handed to a server (the bind address always is)")
    parser.add_argument("--action-seconds", type=float, default=2.0)
    parser.add_argument("--no-hooks", action="store_true", help="do not build lab hosts for servers")
    parser.add_argument("--enforce-firewalls", action="store_true",
                        help="apply firewalls to the servers' lab hosts (iptables in their namespaces)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    token = Path(args.token_file).read_text().strip()
    reserved = list(args.reserve_ip)
    with contextlib.suppress(ValueError):
        reserved.append(str(ipaddress.ip_address(args.bind)))
    app = HcloudStandin(args.state, token, action_seconds=args.action_seconds, reserved_ips=reserved,
                        on_server_created=None if args.no_hooks else _lab_created,
                        on_server_deleted=None if args.no_hooks else _lab_deleted,
                        on_firewall_changed=_lab_firewall if args.enforce_firewalls and not args.no_hooks else None)
    running = RunningStandin(app, args.bind, args.port, threads=16)
    LOG.info("Hetzner Cloud API stand-in on %s (state %s)", running.url, args.state)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    running.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
