"""Specs of step 04's operations and the change locks on the recording double: state in → statements,
commands, writes and Outcome out (hcbpg.ops.app_database, hcbpg.ops.readonly, hcbpg.ops.server_lock,
hcbpg.ops.env_lock).

:class:`Primary` answers psql's reads from a primary's catalogs (``pg_authid``, ``pg_database``, the
grants on schema public, Blazer's role) and applies the statements psql runs to them, as PostgreSQL
would; a statement containing *fail_on* is refused.  A dry run is the same call on a :class:`DryRunHost`
over the same state; a primary not there yet an :class:`AbsentHost`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.psql import Psql
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired.locks import LOCK_PATH, Holder, parse_holder
from hcbpg.desired.roles import LoginRole, RolesConfig
from hcbpg.errors import CloudError, DatabaseError, SafetyCheckFailed, SecretError
from hcbpg.ops import app_database, env_lock, readonly, server_lock
from hcbpg.params import parse_params
from hcbpg.pg.scram import scram_matches, scram_verifier
from hcbpg.steps import targets
from tests.fast.specs import covers

NAME = "server-postgres-1"
PASSWORD = "correct horse battery staple for the spec"
PARAMS = parse_params({
    "environment": "lab",
    "hetzner": {"token": "env:HCBPG_TEST_TOKEN", "ssh_public_key_file": "/dev/null"},
    "servers": [{"name": NAME, "private_ip": "10.0.1.5", "role": "primary"}],
    "postgres": {"app_role_password": "env:HCBPG_TEST_APP_PW"},
})
CREATE_DB = "CREATE DATABASE \"hcb_production\" WITH OWNER \"rails\" ENCODING 'UTF8' TEMPLATE template0"
SCHEMA_GRANT = 'GRANT ALL PRIVILEGES ON SCHEMA public TO "rails"'
TABLES_GRANT = 'GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO "rails"'


def rails(**kw: Any) -> dict[str, Any]:
    row = {"rolname": "rails", "rolcanlogin": True, "rolinherit": True, "rolconnlimit": 500, "rolsuper": False,
           "rolcreatedb": False, "rolcreaterole": False, "rolreplication": False, "rolbypassrls": False,
           "rolpassword": scram_verifier(PASSWORD)}
    return {**row, **kw}


class Primary:
    """A primary's catalogs behind psql on a :class:`RecordingHost`."""

    def __init__(self, *, role: dict[str, Any] | None = None, database: dict[str, Any] | None = None,
                 schema_granted: bool = False, tables_missing: int = 0, blazer: dict[str, Any] | None = None,
                 fail_on: str | None = None) -> None:
        self.role, self.database, self.blazer = role, database, blazer
        self.schema_granted, self.tables_missing, self.fail_on = schema_granted, tables_missing, fail_on
        self.statements: list[str] = []
        self.host = RecordingHost(NAME, handler=self.answer)
        self.psql = Psql(self.host)

    def answer(self, call: Call) -> Result | str | None:
        if not call.command.startswith("/usr/lib/postgresql/15/bin/psql -p 5432"):
            return None
        text = (call.stdin or "").strip()
        if call.kind == "run":
            if self.fail_on and self.fail_on in text:
                return Result(NAME, call.command, 3, "", "ERROR:  42501: permission denied (the spec)", 0.0)
            self.statements.append(" ".join(text.rstrip(";").split()))
            self.apply(text)
            return ""
        if "FROM pg_authid WHERE rolname = 'rails'" in text:
            return json.dumps([self.role] if self.role else [])
        if "FROM pg_database d JOIN pg_roles r" in text:
            return json.dumps([self.database] if self.database else [])
        if "aclexplode(n.nspacl)" in text:
            return json.dumps([{"ok": self.schema_granted}])
        if "has_table_privilege" in text:
            return json.dumps([{"n": self.tables_missing}])
        if "has_database_privilege(r.oid" in text:
            return json.dumps([self.blazer] if self.blazer else [])
        raise AssertionError(f"the spec's primary has no answer for {text!r}")

    def apply(self, text: str) -> None:
        if text.startswith('CREATE ROLE "rails"'):
            self.role = rails(rolpassword=re.search(r"PASSWORD '([^']+)'", text).group(1))  # type: ignore[union-attr]
        elif text.startswith('CREATE DATABASE "hcb_production"'):
            self.database = {"datname": "hcb_production", "owner": "rails", "encoding": "UTF8"}
        elif text.startswith("ALTER DATABASE"):
            assert self.database is not None
            self.database["owner"] = "rails"
        elif text.startswith(SCHEMA_GRANT):
            self.schema_granted = True
        elif text.startswith(TABLES_GRANT):
            self.tables_missing = 0
        elif text.startswith('CREATE ROLE "blazer"'):
            self.blazer = {"rolcanlogin": True, "rolinherit": True, "rolsuper": False, "rolconnlimit": 10,
                           "member_of": [], "settings": [], "can_connect": False}
        elif text.startswith('GRANT "pg_read_all_data" TO "blazer"'):
            assert self.blazer is not None
            self.blazer["member_of"] = ["pg_read_all_data"]
        elif text.startswith('ALTER ROLE "blazer" SET'):
            assert self.blazer is not None
            m = re.match(r'ALTER ROLE "blazer" SET "(\w+)" = \'([^\']*)\'', text)
            assert m is not None
            self.blazer["settings"] = [s for s in self.blazer["settings"] if not s.startswith(m[1] + "=")] + [
                f"{m[1]}={m[2]}"]
        elif text.startswith('GRANT CONNECT ON DATABASE "hcb_production" TO "blazer"'):
            assert self.blazer is not None
            self.blazer["can_connect"] = True
        elif not text.startswith("ALTER ROLE"):
            raise AssertionError(f"the spec's primary cannot apply {text!r}")


