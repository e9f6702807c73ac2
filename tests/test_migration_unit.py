"""The migration's pure parts: URLs and their scrubbing, the service file, command rendering,
TOC filtering, restore settings, the comparison, the safety rules, the downtime.

Regenerate the golden files after a deliberate change with ``HCBPG_UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hcbpg.adapters.psql import JSON_MARK
from hcbpg.errors import SafetyCheckFailed, SecretError, VerificationFailed
from hcbpg.ops import migration
from hcbpg.ops.migration import cutover as migration_cutover
from hcbpg.ops.migration.dump import SERVICE_FILE
from hcbpg.outcome import Check
from hcbpg.params import parse_params
from hcbpg.secrets import REDACTED, register, scrub, write_private_file
from hcbpg.steps import _migration as migration_steps

from nbutil import manual_lab

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
PASSWORD = "s3cr3t/with+chars@and:colon"


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("HCBPG_UPDATE_GOLDEN") == "1" or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.fixture
def params():
    return parse_params(manual_lab())


# URLs ------------------------------------------------------------------------------------

def test_source_url_parses_into_libpq_parameters_with_decoded_password():
    url = "postgres://u%40x:p%2Fw%3Ad@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d8abc?sslmode=require"
    conn = migration.parse_source_url(url)
    assert conn == {"host": "ec2-1-2-3-4.compute-1.amazonaws.com", "port": "5432", "dbname": "d8abc",
                    "user": "u@x", "password": "p/w:d", "sslmode": "require"}
    assert "p/w:d" not in migration.describe_source(conn)


@pytest.mark.parametrize("bad", ["mysql://u:p@h/d", "postgres://u:p@h", "not a url"])
def test_source_url_that_is_not_a_postgres_url_is_refused_without_echoing_it(bad):
    with pytest.raises(SecretError) as exc:
        migration.parse_source_url(bad)
    assert bad not in str(exc.value)


def test_service_file_holds_the_password_defaults_to_tls_and_refuses_newlines():
    text = migration.render_service_file({"host": "db.example", "dbname": "d", "user": "u", "password": "pw"})
    assert "[hcbpg_source]" in text and "password=pw" in text and "sslmode=require" in text
    assert "application_name=hcbpg-migration" in text
    local = migration.render_service_file({"host": "localhost", "dbname": "d"})
    assert "sslmode" not in local
    with pytest.raises(SecretError):
        migration.render_service_file({"host": "h", "dbname": "d\nhost=evil"})


def test_database_url_quotes_the_password_and_prints_only_redacted(params):
    register(PASSWORD)
    url = migration.render_database_url(params, PASSWORD)
    tls = "?sslmode=verify-full&sslrootcert=/etc/hcbpg/tls/lab-postgres-ca.crt"
    assert url.startswith("postgres://rails:") and url.endswith("@10.0.1.5:5432/hcb_production" + tls)
    assert migration.parse_source_url(url)["password"] == PASSWORD
    assert migration.parse_source_url(url)["sslmode"] == "verify-full"
    assert migration.redact_url(url) == f"postgres://rails:{REDACTED}@10.0.1.5:5432/hcb_production" + tls
    assert PASSWORD not in scrub(url) and "s3cr3t" not in scrub(url)


BLAZER_PW = "blazer-pw/0123456789"
MIGRATIONS_PW = "migrations-pw/0123456789"


@pytest.fixture
def url_params(monkeypatch, tmp_path):
    """Lab params whose Blazer and migrations passwords are in the environment, the files under tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HCBPG_TEST_BLAZER_PW", BLAZER_PW)
    monkeypatch.setenv("HCBPG_TEST_MIGRATIONS_PW", MIGRATIONS_PW)
    data = manual_lab()
    data["roles"]["blazer"]["password"] = "env:HCBPG_TEST_BLAZER_PW"
    data["roles"]["migrations"]["password"] = "env:HCBPG_TEST_MIGRATIONS_PW"
    return parse_params(data)


def _rb(params, *, dry_run=False):
    from hcbpg.engine import runbook as rbmod
    return rbmod.Runbook("lab", run_id="", run_dir="", dry_run=dry_run, step="09_start_traffic", params=params,
                         base=Path("/nonexistent"))


def test_the_apps_urls_go_whole_to_a_0600_file_blazer_read_only_and_only_redacted_is_shown(url_params, tmp_path,
                                                                                              capsys):
    """One file per target, the target's whole current set: the app's DATABASE_URL (rails) beside Blazer's
    own read-only login (never rails'); handed out again unchanged, it says so and changes nothing."""
    from hcbpg.adapters.secretstore import SecretStore
    from hcbpg.desired.roles import roles_config
    from hcbpg.ops import handout
    cfg = roles_config(url_params)
    rb = _rb(url_params)
    urls = migration_steps.hand_out_urls(rb, lambda: handout.get_app_urls(SecretStore(), url_params, cfg, login="rails",
                                                                      password=PASSWORD), "the app")
    out = capsys.readouterr().out
    assert PASSWORD not in out and BLAZER_PW not in out and "s3cr3t" not in out
    tls = "?sslmode=verify-full&sslrootcert=/etc/hcbpg/tls/lab-postgres-ca.crt"
    assert f"DATABASE_URL=postgres://rails:{REDACTED}@10.0.1.5:5432/hcb_production{tls}" in out
    assert f"BLAZER_DATABASE_URL=postgres://blazer:{REDACTED}@10.0.1.5:5432/hcb_production{tls}" in out
    assert urls is not None and urls.written
    assert urls.path == tmp_path / "state" / "hcbpg" / "lab" / "app-database-urls.env"
    assert stat.S_IMODE(urls.path.stat().st_mode) == 0o600 and "outputs" not in str(urls.path)
    handed = dict(line.split("=", 1) for line in urls.path.read_text().splitlines() if not line.startswith("#"))
    assert set(handed) == {"DATABASE_URL", "BLAZER_DATABASE_URL"}
    assert handed["DATABASE_URL"].startswith("'postgres://rails:")  # quoted: the TLS query has & and ?
    assert handed["BLAZER_DATABASE_URL"].startswith("'postgres://blazer:") and "s3cr3t" not in handed["BLAZER_DATABASE_URL"]
    assert [o.changed for o in rb.outcomes] == [True]
    again = migration_steps.hand_out_urls(rb, lambda: handout.get_app_urls(SecretStore(), url_params, cfg, login="rails",
                                                                       password=PASSWORD), "the app")
    assert again is not None and not again.written and [o.changed for o in rb.outcomes] == [True, False]
    assert "are already in" in capsys.readouterr().out
    # the release command's file holds its own URL only: no second BLAZER_DATABASE_URL to disagree with
    rel = migration_steps.hand_out_urls(rb, lambda: handout.get_release_urls(SecretStore(), url_params, cfg),
                                        "the release command")
    assert rel is not None and rel.path.name == "release-database-urls.env"
    assert [line.split("=", 1)[0] for line in rel.path.read_text().splitlines() if not line.startswith("#")] == \
        ["MIGRATIONS_DATABASE_URL"]


