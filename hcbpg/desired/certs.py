"""The environment's private CA and each server's certificate (pure): made, signed and judged here,
written by :mod:`hcbpg.ops.tls`.

The CA's certificate lies beside params (public), its key behind the secret backend (``tls.ca_key``);
each server gets an ECDSA P-256 key and a certificate naming its private IP and its name, renewed
when fewer than ``tls.renew_days`` remain, when its names or its CA changed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hcbpg import secrets as hsecrets
from hcbpg.params import home

if TYPE_CHECKING:  # pragma: no cover
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


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
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
    hsecrets.register(key_pem(key))
    return Ca(cert.public_bytes(serialization.Encoding.PEM).decode(), key)


@dataclass(frozen=True)
class CertSpec:
    """What a certificate must say: its subject's CN (None: an empty subject, as etcd's gateway needs of
    Patroni's client certificate), its IP and DNS names, and what it may be used for (EKU)."""

    cn: str | None
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    server: bool = True
    client: bool = False


def server_cert_spec(server: "Server", *, local: bool = False) -> CertSpec:
    """PostgreSQL's certificate of *server*: its name and private IP, server authentication only; with *local*
    also ``localhost`` and the loopback addresses (under Patroni, which connects to its own PostgreSQL at
    ``localhost`` with the replication role's ``sslmode=verify-full``)."""
    if local:
        return CertSpec(server.name, (server.private_ip, "127.0.0.1", "::1"), (server.name, "localhost"))
    return CertSpec(server.name, (server.private_ip,), (server.name,))


def _local(params: "Params") -> bool:
    return params.replication is not None and params.replication.manager == "patroni"


def render_cert(ca: Ca, spec: CertSpec, *, days: float, now: dt.datetime | None = None) -> tuple[str, str]:
    """(certificate PEM, key PEM) as *spec* says, signed by *ca*, valid *days* from *now*."""
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)] if spec.cn else [])
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if spec.server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if spec.client else [])
    if not usages:
        raise ValueError("a certificate for neither server nor client authentication")
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days)))
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(a)) for a in spec.ips]
    names += [x509.DNSName(d) for d in spec.dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = (builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca.key, hashes.SHA256()))
    pem = hsecrets.register(key_pem(key))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem


def render_server_cert(ca: Ca, params: "Params", server: "Server", *,
                       now: dt.datetime | None = None) -> tuple[str, str]:
    """(certificate PEM, key PEM) for *server*: its private IP and name as SANs, signed by *ca*."""
    return render_cert(ca, server_cert_spec(server, local=_local(params)), days=params.tls.cert_days, now=now)


def plan_cert(current_pem: str | None, ca: Ca | None, spec: CertSpec, *, renew_days: float,
              now: dt.datetime | None = None) -> str | None:
    """Why a certificate that must say *spec* has to be (re)issued, or None when *current_pem* is good."""
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
    if spec.ips or spec.dns:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return "no subject alternative names"
        ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
        dns = set(san.get_values_for_type(x509.DNSName))
        if not set(spec.ips) <= ips or not set(spec.dns) <= dns:
            return f"names {sorted(ips)} do not include {' and '.join([*spec.ips, *spec.dns])}"
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != ([spec.cn] if spec.cn else []):
        return f"its subject names {cns or 'nobody'}, expected {spec.cn or 'an empty subject'}"
    try:
        eku = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        eku = set()
    want = ({ExtendedKeyUsageOID.SERVER_AUTH} if spec.server else set()) | (
        {ExtendedKeyUsageOID.CLIENT_AUTH} if spec.client else set())
    if eku != want:
        return "its key usages differ from what it is for"
    left = cert.not_valid_after_utc - (now or _now())
    if left < dt.timedelta(days=renew_days):
        return f"expires in {left.days} day(s) (renewed {renew_days:g} days before)"
    return None


def plan_server_cert(current_pem: str | None, ca: Ca | None, params: "Params", server: "Server", *,
                     now: dt.datetime | None = None) -> str | None:
    """Why *server*'s certificate must be (re)issued, or None when it is good."""
    return plan_cert(current_pem, ca, server_cert_spec(server, local=_local(params)), renew_days=params.tls.renew_days,
                     now=now)


def cert_days_left(pem: str, *, now: dt.datetime | None = None) -> float:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return (cert.not_valid_after_utc - (now or _now())).total_seconds() / 86400
