"""The roles model of step 13 without a database: catalogs as a restore leaves them -> plan; the
model's own state -> no plan, every check passes; a stray grant -> a failing row and its REVOKE.
Also the rotation plan (pure parts)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from hcbpg.desired import privileges as pv
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import rotation as desired_rotation
from hcbpg.desired import server as desired_server
from hcbpg.errors import SecretError, UsageError
from hcbpg.params import parse_params
from hcbpg.pg import acl as pgacl

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def params():
    return parse_params(yaml.safe_load((REPO / "params" / "lab.yaml").read_text()))


@pytest.fixture
def cfg(params):
    return desired_roles.roles_config(params)


def role(name, login=True, member_of=(), inherit=True, **kw):
    return {"rolname": name, "rolcanlogin": login, "rolinherit": inherit, "rolsuper": False, "rolcreatedb": False,
            "rolcreaterole": False, "rolreplication": False, "rolbypassrls": False, "rolconnlimit": kw.get("limit", -1),
            "member_of": list(member_of)}


def restored_rows():
    """The catalogs after step 04 and pg_restore --no-owner as rails (extensions in heroku_ext)."""
    return {
        "roles": [role("rails", limit=500), dict(role("postgres"), rolsuper=True)],
        "database": [{"owner": "rails", "acl": None}],
        "schemas": [{"nspname": "public", "owner": "pg_database_owner",
                     "acl": ["pg_database_owner=UC/pg_database_owner", "=U/pg_database_owner",
                             "rails=UC/pg_database_owner"]},
                    {"nspname": "heroku_ext", "owner": "rails", "acl": None}],
        "relations": [
            {"schema": "public", "name": "users", "kind": "r", "owner": "rails", "acl": None},
            {"schema": "public", "name": "users_id_seq", "kind": "S", "owner": "rails", "acl": None,
             "owned_by_table": True},
            {"schema": "public", "name": "events", "kind": "r", "owner": "rails", "acl": None},
            {"schema": "public", "name": "transactions", "kind": "r", "owner": "rails", "acl": None},
            {"schema": "public", "name": "recent", "kind": "v", "owner": "rails", "acl": None},
        ],
        "routines": [{"schema": "public", "signature": "touch()", "kind": "f", "owner": "rails"}],
        "types": [{"schema": "public", "name": "event_kind", "owner": "rails"}],
        "default_acl": [],
        "extensions": [{"extname": "citext", "owner": "rails", "version": "1.6", "schema": "heroku_ext"},
                       {"extname": "pg_stat_statements", "owner": "postgres", "version": "1.10",
                        "schema": "heroku_ext"},
                       {"extname": "plpgsql", "owner": "postgres", "version": "1.0", "schema": "pg_catalog"}],
        "available_extensions": [{"name": "citext", "trusted": True, "superuser": True},
                                 {"name": "pg_stat_statements", "trusted": False, "superuser": True}],
        "catalog_views": [{"name": v, "acl": ["postgres=arwdDxt/postgres", "=r/postgres"]}
                          for v in pgacl.MONITORING_VIEWS],
    }


def model_rows():
    """The catalogs as step 13 leaves them."""
    app = "hcb_app=arwd/hcb_migrations"
    owner_t = "hcb_migrations=arwdDxt/hcb_migrations"
    seq = "hcb_app=rwU/hcb_migrations"
    rows = restored_rows()
    rows["roles"] = [role("rails", limit=500, member_of=["hcb_app"]), role("hcb_app", login=False),
                     role("hcb_migrations", limit=10), role("metabase", limit=10), role("vector", limit=5),
                     role("postgres_exporter", limit=5, member_of=["pg_monitor"]),
                     dict(role("postgres"), rolsuper=True)]
    rows["database"] = [{"owner": "hcb_migrations",
                         "acl": ["hcb_migrations=CTc/hcb_migrations", "hcb_app=Tc/hcb_migrations",
                                 "metabase=c/hcb_migrations"]}]
    rows["schemas"] = [{"nspname": "public", "owner": "pg_database_owner",
                        "acl": ["pg_database_owner=UC/pg_database_owner", "hcb_app=U/pg_database_owner",
                                "metabase=U/pg_database_owner"]},
                       {"nspname": "heroku_ext", "owner": "hcb_migrations",
                        "acl": ["hcb_migrations=UC/hcb_migrations", "hcb_app=U/hcb_migrations"]}]
    rows["relations"] = [
        {"schema": "public", "name": "users", "kind": "r", "owner": "hcb_migrations", "acl": [owner_t, app]},
        {"schema": "public", "name": "users_id_seq", "kind": "S", "owner": "hcb_migrations",
         "acl": ["hcb_migrations=rwU/hcb_migrations", seq], "owned_by_table": True},
        {"schema": "public", "name": "events", "kind": "r", "owner": "hcb_migrations",
         "acl": [owner_t, app, "metabase=r/hcb_migrations"]},
        {"schema": "public", "name": "transactions", "kind": "r", "owner": "hcb_migrations",
         "acl": [owner_t, app, "metabase=r/hcb_migrations"]},
        {"schema": "public", "name": "recent", "kind": "v", "owner": "hcb_migrations", "acl": [owner_t, app]},
    ]
    rows["routines"] = [{"schema": "public", "signature": "touch()", "kind": "f", "owner": "hcb_migrations"}]
    rows["types"] = [{"schema": "public", "name": "event_kind", "owner": "hcb_migrations"}]
    rows["default_acl"] = [{"for_role": "hcb_migrations", "schema": s, "objtype": o, "acl": [a]}
                           for s in ("heroku_ext", "public")
                           for o, a in (("r", app), ("S", seq))]
    rows["extensions"][0]["owner"] = "hcb_migrations"
    rows["catalog_views"] = [{"name": v, "acl": ["postgres=arwdDxt/postgres", "=r/postgres", "vector=r/postgres"]}
                             for v in pgacl.MONITORING_VIEWS]
    return rows


def texts(statements):
    return [s.text() for s in statements]


def test_defaults_until_params_has_a_roles_section(cfg):
    assert (cfg.group_role, cfg.owner, cfg.app_role) == ("hcb_app", "hcb_migrations", "rails")
    assert cfg.jumpbox_ip == "10.0.1.40" and cfg.metabase_tables == ("events", "transactions")
    assert cfg.monitoring.password_ref == "file:/var/lib/hcbpg-lab/secrets/vector-password"
    assert [r.name for r in cfg.login_roles()] == ["hcb_migrations", "metabase", "vector", "postgres_exporter"]


def test_parse_acl_reads_grantees_public_and_quoted_names():
    acl = pgacl.parse_acl(pgacl._acl_text('{"we ird"=r/postgres,=U/postgres,rails=arwdDxt/rails}'))
    assert acl == {"we ird": {"SELECT"}, "PUBLIC": {"USAGE"},
                   "rails": {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"}}
    assert pgacl.parse_acl(None) is None


def test_restored_database_is_re_owned_and_re_granted(cfg):
    plan = texts(pv.plan_privileges(cfg, pgacl.parse_observed(restored_rows())))
    assert "CREATE ROLE \"hcb_app\" WITH NOLOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION" in plan
    assert 'GRANT "hcb_app" TO "rails"' in plan
    assert 'ALTER DATABASE "hcb_production" OWNER TO "hcb_migrations"' in plan
    assert 'ALTER SCHEMA "heroku_ext" OWNER TO "hcb_migrations"' in plan
    assert 'ALTER TABLE "public"."users" OWNER TO "hcb_migrations"' in plan
    assert 'ALTER VIEW "public"."recent" OWNER TO "hcb_migrations"' in plan
    assert 'ALTER FUNCTION touch() OWNER TO "hcb_migrations"' in plan
    assert 'ALTER TYPE event_kind OWNER TO "hcb_migrations"' in plan
    assert not any("users_id_seq" in t and "OWNER" in t for t in plan), "owned sequences move with their table"
    assert 'REVOKE ALL ON DATABASE "hcb_production" FROM PUBLIC' in plan
    assert 'REVOKE CREATE, USAGE ON SCHEMA "public" FROM "rails"' in plan
    assert ('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "public" TO "hcb_app"') in plan
    assert ('ALTER DEFAULT PRIVILEGES FOR ROLE "hcb_migrations" IN SCHEMA "public" GRANT SELECT, INSERT, UPDATE, '
            'DELETE ON TABLES TO "hcb_app"') in plan
    assert 'GRANT SELECT ON TABLE "public"."events" TO "metabase"' in plan
    assert 'GRANT SELECT ON TABLE "public"."users" TO "metabase"' not in plan
    assert 'GRANT SELECT ON pg_catalog."pg_stat_database" TO "vector"' in plan
    assert 'GRANT pg_monitor TO "postgres_exporter"' in plan, "granted right after the role is created"
    # ownership comes before grants, so the grants are made by (and recorded for) the new owner
    assert plan.index('ALTER DATABASE "hcb_production" OWNER TO "hcb_migrations"') < plan.index(
        'REVOKE ALL ON DATABASE "hcb_production" FROM PUBLIC')


def test_model_state_needs_no_change_and_every_check_passes(cfg):
    obs = pgacl.parse_observed(model_rows())
    assert texts(pv.plan_privileges(cfg, obs)) == []
    checks = pv.compare(cfg, obs, "server-postgres-1")
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status == "fail"]
    assert not failed, failed
    names = [c.name for c in checks]
    assert "rails: only what hcb_app gives" in names and "metabase: SELECT on the 2 listed table(s) only" in names
    ext = {c.name: c for c in checks}
    assert "hcb_migrations may create and update it" in ext["extension citext"].detail
    assert "only a superuser" in ext["extension pg_stat_statements"].detail


def test_effective_privileges_follow_membership_and_ownership(cfg):
    obs = pgacl.parse_observed(model_rows())
    rails = pgacl.effective_privileges(obs, "rails")
    assert rails["relations"]["public.users"] == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert rails["relations"]["public.users_id_seq"] == {"USAGE", "SELECT", "UPDATE"}
    assert rails["database"] == {"CONNECT", "TEMPORARY"}
    assert pgacl.effective_privileges(obs, "hcb_migrations")["schemas"]["public"] == {"USAGE", "CREATE"}
    mb = pgacl.effective_privileges(obs, "metabase")
    assert mb["relations"]["public.users"] == set() and mb["relations"]["public.events"] == {"SELECT"}
    assert pgacl.effective_privileges(obs, "vector")["catalog_views"]["pg_stat_bgwriter"] == {"SELECT"}


def test_a_stray_grant_fails_the_check_and_is_revoked(cfg):
    rows = model_rows()
    rows["relations"][0]["acl"].append("metabase=r/hcb_migrations")      # SELECT on users: not listed
    rows["relations"][2]["acl"].append("hcb_app=arwdD/hcb_migrations")   # TRUNCATE for the app
    obs = pgacl.parse_observed(rows)
    plan = texts(pv.plan_privileges(cfg, obs))
    assert 'REVOKE SELECT ON TABLE "public"."users" FROM "metabase"' in plan
    assert 'REVOKE TRUNCATE ON TABLE "public"."events" FROM "hcb_app"' in plan
    failed = {c.name: c.detail for c in pv.compare(cfg, obs) if c.status == "fail"}
    assert "public.users: has SELECT, want none" in failed["metabase: SELECT on the 2 listed table(s) only"]
    assert "public.events" in failed["hcb_app: app privileges on every table and sequence"]


def test_app_role_owning_objects_fails_the_check(cfg):
    rows = model_rows()
    rows["relations"][2]["owner"] = "rails"
    failed = {c.name: c.detail for c in pv.compare(cfg, pgacl.parse_observed(rows)) if c.status == "fail"}
    assert "public.events" in failed["rails: owns nothing"]
    assert "public.events" in failed["hcb_migrations: owns the database and every object"]


def test_extension_created_by_postgres_is_expected_and_one_of_another_role_a_warning_with_the_pg15_rule(cfg):
    rows = model_rows()
    rows["extensions"][0]["owner"] = "postgres"  # as the restore creates it: updated by a superuser, as untrusted ones
    c = {c.name: c for c in pv.compare(cfg, pgacl.parse_observed(rows))}["extension citext"]
    assert c.status == "pass" and "expected: " in c.detail and "no ALTER EXTENSION OWNER" in c.detail
    rows["extensions"][0]["owner"] = "metabase"  # a role that may update it behind the migrations role's back
    c = {c.name: c for c in pv.compare(cfg, pgacl.parse_observed(rows))}["extension citext"]
    assert c.status == "warn" and "only metabase or a superuser" in c.detail and "no ALTER EXTENSION OWNER" in c.detail


def test_missing_trusted_extension_is_created_as_the_migrations_role(cfg):
    rows = model_rows()
    rows["extensions"] = [e for e in rows["extensions"] if e["extname"] != "citext"]
    plan = texts(pv.plan_privileges(cfg, pgacl.parse_observed(rows)))
    assert plan == ['SET ROLE "hcb_migrations"; CREATE EXTENSION IF NOT EXISTS "citext"; RESET ROLE']


def test_hba_lines_for_metabase_monitoring_and_migrations(params, cfg):
    rules = [r.render() for r in desired_roles.roles_hba_rules(cfg, params, params.primary)]
    assert any(r.startswith("hostssl hcb_production  metabase        10.0.1.40/32") for r in rules)
    assert any(r.startswith("hostssl postgres        vector          10.0.1.5/32") for r in rules)
    assert any(r.startswith("hostssl hcb_production  hcb_migrations  10.0.1.0/24") for r in rules)
    extra = desired_server.all_hba_extra(params, params.primary, cfg)
    assert any(r.user == "repuser" for r in extra), "step 10's lines are kept beside ours"


def test_rotation_targets_and_refusals(params, cfg):
    rots = desired_rotation.roles_to_rotate(params, cfg)
    assert [r.role for r in rots] == ["rails"] and rots[0].password_key == "postgres.app_role_password"
    assert any("DATABASE_URL" in d for d in rots[0].dependents)
    named = desired_rotation.roles_to_rotate(params, cfg, "metabase,vector")
    assert [r.role for r in named] == ["metabase", "vector"]
    with pytest.raises(UsageError, match="nobody"):
        desired_rotation.roles_to_rotate(params, cfg, "nobody")
    with pytest.raises(SecretError, match="cannot store a new password"):
        desired_rotation.check_storable(replace(rots[0], password_ref="env:RAILS_PASSWORD"))
    plan = desired_rotation.plan_rotation(rots[0])
    assert any("SCRAM-SHA-256 verifier computed here" in a for a in plan.actions)


def test_noinherit_login_role_is_fixed_and_flagged(cfg):
    rows = model_rows()
    rows["roles"][2]["rolinherit"] = False      # hcb_migrations: pg_database_owner's CREATE on public would not apply
    obs = pgacl.parse_observed(rows)
    assert texts(pv.plan_privileges(cfg, obs)) == ['ALTER ROLE "hcb_migrations" WITH INHERIT']
    failed = {c.name: c.detail for c in pv.compare(cfg, obs) if c.status == "fail"}
    assert "NOINHERIT" in failed["role hcb_migrations"]
