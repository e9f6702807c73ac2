"""Lab hosts: one 'server' per network namespace, with its own hostname, address on the
lab bridge, overlay of / and sshd, so the runbook's commands run on it verbatim.

How a host is made (all names derive from :class:`~hcbpg.lab.core.LabConfig`):

* ``ip netns add <bridge>-<name>``; a veth pair joins the bridge and shows up inside
  as ``ens10`` (the interface name of a Hetzner private network) with the host's IP;
* a *holder* process runs ``unshare --mount --uts --ipc --pid`` inside that netns,
  mounts an overlay of / (upper layer ``hosts/<name>/upper``), fresh /proc, /sys,
  /dev/pts, tmpfs on /dev/shm, /run and /tmp, sets the hostname and ``chroot``s into
  the overlay; it stays as PID 1 of the host and reaps orphans.  Mounts live only in
  the host's mount namespace: the machine sees none of them;
* before mounting, the upper layer gets what a freshly installed server has:
  its own /etc/hostname, /etc/hosts, SSH host keys and root's authorized_keys; the
  machine's PostgreSQL clusters, pgBackRest repo/logs, SSH host keys and the lab dir
  (but its CA) are hidden by overlay whiteouts / opaque directories;
* commands enter with ``nsenter`` into the holder's namespaces and root.

Teardown ends processes by namespace (``ip netns pids``): killing a launcher does not
end what runs inside.  :func:`create_server_host` / :func:`destroy_server_host` are the
hooks the Hetzner Cloud API stand-in calls; they are safe from any process (the lab
lock serializes them).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hcbpg.adapters import hostkeys
from hcbpg.errors import LabError, RemoteCommandError
from hcbpg.lab.core import (
    LabConfig,
    check_host_name,
    kill_netns_processes,
    locked,
    netns_list,
    netns_pids,
    pid_alive,
    proc_starttime,
    read_state,
    run,
    tcp_open,
    wait_tcp,
    write_state,
)

HOST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root", "USER": "root", "LOGNAME": "root", "LANG": "C.UTF-8", "SHELL": "/bin/bash",
}
INTERFACE = "ens10"

# PID 1 of a host: mount the host's view of the filesystem, then chroot into it and reap.
_HOLDER = r"""
set -e
M=$1; U=$2; W=$3; N=$4; R=$5
mount -t overlay overlay -o "lowerdir=/,upperdir=$U,workdir=$W" "$M"
mount -t proc proc "$M/proc"
# kernel-wide knobs stay the machine's: /proc/sys and /sys are read-only, except the
# per-namespace network sysctls
mount --bind "$M/proc/sys" "$M/proc/sys" && mount -o remount,bind,ro "$M/proc/sys"
mount --bind "$M/proc/sys/net" "$M/proc/sys/net" && mount -o remount,bind,rw "$M/proc/sys/net"
mount --bind "$M/proc/sysrq-trigger" "$M/proc/sysrq-trigger" && mount -o remount,bind,ro "$M/proc/sysrq-trigger"
mount -t sysfs -o ro sysfs "$M/sys"
mount --bind /dev "$M/dev"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$M/dev/pts"
mount --bind "$M/dev/pts/ptmx" "$M/dev/ptmx"
mount -t tmpfs -o mode=1777 shm "$M/dev/shm"
mount -t tmpfs -o mode=755 run "$M/run"
mount -t tmpfs -o mode=1777 tmp "$M/tmp"
mkdir -p "$M/run/sshd" "$M/run/lock" && chmod 1777 "$M/run/lock"
hostname "$N"
: > "$R"
exec chroot "$M" /bin/sh -c 'trap "" HUP INT TERM; while :; do sleep 86400 & wait; done' hcbpg-lab-host "$U"
"""

#: a lab host's apt configuration (in /etc/apt/apt.conf.d): no retries of fetches that cannot succeed
APT_OFFLINE_CONF = "99hcbpg-lab-offline"
# machine paths a fresh server does not have (hidden by an empty opaque directory)
_FRESH_DIRS = ("etc/postgresql", "var/lib/postgresql", "var/log/postgresql",
               "var/lib/pgbackrest", "var/log/pgbackrest", "var/spool/pgbackrest",
               "root/.ssh")


# the host's upper layer -------------------------------------------------------------

def _mkdir_like(upper: Path, rel: str) -> Path:
    """Create upper/rel (and parents) with the owner and mode of /rel, so the merged view
    keeps the machine's permissions."""
    cur = upper
    lower = Path("/")
    for part in Path(rel).parts:
        cur, lower = cur / part, lower / part
        if not cur.exists():
            cur.mkdir()
            try:
                st = lower.stat()
                os.chown(cur, st.st_uid, st.st_gid)
                os.chmod(cur, stat.S_IMODE(st.st_mode))
            except FileNotFoundError:
                os.chmod(cur, 0o755)
    return cur


