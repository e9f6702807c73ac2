"""Specs of step 10's backups from the standby (issue 24, hcbpg.ops.pgbackrest_server.ensure_backup_standby) on
two recording doubles that answer each other's ``pgbackrest server-ping``: pgbackrest.conf names the other server
as pg2 only once its TLS server answers (steps 05/08's file has none), both files end with pg2, a second run
changes nothing, a dry run plans pg2 and writes nothing."""

from __future__ import annotations

import ipaddress
import re

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call
from hcbpg.desired.cloud import render_firewall_rules
from hcbpg.desired.pgbackrest import CONF_PATH, conf_options, parse_conf
from hcbpg.errors import SafetyCheckFailed
from hcbpg.lab.hosts import FIREWALL_CHAIN, render_firewall_restore
from hcbpg.ops import pgbackrest as ops_pgb
from hcbpg.ops import pgbackrest_server as ops_dps
from hcbpg.ops import tls
from hcbpg.params import load_params
from tests.fast.specs import covers
from tests.fast.test_pgbackrest_server_specs import SECRETS, Server, make_params


@pytest.fixture
def params(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield make_params(tmp_path)
    tls._CA_CACHE.clear()


class PairServer(Server):
    """A database server of the pair: ``server-ping`` to an address answers when that address's server runs."""

    def __init__(self, name: str, ip: str, pair: dict[str, "PairServer"]) -> None:
        super().__init__(name)
        self.ip, self.pair = ip, pair
        pair[ip] = self

    def answer(self, call: Call) -> Result | str | None:
        m = re.search(r"pgbackrest server-ping .*--tls-server-address=(\S+)", call.command)
        if m:
            target = self.pair.get(m.group(1).strip("'"))
            ok = target is not None and target.pid is not None
            return "" if ok else Result(self.name, call.command, 49, "", "ERROR: [049]: unable to connect", 0.0)
        return super().answer(call)


def make_pair(params) -> dict[str, PairServer]:
    pair: dict[str, PairServer] = {}
    return {s.name: PairServer(s.name, s.private_ip, pair) for s in params.servers}


def pg2(srv: Server) -> str | None:
    return parse_conf(srv.host.files.get(CONF_PATH) or "").get("hcb_production", {}).get("pg2-host")


def test_step_05s_file_names_pg2_only_when_the_other_answers(params):
    pair = make_pair(params)
    one, two = params.servers
    # steps 05/08: no TLS server runs yet, so no pg2 and no backup-standby
    ops_pgb.ensure_pgbackrest_conf(pair[one.name].host, params, one, version=(2, 45, 0))
    conf = parse_conf(pair[one.name].host.files[CONF_PATH])
    assert pg2(pair[one.name]) is None and "global:backup" not in conf
    assert conf["global:server"]["tls-server-address"] == "10.0.1.5"
    # the other's TLS server answers: the same call writes pg2
    pair[two.name].pid = 77
    out = ops_pgb.ensure_pgbackrest_conf(pair[one.name].host, params, one, version=(2, 45, 0))
    assert out.changed and pg2(pair[one.name]) == "10.0.1.6"
    assert parse_conf(pair[one.name].host.files[CONF_PATH])["global:backup"] == {"backup-standby": "y"}
    assert ops_pgb.get_standby_answers(pair[one.name].host, params, one)
    # a second call changes nothing (step 05 run again after step 10)
    assert not ops_pgb.ensure_pgbackrest_conf(pair[one.name].host, params, one, version=(2, 45, 0)).changed


def test_off_probes_nothing(params, tmp_path):
    off = make_params(tmp_path, backup_standby=False)
    pair = make_pair(off)
    assert ops_dps.ensure_backup_standby({n: p.host for n, p in pair.items()}, off) == []
    ops_pgb.ensure_pgbackrest_conf(pair["server-postgres-1"].host, off, off.primary, version=(2, 45, 0))
    assert not any("server-ping" in e for e in pair["server-postgres-1"].host.journal)


@covers("hcbpg.ops.pgbackrest_server.ensure_backup_standby", "fresh", "second run")
def test_fresh_then_second_run(params):
    pair = make_pair(params)
    hosts = {n: p.host for n, p in pair.items()}
    out = ops_dps.ensure_backup_standby(hosts, params)
    assert any(o.changed for o in out)
    first = pair["server-postgres-1"]
    # the first server's file was written before the second's TLS server answered (no pg2), then again with it
    assert first.host.journal.count(f"write {CONF_PATH}") == 2
    assert pg2(first) == "10.0.1.6" and pg2(pair["server-postgres-2"]) == "10.0.1.5"
    assert all(p.pid for p in pair.values())
    n = {name: len(p.host.journal) for name, p in pair.items()}
    again = ops_dps.ensure_backup_standby(hosts, params)
    assert not any(o.changed for o in again)
    for name, p in pair.items():
        assert [e for e in p.host.journal[n[name]:] if "server-ping" not in e] == [], name


@covers("hcbpg.ops.pgbackrest_server.ensure_backup_standby", "dry run")
def test_dry_run_plans_pg2(params):
    pair = make_pair(params)
    dry = {n: DryRunHost(p.host) for n, p in pair.items()}
    out = ops_dps.ensure_backup_standby(dry, params)
    assert any(o.changed for o in out) and all(o.dry_run for o in out)
    assert all(p.host.written == [] and p.pid is None for p in pair.values())
    conf = [o for o in out if o.what == f"{CONF_PATH} on server-postgres-1"]
    assert conf and "pg2-host=10.0.1.6" in conf[0].diff


@covers("hcbpg.ops.pgbackrest_server.ensure_backup_standby", "refusal")
def test_refused_without_both_servers(params):
    pair = make_pair(params)
    with pytest.raises(SafetyCheckFailed, match="need both database servers"):
        ops_dps.ensure_backup_standby({"server-postgres-1": pair["server-postgres-1"].host}, params)
    assert all(p.host.journal == [] and p.host.written == [] for p in pair.values())


def test_no_firewall_rule_the_private_network_carries_it(params):
    """Hetzner's firewalls never filter the private network (docs.hetzner.com/cloud/firewalls/faq: they cannot
    secure traffic to private networks), which is how Patroni's REST API and etcd's ports reach each other with no
    rule: the TLS server listens on the private address only, inside network.ip_range, and the database servers'
    firewall gets no rule for its port (one would open it on the public interface).  The lab's enforcement lets
    the network's range in before any rule, like Hetzner."""
    rng = ipaddress.ip_network(params.network.ip_range)
    for s in params.servers:
        addr = conf_options(params, s, version=None)["global:server"]["tls-server-address"]
        assert addr == s.private_ip and ipaddress.ip_address(addr) in rng
    for env in ("lab", "production"):
        p = load_params(env)
        assert p.pgbackrest is not None and p.pgbackrest.backup_standby, env
        assert not any(r.port == str(p.pgbackrest.tls_server_port) for r in render_firewall_rules(p, "db")), env
    lab = load_params("lab")
    text = render_firewall_restore([], [lab.network.ip_range])
    lines = text.splitlines()
    accept = lines.index(f"-A {FIREWALL_CHAIN} -s {ipaddress.ip_network(lab.network.ip_range)} -j ACCEPT")
    assert accept < lines.index(f"-A {FIREWALL_CHAIN} -j DROP")
