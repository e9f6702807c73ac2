"""Specs of step 10_high_availability's operations on the recording double (hcbpg.ops.ha_files, hcbpg.ops.etcd,
hcbpg.ops.patroni): a machine's state in -> commands, writes and Outcome out.

:class:`Box` keeps one machine's state (dpkg, directories and each file's owner and mode, daemons by pidfile or
systemd, etcd's users, roles and auth, Patroni's dynamic configuration) behind a :class:`RecordingHost`, and
changes it as the real command would (``apt-get install``, ``install -d``, the detached start, ``etcdctl user
add``, ``PATCH /config``).  etcd refuses a user or role change unless the client certificate etcdctl names exists
on the machine and, with auth on, says CN=root; Patroni answers an unsafe verb 401 unless curl's netrc holds the
REST password: so the specs see the order the operations must keep.  A dry run is the same call on a
:class:`DryRunHost` over the same state.  Every password is planted, then looked for in what was run, shown and
returned.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hcbpg.adapters import services as adapter_services
from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired import etcd as detcd
from hcbpg.desired import patroni as dp
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.capacity import ServerShape
from hcbpg.desired.certs import CertSpec, plan_cert, render_ca
from hcbpg.desired.services import ETCD_LOG, PATRONI_LOG, etcd_service, patroni_service
from hcbpg.errors import EtcdError, HcbpgError, ParamsError, PatroniError, RemoteCommandError, SecretError, WaitTimeout
from hcbpg.ops import etcd as ops_etcd
from hcbpg.ops import ha_files, tls
from hcbpg.ops import patroni as ops_patroni
from hcbpg.outcome import Outcome
from hcbpg.params import Params, parse_params
from hcbpg.pg.services import ServiceSpec, dropin_path, render_start_command, render_status_command, render_unit_dropin
from hcbpg.wait import wait_until
from tests.fast.specs import PRIMARY, covers, params_data

NAME = "server-postgres-1"
REPLICA = {"name": "server-postgres-2", "private_ip": "10.0.1.6", "role": "replica"}
JUMPBOX = "hcb-jumpbox"
CCX13 = ServerShape("ccx13", cores=2, memory_gb=8.0, disk_gb=80)
START_CONF = "/etc/postgresql/15/main/start.conf"
#: Debian's own /etc/default/etcd (etcd-server 3.4.23): what the first run replaces
DEBIAN_DEFAULT = "## etcd(1) daemon options\n## See \"/usr/share/doc/etcd-server/op-guide/configuration.md.gz\"\n"
#: hostile passwords: quotes, shell words, a netrc's and a YAML's specials
REST_PW = "rest pw 'q\"$(id)`x` #1"
ETCD_PW = "etcd:pw&x=1 \\ \"y\""
REPL_PW = "repl pw ü %s {x}"
SECRETS = dp.PatroniSecrets(rest_password=REST_PW, etcd_password=ETCD_PW, replication_password=REPL_PW)
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
AUTH_OFF = (GOLDEN / "etcd.auth-probe.disabled.json").read_text()
AUTH_ON_WRONG = (GOLDEN / "etcd.auth-probe.enabled.json").read_text()
AUTH_TOKEN = (GOLDEN / "etcd.auth-probe.ok.json").read_text()
#: what Patroni 3.0.2 puts in the DCS when it adopts a running cluster without bootstrap.dcs (its defaults)
ADOPTED_DCS: dict[str, Any] = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10, "maximum_lag_on_failover": 1048576,
                               "postgresql": {"use_pg_rewind": False, "parameters": {"max_connections": 100}}}
APT = "DEBIAN_FRONTEND=noninteractive apt-get"


def ha_data() -> dict[str, Any]:
    return params_data(
        servers=[dict(PRIMARY), dict(REPLICA)],
        replication={"manager": "patroni", "password": "env:HCBPG_TEST_REPL_PW", "connection_limit": 5,
                     "patroni": {"scope": "hcb-lab", "rest_password": "env:HCBPG_TEST_REST_PW"},
                     "etcd": {"patroni_password": "env:HCBPG_TEST_ETCD_PW"}},
        jumpbox={"private_ip": "10.0.1.40"},
        pgbackrest={"stanza": "hcb_production", "s3_bucket": "hcb-lab-postgres", "s3_endpoint": "10.0.1.1:9443",
                    "s3_region": "fsn1", "s3_key": "env:HCBPG_TEST_S3", "s3_key_secret": "env:HCBPG_TEST_S3S",
                    "cipher_pass": "env:HCBPG_TEST_CIPHER"})


@pytest.fixture
def params(tmp_path, monkeypatch):
    """Patroni params (two servers, the jumpbox, pgBackRest) whose CA lives under *tmp_path* (made on the first
    real run, its key by a ``file:`` reference there)."""
    monkeypatch.setenv("HCBPG_HOME", str(tmp_path))
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield parse_params(ha_data())
    tls._CA_CACHE.clear()


def ca_of(params: Params):
    ca = tls._get_ca(params, create=False)
    assert ca is not None, "the first real run made the CA"
    return ca


# the machine -------------------------------------------------------------------------------------------------

class Host(RecordingHost):
    """The double, whose writes also give the file its owner and mode (as the real atomic write does)."""

    def __init__(self, box: "Box", name: str, files: dict[str, str]) -> None:
        super().__init__(name, handler=box.answer, files=files)
        self.box = box

    def put_text(self, path: str, text: str, *, mode: int = 0o644, owner: str = "root", group: str | None = None,
                 dry_run: bool = False) -> None:
        super().put_text(path, text, mode=mode, owner=owner, group=group, dry_run=dry_run)
        if not dry_run:
            self.box.meta[path] = (owner, group or owner, mode)


def fail(box: "Box", cmd: str, code: int, stderr: str) -> Result:
    return Result(box.name, cmd, code, "", stderr, 0.0)


class Box:
    """One machine's state behind a :class:`Host`, changed by what runs there as the real commands would."""

    def __init__(self, params: Params, name: str = NAME, *, installed: Iterable[str] = (), systemd: bool = False,
                 files: dict[str, str] | None = None, refuse: Iterable[str] = (), apt_fails: bool = False) -> None:
        self.params, self.name = params, name
        self.installed = dict.fromkeys(installed, "1")
        self.systemd = systemd
        self.dirs = {"/", "/etc", "/etc/default", "/run", "/var", "/var/lib", "/var/lib/postgresql",
                     "/etc/postgresql", "/etc/postgresql/15", "/etc/postgresql/15/main"}
        if "etcd-server" in self.installed:
            self.dirs.add("/var/lib/etcd")
        self.meta: dict[str, tuple[str, str, int]] = {}
        self.links: dict[str, str] = {}   # symbolic link -> target (ln -sfn, readlink)
        self.refuse, self.apt_fails = set(refuse), apt_fails
        # daemons: by pidfile (pid -> argv of the live processes) or by systemd unit (name -> main pid)
        self.pidfiles: dict[str, int] = {}
        self.procs: dict[int, list[str]] = {}
        self.units: dict[str, int] = {}
        self.start_fails: set[str] = set()
        self.dies: set[str] = set()
        self.next_pid = 4000
        self.reloads = 0
        # etcd
        self.etcd_up = False
        self.auth = False
        self.users: dict[str, str] = {}
        self.user_roles: dict[str, set[str]] = {}
        self.roles: dict[str, list[tuple[str, str, bool]]] = {"root": []}
        self.etcd_fails: dict[tuple[str, ...], str] = {}
        self.gateway: str | None = None   # an answer the gateway gives instead of its own
        # Patroni
        self.dcs: dict[str, Any] | None = None   # None: Patroni does not answer
        self.patch_status = 200
        self.specs = {s.name: s for s in (etcd_service(params), patroni_service(params))}
        base = {START_CONF: "auto\n"}
        if "etcd-server" in self.installed:
            base[detcd.DEFAULT_PATH] = DEBIAN_DEFAULT
        self.host = Host(self, name, {**base, **(files or {})})

    @property
    def files(self) -> dict[str, str]:
        return self.host.files

    @property
    def system_users(self) -> set[str]:
        return {"root", "postgres"} | ({"etcd"} if "etcd-server" in self.installed else set())

    def running(self, name: str) -> bool:
        if self.systemd:
            return name in self.units
        pid = self.pidfiles.get(name)
        return pid is not None and pid in self.procs

    def _new_pid(self, argv: list[str]) -> int:
        self.next_pid += 1
        self.procs[self.next_pid] = argv
        return self.next_pid

    def _argv(self, spec: ServiceSpec) -> list[str]:
        # Patroni is a python script: /proc shows its interpreter first
        return (["/usr/bin/python3"] if spec.argv[0] == "/usr/bin/patroni" else []) + list(spec.argv)

    def _start(self, spec: ServiceSpec, cmd: str) -> Result | str:
        if spec.user not in self.system_users:
            return fail(self, cmd, 1, f"install: invalid user '{spec.user}'")
        if spec.name in self.start_fails:
            return fail(self, cmd, 1, f"Failed to start {spec.name}: Unit {spec.name}.service is masked.")
        pid = self._new_pid(self._argv(spec))
        if spec.name in self.dies:
            del self.procs[pid]   # it exits at once (a bad config: see its log)
        if self.systemd:
            if spec.name not in self.dies:
                self.units[spec.name] = pid
        else:
            self.pidfiles[spec.name] = pid
        if spec.name == "etcd" and spec.name not in self.dies:
            self.etcd_up = True
        return ""

    def _stop(self, name: str) -> None:
        pid = self.units.pop(name, None) if self.systemd else self.pidfiles.get(name)
        if pid is not None:
            self.procs.pop(pid, None)
        if name == "etcd":
            self.etcd_up = False

    def answer(self, call: Call) -> Result | str | None:
        cmd, display = call.command, call.options.get("display") or ""
        words = shlex.split(cmd) if not cmd.startswith(("made=", "set -u")) else []
        if cmd.startswith("stat -c "):
            path = words[-1]
            if path not in self.files:
                return fail(self, cmd, 1, f"stat: cannot statx '{path}': No such file or directory")
            owner, group, mode = self.meta.get(path, ("root", "root", 0o644))
            return f"{owner}:{group} {mode:o}\n"
        if cmd.startswith("test -d "):
            path = words[-1]
            there = (self.systemd if path == "/run/systemd/system" else
                     int(path[6:]) in self.procs if path.startswith("/proc/") else path in self.dirs)
            return Result(self.name, cmd, 0 if there else 1, "", "", 0.0)
        if display.startswith("directory "):
            path = display.split()[1]
            if path in self.refuse:
                return fail(self, cmd, 77, f"hcbpg: refusing to use {path}: it is a symbolic link")
            while path not in self.dirs:
                self.dirs.add(path)
                path = path.rsplit("/", 1)[0] or "/"
            return ""
        if cmd.startswith("readlink "):
            link = self.links.get(words[1])
            return Result(self.name, cmd, 0 if link else 1, f"{link}\n" if link else "", "", 0.0)
        if cmd.startswith("ln -sfn "):
            self.links[words[3]] = words[2]
            return ""
        if cmd.startswith("chown "):
            owner, _, group = words[1].partition(":")
            self.meta[words[2]] = (owner, group, int(words[5], 8))
            return ""
        if cmd.startswith("dpkg-query -W"):
            return "".join(f"{p}\tii \t{self.installed[p]}\n" for p in words[4:] if p in self.installed)
        if display.startswith("apt-get install "):
            if self.apt_fails:
                return fail(self, cmd, 100, "E: Unable to locate package etcd-server")
            for p in display.removeprefix("apt-get install ").split(" (")[0].split():
                self.installed[p] = "3.0.2-1"
            if "etcd-server" in self.installed:
                self.dirs.add("/var/lib/etcd")
            return ""
        for spec in self.specs.values():
            if cmd == render_status_command(spec):
                pid = self.pidfiles.get(spec.name)
                if pid is None:
                    return ""
                argv = self.procs.get(pid)
                return f"pid={pid}\n" + ("\0".join(argv) + "\0" if argv else "")
            if cmd == render_start_command(spec):
                return self._start(spec, cmd)
        if cmd.startswith("kill -TERM "):
            pid = int(words[-1])
            name = next((n for n, p in self.pidfiles.items() if p == pid), None)
            self.procs.pop(pid, None)
            if name == "etcd":
                self.etcd_up = False
            return ""
        if cmd.startswith("systemctl ") or cmd.startswith("install -d -m 0755 /etc/systemd/"):
            return self.systemctl(cmd, words)
        if cmd.startswith("env ETCDCTL_API=3 etcdctl "):
            return self.etcdctl(call, words)
        if words[:1] == ["curl"] and any(w.endswith("/v3/auth/authenticate") for w in words):
            return self.etcd_gateway(call)
        if words[:1] == ["curl"] and ":8008/" in words[-1]:
            return self.patroni(call, words)
        if cmd.startswith("rm -rf "):
            gone = words[-1]
            for p in [p for p in self.files if p.startswith(gone + "/")]:
                del self.files[p]
            self.dirs.discard(gone)
            return ""
        return None

    def systemctl(self, cmd: str, words: list[str]) -> Result | str:
        name = words[-1]
        if words[:2] == ["systemctl", "is-active"]:
            up = self.running(name)
            return Result(self.name, cmd, 0 if up else 3, "active\n" if up else "inactive\n", "", 0.0)
        if words[:2] == ["systemctl", "show"]:
            return f"{self.units.get(name, 0)}\n"
        if words[:2] == ["systemctl", "daemon-reload"]:
            self.reloads += 1
            return ""
        if words[0] == "install":
            self.dirs.add(name)
            return ""
        spec = self.specs[name]
        if words[:3] == ["systemctl", "enable", "--now"]:
            return self._start(spec, cmd)
        if words[:2] == ["systemctl", "stop"]:
            self._stop(name)
            return ""
        if words[:2] == ["systemctl", "restart"]:
            self._stop(name)
            return self._start(spec, cmd)
        raise AssertionError(f"no systemctl answer for {cmd!r}")

    # etcd --------------------------------------------------------------------------------------------------
    def etcdctl(self, call: Call, words: list[str]) -> Result | str:
        cmd = call.command
        opts = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
        args = words[[i for i, w in enumerate(words) if w.startswith("--command-timeout=")][0] + 1:]
        pos = tuple(a for a in args if not a.startswith("--"))
        if not self.etcd_up:
            return fail(self, cmd, 1, "Error: context deadline exceeded")
        if opts["cert"] not in self.files or opts["key"] not in self.files:
            return fail(self, cmd, 1, f"Error: open {opts['cert']}: no such file or directory")
        who = x509.load_pem_x509_certificate(self.files[opts["cert"]].encode()).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)
        if self.auth and (not who or who[0].value != "root"):
            return fail(self, cmd, 1, "Error: etcdserver: permission denied")
        for prefix, err in self.etcd_fails.items():
            if pos[:len(prefix)] == prefix:
                return fail(self, cmd, 1, f"Error: {err}")
        password = (call.stdin or "").removesuffix("\n")
        match pos:
            case ("user", "list"):
                return "".join(f"{u}\n" for u in sorted(self.users))
            case ("role", "list"):
                return "".join(f"{r}\n" for r in sorted(self.roles))
            case ("user", "add", user):
                if user in self.users:
                    return fail(self, cmd, 1, "Error: etcdserver: user name already exists")
                assert "--interactive=false" in args and password, "a password travels on stdin"
                self.users[user] = password
                return f"User {user} created\n"
            case ("user", "passwd", user):
                if user not in self.users:
                    return fail(self, cmd, 1, "Error: etcdserver: user name not found")
                self.users[user] = password
                return "Password updated\n"
            case ("user", "grant-role", user, role):
                if role not in self.roles:
                    return fail(self, cmd, 1, "Error: etcdserver: role name not found")
                self.user_roles.setdefault(user, set()).add(role)
                return f"Role {role} is granted to user {user}\n"
            case ("role", "add", role):
                if role in self.roles:
                    return fail(self, cmd, 1, "Error: etcdserver: role name already exists")
                self.roles[role] = []
                return f"Role {role} created\n"
            case ("role", "grant-permission", role, perm, key):
                self.roles[role].append((perm, key, "--prefix=true" in args))
                return f"Role {role} updated\n"
            case ("auth", "enable"):
                if "root" not in self.users:
                    return fail(self, cmd, 1, "Error: etcdserver: root user does not exist")
                if "root" not in self.user_roles.get("root", set()):
                    return fail(self, cmd, 1, "Error: etcdserver: root user does not have root role")
                self.auth = True
                return "Authentication Enabled\n"
        raise AssertionError(f"no etcdctl answer for {pos}")

    def etcd_gateway(self, call: Call) -> Result | str:
        if not self.etcd_up:
            return fail(self, call.command, 7, "curl: (7) Failed to connect to 127.0.0.1 port 2379: Connection refused")
        if self.gateway is not None:
            return self.gateway
        body = json.loads(call.stdin or "{}")
        if not self.auth:
            return AUTH_OFF
        return AUTH_TOKEN if self.users.get(body["name"]) == body["password"] else AUTH_ON_WRONG

    # Patroni -----------------------------------------------------------------------------------------------
    def patroni(self, call: Call, words: list[str]) -> Result | str:
        if self.dcs is None:
            return fail(self, call.command, 7, "curl: (7) Failed to connect to 10.0.1.5 port 8008: Connection refused")
        path = words[-1].split(":8008", 1)[1]
        method = words[words.index("-X") + 1] if "-X" in words else "GET"
        if method == "GET":
            if path == "/config":
                return json.dumps(self.dcs) + "\n200"
            if path == "/patroni":
                return json.dumps({"state": "running", "role": "master", "timeline": 1,
                                   "patroni": {"version": "3.0.2", "scope": "hcb-lab"}}) + "\n200"
            return '{"error": "not found"}\n404'
        netrc = words[words.index("--netrc-file") + 1]
        if f'password "{REST_PW}' not in self.files.get(netrc, "").replace('\\"', '"').replace("\\\\", "\\"):
            return 'no auth header received\n401'
        if self.patch_status != 200:
            return json.dumps({"error": "Config modification aborted"}) + f"\n{self.patch_status}"
        assert (method, path) == ("PATCH", "/config"), (method, path)
        merge(self.dcs, json.loads(call.stdin or "{}"))
        return json.dumps(self.dcs) + "\n200"


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """Patroni's PATCH /config: a deep merge, null removes the key."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def no_secret(secret: str, host: Any, outcomes: Iterable[Outcome] = (), *more: Any) -> None:
    """*secret* is nowhere the operator or a log could see it: journal, command lines, echo, outcomes."""
    seen = [*host.journal, *getattr(host, "echoed", []), *(str(o) for o in outcomes), *map(str, more)]
    inner = getattr(host, "inner", None) or host
    seen += [c.command for c in getattr(inner, "calls", ())]
    for text in seen:
        for part in {secret, *(p for p in secret.split() if len(p) > 4)}:
            assert part not in text, f"{part!r} shown in {text[:200]!r}"


def stdin_of(host: RecordingHost, word: str) -> list[str]:
    return [c.stdin or "" for c in host.calls if word in c.command]


def once(lines: list[str]) -> list[str]:
    """*lines* with a repeated line dropped (a plan lists a directory it would make once per file in it)."""
    return list(dict.fromkeys(lines))


def dry_over(box: Box) -> tuple[DryRunHost, list[str]]:
    echoed: list[str] = []
    return DryRunHost(box.host, echo=echoed.append), echoed


# ha_files.ensure_text ----------------------------------------------------------------------------------------

TEXT_PATH = "/etc/patroni/extra.d/notes.conf"


@covers("hcbpg.ops.ha_files.ensure_text", "fresh", "second run")
def test_text_written_with_its_directory_owner_and_mode_then_left_alone(params):
    box = Box(params)
    out = ha_files.ensure_text(box.host, TEXT_PATH, "a = 1\n", mode=0o640, owner="root", group="postgres",
                               what="notes")
    assert box.host.journal == ["directory /etc/patroni/extra.d (mode 0755, owner root:root)", f"write {TEXT_PATH}"]
    assert box.host.written == [(TEXT_PATH, "a = 1\n", 0o640, "root", "postgres")]
    assert out.changed and not out.dry_run and out.what == "notes"
    assert out.diff.splitlines()[-1] == "+a = 1" and f"{TEXT_PATH} (hcbpg)" in out.diff
    again = ha_files.ensure_text(box.host, TEXT_PATH, "a = 1\n", mode=0o640, owner="root", group="postgres",
                                 what="notes")
    assert not again.changed and again.diff == "" and len(box.host.journal) == 2
    # a changed text is diffed against what is there, the directory not made again
    third = ha_files.ensure_text(box.host, TEXT_PATH, "a = 2\n", mode=0o640, owner="root", group="postgres",
                                 what="notes")
    assert box.host.journal[2:] == [f"write {TEXT_PATH}"] and "-a = 1\n+a = 2" in third.diff


@covers("hcbpg.ops.ha_files.ensure_text", "second run")
def test_same_text_with_the_wrong_owner_or_mode_is_only_chowned(params):
    box = Box(params, files={TEXT_PATH: "a = 1\n"})
    box.dirs.add("/etc/patroni/extra.d")
    box.meta[TEXT_PATH] = ("postgres", "postgres", 0o644)
    out = ha_files.ensure_text(box.host, TEXT_PATH, "a = 1\n", mode=0o600, owner="root", what="notes")
    assert box.host.journal == [f"chown root:root {TEXT_PATH} && chmod 0600 {TEXT_PATH}"]
    assert out.changed and out.diff == "" and box.host.written == []
    assert box.meta[TEXT_PATH] == ("root", "root", 0o600)
    assert not ha_files.ensure_text(box.host, TEXT_PATH, "a = 1\n", mode=0o600, owner="root", what="notes").changed
    assert len(box.host.journal) == 1


@covers("hcbpg.ops.ha_files.ensure_text", "fresh", "dry run")
def test_a_secret_file_is_never_diffed_and_a_plan_writes_nothing(params):
    secret = "s3cr3t-Planted 'pw' $(x)"
    box = Box(params, files={TEXT_PATH: "password: old-Planted-value\n"})
    box.dirs.add("/etc/patroni/extra.d")
    dry, echoed = dry_over(box)
    planned = ha_files.ensure_text(dry, TEXT_PATH, f"password: {secret}\n", mode=0o600, owner="postgres",
                                   what="secrets", secret=True)
    assert dry.journal == [f"write {TEXT_PATH}"] and planned.changed and planned.dry_run
    assert planned.diff == "" and planned.actions == [f"write {TEXT_PATH} (a secret: no diff shown)"]
    assert box.files[TEXT_PATH] == "password: old-Planted-value\n" and box.host.journal == []
    no_secret(secret, dry, [planned], *echoed)
    no_secret("old-Planted-value", dry, [planned], *echoed)
    out = ha_files.ensure_text(box.host, TEXT_PATH, f"password: {secret}\n", mode=0o600, owner="postgres",
                               what="secrets", secret=True)
    assert out.changed and out.diff == "" and box.files[TEXT_PATH] == f"password: {secret}\n"
    assert box.host.written[-1][2:] == (0o600, "postgres", "postgres")
    no_secret(secret, box.host, [out])
    assert not ha_files.ensure_text(box.host, TEXT_PATH, f"password: {secret}\n", mode=0o600, owner="postgres",
                                    what="secrets", secret=True).changed


@covers("hcbpg.ops.ha_files.ensure_text", "dry run")
def test_a_plan_of_a_new_file_records_its_directory_and_write(params):
    box = Box(params)
    dry, _ = dry_over(box)
    out = ha_files.ensure_text(dry, TEXT_PATH, "a = 1\n", what="notes")
    assert dry.journal == ["directory /etc/patroni/extra.d (mode 0755, owner root:root)", f"write {TEXT_PATH}"]
    assert out.verb == "would change" and "+a = 1" in out.diff
    assert box.host.journal == [] and TEXT_PATH not in box.files and "/etc/patroni/extra.d" not in box.dirs


@covers("hcbpg.ops.ha_files.ensure_text", "refusal")
def test_a_directory_that_cannot_be_made_safely_stops_before_the_write(params):
    box = Box(params, refuse=["/etc/patroni/extra.d"])
    with pytest.raises(RemoteCommandError, match="symbolic link"):
        ha_files.ensure_text(box.host, TEXT_PATH, "a = 1\n", what="notes")
    assert TEXT_PATH not in box.files and box.host.written == []


# ha_files.ensure_cert ----------------------------------------------------------------------------------------

def cert_of(box: Box, path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(box.files[path].encode())


def check_pair(box: Box, crt: str, key: str) -> None:
    """The key at *key* is the certificate's."""
    priv = serialization.load_pem_private_key(box.files[key].encode(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert priv.public_key().public_bytes(*spki) == cert_of(box, crt).public_key().public_bytes(*spki)


def ekus(cert: x509.Certificate) -> set[Any]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@covers("hcbpg.ops.ha_files.ensure_cert", "fresh", "second run")
def test_certificate_issued_key_first_by_the_environments_ca_then_kept(params):
    box = Box(params)
    spec = dp.rest_cert_spec(params.primary)
    out = ha_files.ensure_cert(box.host, params, spec, dp.REST_CERT, dp.REST_KEY, owner="postgres", what="REST")
    ca_path = desired_tls.client_ca_path(params)
    assert box.host.journal == ["directory /etc/hcbpg/tls (mode 0755, owner root:root)", f"write {ca_path}",
                                "directory /etc/patroni/tls (mode 0750, owner postgres:postgres)",
                                f"write {dp.REST_KEY}", f"write {dp.REST_CERT}"]
    assert [o.changed for o in out] == [True, True] and not any(o.dry_run for o in out)
    assert out[1].actions == ["issued: no certificate yet", f"write {dp.REST_CERT} and {dp.REST_KEY} (0600)"]
    modes = {p: (m, o, g) for p, _, m, o, g in box.host.written}
    assert modes[dp.REST_KEY] == (0o600, "postgres", "postgres") and modes[dp.REST_CERT] == (0o644, "postgres",
                                                                                             "postgres")
    ca = ca_of(params)
    assert box.files[ca_path] == ca.cert_pem
    cert = cert_of(box, dp.REST_CERT)
    cert.verify_directly_issued_by(ca.cert)
    check_pair(box, dp.REST_CERT, dp.REST_KEY)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == ["10.0.1.5", "127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=params.tls.cert_days - 1)
    no_secret(box.files[dp.REST_KEY].splitlines()[1], box.host, out)
    again = ha_files.ensure_cert(box.host, params, spec, dp.REST_CERT, dp.REST_KEY, owner="postgres", what="REST")
    assert not any(o.changed for o in again) and len(box.host.journal) == 5


@covers("hcbpg.ops.ha_files.ensure_cert", "second run")
def test_a_certificate_saying_something_else_is_issued_again(params):
    box = Box(params)
    ha_files.ensure_cert(box.host, params, dp.ETCD_CLIENT_SPEC, dp.REST_CERT, dp.REST_KEY, owner="postgres",
                         what="REST")
    old_key = box.files[dp.REST_KEY]
    out = ha_files.ensure_cert(box.host, params, dp.rest_cert_spec(params.primary), dp.REST_CERT, dp.REST_KEY,
                               owner="postgres", what="REST")
    assert out[1].actions[0] == "issued: no subject alternative names"
    assert box.host.journal[-2:] == [f"write {dp.REST_KEY}", f"write {dp.REST_CERT}"]   # the directory is there
    assert box.files[dp.REST_KEY] != old_key and cert_of(box, dp.REST_CERT).subject.rfc4514_string() == f"CN={NAME}"
    # near its end (the short-lived kind: days=1 renews at half its life)
    ha_files.ensure_cert(box.host, params, CertSpec("root", server=False, client=True), "/run/x/root.crt",
                         "/run/x/root.key", owner="root", what="root", days=1, dir_mode=0o700)
    assert box.host.journal[-3] == "directory /run/x (mode 0700, owner root:root)"
    left = cert_of(box, "/run/x/root.crt").not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23) < left <= dt.timedelta(days=1)
    assert plan_cert(box.files["/run/x/root.crt"], ca_of(params), CertSpec("root", server=False, client=True),
                     renew_days=0.5, now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=13)) is not None


@covers("hcbpg.ops.ha_files.ensure_cert", "dry run")
def test_a_plan_of_a_certificate_makes_no_ca_and_writes_nothing(params, tmp_path):
    box = Box(params)
    dry, echoed = dry_over(box)
    out = ha_files.ensure_cert(dry, params, dp.ETCD_CLIENT_SPEC, dp.ETCD_CLIENT_CERT, dp.ETCD_CLIENT_KEY,
                               owner="postgres", what="etcd client")
    assert dry.journal == ["directory /etc/hcbpg/tls (mode 0755, owner root:root)",
                           f"write {desired_tls.client_ca_path(params)}",
                           "directory /etc/patroni/tls (mode 0750, owner postgres:postgres)",
                           f"write {dp.ETCD_CLIENT_KEY}", f"write {dp.ETCD_CLIENT_CERT}"]
    assert [o.verb for o in out] == ["would change", "would change"]
    assert out[1].actions[0] == "issued: no certificate yet"
    assert box.host.journal == [] and box.host.written == [] and not list(tmp_path.rglob("*.key"))
    assert tls._get_ca(params, create=False) is None, "a plan makes no CA"
    no_secret(dry.files[dp.ETCD_CLIENT_KEY].splitlines()[1], dry, out, *echoed)


@covers("hcbpg.ops.ha_files.ensure_cert", "refusal")
def test_certificate_refused_where_the_directory_is_not_safe_or_the_ca_key_not_the_ca(params, tmp_path):
    box = Box(params, refuse=[dp.TLS_DIR])
    tls.ensure_client_ca(box.host, params)
    box.host.journal.clear()
    with pytest.raises(RemoteCommandError, match="symbolic link"):
        ha_files.ensure_cert(box.host, params, dp.ETCD_CLIENT_SPEC, dp.ETCD_CLIENT_CERT, dp.ETCD_CLIENT_KEY,
                             owner="postgres", what="etcd client")
    assert box.host.journal == ["directory /etc/patroni/tls (mode 0750, owner postgres:postgres)"]
    assert not any(p.startswith(dp.TLS_DIR) for p in box.files)
    tls._CA_CACHE.clear()
    (tmp_path / "params" / "lab.postgres-ca.crt").write_text(render_ca("elsewhere").cert_pem)
    other = Box(params)
    with pytest.raises(SecretError, match="does not belong to the CA certificate"):
        ha_files.ensure_cert(other.host, params, dp.ETCD_CLIENT_SPEC, dp.ETCD_CLIENT_CERT, dp.ETCD_CLIENT_KEY,
                             owner="postgres", what="etcd client")
    assert other.host.journal == [] and other.host.written == []


# ha_files.ensure_daemon_packages and the two that call it -----------------------------------------------------

def apt_line(box: Box) -> str:
    lines = [c.command for c in box.host.calls if c.kind == "run" and "apt-get install" in c.command]
    assert len(lines) == 1
    return lines[0]


@covers("hcbpg.ops.ha_files.ensure_daemon_packages", "fresh", "second run")
@covers("hcbpg.ops.etcd.ensure_etcd_packages", "fresh", "second run")
def test_etcd_packages_installed_under_a_policy_that_starts_nothing_then_left_alone(params):
    box = Box(params)
    out = ops_etcd.ensure_etcd_packages(box.host, params)
    assert box.host.journal == ["apt-get install etcd-server etcd-client (their daemons not started)"]
    assert out.changed and out.what == f"packages etcd-server, etcd-client on {NAME}"
    line = apt_line(box)
    assert f"{APT} update -q && {APT} install -y -q --no-install-recommends etcd-server etcd-client" in line
    assert "systemctl disable --now etcd" in line and "exit 101" in line
    assert set(box.installed) == {"etcd-server", "etcd-client"}
    again = ops_etcd.ensure_etcd_packages(box.host, params)
    assert not again.changed and len(box.host.journal) == 1
    assert again.actions == ["etcd-server 3.0.2-1 already installed", "etcd-client 3.0.2-1 already installed"]


@covers("hcbpg.ops.ha_files.ensure_daemon_packages", "fresh", "dry run")
@covers("hcbpg.ops.patroni.ensure_patroni_packages", "fresh", "second run", "dry run")
def test_patroni_packages_install_only_what_is_missing_and_a_plan_installs_nothing(params):
    box = Box(params, installed=["curl"])
    dry, _ = dry_over(box)
    planned = ops_patroni.ensure_patroni_packages(dry, params)
    assert dry.journal == ["apt-get install patroni (their daemons not started)"]
    assert planned.verb == "would change" and "patroni" not in box.installed and box.host.journal == []
    out = ops_patroni.ensure_patroni_packages(box.host, params)
    assert box.host.journal == dry.journal and out.changed
    assert apt_line(box).count("--no-install-recommends patroni;") == 1 and "disable --now patroni" in apt_line(box)
    assert not ops_patroni.ensure_patroni_packages(box.host, params).changed and len(box.host.journal) == 1


@covers("hcbpg.ops.etcd.ensure_etcd_packages", "dry run")
def test_etcd_packages_planned(params):
    box = Box(params)
    dry, _ = dry_over(box)
    out = ops_etcd.ensure_etcd_packages(dry, params)
    assert out.verb == "would change" and dry.journal == ["apt-get install etcd-server etcd-client (their daemons "
                                                          "not started)"]
    assert box.installed == {} and box.host.journal == []


@covers("hcbpg.ops.ha_files.ensure_daemon_packages", "refusal")
@covers("hcbpg.ops.etcd.ensure_etcd_packages", "refusal")
@covers("hcbpg.ops.patroni.ensure_patroni_packages", "refusal")
def test_a_failed_install_is_raised_with_apts_words(params):
    for ensure in (ops_etcd.ensure_etcd_packages, ops_patroni.ensure_patroni_packages):
        box = Box(params, apt_fails=True)
        with pytest.raises(RemoteCommandError, match="Unable to locate package"):
            ensure(box.host, params)
        assert box.installed == {}


def run_install_script(tmp_path: Path, script: str, *, apt_exit: int, policy_before: bool) -> tuple[int, str, bool]:
    """The install script as a shell runs it, with apt-get stubbed: (exit, what apt saw of the policy, policy left)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    apt = bin_dir / "apt-get"
    apt.write_text(f"#!/bin/sh\n[ \"$1\" = update ] && exit 0\n"
                   f"if [ -x '{tmp_path}/policy-rc.d' ]; then '{tmp_path}/policy-rc.d'; echo \"policy $?\" "
                   f">> '{tmp_path}/apt.log'; else echo 'no policy' >> '{tmp_path}/apt.log'; fi\nexit {apt_exit}\n")
    apt.chmod(apt.stat().st_mode | stat.S_IXUSR)
    policy = tmp_path / "policy-rc.d"
    (tmp_path / "apt.log").write_text("")
    if policy_before:
        policy.write_text("#!/bin/sh\nexit 0\n")
        policy.chmod(0o755)
    elif policy.exists():
        policy.unlink()
    res = subprocess.run(["sh", "-c", script], env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=10)
    return res.returncode, (tmp_path / "apt.log").read_text().strip(), policy.exists()


@covers("hcbpg.ops.ha_files.ensure_daemon_packages", "fresh", "refusal")
def test_the_install_script_refuses_starts_during_apt_and_leaves_no_policy_behind(params, tmp_path, monkeypatch):
    monkeypatch.setattr(ha_files, "_POLICY", str(tmp_path / "policy-rc.d"))
    box = Box(params)
    ha_files.ensure_daemon_packages(box.host, ("etcd-server",), stop_units=("etcd",))
    script = apt_line(box)
    # apt ran while invoke-rc.d's policy said 101 (no start); the policy made for it is gone after
    assert run_install_script(tmp_path, script, apt_exit=0, policy_before=False) == (0, "policy 101", False)
    # a failed install keeps apt's exit status and still removes the policy it made
    assert run_install_script(tmp_path, script, apt_exit=100, policy_before=False) == (100, "policy 101", False)
    # an operator's own policy is used as it is and kept
    assert run_install_script(tmp_path, script, apt_exit=0, policy_before=True) == (0, "policy 0", True)


# etcd: the member's files ------------------------------------------------------------------------------------

def member_journal(params: Params) -> list[str]:
    return ["directory /etc/hcbpg/tls (mode 0755, owner root:root)", f"write {desired_tls.client_ca_path(params)}",
            "directory /etc/etcd/tls (mode 0750, owner etcd:etcd)", f"write {detcd.MEMBER_KEY}",
            f"write {detcd.MEMBER_CERT}", "directory /etc/etcd/hcbpg-client (mode 0700, owner root:root)",
            f"write {detcd.GATEWAY_KEY}", f"write {detcd.GATEWAY_CERT}", f"write {detcd.CONF_PATH}",
            f"write {detcd.DEFAULT_PATH}", "directory /var/lib/etcd/hcbpg (mode 0700, owner etcd:etcd)"]


@covers("hcbpg.ops.etcd.ensure_etcd_member", "fresh", "second run")
def test_member_files_certificate_config_and_data_directory_once(params):
    box = Box(params, JUMPBOX, installed=["etcd-server", "etcd-client"])
    out = ops_etcd.ensure_etcd_member(box.host, params, JUMPBOX)
    assert box.host.journal == member_journal(params)
    assert [o.changed for o in out] == [True] * 6 and not any(o.dry_run for o in out)
    assert box.files[detcd.CONF_PATH] == detcd.render_etcd_conf(params, JUMPBOX)
    assert box.files[detcd.DEFAULT_PATH] == f"{detcd.render_etcd_default(params).splitlines()[0]}\n" \
        f"ETCD_CONFIG_FILE={detcd.CONF_PATH}\n"
    assert "-## etcd(1) daemon options" in out[4].diff and f"+ETCD_CONFIG_FILE={detcd.CONF_PATH}" in out[4].diff
    modes = {p: (m, o, g) for p, _, m, o, g in box.host.written}
    assert modes[detcd.CONF_PATH] == (0o640, "root", "etcd") and modes[detcd.DEFAULT_PATH] == (0o644, "root", "root")
    assert modes[detcd.MEMBER_KEY] == (0o600, "etcd", "etcd")
    cert = cert_of(box, detcd.MEMBER_CERT)
    cert.verify_directly_issued_by(ca_of(params).cert)
    check_pair(box, detcd.MEMBER_CERT, detcd.MEMBER_KEY)
    assert cert.subject.rfc4514_string() == f"CN={JUMPBOX}"
    # the gateway's client certificate: nobody (etcd's gateway refuses one with a CN once auth is on), root's
    gateway = cert_of(box, detcd.GATEWAY_CERT)
    check_pair(box, detcd.GATEWAY_CERT, detcd.GATEWAY_KEY)
    assert gateway.subject.rfc4514_string() == "" and ekus(gateway) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert modes[detcd.GATEWAY_KEY] == (0o600, "root", "root")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == ["10.0.1.40", "127.0.0.1"]
    assert ekus(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    again = ops_etcd.ensure_etcd_member(box.host, params, JUMPBOX)
    assert not any(o.changed for o in again) and len(box.host.journal) == 11


@covers("hcbpg.ops.etcd.ensure_etcd_member", "dry run")
def test_member_files_planned_with_diffs_and_nothing_written(params):
    box = Box(params, installed=["etcd-server", "etcd-client"])
    dry, echoed = dry_over(box)
    out = ops_etcd.ensure_etcd_member(dry, params, NAME)
    want = member_journal(params)
    # the plan cannot see that the certificate's directory made /etc/etcd: it lists that directory too
    assert dry.journal == want[:8] + ["directory /etc/etcd (mode 0755, owner root:root)"] + want[8:]
    assert [o.verb for o in out] == ["would change"] * 6
    assert f"+name: {NAME}" in out[3].diff and "listen-peer-urls: https://10.0.1.5:2380" in out[3].diff
    assert box.host.journal == [] and box.host.written == [] and "/var/lib/etcd/hcbpg" not in box.dirs
    assert any("would write /etc/etcd/hcbpg.yml" in e and "mode 0640, owner root:etcd" in e for e in echoed)


@covers("hcbpg.ops.etcd.ensure_etcd_member", "refusal")
def test_member_refused_without_its_params_or_for_a_machine_that_is_no_member(params):
    box = Box(params, installed=["etcd-server"])
    with pytest.raises(ValueError, match="drill-1 is not an etcd member; members: server-postgres-1, "
                                         "server-postgres-2, hcb-jumpbox"):
        ops_etcd.ensure_etcd_member(box.host, params, "drill-1")
    data = ha_data()
    data["replication"] = {"password": "env:HCBPG_TEST_REPL_PW"}      # manual: no etcd section
    with pytest.raises(ParamsError, match="replication.etcd: required"):
        ops_etcd.ensure_etcd_member(box.host, parse_params(data), NAME)
    assert box.host.journal == [] and box.host.written == []
    refused = Box(params, installed=["etcd-server"], refuse=["/var/lib/etcd/hcbpg"])
    with pytest.raises(RemoteCommandError, match="symbolic link"):
        ops_etcd.ensure_etcd_member(refused.host, params, NAME)
    assert "/var/lib/etcd/hcbpg" not in refused.dirs


# etcd and Patroni: the daemons --------------------------------------------------------------------------------

def start_line(spec: ServiceSpec) -> str:
    return f"start {spec.name} detached ({spec.pidfile}, log {spec.log_file})"


@covers("hcbpg.ops.etcd.ensure_etcd_running", "fresh", "second run")
def test_etcd_started_detached_with_hcbpgs_config_once(params):
    box = Box(params, installed=["etcd-server"])
    spec = etcd_service(params)
    out = ops_etcd.ensure_etcd_running(box.host, params)
    assert box.host.journal == [start_line(spec)] and out.changed and out.what == f"etcd running on {NAME}"
    started = [c.command for c in box.host.calls if c.kind == "run"][0]
    assert started == render_start_command(spec)
    assert "setpriv --reuid=etcd --regid=etcd" in started and f"ETCD_CONFIG_FILE={detcd.CONF_PATH}" in started
    assert box.running("etcd") and box.etcd_up
    assert not ops_etcd.ensure_etcd_running(box.host, params).changed and len(box.host.journal) == 1
    # a changed config: stopped by its own pid, started again
    pid = box.pidfiles["etcd"]
    out = ops_etcd.ensure_etcd_running(box.host, params, restart=True)
    assert box.host.journal[1:] == [f"kill -TERM {pid}", start_line(spec)] and out.changed
    assert box.pidfiles["etcd"] != pid and box.running("etcd")


@covers("hcbpg.ops.etcd.ensure_etcd_running", "fresh", "second run")
def test_etcd_under_systemd_gets_the_drop_in_then_the_unit_starts(params):
    box = Box(params, installed=["etcd-server"], systemd=True)
    spec = etcd_service(params)
    out = ops_etcd.ensure_etcd_running(box.host, params)
    assert box.host.journal == ["install -d -m 0755 /etc/systemd/system/etcd.service.d", f"write {dropin_path('etcd')}",
                                "systemctl daemon-reload", "systemctl enable --now --no-block etcd"]
    assert box.files[dropin_path("etcd")] == render_unit_dropin(spec) and "Type=notify" in box.files[dropin_path("etcd")]
    assert out.changed and box.running("etcd")
    assert not ops_etcd.ensure_etcd_running(box.host, params).changed and len(box.host.journal) == 4
    ops_etcd.ensure_etcd_running(box.host, params, restart=True)
    assert box.host.journal[4:] == ["systemctl stop etcd", "systemctl enable --now --no-block etcd"]


@covers("hcbpg.ops.etcd.ensure_etcd_running", "dry run")
def test_etcd_start_planned_and_nothing_started(params):
    box = Box(params, installed=["etcd-server"])
    dry, _ = dry_over(box)
    out = ops_etcd.ensure_etcd_running(dry, params)
    assert dry.journal == [start_line(etcd_service(params))] and out.verb == "would change"
    assert not box.running("etcd") and box.host.journal == []


def fake_time(monkeypatch) -> list[float]:
    """ServiceControl's waits on a clock that sleeps moves: a timeout costs no real time."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    def waiting(probe, done, **kw):
        return wait_until(probe, done, **{**kw, "sleep": sleep, "clock": lambda: now[0]})
    monkeypatch.setattr(adapter_services, "wait_until", waiting)
    return now


@covers("hcbpg.ops.etcd.ensure_etcd_running", "refusal")
def test_etcd_refused_before_its_package_and_a_member_that_exits_names_its_log(params, monkeypatch):
    box = Box(params)   # no etcd-server: no etcd user
    with pytest.raises(RemoteCommandError, match="invalid user 'etcd'"):
        ops_etcd.ensure_etcd_running(box.host, params)
    assert not box.running("etcd")
    now = fake_time(monkeypatch)
    dying = Box(params, installed=["etcd-server"])
    dying.dies.add("etcd")
    with pytest.raises(WaitTimeout, match="etcd on server-postgres-1 to run") as exc:
        ops_etcd.ensure_etcd_running(dying.host, params)
    assert exc.value.hint and ETCD_LOG in exc.value.hint and now[0] >= 10
    masked = Box(params, installed=["etcd-server"], systemd=True)
    masked.start_fails.add("etcd")
    with pytest.raises(RemoteCommandError, match="masked"):
        ops_etcd.ensure_etcd_running(masked.host, params)


@covers("hcbpg.ops.patroni.ensure_patroni_running", "fresh", "second run")
def test_patroni_started_as_postgres_with_its_config_directory_once(params):
    box = Box(params, installed=["patroni"])
    spec = patroni_service(params)
    out = ops_patroni.ensure_patroni_running(box.host, params)
    assert box.host.journal == [start_line(spec)] and out.changed and out.what == f"Patroni running on {NAME}"
    started = [c.command for c in box.host.calls if c.kind == "run"][0]
    assert "setpriv --reuid=postgres" in started and "/usr/bin/patroni /etc/patroni/15-main.d" in started
    assert "install -d -o postgres -g postgres -m 2775 /run/postgresql" in started
    # /proc shows the script behind python3: still Patroni
    assert box.procs[box.pidfiles[spec.name]][0] == "/usr/bin/python3"
    assert not ops_patroni.ensure_patroni_running(box.host, params).changed and len(box.host.journal) == 1
    assert ops_patroni.get_patroni_running(box.host, params)


@covers("hcbpg.ops.patroni.ensure_patroni_running", "fresh", "dry run")
def test_a_stale_pidfile_is_not_patroni_and_a_plan_starts_nothing(params):
    box = Box(params, installed=["patroni"])
    spec = patroni_service(params)
    box.pidfiles[spec.name] = 77
    box.procs[77] = ["/usr/sbin/cron", "-f"]           # its pid reused by another program
    dry, _ = dry_over(box)
    planned = ops_patroni.ensure_patroni_running(dry, params)
    assert dry.journal == [start_line(spec)] and planned.verb == "would change" and box.pidfiles[spec.name] == 77
    out = ops_patroni.ensure_patroni_running(box.host, params)
    assert out.changed and box.host.journal == [start_line(spec)] and box.pidfiles[spec.name] != 77
    assert 77 in box.procs, "the other program is left alone"


@covers("hcbpg.ops.patroni.ensure_patroni_running", "refusal")
def test_patroni_that_exits_at_once_is_a_timeout_naming_its_log(params, monkeypatch):
    now = fake_time(monkeypatch)
    box = Box(params, installed=["patroni"])
    box.dies.add(patroni_service(params).name)
    with pytest.raises(WaitTimeout, match="patroni@15-main on server-postgres-1 to run") as exc:
        ops_patroni.ensure_patroni_running(box.host, params)
    assert exc.value.hint and PATRONI_LOG in exc.value.hint and now[0] >= 20   # Patroni gets 20 s


# etcd: authentication ----------------------------------------------------------------------------------------

def etcd_box(params: Params, **kw: Any) -> Box:
    """The first member after its files and daemon: etcd runs, auth off, no user."""
    box = Box(params, installed=["etcd-server", "etcd-client"], **kw)
    ops_etcd.ensure_etcd_member(box.host, params, NAME)
    ops_etcd.ensure_etcd_running(box.host, params)
    box.host.journal.clear()
    box.host.calls.clear()
    box.host.written.clear()
    return box


def ctl_line(params: Params, *args: str, root: bool = True) -> str:
    cert = (f"{ops_etcd.ROOT_DIR}/root.crt", f"{ops_etcd.ROOT_DIR}/root.key") if root else (detcd.MEMBER_CERT,
                                                                                              detcd.MEMBER_KEY)
    return ops_etcd.get_etcdctl(Box(params).host, params, cert=cert[0], key=cert[1]).command(*args)


def auth_journal(params: Params) -> list[str]:
    return [f"directory {ops_etcd.ROOT_DIR} (mode 0700, owner root:root)", f"write {ops_etcd.ROOT_DIR}/root.key",
            f"write {ops_etcd.ROOT_DIR}/root.crt",
            ctl_line(params, "user", "list"),
            "etcdctl user add root (a random password on stdin, never kept)",
            ctl_line(params, "user", "grant-role", "root", "root"),
            ctl_line(params, "role", "list"),
            ctl_line(params, "role", "add", "patroni"),
            ctl_line(params, "role", "grant-permission", "patroni", "--prefix=true", "readwrite", "/service/"),
            "etcdctl user add patroni (the password on stdin)",
            ctl_line(params, "user", "grant-role", "patroni", "patroni"),
            "etcdctl user add server-postgres-1 (health only; a random password, never kept)",
            "etcdctl user add server-postgres-2 (health only; a random password, never kept)",
            "etcdctl user add hcb-jumpbox (health only; a random password, never kept)",
            ctl_line(params, "auth", "enable"),
            f"remove {ops_etcd.ROOT_DIR} (etcd's root certificate)"]


@covers("hcbpg.ops.etcd.ensure_etcd_auth", "fresh", "second run")
def test_auth_on_with_a_one_step_root_certificate_and_patronis_user(params):
    box = etcd_box(params)
    out = ops_etcd.ensure_etcd_auth(box.host, params, ETCD_PW)
    assert box.host.journal == auth_journal(params)
    assert out.changed and out.actions == ["root by certificate only; role and user patroni (read-write under "
                                           "/service/); a user per member (health); auth enabled"]
    assert box.auth and box.users["patroni"] == ETCD_PW
    assert box.user_roles == {"root": {"root"}, "patroni": {"patroni"}}
    assert box.roles["patroni"] == [("readwrite", "/service/", True)]
    assert set(box.users) == {"root", "patroni", NAME, "server-postgres-2", JUMPBOX}
    assert box.users["root"] not in (ETCD_PW, "") and box.users[NAME] != box.users[JUMPBOX]
    # the root certificate: CN=root, client only, one day; gone at the end
    assert not any(p.startswith(ops_etcd.ROOT_DIR) for p in box.files) and ops_etcd.ROOT_DIR not in box.dirs
    root = [t for p, t, *_ in box.host.written if p.endswith("root.crt")][0]
    cert = x509.load_pem_x509_certificate(root.encode())
    assert cert.subject.rfc4514_string() == "CN=root" and ekus(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=1)
    # the password went on stdin only, never on a line, in a display or in the outcome; the auth probe sent a
    # random password, never Patroni's
    assert stdin_of(box.host, "'user' 'add' 'patroni'") == [] and ETCD_PW + "\n" in stdin_of(box.host, "patroni")
    probes = [json.loads(c.stdin or "{}") for c in box.host.calls if "auth/authenticate" in c.command]
    assert [p["name"] for p in probes] == ["hcbpg-probe"] and probes[0]["password"] != ETCD_PW
    no_secret(ETCD_PW, box.host, [out])
    # second run: on, and Patroni's user signs in: nothing at all
    box.host.journal.clear()
    again = ops_etcd.ensure_etcd_auth(box.host, params, ETCD_PW)
    assert not again.changed and box.host.journal == [] and "Patroni's user authenticates" in again.what


@covers("hcbpg.ops.etcd.ensure_etcd_auth", "second run")
def test_a_password_that_no_longer_signs_in_is_set_again_as_root(params):
    box = etcd_box(params)
    ops_etcd.ensure_etcd_auth(box.host, params, "the-old-Etcd-pw")
    box.host.journal.clear()
    out = ops_etcd.ensure_etcd_auth(box.host, params, ETCD_PW)
    assert box.host.journal == auth_journal(params)[:3] + [
        "etcdctl user passwd patroni (the password on stdin)", f"remove {ops_etcd.ROOT_DIR} (etcd's root certificate)"]
    assert out.actions == ["Patroni's etcd password set again (it no longer authenticated)"]
    assert box.users["patroni"] == ETCD_PW and not any(p.startswith(ops_etcd.ROOT_DIR) for p in box.files)
    no_secret(ETCD_PW, box.host, [out])
    no_secret("the-old-Etcd-pw", box.host, [out])


@covers("hcbpg.ops.etcd.ensure_etcd_auth", "dry run")
def test_auth_planned_as_one_change_and_nothing_done(params):
    box = etcd_box(params)
    dry, echoed = dry_over(box)
    out = ops_etcd.ensure_etcd_auth(dry, params, ETCD_PW)
    # a plan skips the two list reads (its root certificate was never written, so etcd could not answer them)
    want = [j for j in auth_journal(params) if not j.endswith(" list")]
    assert dry.journal == want and out.verb == "would change"
    assert not box.auth and box.users == {} and box.host.journal == [] and box.host.written == []
    no_secret(ETCD_PW, dry, [out], *echoed)
    # before etcd runs at all, a plan still lists everything
    down = Box(params, installed=["etcd-server"])
    ops_etcd.ensure_etcd_member(down.host, params, NAME)
    dry, _ = dry_over(down)
    assert ops_etcd.ensure_etcd_auth(dry, params, ETCD_PW).verb == "would change" and dry.journal == want


@covers("hcbpg.ops.etcd.ensure_etcd_auth", "refusal")
def test_auth_refused_when_etcd_does_not_answer_or_says_something_else(params):
    down = Box(params, installed=["etcd-server"])
    ops_etcd.ensure_etcd_member(down.host, params, NAME)
    down.host.journal.clear()
    with pytest.raises(EtcdError, match="does not answer"):
        ops_etcd.ensure_etcd_auth(down.host, params, ETCD_PW)
    assert down.host.journal == []
    odd = etcd_box(params)
    odd.gateway = "404 page not found\n"        # etcd 3.4 reading a config file without enable-grpc-gateway
    with pytest.raises(EtcdError, match="cannot tell whether authentication is on"):
        ops_etcd.ensure_etcd_auth(odd.host, params, ETCD_PW)
    assert odd.host.journal == [] and odd.users == {}


@covers("hcbpg.ops.etcd.ensure_etcd_auth", "refusal")
def test_a_failed_etcdctl_step_is_an_etcd_error_and_the_root_certificate_is_removed(params):
    box = etcd_box(params)
    box.etcd_fails[("role", "add")] = "etcdserver: too many requests"
    with pytest.raises(EtcdError, match=r"etcdctl role add patroni on server-postgres-1:(.|\n)*too many requests"):
        ops_etcd.ensure_etcd_auth(box.host, params, ETCD_PW)
    assert not box.auth and "patroni" not in box.users
    assert box.host.journal[-1] == f"remove {ops_etcd.ROOT_DIR} (etcd's root certificate)"
    assert not any(p.startswith(ops_etcd.ROOT_DIR) for p in box.files)
    # the next run picks up where it stopped: root is there, so it is not added twice
    box.etcd_fails.clear()
    box.host.journal.clear()
    assert ops_etcd.ensure_etcd_auth(box.host, params, ETCD_PW).changed and box.auth
    assert "etcdctl user add root (a random password on stdin, never kept)" not in box.host.journal


# Patroni: its files ------------------------------------------------------------------------------------------

def patroni_box(params: Params, **kw: Any) -> Box:
    box = Box(params, installed=["patroni", "curl"], **kw)
    box.dirs.add("/etc/patroni")       # the package's
    return box


#: pg_wrapper's fallback for the data directory while Patroni rewrites postgresql.conf (ops.patroni)
PGDATA_LINK = "/etc/postgresql/15/main/pgdata"


def patroni_journal(params: Params) -> list[str]:
    ca = desired_tls.client_ca_path(params)
    return ["directory /etc/hcbpg/tls (mode 0755, owner root:root)", f"write {ca}",
            "directory /etc/patroni/tls (mode 0750, owner postgres:postgres)", f"write {dp.REST_KEY}",
            f"write {dp.REST_CERT}", f"write {dp.ETCD_CLIENT_KEY}", f"write {dp.ETCD_CLIENT_CERT}",
            "directory /etc/patroni/15-main.d (mode 0755, owner root:root)", f"write {dp.config_path(params)}",
            f"write {dp.secrets_path(params)}", f"write {dp.rest_netrc_path(params)}", f"write {START_CONF}",
            f"link {PGDATA_LINK} -> /var/lib/postgresql/15/main"]


@covers("hcbpg.ops.patroni.ensure_patroni_files", "fresh", "second run")
def test_patroni_files_config_diffed_secrets_never_shown(params):
    box = patroni_box(params)
    out = ops_patroni.ensure_patroni_files(box.host, params, params.primary, SECRETS, shape=CCX13)
    assert box.host.journal == patroni_journal(params)
    assert [o.changed for o in out] == [True] * 8
    assert box.links == {PGDATA_LINK: "/var/lib/postgresql/15/main"}
    cfg, sec, netrc = dp.config_path(params), dp.secrets_path(params), dp.rest_netrc_path(params)
    assert box.files[cfg] == dp.render_patroni_yaml(params, params.primary, shape=CCX13)
    assert box.files[sec] == dp.render_patroni_secrets(params, SECRETS)
    assert box.files[netrc] == dp.render_rest_netrc(params, params.primary, REST_PW)
    assert box.files[START_CONF] == "manual\n"
    modes = {p: (m, o, g) for p, _, m, o, g in box.host.written}
    assert modes[cfg] == modes[sec] == (0o600, "postgres", "postgres") and modes[netrc] == (0o600, "root", "root")
    assert modes[dp.ETCD_CLIENT_KEY] == (0o600, "postgres", "postgres")
    # the etcd client certificate has no subject at all and is for client authentication only
    client = cert_of(box, dp.ETCD_CLIENT_CERT)
    assert client.subject.rfc4514_string() == "" and ekus(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    check_pair(box, dp.ETCD_CLIENT_CERT, dp.ETCD_CLIENT_KEY)
    assert cert_of(box, dp.REST_CERT).subject.rfc4514_string() == f"CN={NAME}"
    whats = [o.what for o in out]
    assert whats[2] == f"Patroni's etcd client certificate on {NAME}" and len(whats) == len(set(whats))
    by_what = {o.what: o for o in out}
    assert "+scope: hcb-lab" in by_what[f"patroni.yml on {NAME}"].diff
    for what in (f"Patroni's secrets.yml on {NAME}", f"REST netrc on {NAME}"):
        assert by_what[what].diff == "" and by_what[what].actions[0].endswith("(a secret: no diff shown)")
    for pw in (REST_PW, ETCD_PW, REPL_PW):
        no_secret(pw, box.host, out)
        assert pw not in box.files[cfg]
    again = ops_patroni.ensure_patroni_files(box.host, params, params.primary, SECRETS, shape=CCX13)
    assert not any(o.changed for o in again) and len(box.host.journal) == 13
    # a new REST password: only the two secret files change, neither shown
    new = dp.PatroniSecrets(rest_password="N3w-rest-Planted", etcd_password=ETCD_PW, replication_password=REPL_PW)
    third = ops_patroni.ensure_patroni_files(box.host, params, params.primary, new, shape=CCX13)
    assert box.host.journal[13:] == [f"write {sec}", f"write {netrc}"]
    no_secret("N3w-rest-Planted", box.host, third)


@covers("hcbpg.ops.patroni.ensure_patroni_files", "dry run")
def test_patroni_files_planned_with_or_without_the_secrets(params):
    tls.ensure_client_ca(Box(params, "elsewhere").host, params)    # step 03 made the CA long before
    box = patroni_box(params)
    dry, echoed = dry_over(box)
    out = ops_patroni.ensure_patroni_files(dry, params, params.primary, SECRETS, shape=CCX13)
    # a plan asks the server whether a directory exists, so one it would make is listed by each file in it
    assert once(dry.journal) == patroni_journal(params) and all(o.verb == "would change" for o in out)
    assert box.host.journal == [] and box.host.written == [] and box.files[START_CONF] == "auto\n"
    for pw in (REST_PW, ETCD_PW, REPL_PW):
        no_secret(pw, dry, out, *echoed)
    # the secrets unknown (None): the secret files are planned too, with nothing in them to show
    dry, _ = dry_over(box)
    blind = ops_patroni.ensure_patroni_files(dry, params, params.primary, None, shape=CCX13)
    assert once(dry.journal) == patroni_journal(params) and all(o.changed for o in blind)
    assert dp.SECRET_PLACEHOLDER in dry.files[dp.secrets_path(params)]


@covers("hcbpg.ops.patroni.ensure_patroni_files", "refusal")
def test_patroni_files_refused_for_a_password_a_file_cannot_carry_before_any_write(params):
    box = patroni_box(params)
    bad = dp.PatroniSecrets(rest_password="line\nbreak", etcd_password=ETCD_PW, replication_password=REPL_PW)
    with pytest.raises(HcbpgError, match="rest_password holds a control character"):
        ops_patroni.ensure_patroni_files(box.host, params, params.primary, bad, shape=CCX13)
    nul = dp.PatroniSecrets(rest_password=REST_PW, etcd_password="nul\x00pw", replication_password=REPL_PW)
    with pytest.raises(HcbpgError, match="NUL character"):
        ops_patroni.ensure_patroni_files(box.host, params, params.primary, nul, shape=CCX13)
    assert box.host.journal == [] and box.host.written == [], "nothing was written, as the message says"
    refused = patroni_box(params, refuse=["/etc/patroni/15-main.d"])
    with pytest.raises(RemoteCommandError, match="symbolic link"):
        ops_patroni.ensure_patroni_files(refused.host, params, params.primary, SECRETS, shape=CCX13)
    assert dp.config_path(params) not in refused.files and dp.secrets_path(params) not in refused.files


# Patroni: its dynamic configuration and maintenance mode --------------------------------------------------------

def api_box(params: Params, dcs: dict[str, Any] | None) -> Box:
    """A member whose Patroni answers with *dcs* as its dynamic configuration (None: it does not answer), after
    its files (the netrc hcbpg's curl reads)."""
    box = patroni_box(params)
    ops_patroni.ensure_patroni_files(box.host, params, params.primary, SECRETS, shape=CCX13)
    box.host.journal.clear()
    box.host.calls.clear()
    box.host.written.clear()
    box.dcs = json.loads(json.dumps(dcs)) if dcs is not None else None
    return box


def patch_calls(box: Box) -> list[Call]:
    return [c for c in box.host.calls if c.kind == "run" and "-X" in c.command]


@covers("hcbpg.ops.patroni.ensure_dcs_config", "fresh", "second run")
def test_dcs_config_patched_with_what_differs_then_left_alone(params):
    box = api_box(params, ADOPTED_DCS)
    out = ops_patroni.ensure_dcs_config(box.host, params, params.primary, CCX13)
    patch = dp.render_dcs_patch(ADOPTED_DCS, params, CCX13)
    assert patch["ttl"] == 12 and patch["postgresql"]["parameters"]["max_connections"] != 100
    assert "maximum_lag_on_failover" not in patch                    # already what params say
    assert box.host.journal == [f"PATCH /config on {NAME}: {json.dumps(patch, sort_keys=True)}"]
    (call,) = patch_calls(box)
    words = shlex.split(call.command)
    assert words[words.index("-X") + 1] == "PATCH" and words[-1] == "https://10.0.1.5:8008/config"
    assert words[words.index("--netrc-file") + 1] == dp.rest_netrc_path(params) and "-d" in words
    assert words[words.index("--cert") + 1] == dp.REST_CERT and json.loads(call.stdin or "") == patch
    assert out.changed and json.loads(out.diff) == patch
    assert box.dcs == {**ADOPTED_DCS, **dp.dcs_config(params, CCX13),
                       "postgresql": {**dp.dcs_config(params, CCX13)["postgresql"]}}
    no_secret(REST_PW, box.host, [out])
    again = ops_patroni.ensure_dcs_config(box.host, params, params.primary, CCX13)
    assert not again.changed and again.diff == "" and len(box.host.journal) == 1


@covers("hcbpg.ops.patroni.ensure_dcs_config", "dry run")
def test_dcs_config_planned_from_what_patroni_says_or_whole_before_it_runs(params):
    box = api_box(params, ADOPTED_DCS)
    dry, _ = dry_over(box)
    out = ops_patroni.ensure_dcs_config(dry, params, params.primary, CCX13)
    patch = dp.render_dcs_patch(ADOPTED_DCS, params, CCX13)
    assert dry.journal == [f"PATCH /config on {NAME}: {json.dumps(patch, sort_keys=True)}"]
    assert out.verb == "would change" and json.loads(out.diff) == patch and box.dcs == ADOPTED_DCS
    assert box.host.journal == []
    down = api_box(params, None)
    dry, _ = dry_over(down)
    whole = ops_patroni.ensure_dcs_config(dry, params, params.primary, CCX13)
    assert json.loads(whole.diff) == dp.dcs_config(params, CCX13) and whole.dry_run


@covers("hcbpg.ops.patroni.ensure_dcs_config", "refusal")
def test_dcs_config_refused_by_patroni_or_with_patroni_down_changes_nothing(params):
    down = api_box(params, None)
    with pytest.raises(PatroniError, match="GET /config answered nothing") as exc:
        ops_patroni.ensure_dcs_config(down.host, params, params.primary, CCX13)
    assert exc.value.hint and "Is Patroni running on server-postgres-1" in exc.value.hint
    assert down.host.journal == []
    box = api_box(params, ADOPTED_DCS)
    box.patch_status = 409
    with pytest.raises(PatroniError, match="PATCH /config answered 409"):
        ops_patroni.ensure_dcs_config(box.host, params, params.primary, CCX13)
    assert box.dcs == ADOPTED_DCS
    # no netrc (its files not written): Patroni answers 401, and hcbpg says so
    bare = patroni_box(params)
    bare.dcs = json.loads(json.dumps(ADOPTED_DCS))
    with pytest.raises(PatroniError, match="PATCH /config answered 401"):
        ops_patroni.ensure_dcs_config(bare.host, params, params.primary, CCX13)
    assert bare.dcs == ADOPTED_DCS


@covers("hcbpg.ops.patroni.ensure_paused", "fresh", "second run")
def test_pause_then_resume_each_once(params):
    box = api_box(params, ADOPTED_DCS)
    out = ops_patroni.ensure_paused(box.host, params, params.primary, True)
    assert box.host.journal == [f"PATCH /config pause=true on {NAME}"] and (box.dcs or {})["pause"] is True
    assert out.changed and "automatic failover off" in out.what
    assert json.loads(patch_calls(box)[0].stdin or "") == {"pause": True}
    assert not ops_patroni.ensure_paused(box.host, params, params.primary, True).changed
    assert len(box.host.journal) == 1
    back = ops_patroni.ensure_paused(box.host, params, params.primary, False)
    assert box.host.journal[1:] == [f"PATCH /config pause=null on {NAME}"] and back.changed
    assert "pause" not in (box.dcs or {}) and json.loads(patch_calls(box)[1].stdin or "") == {"pause": None}
    assert not ops_patroni.ensure_paused(box.host, params, params.primary, False).changed
    no_secret(REST_PW, box.host, [out, back])


@covers("hcbpg.ops.patroni.ensure_paused", "dry run")
def test_pause_and_resume_planned_from_what_patroni_says(params):
    box = api_box(params, ADOPTED_DCS)
    dry, _ = dry_over(box)
    assert ops_patroni.ensure_paused(dry, params, params.primary, True).verb == "would change"
    assert dry.journal == [f"PATCH /config pause=true on {NAME}"] and "pause" not in (box.dcs or {})
    paused = api_box(params, {**ADOPTED_DCS, "pause": True})
    dry, _ = dry_over(paused)
    assert ops_patroni.ensure_paused(dry, params, params.primary, False).verb == "would change"
    assert dry.journal == [f"PATCH /config pause=null on {NAME}"] and (paused.dcs or {})["pause"] is True
    dry, _ = dry_over(paused)
    assert ops_patroni.ensure_paused(dry, params, params.primary, True).verb == "unchanged" and dry.journal == []
    assert box.host.journal == [] and paused.host.journal == []


@covers("hcbpg.ops.patroni.ensure_paused", "refusal")
def test_pause_refused_by_patroni_or_without_it_changes_nothing(params):
    down = api_box(params, None)
    with pytest.raises(PatroniError, match="GET /config answered nothing"):
        ops_patroni.ensure_paused(down.host, params, params.primary, True)
    assert down.host.journal == []
    box = api_box(params, ADOPTED_DCS)
    box.patch_status = 503
    with pytest.raises(PatroniError, match="PATCH /config answered 503"):
        ops_patroni.ensure_paused(box.host, params, params.primary, True)
    assert "pause" not in (box.dcs or {})
