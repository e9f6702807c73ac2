"""Specs of the backup operations (steps 05, 08, 10 and 12) on the recording double: a server's pgBackRest
state in → commands, writes and Outcome out (hcbpg.ops.pgbackrest, hcbpg.ops.drill).

:class:`Primary` keeps what a server has (packages, the paths and their owners and modes, files, the
stanza and its backups, what PostgreSQL says of its settings) behind a :class:`RecordingHost`: probes and
psql reads are answered from it, and what an operation runs changes it as the real command would.  A dry
run is the same call on a :class:`DryRunHost` over the same state; a server not there yet an
:class:`AbsentHost`.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired.backups import ARCHIVING_FILE, PATHS, archiving_path, paths_for, render_archiving
from hcbpg.desired.pgbackrest import CONF_PATH, render_pgbackrest_conf
from hcbpg.errors import DatabaseError, ParamsError, PgBackRestError, RemoteCommandError, SafetyCheckFailed, SecretError
from hcbpg.ops import drill
from hcbpg.ops import pgbackrest as pgb
from hcbpg.params import parse_params
from hcbpg.pg.cluster import ctl_command
from tests.fast.specs import PRIMARY, covers, params_data

NAME = "server-postgres-1"
BASE = params_data(
    servers=[PRIMARY, {"name": "server-postgres-2", "private_ip": "10.0.1.6", "role": "replica"}],
    pgbackrest={"s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_ca_file": "/var/lib/hcbpg-lab/tls/ca.crt",
                "s3_key": "env:HCBPG_TEST_S3_KEY", "s3_key_secret": "env:HCBPG_TEST_S3_SECRET",
                "cipher_pass": "env:HCBPG_TEST_CIPHER", "process_max": 2, "block": False},
)
SECRETS = {"HCBPG_TEST_S3_KEY": "AKIAspecs0123456789", "HCBPG_TEST_S3_SECRET": "s3-secret-of-the-specs-0123456789",
           "HCBPG_TEST_CIPHER": "cipher-pass-of-the-specs-0123456789"}
VERSION = (2, 54, 2)
APT_UPDATE = "DEBIAN_FRONTEND=noninteractive apt-get update -q"
APT_INSTALL = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
STANZA = "hcb_production"
INFO = f"pgbackrest --stanza={STANZA} --output=json info"
CREATE = f"pgbackrest --stanza={STANZA} --log-level-console=info stanza-create"
BACKUP = f"pgbackrest --stanza={STANZA} --type=full --log-level-console=info backup"
#: how a DryRunHost journals a command run as postgres
AS_PG = "[as postgres] "
RELOAD, RESTART = ctl_command(15, "main", "reload"), ctl_command(15, "main", "restart")
#: what PostgreSQL reads only at a start
POSTMASTER = {"archive_mode", "wal_level", "max_wal_senders"}


@pytest.fixture
def params(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    return parse_params(BASE)


class Primary:
    """One server's pgBackRest state behind a :class:`RecordingHost`, changed by what runs there."""

    def __init__(self, *, installed: dict[str, str] | None = None, paths: dict[str, dict[str, Any]] | None = None,
                 files: dict[str, str] | None = None, stanza: int | None = None,
                 backups: list[dict[str, Any]] | None = None, cluster: bool = True,
                 file_errors: list[dict[str, Any]] | tuple[()] = (), fails: dict[str, Result] | None = None,
                 tables: dict[str, int] | None = None) -> None:
        self.installed = dict(installed or {})
        self.paths = dict(paths or {})
        self.stanza = stanza              # None: pgBackRest has no config (info fails); 1: missing; 0: ok
        self.backups = list(backups or [])
        self.cluster = cluster
        self.file_errors = list(file_errors)
        self.fails = dict(fails or {})
        self.tables = dict(tables or {"public.users": 2000})
        self.pending: list[str] = []
        self.load_time = 1
        self.host = RecordingHost(NAME, handler=self.answer, files=dict(files or {}))

    @property
    def files(self) -> dict[str, str]:
        return self.host.files

    def answer(self, call: Call) -> Result | str | None:
        cmd = call.command
        for pattern, res in self.fails.items():
            if re.search(pattern, cmd):
                return res
        if cmd.startswith("dpkg-query"):
            asked = re.findall(r"'([a-z0-9.+-]+)'|(?<= )([a-z0-9.+-]+)$", cmd.split("' ", 1)[1])
            names = {a or b for a, b in asked} | set(cmd.split("' ", 1)[1].split())
            return "".join(f"{p}\tii \t{v}\n" for p, v in self.installed.items() if p in names)
        if "apt-get update" in cmd:
            return ""
        if "apt-get install" in cmd:
            for p in cmd.split("--no-install-recommends ", 1)[1].split():
                self.installed[p] = "2.54.2" if p == "pgbackrest" else "1"
            return ""
        if cmd.startswith("stat -c '%n|%F|%a|%U|%G' "):
            return "".join(f"{p}|{'directory' if s['kind'] == 'directory' else s['kind']}|{s['mode']:o}|"
                           f"{s['owner']}|{s['group']}\n" for p in shlex.split(cmd)[3:] if (s := self.paths.get(p)))
        if (call.options.get("display") or "").startswith("directory "):
            m = re.match(r"directory (\S+) \(mode (\d+), owner (\w+):(\w+)\)", call.options["display"])
            assert m, call.options["display"]
            self.paths[m[1]] = {"kind": "directory", "mode": int(m[2], 8), "owner": m[3], "group": m[4]}
            return ""
        if m := re.match(r"install -m (\d+) -o (\w+) -g (\w+) /dev/null (\S+)$", cmd):
            self.paths[m[4]] = {"kind": "file", "mode": int(m[1], 8), "owner": m[2], "group": m[3]}
            self.files.setdefault(m[4], "")
            return ""
        if cmd == "pgbackrest version":
            if "pgbackrest" not in self.installed:
                return Result(NAME, cmd, 127, "", "pgbackrest: command not found", 0.0)
            return "pgBackRest 2.54.2\n"
        if cmd.startswith("pgbackrest "):
            return self.pgbackrest(cmd)
        if cmd == "pg_lsclusters --json":
            return json.dumps([{"version": 15, "cluster": "main", "port": 5432, "running": int(self.cluster),
                                "pgdata": "/var/lib/postgresql/15/main"}])
        if cmd.startswith("/usr/lib/postgresql/15/bin/psql -p 5432"):
            return self.sql(call.stdin or "")
        if cmd == RELOAD:
            self.load_time += 1
            self.pending = sorted(POSTMASTER & set(self.settings_changed))
            return ""
        if cmd == RESTART:
            self.pending = []
            return ""
        if m := re.match(r"chown -h (\w+):(\w+) (\S+)$", cmd):
            self.paths[m[3]].update(owner=m[1], group=m[2])
            return ""
        if m := re.match(r"chmod (\d+) (\S+)$", cmd):
            self.paths[m[2]].update(mode=int(m[1], 8))
            return ""
        if cmd.startswith("rm -f ") or cmd.startswith("mv -f "):
            return ""
        return None

    @property
    def settings_changed(self) -> list[str]:
        text = self.files.get(archiving_path_of(self), "")
        return [line.split(" =")[0] for line in text.splitlines() if " = " in line]

    def pgbackrest(self, cmd: str) -> Result | str:
        if "pgbackrest" not in self.installed:
            return Result(NAME, cmd, 127, "", "pgbackrest: command not found", 0.0)
        if self.stanza is None:
            return Result(NAME, cmd, 37, "", "ERROR: [037]: unable to load info file: no config", 0.0)
        if cmd == INFO:
            return json.dumps([{"name": STANZA, "status": {"code": self.stanza, "message": "ok" if self.stanza == 0
                                                           else "missing stanza path"},
                                "backup": self.backups}])
        if cmd.endswith(" info"):
            return ""
        if cmd == CREATE:
            self.stanza = 0
            return ""
        if cmd == BACKUP:
            n = len(self.backups)
            self.backups.append({"label": f"20261206-10000{n}F", "type": "full",
                                 "timestamp": {"start": 1_800_000_000 + n, "stop": 1_800_000_060 + n},
                                 "info": {"size": 1000, "delta": 1000, "repository": {"size": 300, "delta": 300}},
                                 "archive": {"start": "000000010000000000000003", "stop": "000000010000000000000003"},
                                 "prior": None, "error": False})
            return "backup command end: completed successfully"
        raise AssertionError(f"the spec's pgBackRest has no answer for {cmd!r}")

    def sql(self, text: str) -> str:
        if "pg_conf_load_time()" in text:
            return json.dumps([{"t": str(self.load_time)}])
        if "WHERE pending_restart" in text:
            return json.dumps([{"name": n} for n in self.pending])
        if "context = 'postmaster'" in text:
            asked = set(re.findall(r"[a-z_]+", text.split("ANY(", 1)[1]))
            return json.dumps([{"name": n} for n in sorted(POSTMASTER & asked)])
        if "FROM pg_file_settings" in text and "error IS NOT NULL" in text:
            return json.dumps(self.file_errors)
        if "FROM pg_file_settings" in text:
            return json.dumps([{"n": 1}])
        if "FROM pg_class c" in text and "relkind IN ('r', 'p')" in text and "UNION" not in text:
            return json.dumps([{"schema": t.split(".")[0], "name": t.split(".")[1]} for t in self.tables])
        if "'meta'::text AS kind" in text:
            return json.dumps([{"kind": "meta", "name": "taken_at", "value": "2026-12-06 10:00:00+00"}]
                              + [{"kind": "count", "name": t, "value": str(n)} for t, n in self.tables.items()])
        raise AssertionError(f"the spec's server has no answer for {text!r}")