def psql_on(host) -> Psql:
    return Psql(host)


# the app role --------------------------------------------------------------------------------------

@covers("hcbpg.ops.app_database.ensure_role", "fresh", "second run", "dry run")
def test_role_created_with_a_verifier_of_the_secret_and_then_left_alone():
    pg = Primary()
    plan = app_database.ensure_role(psql_on(DryRunHost(pg.host)), PARAMS, PASSWORD)
    assert plan.verb == "would change" and pg.statements == [] and pg.role is None
    assert plan.actions[0].startswith('CREATE ROLE "rails" WITH LOGIN INHERIT') and PASSWORD not in str(plan)
    out = app_database.ensure_role(pg.psql, PARAMS, PASSWORD)
    assert out.changed and len(pg.statements) == 1
    assert pg.statements[0].startswith('CREATE ROLE "rails" WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE '
                                       "NOREPLICATION CONNECTION LIMIT 500 PASSWORD 'SCRAM-SHA-256$4096:")
    assert scram_matches(PASSWORD, pg.role["rolpassword"])  # type: ignore[index]
    assert not any(PASSWORD in (c.stdin or "") + c.command for c in pg.host.calls)   # only the verifier travels
    assert not app_database.ensure_role(pg.psql, PARAMS, PASSWORD).changed and len(pg.statements) == 1
    absent = AbsentHost(NAME)
    assert app_database.ensure_role(psql_on(absent), PARAMS, PASSWORD).changed and len(absent.journal) == 1


@covers("hcbpg.ops.app_database.ensure_role", "fresh")
def test_role_attributes_brought_back_without_touching_its_password():
    pg = Primary(role=rails(rolconnlimit=-1, rolinherit=False, rolcreatedb=True))
    app_database.ensure_role(pg.psql, PARAMS, PASSWORD)
    assert pg.statements == ['ALTER ROLE "rails" WITH INHERIT NOCREATEDB CONNECTION LIMIT 500']


@covers("hcbpg.ops.app_database.ensure_role", "refusal")
def test_role_with_another_password_is_refused_naming_the_key_and_the_host():
    pg = Primary(role=rails(rolpassword=scram_verifier("the password it has now")))
    with pytest.raises(SafetyCheckFailed) as ei:
        app_database.ensure_role(pg.psql, PARAMS, PASSWORD)
    assert "postgres.app_role_password" in str(ei.value) and NAME in str(ei.value)
    assert pg.statements == [] and pg.host.journal == []


# the database and the grants -------------------------------------------------------------------------

@covers("hcbpg.ops.app_database.ensure_database", "fresh", "second run", "dry run")
def test_database_created_owned_by_the_app_role_once():
    pg = Primary(role=rails())
    plan = app_database.ensure_database(psql_on(DryRunHost(pg.host)), PARAMS)
    assert plan.verb == "would change" and plan.actions == [CREATE_DB] and pg.database is None
    out = app_database.ensure_database(pg.psql, PARAMS)
    assert out.changed and pg.statements == [CREATE_DB]
    assert not app_database.ensure_database(pg.psql, PARAMS).changed and pg.statements == [CREATE_DB]
    moved = Primary(database={"datname": "hcb_production", "owner": "postgres", "encoding": "UTF8"})
    app_database.ensure_database(moved.psql, PARAMS)
    assert moved.statements == ['ALTER DATABASE "hcb_production" OWNER TO "rails"']


@covers("hcbpg.ops.app_database.ensure_database", "refusal")
def test_database_postgresql_refuses_is_an_error_naming_the_statement():
    pg = Primary(fail_on="CREATE DATABASE")
    with pytest.raises(DatabaseError) as ei:
        app_database.ensure_database(pg.psql, PARAMS)
    assert ei.value.sqlstate == "42501" and "CREATE DATABASE" in str(ei.value) and pg.database is None