def _whiteout(upper: Path, rel: str) -> None:
    """Hide /rel in the merged view (an overlayfs whiteout: a 0/0 character device)."""
    parent = _mkdir_like(upper, str(Path(rel).parent))
    target = parent / Path(rel).name
    if not target.exists() and not target.is_symlink():
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0))


def _opaque(upper: Path, rel: str) -> Path:
    """Make /rel an empty directory in the merged view (opaque over the machine's)."""
    d = _mkdir_like(upper, rel)
    os.setxattr(d, "trusted.overlay.opaque", b"y")
    return d


def _put(path: Path, text: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
    path.write_text(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def prepare_upper(cfg: LabConfig, name: str, ip: str, upper: Path,
                  authorized_keys: Sequence[str], host_keys: Mapping[str, str] | None = None) -> None:
    """Lay the files of a freshly installed server into the host's upper layer."""
    etc = _mkdir_like(upper, "etc")
    _put(etc / "hostname", name + "\n")
    _put(etc / "hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n{ip}\t{name}\n"
         "::1\tlocalhost ip6-localhost ip6-loopback\n")
    _put(etc / "machine-id", os.urandom(16).hex() + "\n", 0o444)
    # the lab has no network: each `apt-get update` tries every source once and fails at once (no route), and apt's
    # retries of those fetches (backoff 1 + 2 + 4 s) only waited, 7.4 s an update; apt then installs from the
    # machine's lists and cached .debs as before (measured in a lab host: 7,366 ms -> 31 ms)
    _put(_mkdir_like(upper, "etc/apt/apt.conf.d") / APT_OFFLINE_CONF, 'Acquire::Retries "0";\n')
    # root's home is a fresh server's (base-files' dotfiles), not the machine's: sshd runs every command
    # through root's bash, which reads ~/.bashrc, and a developer's (pyenv init: 70 ms) ran before each one
    home = _opaque(upper, "root")
    for dot in ("bashrc", "profile"):
        skel = Path("/usr/share/base-files", f"dot.{dot}")
        if skel.is_file():
            _put(home / f".{dot}", skel.read_text())
    # the machine's clusters, repos and keys are not on a fresh server
    for rel in _FRESH_DIRS:
        if Path("/", rel).is_dir() or rel == "root/.ssh":
            _opaque(upper, rel)
    if Path("/etc/postgresql").is_dir():
        for ver in os.listdir("/etc/postgresql"):
            if ver.isdigit():
                _mkdir_like(upper, f"etc/postgresql/{ver}")
    if Path("/var/lib/postgresql").is_dir():
        for ver in os.listdir("/var/lib/postgresql"):
            if ver.isdigit():
                d = upper / "var/lib/postgresql" / ver
                d.mkdir(exist_ok=True)
                st = Path("/var/lib/postgresql", ver).stat()
                os.chown(d, st.st_uid, st.st_gid)
                os.chmod(d, 0o755)
    ssh_etc = _mkdir_like(upper, "etc/ssh")
    for entry in os.listdir("/etc/ssh"):
        if entry.startswith("ssh_host_"):
            _whiteout(upper, f"etc/ssh/{entry}")  # replaced below (ed25519, ecdsa) or hidden
    if host_keys:
        # what cloud-init does with user_data ``ssh_keys:`` (and ``ssh_genkeytypes: []``): those keys
        # become the host keys, and no other type is generated
        for kind in ("ed25519", "ecdsa", "rsa"):
            private, public = host_keys.get(f"{kind}_private"), host_keys.get(f"{kind}_public")
            if not private or not public:
                continue
            key = ssh_etc / f"ssh_host_{kind}_key"
            for p in (key, key.with_name(key.name + ".pub")):
                if p.exists() or p.is_symlink():
                    p.unlink()
            _put(key, private.rstrip("\n") + "\n", 0o600)
            _put(key.with_name(key.name + ".pub"), public.strip() + "\n", 0o644)
    else:
        for kind in ("ed25519", "ecdsa"):
            key = ssh_etc / f"ssh_host_{kind}_key"
            for p in (key, key.with_name(key.name + ".pub")):
                if p.exists() or p.is_symlink():
                    p.unlink()
            run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"root@{name}", "-f", str(key)])
    root_ssh = upper / "root/.ssh"
    os.chmod(root_ssh, 0o700)
    _put(root_ssh / "authorized_keys", "".join(k.strip() + "\n" for k in authorized_keys), 0o600)
    # the lab dir (secrets, other hosts' layers) is not on a server; its CA is.  Other
    # labs' dirs beside it (tests, benchmarks) are hidden too.
    lab_rel = str(cfg.lab_dir).lstrip("/")
    _opaque(upper, lab_rel)
    parent = cfg.lab_dir.parent
    for sibling in parent.glob("hcbpg-lab*"):
        if sibling != cfg.lab_dir:
            _whiteout(upper, str(sibling).lstrip("/"))
    if cfg.ca_cert.is_file():
        tls = upper / lab_rel / "tls"
        tls.mkdir(exist_ok=True)
        shutil.copyfile(cfg.ca_cert, tls / "ca.crt")
        os.chmod(tls / "ca.crt", 0o644)


