"""`hcbpg status` in an incident (issue 27, item 4): with its servers hung or refusing, it answers within the SSH
connect timeout plus 2 s (beyond the CLI's own start, measured just before), probing the servers at once, with
one plain line per unreachable server (not paramiko's words, not one FAIL line per item), and ``--json`` says
the same.

No lab: each run is in an empty network namespace of its own (``unshare --net``), where the servers' addresses of
the committed production params are put on ``lo``.  A "hung" server is a listener on port 22 that accepts and never
sends SSH's banner; a "refusing" server has nothing listening.  Nothing leaves this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters import hostkeys
from hcbpg.params import load_params

from nbutil import REPO, manual_production

TIMEOUT = 3.0  # --connect-timeout (s): the bound is this plus 2 s

# runs inside the namespace: the addresses on lo, a listener per hung server (accepts, never answers), then
# `hcbpg status` timed from its start to its exit
_DRIVER = textwrap.dedent("""
    import json, socket, subprocess, sys, threading, time
    hung, refusing, sshd, argv = json.loads(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for a in hung + refusing + [a for a, _ in sshd]:
        subprocess.run(["ip", "addr", "add", a + "/32", "dev", "lo"], check=True)
    held = []
    def hold(sock):
        while True:
            held.append(sock.accept())  # accepted, and never a byte sent
    def listener(a):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((a, 22))
        s.listen(16)
        return s
    for a in hung:
        threading.Thread(target=hold, args=(listener(a),), daemon=True).start()
    if sshd:  # an SSH server that shows its host key and refuses every login
        import paramiko
        class Refuse(paramiko.ServerInterface):
            def get_allowed_auths(self, username):
                return "publickey"
            def check_auth_publickey(self, username, key):
                return paramiko.AUTH_FAILED
        def session(conn, key):
            t = paramiko.Transport(conn)
            t.add_server_key(key)
            held.append(t)
            try:
                t.start_server(server=Refuse())
            except Exception:
                pass
        def serve(sock, key):
            while True:
                conn, _ = sock.accept()
                threading.Thread(target=session, args=(conn, key), daemon=True).start()
        for a, keyfile in sshd:
            key = paramiko.Ed25519Key(filename=keyfile)
            threading.Thread(target=serve, args=(listener(a), key), daemon=True).start()
    # the bound is on the answer, not on starting Python: the CLI's own start (hcbpg --version), measured here
    # just before, is taken off (on a loaded machine a cold start alone took seconds)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "hcbpg.cli", "--version"], capture_output=True, timeout=120)
    base = time.monotonic() - t0
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "hcbpg.cli", *argv], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0 - base
    print(json.dumps({"rc": p.returncode, "out": p.stdout, "err": p.stderr, "took": took, "accepted": len(held)}))
""")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


namespace = pytest.mark.skipif(not _unshare_works(), reason="needs root, ip and unshare --net")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A home with the committed production params and the operator's own SSH key; the environment to run in; the
    servers' addresses by name."""
    tmp = tmp_path_factory.mktemp("status")
    home, user = tmp / "home", tmp / "user"
    (home / "params").mkdir(parents=True)
    # the manual replication's servers reached directly (status through the jumpbox: tests/test_ssh_callers_unit.py)
    (home / "params" / "production.yaml").write_text(yaml.safe_dump(manual_production(), sort_keys=False))
    (user / ".ssh").mkdir(parents=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user / ".ssh" / "id_ed25519")],
                   check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OP_", "HCBPG_"))}
    env.update(HOME=str(user), HCBPG_HOME=str(home), PYTHONPATH=str(REPO))
    params = load_params("production", home)
    addresses = {s.name: s.ssh_host or s.private_ip for s in params.servers}
    assert len(addresses) == 2 and params.ssh.port == 22, addresses
    return home, env, addresses


