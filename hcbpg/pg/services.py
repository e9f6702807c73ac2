"""Long-running daemons beside PostgreSQL (etcd, Patroni) as command lines (pure): what a service is
(:class:`ServiceSpec`), the shell line that starts it where there is no systemd, the systemd drop-in that makes
the package's unit run the same command, and how a running process is recognized.

Two managers, one command: with systemd the package's unit gets a drop-in (``ExecStart`` replaced by the spec's
argv, its user and environment, ``Restart=on-failure``); without it (the lab's hosts, a container) the argv runs
detached (``setsid -f``) under the spec's user, its pid in ``/run/hcbpg/<name>.pid`` and its output appended to
the spec's log.  The start line ``exec``s from the shell that wrote the pidfile down to the daemon (``setpriv``,
``env`` and the daemon replace one another), so the pid in the file is the daemon's own and stopping it never
needs a process name.  Built here only (below both layers that need them, like :mod:`hcbpg.pg.cluster`):
:class:`~hcbpg.adapters.services.ServiceControl` runs them, :mod:`hcbpg.desired.services` makes the specs from
params.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

#: where pidfiles of daemons without systemd live (a tmpfs: a reboot forgets them, as it ends the daemons)
PID_DIR = "/run/hcbpg"

#: the environment a detached daemon starts with (nothing of the SSH session that started it leaks in)
BASE_ENV = (("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"), ("LANG", "C.UTF-8"))

_NAME = re.compile(r"^[a-z0-9][a-z0-9@._-]{0,62}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_ENV_KEY = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True)
class RuntimeDir:
    """A directory that must exist before the daemon starts (``install -d``): e.g. ``/run/postgresql``."""

    path: str
    owner: str = "root"
    group: str | None = None
    mode: int = 0o755


@dataclass(frozen=True)
class ServiceSpec:
    """One daemon: *name* is its systemd unit (``etcd``, ``patroni@15-main``) and its pidfile's name."""

    name: str
    user: str
    argv: tuple[str, ...]
    log_file: str
    #: the user's home (``HOME`` of the daemon)
    home: str = "/"
    env: tuple[tuple[str, str], ...] = ()
    runtime_dirs: tuple[RuntimeDir, ...] = ()
    #: seconds between SIGTERM and SIGKILL when stopping
    stop_timeout_s: float = 30.0
    #: systemd's ``Type=`` for the drop-in (``notify`` for etcd, which tells systemd when it serves)
    unit_type: str = "simple"
    extra_unit_lines: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        problems = check_spec(self)
        if problems:
            raise ValueError(f"service {self.name!r}: " + "; ".join(problems))

    @property
    def pidfile(self) -> str:
        return pidfile_path(self.name)

    @property
    def dropin_path(self) -> str:
        return dropin_path(self.name)


def pidfile_path(name: str) -> str:
    return f"{PID_DIR}/{name}.pid"


def dropin_path(name: str) -> str:
    """The drop-in hcbpg owns for unit *name* (``/etc/systemd/system/<unit>.service.d/hcbpg.conf``)."""
    return f"/etc/systemd/system/{name}.service.d/hcbpg.conf"


def check_spec(spec: ServiceSpec) -> list[str]:
    """What is wrong with *spec* (empty: nothing): names a shell, systemd and a pidfile can carry."""
    out = []
    if not _NAME.match(spec.name):
        out.append("the name must be a unit name of lowercase letters, digits, '@', '.', '_' or '-'")
    if not _USER.match(spec.user):
        out.append(f"user {spec.user!r} is not a system user name")
    if not spec.argv or not spec.argv[0].startswith("/"):
        out.append("argv must start with the daemon's absolute path")
    if not spec.log_file.startswith("/"):
        out.append("the log file must be an absolute path")
    for key, _value in spec.env:
        if not _ENV_KEY.match(key):
            out.append(f"environment name {key!r} is not A-Z, 0-9 and '_'")
    words = [*spec.argv, spec.log_file, spec.home, *(v for _k, v in spec.env), *(d.path for d in spec.runtime_dirs)]
    if any(ch in w for w in words for ch in "\n\r\0"):
        out.append("no value may hold a line break or NUL")
    if any(ch in w for w in words for ch in "%$\\\""):
        # systemd expands % and $ in ExecStart= and Environment=; refused rather than escaped twice
        out.append("no value may hold %, $, backslash or double quote")
    return out


def environment(spec: ServiceSpec) -> list[tuple[str, str]]:
    """The daemon's whole environment, in order: the base, its HOME and user, then the spec's."""
    return [*BASE_ENV, ("HOME", spec.home), ("USER", spec.user), ("LOGNAME", spec.user), *spec.env]


def render_prepare_command(spec: ServiceSpec) -> str:
    """Make the pidfile's, the log's and the runtime directories (idempotent ``install -d``)."""
    log_dir = spec.log_file.rsplit("/", 1)[0] or "/"
    parts = [f"install -d -m 0755 {PID_DIR}",
             f"install -d -o {spec.user} -g {spec.user} -m 0750 {shlex.quote(log_dir)}"]
    for d in spec.runtime_dirs:
        parts.append(f"install -d -o {d.owner} -g {d.group or d.owner} -m {d.mode:04o} {shlex.quote(d.path)}")
    return " && ".join(parts)


