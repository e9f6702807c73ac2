"""``bench/backup_latency.py``: what a full backup costs the primary's writes, taken from the primary and from the
standby (issue 24, Performance), on a scratch lab of its own (own dir, bridge, subnets).

The cluster is what step 10 makes (``tests/lab/ha_stage.build_ha_cluster``), with ``pgbackrest.backup_standby``
then turned on (``ensure_pgbackrest_server`` on both servers: pgBackRest's TLS server, pg2 in each
pgbackrest.conf).  The database is grown with ``pgbench -i -s SCALE`` on the leader (``--scale``, 15 MB a step) so
that a full backup lasts long enough to be measured.  The app is the lab's app host writing through the handed-out
``DATABASE_URL`` (the lab's ActiveRecord writer, ``hcbpg/lab/ar_load.rb`` with ``latency=on``: each insert timed
from sending to its answer), at ``--rate`` a second, all through the run.  Phases, one after the other in the same run:

* ``none-N``: ``--quiet`` seconds without a backup, before and after every backup (the references);
* ``primary-R``: a full backup with ``--no-backup-standby`` (every file read on the primary);
* ``standby-R``: a full backup with backup-standby (the files read on the standby; the primary only starts and
  stops the backup);

round 1 from the primary first, round 2 from the standby first (``--rounds``, default 2), so that drift over the
run (the machine's other load) falls on both alike.  Per phase: the writes acknowledged in it, p50/p95/p99/max of
their latency (ms), errors, the backup's duration; per backup the ratios of its p50 and p95 to those of the quiet
phases just before and after it (their writes together); per kind the mean over the rounds.  The lab's hosts share the
machine's CPUs and disk (network namespaces, no VMs): a backup from the standby still competes with the primary
here, through the shared machine, which a Hetzner server pair does not; the table says what the lab measured.

    .venv/bin/python bench/backup_latency.py [--scale 100] [--rate 50] [--quiet 30] [--rounds 1] [--json F] [--keep]

Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import _ha  # noqa: E402
from _report import log_line, percentile, print_table  # noqa: E402

from hcbpg.adapters.host import Host  # noqa: E402
from hcbpg.desired import backups as desired_backups  # noqa: E402
from hcbpg.lab import Lab, app_load  # noqa: E402
from hcbpg.ops import pgbackrest as pgb  # noqa: E402
from hcbpg.ops import pgbackrest_server as ops_dps  # noqa: E402
from hcbpg.params import parse_params  # noqa: E402

import ha_stage as hs  # noqa: E402

PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def phase_row(name: str, writes: Sequence[app_load.Ack], errors: Sequence[app_load.WriteError], start_ms: int,
              end_ms: int, backup_s: float | None) -> dict[str, Any]:
    """The writes sent within [*start_ms*, *end_ms*): how many, their latency's percentiles (ms), the errors."""
    lat = [w.latency_us / 1000 for w in writes if w.latency_us is not None and start_ms <= w.sent_ms < end_ms]
    return {"phase": name, "seconds": round((end_ms - start_ms) / 1000, 1), "writes": len(lat),
            "errors": len([e for e in errors if start_ms <= e.t_ms < end_ms]),
            "p50_ms": round(percentile(lat, 0.5), 2), "p95_ms": round(percentile(lat, 0.95), 2),
            "p99_ms": round(percentile(lat, 0.99), 2), "max_ms": round(max(lat), 2) if lat else float("nan"),
            "mean_ms": round(statistics.fmean(lat), 2) if lat else float("nan"), "backup_s": backup_s}


class Bench(_ha.HaBench):
    """The scratch lab, the cluster with backup-standby on, the app host and its timed writer."""

    @property
    def leader(self) -> Host:
        name = hs.leader_name(self.cluster, self.params)
        if name is None:
            raise RuntimeError("no leader")
        return self.cluster.servers[name]

    def backup(self, from_standby: bool) -> tuple[float, str]:
        """A full backup on the leader, from the standby or not; its duration and what pgBackRest said of it."""
        opts = ["--type=full", "--log-level-console=info"] + ([] if from_standby else ["--no-backup-standby"])
        t = time.monotonic()
        res = pgb.run_pgbackrest(self.leader, self.params, "backup", *opts, timeout=7200)
        took = time.monotonic() - t
        said = [ln for ln in res.output.splitlines() if ("standby" in ln and "command begin" not in ln)
                or "new backup label" in ln]
        if from_standby and not any("replay on the standby reached" in ln for ln in said):
            raise RuntimeError(f"the backup with backup-standby did not use the standby: {said}")
        return took, "; ".join(s.split("INFO: ", 1)[-1] for s in said)

    def writes(self) -> app_load.LoadLog:
        return app_load.read_writer_log(self.app, self.writer)


