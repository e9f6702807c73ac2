"""The README's main job: `hcbpg rehearse` brings up the default lab, runs every step of the
runbook with params/lab.yaml (the online transfer, while the lab's app writes on the source until
maintenance is on; Patroni over etcd on both servers and the jumpbox step 01 makes, public SSH to the
database servers closed; the monitor on the jumpbox last, step 15b), prints the summary; kept (--keep) for
`hcbpg status lab` to show no alert firing, then taken down.

It uses the default lab (what params/lab.yaml points at), so it holds the machine's lab lock
(tests on other workers that use that lab wait for it) and is skipped when that lab is already
up: an operator's lab is not ours to take down.  The record goes to a home of its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcbpg.lab import Lab, lab_unavailable_reason

from nbutil import CmdlineWatch, default_lab_lock, secret_forms

pytestmark = [pytest.mark.lab, pytest.mark.default_lab]

REPO = Path(__file__).resolve().parents[2]


def test_rehearse_runs_the_whole_runbook_in_a_fresh_lab_and_leaves_nothing(tmp_path):
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(f"lab tests need root and network namespaces: {reason}")
    with default_lab_lock():
        lab = Lab()
        if lab.status()["up"]:
            pytest.skip("the default lab is up (an operator's): `hcbpg rehearse` would take it down")
        home = tmp_path / "home"
        (home / "params").mkdir(parents=True)
        shutil.copy(REPO / "params" / "lab.yaml", home / "params" / "lab.yaml")
        env = {k: v for k, v in os.environ.items()
               if k not in ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS", "HCBPG_AUTO_APPROVE", "HCBPG_LAB_DIR")}
        env.update(HCBPG_HOME=str(home), HCBPG_NOTEBOOKS=str(REPO / "notebooks"),
                   HCBPG_STATE_DIR=str(tmp_path / "state"))
        try:
            # every process's command line is sampled while the whole runbook runs (the S3 keys, the cipher
            # passphrase, the source URL and the passwords travel in steps 00-15)
            with CmdlineWatch() as watch:
                # --keep: the monitor step 15b left on the jumpbox is read after the run (hcbpg status), then the
                # lab is taken down here
                proc = subprocess.run([sys.executable, "-m", "hcbpg.cli", "rehearse", "--keep"], capture_output=True,
                                      text=True, env=env, timeout=1500, cwd=REPO)
                up_after = lab.status()["up"]
                status = subprocess.run([sys.executable, "-m", "hcbpg.cli", "status", "lab"], capture_output=True,
                                        text=True, env=env, timeout=300, cwd=REPO)
                status_json = subprocess.run([sys.executable, "-m", "hcbpg.cli", "status", "lab", "--json"],
                                             capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
                # issue 24: step 10 turned backups from the standby on (params/lab.yaml backup_standby)
                # (run whatever status --json exited with: a failed item is asserted on below, with its rows)
                measured = up_after and status_json.stdout.lstrip().startswith("{")
                standby_backup = _backup_on_the_leader(lab, status_json.stdout) if measured else None
                replica_alert = _stop_the_replica_and_wait_for_its_alert(lab, status_json.stdout) \
                    if measured else None
        finally:
            if lab.status()["up"]:
                lab.down()
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        # issue 25: the rehearsal ends with a quiet monitor: 15b set it up with every scrape target up (its checks,
        # all passed below), and `hcbpg status lab`, read after the run, shows no alert firing
        assert up_after and "lab kept (--keep)" in out, out[-2000:]
        print(status.stdout[-3000:])
        assert "Alerts (Alertmanager on hcb-jumpbox): none firing" in status.stdout, status.stdout + status.stderr
        report = json.loads(status_json.stdout)
        assert status_json.returncode == 0, (
            f"hcbpg status lab --json exited {status_json.returncode} a moment after the text report said OK; "
            f"the items not passing: {[c for c in report['checks'] if c['status'] != 'pass']}; "
            f"cluster: {report.get('cluster')}; stderr: {status_json.stderr[-1500:]}")
        assert report["alerts"] == [] and report["monitor"] == {"host": "hcb-jumpbox", "error": None}, report
        assert not [c for c in report["checks"] if c["item"] in ("alerts", "archive age") and c["status"] != "pass"]
        assert {c["server"] for c in report["checks"] if c["item"] == "archive age"} == {
            next(m["server"] for m in report["measurements"] if not m.get("in_recovery"))}
        # issue 24: a backup on the leader after the run waits for the standby's replay and copies from it
        # (pgBackRest's backup-standby: step 10 started both TLS servers and wrote pg2 into both files)
        assert standby_backup is not None and standby_backup.returncode == 0, standby_backup
        assert "replay on the standby reached" in standby_backup.stdout + standby_backup.stderr, \
            (standby_backup.stdout + standby_backup.stderr)[-3000:]
        # then the replica stopped (its Patroni and PostgreSQL killed): its PostgresDown reached the lab's receiver
        assert replica_alert is not None and replica_alert["latency_s"] is not None, replica_alert
        print(f"\nthe replica {replica_alert['server']} stopped -> PostgresDown at the lab's receiver in "
              f"{replica_alert['latency_s']} s (scrape/eval 5 s, for 10 s, group_wait 2 s)")
        (run,) = [p for p in (home / "outputs" / "lab").iterdir() if p.is_dir()]
        manifest = json.loads((run / "manifest.json").read_text())
        steps = manifest["steps"]
        assert len(steps) >= 14 and all(s["status"] == "succeeded" for s in steps), \
            [(s["key"], s["status"]) for s in steps]
        assert f"Rehearsal summary: {len(steps)}/{len(steps)} steps succeeded" in out
        # signal, not noise: a clean rehearsal warns about nothing (expected states pass with a note; Bucardo's
        # and hcbpg's own objects are not named), and every step of the online path did its work: none skipped
        # itself (the online-only steps in an offline run show `skipped`: tests/test_cli_output.py)
        recap = [line for line in out.splitlines() if re.match(r"\s+\d\d\w*_\w+\s+\w+\s+ok=", line)]
        assert len(recap) >= len(steps), out[-4000:]
        assert all(re.search(r"\bwarnings=0\s.*\bskipped=0\s", line) for line in recap), "\n".join(recap)
        assert not [line for line in out.splitlines() if line.strip().startswith("warnings:")], out[-4000:]
        for s in steps:
            checks = s.get("checks") or s.get("summary", {}).get("checks") or {}
            assert not checks.get("warn"), (s["key"], checks.get("not_passed"))
        approvals = manifest.get("gates", {})
        assert approvals and all(g.get("approved_by", "").startswith("hcbpg rehearse") for g in approvals.values())
        assert not lab.status()["up"]
        # params/lab.yaml rehearses the online transfer: the lab's app wrote on the source from lab up until the
        # rehearsal turned maintenance on, and every write of it is on the new primary
        assert [s["key"] for s in steps].index("08_start_archiving") < [s["key"] for s in steps].index("07_cutover")
        writes = re.search(r"App writes before maintenance-on: (\d+) .*?, (\d+) missing", out)
        assert writes and int(writes.group(1)) > 50 and writes.group(2) == "0", out[-3000:]
        assert "approved automatically after: app-load stop" in json.dumps(approvals["maintenance-on"])
        # issue 28: params/lab.yaml runs Patroni over etcd on both servers and the jumpbox step 01 made.  Step 10's
        # gate is asked only when the leader has a restart pending under Patroni: in the rehearsal step 10 builds the
        # pair itself with cluster_name already the scope, Patroni starts the primary with its own settings and
        # none is pending; when asked, it is approved like every other gate (checked above)
        keys = [s["key"] for s in steps]
        assert "10_high_availability" in keys and "10_replication" not in keys, keys
        assert "15b_alerting" in keys, keys  # params/lab.yaml has alerting: the monitor's step ran (and succeeded)
        gate = approvals.get("restart-primary-under-patroni")
        assert gate is None or gate["approved_by"].startswith("hcbpg rehearse"), gate
        # after the run, as the rehearsal measured it (its exit status depends on it): Patroni leads with the other
        # server its sync standby, streaming; etcd healthy on its three members; from the lab's outsider (outside
        # network.ip_range: the internet) each database server's port 22 gives no answer, while hcbpg's commands
        # reach each server through the jumpbox (its sshd sees the jumpbox's address)
        assert re.search(r"^Patroni: Member server-postgres-\d .*Role Leader  State running\b", out, re.M), out[-3000:]
        assert re.search(r"^Patroni: Member server-postgres-\d .*Role Sync Standby  State (running|streaming)\b",
                         out, re.M), out[-3000:]
        assert "etcd: 3/3 members healthy" in out, out[-3000:]
        for name, ip in (("server-postgres-1", "10.0.1.5"), ("server-postgres-2", "10.0.1.6")):
            assert re.search(rf"SSH from the outsider \S+ to {name} {re.escape(ip)}:22: no answer in [3-9]", out), \
                out[-3000:]
            assert f"hcbpg to {name}: {ip} via hcb-jumpbox, its sshd saw the client 10.0.1.40" in out, out[-3000:]
        assert "High availability: Patroni leads with a sync standby streaming, etcd healthy on 3 members" in out
        verify = subprocess.run([sys.executable, "-m", "hcbpg.cli", "audit", "verify", "lab"], capture_output=True,
                                text=True, env=env, timeout=120, cwd=REPO)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        # every secret the lab generated, scanned for in every byte of the record
        secrets = [lab.cfg.read_secret(p.name) for p in lab.cfg.secrets_dir.iterdir() if p.is_file()]
        secrets = [s for s in secrets if s and len(s) >= 8]
        assert secrets
        # and every encoding the record could hold one in (URL, JSON, HTML, base64 at each alignment)
        forms = [f for s in secrets for f in secret_forms(s)]
        for path in (home / "outputs").rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not [f for f in forms if f in data], f"a lab secret in {path}"
        assert watch.samples > 100, watch.samples
        assert not watch.found(secrets), watch.found(secrets)
        print(out[-1500:])


def _backup_on_the_leader(lab: Lab, status_json: str) -> subprocess.CompletedProcess[str]:
    """An incremental backup on the leader (the server `hcbpg status` measured out of recovery), pgBackRest's
    console at info: with backup-standby it logs waiting for the standby's replay, then 'replay on the standby
    reached'."""
    report = json.loads(status_json)
    leader = next(m["server"] for m in report["measurements"] if not m.get("in_recovery"))
    res = lab.exec(leader, ["pgbackrest", "--stanza=hcb_production", "--type=incr", "--log-level-console=info",
                            "backup"], user="postgres", timeout=600)
    print(f"\nbackup on the leader {leader}: exit {res.returncode}; "
          + "; ".join(ln.split("INFO: ")[-1] for ln in res.stdout.splitlines() if "standby" in ln)[:600])
    return res


