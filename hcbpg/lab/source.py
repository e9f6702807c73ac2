"""The Heroku-like source database: a PostgreSQL 15 cluster on the lab's ``source`` host,
seeded by a deterministic generator shaped like the production Rails app.

Shape (all owned by the non-superuser ``heroku_owner``, as on Heroku):

* schema ``heroku_ext`` holding the extensions ``citext`` and ``pg_stat_statements``
  (Heroku installs extensions there; ``users.email`` is a ``heroku_ext.citext``);
* ``users`` (citext email, unique; full_name; jsonb preferences; timestamps),
  ``events`` (FK users, jsonb properties, GIN index), ``transactions`` (FK users and
  events, numeric amounts, a partial index on pending rows), ``schema_migrations``,
  ``ar_internal_metadata``; bigserial sequences set past the data;
* the sentinel user :data:`SENTINEL_USER_ID` (1803, ``sentinel@hcb.invalid``) that the
  runbook's sentinel write updates.

Rows are a pure function of the row number and the seed (hash-based, no ``random()``),
so the same size and seed always produce the same data.  The cluster listens on the
host's private IP with TLS (a lab-CA certificate) and scram passwords; the connection
URL is the lab secret ``source-url``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hcbpg.errors import LabError

SENTINEL_USER_ID = 1803
SENTINEL_EMAIL = "sentinel@hcb.invalid"
SOURCE_DB = "hcb_heroku"
SOURCE_USER = "heroku_owner"
DEFAULT_SOURCE_ROWS = 20_000
#: measured on PostgreSQL 15 for this generator: database size ~ BASE_BYTES + rows * BYTES_PER_ROW
#: (333k rows -> 79 MB, 20k rows -> 12 MB)
BYTES_PER_ROW = 216
BASE_BYTES = 7_800_000
SEED = 20240615


@dataclass(frozen=True)
class SourceSize:
    users: int
    events: int
    transactions: int

    @property
    def rows(self) -> int:
        return self.users + self.events + self.transactions


def plan_size(rows: int | None = None, mb: float | None = None) -> SourceSize:
    """Split a total row count (or a target size in MB) over the tables: 10% users (at
    least enough for the sentinel), 60% events, 30% transactions."""
    if rows is not None and mb is not None:
        raise LabError("give either --source-rows or --source-mb, not both")
    if mb is not None:
        if mb <= 0:
            raise LabError("--source-mb must be positive")
        rows = max(math.ceil((mb * 1024 * 1024 - BASE_BYTES) / BYTES_PER_ROW), 1)
    rows = DEFAULT_SOURCE_ROWS if rows is None else rows
    if rows <= 0:
        raise LabError("--source-rows must be positive")
    users = max(rows // 10, SENTINEL_USER_ID)
    events = max(rows * 6 // 10, 1)
    transactions = max(rows - users - events, rows * 3 // 10, 1)
    return SourceSize(users, events, transactions)


def render_setup_sql(password: str) -> str:
    """Role, database and extensions, run as the postgres superuser."""
    pw = password.replace("'", "''")
    return f"""
\\set ON_ERROR_STOP 1
CREATE ROLE {SOURCE_USER} LOGIN PASSWORD '{pw}';
CREATE DATABASE {SOURCE_DB} OWNER {SOURCE_USER};
\\connect {SOURCE_DB}
CREATE SCHEMA heroku_ext AUTHORIZATION {SOURCE_USER};
CREATE EXTENSION citext SCHEMA heroku_ext;
CREATE EXTENSION pg_stat_statements SCHEMA heroku_ext;
ALTER DATABASE {SOURCE_DB} SET search_path = "$user", public, heroku_ext;
GRANT ALL ON SCHEMA public TO {SOURCE_USER};
"""


def render_seed_sql(size: SourceSize, seed: int = SEED) -> str:
    """Schema and data, run as the owner; deterministic for (size, seed)."""
    u, e, t = size.users, size.events, size.transactions
    # h(x): a deterministic non-negative pseudo-random int from a row number
    h = f"abs(hashint8(({{x}})::bigint * 7919 + {seed}))"

    def H(x: str) -> str:
        return h.format(x=x)

    return f"""
