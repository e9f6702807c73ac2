"""The weekly restore drill on the jumpbox (issue 24), pure: its pgBackRest config, its settings, the cron file and
the job program as installed (:mod:`hcbpg.ops.jobs.drill_job`).

Where it restores: a scratch cluster on the jumpbox itself, not a server made and deleted through the API.  Making
servers from the jumpbox would put a Hetzner token that can create and delete servers there (every server of the
project, the database servers included); the jumpbox already holds the repositories' configs.  The cost is the
jumpbox's disk (a cpx11 has 40 GB; the job refuses a backup whose size times :data:`DISK_FACTOR` does not fit in
what is free, and says so: a failed drill) and memory (the scratch cluster runs with :data:`SHARED_BUFFERS`, only
during the drill, and is emptied after).

Which key: each repository's servers' key (``pgbackrest.s3_key``, ``repo2.s3_key``), never the admin key: that key
can write and delete the current objects, but not an object version (hcbpg.desired.repo_history's policy), so a
drill with it, or anyone reading this file, cannot destroy history; the job itself only reads (info, restore,
verify).  The config is 0640 root:postgres (pgBackRest runs as postgres).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from hcbpg.desired.pgbackrest import SECRET_PLACEHOLDER, conf_options, pgbackrest_params
from hcbpg.desired.textfile_metrics import TEXTFILE_DIR
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.pg.conf import MANAGED_HEADER, one_line

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

DRILL_JOB_PATH = "/usr/local/sbin/hcbpg-drill"
DRILL_JOB_CONFIG_PATH = "/etc/hcbpg/drill.json"
DRILL_CONF_PATH = "/etc/hcbpg/pgbackrest-drill.conf"
DRILL_CRON_PATH = "/etc/cron.d/hcbpg-drill"
DRILL_LOG = "/var/log/hcbpg-drill.log"
#: postgres's 0700: the scratch data directory below it, and the job's state
DRILL_DIR = "/var/lib/hcbpg-drill"
DRILL_DATA = f"{DRILL_DIR}/data"
DRILL_STATE = f"{DRILL_DIR}/state.json"
DRILL_SOCKET_DIR = f"{DRILL_DIR}/run"
#: node exporter's textfile of the scheduled drill (step 12's success stays in hcbpg-drill.prom)
DRILL_JOB_TEXTFILE = f"{TEXTFILE_DIR}/hcbpg-drill-job.prom"
#: the scratch cluster's port: a socket only, never a TCP listener
DRILL_PORT = 5499
#: weekly, Saturday 04:17 UTC: after the Friday's differential backup, before the Sunday's full
DRILL_SCHEDULE = "17 4 * * 6"
SHARED_BUFFERS = "128MB"
#: free space needed: the backup's database size times this
DISK_FACTOR = 1.2
#: io-timeout of the job's ``pgbackrest info`` (seconds without progress before a try fails): with the default 60 s
#: an unreachable repository held the drill about 240 s (pgBackRest retries each file it reads for io-timeout, and
#: info reads about four) before it failed; 5 s answers in about 20 s, as ``hcbpg status`` and the health job do.
#: The restore and verify keep pgBackRest's default (a large file may pause longer on a slow link).
INFO_IO_TIMEOUT_S = 5
#: Ubuntu's postgresql-common: no automatic 15/main on the jumpbox (its only cluster is the drill's, made by restore)
NO_MAIN_CLUSTER_PATH = "/etc/postgresql-common/createcluster.d/hcbpg-no-main-cluster.conf"
BINDIR = "/usr/lib/postgresql/15/bin"
#: one line of the job: import of nothing but the standard library
JOB_MODULE = "drill_job.py"


def _need(params: "Params") -> None:
    problems = []
    if params.jumpbox is None:
        problems.append("jumpbox: the scheduled restore drill runs on the jumpbox, and params have none")
    if params.pgbackrest is None:
        problems.append("pgbackrest: the scheduled restore drill restores from its repositories")
    if problems:
        raise ParamsError("params", problems)


def drill_secret_refs(params: "Params") -> dict[str, tuple[str, Any]]:
    """The drill config's secret options -> (params key, secret reference): each repository's servers' key (never
    the admin key) and its cipher passphrase."""
    pb = pgbackrest_params(params)
    out: dict[str, tuple[str, Any]] = {}
    for n, repo in pb.repos():
        base = "pgbackrest" if n == 1 else f"pgbackrest.repo{n}"
        out[f"repo{n}-s3-key"] = (f"{base}.s3_key", repo.s3_key)
        out[f"repo{n}-s3-key-secret"] = (f"{base}.s3_key_secret", repo.s3_key_secret)
        if repo.cipher_type != "none":
            out[f"repo{n}-cipher-pass"] = (f"{base}.cipher_pass", repo.cipher_pass)
    return out


def render_drill_conf(params: "Params", *, secrets: Mapping[str, str] | None = None) -> str:
    """The jumpbox's pgbackrest config for the drill: every repository's options as the servers have them, with the
    servers' keys, and the scratch cluster as pg1.  Secrets as ``<secret>`` without *secrets* (option -> value)."""
    _need(params)
    pb = pgbackrest_params(params)
    glob = conf_options(params, params.primary, version=None)["global"]
    refs = drill_secret_refs(params)
    options = {k: v for k, v in glob.items() if k.startswith("repo") and "retention" not in k}
    options.update({"process-max": glob.get("process-max", "2"), "log-level-file": "off",
                    "lock-path": "/tmp/hcbpg-drill"})
    for k in refs:
        options[k] = SECRET_PLACEHOLDER
    lines = [MANAGED_HEADER,
             f"# pgBackRest on the jumpbox ({params.environment}): the weekly restore drill of stanza {pb.stanza} "
             f"into the scratch cluster {DRILL_DATA}.",
             "# The servers' keys (they cannot delete an object version); never the admin key. Mode 0640 "
             "root:postgres.", "", "[global]"]
    for key in sorted(options):
        value = options[key]
        if value == SECRET_PLACEHOLDER and secrets is not None:
            value = secrets[key]
            one_line(value, f"pgbackrest drill config option {key} ({refs[key][0]})", secret=True)
            if not value or value != value.strip():
                raise SafetyCheckFailed(f"the secret for {key} ({refs[key][0]}) is empty or has outer spaces")
        else:
            one_line(value, f"pgbackrest drill config option {key}")
        lines.append(f"{key}={value}")
    lines += ["", f"[{pb.stanza}]", f"pg1-path={DRILL_DATA}", f"pg1-port={DRILL_PORT}",
              f"pg1-socket-path={DRILL_SOCKET_DIR}"]
    return "\n".join(lines) + "\n"


