"""Specs of the migration's operations (steps 06b, 07, 09b and the restore) on the recording double: the
primary's state in → commands, writes and Outcome out (hcbpg.ops.migration: source, bucardo_service,
settings, database, bucardo, wayback).

:class:`Primary` keeps what the primary has (packages, files and links, directories, the target
database's schemas and extensions, Bucardo's control database, syncs and daemon, the source's foreign
keys) behind a :class:`RecordingHost`: probes and psql reads are answered from it, and what an operation
runs changes it as the real command would.  A dry run is the same call on a :class:`DryRunHost` over
the same state: the same journal, nothing run or written on the double.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired.migration import render_restore_settings, restore_part_path
from hcbpg.errors import DatabaseError, ParamsError, RemoteCommandError, SafetyCheckFailed
from hcbpg.ops.migration import bucardo, bucardo_service, database, settings, source, wayback
from hcbpg.params import parse_params
from hcbpg.pg import bucardo as bp
from hcbpg.pg import templates
from tests.fast.specs import covers, params_data

NAME = "server-postgres-1"
URL = "postgres://app:s3cret-of-the-specs@source.example.com:5432/hcb"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB-specs\n-----END CERTIFICATE-----\n"
BASE: dict[str, Any] = params_data(
    source={"url": "env:HCBPG_TEST_SOURCE_URL", "transfer": "online", "online": {"initial_copy": "bucardo"}})
#: how the double sees a command run as postgres through the bucardo wrapper
BUCARDO = f"cd {bucardo.HOME} && bucardo --bucardorc {bucardo.RC} --batch "
PLAN = bp.SyncPlan(synced=["public.users", "public.events"], in_window=["public.audit_nokey"], refused=[],
                   unlogged=[], sequences=["public.users_id_seq"], large_objects=0)
FKS = [{"table": "events", "schema": "public", "relname": "events", "name": "events_user_id_fkey"}]


def make_params(monkeypatch: pytest.MonkeyPatch, tmp_path: Any = None, **source: Any) -> Any:
    monkeypatch.setenv("HCBPG_TEST_SOURCE_URL", URL)
    data = json.loads(json.dumps(BASE))
    data["source"].update(source)
    return parse_params(data)


@pytest.fixture
def params(monkeypatch):
    return make_params(monkeypatch)


class Primary:
    """The primary's state behind a :class:`RecordingHost`, changed by what runs there."""

    def __init__(self, *, installed: dict[str, str] | None = None, files: dict[str, str] | None = None,
                 links: dict[str, str] | None = None, dirs: set[str] | None = None,
                 schemas: set[str] | None = None, extensions: set[str] | None = None,
                 control_db: bool = False, syncs: dict[str, dict[str, Any]] | None = None, running: bool = False,
                 pending_restart: str = "", fails: dict[str, Result] | None = None,
                 schema_output: str = "Pl/PerlU was successfully installed\n") -> None:
        self.installed = dict(installed or {})
        self.links = dict(links or {})
        self.dirs = set(dirs or ())
        self.schemas = set(schemas or ())
        self.extensions = set(extensions or ())
        self.control_db = control_db
        self.syncs = {k: dict(v) for k, v in (syncs or {}).items()}
        self.running = running
        self.pending_restart = pending_restart
        self.fails = dict(fails or {})
        self.schema_output = schema_output
        self.statements: list[str] = []      # what psql ran on the target or the source
        self.host = PrimaryHost(self, files)

    @property
    def files(self) -> dict[str, str]:
        return self.host.files

    def json_line(self, value: Any) -> str:
        return "HCBPG-JSON " + json.dumps(value) + "\n"

    def answer(self, call: Call) -> Result | str | None:  # noqa: PLR0911, PLR0912 - one branch per command
        cmd, stdin = call.command, call.stdin or ""
        for pattern, res in self.fails.items():
            if re.search(pattern, cmd) or re.search(pattern, call.options.get("display") or ""):
                return res
        if cmd.startswith("dpkg-query"):
            asked = {w.strip("'") for w in cmd.split("' ", 1)[1].split()}
            return "".join(f"{p}\tii \t{v}\n" for p, v in self.installed.items() if p in asked)
        if "apt-get update" in cmd:
            return ""
        if "apt-get install" in cmd:
            for p in cmd.split("--no-install-recommends ", 1)[1].split():
                self.installed[p] = "1"
            return ""
        if (call.options.get("display") or "").startswith("directory "):
            self.dirs.add(call.options["display"].split()[1])
            return ""
        if cmd.startswith("sha256sum "):
            path, link = cmd[len("sha256sum "):].split("; readlink ")
            out = f"{hashlib.sha256(self.files[path].encode()).hexdigest()}  {path}\n" if path in self.files else ""
            return Result(NAME, cmd, 0 if path in self.files and link in self.links else 1,
                          out + (self.links[link] + "\n" if link in self.links else ""), "", 0.0)
        if m := re.fullmatch(r"ln -sfn (\S+) (\S+)", cmd):
            self.links[m[2]] = m[1]
            return ""
        if m := re.fullmatch(r"test -e (\S+) -o -L \S+", cmd):
            there = m[1] in self.files or m[1] in self.links or m[1] in self.dirs
            return Result(NAME, cmd, 0 if there else 1, "", "", 0.0)
        if cmd.startswith(f"test -s {bucardo.PID_FILE}"):
            return Result(NAME, cmd, 0 if self.running else 1, "", "", 0.0)
        if m := re.fullmatch(r"rm -f (\S+)", cmd):
            self.files.pop(shlex.split(m[1])[0], None)
            return ""
        if cmd.startswith("rm -f /run/hcbpg-migration/"):  # the source's service file, closed
            self.files.pop("/run/hcbpg-migration/source.pgservice", None)
            return ""
        if "pg_conf_load_time" in cmd:
            return self.pending_restart + "\n"
        if cmd == "pg_ctlcluster 15 main restart":
            return ""
        if cmd.endswith(f"-f {bucardo.SCHEMA_FILE} 2>&1"):
            self.control_db = True
            return self.schema_output
        if cmd.startswith(BUCARDO):
            return self.bucardo(shlex.split(cmd[len(BUCARDO):]))
        if "psql" in cmd:
            return self.psql(cmd, stdin)
        return None

    def bucardo(self, args: list[str]) -> str:
        words = dict(a.split("=", 1) for a in args if "=" in a)
        if args[0] == "start":
            self.running = True
        elif args[0] == "stop":
            self.running = False
        elif args[:2] == ["add", "sync"]:
            self.syncs[args[2]] = {"status": words.get("status", "active"), "onetimecopy": int(words.get("onetimecopy", 0))}
        elif args[:2] == ["update", "sync"]:
            self.syncs[args[2]]["status"] = words["status"]
        elif args[:2] == ["remove", "sync"]:
            self.syncs.pop(args[2])
        return ""

    def psql(self, cmd: str, stdin: str) -> str:
        if "FROM pg_database WHERE datname = 'bucardo'" in stdin:
            return self.json_line(self.control_db)
        if "FROM bucardo.sync" in stdin:
            return self.json_line(self.syncs)
        if "FROM bucardo.herd" in stdin:  # Bucardo's databases and relgroups (none before the sync is added)
            return self.json_line({"dbs": [], "relgroups": []})
        if "FROM pg_namespace WHERE nspname" in stdin:
            return json.dumps([{"name": s} for s in sorted(self.schemas)]) + "\n"
        if "FROM pg_extension WHERE extname" in stdin:
            return json.dumps([{"name": e} for e in sorted(self.extensions)]) + "\n"
        if "condeferrable" in stdin and "HCBPG-JSON" in stdin:  # the source's foreign keys, not deferrable yet
            return self.json_line(FKS)
        self.statements += [line for line in stdin.splitlines() if line.strip()]
        for line in stdin.splitlines():
            if m := re.match(r'CREATE SCHEMA IF NOT EXISTS "?(\w+)"?', line):
                self.schemas.add(m[1])
            if m := re.match(r'CREATE EXTENSION IF NOT EXISTS "?(\w+)"?', line):
                self.extensions.add(m[1])
        return ""


