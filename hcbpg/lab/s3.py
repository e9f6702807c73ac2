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
import json
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


def ensure_s3_cert(cfg: LabConfig, ip: str | None = None) -> tuple[Path, Path]:
    """``tls/s3.crt`` + ``tls/s3.key`` with SAN IP:<bridge address>; for another address *ip* (the second store,
    "another provider"), ``tls/s3-<ip>.crt`` + ``.key`` with SAN IP:<ip>."""
    ip = ip or cfg.gateway_ip
    stem = "s3" if ip == cfg.gateway_ip else f"s3-{ip}"
    crt, key = cfg.tls_dir / f"{stem}.crt", cfg.tls_dir / f"{stem}.key"
    if not (crt.is_file() and key.is_file() and _has_dns_san(crt, ip)):
        c, k = issue_cert(cfg, "s3.lab", [ip])
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


# per-key IAM policies: the lab's stand-in for the provider's ---------------------------------------------------

#: in the lab directory: ``{"keys": {access key id: {"policy": IAM policy JSON}}}``; a key not listed is not limited.
#: Both stores (``s3`` and the second provider's ``s3b``) run with the same ``--lab-dir`` and so enforce the same
#: file: a key registered for repo2's bucket is limited on the second store (tests/lab/test_repo2_history.py)
IAM_FILE = "s3-iam.json"
_IAM_LOCK = threading.Lock()


def register_key(cfg: LabConfig, key_id: str, policy: dict[str, Any]) -> None:
    """Limit the lab S3 key *key_id* to *policy* (an IAM policy document, as the provider would apply it)."""
    path = cfg.lab_dir / IAM_FILE
    with _IAM_LOCK:
        data = json.loads(path.read_text()) if path.is_file() else {"keys": {}}
        data["keys"][key_id] = {"policy": policy}
        atomic_write(path, json.dumps(data, indent=2).encode(), 0o600)


def _q(query: dict[str, list[str]], name: str) -> bool:
    return name in query


def s3_actions(method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes = b"") -> list[tuple[str, str]]:
    """The IAM actions and resources (``s3:Action``, ``arn:aws:s3:::bucket[/key]``) a path-style S3 request needs,
    as AWS names them (a multi-object delete needs DeleteObject, or DeleteObjectVersion, per object)."""
    bucket, _, key = path.lstrip("/").partition("/")
    b_arn = f"arn:aws:s3:::{bucket}"
    o_arn = f"{b_arn}/{key}"
    bypass = headers.get("x-amz-bypass-governance-retention", "").lower() == "true"
    out: list[tuple[str, str]] = []
    if not bucket:
        return [("s3:ListAllMyBuckets", "*")]
    if not key:
        sub = {"GET": [("versioning", "GetBucketVersioning"), ("versions", "ListBucketVersions"),
                       ("object-lock", "GetBucketObjectLockConfiguration"), ("lifecycle", "GetLifecycleConfiguration"),
                       ("policy", "GetBucketPolicy"), ("location", "GetBucketLocation"),
                       ("uploads", "ListBucketMultipartUploads")],
               "PUT": [("versioning", "PutBucketVersioning"), ("policy", "PutBucketPolicy"),
                       ("lifecycle", "PutLifecycleConfiguration"), ("object-lock", "PutBucketObjectLockConfiguration")],
               "DELETE": [("policy", "DeleteBucketPolicy"), ("lifecycle", "PutLifecycleConfiguration")]}
        if method == "POST" and _q(query, "delete"):
            from xml.etree import ElementTree  # noqa: PLC0415 - only for multi-object deletes

            root = ElementTree.fromstring(body or b"<Delete/>")  # noqa: S314 - the lab's own clients' requests
            for obj in root.iter():
                if obj.tag.rsplit("}", 1)[-1] != "Object":
                    continue
                fields = {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in obj}
                action = "s3:DeleteObjectVersion" if fields.get("VersionId") else "s3:DeleteObject"
                out.append((action, f"{b_arn}/{fields.get('Key', '')}"))
                if bypass:
                    out.append(("s3:BypassGovernanceRetention", f"{b_arn}/{fields.get('Key', '')}"))
            return out or [("s3:DeleteObject", f"{b_arn}/")]
        for name, action in sub.get(method, []):
            if _q(query, name):
                return [(f"s3:{action}", b_arn)]
        default = {"GET": "ListBucket", "HEAD": "ListBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}
        return [(f"s3:{default.get(method, 'ListBucket')}", b_arn)]
    version = _q(query, "versionId")
    if method in ("GET", "HEAD"):
        for name, action in (("retention", "GetObjectRetention"), ("legal-hold", "GetObjectLegalHold"),
                             ("tagging", "GetObjectTagging"), ("acl", "GetObjectAcl")):
            if _q(query, name):
                return [(f"s3:{action}", o_arn)]
        return [("s3:GetObjectVersion" if version else "s3:GetObject", o_arn)]
    if method == "PUT":
        for name, action in (("retention", "PutObjectRetention"), ("legal-hold", "PutObjectLegalHold"),
                             ("tagging", "PutObjectTagging"), ("acl", "PutObjectAcl")):
            if _q(query, name):
                out.append((f"s3:{action}", o_arn))
                break
        else:
            out.append(("s3:PutObject", o_arn))
            src = headers.get("x-amz-copy-source", "")
            if src:
                from urllib.parse import unquote  # noqa: PLC0415 - only for copies

                src_path, _, src_query = unquote(src).lstrip("/").partition("?versionId=")
                out.append(("s3:GetObjectVersion" if src_query else "s3:GetObject", f"arn:aws:s3:::{src_path}"))
            if headers.get("x-amz-object-lock-mode") or headers.get("x-amz-object-lock-retain-until-date"):
                out.append(("s3:PutObjectRetention", o_arn))
        if bypass:
            out.append(("s3:BypassGovernanceRetention", o_arn))
        return out
    if method == "POST":
        return [("s3:PutObject", o_arn)]  # multipart upload: initiate and complete
    if method == "DELETE":
        if _q(query, "uploadId"):
            return [("s3:AbortMultipartUpload", o_arn)]
        out.append(("s3:DeleteObjectVersion" if version else "s3:DeleteObject", o_arn))
        if bypass:
            out.append(("s3:BypassGovernanceRetention", o_arn))
        return out
    return [(f"s3:{method}", o_arn)]


def policy_allows(policy: dict[str, Any], action: str, resource: str) -> bool:
    """IAM's evaluation for one action on one resource: an explicit Deny wins, then an Allow is needed."""
    import fnmatch  # noqa: PLC0415 - the stand-in only

    def listed(value: Any) -> list[str]:
        return [value] if isinstance(value, str) else list(value or [])

    def matches(st: dict[str, Any]) -> bool:
        acts = listed(st.get("Action"))
        res = listed(st.get("Resource"))
        return (any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in acts)
                and any(r == "*" or fnmatch.fnmatchcase(resource, r) for r in res))

    raw = policy.get("Statement")
    statements: list[dict[str, Any]] = [raw] if isinstance(raw, dict) else list(raw or [])
    if any(st.get("Effect") == "Deny" and matches(st) for st in statements):
        return False
    return any(st.get("Effect") == "Allow" and matches(st) for st in statements)


