"""Backups that are proven: steps 05 (pgBackRest), 08 (start archiving), the scheduled job with
its dead-man pings, and the restore drill (12) onto a fresh lab host, against the lab's S3 store.

The tests run in file order and build on each other, on a clone of the worker's primary stage (steps 02-04
done: a cluster and the app database; tests/lab/stages.py); the notebooks at the end get a new clone of their own.
Run with ``flock /tmp/hcbpg-lab.lock pytest tests/lab/test_backups.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hcbpg.adapters.host import Host
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.errors import PgBackRestError
from hcbpg.lab import deadman, destroy_server_host
from hcbpg.lab.core import read_state
from hcbpg.lab.site import LAB_DRILL_NAME
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import drill, schedule
from hcbpg.ops import pgbackrest as pgb
from hcbpg.params import parse_params
from hcbpg.pg.pgbackrest import format_bytes, parse_info_json
from hcbpg.secrets import resolve
from hcbpg.steps import pgbackrest as step05
from hcbpg.steps import restore_drill as step12
from hcbpg.steps import start_archiving as step08

from labparams import lab_params, pgbackrest_section
from stages import cli, latest_manifest, latest_run_dir

pytestmark = pytest.mark.lab

SEED_SQL = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE transactions (id bigserial PRIMARY KEY, user_id bigint REFERENCES users, amount_cents bigint,
                           memo text, uuid uuid DEFAULT gen_random_uuid());
INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO transactions (user_id, amount_cents, memo)
  SELECT 1 + g % 2000, g * 7 % 100000, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g;
CREATE TABLE "Mixed Case" (k text PRIMARY KEY, v jsonb);
INSERT INTO "Mixed Case" VALUES ('a', '{"x": 1}'), ('b''s', '{"y": [1, 2]}');
"""
#: what earlier tests leave for later ones (the tests run in file order)
STATE: dict = {}
LATER_SQL = "INSERT INTO users (email) SELECT 'later' || g || '@example.com' FROM generate_series(1, 50) g;"


@pytest.fixture(scope="module")
def params(lab, monkeypatch_module, primary_stage):
    monkeypatch_module.setenv("HCBPG_LAB_DIR", str(lab.lab_dir))  # drill.scratch_host finds this lab
    ip = primary_stage.clone()  # steps 02-04, built once per worker (stages.py)
    p = parse_params(lab_params(lab, [("server-postgres-1", ip, "primary")], pgbackrest=pgbackrest_section(lab)))
    yield p
    destroy_server_host("server-postgres-1", lab_dir=str(lab.lab_dir))
    destroy_server_host(LAB_DRILL_NAME, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def secrets(params):
    return [v for k, v in desired_backups.resolve_conf_secrets(params).items()]


@pytest.fixture(scope="module")
def primary(params):
    server = params.primary
    host = Host.from_params(params, server.name, server.ssh_host)
    host.run("psql -X -q -v ON_ERROR_STOP=1 -d hcb_production", sudo_user="postgres", stdin=SEED_SQL)
    yield host
    host.close()


@pytest.fixture(scope="module")
def receiver(lab):
    """The lab's own dead-man's-switch receiver (started by `lab up`): its JSON-lines log."""
    status = lab.status()
    assert status["services"]["deadman"]["running"], status["services"]
    return Path(status["deadman_log"])


def test_step05_dry_run_plans_and_changes_nothing(params, primary):
    before = primary.probe("ls -la /etc/pgbackrest /var/log/pgbackrest 2>&1; "
                           "cat /etc/postgresql/15/main/conf.d/* 2>&1").stdout
    outcomes = step05.get_plan(primary, params, params.primary)
    changed = {o.what for o in outcomes if o.changed}
    assert f"{desired_pgbackrest.CONF_PATH} on server-postgres-1" in changed
    assert "stanza hcb_production on server-postgres-1" in changed
    assert primary.probe("ls -la /etc/pgbackrest /var/log/pgbackrest 2>&1; "
                         "cat /etc/postgresql/15/main/conf.d/* 2>&1").stdout == before


def test_step05_configures_pgbackrest_and_check_expects_archive_mode(params, primary, secrets):
    t0 = time.monotonic()
    outcomes = step05.configure(primary, params, params.primary)
    conf = next(o for o in outcomes if o.what.startswith(desired_pgbackrest.CONF_PATH))
    assert conf.changed and "repo1-s3-key=<secret>" in conf.diff
    for value in secrets:
        assert value not in conf.diff and value not in str(outcomes)
    written = primary.read_text(desired_pgbackrest.CONF_PATH)
    assert all(v in written for v in secrets)  # pgBackRest needs them in the file itself
    checks = pgb.check_configured(primary, params, params.primary)
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]
    assert not failed, failed
    row = next(c for c in checks if c.name == "pgbackrest check")
    assert "[087]" in row.detail
    print(f"step 05 apply + verify in {time.monotonic() - t0:.1f}s")


