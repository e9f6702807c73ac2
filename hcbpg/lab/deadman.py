"""The lab's dead-man's switch: a tiny HTTP receiver that records every ping (healthchecks.io
style URLs) as one JSON line, so tests can see what the scheduled backup job reported.

Run as ``python -m hcbpg.lab.deadman --bind 10.0.1.1 --port 8781 --log FILE``; any path is
accepted: ``.../start`` is a start ping, ``.../fail`` or ``.../<non-zero number>`` (or
``?status=N`` with N > 0) a failure, anything else a success.

:func:`start_receiver` starts it as Alertmanager's webhook receiver and the Heartbeat's dead-man together, at two
secret URLs (a token in each path, written to 0600 files and handed to params as ``file:`` references): what the
alerting lab modules (tests/lab/alerting_stage.py) and bench/monitor_memory.py point a monitor at.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hcbpg.lab.core import atomic_write

MAX_BODY = 10_000


def classify(path: str, query: str) -> tuple[str, int | None]:
    """("start" | "success" | "fail", exit status or None) for a ping URL's path and query."""
    q = urllib.parse.parse_qs(query)
    status = None
    if q.get("status"):
        try:
            status = int(q["status"][0])
        except ValueError:
            status = None
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last == "start":
        return "start", None
    if last == "fail":
        return "fail", status
    if last.isdigit() and path.rstrip("/").count("/") > 1:
        n = int(last)
        return ("success" if n == 0 else "fail"), n
    if status:
        return "fail", status
    return "success", status


class _Handler(BaseHTTPRequestHandler):
    server_version = "hcbpg-lab-deadman/1"
    log_path: Path
    lock = threading.Lock()

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, MAX_BODY)).decode(errors="replace") if length else ""
        url = urllib.parse.urlsplit(self.path)
        kind, status = classify(url.path, url.query)
        entry = {"time": time.time(), "client": self.client_address[0], "method": self.command,
                 "path": url.path, "query": url.query, "kind": kind, "status": status, "body": body}
        with self.lock, open(self.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        payload = b"OK"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _record

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the JSON lines are the log
        pass


def serve(bind: str, port: int, log: str) -> None:
    """Serve until SIGTERM/SIGINT."""
    handler = type("Handler", (_Handler,), {"log_path": Path(log)})
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).touch()
    httpd = ThreadingHTTPServer((bind, port), handler)

    def stop(*_: object) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    httpd.serve_forever()


def read_pings(log: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The pings recorded so far (oldest first)."""
    p = Path(log)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def start(bind: str, port: int, log: str | os.PathLike[str], *, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start the receiver in the background and wait until it accepts connections (for tests and `lab up`)."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    proc = subprocess.Popen([sys.executable, "-m", "hcbpg.lab.deadman", "--bind", bind, "--port", str(port),
                             "--log", str(log)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = proc.stderr.read().decode()[-1000:] if proc.stderr else ""
            raise RuntimeError(f"dead-man receiver exited: {tail}")
        try:
            with socket.create_connection((bind, port), timeout=0.3):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError(f"dead-man receiver did not listen on {bind}:{port} within {timeout}s")


def free_port(ip: str) -> int:
    """A TCP port free on *ip* now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def secret_file(path: Path, value: str) -> str:
    """*value* in a 0600 file at *path*; its ``file:`` reference, for params."""
    atomic_write(path, value + "\n", 0o600)
    return f"file:{path}"


@dataclass
class Receiver:
    """A running receiver: its log (a JSON line a request), the secret references of its two URLs (``hook``: the
    alerts, ``deadman``: the Heartbeat), their secret parts (to scan outputs for), its process, and the alerting
    settings its :meth:`alerting_section` starts from."""

    log: Path
    refs: dict[str, str]
    values: list[str]
    proc: subprocess.Popen[bytes]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def alerting_section(self, **overrides: Any) -> dict[str, Any]:
        """params' ``alerting`` section: the settings, the webhook receiver and the heartbeat URL, *overrides*."""
        return {**self.settings, "receivers": {"webhook": {"url": self.refs["hook"]}},
                "heartbeat_url": self.refs["deadman"], **overrides}

    def stop(self) -> None:
        """End the receiver (SIGTERM, by its own process)."""
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_receiver(bind: str, where: Path, *, settings: Mapping[str, Any] | None = None) -> Receiver:
    """The receiver on *bind* (the lab bridge's address: the jumpbox reaches it) on a free port, its log and the
    0600 files of its two URLs under *where*; *settings*: the alerting section's other keys."""
    port = free_port(bind)
    log = where / "received.jsonl"
    proc = start(bind, port, log)
    base = f"http://{bind}:{port}"
    hook = f"{base}/alerts/{secrets.token_hex(12)}"
    dead = f"{base}/deadman/{secrets.token_hex(12)}"
    refs = {"hook": secret_file(where / "hook-url", hook), "deadman": secret_file(where / "deadman-url", dead)}
    return Receiver(log, refs, [hook.rsplit("/", 1)[1], dead.rsplit("/", 1)[1]], proc, dict(settings or {}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hcbpg.lab.deadman", description=__doc__)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, default=8781)
    ap.add_argument("--log", required=True, help="JSON lines file the pings are appended to")
    a = ap.parse_args(argv)
    serve(a.bind, a.port, a.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
