"""The certificates etcd and Patroni get (:func:`hcbpg.desired.certs.render_cert` / :func:`plan_cert` over a
:class:`CertSpec`: no subject, client-only, IP names, and why one is issued again), checked by the cryptography
library and by ``openssl verify``; and the cluster as step 10 verifies and records it
(:func:`hcbpg.desired.patroni.check_cluster`, :func:`topology_record`) from GET /cluster answers of Patroni 3.0.2
(tests/golden/patroni.cluster.jsonl).  Pure."""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from hcbpg import secrets as hsecrets
from hcbpg.desired import patroni as dp
from hcbpg.desired.certs import Ca, CertSpec, plan_cert, render_ca, render_cert
from hcbpg.errors import ParamsError
from hcbpg.outcome import Check
from hcbpg.params import Params, parse_params

from goldenfile import GOLDEN
from nbutil import manual_production

NOW = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.timezone.utc)
CA = render_ca("lab")
SERVER, CLIENT = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
MEMBER = CertSpec("server-postgres-1", ("10.0.1.5", "127.0.0.1", "::1"), ("server-postgres-1", "localhost"),
                  server=True, client=True)
NO_SUBJECT_CLIENT = CertSpec(None, server=False, client=True)
ROOT = CertSpec("root", server=False, client=True)


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def eku(cert: x509.Certificate) -> set[Any]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def issue(spec: CertSpec, ca: Ca = CA, *, days: float = 90, now: dt.datetime = NOW) -> str:
    return render_cert(ca, spec, days=days, now=now)[0]


# render_cert -------------------------------------------------------------------------------------------------

def test_a_spec_without_a_cn_makes_a_certificate_with_an_empty_subject_for_clients_only():
    crt, key = render_cert(CA, NO_SUBJECT_CLIENT, days=365, now=NOW)
    cert = load(crt)
    assert len(cert.subject) == 0 and cert.subject.rfc4514_string() == ""
    assert cert.issuer == CA.cert.subject
    cert.verify_directly_issued_by(CA.cert)
    assert eku(cert) == {CLIENT}
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=365)
    priv = serialization.load_pem_private_key(key.encode(), None)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert priv.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    assert plan_cert(crt, CA, NO_SUBJECT_CLIENT, renew_days=30, now=NOW) is None


def test_ip_and_dns_names_and_both_usages():
    cert = load(issue(MEMBER))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.1.5", "127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["server-postgres-1", "localhost"]
    assert eku(cert) == {SERVER, CLIENT}
    assert [a.value for a in cert.subject] == ["server-postgres-1"]


def test_each_certificate_has_its_own_key_and_the_key_is_scrubbed():
    (c1, k1), (c2, k2) = render_cert(CA, ROOT, days=1, now=NOW), render_cert(CA, ROOT, days=1, now=NOW)
    assert k1 != k2 and load(c1).serial_number != load(c2).serial_number
    body = "".join(k1.splitlines()[1:-1])
    assert body not in hsecrets.scrub(f"the key was {k1}")


def test_a_certificate_for_nothing_is_refused():
    with pytest.raises(ValueError, match="neither server nor client"):
        render_cert(CA, CertSpec("x", server=False, client=False), days=1)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_verifies_the_purpose_and_the_ip_it_was_issued_for(tmp_path: Path):
    (tmp_path / "ca.crt").write_text(CA.cert_pem)

    def verify(pem: str, *args: str) -> bool:
        (tmp_path / "c.crt").write_text(pem)
        res = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), *args,
                              str(tmp_path / "c.crt")], capture_output=True, text=True, timeout=10)
        return res.returncode == 0 and res.stdout.strip().endswith(": OK")

    now = dt.datetime.now(dt.timezone.utc)   # openssl checks validity against its own clock
    client = issue(NO_SUBJECT_CLIENT, now=now)
    assert verify(client, "-purpose", "sslclient")
    assert not verify(client, "-purpose", "sslserver"), "a client-only certificate cannot serve"
    member = issue(MEMBER, now=now)
    assert verify(member, "-purpose", "sslserver", "-verify_ip", "10.0.1.5")
    assert verify(member, "-purpose", "sslclient")
    assert verify(member, "-purpose", "sslserver", "-verify_hostname", "localhost")
    assert not verify(member, "-purpose", "sslserver", "-verify_ip", "10.0.1.6")
    assert not verify(issue(ROOT, render_ca("lab"), now=now), "-purpose", "sslclient"), "another CA's"


# plan_cert: why a certificate is issued again ------------------------------------------------------------------

