"""Rebuilding a server as a streaming replica of the current primary: stop it, pg_rewind it
when its history allows, else wipe it (only as :mod:`hcbpg.desired.topology` allows) and take a
base backup; write the recovery settings, start it and wait until it streams."""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hcbpg.adapters.base import Changes
from hcbpg.adapters.cluster import ClusterControl
from hcbpg.desired import server as desired_server
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.replica import START_CONF_VALUES, render_basebackup_command, start_conf_path, start_conf_value
from hcbpg.desired.replication import (
    bin_path,
    passfile_path,
    postgres_home,
    render_recovery_settings,
    replication_params,
    slot_name,
)
from hcbpg.desired.topology import Plan, ServerState, plan_replica_rebuild
from hcbpg.errors import (
    RemoteCommandError,
    SafetyCheckFailed,
    WaitTimeout,
)
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.topology import get_server_state
from hcbpg.outcome import Outcome
from hcbpg.progress import Reporter
from hcbpg.secrets import scrub
from hcbpg.wait import polling_loop

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, PsqlLike
    from hcbpg.params import Params, Server


def run_stop(host: "HostLike", params: "Params", *, mode: str = "fast") -> None:
    """Stop the cluster (fast: clean shutdown; immediate if that does not finish); refused where Patroni runs it."""
    if not pg_cluster.get_cluster_running(host, params):
        return
    if pg_cluster.get_patroni_managed(host, params):
        raise SafetyCheckFailed(f"on {host.name}: Patroni manages this cluster; hcbpg does not stop it with "
                                "pg_ctlcluster", target=host.name,
                                hint="Step 11 rebuilds a member through Patroni (POST /reinitialize); step 11b pauses "
                                     "Patroni. Nothing was changed.")
    control = ClusterControl.of(host, params)
    res = control.stop(mode, check=False, timeout=180)
    if not res.ok and pg_cluster.get_cluster_running(host, params):
        control.stop("immediate", timeout=120)


def _safe_pgdata(pgdata: str | None, params: "Params") -> str:
    """The data directory, refused unless it looks like a cluster's (never /, never a parent of one)."""
    if not pgdata or not re.fullmatch(r"/[A-Za-z0-9_./-]+", pgdata) or ".." in pgdata:
        raise SafetyCheckFailed(f"unexpected data directory {pgdata!r}; refusing to delete anything in it")
    parts = [p for p in pgdata.split("/") if p]
    if len(parts) < 3:
        raise SafetyCheckFailed(f"data directory {pgdata} is too close to / to be wiped by hcbpg",
                                hint="Clear it by hand if that is intended.")
    return pgdata


def get_start_conf(host: "HostLike", params: "Params") -> str:
    return start_conf_value(host.read_text(start_conf_path(params)))


def ensure_start_conf(host: "HostLike", params: "Params", value: str) -> Outcome:
    """``start.conf`` says *value* (``auto``, ``manual`` or ``disabled``); written only when it differs."""
    if value not in START_CONF_VALUES:
        raise SafetyCheckFailed(f"start.conf cannot say {value!r} (one of {', '.join(START_CONF_VALUES)})",
                                hint="Nothing was written.")
    seen = Changes(host)
    current = get_start_conf(host, params)
    if current != value:
        host.put_text(start_conf_path(params), f"{value}\n", mode=0o644, owner="postgres", group="postgres")
    return seen.outcome(f"start.conf {value} on {host.name}", diff=f"-{current}\n+{value}\n")


def get_running_basebackup(host: "HostLike", pgdata: str) -> str | None:
    """The pid of a pg_basebackup still writing into *pgdata* (a detached one of an earlier run), else None."""
    res = host.probe(f"pgrep -u postgres -f -- {shlex.quote(f'pg_basebackup .*-D {pgdata} ')}")
    pids = res.stdout.split() if res.ok else []
    return pids[0] if pids else None


def check_no_basebackup_running(host: "HostLike", pgdata: str, name: str) -> None:
    """Refuse to touch *pgdata* while a detached pg_basebackup of an earlier run still writes into it."""
    pid = get_running_basebackup(host, pgdata)
    if pid is not None:
        raise SafetyCheckFailed(
            f"{name}: a pg_basebackup (pid {pid}) of an earlier run still writes into {pgdata}; "
            "wiping the directory now would corrupt the replica it is building",
            hint=f"Wait until it ends (its log: ~postgres/{BASEBACKUP_LOG}, its exit code: ~postgres/"
                 f"{BASEBACKUP_EXIT}), then run the step again; nothing was deleted.")


