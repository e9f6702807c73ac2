"""Pinned SSH host keys: the environment's known_hosts file, fingerprints, new host keys.

Each environment keeps the public host keys of its machines in one file beside its params
(``params/<env>.known_hosts`` unless ``ssh.known_hosts`` says otherwise), committed like
params.  A line pins one key to a machine *name* (and the address it was reached at):
``server-postgres-1,203.0.113.7 ssh-ed25519 AAAA…``.  :class:`~hcbpg.adapters.host.Host`
looks the key up by the machine's name, so an address that points elsewhere is refused
instead of trusted.  Private host keys are generated here in memory for cloud-init and are
never written anywhere by hcbpg.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hcbpg import secrets as hsecrets
from hcbpg.errors import HostKeyError, HostUnreachable, ParamsError
from hcbpg.params import home

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params


class Gateway(Protocol):
    """What :func:`get_offered_host_key` needs of the machine it reads a key through (a ``Host``: the jumpbox)."""

    name: str

    @property
    def connection(self) -> Any: ...  # the open fabric Connection

    def connect(self) -> Any: ...

HEADER = ("# Managed by hcbpg: pinned SSH host keys of environment {env} (public keys only).\n"
          "# One line per machine: NAME[,ADDRESS] KEYTYPE KEY. Commit this file with params/{env}.yaml.\n"
          "# A key is added only when hcbpg generated it (step 01) or an operator confirmed its\n"
          "# fingerprint against the Hetzner console (step 01's host-key gate).\n")


@dataclass(frozen=True)
class Pin:
    """One pinned public host key."""

    hosts: tuple[str, ...]
    keytype: str
    key: str            # base64 blob as in known_hosts

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_blob(base64.b64decode(self.key))

    def line(self) -> str:
        return f"{','.join(self.hosts)} {self.keytype} {self.key}"


@dataclass(frozen=True)
class HostKeyPair:
    """A new host key: the private key (OpenSSH PEM, registered with the scrubber) and its public line."""

    keytype: str
    private_openssh: str
    public_line: str    # "ssh-ed25519 AAAA…"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of_public(self.public_line)


def fingerprint_of_blob(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint (``SHA256:…``, as ``ssh-keygen -lf`` and the console print it)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint_of_public(public_line: str) -> str:
    """The SHA256 fingerprint of an OpenSSH public key line (``ssh-ed25519 AAAA… [comment]``)."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    try:
        return fingerprint_of_blob(base64.b64decode(parts[1], validate=True))
    except (binascii.Error, ValueError):
        raise ValueError("the key data is not valid base64") from None


# The known_hosts format is read here, beside the file, and not in hcbpg.pg or hcbpg.desired: the lab imports
# this adapter (it pins its machines' keys) and must not import those layers (contract lab-stands-alone).
def _parse_known_hosts(text: str) -> list[Pin]:
    """The pins of a known_hosts text (comments, blank, hashed and marker lines skipped)."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "@", "|")):
            continue
        parts = line.split()
        if len(parts) < 3:
            continue
        out.append(Pin(tuple(h for h in parts[0].split(",") if h), parts[1], parts[2]))
    return out


def known_hosts_path(params: "Params") -> Path:
    """The environment's pinned known_hosts: ``ssh.known_hosts``, else ``params/<env>.known_hosts``."""
    if params.ssh.known_hosts:
        path = Path(os.path.expanduser(params.ssh.known_hosts))
        return path if path.is_absolute() else home() / path  # relative: to HCBPG_HOME, like params/
    return home() / "params" / f"{params.environment}.known_hosts"


def read_pins(path: Path) -> list[Pin]:
    try:
        return _parse_known_hosts(path.read_text())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ParamsError(str(path), [f"cannot read the pinned host keys: {exc.strerror}"]) from None


def pins_for(path: Path, name: str) -> list[Pin]:
    """The keys pinned for machine *name* (matched by name, never by address alone)."""
    return [p for p in read_pins(path) if name in p.hosts]


def pinned_address(path: Path, name: str) -> str | None:
    """The address recorded with *name*'s pin (step 01 writes it from the cloud API), or None."""
    for p in pins_for(path, name):
        others = [h for h in p.hosts if h != name]
        if others:
            return others[0]
    return None


