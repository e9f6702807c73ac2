"""Specs of the monitoring hookup (step 13, and step 14 after a rotation) on the recording double:
prometheus-postgres-exporter and Vector's config (hcbpg.ops.monitoring).  The env files hold a password:
what an Outcome shows never does, and a plan without the password records the file as shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired import alerting as desired_alerting
from hcbpg.desired import roles as desired_roles
from hcbpg.desired.monitoring import (
    EXPORTER_CERT,
    EXPORTER_ENV,
    EXPORTER_KEY,
    EXPORTER_PACKAGE,
    EXPORTER_QUERIES,
    EXPORTER_WEB_CONFIG,
    VECTOR_CONFIG,
    VECTOR_ENV,
    render_exporter_env,
    render_exporter_queries,
    render_exporter_web_config,
    render_vector_config,
    render_vector_env,
)
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import monitoring, tls
from hcbpg.params import parse_params
from tests.fast.specs import covers

REPO = Path(__file__).resolve().parents[2]
NAME = "server-postgres-1"
PASSWORD = "spec-password/with+chars"
INSTALL = f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {EXPORTER_PACKAGE}"
STOP = "stop prometheus-postgres-exporter (start-stop-daemon)"
START = "start prometheus-postgres-exporter (start-stop-daemon, as prometheus)"
CA = "/etc/hcbpg/tls/lab-postgres-ca.crt"
#: the exporter's TLS on a fresh server: the CA, its certificate (key first, the exporters' user's), the web config
TLS_FRESH = ["directory /etc/hcbpg/tls (mode 0755, owner root:root)", f"write {CA}",
             "directory /etc/prometheus/hcbpg-tls (mode 0750, owner prometheus:prometheus)", f"write {EXPORTER_KEY}",
             f"write {EXPORTER_CERT}", "directory /etc/prometheus (mode 0755, owner root:root)",
             f"write {EXPORTER_WEB_CONFIG}"]
TLS_ACTIONS = ["directory /etc/hcbpg/tls (mode 0755, owner root:root)", f"write {CA}", "issued: no certificate yet",
               f"write {EXPORTER_CERT} and {EXPORTER_KEY} (0600)", "directory /etc/prometheus (mode 0755, owner root:root)",
               f"write {EXPORTER_WEB_CONFIG}"]


def queries() -> str:
    return render_exporter_queries(desired_alerting.EXPORTER_QUERIES)


@pytest.fixture
def params(tmp_path, monkeypatch):
    """The lab's params with the CA (the exporter's certificate comes from it) under *tmp_path*."""
    data = yaml.safe_load((REPO / "params" / "lab.yaml").read_text())
    data["tls"].update(ca_cert=str(tmp_path / "ca.crt"), ca_key=f"file:{tmp_path / 'ca.key'}")
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield parse_params(data)
    tls._CA_CACHE.clear()


@pytest.fixture
def cfg(params):
    return desired_roles.roles_config(params)


class Server:
    """A lab server without systemd: dpkg, the exporter's pidfile process, Vector's binary, files."""

    def __init__(self, *, installed: bool = False, running: bool = False, vector: bool = False,
                 files: dict[str, str] | None = None, start_fails: bool = False) -> None:
        self.installed, self.running, self.vector, self.start_fails = installed, running, vector, start_fails
        self.host = RecordingHost(NAME, handler=self.answer, files=dict(files or {}))
        self.dirs: set[str] = set()
        #: files written before this double took over (path, text, mode, owner, group): what stat says of them
        self.before: list[tuple[str, str, int, str, str]] = []

    def answer(self, call: Call) -> Result | str | None:
        cmd, shown = call.command, call.options.get("display") or ""
        no = Result(NAME, cmd, 1, "", "", 0.0)
        if cmd.startswith("test -d ") and cmd != "test -d /run/systemd/system":
            return "" if cmd.split()[-1] in self.dirs else no
        if shown.startswith("directory "):  # ensure_dir's script
            self.dirs.add(shown.split()[1])
            return ""
        if cmd.startswith("stat -c '%U:%G %a' -- "):
            path = cmd.split()[-1]
            w = [f"{x[3]}:{x[4]} {x[2]:o}" for x in [*self.before, *self.host.written] if x[0] == path]
            return w[-1] + "\n" if w else no
        if cmd.startswith("dpkg-query"):
            return f"{EXPORTER_PACKAGE}\tii \t0.15.0\n" if self.installed else ""
        if cmd == "test -d /run/systemd/system":
            return no
        if cmd.startswith("start-stop-daemon --status"):
            return "" if self.running else Result(NAME, cmd, 3, "", "", 0.0)
        if cmd == INSTALL:
            self.installed = True
            return ""
        if cmd.startswith("mkdir -p "):
            return ""
        if shown == STOP:
            self.running = False
            return ""
        if shown == START:
            if self.start_fails:
                return Result(NAME, cmd, 1, "", "start-stop-daemon: unable to start /usr/bin/prometheus-postgres-exporter",
                              0.0)
            self.running = True
            return ""
        if cmd == "command -v vector":
            return "/usr/bin/vector\n" if self.vector else no
        if cmd.startswith("set -a && . /etc/default/vector") and "vector validate" in cmd:
            return "Validated"
        return None


def no_password_in(*texts: object) -> bool:
    return not any(PASSWORD in str(t) or "spec-password%2Fwith%2Bchars" in str(t) for t in texts)


# the exporter ----------------------------------------------------------------------------------------

@covers("hcbpg.ops.monitoring.ensure_exporter", "fresh", "second run")
def test_exporter_installed_configured_and_started_once(params, cfg):
    srv = Server()
    out = monitoring.ensure_exporter(srv.host, params, params.primary, cfg, PASSWORD)
    assert out.changed and srv.host.journal == [INSTALL, *TLS_FRESH, "mkdir -p /etc/prometheus",
                                                f"write {EXPORTER_QUERIES}", f"write {EXPORTER_ENV}", STOP, START]
    assert out.actions == [f"apt-get install {EXPORTER_PACKAGE}", *TLS_ACTIONS, f"write {EXPORTER_QUERIES}",
                           f"write {EXPORTER_ENV} (0600)", "start"]
    env = next(w for w in srv.host.written if w[0] == EXPORTER_ENV)
    assert env[1] == render_exporter_env(params, params.primary, cfg, PASSWORD) and env[2:4] == (0o600, "root")
    assert "--web.config.file=/etc/prometheus/hcbpg-exporter-web.yml" in env[1]
    # what the alerting rules read is in the exporter's queries file
    assert srv.host.files[EXPORTER_QUERIES] == queries()
    assert {"hcbpg_xid", "hcbpg_wal", "pg_replication"} <= set(yaml.safe_load(queries()))
    key = next(w for w in srv.host.written if w[0] == EXPORTER_KEY)
    assert key[2:] == (0o600, "prometheus", "prometheus"), "the exporters' user reads its key; nobody else"
    assert srv.host.files[EXPORTER_WEB_CONFIG] == render_exporter_web_config(params)
    assert "<secret>" in out.diff and no_password_in(out, out.diff, out.actions)
    n = len(srv.host.journal)
    assert not monitoring.ensure_exporter(srv.host, params, params.primary, cfg, PASSWORD).changed
    assert len(srv.host.journal) == n
    # stopped since: started again, nothing written
    srv.running = False
    again = monitoring.ensure_exporter(srv.host, params, params.primary, cfg, PASSWORD)
    assert again.actions == ["start"] and srv.host.journal[n:] == [STOP, START]
    # its certificate gone (or not this CA's): issued again, and the exporter restarted onto it
    del srv.host.files[EXPORTER_CERT]
    renewed = monitoring.ensure_exporter(srv.host, params, params.primary, cfg, PASSWORD)
    assert renewed.actions[-1] == "restart" and "issued: no certificate yet" in renewed.actions


@covers("hcbpg.ops.monitoring.ensure_exporter", "dry run")
def test_a_plan_without_the_password_records_the_env_file_as_shown(params, cfg):
    live = Server(installed=True)
    monitoring.ensure_exporter(live.host, params, params.primary, cfg, PASSWORD)  # the exporter's TLS in place
    state = {**live.host.files, EXPORTER_QUERIES: queries(),
             EXPORTER_ENV: render_exporter_env(params, params.primary, cfg, PASSWORD)}
    srv = Server(installed=True, running=True, files=state)
    srv.dirs, srv.before = live.dirs, list(live.host.written)
    dry = DryRunHost(srv.host)
    planned = monitoring.ensure_exporter(dry, params, params.primary, cfg, None)
    assert planned.verb == "would change" and dry.journal == [f"write {EXPORTER_ENV}", STOP, START]
    assert dry.files[EXPORTER_ENV] == render_exporter_env(params, params.primary, cfg, None)
    assert srv.host.journal == [] and srv.host.written == [] and no_password_in(planned, planned.diff)
    absent = AbsentHost(NAME)
    plan = monitoring.ensure_exporter(absent, params, params.primary, cfg, None)
    assert plan.actions[0] == f"apt-get install {EXPORTER_PACKAGE}"
    assert plan.actions[-3:] == [f"write {EXPORTER_QUERIES}", f"write {EXPORTER_ENV} (0600)", "start"]
    assert f"write {EXPORTER_CERT} and {EXPORTER_KEY} (0600)" in plan.actions
    assert absent.journal[0] == INSTALL and absent.journal[-5:] == [
        "mkdir -p /etc/prometheus", f"write {EXPORTER_QUERIES}", f"write {EXPORTER_ENV}", STOP, START]
    assert f"write {EXPORTER_WEB_CONFIG}" in absent.journal
    assert tls._get_ca(params, create=False) is not None  # made by the real run above, never by a plan


@covers("hcbpg.ops.monitoring.ensure_exporter", "refusal")
def test_no_env_file_without_the_password_and_a_failed_start_raises(params, cfg):
    srv = Server(installed=True)
    with pytest.raises(SafetyCheckFailed, match="holds a password, and none was given"):
        monitoring.ensure_exporter(srv.host, params, params.primary, cfg, None)
    assert srv.host.journal == [] and EXPORTER_ENV not in srv.host.files
    failing = Server(installed=True, start_fails=True)
    with pytest.raises(Exception, match="unable to start"):
        monitoring.ensure_exporter(failing.host, params, params.primary, cfg, PASSWORD)
    assert not failing.running


# Vector ----------------------------------------------------------------------------------------------

@covers("hcbpg.ops.monitoring.ensure_vector_config", "fresh", "second run")
def test_vector_files_written_once_and_vector_validated_where_installed(params, cfg):
    srv = Server()
    out = monitoring.ensure_vector_config(srv.host, params, params.primary, cfg, PASSWORD)
    assert out.changed and srv.host.journal == ["mkdir -p /etc/vector", f"write {VECTOR_CONFIG}", f"write {VECTOR_ENV}"]
    assert out.actions == [f"write {VECTOR_CONFIG}", f"write {VECTOR_ENV} (0600)",
                           "(vector is not installed here: config only)"]
    assert srv.host.files[VECTOR_CONFIG] == render_vector_config(params, params.primary, cfg)
    assert srv.host.files[VECTOR_ENV] == render_vector_env(params, params.primary, cfg, PASSWORD)
    assert [w[2] for w in srv.host.written] == [0o644, 0o600] and no_password_in(out, out.diff)
    again = monitoring.ensure_vector_config(srv.host, params, params.primary, cfg, PASSWORD)
    assert not again.changed and again.actions == ["(vector is not installed here: config only)"]
    assert len(srv.host.journal) == 3
    with_vector = Server(vector=True)
    done = monitoring.ensure_vector_config(with_vector.host, params, params.primary, cfg, PASSWORD)
    assert done.actions[-1] == "vector validate, then restart vector"
    assert with_vector.host.journal[-1].endswith(f"vector validate --no-environment {VECTOR_CONFIG}")


@covers("hcbpg.ops.monitoring.ensure_vector_config", "dry run")
def test_vector_plan_records_the_files_as_shown(params, cfg):
    srv = Server()
    dry = DryRunHost(srv.host)
    planned = monitoring.ensure_vector_config(dry, params, params.primary, cfg, None)
    assert planned.verb == "would change" and dry.journal == ["mkdir -p /etc/vector", f"write {VECTOR_CONFIG}",
                                                              f"write {VECTOR_ENV}"]
    assert "postgresql://vector:<secret>@10.0.1.5:5432/postgres" in dry.files[VECTOR_ENV]
    assert srv.host.journal == [] and srv.host.files == {}
    # the env file in force holds the password (and an AppSignal key): a plan, which has neither, shows neither
    real = render_vector_env(params, params.primary, cfg, PASSWORD, appsignal_key="appsignal-key-0123", appsignal=True)
    live = Server(files={VECTOR_CONFIG: render_vector_config(params, params.primary, cfg, appsignal=True),
                         VECTOR_ENV: real})
    plan = monitoring.ensure_vector_config(DryRunHost(live.host), params, params.primary, cfg, None,
                                           appsignal_key="appsignal-key-0123")
    assert plan.changed and no_password_in(plan, plan.diff) and "appsignal-key-0123" not in plan.diff


@covers("hcbpg.ops.monitoring.ensure_vector_config", "refusal")
def test_vector_env_file_not_written_without_the_password(params, cfg):
    srv = Server(files={VECTOR_CONFIG: render_vector_config(params, params.primary, cfg)})
    with pytest.raises(SafetyCheckFailed, match=re.escape(VECTOR_ENV)):
        monitoring.ensure_vector_config(srv.host, params, params.primary, cfg, None)
    assert srv.host.journal == [] and VECTOR_ENV not in srv.host.files


# the exporters' TLS ------------------------------------------------------------------------------------

@covers("hcbpg.ops.monitoring.ensure_exporter_tls", "fresh", "second run", "dry run", "refusal")
def test_the_exporters_tls_certificate_and_web_config(params, tmp_path):
    from cryptography import x509

    from hcbpg.desired.certs import render_ca
    from hcbpg.errors import SecretError
    srv = Server(installed=True)
    dry = DryRunHost(srv.host)
    plan = monitoring.ensure_exporter_tls(dry, params, "hcb-jumpbox", "10.0.1.40")
    assert all(o.changed and o.dry_run for o in plan) and srv.host.journal == [] and srv.host.files == {}
    assert tls._get_ca(params, create=False) is None, "a plan makes no CA"
    out = monitoring.ensure_exporter_tls(srv.host, params, "hcb-jumpbox", "10.0.1.40")
    assert srv.host.journal == TLS_FRESH and all(o.changed for o in out)
    cert = x509.load_pem_x509_certificate(srv.host.files[EXPORTER_CERT].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.1.40"]
    assert cert.issuer == x509.load_pem_x509_certificate(srv.host.files[CA].encode()).subject
    n = len(srv.host.journal)
    assert not any(o.changed for o in monitoring.ensure_exporter_tls(srv.host, params, "hcb-jumpbox", "10.0.1.40"))
    assert len(srv.host.journal) == n
    # the machine's address changed: a certificate naming the new one
    moved = monitoring.ensure_exporter_tls(srv.host, params, "hcb-jumpbox", "10.0.1.41")
    assert [o.what for o in moved if o.changed] == ["the exporters' TLS certificate on hcb-jumpbox (10.0.1.41)"]
    # a CA certificate that is not the CA key's: refused, nothing written
    tls._CA_CACHE.clear()
    (tmp_path / "ca.crt").write_text(render_ca("lab-not-ours").cert_pem)
    other = Server(installed=True)
    with pytest.raises(SecretError, match="does not belong to the CA certificate"):
        monitoring.ensure_exporter_tls(other.host, params, "hcb-jumpbox", "10.0.1.40")
    assert other.host.journal == []
