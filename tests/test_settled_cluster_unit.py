"""``ops.patroni.get_settled_cluster``: the view a step's checks judge waits out Patroni's once-a-loop position
report (a replica shown a WAL switch or two behind for a moment) and never raises at its deadline."""

from __future__ import annotations

from test_patroni_unit import params

from hcbpg.desired import patroni as dp
from hcbpg.ops import patroni as ops_patroni

MIB = 1024 * 1024


def view(lag: int | None, state: str = "streaming") -> dp.ClusterView:
    return dp.ClusterView((dp.Member("server-postgres-1", "leader", "running", timeline=3),
                           dp.Member("server-postgres-2", "sync_standby", state, timeline=3, lag=lag)))


def test_a_replica_shown_behind_for_a_moment_is_read_again_until_it_is_within_the_bound(monkeypatch):
    p = params()
    seen = iter([view(32 * MIB), view(32 * MIB), view(0)])
    monkeypatch.setattr(ops_patroni, "get_cluster", lambda hosts, params: next(seen))
    got = ops_patroni.get_settled_cluster({}, p, timeout=30)
    assert got is not None and got.member("server-postgres-2").lag == 0
    assert [c.status for c in dp.check_cluster(got, p) if c.name == "member streaming"] == ["pass"]


def test_a_replica_that_stays_behind_is_returned_at_the_deadline_and_its_check_fails(monkeypatch):
    p = params()
    monkeypatch.setattr(ops_patroni, "get_cluster", lambda hosts, params: view(64 * MIB))
    got = ops_patroni.get_settled_cluster({}, p, timeout=0.2)
    assert got is not None
    [row] = [c for c in dp.check_cluster(got, p) if c.name == "member streaming"]
    assert row.status == "fail" and str(64 * MIB) in row.detail


def test_no_member_answering_is_returned_as_none(monkeypatch):
    monkeypatch.setattr(ops_patroni, "get_cluster", lambda hosts, params: None)
    assert ops_patroni.get_settled_cluster({}, params(), timeout=0.2) is None
