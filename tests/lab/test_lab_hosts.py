"""Lab hosts look like separate servers to SSH and to the runbook's commands."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest
from fabric import Connection

from hcbpg.errors import HostUnreachable
from hcbpg.lab import create_server_host, destroy_server_host

pytestmark = pytest.mark.lab


def ssh(lab, ip: str) -> Connection:
    return Connection(ip, user="root", connect_timeout=5,
                      connect_kwargs={"key_filename": str(lab.ssh_key), "look_for_keys": False,
                                      "allow_agent": False})


@pytest.fixture(scope="module")
def server(lab):
    """A fresh 'server' host made through the API stand-in's hook (at .55, clear of others)."""
    name, ip = "server-postgres-t1", lab.cfg.address(55)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    info = create_server_host(name, ip, [key], lab_dir=str(lab.lab_dir))
    yield info
    destroy_server_host(name, lab_dir=str(lab.lab_dir))


def test_hosts_have_distinct_hostnames_and_private_ips(lab, server):
    seen = {}
    for name, ip in (("app", lab.cfg.app_ip), ("source", lab.cfg.source_ip), (server["name"], server["ip"])):
        with ssh(lab, ip) as c:
            out = c.run("hostname; ip -4 -o addr show dev ens10", in_stream=False, hide=True).stdout
        hostname, addr_line = out.splitlines()[0], out.splitlines()[1]
        assert hostname == name
        assert f"inet {ip}/24" in addr_line
        seen[name] = ip
    assert len(set(seen.values())) == 3


def test_file_written_to_etc_stays_on_its_host(lab, server):
    probe = f"/etc/hcbpg-lab-probe-{secrets.token_hex(4)}"
    with ssh(lab, lab.cfg.app_ip) as c:
        c.run(f"echo written-on-app > {probe}", in_stream=False, hide=True)
        assert c.run(f"cat {probe}", in_stream=False, hide=True).stdout.strip() == "written-on-app"
    for ip in (lab.cfg.source_ip, server["ip"]):
        with ssh(lab, ip) as c:
            assert c.run(f"test -e {probe}", in_stream=False, hide=True, warn=True).exited == 1
    assert not Path(probe).exists(), "the write reached the machine's own /etc"


