"""TLS for PostgreSQL: the environment's private CA, each server's certificate, the CA on every client.

The CA lives on the operator's machine: its certificate beside params (public), its key behind
the secret backend (``tls.ca_key``).  A ``file:`` key that does not exist yet is made on the
first real run, with a new CA.  Each server gets an ECDSA P-256 key and a certificate naming
its private IP and its name, signed here and written over the (pinned) SSH connection; it is
renewed when fewer than ``tls.renew_days`` remain, when its names or its CA changed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hcbpg import secrets as hsecrets
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired import tls as desired_tls
from hcbpg.errors import SecretError
from hcbpg.outcome import Check, Outcome
from hcbpg.params import home

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params, Server

#: a new CA is valid this long (its certificate is replaced by hand, with every server's)
CA_DAYS = 3650


@dataclass(frozen=True)
class Ca:
    """The environment's CA: certificate (PEM) and key (never printed)."""

    cert_pem: str
    key: ec.EllipticCurvePrivateKey

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + self.cert.fingerprint(hashes.SHA256()).hex(":")


def ca_cert_path(params: "Params") -> Path:
    if params.tls.ca_cert:
        path = Path(os.path.expanduser(params.tls.ca_cert))
        return path if path.is_absolute() else home() / path  # relative: to HCBPG_HOME, like params/
    return home() / "params" / f"{params.environment}.postgres-ca.crt"


def ca_key_ref(params: "Params") -> str:
    if params.tls.ca_key:
        return params.tls.ca_key
    state = Path(os.environ.get("HCBPG_STATE_DIR") or (home() / ".hcbpg"))
    return f"file:{state}/tls/{params.environment}-postgres-ca.key"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def render_ca(environment: str, *, now: dt.datetime | None = None) -> Ca:
    """A new CA (key registered with the scrubber)."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hcbpg"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"hcbpg PostgreSQL CA ({environment})")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    hsecrets.register(_key_pem(key))
    return Ca(cert.public_bytes(serialization.Encoding.PEM).decode(), key)


_CA_CACHE: dict[tuple[str, str], Ca] = {}


def get_ca(params: "Params", *, create: bool) -> Ca | None:
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
        hsecrets.store_secret(ref, _key_pem(ca.key).strip(), key="tls.ca_key")
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


def render_server_cert(ca: Ca, params: "Params", server: "Server", *,
                       now: dt.datetime | None = None) -> tuple[str, str]:
    """(certificate PEM, key PEM) for *server*: its private IP and name as SANs, signed by *ca*."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server.name)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=params.tls.cert_days))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(server.private_ip)),
                                                        x509.DNSName(server.name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    key_pem = hsecrets.register(_key_pem(key))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def plan_server_cert(current_pem: str | None, ca: Ca | None, params: "Params", server: "Server", *,
                     now: dt.datetime | None = None) -> str | None:
    """Why *server*'s certificate must be (re)issued, or None when it is good."""
    if current_pem is None:
        return "no certificate yet"
    if ca is None:
        return "a new CA will be made"
    try:
        cert = x509.load_pem_x509_certificate(current_pem.encode())
    except ValueError:
        return "the certificate on the server cannot be read"
    if cert.issuer != ca.cert.subject:
        return "issued by another CA"
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends: not ours
        return "not signed by this environment's CA"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subject alternative names"
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    if server.private_ip not in ips or server.name not in san.get_values_for_type(x509.DNSName):
        return f"names {sorted(ips)} do not include {server.private_ip} and {server.name}"
    left = cert.not_valid_after_utc - (now or _now())
    if left < dt.timedelta(days=params.tls.renew_days):
        return f"expires in {left.days} day(s) (renewed {params.tls.renew_days} days before)"
    return None


def get_server_cert(host: "HostLike", params: "Params") -> str | None:
    return host.read_text(desired_tls.server_cert_path(params))


def ensure_client_ca(host: "HostLike | None", params: "Params", *, dry_run: bool) -> Outcome:
    """The CA certificate where clients on *host* find it (``desired.tls.client_ca_path``)."""
    path = desired_tls.client_ca_path(params)
    ca = get_ca(params, create=not dry_run)
    name = host.name if host is not None else "?"
    current = host.read_text(path) if host is not None else None
    if ca is not None and current == ca.cert_pem:
        return Outcome(f"PostgreSQL CA on {name}", changed=False, dry_run=dry_run)
    if host is not None and ca is not None and not dry_run:
        host.run(f"mkdir -p -m 755 {shlex.quote(path.rsplit('/', 1)[0])}", quiet=True)
        host.put_text(path, ca.cert_pem, mode=0o644)
    return Outcome(f"PostgreSQL CA on {name}", changed=True, dry_run=dry_run, actions=[f"write {path}"])


def ensure_server_tls(host: "HostLike | None", params: "Params", server: "Server", *, dry_run: bool,
                      now: dt.datetime | None = None) -> list[Outcome]:
    """*server*'s certificate and key (issued or renewed when :func:`plan_server_cert` says so, judged at
    *now*), and the CA for its clients (replication, monitoring).  PostgreSQL reads new files on reload."""
    ca = get_ca(params, create=not dry_run)
    out = [ensure_client_ca(host, params, dry_run=dry_run)]
    current = get_server_cert(host, params) if host is not None else None
    why = plan_server_cert(current, ca, params, server, now=now)
    what = f"TLS certificate of {server.name}"
    if why is None:
        out.append(Outcome(what, changed=False, dry_run=dry_run))
        return out
    if dry_run or host is None or ca is None:
        out.append(Outcome(what, changed=True, dry_run=dry_run, actions=[f"issue a new certificate: {why}"]))
        return out
    cert_pem, key_pem = render_server_cert(ca, params, server)  # valid from now, whatever *now* the plan used
    tls_dir = desired_tls.server_tls_dir(params)
    ensure_dir(host, tls_dir, mode=0o750, owner="postgres")  # postgres owns the config dir: no symlink followed
    # key first: a reload between the two writes must never pair the new certificate with the old key
    host.put_text(desired_tls.server_key_path(params) + ".new", key_pem, mode=0o600, owner="postgres")
    host.put_text(desired_tls.server_cert_path(params) + ".new", cert_pem, mode=0o644, owner="postgres")
    key, crt = desired_tls.server_key_path(params), desired_tls.server_cert_path(params)
    host.run(f"mv -f {shlex.quote(key)}.new {shlex.quote(key)} && mv -f {shlex.quote(crt)}.new {shlex.quote(crt)}",
             sudo_user="postgres", quiet=True)  # the postgres user's files in its directory: never root there
    renewed = current is not None
    if renewed:
        # a running server keeps the old certificate until it reloads
        host.run(f"pg_ctlcluster {params.postgres.version} {shlex.quote(params.postgres.cluster)} reload",
                 check=False, quiet=True)
    out.append(Outcome(what, changed=True, actions=[f"{'renewed' if renewed else 'issued'}: {why}",
                                                    f"write {crt} and {key} (0600)"]))
    return out


def cert_days_left(pem: str, *, now: dt.datetime | None = None) -> float:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return (cert.not_valid_after_utc - (now or _now())).total_seconds() / 86400


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
