"""Params for lab tests: the parts every lab test module shares, built from the test's lab.

Each module picks its own server addresses (offsets in the lab subnet) so that modules never
share a server; the rest (API token, SSH key, app host, secrets) is the lab's.
"""

from __future__ import annotations

import os
import re
import secrets as stdlib_secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hcbpg.lab.core import S3_BUCKET


def ensure_secret_file(path) -> None:  # noqa: ANN001 - a Path
    """A 0600 file with a random secret, unless it holds one already."""
    if not path.is_file() or not path.read_text().strip():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (stdlib_secrets.token_urlsafe(24) + "\n").encode())
        finally:
            os.close(fd)


#: Patroni 3.0.4 from scripts/install.sh's venv (Debian 12's 3.0.2 may retake leadership after a network cut heals)
LAB_PATRONI = "/opt/hcbpg-patroni/bin/patroni"


def lab_params(lab, servers: Sequence[tuple[str, str, str]], **sections: Any) -> dict:  # noqa: ANN001
    """A params dict for *servers* ``(name, private_ip, role)`` in *lab*; *sections* add or replace keys."""
    cfg = lab.cfg
    data: dict[str, Any] = {
        "environment": "lab",
        "site": "hcbpg.lab.site:LabSite",
        # the lab's Hetzner API stand-in: a lab test never talks to the real API (step 02 reads server types)
        "hetzner": {"token": f"file:{cfg.secret_path('hcloud-token')}", "api_endpoint": cfg.hcloud_endpoint,
                    "ssh_public_key_file": str(lab.ssh_key.with_suffix(".pub"))},
        "network": {"ip_range": "10.0.0.0/8", "subnet": cfg.subnet},
        "servers": [{"name": n, "private_ip": ip, "role": r, "ssh_host": ip} for n, ip, r in servers],
        "app_host": {"name": "app", "private_ip": cfg.app_ip},
        "ssh": {"user": "root", "key_file": str(lab.ssh_key), "connect_timeout": 5,
                "known_hosts": str(cfg.known_hosts)},
        "postgres": {"app_role_password": f"file:{cfg.secret_path('rails-password')}"},
        "tls": tls_section(lab),
        # the lab key signs the record; `lab up` lists it in this file
        "audit": {"allowed_signers": str(cfg.ssh_dir / "allowed_signers")},
    }
    data.update(sections)
    return data


def tls_section(lab) -> dict:  # noqa: ANN001
    """The lab's PostgreSQL CA (made by the first step that needs it, shared by the test modules)."""
    return {"ca_cert": str(lab.cfg.lab_dir / "tls" / "postgres-ca.crt"),
            "ca_key": f"file:{lab.cfg.secret_path('postgres-ca-key')}"}


#: the shared helpers a lab module calls pgbackrest_section through: the module that owns a repository is the first
#: caller outside them
_HELPER_FILES = frozenset({"labparams.py", "ha_stage.py", "stages.py", "alerting_stage.py"})


def calling_module(skip: int = 1) -> str:
    """The file stem of the first caller outside this module's helpers (a test module, a bench script): whose
    repository a section is.  *skip* frames are this function's own callers inside labparams."""
    frame = sys._getframe(skip + 1)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.name not in _HELPER_FILES and not path.name.startswith("<") and "_pytest" not in path.parts \
                and "pluggy" not in path.parts:
            return path.stem
        frame = frame.f_back  # type: ignore[assignment]
    raise RuntimeError("pgbackrest_section: no calling module outside the lab's helpers")


def default_repo_path_prefix(module: str) -> str:
    """The repository prefix of *module* in the worker's shared S3 store: ``/pgbackrest-<module>`` (its stem,
    ``_`` as ``-``), so that two modules never share a stanza there unless one names the other's prefix."""
    return "/pgbackrest-" + re.sub(r"[^a-z0-9-]", "-", module.lower().replace("_", "-")).strip("-")


def pgbackrest_section(lab, **overrides: Any) -> dict:  # noqa: ANN001
    """pgBackRest against the lab's S3 store (TLS with the lab CA, path-style), secrets from the lab.

    The lab modules of a worker share its S3 store: the repository's prefix is the calling module's own
    (:func:`default_repo_path_prefix` of the first caller outside the helpers, e.g. ``/pgbackrest-test-backups``)
    unless *overrides* name one (``repo_path_prefix=...``): a module that forgets cannot use another's stanza (two
    did in CI: 'stanza hcb_production: different across repos', archiving that never went on)."""
    cfg = lab.cfg
    overrides.setdefault("repo_path_prefix", default_repo_path_prefix(calling_module()))
    return {"s3_bucket": S3_BUCKET, "s3_endpoint": cfg.s3_endpoint.removeprefix("https://"),
            "s3_region": "fsn1", "s3_uri_style": "path", "s3_ca_file": str(cfg.ca_cert),
            "s3_key": f"file:{cfg.secret_path('s3-key')}",
            "s3_key_secret": f"file:{cfg.secret_path('s3-key-secret')}",
            "cipher_pass": f"file:{cfg.secret_path('cipher-pass')}", "process_max": 2, "block": False,
            **overrides}


def replication_section(lab, **overrides: Any) -> dict:  # noqa: ANN001
    """repuser's password from a lab secret file (made here when missing), a small slot WAL cap."""
    ensure_secret_file(lab.cfg.secret_path("repuser-password"))
    return {"password": f"file:{lab.cfg.secret_path('repuser-password')}",
            "max_slot_wal_keep_size": "1GB", "catch_up_timeout_s": 30, **overrides}
