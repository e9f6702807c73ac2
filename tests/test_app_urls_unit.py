"""The handed-out URLs under ``replication.manager: patroni`` (issue 28, WP5; pure, plus the handout file on a
temporary directory and the app-host check on a recording double): the opaque multi-host form Rails keeps for
DATABASE_URL (read-write) and MIGRATIONS_DATABASE_URL, BLAZER_DATABASE_URL preferring the standby, hostile
passwords intact through the file, ActiveRecord's parse and libpq's, and no password in anything printed.
Under ``manual`` every URL stays the one-host ``postgres://`` form."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from hcbpg import secrets as hsecrets
from hcbpg.adapters.recording import RecordingHost
from hcbpg.adapters.secretstore import SecretStore
from hcbpg.desired import failover as dfo
from hcbpg.desired import migration as dm
from hcbpg.ops import handout
from hcbpg.ops.migration.app_checks import check_url_from_app
from hcbpg.params import Params, parse_params
from hcbpg.pg import conninfo

from nbutil import REPO, manual_production

HOSTILE = ["P&ss=w%rd#1", "a+b c", "'quoted\"", "?/,;:@$!*()~", "é€ñ日本", "=lead&trail=", "back\\slash"]


def make_params(manager: str = "patroni") -> Params:
    d: dict[str, Any] = manual_production()
    if manager == "patroni":
        d["replication"].update(
            manager="patroni", connection_limit=5,
            patroni={"scope": "hcb-production", "rest_password": "op://HCB Engineering/Patroni REST/password"},
            etcd={"patroni_password": "op://HCB Engineering/etcd patroni/password"})
        d["jumpbox"] = {"private_ip": "10.0.1.40"}
    return parse_params(d)


PATRONI = make_params()
MANUAL = make_params("manual")


def urls(params: Params, password: str, tmp_path: Any = None) -> dm.AppUrls:
    path = (tmp_path or REPO) / "app-database-urls.env"
    return dm.render_role_urls(params, {"DATABASE_URL": ("rails", password), "BLAZER_DATABASE_URL": ("blazer", password),
                                        "MIGRATIONS_DATABASE_URL": ("hcb_migrations", password)}, path=path)


def test_under_patroni_every_url_names_both_servers_in_the_opaque_form_rails_keeps():
    u = urls(PATRONI, "pw").values
    for name, tsa in (("DATABASE_URL", "read-write"), ("MIGRATIONS_DATABASE_URL", "read-write"),
                      ("BLAZER_DATABASE_URL", "prefer-standby")):
        assert u[name].startswith("postgresql:hcb_production?host=10.0.1.5,10.0.1.6&port=5432,5432&"), u[name]
        ar = conninfo.parse_rails_url(u[name])
        assert ar["target_session_attrs"] == tsa
        assert (ar["sslmode"], ar["sslrootcert"]) == ("verify-full", "/etc/hcbpg/tls/production-postgres-ca.crt")
        assert ar["connect_timeout"] == "2" and ar["tcp_user_timeout"] == "5000"
    assert conninfo.parse_rails_url(u["BLAZER_DATABASE_URL"])["user"] == "blazer"
    assert dm.render_database_url(PATRONI, "pw") == u["DATABASE_URL"]


def test_under_manual_the_urls_stay_one_host_postgres_urls():
    u = urls(MANUAL, "pw").values
    assert u["DATABASE_URL"] == ("postgres://rails:pw@10.0.1.5:5432/hcb_production?sslmode=verify-full"
                                 "&sslrootcert=/etc/hcbpg/tls/production-postgres-ca.crt")
    assert u["BLAZER_DATABASE_URL"].startswith("postgres://blazer:pw@10.0.1.5:5432/")
    assert "target_session_attrs" not in "".join(u.values())
    # a host given picks that server, manual or not (step 11's one-host URL)
    assert dm.render_database_url(PATRONI, "pw", host="10.0.1.6").startswith("postgres://rails:pw@10.0.1.6:5432/")


@pytest.mark.parametrize("password", HOSTILE)
def test_a_hostile_password_survives_the_file_activerecord_and_libpq(password: str, tmp_path):
    u = urls(PATRONI, password, tmp_path)
    out = handout.ensure_urls_file(SecretStore(), u)
    assert out.changed
    text = u.path.read_text()
    # what Hatchbox gets: each line NAME='value' as a shell reads it
    env = dict(line.split("=", 1) for line in shlex.split(text, comments=True))
    assert env == u.values
    for name, url in env.items():
        assert conninfo.parse_rails_url(url)["password"] == password
        libpq = conninfo_to_dict(conninfo.rails_url_conninfo(url, with_password=True))
        assert libpq["password"] == password and libpq["host"] == "10.0.1.5,10.0.1.6", name
        assert conninfo.parse_app_url(url)["password"] == password
    # nothing printed holds it, in any spelling the URL uses
    shown = " ".join(out.actions) + " ".join(u.shown.values())
    for spelling in {password, conninfo.rails_url_value(password)}:
        assert spelling not in shown
    assert all("password=[secret]" in v for v in u.shown.values())
    assert hsecrets.scrub(text).count(hsecrets.REDACTED) >= 3


def test_redact_url_hides_a_password_in_either_form_and_in_a_query():
    multi = dm.render_database_url(PATRONI, "s3cr3t&x")
    assert conninfo.redact_url(multi) == conninfo.redact_rails_url(multi) and "s3cr3t" not in conninfo.redact_url(multi)
    one = "postgres://u:s3cr3t@h:5432/db?sslmode=require&password=s3cr3t2&PASSWORD=s3cr3t3"
    red = conninfo.redact_url(one)
    assert "s3cr3t" not in red and red.count(hsecrets.REDACTED) == 3, red
    assert conninfo.redact_url("postgres://h:5432/db?password=s3cr3t") == f"postgres://h:5432/db?password={hsecrets.REDACTED}"
    assert conninfo.redact_url("postgres://u@h/db") == "postgres://u@h/db"


def test_describe_app_url_says_hosts_and_session_never_the_password():
    d = conninfo.describe_app_url(dm.render_database_url(PATRONI, "s3cr3t"))
    assert d == "rails@10.0.1.5,10.0.1.6:5432,5432/hcb_production (read-write)"


def test_failover_url_under_patroni_is_the_unchanging_multi_host_one():
    s2 = PATRONI.servers[1]
    url = dfo.render_database_url(PATRONI, s2, "s3cr3t")
    assert url == dm.render_database_url(PATRONI, "s3cr3t")
    red = dfo.redacted_database_url(PATRONI, s2)
    assert red.startswith("postgresql:hcb_production?host=10.0.1.5,10.0.1.6&") and "password=[secret]&" in red
    assert dfo.render_database_url(MANUAL, MANUAL.servers[1], "pw").startswith("postgres://rails:pw@10.0.1.6:5432/")


def test_the_app_host_check_gives_psql_every_host_and_the_password_on_stdin_only():
    url = dm.render_database_url(PATRONI, "p w&'x")
    app = RecordingHost("app", [(r"psql", "rails|hcb_production|f\n")])
    check = check_url_from_app(app, PATRONI, url)
    assert check.status == "pass", check
    [call] = app.calls
    assert "p w" not in call.command and "p%20w" not in call.command
    assert call.stdin == "p w&'x\n"
    conn = conninfo.parse_conninfo(shlex.split(call.command)[-3])
    assert conn["host"] == "10.0.1.5,10.0.1.6" and conn["target_session_attrs"] == "read-write"
    assert conn["connect_timeout"] == "2" and "password" not in conn
    shown = str(call.options.get("display"))
    assert "password=[secret]" in shown and "p%20w" not in shown and "p w" not in shown, shown