def _status(fresh, hung: list[str], refusing: list[str], *extra: str, sshd: dict[str, Path] | None = None) -> dict:
    """`hcbpg status production` in a namespace of its own: the *hung* servers accept and never answer, the
    *refusing* ones have nothing listening, the *sshd* ones are SSH servers with the host key in the file given
    that refuse every login."""
    _, env, addresses = fresh
    argv = ["status", "production", "--connect-timeout", f"{TIMEOUT:g}", *extra]
    servers = [[addresses[n], str(key)] for n, key in (sshd or {}).items()]
    proc = subprocess.run(["unshare", "--net", "--", sys.executable, "-c", _DRIVER,
                           json.dumps([[addresses[n] for n in hung], [addresses[n] for n in refusing], servers,
                                       argv])],
                          capture_output=True, text=True, env=env, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _fail_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("FAIL")]


@namespace
def test_two_hung_servers_answer_within_the_connect_timeout_with_one_plain_line_each(fresh):
    r = _status(fresh, ["server-postgres-1", "server-postgres-2"], [])
    print(f"took {r['took']:.2f} s\n{r['out']}{r['err']}")
    assert r["accepted"] == 2, "both servers were probed (each connection accepted, then left without a banner)"
    assert r["took"] < TIMEOUT + 2, f"status took {r['took']:.2f} s with every server hung (bound {TIMEOUT + 2:g} s)"
    assert r["rc"] == 1 and r["err"] == "", r["err"]
    assert _fail_lines(r["out"]) == [
        "FAIL  server-postgres-1: unreachable: no SSH answer in 3 s",
        "FAIL  server-postgres-2: unreachable: no SSH answer in 3 s",
        "FAIL: 2 item(s) failed: server-postgres-1: unreachable; server-postgres-2: unreachable"], r["out"]
    assert "banner" not in r["out"] and "SSHException" not in r["out"], r["out"]
    # the table keeps one row per server, saying unreachable
    rows = {line.split()[0]: line.split() for line in r["out"].splitlines() if line.startswith("server-")}
    assert {n: row[2] for n, row in rows.items()} == {"server-postgres-1": "unreachable",
                                                       "server-postgres-2": "unreachable"}, r["out"]


@namespace
def test_json_says_the_same_within_the_same_bound(fresh):
    r = _status(fresh, ["server-postgres-1", "server-postgres-2"], [], "--json")
    assert r["took"] < TIMEOUT + 2, f"status --json took {r['took']:.2f} s (bound {TIMEOUT + 2:g} s)"
    doc = json.loads(r["out"])
    assert doc["exit_code"] == 1 == r["rc"]
    assert doc["checks"] == [
        {"server": "server-postgres-1", "item": "unreachable", "status": "fail", "detail": "no SSH answer in 3 s"},
        {"server": "server-postgres-2", "item": "unreachable", "status": "fail", "detail": "no SSH answer in 3 s"}]
    assert doc["unreachable"] == {"server-postgres-1": "no SSH answer in 3 s",
                                  "server-postgres-2": "no SSH answer in 3 s"}
    assert [(m["server"], m["reachable"], m["error"]) for m in doc["measurements"]] == [
        ("server-postgres-1", False, "unreachable: no SSH answer in 3 s"),
        ("server-postgres-2", False, "unreachable: no SSH answer in 3 s")]


@namespace
def test_a_hung_server_and_a_refusing_one_each_get_their_own_plain_reason(fresh):
    r = _status(fresh, ["server-postgres-1"], ["server-postgres-2"], "--all")
    print(f"took {r['took']:.2f} s\n{r['out']}{r['err']}")
    assert r["took"] < TIMEOUT + 2, f"status took {r['took']:.2f} s (bound {TIMEOUT + 2:g} s)"
    assert r["rc"] == 1 and r["err"] == "", r["err"]
    lines = [line.split(None, 3) for line in r["out"].splitlines()[1:] if line.startswith("server-")]
    assert lines == [["server-postgres-1", "unreachable", "FAIL", "no SSH answer in 3 s"],
                     ["server-postgres-2", "unreachable", "FAIL", "connection refused"]], r["out"]
    assert r["out"].rstrip().splitlines()[-1] == (
        "FAIL: 2 item(s) failed: server-postgres-1: unreachable; server-postgres-2: unreachable"), r["out"]


def _host_key(directory: Path, name: str) -> tuple[Path, str]:
    """A new ed25519 host key: its file and its public line."""
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, " ".join((directory / f"{name}.pub").read_text().split()[:2])


