"""The scheduled restore drill (issue 24), installed on the jumpbox as ``/usr/local/sbin/hcbpg-drill`` and run by
cron as root, weekly: the newest backup of one repository restored into a scratch cluster on the jumpbox itself,
replayed to the end of that repository's archive, promoted, read, and the repository verified.

Standard library only, no import of hcbpg: shipped as it is (:func:`hcbpg.desired.drill_schedule.render_drill_job`).
Its settings come from ``/etc/hcbpg/drill.json`` (:func:`hcbpg.desired.drill_schedule.render_drill_job_config`).

Each run takes one repository: the one named on the command line, else the one after the last run's (repo1,
repo2, repo1, ...: each repository proved every other week, one restore's disk and time per run).  What it
checks needs no fingerprint recorded in advance (a newest backup has none):
- the restored backup is the repository's newest (``pgbackrest info --repo=N``) and its system identifier is the
  stanza's (``pg_controldata``);
- recovery replays the repository's archive to its end and the cluster is promoted;
- every table of every database reads whole (``count(*)``; the counts are kept in the state file) and, where
  ``pg_amcheck`` is installed, it finds no corruption;
- ``pgbackrest verify --repo=N`` passes.
Every pgBackRest and PostgreSQL command runs as postgres; the scratch cluster listens on a socket only, with
archive_mode off (it never writes to the repository), and is stopped and emptied after the run.

The outcome goes to node exporter's textfile (``hcbpg-drill-job.prom``, beside step 12's ``hcbpg-drill.prom``):
per repository the last success, the last failure and ``hcbpg_drill_failed`` (1 while its last run failed),
which the rules DrillFailing and DrillTooOld read.  Exit 0 on success, 1 on a failed drill, 2 on bad usage.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

CONFIG = "/etc/hcbpg/drill.json"
#: the metrics this job writes (one namespace with step 12's success file: same success name, a repo label)
DRILL_JOB_METRICS = {
    "hcbpg_drill_last_success_timestamp_seconds": "End of the newest successful restore drill (epoch s)",
    "hcbpg_drill_last_failure_timestamp_seconds": "End of the newest failed scheduled restore drill (epoch s)",
    "hcbpg_drill_failed": "1 while the repository's newest scheduled restore drill failed, else 0",
    "hcbpg_drill_duration_seconds": "Duration of the repository's newest scheduled restore drill (s)",
}
#: what PostgreSQL refuses to recover with when lower than on the server that wrote the WAL (pg_controldata's names)
CONTROL_SETTINGS = {"max_connections setting": "max_connections",
                    "max_worker_processes setting": "max_worker_processes",
                    "max_wal_senders setting": "max_wal_senders",
                    "max_prepared_xacts setting": "max_prepared_transactions",
                    "max_locks_per_xact setting": "max_locks_per_transaction"}


class DrillFailed(Exception):
    """What made this drill fail (said in the log and the state file)."""


def log(msg: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), msg, flush=True)


def as_postgres(argv: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                        timeout=timeout, check=False, cwd="/")
    if check and cp.returncode != 0:
        raise DrillFailed(f"{' '.join(argv[:4])}... exit {cp.returncode}: {(cp.stderr or cp.stdout).strip()[-600:]}")
    return cp


def pgbackrest(cfg: dict[str, Any], repo: int, *args: str, timeout: float,
               check: bool = True) -> subprocess.CompletedProcess[str]:
    return as_postgres(["pgbackrest", f"--config={cfg['pgbackrest_conf']}", f"--stanza={cfg['stanza']}",
                        f"--repo={repo}", *args], timeout=timeout, check=check)


def newest_backup(info_json: str, stanza: str, repo: int) -> dict[str, Any]:
    """The repository's newest good backup in ``pgbackrest info --output=json`` (label, stop, size, system id)."""
    try:
        data = json.loads(info_json)
    except json.JSONDecodeError as exc:
        raise DrillFailed(f"pgbackrest info is not JSON: {exc}") from None
    st = next((s for s in data if isinstance(s, dict) and s.get("name") == stanza), None)
    if st is None:
        raise DrillFailed(f"no stanza {stanza} in repo{repo}")
    for r in st.get("repo") or []:  # an unreadable repository is listed with a status, not as an error exit
        status = r.get("status") or {}
        if int(r.get("key", 0)) == repo and int(status.get("code", 0)) != 0:
            raise DrillFailed(f"pgbackrest info: repo{repo} status {status.get('code')}: "
                              f"{str(status.get('message', '?')).strip()[-400:]}")
    good = [b for b in st.get("backup") or [] if not b.get("error")
            and int((b.get("database") or {}).get("repo-key", repo)) == repo]
    if not good:
        raise DrillFailed(f"no backup in repo{repo} of stanza {stanza}")
    b = max(good, key=lambda x: float((x.get("timestamp") or {}).get("stop", 0)))
    db_id = (b.get("database") or {}).get("id")
    system_id = next((d.get("system-id") for d in st.get("db") or [] if d.get("id") == db_id), None)
    return {"label": b["label"], "type": b.get("type"), "stop": float(b["timestamp"]["stop"]),
            "size": int((b.get("info") or {}).get("size") or 0), "system_id": system_id}


