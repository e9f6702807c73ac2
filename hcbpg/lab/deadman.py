"""The lab's dead-man's switch: a tiny HTTP receiver that records every ping (healthchecks.io
style URLs) as one JSON line, so tests can see what the scheduled backup job reported.

Run as ``python -m hcbpg.lab.deadman --bind 10.0.1.1 --port 8781 --log FILE``; any path is
accepted: ``.../start`` is a start ping, ``.../fail`` or ``.../<non-zero number>`` (or
``?status=N`` with N > 0) a failure, anything else a success.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
