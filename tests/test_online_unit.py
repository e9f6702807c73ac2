"""The online transfer's pure parts: which tables Bucardo syncs, copies inside the window or refuses; the
lag query; Bucardo's objects left out of comparisons; the way back's customcode; params."""

from __future__ import annotations

import pytest

from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.params import parse_params
from hcbpg.pg import bucardo as bp
from hcbpg.pg import templates
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
    fk = {"table": "public.events", "schema": "public", "relname": "events", "name": "fk_x"}
    assert bp.render_deferrable([fk], deferrable=True) == [
        'ALTER TABLE "public"."events" ALTER CONSTRAINT "fk_x" DEFERRABLE INITIALLY IMMEDIATE']
    assert bp.render_deferrable([fk], deferrable=False)[0].endswith("NOT DEFERRABLE")


def test_the_way_backs_foreign_keys_are_quoted_when_rendered_never_spliced_from_the_file():
    """The list is read back from a file the postgres user owns: a 'table' there is display only."""
    planted = {"table": "public.events; DROP TABLE public.users; --", "schema": "public",
               "relname": 'ev"ents; DROP TABLE x', "name": "fk\nx"}
    [stmt] = bp.render_deferrable([planted], deferrable=False)
    assert stmt == 'ALTER TABLE "public"."ev""ents; DROP TABLE x" ALTER CONSTRAINT "fk\nx" NOT DEFERRABLE'
    with pytest.raises(SafetyCheckFailed, match="without schema, table and name"):
        bp.render_deferrable([{"table": "public.events; DROP TABLE public.users", "name": "fk_x"}], deferrable=True)


def test_names_with_control_characters_refuse_the_online_mode_and_are_never_synced():
    data = tables(("public.users", True, False, 10), ('public.t\n1 text users;COPY', True, False, 5),
                  ("public.l\x1bog", False, False, 5))
    data["sequences"] += ["public.s\nq"]
    data["control_char_names"] = ['public."t\n1 text users;COPY"', 'public."l\x1bog"', 'public."s\nq"']
    plan = bp.plan_sync(data, window_copy_max_rows=100)
    assert plan.synced == ["public.users"] and plan.in_window == [] and plan.sequences == ["public.users_id_seq"]
    bad = [c for c in plan.checks if c.status == "fail"]
    assert [c.name for c in bad] == ["no names with control characters on the source"] and not plan.ok
    assert "3: " in bad[0].detail and repr('public."t\n1 text users;COPY"') in bad[0].detail
    assert "'control_char_names'" in bp.SYNCABILITY_SQL and "[[:cntrl:]]" in bp.SYNCABILITY_SQL


def test_the_windows_setval_quotes_each_sequence_name_as_data():
    """Each sequence is one statement rendered here from JSON: a newline and a dollar-quoted COPY in a
    name stay inside its literal (the old text was split into lines and each line run on the primary)."""
    states = [["public", "users_id_seq", 17, True],
              ["public", "s\nSELECT 1; COPY (SELECT 1) TO PROGRAM $$id>x$$; --", 1, False]]
    out = bp.render_setvals(states)
    assert out[0] == "SELECT pg_catalog.setval('\"public\".\"users_id_seq\"', 17, true);"
    assert out[1] == ("SELECT pg_catalog.setval('\"public\".\"s\nSELECT 1; COPY (SELECT 1) TO PROGRAM $$id>x$$; --\"', "
                      "1, false);")
    assert len(out) == 2 and "json_build_array(schemaname, sequencename" in bp.SEQUENCE_STATES_SQL


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
    ({"transfer": "online", "method": "heroku", "heroku_app": "hcb"}, "source.url"),  # heroku: the CLI gives it
    ({"transfer": "online", "online": {"drain_deadline": 5}}, "drain_deadline"),
])
def test_bad_online_params_are_refused_naming_the_key(source, key):
    with pytest.raises(ParamsError, match=key):
        parse_params(base_params(**source))


