"""SCRAM-SHA-256 verifiers as PostgreSQL stores them (RFC 5802/7677), SASLprep of the password
(RFC 4013, as community.postgresql's ``saslprep``), and the legacy md5 check.  Pure."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as _stdlib_secrets
import stringprep
import unicodedata

from hcbpg.secrets import register

SCRAM_ITERATIONS = 4096


def saslprep(password: str) -> str:
    """SASLprep (RFC 4013) as PostgreSQL applies it; a password it rejects is used as it is, like PostgreSQL does."""
    if password.isascii():
        return password
    mapped = "".join(" " if stringprep.in_table_c12(ch) else ch for ch in password
                     if not stringprep.in_table_b1(ch))
    norm = unicodedata.normalize("NFKC", mapped)
    for ch in norm:
        if (stringprep.in_table_c12(ch) or stringprep.in_table_c21_c22(ch) or stringprep.in_table_c3(ch)
                or stringprep.in_table_c4(ch) or stringprep.in_table_c5(ch) or stringprep.in_table_c6(ch)
                or stringprep.in_table_c7(ch) or stringprep.in_table_c8(ch) or stringprep.in_table_c9(ch)
                or stringprep.in_table_a1(ch)):
            return password
    return norm


def _scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, registered with the scrubber."""
    salt = salt if salt is not None else _stdlib_secrets.token_bytes(16)
    stored, server = _scram_keys(password, salt, iterations)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return register(f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}")


def scram_matches(password: str, verifier: str) -> bool:
    """True when *verifier* (as in pg_authid.rolpassword) was made from *password*."""
    try:
        mech, rest = verifier.split("$", 1)
        iter_salt, keys = rest.split("$", 1)
        iterations, salt_b64 = iter_salt.split(":", 1)
        stored_b64, server_b64 = keys.split(":", 1)
        if mech != "SCRAM-SHA-256":
            return False
        stored, server = _scram_keys(password, base64.b64decode(salt_b64), int(iterations))
    except (ValueError, TypeError):
        return False
    return (hmac.compare_digest(stored, base64.b64decode(stored_b64))
            and hmac.compare_digest(server, base64.b64decode(server_b64)))


def md5_matches(password: str, role: str, verifier: str) -> bool:
    """True when an old ``md5...`` verifier was made from *password* for *role*."""
    expected = "md5" + hashlib.md5((password + role).encode()).hexdigest()  # noqa: S324 - PostgreSQL's format
    return hmac.compare_digest(expected, verifier)