class PrimaryHost(RecordingHost):
    """The double, whose ``exists`` sees the directories made there too."""

    def __init__(self, primary: Primary, files: dict[str, str] | None) -> None:
        super().__init__(NAME, handler=primary.answer, files=dict(files or {}))
        self.primary = primary

    def exists(self, path: str) -> bool:
        return super().exists(path) or path in self.primary.dirs


def dry(primary: Primary) -> DryRunHost:
    return DryRunHost(primary.host)


def failed(stderr: str, code: int = 1) -> Result:
    return Result(NAME, "", code, "", stderr, 0.0)


def the_source(primary: Primary, params: Any, *, ca: str | None = None) -> source.Source:
    """The source as the steps open it (through a service file on the primary)."""
    return source.Source(primary.host, URL, sslrootcert=ca)


# the source's CA ----------------------------------------------------------------------------------

CA_DIR = "directory /etc/hcbpg/tls (mode 0755, owner root:root)"


@pytest.fixture
def ca_params(monkeypatch, tmp_path):
    ca = tmp_path / "source-ca.pem"
    ca.write_text(PEM)
    return make_params(monkeypatch, ca_file=str(ca))


@covers("hcbpg.ops.migration.source.ensure_source_ca", "fresh", "second run", "dry run", "refusal")
def test_source_ca_is_put_on_the_primary_once_and_read_back_as_the_path_libpq_verifies_with(ca_params, monkeypatch,
                                                                                              tmp_path):
    p = Primary()
    assert source.get_source_ca(p.host, ca_params) is None  # not there yet: the source is read without it
    out = source.ensure_source_ca(p.host, ca_params)
    assert p.host.journal == [CA_DIR, f"write {source.SOURCE_CA_PATH}"] == out.actions
    assert p.host.written[0][1:4] == (PEM, 0o644, "root") and out.changed and not out.dry_run
    assert "+MIIB-specs" in out.diff
    assert source.get_source_ca(p.host, ca_params) == source.SOURCE_CA_PATH
    # second run: the same file, nothing run
    again = source.ensure_source_ca(p.host, ca_params)
    assert not again.changed and p.host.journal == [CA_DIR, f"write {source.SOURCE_CA_PATH}"]
    # dry run: the same journal, nothing on the server
    q = Primary()
    d = source.ensure_source_ca(dry(q), ca_params)
    assert d.changed and d.dry_run and d.actions == [CA_DIR, f"write {source.SOURCE_CA_PATH}"] and q.host.journal == []
    # without source.ca_file nothing is put there
    assert not source.ensure_source_ca(q.host, make_params(monkeypatch)).changed and q.host.journal == []
    # refusal: a file that is no certificate, named, before anything is run
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("hello\n")
    with pytest.raises(ParamsError, match="holds no PEM certificate"):
        source.ensure_source_ca(q.host, make_params(monkeypatch, ca_file=str(bad)))
    with pytest.raises(ParamsError, match="cannot read"):
        source.ensure_source_ca(q.host, make_params(monkeypatch, ca_file=str(tmp_path / "missing.pem")))
    assert q.host.journal == []


