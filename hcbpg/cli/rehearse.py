"""``hcbpg rehearse``: bring the lab up, run the whole runbook against it, summarise, tear it down.

Gates are approved automatically and recorded as approved by the rehearsal, so the audit
record of a rehearsal reads like a production run's, with an honest approver.  A rehearsal
builds a new lab, so its record starts a new chain: the lab's earlier record (runs, head file,
this machine's anchor) is set aside under ``outputs/.set-aside/`` first, and named.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import TYPE_CHECKING

from hcbpg.engine import chain, signing
from hcbpg.engine import manifest as mf
from hcbpg.engine.locks import env_lock
from hcbpg.engine.runbook import AUTO_ACTIONS_ENV
from hcbpg.engine.runner import Runner, install_sigterm_as_interrupt
from hcbpg.errors import HcbpgError
from hcbpg.params import home, load_params

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.lab import Lab

APPROVER = "hcbpg rehearse (automatic)"
#: the lab's app writes on the source this often (inserts and updates a second) until maintenance-on
APP_LOAD_RATE = 2.0


def rehearse(*, keep: bool = False, source_rows: int | None = None, source_mb: int | None = None,
             start: str | None = None, until: str | None = None, verbose: bool = False) -> int:
    from hcbpg.cli import lab as lab_cli  # noqa: PLC0415 - the lab loads only for `hcbpg rehearse`
    from hcbpg.lab import Lab  # noqa: PLC0415 - the lab loads only for `hcbpg rehearse`
    from hcbpg.lab.core import check_lab_packages  # noqa: PLC0415 - the lab loads only for `hcbpg rehearse`

    check_lab_packages()  # before anything is set aside: without hcbpg[lab] no lab comes up
    install_sigterm_as_interrupt()
    set_aside_old_record()
    lab = Lab()
    t0 = time.monotonic()
    print("lab up …", flush=True)
    status = lab.up(source_rows=source_rows, source_mb=source_mb)
    t_lab = time.monotonic() - t0
    print(f"lab up in {t_lab:.1f}s: " + ", ".join(f"{h['name']} {h['ip']}" for h in status["hosts"]), flush=True)
    result = None
    try:
        # the app on "Heroku" writes until the rehearsal, playing the operator, turns maintenance mode on
        print(lab_cli.start_app_load(lab, APP_LOAD_RATE), flush=True)
        os.environ[AUTO_ACTIONS_ENV] = json.dumps({"maintenance-on": [
            sys.executable, "-m", "hcbpg.cli", "lab", "--lab-dir", str(lab.lab_dir), "app-load", "stop"]})
        runner = Runner(auto_approve=APPROVER, log_output=verbose, progress_bar=False)
        result = runner.start("lab", start=start, until=until)
        print(result.message)
        _print_summary(result.run, t_lab, time.monotonic() - t0)
        code = result.exit_code
        if code == 0 and result.run.read().get("downtime"):
            code = _check_app_writes(lab)
        if code == 0 and until is None:
            code = _check_high_availability(lab)
        return code
    finally:
        os.environ.pop(AUTO_ACTIONS_ENV, None)
        if keep:
            try:  # a kept lab's app stops writing (a torn-down lab's goes with it)
                lab_cli.stop_app_load(lab)
            except Exception:  # noqa: BLE001 - the lab is kept as it is; the rehearsal's result stands
                pass
            print("lab kept (--keep): `hcbpg lab status` shows it, `hcbpg lab down` removes it")
        else:
            t1 = time.monotonic()
            lab.down()
            print(f"lab down in {time.monotonic() - t1:.1f}s")


def set_aside_old_record() -> None:
    """The lab's earlier record (of labs since torn down) set aside, named: this rehearsal starts a new chain."""
    base = home()
    trust = signing.trust_for(load_params("lab", base), "lab", base)
    why = "hcbpg rehearse builds a new lab and starts a new chain for it"
    with env_lock("lab", purpose="set aside", base=base):  # not while a run of the lab writes it
        try:  # the lab's bucket, if a kept lab still runs, records the set-aside: its sequence starts again
            where = chain.set_aside(base, "lab", trust, why=why)
        except HcbpgError as exc:
            if trust.bucket is None:
                raise
            # no lab runs: its S3 store (in memory) went with it, and the new lab's bucket starts empty
            print(f"note: the lab's bucket is not up ({exc.message.splitlines()[0][:160]}): the new lab's "
                  "bucket starts a new anchor sequence", flush=True)
            if trust.bucket.copy is not None:  # this machine's copy of the old lab's sequence goes with it
                trust.bucket.copy.unlink(missing_ok=True)
            where = chain.set_aside(base, "lab", dataclasses.replace(trust, bucket=None), why=why)
    if where is not None:
        shown = where.relative_to(base) if where.is_relative_to(base) else where
        print(f"the lab's earlier audit record was set aside to {shown} (a new lab, a new chain)", flush=True)


