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
from hcbpg.desired import roles as desired_roles
from hcbpg.desired.monitoring import (
    EXPORTER_ENV,
    EXPORTER_PACKAGE,
    EXPORTER_QUERIES,
    VECTOR_CONFIG,
    VECTOR_ENV,
    render_exporter_env,
    render_exporter_queries,
    render_vector_config,
    render_vector_env,
)
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import monitoring
from hcbpg.params import parse_params
from tests.fast.specs import covers

REPO = Path(__file__).resolve().parents[2]
NAME = "server-postgres-1"
PASSWORD = "spec-password/with+chars"
INSTALL = f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {EXPORTER_PACKAGE}"
STOP = "stop prometheus-postgres-exporter (start-stop-daemon)"
START = "start prometheus-postgres-exporter (start-stop-daemon, as prometheus)"


@pytest.fixture
def params():
    return parse_params(yaml.safe_load((REPO / "params" / "lab.yaml").read_text()))


@pytest.fixture
def cfg(params):
    return desired_roles.roles_config(params)


class Server:
    """A lab server without systemd: dpkg, the exporter's pidfile process, Vector's binary, files."""

    def __init__(self, *, installed: bool = False, running: bool = False, vector: bool = False,
                 files: dict[str, str] | None = None, start_fails: bool = False) -> None:
        self.installed, self.running, self.vector, self.start_fails = installed, running, vector, start_fails
        self.host = RecordingHost(NAME, handler=self.answer, files=dict(files or {}))

    def answer(self, call: Call) -> Result | str | None:
        cmd, shown = call.command, call.options.get("display") or ""
        no = Result(NAME, cmd, 1, "", "", 0.0)
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
    assert out.changed and srv.host.journal == [INSTALL, "mkdir -p /etc/prometheus", f"write {EXPORTER_QUERIES}",
                                                f"write {EXPORTER_ENV}", STOP, START]
    assert out.actions == [f"apt-get install {EXPORTER_PACKAGE}", f"write {EXPORTER_QUERIES}",
                           f"write {EXPORTER_ENV} (0600)", "start"]
    env = next(w for w in srv.host.written if w[0] == EXPORTER_ENV)
    assert env[1] == render_exporter_env(params, params.primary, cfg, PASSWORD) and env[2:4] == (0o600, "root")
    assert srv.host.files[EXPORTER_QUERIES] == render_exporter_queries()
    assert "<secret>" in out.diff and no_password_in(out, out.diff, out.actions)
    assert not monitoring.ensure_exporter(srv.host, params, params.primary, cfg, PASSWORD).changed
    assert len(srv.host.journal) == 6
    # stopped since: started again, nothing written
    srv.running = False
    again = monitoring.ensure_exporter(srv.host, params, params.primary, cfg, PASSWORD)
    assert again.actions == ["start"] and srv.host.journal[6:] == [STOP, START]


@covers("hcbpg.ops.monitoring.ensure_exporter", "dry run")
def test_a_plan_without_the_password_records_the_env_file_as_shown(params, cfg):
    state = {EXPORTER_QUERIES: render_exporter_queries(),
             EXPORTER_ENV: render_exporter_env(params, params.primary, cfg, PASSWORD)}
    srv = Server(installed=True, running=True, files=state)
    dry = DryRunHost(srv.host)
    planned = monitoring.ensure_exporter(dry, params, params.primary, cfg, None)
    assert planned.verb == "would change" and dry.journal == [f"write {EXPORTER_ENV}", STOP, START]
    assert dry.files[EXPORTER_ENV] == render_exporter_env(params, params.primary, cfg, None)
    assert srv.host.journal == [] and srv.host.written == [] and no_password_in(planned, planned.diff)
    absent = AbsentHost(NAME)
    plan = monitoring.ensure_exporter(absent, params, params.primary, cfg, None)
    assert plan.actions == [f"apt-get install {EXPORTER_PACKAGE}", f"write {EXPORTER_QUERIES}",
                            f"write {EXPORTER_ENV} (0600)", "start"]
    assert absent.journal == [INSTALL, "mkdir -p /etc/prometheus", f"write {EXPORTER_QUERIES}", f"write {EXPORTER_ENV}",
                              STOP, START]


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