# Bucardo's service file ---------------------------------------------------------------------------

SERVICE_DIR = f"directory {bucardo_service.SERVICE_DIR} (mode 0700, owner postgres:postgres)"
LINK = f"ln -sfn {bucardo_service.SERVICE_FILE} {bucardo_service.SERVICE_LINK}"


@pytest.mark.parametrize(("libpq", "auth"), [("15.8-1", None), ("16.4-1", "require_auth=scram-sha-256")])
@covers("hcbpg.ops.migration.bucardo_service.ensure_service", "fresh", "second run", "dry run", "refusal")
def test_bucardos_service_file_is_written_on_tmpfs_linked_once_and_refused_into_a_bad_directory(params, libpq, auth):
    p = Primary(installed={"libpq5": libpq})
    src = the_source(p, params, ca=source.SOURCE_CA_PATH)
    out = bucardo_service.ensure_service(p.host, src)
    assert p.host.journal == [SERVICE_DIR, f"write {bucardo_service.SERVICE_FILE}", LINK] and out.changed
    path, text, mode, owner, _ = p.host.written[0]
    assert (path, mode, owner) == (bucardo_service.SERVICE_FILE, 0o600, "postgres")
    assert "sslmode=verify-full" in text and f"sslrootcert={source.SOURCE_CA_PATH}" in text
    assert ("require_auth=scram-sha-256" in text) == (auth is not None)
    assert "sslmode=verify-full" in " ".join(out.actions) and "s3cret" not in " ".join(out.actions)
    # second run: the file's hash and the link say it is in place
    assert not bucardo_service.ensure_service(p.host, src).changed and len(p.host.journal) == 3
    # dry run
    q = Primary(installed={"libpq5": libpq})
    dh = dry(q)
    d = bucardo_service.ensure_service(dh, the_source(q, params, ca=source.SOURCE_CA_PATH))
    assert d.changed and d.dry_run and q.host.journal == [] and q.host.written == []
    assert dh.journal == [SERVICE_DIR, f"write {bucardo_service.SERVICE_FILE}", f"[as postgres] {LINK}"]
    # refusal: the directory cannot be made safely (a symlink there): nothing written
    r = Primary(installed={"libpq5": libpq}, fails={r"^directory /run/hcbpg-bucardo": failed("is a symbolic link")})
    with pytest.raises(RemoteCommandError):
        bucardo_service.ensure_service(r.host, the_source(r, params))
    assert r.host.written == [] and bucardo_service.SERVICE_LINK not in r.links


