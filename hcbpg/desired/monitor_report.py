"""What ``hcbpg status`` adds to its table from the monitor and the archiver (issues 24 and 25), pure: the alerts
Alertmanager holds as check rows and a short table, and each server's archive age judged against its own
``archive_timeout`` plus a margin (the same limit as the ArchiveStale rule).

The reads are :func:`hcbpg.ops.alerting.get_alerts` (on the jumpbox) and :data:`ARCHIVE_AGE_SQL` (on each server).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg.desired.health import age
from hcbpg.display import text_table
from hcbpg.outcome import Check
from hcbpg.params_alerting import Thresholds

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.desired.alerting import ActiveAlert
    from hcbpg.params import Params

#: the item name of the alert rows (one per firing alert, or one saying none fire / the monitor is not known)
ALERTS_ITEM = "alerts"
#: the item name of the archive-age rows
ARCHIVE_AGE_ITEM = "archive age"

#: the newest archived WAL and its age as the server's clock sees it, and the server's archive_timeout (seconds)
ARCHIVE_AGE_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
  current_setting('archive_mode') AS archive_mode,
  (SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout') AS archive_timeout_s,
  last_archived_wal,
  extract(epoch FROM now() - last_archived_time)::float AS age_s,
  CASE WHEN pg_is_in_recovery() THEN NULL  -- pg_current_wal_lsn() fails on a standby: CASE keeps it away
       WHEN pg_current_wal_lsn() > '0/100000'::pg_lsn THEN pg_walfile_name(pg_current_wal_lsn() - 8192::numeric)
  END AS current_wal
FROM pg_stat_archiver
"""


@dataclass(frozen=True)
class ArchiveAge:
    """One server's archiver as :data:`ARCHIVE_AGE_SQL` reads it."""

    server: str
    in_recovery: bool
    archive_mode: str
    archive_timeout_s: int
    last_archived_wal: str | None
    age_s: float | None
    #: the segment holding the WAL written up to a page (8 kB) before the newest (a primary's): the few records an
    #: idle primary writes after a segment switch (a standby snapshot) are not a write waiting to be archived
    current_wal: str | None = None

    @classmethod
    def from_row(cls, server: str, row: dict[str, Any]) -> "ArchiveAge":
        return cls(server, bool(row["in_recovery"]), str(row["archive_mode"]), int(row["archive_timeout_s"] or 0),
                   row.get("last_archived_wal") or None, None if row.get("age_s") is None else float(row["age_s"]),
                   row.get("current_wal") or None)

    @property
    def idle(self) -> bool:
        """Nothing written since the newest archived segment, with archive_timeout on: PostgreSQL switches no
        segment that holds only a standby snapshot, so an idle primary's newest archived WAL grows old with nothing
        to lose; a write would have been switched and archived within archive_timeout.  (With archive_timeout off a
        write may wait unarchived for hours: never idle.)"""
        done = (self.last_archived_wal or "")[:24]
        return (self.archive_timeout_s > 0 and self.current_wal is not None and _is_segment(done)
                and self.current_wal.upper() <= done.upper())


def _is_segment(name: str) -> bool:
    return len(name) == 24 and all(c in "0123456789ABCDEFabcdef" for c in name)


def alerting_thresholds(params: "Params") -> Thresholds:
    """The alerting thresholds of params (their defaults without an ``alerting:`` section)."""
    return params.alerting.thresholds if params.alerting is not None else Thresholds()


def archive_age_limit_s(a: ArchiveAge, t: Thresholds) -> float:
    """How old the newest archived WAL may be: the server's archive_timeout (``alerting.thresholds.archive_timeout_s``
    where it is off) plus ``archive_age_margin_s``, as the ArchiveStale rule holds it."""
    return (a.archive_timeout_s if a.archive_timeout_s > 0 else t.archive_timeout_s) + t.archive_age_margin_s


def check_archive_age(a: ArchiveAge, t: Thresholds) -> Check | None:
    """PASS while the newest archived WAL is younger than :func:`archive_age_limit_s` (or older on an idle primary:
    nothing written since it), WARN past it or with nothing archived; None where nothing archives (a replica without
    ``archive_mode = always``, or archive_mode off: the archiving item says so)."""
    if a.archive_mode == "off" or (a.in_recovery and a.archive_mode != "always"):
        return None
    limit = archive_age_limit_s(a, t)
    timeout = (f"archive_timeout {a.archive_timeout_s} s" if a.archive_timeout_s > 0 else
               f"archive_timeout off: alerting.thresholds.archive_timeout_s {t.archive_timeout_s} s")
    bound = f"limit {age(limit)} = {timeout} + margin {t.archive_age_margin_s} s"
    if a.age_s is None or a.last_archived_wal is None:
        return Check(ARCHIVE_AGE_ITEM, "warn", f"no WAL archived yet ({bound})", a.server)
    seen = f"newest archived WAL {a.last_archived_wal} is {age(max(0.0, a.age_s))} old"
    if a.age_s > limit and a.idle:
        return Check(ARCHIVE_AGE_ITEM, "pass", f"{seen}: idle, nothing written since ({bound})", a.server)
    if a.age_s > limit:
        return Check(ARCHIVE_AGE_ITEM, "warn", f"{seen}, past the {bound}: archiving is stuck or the loss window "
                     "is unbounded (pgbackrest's archive-push log on the server; step 08)", a.server)
    return Check(ARCHIVE_AGE_ITEM, "pass", f"{seen} ({bound})", a.server)


def check_alerts(alerts: Sequence["ActiveAlert"] | None, monitor: str, *, error: str | None = None) -> list[Check]:
    """The alerts that fire as rows (target: the alert's server, else the monitor): a critical one FAIL, any other
    WARN; one PASS row "none firing" when none does; *alerts* None: one WARN row saying why the monitor could not
    be asked (*error*).  Silenced or inhibited alerts are not firing: they are left out."""
    if alerts is None:
        return [Check(ALERTS_ITEM, "warn", f"the monitor cannot be reached, so the alerts are not known: "
                      f"{error or 'no answer'} (step 15b sets it up; hcbpg status reads it on the jumpbox)", monitor)]
    firing = [a for a in alerts if a.state != "suppressed"]
    if not firing:
        return [Check(ALERTS_ITEM, "pass", "none firing (Alertmanager on the jumpbox; the Heartbeat left out)",
                      monitor)]
    return [Check(f"alert {a.name}", "fail" if a.severity == "critical" else "warn",
                  f"{a.severity or 'no severity'} since {a.starts_at[:19].replace('T', ' ')}: {a.summary}".strip(),
                  a.server or monitor) for a in firing]


def render_alerts(alerts: Sequence["ActiveAlert"] | None, monitor: str, *, error: str | None = None) -> str:
    """The alerts beside the status table: a small table of those that fire, "none firing", or why they are not
    known (the same facts as :func:`check_alerts`)."""
    head = f"Alerts (Alertmanager on {monitor}):"
    if alerts is None:
        return f"{head} WARN: the monitor cannot be reached: {error or 'no answer'}"
    firing = [a for a in alerts if a.state != "suppressed"]
    if not firing:
        return f"{head} none firing"
    rows = [{"ALERT": a.name, "SERVER": a.server or "-", "SEVERITY": a.severity or "-",
             "SINCE": a.starts_at[:19].replace("T", " ") or "-", "SUMMARY": a.summary} for a in firing]
    return f"{head} {len(firing)} firing\n" + text_table(rows, ["ALERT", "SERVER", "SEVERITY", "SINCE", "SUMMARY"])
