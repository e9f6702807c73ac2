"""Daemons on a host (etcd, Patroni): started, judged and stopped the same way whether or not the host
runs systemd; the command lines come from :mod:`hcbpg.pg.services`, the specs from :mod:`hcbpg.desired.services`.

    ServiceControl.of(host)          asks the host once whether systemd runs it (``/run/systemd/system``)
    .get_status(spec)                ServiceStatus: running, pid, manager, detail (a probe)
    .ensure_running(spec)            started unless it runs (systemd: the drop-in written first)
    .ensure_stopped(spec)            SIGTERM to the pid, SIGKILL at the spec's stop timeout (systemd: stop)
    .signal(spec, "KILL")            a signal to the daemon's own pid (faults in tests)

Without systemd a daemon is found by its pidfile and its ``/proc/<pid>/cmdline`` only, never by a
process name: a pidfile whose pid another program took is stale, not running.  Nothing restarts a
daemon that dies there (tests restart it, as systemd's ``Restart=on-failure`` would).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from hcbpg.adapters.base import Changes
from hcbpg.errors import RemoteCommandError, WaitTimeout
from hcbpg.pg.services import (
    ServiceSpec,
    parse_status,
    render_start_command,
    render_status_command,
    render_unit_dropin,
    systemd_command,
)
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.outcome import Outcome

__all__ = ["ServiceControl", "ServiceStatus"]

Manager = Literal["systemd", "pidfile"]

_SIGNALS = ("TERM", "KILL", "HUP", "INT", "STOP", "CONT")


@dataclass(frozen=True)
class ServiceStatus:
    """One daemon on one host as its manager sees it."""

    name: str
    manager: Manager
    running: bool
    pid: int | None
    detail: str


class ServiceControl:
    """The daemons of one host; *systemd* says which manager runs them (see :meth:`of`)."""

    def __init__(self, host: "HostLike", *, systemd: bool, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.systemd = systemd
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def of(cls, host: "HostLike") -> "ServiceControl":
        """The host's control, asking it whether systemd booted it (sd_booted's test; a lab host's /run is
        its own fresh tmpfs, so the answer is the host's, not the machine's)."""
        booted = host.probe("test -d /run/systemd/system").ok
        return cls(host, systemd=booted)

    @property
    def manager(self) -> Manager:
        return "systemd" if self.systemd else "pidfile"

    def __repr__(self) -> str:
        return f"ServiceControl({self.host.name!r}, {self.manager})"

    # reads ---------------------------------------------------------------------------------------
    def get_status(self, spec: ServiceSpec) -> ServiceStatus:
        """Whether *spec* runs on the host, and its pid (a probe: never changes anything)."""
        if self.systemd:
            active = self.host.probe(systemd_command("is-active", spec))
            state = active.stdout.strip() or active.stderr.strip()
            pid_text = self.host.probe(systemd_command("main-pid", spec)).stdout.strip()
            pid = int(pid_text) if pid_text.isdigit() and pid_text != "0" else None
            return ServiceStatus(spec.name, "systemd", active.ok, pid, f"systemd: {state}")
        res = self.host.probe(render_status_command(spec))
        if not res.ok:
            raise RemoteCommandError(self.host.name, f"status of {spec.name}", res.exit_code, res.output)
        seen = parse_status(spec, res.stdout)
        return ServiceStatus(spec.name, "pidfile", seen.running, seen.pid, seen.detail)

    # changes -------------------------------------------------------------------------------------
    def ensure_running(self, spec: ServiceSpec, *, wait_s: float = 10.0) -> "Outcome":
        """Start *spec* unless it runs; without systemd, wait until its pidfile names it running."""
        seen = Changes(self.host)
        if self.systemd:
            dropin = render_unit_dropin(spec)
            if self.host.read_text(spec.dropin_path) != dropin:
                self.host.run(f"install -d -m 0755 {shlex.quote(spec.dropin_path.rsplit('/', 1)[0])}")
                self.host.put_text(spec.dropin_path, dropin, mode=0o644)
                self.host.run(systemd_command("daemon-reload", spec))
                if self.get_status(spec).running:
                    # the unit runs with the old drop-in: restart it onto the new one
                    self.host.run(f"systemctl restart --no-block {spec.name}")
            if not self.get_status(spec).running:
                self.host.run(systemd_command("start", spec))
            return seen.outcome(f"{spec.name} on {self.host.name} (systemd)")
        before = self.get_status(spec)
        if not before.running:
            self.host.run(render_start_command(spec), display=f"start {spec.name} detached ({spec.pidfile}, "
                                                              f"log {spec.log_file})")
            if not self.host.dry_run:
                self._wait(spec, True, wait_s, hint=f"Read {spec.log_file} on {self.host.name}.")
        return seen.outcome(f"{spec.name} on {self.host.name} (pidfile)")

    def ensure_stopped(self, spec: ServiceSpec) -> "Outcome":
        """Stop *spec* if it runs: SIGTERM to its pid, SIGKILL when it outlives ``stop_timeout_s``."""
        seen = Changes(self.host)
        status = self.get_status(spec)
        if not status.running:
            return seen.outcome(f"{spec.name} on {self.host.name} ({self.manager}): not running")
        if self.systemd:
            self.host.run(systemd_command("stop", spec), timeout=spec.stop_timeout_s + 30)
            return seen.outcome(f"{spec.name} on {self.host.name} (systemd)")
        assert status.pid is not None  # running means a pid
        self.host.run(f"kill -TERM {status.pid}", check=False)
        if not self.host.dry_run:
            try:
                self._wait(spec, False, spec.stop_timeout_s, pid=status.pid)
            except WaitTimeout:
                self.host.run(f"kill -KILL {status.pid}", check=False)
                self._wait(spec, False, 10.0, pid=status.pid)
        return seen.outcome(f"{spec.name} on {self.host.name} (pidfile)")

    def signal(self, spec: ServiceSpec, sig: str = "KILL") -> int:
        """Send *sig* to the daemon's own pid (read from the pidfile or systemd, checked); that pid."""
        if sig not in _SIGNALS:
            raise ValueError(f"signal {sig!r} is not one of {', '.join(_SIGNALS)}")
        status = self.get_status(spec)
        if not status.running or status.pid is None:
            raise RemoteCommandError(self.host.name, f"kill -{sig} {spec.name}", None,
                                     f"{spec.name} is not running: {status.detail}")
        self.host.run(f"kill -{sig} {status.pid}")
        return status.pid

    # helpers -------------------------------------------------------------------------------------
    def _wait(self, spec: ServiceSpec, running: bool, timeout: float, *, pid: int | None = None,
              hint: str | None = None) -> ServiceStatus:
        def probe() -> ServiceStatus:
            status = self.get_status(spec)
            if not running and pid is not None and not status.running:
                # the pidfile names it no more; the pid itself must be gone too (a TERM still being handled)
                gone = not self.host.probe(f"test -d /proc/{pid}").ok
                return status if gone else ServiceStatus(spec.name, status.manager, True, pid, f"pid {pid} exiting")
            return status

        return wait_until(probe, lambda s: s.running == running, timeout=timeout, interval=0.2,
                          what=f"{spec.name} on {self.host.name} to {'run' if running else 'stop'}",
                          describe=lambda s: s.detail, hint=hint, sleep=self._sleep, clock=self._clock)