# restore-time settings ----------------------------------------------------------------------------

SETTINGS = {"maintenance_work_mem": "2GB", "wal_level": "minimal", "max_wal_senders": 0}
RELOAD = "pg_ctlcluster 15 main reload, wait until it is read"


@pytest.mark.parametrize(("pending", "restart"), [("", []), ("wal_level", ["pg_ctlcluster 15 main restart"])])
@covers("hcbpg.ops.migration.settings.ensure_restore_settings", "fresh", "second run", "dry run", "refusal")
def test_restore_settings_are_written_reloaded_restarted_only_when_needed_and_put_back_when_refused(params, pending,
                                                                                                    restart):
    path = restore_part_path(params)
    text = render_restore_settings(SETTINGS, server=NAME)
    p = Primary(pending_restart=pending)
    out = settings.ensure_restore_settings(p.host, params, SETTINGS)
    assert p.host.journal == [f"write {path}", RELOAD, *restart] == out.actions
    assert p.files[path] == text and p.host.written[0][2:4] == (0o644, "postgres") and out.changed
    assert "+wal_level = 'minimal'" in out.diff
    # second run: the part as it should be, nothing reloaded
    assert not settings.ensure_restore_settings(p.host, params, SETTINGS).changed and len(p.host.journal) == 2 + len(restart)
    # dry run: written and reloaded, not restarted (nothing was read, so nothing is pending)
    q = Primary(pending_restart=pending)
    d = settings.ensure_restore_settings(dry(q), params, SETTINGS)
    assert d.actions == [f"write {path}", RELOAD] and d.dry_run and q.host.journal == [] and path not in q.files
    # refusal: PostgreSQL does not read it: the part as it was before (here: none), the error raised
    r = Primary(fails={"pg_conf_load_time": failed("the config reload was not picked up within 30s")})
    with pytest.raises(RemoteCommandError, match="not picked up"):
        settings.ensure_restore_settings(r.host, params, SETTINGS)
    assert r.host.journal == [f"write {path}", RELOAD, f"rm -f {path}"] and path not in r.files
    # an older part is written back as it was
    s = Primary(files={path: "# older\n"}, fails={"pg_conf_load_time": failed("not picked up")})
    with pytest.raises(RemoteCommandError):
        settings.ensure_restore_settings(s.host, params, SETTINGS)
    assert s.files[path] == "# older\n"


@covers("hcbpg.ops.migration.settings.ensure_restore_settings_removed", "fresh", "second run", "dry run", "refusal")
def test_restore_settings_are_removed_once_and_the_reload_waits_for_the_removal(params):
    path = restore_part_path(params)
    p = Primary(files={path: render_restore_settings(SETTINGS, server=NAME)})
    out = settings.ensure_restore_settings_removed(p.host, params)
    assert p.host.journal == [f"rm -f {path}", RELOAD] and out.changed and "-wal_level = 'minimal'" in out.diff
    assert path not in p.files
    assert not settings.ensure_restore_settings_removed(p.host, params).changed and len(p.host.journal) == 2
    q = Primary(files={path: "x = 1\n"})
    d = settings.ensure_restore_settings_removed(dry(q), params)
    assert d.actions == [f"rm -f {path}", RELOAD] and d.dry_run and q.host.journal == [] and path in q.files
    r = Primary(files={path: "x = 1\n"}, fails={r"^rm -f": failed("Read-only file system")})
    with pytest.raises(RemoteCommandError, match="Read-only"):
        settings.ensure_restore_settings_removed(r.host, params)
    assert r.host.journal == [f"rm -f {path}"]  # no reload of a part that is still there


