"""Specs of step 13's operations on the recording double: catalogs in → statements run and Outcome out.

The double answers psql's catalog queries (``hcbpg.pg.acl.catalog_queries``) from rows given per
case, as the server would, and records every statement psql would run.  The model's wants are the
ones the check compares with (one model, :mod:`hcbpg.desired.privileges`), so each case also asks
the check: after a plan that has run, nothing fails.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.psql import Psql, render
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.adapters.secretstore import DryRunSecretStore, SecretStore
from hcbpg.desired import privileges as model
from hcbpg.desired import roles as desired_roles
from hcbpg.desired.roles import LoginRole, RolesConfig
from hcbpg.errors import DatabaseError, ParamsError, SecretError
from hcbpg.ops import privileges
from hcbpg.params import parse_params
from hcbpg.pg import acl as pgacl
from hcbpg.secrets import scrub
from tests.fast.specs import covers

REPO = Path(__file__).resolve().parents[2]
PRIMARY = "server-postgres-1"
OWNER_T = "hcb_migrations=arwdDxt/hcb_migrations"
APP_T = "hcb_app=arwd/hcb_migrations"
APP_S = "hcb_app=rwU/hcb_migrations"


def lab_params(**roles_extra):
    data = yaml.safe_load((REPO / "params" / "lab.yaml").read_text())
    data["roles"].update(roles_extra)
    return parse_params(data)


@pytest.fixture(scope="module")
def cfg() -> RolesConfig:
    return desired_roles.roles_config(lab_params())


def role(name, login=True, member_of=(), inherit=True, limit=-1, superuser=False):
    return {"rolname": name, "rolcanlogin": login, "rolinherit": inherit, "rolsuper": superuser,
            "rolcreatedb": False, "rolcreaterole": False, "rolreplication": False, "rolbypassrls": False,
            "rolconnlimit": limit, "member_of": list(member_of)}


def rel(schema, name, kind="r", owner="hcb_migrations", acl=None, **kw):
    return {"schema": schema, "name": name, "kind": kind, "owner": owner, "acl": acl, **kw}


def model_rows():
    """The catalogs as step 13 leaves them: public with a table and its sequence, analytics (a second
    schema of the restore) with an unlogged table and the materialized view ``payout_totals``."""
    return {
        "roles": [role("rails", limit=500, member_of=["hcb_app"]), role("hcb_app", login=False),
                  role("hcb_migrations", limit=10), role("metabase", limit=10), role("vector", limit=5),
                  role("postgres_exporter", limit=5, member_of=["pg_monitor"]), role("postgres", superuser=True)],
        "database": [{"owner": "hcb_migrations", "acl": ["hcb_migrations=CTc/hcb_migrations",
                                                         "hcb_app=Tc/hcb_migrations", "metabase=c/hcb_migrations"]}],
        "schemas": [{"nspname": "public", "owner": "pg_database_owner",
                     "acl": ["pg_database_owner=UC/pg_database_owner", "hcb_app=U/pg_database_owner",
                             "metabase=U/pg_database_owner"]},
                    {"nspname": "analytics", "owner": "hcb_migrations",
                     "acl": ["hcb_migrations=UC/hcb_migrations", "hcb_app=U/hcb_migrations"]}],
        "relations": [
            rel("public", "events", acl=[OWNER_T, APP_T, "metabase=r/hcb_migrations"]),
            rel("public", "events_id_seq", "S", acl=["hcb_migrations=rwU/hcb_migrations", APP_S], owned_by_table=True),
            rel("public", "transactions", acl=[OWNER_T, APP_T, "metabase=r/hcb_migrations"]),
            rel("analytics", "payout_totals", "m", acl=[OWNER_T, "hcb_app=r/hcb_migrations"]),
            rel("analytics", "scratch", acl=[OWNER_T, APP_T]),                 # an unlogged table: a table
        ],
        "routines": [], "types": [],
        "default_acl": [{"for_role": "hcb_migrations", "schema": s, "objtype": o, "acl": [a]}
                        for s in ("analytics", "public") for o, a in (("r", APP_T), ("S", APP_S))],
        "extensions": [{"extname": "citext", "owner": "hcb_migrations", "version": "1.6", "schema": "public"},
                       {"extname": "pg_stat_statements", "owner": "postgres", "version": "1.10", "schema": "public"}],
        "available_extensions": [{"name": "citext", "trusted": True, "superuser": True},
                                 {"name": "pg_stat_statements", "trusted": False, "superuser": True}],
        "catalog_views": [{"name": v, "acl": ["postgres=arwdDxt/postgres", "=r/postgres", "vector=r/postgres"]}
                          for v in pgacl.MONITORING_VIEWS],
    }


def fresh_rows():
    """The same database as a restore leaves it: everything rails's, no grant of the model yet."""
    rows = model_rows()
    rows["roles"] = [role("rails", limit=500), role("postgres", superuser=True)]
    rows["database"] = [{"owner": "rails", "acl": None}]
    rows["schemas"] = [{"nspname": "public", "owner": "pg_database_owner", "acl": None},
                       {"nspname": "analytics", "owner": "rails", "acl": None}]
    rows["relations"] = [dict(r, owner="rails", acl=None) for r in rows["relations"]]
    rows["default_acl"] = []
    rows["extensions"] = [dict(e, owner="rails" if e["extname"] == "citext" else "postgres")
                          for e in rows["extensions"]]
    rows["catalog_views"] = [{"name": v, "acl": ["postgres=arwdDxt/postgres", "=r/postgres"]}
                             for v in pgacl.MONITORING_VIEWS]
    return rows


