"""Pure parts of the app's rotation without an outage, Blazer's role plan and the role URLs."""

from __future__ import annotations

import pytest
import yaml

from hcbpg.adapters.psql import render
from hcbpg.desired import readonly as desired_readonly
from hcbpg.desired import roles as desired_roles
from hcbpg.desired import rotation as desired_rotation
from hcbpg.errors import SafetyCheckFailed
from hcbpg.params import parse_params
from hcbpg.pg.conninfo import redact_url, render_database_url, render_role_url

from nbutil import REPO


def lab():
    return parse_params(yaml.safe_load((REPO / "params" / "lab.yaml").read_text()))


def production():
    return parse_params(yaml.safe_load((REPO / "params" / "production.yaml").read_text()))


def test_the_app_moves_to_the_login_that_may_not_log_in():
    params = lab()
    cfg = desired_roles.roles_config(params)
    assert cfg.app_logins == ("rails", "rails_alt")
    first = desired_rotation.plan_app_switch(params, cfg, {"rails": {"rolcanlogin": True}}, None)
    assert (first.old, first.new, first.resume) == ("rails", "rails_alt", False)
    assert first.new_ref.endswith("/rails_alt-password") and first.new_key == "roles.app_rotation_password"
    back = desired_rotation.plan_app_switch(params, cfg, {"rails": {"rolcanlogin": False}, "rails_alt": {"rolcanlogin": True}},
                                    None)
    assert (back.old, back.new) == ("rails_alt", "rails")
    assert back.new_ref == params.postgres.app_role_password


def test_an_interrupted_rotation_resumes_at_the_wait_or_refuses_when_unclear():
    params = lab()
    cfg = desired_roles.roles_config(params)
    both = {"rails": {"rolcanlogin": True}, "rails_alt": {"rolcanlogin": True}}
    resumed = desired_rotation.plan_app_switch(params, cfg, both, "rails_alt")
    assert (resumed.old, resumed.new, resumed.resume) == ("rails", "rails_alt", True)
    with pytest.raises(SafetyCheckFailed, match="does not say which one"):
        desired_rotation.plan_app_switch(params, cfg, both, None)
    with pytest.raises(SafetyCheckFailed, match="neither"):
        desired_rotation.plan_app_switch(params, cfg, {}, None)


def test_production_names_the_rotation_login_and_without_it_rotation_refuses():
    params = production()
    cfg = desired_roles.roles_config(params)
    switch = desired_rotation.plan_app_switch(params, cfg, {"rails": {"rolcanlogin": True}}, None)
    assert (switch.new, switch.new_ref) == ("rails_alt", "op://HCB Engineering/Postgres rails_alt/password")
    data = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    del data["roles"]["app_rotation_role"], data["roles"]["app_rotation_password"]
    bare = parse_params(data)
    with pytest.raises(SafetyCheckFailed, match="roles.app_rotation_role"):
        desired_rotation.plan_app_switch(bare, desired_roles.roles_config(bare), {"rails": {"rolcanlogin": True}}, None)


def test_role_urls_are_built_by_the_app_url_builder_and_redacted():
    params = lab()
    app = render_database_url(params, "pw/with:odd@chars")
    mig = render_role_url(params, "hcb_migrations", "pw/with:odd@chars")
    assert mig.replace("hcb_migrations", "rails", 1) == app
    assert redact_url(mig) == "postgres://hcb_migrations:[secret]@10.0.1.5:5432/hcb_production"


def test_blazer_plan_creates_a_read_only_role_and_then_nothing():
    cfg = desired_roles.roles_config(lab())
    stmts = [" ".join(render(s).split()) for s in desired_readonly.plan_blazer(cfg, None, "secret-pw")]
    assert stmts[0].startswith('CREATE ROLE "blazer" WITH LOGIN INHERIT') and "secret-pw" not in stmts[0]
    assert 'GRANT "pg_read_all_data" TO "blazer"' in stmts
    assert """ALTER ROLE "blazer" SET "statement_timeout" = '30s'""" in stmts
    assert """ALTER ROLE "blazer" SET "default_transaction_read_only" = 'on'""" in stmts
    done = {"rolcanlogin": True, "rolinherit": True, "rolsuper": False, "rolconnlimit": 10,
            "member_of": ["pg_read_all_data"], "settings": ["default_transaction_read_only=on", "statement_timeout=30s"],
            "can_connect": True}
    assert desired_readonly.plan_blazer(cfg, done, None) == []


def test_app_servers_are_validated_and_admitted_by_pg_hba():
    data = yaml.safe_load((REPO / "params" / "production.yaml").read_text())
    data["app_servers"] = ["10.0.2.0/24"]
    data["app_host"] = {"name": "hcb-app-1", "private_ip": "10.0.2.7"}
    params = parse_params(data)
    cfg = desired_roles.roles_config(params)
    rules = desired_roles.roles_hba_rules(cfg, params, params.primary)
    assert any(r.user == "rails" and r.address == "10.0.2.0/24" for r in rules)
    assert any(r.user == "hcb_migrations" and r.address == "10.0.2.0/24" for r in rules)
    assert any(r.user == "blazer" and r.address == "10.0.2.0/24" for r in rules)
    data["app_host"]["private_ip"] = "10.0.3.7"
    with pytest.raises(Exception, match="app_host.private_ip: 10.0.3.7 is outside app_servers"):
        parse_params(data)
    data["app_servers"] = ["192.168.0.0/24"]
    with pytest.raises(Exception, match=r"app_servers\[0\]: 192.168.0.0/24 is outside the private network"):
        parse_params(data)