def archiving_path_of(srv: Primary) -> str:
    return "/etc/postgresql/15/main/conf.d/" + ARCHIVING_FILE


def configured(params, **kw: Any) -> Primary:
    """A server as step 05 leaves it: pgBackRest installed, its paths right, its config ours, the stanza there."""
    paths = {s.path: {"kind": s.kind, "mode": s.mode, "owner": s.owner, "group": s.group} for s in paths_for(params)}
    conf = render_pgbackrest_conf(params, params.primary, version=VERSION, secrets={
        "repo1-s3-key": SECRETS["HCBPG_TEST_S3_KEY"], "repo1-s3-key-secret": SECRETS["HCBPG_TEST_S3_SECRET"],
        "repo1-cipher-pass": SECRETS["HCBPG_TEST_CIPHER"]})
    files = {CONF_PATH: conf, archiving_path(params): render_archiving(params, params.primary, archive_mode=False)}
    base: dict[str, Any] = dict(installed={"pgbackrest": "2.54.2", "curl": "8.5"}, paths=paths, files=files, stanza=0)
    return Primary(**{**base, **kw})


def fail(cmd: str, code: int, err: str) -> Result:
    return Result(NAME, cmd, code, "", err, 0.0)


# packages --------------------------------------------------------------------------------------------