# packages a host does not have yet, as on a fresh server -------------------------------------

#: sysvinit's answer at runlevel 2: invoke-rc.d starts an init script only in a known runlevel (the lab has no init)
_RUNLEVEL = ("#!/bin/sh\n# hcbpg lab host installed like a real server: the runlevel a booted sysvinit server is in,\n"
             "# so a package's postinst starts its service through invoke-rc.d as systemd would on Ubuntu\n"
             "echo 'N 2'\n")
#: the machine's policy-rc.d denies every start (a container's); a real server lets PostgreSQL's postinst start it
_POLICY_RC_D = ("#!/bin/sh\n# hcbpg lab host installed like a real server: PostgreSQL's init script may start its\n"
                "# clusters (as on a real server); anything else keeps the machine's policy (no start)\n"
                'case "$1" in postgresql) exit 0 ;; esac\nexit 101\n')
APT_ARCHIVES = Path("/var/cache/apt/archives")


def _dpkg_stanzas(text: str) -> list[str]:
    return [st for st in re.split(r"\n\n+", text.strip("\n")) if st.strip()]


def cached_deb(package: str, status: str | None = None) -> Path:
    """The machine's cached ``.deb`` of *package* at the version dpkg has installed (what ``apt-get install`` on a
    lab host uses: the host has no network); LabError naming how to put it there when missing."""
    text = status if status is not None else Path("/var/lib/dpkg/status").read_text()
    for st in _dpkg_stanzas(text):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", st, flags=re.M))
        if fields.get("Package") == package and fields.get("Status") == "install ok installed":
            deb = APT_ARCHIVES / f"{package}_{fields['Version'].replace(':', '%3a')}_{fields['Architecture']}.deb"
            if not deb.is_file():
                raise LabError(f"the lab cannot install {package} like a real server: {deb} is missing",
                               hint=f"As root on this machine: apt-get install --download-only --reinstall -y "
                                    f"{package} (apt keeps the .deb there).")
            return deb
    raise LabError(f"{package} is not installed on this machine: lab hosts see the machine's packages",
                   hint="scripts/install.sh installs what the lab needs.")


def _fields(stanza: str) -> dict[str, str]:
    out: dict[str, str] = {}
    key = ""
    for line in stanza.split("\n"):
        if line[:1] in (" ", "\t") and key:
            out[key] += " " + line.strip()
            continue
        key, _, value = line.partition(": ")
        out[key] = value
    return out


def _names(relation: str) -> list[list[str]]:
    """A Depends-style field as alternatives of package names (versions and architectures dropped)."""
    return [[re.split(r"[\s(:]", o.strip())[0] for o in alt.split("|") if o.strip()]
            for alt in relation.split(",") if alt.strip()]


def broken_by(status: str, packages: Sequence[str]) -> set[str]:
    """*packages* and every installed package whose dependencies they alone satisfy (directly, through what they
    provide, or through another package of the set), as dpkg's status *status* says: what a fresh server without
    *packages* would not have either (postgresql-15 takes postgresql, postgresql-contrib and plperl with it)."""
    installed = [f for f in map(_fields, _dpkg_stanzas(status)) if f.get("Status") == "install ok installed"]

    def providers(without: set[str]) -> set[str]:
        return {name for f in installed if f["Package"] not in without
                for name in [f["Package"], *[alts[0] for alts in _names(f.get("Provides", ""))]]}

    before = providers(set())
    gone = set(packages)
    while True:
        now = providers(gone)
        # broken: a dependency satisfied before and not now (one unsatisfied already is not this removal's doing)
        more = {f["Package"] for f in installed if f["Package"] not in gone and any(
            any(o in before for o in alts) and not any(o in now for o in alts)
            for alts in _names(f.get("Depends", "") + "," + f.get("Pre-Depends", "")))}
        if not more:
            return gone
        gone |= more


