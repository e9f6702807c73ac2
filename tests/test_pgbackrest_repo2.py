"""A second pgBackRest repository (``pgbackrest.repo2``, issue 24): the params model, pgbackrest.conf with the
repo2-* options (golden), its secrets, the backup schedule per repository, ``info``'s rows and WAL per
repository, and a restore from one repository.  Pure."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from hcbpg.adapters.site import site_for
from hcbpg.desired import backups as pgb_paths
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.desired import schedule
from hcbpg.errors import ParamsError
from hcbpg.params import S3Repo
from hcbpg.pg import pgbackrest as pgb
from hcbpg.pg.pgbackrest import restore_options

from goldenfile import GOLDEN, golden
from pgbackrest_params import LAB_PB, params

REPO2 = {
    "s3_bucket": "hcb-production-postgres-2", "s3_endpoint": "10.0.1.250:9444", "s3_region": "us-east-1",
    "s3_uri_style": "path", "s3_ca_file": "/var/lib/hcbpg-lab/tls/ca.crt",
    "s3_key": "env:HCBPG_TEST_S3B_KEY", "s3_key_secret": "env:HCBPG_TEST_S3B_SECRET",
    "cipher_pass": "env:HCBPG_TEST_CIPHER2", "repo_path_prefix": "/pgbackrest-copy",
    "retention_full_type": "count", "retention_full": 4,
    "schedule_full": "30 8 * * 0", "schedule_diff": "30 8 * * 1-6",
}
SECRETS = {"HCBPG_TEST_S3_KEY": "AKIAREPO1KEY0000000", "HCBPG_TEST_S3_SECRET": "repo1-secret-value-planted-1",
           "HCBPG_TEST_CIPHER": "repo1-passphrase-planted", "HCBPG_TEST_S3B_KEY": "AKIAREPO2KEY0000000",
           "HCBPG_TEST_S3B_SECRET": "repo2-secret-value-planted-2", "HCBPG_TEST_CIPHER2": "repo2-passphrase-planted"}


@pytest.fixture
def p2():
    return params({**LAB_PB, "repo2": REPO2})


# params ------------------------------------------------------------------------------------------

def test_repo2_is_an_s3repo_and_repo1_stays_flat(p2):
    pb = p2.pgbackrest
    assert isinstance(pb, S3Repo) and isinstance(pb.repo2, S3Repo)
    assert [n for n, _ in pb.repos()] == [1, 2] and pb.repos()[0][1] is pb
    assert [n for n, _ in params(LAB_PB).pgbackrest.repos()] == [1]
    # the per-repository fields are one class: the top level has each of them
    assert set(S3Repo.model_fields) <= set(type(pb).model_fields)


@pytest.mark.parametrize("change, problem", [
    ({"cipher_pass": None}, "pgbackrest.repo2.cipher_pass: cipher_type aes-256-cbc needs cipher_pass"),
    ({"repo_path_prefix": "relative"}, "pgbackrest.repo2.repo_path_prefix: must be an absolute path"),
    ({"s3_bucket": None}, "pgbackrest.repo2.s3_bucket"),
    ({"schedule_full": "30 8 * *"}, "pgbackrest.repo2.schedule_full"),
    ({"s3_keyy": "env:X"}, "pgbackrest.repo2.s3_keyy: unknown key; did you mean 's3_key'?"),
])
def test_repo2_problems_name_their_key(change, problem):
    repo2 = {k: v for k, v in {**REPO2, **change}.items() if v is not None}
    with pytest.raises(ParamsError) as e:
        params({**LAB_PB, "repo2": repo2})
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_repo2_needs_its_own_bucket_endpoint_region_and_keys():
    with pytest.raises(ParamsError) as e:
        params({**LAB_PB, "repo2": {"cipher_type": "none"}})
    for key in ("s3_bucket", "s3_endpoint", "s3_region", "s3_key", "s3_key_secret"):
        assert f"pgbackrest.repo2.{key}: required key is missing" in e.value.problems


# pgbackrest.conf ---------------------------------------------------------------------------------

def test_conf_with_repo2_matches_golden_and_keeps_repo1_as_it_was(p2):
    text = desired_pgbackrest.render_pgbackrest_conf(p2, p2.primary, version=(2, 45, 0))
    golden("pgbackrest.lab.repo2.conf", text)
    g = desired_pgbackrest.parse_conf(text)["global"]
    one = desired_pgbackrest.parse_conf(
        desired_pgbackrest.render_pgbackrest_conf(params(LAB_PB), p2.primary, version=(2, 45, 0)))["global"]
    assert {k: v for k, v in g.items() if not k.startswith("repo2-")} == one
    assert g["repo2-s3-endpoint"] == "10.0.1.250" and g["repo2-storage-port"] == "9444"
    assert g["repo2-s3-bucket"] == "hcb-production-postgres-2" and g["repo2-s3-region"] == "us-east-1"
    assert g["repo2-path"] == "/pgbackrest-copy/hcb_production"
    assert g["repo2-retention-full-type"] == "count" and g["repo2-retention-full"] == "4"
    assert g["repo2-cipher-type"] == "aes-256-cbc" and g["repo2-cipher-pass"] == "<secret>"
    assert g["repo2-s3-key"] == g["repo2-s3-key-secret"] == "<secret>"
    # WAL goes to both: one archive-push, asynchronous, bounded (options every repository shares)
    assert g["archive-async"] == "y" and "archive-push-queue-max" in g


def test_repo2_secrets_only_in_the_written_bytes(p2, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    values = pgb_paths.resolve_conf_secrets(p2)
    assert values["repo2-s3-key"] == SECRETS["HCBPG_TEST_S3B_KEY"]
    assert values["repo2-cipher-pass"] == SECRETS["HCBPG_TEST_CIPHER2"]
    assert values["repo1-s3-key"] == SECRETS["HCBPG_TEST_S3_KEY"]
    real = desired_pgbackrest.render_pgbackrest_conf(p2, p2.primary, version=(2, 45, 0), secrets=values)
    for v in SECRETS.values():
        assert v in real
    shown = desired_pgbackrest.redact_conf(real)
    assert shown == desired_pgbackrest.render_pgbackrest_conf(p2, p2.primary, version=(2, 45, 0))
    for v in SECRETS.values():
        assert v not in shown
    # the drill's read-only key replaces repo1's only; repo2 keeps its own
    drill = params({**LAB_PB, "repo2": REPO2})
    assert pgb_paths.resolve_conf_secrets(drill, read_only=True)["repo2-s3-key"] == SECRETS["HCBPG_TEST_S3B_KEY"]


def test_repo2_without_cipher_writes_no_passphrase():
    p = params({**LAB_PB, "repo2": {**REPO2, "cipher_type": "none", "cipher_pass": None}})
    g = desired_pgbackrest.conf_options(p, p.primary, version=(2, 45, 0))["global"]
    assert g["repo2-cipher-type"] == "none" and "repo2-cipher-pass" not in g and "repo1-cipher-pass" in g


def test_repo2_endpoint_problem_names_repo2():
    with pytest.raises(ParamsError, match=r"pgbackrest\.repo2\.s3_endpoint: .*port 99999"):
        params({**LAB_PB, "repo2": {**REPO2, "s3_endpoint": "10.0.1.250:99999"}})
    with pytest.raises(ParamsError, match=r"pgbackrest\.repo2\.s3_endpoint: port 99999"):
        desired_pgbackrest.split_endpoint("10.0.1.250:99999", key="pgbackrest.repo2.s3_endpoint")


# the schedule ------------------------------------------------------------------------------------

def test_each_repository_has_its_own_schedule_and_the_job_names_the_repository(p2, tmp_path):
    s = schedule.plan_schedule(p2, site_for(p2).deadman_url(p2))
    cron = schedule.render_cron(s)
    golden("pgbackrest.repo2.cron", cron)
    assert "30 6 * * 0 postgres /usr/local/sbin/hcbpg-backup full\n" in cron
    assert "30 8 * * 0 postgres /usr/local/sbin/hcbpg-backup full 2\n" in cron
    assert "30 8 * * 1-6 postgres /usr/local/sbin/hcbpg-backup diff 2\n" in cron
    script = schedule.render_backup_job_script(p2, s)
    assert 'pgbackrest --stanza="$STANZA" --repo="$repo" --type="$type"' in script and "  1|2) ;;" in script
    one = schedule.render_backup_job_script(params(LAB_PB), schedule.plan_schedule(params(LAB_PB), None))
    assert "  1) ;;" in one
    # the script as sh reads it: a repository not configured is refused before anything runs
    job = tmp_path / "job"
    job.write_text(one)
    res = subprocess.run(["sh", str(job), "full", "2"], capture_output=True, text=True, check=False)
    assert res.returncode == 64 and "no repository 2" in res.stderr
    res = subprocess.run(["sh", "-n", str(job)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


# info ----------------------------------------------------------------------------------------------

def two_repo_info() -> str:
    """The golden ``info --output=json`` with each backup and the archive also in repo2 (as 2.45 lists them)."""
    data = json.loads((GOLDEN / "pgbackrest.info.json").read_text())
    st = data[0]
    for key in ("archive", "backup"):
        copies = copy.deepcopy(st[key])
        for c in copies:
            c["database"]["repo-key"] = 2
        st[key] += copies
    st["archive"][-1]["max"] = "000000010000000000000009"
    st["repo"] = [{"cipher": "aes-256-cbc", "key": 1, "status": {"code": 0, "message": "ok"}},
                  {"cipher": "aes-256-cbc", "key": 2, "status": {"code": 1, "message": "missing stanza path"}}]
    return json.dumps(data)


def test_info_rows_name_their_repository():
    text = two_repo_info()
    rows = pgb.parse_info_json(text, "hcb_production")
    assert [(r.repo, r.type) for r in rows] == [(1, "full"), (2, "full"), (1, "diff"), (2, "diff")]
    assert rows[0].row()["repo"] == "repo1" and rows[1].row()["repo"] == "repo2"
    assert pgb.parse_repo_status(text, "hcb_production") == {1: (0, "ok"), 2: (1, "missing stanza path")}
    assert pgb.parse_archive_ranges(text, "hcb_production") == {
        1: ("000000010000000000000002", "000000010000000000000007"),
        2: ("000000010000000000000002", "000000010000000000000009")}
    assert pgb.parse_repo_status(text, "other") == {} and pgb.parse_archive_ranges(text, "other") == {}
    # a listing without repo-key (older output) is repo1
    assert all(r.repo == 1 for r in pgb.parse_info_json((GOLDEN / "pgbackrest.info.json").read_text()))


def test_restore_from_one_repository():
    assert restore_options(repo=2)[-1] == "--repo=2"
    assert "--repo=2" in restore_options(set_label="20261125-103033F", repo=2)
    assert not any(o.startswith("--repo") for o in restore_options(set_label="20261125-103033F"))


def test_the_health_job_judges_the_stalest_repository():
    from hcbpg.desired.health import Thresholds, rule_backup  # noqa: PLC0415 - this test only
    from hcbpg.ops.jobs import health_job  # noqa: PLC0415 - this test only
    now = 1_800_000_000.0
    cfg = {"server": "p"}
    facts = {"in_recovery": False, "now": now, "data_directory": "/d", "archive_mode": "on", "archiver": {},
             "ready": 0, "wal_bytes": 0, "slots": [], "replication": [], "receiver": None, "replay_lag": None}
    backups = [{"start": now - 3700, "stop": now - 3600, "error": False, "repo": 1},
               {"start": now - 90 * 3600, "stop": now - 80 * 3600, "error": False, "repo": 2}]
    m = health_job.to_measurement(cfg, facts, "", 10.0, backups, None)
    assert m.backup is not None and m.backup["stop"] == now - 80 * 3600 and m.backup["repo"] == 2
    verdict = rule_backup(m, Thresholds())
    assert "in repo2" in str(verdict) and "fail" in str(verdict)
    one = health_job.to_measurement(cfg, facts, "", 10.0, backups[:1], None)
    assert one.backup is not None and one.backup["stop"] == now - 3600 and "repo" not in one.backup


def test_status_shows_each_repositorys_newest_backup_and_a_repository_without_one(p2):
    from hcbpg.adapters.recording import RecordingHost  # noqa: PLC0415 - this test only
    from hcbpg.desired.health import Measurement, Thresholds, rule_backup  # noqa: PLC0415 - this test only
    from hcbpg.ops import health  # noqa: PLC0415 - this test only

    def measured(info_json: str) -> Measurement:
        host = RecordingHost("server-postgres-1", {r"pgbackrest .*info": info_json})
        m = Measurement("server-postgres-1", "10.0.1.5", "primary", reachable=True, running=True, in_recovery=False,
                        now=1_795_700_000.0)
        health._backup(host, p2, m)
        return m

    m = measured(two_repo_info())
    assert m.backup is not None and set(m.backup["repos"]) == {"repo1", "repo2"}
    detail = str(rule_backup(m, Thresholds()))
    assert "repo1: diff 20261125-103033F_20261125-103043D" in detail and "repo2: diff" in detail
    only1 = measured((GOLDEN / "pgbackrest.info.json").read_text())
    assert only1.backup is None and only1.backup_error is not None and "no backup in repo2" in only1.backup_error
    assert "no backup in repo2" in str(rule_backup(only1, Thresholds()))