# the window's snapshots, the sequences check, the runbook's order ---------------------------------

def test_the_hold_script_exports_a_snapshot_into_a_file_and_keeps_its_transaction_open():
    text = bp.render_hold_script("/var/lib/postgresql/hcbpg-bucardo/snapshots/source.snapshot", 7200.4)
    lines = text.splitlines()
    begin = lines.index("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;")
    assert lines.index("\\o /var/lib/postgresql/hcbpg-bucardo/snapshots/source.snapshot") > begin
    assert lines[-1] == "SELECT pg_sleep(7200);" and "COMMIT" not in text
    # named like hcbpg's other sessions: the quiet-source check does not count it as the app
    assert "SET application_name = 'hcbpg-migration';" in lines and "SET statement_timeout = 0;" in lines


def test_held_snapshots_parse_and_a_side_without_one_is_named_with_what_its_session_said():
    held = bp.parse_held_snapshots("primary 4242 00000003-0000001B-1\n\nsource 77 0000000A-000000A1-1\n",
                                   ["primary", "source"])
    assert held == {"primary": {"pid": 4242, "snapshot": "00000003-0000001B-1"},
                    "source": {"pid": 77, "snapshot": "0000000A-000000A1-1"}}
    with pytest.raises(Exception, match=r"the source \(psql: error: connection to server .* failed\)") as exc:
        bp.parse_held_snapshots("primary 4242 00000003-0000001B-1\nsource psql: error: connection to server "
                                "at 10.0.1.20 failed\n", ["primary", "source"])
    assert "traffic must not start" in exc.value.hint


def test_a_snapshot_id_is_checked_before_it_reaches_sql():
    from hcbpg.pg.inventory import render_snapshot_setup
    assert render_snapshot_setup("00000003-0000001B-1").endswith("SET TRANSACTION SNAPSHOT '00000003-0000001B-1';")
    with pytest.raises(ValueError):
        render_snapshot_setup("1'; DROP TABLE users; --")


def test_the_counts_in_a_snapshot_leave_bucardos_tables_out():
    assert "n.nspname <> 'bucardo' AND c.relkind IN ('r', 'p')" in bp.SNAPSHOT_COUNTS_SQL


def test_sequences_must_equal_the_sources_after_the_window_set_them():
    ok = bp.check_sequences_equal({"public.users_id_seq": 5, "public.x_seq": None},
                                  {"public.users_id_seq": 5, "public.x_seq": None}, "p")
    assert ok.status == "pass" and ok.detail == "2 sequence(s)"
    bad = bp.check_sequences_equal({"public.users_id_seq": 5, "public.y_seq": 1}, {"public.users_id_seq": 4}, "p")
    assert bad.status == "fail" and "public.users_id_seq: 5 vs 4" in bad.detail and "public.y_seq: 1 vs missing" in bad.detail


def test_with_the_online_transfer_the_primary_is_completed_before_the_window():
    from hcbpg.engine.catalogue import load_steps, select
    online = [s.key for s in select(load_steps(transfer="online"))]
    stream = [s.key for s in select(load_steps(transfer="stream"))]
    assert online.index("06b_online_sync") < online.index("08_start_archiving") < online.index("10_replication") \
        < online.index("07_cutover") < online.index("09_start_traffic") < online.index("09b_way_back")
    assert stream.index("07_cutover") < stream.index("08_start_archiving") < stream.index("09_start_traffic") \
        < stream.index("10_replication")
    assert sorted(online) == sorted(stream) == sorted(s.key for s in select(load_steps(transfer="directory")))
    assert [s.key for s in select(load_steps())] == stream  # no source.transfer: the default's order


def test_a_notebook_listed_twice_for_one_transfer_is_refused(tmp_path):
    from hcbpg.engine.catalogue import load_steps
    from hcbpg.errors import UsageError
    (tmp_path / "steps.yaml").write_text("steps:\n  - {notebook: 08_a.ipynb, title: a, transfers: [online]}\n"
                                         "  - {notebook: 08_a.ipynb, title: a}\n")
    assert [s.key for s in load_steps(tmp_path, transfer="stream")] == ["08_a"]
    with pytest.raises(UsageError, match="08_a.ipynb is listed twice for source.transfer online"):
        load_steps(tmp_path, transfer="online")