def drill_repos(params: "Params") -> list[int]:
    return [n for n, _ in pgbackrest_params(params).repos()]


def render_drill_job_config(params: "Params") -> str:
    """/etc/hcbpg/drill.json: what the job reads (no secret: those are in the pgbackrest config only)."""
    _need(params)
    cfg = {"stanza": pgbackrest_params(params).stanza, "repos": drill_repos(params),
           "pgbackrest_conf": DRILL_CONF_PATH, "data": DRILL_DATA, "state": DRILL_STATE,
           "socket_dir": DRILL_SOCKET_DIR, "port": DRILL_PORT, "bindir": BINDIR, "textfile": DRILL_JOB_TEXTFILE,
           "shared_buffers": SHARED_BUFFERS, "disk_factor": DISK_FACTOR, "timeout_s": 6 * 3600, "amcheck": True,
           "info_io_timeout_s": INFO_IO_TIMEOUT_S}
    return json.dumps(cfg, indent=2, sort_keys=True) + "\n"


def render_drill_command(repo: int | None = None) -> str:
    return DRILL_JOB_PATH + ("" if repo is None else f" {int(repo)}")


def render_drill_cron(params: "Params") -> str:
    """/etc/cron.d/hcbpg-drill: the drill weekly as root (each run the next repository)."""
    _need(params)
    in_turn = ", ".join(f"repo{n}" for n in drill_repos(params))
    return "\n".join([
        MANAGED_HEADER,
        f"# hcbpg's restore drill: the newest backup of one repository (in turn: {in_turn}) "
        "restored on the jumpbox, read and verified; the outcome in node exporter's textfile.",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
        f"{DRILL_SCHEDULE} root flock -n {DRILL_DIR}/.lock {shlex.quote(render_drill_command())} >>{DRILL_LOG} 2>&1",
        "",
    ])


def render_no_main_cluster() -> str:
    return (f"{MANAGED_HEADER}\n# The jumpbox's only PostgreSQL cluster is the restore drill's (made by pgbackrest "
            "restore, started by the drill job).\ncreate_main_cluster = false\n")


def render_drill_job() -> str:
    """The job as installed: :mod:`hcbpg.ops.jobs.drill_job` (standard library only) with a shebang and our header."""
    job = resources.files("hcbpg.ops.jobs").joinpath(JOB_MODULE).read_text(encoding="utf-8")
    if any(line.startswith(("from hcbpg", "import hcbpg")) for line in job.splitlines()):
        raise ValueError("hcbpg/ops/jobs/drill_job.py must import the standard library only: it is shipped alone")
    return f"#!/usr/bin/python3\n{MANAGED_HEADER}\n{job}"
