"""Failures of the leader under the app's load, on a Patroni cluster as step 10 makes it (issue 28, "Done when").

The cluster (``ha_stage.build_ha_cluster``): the primary stage's clone, a replica and the jumpbox (etcd's third
voter), adopted by Patroni with ``synchronous_mode`` on.  The app is the lab's app host running the ActiveRecord
writer (``hcbpg/lab/ar_load.rb``) with the handed-out multi-host ``DATABASE_URL`` (0600 env file, the CA where
the URL says), never restarted and never told where the leader is.  It connects with libpq's blocking connect
(``pg_async=off``): what a ruby-pg without issue #618 does (design R3; test_ar_writer records 1.4.5's async
connect).

In file order, each building on the one before:

1. kill -9 of the leader (Patroni and every PostgreSQL process of the host, as a crash): the app's writes resume
   on the other server through the same URL; every write it was acknowledged is on the new leader (sync mode);
2. Patroni started again on the old leader (what systemd's ``Restart=on-failure`` does): it rejoins (pg_rewind),
   streams with lag 0 on the new leader's timeline;
3. the scheduled backup job on both servers: it backs up on the new leader only, and ``pgbackrest check`` passes
   there;
4. the new leader's network cut (its veth down) with a local writer on it (psql over its socket): the app's
   writes resume on the other server, nothing acknowledged is lost, and the isolated old leader acknowledged no
   write after its lease could have ended (t0 + ttl - loop_wait) nor after the new leader's first;
5. healed: it rejoins.

Known to fail now and then (2 of 17 cuts in the lab, each a cut after a crash): after the heal the cut old leader
holds the leader key again ("starting as readonly because i had the session lock"), the promoted member follows it,
and the old one cannot start on its forked timeline ("requested timeline 3 is not a child of this server's
history"): no leader runs.  The likely cause, from Patroni 3.0.2's etcd3 code: it reads serializable (a healed etcd
member that has not caught up answers with the old leader key) and puts the leader key unconditionally once its
lease is renewed (patroni#2689, fixed after 3.0.2; patroni#3318 for the stale member).  ``wait_rejoined`` says so
when it happens; the remedy is a Patroni with #2689 (and #3318), not a change to this test.

The figures (gap, first ack, promotion, rejoin) are printed (run with ``-s``) beside the issue's targets; no
timing is asserted (a loaded CI machine is not a benchmark: ``bench/failover.py`` asserts them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hcbpg.adapters.host import Host
from hcbpg.adapters.services import ServiceControl
from hcbpg.desired import patroni as dp
from hcbpg.desired.schedule import JOB_PATH
from hcbpg.desired.services import PATRONI_LOG, patroni_service
from hcbpg.lab import app_load, faults
from hcbpg.ops import patroni as ops_patroni
from hcbpg.ops import pgbackrest
from hcbpg.ops import schedule as ops_schedule
from hcbpg.params import Params, parse_params

import ha_stage as hs
from ha_stage import REPLICA, STAGE_PRIMARY

pytestmark = pytest.mark.lab

#: addresses no other module of a worker uses (test_ha_steps: 56, 57; test_replication: 52; ...)
REPLICA_OFFSET, JUMPBOX_OFFSET = 71, 72
SCOPE = "hcb-failover"
RATE = 50  # the app's writes a second
TARGET_S = 20  # the target for a crash or a cut, without writes
STATE: dict = {}


@pytest.fixture(scope="module")
def params(lab) -> Params:
    return parse_params(hs.ha_params_data(lab, replica_offset=REPLICA_OFFSET, jumpbox_offset=JUMPBOX_OFFSET,
                                          scope=SCOPE))


@pytest.fixture(scope="module")
def cluster(lab, primary_stage, params):
    with hs.running_ha_cluster(lab, primary_stage, params) as c:
        yield c


@pytest.fixture(scope="module")
def app(lab, params, cluster, tmp_path_factory):
    """The lab's app host with the handed-out URLs file (0600) and the CA, the ActiveRecord writer running."""
    host, urls = hs.open_app_host(lab, params, tmp_path_factory.mktemp("urls"))
    app_load.put_env_file(host, urls.text)
    STATE["url"] = urls.values["DATABASE_URL"]
    writer = app_load.start_ar_writer(host, name="ha-failover", rate=RATE, pg_async=False)
    STATE["writer"] = writer
    try:
        yield host
    finally:
        app_load.stop_writer(host, writer)
        host.run(f"rm -f {app_load.AR_ENV_FILE}", quiet=True)
        host.close()


