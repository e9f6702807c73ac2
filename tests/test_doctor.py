"""``hcbpg doctor`` and preflight's prerequisites (issue 27, item 6): the Heroku CLI's answer parsed and kept secret,
the Hetzner token's rights asked with a write that cannot succeed (the lab's API stand-in, on this machine), the
operator's address against the admin ranges, placeholders refused outside the lab, and the doctor's exit codes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import hcloud
import pytest

from hcbpg import secrets as hsecrets
from hcbpg.adapters.local import run_local
from hcbpg.desired import cloud
from hcbpg.engine import doctor
from hcbpg.errors import SecretError
from hcbpg.lab.hcloud_api import HcloudStandin, RunningStandin, read_state
from hcbpg.ops import operator
from hcbpg.ops.migration.source import get_heroku_source_url, get_source_url
from hcbpg.params import load_params, parse_params
from hcbpg.pg.dump import parse_heroku_credentials_url
from hcbpg.steps import preflight

from nbutil import REPO, hcbpg

TOKEN, READ_ONLY = "rw-token-0123456789abcdef", "ro-token-0123456789abcdef"
URL = "postgres://u9abc:p0ssw0rd-heroku-secret@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d4xyz"

#: heroku 8 (plugin-pg-v5) printed the lines flush left; heroku 10 indents the values
HEROKU_8 = ("Connection information for default credential.\nConnection info string:\n"
            f"\"dbname=d4xyz host=ec2-1-2-3-4.compute-1.amazonaws.com port=5432 user=u9abc "
            f"password=p0ssw0rd-heroku-secret sslmode=require\"\nConnection URL:\n{URL}\n")
HEROKU_10 = HEROKU_8.replace('\n"dbname', '\n   "dbname').replace(f"\n{URL}", f"\n   {URL}")


# the Heroku CLI's answer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("output", [HEROKU_8, HEROKU_10], ids=["heroku-8", "heroku-10"])
def test_the_url_is_the_line_after_connection_url(output):
    assert parse_heroku_credentials_url(output) == URL


@pytest.mark.parametrize("output", ["", " ›   Error: Couldn't find that app.\n",
                                    "Connection URL:\n\n", f"{URL}\n{URL.replace('d4xyz', 'other')}\n",
                                    "Connection URL:\n  dbname=d4xyz host=h\n"])
def test_no_url_or_an_ambiguous_answer_gives_none(output):
    assert parse_heroku_credentials_url(output) is None


def fake_cli(answers: dict[str, tuple[int, str, str]], calls: list[list[str]] | None = None):
    """A local runner answering ``heroku SUBCOMMAND`` with (exit code, stdout, stderr)."""
    def local(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        if calls is not None:
            calls.append(list(argv))
        if argv[1] not in answers:
            raise FileNotFoundError(argv[0])
        code, out, err = answers[argv[1]]
        return subprocess.CompletedProcess(list(argv), code, out, err)
    return local


def test_the_url_is_read_with_the_app_named_and_registered_with_the_scrubber():
    calls: list[list[str]] = []
    url = get_heroku_source_url(fake_cli({"pg:credentials:url": (0, HEROKU_10, "")}, calls), "hcb")
    assert url == URL and calls == [["heroku", "pg:credentials:url", "--app", "hcb"]]
    assert "p0ssw0rd-heroku-secret" not in hsecrets.scrub(f"connected with {URL} (password p0ssw0rd-heroku-secret)")


def test_a_failed_or_missing_cli_says_what_to_do_and_never_shows_its_output():
    with pytest.raises(SecretError, match="heroku login") as exc:
        get_heroku_source_url(fake_cli({"pg:credentials:url": (1, HEROKU_8, " ›   Error: no access")}), "hcb")
    assert "no access" in exc.value.message and "p0ssw0rd" not in str(exc.value)
    with pytest.raises(SecretError, match="gave no database URL") as exc:  # exit 0 and no URL: nothing of stdout shown
        get_heroku_source_url(fake_cli({"pg:credentials:url": (0, "password=p0ssw0rd-x\n", "")}), "hcb")
    assert "p0ssw0rd" not in str(exc.value)
    with pytest.raises(SecretError, match="not installed"):
        get_heroku_source_url(fake_cli({}), "hcb")


def test_method_heroku_takes_the_url_from_the_cli_and_pg_dump_from_its_secret():
    base = {"environment": "staging", "hetzner": {"token": "env:T", "ssh_public_key_file": "/k.pub"},
            "servers": [{"name": "db-1", "private_ip": "10.0.1.5", "role": "primary"}],
            "postgres": {"app_role_password": "env:P"}}
    heroku = parse_params({**base, "source": {"method": "heroku", "heroku_app": "hcb", "transfer": "online"}})
    cli = fake_cli({"pg:credentials:url": (0, HEROKU_8, "")})
    assert get_source_url(cli, heroku, lambda key: pytest.fail(f"asked for the secret {key}")) == URL
    dump = parse_params({**base, "source": {"url": "env:U"}})
    assert get_source_url(fake_cli({}), dump, lambda key: f"secret of {key}") == "secret of source.url"


def test_params_refuse_a_url_with_method_heroku_and_none_with_pg_dump():
    from hcbpg.errors import ParamsError
    base = {"environment": "staging", "hetzner": {"token": "env:T", "ssh_public_key_file": "/k.pub"},
            "servers": [{"name": "db-1", "private_ip": "10.0.1.5", "role": "primary"}],
            "postgres": {"app_role_password": "env:P"}}
    with pytest.raises(ParamsError, match=r"source\.url: method heroku reads the URL with `heroku pg:credentials:url"):
        parse_params({**base, "source": {"method": "heroku", "heroku_app": "hcb", "url": "env:U"}})
    with pytest.raises(ParamsError, match=r"source\.url: method pg_dump needs url"):
        parse_params({**base, "source": {"method": "pg_dump"}})


class FakeRun:
    def __init__(self, params) -> None:  # noqa: ANN001
        self.params, self.env, self.home = params, params.environment, REPO


def test_preflight_checks_the_heroku_login_and_the_apps_database():
    rb = FakeRun(load_params("production", REPO))
    logged_out = preflight.check_heroku(rb, local=fake_cli({"auth:whoami": (100, "", " ›   Error: not logged in")}))
    assert [(c.name, c.status) for c in logged_out] == [("heroku CLI logged in", "fail")]
    assert "heroku login" in logged_out[0].detail
    rows = preflight.check_heroku(rb, local=fake_cli({"auth:whoami": (0, "ops@hcb.example\n", ""),
                                                      "pg:credentials:url": (0, HEROKU_10, "")}))
    assert [(c.name, c.status) for c in rows] == [("heroku CLI logged in", "pass"),
                                                  ("source URL from heroku pg:credentials:url", "pass")]
    assert "ops@hcb.example" in rows[0].detail and "u9abc@ec2-1-2-3-4.compute-1.amazonaws.com:5432/d4xyz" in rows[1].detail
    assert "p0ssw0rd" not in rows[1].detail and rows[1].target == "heroku app hcb"
    no_access = preflight.check_heroku(rb, local=fake_cli({"auth:whoami": (0, "ops@hcb.example\n", ""),
                                                           "pg:credentials:url": (1, "", " ›   Error: forbidden")}))
    assert [c.status for c in no_access] == ["pass", "fail"] and "forbidden" in no_access[1].detail


# the Hetzner token's rights, against the lab's API stand-in on this machine ---------------------------------

@pytest.fixture
def api(tmp_path):
    app = HcloudStandin(tmp_path / "state.json", TOKEN, read_only_tokens=[READ_ONLY])
    with RunningStandin(app) as running:
        yield running


def test_the_tokens_rights_are_asked_with_a_write_that_creates_nothing(api, tmp_path):
    params = parse_params({"environment": "staging", "hetzner": {"token": "env:T", "ssh_public_key_file": "/k.pub",
                                                                  "api_endpoint": api.url},
                           "servers": [{"name": "db-1", "private_ip": "10.0.1.5", "role": "primary"}],
                           "postgres": {"app_role_password": "env:P"}})
    rw = operator.check_token_rights(hcloud.Client(token=TOKEN, api_endpoint=api.url), params)
    assert rw.status == "pass" and "nothing was created" in rw.detail, rw
    ro = operator.check_token_rights(hcloud.Client(token=READ_ONLY, api_endpoint=api.url), params)
    assert ro.status == "fail" and "read-only" in ro.detail and "Read & Write" in ro.detail, ro
    # a read-only token still reads: what preflight's other row asks works with it
    assert hcloud.Client(token=READ_ONLY, api_endpoint=api.url).servers.get_all() == []
    bad = operator.check_token_rights(hcloud.Client(token="nope", api_endpoint=api.url), params)
    assert bad.status == "fail" and "unauthorized" in bad.detail, bad
    assert read_state(tmp_path / "state.json")["ssh_keys"] == []


# the operator's address ----------------------------------------------------------------------------------

def test_the_operators_address_is_checked_against_the_admin_ranges(monkeypatch):
    params = load_params("production", REPO)
    inside = cloud.check_admin_range(params, "203.0.113.9", "given with --from")
    assert inside.status == "pass" and "203.0.113.0/24" in inside.detail
    outside = cloud.check_admin_range(params, "198.51.100.7", "given with --from")
    assert outside.status == "fail" and "lock" not in outside.detail and "keep" in outside.detail
    unknown = cloud.check_admin_range(params, None, "this machine has no public address of its own")
    assert unknown.status == "warn" and "--from" in unknown.detail
    assert operator.get_operator_address(run_local, "198.51.100.7") == ("198.51.100.7", "given with --from")
    monkeypatch.setenv(cloud.OPERATOR_ADDRESS_ENV, "198.51.100.8")
    assert operator.get_operator_address(run_local, None) == ("198.51.100.8", cloud.OPERATOR_ADDRESS_ENV)


def test_the_route_source_is_read_from_ip_route_get():
    out = '[{"dst":"1.1.1.1","gateway":"192.0.2.1","dev":"eth0","prefsrc":"192.0.2.2","flags":[],"uid":0}]'
    assert cloud.parse_route_source(out) == ("192.0.2.2", False)
    link = '[{"dst":"10.0.1.10","dev":"hcbt1","prefsrc":"10.0.1.1","flags":[],"uid":0,"cache":[]}]'
    assert cloud.parse_route_source(link) == ("10.0.1.1", True)  # on the link: the host sees this address
    assert cloud.parse_route_source("") == (None, False)
    assert cloud.parse_route_source("RTNETLINK answers") == (None, False)


# placeholders -----------------------------------------------------------------------------------------

#: production's alerting section ships its receiver and its dead-man as placeholders (tests/test_preflight_alerting.py)
ALERTING_PLACEHOLDERS = {"alerting.receivers.slack.webhook_url": "op://HCB Engineering/CHANGE-ME Alerting Slack webhook/url",
                         "alerting.heartbeat_url": "op://HCB Engineering/CHANGE-ME Alerting heartbeat/url"}


def test_placeholders_fail_outside_the_lab_and_warn_in_it(tmp_path):
    params = load_params("production", REPO)
    assert params.placeholders() == {"pgbackrest.deadman_url": "https://hc-ping.com/CHANGE-ME",
                                     "hetzner.admin_source_ranges[0]": "203.0.113.0/24", **ALERTING_PLACEHOLDERS}
    rows = [c for c in preflight.check_params(FakeRun(params)) if c.name.startswith("placeholder ")]
    assert {(c.name, c.status) for c in rows} == {("placeholder pgbackrest.deadman_url", "fail"),
                                                  ("placeholder hetzner.admin_source_ranges[0]", "fail"),
                                                  *((f"placeholder {k}", "fail") for k in ALERTING_PLACEHOLDERS)}
    assert all("set it in production.yaml to" in c.detail for c in rows)
    lab = params.model_copy(update={"site": "hcbpg.lab.site:LabSite"})
    assert {c.status for c in preflight.check_params(FakeRun(lab)) if c.name.startswith("placeholder ")} == {"warn"}


def test_params_check_names_the_placeholders_left(home):
    (home / "params" / "production.yaml").write_text((REPO / "params" / "production.yaml").read_text())
    r = hcbpg("params", "check", "production")
    assert r.returncode == 0 and "is valid" in r.stdout, r
    assert "4 placeholder(s) are left" in r.stdout, r.stdout
    assert "pgbackrest.deadman_url: https://hc-ping.com/CHANGE-ME" in r.stdout
    assert "hetzner.admin_source_ranges[0]: 203.0.113.0/24" in r.stdout
    data = json.loads(hcbpg("params", "check", "production", "--json").stdout)
    assert data["placeholders"] == {"pgbackrest.deadman_url": "https://hc-ping.com/CHANGE-ME",
                                    "hetzner.admin_source_ranges[0]": "203.0.113.0/24", **ALERTING_PLACEHOLDERS}


# the doctor itself ----------------------------------------------------------------------------------------

def _doctor_params(home: Path, api_url: str, key: Path, *, deadman: str) -> None:
    (home / "params" / "doc.yaml").write_text(f"""environment: doc