@namespace
def test_a_changed_host_key_an_unpinned_one_and_a_refused_login_are_said_plainly(fresh, tmp_path):
    """SSH servers that answer: server-postgres-1 shows a key other than its pin; server-postgres-2 shows its
    pinned key and refuses our login (said at once: no retries for a server just provisioned); then, with no pins
    at all, both keys are unknown."""
    home, _, _ = fresh
    known = home / "params" / "production.known_hosts"
    (k1, _), (_, pinned1) = _host_key(tmp_path, "k1"), _host_key(tmp_path, "pinned1")
    k2, pub2 = _host_key(tmp_path, "k2")
    hostkeys.pin(known, "production", "server-postgres-1", [pinned1])
    hostkeys.pin(known, "production", "server-postgres-2", [pub2])
    fp = {k: hostkeys.fingerprint_of_public(v) for k, v in
          {"k1": " ".join((tmp_path / "k1.pub").read_text().split()[:2]), "pinned1": pinned1, "k2": pub2}.items()}
    try:
        r = _status(fresh, [], [], sshd={"server-postgres-1": k1, "server-postgres-2": k2})
        print(f"took {r['took']:.2f} s\n{r['out']}{r['err']}")
        assert r["took"] < TIMEOUT + 2 and r["rc"] == 1 and r["err"] == "", (r["took"], r["err"])
        assert _fail_lines(r["out"])[:2] == [
            f"FAIL  server-postgres-1: unreachable: host key changed: offered ssh-ed25519 {fp['k1']}, pinned "
            f"{fp['pinned1']}; nothing was sent (a rebuilt server, or someone else at its address)",
            "FAIL  server-postgres-2: unreachable: SSH key refused"], r["out"]
        known.unlink()
        r = _status(fresh, [], [], "--json", sshd={"server-postgres-1": k1, "server-postgres-2": k2})
        assert r["took"] < TIMEOUT + 2 and r["rc"] == 1, r
        assert json.loads(r["out"])["unreachable"] == {
            "server-postgres-1": f"host key not pinned: offered ssh-ed25519 {fp['k1']}; nothing was sent "
                                 "(step 01 pins it)",
            "server-postgres-2": f"host key not pinned: offered ssh-ed25519 {fp['k2']}; nothing was sent "
                                 "(step 01 pins it)"}
    finally:
        known.unlink(missing_ok=True)


def _unreachable_from(cause: BaseException) -> BaseException:
    from hcbpg.errors import HostUnreachable
    try:
        raise HostUnreachable("server-postgres-1", "root@10.0.1.5:22", f"{type(cause).__name__}: {cause}") from cause
    except HostUnreachable as exc:
        return exc


def test_the_plain_words_for_each_way_a_connection_fails():
    """The reasons the namespace tests cannot make (a route, a name, a reset) from the exceptions paramiko raises."""
    import errno
    import socket

    from paramiko import SSHException
    from paramiko.ssh_exception import AuthenticationException, NoValidConnectionsError

    from hcbpg.engine.status import _plain_reason
    cases = [
        (NoValidConnectionsError({("10.0.1.5", 22): OSError(errno.ECONNREFUSED, "Connection refused")}),
         "connection refused"),
        (NoValidConnectionsError({("10.0.1.5", 22): OSError(errno.EHOSTUNREACH, "No route to host")}),
         "no route to host"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
        (TimeoutError("timed out"), "no SSH answer in 5 s"),
        (SSHException("Error reading SSH protocol banner"), "no SSH answer in 5 s"),
        (SSHException("Error reading SSH protocol banner[Errno 104] Connection reset by peer"),
         "connection closed by the server before SSH began"),
        (EOFError(), "connection closed by the server before SSH began"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "address not found (DNS)"),
        (AuthenticationException("Authentication failed."), "SSH key refused"),
        (SSHException("Incompatible ssh peer (no acceptable host key)"),
         "cannot reach host server-postgres-1 (root@10.0.1.5:22) over SSH: SSHException: Incompatible ssh peer "
         "(no acceptable host key)"),
    ]
    assert [_plain_reason(_unreachable_from(c), 5.0) for c, _ in cases] == [want for _, want in cases]
