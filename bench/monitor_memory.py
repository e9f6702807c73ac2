"""``bench/monitor_memory.py``: Prometheus's memory and disk on the jumpbox at production's scrape interval (issue 25,
Performance: "Prometheus's memory on the jumpbox with production's scrape interval and 15 days of retention: measure
and state"), on a scratch lab of its own (own dir, bridge, subnets).

What runs: a primary through steps 02-04 (``tests/lab/stages.build_primary_stage``) with step 13's PostgreSQL
exporter, and a lab jumpbox; step 15b's code sets the monitor up (node exporter on both, Prometheus and Alertmanager
on the jumpbox, both exporters over TLS) with params' alerting section taking ``scrape_interval``,
``evaluation_interval`` and ``retention`` from ``params/production.yaml`` (30 s, 30 s, 15 d).  Then, on the jumpbox,
for ``--minutes``:

* **measured**: Prometheus with hcbpg's own config, rules and options (``desired.services.prometheus_service``: the
  same argv, a fresh data directory, plus ``--web.enable-admin-api`` for the snapshot below), in place of step 15b's
  (stopped for the run: the two would only scrape twice);
* **baseline**: the same Prometheus binary with no scrape job and no rule (its own port and data directory), started
  at the same time: the floor any Prometheus pays on this machine.

Read every ``--every`` seconds from each one's ``/metrics`` (curl on the jumpbox): ``process_resident_memory_bytes``
(RSS), ``prometheus_tsdb_head_series``, ``prometheus_tsdb_head_samples_appended_total``; at the end the samples each
target gave (``scrape_samples_scraped``) and the bytes per sample of a head snapshot (``POST
/api/v1/admin/tsdb/snapshot``: the head written as a block, its chunks' bytes over its ``meta.json`` numSamples; a
short run's chunks are far from full, so this over-states what 2 h blocks cost: Prometheus's own figure is 1-2 bytes
a sample, and both are printed).

Printed: RSS (end and max) and series of both, the ratio measured/baseline, the ingest rate, and for 15 days'
retention: disk (ingest rate x retention x bytes per sample, plus the WAL's ~3 h) and memory (the head block: RSS
grows with the series, which stay as they are, not with retention; the head's chunks past the newest are
memory-mapped files).  Also the same estimate for production's targets (``desired.alerting.scrape_targets`` of
params/production.yaml: node x3, postgres x2, patroni x2, etcd x3, Prometheus, Alertmanager) from the samples per
target measured here; this lab has no HA cluster, so etcd's are read from a throwaway single-member etcd on the
jumpbox's loopback (a lower bound: a member of three adds per-peer series) and Patroni's are counted from Patroni
3.0.4's source (21 a member).

From a fresh clone (Debian 12 or Ubuntu with the packages ``scripts/install.sh`` installs; root: network namespaces):

    sudo bash scripts/install.sh            # once: PostgreSQL 15, pgBackRest, Prometheus, the lab's tools, .venv
    sudo .venv/bin/python bench/monitor_memory.py [--minutes 10] [--every 30] [--json memory.json] [--keep]

About 2 min to build, then ``--minutes``; no asserts (figures only), exit 2 when the lab cannot run here.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _report import log_line  # noqa: E402

from hcbpg.adapters.host import Host  # noqa: E402
from hcbpg.adapters.secretstore import SecretStore  # noqa: E402
from hcbpg.adapters.services import ServiceControl  # noqa: E402
from hcbpg.desired import alerting as al  # noqa: E402
from hcbpg.desired import roles as desired_roles  # noqa: E402
from hcbpg.desired import server as desired_server  # noqa: E402
from hcbpg.desired.monitoring import parse_metrics  # noqa: E402
from hcbpg.desired.services import prometheus_service  # noqa: E402
from hcbpg.lab import Lab, create_server_host, deadman, destroy_server_host  # noqa: E402
from hcbpg.lab.core import lab_unavailable_reason, scratch_config  # noqa: E402
from hcbpg.ops import alerting as ops_alerting  # noqa: E402
from hcbpg.ops import cluster as pg_cluster  # noqa: E402
from hcbpg.ops import config as pg_config  # noqa: E402
from hcbpg.ops import monitoring, privileges  # noqa: E402
from hcbpg.params import Params, parse_params  # noqa: E402
from hcbpg.params_alerting import duration_s  # noqa: E402
from hcbpg.pg.services import ServiceSpec  # noqa: E402
from hcbpg.steps import alerting as step  # noqa: E402

from labparams import lab_params  # noqa: E402
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET, build_primary_stage  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
JUMPBOX = "hcb-jumpbox"
JUMPBOX_OFFSET = 58
BASELINE_CONFIG = "/etc/prometheus/hcbpg-bench-baseline.yml"
MEASURED_DATA = "/var/lib/prometheus/hcbpg-bench-measured"
BASELINE_DATA = "/var/lib/prometheus/hcbpg-bench-baseline"
#: Patroni 3.0.4's /metrics: 21 series a member, one sample each (patroni/api.py, get_metrics: counted from the
#: source, not scraped: no HA cluster in this lab)
PATRONI_SAMPLES = 21
#: the head block holds up to this many hours of samples before they go to a block on disk (2 h blocks, cut at 1.5x)
HEAD_HOURS = 3.0


def production_alerting() -> dict[str, Any]:
    """params/production.yaml's alerting section (its intervals and retention are what is measured)."""
    return dict(yaml.safe_load((REPO / "params" / "production.yaml").read_text())["alerting"])