def with_fivetran(rows):
    """HCB's additions the model does not know: a fivetran role with CREATE on the database, its own
    google_sheets schema with a table Metabase reads, and SELECT on public.events."""
    rows = copy.deepcopy(rows)
    rows["database"][0]["acl"] = (rows["database"][0]["acl"] or []) + ["fivetran=CTc/hcb_migrations"]
    rows["schemas"].append({"nspname": "google_sheets", "owner": "fivetran",
                            "acl": ["fivetran=UC/fivetran", "metabase=U/fivetran"]})
    rows["relations"].append(rel("google_sheets", "budget", owner="fivetran",
                                 acl=["fivetran=arwdDxt/fivetran", "metabase=r/fivetran"]))
    rows["relations"][0]["acl"] = (rows["relations"][0]["acl"] or []) + ["fivetran=r/hcb_migrations"]
    return rows


class Server:
    """A primary's catalogs behind psql on a :class:`RecordingHost` (reads answered, statements recorded)."""

    def __init__(self, cfg: RolesConfig, rows, *, fail_on: str | None = None) -> None:
        self.rows = rows
        self.fail_on = fail_on
        self.queries = {render(q).strip().rstrip(";"): (name, db)
                        for name, (q, db) in pgacl.catalog_queries(model.model_role_names(cfg), cfg.database).items()}
        self.host = RecordingHost(PRIMARY, handler=self.answer)

    def answer(self, call: Call):
        text = call.stdin or ""
        if call.kind == "run":
            if self.fail_on and self.fail_on in text:
                return Result(PRIMARY, call.command, 3, "", "ERROR:  42501: permission denied", 0.0)
            return ""
        if "FROM pg_database WHERE datname" in text and "count(*)" in text:
            return json.dumps([{"n": 1 if self.rows.get("database") else 0}])
        found = [(name, db) for query, (name, db) in self.queries.items() if query in text]
        for name, db in found:
            assert f"-d {db}" in call.command, (name, call.command)
        if "json_build_object" in text and found:  # the catalog read in one call per database
            return json.dumps([{"catalog": {name: self.rows.get(name, []) for name, _ in found}}])
        if found:
            return json.dumps(self.rows.get(found[0][0], []))
        return None

    def psql(self, host=None) -> Psql:
        return Psql(host or self.host)

    @property
    def statements(self) -> list[str]:
        """What psql ran, one line per batch (as psql shows it)."""
        return [c.options["display"] for c in self.host.calls if c.kind == "run"]


@pytest.fixture
def secrets(tmp_path, monkeypatch, cfg):
    """Every login role's secret in a file (the model computes verifiers from them)."""
    out = {}
    for r in cfg.secret_roles():
        path = tmp_path / f"{r.name}-password"
        path.write_text(f"{r.name}-password-for-the-spec-0123456789\n")
        out[r.name] = f"file:{path}"
    return replace(cfg, migrations=replace(cfg.migrations, password_ref=out["hcb_migrations"]),
                   metabase=replace(cfg.metabase, password_ref=out["metabase"]),
                   monitoring=replace(cfg.monitoring, password_ref=out["vector"]),
                   exporter=replace(cfg.exporter, password_ref=out["postgres_exporter"]))


