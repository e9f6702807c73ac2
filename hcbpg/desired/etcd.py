"""etcd 3.4 on three members (both database servers and the jumpbox) as each must run it, and what etcdctl
says about them (pure).  The members talk TLS to each other and to clients, with certificates of the
environment's CA required on both sides; Patroni's leader lease lives here.

The config file is etcd's own YAML (``--config-file``; "other configuration command line flags and environment
variables will be ignored"), so the package's default member in ``/var/lib/etcd/default`` never matters.
``parse_*`` read ``etcdctl -w json`` of etcd 3.4 (shapes recorded from etcdctl 3.4.23: tests/golden/etcd.*.json).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from hcbpg.desired import tls
from hcbpg.desired.certs import CertSpec
from hcbpg.errors import HcbpgError, ParamsError
from hcbpg.pg.conf import MANAGED_HEADER

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params
    from hcbpg.params_ha import EtcdParams

#: etcd's config file (``ETCD_CONFIG_FILE`` in /etc/default/etcd, or ``--config-file``)
CONF_PATH = "/etc/etcd/hcbpg.yml"
DEFAULT_PATH = "/etc/default/etcd"
TLS_DIR = "/etc/etcd/tls"
#: each member's certificate: CN = member name, SAN = its private IP and 127.0.0.1, EKU server + client
MEMBER_CERT = f"{TLS_DIR}/member.crt"
MEMBER_KEY = f"{TLS_DIR}/member.key"
#: a client certificate with no subject, for etcd's JSON gateway (it refuses a certificate with a CN once auth is
#: on): hcbpg's probes of authentication use it, as Patroni uses its own
#: (root's, in a directory only root may change: etcd's own TLS directory belongs to etcd)
GATEWAY_CERT = "/etc/etcd/hcbpg-client/gateway.crt"
GATEWAY_KEY = "/etc/etcd/hcbpg-client/gateway.key"
#: what that certificate says: nobody, client authentication only
GATEWAY_SPEC = CertSpec(None, server=False, client=True)

#: TLS 1.2 suites of ECDSA keys (etcd 3.4 has no minimum-version option; these exclude TLS 1.0/1.1 suites)
CIPHER_SUITES = ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")


@dataclass(frozen=True)
class EtcdMember:
    """One voter: its name (the server's) and private IP."""

    name: str
    private_ip: str


def etcd_params(params: "Params") -> "EtcdParams":
    """``params.replication.etcd``, or a ParamsError naming the missing section."""
    if params.replication is None or params.replication.etcd is None:
        raise ParamsError("params", ["replication.etcd: required for Patroni's etcd (see params/production.yaml)"])
    return params.replication.etcd


def etcd_members(params: "Params") -> list[EtcdMember]:
    """The voters: every database server, then the jumpbox."""
    if params.jumpbox is None:
        raise ParamsError("params", ["jumpbox: etcd's third voter is the jumpbox; add the jumpbox section"])
    return [EtcdMember(s.name, s.private_ip) for s in params.servers] + [
        EtcdMember(params.jumpbox.name, params.jumpbox.private_ip)]


def member(params: "Params", name: str) -> EtcdMember:
    for m in etcd_members(params):
        if m.name == name:
            return m
    raise ValueError(f"{name} is not an etcd member; members: {', '.join(m.name for m in etcd_members(params))}")


def member_cert_spec(params: "Params", name: str) -> CertSpec:
    """A member's certificate: CN = its name, its private IP and 127.0.0.1, server and client (peers are both)."""
    m = member(params, name)
    return CertSpec(m.name, (m.private_ip, "127.0.0.1"), (m.name,), server=True, client=True)


def peer_url(params: "Params", m: EtcdMember) -> str:
    return f"https://{m.private_ip}:{etcd_params(params).peer_port}"


def client_url(params: "Params", m: EtcdMember) -> str:
    return f"https://{m.private_ip}:{etcd_params(params).client_port}"


def client_endpoints(params: "Params") -> list[str]:
    """Every member's client URL (etcdctl --endpoints)."""
    return [client_url(params, m) for m in etcd_members(params)]


def initial_cluster(params: "Params") -> str:
    """``name=https://ip:peer_port,...`` of every member, in params order."""
    return ",".join(f"{m.name}={peer_url(params, m)}" for m in etcd_members(params))


def cluster_token(params: "Params") -> str:
    """Distinguishes this environment's cluster: a member of another one is refused at the first contact."""
    return f"hcbpg-{params.environment}"


def etcd_config(params: "Params", name: str) -> dict[str, Any]:
    """The config of member *name* as etcd 3.4 reads its YAML (``embed.Config`` keys)."""
    e = etcd_params(params)
    m = member(params, name)
    ca = tls.client_ca_path(params)
    security = {"cert-file": MEMBER_CERT, "key-file": MEMBER_KEY, "trusted-ca-file": ca, "client-cert-auth": True}
    return {
        "name": m.name,
        "data-dir": e.data_dir,
        "listen-peer-urls": peer_url(params, m),
        "initial-advertise-peer-urls": peer_url(params, m),
        "listen-client-urls": f"{client_url(params, m)},https://127.0.0.1:{e.client_port}",
        "advertise-client-urls": client_url(params, m),
        "initial-cluster": initial_cluster(params),
        # ignored once the data directory holds a member: starting again never re-bootstraps
        "initial-cluster-state": "new",
        "initial-cluster-token": cluster_token(params),
        "heartbeat-interval": e.heartbeat_ms,
        "election-timeout": e.election_ms,
        "auto-compaction-mode": "periodic",
        "auto-compaction-retention": "1h",
        "logger": "zap",
        "log-outputs": ["stderr"],
        # Patroni's etcd3 client posts JSON to /v3/...: the gateway is on by default as a flag, but off when etcd
        # 3.4 reads a config file (embed.NewConfig leaves it false; /v3/* answers '404 page not found' then)
        "enable-grpc-gateway": True,
        "client-transport-security": dict(security),
        "peer-transport-security": dict(security),
        "cipher-suites": list(CIPHER_SUITES),
    }


def render_etcd_conf(params: "Params", name: str) -> str:
    """``/etc/etcd/hcbpg.yml`` of member *name*: header, then etcd's YAML with sorted keys."""
    body = yaml.safe_dump(etcd_config(params, name), sort_keys=True, default_flow_style=False, width=1000)
    return (f"{MANAGED_HEADER}\n# etcd member {name} of {cluster_token(params)} (replication.etcd from params); "
            "peers and clients need a certificate of the environment's CA.\n" + body)


def etcd_argv() -> tuple[str, ...]:
    """How etcd is started: with hcbpg's config file only."""
    return ("/usr/bin/etcd", "--config-file", CONF_PATH)


def render_etcd_default(params: "Params") -> str:
    """``/etc/default/etcd``: the package's unit reads only this, and it points etcd at hcbpg's config file."""
    return f"{MANAGED_HEADER}\nETCD_CONFIG_FILE={CONF_PATH}\n"


# what etcdctl -w json says ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EndpointHealth:
    endpoint: str
    healthy: bool
    took: str
    error: str = ""


@dataclass(frozen=True)
class EtcdMemberInfo:
    """One member of ``member list``: a member added but not started yet has no name and no client URL."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool = False


@dataclass(frozen=True)
class MemberList:
    cluster_id: int
    members: tuple[EtcdMemberInfo, ...]


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise HcbpgError(f"etcdctl {what} -w json printed no JSON: {text.strip()[:200]!r}",
                         hint="Run it on the member by hand to see why.") from None


def parse_endpoint_health(text: str) -> list[EndpointHealth]:
    """``etcdctl endpoint health [--cluster] -w json``: one entry per endpoint (it exits 1 when one is unhealthy,
    still printing the list)."""
    data = _json(text, "endpoint health")
    if not isinstance(data, list):
        raise HcbpgError("etcdctl endpoint health -w json: expected a list of endpoints")
    return [EndpointHealth(str(d["endpoint"]), bool(d["health"]), str(d.get("took", "")), str(d.get("error", "")))
            for d in data]


def parse_member_list(text: str) -> MemberList:
    """``etcdctl member list -w json`` (etcd 3.4: ``header.cluster_id``, ``members[]`` with ``ID``, ``name``,
    ``peerURLs``, ``clientURLs``, ``isLearner`` when true)."""
    data = _json(text, "member list")
    if not isinstance(data, dict) or "members" not in data:
        raise HcbpgError("etcdctl member list -w json: expected an object with members")
    members = tuple(EtcdMemberInfo(int(m["ID"]), str(m.get("name", "")), tuple(m.get("peerURLs", ())),
                                   tuple(m.get("clientURLs", ())), bool(m.get("isLearner", False)))
                    for m in data["members"])
    return MemberList(int(data.get("header", {}).get("cluster_id", 0)), members)


def quorum(n_members: int) -> int:
    """Members that must be healthy for etcd to answer: a majority."""
    return n_members // 2 + 1


def check_members(params: "Params", listed: MemberList) -> list[str]:
    """What differs between the members etcd lists and params' three (empty: the same names and peer URLs)."""
    want = {m.name: peer_url(params, m) for m in etcd_members(params)}
    problems = []
    have = {m.name: m for m in listed.members}
    for name, url in want.items():
        got = have.get(name)
        if got is None:
            problems.append(f"{name}: not a member of the etcd cluster (or added and never started)")
        elif tuple(got.peer_urls) != (url,):
            problems.append(f"{name}: peer URL {', '.join(got.peer_urls)}, expected {url}")
        elif got.is_learner:
            problems.append(f"{name}: a learner (not a voter) yet")
    for m in listed.members:
        if m.name not in want:
            problems.append(f"{m.name or hex(m.id)}: a member params do not name (peer {', '.join(m.peer_urls)})")
    return problems


def health_summary(health: Sequence[EndpointHealth]) -> tuple[int, int, bool]:
    """(healthy, all, quorum held)."""
    ok = sum(1 for h in health if h.healthy)
    return ok, len(health), bool(health) and ok >= quorum(len(health))


def parse_auth_probe(text: str) -> bool | None:
    """Whether auth is enabled, from the gateway's answer to ``POST /v3/auth/authenticate`` with a wrong password
    (etcd 3.4: code 9 "authentication is not enabled", code 3 "invalid user ID or password"); None when the
    answer says neither (a token: the probe's password was right after all, or another error)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    message = str(data.get("error") or data.get("message") or "")
    if "authentication is not enabled" in message:
        return False
    if "invalid user ID or password" in message or "token" in data:
        return True
    return None