def run_wipe(host: "HostLike", params: "Params", state: ServerState, plan: Plan) -> None:
    """Stop PostgreSQL and delete the contents of the data directory (only for a rebuild *plan*)."""
    if plan.action != "rebuild" or not plan.allowed_by:
        raise SafetyCheckFailed(f"run_wipe on {state.name} without a rebuild plan that allows it")
    pgdata = _safe_pgdata(state.pgdata, params)
    check_no_basebackup_running(host, pgdata, state.name)
    if host.probe(f"ls -A {shlex.quote(pgdata)}/pg_tblspc").stdout.strip():
        raise SafetyCheckFailed(f"{state.name}: {pgdata} uses tablespaces; hcbpg does not rebuild those",
                                hint="Rebuild this replica by hand. Nothing was deleted.")
    run_stop(host, params)
    # as postgres, the directory's owner: the way to it is open to that user (a symlink there must not
    # point root's delete at anything else)
    host.run(f"find {shlex.quote(pgdata)} -mindepth 1 -delete", sudo_user="postgres",
             display=f"delete everything in {pgdata} (allowed: {plan.allowed_by})")


@dataclass
class BaseBackupProgress:
    phase: str
    streamed: int
    total: int | None

    @property
    def percent(self) -> float | None:
        return 100.0 * self.streamed / self.total if self.total else None

    def line(self, elapsed: float) -> str:
        mb = lambda b: f"{b / 1048576:.1f} MB"  # noqa: E731
        pct = f"{self.percent:5.1f}% " if self.percent is not None else ""
        total = f" of {mb(self.total)}" if self.total else ""
        return f"{self.phase}: {pct}({mb(self.streamed)}{total}) after {elapsed:.1f}s"


def get_basebackup_progress(psql: "PsqlLike") -> BaseBackupProgress | None:
    """pg_stat_progress_basebackup on the primary (None when no base backup runs)."""
    rows = psql.query("SELECT phase, backup_streamed, backup_total FROM pg_stat_progress_basebackup")
    if not rows:
        return None
    r = rows[0]
    return BaseBackupProgress(r["phase"], int(r["backup_streamed"] or 0),
                              int(r["backup_total"]) if r["backup_total"] is not None else None)


_PROGRESS_RE = re.compile(r"\d+/\d+ kB \(\d+%\), \d+/\d+ tablespaces?")


def _own_progress(log_tail: str) -> str:
    """pg_basebackup's last -P line (``34567/115800 kB (29%), 0/1 tablespace``), else its last line."""
    found = _PROGRESS_RE.findall(log_tail)
    if found:
        return found[-1]
    lines = log_tail.replace("\r", "\n").strip().splitlines()
    return lines[-1].strip() if lines else ""


def run_base_backup(host: "HostLike", primary_psql: "PsqlLike", params: "Params", primary: "Server", standby: "Server",
                    pgdata: str, *, timeout: float = 6 * 3600, poll: float = 1.0,
                    echo: Callable[[str], None] = print,
                    sleep: Callable[[float], None] = time.sleep) -> float:
    """Run pg_basebackup on *standby* (detached, so a dropped SSH session does not kill it) and report
    its progress (looked at every *poll* seconds; a line every few seconds through
    :class:`hcbpg.progress.Reporter`): the primary's pg_stat_progress_basebackup, with rate and
    time left, and pg_basebackup's own -P line.  Returns the duration in seconds; raises
    RemoteCommandError when it fails."""
    home = postgres_home()
    log, done = f"{home}/{BASEBACKUP_LOG}", f"{home}/{BASEBACKUP_EXIT}"
    check_no_basebackup_running(host, pgdata, standby.name)
    cmd = render_basebackup_command(params, primary, standby, pgdata)
    inner = f"{cmd}; echo $? > {done}"
    host.run(f"rm -f {done} {log} && nohup setsid sh -c {shlex.quote(inner)} > {log} 2>&1 < /dev/null &",
             sudo_user="postgres", display=f"[as postgres] {cmd}  (detached; log {log})")
    started = time.monotonic()
    reporter = Reporter(echo=echo)  # a line every few seconds; every sample to the runner's terminal
    seen_progress = False
    waiting_said = False
    while True:
        elapsed = time.monotonic() - started
        code_text = host.read_text(done)
        if code_text is not None and code_text.strip():
            break
        if elapsed > timeout:
            raise WaitTimeout(f"on {standby.name}: pg_basebackup did not finish within {timeout:.0f}s",
                              hint=f"It may still run: look at {log} on {standby.name}.")
        prog = get_basebackup_progress(primary_psql)
        own = _own_progress(host.probe(f"tail -c 2000 {log}").stdout)
        if prog is not None:
            seen_progress = True
            reporter.update("base backup", f"of {standby.name}", done=prog.streamed, total=prog.total,
                            phase=prog.phase, detail=own)
        elif seen_progress and not waiting_said:
            echo(f"[{standby.name}] base backup finishing (last WAL, sync to disk) after {elapsed:.1f}s"
                 + (f" | {scrub(own)}" if own else ""))
            waiting_said = True
        sleep(poll)
    duration = time.monotonic() - started
    code = int(code_text.strip() or "1")
    output = host.read_text(log) or ""
    final = output.replace("\r", "\n").strip().splitlines()
    echo(f"[{standby.name}] base backup finished with exit code {code} in {duration:.1f}s"
         + (f": {scrub(_own_progress(output))}" if _own_progress(output) else "")
         + (f"; {scrub(final[-1])}" if final else ""))
    if code != 0:
        raise RemoteCommandError(standby.name, cmd, code, scrub(output)[-3000:],
                                 hint="The data directory is incomplete; fix the cause and run the step again "
                                      "(it rebuilds the replica).")
    return duration


