"""Params of issue 28 (Patroni, etcd, the jumpbox): defaults change nothing, and each contradiction is one
problem naming its key."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hcbpg.errors import ParamsError
from hcbpg.params import parse_params
from hcbpg.params_ha import PATRONI_OWNED_SETTINGS

from nbutil import REPO, manual_production


def prod() -> dict[str, Any]:
    """Production without the high-availability sections (the committed file has them: see below)."""
    return manual_production()


def patroni_prod() -> dict[str, Any]:
    """Production with the commented high-availability example switched on."""
    d = prod()
    d["replication"].update(
        manager="patroni", connection_limit=5,
        patroni={"scope": "hcb-production", "rest_password": "op://HCB Engineering/Patroni REST/password"},
        etcd={"patroni_password": "op://HCB Engineering/etcd patroni/password"})
    d["jumpbox"] = {"private_ip": "10.0.1.40"}
    d["hetzner"]["protection"] = True
    return d


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ParamsError) as ei:
        parse_params(data)
    return ei.value.problems


def test_defaults_keep_manual_replication_and_no_jumpbox():
    p = parse_params(prod())
    assert p.replication is not None and p.replication.manager == "manual"
    assert (p.replication.patroni, p.replication.etcd, p.jumpbox, p.hetzner.protection) == (None, None, None, False)


def test_the_committed_production_params_run_patroni_with_the_jumpbox():
    text = (REPO / "params" / "production.yaml").read_text()
    p = parse_params(yaml.safe_load(text))
    assert p.replication and p.replication.manager == "patroni" and p.replication.patroni and p.replication.etcd
    assert p.jumpbox and p.hetzner.protection
    assert (p.replication.patroni.ttl, p.replication.patroni.loop_wait, p.replication.patroni.retry_timeout) == (12, 2, 3)
    assert p.replication.patroni.create_replica_methods == ["pgbackrest", "basebackup"]
    assert (p.replication.patroni.synchronous_mode, p.replication.patroni.watchdog) == (True, "automatic")
    assert (p.jumpbox.name, p.jumpbox.private_ip, p.jumpbox.server_type) == ("hcb-jumpbox", "10.0.1.40", "cpx11")
    refs = p.secret_refs()
    assert refs["replication.patroni.rest_password"].startswith("op://")
    assert refs["replication.etcd.patroni_password"].startswith("op://")


def test_patroni_params_parse_with_the_design_defaults():
    p = parse_params(patroni_prod())
    pat = p.replication.patroni  # type: ignore[union-attr]
    assert pat is not None
    assert (pat.synchronous_mode, pat.synchronous_mode_strict, pat.failsafe_mode, pat.watchdog) == (
        True, False, True, "automatic")
    assert p.replication.etcd.data_dir == "/var/lib/etcd/hcbpg"  # type: ignore[union-attr]


def test_ttl_rule_counts_failsafe_s_four_seconds():
    d = patroni_prod()
    d["replication"]["patroni"].update(ttl=11)
    assert problems(d) == ["replication.patroni.ttl: 11 is below loop_wait + 2 * retry_timeout + 4 (failsafe_mode's "
                           "POST /failsafe to each member) = 2 + 2 * 3 + 4 = 12: an isolated leader would still be "
                           "writing when a replica takes the lease; raise ttl to 12 or lower loop_wait / retry_timeout"]
    d["replication"]["patroni"].update(failsafe_mode=False)
    assert parse_params(d).replication.patroni.ttl == 11  # type: ignore[union-attr]
    d["replication"]["patroni"].update(ttl=7)
    assert problems(d)[0].startswith("replication.patroni.ttl: 7 is below loop_wait + 2 * retry_timeout = 2 + 2 * 3 = 8")


def test_loop_wait_of_zero_is_refused():
    d = patroni_prod()
    d["replication"]["patroni"].update(loop_wait=0)
    assert problems(d)[0].startswith("replication.patroni.loop_wait:")


def test_strict_without_synchronous_mode_is_refused():
    d = patroni_prod()
    d["replication"]["patroni"].update(synchronous_mode=False, synchronous_mode_strict=True)
    assert problems(d) == ["replication.patroni.synchronous_mode_strict: true needs synchronous_mode: true (strict "
                           "only changes what synchronous mode does without a standby)"]


def test_replica_methods_unknown_or_twice():
    d = patroni_prod()
    d["replication"]["patroni"]["create_replica_methods"] = ["wal_e"]
    assert problems(d)[0].startswith("replication.patroni.create_replica_methods[0]:")
    d["replication"]["patroni"]["create_replica_methods"] = ["basebackup", "basebackup"]
    assert problems(d) == ["replication.patroni.create_replica_methods: basebackup listed twice"]
    d["replication"]["patroni"]["create_replica_methods"] = []
    assert problems(d)[0].startswith("replication.patroni.create_replica_methods:")


def test_watchdog_mode_is_one_of_three():
    d = patroni_prod()
    d["replication"]["patroni"]["watchdog"] = "on"
    assert problems(d)[0].startswith("replication.patroni.watchdog:")


def test_rest_password_must_be_a_reference():
    d = patroni_prod()
    d["replication"]["patroni"]["rest_password"] = "hunter2"
    (problem,) = problems(d)
    assert problem.startswith("replication.patroni.rest_password:") and "not a secret reference" in problem


def test_etcd_election_at_least_five_heartbeats_and_own_data_dir():
    d = patroni_prod()
    d["replication"]["etcd"].update(heartbeat_ms=300, election_ms=1000)
    assert problems(d) == ["replication.etcd.election_ms: 1000 is below 5 x heartbeat_ms (1500); etcd refuses to "
                           "start with that"]
    d = patroni_prod()
    d["replication"]["etcd"]["data_dir"] = "/var/lib/etcd/default"
    assert problems(d)[0].startswith("replication.etcd.data_dir: /var/lib/etcd/default is the etcd package's own")
    d["replication"]["etcd"]["data_dir"] = "/etc"
    assert problems(d)[0].startswith("replication.etcd.data_dir:")
    d = patroni_prod()
    d["replication"]["etcd"]["peer_port"] = 2379
    assert problems(d)[0].startswith("replication.etcd.peer_port: 2379 is client_port too")


def test_manager_patroni_needs_its_sections_the_jumpbox_and_pgbackrest():
    d = patroni_prod()
    del d["replication"]["patroni"]
    assert problems(d) == ["replication.patroni: manager patroni needs replication.patroni (see the commented "
                           "example in params/production.yaml)"]
    d = patroni_prod()
    del d["jumpbox"]
    assert problems(d) == ["jumpbox: replication.manager patroni needs the jumpbox (etcd's third voter: two database "
                           "servers alone cannot keep a quorum when one dies)"]
    d = patroni_prod()
    del d["pgbackrest"]
    d["audit"] = {"anchor": "none"}
    assert problems(d) == ["pgbackrest: replication.manager patroni needs the pgbackrest section (archive, and a "
                           "replica restored from the repository)"]


def test_patroni_needs_an_odd_number_of_etcd_voters():
    d = patroni_prod()
    d["servers"].append({"name": "server-postgres-3", "private_ip": "10.0.1.7", "role": "replica"})
    assert problems(d) == ["servers: replication.manager patroni runs etcd on the 3 server(s) and the jumpbox: 4 "
                           "voters; etcd needs an odd number (two servers and the jumpbox make three)"]


def test_patroni_needs_four_replication_connections():
    d = patroni_prod()
    d["replication"]["connection_limit"] = 2
    (problem,) = problems(d)
    assert problem.startswith("replication.connection_limit: 2 is too few under Patroni")


def test_postgres_settings_may_not_name_what_patroni_owns():
    d = patroni_prod()
    d["postgres"]["settings"] = {"max_connections": 900, "work_mem": "8MB", "cluster_name": "x"}
    assert problems(d) == [
        f"postgres.settings.{k}: Patroni owns {k} under replication.manager patroni (hcbpg sets it through Patroni's "
        "dynamic configuration); remove it from postgres.settings" for k in ("cluster_name", "max_connections")]
    d = prod()  # manual: unchanged, the key is allowed as before
    d["postgres"]["settings"] = {"max_locks_per_transaction": 128}
    assert parse_params(d).postgres.settings == {"max_locks_per_transaction": 128}
    assert {"max_connections", "max_worker_processes", "wal_level", "synchronous_standby_names"} <= PATRONI_OWNED_SETTINGS


def test_jumpbox_address_inside_the_subnet_and_its_own():
    d = patroni_prod()
    d["jumpbox"]["private_ip"] = "10.0.2.40"
    assert problems(d) == ["jumpbox.private_ip: 10.0.2.40 is outside the subnet 10.0.1.0/24"]
    d["jumpbox"]["private_ip"] = "10.0.1.6"
    assert problems(d) == ["jumpbox.private_ip: 10.0.1.6 is servers[1]'s (server-postgres-2) too"]
    d["jumpbox"].update(private_ip="10.0.1.41", name="drill-1")
    assert problems(d) == ["jumpbox.name: drill-1 is drill's name too"]
    d["jumpbox"] = {"private_ip": "10.0.1.255"}
    assert problems(d) == ["jumpbox.private_ip: 10.0.1.255 is the network or broadcast address of 10.0.1.0/24"]


def test_jumpbox_firewall_differs_from_the_database_servers():
    d = patroni_prod()
    d["jumpbox"]["firewall"] = d["hetzner"]["firewall"]
    assert problems(d)[0].startswith("jumpbox.firewall: hcb-postgres-ssh-only is hetzner.firewall too")


def test_metabase_goes_through_the_jumpbox():
    d = patroni_prod()
    d["roles"]["metabase"] = {"password": "op://HCB Engineering/Postgres metabase/password", "jumpbox_ip": "10.0.1.41"}
    assert problems(d) == ["roles.metabase.jumpbox_ip: 10.0.1.41 is not jumpbox.private_ip (10.0.1.40); Metabase's "
                           "route goes through the jumpbox"]
    d["roles"]["metabase"]["jumpbox_ip"] = "10.0.1.40"
    assert parse_params(d).roles.metabase.jumpbox_ip == "10.0.1.40"  # type: ignore[union-attr]


def test_ports_of_the_services_differ():
    d = patroni_prod()
    d["replication"]["patroni"]["rest_port"] = 2379
    assert problems(d) == ["replication.etcd.client_port: 2379 is replication.patroni.rest_port too; each service "
                           "needs its own port"]


def test_jumpbox_without_patroni_is_allowed_and_unknown_keys_named():
    d = prod()
    d["jumpbox"] = {"private_ip": "10.0.1.40", "ssh_extra_sources": ["198.51.100.0/24"]}
    assert parse_params(d).jumpbox.ssh_extra_sources == ["198.51.100.0/24"]  # type: ignore[union-attr]
    d["jumpbox"]["sever_type"] = "cpx11"
    assert problems(d) == ["jumpbox.sever_type: unknown key; did you mean 'server_type'?"]


def test_alerting_without_a_jumpbox_is_refused_naming_both_keys():
    """The monitor runs on the jumpbox: params with an alerting section and no jumpbox say so at load."""
    d = manual_production()
    d["alerting"] = yaml.safe_load((REPO / "params" / "production.yaml").read_text())["alerting"]
    with pytest.raises(ParamsError) as info:
        parse_params(d)
    assert "alerting: the monitor" in str(info.value) and "jumpbox" in str(info.value)
    d.pop("alerting")
    parse_params(d)