def test_app_urls_dry_run_writes_nothing_and_a_plan_without_the_passwords_yet_says_so(url_params, monkeypatch):
    from hcbpg.adapters.secretstore import SecretStore
    from hcbpg.desired.roles import roles_config
    from hcbpg.ops import handout
    cfg = roles_config(url_params)
    rb = _rb(url_params, dry_run=True)
    urls = migration_steps.hand_out_urls(rb, lambda: handout.get_app_urls(SecretStore(), url_params, cfg, login="rails",
                                                                      password=PASSWORD), "the app")
    assert urls is not None and not urls.path.exists() and not urls.written
    assert rb.outcomes[-1].changed and rb.outcomes[-1].dry_run
    monkeypatch.delenv("HCBPG_TEST_BLAZER_PW")  # step 13 makes the passwords; a plan before it cannot read them
    assert migration_steps.hand_out_urls(rb, lambda: handout.get_app_urls(SecretStore(), url_params, cfg, login="rails",
                                                                      password=PASSWORD), "the app") is None
    assert "once the logins' passwords exist" in rb.outcomes[-1].actions[0]
    real = _rb(url_params)
    with pytest.raises(SecretError):  # a real run does not go on without them
        migration_steps.hand_out_urls(real, lambda: handout.get_app_urls(SecretStore(), url_params, cfg, login="rails",
                                                                     password=PASSWORD), "the app")


# commands ----------------------------------------------------------------------------------

def test_dump_session_uses_the_exported_snapshot_and_no_secret(params):
    text = migration.render_dump_session(params, "/var/tmp/hcbpg-dump/r1-06_dry_run_restore", service_file=SERVICE_FILE,
                                         counts_select=migration.render_counts_select(params, JSON_MARK))
    golden("migration.dump-session.psql", text)
    assert "pg_export_snapshot()" in text and '--snapshot="$HCBPG_SNAPSHOT"' in text
    assert "REPEATABLE READ" in text and "-Fd -j 2 -Z 0" in text
    assert "PGSERVICEFILE=/run/hcbpg-migration/source.pgservice" in text
    assert "postgres://" not in text and "password" not in text.lower()


def test_pg_restore_runs_as_postgres_with_set_role_rails_and_no_owner_no_acl(params):
    cmd = migration.render_pg_restore(params, "/d/x", "/d/x.list", jobs=4)
    assert cmd == ("pg_restore --cluster 15/main -j 4 --no-owner --no-acl --role=rails --exit-on-error "
                   "-L /d/x.list -d hcb_production /d/x")
    assert migration.restore_jobs(params) == 2 * params.source.jobs


def test_heroku_url_travels_on_stdin_not_on_the_command_line():
    capture, url = migration.render_heroku_commands("hcb-production")
    assert capture == ["heroku", "pg:backups:capture", "--app", "hcb-production"]
    assert url == ["heroku", "pg:backups:url", "--app", "hcb-production"]
    cmd, cfg = migration.render_download("/var/tmp/hcbpg-dump/x.dump")
    assert "--config -" in cmd and "{url}" not in cmd and "{url}" in cfg


def test_heroku_dump_downloads_on_the_primary_with_the_url_on_stdin(params):
    p = params.model_copy(update={"source": params.source.model_copy(update={"method": "heroku",
                                                                             "heroku_app": "hcb-production"})})
    signed = "https://xfrtu.s3.amazonaws.com/abc/latest.dump?X-Amz-Signature=deadbeefdeadbeef"
    calls: list[list[str]] = []

    class Proc:
        def __init__(self, out: str) -> None:
            self.returncode, self.stdout, self.stderr = 0, out, ""

    def local(argv):
        calls.append(list(argv))
        return Proc(signed + "\n" if "pg:backups:url" in argv else "Backing up DATABASE to b001... done\n")

    host = FakeHost()
    dump = migration.run_heroku_dump(host, p, "r1-07_cutover", local=local)
    assert [c[1] for c in calls] == ["pg:backups:capture", "pg:backups:url"]
    curl = [r for r in host.runs if "curl" in r["cmd"]][0]
    assert signed not in curl["cmd"] and signed in curl["stdin"]
    assert dump.format == "custom" and dump.path.endswith("r1-07_cutover.dump")
    assert signed not in scrub(f"got {signed}")


class FakeHost:
    """Records commands; answers the few probes run_heroku_dump makes."""

    name = "server-postgres-1"

    def __init__(self) -> None:
        self.runs: list[dict] = []
        self.echo = print

    def run(self, cmd, **kw):
        self.runs.append({"cmd": cmd, "stdin": kw.get("stdin")})
        return type("R", (), {"ok": True, "stdout": "", "stderr": "", "exit_code": 0, "output": ""})()

    def probe(self, cmd, **kw):
        r = self.run(cmd, **kw)
        r.stdout = "12345"
        return r


# the dump's list --------------------------------------------------------------------------