def _check_app_writes(lab: "object") -> int:
    """Every write the lab's app made before maintenance-on is on the new primary (0), or which are not (1)."""
    from hcbpg.cli import lab as lab_cli  # noqa: PLC0415 - the lab loads only for `hcbpg rehearse`

    params = load_params("lab")
    log, lost = lab_cli.check_app_load(lab, params.primary.name, params.postgres.database)
    print(f"App writes before maintenance-on: {log.writes} ({len(log.inserted)} inserts, {len(log.updated)} rows "
          f"updated), {len(lost)} missing on {params.primary.name}" + "".join(f"\n  {x}" for x in lost[:20]))
    return 1 if lost or not log.stopped or not log.writes else 0


def _check_high_availability(lab: "Lab") -> int:
    """Under replication.manager patroni, after the whole runbook (issue 28's first "Done when"): Patroni leads
    with every other server streaming (the sync standby in synchronous mode), etcd is healthy on its three
    members, each database server's port 22 gives the lab's outsider (the internet) no answer, and hcbpg's
    commands reach each server through the jumpbox.  0 when all of it holds, else 1 (each line says what)."""
    from hcbpg.adapters import hostkeys  # noqa: PLC0415 - the rehearsal's own check, loaded only here
    from hcbpg.desired import patroni as dp  # noqa: PLC0415 - as above
    from hcbpg.ops import etcd as ops_etcd  # noqa: PLC0415 - as above
    from hcbpg.ops import patroni as ops_patroni  # noqa: PLC0415 - as above
    from hcbpg.steps.health import open_server_hosts  # noqa: PLC0415 - as above

    params = load_params("lab")
    if not dp.managed(params):
        return 0
    assert params.jumpbox is not None  # params refuse manager patroni without it
    failed: list[str] = []
    hosts = open_server_hosts(params, recorded=list(hostkeys.pinned_servers(params)))
    try:
        # the replica may still be catching up on the last step's writes: a short wait for the sync standby
        deadline = time.monotonic() + 30
        while True:
            view = ops_patroni.get_cluster(dict(hosts), params)
            checks = dp.check_cluster(view, params, statuses=ops_patroni.get_member_statuses(dict(hosts), params))
            if all(c.status == "pass" for c in checks) or time.monotonic() > deadline:
                break
            time.sleep(1)
        for row in (view.rows() if view is not None else []):
            print("Patroni: " + "  ".join(f"{k} {v}" for k, v in row.items()))
        leader = view.leader if view is not None else None
        sync = [m for m in (view.members if view is not None else ()) if m.is_sync_standby
                and m.state in dp.RUNNING_STATES]
        if leader is None or (params.replication is not None and params.replication.patroni is not None
                              and params.replication.patroni.synchronous_mode and not sync):
            failed.append(f"Patroni: leader {leader.name if leader else 'none'}, sync standby streaming "
                          f"{', '.join(m.name for m in sync) or 'none'}")
        failed += [f"Patroni: {c.target} {c.name}: {c.detail}" for c in checks if c.status != "pass"]
        etcd = ops_etcd.get_etcd_health(hosts[params.servers[0].name], params)
        healthy = [e.endpoint for e in etcd if e.healthy]
        print(f"etcd: {len(healthy)}/{len(etcd)} members healthy ({', '.join(healthy)})")
        if len(etcd) != 3 or len(healthy) != 3:
            failed.append(f"etcd: {len(healthy)}/{len(etcd)} members healthy")
        outsider = lab.status()["outsider"]["ip"]
        for s in params.servers:
            # from the outsider (outside network.ip_range: the internet) the server's SSH gives no answer ...
            t = time.monotonic()
            cp = lab.outsider_exec(["timeout", "3", "bash", "-c", f"exec 3<>/dev/tcp/{s.private_ip}/22"], timeout=20)
            dropped = cp.returncode == 124
            print(f"SSH from the outsider {outsider} to {s.name} {s.private_ip}:22: "
                  + (f"no answer in {time.monotonic() - t:.1f} s" if dropped else f"exit {cp.returncode} (answered)"))
            # ... while hcbpg's commands reach it through the jumpbox (sshd there sees the jumpbox's address)
            seen = hosts[s.name].run("echo $SSH_CONNECTION", quiet=True).stdout.split()
            via = seen[0] if seen else "?"
            print(f"hcbpg to {s.name}: {hosts[s.name].where}, its sshd saw the client {via}")
            if not dropped:
                failed.append(f"SSH: {s.name}:22 answered the outsider")
            if via != params.jumpbox.private_ip:
                failed.append(f"SSH: hcbpg reached {s.name} from {via}, not through the jumpbox "
                              f"{params.jumpbox.private_ip}")
    finally:
        for h in hosts.values():
            h.close()
    for line in failed:
        print("FAILED " + line)
    print("High availability: " + ("Patroni leads with a sync standby streaming, etcd healthy on 3 members, public "
                                   "SSH to the database servers dropped, the jumpbox path works"
                                   if not failed else f"{len(failed)} problem(s)"))
    return 1 if failed else 0


