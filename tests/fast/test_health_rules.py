"""The health rules (hcbpg.desired.health), one per item, and the two ways they are read: every item for
``hcbpg status`` and step 15, five concerns for the job on the servers.  One table of cases: each says
what the item's verdict is; the job's concern fails exactly when one of its items fails."""

from __future__ import annotations

import ast
import inspect
from dataclasses import replace
from typing import Any

import pytest

from hcbpg.desired import health
from hcbpg.desired import health_report as report
from hcbpg.desired.health import CONCERNS, Measurement, Thresholds, evaluate, judge_measurement
from hcbpg.ops.jobs import health_job

NOW = 1_800_000_000.0
T = Thresholds()


def primary(**kw: Any) -> Measurement:
    base = Measurement("p", "10.0.1.5", "primary", reachable=True, running=True, now=NOW, in_recovery=False,
                       data_directory="/var/lib/postgresql/15/main", max_connections=100, total_connections=5,
                       archive_mode="on", archiver={"last_archived_time": NOW - 30, "last_archived_wal": "A"},
                       backup={"label": "F1", "type": "full", "stop": NOW - 3600, "start": NOW - 3700},
                       slots=[{"slot_name": "r", "active": True, "retained_bytes": 1024, "wal_status": "reserved"}],
                       replication=[{"application_name": "r", "client_addr": "10.0.1.6", "state": "streaming",
                                     "sync_state": "async", "replay_lag_s": 0.2}],
                       disk={"used_pct": 40.0, "avail_bytes": 10 ** 9}, wal_bytes=2 ** 26)
    return replace(base, **kw)


def replica(**kw: Any) -> Measurement:
    base = Measurement("r", "10.0.1.6", "replica", reachable=True, running=True, now=NOW, in_recovery=True,
                       data_directory="/var/lib/postgresql/15/main", max_connections=100, total_connections=2,
                       archive_mode="on", receiver={"status": "streaming", "sender_host": "10.0.1.5", "slot_name": "r"},
                       replay_lag_s=0.0, disk={"used_pct": 40.0, "avail_bytes": 10 ** 9}, wal_bytes=2 ** 26)
    return replace(base, **kw)


MB = 1024 ** 2
#: (case, measurement, item, status): the rule of *item* on the measurement (with a healthy other server)
CASES = [
    ("healthy primary", primary(), "archiving", "pass"),
    ("archive_mode off", primary(archive_mode="off"), "archiving", "fail"),
    ("archiving failing", primary(archiver={"last_archived_time": NOW - 100, "last_failed_time": NOW - 5}),
     "archiving", "fail"),
    ("long .ready queue", primary(archive_ready=40), "archiving", "fail"),
    ("short .ready queue", primary(archive_ready=3), "archiving", "pass"),
    ("WAL dropped, no backup since", primary(wal_dropped={"time": NOW - 600, "segment": "S"}), "archiving", "fail"),
    ("WAL dropped, a backup since", primary(wal_dropped={"time": NOW - 600, "segment": "S"},
                                            backup={"label": "F2", "type": "full", "stop": NOW - 60,
                                                    "start": NOW - 300}), "archiving", "pass"),
    ("nothing archived yet", primary(archiver={}), "archiving", "warn"),
    ("replica: archiving n/a", replica(archive_mode="on"), "archiving", "pass"),
    ("young backup", primary(), "last backup", "pass"),
    ("backup 30 h old", primary(backup={"label": "F", "type": "full", "stop": NOW - 30 * 3600}), "last backup", "warn"),
    ("backup 60 h old", primary(backup={"label": "F", "type": "full", "stop": NOW - 60 * 3600}), "last backup", "fail"),
    ("no backup", primary(backup=None, backup_error="pgbackrest info failed"), "last backup", "fail"),
    ("backup with errors", primary(backup={"label": "F", "type": "full", "stop": NOW - 60, "error": True}),
     "last backup", "fail"),
    ("replica: backup n/a", replica(), "last backup", "pass"),
    ("slot small", primary(), "slot retained WAL", "pass"),
    ("slot 2 GiB", primary(slots=[{"slot_name": "r", "active": True, "retained_bytes": 2048 * MB}]),
     "slot retained WAL", "warn"),
    ("slot 5 GiB", primary(slots=[{"slot_name": "r", "active": True, "retained_bytes": 5000 * MB}]),
     "slot retained WAL", "fail"),
    ("slot lost", primary(slots=[{"slot_name": "r", "active": False, "wal_status": "lost"}]), "slot retained WAL", "fail"),
    ("slot inactive", primary(slots=[{"slot_name": "r", "active": False, "retained_bytes": 0}]),
     "slot retained WAL", "warn"),
    ("standby lag 60 s", primary(replication=[{"client_addr": "10.0.1.6", "state": "streaming", "replay_lag_s": 60}]),
     "replay lag", "warn"),
    ("standby lag 400 s", primary(replication=[{"client_addr": "10.0.1.6", "state": "streaming", "replay_lag_s": 400}]),
     "replay lag", "fail"),
    ("replica lag 400 s", replica(replay_lag_s=400.0), "replay lag", "fail"),
    ("replica lag unknown", replica(replay_lag_s=None), "replay lag", "fail"),
    ("disk 85%", primary(disk={"used_pct": 85.0}), "disk data directory", "warn"),
    ("disk 95%", primary(disk={"used_pct": 95.0}), "disk data directory", "fail"),
    ("df failed", primary(disk=None), "disk data directory", "fail"),
    ("pg_wal 9 GiB", primary(wal_bytes=9000 * MB), "disk WAL", "fail"),
    ("pg_wal 3 GiB", primary(wal_bytes=3000 * MB), "disk WAL", "warn"),
    ("connections 96%", primary(total_connections=96), "connections", "fail"),
    ("a role at its limit", primary(connections=[{"role": "rails", "limit": 10, "in_use": 10}]), "connections", "fail"),
    ("pending restart", primary(pending_restart=["shared_buffers"]), "pending restart", "warn"),
    ("PostgreSQL down", primary(running=False, error="PostgreSQL is not running"), "PostgreSQL running", "fail"),
    ("unreachable", primary(reachable=False, running=False), "archiving", "fail"),
]


