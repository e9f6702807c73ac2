"""Bucardo's service file for the source, on the primary: the source's connection with the app's Heroku
credentials, read by Bucardo's command line and daemon and by its plperlu functions inside the server.
With ``source.method: heroku`` they are what ``heroku pg:credentials:url`` gave when the step connected
(:func:`hcbpg.ops.migration.source.get_source_url`: Heroku rotates them, so every step that starts
Bucardo writes the file again from the CLI's answer); otherwise ``source.url``'s secret.

It holds a password, so it lives on tmpfs (:data:`SERVICE_FILE`, never on disk: gone with a reboot,
written again by the steps that start Bucardo, removed by the clean-up); libpq reads the postgres
user's ``~/.pg_service.conf`` (:data:`SERVICE_LINK`), a symlink to it.  It is ``verify-full``
against ``source.ca_file`` when that is given, and says ``require_auth=scram-sha-256`` when the
primary's libpq is 16 or later (Bucardo's DBD::Pg uses the system's libpq5; an older one refuses a
file that names an option it does not know).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.ops import packages as pkg_ops
from hcbpg.outcome import Outcome
from hcbpg.pg import bucardo as bp
from hcbpg.pg.conninfo import REQUIRE_AUTH_LIBPQ, parse_libpq_major, render_service_file

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, SourceLike

__all__ = ["SERVICE_DIR", "SERVICE_FILE", "SERVICE_LINK", "ensure_service", "get_service_text", "get_present",
           "get_service_in_place", "_write_service"]

SERVICE_DIR = "/run/hcbpg-bucardo"
SERVICE_FILE = f"{SERVICE_DIR}/pg_service.conf"
SERVICE_LINK = "/var/lib/postgresql/.pg_service.conf"


def get_service_text(host: "HostLike", source: "SourceLike") -> str:
    """The service file's text for this primary: its libpq's version decides ``require_auth``."""
    libpq = parse_libpq_major(pkg_ops.get_installed_packages(host, ["libpq5"]).get("libpq5"))
    return render_service_file(dict(source.conn), name=bp.SOURCE_SERVICE, application_name="hcbpg-bucardo",
                               sslrootcert=source.sslrootcert,
                               require_auth="scram-sha-256" if libpq and libpq >= REQUIRE_AUTH_LIBPQ else None)


def get_service_in_place(host: "HostLike", service: str) -> bool:
    """The file on tmpfs holds *service* (compared by its hash: it holds the source's password, never
    read back) and the postgres user's ``~/.pg_service.conf`` is the symlink to it."""
    digest = hashlib.sha256(service.encode()).hexdigest()
    words = host.probe(f"sha256sum {SERVICE_FILE}; readlink {SERVICE_LINK}").stdout.split()
    return words[:1] == [digest] and words[-1:] == [SERVICE_FILE]


def _write_service(host: "HostLike", service: str) -> None:
    """The file on tmpfs (0600 postgres), then the postgres user's libpq path pointed at it."""
    ensure_dir(host, SERVICE_DIR, mode=0o700, owner="postgres")
    host.put_text(SERVICE_FILE, service, mode=0o600, owner="postgres")
    # as postgres, in its own home: the link replaces what was there (an older service file on disk)
    host.run(f"ln -sfn {SERVICE_FILE} {SERVICE_LINK}", sudo_user="postgres", quiet=True)


def get_present(host: "HostLike", path: str) -> bool:
    """*path* exists, or is a symlink (one left dangling counts: the link outlives its tmpfs file)."""
    return host.probe(f"test -e {path} -o -L {path}").ok


def ensure_service(host: "HostLike", source: "SourceLike") -> Outcome:
    """The service file in place (written again after a reboot emptied tmpfs), the link to it."""
    seen = Changes(host)
    service = get_service_text(host, source)
    if not get_service_in_place(host, service):
        _write_service(host, service)
    return seen.outcome(f"Bucardo's service file for the source on {host.name} ({SERVICE_FILE}, tmpfs)",
                        actions=[f"write {SERVICE_FILE} (0600 postgres: "
                                 + ", ".join(f"{k}={v}" for k, v in bp.parse_service_settings(service).items())
                                 + f"), {SERVICE_LINK} a symlink to it"])
