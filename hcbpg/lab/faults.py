"""Faults a lab host can suffer (issue 28: tests and bench/failover.py): its processes killed by pid, its network
cut or partitioned.  Everything acts on one lab host only, found through its own namespaces: processes are the
pids in the host's network namespace (``ip netns pids``), recognized by their ``/proc/<pid>/comm`` and
``/proc/<pid>/cmdline``, never by a name pattern over the machine's processes.

    find_pids(cfg, host, comm=None, cmdline=None) -> list[int]
    kill_patroni_and_postgres(cfg, host) -> list[int]      SIGKILL to Patroni and every postgres process, one pass
    kill_etcd(cfg, host) -> list[int]                      SIGKILL to etcd
    cut_network(cfg, host) / heal_network(cfg, host)       the machine-side veth down / up: the host sees
                                                           NO-CARRIER, its packets vanish, connects to it fail
                                                           after ARP (about 3 s), open connections hang
    partition(cfg, host, ips) / heal_partition(cfg, host, ips)
                                                           iptables DROP in the host's netns, both ways, against
                                                           each of *ips* (the others still reach it)
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hcbpg.errors import LabError
from hcbpg.lab.core import LabConfig, kill_pids, netns_pids, read_state, run

__all__ = ["Proc", "cut_network", "find_pids", "heal_network", "heal_partition", "is_etcd", "is_patroni",
           "is_postgres", "kill_etcd", "kill_patroni_and_postgres", "link_state", "matches", "partition",
           "partition_rules", "read_proc", "select"]


@dataclass(frozen=True)
class Proc:
    """One process as /proc shows it: its pid, ``comm`` (the kernel's short name: a script's file name, not
    its interpreter's) and argv."""

    pid: int
    comm: str
    argv: tuple[str, ...]


def matches(proc: Proc, *, comm: str | None = None, cmdline: str | None = None) -> bool:
    """Whether *proc* has exactly the name *comm* and its command line (arguments joined by spaces) contains
    *cmdline*; a criterion left None holds.  Neither given matches nothing (never every process)."""
    if comm is None and cmdline is None:
        return False
    return (comm is None or proc.comm == comm) and (cmdline is None or cmdline in " ".join(proc.argv))


def is_postgres(proc: Proc) -> bool:
    """The postmaster or one of its children (their ``comm`` stays ``postgres`` whatever title they set)."""
    return proc.comm == "postgres" or (bool(proc.argv) and proc.argv[0].endswith("/bin/postgres"))


def is_patroni(proc: Proc) -> bool:
    """Patroni: ``/usr/bin/patroni CONFIG`` run by python3 (``comm`` is the script's name)."""
    return proc.comm == "patroni" or any(a.endswith("/bin/patroni") for a in proc.argv[:2])


def is_etcd(proc: Proc) -> bool:
    return proc.comm == "etcd" or (bool(proc.argv) and proc.argv[0].endswith("/bin/etcd"))


def select(procs: Iterable[Proc], *tests: Callable[[Proc], bool]) -> list[int]:
    """The pids of *procs* that pass any of *tests*, in ascending order."""
    return sorted(p.pid for p in procs if any(t(p) for t in tests))


def read_proc(pid: int, proc_root: Path = Path("/proc")) -> Proc | None:
    """*pid*'s comm and argv, or None when it is gone (or a kernel thread with no command line)."""
    try:
        comm = (proc_root / str(pid) / "comm").read_text().rstrip("\n")
        raw = (proc_root / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0"))
    if argv and argv[-1] == "":
        argv = argv[:-1]
    return Proc(pid, comm, argv)


def _host(cfg: LabConfig, host: str) -> Mapping[str, str]:
    h = read_state(cfg)["hosts"].get(host)
    if not h:
        raise LabError(f"no lab host {host} in {cfg.lab_dir}")
    return h


def host_procs(cfg: LabConfig, host: str) -> list[Proc]:
    """The processes of lab host *host*, as one look at them (each test of one look sees the same processes)."""
    ns = _host(cfg, host)["netns"]
    me = os.getpid()
    return [p for p in (read_proc(pid) for pid in netns_pids(ns) if pid != me) if p is not None]


def find_pids(cfg: LabConfig, host: str, *, comm: str | None = None, cmdline: str | None = None) -> list[int]:
    """Pids (machine-side) of the processes in lab host *host* with name *comm* and/or a command line
    containing *cmdline* (see :func:`matches`)."""
    return select(host_procs(cfg, host), lambda p: matches(p, comm=comm, cmdline=cmdline))


def _kill(pids: Sequence[int]) -> list[int]:
    if pids:
        kill_pids(pids, deadline=10.0)  # SIGKILL to each, then wait until they are gone
    return list(pids)


def kill_patroni_and_postgres(cfg: LabConfig, host: str) -> list[int]:
    """SIGKILL, in one pass, to Patroni and every postgres process of *host* (a crash of the machine's
    database side); the pids killed (empty when none ran)."""
    return _kill(select(host_procs(cfg, host), is_patroni, is_postgres))


def kill_etcd(cfg: LabConfig, host: str) -> list[int]:
    """SIGKILL to etcd on *host*; the pids killed."""
    return _kill(select(host_procs(cfg, host), is_etcd))


# the network ---------------------------------------------------------------------------------------------------

def link_state(cfg: LabConfig, host: str) -> str:
    """The machine-side veth's operational state (``UP``, ``DOWN``, ``LOWERLAYERDOWN`` ...)."""
    veth = cfg.veth(_host(cfg, host)["ip"])
    out = run(["ip", "-o", "link", "show", "dev", veth]).stdout
    words = out.split()
    return words[words.index("state") + 1] if "state" in words else "UNKNOWN"


def cut_network(cfg: LabConfig, host: str) -> None:
    """Take *host* off the lab network: its machine-side veth down (its own interface keeps its address and
    routes but has no carrier; nothing it sends or is sent arrives)."""
    run(["ip", "link", "set", cfg.veth(_host(cfg, host)["ip"]), "down"])


def heal_network(cfg: LabConfig, host: str) -> None:
    """*host* back on the lab network (its veth up; the bridge learns it again within a packet)."""
    run(["ip", "link", "set", cfg.veth(_host(cfg, host)["ip"]), "up"])


def partition_rules(ips: Iterable[str]) -> list[list[str]]:
    """The iptables rules (chain and match, without the ``-I``/``-D``/``-C``) that drop everything between a
    host and each of *ips*, both ways."""
    out = []
    for ip in ips:
        addr = str(ipaddress.IPv4Address(ip))
        out += [["INPUT", "-s", addr, "-j", "DROP"], ["OUTPUT", "-d", addr, "-j", "DROP"]]
    return out


def _iptables(cfg: LabConfig, host: str, action: str, rule: Sequence[str]) -> int:
    ns = _host(cfg, host)["netns"]
    return run(["ip", "netns", "exec", ns, "iptables", "-w", action, *rule], check=False).returncode


def partition(cfg: LabConfig, host: str, ips: Iterable[str]) -> None:
    """Drop, inside *host*'s network namespace, every packet from and to each of *ips* (silently: a connect
    times out, as on Hetzner's routed network).  Idempotent."""
    for rule in partition_rules(ips):
        if _iptables(cfg, host, "-C", rule) != 0 and _iptables(cfg, host, "-I", rule) != 0:
            raise LabError(f"iptables -I {' '.join(rule)} failed in lab host {host}",
                           hint="scripts/install.sh installs iptables")


def heal_partition(cfg: LabConfig, host: str, ips: Iterable[str]) -> None:
    """Remove what :func:`partition` added for *ips* (every copy of each rule; others' rules stay)."""
    for rule in partition_rules(ips):
        for _ in range(100):
            if _iptables(cfg, host, "-D", rule) != 0:
                break