# schemas and extensions ---------------------------------------------------------------------------

EXTS = [{"name": "pg_stat_statements", "schema": "heroku_ext"}, {"name": "pgcrypto", "schema": "heroku_ext"}]
PREREQ = ('psql -d hcb_production: CREATE SCHEMA IF NOT EXISTS "heroku_ext" AUTHORIZATION "rails"; '
          'CREATE EXTENSION IF NOT EXISTS "pg_stat_statements" WITH SCHEMA "heroku_ext"; '
          'CREATE EXTENSION IF NOT EXISTS "pgcrypto" WITH SCHEMA "heroku_ext";')


@covers("hcbpg.ops.migration.database.ensure_prerequisites", "fresh", "second run", "dry run", "refusal")
def test_prerequisites_create_what_the_database_lacks_in_one_psql_call(params):
    p = Primary()
    out = database.ensure_prerequisites(p.host, params, ["heroku_ext"], EXTS)
    assert p.host.journal == [PREREQ] and out.changed
    assert out.actions == ['CREATE SCHEMA IF NOT EXISTS "heroku_ext" AUTHORIZATION "rails"',
                           'CREATE EXTENSION IF NOT EXISTS "pg_stat_statements" WITH SCHEMA "heroku_ext"',
                           'CREATE EXTENSION IF NOT EXISTS "pgcrypto" WITH SCHEMA "heroku_ext"']
    assert p.host.calls[-1].command.endswith("-d hcb_production -f -") and p.host.calls[-1].sudo_user == "postgres"
    # second run: both there, nothing run
    assert not database.ensure_prerequisites(p.host, params, ["heroku_ext"], EXTS).changed and p.host.journal == [PREREQ]
    # only what is missing
    q = Primary(schemas={"heroku_ext"}, extensions={"pgcrypto"})
    database.ensure_prerequisites(q.host, params, ["heroku_ext"], EXTS)
    assert q.host.journal == ['psql -d hcb_production: CREATE EXTENSION IF NOT EXISTS "pg_stat_statements" '
                          'WITH SCHEMA "heroku_ext";']
    # dry run
    r = Primary()
    d = database.ensure_prerequisites(dry(r), params, ["heroku_ext"], EXTS)
    assert d.actions == out.actions and d.dry_run and d.changed and r.host.journal == []
    # refusal: an extension the server does not have: the database error, named
    s = Primary(fails={r"-d hcb_production -f -$": Result(NAME, "", 3, "", 'ERROR:  58P01: could not open extension '
                                                           'control file "pgcrypto.control"', 0.0)})
    with pytest.raises(DatabaseError, match="SQL failed in database hcb_production"):
        database.ensure_prerequisites(s.host, params, ["heroku_ext"], EXTS)
    assert s.schemas == set() and s.extensions == set()


# Bucardo: packages, files, control database --------------------------------------------------------

def bucardo_fresh(**kw: Any) -> Primary:
    return Primary(installed={"libpq5": "15.8-1", **kw.pop("installed", {})}, **kw)


INSTALL = ["DEBIAN_FRONTEND=noninteractive apt-get update -q",
           "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends bucardo postgresql-plperl-15"]
HOME_DIRS = [f"directory {d} (mode 0700, owner postgres:postgres)"
             for d in (bucardo.HOME, f"{bucardo.HOME}/run", f"{bucardo.HOME}/log")]
CONTROL = [f"psql -f {bucardo.SCHEMA_FILE} (Bucardo's control database)",
           f"bucardo set piddir={bucardo.HOME}/run reason_file={bucardo.HOME}/log/restart.reason "
           f"warning_file={bucardo.HOME}/log/warning.log log_conflict_file={bucardo.HOME}/log/conflict.log "
           "stopfile=fullstopbucardo"]


