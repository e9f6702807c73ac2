"""Patroni's REST API of one member, asked on the member itself with curl: the only place these calls are built.

    PatroniApi(host, name, base, ...)   member *name*'s API at *base* (its connect_address; TLS, the environment's CA)
    .get(path)                          (status, body) of a safe verb: no certificate, no password needed
    .get_json(path)                     the decoded body of a 200 (or 503: /patroni of a stopped member)
    .post(path, body) / .patch(...)     unsafe verbs: the member's REST certificate and basic auth read by curl
                                        from a 0600 netrc (nothing on argv); the JSON body on stdin

Asking on the member means the operator's machine needs no route to port 8008 and the allowlist (the members'
private IPs) holds; through the jumpbox the SSH path is the one every other command takes.  Errors become one
:class:`~hcbpg.errors.PatroniError` carrying the status, the member and its answer.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING, Any

from hcbpg.errors import PatroniError

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike

__all__ = ["PatroniApi"]

_SAFE = ("GET",)


class PatroniApi:
    """The REST API of member *name* at *base*, called from *host* (the member's own machine): *ca* verifies
    it; unsafe verbs send *cert*/*key* and the basic-auth password curl reads from *netrc*."""

    def __init__(self, host: "HostLike", name: str, base: str, *, ca: str, cert: str, key: str, netrc: str,
                 timeout_s: float = 10.0) -> None:
        self.host = host
        self.name = name
        self.base = base
        self.ca = ca
        self.cert = cert
        self.key = key
        self.netrc = netrc
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"PatroniApi({self.name!r})"

    def command(self, method: str, path: str, *, timeout_s: float | None = None) -> str:
        """The curl line for *method* on *path*: status on the last line of the output."""
        if not path.startswith("/") or any(c in path for c in " \n\t"):
            raise ValueError(f"not a REST path: {path!r}")
        words = ["curl", "-sS", "--max-time", f"{timeout_s or self.timeout_s:g}", "-w", "\\n%{http_code}",
                 "--cacert", self.ca]
        if method not in _SAFE:
            words += ["--cert", self.cert, "--key", self.key, "--netrc-file", self.netrc,
                      "-H", "Content-Type: application/json", "-X", method, "-d", "@-"]
        return shlex.join([*words, f"{self.base}{path}"])

    @staticmethod
    def _split(stdout: str) -> tuple[int, str]:
        text, _, code = stdout.rpartition("\n")
        try:
            return int(code.strip() or 0), text
        except ValueError:
            return 0, stdout

    # reads ----------------------------------------------------------------------------------------------------
    def get(self, path: str, *, timeout_s: float | None = None) -> tuple[int, str]:
        """(HTTP status, body) of GET *path*; status 0 when the API did not answer (Patroni down)."""
        res = self.host.probe(self.command("GET", path, timeout_s=timeout_s))
        if not res.ok:
            return 0, res.output.strip()[-300:]
        return self._split(res.stdout)

    def get_json(self, path: str, *, ok: tuple[int, ...] = (200, 503), timeout_s: float | None = None) -> Any:
        """The decoded body of GET *path* (a status in *ok*), else PatroniError."""
        status, body = self.get(path, timeout_s=timeout_s)
        if status not in ok:
            raise PatroniError(f"Patroni on {self.name}: GET {path} answered "
                               f"{status or 'nothing'}: {body.strip()[:200]}", status=status, host=self.name,
                               body=body[:500], hint=None if status else
                               f"Is Patroni running on {self.name}? `hcbpg status` shows each member.")
        try:
            return json.loads(body)
        except ValueError:
            raise PatroniError(f"Patroni on {self.name}: GET {path} answered no JSON: {body.strip()[:200]}",
                               status=status, host=self.name, body=body[:500]) from None

    # changes --------------------------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 202),
             timeout_s: float | None = None, display: str | None = None) -> tuple[int, str]:
        """An unsafe verb (POST, PATCH, DELETE) on *path* with *body* as JSON; (status, answer).  A dry run records
        it and answers (0, ''); a status outside *ok* raises PatroniError."""
        res = self.host.run(self.command(method, path, timeout_s=timeout_s), check=False,
                            stdin=json.dumps(body if body is not None else {}),
                            display=display or f"{method} {path} on {self.name}'s Patroni",
                            timeout=(timeout_s or self.timeout_s) + 30)
        if self.host.dry_run:
            return 0, ""
        if not res.ok:
            raise PatroniError(f"Patroni on {self.name}: {method} {path} got no answer: "
                               f"{res.output.strip()[-200:]}", host=self.name,
                               hint=f"Is Patroni running on {self.name}?")
        status, text = self._split(res.stdout)
        if status not in ok:
            raise PatroniError(f"Patroni on {self.name}: {method} {path} answered {status}: "
                               f"{text.strip()[:300]}", status=status, host=self.name, body=text[:500])
        return status, text

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, str]:
        return self.call("POST", path, body, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> tuple[int, str]:
        return self.call("PATCH", path, body, **kw)