def run_write_recovery(host: "HostLike", params: "Params", primary: "Server", standby: "Server", pgdata: str) -> None:
    """standby.signal plus primary_conninfo (no password) and primary_slot_name in postgresql.auto.conf."""
    path = f"{pgdata}/postgresql.auto.conf"
    current = host.read_text(path) or ""
    desired = render_recovery_settings(current, params, primary, standby)
    if desired != current:
        host.put_text(path, desired, mode=0o600, owner="postgres", group="postgres")
    if not host.exists(f"{pgdata}/standby.signal"):
        host.put_text(f"{pgdata}/standby.signal", "", mode=0o600, owner="postgres", group="postgres")


def run_rewind(host: "HostLike", params: "Params", primary: "Server", standby: "Server", pgdata: str) -> None:
    """pg_rewind *standby*'s data directory from *primary* over libpq, as postgres (the server must be stopped)."""
    rep = replication_params(params)
    source = (f"host={primary.private_ip} port={params.postgres.port} user={rep.role} dbname=postgres "
              f"passfile={passfile_path()} {desired_tls.conninfo_tls(params)}")
    conf = f"{desired_server.config_dir(params)}/postgresql.conf"
    host.run(f"{bin_path(params, 'pg_rewind')} -D {shlex.quote(pgdata)} --source-server={shlex.quote(source)} "
             f"--config-file={shlex.quote(conf)} -P", sudo_user="postgres", timeout=6 * 3600,
             hint="pg_rewind failed; the step falls back to a new base backup.")


def run_fence_for_rewind(host: "HostLike", params: "Params", pgdata: str) -> None:
    """Before pg_rewind: ``start.conf`` manual, then ``standby.signal`` removed (the cluster must be stopped).

    pg_rewind recovers an uncleanly stopped target in single-user mode, which refuses to run
    with standby.signal; without it a reboot would start this server as a second primary, so
    systemd is told not to start it first.  :func:`run_rebuild_replica` puts both back once the
    recovery settings are written.
    """
    ensure_start_conf(host, params, "manual")
    host.run(f"rm -f {shlex.quote(pgdata)}/standby.signal")