# the lab's app load ---------------------------------------------------------------------------------

def test_the_app_loads_log_tells_which_writes_are_missing_on_the_primary():
    from hcbpg.lab import app_load
    log = app_load.parse_log("i 10\nu 3 app-load 1\ni 11\nu 3 app-load 2\nu 4 app-load 3\nstopped\n")
    assert log.inserted == [10, 11] and log.updated == {3: "app-load 2", 4: "app-load 3"} and log.stopped
    assert log.writes == 4
    q = app_load.render_found_sql(log)
    assert "'{10,11}'::bigint[]" in q and "'{3,4}'::bigint[]" in q
    assert app_load.lost_writes(log, {"inserted": [10, 11], "memos": {"3": "app-load 2", "4": "app-load 3"}}) == []
    lost = app_load.lost_writes(log, {"inserted": [10], "memos": {"3": "app-load 1", "4": "app-load 3"}})
    assert lost == ["events 11: missing", "transactions 3: memo 'app-load 1', expected 'app-load 2'"]


def test_the_app_load_reads_its_credentials_from_a_service_file_never_its_command_line():
    from hcbpg.lab import app_load
    start = app_load.render_start(4, users=100, transactions=200)
    assert "service=hcbpg-app-load" in start and "password" not in start and "% 100" in start and "% 200" in start
    assert "250000000" in start  # 4 a second
    svc = app_load.render_service_file({"host": "10.0.1.20", "password": "s3cret", "dbname": "hcb"})
    assert svc.startswith("[hcbpg-app-load]\n") and "password=s3cret\n" in svc


def test_bucardos_service_file_verifies_the_source_and_asks_for_scram_where_libpq_can(monkeypatch):
    """Item 6 of issue 23: with ``source.ca_file`` on the primary, Bucardo's connection is verify-full
    against it (it was sslmode=require, the CA ignored); require_auth only for a libpq that knows it."""
    from hcbpg.ops import packages as pkg_ops
    from hcbpg.ops.migration import bucardo_service as bs
    from hcbpg.ops.migration.source import Source
    from hcbpg.pg.conninfo import parse_libpq_major

    class NoHost:
        name = "server-postgres-1"

    url = "postgres://u:pw@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d1"
    libpq: dict[str, str] = {}
    monkeypatch.setattr(pkg_ops, "get_installed_packages", lambda host, names: dict(libpq))
    libpq["libpq5"] = "15.20-0+deb12u1"
    with_ca = bs.get_service_text(NoHost(), Source(NoHost(), url, sslrootcert="/etc/hcbpg/tls/source-ca.crt"))
    assert "sslmode=verify-full\n" in with_ca and "sslrootcert=/etc/hcbpg/tls/source-ca.crt\n" in with_ca
    assert "require_auth" not in with_ca and "[hcbpg-bucardo-source]" in with_ca
    assert "sslmode=require\n" in bs.get_service_text(NoHost(), Source(NoHost(), url))
    libpq["libpq5"] = "1:16.4-1.pgdg24.04+1"
    assert "require_auth=scram-sha-256\n" in bs.get_service_text(NoHost(), Source(NoHost(), url))
    libpq.clear()  # no libpq5 package known: nothing libpq might refuse
    assert "require_auth" not in bs.get_service_text(NoHost(), Source(NoHost(), url))
    assert [parse_libpq_major(v) for v in ("15.20-0+deb12u1", "1:17.2-1.pgdg24.04+1", "", None)] == [15, 17, None, None]
    # on tmpfs, the postgres user's libpq path a symlink to it
    assert bs.SERVICE_FILE.startswith("/run/") and bs.SERVICE_LINK == "/var/lib/postgresql/.pg_service.conf"
