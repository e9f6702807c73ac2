"""Specs of backups from the standby (issue 24, hcbpg.ops.pgbackrest_server) on the recording double: pgBackRest's
TLS server on a database server (certificate from the environment's CA, pgbackrest.conf naming the other server as
pg2 with backup-standby, ``pgbackrest server`` started, restarted onto new files), the rendered options, and the
backup job's fall-back to the primary."""

from __future__ import annotations

import re
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired import pgbackrest_server as dps
from hcbpg.desired.pgbackrest import CONF_PATH, conf_options, parse_conf
from hcbpg.desired.schedule import plan_schedule, render_backup_job_script
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import pgbackrest_server as ops_dps
from hcbpg.ops import tls
from hcbpg.params import parse_params
from tests.fast.specs import covers, params_data

SERVERS = [{"name": "server-postgres-1", "private_ip": "10.0.1.5", "role": "primary"},
           {"name": "server-postgres-2", "private_ip": "10.0.1.6", "role": "replica"}]
SECRETS = {"HCBPG_TEST_S3_KEY": "SERVERkey0123456789", "HCBPG_TEST_S3_SECRET": "server-secret-of-the-specs-0123",
           "HCBPG_TEST_CIPHER": "cipher-pass-of-the-specs-0123456789"}
PB = {"s3_endpoint": "10.0.1.1:9443", "s3_uri_style": "path", "s3_key": "env:HCBPG_TEST_S3_KEY",
      "s3_key_secret": "env:HCBPG_TEST_S3_SECRET", "cipher_pass": "env:HCBPG_TEST_CIPHER", "backup_standby": True}
CA = "/etc/hcbpg/tls/lab-postgres-ca.crt"
ARGV = "/usr/bin/pgbackrest\0server\0"


def make_params(tmp_path, **pb):
    data = params_data(servers=SERVERS, pgbackrest={**PB, **pb},
                       tls={"ca_cert": str(tmp_path / "ca.crt"), "ca_key": f"file:{tmp_path / 'ca.key'}"})
    return parse_params(data)


