"""Cutover time on the lab: the runbook's procedure vs ours (as 06/07 run it) vs pgcopydb clone.

Builds a lab whose Heroku-like source has about ``--source-mb`` MB (default 1024), a primary
prepared by steps 02-04, then in one run, on the same lab:

* runbook: ``pg_dump -Fc`` with one process on the operator's machine, the file copied to the
  primary (scp), ``pg_restore`` with one job (``--no-owner --no-acl``, as rails);
* ours: :func:`hcbpg.steps._migration.run_migration` exactly as the notebooks call it (the default
  ``source.transfer: stream``: schema in an exported snapshot, each table's rows piped from the
  source, its indexes and keys built right after them, then the foreign keys; restore-time
  settings, ANALYZE); verification is timed on its own.  ``--directory`` also times the other
  transfer (pg_dump -Fd -j N on the primary, then pg_restore -j N);
* pgcopydb: ``pgcopydb clone`` (Debian package) on the primary with the same number of jobs.

Prints each time, the ratios ours/runbook and ours/pgcopydb (each round's and the medians'), the
load average, and checks the row counts of every table after each.  The lab is a scratch lab of its
own (own directory, bridge and subnets, beside any other lab; taken down at the end).  As root, from a
clone where ``bash scripts/rehearse`` or ``bash scripts/test`` installed the packages (pgcopydb too):

    .venv/bin/python bench/cutover.py [--source-mb 1024] [--rounds 3] [--only runbook,ours,pgcopydb]
                                      [--directory] [--json FILE] [--keep-lab] [--lab-dir DIR]

``--keep-lab`` leaves the lab up and ``--lab-dir DIR`` uses it again (no new seeding) while the
source has the size asked for.

``--online`` measures instead the downtime of the offline transfer against the online one (Bucardo),
per size, on a scratch lab of its own (see ``bench/cutover_online.py``):

    python bench/cutover.py --online [--sizes 250,1024,2048] [--rate 10] [--sync-s 30] [--plot FILE.png]
                            [--initial-copy stream|bucardo|both]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cutover_online  # noqa: E402 - the scratch lab and primary, shared with --online

from hcbpg.adapters.host import Host  # noqa: E402
from hcbpg.adapters.psql import Psql  # noqa: E402
from hcbpg.lab import Lab, lab_unavailable_reason  # noqa: E402
from hcbpg.lab.core import atomic_write, pid_alive, proc_starttime, scratch_config  # noqa: E402
from hcbpg.ops import cluster as pg_cluster  # noqa: E402
from hcbpg.ops import migration  # noqa: E402
from hcbpg.steps import _migration as migration_steps  # noqa: E402

#: pg_database_size / rows of the lab source, measured (the lab's own estimate is 420)
BYTES_PER_ROW = 200


def counts(tgt: migration.PsqlEndpoint) -> dict[str, int]:
    return {k: int(v) for k, v in tgt.json(migration.COUNTS_SQL).items()}


def fresh_db(psql: "Psql", params) -> None:  # noqa: ANN001
    db, role = params.postgres.database, params.postgres.app_role
    psql.execute([f'DROP DATABASE IF EXISTS "{db}"', f'CREATE DATABASE "{db}" OWNER "{role}" TEMPLATE template0'])
    checkpoint(psql)


def checkpoint(psql: "Psql") -> None:
    """Before each timed run: what the one before left dirty is written out first, so that no run pays
    for another's checkpoint (ours drops the database it restores into, which forces one), nor for its
    writeback: the kernel writes dirty pages out 30 s after they were written (vm.dirty_expire_centisecs),
    which is in the middle of the next run, so the page cache is synced too (the lab's hosts share it)."""
    psql.execute(["CHECKPOINT"])
    os.sync()


def run_runbook(lab: Lab, host: Host, params, url: str, work: Path) -> float:  # noqa: ANN001
    """The manual runbook: dump -Fc (one process) on the laptop, scp, pg_restore one job as rails."""
    fresh_db(pg_cluster.get_psql(host, params), params)
    dump = work / "latest.dump"
    conn = migration.parse_source_url(url)
    env = {**os.environ, "PGPASSWORD": conn.pop("password")}
    conninfo = " ".join(f"{k}={v}" for k, v in conn.items())
    t0 = time.monotonic()
    subprocess.run(["pg_dump", "-Fc", "-d", conninfo, "-f", str(dump)], env=env, check=True)
    t1 = time.monotonic()
    subprocess.run(["scp", "-q", "-i", str(lab.ssh_key), "-o", f"UserKnownHostsFile={lab.cfg.known_hosts}",
                    "-o", "StrictHostKeyChecking=no", str(dump), f"root@{params.primary.private_ip}:/tmp/latest.dump"],
                   check=True)
    t2 = time.monotonic()
    # the runbook ignores pg_restore's errors (it cannot create pg_stat_statements as rails): so do we
    host.run(f"chown postgres /tmp/latest.dump && sudo -u postgres pg_restore --no-owner --no-acl "
             f"--role={params.postgres.app_role} -d {params.postgres.database} /tmp/latest.dump", check=False)
    t3 = time.monotonic()
    host.run("rm -f /tmp/latest.dump", quiet=True)
    dump.unlink()
    print(f"  runbook: pg_dump -Fc {t1 - t0:.1f}s, scp {t2 - t1:.1f}s, pg_restore -j1 {t3 - t2:.1f}s")
    return t3 - t0


def run_ours(host: Host, app: Host, params, url: str, password: str,  # noqa: ANN001
             transfer: str | None = None) -> tuple[float, float, dict]:
    if transfer:  # what source.transfer in params selects
        params = params.model_copy(update={"source": params.source.model_copy(update={"transfer": transfer})})
    checkpoint(pg_cluster.get_psql(host, params))
    with migration.Source(host, url) as source:
        plan = migration.get_migration_plan(host, params, source)
        res = migration_steps.run_migration(host, params, source, plan.facts, tag="bench", run_label="bench",
                                      live_source=True, app=app, password=password,
                                      sentinel_write="hcbpg bench sentinel")
    failed = [c for c in res.verification.checks if c.status == "fail"]
    if failed:
        raise SystemExit(f"ours: verification failed: {failed}")
    total = res.phases["dump_s"] + res.phases["restore_s"]
    print(f"  ours{' (' + transfer + ')' if transfer else ''}: dump {res.phases['dump_s']:.1f}s, "
          f"restore {res.phases['restore_s']:.1f}s "
          f"(ANALYZE {res.restore.analyze_seconds:.1f}s), verify {res.phases['verify_s']:.1f}s "
          f"({len(res.verification.checks)} checks pass)")
    return total, res.phases["verify_s"], res.phases


def run_pgcopydb(host: Host, params, url: str) -> float:  # noqa: ANN001
    """pgcopydb clone on the primary; the source URL goes in through stdin into the environment."""
    fresh_db(pg_cluster.get_psql(host, params), params)
    jobs = params.source.jobs
    target = f"postgres:///{params.postgres.database}?host=/var/run/postgresql"
    cmd = ("IFS= read -r PGCOPYDB_SOURCE_PGURI && export PGCOPYDB_SOURCE_PGURI && "
           f"export PGCOPYDB_TARGET_PGURI={shlex.quote(target)} && rm -rf /var/tmp/pgcopydb && "
           f"pgcopydb clone --dir /var/tmp/pgcopydb --table-jobs {jobs} --index-jobs {jobs} --no-owner --no-acl")
    t0 = time.monotonic()
    host.run(cmd, sudo_user="postgres", stdin=url + "\n",
             display=f"pgcopydb clone --table-jobs {jobs} --index-jobs {jobs}", timeout=24 * 3600)
    t = time.monotonic() - t0
    host.run("rm -rf /var/tmp/pgcopydb", quiet=True)
    print(f"  pgcopydb clone: {t:.1f}s")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source-mb", type=float, default=1024)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three and take medians")
    ap.add_argument("--keep-lab", action="store_true", help="leave the lab up afterwards (see --lab-dir)")
    ap.add_argument("--lab-dir", help="a lab kept by --keep-lab: used again when its source has the size asked for")
    ap.add_argument("--only", help="a comma-separated subset of runbook,ours,pgcopydb (default: all three)")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--directory", "--stream", dest="directory", action="store_true",
                    help="also time source.transfer: directory (the default is stream; --stream is the old name)")
    ap.add_argument("--online", action="store_true",
                    help="offline vs online (Bucardo) downtime per size, on a scratch lab (bench/cutover_online.py)")
    ap.add_argument("--sizes", default="250,1024,2048", help="--online: source sizes in MB, comma-separated")
    ap.add_argument("--rate", type=float, default=10.0, help="--online: the load's inserts (and updates) a second")
    ap.add_argument("--sync-s", type=float, default=30.0, help="--online: seconds of continuous sync under the load")
    ap.add_argument("--plot", default="cutover-online.png", help="--online: where the PNG plot goes")
    ap.add_argument("--initial-copy", choices=["stream", "bucardo", "both"], default="stream",
                    help="--online: how the primary is first filled (both: measured one after the other)")
    ap.add_argument("--merge", help="--online: print the table and plot of earlier --json files (a,b,...)")
    args = ap.parse_args()
    if args.online and args.merge:
        cutover_online.report_files(args.merge.split(","), args.plot)
        return
    if args.online:
        cutover_online.run([float(x) for x in args.sizes.split(",")], rate=args.rate, sync_s=args.sync_s,
                           plot=args.plot, out_json=args.json, keep=args.keep_lab, initial_copy=args.initial_copy)
        return

    only = set(args.only.split(",")) if args.only else {"runbook", "ours", "pgcopydb"}
    if only - {"runbook", "ours", "pgcopydb"}:
        raise SystemExit(f"--only: one or more of runbook, ours, pgcopydb (not {args.only})")
    reason = lab_unavailable_reason()
    if reason:
        raise SystemExit(f"bench/cutover.py: cannot run here: {reason}")
    # a lab of its own beside any other (own dir, bridge and subnets); --lab-dir: one kept by --keep-lab
    lab = Lab(args.lab_dir) if args.lab_dir else Lab(scratch_config("hcbpg-lab-bench-").lab_dir)
    if args.lab_dir:
        claim(lab)
    t = time.monotonic()
    # the lab's generator asks for MB through its own bytes-per-row estimate; we want the size on
    # disk, measured at about 200 bytes a row (pg_database_size) for this generator
    rows = int(args.source_mb * 1024 ** 2 / BYTES_PER_ROW)
    try:
        params, host, app, password, url = cutover_online.prepare(lab, rows, reuse=bool(args.lab_dir))
        st = lab.status()
        print(f"lab {lab.lab_dir} and primary ready in {time.monotonic() - t:.1f}s; source {st['source'].get('rows')} "
              f"rows (users {st['source'].get('users')}, events {st['source'].get('events')}, "
              f"transactions {st['source'].get('transactions')})")
        with migration.Source(host, url) as source:
            src_counts = source.json(migration.COUNTS_SQL)
            size = migration.get_source_facts(source)["size_bytes"]
        print(f"source database: {size / 1024 ** 2:.0f} MB on disk, {sum(src_counts.values())} rows "
              f"in {len(src_counts)} tables; jobs {params.source.jobs}; {os.cpu_count()} CPUs; "
              f"load average {load()}")
        tgt = migration.get_target(host, params)
        work = Path(tempfile.mkdtemp(prefix="hcbpg-bench-cutover-"))
        figures: dict[str, list[float]] = {"runbook": [], "ours": [], "ours_verify": [], "pgcopydb": [],
                                           "ours_directory": []}
        for r in range(args.rounds):
            print(f"round {r + 1} (load average {load()}):")
            if "runbook" in only:
                figures["runbook"].append(run_runbook(lab, host, params, url, work))
                assert counts(tgt) == src_counts, "runbook: row counts differ from the source"
            if "ours" in only:
                ours, ver, _ = run_ours(host, app, params, url, password)
                figures["ours"].append(ours)
                figures["ours_verify"].append(ver)
                assert counts(tgt) == src_counts, "ours: row counts differ from the source"
            if "pgcopydb" in only:
                figures["pgcopydb"].append(run_pgcopydb(host, params, url))
                assert counts(tgt) == src_counts, "pgcopydb: row counts differ from the source"
            if args.directory:
                figures["ours_directory"].append(run_ours(host, app, params, url, password, transfer="directory")[0])
                assert counts(tgt) == src_counts, "ours (directory): row counts differ from the source"
            print(f"  row counts match the source after each ({', '.join(sorted(only))})")
        med = {k: statistics.median(v) for k, v in figures.items() if v}
        print()
        print(f"source {size / 1024 ** 2:.0f} MB, {sum(src_counts.values())} rows; median of {args.rounds} round(s); "
              f"load average at the end {load()}:")
        for key, label in (("runbook", "runbook (pg_dump -Fc, scp, pg_restore -j1):"),
                           ("ours", "ours (transfer, as 06/07 run it):          "),
                           ("pgcopydb", "pgcopydb clone:                            ")):
            if key in med:
                rounds = ", ".join(f"{x:.1f}" for x in figures[key])
                extra = f"   (+ verify {med['ours_verify']:.1f}s)" if key == "ours" else ""
                print(f"  {label} {med[key]:7.1f}s   rounds: {rounds}{extra}")
        if "ours" in med and "runbook" in med:
            print(f"  ours/runbook  = {med['ours'] / med['runbook']:.2f}   (target <= 0.45)   per round: "
                  + ", ".join(f"{o / b:.2f}" for o, b in zip(figures["ours"], figures["runbook"], strict=True)))
            print(f"  with verification: ours/runbook = {(med['ours'] + med['ours_verify']) / med['runbook']:.2f}")
        if "ours" in med and "pgcopydb" in med:
            print(f"  ours/pgcopydb = {med['ours'] / med['pgcopydb']:.2f}   (target <= 0.80)   per round: "
                  + ", ".join(f"{o / b:.2f}" for o, b in zip(figures["ours"], figures["pgcopydb"], strict=True)))
        if "ours_directory" in med:
            print(f"  source.transfer: directory: {med['ours_directory']:.1f}s"
                  + (f" = {med['ours_directory'] / med['runbook']:.2f} x runbook" if "runbook" in med else "")
                  + (f", {med['ours_directory'] / med['pgcopydb']:.2f} x pgcopydb" if "pgcopydb" in med else ""))
        if args.json:
            Path(args.json).write_text(json.dumps({"source_mb": size / 1024 ** 2, "rows": sum(src_counts.values()),
                                                   "figures": figures, "median": med}, indent=2))
        host.close()
        app.close()
        shutil.rmtree(work, ignore_errors=True)  # the dump's folder (each dump is deleted after its restore)
    finally:
        if args.keep_lab:
            print(f"lab kept: {lab.lab_dir} (again with --lab-dir {lab.lab_dir}; a test session may sweep it once "
                  "this process is gone; `hcbpg`-free removal: python -c 'from hcbpg.lab import Lab; "
                  f"Lab(\"{lab.lab_dir}\").down(purge=True)')")
        else:
            lab.down(purge=True)
            print("lab down")


def load() -> str:
    """The 1-minute load average (the machine may be shared: the ratios are what counts)."""
    return f"{os.getloadavg()[0]:.2f}"


def claim(lab: Lab) -> None:
    """Name this process the maker of a kept scratch lab whose maker is gone, so that a sweep of stale labs
    (a test session's start) leaves it alone while we run; a living owner is left as it is."""
    try:
        owner = json.loads((lab.lab_dir / "owner.json").read_text())
    except (OSError, ValueError):
        owner = {}
    if pid_alive(owner.get("pid"), owner.get("starttime")):
        return
    owner = {"pid": os.getpid(), "starttime": proc_starttime(os.getpid())}
    atomic_write(lab.lab_dir / "owner.json", json.dumps(owner) + "\n", 0o644)


if __name__ == "__main__":
    main()
