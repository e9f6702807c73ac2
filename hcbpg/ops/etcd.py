"""etcd on its three members (both database servers and the jumpbox): packages, TLS, config, the daemon, health,
and authentication (Patroni's user may read and write only its namespace).

    ensure_etcd_packages(host, params)       etcd-server and etcd-client (the package's default member never starts)
    ensure_etcd_member(host, params, name)   CA, member certificate, config file, data directory
    ensure_etcd_running(host, params)        the daemon (systemd, or detached with a pidfile: ServiceControl)
    wait_for_etcd_healthy(host, params)      every member healthy as *host* sees them, with the list params say
    ensure_etcd_auth(host, params, pw)       root by certificate only, the patroni role and user, auth on
    get_etcd_health(host, params)            the members' health (a read; EtcdError when *host*'s does not answer)

Files are the pure renderers' (:mod:`hcbpg.desired.etcd`); etcdctl lines are :class:`~hcbpg.adapters.etcd.EtcdCtl`'s.
"""

from __future__ import annotations

import json
import secrets as pysecrets
from typing import TYPE_CHECKING, Literal

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.etcd import EtcdCtl
from hcbpg.adapters.files import ensure_dir
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import etcd as desired_etcd
from hcbpg.desired import patroni as desired_patroni
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.certs import CertSpec
from hcbpg.desired.etcd import (
    EndpointHealth,
    health_summary,
    parse_auth_probe,
    parse_endpoint_health,
    parse_member_list,
)
from hcbpg.desired.services import etcd_service
from hcbpg.errors import EtcdError
from hcbpg.ops.ha_files import ensure_cert, ensure_daemon_packages, ensure_text
from hcbpg.outcome import Check, Outcome
from hcbpg.wait import wait_until

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params

#: where the short-lived root certificate lives while auth is set up (a tmpfs, removed at the end)
ROOT_DIR = "/run/hcbpg-etcd"
ETCD_PACKAGES = ("etcd-server", "etcd-client")


def get_etcdctl(host: "HostLike", params: "Params", *, cert: str = desired_etcd.MEMBER_CERT,
                key: str = desired_etcd.MEMBER_KEY) -> EtcdCtl:
    """etcdctl on member *host* with the member's certificate (or *cert*/*key*)."""
    return EtcdCtl(host, port=desired_etcd.etcd_params(params).client_port, ca=desired_tls.client_ca_path(params),
                   cert=cert, key=key, gateway_cert=desired_etcd.GATEWAY_CERT, gateway_key=desired_etcd.GATEWAY_KEY)


def get_auth_enabled(ctl: EtcdCtl) -> bool:
    """Whether etcd's authentication is on (asked with a random wrong password: never a real one)."""
    seen = parse_auth_probe(ctl.authenticate("hcbpg-probe", pysecrets.token_hex(16)))
    if seen is None:
        raise EtcdError(f"etcd on {ctl.host.name}: cannot tell whether authentication is on", host=ctl.host.name)
    return seen


def get_token_works(ctl: EtcdCtl, user: str, password: str) -> bool:
    """Whether *user* gets a token with *password* (False: auth off, unknown user or wrong password)."""
    try:
        data = json.loads(ctl.authenticate(user, password))
    except ValueError:
        return False
    return isinstance(data, dict) and bool(data.get("token"))


def ensure_etcd_packages(host: "HostLike", params: "Params") -> Outcome:
    """etcd-server and etcd-client, installed without starting the package's own member."""
    del params
    return ensure_daemon_packages(host, ETCD_PACKAGES, stop_units=("etcd",))