def test_step05_second_run_changes_nothing(params, primary):
    outcomes = step05.configure(primary, params, params.primary)
    assert [o.what for o in outcomes if o.changed] == []


def test_other_pgbackrest_errors_raise_with_pgbackrests_message(params, primary):
    with pytest.raises(PgBackRestError) as info:
        pgb.run_pgbackrest(primary, params, "backup", "--type=full", "--set=20990101-000000F")
    assert info.value.code is not None and f"[{info.value.code:03d}]" in str(info.value)


def test_step08_archiving_on_check_passes_and_first_full_backup(params, primary, lab):
    t0 = time.monotonic()
    outcomes = step08.start_archiving(primary, params, params.primary)
    assert any(a.startswith("restart") for o in outcomes for a in o.actions)
    checks = pgb.check_archiving_started(primary, params, params.primary)
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]
    assert not failed, failed
    outcome, backup, fp = drill.ensure_baseline_backup(primary, params)
    assert outcome.changed and backup is not None and backup.type == "full"
    assert fp["backup_label"] == backup.label and fp["tables"]["public.users"] == 2000
    assert fp["tables"]["public.transactions"] == 30000 and "pgcrypto" in fp["extensions"]
    STATE["fingerprint"] = fp  # for the drill below
    print(f"step 08: full backup {backup.label}: {format_bytes(backup.size)} database, "
          f"{format_bytes(backup.repo_size)} in the repository, {backup.duration_s}s "
          f"(WAL {backup.wal_start}..{backup.wal_stop}); step total {time.monotonic() - t0:.1f}s")
    again, same, fp2 = drill.ensure_baseline_backup(primary, params)
    assert not again.changed and same.label == backup.label and fp2 is None
    rows = pgb.get_backups(primary, params)
    files = pgb.get_repo_files(primary, params)
    repo_checks = (desired_backups.check_repo_objects(files, rows, params.primary)
                   + desired_backups.check_backups(rows, params.primary))
    failed = [f"{c.name}: {c.detail}" for c in repo_checks if c.status != "pass"]
    assert not failed, failed


def test_step05_again_after_archiving_started_keeps_archiving_on(params, primary):
    outcomes = step05.configure(primary, params, params.primary)
    assert [o.what for o in outcomes if o.changed] == []
    assert pgb.get_archive_mode_written(primary, params)
    checks = pgb.check_configured(primary, params, params.primary)
    assert next(c for c in checks if c.name == "pgbackrest check").detail == "archiving and the repository work"


def _bucket_keys(lab, params):
    import boto3
    from botocore.config import Config
    pb = params.pgbackrest
    s3 = boto3.client("s3", endpoint_url=f"https://{pb.s3_endpoint}", region_name="us-east-1",
                      aws_access_key_id=resolve(pb.s3_key), aws_secret_access_key=resolve(pb.s3_key_secret),
                      verify=str(lab.cfg.ca_cert), config=Config(s3={"addressing_style": "path"}))
    keys = []
    prefix = f"{pb.repo_path_prefix.strip('/')}/hcb_production/"  # the module's own (labparams.pgbackrest_section)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=pb.s3_bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def backup_pings(receiver, host):
    """The backup job's pings from *host*'s address (the lab's receiver also hears the scheduled jobs of other
    modules' servers on this worker: their health jobs, their backup jobs when cron fires, and the jobs of an
    earlier module's server that had this address before: count the pings before a run, read the ones after)."""
    return [p for p in deadman.read_pings(receiver)
            if p["path"].startswith("/ping/hcbpg-backup-lab") and p["client"] == host.address]


def test_scheduled_job_takes_a_diff_and_pings_success(params, primary, receiver, lab):
    outcomes = schedule.ensure_backup_schedule(primary, params, params.primary)
    assert all(o.changed for o in outcomes)
    assert not any(o.changed for o in schedule.ensure_backup_schedule(primary, params, params.primary))
    checks = schedule.check_backup_schedule(primary, params, params.primary)
    assert not [c for c in checks if c.status == "fail"], checks
    primary.run("psql -X -q -v ON_ERROR_STOP=1 -d hcb_production", sudo_user="postgres", stdin=LATER_SQL)
    before = len(backup_pings(receiver, primary))
    t0 = time.monotonic()
    res = schedule.run_backup_job(primary, "diff")
    assert res.exit_code == 0, res.output[-2000:]
    print(f"scheduled diff job in {time.monotonic() - t0:.1f}s")
    pings = backup_pings(receiver, primary)[before:]
    assert [p["kind"] for p in pings] == ["start", "success"], pings
    assert pings[-1]["path"] == "/ping/hcbpg-backup-lab" and "backup command end: completed" in pings[-1]["body"]
    rows = pgb.get_backups(primary, params)
    assert [r.type for r in rows] == ["full", "diff"]
    keys = _bucket_keys(lab, params)
    for r in rows:
        assert any(f"/backup/hcb_production/{r.label}/" in k for k in keys), (r.label, keys[:20])
    assert any("/archive/hcb_production/15-1/" in k for k in keys)