@dataclass
class Setup:
    lab: Lab
    params: Params
    hosts: dict[str, Host]
    receiver: deadman.Receiver
    tmp: Path


def build(lab: Lab, tmp: Path, prod: dict[str, Any]) -> Setup:
    """The lab, the primary with step 13's exporter, the jumpbox, and step 15b's monitor (production's intervals)."""
    t0 = time.monotonic()
    lab.up(source_rows=1000)
    stage = build_primary_stage(lab, tmp / "stages")
    stage.clone()
    cfg = lab.cfg
    jb_ip = cfg.address(JUMPBOX_OFFSET)
    create_server_host(JUMPBOX, jb_ip, [lab.ssh_key.with_suffix(".pub").read_text()], lab_dir=str(lab.lab_dir))
    # the lab's receiver (hcbpg.lab.deadman, as the alerting lab modules start it) with production's settings
    receiver = deadman.start_receiver(cfg.gateway_ip, tmp, settings={
        k: prod[k] for k in ("scrape_interval", "evaluation_interval", "retention", "for_duration", "group_wait",
                             "group_interval", "repeat_interval", "heartbeat_interval") if k in prod})
    params = parse_params(lab_params(lab, [(STAGE_PRIMARY, cfg.address(STAGE_PRIMARY_OFFSET), "primary")],
                                     jumpbox={"name": JUMPBOX, "private_ip": jb_ip, "ssh_host": jb_ip},
                                     alerting=receiver.alerting_section()))
    hosts = {STAGE_PRIMARY: Host.from_params(params, STAGE_PRIMARY, params.primary.private_ip),
             JUMPBOX: Host.from_params(params, JUMPBOX, jb_ip)}
    for h in hosts.values():
        h.echo = lambda _text: None
    # step 13: the exporter's role, its pg_hba line, the exporter
    roles = desired_roles.roles_config(params)
    s = params.primary
    privileges.ensure_role_secrets(SecretStore(), roles)
    pg_config.ensure_pg_hba(hosts[s.name], params, s, extra=desired_server.all_hba_extra(params, s, roles))
    privileges.ensure_privileges(pg_cluster.get_psql(hosts[s.name], params), roles)
    assert roles.exporter is not None
    monitoring.ensure_exporter(hosts[s.name], params, s, roles,
                               privileges.get_role_password(SecretStore(), roles, roles.exporter.name))
    # step 15b
    mh = step.MonitorHosts({STAGE_PRIMARY: hosts[STAGE_PRIMARY]}, hosts[JUMPBOX], JUMPBOX)
    step.setup_alerting(mh, params, step.resolve_secrets(params), dry_run=False)
    targets = ops_alerting.wait_for_targets_up(hosts[JUMPBOX], params, timeout=300)
    log_line(f"built in {time.monotonic() - t0:.0f} s; step 15b's Prometheus: every target up "
             f"({', '.join(sorted(f'{t.job}/{t.server}' for t in targets))})")
    return Setup(lab, params, hosts, receiver, tmp)


def specs(params: Params) -> tuple[ServiceSpec, ServiceSpec]:
    """(measured, baseline): hcbpg's Prometheus on a fresh data directory with the admin API, and the same binary
    with no scrape job on the next port."""
    real = prometheus_service(params)
    argv = tuple(a for a in real.argv if not a.startswith("--storage.tsdb.path="))
    measured = replace(real, name="hcbpg-bench-prometheus",
                       argv=(*argv, f"--storage.tsdb.path={MEASURED_DATA}", "--web.enable-admin-api"),
                       log_file="/var/log/prometheus/hcbpg-bench-measured.log")
    a = al.alerting_params(params)
    baseline = replace(real, name="hcbpg-bench-prometheus-baseline",
                       argv=("/usr/bin/prometheus", f"--config.file={BASELINE_CONFIG}",
                             f"--storage.tsdb.retention.time={a.retention}",
                             f"--web.listen-address=127.0.0.1:{baseline_port(params)}",
                             f"--storage.tsdb.path={BASELINE_DATA}"),
                       log_file="/var/log/prometheus/hcbpg-bench-baseline.log")
    return measured, baseline