def statements_of(display: str) -> list[str]:
    """The statements of one shown batch (``psql -d DB: BEGIN; a; b; COMMIT;``)."""
    body = display.split(": ", 1)[1].rstrip(";")
    return [s.strip() for s in body.split("; ") if s.strip() not in ("BEGIN", "COMMIT")]


# ensure_privileges ------------------------------------------------------------------------------------

@covers("hcbpg.ops.privileges.ensure_privileges", "fresh")
def test_fresh_restore_gets_the_model_with_select_only_on_the_materialized_view(secrets):
    server = Server(secrets, fresh_rows())
    out = privileges.ensure_privileges(server.psql(), secrets)
    assert out.changed and not out.dry_run
    ran = [s for d in server.statements for s in statements_of(d)]
    assert [scrub(s) for s in ran] == out.actions
    # analytics holds a materialized view: granted relation by relation, the view SELECT only
    assert 'GRANT SELECT ON TABLE "analytics"."payout_totals" TO "hcb_app"' in ran
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE "analytics"."scratch" TO "hcb_app"' in ran
    assert not any("ON ALL TABLES IN SCHEMA \"analytics\"" in s for s in ran)
    assert 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "public" TO "hcb_app"' in ran
    assert 'ALTER MATERIALIZED VIEW "analytics"."payout_totals" OWNER TO "hcb_migrations"' in ran
    assert 'ALTER SCHEMA "analytics" OWNER TO "hcb_migrations"' in ran
    # batches: one psql call per database run of statements, in a transaction
    assert [d.split(":", 1)[0] for d in server.statements] == [
        "psql -d postgres", "psql -d hcb_production", "psql -d postgres", "psql -d hcb_production",
        "psql -d postgres"]
    assert all("PASSWORD '[secret]'" in s or "PASSWORD" not in s for s in out.actions)


def test_the_check_passes_on_what_the_plan_leaves_and_the_plan_of_that_is_empty(cfg):
    """One model: the grants the plan makes on the materialized view are the ones the check wants."""
    applied = model_rows()
    obs = pgacl.parse_observed(applied)
    assert model.plan_privileges(cfg, obs) == []
    failed = [f"{c.name}: {c.detail}" for c in model.compare(cfg, obs) if c.status == "fail"]
    assert not failed, failed
    # the old grants (ON ALL TABLES IN SCHEMA reaches the materialized view) fail the check and are fixed
    applied["relations"][3]["acl"] = [OWNER_T, APP_T]
    obs = pgacl.parse_observed(applied)
    failed = {c.name: c.detail for c in model.compare(cfg, obs) if c.status == "fail"}
    assert "analytics.payout_totals: has DELETE,INSERT,SELECT,UPDATE, want SELECT" in \
        failed["hcb_app: app privileges on every table and sequence"]
    assert [s.text() for s in model.plan_privileges(cfg, obs)] == [
        'REVOKE DELETE, INSERT, UPDATE ON TABLE "analytics"."payout_totals" FROM "hcb_app"']


@covers("hcbpg.ops.privileges.ensure_privileges", "second run")
def test_second_run_changes_nothing(cfg):
    server = Server(cfg, model_rows())
    out = privileges.ensure_privileges(server.psql(), cfg)
    assert (out.changed, out.actions, server.host.journal) == (False, [], [])
    assert all(c.kind == "probe" for c in server.host.calls)


@covers("hcbpg.ops.privileges.ensure_privileges", "dry run")
def test_dry_run_records_the_fresh_runs_statements_and_runs_nothing(secrets):
    real = Server(secrets, fresh_rows())
    privileges.ensure_privileges(real.psql(), secrets)
    server = Server(secrets, fresh_rows())
    dry = DryRunHost(server.host)
    out = privileges.ensure_privileges(server.psql(dry), secrets)
    assert out.changed and out.dry_run and out.verb == "would change"
    assert [c for c in server.host.calls if c.kind == "run"] == []
    assert dry.journal == [scrub(d) for d in real.host.journal]
    assert any("PASSWORD '[secret]'" in d for d in dry.journal), "the verifier is not shown"


@covers("hcbpg.ops.privileges.ensure_privileges", "dry run")
def test_a_primary_not_there_yet_plans_the_roles(cfg):
    out = privileges.ensure_privileges(Psql(AbsentHost(PRIMARY)), cfg)
    assert out.changed and out.dry_run
    assert out.actions[0] == ('CREATE ROLE "hcb_app" WITH NOLOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE '
                              'NOREPLICATION')
    assert [a.split(" WITH")[0] for a in out.actions[1:]] == [
        'CREATE ROLE "hcb_migrations"', 'CREATE ROLE "metabase"', 'CREATE ROLE "vector"',
        'CREATE ROLE "postgres_exporter"', 'GRANT pg_monitor TO "postgres_exporter"']


