"""Renderers and plans of the server steps (pure functions) against golden files in tests/golden/.

Regenerate the golden files after an intended change with HCBPG_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import pytest

from hcbpg.adapters.dryrun import AbsentHost
from hcbpg.desired import packages as desired_packages
from hcbpg.desired import server as desired_server
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.params import parse_params
from hcbpg.pg import conf as pgconf
from hcbpg.pg import hba as pghba
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import install_postgres as install_step

from goldenfile import golden
from pgbackrest_params import BASE

PARAMS = BASE  # two servers in the lab's network (tests/pgbackrest_params.py), copied before any change

DEBIAN_DEFAULT_HBA = """\
# Database administrative login by Unix domain socket
local   all             postgres                                peer

# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     peer
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


def params(**postgres):
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PARAMS.items()}
    data["postgres"] = {**PARAMS["postgres"], **postgres}
    return parse_params(data)


# pg_hba.conf ---------------------------------------------------------------------

def test_pg_hba_matches_golden_for_each_server():
    p = params()
    for s in p.servers:
        golden(f"pg_hba.{s.name}.conf", desired_server.render_pg_hba(p, s))


def test_pg_hba_has_exactly_the_four_rules_in_order_network_only_over_tls():
    p = params()
    rules = pghba.parse_pg_hba(desired_server.render_pg_hba(p, p.primary))
    assert [(r.type, r.database, r.user, r.address, r.method) for r in rules] == [
        ("local", "all", "postgres", None, "peer"),
        ("hostssl", "hcb_production", "rails", "10.0.1.0/24", "scram-sha-256"),
        ("local", "all", "all", None, "scram-sha-256"),
        ("hostnossl", "all", "all", "0.0.0.0/0", "reject"),
    ]


def test_extra_network_rules_become_hostssl_and_plaintext_is_rejected_last():
    p = params()
    extra = [pghba.HbaRule("host", "postgres", "someone", "scram-sha-256", "10.0.1.7/32")]
    rules = desired_server.hba_rules(p, p.primary, extra)
    assert {r.type for r in rules} == {"local", "hostssl", "hostnossl"}
    assert rules[-1] == pghba.HbaRule("hostnossl", "all", "all", "reject", "0.0.0.0/0")


def test_pg_hba_says_hcbpg_manages_it():
    p = params()
    assert desired_server.render_pg_hba(p, p.primary).startswith("# Managed by hcbpg: do not edit by hand")


def test_pg_hba_takes_extra_rules_before_the_local_catch_all():
    p = params()
    extra = [pghba.HbaRule("host", "replication", "repuser", "scram-sha-256", "10.0.1.6/32",
                        comment="streaming replication from server-postgres-2")]
    text = desired_server.render_pg_hba(p, p.primary, extra=extra)
    golden("pg_hba.with-replication.conf", text)
    rules = pghba.parse_pg_hba(text)
    assert rules[2].database == "replication" and rules[2].type == "hostssl" and rules[-2].user == "all"
    assert rules[-1].method == "reject"


@pytest.mark.parametrize("method", ["trust", "md5", "password"])
def test_pg_hba_refuses_weak_methods(method):
    p = params()
    with pytest.raises(SafetyCheckFailed, match=method):
        desired_server.render_pg_hba(p, p.primary, extra=[pghba.HbaRule("host", "all", "all", method, "10.0.1.0/24")])


def test_pg_hba_refuses_a_cidr_with_host_bits():
    p = params()
    with pytest.raises(ValueError, match="host bits"):
        desired_server.render_pg_hba(p, p.primary, extra=[pghba.HbaRule("host", "all", "x", "scram-sha-256", "10.0.1.0/16")])


def test_pg_hba_quotes_names_that_read_as_keywords():
    assert pghba.hba_name("all") == '"all"'
    assert pghba.hba_name("replication") == '"replication"'
    assert pghba.hba_name("hcb_production") == "hcb_production"


def test_parse_pg_hba_reads_debian_default_and_netmask_form():
    rules = pghba.parse_pg_hba(DEBIAN_DEFAULT_HBA + 'host "my db" all 10.0.0.0 255.255.0.0 scram-sha-256 # x\n')
    assert len(rules) == 8
    assert rules[0] == pghba.HbaRule("local", "all", "postgres", "peer")
    assert rules[-1] == pghba.HbaRule("host", '"my db"', "all", "scram-sha-256", "10.0.0.0/16")


def test_parse_of_render_gives_back_the_rules():
    p = params()
    assert pghba.parse_pg_hba(desired_server.render_pg_hba(p, p.primary)) == desired_server.hba_rules(p, p.primary)


