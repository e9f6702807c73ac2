"""Continuity without a lab: the faults of issue 15 on a recording host, the health job's judgement,
the backup job's standby guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.host import TIMEOUT_EXIT
from hcbpg.adapters.recording import RecordingHost
from hcbpg.adapters.site import site_for
from hcbpg.desired import health_report as health
from hcbpg.desired import replica as desired_replica
from hcbpg.desired import schedule
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import replica, topology
from hcbpg.ops.jobs import health_job
from hcbpg.outcome import Check
from hcbpg.params import parse_params

from nbutil import manual_lab

REPO = Path(__file__).resolve().parent.parent
P = parse_params(manual_lab())
PGDATA = "/var/lib/postgresql/15/main"
RUNNING = json.dumps([{"version": 15, "cluster": "main", "running": 1, "pgdata": PGDATA}])


def test_run_stop_falls_back_to_an_immediate_stop_when_the_fast_stop_times_out():
    host = RecordingHost("s", [(r"pg_lsclusters", RUNNING),
                               (r"stop -m fast", Result("s", "stop", TIMEOUT_EXIT, "", "timed out after 180s", 180.0)),
                               (r"stop -m immediate", "")])
    replica.run_stop(host, P)
    assert [c for c in host.ran if "pg_ctlcluster" in c] == ["pg_ctlcluster 15 main stop -m fast",
                                                             "pg_ctlcluster 15 main stop -m immediate"]


def test_a_rewind_sets_start_conf_manual_before_standby_signal_goes():
    conf = desired_replica.start_conf_path(P)
    host = RecordingHost("s", [(r"^rm -f .*standby.signal$", "")], files={conf: "auto\n"})
    replica.run_fence_for_rewind(host, P, PGDATA)
    assert host.ran == [f"write {conf}", f"rm -f {PGDATA}/standby.signal"]
    assert host.files[conf] == "manual\n"


def test_a_wipe_is_refused_while_a_detached_base_backup_still_writes():
    host = RecordingHost("s", [(r"^pgrep -u postgres -f", "4242\n")])
    state = topology.ServerState(name="s", private_ip="10.0.1.6", cluster_exists=True, pgdata=PGDATA)
    plan = topology.Plan("s", "p", "rebuild", "base_backup", ["test"], allowed_by="test")
    with pytest.raises(SafetyCheckFailed, match=r"pg_basebackup \(pid 4242\)"):
        replica.run_wipe(host, P, state, plan)
    assert host.ran == [], "nothing stopped, nothing deleted"


def test_no_running_base_backup_is_none():
    host = RecordingHost("s", [(r"^pgrep", Result("s", "pgrep", 1, "", "", 0.0))])
    assert replica.get_running_basebackup(host, PGDATA) is None


CFG = json.loads(schedule.render_health_config(P, P.primary, schedule.plan_health_url(P, site_for(P).health_deadman_url(P))))
NOW = 1_800_000_000.0


def facts(**kw):
    base = {"in_recovery": False, "now": NOW, "data_directory": PGDATA, "archive_mode": "on",
            "archiver": {"ok": NOW - 10, "failed": None, "last_failed_wal": None}, "ready": 0, "wal_bytes": 2 ** 26,
            "slots": [{"slot_name": "s2", "wal_status": "reserved", "retained": 1024}],
            "replication": [{"application_name": "s2", "state": "streaming", "lag": 0.1}],
            "receiver": None, "replay_lag": None}
    return {**base, **kw}


BACKUPS = [{"start": NOW - 3600, "stop": NOW - 3500, "error": False}]


def test_health_job_passes_every_check_on_a_healthy_primary():
    assert health_job.judge(CFG, facts(), "", 40.0, BACKUPS, None) == {c: None for c in health_job.CHECKS}


def test_health_job_fails_each_concern_on_its_own():
    failing = facts(archiver={"ok": NOW - 100, "failed": NOW - 5, "last_failed_wal": "000000010000000000000009"})
    r = health_job.judge(CFG, failing, "", 40.0, BACKUPS, None)
    assert [c for c, why in r.items() if why] == ["archiving"] and "FAILING" in r["archiving"]
    lost = facts(slots=[{"slot_name": "s2", "wal_status": "lost", "retained": 0}])
    assert [c for c, why in health_job.judge(CFG, lost, "", 40.0, BACKUPS, None).items() if why] == ["replication"]
    assert [c for c, why in health_job.judge(CFG, facts(), "", 95.0, BACKUPS, None).items() if why] == ["disk"]
    old = [{"start": NOW - 60 * 3600, "stop": NOW - 59 * 3600, "error": False}]
    assert [c for c, why in health_job.judge(CFG, facts(), "", 40.0, old, None).items() if why] == ["backup"]


def test_health_job_says_every_sql_concern_failed_when_postgres_is_down():
    r = health_job.judge(CFG, None, "connection refused", 40.0, None, None)
    assert r["disk"] is None and all(r[c] for c in ("postgres", "archiving", "replication", "backup"))


def test_dropped_wal_fails_archiving_until_a_backup_starts_after_it():
    log = ("2026-12-02 18:00:01.123 P00   WARN: dropped WAL file '000000010000000000000021' because archive queue "
           "exceeded 64MB\n")
    dropped = health_job.last_dropped(log)
    assert dropped is not None and dropped[1] == "000000010000000000000021"
    r = health_job.judge(CFG, facts(now=dropped[0] + 60), "", 40.0, [{"start": dropped[0] - 60, "stop": dropped[0] - 30,
                                                                      "error": False}], dropped)
    assert "DROPPED" in (r["archiving"] or "")
    closed = [{"start": dropped[0] + 10, "stop": dropped[0] + 20, "error": False}]
    assert health_job.judge(CFG, facts(now=dropped[0] + 60), "", 40.0, closed, dropped)["archiving"] is None


def test_status_says_wal_dropped_loudly_and_strict_fails_on_a_warning():
    m = health.Measurement("server-postgres-1", "10.0.1.5", "primary", reachable=True, running=True, now=NOW,
                           in_recovery=False, archive_mode="on", data_directory=PGDATA,
                           archiver={"last_archived_time": NOW - 5, "last_archived_wal": "x", "failed_count": 3},
                           backup={"label": "b", "type": "full", "stop": NOW - 7200, "start": NOW - 7300},
                           wal_dropped={"time": NOW - 600, "segment": "000000010000000000000021"},
                           disk={"used_pct": 10.0, "avail_bytes": 1}, wal_bytes=1, max_connections=100)
    c = {x.name: x for x in health.evaluate([m], health.Thresholds()) if x.target == m.server}
    assert c["archiving"].status == "fail" and "WAL DROPPED" in c["archiving"].detail
    m.backup, m.archiver = None, {**m.archiver, "last_failed_time": NOW - 100}  # the repository does not answer
    c = {x.name: x for x in health.evaluate([m], health.Thresholds()) if x.target == m.server}
    assert c["archiving"].status == "fail" and "WAL DROPPED" in c["archiving"].detail
    warn_only = [Check("role", "warn", "", "s")]
    assert health.exit_code(warn_only) == 0 and health.exit_code(warn_only, strict=True) == 1


def test_backup_job_backs_up_only_where_not_in_recovery_and_the_health_job_is_installed_whole():
    script = schedule.render_backup_job_script(P, schedule.plan_schedule(P, site_for(P).deadman_url(P)))
    guard = script.index("SELECT pg_is_in_recovery()")
    assert guard < script.index('pgbackrest --stanza="$STANZA"') and 'if [ "$in_recovery" = t ]' in script
    job = schedule.render_health_job()
    assert job.startswith("#!/usr/bin/python3\n") and "def judge(" in job
    assert "/ping/hcbpg-health-lab" in CFG["url"]