def _access_key(environ: dict[str, Any]) -> str | None:
    import re  # noqa: PLC0415 - the stand-in only
    from urllib.parse import parse_qs  # noqa: PLC0415 - the stand-in only

    m = re.search(r"Credential=([^/,\s]+)/", environ.get("HTTP_AUTHORIZATION", ""))
    if m:
        return m.group(1)
    cred = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
    return cred.split("/", 1)[0] or None


def enforce_iam(app: Callable[..., Any], policy_file: Path) -> Callable[..., Any]:
    """Each request signed by a key listed in *policy_file* passes only when that key's IAM policy allows every
    action it needs (:func:`s3_actions`); a 403 AccessDenied otherwise, as S3 answers.

    moto 5.2.6 with its own IAM on (``INITIAL_NO_AUTH_ACTION_COUNT``) checks signatures and some actions but let
    a key whose policy denies s3:DeleteObjectVersion and s3:PutLifecycleConfiguration delete versions (DELETE
    ?versionId, and POST ?delete with VersionIds) and replace the lifecycle (measured: README, Backups): this
    stand-in applies the same policy JSON the provider gets, by action name.  It does not check signatures
    (neither does moto without its IAM on): the lab trusts who claims a key."""
    import io  # noqa: PLC0415 - the stand-in only
    from urllib.parse import parse_qs  # noqa: PLC0415 - the stand-in only

    cache: dict[str, Any] = {"mtime": None, "keys": {}}

    def keys() -> dict[str, Any]:
        try:
            mtime = policy_file.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != cache["mtime"]:
            cache["keys"] = json.loads(policy_file.read_text()).get("keys", {})
            cache["mtime"] = mtime
        return cast("dict[str, Any]", cache["keys"])

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        key_id = _access_key(environ)
        entry = keys().get(key_id or "")
        if entry is None:
            return app(environ, start_response)
        method = environ.get("REQUEST_METHOD", "GET")
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        body = b""
        if method == "POST" and "delete" in query:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        needed = s3_actions(method, environ.get("PATH_INFO", "/"), query, headers, body)
        denied = [(a, r) for a, r in needed if not policy_allows(entry["policy"], a, r)]
        if not denied:
            return app(environ, start_response)
        action, resource = denied[0]
        msg = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>User: {key_id} "
               f"is not authorized to perform: {action} on resource: {resource}</Message></Error>").encode()
        start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(msg)))])
        return [msg]

    return wsgi_app


def serve(lab_dir: str, bind: str, port: int, bucket: str) -> None:
    """Serve S3 over TLS until SIGTERM."""
    from cheroot import wsgi  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from cheroot.ssl.builtin import BuiltinSSLAdapter  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from moto.core import DEFAULT_ACCOUNT_ID  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from moto.s3.models import s3_backends  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only
    from moto.server import DomainDispatcherApplication, create_backend_app  # noqa: PLC0415 - heavy, loaded by the S3 stand-in only

    cfg = LabConfig.load(lab_dir)
    crt, key = ensure_s3_cert(cfg, bind)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(bucket, "us-east-1")
    app = serialize_conditional_writes(enforce_iam(DomainDispatcherApplication(create_backend_app),
                                                   cfg.lab_dir / IAM_FILE))
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