def test_nothing_there_no_ca_yet_or_unreadable():
    assert plan_cert(None, CA, ROOT, renew_days=1) == "no certificate yet"
    assert plan_cert(issue(ROOT), None, ROOT, renew_days=1) == "a new CA will be made"
    assert plan_cert("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", CA, ROOT,
                     renew_days=1) == "the certificate on the server cannot be read"


def test_another_ca_or_the_same_name_with_another_key():
    assert plan_cert(issue(ROOT, render_ca("staging")), CA, ROOT, renew_days=1, now=NOW) == "issued by another CA"
    twin = render_ca("lab")          # same subject as CA, its own key
    assert twin.cert.subject == CA.cert.subject
    assert plan_cert(issue(ROOT, twin), CA, ROOT, renew_days=1, now=NOW) == "not signed by this environment's CA"


def test_a_wrong_cn_or_a_subject_where_none_is_wanted():
    other = CertSpec("server-postgres-2", server=False, client=True)
    assert plan_cert(issue(other), CA, ROOT, renew_days=1, now=NOW) == \
        "its subject names ['server-postgres-2'], expected root"
    assert plan_cert(issue(NO_SUBJECT_CLIENT), CA, ROOT, renew_days=1, now=NOW) == \
        "its subject names nobody, expected root"
    # etcd's gateway refuses Patroni's client certificate when it names someone: a CN is a reason
    assert plan_cert(issue(ROOT), CA, NO_SUBJECT_CLIENT, renew_days=1, now=NOW) == \
        "its subject names ['root'], expected an empty subject"


def test_a_wrong_extended_key_usage():
    client_only = CertSpec("server-postgres-1", MEMBER.ips, MEMBER.dns, server=False, client=True)
    server_only = CertSpec("server-postgres-1", MEMBER.ips, MEMBER.dns, server=True, client=False)
    why = "its key usages differ from what it is for"
    assert plan_cert(issue(client_only), CA, MEMBER, renew_days=1, now=NOW) == why
    assert plan_cert(issue(server_only), CA, MEMBER, renew_days=1, now=NOW) == why
    # more than asked is wrong too: a PostgreSQL server certificate may not sign in to etcd as a client
    assert plan_cert(issue(MEMBER), CA, server_only, renew_days=1, now=NOW) == why
    assert plan_cert(issue(MEMBER), CA, MEMBER, renew_days=1, now=NOW) is None


def test_missing_ip_names():
    old = CertSpec("server-postgres-1", ("10.0.1.5",), ("server-postgres-1",))
    want = CertSpec("server-postgres-1", ("10.0.1.5", "127.0.0.1"), ("server-postgres-1",))
    assert plan_cert(issue(old), CA, want, renew_days=1, now=NOW) == \
        "names ['10.0.1.5'] do not include 10.0.1.5 and 127.0.0.1 and server-postgres-1"
    assert plan_cert(issue(CertSpec("server-postgres-1")), CA, want, renew_days=1, now=NOW) == \
        "no subject alternative names"
    # names beyond the wanted ones are kept
    assert plan_cert(issue(want), CA, old, renew_days=1, now=NOW) is None


def test_renewed_inside_its_window_only():
    pem = issue(ROOT, days=90)
    assert plan_cert(pem, CA, ROOT, renew_days=30, now=NOW + dt.timedelta(days=59)) is None
    assert plan_cert(pem, CA, ROOT, renew_days=30, now=NOW + dt.timedelta(days=61)) == \
        "expires in 29 day(s) (renewed 30 days before)"
    short = issue(ROOT, days=1)      # etcd's root certificate: one day, renewed at half its life
    assert plan_cert(short, CA, ROOT, renew_days=0.5, now=NOW + dt.timedelta(hours=11)) is None
    assert plan_cert(short, CA, ROOT, renew_days=0.5, now=NOW + dt.timedelta(hours=13)) == \
        "expires in 0 day(s) (renewed 0.5 days before)"


# check_cluster and topology_record ---------------------------------------------------------------------------

def params(**patroni: Any) -> Params:
    d = manual_production()
    d["replication"].update(
        manager="patroni", connection_limit=5,
        patroni={"scope": "hcb-production", "rest_password": "op://HCB Engineering/Patroni REST/password", **patroni},
        etcd={"patroni_password": "op://HCB Engineering/etcd patroni/password"})
    d["jumpbox"] = {"private_ip": "10.0.1.40"}
    return parse_params(d)


P = params()


def cluster(case: str, **change: Any) -> dp.ClusterView:
    lines = (GOLDEN / "patroni.cluster.jsonl").read_text().splitlines()
    data = copy.deepcopy({c["case"]: c["cluster"] for c in map(json.loads, lines)}[case])
    data.update(change)
    return dp.parse_cluster(data)


def rows(checks: list[Check]) -> list[tuple[str, str, str]]:
    return [(c.name, c.status, c.target) for c in checks]


