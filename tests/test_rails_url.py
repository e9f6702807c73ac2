"""The multi-host DATABASE_URL Rails keeps (issue 28): rendered, then parsed the way ActiveRecord 6.1 parses it
(recorded from ActiveRecord 6.1.7.10 itself: tests/golden/rails_url.activerecord-6.1.jsonl), then as libpq reads
the conninfo hcbpg derives from it (libpq's own parser, through psycopg)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from hcbpg.errors import SecretError
from hcbpg.pg.conninfo import (
    parse_conninfo,
    parse_rails_url,
    rails_url_conninfo,
    redact_rails_url,
    render_rails_url,
)

from goldenfile import GOLDEN

HOSTILE = ["P&ss=w%rd#1", "a+b c", "'quoted\"", "  spaces  ", "%41%zz%", "?/,;:@$!*()~", "é€ñ日本",
           "=leading&trailing=", "plain", "back\\slash"]
HOSTS = [("10.0.1.5", 5432), ("10.0.1.6", 5432)]
QUERY = {"sslmode": "verify-full", "sslrootcert": "/etc/hcbpg/tls/production-postgres-ca.crt",
         "target_session_attrs": "read-write", "connect_timeout": "2", "keepalives": "1", "tcp_user_timeout": "5000"}


def recorded() -> list[dict[str, Any]]:
    lines = (GOLDEN / "rails_url.activerecord-6.1.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def as_activerecord(url: str) -> dict[str, str]:
    """What hcbpg says ActiveRecord hands PG.connect: the conninfo's keywords."""
    return parse_conninfo(rails_url_conninfo(url, with_password=True))


def test_rendered_urls_are_the_ones_activerecord_was_recorded_with():
    urls = [render_rails_url("hcb_production", HOSTS, {"user": "rails", "password": pw, **QUERY}) for pw in HOSTILE]
    urls.append(render_rails_url("hcb db&x", [("h1", 5433)], {"user": "o'brien", "password": "p"}))
    assert urls == [r["url"] for r in recorded()][:len(urls)]


@pytest.mark.parametrize("case", recorded(), ids=lambda c: c["url"][:60])
def test_parse_agrees_with_activerecord(case: dict[str, Any]):
    assert as_activerecord(case["url"]) == case["pg_connect"]


@pytest.mark.parametrize("password", HOSTILE)
def test_hostile_password_round_trips_to_libpq(password: str):
    url = render_rails_url("hcb_production", HOSTS, {"user": "rails", "password": password, **QUERY})
    assert parse_rails_url(url)["password"] == password
    libpq = conninfo_to_dict(rails_url_conninfo(url, with_password=True))  # libpq's PQconninfoParse
    assert libpq["password"] == password
    assert (libpq["host"], libpq["port"], libpq["dbname"]) == ("10.0.1.5,10.0.1.6", "5432,5432", "hcb_production")
    assert libpq["target_session_attrs"] == "read-write"
    assert "password" not in conninfo_to_dict(rails_url_conninfo(url))
    assert redact_rails_url(url).count("password=[secret]&") == 1


def test_redacted_url_keeps_everything_but_the_password():
    url = render_rails_url("hcb_production", HOSTS, {"user": "rails", "password": "s3cr3t&x", **QUERY})
    red = redact_rails_url(url)
    assert "s3cr3t" not in red and "password=[secret]" in red
    assert red.replace("password=[secret]", "password=s3cr3t%26x") == url


def test_the_url_has_the_opaque_shape():
    url = render_rails_url("hcb_production", HOSTS, {"user": "rails", "password": "p", **QUERY})
    assert url.startswith("postgresql:hcb_production?host=10.0.1.5,10.0.1.6&port=5432,5432&user=rails&password=p&")


def test_hierarchical_and_malformed_urls_are_refused_without_echoing_them():
    for url, said in [("postgresql://u:secretpw@h1/db?host=h1,h2", "hierarchical"),
                      ("mysql2:db?password=secretpw", "not a postgresql: URL"),
                      ("postgresql:db?password=secret pw", "character 30"),
                      ("postgresql:db?password=secret%zpw", "a '%' not followed by two hex digits"),
                      ("postgresql:db?user=u&&password=secretpw", "empty pair")]:
        with pytest.raises(SecretError) as ei:
            parse_rails_url(url)
        assert said in str(ei.value) and "secret" not in str(ei.value).replace("SecretError", "")


def test_render_refuses_keys_that_are_not_libpq_s_or_the_url_s_own():
    with pytest.raises(ValueError, match="pool: not a libpq connection keyword"):
        render_rails_url("db", HOSTS, {"pool": "5"})
    with pytest.raises(ValueError, match="host: the URL's own"):
        render_rails_url("db", HOSTS, {"host": "x"})
    with pytest.raises(ValueError, match="host list"):
        render_rails_url("db", [("a,b", 5432)], {})
    with pytest.raises(SecretError, match="NUL"):
        render_rails_url("db", HOSTS, {"password": "a\x00b"})