def _stop_the_replica_and_wait_for_its_alert(lab: Lab, status_json: str, timeout: float = 180.0) -> dict:
    """Issue 25: the replica stopped -> its alert delivered.  Kills the replica's Patroni and PostgreSQL (by pid,
    in its own PID namespace: hcbpg.lab.faults) after the quiet status was read, and waits for the firing
    PostgresDown naming it at the lab's receiver (params/lab.yaml's webhook is hcbpg.lab.deadman's /alerts/...).
    Returns the server and the latency (event -> POST received; None: not within *timeout*)."""
    from hcbpg.lab import deadman, faults

    report = json.loads(status_json)
    replica = next(m["server"] for m in report["measurements"] if m.get("in_recovery"))
    log = lab.cfg.logs_dir / "deadman.jsonl"
    t0 = time.time()
    killed = faults.kill_patroni_and_postgres(lab.cfg, replica)
    assert killed, f"nothing to kill on {replica}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in deadman.read_pings(log):
            body = p["body"]
            if p["time"] >= t0 and p["path"].startswith("/alerts/") and '"alertname":"PostgresDown"' in body \
                    and f'"server":"{replica}"' in body and '"status":"firing"' in body:
                return {"server": replica, "latency_s": round(p["time"] - t0, 1)}
        time.sleep(0.5)
    return {"server": replica, "latency_s": None,
            "last": [(p["path"][:9], p["body"][:200]) for p in deadman.read_pings(log)[-5:]]}
