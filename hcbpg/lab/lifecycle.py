"""The lab as a whole: :class:`Lab` brings it up (idempotently), reports its status and
tears down everything it made, also after a ``lab up`` that was killed halfway."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shlex
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hcbpg.errors import LabError
from hcbpg.lab import hosts as h
from hcbpg.lab import s3, source
from hcbpg.lab.core import (
    DEADMAN_PORT,
    HCLOUD_PORT,
    S3_BUCKET,
    S3_PORT,
    S3B_BUCKET,
    S3B_PORT,
    SECRET_FILES,
    LabConfig,
    atomic_write,
    check_lab_packages,
    check_platform,
    editing_state,
    kill_netns_processes,
    kill_pids,
    locked,
    netns_list,
    pid_alive,
    proc_starttime,
    processes_with_args,
    read_state,
    run,
    stale_scratch_dirs,
    tcp_open,
    write_state,
)

Log = Callable[[str], None]

_ALNUM = string.ascii_letters + string.digits


def _rand(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


#: the principal of the lab operator's key in the lab's allowed-signers file
LAB_SIGNER = "hcbpg-lab-operator"


class Lab:
    """One rehearsal lab, named by its directory (default ``/var/lib/hcbpg-lab``)."""

    def __init__(self, lab_dir: str | os.PathLike[str] | None = None, *,
                 log: Log | None = None) -> None:
        self.cfg = LabConfig.load(lab_dir)
        self._log = log or (lambda msg: None)

    # paths and addresses -------------------------------------------------------------
    @property
    def lab_dir(self) -> Path:
        return self.cfg.lab_dir

    @property
    def ssh_key(self) -> Path:
        return self.cfg.ssh_key

    def ip(self, host: str) -> str:
        """Private IP of a running lab host."""
        hst = read_state(self.cfg)["hosts"].get(host)
        if not hst:
            raise LabError(f"no lab host named {host}")
        return hst["ip"]

    def secret(self, name: str) -> str:
        """Value of a lab secret (``hcloud-token``, ``rails-password``, ``source-url`` ...)."""
        return self.cfg.read_secret(name)

    # up ---------------------------------------------------------------------------------
    def up(self, source_rows: int | None = None, source_mb: float | None = None, *,
           hcloud: bool | None = None) -> dict[str, Any]:
        """Bring the lab up (idempotent) and return :meth:`status`.

        *hcloud*: start the Hetzner Cloud API stand-in; None = when its module exists.
        The source is seeded once; to change its size, ``down`` first.
        """
        check_platform()
        check_lab_packages()
        size = source.plan_size(source_rows, source_mb)
        cfg = self.cfg
        t0 = time.monotonic()
        with locked(cfg):
            cfg.save()
            for d, mode in ((cfg.lab_dir, 0o755), (cfg.ssh_dir, 0o700), (cfg.secrets_dir, 0o700),
                            (cfg.tls_dir, 0o755), (cfg.hosts_dir, 0o700), (cfg.logs_dir, 0o700)):
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, mode)
            self._ensure_ssh_key()
            self._ensure_secrets()
            s3.ensure_ca(cfg)
            s3.ensure_s3_cert(cfg)
            s3.ensure_s3_cert(cfg, cfg.s3b_ip)
            h.ensure_address_guard()
            h.ensure_bridge(cfg)
            self._ensure_s3b_address()
            h.ensure_outsider(cfg)
            self._log(f"network: bridge {cfg.bridge} {cfg.gateway_ip}/{cfg.prefixlen}")
            s3_proc = self._start_service("s3", s3.s3_argv(cfg), S3_PORT, wait=False)
            s3b_proc = self._start_service("s3b", self._s3b_argv(), S3B_PORT, wait=False)
            want_hcloud = hcloud if hcloud is not None else (
                importlib.util.find_spec("hcbpg.lab.hcloud_api") is not None)
            dm_proc = self._start_service("deadman", self._deadman_argv(), DEADMAN_PORT, wait=False)
            hc_proc = None
            if want_hcloud:
                hc_proc = self._start_service("hcloud", self._hcloud_argv(), HCLOUD_PORT, wait=False)
            key = [cfg.ssh_key.with_suffix(".pub").read_text()]
            h.create_host(cfg, "app", "app", cfg.app_ip, key)
            self._log(f"host app at {cfg.app_ip}")
            old_jumpbox = read_state(cfg)["hosts"].get("jumpbox")
            if old_jumpbox and old_jumpbox.get("role") == "jumpbox":
                # a lab brought up by an earlier hcbpg had a jumpbox host of its own at .40: step 01 creates the
                # jumpbox now (params' jumpbox section, through the API stand-in), at that address
                h.destroy_host(cfg, "jumpbox")
                self._log(f"host jumpbox at {cfg.jumpbox_ip} removed: step 01 creates the jumpbox")
            state = read_state(cfg)
            src = state["hosts"].get("source")
            seeded = state.get("source") or {}
            if src and not (seeded.get("seeded") and seeded.get("host_starttime") == src.get("starttime")):
                # a source whose seeding did not finish (e.g. `up` was killed): start over
                h.destroy_host(cfg, "source")
            h.create_host(cfg, "source", "source", cfg.source_ip, key)
            self._log(f"host source at {cfg.source_ip}")
        self._ensure_source(size)
        with locked(cfg):
            self._wait_service("s3", s3_proc, S3_PORT)
            self._wait_service("s3b", s3b_proc, S3B_PORT)
            self._wait_service("deadman", dm_proc, DEADMAN_PORT)
            if hc_proc is not None or want_hcloud:
                self._wait_service("hcloud", hc_proc, HCLOUD_PORT)
            state = read_state(cfg)
            state["up_seconds"] = round(time.monotonic() - t0, 2)
            write_state(cfg, state)
        self._log(f"lab up in {time.monotonic() - t0:.1f}s")
        return self.status()

    def _ensure_ssh_key(self) -> None:
        if not self.cfg.ssh_key.is_file():
            self.cfg.ssh_key.with_suffix(".pub").unlink(missing_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hcbpg-lab-operator",
                 "-f", str(self.cfg.ssh_key)])
        # the lab operator's key also signs the lab's audit record (params/lab.yaml audit.allowed_signers);
        # generated here, never committed
        kind, blob = self.cfg.ssh_key.with_suffix(".pub").read_text().split()[:2]
        atomic_write(self.cfg.ssh_dir / "allowed_signers",
                     f'{LAB_SIGNER} namespaces="hcbpg-audit,hcbpg-approval" {kind} {blob}\n', 0o644)

    def _ensure_secrets(self) -> None:
        cfg = self.cfg
        gen = {
            "hcloud-token": lambda: _rand(64),
            "rails-password": lambda: secrets.token_urlsafe(24),
            "repuser-password": lambda: secrets.token_urlsafe(24),
            "s3-key": lambda: _rand(20, string.ascii_uppercase + string.digits),
            "s3-key-secret": lambda: _rand(40),
            # the second S3 store's own keys and repo2's own passphrase (pgbackrest.repo2 in params/lab.yaml)
            "s3b-key": lambda: _rand(20, string.ascii_uppercase + string.digits),
            "s3b-key-secret": lambda: _rand(40),
            "cipher-pass-2": lambda: secrets.token_urlsafe(36),
            "cipher-pass": lambda: secrets.token_urlsafe(36),
            "source-password": lambda: secrets.token_hex(32),
            # Patroni's REST API and its etcd user (replication.manager: patroni in params/lab.yaml)
            "patroni-rest-password": lambda: secrets.token_urlsafe(24),
            "etcd-patroni-password": lambda: secrets.token_urlsafe(24),
            # params/lab.yaml alerting: the webhook receiver and the heartbeat's dead-man are the lab's receiver
            # (hcbpg.lab.deadman) at URLs with a token in them, secret references as production's are
            "alerting-webhook-url": lambda: f"http://{cfg.gateway_ip}:{DEADMAN_PORT}/alerts/{secrets.token_hex(12)}",
            "alerting-heartbeat-url": lambda: f"http://{cfg.gateway_ip}:{DEADMAN_PORT}/heartbeat/"
                                              f"{secrets.token_hex(12)}",
        }
        for name, make in gen.items():
            p = cfg.secret_path(name)
            if not p.is_file() or not p.read_text().strip():
                atomic_write(p, make() + "\n", 0o600)
        url = source.source_url(cfg.source_ip, cfg.read_secret("source-password"))
        atomic_write(cfg.secret_path("source-url"), url + "\n", 0o600)
        lines = ["# hcbpg lab secrets (generated by `hcbpg lab up`; one file per secret beside this)"]
        for name, var in SECRET_FILES.items():
            lines.append(f"{var}={shlex.quote(cfg.read_secret(name))}")
        atomic_write(cfg.secrets_file, "\n".join(lines) + "\n", 0o600)

    # services on the operator side ---------------------------------------------------------
    def _hcloud_argv(self) -> list[str]:
        c = self.cfg
        return [sys.executable, "-m", "hcbpg.lab.hcloud_api", "--bind", c.gateway_ip,
                "--port", str(HCLOUD_PORT), "--state", str(c.hcloud_state),
                "--token-file", str(c.secret_path("hcloud-token")),
                # addresses the stand-in must never hand to a new server (the jumpbox's, .40, is step 01's to take)
                "--reserve-ip", c.app_ip, "--reserve-ip", c.source_ip, "--reserve-ip", c.router_ip,
                "--reserve-ip", c.s3b_ip,
                # every firewall becomes iptables in its servers' namespaces, as Hetzner filters (the network's
                # own ip_range never filtered): from the outsider, a server whose firewall has no SSH rule is dropped
                *(["--enforce-firewalls"] if shutil.which("iptables-restore") else [])]

    def _deadman_argv(self) -> list[str]:
        """The dead-man's-switch receiver the scheduled backups ping (pgbackrest.deadman_url)."""
        c = self.cfg
        return [sys.executable, "-m", "hcbpg.lab.deadman", "--bind", c.gateway_ip,
                "--port", str(DEADMAN_PORT), "--log", str(c.logs_dir / "deadman.jsonl")]

    def _s3b_argv(self) -> list[str]:
        """The second S3 store ("another provider", pgbackrest.repo2): the same stand-in at the bridge's second
        address, its own port and bucket (its certificate names that address); ``--bind`` first, so that the
        first store's marker does not match it."""
        c = self.cfg
        return [sys.executable, "-m", "hcbpg.lab.s3", "--bind", c.s3b_ip, "--lab-dir", str(c.lab_dir),
                "--port", str(S3B_PORT), "--bucket", S3B_BUCKET]

    def _ensure_s3b_address(self) -> None:
        """The bridge's second address, where the second S3 store listens (idempotent)."""
        c = self.cfg
        addr = f"{c.s3b_ip}/{c.prefixlen}"
        if addr not in run(["ip", "-o", "addr", "show", "dev", c.bridge]).stdout:
            run(["ip", "addr", "add", addr, "dev", c.bridge])

    def _service_ip(self, name: str) -> str:
        return self.cfg.s3b_ip if name == "s3b" else self.cfg.gateway_ip

    def _service_markers(self) -> dict[str, list[str]]:
        return {"s3": ["hcbpg.lab.s3", "--lab-dir", str(self.cfg.lab_dir)],
                "s3b": ["hcbpg.lab.s3", "--bind", self.cfg.s3b_ip, "--lab-dir", str(self.cfg.lab_dir)],
                "hcloud": ["--state", str(self.cfg.hcloud_state)],
                "deadman": ["hcbpg.lab.deadman", "--log", str(self.cfg.logs_dir / "deadman.jsonl")]}

    def _service_running(self, name: str, port: int, state: dict[str, Any]) -> bool:
        svc = state["services"].get(name) or {}
        return pid_alive(svc.get("pid"), svc.get("starttime")) and tcp_open(self._service_ip(name), port)

    def _start_service(self, name: str, argv: list[str], port: int,
                       wait: bool = True) -> subprocess.Popen[bytes] | None:
        cfg = self.cfg
        state = read_state(cfg)
        if self._service_running(name, port, state) and (state["services"][name].get("argv") == argv):
            return None
        # not running, or started with other arguments (an earlier hcbpg's stand-in without --enforce-firewalls):
        # started again (the stand-in's state is in its file; the S3 store's argv never changes)
        self._stop_service(name)
        env = dict(os.environ)
        env["HCBPG_LAB_DIR"] = str(cfg.lab_dir)
        root = str(Path(__file__).resolve().parents[2])  # the dir holding hcbpg/
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        with open(cfg.logs_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, cwd=str(cfg.lab_dir), start_new_session=True,
                                    close_fds=True)
        state = read_state(cfg)
        state["services"][name] = {"pid": proc.pid, "starttime": proc_starttime(proc.pid),
                                   "port": port, "argv": argv}
        write_state(cfg, state)
        if wait:
            self._wait_service(name, proc, port)
        return proc

    def _wait_service(self, name: str, proc: subprocess.Popen[bytes] | None, port: int) -> None:
        end = time.monotonic() + 30
        ip = self._service_ip(name)
        while not tcp_open(ip, port, 0.3):
            if (proc is not None and proc.poll() is not None) or time.monotonic() > end:
                tail = (self.cfg.logs_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise LabError(f"lab service {name} did not start on {ip}:{port}:\n{tail}",
                               hint=f"See {self.cfg.logs_dir / (name + '.log')}.")
            time.sleep(0.05)
        self._log(f"service {name} on {ip}:{port}")

    def _stop_service(self, name: str) -> None:
        state = read_state(self.cfg)
        pids = set(processes_with_args(self._service_markers()[name]))
        svc = state["services"].get(name) or {}
        if pid_alive(svc.get("pid"), svc.get("starttime")):
            pids.add(svc["pid"])
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 3
        while time.monotonic() < end and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        kill_pids([p for p in pids if pid_alive(p)])
        if name in state["services"]:
            state = read_state(self.cfg)
            state["services"].pop(name, None)
            write_state(self.cfg, state)

    # the Heroku-like source ----------------------------------------------------------------
    def _ensure_source(self, size: source.SourceSize) -> None:
        cfg = self.cfg
        state = read_state(cfg)
        host = state["hosts"]["source"]
        done = state.get("source") or {}
        if done.get("seeded") and done.get("host_starttime") == host["starttime"]:
            note = "" if done.get("rows") == size.rows else (
                f" (asked for {size.rows} rows; `hcbpg lab down` first to change the size)")
            self._log(f"source already seeded with {done.get('rows')} rows{note}")
            return
        t = time.monotonic()
        password = cfg.read_secret("source-password")
        crt, key = s3.issue_cert(cfg, "source", [cfg.source_ip])
        ex = lambda cmd, **kw: h.host_exec(cfg, "source", cmd, check=True, **kw)  # noqa: E731
        ex("pg_createcluster 15 main -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null")
        ex("cat > /etc/postgresql/15/main/conf.d/hcbpg-lab-source.conf", input=source.render_conf(cfg.source_ip))
        ex("umask 077; cat > /etc/postgresql/15/main/server.key", input=key.decode())
        ex("cat > /etc/postgresql/15/main/server.crt", input=crt.decode())
        ex("cd /etc/postgresql/15/main && chown postgres:postgres server.key server.crt "
           "&& chmod 600 server.key && cat >> pg_hba.conf", input=source.HBA_LINES)
        ex("pg_ctlcluster 15 main start")
        sql = (source.render_setup_sql(password) + f"SET ROLE {source.SOURCE_USER};\n"
               + source.render_seed_sql(size).replace("ANALYZE;", "RESET ROLE;\nANALYZE;"))
        ex(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-d", "postgres"], input=sql,
           user="postgres", timeout=None)
        with editing_state(cfg) as state:  # servers may be added meanwhile: re-read under the lock
            state["source"] = {"seeded": True, "host_starttime": host["starttime"],
                               "users": size.users, "events": size.events,
                               "transactions": size.transactions, "rows": size.rows,
                               "seconds": round(time.monotonic() - t, 2)}
        self._log(f"source seeded with {size.rows} rows in {time.monotonic() - t:.1f}s")

    # status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What the lab has: hosts, addresses, services, files (``lab status --json``)."""
        cfg = self.cfg
        state = read_state(cfg)
        namespaces = set(netns_list())
        hosts = []
        for name, hst in sorted(state["hosts"].items(), key=lambda kv: kv[1]["ip"]):
            alive = pid_alive(hst.get("pid"), hst.get("starttime")) and hst["netns"] in namespaces
            services = {"ssh": alive and tcp_open(hst["ip"], 22, 0.3)}
            if hst["role"] == "source":
                services["postgres"] = alive and tcp_open(hst["ip"], 5432, 0.3)
            hosts.append({"name": name, "role": hst["role"], "ip": hst["ip"], "netns": hst["netns"],
                          "pid": hst.get("pid"), "running": alive, "services": services})
        svcs = {}
        for name, port in (("s3", S3_PORT), ("s3b", S3B_PORT), ("hcloud", HCLOUD_PORT), ("deadman", DEADMAN_PORT)):
            svc = state["services"].get(name)
            svcs[name] = {"running": bool(svc) and self._service_running(name, port, state),
                          "pid": (svc or {}).get("pid"), "port": port}
        src = state.get("source") or {}
        return {
            "lab_dir": str(cfg.lab_dir),
            "up": bool(hosts) and all(x["running"] for x in hosts),
            "bridge": cfg.bridge, "subnet": cfg.subnet, "operator_ip": cfg.gateway_ip,
            "hosts": hosts,
            "ssh_key": str(cfg.ssh_key), "ssh_user": "root", "known_hosts": str(cfg.known_hosts),
            "secrets_dir": str(cfg.secrets_dir), "secrets_file": str(cfg.secrets_file),
            "ca_file": str(cfg.ca_cert),
            "hcloud_endpoint": cfg.hcloud_endpoint, "s3_endpoint": cfg.s3_endpoint,
            "deadman_endpoint": f"http://{cfg.gateway_ip}:{DEADMAN_PORT}",
            "deadman_log": str(cfg.logs_dir / "deadman.jsonl"),
            "s3_bucket": S3_BUCKET, "s3b_endpoint": cfg.s3b_endpoint, "s3b_bucket": S3B_BUCKET, "services": svcs,
            "source": {"ip": cfg.source_ip, "database": source.SOURCE_DB, "user": source.SOURCE_USER,
                       "url_file": str(cfg.secret_path("source-url")),
                       "sentinel_user_id": source.SENTINEL_USER_ID,
                       **{k: src[k] for k in ("rows", "users", "events", "transactions") if k in src}},
            "outsider": {"netns": cfg.outsider_netns, "ip": cfg.outsider_ip,
                         "subnet": cfg.outsider_subnet, "router_ip": cfg.router_ip},
        }

    # commands -------------------------------------------------------------------------------
    def exec(self, host: str, command: str | Sequence[str], *, input: str | None = None,
             check: bool = False, timeout: float | None = 600,
             user: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on lab host *host* (in its namespaces and chroot), as root or *user*."""
        return h.host_exec(self.cfg, host, command, input=input, check=check, timeout=timeout,
                           user=user)

    def start_sshd(self, host: str) -> None:
        """(Re)start the sshd of lab host *host* and return once it accepts connections."""
        ip = read_state(self.cfg)["hosts"][host]["ip"]
        h.start_sshd(self.cfg, host, ip)

    def outsider_exec(self, command: str | Sequence[str], *, input: str | None = None,
                      check: bool = False, timeout: float | None = 120,
                      env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on the machine's filesystem but from the outsider address
        (``status()["outsider"]["ip"]``, outside the lab subnet, routed to it)."""
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        full = ["ip", "netns", "exec", self.cfg.outsider_netns] + argv
        cp = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                            env={**h.HOST_ENV, **(env or {})})
        if check and cp.returncode != 0:
            raise LabError(f"outsider command failed with exit code {cp.returncode}: {command}\n"
                           f"{(cp.stdout + cp.stderr)[-2000:]}")
        return cp

    # down ---------------------------------------------------------------------------------
    def down(self, *, purge: bool = False) -> list[str]:
        """Remove every namespace, veth, bridge, process and directory the lab made; return
        what was removed.  Keeps ssh/, secrets/, tls/ and lab.json unless *purge*."""
        check_platform()
        cfg = self.cfg
        removed: list[str] = []
        with locked(cfg):
            for name in ("hcloud", "s3", "s3b", "deadman"):  # hcloud first: no new servers while tearing down
                before = processes_with_args(self._service_markers()[name])
                self._stop_service(name)
                removed += [f"process {p} ({name})" for p in before]
            prefixes = cfg.all_netns_prefixes()
            for ns in netns_list():
                if ns.startswith(prefixes):
                    kill_netns_processes(ns)
                    run(["ip", "netns", "del", ns], check=False)
                    removed.append(f"netns {ns}")
            state = read_state(cfg)
            for hst in state["hosts"].values():
                lp = hst.get("launcher")
                if lp and pid_alive(lp):
                    kill_pids([lp])
            links = run(["ip", "-o", "link", "show"], check=False).stdout
            for line in links.splitlines():
                ifname = line.split(":", 2)[1].strip().split("@")[0]
                if ifname == cfg.bridge or ifname.startswith(cfg.bridge + "-"):
                    run(["ip", "link", "del", ifname], check=False)
                    removed.append(f"link {ifname}")
            for p in (cfg.hosts_dir, cfg.logs_dir):
                if p.exists():
                    h.remove_tree(p)
                    removed.append(f"dir {p}")
            for f in (cfg.state_file, cfg.hcloud_state, cfg.known_hosts):
                if f.exists():
                    f.unlink()
                    removed.append(f"file {f}")
            if purge:
                h.remove_tree(cfg.lab_dir)
                removed.append(f"dir {cfg.lab_dir}")
        return removed

    @classmethod
    def sweep_scratch(cls) -> list[str]:
        """Tear down scratch labs (tests, bench) whose maker was killed; returns their dirs."""
        swept = []
        for d in stale_scratch_dirs():
            try:
                cls(d).down(purge=True)
                swept.append(str(d))
            except LabError:
                pass
        return swept

    def leftovers(self) -> list[str]:
        """Anything of this lab that still exists (namespaces, links, mounts, processes,
        dirs); empty after a complete :meth:`down`."""
        cfg = self.cfg
        out = [f"netns {ns}" for ns in netns_list() if ns.startswith(cfg.all_netns_prefixes())]
        links = run(["ip", "-o", "link", "show"], check=False).stdout
        for line in links.splitlines():
            ifname = line.split(":", 2)[1].strip().split("@")[0]
            if ifname == cfg.bridge or ifname.startswith(cfg.bridge + "-"):
                out.append(f"link {ifname}")
        lab = str(cfg.lab_dir)
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                mounts = Path(entry.path, "mounts").read_text()
            except OSError:
                continue
            if any(f" {lab}/" in ln or f"={lab}/" in ln for ln in mounts.splitlines()):
                out.append(f"mounts of {lab} seen by process {entry.name}")
            try:
                args = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if int(entry.name) != os.getpid() and any(a.startswith(str(cfg.hosts_dir) + "/") for a in args):
                out.append(f"process {entry.name} of a lab host: {' '.join(args)[:120]}")
        for name, marker in self._service_markers().items():
            out += [f"process {p} ({name})" for p in processes_with_args(marker)]
        for p in (cfg.hosts_dir, cfg.logs_dir, cfg.state_file):
            if p.exists():
                out.append(f"path {p}")
        return out