def installed_bucardo(**kw: Any) -> Primary:
    """A primary where 06b's install ran: packages, files, the service file in place, the control database."""
    files = {bucardo.RC: bp.render_rc(), **kw.pop("files", {})}
    return bucardo_fresh(installed={"bucardo": "5.6.0-4", "postgresql-plperl-15": "15.8"}, control_db=True,
                         dirs={bucardo.HOME, f"{bucardo.HOME}/run", f"{bucardo.HOME}/log"}, files=files, **kw)


@covers("hcbpg.ops.migration.bucardo.ensure_bucardo", "fresh", "second run", "dry run", "refusal")
def test_bucardo_is_installed_with_its_files_and_control_database_once(params):
    p = bucardo_fresh()
    src = the_source(p, params)
    out = bucardo.ensure_bucardo(p.host, params, src)
    fresh = [*INSTALL, *HOME_DIRS, f"write {bucardo.RC}", SERVICE_DIR, f"write {bucardo_service.SERVICE_FILE}", LINK,
             *CONTROL]
    assert p.host.journal == fresh
    assert [o.changed for o in out] == [True, True, True]
    assert out[0].actions == INSTALL and out[2].actions[0].startswith(f"psql -f {bucardo.SCHEMA_FILE} as postgres")
    assert p.files[bucardo.RC] == bp.render_rc() and "dbpass" not in p.files[bucardo.RC]
    # second run: everything in place
    again = bucardo.ensure_bucardo(p.host, params, src)
    assert [o.changed for o in again] == [False, False, False] and p.host.journal == fresh
    # dry run: the same journal (the control database's output is not judged: nothing ran)
    q = bucardo_fresh()
    dh = dry(q)
    d = bucardo.ensure_bucardo(dh, params, the_source(q, params))
    assert [o.changed and o.dry_run for o in d] == [True, True, True] and q.host.journal == []
    assert q.installed == {"libpq5": "15.8-1"} and not q.control_db
    assert dh.journal == [*INSTALL, *HOME_DIRS, f"write {bucardo.RC}", SERVICE_DIR,
                          f"write {bucardo_service.SERVICE_FILE}", f"[as postgres] {LINK}", *CONTROL]
    # refusal: the schema did not install plperlu: named, and Bucardo is not configured on it
    r = bucardo_fresh(schema_output="ERROR:  could not load library plperl.so\n")
    with pytest.raises(SafetyCheckFailed, match="control database was not installed: .*could not load library"):
        bucardo.ensure_bucardo(r.host, params, the_source(r, params))
    assert r.host.journal[-1] == CONTROL[0]


@covers("hcbpg.ops.migration.bucardo.ensure_running", "fresh", "second run", "dry run", "refusal")
def test_the_daemon_is_started_only_when_it_does_not_run_and_never_without_its_service_file(params):
    p = installed_bucardo(files={bucardo_service.SERVICE_FILE: "[x]\n"})
    out = bucardo.ensure_running(p.host, params)
    assert p.host.journal == ["bucardo start"] and out.changed and p.running
    assert p.host.calls[[c.kind for c in p.host.calls].index("run")].command == \
        f"{BUCARDO}start --log-destination {bucardo.HOME}/log"
    assert not bucardo.ensure_running(p.host, params).changed and p.host.journal == ["bucardo start"]
    q = installed_bucardo(files={bucardo_service.SERVICE_FILE: "[x]\n"})
    d = bucardo.ensure_running(dry(q), params)
    assert d.actions == ["bucardo start"] and d.dry_run and q.host.journal == [] and not q.running
    r = installed_bucardo()  # tmpfs emptied by a reboot
    with pytest.raises(SafetyCheckFailed, match="service file for the source .* is gone: did the server restart"):
        bucardo.ensure_running(r.host, params)
    assert r.host.journal == [] and not r.running


FORWARD = [f"bucardo add db {bp.SOURCE_DB} dbname=hcb dbservice={bp.SOURCE_SERVICE} dbconn=options=-clock_timeout=2000",
           f"bucardo add db {bp.PRIMARY_DB} dbname=hcb_production dbhost=/var/run/postgresql dbport=5432 dbuser=postgres",
           f"bucardo add tables public.users public.events db={bp.SOURCE_DB} relgroup={bp.FORWARD_SYNC}",
           f"bucardo add sequences public.users_id_seq db={bp.SOURCE_DB} relgroup={bp.FORWARD_SYNC}"]


