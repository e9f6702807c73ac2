"""The migration's pure parts and small decisions (desired/migration, the steps' reading of params), fast."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from hcbpg.adapters.dryrun import AbsentHost
from hcbpg.desired import migration as dm
from hcbpg.errors import SafetyCheckFailed, VerificationFailed
from hcbpg.ops.migration import database
from hcbpg.outcome import Check
from hcbpg.params import parse_params
from hcbpg.steps import cutover as cutover_step
from tests.fast.test_migration_specs import BASE, URL


def params_with(monkeypatch, **changes):
    monkeypatch.setenv("HCBPG_TEST_SOURCE_URL", URL)
    monkeypatch.setenv("HCBPG_TEST_APP_PW", "app-pw-of-the-specs")
    data = json.loads(json.dumps(BASE))
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return parse_params(data)


def test_the_handoff_file_is_postgres_app_url_file_when_params_name_it(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = params_with(monkeypatch, postgres={"app_url_file": "~/hand/app.env"})
    assert dm.handoff_path(p) == tmp_path / "hand" / "app.env"
    assert dm.release_urls_path(p) == tmp_path / "hand" / "release-database-urls.env"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert dm.handoff_path(params_with(monkeypatch)) == tmp_path / "state" / "hcbpg" / "lab" / "app-database-urls.env"


def test_role_urls_show_only_redacted_urls_and_write_them_quoted(monkeypatch):
    p = params_with(monkeypatch)
    urls = dm.render_role_urls(p, {"DATABASE_URL": ("rails", "pw'with&odd"), "BLAZER_DATABASE_URL": ("blazer", "b&pw'")},
                               path=dm.handoff_path(p), target="the app")
    assert set(urls.values) == {"DATABASE_URL", "BLAZER_DATABASE_URL"}
    assert all("pw'with" not in v and "b&pw" not in v and "[secret]" in v for v in urls.shown.values())
    assert "pw'with" not in repr(urls) and urls.text.count("DATABASE_URL='postgres://") == 2
    assert "the database URLs of the app" in urls.text and "rewrites this file whole" in urls.text


def test_the_cutover_waits_as_long_as_source_quiet_timeout_s(monkeypatch):
    p = params_with(monkeypatch, source={"quiet_timeout_s": 7.5})
    seen: list[float] = []
    monkeypatch.setattr(cutover_step.migration, "wait_for_source_quiet",
                        lambda source, *, timeout: seen.append(timeout) or Check("quiet", "pass"))
    cutover_step.check_source_quiet_step(SimpleNamespace(params=p, dry_run=False), object())  # type: ignore[arg-type]
    assert seen == [7.5]


def test_a_server_not_there_yet_has_no_live_database(monkeypatch):
    assert database.get_live_marker(AbsentHost("server-postgres-1"), params_with(monkeypatch)) is None


@pytest.mark.parametrize(("names", "refused"), [([], False), (['public."a\nb"'], True)])
def test_names_with_control_characters_refuse_the_source(names, refused):
    if refused:
        with pytest.raises(SafetyCheckFailed) as exc:
            dm.check_source_names({"control_char_names": names})
        assert "1 name(s) with control characters: 'public.\"a\\nb\"'" in exc.value.message
    else:
        dm.check_source_names({"control_char_names": names})


def test_the_drift_guard_names_what_differs_and_carries_the_rollback():
    dm.raise_on_drift([Check("schema unchanged: tables", "pass")])
    with pytest.raises(VerificationFailed) as exc:
        dm.raise_on_drift([Check("schema unchanged: columns", "fail", "public.users.nick only on the source")])
    assert "public.users.nick only on the source" in exc.value.message
    assert exc.value.failures == ["schema unchanged: columns"] and "Do NOT change DATABASE_URL" in exc.value.hint


def test_the_restore_settings_file_is_whole_sorted_and_says_how_to_remove_it(monkeypatch):
    text = dm.render_restore_settings({"wal_level": "minimal", "fsync": False, "maintenance_work_mem": "2GB"},
                                      server="server-postgres-1")
    lines = text.splitlines()
    assert lines[-3:] == ["fsync = off", "maintenance_work_mem = '2GB'", "wal_level = 'minimal'"]
    assert "delete it and reload PostgreSQL" in text
    assert dm.restore_part_path(params_with(monkeypatch)) == "/etc/postgresql/15/main/conf.d/90-hcbpg-restore.conf"
    assert Path(dm.restore_part_path(params_with(monkeypatch))).name == dm.RESTORE_PART
