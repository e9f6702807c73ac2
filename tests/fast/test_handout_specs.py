"""Specs of the handed-out URL files (hcbpg.ops.handout): one 0600 file per target, its whole current set;
the operator's machine is the state (a temporary directory), no server is involved."""

from __future__ import annotations

import stat

import pytest

from hcbpg.adapters.secretstore import SecretStore, secret_store
from hcbpg.desired.migration import AppUrls
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import handout
from tests.fast.specs import covers

URL = "postgres://rails:pw-of-the-spec@10.0.1.5:5432/hcb_production?sslmode=verify-full"
BLAZER = "postgres://blazer:ro-pw-of-the-spec@10.0.1.5:5432/hcb_production?sslmode=verify-full"


def urls(tmp_path, **values: str) -> AppUrls:
    return AppUrls(tmp_path / "hand" / "app-database-urls.env",
                   values or {"DATABASE_URL": URL, "BLAZER_DATABASE_URL": BLAZER}, target="the app")


@covers("hcbpg.ops.handout.ensure_urls_file", "fresh", "second run")
def test_a_fresh_file_holds_the_whole_set_0600_and_a_second_hand_out_changes_nothing(tmp_path):
    u = urls(tmp_path)
    first = handout.ensure_urls_file(SecretStore(), u)
    assert first.changed and not first.dry_run
    assert stat.S_IMODE(u.path.stat().st_mode) == 0o600 and stat.S_IMODE(u.path.parent.stat().st_mode) == 0o700
    assert u.path.read_text() == u.text and "BLAZER_DATABASE_URL='postgres://blazer:" in u.text
    assert all("pw-of-the-spec" not in a for a in first.actions), "a password in the outcome"
    again = handout.ensure_urls_file(SecretStore(), u)
    assert not again.changed and again.actions == []
    # a login changed (a rotation): the file is rewritten whole, never appended to
    moved = urls(tmp_path, DATABASE_URL=URL.replace("rails:", "rails_alt:"), BLAZER_DATABASE_URL=BLAZER)
    assert handout.ensure_urls_file(SecretStore(), moved).changed
    assert u.path.read_text() == moved.text and "rails:pw" not in u.path.read_text()


@covers("hcbpg.ops.handout.ensure_urls_file", "dry run")
def test_a_dry_run_says_the_file_would_change_and_writes_nothing(tmp_path):
    o = handout.ensure_urls_file(secret_store(True), urls(tmp_path))
    assert o.changed and o.dry_run and not (tmp_path / "hand").exists()


@covers("hcbpg.ops.handout.ensure_urls_file", "refusal")
def test_a_symlink_at_the_path_is_refused_and_nothing_is_written_through_it(tmp_path):
    u = urls(tmp_path)
    u.path.parent.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text("someone else's\n")
    u.path.symlink_to(target)
    with pytest.raises(SafetyCheckFailed, match="not a regular file"):
        handout.ensure_urls_file(SecretStore(), u)
    assert target.read_text() == "someone else's\n" and u.path.is_symlink()