def ensure_etcd_member(host: "HostLike", params: "Params", name: str) -> list[Outcome]:
    """Member *name*'s files on *host*: the CA, its certificate and key, ``/etc/etcd/hcbpg.yml``, the data
    directory.  A changed config takes effect at the next start (:func:`ensure_etcd_running` restarts it)."""
    e = desired_etcd.etcd_params(params)
    out = ensure_cert(host, params, desired_etcd.member_cert_spec(params, name), desired_etcd.MEMBER_CERT,
                      desired_etcd.MEMBER_KEY, owner="etcd", what=f"etcd certificate of {name}",
                      dir_mode=0o750)
    out += ensure_cert(host, params, desired_etcd.GATEWAY_SPEC, desired_etcd.GATEWAY_CERT, desired_etcd.GATEWAY_KEY,
                       owner="root", what=f"etcd gateway client certificate on {name}", dir_mode=0o700,
                       with_ca=False)
    out.append(ensure_text(host, desired_etcd.CONF_PATH, desired_etcd.render_etcd_conf(params, name), mode=0o640,
                           owner="root", group="etcd", what=f"etcd config on {name}"))
    out.append(ensure_text(host, desired_etcd.DEFAULT_PATH, desired_etcd.render_etcd_default(params), mode=0o644,
                           what=f"/etc/default/etcd on {name}"))
    seen = Changes(host)
    if not host.probe(f"test -d {e.data_dir}").ok:
        ensure_dir(host, e.data_dir, mode=0o700, owner="etcd")
    out.append(seen.outcome(f"etcd data directory {e.data_dir} on {name}"))
    return out


def ensure_etcd_running(host: "HostLike", params: "Params", *, restart: bool = False) -> Outcome:
    """etcd running on *host* (started unless it runs; restarted when *restart*: its config changed)."""
    control = ServiceControl.of(host)
    spec = etcd_service(params)
    seen = Changes(host)
    if restart and control.get_status(spec).running:
        control.ensure_stopped(spec)
    control.ensure_running(spec)
    return seen.outcome(f"etcd running on {host.name}")


def get_etcd_health(host: "HostLike", params: "Params") -> list[EndpointHealth]:
    return parse_endpoint_health(get_etcdctl(host, params).get_health_json(desired_etcd.client_endpoints(params)))


def wait_for_etcd_healthy(host: "HostLike", params: "Params", *, timeout: float = 60.0) -> list[EndpointHealth]:
    """Every member params name healthy, as *host* (a member) sees them; the member list checked against params."""
    ctl = get_etcdctl(host, params)
    want = len(desired_etcd.etcd_members(params))

    def probe() -> list[EndpointHealth]:
        try:
            return parse_endpoint_health(ctl.get_health_json(desired_etcd.client_endpoints(params)))
        except EtcdError:
            return []

    rows = wait_until(probe, lambda r: len(r) == want and all(h.healthy for h in r), timeout=timeout,
                      interval=0.5, what=f"{want} healthy etcd members (asked on {host.name})",
                      describe=lambda r: ", ".join(f"{h.endpoint} {'ok' if h.healthy else h.error or 'down'}"
                                                   for h in r) or "no answer",
                      hint="Each member's log: /var/log/etcd/etcd.log (or journalctl -u etcd).")
    problems = desired_etcd.check_members(params, parse_member_list(ctl.get_member_list_json()))
    if problems:
        raise EtcdError(f"etcd's members differ from params: {'; '.join(problems)}", host=host.name,
                        hint="A member of another cluster, or one added by hand: remove it with etcdctl member "
                             "remove, wipe its data directory and run step 10 again.")
    return rows


def check_etcd(host: "HostLike", params: "Params") -> list[Check]:
    """Rows for the step's verification and `hcbpg status`: members healthy, quorum held."""
    try:
        rows = get_etcd_health(host, params)
    except EtcdError as exc:
        return [Check("etcd members healthy", "fail", exc.message, host.name)]
    ok, n, quorum = health_summary(rows)
    down = [f"{h.endpoint}: {h.error or 'unhealthy'}" for h in rows if not h.healthy]
    status: Literal["pass", "warn", "fail"] = "pass" if ok == n else ("warn" if quorum else "fail")
    detail = f"{ok}/{n} healthy" + (f" (quorum held; down: {'; '.join(down)})" if down and quorum else
                                     f" (NO quorum: no leader change possible; {'; '.join(down)})" if down else "")
    return [Check("etcd members healthy", status, detail, host.name)]


