"""The lab's TLS (a lab CA and the certificates it signs) and its S3 store: moto's WSGI
app served by cheroot over TLS, the stand-in for Hetzner Object Storage.

moto's own server closes TLS connections without close_notify, which pgBackRest
reports as "TLS error ... unexpected eof"; cheroot closes them properly.  Run as
``python -m hcbpg.lab.s3 --lab-dir DIR --bind IP --port 9443 --bucket NAME``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hcbpg.lab.core import S3_BUCKET, S3_PORT, LabConfig, atomic_write

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

_DAYS = 3650


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415 - cryptography/moto/cheroot are heavy; loaded by the S3 stand-in only
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def ensure_ca(cfg: LabConfig) -> None:
    """Create the lab CA (``tls/ca.crt`` + ``tls/ca.key``) once."""
    from cryptography import x509  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from cryptography.x509.oid import NameOID  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    if cfg.ca_cert.is_file() and (cfg.tls_dir / "ca.key").is_file():
        return
    cfg.tls_dir.mkdir(parents=True, exist_ok=True)
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hcbpg lab CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    atomic_write(cfg.tls_dir / "ca.key", _pem_key(key), 0o600)
    atomic_write(cfg.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def issue_cert(cfg: LabConfig, name: str, ips: list[str]) -> tuple[bytes, bytes]:
    """A server certificate signed by the lab CA for *ips*; returns (cert PEM, key PEM)."""
    from cryptography import x509  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    ensure_ca(cfg)
    ca_key = cast("CertificateIssuerPrivateKeyTypes",  # ensure_ca wrote an EC key
                  serialization.load_pem_private_key((cfg.tls_dir / "ca.key").read_bytes(), None))
    ca = x509.load_pem_x509_certificate(cfg.ca_cert.read_bytes())
    key = _key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ips[0] if ips else name)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=_DAYS))
            .add_extension(x509.SubjectAlternativeName(
                # pgBackRest 2.45 matches the host only against DNS names (and the CN),
                # so each IP is also written as a DNS name
                [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
                + [x509.DNSName(i) for i in ips] + [x509.DNSName(name)]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def ensure_s3_cert(cfg: LabConfig) -> tuple[Path, Path]:
    """``tls/s3.crt`` + ``tls/s3.key`` with SAN IP:<bridge address>."""
    crt, key = cfg.tls_dir / "s3.crt", cfg.tls_dir / "s3.key"
    if not (crt.is_file() and key.is_file() and _has_dns_san(crt, cfg.gateway_ip)):
        c, k = issue_cert(cfg, "s3.lab", [cfg.gateway_ip])
        atomic_write(key, k, 0o600)
        atomic_write(crt, c, 0o644)
    return crt, key


def _has_dns_san(crt: Path, ip: str) -> bool:
    from cryptography import x509  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return ip in san.get_values_for_type(x509.DNSName)


def s3_argv(cfg: LabConfig) -> list[str]:
    return [sys.executable, "-m", "hcbpg.lab.s3", "--lab-dir", str(cfg.lab_dir),
            "--bind", cfg.gateway_ip, "--port", str(S3_PORT), "--bucket", S3_BUCKET]


def serialize_conditional_writes(app: Callable[..., Any]) -> Callable[..., Any]:
    """moto checks ``If-None-Match`` / ``If-Match`` and then writes, in two moves: with 16 threads, two
    racing creates of one key could both pass.  S3 decides them atomically; so does the lab, by running
    conditional writes one at a time (what the environment lock relies on)."""
    lock = threading.Lock()

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE") and (
                "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wsgi_app


def serve(lab_dir: str, bind: str, port: int, bucket: str) -> None:
    """Serve S3 over TLS until SIGTERM."""
    from cheroot import wsgi  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from cheroot.ssl.builtin import BuiltinSSLAdapter  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from moto.core import DEFAULT_ACCOUNT_ID  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from moto.s3.models import s3_backends  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only

    cfg = LabConfig.load(lab_dir)
    crt, key = ensure_s3_cert(cfg)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(bucket, "us-east-1")
    app = serialize_conditional_writes(DomainDispatcherApplication(create_backend_app))
    server = wsgi.Server((bind, port), app, numthreads=16, request_queue_size=64,
                         server_name="hcbpg-lab-s3")
    server.ssl_adapter = BuiltinSSLAdapter(str(crt), str(key))

    def stop(*_: object) -> None:
        threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.safe_start()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hcbpg.lab.s3", description=__doc__)
    ap.add_argument("--lab-dir", required=True)
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, default=9443)
    ap.add_argument("--bucket", default="hcb-production-postgres")
    a = ap.parse_args(argv)
    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    serve(a.lab_dir, a.bind, a.port, a.bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