\\set ON_ERROR_STOP 1
SET search_path = public, heroku_ext;
SET synchronous_commit = off;
BEGIN;
CREATE TABLE schema_migrations (version character varying PRIMARY KEY);
CREATE TABLE ar_internal_metadata (
  key character varying PRIMARY KEY, value character varying,
  created_at timestamp(6) without time zone NOT NULL,
  updated_at timestamp(6) without time zone NOT NULL);
INSERT INTO schema_migrations
  SELECT to_char(timestamp '2019-01-01' + (i * interval '9 days'), 'YYYYMMDDHH24MISS')
  FROM generate_series(1, 120) i;
INSERT INTO ar_internal_metadata VALUES
  ('environment', 'production', '2019-01-01', '2019-01-01'),
  ('schema_sha1', md5('{seed}'), '2019-01-01', '2019-01-01');

CREATE TABLE users (
  id bigserial PRIMARY KEY,
  email heroku_ext.citext NOT NULL,
  full_name character varying NOT NULL,
  preferences jsonb NOT NULL DEFAULT '{{}}'::jsonb,
  admin boolean NOT NULL DEFAULT false,
  locked_at timestamp(6) without time zone,
  created_at timestamp(6) without time zone NOT NULL,
  updated_at timestamp(6) without time zone NOT NULL);
CREATE TABLE events (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL,
  name character varying NOT NULL,
  properties jsonb NOT NULL DEFAULT '{{}}'::jsonb,
  created_at timestamp(6) without time zone NOT NULL);
CREATE TABLE transactions (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL,
  event_id bigint,
  amount numeric(14,2) NOT NULL,
  currency character(3) NOT NULL DEFAULT 'USD',
  status character varying NOT NULL DEFAULT 'pending',
  memo text,
  posted_at timestamp(6) without time zone,
  created_at timestamp(6) without time zone NOT NULL,
  updated_at timestamp(6) without time zone NOT NULL);

INSERT INTO users (id, email, full_name, preferences, admin, locked_at, created_at, updated_at)
SELECT i,
       'user' || i || '@example.' || (ARRAY['com','org','net','edu'])[1 + {H('i')} % 4],
       (ARRAY['Ada','Grace','Linus','Margaret','Alan','Barbara','Ken','Radia'])[1 + {H('i')} % 8]
         || ' ' || (ARRAY['Lovelace','Hopper','Torvalds','Hamilton','Turing','Liskov','Thompson','Perlman'])[1 + {H('i + 1')} % 8],
       jsonb_build_object('theme', (ARRAY['light','dark','system'])[1 + {H('i + 2')} % 3],
                          'notifications', jsonb_build_object('email', {H('i + 3')} % 2 = 0, 'sms', {H('i + 4')} % 5 = 0),
                          'locale', (ARRAY['en','es','fr','de'])[1 + {H('i + 5')} % 4]),
       {H('i + 6')} % 97 = 0,
       CASE WHEN {H('i + 7')} % 50 = 0 THEN timestamp '2024-01-01' + ({H('i + 8')} % 10000) * interval '1 minute' END,
       timestamp '2019-01-01' + ({H('i + 9')} % 157680000) * interval '1 second',
       timestamp '2024-01-01' + ({H('i + 10')} % 31536000) * interval '1 second'
FROM generate_series(1, {u}) i;
UPDATE users SET email = '{SENTINEL_EMAIL}', full_name = 'Migration Sentinel',
       preferences = '{{"sentinel": true}}', admin = false, locked_at = NULL
 WHERE id = {SENTINEL_USER_ID};