def ip(params: Params, name: str) -> str:
    return params.server(name).private_ip


def ttl_ms(params: Params) -> tuple[int, int]:
    p = dp.patroni_params(params)
    return p.ttl * 1000, p.loop_wait * 1000


def test_the_app_writes_on_the_leader_through_the_multi_host_url(params, cluster, app):
    # Patroni publishes each member's WAL position once a loop: with the writer on, one reading can show the sync
    # standby a commit behind (1,872 bytes in the fresh-clone run at 1d9b3fa); read until it is caught up
    view = ops_patroni.wait_for_member(cluster.servers, params, REPLICA, lambda m: m.is_sync_standby and m.lag == 0,
                                       what=f"{REPLICA} the sync standby, caught up", timeout=60)
    assert view.leader is not None and view.leader.name == STAGE_PRIMARY, view
    replica = view.member(REPLICA)
    assert replica is not None and replica.is_sync_standby and replica.lag == 0, view
    assert STATE["url"].startswith(f"postgresql:{params.postgres.database}?host={ip(params, STAGE_PRIMARY)},"
                                   f"{ip(params, REPLICA)}&")
    acks = hs.wait_for_acks_on(app, STATE["writer"], ip(params, STAGE_PRIMARY), 0, count=20, timeout=30)
    assert {a.server for a in app_load.read_writer_log(app, STATE["writer"]).acks} == {ip(params, STAGE_PRIMARY)}
    assert hs.missing_acks(cluster.servers[STAGE_PRIMARY], params, app_load.read_writer_log(app, STATE["writer"])) \
        == []
    assert len(acks) >= 20


def test_kill_9_of_the_leader_writes_resume_on_the_other_and_nothing_acknowledged_is_lost(lab, params, cluster, app):
    old, new = STAGE_PRIMARY, REPLICA
    writer = STATE["writer"]
    hs.wait_for_acks_on(app, writer, ip(params, old), hs.now_ms(), count=5, timeout=10)  # writing right now
    t0 = hs.now_ms()
    killed = faults.kill_patroni_and_postgres(lab.cfg, old)
    assert killed and faults.find_pids(lab.cfg, old, comm="postgres") == []
    hs.wait_for_acks_on(app, writer, ip(params, new), t0, count=RATE, timeout=90)  # about a second of writes
    log = app_load.read_writer_log(app, writer)
    new_host = cluster.servers[new]
    lost = hs.missing_acks(new_host, params, log)
    assert lost == [], f"{len(lost)} acknowledged write(s) missing on the new leader {new}: {lost[:5]}"
    view = ops_patroni.get_cluster({new: new_host}, params)
    assert view is not None and view.leader is not None and view.leader.name == new, view
    ttl, loop_wait = ttl_ms(params)
    fig = hs.measure("crash", t0_ms=t0, log=log, old=(old, ip(params, old)), new=(new, ip(params, new)), lost=0,
                     promoted_at_ms=hs.promoted_ms(new_host, params, new), lease_end_ms=t0 + ttl - loop_wait)
    assert fig.split_brain == 0, fig
    STATE["crash"] = fig
    print(f"\nkill -9 of {old}: {len(log.acks)} acks so far, 0 lost; longest gap {fig.gap_s:.1f} s "
          f"(target <= {TARGET_S}), first ack on {new} {fig.first_ack_s:.1f} s, promoted {fig.promoted_s} s after "
          f"the kill; {fig.errors} errors on the way")