@covers("hcbpg.ops.pgbackrest.ensure_installed", "fresh", "second run", "dry run")
def test_pgbackrest_and_curl_installed_once(params):
    srv = Primary()
    dry = DryRunHost(srv.host)
    planned = pgb.ensure_installed(dry)
    assert planned.verb == "would change" and planned.dry_run
    assert dry.journal == [APT_UPDATE, APT_INSTALL + "pgbackrest curl"] and srv.installed == {}
    out = pgb.ensure_installed(srv.host)
    assert out.changed and out.actions == [APT_INSTALL + "pgbackrest curl"]
    assert srv.host.journal == [APT_UPDATE, APT_INSTALL + "pgbackrest curl"]
    again = pgb.ensure_installed(srv.host)
    assert not again.changed and again.actions == ["pgbackrest 2.54.2", "curl 1"] and len(srv.host.journal) == 2
    only_curl = Primary(installed={"pgbackrest": "2.54.2"})
    assert pgb.ensure_installed(only_curl.host).actions == [APT_INSTALL + "curl"]
    absent = AbsentHost(NAME)
    assert pgb.ensure_installed(absent).changed and absent.journal == [APT_UPDATE, APT_INSTALL + "pgbackrest curl"]


@covers("hcbpg.ops.pgbackrest.ensure_installed", "refusal")
def test_a_failed_install_raises_with_apts_message(params):
    srv = Primary(fails={r"apt-get install": fail("apt-get install", 100, "E: Unable to locate package pgbackrest")})
    with pytest.raises(RemoteCommandError, match="Unable to locate package"):
        pgb.ensure_installed(srv.host)
    assert srv.installed == {}