INSERT INTO events (id, user_id, name, properties, created_at)
SELECT i,
       1 + {H('i')} % {u},
       (ARRAY['login','card_swipe','transfer','donation','invite','export'])[1 + {H('i + 1')} % 6],
       jsonb_build_object('ip', '198.51.100.' || ({H('i + 2')} % 254 + 1),
                          'ua', (ARRAY['ios','android','web'])[1 + {H('i + 3')} % 3],
                          'amount_cents', {H('i + 4')} % 100000),
       timestamp '2020-01-01' + ({H('i + 5')} % 157680000) * interval '1 second'
FROM generate_series(1, {e}) i;

INSERT INTO transactions (id, user_id, event_id, amount, currency, status, memo, posted_at, created_at, updated_at)
SELECT i,
       1 + {H('i')} % {u},
       CASE WHEN {H('i + 1')} % 3 = 0 THEN NULL ELSE 1 + {H('i + 2')} % {e} END,
       (({H('i + 3')} % 2000000) - 500000) / 100.0,
       (ARRAY['USD','USD','USD','CAD','EUR'])[1 + {H('i + 4')} % 5],
       (ARRAY['settled','settled','settled','pending','declined'])[1 + {H('i + 5')} % 5],
       'memo ' || md5(i::text || '{seed}'),
       CASE WHEN {H('i + 6')} % 5 <> 3 THEN timestamp '2020-01-01' + ({H('i + 7')} % 157680000) * interval '1 second' END,
       timestamp '2020-01-01' + ({H('i + 8')} % 157680000) * interval '1 second',
       timestamp '2024-06-01' + ({H('i + 9')} % 15552000) * interval '1 second'
FROM generate_series(1, {t}) i;

SELECT setval('users_id_seq', (SELECT max(id) FROM users));
SELECT setval('events_id_seq', (SELECT max(id) FROM events));
SELECT setval('transactions_id_seq', (SELECT max(id) FROM transactions));

CREATE UNIQUE INDEX index_users_on_email ON users (email);
CREATE INDEX index_users_on_created_at ON users (created_at);
CREATE INDEX index_events_on_user_id ON events (user_id);
CREATE INDEX index_events_on_properties ON events USING gin (properties);
CREATE INDEX index_transactions_on_user_id ON transactions (user_id);
CREATE INDEX index_transactions_on_event_id ON transactions (event_id);
CREATE INDEX index_transactions_pending ON transactions (created_at) WHERE status = 'pending';
ALTER TABLE events ADD CONSTRAINT fk_rails_0cb5590091 FOREIGN KEY (user_id) REFERENCES users(id);
ALTER TABLE transactions ADD CONSTRAINT fk_rails_77364e6416 FOREIGN KEY (user_id) REFERENCES users(id);
ALTER TABLE transactions ADD CONSTRAINT fk_rails_8b0ab6d2f1 FOREIGN KEY (event_id) REFERENCES events(id);
COMMIT;
ANALYZE;
"""  # noqa: E501 - SQL kept one expression a line


def render_conf(ip: str) -> str:
    return ("# Managed by hcbpg lab: the Heroku-like source. Do not edit by hand.\n"
            f"listen_addresses = 'localhost,{ip}'\n"
            "password_encryption = 'scram-sha-256'\n"
            "ssl = on\n"
            "ssl_cert_file = '/etc/postgresql/15/main/server.crt'\n"
            "ssl_key_file = '/etc/postgresql/15/main/server.key'\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "wal_level = logical\n"
            "max_wal_senders = 10\n"
            "max_replication_slots = 10\n"
            "max_connections = 100\n")


HBA_LINES = (
    "# hcbpg lab: Heroku accepts TLS connections with a password from anywhere\n"
    "hostssl all all 0.0.0.0/0 scram-sha-256\n"
    "hostssl replication all 0.0.0.0/0 scram-sha-256\n")


def source_url(ip: str, password: str) -> str:
    return f"postgres://{SOURCE_USER}:{password}@{ip}:5432/{SOURCE_DB}?sslmode=require"
