"""hcbpg.desired.recover (pure): targets, the repository's reach, the backup a recovery starts from, its refusals,
pgBackRest's options, the history file's reason and the checks of the recovered server; and the restore point
helper on a stand-in run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from hcbpg.desired import recover as dr
from hcbpg.errors import UsageError


def _info(backups, archive_max="000000010000000000000009") -> str:
    return json.dumps([{"name": "hcb_production", "archive": [{"id": "15-1", "min": "000000010000000000000001",
                                                                "max": archive_max}],
                        "backup": [{"label": lb, "type": "full", "error": err,
                                    "timestamp": {"start": stop - 5, "stop": stop},
                                    "lsn": {"start": "0/1000028", "stop": lsn}} for lb, stop, lsn, err in backups]}])


T1 = int(datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp())
T2 = int(datetime(2027, 1, 16, 8, 0, tzinfo=UTC).timestamp())
REACH = dr.parse_repo_reach(_info([("20270115-080000F", T1, "0/2000100", False),
                                   ("20270116-080000F", T2, "0/6000100", False),
                                   ("20270116-090000F", T2 + 3600, "0/7000100", True)]), "hcb_production")


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("2027-01-15T09:00:00Z", "time", "2027-01-15T09:00:00+00:00"),
    ("2027-01-15 10:00:00+01", "time", "2027-01-15T09:00:00+00:00"),
    ("2027-01-15T09:00:00", "time", "2027-01-15T09:00:00+00:00"),
    ("time:2027-01-15T09:00:00.123456Z", "time", "2027-01-15T09:00:00.123456+00:00"),
    ("0/3000148", "lsn", "0/3000148"), ("lsn:0/03000148", "lsn", "0/3000148"),
    ("1234", "xid", "1234"), ("xid:1234", "xid", "1234"),
    ("hcbpg-before-13_roles-abc", "name", "hcbpg-before-13_roles-abc"), ("name:my point", None, None),
    ("", None, None), ("xid:2", None, None), ("yesterday", None, None),
])
def test_targets_as_the_operator_writes_them(text, kind, value):
    if kind is None:
        with pytest.raises(UsageError):
            dr.parse_target(text)
        return
    t = dr.parse_target(text)
    assert (t.kind, t.value) == (kind, value)


def test_a_time_goes_to_pgbackrest_with_an_explicit_utc_offset():
    t = dr.parse_target("2027-01-15T10:00:00+01:00")
    assert dr.render_restore_options(t, "L") == ["--delta", "--type=time", "--target=2027-01-15 09:00:00.000000+00",
                                                 "--target-action=promote", "--log-level-console=info", "--set=L"]


def test_the_repositorys_reach_leaves_failed_backups_out_and_ends_past_the_newest_segment():
    assert [b.label for b in REACH.backups] == ["20270115-080000F", "20270116-080000F"]
    assert REACH.archive_end_lsn == dr.parse_lsn("0/A000000")


def test_a_time_starts_from_the_newest_backup_finished_before_it():
    t = dr.parse_target("2027-01-16T09:00:00Z")
    plan = dr.plan_restore(t, REACH, server="s2", old_leader="s1",
                           archived_through=datetime(2027, 1, 16, 10, tzinfo=UTC), current_xid=900)
    assert plan.ok and plan.backup == "20270116-080000F", plan
    plan = dr.plan_restore(dr.parse_target("2027-01-15T12:00:00Z"), REACH, server="s2", old_leader="s1",
                           archived_through=datetime(2027, 1, 16, 10, tzinfo=UTC), current_xid=900)
    assert plan.ok and plan.backup == "20270115-080000F"


def test_refusals_before_the_oldest_backup_and_after_the_newest_archived_wal():
    through = datetime(2027, 1, 16, 10, tzinfo=UTC)
    early = dr.plan_restore(dr.parse_target("2027-01-14T00:00:00Z"), REACH, server="s2", old_leader="s1",
                            archived_through=through, current_xid=900)
    assert not early.ok and "before the oldest backup" in early.refusals[0]
    late = dr.plan_restore(dr.parse_target("2027-01-16T11:00:00Z"), REACH, server="s2", old_leader="s1",
                           archived_through=through, current_xid=900)
    assert not late.ok and "after the newest archived WAL" in late.refusals[0]
    lsn = dr.plan_restore(dr.parse_target("0/A000000"), REACH, server="s2", old_leader="s1", archived_through=through,
                          current_xid=900)
    assert not lsn.ok and "after the newest archived WAL" in lsn.refusals[0]
    ok = dr.plan_restore(dr.parse_target("0/9FFFFFF"), REACH, server="s2", old_leader="s1", archived_through=through,
                         current_xid=900)
    assert ok.ok and ok.backup == "20270116-080000F"
    xid = dr.plan_restore(dr.parse_target("xid:900"), REACH, server="s2", old_leader="s1", archived_through=through,
                          current_xid=900)
    assert not xid.ok and "not been assigned" in xid.refusals[0]
    none = dr.plan_restore(dr.parse_target("0/3000000"), dr.RepoReach((), None), server="s2", old_leader="s1",
                           archived_through=through, current_xid=None)
    assert not none.ok and "no backup" in none.refusals[0]


def test_a_restore_point_is_refused_unless_the_verified_record_knows_it():
    through = datetime(2027, 1, 16, 10, tzinfo=UTC)
    t = dr.parse_target("name:hcbpg-before-14_password_rotation-r1")
    unknown = dr.plan_restore(t, REACH, server="s2", old_leader="s1", archived_through=through, current_xid=9)
    assert not unknown.ok and "not in the verified record" in unknown.refusals[0]
    points = dr.restore_points_listed([{"name": t.value, "lsn": "0/6800000", "at": "2027-01-16 08:30:00+00",
                                        "step": "14_password_rotation"}, {"name": "x"}])
    known = dr.plan_restore(t, REACH, server="s2", old_leader="s1", archived_through=through, current_xid=9,
                            points=points)
    assert known.ok and known.backup == "20270116-080000F" and known.point is not None
    assert "--type=name" in known.options and f"--target={t.value}" in known.options


def test_restore_point_names_fit_postgresql():
    assert dr.restore_point_name("13_roles", "r" * 80).startswith("hcbpg-before-13_roles-")
    assert len(dr.restore_point_name("13_roles", "r" * 80)) == 63
    assert dr.restore_point_name("16_online_cleanup", None) == "hcbpg-before-16_online_cleanup-adhoc"


def _recovered(reason: str, last: str | None = "2027-01-16 08:59:59.5+00") -> dict:
    return {"in_recovery": False, "timeline": 2, "last_commit": last, "tables": {"public.events": 3},
            "history": dr.parse_history_file(f"1\t0/6800100\t{reason}\n")}


def test_the_recovered_servers_checks_read_postgresqls_reason():
    plan = dr.plan_restore(dr.parse_target("2027-01-16T09:00:00Z"), REACH, server="s2", old_leader="s1",
                           archived_through=datetime(2027, 1, 16, 10, tzinfo=UTC), current_xid=9)
    good = dr.check_recovered(plan, _recovered("before 2027-01-16 09:00:00.000123+00"))
    assert all(c.ok for c in good), good
    late = dr.check_recovered(plan, _recovered("before 2027-01-16 09:00:00+00", last="2027-01-16 09:00:01+00"))
    assert [c.name for c in late if not c.ok] == ["newest commit not after the target"]
    end = dr.check_recovered(plan, _recovered("no recovery target specified"))
    assert [c.name for c in end if not c.ok] == ["recovery stopped at the target"]
    named = dr.RestorePlan(dr.parse_target("name:hcbpg-before-x-1"), "s2", "s1", "L", [])
    assert all(c.ok for c in dr.check_recovered(named, _recovered('at restore point "hcbpg-before-x-1"')))
    assert not all(c.ok for c in dr.check_recovered(named, _recovered('at restore point "hcbpg-before-y-1"')))
    promoted_not = dr.check_recovered(named, {**_recovered('at restore point "hcbpg-before-x-1"'), "in_recovery": True})
    assert not promoted_not[0].ok


class _Run:
    """The parts of a step's run the restore point helper uses."""

    def __init__(self, params, *, dry_run: bool = False, recorded=None) -> None:
        self.params = params
        self.dry_run = dry_run
        self.step = "13_roles"
        self.run_id = "r42"
        self.values = dict(recorded or {})

    def recall(self, name, default=None, *, own=False):
        assert own  # a step rerun in a later run must see its own earlier points too
        return self.values.get(name, default)

    def record(self, name, value):
        json.dumps(value)
        self.values[name] = value


