"""Lab configuration, on-disk layout, the state file and its lock, and the small process
and network helpers every other lab module is built from.

Nothing here starts a host; :mod:`hcbpg.lab.hosts` does that.  Everything the lab makes
is named from one :class:`LabConfig`, so teardown can find it again by name even when
the state file was never written (a ``lab up`` killed halfway).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hcbpg.errors import LabError

DEFAULT_LAB_DIR = "/var/lib/hcbpg-lab"
ENV_LAB_DIR = "HCBPG_LAB_DIR"
ENV_BRIDGE = "HCBPG_LAB_BRIDGE"
ENV_SUBNET = "HCBPG_LAB_SUBNET"
ENV_OUTSIDER_SUBNET = "HCBPG_LAB_OUTSIDER_SUBNET"

DEFAULT_BRIDGE = "hcbpg0"
DEFAULT_SUBNET = "10.0.1.0/24"
DEFAULT_OUTSIDER_SUBNET = "10.0.2.0/24"

S3_PORT = 9443
HCLOUD_PORT = 8780
DEADMAN_PORT = 8781
S3_BUCKET = "hcb-production-postgres"
#: the second S3 store ("another provider": pgbackrest.repo2): another moto at another address of the bridge,
#: with its own bucket and keys
S3B_PORT = 9444
S3B_BUCKET = "hcb-production-postgres-2"
S3B_OFFSET = 250

#: host offsets inside the lab subnet (10.0.1.<offset> by default)
APP_OFFSET, SOURCE_OFFSET, JUMPBOX_OFFSET = 10, 20, 40

#: secrets files under ``secrets/`` and their variable names in ``secrets.env``
SECRET_FILES = {
    "hcloud-token": "HCLOUD_TOKEN",
    "rails-password": "RAILS_PASSWORD",
    "repuser-password": "REPUSER_PASSWORD",
    "s3-key": "S3_KEY",
    "s3-key-secret": "S3_KEY_SECRET",
    "s3b-key": "S3B_KEY",
    "s3b-key-secret": "S3B_KEY_SECRET",
    "cipher-pass-2": "CIPHER_PASS_2",
    "cipher-pass": "CIPHER_PASS",
    "source-password": "SOURCE_PASSWORD",
    "source-url": "SOURCE_URL",
    "patroni-rest-password": "PATRONI_REST_PASSWORD",
    "etcd-patroni-password": "ETCD_PATRONI_PASSWORD",
}

_BRIDGE_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_HOST_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$")


def check_platform() -> None:
    """Raise LabError unless this is Linux, we are root and ``ip netns`` works."""
    if not sys.platform.startswith("linux"):
        raise LabError(f"the lab needs Linux network namespaces; this is {sys.platform}",
                       hint="Run `hcbpg lab` on a Linux machine (Debian 12 is what CI uses).")
    if os.geteuid() != 0:
        raise LabError("the lab needs root: it creates network namespaces, a bridge and mounts",
                       hint="Run it again as root, e.g. `sudo hcbpg lab up`.")
    for tool in ("ip", "unshare", "nsenter", "chroot", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"the lab needs `{tool}`, which is not on PATH",
                           hint="Install: apt-get install iproute2 util-linux coreutils openssh-client")


#: the Python packages of the lab's stand-ins (the ``hcbpg[lab]`` extra), by import name
LAB_PACKAGES = ("moto", "cheroot")


def check_lab_packages() -> None:
    """Raise LabError naming what to install unless the lab's stand-ins can be served: the S3 store is
    moto's app and the Hetzner Cloud API stand-in runs on cheroot (the ``hcbpg[lab]`` extra, which an
    operator's ``pip install hcbpg`` does not pull)."""
    import importlib.util  # noqa: PLC0415 - only when the lab is brought up

    missing = [name for name in LAB_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise LabError(f"the lab needs the Python package{'s' if len(missing) > 1 else ''} "
                       f"{' and '.join(missing)} (its S3 store and Hetzner Cloud API stand-in), not installed "
                       f"in {sys.prefix}",
                       hint="Install the lab's extra: pip install 'hcbpg[lab]' (from a clone: "
                            "pip install -e '.[lab]'; scripts/install.sh does it).")


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run here (for test skips), or None when it can."""
    try:
        check_platform()
        check_lab_packages()
    except LabError as exc:
        return exc.message + (f" ({exc.hint})" if exc.hint else "")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.strip()}"
    return None


@dataclass(frozen=True)
class LabConfig:
    """Where the lab lives and how its network is named and numbered."""

    lab_dir: Path
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    outsider_subnet: str = DEFAULT_OUTSIDER_SUBNET

    @classmethod
    def load(cls, lab_dir: str | os.PathLike[str] | None = None) -> "LabConfig":
        """The config of the lab in *lab_dir* (or ``$HCBPG_LAB_DIR``, or the default dir).

        A lab that was brought up keeps its bridge and subnets in ``lab.json``; the
        environment variables only choose them for a lab that does not exist yet.
        """
        d = Path(lab_dir or os.environ.get(ENV_LAB_DIR) or DEFAULT_LAB_DIR).absolute()
        saved = d / "lab.json"
        if saved.is_file():
            try:
                data = json.loads(saved.read_text())
                return cls(lab_dir=d, bridge=data["bridge"], subnet=data["subnet"],
                           outsider_subnet=data["outsider_subnet"])
            except (ValueError, KeyError) as exc:
                raise LabError(f"{saved} is damaged: {exc}",
                               hint="Run `hcbpg lab down` then `hcbpg lab up`.") from exc
        cfg = cls(lab_dir=d,
                  bridge=os.environ.get(ENV_BRIDGE) or DEFAULT_BRIDGE,
                  subnet=os.environ.get(ENV_SUBNET) or DEFAULT_SUBNET,
                  outsider_subnet=os.environ.get(ENV_OUTSIDER_SUBNET) or DEFAULT_OUTSIDER_SUBNET)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not _BRIDGE_RE.match(self.bridge):
            raise LabError(f"bridge name {self.bridge!r} is not usable: use 1-10 lowercase "
                           "letters/digits, starting with a letter (veth names derive from it)")
        try:
            sub = ipaddress.ip_network(self.subnet)
            out = ipaddress.ip_network(self.outsider_subnet)
        except ValueError as exc:
            raise LabError(f"lab subnet is not a network: {exc}") from exc
        if sub.prefixlen != 24 or out.prefixlen != 24 or sub.overlaps(out):
            raise LabError(f"lab subnets must be two distinct /24 networks; got {sub} and {out}")
        if not (sub.is_private and out.is_private):
            raise LabError("lab subnets must be private address ranges")

    def save(self) -> None:
        self.lab_dir.mkdir(parents=True, exist_ok=True)
        data = {k: str(v) for k, v in asdict(self).items() if k != "lab_dir"}
        atomic_write(self.lab_dir / "lab.json", json.dumps(data, indent=2) + "\n", 0o644)

    # addresses -----------------------------------------------------------------
    def address(self, offset: int) -> str:
        return str(ipaddress.ip_network(self.subnet)[offset])

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    @property
    def gateway_ip(self) -> str:
        """The bridge's address in the machine's namespace: the operator's 'laptop'."""
        return self.address(1)

    @property
    def router_ip(self) -> str:
        """The lab router on the private subnet, gateway to the outsider subnet."""
        return self.address(254)

    @property
    def outsider_gateway_ip(self) -> str:
        return str(ipaddress.ip_network(self.outsider_subnet)[1])

    @property
    def outsider_ip(self) -> str:
        return str(ipaddress.ip_network(self.outsider_subnet)[2])

    @property
    def source_ip(self) -> str:
        return self.address(SOURCE_OFFSET)

    @property
    def app_ip(self) -> str:
        return self.address(APP_OFFSET)

    @property
    def jumpbox_ip(self) -> str:
        """Where params/lab.yaml puts the jumpbox (jumpbox.private_ip = roles.metabase.jumpbox_ip): step 01 creates it
        through the API stand-in; `lab up` no longer makes a host there."""
        return self.address(JUMPBOX_OFFSET)

    @property
    def s3_endpoint(self) -> str:
        return f"https://{self.gateway_ip}:{S3_PORT}"

    @property
    def s3b_ip(self) -> str:
        """The second S3 store's address: a second address of the bridge (10.0.1.250 by default)."""
        return self.address(S3B_OFFSET)

    @property
    def s3b_endpoint(self) -> str:
        return f"https://{self.s3b_ip}:{S3B_PORT}"

    @property
    def hcloud_endpoint(self) -> str:
        return f"http://{self.gateway_ip}:{HCLOUD_PORT}/v1"

    # names ---------------------------------------------------------------------
    def netns(self, host: str) -> str:
        return f"{self.bridge}-{host}"

    @property
    def router_netns(self) -> str:
        return f"{self.bridge}_router"

    @property
    def outsider_netns(self) -> str:
        return f"{self.bridge}_outsider"

    def veth(self, ip: str) -> str:
        """Machine-side veth of the host at *ip* (15-char interface name limit)."""
        return f"{self.bridge}-{ip.rsplit('.', 1)[1]}"

    def all_netns_prefixes(self) -> tuple[str, ...]:
        return (f"{self.bridge}-", f"{self.bridge}_")

    # paths ---------------------------------------------------------------------
    @property
    def ssh_dir(self) -> Path:
        return self.lab_dir / "ssh"

    @property
    def ssh_key(self) -> Path:
        return self.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def secrets_dir(self) -> Path:
        return self.lab_dir / "secrets"

    @property
    def secrets_file(self) -> Path:
        return self.secrets_dir / "secrets.env"

    @property
    def tls_dir(self) -> Path:
        return self.lab_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def hosts_dir(self) -> Path:
        return self.lab_dir / "hosts"

    @property
    def logs_dir(self) -> Path:
        return self.lab_dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.lab_dir / "state.json"

    @property
    def hcloud_state(self) -> Path:
        return self.lab_dir / "hcloud.json"

    def secret_path(self, name: str) -> Path:
        return self.secrets_dir / name

    def read_secret(self, name: str) -> str:
        try:
            return self.secret_path(name).read_text().strip()
        except FileNotFoundError:
            raise LabError(f"lab secret {name} is missing ({self.secret_path(name)})",
                           hint="Run `hcbpg lab up` first.") from None


# files -----------------------------------------------------------------------------

def atomic_write(path: Path, text: str | bytes, mode: int = 0o600) -> None:
    """Write *path* whole with *mode*, never leaving a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode() if isinstance(text, str) else text
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# state and its lock ------------------------------------------------------------------

_thread_locks: dict[str, threading.RLock] = {}
_flock_fds: dict[str, tuple[int, int]] = {}
_guard = threading.Lock()


def flock_within(fd: int, timeout: float, interval: float = 0.05) -> bool:
    """Take an exclusive flock on *fd*, waiting up to *timeout* seconds; False when it stayed taken."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)


@contextlib.contextmanager
def locked(cfg: LabConfig, timeout: float = 600.0) -> Iterator[None]:
    """Hold the lab lock (re-entrant in this process, exclusive across processes)."""
    cfg.lab_dir.mkdir(parents=True, exist_ok=True)
    key = str(cfg.lab_dir)
    with _guard:
        rlock = _thread_locks.setdefault(key, threading.RLock())
    if not rlock.acquire(timeout=timeout):
        raise LabError(f"timed out waiting for the lab lock of {cfg.lab_dir}")
    try:
        fd, depth = _flock_fds.get(key, (-1, 0))
        if depth == 0:
            fd = os.open(cfg.lab_dir / "lab.lock", os.O_RDWR | os.O_CREAT, 0o600)
            if not flock_within(fd, timeout):
                os.close(fd)
                raise LabError(f"another process holds the lab lock of {cfg.lab_dir} "
                               f"for more than {timeout:.0f}s",
                               hint="Wait for the other `hcbpg lab` command to finish.")
        _flock_fds[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _flock_fds[key]
            if depth == 1:
                del _flock_fds[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            else:
                _flock_fds[key] = (fd, depth - 1)
    finally:
        rlock.release()


def read_state(cfg: LabConfig) -> dict[str, Any]:
    try:
        data = json.loads(cfg.state_file.read_text())
    except FileNotFoundError:
        data = {}
    except ValueError:
        data = {}  # a torn state file: teardown finds everything by name anyway
    data.setdefault("hosts", {})
    data.setdefault("services", {})
    return data


def write_state(cfg: LabConfig, state: dict[str, Any]) -> None:
    atomic_write(cfg.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o600)


@contextlib.contextmanager
def editing_state(cfg: LabConfig) -> Iterator[dict[str, Any]]:
    """Lock, read the state, let the caller change it, write it back."""
    with locked(cfg):
        state = read_state(cfg)
        yield state
        write_state(cfg, state)


# processes ---------------------------------------------------------------------------

def run(argv: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float | None = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a machine-side command; on failure raise LabError with its output tail."""
    try:
        cp = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from exc
    if check and cp.returncode != 0:
        tail = "\n".join((cp.stderr or cp.stdout).strip().splitlines()[-15:])
        raise LabError(f"command failed with exit code {cp.returncode}: {' '.join(argv)}\n{tail}")
    return cp


def proc_starttime(pid: int) -> int | None:
    """Start time of *pid* (clock ticks since boot), None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def pid_alive(pid: int | None, starttime: int | None = None) -> bool:
    if not pid:
        return False
    st = proc_starttime(pid)
    return st is not None and (starttime is None or st == starttime)


def netns_list() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    cp = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def kill_pids(pids: Sequence[int], deadline: float = 10.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + deadline
    while time.monotonic() < end and any(pid_alive(p) for p in pids):
        time.sleep(0.02)


def kill_netns_processes(ns: str, deadline: float = 15.0) -> None:
    """End every process inside network namespace *ns* (killing its launcher is not enough)."""
    end = time.monotonic() + deadline
    while True:
        pids = [p for p in netns_pids(ns) if p != os.getpid()]
        if not pids:
            return
        if time.monotonic() > end:
            raise LabError(f"processes {pids} in namespace {ns} survive SIGKILL",
                           hint="They may be stuck in the kernel (D state); retry `hcbpg lab down`.")
        kill_pids(pids, deadline=2.0)


def processes_with_args(marker: Sequence[str]) -> list[int]:
    """PIDs whose command line contains the consecutive arguments *marker*."""
    found = []
    n = len(marker)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in raw]
        if any(args[i:i + n] == list(marker) for i in range(len(args) - n + 1)):
            found.append(int(entry.name))
    return found


def wait_tcp(ip: str, port: int, timeout: float, what: str) -> None:
    """Wait until something accepts TCP connections at ip:port."""
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > end:
                raise LabError(f"{what} does not answer at {ip}:{port} after {timeout:.0f}s: {exc}") from exc
            time.sleep(0.05)


def tcp_open(ip: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def scratch_config(prefix: str = "hcbpg-lab-scratch-") -> LabConfig:
    """A saved config for a throwaway lab beside any other: a fresh dir under /var/lib
    (not /tmp, which lab hosts do not share), bridge ``hcbt<N>``, subnets
    ``10.0.<N>.0/24`` and ``10.1.<N>.0/24`` with N unused on this machine."""
    # picking N and saving the config that claims it happen under one machine-wide lock, so
    # two processes making scratch labs at once (parallel test workers) never pick the same N
    fd = os.open("/var/lib/hcbpg-lab-scratch.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        text = "".join(run(cmd, check=False).stdout for cmd in
                       (["ip", "-o", "addr"], ["ip", "route"], ["ip", "-o", "link"]))
        used = {int(m) for m in re.findall(r"\b10\.[01]\.(\d+)\.", text)}
        for saved in Path("/var/lib").glob("hcbpg-lab*/lab.json"):  # labs made but not up yet
            used |= {int(m) for m in re.findall(r"\b10\.[01]\.(\d+)\.", saved.read_text(errors="replace"))}
        free = [n for n in range(100, 250) if n not in used and f"hcbt{n}:" not in text]
        if not free:
            raise LabError("no free 10.0.N.0/24 (N in 100..249) for a scratch lab")
        n = random.choice(free)
        d = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/lib"))
        cfg = LabConfig(lab_dir=d, bridge=f"hcbt{n}", subnet=f"10.0.{n}.0/24",
                        outsider_subnet=f"10.1.{n}.0/24")
        cfg.validate()
        # who made it: a scratch lab whose maker is gone can be swept (see Lab.sweep_scratch);
        # written before lab.json, so a sweep never sees a claimed lab without its owner
        owner = {"pid": os.getpid(), "starttime": proc_starttime(os.getpid())}
        atomic_write(d / "owner.json", json.dumps(owner) + "\n", 0o644)
        cfg.save()
    finally:
        os.close(fd)
    return cfg


SCRATCH_PREFIXES = ("hcbpg-lab-test-", "hcbpg-lab-bench-", "hcbpg-lab-killed-", "hcbpg-lab-scratch-")


def stale_scratch_dirs() -> list[Path]:
    """Scratch lab dirs under /var/lib whose maker process is gone (a killed test run)."""
    out = []
    for d in sorted(Path("/var/lib").glob("hcbpg-lab-*")):
        if not d.name.startswith(SCRATCH_PREFIXES) or not (d / "owner.json").is_file():
            continue
        try:
            owner = json.loads((d / "owner.json").read_text())
        except (OSError, ValueError):
            continue
        if not pid_alive(owner.get("pid"), owner.get("starttime")):
            out.append(d)
    return out


def check_host_name(name: str) -> None:
    if not _HOST_RE.match(name):
        raise LabError(f"host name {name!r} is not a valid hostname (lowercase letters, digits, '-')")