def build(lab: Lab, rate: float, scale: int) -> Bench:
    data, cluster = _ha.build_cluster(lab, scope="hcb-bench-backup")
    d = copy.deepcopy(data)
    d["pgbackrest"]["backup_standby"] = True
    params = parse_params(d)
    for s in params.servers:
        pgb.ensure_paths(cluster.servers[s.name], specs=desired_backups.paths_for(params))
        ops_dps.ensure_pgbackrest_server(cluster.servers[s.name], params, s)
    log_line("pgBackRest's TLS server on both servers, backup-standby on")
    t = time.monotonic()
    db = shlex.quote(params.postgres.database)
    cluster.servers[hs.STAGE_PRIMARY].run(f"{PGBENCH} -i -q -s {int(scale)} -d {db}", sudo_user="postgres",
                                          timeout=7200, display=f"pgbench -i -s {scale}")
    size = cluster.servers[hs.STAGE_PRIMARY].run(
        f"psql -X -At -d {db} -c 'SELECT pg_size_pretty(pg_database_size(current_database()))'",
        sudo_user="postgres", quiet=True).stdout.strip()
    log_line(f"pgbench -i -s {scale}: {size} in {time.monotonic() - t:.0f} s")
    app, writer = _ha.start_app_writer(lab, params, name="bench-backup-latency", rate=rate, latency=True)
    return Bench(lab, params, cluster, app, writer)


def run_phases(b: Bench, *, quiet_s: float, rounds: int) -> list[dict[str, Any]]:
    """Per round: writes without a backup, a full backup, writes without, the other full backup, writes without
    (round 1 from the primary first, round 2 from the standby first: drift over the run falls on both alike).  Each
    backup's ratios are against the two quiet phases beside it (their writes together)."""
    marks: list[tuple[str, int, int, float | None]] = []
    time.sleep(3)  # the writer connected and steady

    def quiet_phase(name: str) -> None:
        t0 = hs.now_ms()
        time.sleep(quiet_s)
        marks.append((name, t0, hs.now_ms(), None))

    quiet_phase("none-1")
    for r in range(rounds):
        order = (("primary", False), ("standby", True)) if r % 2 == 0 else (("standby", True), ("primary", False))
        for i, (name, standby) in enumerate(order):
            time.sleep(1)
            t0 = hs.now_ms()
            took, said = b.backup(standby)
            marks.append((f"{name}-{r + 1}", t0, hs.now_ms(), round(took, 1)))
            log_line(f"full backup from the {name}: {took:.1f} s ({said})")
            time.sleep(1)
            quiet_phase(f"none-{r * 2 + i + 2}")
    log = b.writes()
    writes, errors = log.acks, log.errors
    rows = [phase_row(name, writes, errors, s, e, took) for name, s, e, took in marks]
    for i, row in enumerate(rows):
        if row["backup_s"] is None:
            continue
        # the quiet phases just before and after this backup, their writes together
        before = [w for w in writes if marks[i - 1][1] <= w.sent_ms < marks[i - 1][2]]
        after = [w for w in writes if marks[i + 1][1] <= w.sent_ms < marks[i + 1][2]]
        ref = phase_row("ref", before + after, [], 0, 2 ** 62, None)
        row["ref_p50_ms"], row["ref_p95_ms"] = ref["p50_ms"], ref["p95_ms"]
        row["p50_x"] = round(row["p50_ms"] / ref["p50_ms"], 2) if ref["p50_ms"] else None
        row["p95_x"] = round(row["p95_ms"] / ref["p95_ms"], 2) if ref["p95_ms"] else None
    for name in ("primary", "standby"):
        mine = [r for r in rows if r["phase"].startswith(name)]
        if len(mine) > 1:
            rows.append({"phase": f"{name} (mean)", "backup_s": round(statistics.fmean(r["backup_s"] for r in mine), 1),
                         **{k: round(statistics.fmean(r[k] for r in mine), 2)
                            for k in ("seconds", "p50_ms", "p95_ms", "p99_ms", "max_ms", "p50_x", "p95_x")},
                         "writes": sum(r["writes"] for r in mine), "errors": sum(r["errors"] for r in mine)})
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print_table(rows, ["phase", "backup_s", "seconds", "writes", "errors", "p50_ms", "p95_ms", "p99_ms", "max_ms",
                       "ref_p50_ms", "ref_p95_ms", "p50_x", "p95_x"],
                note="p50_x, p95_x: a backup's p50 and p95 against ref_p50_ms and ref_p95_ms, the writes of the phases "
                     "without a backup just before and after it, in the same run")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=100, help="pgbench scale of the data grown (15 MB a step)")
    ap.add_argument("--rate", type=float, default=50.0, help="the app's writes a second")
    ap.add_argument("--quiet", type=float, default=30.0, help="seconds of writes without a backup, before and after")
    ap.add_argument("--rounds", type=int, default=2, help="backups from the primary and from the standby, each")
    ap.add_argument("--json", default=None, help="the rows as JSON")
    ap.add_argument("--keep", action="store_true", help="leave the scratch lab up (its dir is printed)")
    a = ap.parse_args()
    lab = _ha.scratch_lab("hcbpg-lab-bench-backup-latency-", "bench/backup_latency.py")
    if lab is None:
        return 2
    b: Bench | None = None
    rows: list[dict[str, Any]] = []
    try:
        b = build(lab, a.rate, a.scale)
        rows = run_phases(b, quiet_s=a.quiet, rounds=a.rounds)
        app_load.stop_writer(b.app, b.writer)
    finally:
        _ha.end(lab, b, keep=a.keep)
    report(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
        print(f"json: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