@covers("hcbpg.ops.privileges.ensure_privileges", "refusal")
def test_a_missing_secret_for_a_new_role_refuses_before_any_statement(cfg, tmp_path):
    cfg = replace(cfg, migrations=replace(cfg.migrations, password_ref=f"file:{tmp_path}/nothing-here"))
    server = Server(cfg, fresh_rows())
    with pytest.raises(SecretError, match="roles.migrations.password"):
        privileges.ensure_privileges(server.psql(), cfg)
    assert server.host.journal == []


@covers("hcbpg.ops.privileges.ensure_privileges", "refusal")
def test_a_failing_batch_stops_the_run_naming_the_statement(secrets):
    server = Server(secrets, fresh_rows(), fail_on="REASSIGN OWNED")
    with pytest.raises(DatabaseError, match="REASSIGN OWNED") as info:
        privileges.ensure_privileges(server.psql(), secrets)
    assert info.value.sqlstate == "42501"
    # the roles' batch ran; the failed one was a transaction; nothing after it was sent
    assert [d.split(":", 1)[0] for d in server.statements] == ["psql -d postgres", "psql -d hcb_production"]


# open world ------------------------------------------------------------------------------------------

def test_unknown_role_and_schema_are_reported_and_left_alone(cfg):
    server = Server(cfg, with_fivetran(model_rows()))
    out = privileges.ensure_privileges(server.psql(), cfg)
    assert not out.changed and server.host.journal == []
    assert out.actions == [
        "left alone: role fivetran is not the model's (CONNECT,CREATE,TEMPORARY on the database; grants on 1 "
        "relation(s) in the model's schemas); list it in roles.revoke_unknown_roles to revoke its grants",
        "left alone: schema google_sheets is not the model's (owner fivetran, 1 relation(s), grants to metabase); "
        "list it in roles.revoke_unknown_schemas to revoke its grants"]
    checks = privileges.check_privileges(server.psql(), cfg)
    assert not [c for c in checks if c.status == "fail"], [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    warned = {c.name: c.detail for c in checks if c.status == "warn"}
    assert set(warned) == {"role fivetran: not the model's, left alone",
                           "schema google_sheets: not the model's, left alone"}


@pytest.mark.parametrize("revoke, expected", [
    ({"revoke_unknown_roles": ["fivetran"]},
     ['REVOKE CONNECT, CREATE, TEMPORARY ON DATABASE "hcb_production" FROM "fivetran"',
      'REVOKE SELECT ON TABLE "public"."events" FROM "fivetran"']),
    ({"revoke_unknown_schemas": ["google_sheets"]},
     ['REVOKE USAGE ON SCHEMA "google_sheets" FROM "metabase"',
      'REVOKE SELECT ON TABLE "google_sheets"."budget" FROM "metabase"']),
], ids=["role", "schema"])
def test_params_listing_an_unknown_role_or_schema_revoke_its_grants(revoke, expected):
    cfg = desired_roles.roles_config(lab_params(**revoke))
    rows = with_fivetran(model_rows())
    server = Server(cfg, rows)
    out = privileges.ensure_privileges(server.psql(), cfg)
    assert [s for d in server.statements for s in statements_of(d)] == expected
    assert out.changed and [a for a in out.actions if not a.startswith("left alone")] == expected
    # the check names what is still held before, and nothing after (the grants gone from the catalogs)
    if "revoke_unknown_roles" in revoke:
        before = {c.name: c for c in model.compare(cfg, pgacl.parse_observed(rows))}
        assert before["fivetran: grants revoked (roles.revoke_unknown_roles)"].status == "fail"
        rows["database"][0]["acl"].remove("fivetran=CTc/hcb_migrations")
        rows["relations"][0]["acl"].remove("fivetran=r/hcb_migrations")
        after = {c.name: c for c in model.compare(cfg, pgacl.parse_observed(rows))}
        assert after["fivetran: grants revoked (roles.revoke_unknown_roles)"].status == "pass"
    else:
        rows["schemas"][-1]["acl"].remove("metabase=U/fivetran")
        rows["relations"][-1]["acl"].remove("metabase=r/fivetran")
    assert model.plan_privileges(cfg, pgacl.parse_observed(rows)) == []


@pytest.mark.parametrize("key, value, why", [
    ("revoke_unknown_roles", ["hcb_app"], "roles.revoke_unknown_roles: hcb_app is a role hcbpg manages"),
    ("revoke_unknown_roles", ["rails"], "roles.revoke_unknown_roles: rails is a role hcbpg manages"),
    ("revoke_unknown_roles", ["pg_monitor"], "roles.revoke_unknown_roles: pg_monitor is a role hcbpg manages or "
                                             "PostgreSQL's own"),
    ("revoke_unknown_roles", ["Fivetran"], "roles.revoke_unknown_roles[0]: String should match pattern"),
    ("revoke_unknown_schemas", ["public"], "roles.revoke_unknown_schemas: public is in roles.schemas"),
    ("revoke_unknown_schemas", ["pg_catalog"], "roles.revoke_unknown_schemas: pg_catalog is in roles.schemas or a "
                                               "system schema"),
])
def test_revocation_params_refuse_the_models_own_names(key, value, why):
    with pytest.raises((ParamsError, ValueError)) as info:
        lab_params(**{key: value})
    assert why in str(info.value)


# ensure_role_secrets ---------------------------------------------------------------------------------

def secrets_cfg(tmp_path) -> RolesConfig:
    def login(name):
        return LoginRole(name, f"roles.{name}.password", f"file:{tmp_path}/secrets/{name}-password", 10)
    return RolesConfig(database="hcb_production", app_role="rails", migrations=login("hcb_migrations"),
                       monitoring=login("vector"))


@covers("hcbpg.ops.privileges.ensure_role_secrets", "fresh", "second run")
def test_missing_file_secrets_are_made_0600_and_a_second_run_changes_nothing(tmp_path):
    cfg = secrets_cfg(tmp_path)
    store = SecretStore()
    out = privileges.ensure_role_secrets(store, cfg)
    assert [(o.what, o.changed, o.dry_run) for o in out] == [
        ("secret roles.hcb_migrations.password (file:)", True, False),
        ("secret roles.vector.password (file:)", True, False)]
    assert out[0].actions == [f"generate a password for hcb_migrations and store it at "
                              f"file:{tmp_path}/secrets/hcb_migrations-password (0600)"]
    assert store.journal == ["store roles.hcb_migrations.password at file:", "store roles.vector.password at file:"]
    for name in ("hcb_migrations", "vector"):
        path = tmp_path / "secrets" / f"{name}-password"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_text().strip()) == 32
    before = {p.name: p.read_text() for p in (tmp_path / "secrets").iterdir()}
    again = SecretStore()
    assert [o.changed for o in privileges.ensure_role_secrets(again, cfg)] == [False, False]
    assert again.journal == [] and {p.name: p.read_text() for p in (tmp_path / "secrets").iterdir()} == before


