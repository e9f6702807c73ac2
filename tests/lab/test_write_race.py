"""Root's writes into directories the postgres user owns cannot be redirected by that user.

A fresh server gets its cluster (step 02); then, while step 03 (allow connections) writes into
``/etc/postgresql/15/main`` and its ``conf.d`` and ``tls``, a process running as the postgres OS
user replaces every temporary file it sees there with a symlink to a root-owned file.  Whatever
the step does under this attack (it may fail: its temporary files are being replaced), no
root-owned file outside the target may change owner, mode or content.  A second attack plants
``tls`` as a symlink to a root-only directory before the step creates it.
"""

from __future__ import annotations

import secrets
import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.errors import HcbpgError
from hcbpg.lab import create_server_host, destroy_server_host
from hcbpg.params import parse_params
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import install_postgres as install_step

from labparams import lab_params

pytestmark = pytest.mark.lab

NAME = "server-postgres-race"
CONF = "/etc/postgresql/15/main"

#: the attacker, run as postgres: swaps each of our temporary files it sees for a symlink (atomically,
#: by renaming a symlink over it) until the stop file appears or the time is up; prints the count
ATTACKER = r"""
import os, sys, time
dirs, victim, stop, seconds = sys.argv[1].split(":"), sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline, swapped = time.monotonic() + seconds, 0
while time.monotonic() < deadline and not os.path.exists(stop):
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if not n.startswith(".hcbpg.") or os.path.islink(os.path.join(d, n)):
                continue
            link = os.path.join(d, ".x" + n)
            try:
                os.symlink(victim, link)
                os.rename(link, os.path.join(d, n))
                swapped += 1
            except OSError:
                try:
                    os.unlink(link)
                except OSError:
                    pass
print(swapped, flush=True)
"""


@pytest.fixture(scope="module")
def env(lab):
    ip = lab.cfg.address(61)
    create_server_host(NAME, ip, [lab.ssh_key.with_suffix(".pub").read_text()], lab_dir=str(lab.lab_dir))
    params = parse_params(lab_params(lab, [(NAME, ip, "primary")]))
    host = Host.from_params(params, NAME, ip)
    try:
        install_step.install_server(host, params, params.primary)
        yield params, host
    finally:
        host.close()
        destroy_server_host(NAME, lab_dir=str(lab.lab_dir))


def _stat(lab, path: str) -> str:
    cp = lab.exec(NAME, f"stat -c '%U:%G %a' {path} && sha256sum < {path}", check=True)
    return cp.stdout


def _plant_victim(lab, path: str) -> str:
    """A root-owned 0600 file with random content; returns its owner, mode and digest."""
    lab.exec(NAME, f"umask 077 && head -c 64 /dev/urandom > {path} && chown root:root {path}", check=True)
    return _stat(lab, path)


def test_symlink_race_on_temp_files_changes_no_root_file(lab, env):
    params, host = env
    victim = f"/etc/hcbpg-race-victim-{secrets.token_hex(4)}"
    before = _plant_victim(lab, victim)
    stop = f"/tmp/hcbpg-race-stop-{secrets.token_hex(4)}"
    dirs = ":".join((CONF, f"{CONF}/conf.d", f"{CONF}/tls"))
    lab.exec(NAME, "cat > /tmp/hcbpg-race.py", input=ATTACKER, user="postgres", check=True)
    lab.exec(NAME, f"setsid python3 /tmp/hcbpg-race.py {dirs} {victim} {stop} 120 "
                   "> /tmp/hcbpg-race.out 2>&1 < /dev/null &", user="postgres", check=True)
    try:
        time.sleep(0.5)  # the attacker is looping before the first write
        # what the step does under attack does not matter here (its temporary files are being swapped):
        # it either fails or writes; only root's other files count
        for _ in range(3):
            try:
                # fresh certificates and settings each round, so that every round writes
                lab.exec(NAME, f"rm -rf {CONF}/tls {CONF}/conf.d/*.conf", check=True)
                allow_step.allow_connections(host, params, params.primary)
            except HcbpgError as exc:
                print(f"the step failed under attack (allowed): {str(exc)[:300]}")
    finally:
        lab.exec(NAME, f"touch {stop}", user="postgres")
        for _ in range(50):
            out = lab.exec(NAME, "cat /tmp/hcbpg-race.out").stdout.strip()
            if out:
                break
            time.sleep(0.1)
    assert out.isdigit(), f"the attacker did not report: {out!r}"
    assert int(out) > 0, "the attacker never saw a temporary file: the test proved nothing"
    after = _stat(lab, victim)
    assert after == before, f"{victim} changed under the race: {before!r} -> {after!r}"


def test_planted_tls_symlink_does_not_hand_a_root_directory_to_postgres(lab, env):
    params, host = env
    victim_dir = f"/root/hcbpg-race-dir-{secrets.token_hex(4)}"
    lab.exec(NAME, f"install -d -m 0700 -o root -g root {victim_dir} && rm -rf {CONF}/tls", check=True)
    before = lab.exec(NAME, f"stat -c '%U:%G %a' {victim_dir}", check=True).stdout
    lab.exec(NAME, f"ln -s {victim_dir} {CONF}/tls", user="postgres", check=True)
    try:
        allow_step.allow_connections(host, params, params.primary)
    except HcbpgError as exc:
        print(f"the step refused (expected): {str(exc)[:300]}")
    after = lab.exec(NAME, f"stat -c '%U:%G %a' {victim_dir}", check=True).stdout
    assert after == before, f"{victim_dir} changed through the planted symlink: {before!r} -> {after!r}"