# directories -----------------------------------------------------------------------------------------

def _dir_display(s) -> str:  # noqa: ANN001
    return f"directory {s.path} (mode {s.mode:04o}, owner {s.owner}:{s.group})"


@covers("hcbpg.ops.pgbackrest.ensure_paths", "fresh", "second run", "dry run")
def test_paths_made_with_the_runbooks_owners_and_modes(params):
    specs = paths_for(params)
    srv = Primary()
    expected = [_dir_display(s) if s.kind == "directory" else
                f"install -m 0640 -o postgres -g postgres /dev/null {CONF_PATH}" for s in specs]
    dry = DryRunHost(srv.host)
    planned = pgb.ensure_paths(dry, specs=specs)
    assert planned.verb == "would change" and dry.journal == expected and srv.paths == {}
    out = pgb.ensure_paths(srv.host, specs=specs)
    assert out.changed and srv.host.journal == expected
    assert out.actions == ["install -d -m 0770 -o postgres -g postgres /var/log/pgbackrest",
                           "install -d -m 0755 -o root -g root /etc/pgbackrest",
                           "install -d -m 0755 -o root -g root /etc/pgbackrest/conf.d",
                           f"install -m 0640 -o postgres -g postgres /dev/null {CONF_PATH}",
                           "install -d -m 0750 -o postgres -g postgres /var/spool/pgbackrest"]
    assert srv.paths[CONF_PATH] == {"kind": "file", "mode": 0o640, "owner": "postgres", "group": "postgres"}
    assert not pgb.ensure_paths(srv.host, specs=specs).changed and srv.host.journal == expected
    # a wrong owner and mode: only those are set (chown -h never follows a link)
    srv.paths[CONF_PATH].update(owner="root", mode=0o644)
    fixed = pgb.ensure_paths(srv.host, specs=specs)
    assert fixed.actions == [f"chown -h postgres:postgres {CONF_PATH}", f"chmod 0640 {CONF_PATH}"]
    dirs = [_dir_display(s) for s in specs if s.kind == "directory"]
    assert srv.host.journal[len(expected):] == dirs[:3] + [f"chown -h postgres:postgres {CONF_PATH}",
                                                           f"chmod 0640 {CONF_PATH}"] + dirs[3:]


@covers("hcbpg.ops.pgbackrest.ensure_paths", "refusal")
def test_a_symlink_where_the_config_belongs_is_refused_and_nothing_is_made(params):
    srv = Primary(paths={CONF_PATH: {"kind": "symbolic link", "mode": 0o777, "owner": "postgres", "group": "postgres"}})
    with pytest.raises(SafetyCheckFailed, match="is a symbolic link, expected a file"):
        pgb.ensure_paths(srv.host, specs=PATHS)
    assert srv.host.journal == [] and set(srv.paths) == {CONF_PATH}


# the config file -------------------------------------------------------------------------------------

@covers("hcbpg.ops.pgbackrest.ensure_pgbackrest_conf", "fresh", "second run")
def test_config_written_with_its_secrets_shown_as_placeholders(params):
    srv = Primary()
    out = pgb.ensure_pgbackrest_conf(srv.host, params, params.primary, version=VERSION)
    assert out.changed and srv.host.journal == [f"write {CONF_PATH}"]
    assert out.actions == [f"write {CONF_PATH} (mode 0640, owner postgres:postgres)"]
    (path, text, mode, owner, group), = srv.host.written
    assert (path, mode, owner, group) == (CONF_PATH, 0o640, "postgres", "postgres")
    assert all(v in text for v in SECRETS.values())          # pgBackRest reads them from the file itself
    assert "repo1-s3-key=<secret>" in out.diff and not any(v in out.diff or v in str(out) for v in SECRETS.values())
    assert not pgb.ensure_pgbackrest_conf(srv.host, params, params.primary, version=VERSION).changed
    assert srv.host.journal == [f"write {CONF_PATH}"]


