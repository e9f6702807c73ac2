"""The SSH adapter: one :class:`Host` per machine, over fabric, that runs commands and reads and writes files.

Every command that changes something is printed as one line (host, command, exit status,
duration) with secrets scrubbed, so an executed notebook says exactly what was done where.
Secrets never go on a command line (process lists are visible to every user): they are
fed through stdin.

A Host may be reached through a gateway Host (the jumpbox, issue 28): its SSH connection then runs in a
``direct-tcpip`` channel of the gateway's, and each hop's host key is checked against its own pin.
"""

from __future__ import annotations

import base64
import os
import select
import shlex
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hcbpg.adapters import hostkeys
from hcbpg.adapters.base import HostLike, Result
from hcbpg.adapters.files import WRITE_HINT, put_file_script
from hcbpg.errors import HostKeyError, HostUnreachable, RemoteCommandError
from hcbpg.secrets import scrub

__all__ = ["AUTH_RETRY_WAITS", "TIMEOUT_EXIT", "Host", "HostLike", "Result"]

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: exit status our read_text uses to say "no such file" (cat itself exits 1)
_MISSING_EXIT = 44
#: the exit status a command that ran out of time gets with ``check=False`` (as coreutils' timeout)
TIMEOUT_EXIT = 124
#: how many characters of output an error keeps
_TAIL_CHARS = 4000
#: pauses before trying SSH authentication again after the server refused our key
AUTH_RETRY_WAITS = (1.0, 3.0)


class _TimedOut(Exception):
    def __init__(self, output: str) -> None:
        self.output = output
        super().__init__("timed out")


def _tail(text: str) -> str:
    """The end of a command's output for an error: scrubbed whole first, then cut (a secret across the
    cut would otherwise keep its tail)."""
    return scrub(text)[-_TAIL_CHARS:]


def _connect_errors() -> tuple[type[BaseException], ...]:
    import paramiko  # noqa: PLC0415 - fabric/paramiko load on first SSH use (slow import; pure code never needs it)
    from paramiko.ssh_exception import NoValidConnectionsError  # noqa: PLC0415 - slow import, needed on first SSH use only
    return (socket.timeout, socket.gaierror, ConnectionError, OSError, EOFError,
            NoValidConnectionsError, paramiko.SSHException)


#: stands for "no known_hosts given": a path that never exists, so nothing is pinned
_NO_PINS = Path("/nonexistent/hcbpg-no-known-hosts-given")


def _no_delay(conn: Any) -> None:
    """TCP_NODELAY on the connection's socket (as OpenSSH's client sets it).  Each command is a few
    small packets (channel open, exec, EOF, close) that wait for a reply: with Nagle's algorithm one
    waited for the server's delayed ACK, 40 ms, before it left (measured on the lab: opening a channel
    took 41-47 ms with it, 0.2 ms without)."""
    transport = conn.client.get_transport()
    sock = getattr(transport, "sock", None) if transport is not None else None
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once (TCP_QUICKACK again after every read: Linux leaves
    quick-ack mode by itself), for a gateway's connection.  The gateway's sshd forwards what a server behind it
    writes (exit status, EOF, close) as separate small packets, and without TCP_NODELAY on its side (OpenSSH sets it
    only for a session with a terminal) each waits for our ACK of the one before: with our delayed ACK, 40 ms a
    command (measured on the lab: `true` through the jumpbox, p90 43-48 ms; 3 ms with quick ACKs)."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        if _TCP_QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data


#: Linux's TCP_QUICKACK (None elsewhere: macOS has no such option; its gateway connections keep delayed ACKs)
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _gateway_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A connected socket for a gateway's SSH connection: TCP_NODELAY, and quick ACKs where the OS has them."""
    raw = socket.create_connection((address, port), timeout=timeout)
    sock = _QuickAckSocket(raw.family, raw.type, raw.proto, fileno=raw.detach()) if _TCP_QUICKACK is not None else raw
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _RefusePolicy:
    """paramiko's policy when no key is pinned for the host: refuse with a HostKeyError."""

    def __init__(self, host: "Host") -> None:
        self.host = host

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        hostkeys.check_offered(self.host.name, self.host.where, self.host.known_hosts, key.get_name(),
                               key.asbytes())


#: the gateways Host.from_params made, one per jumpbox and SSH settings: shared by the hosts behind it
_GATEWAYS: dict[tuple[str, str, str, str | None, int, str], "Host"] = {}
_GATEWAYS_LOCK = threading.Lock()