TOC = """;
; Archive created at 2026-11-25 10:00:00 UTC
;
2; 3079 16385 EXTENSION - citext
3; 0 0 COMMENT - EXTENSION citext
4; 3079 16490 EXTENSION - pg_stat_statements
5; 0 0 COMMENT - EXTENSION pg_stat_statements
6; 2615 16384 SCHEMA - heroku_ext heroku_owner
218; 1259 16531 TABLE public users heroku_owner
219; 1259 16530 SEQUENCE public users_id_seq heroku_owner
3400; 0 16531 TABLE DATA public users heroku_owner
3410; 2606 16540 CONSTRAINT public users users_pkey heroku_owner
3420; 2620 16600 TRIGGER public users bucardo_delta heroku_owner
3421; 2620 16601 TRIGGER public users bucardo_kick_hcbpg_forward heroku_owner
3422; 2620 16602 TRIGGER public users users_touch heroku_owner
"""


def test_toc_filter_drops_extensions_their_comments_precreated_schemas_and_bucardos_triggers_only():
    listed, dropped = migration.filter_toc(TOC, precreated_schemas=["heroku_ext"])
    assert len(dropped) == 7
    assert all(line.split(";")[1] in ("2", "3", "4", "5", "6", "3420", "3421")
               for line in listed.splitlines() if line.startswith(";") and line[1:2].isdigit())
    for keep in ("218; 1259 16531 TABLE public users", "3400; 0 16531 TABLE DATA", "3410; 2606 16540 CONSTRAINT",
                 "3422; 2620 16602 TRIGGER public users users_touch"):
        assert any(line.startswith(keep) for line in listed.splitlines())
    listed2, dropped2 = migration.filter_toc(TOC, precreated_schemas=[])
    assert "6; 2615 16384 SCHEMA - heroku_ext heroku_owner" in listed2.splitlines()
    assert len(dropped2) == 6


def test_prerequisites_create_heroku_ext_when_extensions_live_there():
    facts = {"extensions": [{"name": "citext", "schema": "heroku_ext", "version": "1.6"},
                            {"name": "pg_stat_statements", "schema": "heroku_ext", "version": "1.10"}]}
    schemas, exts = migration.plan_prerequisites(facts)
    assert schemas == ["heroku_ext"] and [e["name"] for e in exts] == ["citext", "pg_stat_statements"]
    schemas, _ = migration.plan_prerequisites({"extensions": [{"name": "citext", "schema": "public", "version": "1.6"}]},
                                              toc="7; 1259 1 TABLE heroku_ext thing owner")
    assert schemas == ["heroku_ext"]
    schemas, _ = migration.plan_prerequisites({"extensions": [{"name": "citext", "schema": "public", "version": "1.6"}]})
    assert schemas == []


def test_database_search_path_is_copied_as_identifiers():
    st = migration.render_db_setting("hcb_production", 'search_path="$user", public, heroku_ext')
    assert migration.render(st) == 'ALTER DATABASE "hcb_production" SET search_path = "$user", "public", "heroku_ext"'
    st = migration.render_db_setting("hcb_production", "statement_timeout=30s")
    assert migration.render(st) == "ALTER DATABASE \"hcb_production\" SET \"statement_timeout\" = '30s'"


# restore settings -------------------------------------------------------------------------

def test_restore_settings_reload_only_by_default_and_keep_wal_whole_once_archiving_or_replication_exists():
    s, notes = migration.plan_restore_settings(mem_bytes=8 * 1024 ** 3, jobs=4, archive_mode="off",
                                               wal_senders_busy=0, replication_slots=0)
    assert "wal_level" not in s and "max_wal_senders" not in s  # both need a restart
    assert s["full_page_writes"] is False and s["synchronous_commit"] is False and s["autovacuum"] is False
    assert s["maintenance_work_mem"] == "512MB"
    golden("migration.restore-settings.conf", migration.render_restore_settings(s, server="server-postgres-1"))
    for kw in ({"archive_mode": "on", "wal_senders_busy": 0, "replication_slots": 0},
               {"archive_mode": "off", "wal_senders_busy": 1, "replication_slots": 0},
               {"archive_mode": "off", "wal_senders_busy": 0, "replication_slots": 1}):
        s2, notes2 = migration.plan_restore_settings(mem_bytes=8 * 1024 ** 3, jobs=4, wal_minimal=True, **kw)
        assert "wal_level" not in s2 and "full_page_writes" not in s2
        assert any("WAL stays complete" in n for n in notes2)
    s3, _ = migration.plan_restore_settings(mem_bytes=64 * 1024 ** 3, jobs=2, archive_mode="off",
                                            wal_senders_busy=0, replication_slots=0, wal_minimal=True)
    assert s3["maintenance_work_mem"] == "2048MB"
    assert s3["wal_level"] == "minimal" and s3["max_wal_senders"] == 0
    assert "fsync" not in s and "fsync" not in s3


# comparison -------------------------------------------------------------------------------

def inv(rows=None, **objects) -> migration.Inventory:
    base = {k: {} for k in migration.KIND_LABELS}
    base.update(objects)
    return migration.Inventory(base, rows or {})


def test_a_missing_row_fails_and_names_the_table():
    src = {"public.users": 2000, "public.events": 12000}
    tgt = {"public.users": 1999, "public.events": 12000}
    checks = migration.compare_rows(src, tgt)
    failed = [c for c in checks if c.status == "fail"]
    assert [c.name for c in failed] == ["rows public.users"]
    assert failed[0].detail == "source 2000, target 1999 (-1)"


def test_row_differences_are_warnings_only_for_an_approximate_heroku_dry_run():
    checks = migration.compare_rows({"public.users": 2}, {"public.users": 1}, approximate=True)
    assert checks[0].status == "warn"
    checks = migration.compare_rows({"public.users": 2}, {})
    assert checks[0].status == "fail" and "missing on target" in checks[0].detail