def pinned_servers(params: "Params") -> list[dict[str, str | None]]:
    """``[{"name", "public_ip"}]`` per server from its pin (the address step 01 read from the cloud API).

    Later steps reach a server at ``servers[].ssh_host`` or here, never at an address read from
    an executed notebook under ``outputs/``: the pinned file is kept with params, and the key
    pinned with the address is checked on every connection anyway.
    """
    path = known_hosts_path(params)
    return [{"name": s.name, "public_ip": pinned_address(path, s.name)} for s in params.servers]


def pin(path: Path, environment: str, name: str, public_lines: Iterable[str], *,
        address: str | None = None) -> bool:
    """Pin *public_lines* for *name* (replacing its earlier pins); True when the file changed.

    Written whole under an flock (the lab's own tooling may add its hosts at the same time).
    """
    new_pins = []
    for line in public_lines:
        parts = line.split()
        fingerprint_of_public(line)  # refuses what is not a public key
        hosts = (name, address) if address and address != name else (name,)
        new_pins.append(Pin(hosts, parts[0], parts[1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(str(path) + ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            old_text = path.read_text()
        except FileNotFoundError:
            old_text = ""
        comments = [ln for ln in old_text.splitlines() if ln.startswith("#")]
        kept = [p for p in _parse_known_hosts(old_text) if name not in p.hosts]
        head = "".join(c + "\n" for c in comments) if comments else HEADER.format(env=environment)
        text = head + "".join(p.line() + "\n" for p in [*kept, *new_pins])
        if text == old_text:
            return False
        tmp = path.with_name(path.name + ".new")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return True
    finally:
        os.close(lock_fd)


def generate_host_key(comment: str) -> HostKeyPair:
    """A new ed25519 host key (private part registered with the scrubber, never written by us)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - cryptography only when keys are made
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415 - as above
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    hsecrets.register(private)
    for line in private.splitlines():
        if len(line) >= 40 and not line.startswith("-----"):
            hsecrets.register(line)  # a line of it alone must not leak either
    return HostKeyPair("ed25519", private, f"{public} {comment}")


def check_offered(name: str, address: str, path: Path, keytype: str, blob: bytes) -> None:
    """Raise HostKeyError unless the key offered by *name* at *address* is pinned for *name*."""
    pins = pins_for(path, name)
    offered = fingerprint_of_blob(blob)
    b64 = base64.b64encode(blob).decode()
    if any(p.keytype == keytype and p.key == b64 for p in pins):
        return
    raise HostKeyError(name, address, str(path), expected=[p.fingerprint for p in pins],
                       offered=f"{keytype} {offered}")


def get_offered_host_key(address: str, port: int = 22, timeout: float = 10.0, *,
                         gateway: Gateway | None = None) -> str:
    """The public host key *address* offers (``ssh-ed25519 AAAA…``), read without logging in.

    Nothing is sent but the SSH key exchange: no credential, no command.  Used only to show the
    operator a fingerprint to compare with the Hetzner console before it is pinned.  With *gateway* (the
    jumpbox's Host, ``desired.addresses.ssh_route(...).via``) the exchange runs in a ``direct-tcpip`` channel of
    the gateway's connection (opened within *timeout*), *address* being one the gateway reaches (a private IP);
    the gateway's connection is the caller's to close.
    """
    import socket  # noqa: PLC0415 - only for the one-off read of an unpinned server's key

    import paramiko  # noqa: PLC0415 - slow import, needed on SSH use only
    where = f"{address}:{port}" + (f" via {gateway.name}" if gateway is not None else "")
    sock: Any
    if gateway is not None:
        gateway.connect()  # its own errors name the gateway (HostKeyError, HostUnreachable)
        try:
            transport_to_gateway = gateway.connection.client.get_transport()
            if transport_to_gateway is None or not transport_to_gateway.is_active():
                raise EOFError(f"the SSH connection to the gateway {gateway.name} is closed")
            sock = transport_to_gateway.open_channel("direct-tcpip", (address, int(port)), ("", 0),
                                                     timeout=timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostUnreachable(address, where, f"cannot read its host key: {gateway.name} could not open a "
                                  f"connection to {address}:{port}: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            raise HostUnreachable(address, where, f"cannot read its host key: {exc}") from exc
    transport = paramiko.Transport(sock)
    try:
        opts = transport.get_security_options()
        opts.key_types = ["ssh-ed25519", *[k for k in opts.key_types if k != "ssh-ed25519"]]
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return f"{key.get_name()} {key.get_base64()}"
    except paramiko.SSHException as exc:
        raise HostUnreachable(address, where, f"SSH handshake failed: {exc}") from exc
    finally:
        transport.close()
        sock.close()  # a gateway's channel: paramiko closes it only with a transport it started
