"""Makes tests/golden/patroni.cluster.jsonl: GET /cluster answers by Patroni 3.0.2's own cluster_as_json.

Run with Debian's python3 and its patroni package: /usr/bin/python3 tests/golden/patroni.cluster.make.py
"""
import datetime
import json
import sys

sys.path.insert(0, '/usr/lib/python3/dist-packages')
from patroni.dcs import Cluster, ClusterConfig, Failover, Leader, Member, SyncState  # noqa: E402
from patroni.utils import cluster_as_json  # noqa: E402


def member(name, ip, state, timeline, lsn, role="replica", tags=None):
    data = {"conn_url": f"postgres://{ip}:5432/postgres", "api_url": f"https://{ip}:8008/patroni",
            "state": state, "role": role, "version": "3.0.2", "timeline": timeline, "xlog_location": lsn}
    if tags:
        data["tags"] = tags
    return Member(1, name, 30, data)

cfg = ClusterConfig(1, {"ttl": 12, "loop_wait": 2, "synchronous_mode": True}, 1)

def cluster(members, leader, sync, last_lsn, failover=None, paused=False):
    c = cfg if not paused else ClusterConfig(2, dict(cfg.data, pause=True), 2)
    ld = Leader(1, 30, next(m for m in members if m.name == leader)) if leader else None
    return Cluster(True, c, ld, last_lsn, members, failover, SyncState(1, leader, sync), None, None, None, {})

p1 = member("server-postgres-1", "10.0.1.5", "running", 3, 50331648, role="master")
p2 = member("server-postgres-2", "10.0.1.6", "running", 3, 50331648)
cases = {
    "healthy-sync": cluster([p1, p2], "server-postgres-1", "server-postgres-2", 50331648),
    "lagging-async": cluster([p1, member("server-postgres-2", "10.0.1.6", "running", 3, 16777216)],
                             "server-postgres-1", None, 50331648),
    "nofailover-paused": cluster([p1, member("server-postgres-2", "10.0.1.6", "running", 3, 50331648,
                                             tags={"nofailover": True})], "server-postgres-1", "server-postgres-2",
                                 50331648, paused=True),
    "after-failover": cluster([member("server-postgres-1", "10.0.1.5", "stopped", 3, None),
                               member("server-postgres-2", "10.0.1.6", "running", 4, 67108864, role="master")],
                              "server-postgres-2", None, 67108864,
                              failover=Failover(1, "server-postgres-2", "server-postgres-1",
                                                datetime.datetime(2026, 12, 7, 3, 0, tzinfo=datetime.timezone.utc))),
}
for name, c in cases.items():
    print(json.dumps({"case": name, "cluster": cluster_as_json(c)}, sort_keys=True))