def _host(archive_mode: str, in_recovery: bool = False):
    from hcbpg.adapters.recording import RecordingHost

    def reply(call):
        sql = call.stdin or ""
        if "current_setting('archive_mode')" in sql:
            return json.dumps([{"mode": archive_mode, "r": in_recovery}])
        if "pg_create_restore_point('hcbpg-before-13_roles-r42')" in sql:
            return json.dumps([{"lsn": "0/5000090", "at": "2027-01-16 08:30:00.1+00"}])
        return None

    return RecordingHost("server-postgres-1", handler=reply)


def _params():
    from hcbpg.params import load_params

    return load_params("production")


def test_a_restore_point_is_created_on_the_primary_and_recorded_with_its_lsn_and_time():
    from hcbpg.steps.recover import mark_restore_point

    host = _host("on")
    earlier = {"name": "hcbpg-before-07_cutover-r1", "lsn": "0/3000000", "at": "t", "step": "07_cutover"}
    rb = _Run(_params(), recorded={"restore_points": [earlier]})
    point = mark_restore_point(rb, host)
    assert point is not None and point["lsn"] == "0/5000090" and point["name"] == "hcbpg-before-13_roles-r42"
    assert [p["name"] for p in rb.values["restore_points"]] == [earlier["name"], point["name"]]
    assert any("pg_create_restore_point" in (c.stdin or "") for c in host.calls)