def test_the_crashed_leader_rejoins_once_patroni_starts_again(params, cluster, app):
    old = STAGE_PRIMARY
    t_start = hs.now_ms()
    ServiceControl.of(cluster.servers[old]).ensure_running(patroni_service(params), wait_s=20)
    at, view = hs.wait_rejoined(cluster.servers, params, old, timeout=120)
    fig = STATE["crash"]
    fig.rejoined_s = (at - fig.t0_ms) / 1000
    assert view.leader is not None and view.leader.name == REPLICA, view
    m = view.member(old)
    assert m is not None and m.timeline == view.leader.timeline and m.timeline is not None and m.timeline >= 2, view
    psql_rec = hs.query_json(cluster.servers[old], params, "SELECT to_json(pg_is_in_recovery())")
    assert psql_rec is True
    # it holds every acknowledged write too (it replays the new leader's timeline)
    log = app_load.read_writer_log(app, STATE["writer"])
    upto = [a for a in log.acks if a.t_ms < at - 2000]
    assert hs.missing_acks(cluster.servers[old], params, app_load.LoadLog(
        inserted=[a.id for a in upto], acks=upto)) == []
    # what Patroni did to bring it back (pg_rewind only when its WAL went past the new timeline's fork)
    plog = cluster.servers[old].read_text(PATRONI_LOG) or ""
    rewind = [ln.split(": ", 1)[-1] for ln in plog.splitlines() if "rewind" in ln.lower()]
    print(f"\n{old} rejoined (streaming, lag 0, timeline {m.timeline}) {(at - t_start) / 1000:.1f} s after Patroni "
          f"started again, {fig.rejoined_s:.1f} s after the kill; Patroni's log on rewinding: {rewind[-3:] or 'none'}")


def test_the_scheduled_backup_runs_on_the_new_leader_and_pgbackrest_check_passes_there(params, cluster):
    leader, replica = REPLICA, STAGE_PRIMARY
    stanza = params.pgbackrest.stanza if params.pgbackrest is not None else "hcb_production"

    def backups() -> int:
        info = cluster.servers[leader].run(f"pgbackrest --stanza={stanza} info --output=json", sudo_user="postgres",
                                           quiet=True).stdout
        return len(json.loads(info)[0]["backup"])

    before = backups()
    t0 = time.monotonic()
    for name in (replica, leader):  # cron runs the job on every server; only the leader's backs up
        assert cluster.servers[name].probe(f"test -x {JOB_PATH}").ok, f"{JOB_PATH} missing on {name}"
        res = ops_schedule.run_backup_job(cluster.servers[name], "incr", timeout=600)
        assert res.ok, f"the backup job on {name}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    took = time.monotonic() - t0
    assert backups() == before + 1
    assert params.pgbackrest is not None
    check = pgbackrest.check_stanza(cluster.servers[leader], params, params.server(leader), archiving=True)
    assert check.ok, check
    print(f"\nthe backup job on both servers: one incremental backup, on the new leader {leader} ({took:.1f} s); "
          f"pgbackrest check there: {check.status}")


