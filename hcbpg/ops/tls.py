"""TLS for PostgreSQL on the servers: the environment's CA (:mod:`hcbpg.desired.certs`) on every client,
each server's certificate and key written over the (pinned) SSH connection, and the checks from a client.

The CA lives on the operator's machine: its certificate beside params (public), its key behind
the secret backend (``tls.ca_key``).  A ``file:`` key that does not exist yet is made on the
first real run, with a new CA.
"""

from __future__ import annotations

import datetime as dt
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.certs import (
    Ca,
    ca_cert_path,
    ca_key_ref,
    cert_days_left,
    key_pem,
    plan_server_cert,
    render_ca,
    render_server_cert,
)
from hcbpg.errors import SecretError
from hcbpg.outcome import Check, Outcome

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server


_CA_CACHE: dict[tuple[str, str], Ca] = {}


def _get_ca(params: "Params", *, create: bool) -> Ca | None:
    """The environment's CA; made (cert beside params, key through the secret backend) when
    *create* and neither exists yet.  None: it does not exist and *create* is false (dry run)."""
    cert_path, ref = ca_cert_path(params), ca_key_ref(params)
    cached = _CA_CACHE.get((str(cert_path), ref))
    if cached is not None:
        return cached
    if ref.startswith("file:"):
        key_missing = not Path(os.path.expanduser(ref[5:])).exists()
    else:
        key_missing = False
        if not cert_path.exists():
            try:
                hsecrets.resolve(ref, key="tls.ca_key")
            except SecretError:
                key_missing = True  # neither half exists: a first run makes the CA
    if not cert_path.exists() and key_missing:
        if not create:
            return None
        ca = render_ca(params.environment)
        hsecrets.store_secret(ref, key_pem(ca.key).strip(), key="tls.ca_key")
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        cert_path.write_text(ca.cert_pem)
        print(f"new PostgreSQL CA for {params.environment}: certificate {cert_path}, key {ref.split(':', 1)[0]}:"
              f" ({ca.fingerprint})")
    else:
        if not cert_path.exists():
            raise SecretError(f"tls.ca_cert: {cert_path} does not exist, but the CA key {ref} does",
                              hint="Restore the CA certificate from version control (it is committed beside params).")
        key = serialization.load_pem_private_key(hsecrets.resolve(ref, key="tls.ca_key").encode(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SecretError("tls.ca_key: not an EC private key")
        ca = Ca(cert_path.read_text(), key)
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if ca.cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
            raise SecretError(f"tls.ca_key does not belong to the CA certificate {cert_path}",
                              hint="Point tls.ca_key and tls.ca_cert at the same CA.")
    _CA_CACHE[(str(cert_path), ref)] = ca
    return ca


def get_server_cert(host: "HostLike", params: "Params") -> str | None:
    """The server's certificate (PEM) as it is on *host*, None when there is none."""
    return host.read_text(desired_tls.server_cert_path(params))


def _ca_for(host: "HostLike", params: "Params") -> tuple[Ca, bool]:
    """The environment's CA, made on the first real run; ``(ca, stand_in)``.

    dry run: a CA that does not exist yet is not made; a throwaway one stands in, so the plan shows
    what would be written (its content is never written anywhere)."""
    ca = _get_ca(params, create=not host.dry_run)  # dry run: the CA's key is a secret the plan must not store
    if ca is None:
        return render_ca(f"{params.environment} (dry run stand-in)"), True
    return ca, False


def get_signing_ca(host: "HostLike", params: "Params") -> tuple[Ca, bool]:
    """The CA that signs certificates for *host* (made on a first real run), and whether it only stands in (dry run)."""
    return _ca_for(host, params)


def ensure_client_ca(host: "HostLike", params: "Params") -> Outcome:
    """The CA certificate where clients on *host* find it (``desired.tls.client_ca_path``)."""
    path = desired_tls.client_ca_path(params)
    ca, _ = _ca_for(host, params)
    seen = Changes(host)
    if host.read_text(path) != ca.cert_pem:
        ensure_dir(host, path.rsplit("/", 1)[0], mode=0o755, owner="root")
        host.put_text(path, ca.cert_pem, mode=0o644)
    return seen.outcome(f"PostgreSQL CA on {host.name}")


def ensure_server_tls(host: "HostLike", params: "Params", server: "Server", *,
                      now: dt.datetime | None = None) -> list[Outcome]:
    """*server*'s certificate and key (issued or renewed when :func:`plan_server_cert` says so, judged at
    *now*), and the CA for its clients (replication, monitoring).  PostgreSQL reads new files on reload."""
    ca, stand_in = _ca_for(host, params)
    out = [ensure_client_ca(host, params)]
    seen = Changes(host)
    what = f"TLS certificate of {server.name}"
    current = get_server_cert(host, params)
    why = plan_server_cert(current, None if stand_in else ca, params, server, now=now)
    if why is None:
        out.append(seen.outcome(what))
        return out
    cert_pem, new_key = render_server_cert(ca, params, server)  # valid from now, whatever *now* the plan used
    ensure_dir(host, desired_tls.server_tls_dir(params), mode=0o750, owner="postgres")  # postgres owns the config dir
    key, crt = desired_tls.server_key_path(params), desired_tls.server_cert_path(params)
    # key first: a reload between the two writes must never pair the new certificate with the old key
    host.put_text(key + ".new", new_key, mode=0o600, owner="postgres")
    host.put_text(crt + ".new", cert_pem, mode=0o644, owner="postgres")
    host.run(f"mv -f {shlex.quote(key)}.new {shlex.quote(key)} && mv -f {shlex.quote(crt)}.new {shlex.quote(crt)}",
             sudo_user="postgres", quiet=True)  # the postgres user's files in its directory: never root there
    renewed = current is not None
    if renewed:
        # a running server keeps the old certificate until it reloads
        ClusterControl.of(host, params).reload(check=False, quiet=True)
    out.append(seen.outcome(what, actions=[f"{'renewed' if renewed else 'issued'}: {why}",
                                           f"write {crt} and {key} (0600)"]))
    return out


def check_server_cert(host: "HostLike", params: "Params", server: "Server", *,
                      now: dt.datetime | None = None) -> Check:
    """The server's certificate: ours, naming it, and how long until it expires (warn inside renew_days)."""
    pem = get_server_cert(host, params)
    if pem is None:
        return Check("TLS certificate", "fail", f"none at {desired_tls.server_cert_path(params)}", server.name)
    days = cert_days_left(pem, now=now)
    cert = x509.load_pem_x509_certificate(pem.encode())
    detail = f"expires {cert.not_valid_after_utc:%Y-%m-%d} ({days:.0f} days)"
    if days <= 0:
        return Check("TLS certificate", "fail", f"expired {cert.not_valid_after_utc:%Y-%m-%d}", server.name)
    if days < params.tls.renew_days:
        return Check("TLS certificate", "warn", f"{detail}: run step 03 to renew it", server.name)
    return Check("TLS certificate", "pass", detail, server.name)


# checks from a client machine ------------------------------------------------------------------------

def _probe_psql(client: "HostLike", params: "Params", server: "Server", tls_words: str, display: str) -> tuple[bool, str]:
    """psql from *client* to *server*'s private IP as the app role with a random wrong password.

    Every probe here expects to be turned away (by TLS, pg_hba or the password), so none carries a
    real password: whatever answers gets a throwaway one.
    """
    pg = params.postgres
    conninfo = (f"host={server.private_ip} port={pg.port} dbname={pg.database} user={pg.app_role} "
                f"connect_timeout=10 {tls_words}")
    wrong = hsecrets.register("wrong-" + os.urandom(12).hex())
    cmd = ("IFS= read -r PGPASSWORD && export PGPASSWORD && exec psql -X -q -A -t "
           f"-d {shlex.quote(conninfo)} -c 'SELECT 1'")
    res = client.run(cmd, stdin=wrong + "\n", check=False, quiet=True, display=display)
    return res.ok, hsecrets.scrub(res.output.strip())


def check_tls_from(client: "HostLike", params: "Params", server: "Server") -> list[Check]:
    """From *client*: verify-full with our CA reaches password authentication (so TLS and the name
    check passed); plaintext is refused by pg_hba; a client trusting another CA is refused by TLS."""
    out = []
    ok, text = _probe_psql(client, params, server, desired_tls.conninfo_tls(params),
                           f"psql verify-full to {server.name} with a throwaway password (TLS handshake check)")
    verified = not ok and "password authentication failed" in text
    out.append(Check.of(f"TLS verify-full from {client.name}", verified,
                        "certificate and name verified; reached password authentication" if verified
                        else (text.splitlines() or ["?"])[-1][:200], server.name))
    ok, text = _probe_psql(client, params, server, "sslmode=disable",
                           f"psql sslmode=disable to {server.name} (must be refused by pg_hba)")
    # the final hostnossl rule: "pg_hba.conf rejects connection ... no encryption"
    refused = not ok and "no encryption" in text and ("rejects connection" in text or "no pg_hba.conf entry" in text)
    out.append(Check.of(f"plaintext refused from {client.name}", refused,
                        "refused by pg_hba.conf (hostnossl ... reject)" if refused
                        else ("CONNECTED IN PLAINTEXT" if ok else (text.splitlines() or ["?"])[-1][:200]),
                        server.name))
    other = render_ca(f"{params.environment}-not-ours").cert_pem
    path = f"/tmp/hcbpg-other-ca-{os.urandom(4).hex()}.crt"
    client.put_text(path, other, mode=0o644)
    try:
        ok, text = _probe_psql(client, params, server, f"sslmode=verify-full sslrootcert={path}",
                               f"psql verify-full to {server.name} trusting another CA (must be refused)")
    finally:
        client.run(f"rm -f {shlex.quote(path)}", check=False, quiet=True)
    refused = not ok and "certificate verify failed" in text
    out.append(Check.of(f"another CA refused from {client.name}", refused,
                        "TLS handshake refused: certificate verify failed" if refused
                        else ("CONNECTED" if ok else (text.splitlines() or ["?"])[-1][:200]), server.name))
    return out