@covers("hcbpg.ops.pgbackrest.ensure_pgbackrest_conf", "dry run")
def test_a_plan_records_the_config_without_resolving_secrets_and_a_changed_secret_is_named_not_shown(
        params, monkeypatch):
    for k in SECRETS:
        monkeypatch.delenv(k)
    absent = AbsentHost(NAME)
    planned = pgb.ensure_pgbackrest_conf(absent, params, params.primary, version=None)
    assert planned.verb == "would change" and absent.journal == [f"write {CONF_PATH}"]
    assert "repo1-s3-key=<secret>" in absent.files[CONF_PATH]
    monkeypatch.setenv("HCBPG_TEST_S3_KEY", SECRETS["HCBPG_TEST_S3_KEY"])
    monkeypatch.setenv("HCBPG_TEST_S3_SECRET", SECRETS["HCBPG_TEST_S3_SECRET"])
    monkeypatch.setenv("HCBPG_TEST_CIPHER", "a-new-cipher-pass-0123456789")
    srv = configured(params)
    dry = DryRunHost(srv.host)
    out = pgb.ensure_pgbackrest_conf(dry, params, params.primary, version=VERSION)
    assert out.verb == "would change" and out.diff == ""
    assert out.actions == [f"write {CONF_PATH} (mode 0640, owner postgres:postgres)", "only secret values change (not shown)"]
    assert dry.journal == [f"write {CONF_PATH}"] and srv.host.written == [] and srv.host.journal == []


@covers("hcbpg.ops.pgbackrest.ensure_pgbackrest_conf", "refusal")
def test_a_secret_that_cannot_be_resolved_writes_nothing(params, monkeypatch):
    monkeypatch.delenv("HCBPG_TEST_CIPHER")
    srv = Primary(files={CONF_PATH: "# an old file\n"})
    with pytest.raises(SecretError, match="HCBPG_TEST_CIPHER"):
        pgb.ensure_pgbackrest_conf(srv.host, params, params.primary, version=VERSION)
    assert srv.host.journal == [] and srv.files[CONF_PATH] == "# an old file\n"


# the stanza ------------------------------------------------------------------------------------------

@covers("hcbpg.ops.pgbackrest.ensure_stanza", "fresh", "second run", "dry run")
def test_stanza_created_only_when_info_says_it_is_missing(params):
    srv = configured(params, stanza=1)
    dry = DryRunHost(srv.host)
    planned = pgb.ensure_stanza(dry, params)
    assert planned.verb == "would change" and dry.journal == [AS_PG + CREATE] and srv.stanza == 1
    out = pgb.ensure_stanza(srv.host, params)
    assert out.changed and out.actions == [CREATE] and srv.host.journal == [CREATE] and srv.stanza == 0
    again = pgb.ensure_stanza(srv.host, params)
    assert not again.changed and again.actions == ["info: ok"] and srv.host.journal == [CREATE]
    # a plan before pgBackRest is installed (info cannot answer): the stanza is planned
    for host in (DryRunHost(Primary().host), AbsentHost(NAME)):
        assert pgb.ensure_stanza(host, params).changed and host.journal == [AS_PG + CREATE]


@covers("hcbpg.ops.pgbackrest.ensure_stanza", "refusal")
def test_info_or_stanza_create_failing_raises_pgbackrests_own_error(params):
    srv = configured(params, stanza=None)
    with pytest.raises(PgBackRestError, match=r"\[037\]") as info:
        pgb.ensure_stanza(srv.host, params)
    assert info.value.code == 37 and srv.host.journal == []
    srv = configured(params, stanza=1, fails={"stanza-create": fail(CREATE, 28, "ERROR: [028]: repo not reachable")})
    with pytest.raises(PgBackRestError, match=r"\[028\] repo not reachable"):
        pgb.ensure_stanza(srv.host, params)
    assert srv.stanza == 1


# the first full backup -------------------------------------------------------------------------------