def test_objects_compare_by_name_and_definition():
    src = inv(indexes={"public.a": "CREATE INDEX a ON public.t USING btree (x)",
                       "public.b": "CREATE INDEX b ON public.t USING btree (y)"},
              tables={"public.t": "3 columns"})
    tgt = inv(indexes={"public.a": "CREATE INDEX a ON public.t USING hash (x)"}, tables={"public.t": "3 columns"})
    checks = {c.name: c for c in migration.compare_objects(src, tgt)}
    assert checks["indexes"].status == "fail"
    assert "missing on target: public.b" in checks["indexes"].detail
    assert "definitions differ: public.a" in checks["indexes"].detail
    assert checks["tables"].status == "pass"


def test_sequences_ahead_on_a_live_source_pass_with_a_note_but_fail_in_the_cutover():
    src = inv(sequences={"public.users_id_seq": "2010"})
    tgt = inv(sequences={"public.users_id_seq": "2000"})
    live = {c.name: c for c in migration.compare_objects(src, tgt, live_source=True)}
    cut = {c.name: c for c in migration.compare_objects(src, tgt, live_source=False)}
    # the app wrote after the dump read the value: expected in a dry run, named, not a warning to chase
    assert live["sequences (values)"].status == "pass"
    assert "1 advanced on the live source" in live["sequences (values)"].detail
    assert "public.users_id_seq source 2010 target 2000" in live["sequences (values)"].detail
    assert cut["sequences (values)"].status == "fail"
    behind = {c.name: c for c in migration.compare_objects(tgt, src, live_source=True)}
    assert behind["sequences (values)"].status == "fail"
    # a missing sequence fails even on a live source, and the advanced one is still named
    more = inv(sequences={"public.users_id_seq": "2010", "public.b_id_seq": "1"})
    both = {c.name: c for c in migration.compare_objects(more, tgt, live_source=True)}
    assert both["sequences (values)"].status == "fail"
    assert "missing on target: public.b_id_seq" in both["sequences (values)"].detail


def test_comparison_table_counts_every_kind_and_all_rows():
    src = inv({"public.t": 3}, tables={"public.t": "1 columns"})
    tgt = inv({"public.t": 2}, tables={"public.t": "1 columns"})
    table = {r["what"]: r for r in migration.comparison_table(src, tgt)}
    assert table["tables"]["status"] == "pass"
    assert table["rows (all tables)"] == {"what": "rows (all tables)", "source": 3, "target": 2, "status": "fail"}


def test_inventory_round_trips_through_json():
    i = inv({"public.t": 3}, tables={"public.t": "1 columns"})
    i.newest_event = 42
    assert migration.Inventory.from_json(i.to_json()) == i


# safety -----------------------------------------------------------------------------------

def recreate(state, **kw):
    args = dict(database="hcb_production", server="server-postgres-1", allow_destructive=False,
                same_server_as_source=False)
    args.update(kw)
    return migration.plan_recreate(state, **args)


def test_dropping_is_refused_when_the_source_is_this_server():
    with pytest.raises(SafetyCheckFailed, match="server-postgres-1.*source URL leads to this very server"):
        recreate(migration.TargetState(True, migration.MARKER_RESTORE), same_server_as_source=True,
                 allow_destructive=True)


def test_dropping_is_refused_while_clients_are_connected_even_with_allow_destructive():
    state = migration.TargetState(True, migration.MARKER_RESTORE, other_sessions=[
        {"pid": 7, "usename": "rails", "client": "10.0.1.10", "application_name": "puma"}])
    with pytest.raises(SafetyCheckFailed, match="1 client.*pid 7 rails@10.0.1.10"):
        recreate(state, allow_destructive=True)


def test_dropping_a_foreign_database_with_tables_needs_allow_destructive():
    state = migration.TargetState(True, "someone's data", user_tables=12)
    with pytest.raises(SafetyCheckFailed, match="12 table.*not an hcbpg restore target") as exc:
        recreate(state)
    assert "allow_destructive" in str(exc.value)
    assert "allow_destructive is true" in recreate(state, allow_destructive=True)[0]


def test_the_live_database_is_never_dropped_without_allow_destructive():
    state = migration.TargetState(True, f"{migration.MARKER_LIVE}: traffic started", user_tables=191)
    with pytest.raises(SafetyCheckFailed, match="live database"):
        recreate(state)


@pytest.mark.parametrize("state, why", [
    (migration.TargetState(False), "create database"),
    (migration.TargetState(True, None, user_tables=0), "no tables"),
    (migration.TargetState(True, f"{migration.MARKER_RESTORE}: restored", user_tables=191), "earlier hcbpg restore"),
])
def test_dropping_is_allowed_for_empty_or_earlier_restore_targets(state, why):
    assert why in " ".join(recreate(state))


# the cutover ---------------------------------------------------------------------------

def test_other_sessions_on_the_source_fail_the_quiet_check():
    assert migration.check_source_quiet([]).status == "pass"
    c = migration.check_source_quiet([{"pid": 9, "usename": "u", "client": "3.3.3.3", "application_name": "sidekiq",
                                       "state": "idle in transaction", "writing": True}])
    assert c.status == "fail" and "sidekiq" in c.detail and "WRITING" in c.detail


def test_waiting_for_a_quiet_source_gives_up_at_its_deadline(monkeypatch):
    monkeypatch.setattr(migration_cutover, "get_source_sessions",
                        lambda source: [{"pid": 1, "usename": "u", "client": None, "application_name": "web",
                                         "state": "idle", "writing": False}])
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(migration_cutover.time, "monotonic", lambda: next(clock))
    with pytest.raises(migration.WaitTimeout, match="other connections after 30s") as exc:
        migration.wait_for_source_quiet(None, timeout=30, sleep=lambda s: None)
    assert "maintenance mode off" in exc.value.hint.lower() or "Turn maintenance mode" in exc.value.hint