def render_start_command(spec: ServiceSpec) -> str:
    """The shell line that starts *spec* detached, where there is no systemd.

    ``setsid -f`` leaves the caller's session (an SSH channel closes behind it); the inner shell writes its
    own pid, then ``exec``s ``setpriv`` (drops to the user, no fork, unlike runuser/su), which ``exec``s
    ``env -i`` (a clean environment), which ``exec``s the daemon: the pid written is the daemon's.
    """
    env_words = " ".join(shlex.quote(f"{k}={v}") for k, v in environment(spec))
    inner = (f"echo $$ > {shlex.quote(spec.pidfile)} && cd {shlex.quote(spec.home)} && "
             f"exec setpriv --reuid={spec.user} --regid={spec.user} --init-groups -- "
             f"env -i {env_words} {shlex.join(spec.argv)} >> {shlex.quote(spec.log_file)} 2>&1 < /dev/null")
    return (f"{render_prepare_command(spec)} && "
            f"setsid -f /bin/sh -c {shlex.quote(inner)} < /dev/null > /dev/null 2>&1")


def render_status_command(spec: ServiceSpec) -> str:
    """Print the pidfile's pid, then that process's argv NUL-separated (nothing when there is no such
    process); exits 0 either way.  :func:`parse_status` reads the output."""
    pf = shlex.quote(spec.pidfile)
    return (f"if [ -r {pf} ]; then p=$(head -c 20 {pf}); echo \"pid=$p\"; "
            f"case \"$p\" in ''|*[!0-9]*) ;; *) cat /proc/$p/cmdline 2>/dev/null;; esac; fi; true")


@dataclass(frozen=True)
class ProcessStatus:
    """What the pidfile says: its pid, and whether that pid runs the spec's argv (a reused pid does not)."""

    pid: int | None
    running: bool
    detail: str


def parse_status(spec: ServiceSpec, output: str) -> ProcessStatus:
    """Judge :func:`render_status_command`'s output against *spec*."""
    if not output.startswith("pid="):
        return ProcessStatus(None, False, f"no pidfile {spec.pidfile}")
    first, _, cmdline = output.partition("\n")
    text = first[len("pid="):].strip()
    if not text.isdigit():
        return ProcessStatus(None, False, f"{spec.pidfile} holds no pid ({text[:20]!r})")
    pid = int(text)
    if not cmdline:
        return ProcessStatus(pid, False, f"pid {pid} of {spec.pidfile} is not running")
    argv = cmdline.split("\0")
    if argv[-1] == "":
        argv = argv[:-1]
    if not runs_argv(argv, spec.argv):
        return ProcessStatus(pid, False, f"pid {pid} of {spec.pidfile} runs {' '.join(argv)[:200]!r}, "
                                         f"not {spec.name} (a stale pidfile, its pid reused)")
    return ProcessStatus(pid, True, f"pid {pid}")


def runs_argv(cmdline: Sequence[str], argv: Sequence[str]) -> bool:
    """Whether a process's *cmdline* is *argv* started: as is, or a script behind its shebang's interpreter
    (Patroni shows ``/usr/bin/python3 /usr/bin/patroni FILE``): at most two words (the interpreter and one
    option, all a shebang line passes) before *argv*."""
    extra = len(cmdline) - len(argv)
    if not 0 <= extra <= 2 or tuple(cmdline[extra:]) != tuple(argv):
        return False
    return extra == 0 or cmdline[0].startswith("/")


def render_unit_dropin(spec: ServiceSpec) -> str:
    """The systemd drop-in that makes the package's unit run *spec* as it runs without systemd."""
    lines = ["# Managed by hcbpg: do not edit; `hcbpg plan` shows changes.", "[Service]",
             f"Type={spec.unit_type}", f"User={spec.user}", f"Group={spec.user}",
             f"WorkingDirectory={spec.home}",
             "ExecStart=",  # clears the package's
             f"ExecStart={shlex.join(spec.argv)}"]
    lines += [f"Environment=\"{k}={v}\"" for k, v in (("HOME", spec.home), *spec.env)]
    # KillMode stays the package's (Patroni's unit: process, so a restarted Patroni finds its PostgreSQL)
    lines += ["Restart=on-failure", "RestartSec=1", f"TimeoutStopSec={int(spec.stop_timeout_s)}",
              *spec.extra_unit_lines]
    return "\n".join(lines) + "\n"


def systemd_command(action: str, spec: ServiceSpec) -> str:
    """The ``systemctl`` line for *action* on *spec*'s unit: start (enable, and never block: a first etcd
    member waits for its peers before it tells systemd it runs), stop, disable (not started at the next boot),
    is-active, main-pid, daemon-reload."""
    lines = {"start": f"systemctl enable --now --no-block {spec.name}",
             "stop": f"systemctl stop {spec.name}",
             "disable": f"systemctl disable {spec.name}",
             "is-active": f"systemctl is-active {spec.name}",
             "main-pid": f"systemctl show --property=MainPID --value {spec.name}",
             "daemon-reload": "systemctl daemon-reload"}
    if action not in lines:
        raise ValueError(f"no systemctl line for {action!r}")
    return lines[action]


def spec_env(env: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """An environment mapping as a spec's ordered tuple (sorted by name: deterministic)."""
    items = env.items() if isinstance(env, Mapping) else env
    return tuple(sorted((str(k), str(v)) for k, v in items))
