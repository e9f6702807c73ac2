"""Patroni and etcd as hcbpg renders and reads them (issue 28, pure): the config files against golden files and
against Patroni 3.0.2's and etcd 3.4.23's own parsers where this machine has them; GET /cluster answers made by
Patroni 3.0.2's cluster_as_json (tests/golden/patroni.cluster.make.py); etcdctl 3.4.23 output recorded from a
three-member cluster with one, then two members killed."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hcbpg.desired import etcd as detcd
from hcbpg.desired import patroni as dp
from hcbpg.desired.capacity import ServerShape, render_capacity
from hcbpg.errors import HcbpgError, ParamsError
from hcbpg.params import Params, parse_params

from goldenfile import GOLDEN, golden
from nbutil import manual_production

CCX13 = ServerShape("ccx13", cores=2, memory_gb=8.0, disk_gb=80)
SECRETS = dp.PatroniSecrets(rest_password="rest 'pw\"&", etcd_password="etcd:pw#1", replication_password="repl pw ü")
SYSTEM_PATRONI = Path("/usr/lib/python3/dist-packages/patroni/config.py")


def data(**patroni: Any) -> dict[str, Any]:
    d = manual_production()
    d["replication"].update(
        manager="patroni", connection_limit=5,
        patroni={"scope": "hcb-production", "rest_password": "op://HCB Engineering/Patroni REST/password", **patroni},
        etcd={"patroni_password": "op://HCB Engineering/etcd patroni/password"})
    d["jumpbox"] = {"private_ip": "10.0.1.40"}
    return d


def params(**patroni: Any) -> Params:
    return parse_params(data(**patroni))


def cases() -> dict[str, dict[str, Any]]:
    lines = (GOLDEN / "patroni.cluster.jsonl").read_text().splitlines()
    return {c["case"]: c["cluster"] for c in map(json.loads, lines)}


# the files ---------------------------------------------------------------------------------------------------

def test_patroni_yaml_golden_production_primary():
    p = params()
    golden("patroni.server-postgres-1.yml", dp.render_patroni_yaml(p, p.servers[0], shape=CCX13))


def test_patroni_yaml_golden_without_watchdog_or_pgbackrest_method():
    p = params(watchdog="off", synchronous_mode=False, create_replica_methods=["basebackup"])
    golden("patroni.server-postgres-2.no-watchdog.yml", dp.render_patroni_yaml(p, p.servers[1], shape=CCX13))


def test_secrets_file_golden_and_never_in_the_config():
    p = params()
    golden("patroni.secrets.yml", dp.render_patroni_secrets(p))
    text = dp.render_patroni_yaml(p, p.servers[0], shape=CCX13)
    for value in ("rest 'pw", "etcd:pw#1", "repl pw", "password", "<secret>"):
        assert value not in text
    merged = yaml.safe_load(dp.render_patroni_secrets(p, SECRETS))
    assert merged["restapi"]["authentication"]["password"] == SECRETS.rest_password
    assert merged["etcd3"]["password"] == SECRETS.etcd_password
    assert merged["postgresql"]["authentication"]["replication"]["password"] == SECRETS.replication_password
    assert "rest 'pw" not in repr(SECRETS)


def test_config_parses_as_yaml_with_what_the_design_says():
    p = params()
    cfg = yaml.safe_load(dp.render_patroni_yaml(p, p.servers[1], shape=CCX13))
    assert (cfg["scope"], cfg["name"], cfg["namespace"]) == ("hcb-production", "server-postgres-2", "/service/")
    assert cfg["restapi"]["listen"] == "10.0.1.6:8008" and cfg["restapi"]["allowlist"] == ["10.0.1.5", "10.0.1.6"]
    # the two other voters only, as proxies: its own etcd member, stale after a cut heals, is never read
    assert cfg["etcd3"]["hosts"] == ["10.0.1.5:2379", "10.0.1.40:2379"] and cfg["etcd3"]["use_proxies"] is True
    assert cfg["postgresql"]["listen"] == "localhost,10.0.1.6:5432"
    assert "pg_hba" not in cfg["postgresql"] and "parameters" not in cfg["postgresql"]  # hcbpg owns both
    assert cfg["bootstrap"]["dcs"]["ttl"] == 12 and cfg["bootstrap"]["dcs"]["failsafe_mode"] is True


def test_dcs_parameters_keep_hcbpg_s_capacity_values():
    p = params()
    got = dp.dcs_parameters(p, CCX13)
    cap = render_capacity(p, CCX13)
    assert got["max_connections"] == cap["max_connections"] and got["max_worker_processes"] == cap["max_worker_processes"]
    assert got["wal_keep_size"] == p.replication.wal_keep_size  # type: ignore[union-attr]
    assert set(got) <= dp.PATRONI_OWNED
    assert not {"hot_standby", "wal_log_hints", "cluster_name", "listen_addresses", "port"} & set(got)
    bigger = dp.dcs_parameters(p, ServerShape("ccx43", cores=16, memory_gb=64.0, disk_gb=360))
    assert bigger["max_worker_processes"] == 16  # a larger server type re-renders them, as conf.d did


def test_dcs_patch_sends_only_what_differs():
    p = params()
    want = dp.dcs_config(p, CCX13)
    assert dp.render_dcs_patch(want, p, CCX13) == {}
    current = copy.deepcopy(want)
    current["pause"] = True  # the operator's: never undone by a patch
    current["ttl"] = 30
    current["synchronous_mode"] = "off"
    current["postgresql"]["parameters"]["max_connections"] = "100"
    current["postgresql"]["parameters"]["wal_level"] = "replica"
    assert dp.render_dcs_patch(current, p, CCX13) == {
        "ttl": 12, "synchronous_mode": True,
        "postgresql": {"parameters": {"max_connections": want["postgresql"]["parameters"]["max_connections"]}}}
    current = copy.deepcopy(want)
    current["postgresql"]["parameters"]["max_connections"] = str(want["postgresql"]["parameters"]["max_connections"])
    current["failsafe_mode"] = "on"
    assert dp.render_dcs_patch(current, p, CCX13) == {}


@pytest.mark.skipif(not SYSTEM_PATRONI.is_file(), reason="Debian's patroni package is not installed here")
def test_patroni_3_0_2_reads_the_two_files_as_one_config(tmp_path: Path):
    """Patroni's own Config merges secrets.yml over patroni.yml and keeps every DCS parameter hcbpg sends."""
    p = params()
    (tmp_path / "patroni.yml").write_text(dp.render_patroni_yaml(p, p.servers[0], shape=CCX13))
    (tmp_path / "secrets.yml").write_text(dp.render_patroni_secrets(p, SECRETS))
    script = (
        "import json, sys\n"
        "sys.path.insert(0, '/usr/lib/python3/dist-packages')\n"
        "from patroni.config import Config\n"
        "c = Config(sys.argv[1])\n"
        "c.set_dynamic_configuration(c['bootstrap']['dcs'])\n"
        "print(json.dumps({'auth': c['restapi']['auth'], 'etcd': [c['etcd3']['username'], c['etcd3']['password']],"
        " 'pg': c['postgresql']['authentication'], 'parameters': dict(c['postgresql']['parameters']),"
        " 'ttl': c['ttl'], 'failsafe': c['failsafe_mode']}))\n")
    out = subprocess.run(["/usr/bin/python3", "-c", script, str(tmp_path)], capture_output=True, text=True,
                         check=True, timeout=60)
    got = json.loads(out.stdout)
    assert got["auth"] == f"patroni:{SECRETS.rest_password}"
    assert got["etcd"] == ["patroni", SECRETS.etcd_password]
    assert got["pg"]["replication"] == {"username": "repuser", "password": SECRETS.replication_password,
                                        "sslmode": "verify-full",
                                        "sslrootcert": "/etc/hcbpg/tls/production-postgres-ca.crt"}
    for key, value in dp.dcs_parameters(p, CCX13).items():
        assert got["parameters"][key] == value, key  # none dropped by Patroni's own validators
    assert (got["ttl"], got["failsafe"]) == (12, True)
    assert dp.patroni_argv(p) == ("/usr/bin/patroni", "/etc/patroni/15-main.d")
    # Patroni's validator connects to every address the config names (is the port in use, is etcd there): in a
    # network namespace of its own with nothing but lo, so that no packet leaves for production's addresses (on
    # this machine's default route a proxy answered 10.0.1.5:8008; under load a connect there outlived the timeout)
    isolated = ["unshare", "--net", "--"]
    if subprocess.run([*isolated, "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare --net is refused here (needs root): Patroni's validator would send packets out")
    validate = subprocess.run([*isolated, dp.patroni_argv(p)[0], "--validate-config", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    # the only complaints: etcd's members cannot be reached from a network of nothing
    complaints = validate.stderr.splitlines()
    assert complaints and all(re.search(r"^etcd3\.hosts\.\d+ \S+ didn't pass validation: '\S+ is not reachable'$", line)
                              for line in complaints), validate.stderr


def test_slot_names_are_patroni_s():
    assert dp.slot_name("server-postgres-2") == "server_postgres_2"
    assert dp.slot_name("A.b-c+d") == "a_b_cu0043d"


def test_tuning_notes_say_the_derivation_and_patroni_3_2_s_floor():
    p = params()
    notes = dp.tuning_notes(p, version="3.0.2-1")
    assert notes[0] == ("leader lease ttl 12 s >= loop_wait 2 + 2 x retry_timeout 3 + 4 (failsafe's POST /failsafe "
                        "to each member) = 12")
    assert "3 s between" in notes[1]
    assert not any("raises ttl" in n for n in notes)
    assert any("raises ttl below 20 to 20" in n for n in dp.tuning_notes(p, version="3.2.2-1"))


def test_missing_sections_are_params_errors():
    d = manual_production()
    p = parse_params(d)
    with pytest.raises(ParamsError):
        dp.patroni_params(p)
    with pytest.raises(ParamsError):
        detcd.etcd_members(p)
    assert not dp.managed(p) and dp.managed(params())


# GET /cluster and the switchover plan ------------------------------------------------------------------------

def test_parse_cluster_of_patroni_3_0_2():
    view = dp.parse_cluster(json.dumps(cases()["healthy-sync"]))
    assert view.leader is not None and view.leader.name == "server-postgres-1"
    (rep,) = view.replicas
    assert (rep.role, rep.state, rep.timeline, rep.lag, rep.host) == ("sync_standby", "running", 3, 0, "10.0.1.6")
    assert view.rows() == [
        {"Member": "server-postgres-1", "Host": "10.0.1.5", "Role": "Leader", "State": "running", "TL": "3",
         "Lag in MB": ""},
        {"Member": "server-postgres-2", "Host": "10.0.1.6", "Role": "Sync Standby", "State": "running", "TL": "3",
         "Lag in MB": "0"}]
    after = dp.parse_cluster(cases()["after-failover"])
    assert after.member("server-postgres-1").lag is None  # type: ignore[union-attr]
    assert after.scheduled_switchover == {"at": "2026-12-07T03:00:00+00:00", "from": "server-postgres-2",
                                          "to": "server-postgres-1"}
    assert dp.parse_cluster(cases()["nofailover-paused"]).paused
    with pytest.raises(HcbpgError, match="no JSON"):
        dp.parse_cluster("<html>502</html>")


def test_switchover_to_the_sync_standby_is_planned():
    plan = dp.plan_switchover(dp.parse_cluster(cases()["healthy-sync"]), None, params=params())
    assert plan.ok and plan.body() == {"leader": "server-postgres-1", "candidate": "server-postgres-2"}
    assert dp.plan_switchover(dp.parse_cluster(cases()["healthy-sync"]), "server-postgres-2", params=params()).ok


def test_switchover_refuses_a_lagging_or_async_replica_with_reasons():
    view = dp.parse_cluster(cases()["lagging-async"])
    plan = dp.plan_switchover(view, "server-postgres-2", params=params())
    assert plan.reasons == (
        "server-postgres-2: 33554432 bytes behind, more than maximum_lag_on_failover (1048576)",
        "server-postgres-2: not the sync standby (in synchronous mode only it has every acknowledged commit)")
    with pytest.raises(HcbpgError, match="no switchover to send"):
        plan.body()
    relaxed = dp.plan_switchover(view, None, params=params(synchronous_mode=False, maximum_lag_on_failover=33554432))
    assert relaxed.ok and relaxed.candidate == "server-postgres-2"


def test_switchover_refuses_nofailover_the_leader_itself_unknown_and_a_scheduled_one():
    p = params()
    view = dp.parse_cluster(cases()["nofailover-paused"])
    assert dp.plan_switchover(view, "server-postgres-2", params=p).reasons == (
        "server-postgres-2: tagged nofailover",)
    none = dp.plan_switchover(view, None, params=p)
    assert none.candidate is None and none.reasons == (
        "no replica may take over: server-postgres-2: tagged nofailover",)
    healthy = dp.parse_cluster(cases()["healthy-sync"])
    assert dp.plan_switchover(healthy, "server-postgres-1", params=p).reasons == (
        "server-postgres-1 is the leader already",)
    assert dp.plan_switchover(healthy, "server-postgres-9", params=p).reasons[0].startswith(
        "server-postgres-9 is not a member")
    after = dp.plan_switchover(dp.parse_cluster(cases()["after-failover"]), "server-postgres-1", params=p)
    assert after.reasons == (
        "a switchover is already scheduled ({'at': '2026-12-07T03:00:00+00:00', 'from': 'server-postgres-2', "
        "'to': 'server-postgres-1'})",
        "server-postgres-1: state stopped, not running", "server-postgres-1: its lag is unknown",
        "server-postgres-1: on timeline 3, the leader on 4",
        "server-postgres-1: not the sync standby (in synchronous mode only it has every acknowledged commit)")


def test_no_leader_no_switchover():
    view = dp.parse_cluster({"members": [{"name": "server-postgres-2", "role": "replica", "state": "running",
                                          "lag": 0, "timeline": 2}]})
    plan = dp.plan_switchover(view, "server-postgres-2", params=params(synchronous_mode=False))
    assert plan.reasons[0].startswith("no leader")


# etcd ----------------------------------------------------------------------------------------------------------

def test_etcd_conf_golden_for_a_server_and_the_jumpbox():
    p = params()
    golden("etcd.server-postgres-1.yml", detcd.render_etcd_conf(p, "server-postgres-1"))
    golden("etcd.hcb-jumpbox.yml", detcd.render_etcd_conf(p, "hcb-jumpbox"))
    assert detcd.render_etcd_default(p).endswith("\nETCD_CONFIG_FILE=/etc/etcd/hcbpg.yml\n")
    assert detcd.etcd_argv() == ("/usr/bin/etcd", "--config-file", "/etc/etcd/hcbpg.yml")


def test_initial_cluster_and_endpoints():
    p = params()
    assert detcd.initial_cluster(p) == ("server-postgres-1=https://10.0.1.5:2380,server-postgres-2=https://10.0.1.6:2380,"
                                        "hcb-jumpbox=https://10.0.1.40:2380")
    assert detcd.client_endpoints(p) == ["https://10.0.1.5:2379", "https://10.0.1.6:2379", "https://10.0.1.40:2379"]
    with pytest.raises(ValueError, match="not an etcd member"):
        detcd.render_etcd_conf(p, "drill-1")


def test_etcd_conf_says_mutual_tls_and_the_params_timing():
    d = data()
    d["replication"]["etcd"].update(heartbeat_ms=200, election_ms=2000, client_port=12379, peer_port=12380)
    cfg = yaml.safe_load(detcd.render_etcd_conf(parse_params(d), "server-postgres-2"))
    assert (cfg["heartbeat-interval"], cfg["election-timeout"]) == (200, 2000)
    assert cfg["listen-client-urls"] == "https://10.0.1.6:12379,https://127.0.0.1:12379"
    assert cfg["enable-grpc-gateway"] is True  # Patroni's client needs it; off by default with a config file
    for side in ("client-transport-security", "peer-transport-security"):
        assert cfg[side]["client-cert-auth"] is True
        assert cfg[side]["trusted-ca-file"] == "/etc/hcbpg/tls/production-postgres-ca.crt"


def test_parse_endpoint_health_recorded_from_etcdctl_3_4():
    one = detcd.parse_endpoint_health((GOLDEN / "etcd.endpoint-health.one-down.json").read_text())
    assert [h.healthy for h in one] == [True, True, False]
    assert one[2].error == "context deadline exceeded" and one[2].endpoint == "http://127.0.0.1:23379"
    assert detcd.health_summary(one) == (2, 3, True)
    two = detcd.parse_endpoint_health((GOLDEN / "etcd.endpoint-health.two-down.json").read_text())
    assert detcd.health_summary(two) == (0, 3, False)
    with pytest.raises(HcbpgError, match="printed no JSON"):
        detcd.parse_endpoint_health("Error: context deadline exceeded")


def test_parse_member_list_recorded_and_checked_against_params():
    listed = detcd.parse_member_list((GOLDEN / "etcd.member-list.json").read_text())
    assert listed.cluster_id == 4209492528444040382
    assert [(m.name, m.peer_urls) for m in listed.members][0] == ("m3", ("http://127.0.0.1:23380",))
    assert listed.members[0].id == 3682749693109407146  # a uint64 beyond 2**53, exact
    p = params()
    problems = detcd.check_members(p, listed)
    assert problems[0] == "server-postgres-1: not a member of the etcd cluster (or added and never started)"
    assert problems[-1] == "m2: a member params do not name (peer http://127.0.0.1:22380)"
    good = {"header": {"cluster_id": 1}, "members": [
        {"ID": i + 1, "name": m.name, "peerURLs": [detcd.peer_url(p, m)], "clientURLs": [detcd.client_url(p, m)]}
        for i, m in enumerate(detcd.etcd_members(p))]}
    assert detcd.check_members(p, detcd.parse_member_list(json.dumps(good))) == []
    good["members"][2]["peerURLs"] = ["https://10.0.1.41:2380"]
    good["members"][1]["isLearner"] = True
    assert detcd.check_members(p, detcd.parse_member_list(json.dumps(good))) == [
        "server-postgres-2: a learner (not a voter) yet",
        "hcb-jumpbox: peer URL https://10.0.1.41:2380, expected https://10.0.1.40:2380"]


# GET /patroni, GET /history, etcd's auth probe -------------------------------------------------------------------

#: GET /patroni of a leader serving under failsafe (the fields 3.0.2's get_postgresql_status and
#: _write_status_response set)
LEADER_STATUS = {
    "state": "running", "postmaster_start_time": "2026-12-07 00:10:00.123456+00:00", "role": "master",
    "server_version": 150010, "xlog": {"location": 50331648}, "timeline": 3,
    "replication": [{"usename": "repuser", "application_name": "server-postgres-2", "client_addr": "10.0.1.6",
                     "state": "streaming", "sync_state": "sync", "sync_priority": 1}],
    "failsafe_mode_is_active": True, "dcs_last_seen": 1796601600,
    "tags": {"nofailover": False}, "database_system_identifier": "7311112222333344445",
    "patroni": {"version": "3.0.2", "scope": "hcb-production"}}


def test_parse_member_status_of_a_leader_under_failsafe():
    st = dp.parse_member_status(json.dumps(LEADER_STATUS))
    assert st.is_primary and st.failsafe_active and st.timeline == 3
    assert (st.system_identifier, st.dcs_last_seen, st.version, st.scope) == (
        "7311112222333344445", 1796601600, "3.0.2", "hcb-production")
    assert st.replication[0]["sync_state"] == "sync"
    stopped = dp.parse_member_status({"state": "stopped", "role": "replica", "cluster_unlocked": True,
                                      "dcs_last_seen": 0, "patroni": {"version": "3.0.2", "scope": "x"}})
    assert not stopped.is_primary and stopped.cluster_unlocked and stopped.timeline is None
    with pytest.raises(HcbpgError, match="expected an object with a state"):
        dp.parse_member_status("{}")


def test_parse_history_with_old_and_enriched_lines():
    hist = dp.parse_history('[[1,50331808,"no recovery target specified"],'
                            '[2,67109024,"no recovery target specified","2026-12-07T01:02:03.456+00:00",'
                            '"server-postgres-2"]]')
    assert hist[0] == dp.HistoryEntry(1, 50331808, "no recovery target specified")
    assert (hist[1].timeline, hist[1].new_leader) == (2, "server-postgres-2")
    assert dp.parse_history("[]") == []
    with pytest.raises(HcbpgError, match="not \\[timeline, lsn, reason"):
        dp.parse_history("[[1]]")


def test_etcd_auth_probe_recorded_from_etcd_3_4():
    """POST /v3/auth/authenticate with a wrong password, before and after `auth enable`; a right one: a token."""
    assert detcd.parse_auth_probe((GOLDEN / "etcd.auth-probe.disabled.json").read_text()) is False
    assert detcd.parse_auth_probe((GOLDEN / "etcd.auth-probe.enabled.json").read_text()) is True
    assert detcd.parse_auth_probe((GOLDEN / "etcd.auth-probe.ok.json").read_text()) is True
    assert detcd.parse_auth_probe("curl: (7) Failed to connect") is None
    assert detcd.parse_auth_probe('{"error":"etcdserver: request timed out","code":14}') is None


# curl's netrc for the REST API, the app's multi-host URL -------------------------------------------------------

@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed here")
@pytest.mark.parametrize("password", ["plain-pw", "sp ace\"q'&#=%", "back\\slash\\", "ü€\ttab"])
def test_curl_sends_the_rest_password_from_the_rendered_netrc(tmp_path: Path, password: str):
    import base64
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization") or "")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = params()
        netrc = tmp_path / "netrc"
        netrc.write_text(dp.render_rest_netrc(p, p.servers[0], password))
        subprocess.run(["curl", "-sf", "--netrc-file", str(netrc), f"http://127.0.0.1:{server.server_port}/"],
                       check=True, timeout=30)
    finally:
        server.shutdown()
    assert seen and base64.b64decode(seen[0].split()[1]).decode() == f"patroni:{password}"


def test_rest_netrc_placeholder_and_refusal():
    p = params()
    assert dp.render_rest_netrc(p, p.servers[1]) == (
        'machine 10.0.1.6 login patroni password "<secret>"\nmachine 127.0.0.1 login patroni password "<secret>"\n')
    with pytest.raises(HcbpgError, match="control character"):
        dp.render_rest_netrc(p, p.servers[1], "a\nmachine evil")


def test_app_url_names_both_servers_and_the_failover_options():
    from hcbpg.pg.conninfo import parse_rails_url, render_rails_url
    p = params()
    url = render_rails_url(p.postgres.database, dp.app_hosts(p), dp.app_url_query(p, "rails", "p&w"))
    assert url == ("postgresql:hcb_production?host=10.0.1.5,10.0.1.6&port=5432,5432&user=rails&password=p%26w"
                   "&sslmode=verify-full&sslrootcert=/etc/hcbpg/tls/production-postgres-ca.crt"
                   "&target_session_attrs=read-write&connect_timeout=2&keepalives=1&keepalives_idle=5"
                   "&keepalives_interval=2&keepalives_count=2&tcp_user_timeout=5000")
    blazer = parse_rails_url(render_rails_url(p.postgres.database, dp.app_hosts(p),
                                              dp.app_url_query(p, "blazer", "x", target_session_attrs="prefer-standby")))
    assert blazer["target_session_attrs"] == "prefer-standby"
    with pytest.raises(ValueError, match="libpq 14"):
        dp.app_url_query(p, "u", "p", target_session_attrs="leader")


# after a failover ------------------------------------------------------------------------------------------------

FORK = ('[[1,16777376,"no recovery target specified"],'
        '[3,50331808,"no recovery target specified","2026-12-07T01:02:03.456+00:00","server-postgres-2"]]')


def test_lsn_parse():
    assert dp.parse_lsn("0/3000060") == 0x3000060 and dp.parse_lsn("1/0") == 1 << 32
    with pytest.raises(ValueError):
        dp.parse_lsn("3000060")


def test_after_failover_nothing_happened():
    got = dp.plan_after_failover(dp.parse_cluster(cases()["healthy-sync"]), [], recorded_leader="server-postgres-1",
                                 recorded_timeline=3)
    assert (got.happened, got.action) == (False, "none")


def test_after_failover_the_old_leader_stopped_is_rebuilt_and_its_lost_wal_counted():
    view = dp.parse_cluster(cases()["after-failover"])
    got = dp.plan_after_failover(view, dp.parse_history(FORK), recorded_leader="server-postgres-1",
                                 recorded_timeline=3, old_leader_last_lsn=50331808 + 8192)
    assert (got.happened, got.action, got.new_leader, got.fork_lsn, got.at, got.lost_bytes) == (
        True, "reinitialize", "server-postgres-2", 50331808, "2026-12-07T01:02:03.456+00:00", 8192)
    assert got.notes[0] == ("server-postgres-1 had 8192 bytes of WAL past the fork point (commits it acknowledged "
                            "there are not on the new timeline)")
    sync = dp.plan_after_failover(view, dp.parse_history(FORK), recorded_leader="server-postgres-1",
                                  recorded_timeline=3, old_leader_last_lsn=50331808)
    assert sync.lost_bytes == 0 and "nothing acknowledged was lost" in sync.notes[0]


def test_after_failover_rejoined_waiting_gone_or_unreachable():
    history = dp.parse_history(FORK)
    raw = cases()["after-failover"]

    def with_old(**fields: Any) -> dp.ClusterView:
        d = copy.deepcopy(raw)
        if fields.get("absent"):
            d["members"] = [m for m in d["members"] if m["name"] != "server-postgres-1"]
        else:
            d["members"][0].update(fields)
        return dp.parse_cluster(d)

    def action(view: dp.ClusterView, reachable: bool = True) -> str:
        return dp.plan_after_failover(view, history, recorded_leader="server-postgres-1", recorded_timeline=3,
                                      old_leader_reachable=reachable).action

    assert action(with_old(state="running", timeline=4, lag=0)) == "rejoined"
    assert action(with_old(state="running", timeline=3, lag=0)) == "reinitialize"  # still on the old timeline
    assert action(with_old(state="creating replica")) == "wait"
    assert action(with_old(absent=True)) == "start-patroni"
    assert action(with_old(absent=True), reachable=False) == "fence"
    no_leader = dp.parse_cluster({"members": [{"name": "server-postgres-2", "role": "replica", "state": "running",
                                               "lag": 0, "timeline": 3}]})
    got = dp.plan_after_failover(no_leader, [], recorded_leader="server-postgres-1", recorded_timeline=3,
                                 old_leader_reachable=False)
    assert got.happened and got.action == "fence" and got.notes[0].startswith("no leader now")