def test_verification_failure_carries_the_rollback_instructions():
    class RB:
        def verify(self, checks):
            raise VerificationFailed("1 of 1 checks failed: rows public.users: source 2, target 1",
                                     failures=["rows public.users"])
    with pytest.raises(VerificationFailed) as exc:
        migration_steps.verify(RB(), [Check("rows public.users", "fail", "source 2, target 1")], rollback=migration.ROLLBACK)
    text = str(exc.value)
    assert "rows public.users" in text and "before any traffic gate" in text
    assert "Turn maintenance mode off" in text and "Do NOT change DATABASE_URL" in text


def test_downtime_runs_from_maintenance_on_to_maintenance_off_with_phases():
    gates = {"maintenance-on": {"approved_at": "2026-11-25T10:00:00.000000Z"},
             "maintenance-off": {"approved_at": "2026-11-25T10:07:30.500000Z"}}
    dt = migration.compute_downtime(gates, {"dump_s": 10.04, "restore_s": 40.0, "verify_s": 2.5})
    assert dt == {"maintenance_on_at": "2026-11-25T10:00:00.000000Z",
                  "traffic_on_at": "2026-11-25T10:07:30.500000Z", "total_s": 450.5,
                  "phases_s": {"dump_s": 10.04, "restore_s": 40.0, "verify_s": 2.5}}
    assert migration.compute_downtime({}, {})["total_s"] is None


def test_env_file_quotes_values_for_a_shell(tmp_path):
    text = migration.render_env_file({"DATABASE_URL": "postgres://r:a'b@h/d"})
    assert "DATABASE_URL='postgres://r:a'\"'\"'b@h/d'" in text
    p = tmp_path / "x" / "f.env"
    write_private_file(p, text)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700


# the streamed transfer -----------------------------------------------------------------

def stream_scripts(params, work: str, schemas: list[str], **kw: object) -> tuple[str, str]:  # noqa: ANN001
    """The stream scripts as :func:`hcbpg.ops.migration.stream.run_stream` renders them."""
    return migration.render_stream_scripts(params, work, schemas, service_file=SERVICE_FILE,
                                           reload_and_wait=migration.render_reload_and_wait(params),
                                           counts_select=migration.render_counts_select(params, JSON_MARK), **kw)


def test_stream_list_filter_matches_filter_toc():
    import subprocess
    prog = migration.render_toc_filter(["heroku_ext"])
    out = subprocess.run(["sed", "-E", prog], input=TOC, capture_output=True, text=True, check=True).stdout
    assert out == migration.filter_toc(TOC, precreated_schemas=["heroku_ext"])[0]
    with pytest.raises(ValueError):
        migration.render_toc_filter(["evil/name"])


def test_stream_scripts_use_the_snapshot_the_service_file_and_no_secret(params):
    main, worker = stream_scripts(params, "/var/tmp/hcbpg-dump/r1-07_cutover", ["heroku_ext"])
    golden("migration.stream.sh", main)
    golden("migration.stream-work.sh", worker)
    assert "unset PGCLUSTER" in main and "unset PGCLUSTER" in worker
    assert '--snapshot="$HCBPG_SNAPSHOT"' in main and "SET TRANSACTION SNAPSHOT '$HCBPG_SNAPSHOT'" in worker
    assert "--section=pre-data" in main and "-L /var/tmp/hcbpg-dump/r1-07_cutover/post.list --section=post-data -j 4" in main
    # a pool of source.jobs workers over one queue, seeded with the tables' list; any failed worker fails it
    assert "bash /var/tmp/hcbpg-dump/r1-07_cutover/work.sh seed < /var/tmp/hcbpg-dump/r1-07_cutover/tables" in main
    assert 'for _ in $(seq 2); do bash /var/tmp/hcbpg-dump/r1-07_cutover/work.sh & pids+=($!); done' in main
    assert main.index("work.sh seed") < main.index('wait "$p" || ok=0') < main.index('[ "$ok" = 1 ]') \
        < main.index("stamp tables")
    assert 'COPY $t TO STDOUT (FORMAT $fmt)' in worker
    # loaded frozen: truncated in the same transaction, as pg_restore -j does
    assert '-c "BEGIN" -c "TRUNCATE ONLY $t" -c "COPY $t FROM STDIN (FORMAT $fmt, FREEZE)" -c "COMMIT"' in worker
    # a table's builds are queued once its rows are in, ahead of every table not yet copied (b- before c-,
    # taken in name order under the queue's lock); the last build adds its keys, then ANALYZE, as the app role
    assert worker.index("stamp copied") < worker.index('> "$W/q/b-${n%%.*}"')
    assert 'jobs=("$W"/q/*)' in worker and "export LC_ALL=C" in worker and worker.count("flock 9") == 5
    assert worker.index('$1.keys') < worker.index('ANALYZE $2') < worker.index("stamp built")
    assert worker.count('SET ROLE rails') == 5 and "--role=rails" in worker
    # every session at normal priority, without parallel workers (the pool fills the cores); no renice
    assert 'on_target() { PGOPTIONS="-c max_parallel_maintenance_workers=0" /usr/lib/postgresql/15/bin/psql -p 5432 -X' in worker
    assert "nice" not in worker and "autogroup" not in worker
    assert '-f - "$W/schema.dump" | on_target -f -' in worker
    # a failed job stops the others before their next job
    assert """trap '[ $? = 0 ] || : > "$W/failed"' EXIT""" in worker and 'while [ ! -e "$W/failed" ]' in worker
    # the inventory and counts in the snapshot, once the tables are loaded, waited for at the end
    assert main.index("stamp tables") < main.index("counts.out & countspid=$!") < main.index("post.list --section") \
        < main.index('wait "$countspid"')
    # foreign keys: each queued (f-RANK, after builds and copies) once both of its tables are done, added
    # NOT VALID one at a time (a lock file), then validated; what the pool left is checked before post-data
    assert worker.index('stamp built "$1"') < worker.index(': > "$W/done/$1"') < worker.index('mv "$f" "$W/q/f-${base%%.*}"')
    assert 'flock "$W/fk.lock" /usr/lib/postgresql/15/bin/psql -p 5432' in worker and '*/f-*) foreign_key "$job" ;;' in worker
    assert worker.index('-c "$add"') < worker.index('-c "$validate"')
    assert main.index('[ "$ok" = 1 ]') < main.index("for f in /var/tmp/hcbpg-dump/r1-07_cutover/fk/*; do") \
        < main.index("stamp foreign-keys") < main.index("post.list --section=post-data")
    session = migration.render_stream_session(params, "/var/tmp/hcbpg-dump/r1-07_cutover")
    golden("migration.stream-session.psql", session)
    assert "pg_export_snapshot()" in session and "pg_relation_size(c.oid) DESC" in session
    assert session.index("\\o /var/tmp/hcbpg-dump/r1-07_cutover/builds") < session.index("\\! bash")
    # names are data: refused in this snapshot when one holds a control character, before any is written
    # for a script; the tables' list NUL-separated (never split or read as lines)
    assert session.index("refused-names.json") < session.index("\\if :hcbpg_refused") \
        < session.index("\\pset recordsep_zero on") < session.index("\\o /var/tmp/hcbpg-dump/r1-07_cutover/tables") \
        < session.index("\\pset recordsep '\\n'") < session.index("\\! bash") < session.index("\\endif")
    assert "read -r oid" not in worker and "IFS= read -r -d '' oid && IFS= read -r -d '' fmt && IFS= read -r -d '' t" in worker
    for text in (main, worker, session):
        assert "postgres://" not in text and "password" not in text.lower()


