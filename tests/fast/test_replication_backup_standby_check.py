"""Step 10's (manual) check of backups from the standby (issue 24, :func:`hcbpg.steps.replication.check_backup_standby`)
on two recording doubles that answer each other's ``pgbackrest server-ping``: a pass per server once both files name
the other and both TLS servers answer; a warning (never a failure: the job falls back to the primary) for a file
without pg2 or a pg2 that does not answer; no row with ``backup_standby`` off."""

from __future__ import annotations

from hcbpg.ops import pgbackrest_server as ops_dps
from hcbpg.steps import replication as rep_step
from tests.fast.test_backup_standby_step_specs import make_pair, params  # noqa: F401 - the fixture
from tests.fast.test_pgbackrest_server_specs import make_params


def rows(hosts, p) -> dict[str, str]:  # noqa: ANN001
    return {str(c.target): c.status for c in rep_step.check_backup_standby(hosts, p)}


def test_pass_once_both_name_the_other_and_answer(params):  # noqa: F811
    pair = make_pair(params)
    hosts = {n: s.host for n, s in pair.items()}
    # before: no file names pg2 (steps 05/08)
    assert rows(hosts, params) == {"server-postgres-1": "warn", "server-postgres-2": "warn"}
    ops_dps.ensure_backup_standby(hosts, params)
    assert rows(hosts, params) == {"server-postgres-1": "pass", "server-postgres-2": "pass"}
    # the second server's TLS server stopped: the first's pg2 does not answer; an unreachable server has no row
    pair["server-postgres-2"].pid = None
    assert rows(hosts, params) == {"server-postgres-1": "warn", "server-postgres-2": "pass"}
    assert rows({"server-postgres-1": hosts["server-postgres-1"], "server-postgres-2": None}, params) == {
        "server-postgres-1": "warn"}
    checks = rep_step.check_backup_standby(hosts, params)
    assert all(c.ok for c in checks) and "does not answer" in checks[0].detail


def test_no_row_with_backup_standby_off(tmp_path):
    off = make_params(tmp_path, backup_standby=False)
    pair = make_pair(off)
    assert rep_step.check_backup_standby({n: s.host for n, s in pair.items()}, off) == []
    assert all(s.host.journal == [] for s in pair.values())
