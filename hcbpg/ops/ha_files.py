"""What etcd and Patroni both need on a host: a file with exact content, owner and mode (its diff shown, a secret
file's never); a certificate of the environment's CA as a :class:`~hcbpg.desired.certs.CertSpec` says; the
packages of a daemon hcbpg starts itself (installed without the package starting its own).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.certs import CertSpec, plan_cert, render_cert
from hcbpg.desired.packages import APT_ENV
from hcbpg.ops.packages import get_installed_packages
from hcbpg.ops.tls import ensure_client_ca, get_signing_ca
from hcbpg.outcome import Outcome, unified_diff

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params

#: an apt policy that refuses every service start while it exists (Debian's invoke-rc.d asks it)
_POLICY = "/usr/sbin/policy-rc.d"


def _stat(host: "HostLike", path: str) -> str:
    return host.probe(f"stat -c '%U:%G %a' -- {shlex.quote(path)}").stdout.strip()


def ensure_text(host: "HostLike", path: str, text: str, *, mode: int = 0o644, owner: str = "root",
                group: str | None = None, what: str, secret: bool = False) -> Outcome:
    """*path* holds *text* with *owner*:*group* and *mode*; the diff is shown unless *secret* (then: 'changed')."""
    seen = Changes(host)
    grp = group or owner
    current = host.read_text(path)
    if current != text:
        parent = path.rsplit("/", 1)[0]
        if not host.probe(f"test -d {shlex.quote(parent)}").ok:
            ensure_dir(host, parent, mode=0o755)
        host.put_text(path, text, mode=mode, owner=owner, group=grp)
    elif _stat(host, path) != f"{owner}:{grp} {mode:o}":
        host.run(f"chown {shlex.quote(f'{owner}:{grp}')} {shlex.quote(path)} && chmod {mode:04o} {shlex.quote(path)}")
    if secret:
        return seen.outcome(what, actions=[f"write {path} (a secret: no diff shown)"] if seen else None)
    return seen.outcome(what, diff=unified_diff(current or "", text, path))


def ensure_cert(host: "HostLike", params: "Params", spec: CertSpec, cert_path: str, key_path: str, *,
                owner: str, what: str, days: float | None = None, dir_mode: int = 0o750,
                with_ca: bool = True) -> list[Outcome]:
    """The environment's CA where clients find it (unless *with_ca* is false: a second certificate on the same
    machine), and a certificate saying *spec* at *cert_path* (key 0600 at *key_path*, both *owner*'s), issued
    again when :func:`~hcbpg.desired.certs.plan_cert` says why."""
    ca, stand_in = get_signing_ca(host, params)
    out = [ensure_client_ca(host, params)] if with_ca else []
    seen = Changes(host)
    why = plan_cert(host.read_text(cert_path), None if stand_in else ca, spec,
                    renew_days=min(params.tls.renew_days, (days or params.tls.cert_days) / 2))
    if why is not None:
        crt, key = render_cert(ca, spec, days=days or params.tls.cert_days)
        d = cert_path.rsplit("/", 1)[0]
        if not host.probe(f"test -d {shlex.quote(d)}").ok:
            ensure_dir(host, d, mode=dir_mode, owner=owner)
        host.put_text(key_path, key, mode=0o600, owner=owner)  # key first: never the new certificate, old key
        host.put_text(cert_path, crt, mode=0o644, owner=owner)
        out.append(seen.outcome(what, actions=[f"issued: {why}", f"write {cert_path} and {key_path} (0600)"]))
    else:
        out.append(seen.outcome(what))
    return out


def ensure_daemon_packages(host: "HostLike", names: Sequence[str], *, stop_units: Sequence[str] = ()) -> Outcome:
    """*names* installed; their postinst may not start a daemon (a policy-rc.d refusing starts during the
    install; with systemd the units in *stop_units* are disabled after): hcbpg starts them with its own config."""
    seen = Changes(host)
    installed = get_installed_packages(host, list(names))
    missing = [n for n in names if n not in installed]
    if not missing:
        return Outcome(f"packages {', '.join(names)} on {host.name}", False, host.dry_run,
                       actions=[f"{n} {installed[n]} already installed" for n in names])
    pkgs = " ".join(shlex.quote(n) for n in missing)
    units = " ".join(shlex.quote(u) for u in stop_units)
    script = (f"made=; if [ ! -e {_POLICY} ]; then printf '#!/bin/sh\\nexit 101\\n' > {_POLICY} && chmod 755 {_POLICY}"
              f" && made=1; fi; {APT_ENV} apt-get update -q && {APT_ENV} apt-get install -y -q "
              f"--no-install-recommends {pkgs}; rc=$?; [ -z \"$made\" ] || rm -f {_POLICY}; "
              + (f"if [ -d /run/systemd/system ]; then systemctl disable --now {units} >/dev/null 2>&1 || true; fi; "
                 if units else "") + "exit $rc")
    host.run(script, timeout=1800, display=f"apt-get install {' '.join(missing)} (their daemons not started)")
    return seen.outcome(f"packages {', '.join(names)} on {host.name}")
