"""``hcbpg status`` beside its table (issues 24 and 25): the alerts Alertmanager holds on the jumpbox (read there with
curl, the Heartbeat left out), "none firing", a WARN row when the monitor cannot be reached, nothing without an
``alerting:`` section; and each server's archive age against its own archive_timeout plus the margin."""

from __future__ import annotations

import json
from typing import Any

from hcbpg.adapters.base import Result
from hcbpg.adapters.recording import RecordingHost
from hcbpg.desired import monitor_report as mr
from hcbpg.desired.alerting import ActiveAlert
from hcbpg.engine import status
from hcbpg.params import parse_params
from hcbpg.params_alerting import Thresholds
from tests.fast.test_alerting_specs import ALERTING
from tests.fast.test_ha_specs import ha_data

DOWN = ActiveAlert("PostgresDown", "critical", "server-postgres-2", "active", "2026-12-07T06:01:02.345Z",
                   "PostgreSQL on server-postgres-2 does not answer")
LAG = ActiveAlert("ReplicaLagging", "warning", "server-postgres-2", "suppressed", "2026-12-07T06:01:05Z",
                  "server-postgres-2 is 120 s behind")
DISK = ActiveAlert("DiskFull", "warning", "", "active", "2026-12-07T06:02:00Z", "/ is 91 % full")


def _am_alert(name: str, server: str, severity: str, state: str = "active") -> dict[str, Any]:
    return {"labels": {"alertname": name, "server": server, "severity": severity},
            "status": {"state": state}, "startsAt": "2026-12-07T06:00:00Z",
            "annotations": {"summary": f"{name} on {server}"}}


# the alerts ----------------------------------------------------------------------------------------------------

def test_no_alert_firing_is_one_pass_row_and_one_line_saying_none_firing():
    assert [(c.name, c.status, c.target) for c in mr.check_alerts([], "hcb-jumpbox")] == [
        ("alerts", "pass", "hcb-jumpbox")]
    assert mr.render_alerts([], "hcb-jumpbox") == "Alerts (Alertmanager on hcb-jumpbox): none firing"
    # an inhibited or silenced alert does not fire
    assert [c.status for c in mr.check_alerts([LAG], "hcb-jumpbox")] == ["pass"]
    assert mr.render_alerts([LAG], "hcb-jumpbox").endswith("none firing")


def test_each_firing_alert_is_a_row_critical_fails_warning_warns_and_the_table_lists_them():
    rows = mr.check_alerts([DOWN, LAG, DISK], "hcb-jumpbox")
    assert [(c.name, c.status, c.target) for c in rows] == [("alert PostgresDown", "fail", "server-postgres-2"),
                                                            ("alert DiskFull", "warn", "hcb-jumpbox")]
    assert rows[0].detail == ("critical since 2026-12-07 06:01:02: PostgreSQL on server-postgres-2 does not "
                              "answer")
    text = mr.render_alerts([DOWN, LAG, DISK], "hcb-jumpbox")
    head, *table = text.splitlines()
    assert head == "Alerts (Alertmanager on hcb-jumpbox): 2 firing"
    assert table[0].split() == ["ALERT", "SERVER", "SEVERITY", "SINCE", "SUMMARY"]
    assert "PostgresDown" in table[1] and "server-postgres-2" in table[1] and "critical" in table[1]
    assert "DiskFull" in table[2] and " - " in table[2]  # no server label: a dash
    assert not any("ReplicaLagging" in line for line in table)


def test_a_monitor_that_cannot_be_reached_is_one_clear_warn_row_not_none_firing():
    rows = mr.check_alerts(None, "hcb-jumpbox", error="the jumpbox hcb-jumpbox: no SSH answer in 5 s")
    assert [(c.name, c.status, c.target) for c in rows] == [("alerts", "warn", "hcb-jumpbox")]
    assert "cannot be reached" in rows[0].detail and "no SSH answer in 5 s" in rows[0].detail
    text = mr.render_alerts(None, "hcb-jumpbox", error="no SSH answer in 5 s")
    assert "WARN" in text and "cannot be reached" in text and "none firing" not in text


def _alerting_params(ssh: dict[str, Any] | None = None, **jumpbox: Any):
    data = ha_data()
    data["alerting"] = dict(ALERTING)
    data["jumpbox"] = {**data["jumpbox"], **jumpbox}
    data["ssh"] = {**data.get("ssh", {}), **(ssh or {})}
    return parse_params(data)


def test_without_an_alerting_section_status_asks_no_monitor_and_shows_nothing():
    params = parse_params(ha_data())
    assert params.alerting is None
    assert status._open_monitor(params, 5.0) == ("", None, None)


def test_with_alerting_the_monitor_is_the_jumpbox_at_its_address_or_a_reason(tmp_path):
    name, host, error = status._open_monitor(_alerting_params(ssh_host="10.0.1.40"), 5.0)
    assert (name, error) == ("hcb-jumpbox", None) and host is not None and host.name == "hcb-jumpbox"
    assert host.connect_timeout == 5.0
    host.close()
    params = _alerting_params({"known_hosts": str(tmp_path / "known_hosts")})  # step 01 pinned no address for it
    name, host, error = status._open_monitor(params, 5.0)
    assert name == "hcb-jumpbox" and host is None and error is not None and "no SSH address" in error