def _print_summary(run: mf.Run, t_lab: float, total: float) -> None:
    data = run.read()
    steps = data["steps"]
    changes = sum(s.get("changes") or 0 for s in steps)
    ok = sum(1 for s in steps if s["status"] in mf.DONE)  # skipped: ended itself with nothing to do
    approvals = [f"{g} ({v.get('approved_by')})" for g, v in data.get("gates", {}).items() if v.get("approved_at")]
    print(f"\nRehearsal summary: {ok}/{len(steps)} steps succeeded, {changes} change(s), "
          f"lab up {t_lab:.1f}s, total {total:.1f}s")
    if approvals:
        print("Gates approved by the rehearsal: " + ", ".join(approvals))
    if data.get("downtime"):
        d = data["downtime"]
        print(f"Downtime (maintenance on → traffic on): {d.get('total_s', '?')} s")
    rel = run.path.relative_to(home()) if run.path.is_relative_to(home()) else run.path
    print(f"Audit trail: {rel} (hcbpg audit html {run.run_id} renders it)")


def cmd_rehearse(args: argparse.Namespace) -> int:
    return rehearse(keep=args.keep, source_rows=args.source_rows, source_mb=args.source_mb,
                    start=args.start, until=args.until, verbose=args.verbose)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rehearse", help="lab up, the whole runbook against it, summary, lab down")
    r.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    size = r.add_mutually_exclusive_group()
    size.add_argument("--source-rows", type=int, help="rows of the Heroku-like source's users table")
    size.add_argument("--source-mb", type=int, help="approximate size of the source database")
    r.add_argument("--from", dest="start", metavar="STEP")
    r.add_argument("--until", metavar="STEP")
    r.add_argument("-v", "--verbose", action="store_true", help="stream cell outputs")
    r.set_defaults(func=cmd_rehearse)


__all__ = ["rehearse", "register", "APPROVER"]
