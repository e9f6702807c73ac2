"""etcdctl on a member, and etcd's JSON gateway through curl: the only place their command lines are built.

    EtcdCtl(host, port=, ca=, cert=, key=)  etcdctl v3 against this member's own client URL, authenticated by a
                                            certificate of the environment's CA (paths on the member)
    .get_health_json(endpoints)          ``endpoint health -w json`` of every member's client URL
    .get_member_list_json()              ``member list -w json``
    .run_ctl(*args, stdin=)              any other etcdctl command (user and role changes: passwords on stdin)
    .authenticate(user, password)        the gateway's answer to ``POST /v3/auth/authenticate`` (body on stdin)

What the answers mean is :mod:`hcbpg.desired.etcd`'s (``parse_*``); the paths and ports come from there too,
through :mod:`hcbpg.ops.etcd`.

Passwords never reach a command line: etcdctl reads them from stdin (``--interactive=false``), curl its JSON
body from stdin (``-d @-``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.errors import EtcdError, HcbpgError

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result

__all__ = ["EtcdCtl"]


class EtcdCtl:
    """etcdctl (API v3) on *host*, a member, against its own client URL (127.0.0.1: no other member needed to
    ask it), with *cert*/*key* as the client's certificate and *ca* to verify the member's."""

    def __init__(self, host: "HostLike", *, port: int, ca: str, cert: str, key: str, gateway_cert: str | None = None,
                 gateway_key: str | None = None, timeout_s: float = 3.0) -> None:
        self.host = host
        self.port = port
        self.ca = ca
        self.cert = cert
        self.key = key
        #: the client certificate for the JSON gateway (one without a CN: the gateway refuses others with auth on)
        self.gateway_cert = gateway_cert or cert
        self.gateway_key = gateway_key or key
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"EtcdCtl({self.host.name!r})"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def command(self, *args: str, endpoints: Sequence[str] = ()) -> str:
        """The etcdctl line for *args* (no secret in it: certificates are files, passwords go on stdin), against
        *endpoints* (default: this member's own)."""
        t = f"{self.timeout_s:g}s"
        eps = ",".join(endpoints) or self.endpoint
        return shlex.join(["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={eps}",
                           f"--cacert={self.ca}", f"--cert={self.cert}",
                           f"--key={self.key}", f"--dial-timeout={t}", f"--command-timeout={t}", *args])

    # reads ----------------------------------------------------------------------------------------------------
    def get_health_json(self, endpoints: Sequence[str]) -> str:
        """``endpoint health -w json`` of each of *endpoints* (every member's client URL: no member list needed,
        which etcd cannot give without a quorum), as etcdctl printed it: a member that does not answer is a row
        with its error; EtcdError when etcdctl printed no rows at all."""
        res = self.host.probe(self.command("endpoint", "health", "-w", "json", endpoints=endpoints))
        text = res.stdout.strip()
        if not text.startswith("["):
            raise EtcdError(f"etcd on {self.host.name} does not answer: {res.output.strip()[-300:]}",
                            host=self.host.name, hint="Is etcd running there? Its log: /var/log/etcd/etcd.log "
                                                      "(or journalctl -u etcd).")
        return text

    def get_member_list_json(self) -> str:
        res = self.host.probe(self.command("member", "list", "-w", "json"))
        if not res.ok:
            raise EtcdError(f"etcd member list on {self.host.name}: {res.output.strip()[-300:]}", host=self.host.name)
        return res.stdout

    def authenticate(self, user: str, password: str) -> str:
        """The gateway's answer to ``POST /v3/auth/authenticate`` for *user*/*password* (the body on stdin)."""
        url = f"{self.endpoint}/v3/auth/authenticate"
        cmd = shlex.join(["curl", "-sS", "--max-time", f"{self.timeout_s:g}", "--cacert", self.ca,
                          "--cert", self.gateway_cert, "--key", self.gateway_key, "-X", "POST", url, "-d", "@-"])
        res = self.host.probe(cmd, stdin=json.dumps({"name": user, "password": password}))
        if not res.ok:
            raise EtcdError(f"etcd's gateway on {self.host.name} does not answer: {res.output.strip()[-300:]}",
                            host=self.host.name)
        return res.stdout

    # changes --------------------------------------------------------------------------------------------------
    def run_ctl(self, *args: str, stdin: str | None = None, display: str | None = None,
                check: bool = True) -> "Result":
        """etcdctl *args* (a change: recorded on a dry run); *stdin* carries a password."""
        try:
            return self.host.run(self.command(*args), stdin=stdin, check=check, display=display)
        except HcbpgError as exc:
            raise EtcdError(f"etcdctl {' '.join(args[:3])} on {self.host.name}: {exc.message}",
                            host=self.host.name, hint=exc.hint) from exc