@covers("hcbpg.ops.pgbackrest.ensure_full_backup", "fresh", "second run", "dry run")
def test_one_full_backup_taken_when_there_is_none(params):
    srv = configured(params)
    called: list[str] = []
    dry = DryRunHost(srv.host)
    planned, row = pgb.ensure_full_backup(dry, params, before=lambda: called.append("before"))
    assert planned.verb == "would change" and row is None and called == [] and dry.journal == [AS_PG + BACKUP]
    assert srv.backups == []
    out, row = pgb.ensure_full_backup(srv.host, params, before=lambda: called.append("before"))
    assert out.changed and called == ["before"] and row is not None and row.type == "full"
    assert out.actions == [BACKUP, f"took {row.label} in 60s"] and srv.host.journal == [BACKUP]
    again, same = pgb.ensure_full_backup(srv.host, params, before=lambda: called.append("again"))
    assert not again.changed and same == row and again.actions == [f"{row.label} exists"] and called == ["before"]
    absent = AbsentHost(NAME)
    plan, _ = pgb.ensure_full_backup(absent, params)
    assert plan.actions == [BACKUP + " (pgBackRest is not configured yet)"] and absent.journal == [AS_PG + BACKUP]


@covers("hcbpg.ops.pgbackrest.ensure_full_backup", "refusal")
def test_no_backup_without_a_repository_and_a_failed_backup_raises(params):
    srv = configured(params, stanza=None)
    called: list[str] = []
    with pytest.raises(PgBackRestError, match=r"\[037\]"):
        pgb.ensure_full_backup(srv.host, params, before=lambda: called.append("before"))
    assert called == [] and srv.host.journal == []
    srv = configured(params, fails={r" backup$": fail(BACKUP, 82, "ERROR: [082]: WAL segment was not archived")})
    with pytest.raises(PgBackRestError, match=r"\[082\]"):
        pgb.ensure_full_backup(srv.host, params)
    assert srv.backups == []


# the archiving include file --------------------------------------------------------------------------

@covers("hcbpg.ops.pgbackrest.ensure_archiving", "fresh", "second run", "dry run")
def test_archiving_file_written_reloaded_and_restarted_only_for_postmaster_settings(params):
    path = archiving_path(params)
    srv = Primary()
    dry = DryRunHost(srv.host)
    planned = pgb.ensure_archiving(dry, params, params.primary, archive_mode=False)
    assert planned.verb == "would change" and dry.journal == [f"write {path}", RELOAD, RESTART]
    assert path not in srv.files and srv.host.journal == []
    out = pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=False)
    assert out.changed and srv.host.journal == [f"write {path}", RELOAD, RESTART]
    assert srv.files[path] == render_archiving(params, params.primary, archive_mode=False)
    assert "archive_command = 'pgbackrest --stanza=hcb_production archive-push %p'" in srv.files[path]
    assert out.actions[-1].startswith("restart the cluster (") and "archive_mode" in out.actions[-1]
    assert not pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=False).changed
    assert len(srv.host.journal) == 3
    on = pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=True)
    assert on.changed and "+archive_mode = on" in on.diff and srv.host.journal[3:] == [f"write {path}", RELOAD, RESTART]


def test_archiving_restart_left_to_the_caller_is_done_by_the_next_run_while_still_pending(params):
    """Step 10 on a replica it rebuilds: archive_mode is written and reloaded, the restart left to the rebuild's
    start; a later run (the replica was not rebuilt after all) restarts it, as the pending restart says."""
    path = archiving_path(params)
    srv = Primary()
    out = pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=True, restart=False)
    assert out.changed and srv.host.journal == [f"write {path}", RELOAD]
    assert out.actions[-1].startswith("restart left to the caller (") and "archive_mode" in out.actions[-1]
    late = pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=True)
    assert late.changed and srv.host.journal[2:] == [RESTART]
    assert not pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=True).changed


@covers("hcbpg.ops.pgbackrest.ensure_archiving", "refusal")
def test_a_file_postgresql_rejects_is_put_back(params):
    path = archiving_path(params)
    old = render_archiving(params, params.primary, archive_mode=False)
    srv = Primary(files={path: old}, file_errors=[{"sourceline": 5, "name": "archive_mode", "error": "invalid value"}])
    with pytest.raises(DatabaseError, match="rejects .* previous version was put back"):
        pgb.ensure_archiving(srv.host, params, params.primary, archive_mode=True)
    assert srv.files[path] == old and RELOAD not in srv.host.journal and RESTART not in srv.host.journal


