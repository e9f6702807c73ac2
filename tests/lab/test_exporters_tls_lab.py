"""The exporters of issue 25 on real lab hosts, over TLS: a primary (the worker's stage: steps 02-04) with step 13's
PostgreSQL exporter and node exporter, and a lab jumpbox with node exporter; each serves TLS only with a certificate
of the environment's CA naming the machine's private IP (hcbpg.ops.monitoring.ensure_exporter_tls).

Checked from the machines themselves (the exporters listen on the private IPs): /metrics over https verified against
the CA, and against no other; plain HTTP refused; the PostgreSQL exporter exports what the alerting rules read
(hcbpg_xid_age per database, hcbpg_wal_bytes); a second run changes nothing; an exporter left from before (plain
HTTP, no certificate) is planned as such by a dry run and brought to TLS by the run.  And what Vector's OpenSSL
connector checks of PostgreSQL's certificate with its ``tls.ca_file`` (the chain to the CA, the private IP as a
name) holds for the primary's certificate, and fails for another address.
"""

from __future__ import annotations

import shlex
import time

import pytest

from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.host import Host
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import monitoring as dm
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import server as desired_server
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.certs import render_ca
from hcbpg.ops import alerting as ops_alerting
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import config as pg_config
from hcbpg.ops import monitoring, privileges
from hcbpg.params import parse_params

from labparams import lab_params
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, primary_and_jumpbox

pytestmark = pytest.mark.lab

JUMPBOX = "hcb-jumpbox"
JUMPBOX_OFFSET = 59
STATE: dict = {}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def params(lab, primary_stage):
    cfg = lab.cfg
    jb_ip = cfg.address(JUMPBOX_OFFSET)
    p = parse_params(lab_params(
        lab, [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary")],
        jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip},
        # node exporter is the monitor's (step 15b): its section; the receivers are never used here
        alerting={"receivers": {"webhook": {"url": "https://alerts.lab.invalid/hook"}},
                  "heartbeat_url": "https://deadman.lab.invalid/ping"}))
    with primary_and_jumpbox(lab, primary_stage, JUMPBOX, jb_ip):
        yield p


@pytest.fixture(scope="module")
def hosts(params):
    assert params.jumpbox is not None
    hs = {STAGE_PRIMARY: Host.from_params(params, STAGE_PRIMARY, params.primary.private_ip),
          JUMPBOX: Host.from_params(params, JUMPBOX, params.jumpbox.private_ip)}
    yield hs
    for h in hs.values():
        h.close()


def get(host: Host, url: str, *, ca: str | None = None) -> tuple[bool, str]:
    """GET *url* with curl on *host* (verified against *ca*); (ok, body or curl's error)."""
    cmd = ["curl", "-sS", "--fail", "--max-time", "10", *(["--cacert", ca] if ca else []), url]
    res = host.probe(shlex.join(cmd))
    return res.ok, res.stdout if res.ok else res.output.strip()[-300:]