def ensure_etcd_auth(host: "HostLike", params: "Params", patroni_password: str) -> Outcome:
    """Authentication on: root exists and is used only by a short-lived certificate (CN=root) made here and
    removed after; role ``patroni`` may read and write Patroni's namespace; user ``patroni`` has
    *patroni_password* (set again when it no longer works).  Nothing changes when Patroni's user already
    authenticates with it and auth is on."""
    hsecrets.register(patroni_password)
    ctl = get_etcdctl(host, params)
    seen = Changes(host)
    try:
        enabled = get_auth_enabled(ctl)
    except EtcdError:
        if not host.dry_run:
            raise
        enabled = False  # a plan before etcd runs: everything below would be done
    if enabled and get_token_works(ctl, desired_patroni.ETCD_USER, patroni_password):
        return seen.outcome(f"etcd authentication on {host.name}: on, Patroni's user authenticates")
    spec = CertSpec("root", server=False, client=True)
    ensure_cert(host, params, spec, f"{ROOT_DIR}/root.crt", f"{ROOT_DIR}/root.key", owner="root", days=1,
                what="etcd's root certificate (removed at the end of this step)", dir_mode=0o700)
    root = get_etcdctl(host, params, cert=f"{ROOT_DIR}/root.crt", key=f"{ROOT_DIR}/root.key")
    try:
        if enabled:
            root.run_ctl("user", "passwd", desired_patroni.ETCD_USER, "--interactive=false",
                         stdin=patroni_password + "\n", display="etcdctl user passwd patroni (the password on stdin)")
            return seen.outcome(f"etcd authentication on {host.name}",
                                actions=["Patroni's etcd password set again (it no longer authenticated)"])
        users = root.run_ctl("user", "list", check=False).stdout.split() if not host.dry_run else []
        if "root" not in users:
            # root signs in by its certificate's CN only: its password is random and forgotten at once
            root.run_ctl("user", "add", "root", "--interactive=false", stdin=pysecrets.token_urlsafe(32) + "\n",
                         display="etcdctl user add root (a random password on stdin, never kept)")
            root.run_ctl("user", "grant-role", "root", "root")
        roles = root.run_ctl("role", "list", check=False).stdout.split() if not host.dry_run else []
        if "patroni" not in roles:
            root.run_ctl("role", "add", "patroni")
        root.run_ctl("role", "grant-permission", "patroni", "--prefix=true", "readwrite", desired_patroni.NAMESPACE)
        if desired_patroni.ETCD_USER in users:
            root.run_ctl("user", "passwd", desired_patroni.ETCD_USER, "--interactive=false",
                         stdin=patroni_password + "\n", display="etcdctl user passwd patroni (the password on stdin)")
        else:
            root.run_ctl("user", "add", desired_patroni.ETCD_USER, "--interactive=false",
                         stdin=patroni_password + "\n", display="etcdctl user add patroni (the password on stdin)")
        root.run_ctl("user", "grant-role", desired_patroni.ETCD_USER, "patroni")
        # each member's certificate names it: as a user without a role it may ask health, nothing else
        for m in desired_etcd.etcd_members(params):
            if m.name not in users:
                root.run_ctl("user", "add", m.name, "--interactive=false", stdin=pysecrets.token_urlsafe(32) + "\n",
                             display=f"etcdctl user add {m.name} (health only; a random password, never kept)")
        root.run_ctl("auth", "enable")
    finally:
        host.run(f"rm -rf {ROOT_DIR}", quiet=True, display=f"remove {ROOT_DIR} (etcd's root certificate)")
    return seen.outcome(f"etcd authentication on {host.name}",
                        actions=["root by certificate only; role and user patroni (read-write under "
                                 f"{desired_patroni.NAMESPACE}); a user per member (health); auth enabled"])
