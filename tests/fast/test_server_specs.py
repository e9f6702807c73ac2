"""Specs of steps 02 and 03's operations on the recording double: a server's state in → commands, writes
and Outcome out (hcbpg.ops.packages, hcbpg.ops.cluster, hcbpg.ops.config, hcbpg.ops.tls).

:class:`Server` keeps a server's state (dpkg, ``pg_lsclusters``, files, what ``pg_settings`` and
``pg_file_settings`` say) behind a :class:`RecordingHost`: probes and psql reads are answered from it,
and what the operation runs changes it as the real command would (``apt-get install``,
``pg_createcluster``, ``pg_ctlcluster``).  A dry run is the same call on a :class:`DryRunHost` over the
same state; a server not there yet an :class:`AbsentHost`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.certs import render_ca
from hcbpg.desired.packages import PGDG_KEY, PGDG_SOURCES, render_pgdg_sources
from hcbpg.desired.server import hba_path, render_pg_hba, render_settings, settings_path
from hcbpg.errors import DatabaseError, RemoteCommandError, SafetyCheckFailed, SecretError
from hcbpg.ops import cluster, config, packages, tls
from hcbpg.params import parse_params
from hcbpg.pg.cluster import create_command, ctl_command
from tests.fast.specs import covers

NAME = "server-postgres-1"
OS_RELEASE = 'PRETTY_NAME="Ubuntu 24.04 LTS"\nVERSION_CODENAME=noble\n'
ALL_PACKAGES = {"postgresql-common": "262", "postgresql-15": "15.10-1.pgdg24.04+1", "libpq-dev": "17.2",
                "pgbackrest": "2.54"}
CREATE = create_command(15, "main", port=5432)
START, RELOAD, RESTART = (ctl_command(15, "main", a) for a in ("start", "reload", "restart"))
APT_UPDATE = "DEBIAN_FRONTEND=noninteractive apt-get update -q"
APT_INSTALL = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "


@pytest.fixture
def params(tmp_path, monkeypatch):
    """Lab params whose CA lives under *tmp_path* (made on the first real run, as in production)."""
    monkeypatch.setenv("HCBPG_HOME", str(tmp_path))
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield parse_params({
        "environment": "lab",
        "hetzner": {"token": "env:HCBPG_TEST_TOKEN", "ssh_public_key_file": "/dev/null"},
        "servers": [{"name": NAME, "private_ip": "10.0.1.5", "role": "primary"}],
        "postgres": {"app_role_password": "env:HCBPG_TEST_APP_PW"},
    })
    tls._CA_CACHE.clear()


class Server:
    """One server's state behind a :class:`RecordingHost`, changed by what runs there as the real
    commands would change it."""

    def __init__(self, *, installed: dict[str, str] | None = None, cluster: str | None = None,
                 files: dict[str, str] | None = None, start_fails: bool = False,
                 file_errors: list[dict[str, Any]] | tuple[()] = (), include_dir: bool = True,
                 hba_errors: list[dict[str, Any]] | tuple[()] = (), postmaster: tuple[str, ...] = (),
                 pending_after_reload: tuple[str, ...] = (), checksums: bool = True) -> None:
        self.installed = dict(ALL_PACKAGES if installed is None else installed)
        self.cluster = cluster            # None, "stopped" or "running"
        self.checksums = checksums        # what pg_controldata says of the cluster's data directory
        self.start_fails = start_fails
        self.file_errors, self.include_dir, self.hba_errors = list(file_errors), include_dir, list(hba_errors)
        self.postmaster, self.pending_after_reload = set(postmaster), list(pending_after_reload)
        self.pending: list[str] = []
        self.load_time = 1
        base = {"/etc/os-release": OS_RELEASE}
        if "postgresql-common" in self.installed:
            base[PGDG_KEY] = "the PGDG signing key"
        self.host = RecordingHost(NAME, handler=self.answer, files={**base, **(files or {})})

    @property
    def files(self) -> dict[str, str]:
        return self.host.files

    def answer(self, call: Call) -> Result | str | None:
        cmd, sql = call.command, call.stdin or ""
        if cmd.startswith("dpkg-query"):
            asked = re.findall(r"'?([a-z0-9.+-]+)'?(?= |$)", cmd.split("' ", 1)[1])
            return "".join(f"{p}\tii \t{v}\n" for p, v in self.installed.items() if p in asked)
        if cmd == "pg_lsclusters --json":
            if "postgresql-common" not in self.installed:
                return Result(NAME, cmd, 127, "", "pg_lsclusters: command not found", 0.0)
            return json.dumps([] if self.cluster is None else [{
                "version": 15, "cluster": "main", "port": 5432, "running": int(self.cluster == "running"),
                "pgdata": "/var/lib/postgresql/15/main", "logfile": "/var/log/postgresql/postgresql-15-main.log"}])
        if cmd.startswith("/usr/lib/postgresql/15/bin/psql -p 5432"):
            return self.sql(call, sql)
        if "pg_controldata -D /var/lib/postgresql/15/main" in cmd and self.cluster is not None:
            return f"Database cluster state:  shut down\nData page checksum version:  {int(self.checksums)}\n"
        if cmd.startswith("tail -n 20"):
            return "FATAL:  could not load server certificate file"
        if "apt-get update" in cmd:
            return ""
        if "apt-get install" in cmd:
            for p in cmd.split("--no-install-recommends ", 1)[1].split():
                self.installed[p] = "1"
                if p == "postgresql-common":
                    self.files[PGDG_KEY] = "the PGDG signing key"
            return ""
        if cmd == CREATE:
            self.cluster, self.checksums = "stopped", True
            return ""
        if cmd == START:
            if self.start_fails:
                return Result(NAME, cmd, 1, "", "Job for postgresql@15-main failed", 0.0)
            self.cluster = "running"
            return ""
        if cmd == RELOAD:
            self.load_time += 1
            self.pending = list(self.pending_after_reload)
            return ""
        if cmd == RESTART:
            self.pending = []
            return ""
        if (call.options.get("display") or "").startswith("directory "):
            return ""
        if cmd.startswith("mv -f "):
            for src, dst in re.findall(r"mv -f (\S+) (\S+)", cmd):
                self.files[dst] = self.files.pop(src)
            return ""
        if cmd.startswith("rm -f "):
            self.files.pop(cmd.split()[-1], None)
            return ""
        return None

    def sql(self, call: Call, text: str) -> str:
        if "pg_conf_load_time()" in text:
            return json.dumps([{"t": str(self.load_time)}])
        if "WHERE pending_restart" in text:
            return json.dumps([{"name": n} for n in sorted(self.pending)])
        if "context = 'postmaster'" in text:
            asked = set(re.findall(r"[a-z_]+", text.split("ANY(", 1)[1]))
            return json.dumps([{"name": n} for n in sorted(self.postmaster) if n in asked])
        if "FROM pg_file_settings" in text and "error IS NOT NULL" in text:
            return json.dumps(self.file_errors)
        if "FROM pg_file_settings" in text:
            return json.dumps([{"n": 1 if self.include_dir else 0}])
        if "FROM pg_hba_file_rules WHERE error IS NOT NULL" in text:
            return json.dumps(self.hba_errors)
        raise AssertionError(f"the spec's server has no answer for {text!r}")


def installed_state(params, server_state: str = "running", *, files: dict[str, str] | None = None,
                    **kw: Any) -> Server:
    """A server after step 02's install: packages, the PGDG sources, a cluster (and *files*)."""
    return Server(cluster=server_state, files={PGDG_SOURCES: render_pgdg_sources("noble"), **(files or {})}, **kw)