def test_plan_pg_hba_from_debian_default_lists_added_and_removed_rules():
    p = params()
    added, removed = pghba.plan_pg_hba(DEBIAN_DEFAULT_HBA, desired_server.render_pg_hba(p, p.primary))
    assert [r.render().split() for r in added] == [
        ["hostssl", "hcb_production", "rails", "10.0.1.0/24", "scram-sha-256"],
        ["local", "all", "all", "scram-sha-256"],
        ["hostnossl", "all", "all", "0.0.0.0/0", "reject"]]
    assert len(removed) == 6 and all(r.user == "all" for r in removed)


def test_plan_pg_hba_of_the_same_file_is_empty():
    p = params()
    text = desired_server.render_pg_hba(p, p.primary)
    assert pghba.plan_pg_hba(text, text) == ([], [])


# settings ------------------------------------------------------------------------

def test_settings_match_golden_for_each_part_and_server():
    p = params()
    for s in p.servers:
        for part in desired_server.SETTINGS_FILES:
            golden(f"settings.{part}.{s.name}.conf", desired_server.render_settings(p, s, part))


def test_connection_settings_listen_on_localhost_and_the_private_ip_with_scram():
    p = params()
    parsed = pgconf.parse_settings(desired_server.render_settings(p, p.servers[1], "connections"))
    assert parsed == {"listen_addresses": "'localhost,10.0.1.6'", "password_encryption": "'scram-sha-256'"}
    tls = pgconf.parse_settings(desired_server.render_settings(p, p.servers[1], "tls"))
    assert tls == {"ssl": "on", "ssl_cert_file": "'/etc/postgresql/15/main/tls/server.crt'",
                   "ssl_key_file": "'/etc/postgresql/15/main/tls/server.key'", "ssl_min_protocol_version": "'TLSv1.3'"}


def test_settings_take_params_and_extra_entries_sorted_and_quoted():
    p = params(settings={"work_mem": "64MB", "log_connections": True, "max_connections": 600})
    text = desired_server.render_settings(p, p.primary, "connections",
                              extra={"archive_command": "pgbackrest --stanza=hcb_production archive-push %p",
                                     "wal_level": "replica"})
    golden("settings.connections.with-extra.conf", text)
    names = list(pgconf.parse_settings(text))
    assert names == sorted(names)


def test_settings_from_params_cannot_override_what_hcbpg_owns():
    with pytest.raises(ParamsError, match=r"postgres\.settings\.listen_addresses"):
        p = params(settings={"listen_addresses": "*"})
        desired_server.render_settings(p, p.primary, "connections")


@pytest.mark.parametrize("value, expected", [
    (True, "on"), (False, "off"), (10, "10"), (0.5, "0.5"), ("64MB", "'64MB'"),
    ("it's", "'it''s'"), ("C:\\path", "'C:\\\\path'"),
])
def test_quote_setting(value, expected):
    assert pgconf.quote_setting(value) == expected


def test_quote_setting_refuses_newlines():
    with pytest.raises(SafetyCheckFailed, match="U\\+000A"):
        pgconf.quote_setting("a\nb")


def test_plan_settings_names_what_changes():
    p = params()
    new = desired_server.render_settings(p, p.primary, "identity")
    assert pgconf.plan_settings(None, new) == {"cluster_name": (None, "'server-postgres-1'"), "wal_log_hints": (None, "on")}
    assert pgconf.plan_settings(new, new) == {}
    assert pgconf.plan_settings("cluster_name = '15/main'\nwal_log_hints = on\n", new) == {
        "cluster_name": ("'15/main'", "'server-postgres-1'")}


# packages and PGDG ------------------------------------------------------------------

def test_pgdg_sources_match_golden():
    golden("pgdg.noble.sources", desired_packages.render_pgdg_sources("noble"))
    bookworm = desired_packages.render_pgdg_sources("bookworm")
    assert "Signed-By: /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc" in bookworm


def test_parse_dpkg_query_keeps_only_installed_packages():
    text = ("postgresql-common\tii \t248+deb12u1\npostgresql-15\tii \t15.18-0+deb12u1\n"
            "libpq-dev\trc \t15.1\npgbackrest\tun \t\n")
    assert desired_packages.parse_dpkg_query(text) == {"postgresql-common": "248+deb12u1", "postgresql-15": "15.18-0+deb12u1"}


def test_fresh_server_plan_changes_everything_without_a_host():
    p = params()
    fresh = AbsentHost(p.primary.name)
    outcomes = install_step.install_server(fresh, p, p.primary)
    outcomes += allow_step.allow_connections(fresh, p, p.primary)
    assert outcomes and all(o.changed and o.dry_run and o.verb == "would change" for o in outcomes)
    hba = next(o for o in outcomes if o.what.startswith("pg_hba"))
    assert "+hostssl hcb_production  rails" in hba.diff