def test_unreachable_repo_makes_the_job_ping_failure_and_exit_nonzero(params, primary, receiver, lab):
    ns = read_state(lab.cfg)["hosts"]["server-postgres-1"]["netns"]
    rule = ["ip", "-n", ns, "rule", "add", "ipproto", "tcp", "dport", "9443", "prohibit"]
    import subprocess
    subprocess.run(rule, check=True)
    try:
        before = len(backup_pings(receiver, primary))
        t0 = time.monotonic()
        # pgBackRest retries a repository it cannot reach for minutes (io-timeout 60s per try, about four tries
        # for each of backup.info and its copy); a short io-timeout, through its environment, shows the same
        # failure in seconds (nothing is reachable to time out on: the connections are refused at once)
        res = schedule.run_backup_job(primary, "diff", env={"PGBACKREST_IO_TIMEOUT": "1"}, timeout=600)
        print(f"failing job in {time.monotonic() - t0:.1f}s: exit {res.exit_code}")
    finally:
        subprocess.run([*rule[:4], "del", *rule[5:]], check=True)
    assert res.exit_code != 0
    pings = backup_pings(receiver, primary)[before:]
    assert [p["kind"] for p in pings] == ["start", "fail"], pings
    assert pings[-1]["status"] == res.exit_code and pings[-1]["query"] == f"status={res.exit_code}"


def test_restore_drill_on_a_fresh_host_matches_the_primary_at_the_backup_point(params, primary):
    fp = step12.require_fingerprint(STATE.get("fingerprint"))
    target = step12.drill_target(params)
    history_before = len(primary.history)
    host = step12.scratch_host(params, target, dry_run=False)
    prepared = step12.prepare_scratch(host, params, target)
    assert any(o.changed for o in prepared)
    t0 = time.monotonic()
    result = drill.run_restore(host, params, target, set_label=fp["backup_label"])
    print(f"restore drill: {result.backup_label}: pgbackrest restore {result.restore_s}s, recovery "
          f"{result.recovery_s}s, total {result.total_s}s (wall {time.monotonic() - t0:.1f}s)")
    checks, restored = drill.check_restore(host, params, target, fp, result)
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status == "fail"]
    assert not failed, failed
    # the drill proves the repository too: pgbackrest verify read every file of the backup and the WAL
    verify = [c for c in checks if c.name.startswith("pgbackrest verify")]
    assert verify and verify[0].status == "pass", [(c.name, c.status, c.detail) for c in checks]
    assert restored["tables"]["public.users"] == 2000  # the backup's point, not the 50 rows added later
    assert result.auto_conf.get("archive_mode") == "'off'" and "restore_command" in result.auto_conf
    assert len(primary.history) == history_before  # the drill never touched the primary
    again = drill.run_restore(host, params, target, set_label=fp["backup_label"])
    assert not again.restored_now and again.total_s == result.total_s
    host.close()


def test_point_in_time_restore_replays_archived_wal_up_to_the_target(params, primary):
    """--type=time: the latest backup before the target plus archived WAL, stopping before a later commit."""
    psql = pg_cluster.get_psql(primary, params)
    users = psql.value("SELECT count(*) AS n FROM users", dbname="hcb_production")
    target_time = psql.value("SELECT now()::text AS t")
    time.sleep(1.2)
    primary.run("psql -X -q -v ON_ERROR_STOP=1 -d hcb_production", sudo_user="postgres",
                stdin="INSERT INTO users (email) VALUES ('after-the-target@example.com');")
    pgb.run_pgbackrest(primary, params, "check")  # switches WAL and waits until it is archived
    target = step12.drill_target(params)
    host = step12.scratch_host(params, target, dry_run=False)
    result = drill.run_restore(host, params, target, target_time=target_time)
    assert result.restored_now and "--type=time" in result.options
    restored = pg_cluster.get_psql(host, params).value("SELECT count(*) AS n FROM users", dbname="hcb_production")
    assert restored == users, f"restored {restored} users, {users} at {target_time}"
    assert "recovery_target_time" in result.auto_conf
    print(f"point-in-time restore to {target_time}: time to recover {result.total_s}s")
    host.close()


