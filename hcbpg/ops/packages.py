"""Packages on a server: PostgreSQL from the distribution or the PGDG apt repository
(signed by the key postgresql-common ships), installed with apt and checked with dpkg-query."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hcbpg.errors import (
    RemoteCommandError,
    SafetyCheckFailed,
)
from hcbpg.outcome import Outcome, unified_diff
from hcbpg.pg.conf import MANAGED_HEADER

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.host import Host
    from hcbpg.params import Params


PGDG_KEY = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc"


PGDG_SOURCES = "/etc/apt/sources.list.d/pgdg.sources"


PGDG_URI = "https://apt.postgresql.org/pub/repos/apt"


APT_ENV = "DEBIAN_FRONTEND=noninteractive"


def packages(params: "Params") -> list[str]:
    """The packages a server needs, in install order (postgresql-common ships the PGDG signing key)."""
    return ["postgresql-common", f"postgresql-{params.postgres.version}", "libpq-dev", "pgbackrest"]


def parse_dpkg_query(text: str) -> dict[str, str]:
    """Installed packages from ``dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n'``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].strip() == "ii":
            out[parts[0]] = parts[2]
    return out


def get_installed_packages(host: "Host", names: Sequence[str]) -> dict[str, str]:
    """The subset of *names* that dpkg says is installed, with versions (read-only, no network)."""
    res = host.probe("dpkg-query -W -f '${Package}\\t${db:Status-Abbrev}\\t${Version}\\n' "
                     + " ".join(shlex.quote(n) for n in names))
    return parse_dpkg_query(res.stdout)


def get_os_codename(host: "Host") -> str:
    """VERSION_CODENAME from /etc/os-release (bookworm, noble, ...)."""
    text = host.read_text("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    raise RemoteCommandError(host.name, "read /etc/os-release", None,
                             "no VERSION_CODENAME in /etc/os-release",
                             hint="hcbpg supports Debian and Ubuntu servers only.")


def render_pgdg_sources(codename: str) -> str:
    """The deb822 sources file for apt.postgresql.org, signed by the key postgresql-common ships.

    This is what ``apt.postgresql.org.sh`` would write, without running a script as root.
    """
    if not re.fullmatch(r"[a-z]+", codename):
        raise ValueError(f"unexpected distribution codename {codename!r}")
    return "\n".join([
        MANAGED_HEADER,
        "# The PostgreSQL Global Development Group apt repository (https://wiki.postgresql.org/wiki/Apt).",
        "Types: deb",
        f"URIs: {PGDG_URI}",
        f"Suites: {codename}-pgdg",
        "Components: main",
        f"Signed-By: {PGDG_KEY}",
        "",
    ])


def ensure_pgdg_repo(host: "Host | None", *, dry_run: bool) -> Outcome:
    """The PGDG apt sources file exists with our content (no apt-get update here: see ensure_packages)."""
    what = f"PGDG apt repository on {host.name if host else '(new server)'}"
    if host is None:
        return Outcome(what, True, dry_run, actions=[f"write {PGDG_SOURCES} (after postgresql-common, "
                                                     "which ships the signing key)"])
    codename = get_os_codename(host)
    desired = render_pgdg_sources(codename)
    current = host.read_text(PGDG_SOURCES)
    if current == desired:
        return Outcome(what, False, dry_run)
    diff = unified_diff(current or "", desired, PGDG_SOURCES)
    if not dry_run and not host.exists(PGDG_KEY):
        raise SafetyCheckFailed(f"on {host.name}: the PGDG signing key {PGDG_KEY} is missing",
                                hint="Install postgresql-common first (ensure_packages does).")
    host.put_text(PGDG_SOURCES, desired, mode=0o644, owner="root", dry_run=dry_run)
    return Outcome(what, True, dry_run, diff=diff, actions=[f"write {PGDG_SOURCES}"])


def ensure_packages(host: "Host | None", params: "Params", *, dry_run: bool) -> list[Outcome]:
    """postgresql-common, the PGDG repository, postgresql-15, libpq-dev and pgbackrest, installing only what is missing.

    dpkg is asked first, so a host that has every package needs no network at all.
    """
    wanted = packages(params)
    name = host.name if host else "(new server)"
    if host is None:
        return [Outcome(f"packages on {name}", True, dry_run,
                        actions=["apt-get install postgresql-common (distribution repository)"]),
                ensure_pgdg_repo(None, dry_run=dry_run),
                Outcome(f"PostgreSQL packages on {name}", True, dry_run,
                        actions=[f"apt-get install {' '.join(wanted[1:])} (PGDG repository)"])]
    installed = get_installed_packages(host, wanted)
    outcomes: list[Outcome] = []

    def install(pkgs: list[str], origin: str) -> Outcome:
        o = Outcome(f"packages {', '.join(pkgs)} on {name}", True, dry_run,
                    actions=[f"apt-get install {' '.join(pkgs)} ({origin})"])
        if not dry_run:
            host.run(f"{APT_ENV} apt-get update -q", timeout=600)
            host.run(f"{APT_ENV} apt-get install -y -q --no-install-recommends "
                     + " ".join(shlex.quote(p) for p in pkgs), timeout=1800)
        return o

    if "postgresql-common" not in installed:
        outcomes.append(install(["postgresql-common"], "distribution repository, for the PGDG signing key"))
    repo = ensure_pgdg_repo(host, dry_run=dry_run)
    outcomes.append(repo)
    missing = [p for p in wanted[1:] if p not in installed]
    if missing:
        outcomes.append(install(missing, "PGDG repository"))
    else:
        outcomes.append(Outcome(f"packages {', '.join(wanted)} on {name}", False, dry_run,
                                actions=[f"{p} {installed[p]} already installed" for p in wanted]))
    return outcomes