# packages ------------------------------------------------------------------------------------------

@covers("hcbpg.ops.packages.ensure_packages", "fresh", "second run", "dry run")
def test_fresh_host_installs_postgresql_common_first_then_the_repo_then_the_rest(params):
    srv = Server(installed={})
    outcomes = packages.ensure_packages(srv.host, params)
    assert all(o.changed and not o.dry_run for o in outcomes)
    assert srv.host.journal == [APT_UPDATE, APT_INSTALL + "postgresql-common", f"write {PGDG_SOURCES}",
                                APT_UPDATE, APT_INSTALL + "postgresql-15 libpq-dev pgbackrest"]
    assert srv.files[PGDG_SOURCES] == render_pgdg_sources("noble")
    assert not any("| sh" in c or "| bash" in c or "apt.postgresql.org.sh" in c for c in srv.host.commands)
    # second run: dpkg says everything is there, so no apt at all (no network)
    srv.host.journal.clear()
    again = packages.ensure_packages(srv.host, params)
    assert not any(o.changed for o in again) and srv.host.journal == []


@covers("hcbpg.ops.packages.ensure_packages", "dry run")
@covers("hcbpg.ops.packages.ensure_pgdg_repo", "dry run")
def test_missing_packages_plan_lists_them_and_a_dry_run_runs_nothing(params):
    srv = Server(installed={"postgresql-common": "1"})
    dry = DryRunHost(srv.host)
    outcomes = packages.ensure_packages(dry, params)
    assert [o.verb for o in outcomes] == ["would change", "would change"]
    assert "Suites: noble-pgdg" in outcomes[0].diff
    assert outcomes[1].actions == ["apt-get install postgresql-15 libpq-dev pgbackrest (PGDG repository)"]
    assert dry.journal == [f"write {PGDG_SOURCES}", APT_UPDATE, APT_INSTALL + "postgresql-15 libpq-dev pgbackrest"]
    assert srv.host.journal == [] and PGDG_SOURCES not in srv.files


