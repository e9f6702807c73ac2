"""The rehearsal lab: Heroku-like source, app host and Hetzner-like servers as network
namespaces on one Linux machine (root), with an S3 store and a Hetzner Cloud API stand-in.

Python API (all need root on Linux; errors are :class:`hcbpg.errors.LabError`)::

    from hcbpg.lab import Lab
    lab = Lab(lab_dir=None)              # None: $HCBPG_LAB_DIR or /var/lib/hcbpg-lab
    lab.up(source_rows=None, source_mb=None, hcloud=None) -> dict   # idempotent; = status()
    lab.status() -> dict                 # `hcbpg lab status --json`
    lab.exec(host, "shell cmd" | [argv], input=None, check=False, timeout=600, user=None)
        -> subprocess.CompletedProcess[str]       # in the host's namespaces + chroot
    lab.outsider_exec("cmd" | [argv], ...) -> CompletedProcess
        # on the machine's filesystem, from status()["outsider"]["ip"] (10.0.2.2 by
        # default): outside the lab subnet, routed to it through the lab router (10.0.1.254)
    lab.down(purge=False) -> list[str]   # removes namespaces, links, processes, host dirs;
                                         # purge also removes ssh/, secrets/, tls/
    lab.leftovers() -> list[str]         # what of the lab still exists (empty after down)
    lab.ip(host), lab.secret(name), lab.ssh_key, lab.lab_dir, lab.cfg (LabConfig)

    # hooks for the Hetzner Cloud API stand-in (safe from any process: the lab lock)
    create_server_host(name, private_ip, authorized_keys, lab_dir=None) -> dict
        # {"name", "role": "server", "ip", "public_ip" (= ip: no public network), "netns"}
    destroy_server_host(name, lab_dir=None) -> None

Layout of the lab dir: ``lab.json`` (bridge/subnets), ``state.json``, ``ssh/id_ed25519``
(+ ``.pub``, ``known_hosts``), ``secrets/`` (0700; 0600 files hcloud-token,
rails-password, repuser-password, s3-key, s3-key-secret, cipher-pass, source-password, source-url and
``secrets.env`` with all of them), ``tls/ca.crt`` (lab CA; S3 cert has SAN IP:10.0.1.1),
``hosts/<name>/`` (overlay layers), ``logs/``.

Environment (read only when a lab dir is first brought up; then kept in lab.json):
``HCBPG_LAB_DIR``, ``HCBPG_LAB_BRIDGE`` (default hcbpg0), ``HCBPG_LAB_SUBNET``
(10.0.1.0/24), ``HCBPG_LAB_OUTSIDER_SUBNET`` (10.0.2.0/24).

Hosts: each is a network namespace (``<bridge>-<name>``, interface ``ens10``) with its own
hostname, an overlay of / (writes stay in ``hosts/<name>/upper``), tmpfs /run, /tmp,
/dev/shm, its own PID/IPC namespaces, sshd for root with the lab key, and no machine
PostgreSQL clusters or SSH host keys.  /proc/sys (but net.*) and /sys are read-only:
kernel-wide settings stay the machine's.  Hosts route the outsider subnet via the lab
router (.254) and nothing else: no traffic leaves the lab.

Fixed hosts: ``app`` at .10 and ``source`` at .20 (see :mod:`hcbpg.lab.source` for the
database and its sentinel user 1803).  Servers come from the API stand-in.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Lab", "LabConfig", "create_server_host", "destroy_server_host", "lab_unavailable_reason"]

_WHERE = {"Lab": "lifecycle", "LabConfig": "core", "lab_unavailable_reason": "core",
          "create_server_host": "hosts", "destroy_server_host": "hosts"}


def __getattr__(name: str) -> Any:
    # lazy, so that `python -m hcbpg.lab.s3` does not import itself twice
    if name in _WHERE:
        return getattr(importlib.import_module(f"hcbpg.lab.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'hcbpg.lab' has no attribute {name!r}")