def test_fingerprint_and_info_golden_sources_are_real(params, primary, tmp_path):
    """Keep a real `info --output=json` for the unit tests' golden file when asked (HCBPG_WRITE_GOLDEN)."""
    import os
    text = pgb.get_info_json(primary, params)
    rows = parse_info_json(text, "hcb_production")
    assert [r.type for r in rows][:2] == ["full", "diff"]
    if os.environ.get("HCBPG_WRITE_GOLDEN"):
        from pathlib import Path
        Path(os.environ["HCBPG_WRITE_GOLDEN"]).write_text(json.dumps(json.loads(text), indent=2) + "\n")


# the notebooks, run by the real runner -----------------------------------------------------------

NB_STEPS = [("05_pgbackrest.ipynb", "pgBackRest"), ("08_start_archiving.ipynb", "Start archiving"),
            ("12_restore_drill.ipynb", "Restore drill")]


@pytest.fixture(scope="module")
def nb_home(lab, tmp_path_factory, secrets, primary_stage):
    """An HCBPG_HOME whose lab params point at a second fresh primary (steps 02-04 done, data seeded): a new clone of
    the worker's primary stage, in place of the one the tests above used; and a notebooks dir listing steps 05, 08
    and 12."""
    import shutil
    from pathlib import Path

    import yaml
    home = tmp_path_factory.mktemp("nbhome")
    (home / "params").mkdir()
    nbdir = home / "notebooks"
    nbdir.mkdir()
    repo_nb = Path(__file__).resolve().parents[2] / "notebooks"
    for nb, _title in NB_STEPS:
        shutil.copy(repo_nb / nb, nbdir / nb)
    (nbdir / "steps.yaml").write_text(yaml.safe_dump({"steps": [{"notebook": n, "title": t} for n, t in NB_STEPS]}))
    destroy_server_host(LAB_DRILL_NAME, lab_dir=str(lab.lab_dir))  # a fresh scratch host for this drill
    # the tests above are done with their primary (the stage's name and address): a new clone takes its place
    destroy_server_host(primary_stage.name, lab_dir=str(lab.lab_dir))
    ip = primary_stage.clone()  # steps 02-04 done (stages.py)
    # a cluster of its own: its own repository (the path names the cluster's stanza, not the server)
    data = lab_params(lab, [(primary_stage.name, ip, "primary")],
                      pgbackrest=pgbackrest_section(lab, repo_path_prefix="/pgbackrest-notebooks"))
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    p = parse_params(data)
    with Host.from_params(p, primary_stage.name, ip) as host:
        host.run("psql -X -q -v ON_ERROR_STOP=1 -d hcb_production", sudo_user="postgres", stdin=SEED_SQL)
    env = {"HCBPG_HOME": str(home), "HCBPG_STATE_DIR": str(home / "state"), "HCBPG_LAB_DIR": str(lab.lab_dir),
           "HCBPG_NOTEBOOKS": str(nbdir)}
    yield home, env
    destroy_server_host(primary_stage.name, lab_dir=str(lab.lab_dir))


def test_notebooks_plan_run_and_run_again_with_no_secret_in_outputs(lab, nb_home, secrets):
    import scrapbook as sb
    home, env = nb_home
    plan = cli(env, "plan", "lab")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    assert LAB_DRILL_NAME not in read_state(lab.cfg)["hosts"], "a plan created the scratch host"
    t0 = time.monotonic()
    first = cli(env, "run", "lab")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    print(f"notebooks 05, 08, 12 in {time.monotonic() - t0:.1f}s")
    manifest, run_dir = latest_manifest(home), latest_run_dir(home)
    assert all(s["changes"] > 0 for s in manifest["steps"]), manifest["steps"]
    drill_rec = sb.read_notebook(str(run_dir / "12_restore_drill.ipynb")).scraps["restore_drill"].data
    fp = sb.read_notebook(str(run_dir / "08_start_archiving.ipynb")).scraps["backup_fingerprint"].data
    assert drill_rec["backup_label"] == fp["backup_label"] and drill_rec["total_s"] > 0
    print(f"notebook drill: {drill_rec['backup_label']} restored in {drill_rec['restore_s']}s, "
          f"recovered in {drill_rec['recovery_s']}s, time to recover {drill_rec['total_s']}s")
    second = cli(env, "run", "lab")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    again = latest_manifest(home)
    assert {s["key"]: s["changes"] for s in again["steps"]} == {
        "05_pgbackrest": 0, "08_start_archiving": 0, "12_restore_drill": 0}
    import base64
    needles = [s.encode() for s in secrets] + [base64.b64encode(s.encode()).rstrip(b"=") for s in secrets]
    scanned = 0
    for path in (home / "outputs").rglob("*"):
        if path.is_file():
            scanned += 1
            data = path.read_bytes()
            assert not any(n in data for n in needles), f"a pgBackRest secret in {path}"
    assert scanned >= 6
