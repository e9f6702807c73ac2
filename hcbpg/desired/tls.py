"""TLS as every server and client must have it (pure): where the certificate files live, the
server's ssl settings, and the libpq parameters every client hcbpg configures connects with.

Every network connection to PostgreSQL is ``sslmode=verify-full`` against the environment's
private CA: the client checks the certificate chain *and* that the certificate names the
address it dialled (the server's private IP is a SAN), so neither a passive listener on the
private network nor a machine answering at that address can read or take a password.
"""

from __future__ import annotations

import urllib.parse
from typing import TYPE_CHECKING

from hcbpg.pg.conf import SettingValue

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params


def server_tls_dir(params: "Params") -> str:
    # beside the cluster's config (desired.server.config_dir), which imports this module
    return f"/etc/postgresql/{params.postgres.version}/{params.postgres.cluster}/tls"


def server_cert_path(params: "Params") -> str:
    return f"{server_tls_dir(params)}/server.crt"


def server_key_path(params: "Params") -> str:
    return f"{server_tls_dir(params)}/server.key"


def client_ca_path(params: "Params") -> str:
    """Where the CA certificate lies on every machine that connects (servers, app host, jumpbox)."""
    return f"/etc/hcbpg/tls/{params.environment}-postgres-ca.crt"


def ssl_settings(params: "Params") -> dict[str, SettingValue]:
    """The server's TLS settings (part of the connections include file)."""
    return {
        "ssl": True,
        "ssl_cert_file": server_cert_path(params),
        "ssl_key_file": server_key_path(params),
        "ssl_min_protocol_version": params.tls.min_protocol,
    }


def client_tls(params: "Params") -> dict[str, str]:
    """libpq parameters of every client connection: verify-full against the environment's CA."""
    out = {"sslmode": "verify-full", "sslrootcert": client_ca_path(params)}
    if params.tls.require_auth:
        # libpq 16+: the client refuses to send anything unless the server asks for SCRAM
        out["require_auth"] = "scram-sha-256"
    return out


def conninfo_tls(params: "Params") -> str:
    """:func:`client_tls` as ``key=value`` words to append to a conninfo string."""
    return " ".join(f"{k}={v}" for k, v in client_tls(params).items())


def url_tls_query(params: "Params") -> str:
    """:func:`client_tls` as a URL query (``sslmode=verify-full&sslrootcert=…``)."""
    return urllib.parse.urlencode(client_tls(params), safe="/")