def parse_controldata(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def render_scratch_conf(cfg: dict[str, Any], control: dict[str, str]) -> str:
    """The scratch cluster's postgresql.conf: a socket only, no archiving, small memory, and the settings recovery
    needs at least as high as the server that wrote the WAL had them (from the restored pg_control)."""
    lines = [f"port = {int(cfg['port'])}", "listen_addresses = ''",
             f"unix_socket_directories = '{cfg['socket_dir']}'", "archive_mode = off", "hot_standby = on",
             f"shared_buffers = '{cfg['shared_buffers']}'", "max_wal_size = '1GB'", "logging_collector = off", "ssl = off"]
    for key, name in CONTROL_SETTINGS.items():
        if control.get(key, "").isdigit():
            lines.append(f"{name} = {int(control[key])}")
    return "\n".join(lines) + "\n"


def psql(cfg: dict[str, Any], sql: str, *, db: str = "postgres", timeout: float = 600) -> str:
    return as_postgres([os.path.join(cfg["bindir"], "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                        "-h", cfg["socket_dir"], "-p", str(cfg["port"]), "-d", db, "-c", sql],
                       timeout=timeout).stdout.strip()


def pg_ctl(cfg: dict[str, Any], *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    return as_postgres([os.path.join(cfg["bindir"], "pg_ctl"), "-D", cfg["data"], *args], timeout=timeout,
                       check=check)


def stop_scratch(cfg: dict[str, Any]) -> None:
    if os.path.exists(os.path.join(cfg["data"], "postmaster.pid")):
        pg_ctl(cfg, "stop", "-m", "fast", "-w", "-t", "300", timeout=360, check=False)


def empty_data(cfg: dict[str, Any]) -> None:
    data = cfg["data"]
    if os.path.isdir(data):
        shutil.rmtree(data)
    os.makedirs(data, mode=0o700)
    shutil.chown(data, "postgres", "postgres")


def wait_promoted(cfg: dict[str, Any], timeout: float) -> None:
    end, last = time.monotonic() + timeout, ""
    while time.monotonic() < end:
        try:
            if psql(cfg, "SELECT pg_is_in_recovery()", timeout=60) == "f":
                return
            last = "still in recovery"
        except DrillFailed as exc:
            last = str(exc)[-200:]
        time.sleep(1)
    raise DrillFailed(f"not promoted within {timeout:.0f}s: {last}")


def read_every_table(cfg: dict[str, Any]) -> dict[str, dict[str, int]]:
    """count(*) of every ordinary and partitioned table in every database that takes connections."""
    counts: dict[str, dict[str, int]] = {}
    dbs = psql(cfg, "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1").splitlines()
    for db in dbs:
        names = psql(cfg, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
                          "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p' "
                          "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                          "AND n.nspname !~ '^pg_(toast|temp)' ORDER BY 1", db=db).splitlines()
        counts[db] = {}
        for name in names:
            counts[db][name] = int(psql(cfg, f"SELECT count(*) FROM {name}", db=db, timeout=float(cfg["timeout_s"])))
    return counts


def drill(cfg: dict[str, Any], repo: int) -> dict[str, Any]:
    """One drill of *repo*; raises DrillFailed.  Returns what it found (the state file keeps it)."""
    timeout = float(cfg["timeout_s"])
    # a short io-timeout: an unreachable repository fails the drill in seconds, not after minutes of retries
    io_timeout = int(cfg.get("info_io_timeout_s", 5))
    info = newest_backup(pgbackrest(cfg, repo, "--output=json", f"--io-timeout={io_timeout}", "info",
                                    timeout=600).stdout, cfg["stanza"], repo)
    log(f"repo{repo}: newest backup {info['label']} ({info['type']}, {info['size']} bytes)")
    stop_scratch(cfg)
    empty_data(cfg)
    free = shutil.disk_usage(cfg["data"]).free
    need = int(info["size"] * float(cfg["disk_factor"]))
    if need > free:
        raise DrillFailed(f"{cfg['data']} has {free} bytes free, the restore of {info['label']} needs about {need}")
    t0 = time.monotonic()
    pgbackrest(cfg, repo, f"--set={info['label']}", f"--pg1-path={cfg['data']}", "--log-level-console=warn",
               "restore", timeout=timeout)
    restore_s = time.monotonic() - t0
    control = parse_controldata(as_postgres([os.path.join(cfg["bindir"], "pg_controldata"), cfg["data"]],
                                            timeout=60).stdout)
    system_id = control.get("Database system identifier")
    if info["system_id"] is not None and str(info["system_id"]) != system_id:
        raise DrillFailed(f"restored system identifier {system_id}, the stanza's is {info['system_id']}")
    for name, text in (("postgresql.conf", render_scratch_conf(cfg, control)),
                       ("pg_hba.conf", "local all postgres peer\n"), ("pg_ident.conf", "")):
        path = os.path.join(cfg["data"], name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        shutil.chown(path, "postgres", "postgres")
        os.chmod(path, 0o600)
    os.makedirs(cfg["socket_dir"], mode=0o700, exist_ok=True)
    shutil.chown(cfg["socket_dir"], "postgres", "postgres")
    t1 = time.monotonic()
    # again on the command line: it wins over a postgresql.auto.conf the backup brought (ALTER SYSTEM on the primary)
    pg_ctl(cfg, "start", "-w", "-t", str(int(timeout)), "-l", os.path.join(cfg["data"], "drill-server.log"),
           "-o", f"-c port={int(cfg['port'])} -c listen_addresses='' -c archive_mode=off -c ssl=off "
                 f"-c unix_socket_directories={cfg['socket_dir']}", timeout=timeout + 60)
    wait_promoted(cfg, timeout)
    recovery_s = time.monotonic() - t1
    last_commit = psql(cfg, "SELECT coalesce(pg_last_xact_replay_timestamp()::text, '')")
    counts = read_every_table(cfg)
    amcheck = os.path.join(cfg["bindir"], "pg_amcheck")
    amchecked = False
    if cfg.get("amcheck", True) and os.path.exists(amcheck):
        cp = as_postgres([amcheck, "--all", "--install-missing", "-h", cfg["socket_dir"], "-p", str(cfg["port"])],
                         timeout=timeout, check=False)
        if cp.returncode != 0:
            raise DrillFailed(f"pg_amcheck found corruption (exit {cp.returncode}): "
                              f"{(cp.stdout + cp.stderr).strip()[-600:]}")
        amchecked = True
    t2 = time.monotonic()
    verify = pgbackrest(cfg, repo, "--log-level-console=info", "verify", timeout=timeout, check=False)
    if verify.returncode != 0:
        raise DrillFailed(f"pgbackrest verify --repo={repo} failed (exit {verify.returncode}): "
                          f"{(verify.stdout + verify.stderr).strip()[-600:]}")
    return {"backup": info["label"], "backup_type": info["type"], "backup_stop": info["stop"],
            "last_commit": last_commit, "tables": counts, "amcheck": amchecked,
            "restore_s": round(restore_s, 2), "recovery_s": round(recovery_s, 2),
            "verify_s": round(time.monotonic() - t2, 2)}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_drill_metrics(state: dict[str, Any]) -> str:
    """Node exporter's textfile from the state file: per repository its last success, last failure, whether its
    newest run failed and how long that run took (what is unknown is left out)."""
    rows: dict[str, list[str]] = {name: [] for name in DRILL_JOB_METRICS}
    for repo in sorted(state.get("repos", {})):
        r = state["repos"][repo]
        labels = f'{{repo="{_label(str(repo))}"}}'
        for name, key in (("hcbpg_drill_last_success_timestamp_seconds", "last_success"),
                          ("hcbpg_drill_last_failure_timestamp_seconds", "last_failure"),
                          ("hcbpg_drill_failed", "failed"), ("hcbpg_drill_duration_seconds", "duration_s")):
            if r.get(key) is not None:
                rows[name].append(f"{name}{labels} {float(r[key]):.17g}")
    lines: list[str] = []
    for name, samples in rows.items():
        if samples:
            lines += [f"# HELP {name} {DRILL_JOB_METRICS[name]}", f"# TYPE {name} gauge", *samples]
    return "\n".join(lines) + "\n" if lines else ""


def write_atomically(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_state(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def next_repo(state: dict[str, Any], repos: list[int]) -> int:
    """The repository after the last run's, in order (the first when none ran)."""
    last = state.get("last_repo")
    return repos[(repos.index(last) + 1) % len(repos)] if last in repos else repos[0]


def main(argv: list[str]) -> int:
    with open(os.environ.get("HCBPG_DRILL_CONFIG", CONFIG), encoding="utf-8") as f:
        cfg = json.load(f)
    repos = [int(r) for r in cfg["repos"]]
    state = read_state(cfg["state"])
    if len(argv) > 1:
        if not argv[1].isdigit() or int(argv[1]) not in repos:
            print(f"usage: {argv[0]} [REPO]: no repository {argv[1]} (configured: {repos})", file=sys.stderr)
            return 2
        repo = int(argv[1])
    else:
        repo = next_repo(state, repos)
    started = time.time()
    log(f"drill of repo{repo} (stanza {cfg['stanza']}) into {cfg['data']}")
    entry = dict(state.get("repos", {}).get(str(repo), {}))
    try:
        found = drill(cfg, repo)
        ok, reason = True, ""
    except (DrillFailed, OSError, subprocess.TimeoutExpired) as exc:
        found, ok, reason = {}, False, f"{type(exc).__name__}: {exc}"
    finally:
        try:
            stop_scratch(cfg)
            if cfg.get("keep_data") is not True and os.path.isdir(cfg["data"]):
                shutil.rmtree(cfg["data"])
        except (OSError, subprocess.TimeoutExpired, DrillFailed) as exc:
            log(f"clean-up: {exc}")
    now = time.time()
    entry.update(failed=0 if ok else 1, duration_s=round(now - started, 2), last_run=now, reason=reason)
    entry["last_success" if ok else "last_failure"] = now
    if ok:
        entry["found"] = found
    state.setdefault("repos", {})[str(repo)] = entry
    state["last_repo"] = repo
    write_atomically(cfg["state"], json.dumps(state, indent=2, sort_keys=True) + "\n", 0o600)
    write_atomically(cfg["textfile"], render_drill_metrics(state), 0o644)
    if ok:
        log(f"repo{repo}: drill passed: {found['backup']} restored in {found['restore_s']}s, promoted "
            f"{found['recovery_s']}s later (last commit {found['last_commit'] or '-'}), "
            f"{sum(len(t) for t in found['tables'].values())} tables read, amcheck "
            f"{'passed' if found['amcheck'] else 'not installed'}, verify {found['verify_s']}s")
        return 0
    log(f"repo{repo}: drill FAILED: {reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