@covers("hcbpg.ops.packages.ensure_packages", "fresh", "dry run")
@covers("hcbpg.ops.packages.ensure_pgdg_repo", "fresh", "dry run")
def test_a_server_not_there_yet_plans_everything_for_the_image_params_name(params):
    absent = AbsentHost(NAME)
    outcomes = packages.ensure_packages(absent, params)
    assert [o.verb for o in outcomes] == ["would change"] * 3
    assert "Suites: noble-pgdg" in outcomes[1].diff   # hetzner.image ubuntu-24.04
    assert absent.journal == [APT_UPDATE, APT_INSTALL + "postgresql-common", f"write {PGDG_SOURCES}",
                              APT_UPDATE, APT_INSTALL + "postgresql-15 libpq-dev pgbackrest"]


@covers("hcbpg.ops.packages.ensure_pgdg_repo", "fresh", "second run")
def test_pgdg_sources_written_once(params):
    srv = Server()
    out = packages.ensure_pgdg_repo(srv.host, params)
    assert out.changed and srv.host.journal == [f"write {PGDG_SOURCES}"]
    assert srv.host.written[0][2:] == (0o644, "root", "root")
    assert not packages.ensure_pgdg_repo(srv.host, params).changed and len(srv.host.journal) == 1


@covers("hcbpg.ops.packages.ensure_pgdg_repo", "refusal")
@covers("hcbpg.ops.packages.ensure_packages", "refusal")
def test_no_sources_without_the_signing_key_and_no_packages_without_a_known_distribution(params):
    srv = Server()
    del srv.files[PGDG_KEY]
    with pytest.raises(SafetyCheckFailed, match="PGDG signing key"):
        packages.ensure_pgdg_repo(srv.host, params)
    assert srv.host.journal == []
    odd = Server(installed={}, files={"/etc/os-release": "ID=alpine\n"})
    with pytest.raises(RemoteCommandError, match="VERSION_CODENAME"):
        packages.ensure_packages(odd.host, params)
    assert odd.host.journal == [APT_UPDATE, APT_INSTALL + "postgresql-common"]  # nothing after the refusal