def test_the_transfer_is_streamed_by_default_and_directory_stays_selectable(params):
    data = manual_lab()
    assert data["source"].pop("transfer") == "online"  # the lab rehearses the online cutover
    default = parse_params(data)
    assert default.source.transfer == "stream" and migration.transfer_method(default) == "stream"
    p = params.model_copy(update={"source": params.source.model_copy(update={"transfer": "directory"})})
    assert migration.transfer_method(p) == "directory"


#: a build plan as the source session writes it (fields separated by \x1f)
BUILDS = "\n".join("\x1f".join(f) for f in [
    ["16549", "I", "1259 16571", "INDEX public index_events_on_properties "],
    ["16549", "I", "1259 16570", "INDEX public index_events_on_user_id "],
    ["16549", "K", "2606 16556", "CONSTRAINT public events events_pkey ",
     "CREATE UNIQUE INDEX events_pkey ON public.events USING btree (id);",
     "ALTER TABLE ONLY public.events ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_pkey;"],
    ["16549", "F", "2606 16580", "FK CONSTRAINT public events fk_rails_0cb5590091 ",
     "ALTER TABLE ONLY public.events ADD CONSTRAINT fk_rails_0cb5590091 FOREIGN KEY (user_id) "
     "REFERENCES public.users(id) NOT VALID;",
     "ALTER TABLE ONLY public.events VALIDATE CONSTRAINT fk_rails_0cb5590091;", "2606 16540", "16538"],
    # references a key pg_restore makes (not in the plan): left to pg_restore
    ["16559", "F", "2606 16581", "FK CONSTRAINT public transactions fk_rails_8b0ab6d2f1 ",
     "ALTER TABLE ONLY public.transactions ADD CONSTRAINT fk_rails_8b0ab6d2f1 FOREIGN KEY (event_id) "
     "REFERENCES public.events(id) NOT VALID;",
     "ALTER TABLE ONLY public.transactions VALIDATE CONSTRAINT fk_rails_8b0ab6d2f1;", "2606 16999", "16549"],
    ["16538", "K", "2606 16540", "CONSTRAINT public users users_pkey ",
     "CREATE UNIQUE INDEX users_pkey ON public.users USING btree (id);",
     "ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey PRIMARY KEY USING INDEX users_pkey;"],
    # same oid, other name: not matched, stays with pg_restore
    ["16538", "I", "1259 16545", "INDEX public index_users_on_email "],
]) + "\n"

STREAM_TOC = """;
; Archive created at 2026-11-25 10:00:00 UTC
;
;2; 3079 16385 EXTENSION - citext
224; 1259 16549 TABLE public events heroku_owner
3356; 2606 16556 CONSTRAINT public events events_pkey heroku_owner
3360; 1259 16570 INDEX public index_events_on_user_id heroku_owner
3361; 1259 16571 INDEX public index_events_on_properties heroku_owner
3362; 1259 16545 INDEX public index_users_on_created_at heroku_owner
3363; 2606 16540 CONSTRAINT public users users_pkey heroku_owner
3370; 2606 16580 FK CONSTRAINT public events fk_rails_0cb5590091 heroku_owner
3372; 2606 16581 FK CONSTRAINT public transactions fk_rails_8b0ab6d2f1 heroku_owner
3371; 2620 16590 TRIGGER public events audit heroku_owner
"""