def unpackage_upper(upper: Path, packages: Sequence[str]) -> None:
    """Make *packages* not installed on the host whose upper layer is *upper*, as on a fresh server: dpkg's status
    there lists them (and what needs them: :func:`broken_by`) no more, so ``apt-get install`` (offline: the
    machine's package lists and cached ``.deb``, :func:`cached_deb`) unpacks them and runs their maintainer
    scripts for real, as on a real server: the postinst of postgresql-15 creates and starts ``15/main`` as
    createcluster.conf says.  The host also gets a runlevel and a policy-rc.d that let PostgreSQL's init script
    start it (the lab has no init: the machine's policy-rc.d denies every start).  The files stay visible
    through the overlay until dpkg writes its own."""
    status = Path("/var/lib/dpkg/status").read_text()
    for p in packages:
        cached_deb(p, status)
    # the packages that need them go too (apt refuses any install while a dependency is broken)
    gone = broken_by(status, packages)
    keep = [st for st in _dpkg_stanzas(status) if _fields(st).get("Package") not in gone]
    dpkg = _mkdir_like(upper, "var/lib/dpkg")
    st = Path("/var/lib/dpkg/status").stat()
    _put(dpkg / "status", "\n\n".join(keep) + "\n\n", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    sbin = _mkdir_like(upper, "usr/sbin")
    for name, text in (("runlevel", _RUNLEVEL), ("policy-rc.d", _POLICY_RC_D)):
        target = sbin / name
        if target.exists() or target.is_symlink():
            target.unlink()
        _put(target, text, 0o755)


# network ------------------------------------------------------------------------------

#: every lab's addresses: the default lab's 10.0.1.0/24 and its outsider 10.0.2.0/24, scratch labs' 10.0.N.0/24 and
#: 10.1.N.0/24 (see :func:`hcbpg.lab.core.scratch_config`)
LAB_SPACE = "10.0.0.0/15"


def _via(route: str) -> tuple[str, str] | None:
    """The gateway and device of one ``ip -o route`` line (None: no gateway, or not a route at all)."""
    gw, dev = re.search(r"\bvia (\S+)", route), re.search(r"\bdev (\S+)", route)
    return (gw.group(1), dev.group(1)) if gw and dev else None


def ensure_address_guard(space: str = LAB_SPACE) -> bool:
    """An ``unreachable`` route for the labs' address space where it would otherwise leave through the default
    gateway, so that a command aimed at a lab host that is not up (params/lab.yaml's addresses with no lab, a
    test of an unreachable server) fails at once with "No route to host" and no packet leaves the machine (on a
    CI machine something beyond the gateway accepted a connection to 10.0.1.5:8008).  A lab's bridge route (a /24)
    is more specific and wins over it.  Nothing is added where the space is routed some other way (a network of
    the machine's own: a VPN), nor without root.  It stays after ``lab down``: the space is the labs'.
    True when the guard is in place."""
    net = ipaddress.ip_network(space)
    if run(["ip", "-o", "route", "show", "exact", str(net)], check=False).stdout.startswith("unreachable"):
        return True
    default = run(["ip", "-o", "route", "show", "default"], check=False).stdout.splitlines()
    probe = run(["ip", "-o", "route", "get", str(net[-2])], check=False)  # an address no lab gives out
    gateway = _via(probe.stdout) if probe.returncode == 0 else None
    if gateway is None or not default or gateway != _via(default[0]):
        return False
    if os.geteuid() != 0:
        return False
    added = run(["ip", "route", "add", "unreachable", str(net)], check=False)
    return added.returncode == 0 or "File exists" in added.stderr


def ensure_bridge(cfg: LabConfig) -> None:
    """The lab bridge with the operator's address (idempotent)."""
    if run(["ip", "link", "show", cfg.bridge], check=False).returncode != 0:
        run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
    addr = f"{cfg.gateway_ip}/{cfg.prefixlen}"
    if addr not in run(["ip", "-o", "addr", "show", "dev", cfg.bridge]).stdout:
        run(["ip", "addr", "add", addr, "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])


def _attach(cfg: LabConfig, ns: str, ip: str, ifname: str = INTERFACE) -> None:
    veth = cfg.veth(ip)
    run(["ip", "link", "del", veth], check=False)
    # a MAC derived from the IP: a host made again at the same address is not hidden
    # behind stale ARP entries of the machine or of the other hosts
    mac = "02:00:" + ":".join(f"{int(o):02x}" for o in ip.split("."))
    run(["ip", "link", "add", veth, "type", "veth", "peer", "name", ifname, "address", mac,
         "netns", ns])
    run(["ip", "neigh", "flush", "to", ip, "dev", cfg.bridge], check=False)
    batch = (f"link set {veth} master {cfg.bridge}\nlink set {veth} up\n")
    run(["ip", "-batch", "-"], input=batch)
    nsbatch = (f"link set lo up\naddr add {ip}/{cfg.prefixlen} dev {ifname}\n"
               f"link set {ifname} up\n")
    run(["ip", "-n", ns, "-batch", "-"], input=nsbatch)


def ensure_outsider(cfg: LabConfig) -> None:
    """A router namespace on the lab subnet and an 'outsider' namespace behind it, on
    another subnet: traffic from the outsider reaches lab hosts from outside the subnet."""
    have = set(netns_list())
    if cfg.router_netns in have and cfg.outsider_netns in have:
        return
    for ns in (cfg.router_netns, cfg.outsider_netns):
        if ns in have:
            kill_netns_processes(ns)
            run(["ip", "netns", "del", ns], check=False)
        run(["ip", "netns", "add", ns])
    _attach(cfg, cfg.router_netns, cfg.router_ip, "eth0")
    r, o = cfg.router_netns, cfg.outsider_netns
    run(["ip", "-n", r, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", o])
    plen = cfg.outsider_subnet.split("/")[1]
    run(["ip", "-n", r, "-batch", "-"],
        input=f"addr add {cfg.outsider_gateway_ip}/{plen} dev eth1\nlink set eth1 up\n")
    run(["ip", "-n", o, "-batch", "-"],
        input=(f"link set lo up\naddr add {cfg.outsider_ip}/{plen} dev eth0\nlink set eth0 up\n"
               f"route add {cfg.subnet} via {cfg.outsider_gateway_ip}\n"))
    # forwarding is a per-namespace setting: the machine's own stays as it is
    run(["ip", "netns", "exec", r, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])


# lifecycle of one host ------------------------------------------------------------------

def _host_dir(cfg: LabConfig, name: str) -> Path:
    return cfg.hosts_dir / name


def host_alive(cfg: LabConfig, name: str, state: dict[str, Any] | None = None) -> bool:
    """True when the host's PID 1 runs and its namespace exists."""
    state = state if state is not None else read_state(cfg)
    h = state["hosts"].get(name)
    return bool(h) and pid_alive(h.get("pid"), h.get("starttime")) and h["netns"] in netns_list()


def _holder_pid(launcher: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
        except OSError:
            kids = []
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise LabError(f"host PID 1 did not appear under launcher {launcher}")


def _wait_for_chroot(pid: int, merged: Path, deadline: float) -> None:
    """Wait until the host's PID 1 has chrooted into its overlay.

    The ready marker is written just before ``exec chroot``: a command entered into the host
    (``nsenter -r``) before the chroot ran with the machine's own root, in the host's network.
    That is how an sshd once served a lab host's address with the machine's /root/.ssh (every key
    refused) and logged to the machine's /var/log."""
    want = str(merged)
    root = None
    while time.monotonic() < deadline:
        try:
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            root = None
        if root == want:
            return
        time.sleep(0.005)
    raise LabError(f"host PID 1 ({pid}) did not chroot into {want} (its root: {root})")


def create_host(cfg: LabConfig, name: str, role: str, ip: str,
                authorized_keys: Sequence[str], *, sshd: bool = True,
                host_keys: Mapping[str, str] | None = None, pin: bool = True,
                snapshot: Path | None = None, fresh_packages: Sequence[str] = ()) -> dict[str, Any]:
    """Bring up one lab host (idempotent: a live host with the same IP is kept).

    *host_keys* (cloud-init ``ssh_keys:`` names: ``ed25519_private``, ``ed25519_public``) become
    its sshd's host keys; without them it gets new ones.  *pin*: the lab pins the host's ed25519
    key in its known_hosts (its own hosts); a server created through the API is pinned by
    whoever created it, as on Hetzner.  *snapshot* (from :func:`snapshot_host`): the host starts
    with that upper layer (what an earlier host wrote: an installed cluster, its configuration),
    then gets its own hostname, machine id, host keys and authorized keys like any new host.
    *fresh_packages* (e.g. ``("postgresql-15",)``): the host does not have them installed yet and installs them
    like a real server, maintainer scripts included (:func:`unpackage_upper`).
    """
    check_host_name(name)
    addr = ipaddress.ip_address(ip)
    subnet = ipaddress.ip_network(cfg.subnet)
    if addr not in subnet or ip in (cfg.gateway_ip, cfg.router_ip) or addr in (
            subnet.network_address, subnet.broadcast_address):
        raise LabError(f"cannot give host {name} the address {ip}: use a free address inside "
                       f"{cfg.subnet} other than {cfg.gateway_ip} and {cfg.router_ip}")
    with locked(cfg):
        state = read_state(cfg)
        cur = state["hosts"].get(name)
        if cur and cur["ip"] == ip and host_alive(cfg, name, state) and (
                not sshd or tcp_open(ip, 22)):
            return _describe(cur)
        for other, h in state["hosts"].items():
            if other != name and h["ip"] == ip:
                raise LabError(f"address {ip} is already used by lab host {other}",
                               hint="Pick another private IP or delete that server first.")
        destroy_host(cfg, name)
        state = read_state(cfg)
        ns = cfg.netns(name)
        hdir = _host_dir(cfg, name)
        upper, work, merged = hdir / "upper", hdir / "work", hdir / "merged"
        for d in (upper, work, merged):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(hdir, 0o700)
        if snapshot is not None:
            _copy_layer(Path(snapshot), upper)
        record = {"name": name, "role": role, "ip": ip, "netns": ns, "pid": None,
                  "starttime": None, "dir": str(hdir), "created": time.time()}
        # recorded before anything exists, so a killed `up` is torn down by name anyway
        state["hosts"][name] = record
        write_state(cfg, state)
        prepare_upper(cfg, name, ip, upper, authorized_keys, host_keys)
        if fresh_packages:
            unpackage_upper(upper, fresh_packages)
        run(["ip", "netns", "add", ns])
        _attach(cfg, ns, ip)
        if cfg.router_netns in netns_list():
            run(["ip", "-n", ns, "route", "add", cfg.outsider_subnet, "via", cfg.router_ip])
        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        ready = hdir / "ready"
        ready.unlink(missing_ok=True)
        with open(cfg.logs_dir / f"host-{name}.log", "ab") as log:
            launcher = subprocess.Popen(
                ["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--ipc", "--pid",
                 "--fork", "--propagation", "private", "--", "/bin/sh", "-c", _HOLDER,
                 "hcbpg-lab-host", str(merged), str(upper), str(work), name, str(ready)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                close_fds=True)
        deadline = time.monotonic() + 15
        while not ready.exists():
            if launcher.poll() is not None or time.monotonic() > deadline:
                tail = (cfg.logs_dir / f"host-{name}.log").read_text()[-1500:]
                raise LabError(f"host {name} did not start (exit {launcher.poll()}):\n{tail}")
            time.sleep(0.01)
        pid = _holder_pid(launcher.pid, deadline)
        _wait_for_chroot(pid, merged, deadline)
        record.update(pid=pid, starttime=proc_starttime(pid), launcher=launcher.pid)
        state["hosts"][name] = record
        write_state(cfg, state)
        if sshd:
            start_sshd(cfg, name, ip, state=state)
            if pin:
                _add_known_host(cfg, name, ip, upper)
        return _describe(record)


# snapshots of a host's upper layer ------------------------------------------------------------

#: processes a host may run while its upper layer is copied: its launcher (unshare), its PID 1 (sh and its sleep)
#: and sshd, which write nothing but its log; anything else (PostgreSQL) must be stopped first: the copy is consistent
_QUIET = ("unshare", "sh", "sleep", "sshd")


def snapshot_host(cfg: LabConfig, name: str, dest: Path) -> Path:
    """Copy lab host *name*'s upper layer (everything it wrote over the machine's /: packages' state, clusters,
    configuration) to *dest*, for :func:`create_host` ``snapshot=`` to start hosts from.

    The host keeps running; whatever writes on it must be stopped first (``pg_ctlcluster 15 main stop``: a data
    directory copied while PostgreSQL runs is torn).  Refuses, naming them, while other processes run there.
    Hosts made from a snapshot keep its addresses in their configuration (``listen_addresses``, the server
    certificate): make them with the same name and IP as the host the snapshot was taken of."""
    with locked(cfg):
        state = read_state(cfg)
        if not host_alive(cfg, name, state):
            raise LabError(f"lab host {name} is not running: there is nothing to snapshot")
        busy = []
        for pid in netns_pids(state["hosts"][name]["netns"]):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue  # gone already
            if comm not in _QUIET:
                busy.append(f"{comm} ({pid})")
        if busy:
            raise LabError(f"lab host {name} still runs {', '.join(sorted(busy))}: a snapshot taken now would not "
                           "be consistent", hint="Stop them first (PostgreSQL: pg_ctlcluster 15 main stop).")
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        remove_tree(dest)
        _copy_layer(_host_dir(cfg, name) / "upper", dest)
    return dest


def _copy_layer(src: Path, dest: Path) -> None:
    """Copy an overlay layer whole: owners, modes, times, hard links, whiteouts (0/0 character devices) and
    the ``trusted.overlay.*`` attributes of opaque directories (cp -a preserves them all as root)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--no-target-directory", str(src), str(dest)])


#: where a lab host's sshd logs (inside the host: its upper layer keeps it)
SSHD_LOG = "/var/log/sshd-hcbpg-lab.log"


def start_sshd(cfg: LabConfig, name: str, ip: str, *, state: dict[str, Any] | None = None) -> None:
    """Start the sshd of lab host *name* and wait until it accepts connections.

    sshd daemonizes before it binds its port, so its exit status alone does not mean it listens.
    """
    host_exec(cfg, name, f"mkdir -p -m 755 /run/sshd && /usr/sbin/sshd -E {SSHD_LOG}", check=True, state=state)
    wait_tcp(ip, 22, 30, f"sshd of lab host {name}")


def sshd_log_tail(cfg: LabConfig, name: str, lines: int = 30) -> str:
    """The last lines of a lab host's sshd log (from its upper layer), for a failed test's report."""
    log = _host_dir(cfg, name) / "upper" / SSHD_LOG.lstrip("/")
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _describe(h: dict[str, Any]) -> dict[str, Any]:
    # the lab has no public network: the operator reaches hosts at their private IP
    return {"name": h["name"], "role": h["role"], "ip": h["ip"], "public_ip": h["ip"],
            "netns": h["netns"]}


def _add_known_host(cfg: LabConfig, name: str, ip: str, upper: Path) -> None:
    pub = (upper / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[:2]
    hostkeys.pin(cfg.known_hosts, "lab", name, [" ".join(pub)], address=ip)


def destroy_host(cfg: LabConfig, name: str) -> None:
    """End every process of host *name*, delete its namespace, veth and directory."""
    with locked(cfg):
        state = read_state(cfg)
        h = state["hosts"].get(name)
        ns = cfg.netns(name)
        if ns in netns_list():
            kill_netns_processes(ns)
            run(["ip", "netns", "del", ns], check=False)
        if h:
            run(["ip", "link", "del", cfg.veth(h["ip"])], check=False)
            lp = h.get("launcher")
            if lp and pid_alive(lp):
                os.kill(lp, 9)
        remove_tree(_host_dir(cfg, name))
        if cfg.known_hosts.exists() and h:
            hostkeys.pin(cfg.known_hosts, "lab", name, [])
        if name in state["hosts"]:
            del state["hosts"][name]
            write_state(cfg, state)


def remove_tree(path: Path) -> None:
    """rm -rf, also through overlay 'work' dirs that the kernel leaves mode 000."""
    if not path.exists():
        return
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        run(["chmod", "-R", "u+rwx", str(path)], check=False)
    if path.exists():
        raise LabError(f"cannot remove {path}", hint="Is something still mounted there? See `findmnt`.")


# running commands on a host ---------------------------------------------------------------

def host_exec(cfg: LabConfig, name: str, command: str | Sequence[str], *, input: str | None = None,
              check: bool = False, timeout: float | None = 600, user: str | None = None,
              state: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run *command* on lab host *name* as root (or *user*), like over SSH: inside its
    namespaces and chroot, with a clean login-like environment.  A string runs with
    ``/bin/sh -c``; a list is an argv."""
    state = state if state is not None else read_state(cfg)
    h = state["hosts"].get(name)
    if not h or not pid_alive(h.get("pid"), h.get("starttime")):
        raise LabError(f"lab host {name} is not running", hint="Run `hcbpg lab up` (or create the "
                       "server through the Hetzner Cloud API stand-in) first.")
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    if user and user != "root":
        argv = ["runuser", "-u", user, "--"] + argv
    full = (["nsenter", "-t", str(h["pid"]), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
             "/usr/bin/env", "-i"] + [f"{k}={v}" for k, v in HOST_ENV.items()] + argv)
    try:
        cp = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                            cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"on lab host {name}: timed out after {timeout}s: {command}") from exc
    if check and cp.returncode != 0:
        shown = command if isinstance(command, str) else shlex.join(command)
        raise RemoteCommandError(name, shown, cp.returncode, cp.stdout + cp.stderr)
    return cp


# firewalls: what a Hetzner Cloud firewall does, in the host's network namespace ----------------

#: the chain :func:`apply_firewall` fills (jumped to from INPUT for traffic arriving on ``ens10``)
FIREWALL_CHAIN = "HCBPG-FW"


def render_firewall_restore(rules: Sequence[Mapping[str, Any]] | None, private_ranges: Sequence[str] = ()) -> str:
    """``iptables-restore --noflush`` input that makes :data:`FIREWALL_CHAIN` do what a Hetzner firewall with
    *rules* (the API's rule objects, the union of every firewall applied to the server) does to inbound traffic.

    None: no firewall applied, everything comes in (the chain is empty).  Else: replies to what the host started
    (ESTABLISHED, RELATED), the private network (*private_ranges*: Hetzner firewalls never filter it), one ACCEPT
    per inbound rule and source, then DROP: a firewall without a rule drops all public inbound traffic.  IPv6
    sources are left out (the lab has no IPv6)."""
    lines = ["*filter", f":{FIREWALL_CHAIN} - [0:0]"]
    if rules is not None:
        lines.append(f"-A {FIREWALL_CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
        lines += [f"-A {FIREWALL_CHAIN} -s {ipaddress.ip_network(r)} -j ACCEPT" for r in private_ranges]
        for rule in rules:
            if rule.get("direction") != "in":
                continue
            proto = str(rule["protocol"])
            match = f"-p {proto}"
            port = rule.get("port")
            if proto in ("tcp", "udp"):
                match += f" -m {proto}"
                if port and port != "any":
                    match += f" --dport {str(port).replace('-', ':')}"
            for src in rule.get("source_ips") or []:
                net = ipaddress.ip_network(str(src))
                if net.version == 4:
                    lines.append(f"-A {FIREWALL_CHAIN} -s {net} {match} -j ACCEPT")
        lines.append(f"-A {FIREWALL_CHAIN} -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def apply_firewall(cfg: LabConfig, name: str, rules: Sequence[Mapping[str, Any]] | None,
                   private_ranges: Sequence[str] = ()) -> bool:
    """Make lab host *name*'s network namespace filter inbound traffic on ``ens10`` as a Hetzner firewall with
    *rules* does (:func:`render_firewall_restore`): "public" in the lab is any source outside *private_ranges*
    (the network's ip_range), e.g. the outsider namespace.  Replaced whole on every call (the chain is flushed
    and filled in one ``iptables-restore``).  False when the host does not exist (nothing to filter)."""
    ns = cfg.netns(name)
    if ns not in netns_list():
        return False
    run(["ip", "netns", "exec", ns, "iptables-restore", "--noflush"], input=render_firewall_restore(rules, private_ranges))
    jump = ["INPUT", "-i", INTERFACE, "-j", FIREWALL_CHAIN]
    if run(["ip", "netns", "exec", ns, "iptables", "-C", *jump], check=False).returncode != 0:
        run(["ip", "netns", "exec", ns, "iptables", "-A", *jump])
    return True


# hooks for the Hetzner Cloud API stand-in -------------------------------------------------

def create_server_host(name: str, private_ip: str, authorized_keys: list[str],
                       lab_dir: str | None = None, *, host_keys: Mapping[str, str] | None = None,
                       pin: bool = True, snapshot: Path | None = None, fresh_packages: Sequence[str] = ()) -> dict:
    """Bring up a lab host with role "server" (a fresh server: no PostgreSQL cluster; or, with
    *snapshot*, what :func:`snapshot_host` copied of an earlier one; with *fresh_packages*, without those
    packages installed yet: :func:`unpackage_upper`).

    Returns {"name", "role", "ip", "public_ip", "netns"}; ``public_ip`` is the private IP
    because the lab has no public network.  Idempotent for the same name and IP.
    """
    cfg = LabConfig.load(lab_dir)
    return create_host(cfg, name, "server", private_ip, authorized_keys, host_keys=host_keys, pin=pin,
                       snapshot=snapshot, fresh_packages=fresh_packages)


def destroy_server_host(name: str, lab_dir: str | None = None) -> None:
    """Tear down lab server *name* (no-op when it does not exist)."""
    cfg = LabConfig.load(lab_dir)
    with locked(cfg):
        h = read_state(cfg)["hosts"].get(name)
        if h and h.get("role") != "server":
            raise LabError(f"lab host {name} is the lab's {h.get('role')} host, not a server; "
                           "only servers are deleted through the API")
        destroy_host(cfg, name)