class Host:
    """One machine reached over SSH (fabric 3 ``Connection``)."""

    def __init__(self, name: str, address: str, *, user: str = "root", key_file: str | None = None,
                 port: int = 22, connect_timeout: float = 10.0, command_timeout: float = 900.0,
                 echo: Callable[[str], None] = print, known_hosts: str | Path | None = None,
                 gateway: "Host | None" = None) -> None:
        self.name = name
        self.address = address
        self.user = user
        self.key_file = key_file
        self.port = port
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.echo = echo
        #: the pinned known_hosts this host's key must be in (looked up by *name*); None: nothing is
        #: pinned, so every key is refused
        self.known_hosts = Path(known_hosts) if known_hosts is not None else _NO_PINS
        #: every command run on this host, in order (scrubbed), for tests and the record
        self.history: list[Result] = []
        #: a real host changes what it is told to (HostLike)
        self.dry_run = False
        #: every command that may change the host, as shown (scrubbed), in order (HostLike; probes are not in it)
        self.journal: list[str] = []
        #: the waits before trying a refused SSH key again (None: :data:`AUTH_RETRY_WAITS`; ``hcbpg status``
        #: gives () so that a refused key is said at once)
        self.auth_retry_waits: tuple[float, ...] | None = None
        #: the Host this one is reached through (the jumpbox), or None: directly.  *address* is then the one the
        #: gateway reaches (a private IP); the gateway's connection stays open while a host behind it is connected
        self.gateway = gateway
        self._conn: Any = None
        #: as a gateway: how many connected hosts use this connection (closed when the last of them closes)
        self._users = 0
        self._lock = threading.Lock()
        #: whether this host holds a use of its gateway (between its connection's opening and its close)
        self._holds_gateway = False
        #: hosts are reached through this one: its connection acknowledges at once (:class:`_QuickAckSocket`)
        self._serves = False
        if gateway is not None:
            gateway._serves = True

    @classmethod
    def from_params(cls, params: "Params", name: str, address: str, **kw: Any) -> "Host":
        """A Host with user, key, port and connect timeout from ``params.ssh``.

        With ``jumpbox`` in params, a database server (``servers[]``, not the jumpbox itself) is reached through
        the jumpbox (*address* is then one the jumpbox reaches: its private IP, ``desired.addresses.ssh_route``),
        the jumpbox at ``jumpbox.ssh_host``, else at the address pinned with its host key.  One gateway Host per
        jumpbox is shared by every host behind it.  ``gateway=`` in *kw* chooses instead (None: directly).
        """
        opts: dict[str, Any] = dict(user=params.ssh.user, key_file=os.path.expanduser(params.ssh.key_file),
                                    port=params.ssh.port, connect_timeout=params.ssh.connect_timeout,
                                    known_hosts=hostkeys.known_hosts_path(params))
        opts.update(kw)
        jb = params.jumpbox
        if "gateway" not in opts and jb is not None and name != jb.name and name in {s.name for s in params.servers}:
            jb_address = jb.ssh_host or hostkeys.pinned_address(Path(opts["known_hosts"]), jb.name)
            if not jb_address:
                raise HostUnreachable(name, f"{address} via {jb.name}",
                                      f"the jumpbox {jb.name} has no SSH address: jumpbox.ssh_host is not set "
                                      f"and no address is pinned with its host key in {opts['known_hosts']} "
                                      "(step 01 pins it when it creates the jumpbox)")
            opts["gateway"] = cls._shared_gateway(jb.name, jb_address, opts)
        return cls(name, address, **opts)

    @classmethod
    def _shared_gateway(cls, name: str, address: str, opts: dict[str, Any]) -> "Host":
        """The one gateway Host for *name* at *address* with these SSH settings (made on first use)."""
        key = (name, address, opts["user"], opts["key_file"], int(opts["port"]), str(opts["known_hosts"]))
        with _GATEWAYS_LOCK:
            gw = _GATEWAYS.get(key)
            if gw is None:
                gw = cls(name, address, **{k: v for k, v in opts.items() if k != "gateway"})
                _GATEWAYS[key] = gw
            return gw

    @property
    def where(self) -> str:
        """The address as said in messages: ``10.0.1.31 via hcb-jumpbox`` through a gateway."""
        return f"{self.address} via {self.gateway.name}" if self.gateway is not None else self.address

    @property
    def _target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}" + (f" via {self.gateway.name}" if self.gateway else "")

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self._target})"

    # connection --------------------------------------------------------------
    @property
    def connection(self) -> Any:
        """The open fabric Connection (opened on first use)."""
        if self._conn is None:
            from fabric import Connection  # noqa: PLC0415 - fabric loads on first SSH use (slow import)
            kwargs: dict[str, Any] = {"allow_agent": False, "look_for_keys": False,
                                      "banner_timeout": self.connect_timeout,
                                      "auth_timeout": self.connect_timeout}
            if self.key_file:
                kwargs["key_filename"] = [self.key_file]
            from paramiko.ssh_exception import (  # noqa: PLC0415 - slow import, needed on first SSH use only
                AuthenticationException,
                BadHostKeyException,
            )
            waits = AUTH_RETRY_WAITS if self.auth_retry_waits is None else self.auth_retry_waits
            if self.gateway is not None and not self._holds_gateway:
                self.gateway._acquire()  # its own errors name the gateway (HostKeyError, HostUnreachable)
                self._holds_gateway = True
            try:
                for wait in (*waits, None):
                    if self.gateway is not None:
                        kwargs["sock"] = self._gateway_channel()
                    elif self._serves:
                        try:
                            kwargs["sock"] = _gateway_socket(self.address, self.port, self.connect_timeout)
                        except _connect_errors() as exc:
                            raise HostUnreachable(self.name, self._target,
                                                  scrub(f"{type(exc).__name__}: {exc}")) from exc
                    conn = Connection(self.address, user=self.user, port=self.port,
                                      connect_timeout=self.connect_timeout, connect_kwargs=kwargs)
                    self._pin(conn.client)
                    try:
                        conn.open()
                        break
                    except HostKeyError:
                        self._close_attempt(conn, kwargs)  # refused by our policy in the key exchange: nothing sent
                        raise
                    except BadHostKeyException as exc:
                        self._close_attempt(conn, kwargs)
                        hostkeys.check_offered(self.name, self.where, self.known_hosts, exc.key.get_name(),
                                               exc.key.asbytes())
                        raise  # check_offered raised already: the key is not pinned
                    except AuthenticationException as exc:
                        # a server just provisioned may run sshd before cloud-init has put the key in
                        # place; a wrong key fails the same way a few seconds later
                        self._close_attempt(conn, kwargs)
                        if wait is None:
                            raise HostUnreachable(self.name, self._target,
                                                  scrub(f"{type(exc).__name__}: {exc} (tried "
                                                        f"{len(waits) + 1} times)")) from exc
                        self.echo(f"[{self.name}] SSH key refused by {self.where}; trying again in {wait:.0f}s")
                        time.sleep(wait)
                    except _connect_errors() as exc:
                        self._close_attempt(conn, kwargs)
                        raise HostUnreachable(self.name, self._target,
                                              scrub(f"{type(exc).__name__}: {exc}")) from exc
            except BaseException:
                self._release_gateway()
                raise
            _no_delay(conn)  # through a gateway: its hop has it (this one's transport runs in a channel)
            self._conn = conn
        return self._conn

    def _gateway_channel(self) -> Any:
        """A ``direct-tcpip`` channel from the gateway to this host's SSH port, opened within the connect timeout
        (paramiko's default waits an hour for the gateway's answer), as fabric's gateway does."""
        assert self.gateway is not None
        try:
            transport = self.gateway.connection.client.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError(f"the SSH connection to the gateway {self.gateway.name} is closed")
            return transport.open_channel("direct-tcpip", (self.address, int(self.port)), ("", 0),
                                          timeout=self.connect_timeout)
        except _connect_errors() as exc:
            raise HostUnreachable(self.name, self._target,
                                  scrub(f"{self.gateway.name} could not open a connection to {self.address}:"
                                        f"{self.port}: {type(exc).__name__}: {exc}")) from exc

    @staticmethod
    def _close_attempt(conn: Any, kwargs: dict[str, Any]) -> None:
        """Close a failed connection attempt and the gateway channel it ran in (paramiko closes the channel only
        with a transport it started)."""
        conn.close()
        sock = kwargs.pop("sock", None)
        if sock is not None:
            sock.close()

    def _acquire(self) -> None:
        """As a gateway: one more host behind this one is connecting; connect (again, if the connection died)."""
        with self._lock:
            if self._conn is not None:
                transport = self._conn.client.get_transport()
                if transport is None or not transport.is_active():
                    self._conn.close()
                    self._conn = None
            _ = self.connection
            self._users += 1

    def _release(self) -> None:
        """As a gateway: a host behind this one closed; the last one closes this connection."""
        with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                self.close()

    def _release_gateway(self) -> None:
        if self.gateway is not None and self._holds_gateway:
            self._holds_gateway = False
            self.gateway._release()

    def _pin(self, client: Any) -> None:
        """Trust only the keys pinned for this host's name: paramiko compares the offered key with
        them (BadHostKeyException) and asks our policy, which refuses, when none is pinned."""
        known = client.get_host_keys()
        known.clear()
        lookup = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        from paramiko import PKey  # noqa: PLC0415 - slow import, needed on first SSH use only
        for p in hostkeys.pins_for(self.known_hosts, self.name):
            try:
                known.add(lookup, p.keytype, PKey.from_type_string(p.keytype, base64.b64decode(p.key)))
            except Exception as exc:  # noqa: BLE001 - a key type paramiko cannot read is no pin
                self.echo(f"[{self.name}] ignoring pinned {p.keytype} key in {self.known_hosts}: {exc}")
        client.set_missing_host_key_policy(_RefusePolicy(self))

    def connect(self) -> "Host":
        """Open the SSH connection now (raises HostUnreachable naming this host)."""
        _ = self.connection
        return self

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_gateway()

    def __enter__(self) -> "Host":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # commands ----------------------------------------------------------------
    def _wrap(self, cmd: str, sudo_user: str | None) -> str:
        if sudo_user and sudo_user != self.user:
            # cd / so that tools run as another user do not complain about root's home
            return f"sudo -n -H -u {shlex.quote(sudo_user)} -- sh -c {shlex.quote('cd / && ' + cmd)}"
        if self.user != "root" and sudo_user is None:
            return f"sudo -n -- sh -c {shlex.quote(cmd)}"
        return cmd

    def run(self, cmd: str, *, sudo_user: str | None = None, check: bool = True, stdin: str | None = None,
            quiet: bool = False, display: str | None = None, timeout: float | None = None,
            hint: str | None = None) -> Result:
        """Run *cmd* (a shell command line) as root, or as *sudo_user*; feed *stdin* if given.

        Prints one line (host, command or *display*, exit status, duration) unless *quiet*;
        raises RemoteCommandError when it fails and *check* is true.  A command that runs past
        *timeout* fails too: with *check* false it returns exit status :data:`TIMEOUT_EXIT`.
        """
        return self._run(cmd, sudo_user=sudo_user, check=check, stdin=stdin, quiet=quiet, display=display,
                         timeout=timeout, hint=hint, change=True)

    def _run(self, cmd: str, *, sudo_user: str | None, check: bool, stdin: str | None, quiet: bool,
             display: str | None, timeout: float | None, hint: str | None, change: bool) -> Result:
        full = self._wrap(cmd, sudo_user)
        shown = scrub(display if display is not None else (cmd if not sudo_user else f"[as {sudo_user}] {cmd}"))
        if change:
            self.journal.append(shown)
        chan = self._open_channel(shown)
        started = time.monotonic()
        try:
            code, out, err = self._exec(chan, full, stdin, timeout or self.command_timeout)
        except _connect_errors() as exc:
            self.close()
            raise HostUnreachable(
                self.name, self._target,
                scrub(f"connection lost while running `{shown}`: {type(exc).__name__}: {exc}")) from exc
        except _TimedOut as exc:
            duration = time.monotonic() - started
            if not quiet:
                self.echo(f"[{self.name}] $ {shown}  -> timed out after {duration:.2f}s")
            if not check:
                # the caller handles failures itself (run_stop falls back to an immediate stop): a timeout
                # is one more failure, exit TIMEOUT_EXIT, not an exception that skips its fallback
                timed_out = Result(self.name, shown, TIMEOUT_EXIT, exc.output,
                                   f"timed out after {duration:.2f}s", duration)
                self.history.append(Result(self.name, shown, TIMEOUT_EXIT, scrub(exc.output), timed_out.stderr,
                                           duration))
                return timed_out
            raise RemoteCommandError(self.name, shown, None, _tail(exc.output),
                                     hint=hint or "The command did not finish in time.") from None
        duration = time.monotonic() - started
        result = Result(self.name, shown, code, out, err, duration)
        self.history.append(Result(self.name, shown, code, scrub(out), scrub(err), duration))
        if not quiet:
            self.echo(f"[{self.name}] $ {shown}  -> exit {code} in {duration:.2f}s")
        if check and code != 0:
            raise RemoteCommandError(self.name, shown, code, _tail(out + err), hint=hint)
        return result

    def _open_channel(self, shown: str) -> Any:
        """A new SSH channel for one command.  A connection found dead here (it dropped while idle:
        a restarted sshd, a NAT timeout) is opened again once: nothing of the command has been sent
        yet, so this never runs anything twice.  A connection lost while a command runs is not
        retried (see :meth:`run`)."""
        for attempt in (1, 2):
            conn = self.connection
            try:
                transport = conn.client.get_transport()
                if transport is None or not transport.is_active():
                    raise EOFError("the SSH connection is closed")
                return transport.open_session(timeout=conn.connect_timeout)
            except _connect_errors() as exc:
                self.close()
                if attempt == 2:
                    raise HostUnreachable(self.name, self._target,
                                          scrub(f"could not open a channel for `{shown}`: "
                                                f"{type(exc).__name__}: {exc}")) from exc
                self.echo(scrub(f"[{self.name}] SSH connection to {self.where} was lost while idle "
                                f"({type(exc).__name__}: {exc}); connecting again"))
        raise AssertionError("unreachable")

    @staticmethod
    def _exec(chan: Any, command: str, stdin: str | None, timeout: float) -> tuple[int, str, str]:
        """Run *command* on the SSH channel *chan*; returns (exit code, stdout, stderr).

        Used instead of ``Connection.run`` because invoke feeds an in-memory stdin one byte
        per 10 ms (a 1 kB file took 10 s); here stdin is sent whole, then closed.
        """
        try:
            chan.exec_command(command)
            if stdin is not None:
                chan.sendall(stdin.encode())
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.eof_received and not chan.exit_status_ready():
                    # the output is in; its exit status follows (paramiko's event, not the data pipe:
                    # the pipe stays readable after EOF, so select would spin until then)
                    chan.status_event.wait(0.02)
                else:
                    select.select([chan], [], [], 0.02)
                while chan.recv_ready():
                    out += chan.recv(65536)
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                # sshd sends the exit status as soon as the process ends, and the rest of its output
                # as the window allows, then EOF: the output is whole only once EOF (or the close) is in
                if (chan.exit_status_ready() and (chan.eof_received or chan.closed)
                        and not chan.recv_ready() and not chan.recv_stderr_ready()):
                    break
                if time.monotonic() > deadline:
                    raise _TimedOut((out + err).decode(errors="replace"))
            code = chan.recv_exit_status()
            if code == -1 and not chan.get_transport().is_active():
                # no exit status, and the connection is gone: the command was cut off, it did not fail
                raise EOFError("the connection closed before the command's exit status arrived")
            return code, out.decode(errors="replace"), err.decode(errors="replace")
        finally:
            chan.close()

    def probe(self, cmd: str, **kw: Any) -> Result:
        """A read-only command: quiet, never raises on a non-zero exit, not in the journal."""
        return self._run(cmd, sudo_user=kw.get("sudo_user"), check=False, stdin=kw.get("stdin"),
                         quiet=kw.get("quiet", True), display=kw.get("display"), timeout=kw.get("timeout"),
                         hint=kw.get("hint"), change=False)

    # files -------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.probe(f"test -e {shlex.quote(path)}").ok

    def read_text(self, path: str, *, sudo_user: str | None = None) -> str | None:
        """The file's text, or None when it does not exist."""
        q = shlex.quote(path)
        res = self.probe(f"if [ -e {q} ]; then cat -- {q}; else exit {_MISSING_EXIT}; fi", sudo_user=sudo_user)
        if res.exit_code == _MISSING_EXIT:
            return None
        if not res.ok:
            raise RemoteCommandError(self.name, f"cat {path}", res.exit_code, _tail(res.output))
        return res.stdout

    def put_text(self, path: str, text: str, *, mode: int = 0o644, owner: str = "root",
                 group: str | None = None, dry_run: bool = False) -> None:
        """Write *text* to *path* whole and atomically (a temporary file in the same directory, then mv).

        The content travels on stdin, so a file holding secrets never shows in a process list.  In a
        directory another user can change (the postgres user's), the write runs as the file's owner,
        so that user cannot redirect it (:func:`hcbpg.adapters.files.put_file_script`).
        """
        grp = group or owner
        shown = f"write {path} ({len(text.encode())} bytes, mode {mode:04o}, owner {owner}:{grp})"
        if dry_run:
            self.echo(f"[{self.name}] [dry run] would {shown}")
            return
        self.run(put_file_script(path, mode=mode, owner=owner, group=grp), stdin=text, display=shown,
                 hint=WRITE_HINT)