def test_the_build_plan_goes_to_each_table_and_the_rest_to_the_final_pass(tmp_path):
    import subprocess
    (tmp_path / "build").mkdir()
    (tmp_path / "fk").mkdir()
    (tmp_path / "builds").write_text(BUILDS)
    (tmp_path / "schema.list").write_text(STREAM_TOC)
    (tmp_path / "split.awk").write_text(migration.SPLIT_AWK)
    out = subprocess.run(["awk", "-v", f"W={tmp_path}", "-f", str(tmp_path / "split.awk"), str(tmp_path / "builds"),
                          str(tmp_path / "schema.list")], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    # the table, the unmatched index (same oid, other name) and the trigger stay; the matched ones are commented
    for keep in ("224; 1259 16549 TABLE", "3362; 1259 16545 INDEX", "3371; 2620 16590 TRIGGER", ";2; 3079",
                 "3372; 2606 16581 FK CONSTRAINT"):
        assert any(line.startswith(keep) for line in lines), keep
    for done in ("3356; 2606", "3360; 1259", "3361; 1259", "3370; 2606"):
        assert any(line.startswith(";" + done) for line in lines) and not any(line.startswith(done) for line in lines)
    assert len(lines) == len(STREAM_TOC.splitlines())
    files = sorted(p.name for p in (tmp_path / "build").iterdir())
    # numbered in plan order (zero-padded, so that a glob lists them in that order: the costliest first)
    assert files == ["16538.000006.sql", "16538.keys", "16549.000001.list", "16549.000002.list", "16549.000003.sql",
                     "16549.keys"]
    assert (tmp_path / "build" / "16549.000001.list").read_text().startswith("3361; 1259 16571 INDEX public "
                                                                             "index_events_on_properties")
    assert (tmp_path / "build" / "16549.000003.sql").read_text() == \
        "CREATE UNIQUE INDEX events_pkey ON public.events USING btree (id);\n"
    assert "PRIMARY KEY USING INDEX events_pkey" in (tmp_path / "build" / "16549.keys").read_text()
    # one file per foreign key, named RANK.TABLE.REFERENCED (the pool queues it once both are loaded), its
    # ADD and VALIDATE NUL-terminated: each reaches psql whole, never split at a newline
    assert sorted(p.name for p in (tmp_path / "fk").iterdir()) == ["000004.16549.16538"]
    assert (tmp_path / "fk" / "000004.16549.16538").read_text() == \
        ("ALTER TABLE ONLY public.events ADD CONSTRAINT fk_rails_0cb5590091 FOREIGN KEY (user_id) "
         "REFERENCES public.users(id) NOT VALID;\0ALTER TABLE ONLY public.events VALIDATE CONSTRAINT fk_rails_0cb5590091;\0")


def test_an_empty_build_plan_leaves_everything_to_pg_restore(tmp_path):
    import subprocess
    (tmp_path / "build").mkdir()
    (tmp_path / "builds").write_text("")
    (tmp_path / "schema.list").write_text(STREAM_TOC)
    out = subprocess.run(["awk", "-v", f"W={tmp_path}", "-f", "-", str(tmp_path / "builds"),
                          str(tmp_path / "schema.list")], input=migration.SPLIT_AWK, capture_output=True,
                         text=True, check=True).stdout
    assert out == STREAM_TOC and not list((tmp_path / "build").iterdir())


def test_the_build_plan_and_table_list_are_made_in_the_snapshot_with_exact_matches():
    sql_text = migration.BUILDS_SQL
    # keys only when the index has the constraint's name and nothing pg_dump adds to the key is lost
    for cond in ("ic.relname = co.conname", "NOT co.condeferrable", "NOT i.indisclustered", "NOT i.indisreplident",
                 "co.convalidated", "NOT t.relispartition", "[[:cntrl:]]"):
        assert cond in sql_text
    # the builds of all tables by cost (a line's number is its rank in the workers' queue): GIN, GiST and
    # SP-GiST first, then the largest, the foreign keys last
    assert "ORDER BY slow, size DESC, tbl, b" in sql_text and "IN ('gin', 'gist', 'spgist')" in sql_text
    assert "prolang = 12" in migration.TABLES_SQL and "'binary' ELSE 'text'" in migration.TABLES_SQL


#: a psql that records its arguments (one file per call, NUL-separated) and reads its input to the end
FAKE_PSQL = """#!/bin/bash
f=$(mktemp "$HCBPG_TEST_CALLS/call.XXXXXX")
printf '%s\\0' "$@" > "$f"
cat > /dev/null
"""


def test_a_table_name_reaches_psql_whole_or_is_refused_never_as_shell_or_extra_sql(params, tmp_path):
    """The tables' list as the session writes it (NUL-separated oid, format, server-quoted name), run by
    stream.sh's own pool lines and the real work.sh: a name with quotes and semicolons reaches
    psql inside one argument, exactly as the server quoted it; one with a newline (the attack: read as a
    line it became a second entry whose name ran ``TRUNCATE ONLY users;COPY ... TO PROGRAM`` on the
    primary) is refused by work.sh before any psql runs for it, and the pool fails."""
    import subprocess
    work = tmp_path / "w"
    (work / "build").mkdir(parents=True)
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    (bin_dir / "psql").write_text(FAKE_PSQL)
    (bin_dir / "psql").chmod(0o755)
    main, worker = stream_scripts(params, str(work), [])
    # the target's psql is the cluster's own binary (an absolute path): the fake stands in for it too
    (work / "work.sh").write_text(worker.replace("/usr/lib/postgresql/15/bin/psql ", f"{bin_dir / 'psql'} "))
    semicolons = 'public."a;COPY(SELECT 1)TO PROGRAM\'id>x\';--"'
    newline = 'public."t\n1 text users;COPY(SELECT 1)TO PROGRAM\'id>x\';--"'
    (work / "tables").write_text("\0".join(["16400", "binary", semicolons, "16401", "text", newline, ""]))
    lines = main.splitlines()
    pool = "\n".join(lines[next(i for i, line in enumerate(lines) if "work.sh seed" in line):
                           next(i for i, line in enumerate(lines) if line == '[ "$ok" = 1 ]') + 1])
    res = subprocess.run(["bash", "-c", "set -euo pipefail\n" + pool], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                              "HCBPG_TEST_CALLS": str(calls), "HCBPG_SNAPSHOT": "00000003-00000002-1"})
    assert res.returncode != 0 and "table 16401: no name, or one with control characters" in res.stderr, res
    argv = [f.read_text().split("\0")[:-1] for f in calls.iterdir()]
    args = [a for call in argv for a in call]
    assert f"COPY {semicolons} TO STDOUT (FORMAT binary)" in args and f"TRUNCATE ONLY {semicolons}" in args
    assert f"ANALYZE {semicolons}" in args
    assert not [a for a in args if "users" in a or "16401" in a], args  # nothing of the refused entry ran
    stamps = (work / "times").read_text()
    assert "copied 16400" in stamps and "16401" not in stamps


