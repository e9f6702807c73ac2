"""The packages a server needs and where they come from (pure): the PGDG apt repository's sources
file, and what ``dpkg-query`` says is installed."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from hcbpg.pg.conf import MANAGED_HEADER

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: the PGDG signing key, shipped by postgresql-common
PGDG_KEY = "/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc"
PGDG_SOURCES = "/etc/apt/sources.list.d/pgdg.sources"
PGDG_URI = "https://apt.postgresql.org/pub/repos/apt"
APT_ENV = "DEBIAN_FRONTEND=noninteractive"
#: ``dpkg-query -W -f`` format that :func:`parse_dpkg_query` reads
DPKG_FORMAT = "${Package}\\t${db:Status-Abbrev}\\t${Version}\\n"

#: the distribution codename of the Hetzner images params may name (``hetzner.image``)
IMAGE_CODENAMES = {"ubuntu-22.04": "jammy", "ubuntu-24.04": "noble", "debian-11": "bullseye",
                   "debian-12": "bookworm", "debian-13": "trixie"}


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


def parse_os_codename(os_release: str) -> str | None:
    """VERSION_CODENAME from the text of /etc/os-release (bookworm, noble, ...), None when absent."""
    for line in os_release.splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"') or None
    return None


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