def run_rebuild_replica(host: "HostLike", params: "Params", target: ServerState, plan: Plan, *,
                    primary_host: "HostLike", primary: "Server", standby: "Server",
                    echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Carry out a rebuild *plan*: pg_rewind (when planned; falls back) or wipe + pg_basebackup; then start.

    Returns timings and the method used, for the record.
    """
    result: dict[str, Any] = {"target": standby.name, "primary": primary.name, "method": plan.method}
    pgdata = _safe_pgdata(target.pgdata, params)
    primary_psql = pg_cluster.get_psql(primary_host, params)
    t0 = time.monotonic()
    start_conf = get_start_conf(host, params)
    if plan.method == "rewind":
        run_stop(host, params)
        run_fence_for_rewind(host, params, pgdata)
        try:
            # pg_rewind takes the source's timeline from its control file, which a just-promoted primary
            # updates only at its next checkpoint; before that it sees "the same timeline" and does nothing
            primary_psql.execute("CHECKPOINT")
            run_rewind(host, params, primary, standby, pgdata)
            run_write_recovery(host, params, primary, standby, pgdata)
            ensure_start_conf(host, params, start_conf)  # standby.signal is back: a boot starts a replica again
            result["rewind_s"] = round(time.monotonic() - t0, 2)
            t1 = time.monotonic()
            pg_cluster.ensure_cluster_running(host, params)
            wait_for_streaming(primary_host, params, standby)
            result["start_to_streaming_s"] = round(time.monotonic() - t1, 2)
            return result
        except (RemoteCommandError, WaitTimeout) as exc:
            detail = exc.output_tail if isinstance(exc, RemoteCommandError) else exc.message
            lines = detail.strip().splitlines()
            last = [ln for ln in lines if "FATAL" in ln or "error" in ln] or lines or ["?"]
            echo(f"[{standby.name}] rewind did not bring it back ({scrub(last[-1].strip())}); "
                 "falling back to a new base backup")
            result["method"] = "base_backup (after pg_rewind failed)"
            plan = Plan(plan.target, plan.primary, "rebuild", "base_backup", plan.reasons,
                        allowed_by=plan.allowed_by or "pg_rewind failed on a fenced former primary")
    if result["method"] != "rewind":
        run_wipe(host, params, target, plan)
        result["base_backup_s"] = round(run_base_backup(host, primary_psql, params, primary, standby, pgdata,
                                                        echo=echo), 2)
        run_write_recovery(host, params, primary, standby, pgdata)
        ensure_start_conf(host, params, start_conf)
    t1 = time.monotonic()
    pg_cluster.ensure_cluster_running(host, params)
    wait_for_streaming(primary_host, params, standby)
    result["start_to_streaming_s"] = round(time.monotonic() - t1, 2)
    return result


def ensure_replica(host: "HostLike", params: "Params", standby: "Server", *, primary_host: "HostLike",
                   primary: "Server", allow_destructive: bool,
                   echo: Callable[[str], None] = print) -> tuple[Outcome, Plan, dict[str, Any]]:
    """*standby* streams from *primary*: inspect it live, plan (wipe safety), then start or rebuild it."""
    what = f"{standby.name} as a replica of {primary.name}"
    dry_run = host.dry_run
    target = get_server_state(host, params, standby)
    pstate = get_server_state(primary_host, params, primary)
    if dry_run and not (target.cluster_exists and pstate.cluster_exists):
        # a plan before the servers (or their clusters) exist: what a fresh replica takes
        plan = Plan(standby.name, primary.name, "rebuild", "base_backup", ["the server is not set up yet"],
                    steps=["inspect it live (wipe safety) before anything is stopped",
                           f"pg_basebackup -R -P -X stream --slot {slot_name(standby.name)} from {primary.name}",
                           "start it and wait until it streams"])
        return Outcome(what, True, dry_run, actions=plan.steps), plan, {}
    plan = plan_replica_rebuild(target, params, standby.name, allow_destructive, primary=pstate)
    if plan.action == "none":
        return Outcome(what, False, dry_run), plan, {}
    actions = list(plan.steps)
    # dry run: starting or rebuilding waits on the real servers (base backup progress, streaming), which a
    # recording cannot answer: the plan is what a dry run shows
    if dry_run:
        return Outcome(what, True, dry_run, actions=actions), plan, {}
    if plan.action == "start":
        t0 = time.monotonic()
        pg_cluster.ensure_cluster_running(host, params)
        wait_for_streaming(primary_host, params, standby)
        return Outcome(what, True, dry_run, actions=actions), plan, {"start_to_streaming_s": round(time.monotonic() - t0, 2)}
    result = run_rebuild_replica(host, params, target, plan, primary_host=primary_host, primary=primary,
                             standby=standby, echo=echo)
    return Outcome(what, True, dry_run, actions=actions + [f"done: {result}"]), plan, result


def get_replication_rows(psql: "PsqlLike") -> list[dict[str, Any]]:
    """pg_stat_replication joined with the slots on the primary (lags in seconds and bytes)."""
    return psql.query(
        "SELECT r.application_name, host(r.client_addr) AS client_addr, r.state, r.sync_state, "
        "s.slot_name, s.active AS slot_active, "
        "pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint AS replay_lag_bytes, "
        "extract(epoch FROM r.replay_lag)::float AS replay_lag_s, "
        "extract(epoch FROM r.write_lag)::float AS write_lag_s "
        "FROM pg_stat_replication r LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid "
        "ORDER BY r.application_name")


def wait_for_streaming(primary_host: "HostLike", params: "Params", standby: "Server", *, timeout: float = 120.0,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Wait until the primary's pg_stat_replication shows *standby* streaming through its slot."""
    psql = pg_cluster.get_psql(primary_host, params)
    slot = slot_name(standby.name)
    last: list[dict[str, Any]] = []
    for _ in polling_loop(timeout, interval=0.5, sleep=sleep):
        last = get_replication_rows(psql)
        for r in last:
            if r["slot_name"] == slot and r["state"] == "streaming" and r["slot_active"]:
                return r
    raise WaitTimeout(
        f"{standby.name} is not streaming from {primary_host.name} through slot {slot} after {timeout:.0f}s; "
        f"pg_stat_replication shows: {last or 'no rows'}",
        what=f"{standby.name} streaming", timeout=timeout, last=last,
        hint=f"Look at the server log of {standby.name} (/var/log/postgresql/) for connection or "
             "authentication errors (pg_hba, passfile).")


BASEBACKUP_LOG = "hcbpg-basebackup.log"


BASEBACKUP_EXIT = "hcbpg-basebackup.exit"