def test_get_files_returns_each_file_exactly_even_without_a_final_newline(tmp_path):
    """The tables' list ends with a NUL, not a newline: the next file's separator must not be swallowed
    (it was: counts.out came back empty after a list), and no line of a file passes for a separator."""
    import subprocess
    from types import SimpleNamespace

    class LocalHost:
        def run(self, cmd: str, **_: object) -> SimpleNamespace:
            return SimpleNamespace(stdout=subprocess.run(["bash", "-c", cmd], capture_output=True, text=True,
                                                         check=False).stdout)
    (tmp_path / "tables").write_text("1\0binary\0public.a\0")
    (tmp_path / "log").write_text("----- hcbpg file counts.out\nline\n\n")
    (tmp_path / "counts.out").write_text("HCBPG-JSON {}\n")
    got = migration.get_files(LocalHost(), str(tmp_path), ["tables", "log", "counts.out", "missing"])
    assert got == {"tables": "1\0binary\0public.a\0", "log": "----- hcbpg file counts.out\nline\n\n",
                   "counts.out": "HCBPG-JSON {}\n", "missing": ""}


def test_stream_times_become_phase_notes():
    log = "\n".join(["hcbpg-time start - 100.0", "hcbpg-time pre-data - 100.5", "noise",
                     "hcbpg-time copied 16549 108.5", "hcbpg-time copied 16538 110.0", "hcbpg-time built 16538 112.0",
                     "hcbpg-time built 16549 124.0", "hcbpg-time tables - 124.1", "hcbpg-time foreign-keys - 127.1",
                     "hcbpg-time post-data - 127.3", "hcbpg-time end - 127.4"])
    notes = migration.parse_stream_times(log, "\x00".join(["16549", "binary", "public.events", "16538", "text",
                                                                 'public."us\ners"', ""]))
    assert notes[0] == "schema dumped and pre-data restored: 0.5s"
    assert notes[1] == "rows copied, indexes and keys built, tables analyzed, foreign keys checked: 23.6s"
    assert notes[2] == "sequences set (and any foreign key the pool did not check): 3.0s"
    assert notes[-2] == "public.events: rows copied at +8.5s, indexes built at +24.0s"
    assert notes[-1] == 'public."us\ners": rows copied at +10.0s, indexes built at +12.0s'
    assert migration.parse_stream_times("nothing") == []


def test_a_reload_is_one_round_trip_that_waits_and_names_what_needs_a_restart(params):
    cmd = migration.render_reload_and_wait(params)
    assert cmd.index("pg_conf_load_time") < cmd.index("pg_ctlcluster 15 main reload") < cmd.index("sleep 0.1")
    assert "seq 300" in cmd and "pending_restart" in cmd and "exit 1" in cmd
    import subprocess
    assert subprocess.run(["bash", "-n", "-c", cmd]).returncode == 0


def test_statements_run_in_one_psql_call_and_stop_at_the_first_error(params):
    host = FakeHost()
    migration.run_statements(host, params, ["DROP DATABASE x", "CREATE DATABASE x;"], dbname="postgres")
    assert len(host.runs) == 1
    assert "ON_ERROR_STOP=1" in host.runs[0]["cmd"] and host.runs[0]["cmd"].endswith("-f -")
    assert host.runs[0]["stdin"] == "DROP DATABASE x;\nCREATE DATABASE x;\n"


def test_the_fresh_database_and_settings_are_made_while_the_schema_is_dumped_and_go_right_after_the_load(params):
    prepare = migration.render_prepare_sql(params, ['DROP DATABASE "hcb_production"',
                                                    'CREATE DATABASE "hcb_production" WITH OWNER "rails"'],
                                           ['CREATE EXTENSION IF NOT EXISTS "citext" WITH SCHEMA "heroku_ext"'])
    assert prepare.splitlines() == ["\\set ON_ERROR_STOP 1", 'DROP DATABASE "hcb_production";',
                                    'CREATE DATABASE "hcb_production" WITH OWNER "rails";',
                                    "\\connect 'hcb_production'",
                                    'CREATE EXTENSION IF NOT EXISTS "citext" WITH SCHEMA "heroku_ext";']
    part = "/etc/postgresql/15/main/conf.d/90-hcbpg-restore.conf"
    main, _ = stream_scripts(params, "/w", ["heroku_ext"], prepare=prepare, reload_settings=True, remove_part=part)
    assert "<<'HCBPG_PREPARE_SQL'\n" + prepare + "HCBPG_PREPARE_SQL\n" in main
    assert main.index("-d postgres -f /w/prepare.sql & preppid=$!") < main.index("pg_dump -d service=") \
        < main.index('wait "$preppid"') < main.index("--section=pre-data")
    assert main.index("reload") < main.index("& reloadpid=$!") < main.index('wait "$reloadpid"') \
        < main.index("--section=pre-data")
    assert main.index("stamp end") < main.index(f"rm -f {part}") < main.rindex("pg_ctlcluster 15 main reload") \
        < main.index('wait "$countspid"')
    import subprocess
    assert subprocess.run(["bash", "-n"], input=main, text=True).returncode == 0


def test_one_upload_carries_every_script(tmp_path):
    import subprocess
    files = {str(tmp_path / "a.sh"): ("0700", "echo 'it''s'\nEOF\n"), str(tmp_path / "s.awk"): ("0600", migration.SPLIT_AWK)}
    subprocess.run(["bash", "-c", migration.render_bundle(files)], check=True)
    assert (tmp_path / "a.sh").read_text() == "echo 'it''s'\nEOF\n"
    assert (tmp_path / "s.awk").read_text() == migration.SPLIT_AWK
    assert oct((tmp_path / "s.awk").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ValueError):
        migration.render_bundle({"/x": ("0600", "HCBPG_FILE_0\n")})
    session = migration.render_stream_session(migration_params(), "/w")
    assert ("\\! bash /w/files.sh > /w/stream.log 2>&1 && bash /w/stream.sh >> /w/stream.log 2>&1; "
            "echo $? > /w/stream.exit") in session


def migration_params():
    return parse_params(manual_lab())