@covers("hcbpg.ops.app_database.ensure_grants", "fresh", "second run", "dry run")
def test_grants_only_what_is_missing():
    db = {"datname": "hcb_production", "owner": "rails", "encoding": "UTF8"}
    pg = Primary(role=rails(), database=dict(db), tables_missing=3)
    plan = app_database.ensure_grants(psql_on(DryRunHost(pg.host)), PARAMS)
    assert plan.verb == "would change" and plan.actions == [SCHEMA_GRANT, TABLES_GRANT] and pg.statements == []
    app_database.ensure_grants(pg.psql, PARAMS)
    assert pg.statements == [SCHEMA_GRANT, TABLES_GRANT]
    assert all(c.command.endswith("-d hcb_production") for c in pg.host.calls if c.kind == "run")
    assert not app_database.ensure_grants(pg.psql, PARAMS).changed and len(pg.statements) == 2
    # before the database exists (a plan of step 04 on a fresh primary): the schema grant only
    fresh = AbsentHost(NAME)
    assert app_database.ensure_grants(psql_on(fresh), PARAMS).actions == [SCHEMA_GRANT]


@covers("hcbpg.ops.app_database.ensure_grants", "refusal")
def test_grants_refused_stop_at_the_first():
    pg = Primary(role=rails(), database={"datname": "hcb_production", "owner": "rails", "encoding": "UTF8"},
                 tables_missing=1, fail_on="ON SCHEMA public")
    with pytest.raises(DatabaseError, match="GRANT ALL PRIVILEGES ON SCHEMA public"):
        app_database.ensure_grants(pg.psql, PARAMS)
    assert pg.statements == [] and not pg.schema_granted and pg.tables_missing == 1


# Blazer's read-only role -----------------------------------------------------------------------------

CFG = RolesConfig(database="hcb_production", app_role="rails",
                  blazer=LoginRole("blazer", "roles.blazer.password", "env:HCBPG_TEST_BLAZER_PW", 10))
BLAZER = ['CREATE ROLE "blazer" WITH LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION CONNECTION '
          "LIMIT 10 PASSWORD 'SCRAM-SHA-256$",
          'GRANT "pg_read_all_data" TO "blazer"',
          """ALTER ROLE "blazer" SET "default_transaction_read_only" = 'on'""",
          """ALTER ROLE "blazer" SET "statement_timeout" = '30s'""",
          'GRANT CONNECT ON DATABASE "hcb_production" TO "blazer"']


@covers("hcbpg.ops.readonly.ensure_blazer", "fresh", "second run", "dry run")
def test_blazer_made_read_only_once(monkeypatch):
    monkeypatch.setenv("HCBPG_TEST_BLAZER_PW", "blazer's secret for the spec")
    pg = Primary()
    plan = readonly.ensure_blazer(psql_on(DryRunHost(pg.host)), CFG)
    assert plan.verb == "would change" and len(plan.actions) == 5 and pg.statements == []
    out = readonly.ensure_blazer(pg.psql, CFG)
    assert out.changed and pg.statements[0].startswith(BLAZER[0]) and pg.statements[1:] == BLAZER[1:]
    assert "blazer's secret" not in " ".join(pg.statements)
    assert not readonly.ensure_blazer(pg.psql, CFG).changed and len(pg.statements) == 5
    assert not readonly.ensure_blazer(pg.psql, dataclasses.replace(CFG, blazer=None)).changed


@covers("hcbpg.ops.readonly.ensure_blazer", "refusal")
def test_blazer_without_its_secret_is_refused_before_any_statement(monkeypatch):
    monkeypatch.delenv("HCBPG_TEST_BLAZER_PW", raising=False)
    pg = Primary()
    with pytest.raises(SecretError):
        readonly.ensure_blazer(pg.psql, CFG)
    assert pg.statements == [] and pg.host.journal == []
    # a plan needs no secret: the role would be made, its password set then
    plan = readonly.ensure_blazer(psql_on(DryRunHost(pg.host)), CFG)
    assert plan.changed and "PASSWORD" not in plan.actions[0]


# the primary's change lock ------------------------------------------------------------------------------

ME = Holder("run-b", "staging", "07_cutover", "bob", "bob-laptop", 4242, 4200, "2026-12-02T18:00:00.000000Z")
ALICE = Holder("run-a", "staging", "05_pgbackrest", "alice", "alice-laptop", 99, 90, "2026-12-02T17:00:00.000000Z")