def baseline_port(params: Params) -> int:
    return al.alerting_params(params).prometheus_port + 100


def metrics(jb: Host, port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    res = jb.probe(f"curl -sS --fail --max-time 10 http://127.0.0.1:{port}/metrics")
    return parse_metrics(res.stdout) if res.ok else {}


def first(m: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    vals = m.get(name)
    return vals[0][1] if vals else None


@dataclass
class Series:
    """One Prometheus's readings over the run."""

    t: list[float] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    head_series: list[float] = field(default_factory=list)
    appended: list[float] = field(default_factory=list)

    def add(self, t: float, m: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        rss, series = first(m, "process_resident_memory_bytes"), first(m, "prometheus_tsdb_head_series")
        appended = sum(v for _, v in m.get("prometheus_tsdb_head_samples_appended_total", []))
        if rss is None or series is None:
            return
        self.t.append(t)
        self.rss.append(rss)
        self.head_series.append(series)
        self.appended.append(appended)

    def rate(self) -> float:
        """Samples appended a second over the run (after the first reading)."""
        if len(self.t) < 2 or self.t[-1] <= self.t[0]:
            return 0.0
        return (self.appended[-1] - self.appended[0]) / (self.t[-1] - self.t[0])


def query(jb: Host, port: int, promql: str) -> list[dict[str, Any]]:
    res = jb.probe(shlex.join(["curl", "-sS", "--fail", "--max-time", "10", "--data-urlencode", f"query={promql}",
                               f"http://127.0.0.1:{port}/api/v1/query"]))
    return list(json.loads(res.stdout)["data"]["result"]) if res.ok else []


def snapshot_bytes_per_sample(jb: Host, port: int) -> dict[str, float]:
    """The head written as a block (admin API snapshot): its chunks' bytes and its whole size over its samples."""
    res = jb.run(f"curl -sS --fail --max-time 60 -XPOST http://127.0.0.1:{port}/api/v1/admin/tsdb/snapshot",
                 quiet=True)
    name = json.loads(res.stdout)["data"]["name"]
    snap = f"{MEASURED_DATA}/snapshots/{name}"
    out: dict[str, float] = {"samples": 0.0, "series": 0.0, "chunk_bytes": 0.0, "block_bytes": 0.0}
    for meta_path in jb.probe(f"ls {shlex.quote(snap)}/*/meta.json").stdout.split():
        meta = json.loads(jb.read_text(meta_path) or "{}")
        block = meta_path.rsplit("/", 1)[0]
        out["samples"] += float(meta.get("stats", {}).get("numSamples", 0))
        out["series"] += float(meta.get("stats", {}).get("numSeries", 0))
        out["chunk_bytes"] += float(jb.probe(f"du -sb {shlex.quote(block)}/chunks").stdout.split()[0])
        out["block_bytes"] += float(jb.probe(f"du -sb {shlex.quote(block)}").stdout.split()[0])
    return out


def etcd_samples(jb: Host) -> float | None:
    """Samples of one etcd member's /metrics: a throwaway single-member etcd (Debian's etcd-server, the one hcbpg
    runs) on the jumpbox's loopback, read once and stopped.  A lower bound for a member of three (per-peer series)."""
    d = "/tmp/hcbpg-bench-etcd"
    # only etcd goes to the background, every descriptor redirected: the SSH session ends with the echo
    res = jb.run(f"rm -rf {d}; setsid /usr/bin/etcd --name bench --data-dir {d} "
                 "--listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 "
                 "--listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 "
                 f"--initial-cluster bench=http://127.0.0.1:23800 >{d}.log 2>&1 </dev/null & echo $!", quiet=True,
                 timeout=60)
    pid = res.stdout.strip()
    try:
        for _ in range(60):
            got = jb.probe("curl -sS --fail --max-time 5 http://127.0.0.1:23790/metrics")
            if got.ok and "etcd_server_has_leader 1" in got.stdout:
                return float(sum(1 for line in got.stdout.splitlines() if line and not line.startswith("#")))
            time.sleep(0.5)
        return None
    finally:
        if pid.isdigit():
            jb.run(f"kill {pid}; sleep 1; rm -rf {d} {d}.log", check=False, quiet=True, timeout=60)


def du(jb: Host, path: str) -> float:
    res = jb.probe(f"du -sb {shlex.quote(path)}")
    return float(res.stdout.split()[0]) if res.ok and res.stdout.split() else 0.0


def measure(s: Setup, minutes: float, every: float) -> dict[str, Any]:
    jb = s.hosts[JUMPBOX]
    params = s.params
    a = al.alerting_params(params)
    control = ServiceControl.of(jb)
    measured, baseline = specs(params)
    control.ensure_stopped(prometheus_service(params))  # step 15b's: the measured one takes its port and config
    jb.put_text(BASELINE_CONFIG, yaml.safe_dump({"global": {"scrape_interval": a.scrape_interval,
                                                            "evaluation_interval": a.evaluation_interval}}),
                mode=0o644)
    for d in (MEASURED_DATA, BASELINE_DATA):
        jb.run(f"rm -rf {d} && install -d -o prometheus -g prometheus -m 0750 {d}")
    t0 = time.time()
    control.ensure_running(measured, wait_s=60)
    control.ensure_running(baseline, wait_s=60)
    port, bport = a.prometheus_port, baseline_port(params)
    readings = {"measured": Series(), "baseline": Series()}
    end = t0 + minutes * 60
    try:
        while True:
            now = time.time()
            readings["measured"].add(now - t0, metrics(jb, port))
            readings["baseline"].add(now - t0, metrics(jb, bport))
            m, b = readings["measured"], readings["baseline"]
            if m.rss and b.rss:
                log_line(f"t={now - t0:5.0f}s measured RSS {m.rss[-1] / 2**20:6.1f} MiB, {m.head_series[-1]:.0f} "
                         f"series | baseline RSS {b.rss[-1] / 2**20:6.1f} MiB, {b.head_series[-1]:.0f} series")
            if now >= end:
                break
            time.sleep(min(every, max(0.0, end - time.time())))
        per_target = [{"job": r["metric"].get("job", ""), "server": r["metric"].get("server", ""),
                       "samples": float(r["value"][1])} for r in query(jb, port, "scrape_samples_scraped")]
        snap = snapshot_bytes_per_sample(jb, port)
        wal = du(jb, f"{MEASURED_DATA}/wal")
        etcd = etcd_samples(jb)
        disk = du(jb, MEASURED_DATA) - du(jb, f"{MEASURED_DATA}/snapshots")
    finally:
        for spec in (measured, baseline):
            control.ensure_stopped(spec)
        ops_alerting.ensure_monitor_running(jb, params)  # step 15b's again
    return {"interval_s": duration_s(a.scrape_interval), "retention": a.retention, "minutes": minutes,
            "measured": readings["measured"].__dict__, "baseline": readings["baseline"].__dict__,
            "ingest_per_s": readings["measured"].rate(), "per_target": per_target, "snapshot": snap,
            "wal_bytes": wal, "data_bytes": disk, "etcd_samples": etcd}


def production_targets() -> dict[str, int]:
    prod = parse_params(yaml.safe_load((REPO / "params" / "production.yaml").read_text()))
    return {job: len(pairs) for job, pairs in al.scrape_targets(prod).items()}


def mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def report(r: dict[str, Any]) -> None:
    m, b = r["measured"], r["baseline"]
    interval, retention_s = r["interval_s"], duration_s(r["retention"])
    series, base_series = m["head_series"][-1], b["head_series"][-1]
    rss, base_rss = m["rss"][-1], b["rss"][-1]
    ingest = r["ingest_per_s"] or series / interval
    snap = r["snapshot"]
    bps_chunks = snap["chunk_bytes"] / snap["samples"] if snap["samples"] else float("nan")
    bps_block = snap["block_bytes"] / snap["samples"] if snap["samples"] else float("nan")
    samples_15d = ingest * retention_s
    wal_3h = r["wal_bytes"] / max(m["t"][-1], 1.0) * HEAD_HOURS * 3600
    print(f"\nPrometheus on the lab jumpbox, scrape every {interval:g} s, {r['minutes']:g} min "
          f"({len(m['t'])} readings)")
    print(f"  measured (hcbpg's config: primary + jumpbox): RSS {mib(rss)} at the end, max {mib(max(m['rss']))}; "
          f"{series:.0f} head series; {ingest:.1f} samples/s")
    print(f"  baseline (no target, no rule):                RSS {mib(base_rss)} at the end, max "
          f"{mib(max(b['rss']))}; {base_series:.0f} head series")
    print(f"  ratio measured/baseline: RSS {rss / base_rss:.2f}x; above the baseline {mib(rss - base_rss)}, "
          f"{(rss - base_rss) / max(series, 1):.0f} bytes a series")
    print(f"  bytes per sample (a snapshot of the head, {snap['samples']:.0f} samples, {snap['series']:.0f} series): "
          f"{bps_chunks:.2f} in chunks, {bps_block:.2f} with the index (a short run's chunks are nearly empty: an "
          f"upper bound; Prometheus's 2 h blocks take 1-2)")
    print(f"  on disk now: {mib(r['data_bytes'])} (WAL {mib(r['wal_bytes'])})")
    for label, bps in (("measured bytes/sample", bps_chunks), ("2 bytes/sample", 2.0)):
        disk = samples_15d * bps + wal_3h
        print(f"  15 days ({r['retention']}) on disk, {label}: {samples_15d / 1e6:.0f} M samples -> "
              f"{mib(disk)} (blocks {mib(samples_15d * bps)} + WAL ~{HEAD_HOURS:g} h {mib(wal_3h)})")
    print(f"  15 days in memory: the head holds <= {HEAD_HOURS:g} h of samples and every series; RSS grows with the "
          f"series, not the retention: ~{mib(rss)} for {series:.0f} series (+ the head's "
          f"{mib(ingest * HEAD_HOURS * 3600 * 2)} of chunks at 2 bytes/sample, memory-mapped files the kernel may "
          f"page out)")
    jobs: dict[str, list[float]] = {}
    for t in r["per_target"]:
        jobs.setdefault(t["job"], []).append(t["samples"])
    print("  samples per scrape, per target: " + ", ".join(
        f"{j} {sum(v) / len(v):.0f}" for j, v in sorted(jobs.items())))
    prod = production_targets()
    per_target = {j: sum(v) / len(v) for j, v in jobs.items()}
    per_target["patroni"] = float(PATRONI_SAMPLES)
    if r.get("etcd_samples"):
        per_target["etcd"] = float(r["etcd_samples"])
    est_series = sum(n * per_target[j] for j, n in prod.items() if j in per_target)
    rest = {j: n for j, n in prod.items() if j not in per_target}
    per_series = (rss - base_rss) / max(series, 1)
    etcd_text = f"{r['etcd_samples']:.0f}" if r.get("etcd_samples") else "?"
    print(f"  production's targets ({', '.join(f'{j} x{n}' for j, n in prod.items())}): measured here per target, "
          f"patroni {PATRONI_SAMPLES} (Patroni 3.0.4's source), etcd "
          f"{etcd_text} (one member alone: a lower bound) -> ~{est_series:.0f} series -> RSS "
          f"~{mib(base_rss + per_series * est_series)} ({(base_rss + per_series * est_series) / base_rss:.2f}x the "
          f"baseline), 15 days on disk ~{mib(est_series / interval * retention_s * 2.0)} at 2 bytes/sample"
          + (f"; not estimated: {', '.join(rest)}" if rest else ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long both run (default 10)")
    ap.add_argument("--every", type=float, default=30.0, help="seconds between readings (default 30)")
    ap.add_argument("--json", default=None, help="every reading and figure")
    ap.add_argument("--keep", action="store_true", help="leave the scratch lab up (its dir is printed)")
    a = ap.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"bench/monitor_memory.py: cannot run here: {reason}")
        return 2
    Lab.sweep_scratch()
    lab = Lab(scratch_config("hcbpg-lab-bench-monitor-").lab_dir)
    tmp = Path(tempfile.mkdtemp(prefix="hcbpg-bench-monitor-"))
    s: Setup | None = None
    try:
        s = build(lab, tmp, production_alerting())
        r = measure(s, a.minutes, a.every)
    finally:
        if s is not None:
            for h in s.hosts.values():
                h.close()
            s.receiver.stop()
        shutil.rmtree(tmp, ignore_errors=True)  # the stage's snapshot, the receiver's log and secret URLs
        if a.keep:
            print(f"lab kept: {lab.lab_dir}")
        else:
            for name in (STAGE_PRIMARY, JUMPBOX):
                try:
                    destroy_server_host(name, lab_dir=str(lab.lab_dir))
                except Exception as exc:  # noqa: BLE001 - a host the build never made
                    print(f"(no {name} to remove: {exc})")
            lab.down(purge=True)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
        print(f"json: {a.json}")
    report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