hetzner:
  token: env:HCBPG_TEST_TOKEN
  api_endpoint: {api_url}
  ssh_public_key_file: {key}.pub
  admin_source_ranges: [100.64.10.0/24]   # not a documentation range: those are placeholders
servers:
  - {{name: server-postgres-1, private_ip: 10.0.1.5, role: primary}}
ssh: {{key_file: {key}}}
postgres:
  app_role_password: env:HCBPG_TEST_APP_PW
pgbackrest:
  s3_bucket: b
  s3_endpoint: s3.example
  s3_key: env:HCBPG_TEST_S3
  s3_key_secret: env:HCBPG_TEST_S3
  cipher_pass: env:HCBPG_TEST_S3
  deadman_url: {deadman}
audit: {{anchor: none}}
jumpbox: {{name: doc-jumpbox, private_ip: 10.0.1.40}}   # where the monitor runs
alerting:                               # a real site without it is refused (nothing would page anyone)
  receivers: {{webhook: {{url: env:HCBPG_TEST_HOOK}}}}
  heartbeat_url: env:HCBPG_TEST_HOOK
""")


def test_doctor_exits_0_when_every_prerequisite_holds_and_2_naming_each_missing_one(home, api, monkeypatch):
    key = Path(__import__("os").environ["HCBPG_SIGNING_KEY"])
    env = {"HCBPG_TEST_TOKEN": TOKEN, "HCBPG_TEST_APP_PW": "app-password-0123456789",
           "HCBPG_TEST_S3": "s3-secret-0123456789", "HCBPG_OPERATOR_ADDRESS": "100.64.10.7",
           "HCBPG_TEST_HOOK": "https://hooks.hcb.test/alerts/0f1e2d3c4b5a"}
    _doctor_params(home, api.url, key, deadman="https://hc-ping.com/0f1e2d3c")
    ok = hcbpg("doctor", "doc", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every prerequisite of doc holds" in ok.stdout and "FAIL" not in ok.stdout
    for name in ("signing key allowed", "audit record verifies", "secret hetzner.token", "Hetzner Cloud API token "
                 "read-write", "operator's address in hetzner.admin_source_ranges"):
        assert f"PASS  {name}" in ok.stdout, (name, ok.stdout)
    assert "s3-secret-0123456789" not in ok.stdout + ok.stderr
    # a placeholder, a read-only token, an address outside the ranges, a secret that is not there
    _doctor_params(home, api.url, key, deadman="https://hc-ping.com/CHANGE-ME")
    bad = hcbpg("doctor", "doc", "--from", "100.64.99.5", "--json",
                env={**env, "HCBPG_TEST_TOKEN": READ_ONLY, "HCBPG_TEST_S3": ""})
    assert bad.returncode == 2, bad.stdout + bad.stderr
    data = json.loads(bad.stdout)
    failed = {c["name"] for c in data["checks"] if c["status"] == "fail"}
    assert failed == {"placeholder pgbackrest.deadman_url", "Hetzner Cloud API token read-write",
                      "operator's address in hetzner.admin_source_ranges", "secret pgbackrest.s3_key",
                      "secret pgbackrest.s3_key_secret", "secret pgbackrest.cipher_pass"}, failed
    assert data["exit_code"] == 2 and not data["ok"]
    assert not (home / "outputs").exists(), "the doctor records nothing"


def test_the_report_gives_each_reason_whole_wrapped_only_on_a_terminal():
    from hcbpg.outcome import Check
    reason = "a reason " * 30
    checks = [Check("secret hetzner.token", "fail", reason.strip(), "operator"), Check("params valid", "pass", "ok")]
    flat = doctor.render_report(checks, "production")
    assert f"FAIL  secret hetzner.token on operator: {reason.strip()}" in flat.splitlines()
    assert "1 prerequisite(s) of production missing" in flat
    wrapped = doctor.render_report(checks, "production", width=60)
    assert all(len(line) <= 60 for line in wrapped.splitlines()) and " ".join(wrapped.split()).count(
        " ".join(reason.split())) == 1
