"""Time to bring up the rehearsal lab with four hosts, against a bare baseline measured
in the same run.

    python bench/lab.py [--source-rows N | --source-mb N] [--repeat 2]

Lab: ``Lab.up()`` (bridge, router + outsider, S3 store, API stand-in when present,
app and source hosts, source cluster created and seeded) plus two server hosts made
with ``create_server_host`` (what the provisioning notebook triggers) = four hosts.

Baseline: for four hosts, only ``ip netns add`` + a veth on a bridge + a mount namespace
holding an overlay of / (no keys, no sshd, no PostgreSQL, no services): the floor that
any lab of namespaces pays.  Needs root; runs beside any other lab (own dir, bridge and
subnet); prints timings, no asserts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hcbpg.lab import Lab, create_server_host  # noqa: E402
from hcbpg.lab.core import lab_unavailable_reason, run, scratch_config  # noqa: E402
from hcbpg.lab.hosts import remove_tree  # noqa: E402

HOSTS = ("app", "source", "server-postgres-1", "server-postgres-2")


def baseline() -> float:
    """Seconds for four bare namespaces + veth + overlay of / (then torn down, untimed)."""
    cfg = scratch_config("hcbpg-lab-bench-base-")
    d = cfg.lab_dir
    t0 = time.perf_counter()
    run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{cfg.gateway_ip}/24", "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])
    holders = []
    for i, name in enumerate(HOSTS):
        ns, ip = cfg.netns(name), cfg.address(30 + i)
        veth = cfg.veth(ip)
        for sub in ("upper", "work", "merged"):
            (d / name / sub).mkdir(parents=True)
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "ens10", "netns", ns])
        run(["ip", "link", "set", veth, "master", cfg.bridge, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "ens10"])
        run(["ip", "-n", ns, "link", "set", "ens10", "up"])
        ready = d / name / "ready"
        holders.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "--",
             "/bin/sh", "-c", 'mount -t overlay overlay -o "lowerdir=/,upperdir=$1/upper,workdir=$1/work" '
             '"$1/merged" && : > "$1/ready" && exec sleep 600', "bench", str(d / name)]))
        while not ready.exists():
            time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    for p in holders:
        p.kill()
        p.wait()
    for name in HOSTS:
        run(["ip", "netns", "del", cfg.netns(name)], check=False)
    run(["ip", "link", "del", cfg.bridge], check=False)
    remove_tree(d)
    return elapsed


def lab_cycle(rows: int | None, mb: float | None) -> dict[str, float]:
    cfg = scratch_config("hcbpg-lab-bench-")
    lab = Lab(cfg.lab_dir)
    out: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        lab.up(source_rows=rows, source_mb=mb)
        out["up (app, source, services)"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        key = [lab.ssh_key.with_suffix(".pub").read_text()]
        create_server_host("server-postgres-1", cfg.address(5), key, lab_dir=str(cfg.lab_dir))
        create_server_host("server-postgres-2", cfg.address(6), key, lab_dir=str(cfg.lab_dir))
        out["two server hosts"] = time.perf_counter() - t1
        out["lab with four hosts"] = time.perf_counter() - t0
        st = lab.status()
        out["source seeding (in up)"] = float(_state_source_seconds(lab))
        out["source rows"] = float(st["source"].get("rows", 0))
    finally:
        t2 = time.perf_counter()
        lab.down(purge=True)
        out["down"] = time.perf_counter() - t2
        left = lab.leftovers()
        if left:
            print(f"  leftovers after down: {left}")
    return out


def _state_source_seconds(lab: Lab) -> float:
    import json
    try:
        return json.loads(lab.cfg.state_file.read_text()).get("source", {}).get("seconds", 0.0)
    except (OSError, ValueError):
        return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--source-rows", type=int, default=None)
    g.add_argument("--source-mb", type=float, default=None)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    reason = lab_unavailable_reason()
    if reason:
        print(f"bench/lab.py: cannot run here: {reason}")
        return 2
    bases, runs = [], []
    for i in range(a.repeat):
        bases.append(baseline())
        runs.append(lab_cycle(a.source_rows, a.source_mb))
        r = runs[-1]
        print(f"run {i + 1}: baseline {bases[-1]:.2f}s | " +
              " | ".join(f"{k} {v:.0f}" if k == "source rows" else f"{k} {v:.2f}s" for k, v in r.items()))
    base = statistics.median(bases)
    four = statistics.median(r["lab with four hosts"] for r in runs)
    down = statistics.median(r["down"] for r in runs)
    print(f"baseline (4 x netns + veth + overlay, no services): {base:.2f}s (median of {len(bases)})")
    print(f"lab up with four hosts (target < 20 s):              {four:.2f}s (median of {len(runs)})")
    print(f"lab down:                                           {down:.2f}s")
    seed = statistics.median(r["source seeding (in up)"] for r in runs)
    print(f"  of which source cluster + seeding:                {seed:.2f}s")
    print(f"ratio lab / baseline:                               {four / base:.1f}x")
    print(f"ratio lab without source seeding / baseline:        {(four - seed) / base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