@covers("hcbpg.ops.privileges.ensure_role_secrets", "dry run")
def test_dry_run_records_the_secrets_it_would_make_and_writes_none(tmp_path):
    cfg = secrets_cfg(tmp_path)
    store = DryRunSecretStore(SecretStore())
    out = privileges.ensure_role_secrets(store, cfg)
    assert [(o.changed, o.dry_run, o.verb) for o in out] == [(True, True, "would change")] * 2
    assert store.journal == ["store roles.hcb_migrations.password at file:", "store roles.vector.password at file:"]
    assert not (tmp_path / "secrets").exists()
    # what it would make is what it reads next (the plan of ensure_privileges gets a verifier)
    assert len(store.resolve(cfg.migrations.password_ref, key="k")) == 32


@covers("hcbpg.ops.privileges.ensure_role_secrets", "refusal")
def test_a_missing_env_secret_is_refused_and_nothing_is_stored(tmp_path, monkeypatch):
    monkeypatch.delenv("HCBPG_SPEC_VECTOR_PASSWORD", raising=False)
    cfg = secrets_cfg(tmp_path)
    cfg = replace(cfg, monitoring=replace(cfg.monitoring, password_ref="env:HCBPG_SPEC_VECTOR_PASSWORD"))
    store = SecretStore()
    with pytest.raises(SecretError, match="HCBPG_SPEC_VECTOR_PASSWORD"):
        privileges.ensure_role_secrets(store, cfg)
    # the migrations role's came first and was made; the env secret cannot be made by hcbpg
    assert store.journal == ["store roles.hcb_migrations.password at file:"]