def lock_host(current: str | None) -> RecordingHost:
    host = RecordingHost(NAME, files={LOCK_PATH: current} if current is not None else {})

    def take(call: Call) -> Result:
        if LOCK_PATH in host.files:
            return Result(NAME, call.command, 1, "", "cannot overwrite existing file", 0.0)
        host.files[LOCK_PATH] = call.stdin or ""
        return Result(NAME, call.command, 0, "", "", 0.0)
    host.script.append((re.compile("set -C"), take))
    return host


@covers("hcbpg.ops.server_lock.ensure_change_lock", "fresh", "second run", "dry run")
def test_change_lock_taken_with_noclobber_once():
    host = lock_host(None)
    dry = DryRunHost(host)
    assert server_lock.ensure_change_lock(dry, ME).verb == "would change" and LOCK_PATH not in host.files
    out = server_lock.ensure_change_lock(host, ME)
    assert out.changed and host.journal == [f"take {LOCK_PATH}"] and parse_holder(host.files[LOCK_PATH]) == ME
    assert "bob" in out.actions[0]
    assert not server_lock.ensure_change_lock(host, ME).changed and host.journal == [f"take {LOCK_PATH}"]
    # the same run's earlier attempt (another step of it): taken over, written whole
    resumed = lock_host(dataclasses.replace(ME, step="06_restore").to_json())
    assert server_lock.ensure_change_lock(resumed, ME).actions == ["took it over from this run's earlier attempt"]
    assert resumed.journal == [f"write {LOCK_PATH}"] and resumed.written[0][2] == 0o600


@covers("hcbpg.ops.server_lock.ensure_change_lock", "refusal")
@pytest.mark.parametrize("held", [ALICE.to_json(), "not json at all"])
def test_change_lock_held_by_another_run_is_refused_and_left(held):
    host = lock_host(held)
    with pytest.raises(SafetyCheckFailed) as ei:
        server_lock.ensure_change_lock(host, ME)
    assert f"{NAME} is being changed by another run" in str(ei.value)
    assert host.files[LOCK_PATH] == held and host.journal == []


# the environment's lock in the backup bucket ------------------------------------------------------------

class Bucket:
    """An object store that keeps conditional writes (If-None-Match on create, If-Match on replace)."""

    name = "s3://hcbpg-spec"

    def __init__(self, *, careless: bool = False) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.careless = careless
        self.n = 0

    def create(self, key: str, body: bytes) -> str | None:
        if key in self.objects and not self.careless:
            return None
        self.n += 1
        self.objects[key] = (body, f"e{self.n}")
        return f"e{self.n}"

    def replace(self, key: str, body: bytes, *, etag: str) -> str | None:
        if self.objects.get(key, (b"", None))[1] != etag:
            return None
        return self.create_over(key, body)

    def create_over(self, key: str, body: bytes) -> str:
        self.n += 1
        self.objects[key] = (body, f"e{self.n}")
        return f"e{self.n}"

    def get(self, key: str) -> tuple[bytes, str] | None:
        return self.objects.get(key)

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


KEY = "hcbpg-locks/pgbackrest/hcb_production/staging.json"


@covers("hcbpg.ops.env_lock.ensure_env_lock", "fresh", "second run", "dry run")
def test_env_lock_taken_once_and_a_plan_takes_nothing(monkeypatch):
    bucket = Bucket()
    opened: list[str] = []
    monkeypatch.setattr(targets.ObjectStore, "from_params", lambda *a, **kw: opened.append("store") or bucket)
    targets.lock_environment(SimpleNamespace(dry_run=True))   # a plan takes no lock: the step opens no bucket
    assert opened == [] and bucket.objects == {}
    out = env_lock.ensure_env_lock(bucket, KEY, ME)
    assert out.changed and parse_holder(bucket.objects[KEY][0].decode()) == ME
    again = env_lock.ensure_env_lock(bucket, KEY, ME)   # the resume of the same run
    assert "took it over from this run's earlier attempt" in again.actions[0]
    assert parse_holder(bucket.objects[KEY][0].decode()) == ME


@covers("hcbpg.ops.env_lock.ensure_env_lock", "refusal")
def test_env_lock_held_by_another_run_or_a_store_without_conditional_writes_is_refused():
    bucket = Bucket()
    env_lock.ensure_env_lock(bucket, KEY, ALICE)
    with pytest.raises(SafetyCheckFailed) as ei:
        env_lock.ensure_env_lock(bucket, KEY, ME)
    assert "hcbpg lock staging --break run-a" in (ei.value.hint or "")
    assert parse_holder(bucket.objects[KEY][0].decode()) == ALICE
    careless = Bucket(careless=True)
    with pytest.raises(CloudError, match="ignored If-None-Match"):
        env_lock.ensure_env_lock(careless, KEY, ME)
    assert careless.objects == {}