# the cluster ---------------------------------------------------------------------------------------

@covers("hcbpg.ops.cluster.ensure_cluster_exists", "fresh", "second run", "dry run")
def test_cluster_created_once_with_checksums(params):
    srv = Server()
    dry = DryRunHost(srv.host)
    planned = cluster.ensure_cluster_exists(dry, params)
    assert planned.verb == "would change" and dry.journal == [CREATE] and srv.cluster is None
    out = cluster.ensure_cluster_exists(srv.host, params)
    assert out.changed and out.actions == [CREATE] and srv.cluster == "stopped"
    assert "--data-checksums" in CREATE and "--locale C.UTF-8" in CREATE
    assert not cluster.ensure_cluster_exists(srv.host, params).changed and srv.host.journal == [CREATE]


@covers("hcbpg.ops.cluster.ensure_cluster_exists", "refusal")
def test_cluster_creation_that_fails_is_raised_with_its_command(params):
    srv = Server()
    srv.host.script.insert(0, (re.compile("^pg_createcluster"),
                               Result(NAME, CREATE, 1, "", "Error: port 5432 is already used", 0.0)))
    with pytest.raises(RemoteCommandError, match="port 5432 is already used"):
        cluster.ensure_cluster_exists(srv.host, params)
    assert srv.cluster is None


@covers("hcbpg.ops.cluster.ensure_cluster_running", "fresh", "second run", "dry run")
def test_cluster_started_once(params):
    srv = Server(cluster="stopped")
    dry = DryRunHost(srv.host)
    assert cluster.ensure_cluster_running(dry, params).verb == "would change" and dry.journal == [START]
    assert srv.cluster == "stopped"
    out = cluster.ensure_cluster_running(srv.host, params)
    assert out.changed and srv.host.journal == [START] and srv.cluster == "running"
    assert not cluster.ensure_cluster_running(srv.host, params).changed and srv.host.journal == [START]
    # a plan on a server not there yet: created, then started (both recorded)
    absent = AbsentHost(NAME)
    cluster.ensure_cluster_exists(absent, params)
    assert cluster.ensure_cluster_running(absent, params).changed and absent.journal == [CREATE, START]


@covers("hcbpg.ops.cluster.ensure_cluster_running", "refusal")
def test_no_cluster_no_start_and_a_failed_start_shows_the_log(params):
    srv = Server()
    with pytest.raises(SafetyCheckFailed, match="does not exist"):
        cluster.ensure_cluster_running(srv.host, params)
    assert srv.host.journal == []
    with pytest.raises(SafetyCheckFailed, match="does not exist"):   # a plan that did not create it either
        cluster.ensure_cluster_running(DryRunHost(srv.host), params)
    broken = Server(cluster="stopped", start_fails=True)
    with pytest.raises(RemoteCommandError) as ei:
        cluster.ensure_cluster_running(broken.host, params)
    assert "could not load server certificate file" in ei.value.output_tail
    assert "/var/log/postgresql/postgresql-15-main.log" in (ei.value.hint or "")


# include files and pg_hba.conf -----------------------------------------------------------------------

CONNECTIONS = "/etc/postgresql/15/main/conf.d/20-hcbpg-connections.conf"


@covers("hcbpg.ops.config.ensure_settings", "fresh", "second run")
def test_settings_written_then_reloaded_and_a_second_run_does_nothing(params):
    srv = installed_state(params)
    out = config.ensure_settings(srv.host, params, params.primary, "connections")
    assert settings_path(params, "connections") == CONNECTIONS
    assert srv.host.journal == [f"write {CONNECTIONS}", RELOAD]
    assert out.changed and out.actions == [f"write {CONNECTIONS} (listen_addresses, password_encryption)", "reload"]
    assert srv.files[CONNECTIONS] == render_settings(params, params.primary, "connections")
    assert srv.host.written[0][2:] == (0o644, "postgres", "postgres")
    again = config.ensure_settings(srv.host, params, params.primary, "connections")
    assert not again.changed and srv.host.journal == [f"write {CONNECTIONS}", RELOAD]


