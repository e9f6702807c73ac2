"""Packages on a server: PostgreSQL from the distribution or the PGDG apt repository
(signed by the key postgresql-common ships), installed with apt and checked with dpkg-query."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.desired.packages import (
    APT_ENV,
    DPKG_FORMAT,
    IMAGE_CODENAMES,
    PGDG_KEY,
    PGDG_SOURCES,
    packages,
    parse_dpkg_query,
    parse_os_codename,
    render_pgdg_sources,
)
from hcbpg.errors import (
    RemoteCommandError,
    SafetyCheckFailed,
)
from hcbpg.outcome import Outcome, unified_diff
from hcbpg.pg.checksums import CREATECLUSTER_CONF, CREATECLUSTER_DIR, CREATECLUSTER_DROPIN, render_createcluster_conf

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


def get_installed_packages(host: "HostLike", names: Sequence[str]) -> dict[str, str]:
    """The subset of *names* that dpkg says is installed, with versions (read-only, no network)."""
    res = host.probe(f"dpkg-query -W -f '{DPKG_FORMAT}' " + " ".join(shlex.quote(n) for n in names))
    return parse_dpkg_query(res.stdout)


def get_os_codename(host: "HostLike", params: "Params") -> str:
    """VERSION_CODENAME from /etc/os-release (bookworm, noble, ...)."""
    text = host.read_text("/etc/os-release")
    codename = parse_os_codename(text or "")
    if codename is None and text is None and host.dry_run and params.hetzner.image in IMAGE_CODENAMES:
        # dry run: a server not there yet has no /etc/os-release: the image step 01 creates it from says
        return IMAGE_CODENAMES[params.hetzner.image]
    if codename is None:
        raise RemoteCommandError(host.name, "read /etc/os-release", None,
                                 "no VERSION_CODENAME in /etc/os-release",
                                 hint="hcbpg supports Debian and Ubuntu servers only.")
    return codename


def ensure_pgdg_repo(host: "HostLike", params: "Params") -> Outcome:
    """The PGDG apt sources file exists with our content (no apt-get update here: see ensure_packages).

    Refused while the signing key (from postgresql-common) is missing."""
    seen = Changes(host)
    desired = render_pgdg_sources(get_os_codename(host, params))
    current = host.read_text(PGDG_SOURCES)
    if current != desired:
        # dry run: postgresql-common, which ships the key, was only recorded as installed
        if not host.exists(PGDG_KEY) and not host.dry_run:
            raise SafetyCheckFailed(f"on {host.name}: the PGDG signing key {PGDG_KEY} is missing",
                                    hint="Install postgresql-common first (ensure_packages does).")
        host.put_text(PGDG_SOURCES, desired, mode=0o644, owner="root")
    return seen.outcome(f"PGDG apt repository on {host.name}", diff=unified_diff(current or "", desired, PGDG_SOURCES))


def ensure_createcluster_conf(host: "HostLike", params: "Params") -> Outcome:
    """``createcluster.d/hcbpg.conf``: installing postgresql-NN creates no cluster, and any cluster pg_createcluster
    makes gets data checksums (:mod:`hcbpg.pg.checksums` says why a drop-in and why both settings).  Written before
    any package, so the postinst of postgresql-15 reads it.

    Where postgresql-common is installed already, its own tool is asked what createcluster.conf now says; refused
    (the file put back as it was) when the drop-in is not read: a postgresql-common whose createcluster.conf has no
    ``include_dir`` for createcluster.d."""
    seen = Changes(host)
    desired = render_createcluster_conf()
    current = host.read_text(CREATECLUSTER_DROPIN)
    if current != desired:
        if not host.exists(CREATECLUSTER_DIR):
            host.run(f"install -d -m 0755 -o root -g root {CREATECLUSTER_DIR}", display=f"directory {CREATECLUSTER_DIR}")
        host.put_text(CREATECLUSTER_DROPIN, desired, mode=0o644, owner="root")
        if not host.dry_run and host.probe("command -v pg_conftool").ok:
            res = host.probe(f"pg_conftool {CREATECLUSTER_CONF} show -bs create_main_cluster")
            if res.stdout.strip() != "off":
                if current is None:
                    host.run(f"rm -f {CREATECLUSTER_DROPIN}")
                else:
                    host.put_text(CREATECLUSTER_DROPIN, current, mode=0o644, owner="root")
                raise SafetyCheckFailed(
                    f"on {host.name}: {CREATECLUSTER_CONF} does not read {CREATECLUSTER_DROPIN} (pg_conftool says "
                    f"create_main_cluster is {res.stdout.strip() or res.output.strip()[-200:]!r}, not off)",
                    target=host.name,
                    hint=f"This postgresql-common's createcluster.conf has no include_dir '{CREATECLUSTER_DIR}': "
                         "upgrade postgresql-common, or add that line to it, and run step 02 again. Nothing was "
                         "changed.")
    return seen.outcome(f"createcluster drop-in on {host.name} (no automatic cluster, data checksums)",
                        diff=unified_diff(current or "", desired, CREATECLUSTER_DROPIN))


def _install(host: "HostLike", pkgs: list[str], origin: str) -> Outcome:
    seen = Changes(host)
    host.run(f"{APT_ENV} apt-get update -q", timeout=600)
    host.run(f"{APT_ENV} apt-get install -y -q --no-install-recommends " + " ".join(shlex.quote(p) for p in pkgs),
             timeout=1800)
    return seen.outcome(f"packages {', '.join(pkgs)} on {host.name}",
                        actions=[f"apt-get install {' '.join(pkgs)} ({origin})"])


def ensure_packages(host: "HostLike", params: "Params") -> list[Outcome]:
    """postgresql-common, the PGDG repository, postgresql-15, libpq-dev and pgbackrest, installing only what is missing.

    dpkg is asked first, so a host that has every package needs no network at all.
    """
    wanted = packages(params)
    installed = get_installed_packages(host, wanted)
    outcomes: list[Outcome] = []
    if "postgresql-common" not in installed:
        outcomes.append(_install(host, ["postgresql-common"], "distribution repository, for the PGDG signing key"))
    outcomes.append(ensure_pgdg_repo(host, params))
    missing = [p for p in wanted[1:] if p not in installed]
    if missing:
        outcomes.append(_install(host, missing, "PGDG repository"))
    else:
        outcomes.append(Outcome(f"packages {', '.join(wanted)} on {host.name}", False, host.dry_run,
                                actions=[f"{p} {installed[p]} already installed" for p in wanted]))
    return outcomes
