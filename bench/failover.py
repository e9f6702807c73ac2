"""``bench/failover.py``: what a switchover, a crash and a network cut of the Patroni leader cost the app
(issue 28, Performance), on a scratch lab of its own (own dir, bridge, subnets).

The cluster is what step 10 makes (``tests/lab/ha_stage.build_ha_cluster``: the primary through steps 02-04, a
replica and the jumpbox as etcd's third voter, the pair adopted by Patroni).  The app is the lab's app host running
the ActiveRecord writer (``hcbpg/lab/ar_load.rb``, ``--rate`` inserts a second, libpq's blocking connect: design
R3) with the handed-out multi-host ``DATABASE_URL``; it runs through every event and is never told where the
leader is.  Events, in this order each round, each from a healthy cluster (the old leader streaming again, lag 0,
on the new timeline; the sync standby named when synchronous mode is on), after ``--lead`` seconds of writes:

* switchover: ``CHECKPOINT`` then ``POST /switchover`` (what step 11 sends: ``plan_switchover``, ``run_switchover``);
* crash: ``faults.kill_patroni_and_postgres`` on the leader; Patroni started again ``--restart-after`` seconds
  later (the machine back, as systemd would start it); the old leader rejoins (pg_rewind when it needs one);
* cut: ``faults.cut_network`` on the leader (its veth down) with a local writer on it (psql over its socket),
  healed ``--hold`` seconds later.

Per event: ``gap_s`` (the longest stretch without an acknowledged write from 1 s before the event to 1 s after the
first ack on the new leader), ``first_ack_s``, ``promoted_s`` (the new timeline's start, ``GET /history``),
``lost`` (acknowledged inserts missing on the new leader once the old one rejoined), ``split_brain`` (writes the
old leader acknowledged after t0 + ttl - loop_wait, when its lease may have ended, or after the new leader's first
ack; its local writer's too), ``rejoined_s``.  Targets (the exit status is 1 when one is missed): switchover gap
<= 5 s, crash and cut gap <= 20 s, ``lost`` 0 with synchronous mode, ``split_brain`` 0.

    .venv/bin/python bench/failover.py [--sync on|off|both] [--rounds 1] [--rate 50] [--events switchover,crash,cut]
                                       [--plot failover.png] [--json failover.json] [--keep]

Needs root (network namespaces); about 2 min to build, then about a minute per event.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _ha  # noqa: E402
from _report import log_line, print_table, pyplot, quiet, save_figure  # noqa: E402

from hcbpg.adapters.host import Host  # noqa: E402
from hcbpg.adapters.services import ServiceControl  # noqa: E402
from hcbpg.desired import patroni as dp  # noqa: E402
from hcbpg.desired.services import PATRONI_LOG, patroni_service  # noqa: E402
from hcbpg.lab import Lab, app_load, faults  # noqa: E402
from hcbpg.ops import cluster as pg_cluster  # noqa: E402
from hcbpg.ops import patroni as ops_patroni  # noqa: E402
from hcbpg.params import parse_params  # noqa: E402

import ha_stage as hs  # noqa: E402

TARGETS = {"switchover": 5.0, "crash": 20.0, "cut": 20.0}
EVENTS = ("switchover", "crash", "cut")


@dataclass
class Bench(_ha.HaBench):
    """The scratch lab, the cluster, the app host and its writer (*rate* inserts a second)."""

    rate: float

    def ip(self, name: str) -> str:
        return self.params.server(name).private_ip

    def view(self, only: str | None = None) -> dp.ClusterView:
        servers = self.cluster.servers if only is None else {only: self.cluster.servers[only]}
        v = ops_patroni.get_cluster(servers, self.params)
        if v is None or v.leader is None:
            raise RuntimeError(f"no leader: {v}")
        return v

    def healthy(self, sync: bool, timeout: float = 120) -> tuple[str, str]:
        """Wait until the replica streams with lag 0 on the leader's timeline (and is the sync standby when *sync*);
        (leader, replica)."""
        deadline = time.monotonic() + timeout
        while True:
            v = ops_patroni.get_cluster(self.cluster.servers, self.params)
            if v is not None and v.leader is not None and v.replicas:
                r = v.replicas[0]
                if (r.state in dp.RUNNING_STATES and r.lag == 0 and r.timeline == v.leader.timeline
                        and (r.is_sync_standby or not sync)):
                    return v.leader.name, r.name
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not healthy after {timeout:.0f} s: "
                                   + ("no member answers" if v is None else str(v.rows())))
            time.sleep(0.5)

    def set_sync(self, sync: bool) -> None:
        """Patroni's synchronous_mode as asked (PATCH /config through step 10's ensure_dcs_config)."""
        p = dp.patroni_params(self.params).model_copy(update={"synchronous_mode": sync})
        rep = self.params.replication
        assert rep is not None
        self.params = self.params.model_copy(update={"replication": rep.model_copy(update={"patroni": p})})
        leader = self.view().leader
        assert leader is not None
        ops_patroni.ensure_dcs_config(self.cluster.servers[leader.name], self.params,
                                      self.params.server(leader.name), self.cluster.shape)

    def lease(self) -> int:
        p = dp.patroni_params(self.params)
        return (p.ttl - p.loop_wait) * 1000

    def reconnect(self, name: str) -> None:
        self.cluster.servers[name].close()
        self.cluster.servers[name] = Host.from_params(self.params, name, self.ip(name), echo=quiet).connect()


def event(b: Bench, kind: str, *, sync: bool, lead: float, hold: float, restart_after: float) -> dict[str, Any]:
    """One event from a healthy cluster; on a failure, Patroni's log of each server (read inside the lab host,
    which works with its network cut too) before the error."""
    try:
        return _event(b, kind, sync=sync, lead=lead, hold=hold, restart_after=restart_after)
    except BaseException:
        try:
            for name, st in ops_patroni.get_member_statuses(b.cluster.servers, b.params).items():
                print(f"--- GET /patroni of {name}: {st}", flush=True)
        except Exception as e:  # noqa: BLE001 - a diagnostic must not hide the failure
            print(f"--- GET /patroni: {type(e).__name__}: {e}", flush=True)
        for s in b.params.servers:
            cp = b.lab.exec(s.name, f"tail -n 80 {PATRONI_LOG}", timeout=30)
            print(f"--- {PATRONI_LOG} on {s.name} (last 80 lines) ---\n{cp.stdout}", flush=True)
        raise


def _event(b: Bench, kind: str, *, sync: bool, lead: float, hold: float, restart_after: float) -> dict[str, Any]:
    old, new = b.healthy(sync)
    time.sleep(lead)
    old_host, new_host = b.cluster.servers[old], b.cluster.servers[new]
    local: app_load.Writer | None = None
    local_log: app_load.LoadLog | None = None
    t_before = hs.now_ms() - int(lead * 1000)
    lease_end: int | None = None
    if kind == "switchover":
        plan = dp.plan_switchover(b.view(), None, params=b.params)
        if not plan.ok:
            raise RuntimeError(f"switchover refused: {plan.reasons}")
        pg_cluster.get_psql(old_host, b.params).execute("CHECKPOINT")
        t0 = hs.now_ms()
        ops_patroni.run_switchover(old_host, b.params, plan)
        hs.wait_for_acks_on(b.app, b.writer, b.ip(new), t0, count=int(b.rate), timeout=90)
    elif kind == "crash":
        t0 = hs.now_ms()
        lease_end = t0 + b.lease()
        faults.kill_patroni_and_postgres(b.lab.cfg, old)
        hs.wait_for_acks_on(b.app, b.writer, b.ip(new), t0, count=int(b.rate), timeout=90)
        time.sleep(max(0.0, (t0 + restart_after * 1000 - hs.now_ms()) / 1000))
        ServiceControl.of(old_host).ensure_running(patroni_service(b.params), wait_s=20)
    elif kind == "cut":
        local = app_load.start_local_writer(old_host, label=b.ip(old), database=b.params.postgres.database,
                                            name="bench-isolated", rate=b.rate)
        time.sleep(1.0)
        t0 = hs.now_ms()
        lease_end = t0 + b.lease()
        faults.cut_network(b.lab.cfg, old)
        try:
            hs.wait_for_acks_on(b.app, b.writer, b.ip(new), t0, count=int(b.rate), timeout=90)
            time.sleep(max(0.0, (t0 + hold * 1000 - hs.now_ms()) / 1000))
        finally:
            faults.heal_network(b.lab.cfg, old)
        b.reconnect(old)
    else:
        raise ValueError(kind)
    promoted = hs.promoted_ms(new_host, b.params, new)
    rejoined, _ = hs.wait_rejoined(b.cluster.servers, b.params, old, timeout=180)
    if local is not None:
        local_log = app_load.stop_writer(b.cluster.servers[old], local)
    log = app_load.read_writer_log(b.app, b.writer)
    lost = hs.missing_acks(new_host, b.params, log)
    fig = hs.measure(kind, t0_ms=t0, log=log, old=(old, b.ip(old)), new=(new, b.ip(new)), lost=len(lost),
                     promoted_at_ms=promoted, lease_end_ms=lease_end, local=local_log, rejoined_at_ms=rejoined)
    t_end = hs.now_ms()
    row = {**fig.row(), "sync": sync, "target_gap_s": TARGETS[kind],
           "bins": bins([a.t_ms for a in log.acks], t_before, t_end, t0),
           "marks": {"promoted": fig.promoted_s, "first_ack": fig.first_ack_s, "rejoined": fig.rejoined_s}}
    log_line(f"{kind:10} sync {'on ' if sync else 'off'}: {old} -> {new}: gap {fig.gap_s:.1f} s, first ack "
             f"{fig.first_ack_s:.1f} s, promoted {fmt(fig.promoted_s)} s, lost {fig.lost}, split brain "
             f"{fig.split_brain}, rejoined {fmt(fig.rejoined_s)} s")
    return row


def bins(times: list[int], start: int, end: int, t0: int, width: int = 100) -> dict[str, Any]:
    """Acks per *width* ms bin from *start* to *end*, the bins' left edges in seconds from *t0*."""
    n = max((end - start) // width, 1)
    counts = [0] * n
    for t in times:
        if start <= t < start + n * width:
            counts[(t - start) // width] += 1
    return {"x0_s": (start - t0) / 1000, "width_s": width / 1000, "counts": counts}


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def build(lab: Lab, rate: float) -> Bench:
    data, cluster = _ha.build_cluster(lab, scope="hcb-bench")
    params = parse_params(data)
    app, writer = _ha.start_app_writer(lab, params, name="bench-failover", rate=rate)
    return Bench(lab, params, cluster, app, writer, rate)


def report(rows: list[dict[str, Any]], plot: str | None) -> list[str]:
    """The table on stdout, the plot; the targets missed."""
    print_table([{**r, "sync": "on" if r["sync"] else "off"} for r in rows],
                ["event", "sync", "old_leader", "new_leader", "gap_s", "target_gap_s", "first_ack_s", "promoted_s",
                 "lost", "split_brain", "rejoined_s", "errors"],
                formats={"gap_s": ".1f", "target_gap_s": ".0f", "first_ack_s": ".1f", "promoted_s": ".1f",
                         "rejoined_s": ".1f"},
                headers={"old_leader": "from", "new_leader": "to", "gap_s": "gap s", "target_gap_s": "target",
                         "first_ack_s": "1st ack s", "promoted_s": "promoted s", "split_brain": "split",
                         "rejoined_s": "rejoined s"})
    missed = []
    for r in rows:
        if r["gap_s"] > r["target_gap_s"]:
            missed.append(f"{r['event']} (sync {r['sync']}): gap {r['gap_s']:.1f} s > {r['target_gap_s']:.0f} s")
        if r["sync"] and r["lost"]:
            missed.append(f"{r['event']} (sync on): {r['lost']} acknowledged write(s) lost")
        if r["split_brain"]:
            missed.append(f"{r['event']} (sync {r['sync']}): {r['split_brain']} write(s) by the old leader after its "
                          "lease or after the new leader's first")
    for kind in EVENTS:
        gaps = [r["gap_s"] for r in rows if r["event"] == kind]
        if len(gaps) > 1:
            print(f"{kind}: gap median {statistics.median(gaps):.1f} s, max {max(gaps):.1f} s over {len(gaps)}")
    if plot:
        plot_bins(rows, plot)
    return missed


def plot_bins(rows: list[dict[str, Any]], plot: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 2.2 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        b = r["bins"]
        xs = [b["x0_s"] + i * b["width_s"] for i in range(len(b["counts"]))]
        ax.bar(xs, b["counts"], width=b["width_s"], align="edge", color="tab:blue")
        ax.axvline(0, color="black", lw=1, label="t0 (fault / request)")
        for key, color in (("promoted", "tab:green"), ("first_ack", "tab:orange"), ("rejoined", "tab:purple")):
            if r["marks"][key] is not None:
                ax.axvline(r["marks"][key], color=color, lw=1, ls="--", label=key.replace("_", " "))
        ax.set_title(f"{r['event']} (sync {'on' if r['sync'] else 'off'}): {r['old_leader']} -> {r['new_leader']}, "
                     f"gap {r['gap_s']:.1f} s (target {r['target_gap_s']:.0f}), lost {r['lost']}, "
                     f"split brain {r['split_brain']}", fontsize=9)
        ax.set_ylabel("acks / 100 ms")
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from t0")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    save_figure(fig, plot)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sync", choices=("on", "off", "both"), default="on")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rate", type=float, default=50.0, help="the app's writes a second")
    ap.add_argument("--events", default=",".join(EVENTS), help="comma-separated: switchover, crash, cut")
    ap.add_argument("--lead", type=float, default=5.0, help="seconds of writes before each event")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds the cut lasts")
    ap.add_argument("--restart-after", type=float, default=20.0, help="seconds until Patroni starts again")
    ap.add_argument("--plot", default=None, help="a PNG: acks per 100 ms around each event")
    ap.add_argument("--json", default=None, help="every event's figures and bins")
    ap.add_argument("--keep", action="store_true", help="leave the scratch lab up (its dir is printed)")
    a = ap.parse_args()
    events = [e.strip() for e in a.events.split(",") if e.strip()]
    if not events or any(e not in EVENTS for e in events):
        ap.error(f"--events: some of {', '.join(EVENTS)}")
    lab = _ha.scratch_lab("hcbpg-lab-bench-failover-", "bench/failover.py")
    if lab is None:
        return 2
    rows: list[dict[str, Any]] = []
    b: Bench | None = None
    try:
        b = build(lab, a.rate)
        modes = {"on": [True], "off": [False], "both": [True, False]}[a.sync]
        for sync in modes:
            b.set_sync(sync)
            for _ in range(a.rounds):
                for kind in events:
                    rows.append(event(b, kind, sync=sync, lead=a.lead, hold=a.hold, restart_after=a.restart_after))
        log = app_load.stop_writer(b.app, b.writer)
        leader = b.view().leader
        assert leader is not None
        total_lost = hs.missing_acks(b.cluster.servers[leader.name], b.params, log)
        print(f"\nthe app: {len(log.acks)} acknowledged writes, {len(log.errors)} errors; missing on the leader "
              f"{leader.name} at the end: {len(total_lost)}")
    finally:
        _ha.end(lab, b, keep=a.keep)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
        print(f"json: {a.json}")
    missed = report(rows, a.plot)
    print("targets: switchover gap <= 5 s; crash and cut gap <= 20 s; lost 0 with sync; split brain 0")
    for m in missed:
        print(f"MISSED: {m}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