def test_no_restore_point_on_a_dry_run_or_before_archiving():
    from hcbpg.steps.recover import mark_restore_point

    host = _host("on")
    rb = _Run(_params(), dry_run=True)
    assert mark_restore_point(rb, host) is None and host.calls == [] and rb.values == {}
    host = _host("off")
    rb = _Run(_params())
    assert mark_restore_point(rb, host) is None and "restore_points" not in rb.values
    assert not any("pg_create_restore_point" in (c.stdin or "") for c in host.calls)


def test_patroni_stopped_under_systemd_is_disabled_too_so_a_reboot_leaves_the_old_data_alone():
    from hcbpg.adapters.base import Result
    from hcbpg.adapters.recording import RecordingHost
    from hcbpg.ops.recover import run_stop_patroni

    state = {"patroni": True}

    def reply(call):
        cmd = call.command
        if cmd == "test -d /run/systemd/system":
            return ""
        if cmd.startswith("systemctl is-active patroni@"):
            return "active\n" if state["patroni"] else Result(3, "inactive\n", "")
        if cmd.startswith("systemctl show --property=MainPID"):
            return "4242\n" if state["patroni"] else "0\n"
        if cmd.startswith("systemctl stop patroni@"):
            state["patroni"] = False
            return ""
        if cmd.startswith("systemctl disable patroni@"):
            return ""
        if cmd.startswith("pg_lsclusters"):
            return json.dumps([{"version": 15, "cluster": "main", "running": 0}])
        return None

    host = RecordingHost("server-postgres-1", handler=reply)
    out = run_stop_patroni(host, _params())
    assert out.changed
    ran = [c for c in host.ran if c.startswith("systemctl")]
    assert ran == ["systemctl stop patroni@15-main", "systemctl disable patroni@15-main"], host.ran


def test_a_backup_off_the_current_timelines_history_is_never_the_start():
    """TL2 branched from TL1 at 0/7000100 (an earlier recovery); the old leader went on writing TL1 and a backup
    was taken there after the branch: no ancestor of TL2 (PostgreSQL: 'not a child of this server's history')."""
    def backup(label, stop, start_seg, lsn_start, lsn_stop):
        return {"label": label, "type": "full", "error": False, "timestamp": {"start": stop - 5, "stop": stop},
                "archive": {"start": start_seg, "stop": start_seg}, "lsn": {"start": lsn_start, "stop": lsn_stop}}
    info = json.dumps([{"name": "hcb_production", "archive": [{"max": "00000002000000000000000C"}], "backup": [
        backup("A", T1, "000000010000000000000002", "0/2000028", "0/2000100"),
        backup("B", T1 + 600, "000000010000000000000009", "0/9000028", "0/9000100"),   # TL1 after the branch
        backup("C", T1 + 1200, "00000002000000000000000A", "0/A000028", "0/A000100")]}])
    reach = dr.parse_repo_reach(info, "hcb_production")
    assert [(b.label, b.timeline) for b in reach.backups] == [("A", 1), ("B", 1), ("C", 2)]
    ancestry = dr.parse_ancestry(2, '1\t0/7000100\tbefore 2027-01-15 08:05:00+00\n')
    assert ancestry == {1: dr.parse_lsn("0/7000100"), 2: None}
    t = dr.parse_target("0/9800000")
    plan = dr.plan_restore(t, reach, server="s2", old_leader="s1", archived_through=None, current_xid=None,
                           ancestry=ancestry)
    assert plan.ok and plan.backup == "A" and any("left out" in n and "B" in n for n in plan.notes), plan
    later = dr.plan_restore(dr.parse_target("0/B000000"), reach, server="s2", old_leader="s1", archived_through=None,
                            current_xid=None, ancestry=ancestry)
    assert later.ok and later.backup == "C"
    blind = dr.plan_restore(t, reach, server="s2", old_leader="s1", archived_through=None, current_xid=None)
    assert blind.backup == "B"  # without the history nothing is left out (a resume keeps the backup chosen before)
