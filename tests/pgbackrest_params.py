"""The params the pure pgBackRest tests build (tests/test_pgbackrest_render.py, tests/test_pgbackrest_repo2.py,
tests/test_archive_timeout_unit.py): two servers in the lab's network (``BASE``, which tests/test_render_postgres.py
starts from too), repo1 as the lab's S3 store has it or as production's, secrets as ``env:`` references the tests
plant."""

from __future__ import annotations

from typing import Any

from hcbpg.params import Params, parse_params

BASE: dict[str, Any] = {
    "environment": "lab",
    "hetzner": {"token": "env:HCBPG_TEST_TOKEN", "ssh_public_key_file": "/dev/null"},
    "network": {"ip_range": "10.0.0.0/16", "subnet": "10.0.1.0/24"},
    "servers": [{"name": "server-postgres-1", "private_ip": "10.0.1.5", "role": "primary"},
                {"name": "server-postgres-2", "private_ip": "10.0.1.6", "role": "replica"}],
    "postgres": {"app_role_password": "env:HCBPG_TEST_APP_PW"},
}
#: repo1 in the lab's S3 store (moto under TLS on the bridge)
LAB_PB: dict[str, Any] = {
    "s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_ca_file": "/var/lib/hcbpg-lab/tls/ca.crt",
    "s3_key": "env:HCBPG_TEST_S3_KEY", "s3_key_secret": "env:HCBPG_TEST_S3_SECRET",
    "cipher_pass": "env:HCBPG_TEST_CIPHER", "process_max": 2, "block": False,
}
#: repo1 as production has it (1Password references, block incremental)
PRODUCTION_PB: dict[str, Any] = {
    "s3_key": "op://HCB Engineering/Hetzner Object Storage pgbackrest/access key",
    "s3_key_secret": "op://HCB Engineering/Hetzner Object Storage pgbackrest/secret key",
    "cipher_pass": "op://HCB Engineering/pgBackRest repo cipher/password", "block": True,
}


def params(pb: dict[str, Any], environment: str = "lab") -> Params:
    """BASE with *pb* as its pgbackrest section, in *environment*."""
    return parse_params({**BASE, "environment": environment, "pgbackrest": pb})
