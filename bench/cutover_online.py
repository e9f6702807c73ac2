"""``bench/cutover.py --online``: the downtime of the offline transfer (today's default) against the
online one (Bucardo), per source size, in one run on a scratch lab of its own.

For each size (``--sizes 250,1024,2048`` MB): a lab whose Heroku-like source has about that size, a
primary prepared by steps 02-04, then

* offline: maintenance on → the source quiet → the sentinel → the transfer as 07 runs it (streamed,
  verified, sentinel read back from the app host), gates approved at once;
* online: Bucardo installed, the schema, the initial copy, the way back armed, then a steady write load
  from the app host (the lab's app, :mod:`hcbpg.lab.app_load`: inserts into events, updates of
  transactions, ``--rate`` a second, each logged after its commit) for ``--sync-s`` seconds of
  continuous sync; maintenance on stops the load; the window as 07 runs it (drift guard, drain,
  sequences, keyless copies, the window's checks with the sentinel read back from the app host, the
  snapshots held); then, traffic on, the exact count of every row in those snapshots as 09b runs it
  (timed, not downtime); the lag when the window opened, the drain time, and the rows lost (every
  logged write must be on the primary); then the clean-up.

The clock runs from maintenance-on until traffic may go on: offline, the primary restored and verified;
online, the window's end. What both modes then share (07's password roll, 09's switch) is not counted.

Prints a table with the ratios online/offline and the slope of each downtime against size (s per GB),
and writes a PNG plot of downtime against size (``--plot``).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "lab"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_table, pyplot, quiet, save_figure  # noqa: E402

from hcbpg.adapters.host import Host  # noqa: E402
from hcbpg.lab import Lab, app_load, create_server_host  # noqa: E402
from hcbpg.lab.core import scratch_config  # noqa: E402
from hcbpg.lab.source import plan_size  # noqa: E402
from hcbpg.ops import cluster as pg_cluster  # noqa: E402
from hcbpg.ops import migration  # noqa: E402
from hcbpg.ops import tls as tls_ops  # noqa: E402
from hcbpg.ops.migration import bucardo, wayback, window  # noqa: E402
from hcbpg.params import parse_params  # noqa: E402
from hcbpg.secrets import register  # noqa: E402
from hcbpg.steps import _migration as migration_steps  # noqa: E402
from hcbpg.steps import allow_connections as allow_step  # noqa: E402
from hcbpg.steps import app_role_database as role_step  # noqa: E402
from hcbpg.steps import install_postgres as install_step  # noqa: E402
from hcbpg.steps import online  # noqa: E402

from labparams import lab_params  # noqa: E402

BYTES_PER_ROW = 200  # pg_database_size / rows of the lab source, measured (as bench/cutover.py)


def prepare(lab: Lab, rows: int, *, reuse: bool = False) -> tuple[Any, Host, Host, str, str]:
    """The lab up with a source of *rows* rows and a primary prepared by steps 02-04; *reuse*: a lab
    already up with that source is kept (its primary is made ready again), any other is taken down first."""
    st = lab.status()
    if st["up"] and not (reuse and st["source"].get("rows") == plan_size(rows).rows):
        lab.down()
    lab.up(source_rows=rows)
    cfg = lab.cfg
    ip = cfg.address(61)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    create_server_host("server-postgres-1", ip, [key], lab_dir=str(lab.lab_dir))
    data = lab_params(lab, [("server-postgres-1", ip, "primary")],
                      source={"method": "pg_dump", "url": f"file:{cfg.secret_path('source-url')}", "jobs": 2,
                              "online": {"drain_timeout_s": 120, "initial_copy_timeout_s": 4 * 3600}},
                      allow_destructive=True)
    params = parse_params(data)
    host = Host.from_params(params, params.primary.name, ip, echo=quiet)
    app = Host.from_params(params, "app", cfg.app_ip, echo=quiet)
    password = register(lab.secret("rails-password"))
    url = register(lab.secret("source-url"))
    install_step.install_server(host, params, params.primary)
    allow_step.allow_connections(host, params, params.primary)
    tls_ops.ensure_client_ca(app, params)  # the app host verifies the primary's certificate
    role_step.app_role_database(pg_cluster.get_psql(host, params), params, password)
    app.put_text(app_load.SERVICE_FILE, app_load.render_service_file(migration.parse_source_url(url)), mode=0o600)
    return params, host, app, password, url


def offline(params: Any, host: Host, app: Host, password: str, url: str) -> float:
    """maintenance-on → traffic-on of the default transfer, gates approved at once."""
    t0 = time.monotonic()
    source = migration.Source(host, url)
    with source:
        migration.wait_for_source_quiet(source)
        sentinel = migration.sentinel_value("bench-offline")
        migration.run_sentinel_write(source, params, sentinel)
        plan = migration.get_migration_plan(host, params, source)
        res = migration_steps.run_migration(host, params, source, plan.facts, tag="bench", run_label="bench offline",
                                      live_source=False, app=app, password=password, sentinel_expect=sentinel)
    t = time.monotonic() - t0
    bad = [c for c in res.verification.checks if c.status == "fail"]
    if bad:
        raise SystemExit(f"offline: verification failed: {bad}")
    return t


def online_run(params: Any, host: Host, app: Host, password: str, url: str, *, rate: float,
               sync_s: float, initial_copy: str = "stream") -> dict[str, Any]:
    online_cfg = params.source.online.model_copy(update={"initial_copy": initial_copy})
    src = params.source.model_copy(update={"transfer": "online", "online": online_cfg})
    params = params.model_copy(update={"source": src})
    source = migration.Source(host, url)
    with source:
        t = time.monotonic()
        bucardo.ensure_bucardo(host, params, source)
        online.run_schema_copy(host, params, source, run_label="bench online")
        plan = bucardo.get_sync_plan(source, params)
        users, transactions = source.json("SELECT json_build_array((SELECT count(*) FROM public.users), "
                                          "(SELECT count(*) FROM public.transactions))")
        app.run(app_load.render_start(rate, users=users, transactions=transactions),
                display=f"start the write load ({rate:g}/s inserts and updates)")
        bucardo.ensure_forward_sync(host, params, source, plan)
        if initial_copy == "stream":
            online.run_initial_stream(host, params, source, run_label="bench online")
        bucardo.wait_for_initial_copy(host, params, source, plan, interval=1)
        wayback.ensure_way_back_armed(host, params, source, plan)
        copy_s = time.monotonic() - t
        time.sleep(sync_s)  # the continuous sync under the load
        lag_open = bucardo.get_lag(source, plan.synced)  # the lag as maintenance goes on, the load still running
        # maintenance on: the load stops
        t0 = time.monotonic()
        app.run(app_load.STOP_COMMAND, display="stop the load")
        t1 = time.monotonic()
        migration.wait_for_source_quiet(source)
        t2 = time.monotonic()
        sentinel = migration.sentinel_value("bench-online")
        migration.run_sentinel_write(source, params, sentinel)
        t3 = time.monotonic()
        ver, phases, _, _ = online.run_window(host, params, source, app=app, password=password,
                                              sentinel_expect=sentinel)
        downtime = time.monotonic() - t0
        phases = {"load_stop_s": round(t1 - t0, 3), "source_quiet_s": round(t2 - t1, 3),
                  "sentinel_s": round(t3 - t2, 3), **phases,
                  "window_other_s": round(time.monotonic() - t3 - sum(v for k, v in phases.items()
                                                                      if k.endswith("_s") and "lag" not in k), 3)}
        bad = [c for c in ver.checks if c.status == "fail"]
        if bad:
            raise SystemExit(f"online: the window's checks failed: {bad}")
        # traffic is on now: the exact count of every row, in the snapshots held since the window (09b)
        t4 = time.monotonic()
        exact = window.check_held_rows(host, params, source)
        exact_s = time.monotonic() - t4
        bad = [c for c in exact.checks if c.status == "fail"]
        if bad:
            raise SystemExit(f"online: the exact count after traffic-on failed: {bad}")
        log = app_load.parse_log(app.read_text(app_load.LOG) or "")
        lost = len(app_load.check_on_primary(log, migration.get_target(host, params).json))
        wayback.run_cleanup(host, params, source)
    return {"downtime_s": downtime, "lag_rows": lag_open["rows"], "lag_s": lag_open["seconds"],
            "drain_s": phases["drain_s"], "phases": phases, "writes": log.writes, "lost": lost,
            "copy_s": copy_s, "initial_copy": initial_copy, "exact_after_traffic_s": round(exact_s, 3),
            "rows_counted": sum(exact.target.rows.values())}


def slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    mx, my = statistics.mean(xs), statistics.mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def run(sizes: list[float], *, rate: float, sync_s: float, plot: str, out_json: str | None, keep: bool,
        initial_copy: str = "stream") -> None:
    """Per size: the offline downtime, then the online run with each initial copy asked for (``both``:
    Bucardo's onetimecopy, then the stream; the table and plot show the last)."""
    copies = ["bucardo", "stream"] if initial_copy == "both" else [initial_copy]
    lab = Lab(scratch_config("hcbpg-lab-bench-online-").lab_dir)
    results = []
    try:
        for mb in sizes:
            rows = int(mb * 1024 ** 2 / BYTES_PER_ROW)
            t = time.monotonic()
            params, host, app, password, url = prepare(lab, rows)
            with migration.Source(host, url) as s:
                size = migration.get_source_facts(s)["size_bytes"] / 1024 ** 2
            print(f"== {mb:g} MB asked: source {size:.0f} MB, lab and primary ready in {time.monotonic() - t:.0f}s")
            off = offline(params, host, app, password, url)
            print(f"  offline downtime {off:.1f}s")
            runs = {c: online_run(params, host, app, password, url, rate=rate, sync_s=sync_s, initial_copy=c)
                    for c in copies}
            on = runs[copies[-1]]
            on["initial_copy_s"] = {c: round(r["copy_s"], 1) for c, r in runs.items()}
            print("  initial copy (Bucardo installed, schema, copy, caught up): "
                  + ", ".join(f"{c} {r['copy_s']:.1f}s ({r['lost']} lost)" for c, r in runs.items()))
            print(f"  online downtime {on['downtime_s']:.1f}s (lag at maintenance-on {on['lag_rows']} rows, {on['lag_s']:.1f}s; "
                  f"drain {on['drain_s']:.1f}s; {on['writes']} writes, {on['lost']} lost; initial copy "
                  f"{on['copy_s']:.0f}s; exact count after traffic-on {on['exact_after_traffic_s']:.1f}s of "
                  f"{on['rows_counted']} rows; phases {on['phases']})")
            results.append({"mb": size, "offline_s": off, **on})
            host.close()
            app.close()
    finally:
        if not keep:
            lab.down(purge=True)
    if out_json:
        Path(out_json).write_text(json.dumps(results, indent=2, default=str))
    report(results, plot)


def report(results: list[dict[str, Any]], plot: str) -> None:
    """The table (ratios, slopes) and the PNG plot of downtime against size."""
    results = sorted(results, key=lambda r: r["mb"])
    print_table([{**r, "on_off": r["downtime_s"] / r["offline_s"], "lag_rows": int(r["lag_rows"]),
                  "exact_after_traffic_s": r.get("exact_after_traffic_s", float("nan"))} for r in results],
                ["mb", "offline_s", "downtime_s", "on_off", "lag_rows", "lag_s", "drain_s", "writes", "lost",
                 "exact_after_traffic_s"],
                formats={"mb": ".0f", "offline_s": ".1f", "downtime_s": ".1f", "on_off": ".2f", "lag_s": ".1f",
                         "drain_s": ".2f", "exact_after_traffic_s": ".1f"},
                headers={"mb": "source MB", "offline_s": "offline s", "downtime_s": "online s", "on_off": "on/off",
                         "lag_rows": "lag rows", "lag_s": "lag s", "drain_s": "drain s",
                         "exact_after_traffic_s": "exact count after traffic-on s"})
    gb = [r["mb"] / 1024 for r in results]
    print(f"slope: offline {slope(gb, [r['offline_s'] for r in results]):.1f} s/GB, "
          f"online {slope(gb, [r['downtime_s'] for r in results]):.2f} s/GB (target: online <= 10 s, flat)")
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["mb"] for r in results], [r["offline_s"] for r in results], "o-", label="offline (stream, default)")
    ax.plot([r["mb"] for r in results], [r["downtime_s"] for r in results], "s-", label="online (Bucardo)")
    ax.set_xlabel("source size (MB)")
    ax.set_ylabel("downtime: maintenance-on to traffic may go on (s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, plot)


def report_files(paths: list[str], plot: str) -> None:
    """The table and plot of earlier runs' --json files together (sizes measured in separate runs)."""
    report([r for p in paths for r in json.loads(Path(p).read_text())], plot)
