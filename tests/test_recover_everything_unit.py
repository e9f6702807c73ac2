"""Notebook 22_recover_everything's pure decisions (hcbpg.desired.recover_everything): the refusal before anything
is created (never two primaries), the repository whose archive reaches furthest (the nearer among equals), the
restore's options, the phases' table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hcbpg.desired import recover as dr
from hcbpg.desired import recover_everything as dre

T0 = datetime(2026, 12, 7, 7, 0, tzinfo=UTC)


def reach(label: str | None, seg: str | None) -> dr.RepoReach:
    backups = (dr.Backup(label, "full", T0, 0x3000000),) if label else ()
    return dr.RepoReach(backups, seg)


def test_a_server_answering_as_a_primary_is_refused_never_two_primaries():
    seen = [dre.ServerSeen("s1", True, True, "primary"), dre.ServerSeen("s2", False, False)]
    refusals = dre.plan_decision(seen)
    assert len(refusals) == 1 and "s1 answers as a running primary" in refusals[0]


def test_a_server_that_answers_or_still_exists_is_refused_and_both_gone_is_not():
    assert "answers over SSH" in dre.plan_decision([dre.ServerSeen("s1", True, True, "down")])[0]
    assert "still exists in the cloud" in dre.plan_decision([dre.ServerSeen("s1", True, False)])[0]
    assert dre.plan_decision([dre.ServerSeen("s1", False, False), dre.ServerSeen("s2", False, False)]) == []


def test_the_repository_whose_archive_reaches_furthest_wins():
    c = dre.choose_repo({1: reach("F1", "000000010000000000000009"), 2: reach("F2", "00000001000000000000000B")},
                        nearer=1)
    assert (c.repo, c.backup, c.archive_max) == (2, "F2", "00000001000000000000000B")
    assert "repo1 is nearer but its archive ends earlier" in c.notes[0] and not c.refusals


def test_a_newer_timeline_reaches_further_than_a_higher_segment_of_an_older_one():
    c = dre.choose_repo({1: reach("F1", "0000000100000000000000FF"), 2: reach("F2", "000000020000000000000009")})
    assert c.repo == 2


def test_among_equals_the_nearer_one_and_an_unreachable_store_is_listed_not_chosen():
    seg = "00000001000000000000000B"
    c = dre.choose_repo({1: reach("F1", seg), 2: reach("F2", seg), 3: "repo3: could not connect"}, nearer=2)
    assert c.repo == 2 and "the nearer" in c.notes[0]
    assert [r["status"] for r in c.rows] == ["ok", "ok", "error: repo3: could not connect"]
    assert dre.choose_repo({1: reach("F1", seg), 2: reach("F2", seg)}).repo == 1


def test_no_backup_anywhere_or_no_wal_is_refused():
    c = dre.choose_repo({1: reach(None, None), 2: "timeout"})
    assert c.repo is None and c.refusals == ["no repository answered with a backup to restore"]
    c = dre.choose_repo({1: reach("F1", None)})
    assert c.repo == 1 and c.refusals == ["repo1 holds no archived WAL"]


def test_the_restore_replays_to_the_archives_end_from_the_chosen_repository_and_backup():
    assert dre.render_latest_options(2, "F2") == ["--delta", "--type=default", "--repo=2", "--log-level-console=info",
                                                  "--set=F2"]
    plan = dre.restore_plan(dre.choose_repo({2: reach("F2", "00000001000000000000000B")}), "s1")
    assert plan.ok and plan.server == "s1" and plan.backup == "F2" and str(plan.target) == str(dre.LATEST)
    assert not any(o.startswith(("--target", "--type=time")) for o in plan.options)


def test_phases_are_timed_from_the_decision_with_provisioning_shown_apart_and_the_clock_ending_at_the_commit():
    marks = {"decision": T0, "provisioned": T0 + timedelta(seconds=60), "installed": T0 + timedelta(seconds=90),
             "ha prepared": T0 + timedelta(seconds=95), "restored": T0 + timedelta(seconds=105),
             "patroni leads": T0 + timedelta(seconds=107), "handed out": T0 + timedelta(seconds=108),
             "first write": T0 + timedelta(seconds=108.5), "replica streaming": T0 + timedelta(seconds=130),
             "ha checked": T0 + timedelta(seconds=131), "timeline backup": T0 + timedelta(seconds=150)}
    rows = {r["phase"]: r for r in dre.phase_rows(marks)}
    assert [r["phase"] for r in dre.phase_rows(marks)][:10] == list(dre.PHASES[1:])
    assert rows["provisioned"]["seconds"] == "60.0" and rows["restored"]["seconds"] == "10.0"
    assert {rows[p]["counts"] for p in ("provisioned", "installed", "ha prepared")} == {"provisioning"}
    assert {rows[p]["counts"] for p in dre.RECOVERY} == {"recovery"}
    assert {rows[p]["counts"] for p in dre.AFTER_CLOCK} == {"after the clock"}
    assert rows["first write"]["since decision"] == "108.5"
    # the recovery time ends at the app's first commit: the replica and the backup are after the clock
    assert rows["total"]["seconds"] == "108.5" and rows["total without provisioning"]["seconds"] == "13.5"
    assert rows["after the clock"]["seconds"] == "41.5" and rows["after the clock"]["since decision"] == "150.0"
    assert dre.phase_rows({}) == []


def test_a_recovery_not_done_yet_has_its_phases_but_no_total():
    rows = dre.phase_rows({"decision": T0, "provisioned": T0 + timedelta(seconds=6),
                           "installed": T0 + timedelta(seconds=20), "restored": T0 + timedelta(seconds=27)})
    assert [r["phase"] for r in rows] == ["provisioned", "installed", "restored"]
    assert rows[2]["seconds"] == "7.0" and rows[2]["counts"] == "recovery"


def test_without_the_ha_prepared_mark_provisioning_ends_at_installed():
    rows = {r["phase"]: r for r in dre.phase_rows({
        "decision": T0, "provisioned": T0 + timedelta(seconds=6), "installed": T0 + timedelta(seconds=20),
        "restored": T0 + timedelta(seconds=27), "first write": T0 + timedelta(seconds=30)})}
    assert rows["total"]["seconds"] == "30.0" and rows["total without provisioning"]["seconds"] == "10.0"
    assert "after the clock" not in rows


def test_the_newest_commit_recovered_is_said():
    assert dre.newest_recovered_note({"last_commit": "2026-12-07 07:00:01+00"}).endswith("2026-12-07 07:00:01+00")
    assert "none replayed" in dre.newest_recovered_note({})