@covers("hcbpg.ops.config.ensure_settings", "fresh")
def test_settings_of_a_stopped_cluster_are_only_written_and_a_postmaster_setting_restarts(params):
    stopped = installed_state(params, "stopped")
    out = config.ensure_settings(stopped.host, params, params.primary, "identity")
    assert stopped.host.journal == ["write /etc/postgresql/15/main/conf.d/10-hcbpg-identity.conf"]
    assert "(cluster not running: read at its first start)" in out.actions
    running = installed_state(params, postmaster=("max_connections",), pending_after_reload=("max_connections",))
    out = config.ensure_settings(running.host, params, params.primary, "connections", extra={"max_connections": 120})
    assert running.host.journal == [f"write {CONNECTIONS}", RELOAD, RESTART]
    assert out.actions[-1] == "restart the cluster (max_connections need it)"


@covers("hcbpg.ops.config.ensure_settings", "dry run")
def test_settings_plan_says_restart_from_the_settings_context_and_writes_nothing(params):
    srv = installed_state(params, postmaster=("max_connections",))
    dry = DryRunHost(srv.host)
    out = config.ensure_settings(dry, params, params.primary, "connections", extra={"max_connections": 120})
    assert out.verb == "would change" and dry.journal == [f"write {CONNECTIONS}", RELOAD, RESTART]
    assert out.actions[-1] == "restart the cluster (max_connections need it)"
    assert "+max_connections = 120" in out.diff
    assert srv.host.journal == [] and CONNECTIONS not in srv.files and srv.load_time == 1


@covers("hcbpg.ops.config.ensure_settings", "refusal")
@pytest.mark.parametrize("case", ["rejected", "not read"])
def test_settings_postgresql_refuses_are_put_back(params, case):
    previous = "# the file before\nlisten_addresses = 'localhost'\n"
    if case == "rejected":
        srv = installed_state(params, files={CONNECTIONS: previous},
                              file_errors=[{"sourceline": 3, "name": "work_mem", "error": "invalid value"}])
        err: type[Exception] = DatabaseError
    else:
        srv = installed_state(params, files={CONNECTIONS: previous},
                              include_dir=False)
        err = SafetyCheckFailed
    with pytest.raises(err) as ei:
        config.ensure_settings(srv.host, params, params.primary, "connections")
    assert srv.files[CONNECTIONS] == previous   # the previous version is back
    assert RELOAD not in srv.host.journal and srv.load_time == 1
    assert ("line 3 work_mem: invalid value" if case == "rejected" else "include_dir") in str(ei.value)


ARCHIVING = "/etc/postgresql/15/main/conf.d/40-spec-archiving.conf"
ARCHIVING_TEXT = "archive_mode = on\narchive_command = 'true'\n"


@covers("hcbpg.ops.config.ensure_settings_file", "fresh", "second run", "dry run")
def test_settings_file_restarts_only_for_its_own_pending_settings_when_asked(params):
    srv = installed_state(params, pending_after_reload=("shared_buffers",))   # pending from elsewhere
    dry = DryRunHost(srv.host)
    plan = config.ensure_settings_file(dry, params, params.primary, ARCHIVING, ARCHIVING_TEXT, what="archiving",
                                       own_pending_only=True)
    assert plan.verb == "would change" and dry.journal == [f"write {ARCHIVING}", RELOAD] and ARCHIVING not in srv.files
    out = config.ensure_settings_file(srv.host, params, params.primary, ARCHIVING, ARCHIVING_TEXT, what="archiving",
                                      own_pending_only=True)
    assert out.changed and srv.host.journal == [f"write {ARCHIVING}", RELOAD]   # shared_buffers is not its own
    assert not config.ensure_settings_file(srv.host, params, params.primary, ARCHIVING, ARCHIVING_TEXT,
                                           what="archiving", own_pending_only=True).changed
    assert srv.host.journal == [f"write {ARCHIVING}", RELOAD]
    # without own_pending_only any pending restart counts (a setting removed goes back to a default needing one)
    assert config.ensure_settings_file(srv.host, params, params.primary, ARCHIVING, ARCHIVING_TEXT,
                                       what="archiving").actions == ["restart the cluster (shared_buffers need it)"]