def test_the_alerts_are_read_on_the_jumpbox_with_curl_and_a_failed_read_becomes_the_reason():
    params = _alerting_params(ssh_host="10.0.1.40")
    answer = json.dumps([_am_alert("Heartbeat", "", "none"), _am_alert("PostgresDown", "server-postgres-1",
                                                                       "critical")])
    jb = RecordingHost("hcb-jumpbox", script=[(r"^curl .*127\.0\.0\.1:9093/api/v2/alerts", answer)])
    alerts, error = status._get_alerts(jb, params)  # type: ignore[arg-type] - the double is a HostLike
    assert error is None and [(a.name, a.server) for a in alerts or []] == [("PostgresDown", "server-postgres-1")]
    refused = RecordingHost("hcb-jumpbox", script=[(r"^curl ", Result(
        "hcb-jumpbox", "curl", 7, "", "curl: (7) Failed to connect to 127.0.0.1 port 9093: Connection refused", 0.0))])
    alerts, error = status._get_alerts(refused, params)  # type: ignore[arg-type]
    assert alerts is None and error is not None and "Connection refused" in error
    assert status._get_alerts(None, params) == (None, "no SSH connection to the jumpbox")


# the archive's age ---------------------------------------------------------------------------------------------

def _age(age_s: float | None, *, timeout: int = 60, recovery: bool = False, mode: str = "on",
         current: str | None = "00000001000000000000002B") -> mr.ArchiveAge:
    return mr.ArchiveAge.from_row("server-postgres-1", {
        "in_recovery": recovery, "archive_mode": mode, "archive_timeout_s": timeout,
        "last_archived_wal": None if age_s is None else "00000001000000000000002A", "age_s": age_s,
        "current_wal": None if recovery else current})


def test_the_archive_age_passes_inside_archive_timeout_plus_the_margin_and_warns_past_it():
    t = Thresholds(archive_age_margin_s=30)
    young = mr.check_archive_age(_age(75.0), t)
    assert young is not None and young.status == "pass" and young.name == "archive age"
    assert young.detail == ("newest archived WAL 00000001000000000000002A is 75s old (limit 90s = archive_timeout "
                            "60 s + margin 30 s)")
    old = mr.check_archive_age(_age(91.0), t)
    assert old is not None and old.status == "warn" and "past the limit 90s" in old.detail
    assert old.target == "server-postgres-1"


def test_an_idle_primary_whose_newest_segment_is_archived_is_not_stale_however_old():
    """archive_timeout switches no empty segment: with nothing written, the newest archived WAL only grows old."""
    t = Thresholds(archive_age_margin_s=30)
    idle = mr.check_archive_age(_age(3600.0, current="00000001000000000000002A"), t)
    assert idle is not None and idle.status == "pass" and "idle, nothing written since" in idle.detail
    # a backup's label file or a .partial names its segment first
    label = mr.ArchiveAge("server-postgres-1", False, "on", 60, "00000001000000000000002A.00000028.backup", 3600.0,
                          "00000001000000000000002A")
    assert label.idle
    # with archive_timeout off a write may wait unarchived in the current segment for hours: never idle
    off = mr.check_archive_age(_age(3600.0, timeout=0, current="00000001000000000000002A"), t)
    assert off is not None and off.status == "warn"
    # WAL written since (the current segment is past the archived one): stale
    busy = mr.check_archive_age(_age(3600.0, current="00000001000000000000002B"), t)
    assert busy is not None and busy.status == "warn"
    # a timeline's history file says nothing about the segments: judged by its age
    history = mr.ArchiveAge("server-postgres-1", False, "on", 60, "00000002.history", 3600.0,
                            "00000002000000000000002A")
    judged = mr.check_archive_age(history, t)
    assert not history.idle and judged is not None and judged.status == "warn"


def test_with_archive_timeout_off_the_alerting_threshold_stands_in_for_it():
    t = Thresholds(archive_timeout_s=300, archive_age_margin_s=300)
    assert mr.archive_age_limit_s(_age(10.0, timeout=0), t) == 600
    row = mr.check_archive_age(_age(601.0, timeout=0), t)
    assert row is not None and row.status == "warn" and "archive_timeout off" in row.detail
    assert mr.archive_age_limit_s(_age(10.0, timeout=60), t) == 360  # the server's own setting when it has one


def test_nothing_archived_warns_and_where_nothing_archives_there_is_no_row():
    row = mr.check_archive_age(_age(None), Thresholds())
    assert row is not None and row.status == "warn" and row.detail.startswith("no WAL archived yet")
    assert mr.check_archive_age(_age(None, recovery=True), Thresholds()) is None  # a replica: the primary archives
    assert mr.check_archive_age(_age(5.0, mode="off"), Thresholds()) is None  # the archiving item fails for it
    always = mr.check_archive_age(_age(5.0, recovery=True, mode="always"), Thresholds())
    assert always is not None and always.status == "pass"


def test_the_archive_thresholds_are_params_alertings_or_their_defaults():
    assert mr.alerting_thresholds(parse_params(ha_data())) == Thresholds()
    data = ha_data()
    data["alerting"] = {**ALERTING, "thresholds": {"archive_age_margin_s": 45}}
    assert mr.alerting_thresholds(parse_params(data)).archive_age_margin_s == 45


def test_the_archive_age_is_read_with_one_query_on_the_server():
    params = parse_params(ha_data())
    row = json.dumps([{"in_recovery": False, "archive_mode": "on", "archive_timeout_s": 60,
                       "last_archived_wal": "000000010000000000000003", "age_s": 12.5,
                       "current_wal": "000000010000000000000004"}])
    host = RecordingHost("server-postgres-1",
                         handler=lambda call: row if "pg_stat_archiver" in (call.stdin or "") else None)
    from hcbpg.ops.archiver import get_archive_age
    got = get_archive_age(host, params)  # type: ignore[arg-type] - the double is a HostLike
    assert got == mr.ArchiveAge("server-postgres-1", False, "on", 60, "000000010000000000000003", 12.5,
                                "000000010000000000000004")
    assert [c for c in host.commands if "psql" in c], host.commands
