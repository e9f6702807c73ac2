"""The S3 store works with pgBackRest; the source looks like the Heroku app's database."""

from __future__ import annotations

import psycopg
import pytest

from hcbpg.lab import source

pytestmark = pytest.mark.lab


def pgbackrest_conf(lab) -> str:
    """The repo options that work with the lab's S3 store (pgBackRest 2.45)."""
    return "\n".join([
        "[global]",
        "repo1-type=s3",
        "repo1-path=/pgbackrest-test",
        f"repo1-s3-bucket={lab.status()['s3_bucket']}",
        f"repo1-s3-endpoint={lab.cfg.gateway_ip}",
        "repo1-storage-port=9443",
        "repo1-s3-region=fsn1",
        "repo1-s3-uri-style=path",
        f"repo1-storage-ca-file={lab.cfg.ca_cert}",
        f"repo1-s3-key={lab.secret('s3-key')}",
        f"repo1-s3-key-secret={lab.secret('s3-key-secret')}",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={lab.secret('cipher-pass')}",
        "",
        "[hcb_test]",
        "pg1-path=/var/lib/postgresql/15/main",
        "",
    ])


def test_pgbackrest_stanza_create_against_lab_s3(lab):
    lab.exec("source", "cat > /etc/pgbackrest.conf", input=pgbackrest_conf(lab), check=True)
    r = lab.exec("source", "pgbackrest --stanza=hcb_test stanza-create && pgbackrest --stanza=hcb_test "
                 "--output=json info", user="postgres", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '"name":"hcb_test"' in r.stdout
    lab.exec("source", "rm -f /etc/pgbackrest.conf")


def test_source_is_shaped_like_the_rails_app(lab):
    url = lab.secret("source-url")
    with psycopg.connect(url, sslmode="verify-full", sslrootcert=str(lab.cfg.ca_cert)) as c:
        assert c.execute("select email from users where id = %s",
                         (source.SENTINEL_USER_ID,)).fetchone()[0] == source.SENTINEL_EMAIL
        assert c.execute("select extnamespace::regnamespace::text from pg_extension "
                         "where extname = 'citext'").fetchone()[0] == "heroku_ext"
        assert c.execute("select count(*) from pg_constraint where contype = 'f'").fetchone()[0] == 3
        idx = dict(c.execute("select indexname, indexdef from pg_indexes where schemaname = 'public'").fetchall())
        assert "USING gin" in idx["index_events_on_properties"]
        assert "WHERE" in idx["index_transactions_pending"]
        assert c.execute("select nextval('users_id_seq') > max(id) from users").fetchone()[0]
        counts = c.execute("select (select count(*) from users), (select count(*) from events), "
                           "(select count(*) from transactions)").fetchone()
        assert sum(counts) == lab.status()["source"]["rows"]
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("insert into users (email, full_name, created_at, updated_at) "
                      "values ('SENTINEL@hcb.invalid', 'x', now(), now())")


def test_source_refuses_connections_without_tls(lab):
    url = lab.secret("source-url").replace("sslmode=require", "sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match="no pg_hba.conf entry"):
        psycopg.connect(url, connect_timeout=5)
