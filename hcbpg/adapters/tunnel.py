"""A local port forwarded through a host's SSH connection (``direct-tcpip``), so a client here reaches
a server on the private network as that host would: the server sees the host's address."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.host import Host
from hcbpg.errors import HcbpgError

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike

__all__ = ["tunnel_via"]


def _pump(a: Any, b: Any, stop: threading.Event) -> None:
    """Copy bytes both ways between a local socket and an SSH channel until either side closes."""
    try:
        while not stop.is_set():
            ready, _, _ = select.select([a, b], [], [], 0.2)
            for src, dst in ((a, b), (b, a)):
                if src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    dst.sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


@contextlib.contextmanager
def tunnel_via(app: "HostLike", server_ip: str, port: int) -> Iterator[int]:
    """A local port forwarded through the app host's sshd to server_ip:port (the server sees the app host).

    The listener is bound before this yields (fabric's forward_local binds in a thread,
    so a client connecting at once can be refused).
    """
    if not isinstance(app, Host):
        raise HcbpgError(f"{app!r}: a tunnel needs an SSH connection to the host")
    transport = app.connection.client.get_transport()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                client, addr = listener.accept()
            except (TimeoutError, OSError):
                continue
            chan = transport.open_channel("direct-tcpip", (server_ip, port), addr)
            t = threading.Thread(target=_pump, args=(client, chan, stop), daemon=True)
            t.start()
            workers.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        acceptor.join(2)
        listener.close()
        for t in workers:
            t.join(2)