def test_server_starts_like_a_freshly_installed_one(lab, server):
    with ssh(lab, server["ip"]) as c:
        r = c.run("pg_lsclusters -h; test -e /etc/postgresql/15/main || echo no-conf; "
                  "test -e /var/lib/postgresql/15/main || echo no-data; "
                  "cat /etc/ssh/ssh_host_ed25519_key.pub; command -v sudo pgbackrest pg_createcluster",
                  in_stream=False, hide=True)
    lines = r.stdout.splitlines()
    assert "no-conf" in lines and "no-data" in lines
    assert not any(line.startswith("15 ") for line in lines), "a machine cluster is visible"
    machine_key = Path("/etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]
    assert machine_key not in r.stdout
    assert "/usr/bin/sudo" in r.stdout and "/usr/bin/pgbackrest" in r.stdout


def test_runbook_commands_run_verbatim_on_a_server(lab, server):
    machine_had = Path("/var/lib/postgresql/15/main").exists()
    with ssh(lab, server["ip"]) as c:
        c.run("pg_createcluster 15 main >/dev/null && pg_ctlcluster 15 main start", in_stream=False, hide=True)
        out = c.run("sudo -u postgres psql -Atc 'select 1'", in_stream=False, hide=True).stdout
        assert out.strip() == "1"
        c.run("pg_ctlcluster 15 main stop && rm -rf /var/lib/postgresql/15/main", in_stream=False, hide=True)
    assert Path("/var/lib/postgresql/15/main").exists() == machine_had


def test_a_host_made_from_a_snapshot_has_what_its_original_wrote_and_keys_of_its_own(lab, tmp_path):
    """snapshot_host copies a host's upper layer while nothing but sshd runs there (a running cluster is
    refused, naming it); a host made from it at the same name and IP has its cluster, its files and what it
    deleted of the machine's (whiteouts), the machine's clusters still hidden, and new host keys."""
    from hcbpg.errors import LabError
    from hcbpg.lab.hosts import snapshot_host
    name, ip = "server-snap-t1", lab.cfg.address(56)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    create_server_host(name, ip, [key], lab_dir=str(lab.lab_dir))
    try:
        lab.exec(name, "pg_createcluster 15 main >/dev/null && pg_ctlcluster 15 main start && "
                 "sudo -u postgres psql -Xqc 'CREATE TABLE kept AS SELECT 42 AS answer' && "
                 "echo snap > /etc/hcbpg-snap && rm /etc/issue", check=True)
        before_key = lab.exec(name, "cat /etc/ssh/ssh_host_ed25519_key.pub", check=True).stdout
        with pytest.raises(LabError, match="still runs .*postgres"):
            snapshot_host(lab.cfg, name, tmp_path / "snap")
        lab.exec(name, "pg_ctlcluster 15 main stop", check=True)
        snapshot_host(lab.cfg, name, tmp_path / "snap")
        destroy_server_host(name, lab_dir=str(lab.lab_dir))
        create_server_host(name, ip, [key], lab_dir=str(lab.lab_dir), snapshot=tmp_path / "snap")
        with ssh(lab, ip) as c:
            c.run("pg_ctlcluster 15 main start", in_stream=False, hide=True)
            out = c.run("sudo -u postgres psql -XAtc 'SELECT answer FROM kept'; cat /etc/hcbpg-snap; "
                        "test -e /etc/issue || echo issue-gone; hostname; cat /etc/ssh/ssh_host_ed25519_key.pub",
                        in_stream=False, hide=True).stdout.splitlines()
        assert out[:4] == ["42", "snap", "issue-gone", name], out
        assert out[4].split()[1] != before_key.split()[1], "the clone kept the original's host key"
        assert Path("/etc/issue").exists(), "the whiteout reached the machine"
        if Path("/var/lib/postgresql/15").is_dir():  # the machine's own clusters stay hidden (opaque directory)
            machine = {p.name for p in Path("/var/lib/postgresql/15").iterdir()}
            seen = set(lab.exec(name, "ls /var/lib/postgresql/15", check=True).stdout.split())
            assert seen == {"main"} and (machine - {"main"}).isdisjoint(seen), (machine, seen)
    finally:
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


def test_outsider_connects_from_outside_the_subnet(lab):
    url = lab.secret("source-url")
    r = lab.outsider_exec(["psql", url, "-Atc", "select inet_client_addr()"], check=True)
    client = r.stdout.strip()
    assert client == lab.status()["outsider"]["ip"]
    import ipaddress
    assert ipaddress.ip_address(client) not in ipaddress.ip_network(lab.cfg.subnet)


def test_server_created_through_the_api_stand_in_is_a_lab_host(lab):
    hcloud = pytest.importorskip("hcloud")
    from hcloud.images import Image
    from hcloud.locations import Location
    from hcloud.networks.domain import NetworkSubnet
    from hcloud.server_types import ServerType
    st = lab.status()
    if not st["services"]["hcloud"]["running"]:
        pytest.skip("the Hetzner Cloud API stand-in is not part of this lab")
    c = hcloud.Client(token=lab.secret("hcloud-token"), api_endpoint=st["hcloud_endpoint"], poll_interval=0.2)
    net = c.networks.create(name="lab-test-net", ip_range=_range16(lab),
                            subnets=[NetworkSubnet(type="cloud", ip_range=lab.cfg.subnet, network_zone="us-east")])
    public_key = lab.ssh_key.with_suffix(".pub").read_text().strip()
    # the lab's key may be registered already (a module that ran step 01 in this lab): use it, as step 01 does
    known = [k for k in c.ssh_keys.get_all() if k.public_key.strip() == public_key]
    key = known[0] if known else c.ssh_keys.create(name="lab-test-key", public_key=public_key)
    try:
        made = c.servers.create(name="api-made-1", server_type=ServerType(name="ccx13"),
                                image=Image(name="ubuntu-24.04"), location=Location(name="ash"),
                                ssh_keys=[key], networks=[net])
        made.action.wait_until_finished(max_retries=300)
        for a in made.next_actions:
            a.wait_until_finished(max_retries=300)
        hosts = {h["name"]: h for h in lab.status()["hosts"]}
        assert hosts["api-made-1"]["role"] == "server" and hosts["api-made-1"]["running"]
        with ssh(lab, hosts["api-made-1"]["ip"]) as conn:
            assert conn.run("hostname", in_stream=False, hide=True).stdout.strip() == "api-made-1"
        c.servers.delete(made.server).wait_until_finished(max_retries=300)
        assert "api-made-1" not in {h["name"] for h in lab.status()["hosts"]}
    finally:
        if not known:
            c.ssh_keys.delete(key)
        c.networks.delete(net)


def _range16(lab) -> str:
    import ipaddress
    return str(ipaddress.ip_network(lab.cfg.subnet).supernet(new_prefix=16))


def test_kernel_wide_settings_stay_the_machines(lab):
    before = Path("/proc/sys/vm/swappiness").read_text()
    r = lab.exec("app", "echo 7 > /proc/sys/vm/swappiness")
    assert r.returncode != 0
    assert Path("/proc/sys/vm/swappiness").read_text() == before
    # network sysctls belong to the host's own namespace and stay writable
    assert lab.exec("app", "echo 60 > /proc/sys/net/ipv4/tcp_keepalive_time").returncode == 0


def test_ssh_waits_for_a_key_that_is_put_in_place_late_and_refuses_a_wrong_key(lab):
    """A server just provisioned may run sshd before cloud-init has written the key: Host tries
    again for a few seconds; a key that never comes is refused, naming the host and the tries."""
    import threading
    import time

    from hcbpg.adapters.host import Host
    from hcbpg.errors import HostUnreachable
    name, ip = "server-postgres-t2", lab.cfg.address(56)
    create_server_host(name, ip, [], lab_dir=str(lab.lab_dir))  # no key authorized yet
    try:
        seen: list[str] = []
        with pytest.raises(HostUnreachable, match=f"{name}.*tried 3 times"):
            Host(name, ip, key_file=str(lab.ssh_key), connect_timeout=5,
                 known_hosts=lab.cfg.known_hosts, echo=seen.append).connect()
        assert len(seen) == 2 and all("SSH key refused" in s for s in seen), seen
        key = lab.ssh_key.with_suffix(".pub").read_text()
        timer = threading.Timer(0.5, lambda: lab.exec(name, "cat > /root/.ssh/authorized_keys", input=key,
                                                       check=True))
        timer.start()
        t0 = time.monotonic()
        host = Host(name, ip, key_file=str(lab.ssh_key), connect_timeout=5,
                 known_hosts=lab.cfg.known_hosts, echo=seen.append).connect()
        timer.join()
        assert host.probe("hostname").stdout.strip() == name and time.monotonic() - t0 < 10
        host.close()
    finally:
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


def test_a_server_whose_host_key_was_replaced_is_refused_before_any_command_runs(lab):
    """The lab pinned the host's key at creation; a new key on the same name and address (a rebuilt
    server, or an impostor) is refused during the key exchange: no login, no command.  The error
    names the server and both fingerprints.  With no pin at all it is refused the same way."""
    from hcbpg.adapters import hostkeys
    from hcbpg.adapters.host import Host
    from hcbpg.errors import HostKeyError
    name, ip = "server-postgres-t3", lab.cfg.address(57)
    create_server_host(name, ip, [lab.ssh_key.with_suffix(".pub").read_text()], lab_dir=str(lab.lab_dir))
    try:
        def host() -> Host:
            return Host(name, ip, key_file=str(lab.ssh_key), connect_timeout=5, known_hosts=lab.cfg.known_hosts,
                        echo=lambda _: None)
        with host() as h:
            assert h.probe("hostname").stdout.strip() == name
        [pinned] = hostkeys.pins_for(lab.cfg.known_hosts, name)
        lab.exec(name, "rm -f /etc/ssh/ssh_host_* && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key"
                       " && pkill -HUP -x sshd", check=True)
        offered = hostkeys.fingerprint_of_public(
            lab.exec(name, "cat /etc/ssh/ssh_host_ed25519_key.pub", check=True).stdout)
        assert offered != pinned.fingerprint
        log = "/var/log/sshd-hcbpg-lab.log"
        accepted_before = lab.exec(name, f"grep -c 'Accepted publickey' {log} || true").stdout.strip()
        deadline = time.monotonic() + 20
        while True:
            h = host()
            try:
                with pytest.raises(HostKeyError) as err:
                    h.connect()
                break
            except HostUnreachable:  # sshd is re-executing after the HUP
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        msg = str(err.value)
        assert name in msg and ip in msg and pinned.fingerprint in msg and offered in msg, msg
        assert err.value.expected == [pinned.fingerprint] and offered in err.value.offered
        assert h.history == []
        assert lab.exec(name, f"grep -c 'Accepted publickey' {log} || true").stdout.strip() == accepted_before
        # no pin at all (a host of another file): refused too, and the error says none is pinned
        other = tmp_known = lab.lab_dir / "empty.known_hosts"
        tmp_known.write_text("")
        with pytest.raises(HostKeyError, match="unknown") as err2:
            Host(name, ip, key_file=str(lab.ssh_key), connect_timeout=5, known_hosts=other,
                 echo=lambda _: None).connect()
        assert err2.value.expected == [] and offered in err2.value.offered
    finally:
        destroy_server_host(name, lab_dir=str(lab.lab_dir))


def test_a_connection_lost_while_idle_is_opened_again_but_a_command_cut_off_is_not_run_twice(lab, server):
    """A connection that died between commands (here its socket closed under it, as a pytest run once
    saw: "Socket exception: Bad file descriptor") is opened again once before the next command, which
    has not been sent yet.  A connection lost while a command runs raises HostUnreachable: that
    command is never run a second time."""
    from hcbpg.adapters.host import Host
    from hcbpg.errors import HostUnreachable
    seen: list[str] = []
    host = Host(server["name"], server["ip"], key_file=str(lab.ssh_key), connect_timeout=5,
                 known_hosts=lab.cfg.known_hosts, echo=seen.append)
    try:
        assert host.probe("hostname").stdout.strip() == server["name"]
        host.connection.client.get_transport().sock.close()
        assert host.run("echo again", quiet=True).stdout == "again\n"
        assert len(seen) == 1 and "lost while idle" in seen[0], seen
        marker = f"/root/cut-{secrets.token_hex(4)}"
        # the shell's parent is the sshd process of this connection: killing it cuts the command off
        with pytest.raises(HostUnreachable, match="connection lost while running"):
            host.run(f"echo x >> {marker}; kill -9 $PPID; sleep 5", quiet=True, timeout=30)
        assert lab.exec(server["name"], f"cat {marker}", check=True).stdout == "x\n"
        assert host.run("true", quiet=True).ok  # and the next command connects again
    finally:
        host.close()



def test_a_command_s_whole_output_arrives_even_when_its_exit_status_comes_first(lab, server):
    """sshd sends the exit status as soon as the process ends, and output still buffered (or written
    by a child that outlives it) afterwards, then EOF: all of it is read, on stdout and stderr (a
    JSON document cut short at 156 kB was seen on a loaded machine)."""
    from hcbpg.adapters.host import Host
    host = Host(server["name"], server["ip"], key_file=str(lab.ssh_key), connect_timeout=5,
                 known_hosts=lab.cfg.known_hosts, echo=lambda _: None)
    try:
        res = host.run("echo first; (sleep 1; echo late; echo late-err >&2) & exit 0", quiet=True, timeout=60)
        assert (res.stdout, res.stderr, res.exit_code) == ("first\nlate\n", "late-err\n", 0)
        res = host.run("head -c 18000000 /dev/zero | base64 -w 0; head -c 300000 /dev/zero | base64 -w 0 >&2",
                       quiet=True, timeout=120)
        assert (len(res.stdout), len(res.stderr)) == (24000000, 400000)
    finally:
        host.close()


def test_every_host_runs_in_its_own_overlay_and_no_sshd_ran_with_the_machine_s_root(lab, server):
    """A host's PID 1 has chrooted into its overlay before anything is entered into it: an sshd once
    started in the window before the chroot served a host's address with the machine's own files
    (every key refused, its log in the machine's /var/log)."""
    import json
    import os
    state = json.loads(lab.cfg.state_file.read_text())
    for name, h in state["hosts"].items():
        assert os.readlink(f"/proc/{h['pid']}/root") == str(Path(h["dir"]) / "merged"), name
    assert not Path("/var/log/sshd-hcbpg-lab.log").exists()