def _other(m: Measurement) -> Measurement:
    return replica() if m.expected_role == "primary" else primary()


@pytest.mark.parametrize("case, m, item, status", CASES, ids=[c[0] for c in CASES])
def test_each_rule_judges_its_item(case, m, item, status):
    verdicts = {v.name: v for v in evaluate([m, _other(m)], T) if v.target == m.server}
    assert list(verdicts) == list(health.ITEMS)
    assert verdicts[item].status == status, (case, verdicts[item])


@pytest.mark.parametrize("case, m, item, status", CASES, ids=[c[0] for c in CASES])
def test_the_job_fails_a_concern_exactly_when_one_of_its_items_fails(case, m, item, status):
    verdicts = {v.name: v for v in evaluate([m], T)}
    job = judge_measurement(m, T)
    assert list(job) == list(health.CHECKS)
    for concern, items in CONCERNS.items():
        if not m.running and concern == "disk":
            # PostgreSQL down: the job still measures the disk (status has no SSH answer for it then)
            assert (job["disk"] is None) == (m.disk is not None and m.disk["used_pct"] < T.disk_fail_pct), case
            continue
        if concern == "replication" and m.in_recovery and m.replay_lag_s is None:
            # a replica that has replayed nothing yet: status says it; the job does not page for it
            assert job[concern] is None, case
            continue
        failed = [i for i in items if verdicts[i].status == "fail"]
        assert (job[concern] is not None) == bool(failed), (case, concern, job[concern], failed)
        if failed:
            assert job[concern] == verdicts[failed[0]].detail[:300] or not m.running


def test_status_and_the_job_read_the_same_rules():
    """evaluate (status) and judge (the job) call the rule functions: no second copy of a threshold."""
    src = inspect.getsource(health_job)
    tree = ast.parse(src)
    compared = [n for n in ast.walk(tree) if isinstance(n, ast.Compare)
                and any(isinstance(x, ast.Subscript) and "thresholds" in ast.unparse(x) for x in [n.left, *n.comparators])]
    assert compared == [], "the job compares with a threshold itself"
    assert "judge_measurement(" in src and "rules.evaluate(" in inspect.getsource(report.evaluate)


def test_the_jobs_measurement_is_read_as_status_reads_its_own():
    cfg = {"server": "p", "thresholds": {"replay_lag_fail_s": 300.0, "slot_retained_fail_mb": 4096.0,
                                         "backup_age_fail_h": 50.0, "disk_fail_pct": 90.0, "wal_fail_mb": 8192.0,
                                         "archive_ready_max": 16}}
    facts = {"in_recovery": False, "now": NOW, "data_directory": "/d", "archive_mode": "on",
             "archiver": {"ok": NOW - 10, "failed": NOW - 5, "last_failed_wal": "W"}, "ready": 2, "wal_bytes": 1024,
             "slots": [{"slot_name": "r", "wal_status": "reserved", "retained": 5000 * MB}],
             "replication": [{"application_name": "r", "state": "streaming", "lag": 0.5}], "receiver": None,
             "replay_lag": None}
    backups = [{"start": NOW - 7200, "stop": NOW - 7000, "error": False}, {"start": NOW - 100, "stop": NOW - 50,
                                                                          "error": True}]
    m = health_job.to_measurement(cfg, facts, "", 40.0, backups, None)
    assert m.archiver == {"last_archived_time": NOW - 10, "last_failed_time": NOW - 5, "last_failed_wal": "W"}
    assert m.slots[0]["retained_bytes"] == 5000 * MB and m.replication[0]["replay_lag_s"] == 0.5
    assert m.backup == {"label": "", "type": "", "stop": NOW - 7000, "error": False, "start": NOW - 7200}
    r = health_job.judge(cfg, facts, "", 40.0, backups, None)
    assert [c for c, why in r.items() if why] == ["archiving", "replication"]
    assert r["archiving"].startswith("FAILING: ") and "r active 4.9 GiB" in (r["replication"] or "")


def test_report_checks_are_the_rules_verdicts():
    ms = [primary(archive_ready=40), replica()]
    checks = report.evaluate(ms, report.Thresholds())
    assert [(c.name, c.status, c.detail, c.target) for c in checks] == [tuple(v) for v in evaluate(ms, report.Thresholds())]
    assert report.exit_code(checks) == 1
