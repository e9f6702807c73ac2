"""Pinned host keys and TLS, the parts without a network: known_hosts pins, fingerprints, cloud-init
user_data, the CA and server certificates (issue, renew), client TLS parameters, the source's sslmode."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from hcbpg.adapters import hostkeys
from hcbpg.adapters.host import Host
from hcbpg.desired import certs
from hcbpg.desired import cloud as desired_cloud
from hcbpg.desired import tls as desired_tls
from hcbpg.errors import HostKeyError, SecretError
from hcbpg.ops import tls
from hcbpg.params import parse_params
from hcbpg.pg import conninfo
from hcbpg.secrets import scrub

from nbutil import manual_lab

REPO = Path(__file__).resolve().parent.parent


def params(tmp_path: Path, **tls_section):
    data = manual_lab()
    data["ssh"]["known_hosts"] = str(tmp_path / "lab.known_hosts")
    data["tls"] = {"ca_cert": str(tmp_path / "ca.crt"), "ca_key": f"file:{tmp_path / 'ca.key'}", **tls_section}
    return parse_params(data)


# host keys -------------------------------------------------------------------------------------

def test_a_generated_host_key_is_pinned_by_name_with_the_fingerprint_ssh_keygen_prints(tmp_path):
    key = hostkeys.generate_host_key("root@server-postgres-1")
    pub = tmp_path / "k.pub"
    pub.write_text(key.public_line + "\n")
    printed = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout
    assert key.fingerprint in printed and key.fingerprint.startswith("SHA256:")
    assert scrub(key.private_openssh) != key.private_openssh  # a secret from birth
    path = tmp_path / "lab.known_hosts"
    assert hostkeys.pin(path, "lab", "server-postgres-1", [key.public_line])
    assert not hostkeys.pin(path, "lab", "server-postgres-1", [key.public_line])  # same again: unchanged
    assert hostkeys.pin(path, "lab", "server-postgres-1", [key.public_line], address="203.0.113.7")
    text = path.read_text()
    assert text.startswith("# Managed by hcbpg") and "PRIVATE" not in text
    [p] = hostkeys.pins_for(path, "server-postgres-1")
    assert p.fingerprint == key.fingerprint and p.hosts == ("server-postgres-1", "203.0.113.7")
    assert hostkeys.pinned_address(path, "server-postgres-1") == "203.0.113.7"
    assert hostkeys.pins_for(path, "server-postgres-2") == []  # a key belongs to one name
    other = hostkeys.generate_host_key("root@server-postgres-2")
    hostkeys.pin(path, "lab", "server-postgres-2", [other.public_line])
    hostkeys.pin(path, "lab", "server-postgres-1", [])  # unpin
    assert [q.hosts[0] for q in hostkeys.read_pins(path)] == ["server-postgres-2"]


def test_check_offered_names_the_server_and_both_fingerprints(tmp_path):
    path = tmp_path / "k"
    pinned = hostkeys.generate_host_key("a")
    offered = hostkeys.generate_host_key("b")
    hostkeys.pin(path, "lab", "server-postgres-1", [pinned.public_line])
    blob = base64.b64decode(offered.public_line.split()[1])
    with pytest.raises(HostKeyError) as err:
        hostkeys.check_offered("server-postgres-1", "10.0.1.5", path, "ssh-ed25519", blob)
    msg = str(err.value)
    assert "server-postgres-1" in msg and pinned.fingerprint in msg and offered.fingerprint in msg
    assert "Hetzner console" in msg
    hostkeys.check_offered("server-postgres-1", "10.0.1.5", path, "ssh-ed25519",
                           base64.b64decode(pinned.public_line.split()[1]))  # the pinned key passes
    with pytest.raises(HostKeyError, match="unknown"):
        hostkeys.check_offered("server-postgres-2", "10.0.1.6", path, "ssh-ed25519", blob)


def test_a_host_without_a_known_hosts_file_trusts_nothing():
    h = Host("h", "192.0.2.1")
    assert hostkeys.pins_for(h.known_hosts, "h") == []


def test_cloud_init_user_data_carries_the_host_key_as_cloud_init_reads_it():
    key = hostkeys.generate_host_key("root@s1")
    text = desired_cloud.render_cloud_init(key.keytype, key.private_openssh, key.public_line)
    doc = yaml.safe_load(text)
    assert text.startswith("#cloud-config\n")
    assert doc["ssh_deletekeys"] is True and doc["ssh_genkeytypes"] == []
    assert doc["ssh_keys"]["ed25519_private"].strip() == key.private_openssh.strip()
    assert doc["ssh_keys"]["ed25519_public"] == key.public_line


def test_params_refuse_a_renewal_window_longer_than_the_certificate(tmp_path):
    from hcbpg.errors import ParamsError
    with pytest.raises(ParamsError, match="renew_days"):
        params(tmp_path, cert_days=20, renew_days=30)


# TLS -----------------------------------------------------------------------------------------------

def test_the_ca_is_made_once_its_key_stored_as_a_secret_and_reloaded(tmp_path):
    p = params(tmp_path)
    tls._CA_CACHE.clear()
    assert tls._get_ca(p, create=False) is None  # a dry run makes nothing
    ca = tls._get_ca(p, create=True)
    assert ca is not None
    key_file = tmp_path / "ca.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and "PRIVATE KEY" in key_file.read_text()
    assert scrub(key_file.read_text().strip()) != key_file.read_text().strip()
    assert "PRIVATE" not in (tmp_path / "ca.crt").read_text()
    tls._CA_CACHE.clear()
    again = tls._get_ca(p, create=True)
    assert again is not None and again.cert_pem == ca.cert_pem
    # a certificate without its key (or the other way round) is an error, not a new CA
    key_file.unlink()
    tls._CA_CACHE.clear()
    with pytest.raises(SecretError):
        tls._get_ca(p, create=True)


def test_server_certificate_names_ip_and_name_and_is_renewed_near_its_end(tmp_path):
    p = params(tmp_path)
    tls._CA_CACHE.clear()
    ca = tls._get_ca(p, create=True)
    assert ca is not None
    s = p.primary
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    cert_pem, key_pem = certs.render_server_cert(ca, p, s, now=now)
    assert scrub(key_pem) != key_pem
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == [s.private_ip]
    assert san.get_values_for_type(x509.DNSName) == [s.name]
    cert.verify_directly_issued_by(ca.cert)
    assert certs.plan_server_cert(cert_pem, ca, p, s, now=now) is None
    later = now + dt.timedelta(days=p.tls.cert_days - p.tls.renew_days + 1)
    assert "expires in" in (certs.plan_server_cert(cert_pem, ca, p, s, now=later) or "")
    assert "names" in (certs.plan_server_cert(cert_pem, ca, p, p.servers[1], now=now) or "")
    assert certs.plan_server_cert(None, ca, p, s) == "no certificate yet"
    other = certs.render_ca("elsewhere")
    assert "another CA" in (certs.plan_server_cert(certs.render_server_cert(other, p, s)[0], ca, p, s) or "")


def test_clients_use_verify_full_with_the_ca_and_require_auth_only_when_asked(tmp_path):
    p = params(tmp_path)
    assert desired_tls.client_tls(p) == {"sslmode": "verify-full", "sslrootcert": "/etc/hcbpg/tls/lab-postgres-ca.crt"}
    with_auth = params(tmp_path, require_auth=True)
    assert desired_tls.client_tls(with_auth)["require_auth"] == "scram-sha-256"
    assert "sslmode=verify-full" in desired_tls.conninfo_tls(p)


def test_the_source_is_verify_full_with_a_ca_and_require_without():
    conn = conninfo.parse_source_url("postgres://u:pw-long-enough@db.example.com:5432/d")
    assert "sslmode=require" in conninfo.render_service_file(conn)
    text = conninfo.render_service_file(conn, sslrootcert="/etc/hcbpg/tls/source-ca.crt")
    assert "sslmode=verify-full" in text and "sslrootcert=/etc/hcbpg/tls/source-ca.crt" in text


def test_host_key_gate_names_depend_on_the_fingerprint():
    from hcbpg.steps.provision import host_key_gate
    a, b = host_key_gate("s1", "SHA256:aaa"), host_key_gate("s1", "SHA256:bbb")
    assert a != b and a.startswith("host-key-s1-") and a.endswith(hashlib.sha256(b"SHA256:aaa").hexdigest()[:8])