def test_the_postgres_exporter_serves_tls_only_with_what_the_rules_read(params, hosts):
    cfg = desired_roles.roles_config(params)
    s = params.primary
    host = hosts[s.name]
    privileges.ensure_role_secrets(SecretStore(), cfg)
    pg_config.ensure_pg_hba(host, params, s, extra=desired_server.all_hba_extra(params, s, cfg))
    privileges.ensure_privileges(pg_cluster.get_psql(host, params), cfg)
    assert cfg.exporter is not None
    pw = privileges.get_role_password(SecretStore(), cfg, cfg.exporter.name)
    t0 = time.monotonic()
    out = monitoring.ensure_exporter(host, params, s, cfg, pw)
    TIMINGS["exporter_first_run_s"] = round(time.monotonic() - t0, 1)
    assert out.changed and any(a.startswith("issued:") for a in out.actions), out.actions
    STATE.update(cfg=cfg, pw=pw)
    checks = monitoring.check_exporter(host, s)
    assert all(c.ok for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    assert "HTTP 400" in next(c for c in checks if c.name == "exporter refuses plain HTTP").detail
    ca = desired_tls.client_ca_path(params)
    ok, body = get(host, dm.exporter_url(s), ca=ca)
    assert ok, body
    m = dm.parse_metrics(body)
    xid = {labels.get("datname"): v for labels, v in m.get("hcbpg_xid_age", [])}
    assert {"postgres", params.postgres.database} <= set(xid) and all(v > 0 for v in xid.values()), xid
    wal = [v for _, v in m.get("hcbpg_wal_bytes", [])]
    assert len(wal) == 1 and wal[0] >= 16 * 1024 ** 2, wal  # at least one 16 MiB segment
    print(f"exporter: hcbpg_xid_age {xid}, hcbpg_wal_bytes {wal[0]:.0f}")
    # the key is the exporters' user's alone; PostgreSQL's own key is untouched
    assert host.probe(f"stat -c '%U %a' {dm.EXPORTER_KEY}").stdout.strip() == "prometheus 600"
    assert host.probe(f"stat -c '%U %a' {desired_tls.server_key_path(params)}").stdout.strip() == "postgres 600"
    # verification is real: a client trusting another CA is refused
    other = "/tmp/hcbpg-other-ca.crt"
    host.put_text(other, render_ca("lab-not-ours").cert_pem, mode=0o644)
    try:
        ok, err = get(host, dm.exporter_url(s), ca=other)
    finally:
        host.run(f"rm -f {other}", quiet=True)
    assert not ok and "certificate" in err.lower(), err


def test_node_exporter_serves_tls_only_on_both_machines_and_a_second_run_changes_nothing(params, hosts):
    a = params.alerting
    assert a is not None and params.jumpbox is not None
    ca = desired_tls.client_ca_path(params)
    t0 = time.monotonic()
    for name in (STAGE_PRIMARY, JUMPBOX):
        ops_alerting.ensure_node_exporter(hosts[name], params, name)
    TIMINGS["node_exporters_first_run_s"] = round(time.monotonic() - t0, 1)
    for name, ip in ((STAGE_PRIMARY, params.primary.private_ip), (JUMPBOX, params.jumpbox.private_ip)):
        host = hosts[name]
        body = ""
        for _ in range(40):  # its first second: not listening yet
            ok, body = get(host, f"https://{ip}:{a.node_exporter_port}/metrics", ca=ca)
            if ok:
                break
            time.sleep(0.5)
        assert ok and "node_load1" in body, body[-300:]
        plain = host.probe(f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 5 "
                           f"http://{ip}:{a.node_exporter_port}/metrics").stdout.strip()
        assert plain == "400", plain
    # a second run: nothing to change, on either machine, for either exporter
    again = [o for name in (STAGE_PRIMARY, JUMPBOX) for o in ops_alerting.ensure_node_exporter(hosts[name], params,
                                                                                                name)]
    assert not any(o.changed for o in again), [str(o) for o in again if o.changed]
    s = params.primary
    assert not monitoring.ensure_exporter(hosts[s.name], params, s, STATE["cfg"], STATE["pw"]).changed


def test_an_exporter_from_before_tls_is_planned_by_a_dry_run_and_moved_to_tls_by_the_run(params, hosts):
    """An exporter as step 13 left it before: plain HTTP, no web config, no certificate."""
    s = params.primary
    host = hosts[s.name]
    cfg, pw = STATE["cfg"], STATE["pw"]
    env = host.read_text(dm.EXPORTER_ENV) or ""
    old_env = env.replace(f" --web.config.file={dm.EXPORTER_WEB_CONFIG}", "")
    assert old_env != env
    host.put_text(dm.EXPORTER_ENV, old_env, mode=0o600)
    host.run(f"rm -f {dm.EXPORTER_WEB_CONFIG} {dm.EXPORTER_CERT} {dm.EXPORTER_KEY}")
    monitoring.run_stop_exporter(host)
    host.run(monitoring._start_cmd(), display="start the exporter as it was (plain HTTP)")
    url = f"http://{dm.exporter_listen(s)}/metrics"
    ok = False
    for _ in range(40):
        ok, _body = get(host, url)
        if ok:
            break
        time.sleep(0.5)
    assert ok, "the exporter from before serves plain HTTP"
    plan = monitoring.ensure_exporter(DryRunHost(host), params, s, cfg, None)
    assert plan.dry_run and plan.changed
    for wanted in ("issued: no certificate yet", f"write {dm.EXPORTER_WEB_CONFIG}", "restart"):
        assert wanted in plan.actions, (wanted, plan.actions)
    assert f"+ARGS='--web.listen-address={dm.exporter_listen(s)}" in plan.diff
    assert get(host, url)[0], "a dry run changed nothing: still plain HTTP"
    out = monitoring.ensure_exporter(host, params, s, cfg, pw)
    assert out.changed and out.actions[-1] == "restart"
    checks = monitoring.check_exporter(host, s)
    assert all(c.ok for c in checks), [f"{c.name}: {c.detail}" for c in checks]
    assert not monitoring.ensure_exporter(host, params, s, cfg, pw).changed


def test_what_vectors_connector_verifies_holds_for_the_primarys_certificate(params, hosts):
    """Vector's postgresql_metrics with tls.ca_file connects through OpenSSL with the CA and the dialled host as the
    name to check: openssl s_client (PostgreSQL's STARTTLS) with the same CA and -verify_ip does the same checks."""
    s = params.primary
    host = hosts[s.name]
    ca = desired_tls.client_ca_path(params)

    def verify(ip: str) -> str:
        cmd = (f"openssl s_client -starttls postgres -connect {s.private_ip}:{params.postgres.port} -CAfile {ca} "
               f"-verify_ip {ip} -verify_return_error -brief </dev/null")
        return host.probe(cmd, timeout=30).output

    good = verify(s.private_ip)
    assert "Verification: OK" in good, good[-500:]
    bad = verify("10.255.255.1")
    assert "Verification: OK" not in bad and "mismatch" in bad.lower(), bad[-500:]
    print("\nexporters TLS lab timings:", TIMINGS)