@pytest.mark.parametrize(("initial_copy", "sync", "started"), [
    ("bucardo", "onetimecopy=1", ["bucardo start"]),
    ("stream", "onetimecopy=0 status=inactive", []),   # the step copies, then activates (run_activate_forward_sync)
])
@covers("hcbpg.ops.migration.bucardo.ensure_forward_sync", "fresh", "second run", "dry run", "refusal")
def test_the_forward_sync_is_added_once_and_the_daemon_started_for_a_sync_that_runs(monkeypatch, initial_copy, sync,
                                                                                    started):
    params = make_params(monkeypatch, online={"initial_copy": initial_copy})
    p = installed_bucardo(files={bucardo_service.SERVICE_FILE: "[x]\n"})
    src = the_source(p, params)
    out = bucardo.ensure_forward_sync(p.host, params, src, PLAN)
    expected = [*FORWARD, f"bucardo add sync {bp.FORWARD_SYNC} relgroup={bp.FORWARD_SYNC} "
                          f"dbs={bp.SOURCE_DB}:source,{bp.PRIMARY_DB}:target {sync}", *started]
    assert p.host.journal == expected == out.actions and out.changed
    # second run (the streamed copy done and the sync activated by the step): nothing
    if initial_copy == "stream":
        bucardo.run_activate_forward_sync(p.host, params)
        assert p.host.journal[-2:] == [f"bucardo update sync {bp.FORWARD_SYNC} status=active", "bucardo start"]
    ran = list(p.host.journal)
    assert not bucardo.ensure_forward_sync(p.host, params, src, PLAN).changed and p.host.journal == ran
    # dry run
    q = installed_bucardo(files={bucardo_service.SERVICE_FILE: "[x]\n"})
    d = bucardo.ensure_forward_sync(dry(q), params, the_source(q, params), PLAN)
    assert d.actions == expected and d.dry_run and q.host.journal == [] and q.syncs == {}
    # refusal: Bucardo refuses the source (its service cannot connect): nothing after it is added
    r = installed_bucardo(fails={rf"add db {bp.SOURCE_DB}": failed("DBI connect failed: certificate verify failed")})
    with pytest.raises(RemoteCommandError, match="certificate verify failed"):
        bucardo.ensure_forward_sync(r.host, params, the_source(r, params), PLAN)
    assert r.host.journal == [FORWARD[0]] and r.syncs == {}


# the way back -------------------------------------------------------------------------------------

BACK = [f"bucardo add db {bp.BACK_TARGET_DB} dbname=hcb dbservice={bp.SOURCE_SERVICE}",
        f"bucardo add tables public.users public.events db={bp.PRIMARY_DB} relgroup={bp.BACK_SYNC}",
        f"bucardo add sequences public.users_id_seq db={bp.PRIMARY_DB} relgroup={bp.BACK_SYNC}",
        f"bucardo add sync {bp.BACK_SYNC} relgroup={bp.BACK_SYNC} dbs={bp.PRIMARY_DB}:source,{bp.BACK_TARGET_DB}:target "
        "status=inactive",
        f"write {wayback.CUSTOMCODE_FILE}",
        f"bucardo add customcode {wayback.CUSTOMCODE} whenrun=before_txn sync={bp.BACK_SYNC} "
        f"src_code={wayback.CUSTOMCODE_FILE}"]
SYNCING = {bp.FORWARD_SYNC: {"status": "active", "onetimecopy": 0}}


@covers("hcbpg.ops.migration.wayback.ensure_way_back_armed", "fresh", "second run", "dry run", "refusal")
def test_the_way_back_is_armed_inactive_once_with_the_owner_only_customcode(params):
    p = installed_bucardo(syncs=SYNCING, running=True)
    src = the_source(p, params)
    out = wayback.ensure_way_back_armed(p.host, params, src, PLAN)
    assert p.host.journal == BACK == out.actions and out.changed
    assert p.syncs[bp.BACK_SYNC]["status"] == "inactive"
    assert p.files[wayback.CUSTOMCODE_FILE] == templates.render_script("bucardo-owner-only.pl",
                                                                      {"PREFIX": bp.OWNER_ONLY_PREFIX})
    assert p.host.written[0][2:4] == (0o600, "postgres")
    assert not wayback.ensure_way_back_armed(p.host, params, src, PLAN).changed and p.host.journal == BACK
    q = installed_bucardo(syncs=SYNCING, running=True)
    d = wayback.ensure_way_back_armed(dry(q), params, the_source(q, params), PLAN)
    assert d.actions == BACK and d.dry_run and q.host.journal == [] and bp.BACK_SYNC not in q.syncs
    r = installed_bucardo(syncs=SYNCING, fails={rf"add db {bp.BACK_TARGET_DB}": failed("no such service")})
    with pytest.raises(RemoteCommandError, match="no such service"):
        wayback.ensure_way_back_armed(r.host, params, the_source(r, params), PLAN)
    assert r.host.journal == [BACK[0]] and r.host.written == []  # no customcode without its sync