def test_a_healthy_synchronous_pair_passes_every_row():
    checks = dp.check_cluster(cluster("healthy-sync"), P)
    assert rows(checks) == [("leader present", "pass", ""), ("member streaming", "pass", "server-postgres-2"),
                            ("sync standby", "pass", "")]
    assert checks[0].detail == "server-postgres-1 (timeline 3)" and checks[2].detail == "server-postgres-2"
    assert checks[1].detail == "sync_standby running, lag 0 bytes, timeline 3"


def test_a_lagging_async_replica_fails_and_no_sync_standby_warns():
    checks = dp.check_cluster(cluster("lagging-async"), P)
    assert rows(checks) == [("leader present", "pass", ""), ("member streaming", "fail", "server-postgres-2"),
                            ("sync standby", "warn", "")]
    assert "lag 33554432 bytes" in checks[1].detail
    assert checks[2].detail.startswith("none: commits are acknowledged without a standby")
    # without synchronous mode there is no sync row; within maximum_lag_on_failover it streams
    relaxed = params(synchronous_mode=False, maximum_lag_on_failover=64 * 1048576)
    assert rows(dp.check_cluster(cluster("lagging-async"), relaxed)) == [
        ("leader present", "pass", ""), ("member streaming", "pass", "server-postgres-2")]


def test_paused_and_failsafe_warn():
    failsafe = dp.parse_member_status({"state": "running", "role": "master", "failsafe_mode_is_active": True})
    checks = dp.check_cluster(cluster("nofailover-paused"), P, statuses={"server-postgres-1": failsafe,
                                                                         "server-postgres-2": None})
    assert rows(checks)[-2:] == [("maintenance mode", "warn", ""), ("failsafe active", "warn", "server-postgres-1")]
    assert "Patroni will not fail over" in checks[-2].detail and "etcd is not reachable" in checks[-1].detail
    assert all(c.ok for c in checks)


def test_after_a_failover_the_stopped_old_leader_fails():
    checks = dp.check_cluster(cluster("after-failover"), P)
    assert rows(checks) == [("leader present", "pass", ""), ("member streaming", "fail", "server-postgres-1"),
                            ("sync standby", "warn", "")]
    assert checks[0].detail == "server-postgres-2 (timeline 4)"
    assert checks[1].detail == "replica stopped, lag unknown bytes, timeline 3"


def test_no_leader_and_a_server_missing_from_the_cluster_fail():
    view = cluster("healthy-sync")
    leaderless = dp.ClusterView(tuple(m if not m.is_leader else dp.Member(m.name, "replica", "stopped", m.host)
                                      for m in view.members))
    assert rows(dp.check_cluster(leaderless, P))[0] == ("leader present", "fail", "")
    alone = dp.ClusterView(tuple(m for m in view.members if m.is_leader))
    checks = dp.check_cluster(alone, P)
    missing = [c for c in checks if c.name == "every server a member"]
    assert len(missing) == 1 and missing[0].status == "fail" and missing[0].detail == \
        "not in the cluster: server-postgres-2"


def test_no_member_answers():
    assert rows(dp.check_cluster(None, P)) == [("Patroni cluster", "fail", "")]
    cut = dp.parse_member_status({"state": "running", "role": "master", "failsafe_mode_is_active": True})
    checks = dp.check_cluster(None, P, statuses={"server-postgres-1": cut, "server-postgres-2": None})
    assert rows(checks) == [("Patroni cluster", "fail", ""), ("failsafe active", "warn", "server-postgres-1")]
    assert "server-postgres-1 is master and keeps serving" in checks[1].detail


def test_check_cluster_needs_the_patroni_section():
    manual = manual_production()
    with pytest.raises(ParamsError, match="replication.patroni"):
        dp.check_cluster(cluster("healthy-sync"), parse_params(manual))


def test_topology_record_names_the_leader_its_timeline_and_the_replicas():
    assert dp.topology_record(cluster("healthy-sync")) == {
        "primary": "server-postgres-1", "timeline": 3, "replicas": ["server-postgres-2"], "manager": "patroni"}
    assert dp.topology_record(cluster("after-failover")) == {
        "primary": "server-postgres-2", "timeline": 4, "replicas": ["server-postgres-1"], "manager": "patroni"}
    view = cluster("healthy-sync")
    none = dp.ClusterView(tuple(dp.Member(m.name, "replica", "stopped") for m in view.members))
    assert dp.topology_record(none) == {"primary": None, "timeline": None,
                                        "replicas": ["server-postgres-1", "server-postgres-2"], "manager": "patroni"}
    json.dumps(dp.topology_record(view))     # recorded in the manifest: plain JSON