def test_the_leaders_network_cut_writes_resume_and_the_isolated_old_leader_accepts_nothing(lab, params, cluster, app):
    old, new = REPLICA, STAGE_PRIMARY
    writer = STATE["writer"]
    old_host = cluster.servers[old]
    # the pair is whole before the cut: the other member streams as the sync standby (with synchronous_mode, Patroni
    # hands the lease only to it); once a fresh-clone run cut the leader while the other still replayed from the
    # archive, and it stayed a replica for the 90 s below
    before = ops_patroni.wait_for_member(cluster.servers, params, new,
                                         lambda m: m.is_sync_standby and m.state == "streaming" and m.lag == 0,
                                         what=f"{new} the sync standby, streaming, lag 0", timeout=60)
    print(f"\nbefore the cut: {[(m.name, m.role, m.state, m.lag) for m in before.members]}")
    local = app_load.start_local_writer(old_host, label=ip(params, old), database=params.postgres.database,
                                        name="ha-isolated", rate=RATE)
    deadline = time.monotonic() + 15
    while not app_load.read_writer_log(old_host, local).acks and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app_load.read_writer_log(old_host, local).acks, "the local writer on the leader never wrote"
    hs.wait_for_acks_on(app, writer, ip(params, old), hs.now_ms(), count=5, timeout=10)
    ttl, loop_wait = ttl_ms(params)
    t0 = hs.now_ms()
    faults.cut_network(lab.cfg, old)
    try:
        assert faults.link_state(lab.cfg, old) == "DOWN"
        # only the member still on the network is asked (SSH to the cut one would wait for TCP)
        hs.wait_for_acks_on(app, writer, ip(params, new), t0, count=RATE, timeout=90)
        # hold the cut well past the old leader's lease, so that whatever it would accept while cut off is seen
        time.sleep(max(0.0, (t0 + ttl + 10_000 - hs.now_ms()) / 1000))
        log = app_load.read_writer_log(app, writer)
        new_host = cluster.servers[new]
        promoted = hs.promoted_ms(new_host, params, new)
        lost = hs.missing_acks(new_host, params, log)
        view = ops_patroni.get_cluster({new: new_host}, params)
    finally:
        faults.heal_network(lab.cfg, old)
    t_heal = hs.now_ms()
    assert lost == [], f"{len(lost)} acknowledged write(s) missing on the new leader {new}: {lost[:5]}"
    assert view is not None and view.leader is not None and view.leader.name == new, view
    # the cut member's SSH session may have died with its link: a new one
    old_host.close()
    old_host = Host.from_params(params, old, ip(params, old), echo=lambda _s: None).connect()
    cluster.servers[old] = old_host
    at, view = hs.wait_rejoined(cluster.servers, params, old, timeout=120)
    local_log = app_load.stop_writer(old_host, local)
    fig = hs.measure("network cut", t0_ms=t0, log=log, old=(old, ip(params, old)), new=(new, ip(params, new)),
                     lost=len(lost), promoted_at_ms=promoted, lease_end_ms=t0 + ttl - loop_wait, local=local_log,
                     rejoined_at_ms=at)
    STATE["cut"] = fig
    late = [a for a in local_log.acks if a.t_ms > t0 + ttl - loop_wait]
    assert late == [], f"the isolated old leader acknowledged {len(late)} local write(s) after its lease: {late[:3]}"
    assert fig.split_brain == 0, fig
    # synchronous mode: what the cut leader acknowledged to its own local writer is on the new leader too
    local_lost = hs.missing_acks(cluster.servers[new], params, app_load.LoadLog(
        inserted=[a.id for a in local_log.acks], acks=local_log.acks))
    assert local_lost == [], f"{len(local_lost)} write(s) the old leader acknowledged locally are missing: {local_lost[:3]}"
    m = view.member(old)
    assert m is not None and view.leader is not None and m.timeline == view.leader.timeline, view
    print(f"\nnetwork cut of {old}: longest gap {fig.gap_s:.1f} s (target <= {TARGET_S}), first ack on {new} "
          f"{fig.first_ack_s:.1f} s, promoted {fig.promoted_s} s after the cut; 0 lost; the isolated leader's local "
          f"writer: {fig.isolated_acks} ack(s) after the cut, 0 after t0 + ttl - loop_wait "
          f"({(ttl - loop_wait) / 1000:.0f} s), all {len(local_log.acks)} of its acks on {new}, {len(local_log.errors)} "
          f"errors; healed after "
          f"{(t_heal - t0) / 1000:.0f} s, rejoined {(at - t_heal) / 1000:.1f} s after the heal")
    print("\n" + "\n".join(f"  {f.event:12} gap {f.gap_s:5.1f} s  first ack {f.first_ack_s:5.1f} s  promoted "
                           f"{f.promoted_s if f.promoted_s is not None else float('nan'):5.1f} s  lost {f.lost}  "
                           f"split brain {f.split_brain}  rejoined {f.rejoined_s or float('nan'):5.1f} s"
                           for f in (STATE["crash"], STATE["cut"])))


def test_every_acknowledged_write_is_on_the_leader_at_the_end(params, cluster, app):
    log = app_load.read_writer_log(app, STATE["writer"])
    view = ops_patroni.get_cluster(cluster.servers, params)
    assert view is not None and view.leader is not None
    assert hs.missing_acks(cluster.servers[view.leader.name], params, log) == []
    assert {a.server for a in log.acks} == {ip(params, STAGE_PRIMARY), ip(params, REPLICA)}
    print(f"\n{len(log.acks)} writes acknowledged through {Path(app_load.AR_ENV_FILE).name}'s URL, all on "
          f"{view.leader.name}")
