"""The online transfer's pure parts: which tables Bucardo syncs, copies inside the window or refuses; the
lag query; Bucardo's objects left out of comparisons; the way back's customcode; params."""

from __future__ import annotations

import pytest

from hcbpg.errors import ParamsError
from hcbpg.ops.migration import templates
from hcbpg.params import parse_params
from hcbpg.pg import bucardo as bp
from hcbpg.pg.inventory import Inventory


def tables(*rows):
    return {"tables": [{"name": n, "key": k, "unlogged": u, "rows": r} for n, k, u, r in rows],
            "sequences": ["public.users_id_seq"], "large_objects": 0}


def test_a_small_table_without_key_is_copied_inside_the_window_and_a_large_one_refuses_the_mode():
    plan = bp.plan_sync(tables(("public.users", True, False, 10), ("public.log", False, False, 50),
                               ("public.big", False, False, 5000), ("public.cache", True, True, 3)),
                        window_copy_max_rows=100)
    assert plan.synced == ["public.users", "public.cache"]
    assert plan.in_window == ["public.log"] and plan.refused == ["public.big"]
    assert not plan.ok
    bad = [c for c in plan.checks if c.status == "fail"]
    assert len(bad) == 1 and "public.big (about 5000 rows)" in bad[0].detail and "primary key" in bad[0].detail
    unlogged = next(c for c in plan.checks if c.name == "unlogged tables")
    assert unlogged.status == "warn" and "public.cache" in unlogged.detail
    moved = {r["table"]: r["moved"] for r in plan.rows()}
    assert moved["public.log"] == "no key: copied whole inside the window"
    assert moved["public.big"].endswith("REFUSED") and moved["public.cache"].endswith("(unlogged)")


def test_large_objects_refuse_the_online_mode_with_what_to_do():
    data = tables(("public.users", True, False, 10))
    data["large_objects"] = 3
    plan = bp.plan_sync(data, window_copy_max_rows=100)
    bad = [c for c in plan.checks if c.status == "fail"]
    assert [c.name for c in bad] == ["no large objects on the source"]
    assert "3 large objects" in bad[0].detail and "source.transfer: directory" in bad[0].detail


def test_the_lag_counts_recorded_changes_newer_than_the_last_applied_one_of_each_table():
    q = bp.render_lag_sql(["public.users", "public.events"])
    assert '"bucardo"."delta_public_users"' in q and '"bucardo"."track_public_events"' in q
    assert q.count("UNION ALL") == 1 and "count(*)" in q
    assert "'rows', 0" in bp.render_lag_sql([])


def test_bucardos_objects_are_left_out_of_the_comparison_and_sequence_values_of_the_drift_guard():
    inv = Inventory({"schemas": {"public": "schema", "bucardo": "schema"},
                     "tables": {"public.users": "8", "bucardo.delta_public_users": "2"},
                     "triggers": {"public.users.bucardo_delta": "CREATE TRIGGER ... bucardo.delta_public_users()",
                                  "public.users.audit": "CREATE TRIGGER audit ..."},
                     "sequences": {"public.users_id_seq": "17"}},
                    {"public.users": 3, "bucardo.delta_public_users": 9})
    s = bp.strip_bucardo(inv)
    assert s.objects["schemas"] == {"public": "schema"} and list(s.objects["tables"]) == ["public.users"]
    assert list(s.objects["triggers"]) == ["public.users.audit"] and s.rows == {"public.users": 3}
    assert bp.without_sequence_values(s).objects["sequences"] == {"public.users_id_seq": ""}


def test_the_way_back_customcode_replaces_session_replication_role_for_owner_only_targets():
    code = templates.render_script("bucardo-owner-only.pl", {"PREFIX": bp.OWNER_ONLY_PREFIX})
    assert "#@" not in code and "@PREFIX@" not in code
    assert f"/^{bp.OWNER_ONLY_PREFIX}/" in code and "SET CONSTRAINTS ALL DEFERRED" in code
    assert "session_replication_role" not in code  # it never tries what the owner may not do
    assert bp.BACK_TARGET_DB.startswith(bp.OWNER_ONLY_PREFIX)
    assert bp.render_deferrable([{"table": "public.events", "name": "fk_x"}], deferrable=True) == [
        'ALTER TABLE public.events ALTER CONSTRAINT "fk_x" DEFERRABLE INITIALLY IMMEDIATE']
    assert bp.render_deferrable([{"table": "public.events", "name": "fk_x"}], deferrable=False)[0].endswith(
        "NOT DEFERRABLE")


def test_leftovers_check_names_what_remains():
    assert bp.check_no_leftovers("source", {"schemas": [], "functions": [], "triggers": []}).status == "pass"
    c = bp.check_no_leftovers("source", {"schemas": ["bucardo"], "triggers": ["public.users.bucardo_delta"]})
    assert c.status == "fail" and "trigger public.users.bucardo_delta" in c.detail and "schema bucardo" in c.detail


def base_params(**source):
    return {"environment": "staging", "hetzner": {"token": "env:T", "ssh_public_key_file": "/k.pub"},
            "servers": [{"name": "db-1", "private_ip": "10.0.1.5", "role": "primary"}],
            "postgres": {"app_role_password": "env:P"}, "source": {"url": "env:U", **source}}


def test_params_choose_the_online_transfer_with_its_settings():
    p = parse_params(base_params(transfer="online", online={"drain_timeout_s": 30, "way_back_hours": 48}))
    assert p.source.transfer == "online" and p.source.online.drain_timeout_s == 30
    assert p.source.online.way_back_hours == 48 and p.source.online.window_copy_max_rows == 100_000
    assert parse_params(base_params()).source.transfer == "stream"


@pytest.mark.parametrize("source, key", [
    ({"transfer": "online", "online": {"drain_timeout_s": 0}}, "drain_timeout_s"),
    ({"transfer": "online", "method": "heroku", "heroku_app": "hcb"}, "transfer"),
    ({"transfer": "online", "online": {"drain_deadline": 5}}, "drain_deadline"),
])
def test_bad_online_params_are_refused_naming_the_key(source, key):
    with pytest.raises(ParamsError, match=key):
        parse_params(base_params(**source))