# a standby's pgBackRest (step 10) --------------------------------------------------------------------

@covers("hcbpg.ops.pgbackrest.ensure_standby_pgbackrest", "fresh", "second run", "dry run")
def test_a_standby_gets_the_clusters_repository_and_archive_mode_on(params):
    standby = params.server("server-postgres-2")
    absent = AbsentHost(standby.name)
    planned = pgb.ensure_standby_pgbackrest(absent, params, standby)
    assert [o.changed for o in planned] == [True] * 4 and all(o.dry_run for o in planned)
    assert f"write {CONF_PATH}" in absent.journal and f"write {archiving_path(params)}" in absent.journal
    assert "archive_mode = on" in absent.files[archiving_path(params)]
    assert "# pgBackRest for server-postgres-2," in absent.files[CONF_PATH]
    srv = Primary()
    out = pgb.ensure_standby_pgbackrest(srv.host, params, standby)
    assert all(o.changed for o in out) and srv.installed["pgbackrest"] == "2.54.2"
    assert all(v in srv.files[CONF_PATH] for v in SECRETS.values())
    n = len(srv.host.journal)
    assert not any(o.changed for o in pgb.ensure_standby_pgbackrest(srv.host, params, standby))
    assert len(srv.host.journal) == n


@covers("hcbpg.ops.pgbackrest.ensure_standby_pgbackrest", "refusal")
def test_a_standby_with_a_symlinked_config_is_refused_before_the_config_is_written(params):
    standby = params.server("server-postgres-2")
    srv = Primary(installed={"pgbackrest": "2.54.2", "curl": "1"},
                  paths={CONF_PATH: {"kind": "symbolic link", "mode": 0o777, "owner": "root", "group": "root"}})
    with pytest.raises(SafetyCheckFailed, match="symbolic link"):
        pgb.ensure_standby_pgbackrest(srv.host, params, standby)
    assert srv.host.journal == [] and CONF_PATH not in srv.files


# the baseline backup of step 08 (with the fingerprint) -----------------------------------------------

@covers("hcbpg.ops.drill.ensure_baseline_backup", "fresh", "second run", "dry run")
def test_the_fingerprint_is_taken_right_before_the_one_full_backup(params):
    srv = configured(params, tables={"public.users": 2000, "public.transactions": 30000})
    order: list[str] = []
    dry = DryRunHost(srv.host)
    planned, row, fp = drill.ensure_baseline_backup(dry, params, quiesce=lambda: order.append("quiesce"))
    assert planned.verb == "would change" and row is None and fp is None and order == [] and dry.journal == [AS_PG + BACKUP]
    out, row, fp = drill.ensure_baseline_backup(srv.host, params, quiesce=lambda: order.append("quiesce"))
    assert out.changed and order == ["quiesce"] and row is not None and fp is not None
    assert fp["backup_label"] == row.label and fp["tables"] == {"public.transactions": 30000, "public.users": 2000}
    assert fp["host"] == NAME and fp["database"] == "hcb_production" and srv.host.journal == [BACKUP]
    fingerprint_at = next(i for i, c in enumerate(srv.host.calls) if "'meta'::text AS kind" in (c.stdin or ""))
    backup_at = next(i for i, c in enumerate(srv.host.calls) if c.command == BACKUP)
    assert fingerprint_at < backup_at
    again, same, none = drill.ensure_baseline_backup(srv.host, params, quiesce=lambda: order.append("again"))
    assert not again.changed and same == row and none is None and order == ["quiesce"]


@covers("hcbpg.ops.drill.ensure_baseline_backup", "refusal")
def test_no_backup_when_the_fingerprint_cannot_be_taken(params):
    srv = configured(params)
    with pytest.raises(ParamsError, match="no table public.nope"):
        drill.ensure_baseline_backup(srv.host, params, checksum_tables=["public.nope"])
    assert srv.backups == [] and srv.host.journal == []