def way_back_primary(status: str) -> Primary:
    """The primary after the window: the forward sync, the way back armed (*status*), the daemon running,
    the service file in place."""
    p = installed_bucardo(syncs={**SYNCING, bp.BACK_SYNC: {"status": status, "onetimecopy": 0}}, running=True,
                          links={bucardo_service.SERVICE_LINK: bucardo_service.SERVICE_FILE})
    return p


def with_service(p: Primary, params: Any) -> source.Source:
    src = the_source(p, params)
    p.files[bucardo_service.SERVICE_FILE] = bucardo_service.get_service_text(p.host, src)
    return src


@covers("hcbpg.ops.migration.wayback.ensure_way_back", "fresh", "second run", "dry run", "refusal")
def test_the_way_back_ends_the_forward_sync_defers_the_sources_keys_and_starts_once(params, monkeypatch):
    monkeypatch.setattr(wayback.time, "time", lambda: 1_800_000_000.0)  # the period ends 72 h later
    until = "2027-01-18T08:00:00.000000Z"
    p = way_back_primary("inactive")
    src = with_service(p, params)
    out = wayback.ensure_way_back(p.host, params, src, PLAN)
    stop, start = "bucardo stop", "bucardo start"
    drop = "psql the source (app@source.example.com:5432/hcb): DROP SCHEMA IF EXISTS bucardo CASCADE;"
    defer = ('psql the source (app@source.example.com:5432/hcb): ALTER TABLE "public"."events" ALTER CONSTRAINT '
             '"events_user_id_fkey" DEFERRABLE INITIALLY IMMEDIATE;')
    mine = [r for r in p.host.journal if not r.startswith(("directory /run/hcbpg-migration", "write /run/hcbpg-migration",
                                                       "rm -f /run/hcbpg-migration"))]
    assert mine == [stop, f"bucardo remove sync {bp.FORWARD_SYNC}", drop, f"write {wayback.DEFERRED_FILE}", defer,
                    f"bucardo validate {bp.BACK_SYNC}", f"bucardo update sync {bp.BACK_SYNC} status=active",
                    f"write {wayback.UNTIL_FILE}", start]
    assert json.loads(p.files[wayback.DEFERRED_FILE]) == FKS and p.files[wayback.UNTIL_FILE] == until + "\n"
    assert p.syncs == {bp.BACK_SYNC: {"status": "active", "onetimecopy": 0}} and p.running
    assert out.changed and f"until {until} (source.online.way_back_hours)" in out.actions
    assert "NOT synced back (no key): public.audit_nokey" in out.actions
    # second run: it runs, nothing to do
    ran = list(p.host.journal)
    again = wayback.ensure_way_back(p.host, params, src, PLAN)
    assert not again.changed and p.host.journal == ran
    # dry run: what would run (the source is read through its service file, as on a real run)
    q = way_back_primary("inactive")
    d = wayback.ensure_way_back(dry(q), params, with_service(q, params), PLAN)
    assert d.changed and d.dry_run and q.syncs[bp.FORWARD_SYNC] and q.running
    assert [r for r in q.host.journal if "hcbpg-migration" not in r] == []  # only the source's own service file
    assert wayback.DEFERRED_FILE not in q.files and wayback.UNTIL_FILE not in q.files and q.statements == []
    # refusal: never armed: the writes since traffic went on were not recorded
    r = installed_bucardo(syncs=SYNCING, running=True)
    with pytest.raises(SafetyCheckFailed, match="the way back was not armed before the window"):
        wayback.ensure_way_back(r.host, params, the_source(r, params), PLAN)
    assert r.host.journal == [] and r.syncs == SYNCING