@covers("hcbpg.ops.config.ensure_settings_file", "refusal")
def test_settings_file_postgresql_rejects_goes_away_again(params):
    srv = installed_state(params, file_errors=[{"sourceline": 1, "name": "archive_mode", "error": "bad value"}])
    with pytest.raises(DatabaseError, match="line 1 archive_mode: bad value"):
        config.ensure_settings_file(srv.host, params, params.primary, ARCHIVING, ARCHIVING_TEXT, what="archiving")
    assert ARCHIVING not in srv.files and srv.host.journal == [f"write {ARCHIVING}", f"rm -f {ARCHIVING}"]


@covers("hcbpg.ops.config.ensure_pg_hba", "fresh", "second run", "dry run")
def test_pg_hba_written_whole_then_reloaded_once(params):
    srv = installed_state(params, files={hba_path(params): "host all all 0.0.0.0/0 md5\n"})
    dry = DryRunHost(srv.host)
    plan = config.ensure_pg_hba(dry, params, params.primary)
    assert plan.verb == "would change" and dry.journal == [f"write {hba_path(params)}", RELOAD]
    removed = [a for a in plan.actions if a.startswith("remove rule")]
    assert len(removed) == 1 and removed[0].split()[2:] == ["host", "all", "all", "0.0.0.0/0", "md5"]
    assert srv.load_time == 1
    out = config.ensure_pg_hba(srv.host, params, params.primary)
    assert srv.host.journal == [f"write {hba_path(params)}", RELOAD] and srv.load_time == 2
    assert srv.files[hba_path(params)] == render_pg_hba(params, params.primary)
    assert srv.host.written[0][2:] == (0o640, "postgres", "postgres")
    assert out.diff.startswith("--- /etc/postgresql/15/main/pg_hba.conf (current)")
    assert not config.ensure_pg_hba(srv.host, params, params.primary).changed and len(srv.host.journal) == 2
    fresh = AbsentHost(NAME)
    assert config.ensure_pg_hba(fresh, params, params.primary).changed and fresh.journal == [f"write {hba_path(params)}"]


@covers("hcbpg.ops.config.ensure_pg_hba", "refusal")
def test_pg_hba_postgresql_rejects_is_put_back_and_not_reloaded(params):
    old = "local all all peer\n"
    srv = installed_state(params, files={hba_path(params): old},
                          hba_errors=[{"line_number": 7, "error": "invalid authentication method"}])
    with pytest.raises(DatabaseError, match="line 7: invalid authentication method"):
        config.ensure_pg_hba(srv.host, params, params.primary)
    assert srv.files[hba_path(params)] == old and RELOAD not in srv.host.journal


# TLS ---------------------------------------------------------------------------------------------

def _ca_dir_write(params) -> list[str]:
    return ["directory /etc/hcbpg/tls (mode 0755, owner root:root)", f"write {desired_tls.client_ca_path(params)}"]