@pytest.fixture
def params(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield make_params(tmp_path)
    tls._CA_CACHE.clear()


class Server:
    """A database server without systemd: pgBackRest 2.45 installed, its TLS server's pidfile process, files."""

    def __init__(self, name: str = "server-postgres-1", *, answers: bool = True) -> None:
        self.name, self.answers = name, answers
        self.pid: int | None = None
        self.dirs: set[str] = set()
        self.host = RecordingHost(name, handler=self.answer, files={})

    def answer(self, call: Call) -> Result | str | None:
        cmd, shown = call.command, call.options.get("display") or ""
        no = Result(self.name, cmd, 1, "", "", 0.0)
        if cmd == "test -d /run/systemd/system":
            return no
        if cmd.startswith("test -d "):
            return "" if cmd.split()[-1].strip("'") in self.dirs else no
        if shown.startswith("directory "):
            self.dirs.add(shown.split()[1])
            return ""
        if cmd in ("pgbackrest version", "command -v pgbackrest"):
            return "pgBackRest 2.45\n"
        if cmd.startswith("if [ -r /run/hcbpg/pgbackrest.pid") or ("pgbackrest.pid" in cmd and "cmdline" in cmd):
            return f"pid={self.pid}\n{ARGV}" if self.pid else ""
        if shown.startswith("start pgbackrest detached"):
            self.pid = 4242
            return ""
        if cmd.startswith("kill -TERM"):
            self.pid = None
            return ""
        if "pgbackrest server-ping" in cmd:
            return "" if self.answers and self.pid else Result(self.name, cmd, 1, "", "ERROR: [104]", 0.0)
        return None


def test_rendered_options_name_the_other_server_and_authorise_only_it(params):
    one, two = params.servers
    c1, c2 = conf_options(params, one, version=None), conf_options(params, two, version=None)
    st = c1["hcb_production"]
    assert st["pg1-path"] == st["pg2-path"] == "/var/lib/postgresql/15/main"
    assert (st["pg2-host"], st["pg2-host-type"], st["pg2-host-port"]) == ("10.0.1.6", "tls", "8432")
    assert c2["hcb_production"]["pg2-host"] == "10.0.1.5"
    assert c1["global:backup"] == {"backup-standby": "y"}
    assert c1["global:server"]["tls-server-auth"] == "server-postgres-2=hcb_production"
    assert c2["global:server"]["tls-server-auth"] == "server-postgres-1=hcb_production"
    assert c1["global:server"]["tls-server-address"] == "10.0.1.5"
    assert st["pg2-host-ca-file"] == c1["global:server"]["tls-server-ca-file"] == CA
    # the drill's scratch host (none of params' servers): no pg2, and [global] (what the drill's config takes) unchanged
    scratch = params.server("server-postgres-1").model_copy(update={"name": "restore-drill"})
    assert "pg2-host" not in conf_options(params, scratch, version=None)["hcb_production"]
    assert "backup-standby" not in str(c1["global"])


def test_off_by_default_and_with_one_server(params, tmp_path):
    off = make_params(tmp_path, backup_standby=False)
    assert not dps.enabled(off)
    c = conf_options(off, off.primary, version=None)
    assert "global:server" not in c and "pg2-host" not in c["hcb_production"]
    one = parse_params(params_data(pgbackrest=PB, tls={"ca_cert": str(tmp_path / "ca.crt"),
                                                       "ca_key": f"file:{tmp_path / 'ca.key'}"}))
    assert not dps.enabled(one)
    srv = Server()
    out = ops_dps.ensure_pgbackrest_server(srv.host, one, one.primary)
    assert not out[0].changed and srv.host.journal == []


@covers("hcbpg.ops.pgbackrest_server.ensure_pgbackrest_server", "fresh", "second run")
def test_fresh_then_second_run(params):
    srv = Server()
    out = ops_dps.ensure_pgbackrest_server(srv.host, params, params.primary)
    assert any(o.changed for o in out)
    j = srv.host.journal
    assert f"write {dps.KEY}" in j and f"write {dps.CERT}" in j and f"write {CONF_PATH}" in j
    assert j.index(f"write {dps.KEY}") < j.index(f"write {dps.CERT}"), "key first"
    assert any(e.startswith("start pgbackrest detached") for e in j) and srv.pid == 4242
    key = next(w for w in srv.host.written if w[0] == dps.KEY)
    assert key[2:4] == (0o600, "postgres")
    cert = x509.load_pem_x509_certificate(srv.host.files[dps.CERT].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "server-postgres-1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # pgBackRest 2.45 matches the address it connects to against DNS names only: the IP is one too
    assert {"server-postgres-1", "10.0.1.5"} <= set(san.get_values_for_type(x509.DNSName))
    conf = parse_conf(srv.host.files[CONF_PATH])
    assert conf["global:server"]["tls-server-auth"] == "server-postgres-2=hcb_production"
    assert "server-secret-of-the-specs-0123" in srv.host.files[CONF_PATH]
    assert not any("server-secret-of-the-specs-0123" in str(o) + o.diff for o in out)
    n = len(j)
    again = ops_dps.ensure_pgbackrest_server(srv.host, params, params.primary)
    assert not any(o.changed for o in again)
    assert [e for e in srv.host.journal[n:] if "pgbackrest server-ping" not in e] == []


def test_a_changed_file_restarts_the_server(params, tmp_path):
    srv = Server()
    ops_dps.ensure_pgbackrest_server(srv.host, params, params.primary)
    n = len(srv.host.journal)
    moved = make_params(tmp_path, tls_server_port=8532)
    out = ops_dps.ensure_pgbackrest_server(srv.host, moved, moved.primary)
    new = srv.host.journal[n:]
    assert f"write {CONF_PATH}" in new and any(e.startswith("kill -TERM") for e in new)
    assert any(e.startswith("start pgbackrest detached") for e in new) and any(o.changed for o in out)
    assert "tls-server-port=8532" in srv.host.files[CONF_PATH]


@covers("hcbpg.ops.pgbackrest_server.ensure_pgbackrest_server", "dry run")
def test_dry_run(params):
    srv = Server()
    dry = DryRunHost(srv.host)
    out = ops_dps.ensure_pgbackrest_server(dry, params, params.primary)
    assert any(o.changed for o in out) and all(o.dry_run for o in out)
    assert srv.host.written == [] and srv.pid is None
    assert f"write {CONF_PATH}" in dry.journal and any(e.startswith("start pgbackrest") for e in dry.journal)


@covers("hcbpg.ops.pgbackrest_server.ensure_pgbackrest_server", "refusal")
def test_refused_on_a_host_that_is_no_database_server(params):
    srv = Server("restore-drill")
    scratch = params.primary.model_copy(update={"name": "restore-drill"})
    with pytest.raises(SafetyCheckFailed, match="not one of params' database servers"):
        ops_dps.ensure_pgbackrest_server(srv.host, params, scratch)
    assert srv.host.journal == [] and srv.host.written == []


def test_the_backup_job_falls_back_to_the_primary_and_says_so(params, tmp_path):
    script = render_backup_job_script(params, plan_schedule(params, None))
    assert "--no-backup-standby" in script and "from the standby failed" in script
    off = make_params(tmp_path, backup_standby=False)
    assert "--no-backup-standby" not in render_backup_job_script(off, plan_schedule(off, None))
    # the script parses; the fall-back runs only after a failure
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    fallback = script[script.index('if [ "$status" -ne 0 ]'):]
    line = re.search(r"pgbackrest [^\n]*--no-backup-standby .*?backup >>\"\$out\"", fallback, re.S)
    assert line, fallback
    # pg2 left out of the fall-back whole: every pg2 option of pgbackrest.conf reset, so the standby is not tried again
    pg2 = [k for k in conf_options(params, params.primary, version=None)["hcb_production"] if k.startswith("pg2-")]
    assert len(pg2) >= 7 and all(f"--reset-{k}" in line[0] for k in pg2), line[0]


def run_job(params, tmp_path, *, ping: int, first_backup: int, conf_pg2: bool = True) -> tuple[int, str, list[str]]:
    """The rendered backup job run by sh with stand-ins on PATH (id: postgres; psql: a primary; pgbackrest: records
    its arguments, ``server-ping`` exits *ping*, the first ``backup`` exits *first_backup*, the others 0), its
    pgbackrest.conf and log under *tmp_path*: (exit status, output, the pgbackrest command lines)."""
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[hcb_production]\npg1-path=/var/lib/postgresql/15/main\n"
                    + ("pg2-host=10.0.1.6\npg2-host-port=8432\n" if conf_pg2 else ""))
    script = render_backup_job_script(params, plan_schedule(params, None))
    assert script.count(CONF_PATH) >= 1 and script.count("LOG=/var/log/pgbackrest/hcbpg-backup.log") == 1
    script = script.replace(CONF_PATH, str(conf)).replace("LOG=/var/log/pgbackrest/hcbpg-backup.log",
                                                          f"LOG={tmp_path / 'job.log'}")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    stand_ins = {
        "id": "#!/bin/sh\necho postgres\n",
        "psql": "#!/bin/sh\necho f\n",
        "pgbackrest": f"""#!/bin/sh
echo "$*" >>{calls}
case "$*" in
  *server-ping*) exit {ping} ;;
esac
n=$(grep -c ' backup$' {calls})
echo "INFO: backup command begin 2.45: $*"
if [ "$n" -eq 1 ] && [ {first_backup} -ne 0 ]; then
  echo "ERROR: [056]: unable to find standby cluster - cannot proceed"; exit {first_backup}
fi
echo "INFO: backup command end: completed successfully"
""",
    }
    for name, text in stand_ins.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    job = tmp_path / "hcbpg-backup"
    job.write_text(script)
    cp = subprocess.run(["sh", str(job), "incr"], capture_output=True, text=True, timeout=60,
                        env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    lines = calls.read_text().splitlines() if calls.exists() else []
    return cp.returncode, cp.stdout + cp.stderr, lines


def test_the_backup_job_asks_the_standbys_tls_server_first_and_goes_to_the_primary_when_it_does_not_answer(
        params, tmp_path):
    """No answer from the standby's TLS server (server-ping, 5 s of I/O): one backup, from the primary, pg2 left
    out, said in the output; pgBackRest 2.45 alone would retry the connection to pg2 for minutes first."""
    code, out, calls = run_job(params, tmp_path, ping=1, first_backup=0)
    assert code == 0, out
    ping, *backups = calls
    assert "server-ping" in ping and "--io-timeout=5" in ping and "--tls-server-address=10.0.1.6" in ping, ping
    assert "--tls-server-port=8432" in ping
    assert len(backups) == 1 and "--no-backup-standby" in backups[0] and "--reset-pg2-host " in backups[0], calls
    assert "TLS server 10.0.1.6:8432 does not answer" in out and "--no-backup-standby" in out, out
    assert "from the standby failed" not in out


def test_the_backup_job_backs_up_from_the_standby_when_it_answers_and_falls_back_when_that_fails(params, tmp_path):
    (tmp_path / "ok").mkdir()
    code, out, calls = run_job(params, tmp_path / "ok", ping=0, first_backup=0)
    assert code == 0 and len(calls) == 2 and "--no-backup-standby" not in calls[1], (out, calls)
    assert "does not answer" not in out and "from the standby failed" not in out
    # the standby answers but the backup from it fails (its PostgreSQL down): again from the primary, said
    (tmp_path / "fails").mkdir()
    code, out, calls = run_job(params, tmp_path / "fails", ping=0, first_backup=56)
    assert code == 0, out
    assert len(calls) == 3 and "--no-backup-standby" not in calls[1] and "--no-backup-standby" in calls[2], calls
    assert "from the standby failed (exit 56: ERROR: [056]: unable to find standby cluster" in out, out
    # a pgbackrest.conf without pg2 (the other's TLS server did not answer when it was written): no probe at all
    (tmp_path / "nopg2").mkdir()
    code, out, calls = run_job(params, tmp_path / "nopg2", ping=1, first_backup=0, conf_pg2=False)
    assert code == 0 and len(calls) == 1 and "server-ping" not in calls[0], calls
