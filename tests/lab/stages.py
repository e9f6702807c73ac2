"""Shared stages of the lab tests, and the helpers every lab module used to write for itself.

A stage is what several modules need before their own tests begin.  ``PrimaryStage`` is a primary through
steps 02-04 (PostgreSQL 15 installed and configured with TLS, connections allowed, the app role and its
database), built once per worker (the session fixture ``primary_stage`` in conftest.py): its cluster is stopped
(a data directory is copied only while its cluster is down), the server's upper layer snapshotted
(:func:`hcbpg.lab.hosts.snapshot_host`) and the server destroyed.  A module then asks ``primary_stage.clone()``
for a server of its own made from that snapshot, PostgreSQL running; it runs steps 02-04 itself again, which
find nothing to change with its params, and it destroys the server at its end as before.  Modules of one worker
run one after another, so each can have the stage's name and address in turn (what the snapshot's
configuration names); test_server_steps still builds its servers from nothing, as that is what it tests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hcbpg.lab import Lab, create_server_host, destroy_server_host
from hcbpg.lab.hosts import snapshot_host

from labparams import lab_params

REPO = Path(__file__).resolve().parents[2]

#: the stage's server: the name every lab module gives its primary, at an address no module picks itself
STAGE_PRIMARY = "server-postgres-1"
STAGE_PRIMARY_OFFSET = 200


@dataclass
class PrimaryStage:
    """A primary after steps 02-04, as a snapshot; :meth:`clone` makes a running server of it."""

    lab: Lab
    snapshot: Path
    name: str
    ip: str
    seconds: float  # what building it took (what each clone saves)

    def clone(self) -> str:
        """A server made from the stage (its name and address, PostgreSQL started); its address."""
        key = self.lab.ssh_key.with_suffix(".pub").read_text()
        create_server_host(self.name, self.ip, [key], lab_dir=str(self.lab.lab_dir), snapshot=self.snapshot)
        self.lab.exec(self.name, "pg_ctlcluster 15 main start", check=True)
        # the app role has the lab's password as it is now, as if this module had run step 04 itself: a module
        # before this one may have rotated it (the lab's secret file is what params refer to); on stdin only
        password = self.lab.cfg.secret_path("rails-password").read_text().strip()
        quoted = "'" + password.replace("'", "''") + "'"
        cp = self.lab.exec(self.name, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"],
                           input=f"ALTER ROLE rails PASSWORD {quoted};\n", user="postgres", timeout=60)
        assert cp.returncode == 0, cp.stderr[-2000:]
        return self.ip


@contextlib.contextmanager
def primary_and_jumpbox(lab: Lab, primary_stage: PrimaryStage, jumpbox: str, jumpbox_ip: str) -> Iterator[None]:
    """The stage's clone (PostgreSQL running) and a jumpbox host *jumpbox* at *jumpbox_ip*, made for a module and
    destroyed at its end (what test_exporters_tls_lab and test_alerting_faults each wrote for themselves)."""
    try:
        primary_stage.clone()
        create_server_host(jumpbox, jumpbox_ip, [lab.ssh_key.with_suffix(".pub").read_text()],
                           lab_dir=str(lab.lab_dir))
        yield
    finally:
        for name in (primary_stage.name, jumpbox):
            destroy_server_host(name, lab_dir=str(lab.lab_dir))


def side_by_side(*calls: Callable[[], Any]) -> list[Any]:
    """Each of *calls* in a thread of its own, all at once; their results in order (the first failure raised once
    all ended).  For setups on different machines, each through its own SSH connection (a replica's steps 02-03
    beside the primary's pgBackRest), as two operators' shells would run them."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(c) for c in calls]
        concurrent.futures.wait(futures)
    return [f.result() for f in futures]


def start_archiving_with_a_backup(host: Any, params: Any) -> None:
    """Steps 05 and 08 on the params' primary by their code (pgBackRest, archiving on) and the first full backup
    as step 08 takes it (the repository is not empty): what a module needing an archiving primary runs first."""
    from hcbpg.ops import drill
    from hcbpg.steps import pgbackrest as step05
    from hcbpg.steps import start_archiving as step08

    step05.configure(host, params, params.primary)
    step08.start_archiving(host, params, params.primary)
    drill.ensure_baseline_backup(host, params)


def build_primary_stage(lab: Lab, where: Path) -> PrimaryStage:
    """Steps 02-04 on a new primary (as each module's fixture ran them), then its snapshot, then it goes."""
    import time

    from hcbpg.adapters.host import Host
    from hcbpg.ops import cluster as pg_cluster
    from hcbpg.params import parse_params
    from hcbpg.secrets import resolve
    from hcbpg.steps import allow_connections as allow_step
    from hcbpg.steps import app_role_database as role_step
    from hcbpg.steps import install_postgres as install_step

    t0 = time.monotonic()
    ip = lab.cfg.address(STAGE_PRIMARY_OFFSET)
    key = lab.ssh_key.with_suffix(".pub").read_text()
    create_server_host(STAGE_PRIMARY, ip, [key], lab_dir=str(lab.lab_dir))
    try:
        params = parse_params(lab_params(lab, [(STAGE_PRIMARY, ip, "primary")]))
        host = Host.from_params(params, STAGE_PRIMARY, ip)
        try:
            install_step.install_server(host, params, params.primary)
            allow_step.allow_connections(host, params, params.primary)
            password = resolve(params.postgres.app_role_password, key="postgres.app_role_password")
            role_step.app_role_database(pg_cluster.get_psql(host, params), params, password)
        finally:
            host.close()
        lab.exec(STAGE_PRIMARY, "pg_ctlcluster 15 main stop", check=True)
        snapshot = snapshot_host(lab.cfg, STAGE_PRIMARY, where / "primary-02-04")
    finally:
        destroy_server_host(STAGE_PRIMARY, lab_dir=str(lab.lab_dir))
    return PrimaryStage(lab=lab, snapshot=snapshot, name=STAGE_PRIMARY, ip=ip, seconds=time.monotonic() - t0)


# -- the CLI and its record, as several modules need them ---------------------------------------------------------

def cli(env: dict[str, str], *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess with *env* over this process's environment (the operator's view)."""
    full = {k: v for k, v in os.environ.items() if k not in ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS",
                                                             "HCBPG_AUTO_APPROVE")}
    full.update(env)
    if args[:1] in (("run",), ("resume",)) and "--yes" not in args:
        args = (*args, "--yes")  # params without the lab's site ask first (hcbpg.cli.confirm): a test has no terminal
    return subprocess.run([sys.executable, "-m", "hcbpg.cli", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, cwd=REPO)


def latest_manifest(home: Path, env_name: str = "lab") -> dict:
    """The manifest of the newest run of *env_name* under *home*."""
    return json.loads(latest_run_dir(home, env_name).joinpath("manifest.json").read_text())


def latest_run_dir(home: Path, env_name: str = "lab") -> Path:
    """The newest run's directory of *env_name* under *home* (``<UTC time>_<run id>``)."""
    return sorted((home / "outputs" / env_name).glob("*_*/manifest.json"))[-1].parent


def scrap(notebook: Path, name: str):
    """The value an executed notebook recorded under *name* (rb.record: a scrapbook output of a cell)."""
    for cell in json.loads(notebook.read_text())["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {}).get("application/scrapbook.scrap.json+json")
            if data and data["name"] == name:
                return data["data"]
    raise AssertionError(f"{notebook.name} recorded no {name}")


# -- a module's own source and run home (the online modules: test_online, test_online_shapes, test_online_heroku) --

def load_source(lab: Lab, sql: str) -> None:
    """*sql* run on the lab's Heroku-like source as postgres (a module's own source database)."""
    cp = lab.exec("source", ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"], input=sql,
                  user="postgres", timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]


def private_file(path: Path, text: str) -> Path:
    """*text* in *path*, 0600, its directory made 0700 (a secret a params reference points at)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


def run_home(tmp: Path, data: dict, steps: list[str], monkeypatch_module, *, on_demand: tuple[str, ...] = (),
             env: dict[str, str] | None = None) -> Path:
    """An HCBPG_HOME under *tmp* with params *data* as lab.yaml and the notebooks of *steps* (those in *on_demand*
    on demand), set in this process's environment (with *env*) for the module; the runner's own variables unset."""
    home = tmp / "home"
    (home / "params").mkdir(parents=True)
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    nb_dir = home / "notebooks"
    nb_dir.mkdir()
    for s in steps:
        shutil.copy(REPO / "notebooks" / f"{s}.ipynb", nb_dir)
    (nb_dir / "steps.yaml").write_text(yaml.safe_dump({"steps": [
        {"notebook": f"{s}.ipynb", "title": s, **({"on_demand": True} if s in on_demand else {})} for s in steps]}))
    for k, v in {"HCBPG_HOME": str(home), "HCBPG_NOTEBOOKS": str(nb_dir), "HCBPG_STATE_DIR": str(tmp / "state"),
                 "HCBPG_OPERATOR": "lab-test", "XDG_STATE_HOME": str(tmp / "xdg"), **(env or {})}.items():
        monkeypatch_module.setenv(k, v)
    for k in ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS", "HCBPG_AUTO_APPROVE"):
        monkeypatch_module.delenv(k, raising=False)
    return home