@covers("hcbpg.ops.tls.ensure_client_ca", "fresh", "second run", "dry run")
def test_client_ca_written_once_and_a_plan_makes_no_ca(params, tmp_path):
    srv = Server()
    dry = DryRunHost(srv.host)
    assert tls.ensure_client_ca(dry, params).verb == "would change" and dry.journal == _ca_dir_write(params)
    assert not list(tmp_path.rglob("*.crt")) and srv.host.journal == []   # a plan makes no CA
    out = tls.ensure_client_ca(srv.host, params)
    assert out.changed and srv.host.journal == _ca_dir_write(params)
    ca_pem = srv.files[desired_tls.client_ca_path(params)]
    assert ca_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "params" / "lab.postgres-ca.crt").read_text() == ca_pem
    assert not tls.ensure_client_ca(srv.host, params).changed and len(srv.host.journal) == 2


@covers("hcbpg.ops.tls.ensure_client_ca", "refusal")
def test_client_ca_refused_when_the_ca_key_is_not_the_certificates(params, tmp_path):
    tls.ensure_client_ca(Server().host, params)        # makes the CA
    tls._CA_CACHE.clear()
    (tmp_path / "params" / "lab.postgres-ca.crt").write_text(render_ca("elsewhere").cert_pem)
    srv = Server()
    with pytest.raises(SecretError, match="does not belong to the CA certificate"):
        tls.ensure_client_ca(srv.host, params)
    assert srv.host.journal == []


@covers("hcbpg.ops.tls.ensure_server_tls", "fresh", "second run", "dry run")
def test_server_certificate_issued_once_key_first(params):
    srv = installed_state(params)
    key, crt = desired_tls.server_key_path(params), desired_tls.server_cert_path(params)
    dry = DryRunHost(srv.host)
    planned = tls.ensure_server_tls(dry, params, params.primary)
    assert [o.verb for o in planned] == ["would change", "would change"]
    assert planned[1].actions[0] == "issued: no certificate yet" and srv.host.journal == []
    out = tls.ensure_server_tls(srv.host, params, params.primary)
    assert [o.changed for o in out] == [True, True]
    tail = srv.host.journal[2:]
    assert tail[0] == "directory /etc/postgresql/15/main/tls (mode 0750, owner postgres:postgres)"
    assert tail[1:3] == [f"write {key}.new", f"write {crt}.new"]      # the key first
    assert tail[3].startswith(f"mv -f {key}.new {key} && mv -f {crt}.new {crt}") and len(tail) == 4  # no reload: new
    assert srv.host.written[-2][2:4] == (0o600, "postgres") and srv.files[crt].startswith("-----BEGIN CERTIFICATE")
    seen = len(srv.host.journal)
    assert not any(o.changed for o in tls.ensure_server_tls(srv.host, params, params.primary))
    assert len(srv.host.journal) == seen


@covers("hcbpg.ops.tls.ensure_server_tls", "fresh")
def test_server_certificate_renewed_near_its_end_then_reloaded(params):
    srv = installed_state(params)
    tls.ensure_server_tls(srv.host, params, params.primary)
    before = srv.files[desired_tls.server_cert_path(params)]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=params.tls.cert_days - params.tls.renew_days + 1)
    out = tls.ensure_server_tls(srv.host, params, params.primary, now=later)
    assert out[1].actions[0].startswith("renewed: expires in") and srv.host.journal[-1] == RELOAD
    assert srv.files[desired_tls.server_cert_path(params)] != before


@covers("hcbpg.ops.tls.ensure_server_tls", "refusal")
def test_server_certificate_write_refused_changes_nothing_after_it(params):
    srv = installed_state(params)
    srv.host.script.insert(0, (re.compile(r"hcbpg: refusing to use /etc/postgresql/15/main/tls"),
                               Result(NAME, "directory", 77, "", "hcbpg: refusing to use it: a symbolic link", 0.0)))
    with pytest.raises(RemoteCommandError, match="symbolic link"):
        tls.ensure_server_tls(srv.host, params, params.primary)
    assert not any(p.startswith("/etc/postgresql/15/main/tls") for p in srv.files)
    assert not any(j.startswith("write /etc/postgresql") or j.startswith("mv ") for j in srv.host.journal)
