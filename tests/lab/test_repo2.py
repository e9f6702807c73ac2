"""A second repository at "another provider" (issue 24, ``pgbackrest.repo2``): the lab's second S3 store (another
moto at the bridge's second address, its own bucket and keys, TLS with the lab CA) beside the first.

Steps 05 and 08 with repo2 on a clone of the worker's primary stage: the stanza in both repositories, a full
backup in each, WAL in both; the backup job into repo2; repo1's store unreachable from the primary (its packets
to the store dropped, silently, as a provider outage looks) while archiving goes on into repo2 and the
archive-push queue stays bounded; then a restore onto the drill's scratch host from repo2 alone (repo1 refused
there) holds a row written during the outage.  The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.desired import backups as desired_backups
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.lab import destroy_server_host
from hcbpg.lab.core import S3_PORT, S3B_BUCKET, S3B_PORT, read_state, run
from hcbpg.lab.site import LAB_DRILL_NAME
from hcbpg.ops import drill, schedule
from hcbpg.ops import pgbackrest as pgb
from hcbpg.params import parse_params
from hcbpg.pg.pgbackrest import parse_archive_ranges, parse_info_json, parse_repo_status
from hcbpg.steps import pgbackrest as step05
from hcbpg.steps import restore_drill as step12
from hcbpg.steps import start_archiving as step08
from hcbpg.wait import wait_until

from labparams import ensure_secret_file, lab_params, pgbackrest_section

pytestmark = pytest.mark.lab

NAME = "server-postgres-1"
STANZA = "hcb_production"
#: a small archive-push queue (16 segments), so that an outage of repo1 reaches it within the test
QUEUE_MAX = "256MB"
#: archive-push's io-timeout here (params pgbackrest.archive_push_io_timeout; production's 5 s): with repo1's packets
#: dropped each asynchronous run stalls about 16 times it (82 s at 5 s, measured) and the outage test waits for
#: three or four runs; the lab's stores are on the machine's bridge (1 s: the params' minimum)
ARCHIVE_PUSH_IO_TIMEOUT_S = 1
SEED_SQL = """
CREATE TABLE IF NOT EXISTS repo2_marks (id bigserial PRIMARY KEY, note text NOT NULL,
                                        at timestamptz NOT NULL DEFAULT now());
INSERT INTO repo2_marks (note) VALUES ('seed');
"""
STATE: dict = {}


def repo2_section(lab) -> dict:  # noqa: ANN001
    """repo2 at the lab's second store: its own bucket, keys and passphrase (made when missing), another region."""
    cfg = lab.cfg
    for name in ("s3b-key", "s3b-key-secret", "cipher-pass-2"):
        ensure_secret_file(cfg.secret_path(name))
    return {"s3_bucket": S3B_BUCKET, "s3_endpoint": cfg.s3b_endpoint.removeprefix("https://"),
            "s3_region": "us-east-1", "s3_uri_style": "path", "s3_ca_file": str(cfg.ca_cert),
            "s3_key": f"file:{cfg.secret_path('s3b-key')}", "s3_key_secret": f"file:{cfg.secret_path('s3b-key-secret')}",
            "cipher_pass": f"file:{cfg.secret_path('cipher-pass-2')}", "repo_path_prefix": "/pgbackrest-repo2-test-2",
            "retention_full_type": "count", "retention_full": 2,
            "schedule_full": "30 7 * * 0", "schedule_diff": "30 7 * * 1-6"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def params(lab, monkeypatch_module, primary_stage):
    monkeypatch_module.setenv("HCBPG_LAB_DIR", str(lab.lab_dir))  # the drill's scratch host is this lab's
    assert lab.status()["services"]["s3b"]["running"], lab.status()["services"]
    ip = primary_stage.clone()
    p = parse_params(lab_params(lab, [(NAME, ip, "primary")], pgbackrest=pgbackrest_section(
        lab, archive_push_queue_max=QUEUE_MAX, archive_push_io_timeout=ARCHIVE_PUSH_IO_TIMEOUT_S,
        repo2=repo2_section(lab),
        # this module's own prefixes: a stanza another module's cluster left under the default one is not ours
        repo_path_prefix="/pgbackrest-repo2-test")))
    yield p
    destroy_server_host(NAME, lab_dir=str(lab.lab_dir))
    destroy_server_host(LAB_DRILL_NAME, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def secrets(params):
    return list(desired_backups.resolve_conf_secrets(params).values())


@pytest.fixture(scope="module")
def primary(params):
    host = Host.from_params(params, NAME, params.primary.ssh_host)
    host.run("psql -X -q -v ON_ERROR_STOP=1 -d hcb_production", sudo_user="postgres", stdin=SEED_SQL)
    yield host
    host.close()


def sql(lab, host: str, text: str) -> str:  # noqa: ANN001
    """*text* run by psql on lab host *host* through its namespaces (not SSH): works while its network is cut."""
    cp = lab.exec(host, ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", "hcb_production"],
                  input=text, user="postgres", timeout=120)
    assert cp.returncode == 0, cp.stderr[-2000:]
    return cp.stdout.strip()


def info(lab, host: str, *options: str) -> str:  # noqa: ANN001
    cp = lab.exec(host, ["pgbackrest", f"--stanza={STANZA}", *options, "--output=json", "info"], user="postgres",
                  timeout=300)
    assert cp.returncode == 0, (cp.stdout + cp.stderr)[-2000:]
    return cp.stdout


def store_rule(lab, host: str, action: str, *, reject: bool = False) -> None:  # noqa: ANN001
    """Packets from lab host *host* to repo1's store (the operator address, S3's port) dropped (``-I``) or let
    through again (``-D``); *reject*: refused at once rather than silently dropped."""
    ns = read_state(lab.cfg)["hosts"][host]["netns"]
    rule = ["OUTPUT", "-d", lab.cfg.gateway_ip, "-p", "tcp", "--dport", str(S3_PORT), "-j",
            "REJECT" if reject else "DROP"]
    cp = run(["ip", "netns", "exec", ns, "iptables", "-w", action, *rule], check=False)
    assert cp.returncode == 0 or action == "-D", cp.stderr


def switch_wal(lab, host: str) -> str:  # noqa: ANN001
    """A row, then the WAL segment closed (its name), so that it is archived now."""
    return sql(lab, host, "INSERT INTO repo2_marks (note) VALUES ('switch'); SELECT pg_walfile_name(pg_switch_wal());")


def test_step05_with_repo2_writes_both_repositories_and_creates_the_stanza_in_each(params, primary, secrets, lab):
    t0 = time.monotonic()
    outcomes = step05.configure(primary, params, params.primary)
    conf = next(o for o in outcomes if o.what.startswith(desired_pgbackrest.CONF_PATH))
    assert conf.changed and "repo2-s3-key=<secret>" in conf.diff and "repo2-cipher-pass=<secret>" in conf.diff
    for value in secrets:
        assert value not in conf.diff and value not in str(outcomes)
    written = primary.read_text(desired_pgbackrest.CONF_PATH)
    assert all(v in written for v in secrets)
    opts = desired_pgbackrest.parse_conf(written)["global"]
    assert opts["repo2-s3-endpoint"] == lab.cfg.s3b_ip and opts["repo2-storage-port"] == str(S3B_PORT)
    assert primary.probe(f"stat -c '%a %U' {desired_pgbackrest.CONF_PATH}").stdout.strip() == "640 postgres"
    checks = pgb.check_configured(primary, params, params.primary)
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]
    assert not failed, failed
    repos = parse_repo_status(pgb.get_info_json(primary, params), STANZA)
    assert set(repos) == {1, 2} and all(code in (0, 2) for code, _ in repos.values()), repos
    assert [o.what for o in step05.configure(primary, params, params.primary) if o.changed] == []
    print(f"\nstep 05 with repo2 in {time.monotonic() - t0:.1f}s; info: {repos}")


def test_step08_takes_a_full_backup_into_each_repository_and_wal_reaches_both(params, primary, lab):
    t0 = time.monotonic()
    step08.start_archiving(primary, params, params.primary)
    checks = pgb.check_archiving_started(primary, params, params.primary)
    failed = [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]
    assert not failed, failed
    outcome, backup, fp = drill.ensure_baseline_backup(primary, params)
    assert outcome.changed and backup is not None and backup.repo == 1 and fp is not None
    rows = pgb.get_backups(primary, params)
    fulls = {r.repo: r.label for r in rows if r.type == "full" and not r.error}
    assert set(fulls) == {1, 2}, [r.row() for r in rows]
    again, same, _ = drill.ensure_baseline_backup(primary, params)
    assert not again.changed and same is not None and same.label == fulls[1]
    seg = switch_wal(lab, NAME)
    ranges = wait_until(lambda: parse_archive_ranges(pgb.get_info_json(primary, params), STANZA),
                        lambda r: all(n in r and r[n][1] >= seg for n in (1, 2)),
                        what=f"WAL {seg} in both repositories", timeout=180, interval=2)
    STATE["fp"] = fp
    print(f"step 08: full {fulls[1]} in repo1, {fulls[2]} in repo2, WAL {ranges} "
          f"in {time.monotonic() - t0:.1f}s")


def test_the_backup_job_backs_up_into_repo2_on_its_own(params, primary):
    schedule.ensure_backup_schedule(primary, params, params.primary)
    before = {(r.repo, r.label) for r in pgb.get_backups(primary, params)}
    res = primary.run("/usr/local/sbin/hcbpg-backup diff 2", sudo_user="postgres", check=False, timeout=900)
    assert res.ok, res.output[-2000:]
    new = [r for r in pgb.get_backups(primary, params) if (r.repo, r.label) not in before]
    assert [(r.repo, r.type) for r in new] == [(2, "diff")], [r.row() for r in new]
    refused = primary.run("/usr/local/sbin/hcbpg-backup diff 3", sudo_user="postgres", check=False)
    assert refused.exit_code == 64 and "no repository 3" in refused.output


def ready_count(lab, host: str) -> int:  # noqa: ANN001
    """WAL segments PostgreSQL still waits to have archived (``.ready`` in pg_wal/archive_status)."""
    cp = lab.exec(host, "ls /var/lib/postgresql/15/main/pg_wal/archive_status", user="postgres", timeout=60)
    return sum(1 for f in cp.stdout.split() if f.endswith(".ready"))


def dropped_segments(lab, host: str) -> list[str]:  # noqa: ANN001
    """The segments pgBackRest's asynchronous archive-push dropped past the queue (its log on *host*)."""
    cp = lab.exec(host, f"cat /var/log/pgbackrest/{STANZA}-archive-push-async.log", timeout=60)
    return re.findall(r"dropped WAL file '([0-9A-F]{24})'", cp.stdout)


def test_with_repo1_unreachable_archiving_goes_on_into_repo2_until_the_queue_bound(params, primary, lab):
    """pgBackRest 2.45, measured: with repo1's store silently unreachable each push of a segment still goes to
    repo2 but fails as a whole (PostgreSQL keeps the segment .ready and tries again), after a stall on repo1's
    connection of about 16 times archive-push's io-timeout (82 s at production's 5 s, about 16 s at this module's
    1 s); so the segments stay in pg_wal, repo2 holds them, repo1 not.  Once what waits
    passes archive-push-queue-max, pgBackRest drops the waiting segments from the archive: from both
    repositories (the queue bound holds; repo2 has a gap too, which the next backup closes)."""
    t0 = time.monotonic()
    both = parse_archive_ranges(info(lab, NAME), STANZA)
    store_rule(lab, NAME, "-I")
    try:
        # below the queue: each segment reaches repo2 though repo1 cannot be reached
        segs = []
        for i in range(2):
            sql(lab, NAME, f"INSERT INTO repo2_marks (note) VALUES ('outage {i}')")
            segs.append(switch_wal(lab, NAME))
        STATE["outage_note"] = "outage 1"
        r2 = wait_until(lambda: parse_archive_ranges(info(lab, NAME, "--repo=2"), STANZA).get(2, ("", "")),
                        lambda r: r[1] >= segs[-1], what=f"WAL {segs[-1]} in repo2 with repo1 unreachable",
                        timeout=900, interval=2)
        t_repo2 = time.monotonic() - t0
        waiting = ready_count(lab, NAME)
        archiver = json.loads(sql(lab, NAME, "SELECT row_to_json(a) FROM pg_stat_archiver a"))
        assert waiting >= 1, "PostgreSQL was told a segment repo1 lacks is archived"
        assert archiver["last_failed_wal"] is not None
        # past the queue: pgBackRest drops what waits, and pg_wal stops growing (the 20 segments in one psql, so
        # that they wait before the next asynchronous run starts, which then finds the queue past its bound)
        more = sql(lab, NAME, "".join(f"INSERT INTO repo2_marks (note) VALUES ('past the queue {i}'); "
                                      "SELECT pg_walfile_name(pg_switch_wal());\n" for i in range(20))).split()
        assert len(more) == 20 and len(set(more)) == 20, more
        dropped = wait_until(lambda: dropped_segments(lab, NAME), lambda d: more[-1] in d,
                             what=f"{more[-1]} dropped past archive-push-queue-max {QUEUE_MAX}", timeout=900,
                             interval=2)
        queue_segments = desired_pgbackrest.size_bytes(QUEUE_MAX) // (16 * 1024 ** 2)
        # PostgreSQL's archiver reads the dropped segments' statuses one archive_command at a time
        after = wait_until(lambda: ready_count(lab, NAME), lambda n: n <= queue_segments,
                           what=f"pg_wal's .ready files back within the queue ({queue_segments} segments)",
                           timeout=300, interval=2)
        r2_after = parse_archive_ranges(info(lab, NAME, "--repo=2"), STANZA)[2]
        assert r2_after[1] < more[-1], f"{more[-1]} dropped, yet repo2 holds WAL up to {r2_after[1]}"
        print(f"\nrepo1 unreachable (packets dropped): {segs[0]}..{segs[-1]} in repo2 (max {both.get(2)} -> {r2}) "
              f"after {t_repo2:.0f}s, {waiting} segment(s) still .ready (failed: {archiver['last_failed_wal']}); "
              f"past the queue ({QUEUE_MAX} = {queue_segments} segments) pgBackRest dropped {len(dropped)} "
              f"segment(s) {dropped[0]}..{dropped[-1]} (repo2 holds up to {r2_after[1]}, repo1 none of them), "
              f"{after} .ready left, {time.monotonic() - t0:.0f}s in all")
    finally:
        store_rule(lab, NAME, "-D")
    t1 = time.monotonic()
    seg = switch_wal(lab, NAME)
    ranges = wait_until(lambda: parse_archive_ranges(info(lab, NAME), STANZA),
                        lambda r: all(n in r and r[n][1] >= seg for n in (1, 2)),
                        what=f"WAL {seg} in both repositories after repo1 is back", timeout=600, interval=3)
    print(f"repo1 back: {seg} in both {time.monotonic() - t1:.0f}s later ({ranges})")


def test_restore_from_repo2_alone_holds_what_was_written_while_repo1_was_down(params, primary, lab):
    t0 = time.monotonic()
    target = step12.drill_target(params)
    host = step12.scratch_host(params, target, dry_run=False)
    prepared = step12.prepare_scratch(host, params, target)
    assert any(o.changed for o in prepared)
    store_rule(lab, target.name, "-I", reject=True)  # the scratch host cannot reach repo1 at all
    try:
        result = drill.run_restore(host, params, target, repo=2, timeout=1800)
        assert "--repo=2" in result.options and result.restored_now
        notes = sql(lab, target.name, "SELECT string_agg(note, ',' ORDER BY id) FROM repo2_marks")
        assert STATE["outage_note"] in notes.split(","), notes
        rows = parse_info_json(info(lab, target.name, "--repo=2"), STANZA)
        assert rows and all(r.repo == 2 for r in rows)
    finally:
        store_rule(lab, target.name, "-D", reject=True)
    print(f"\nrestore from repo2 alone: restore {result.restore_s}s, recovery {result.recovery_s}s, "
          f"total {result.total_s}s ({time.monotonic() - t0:.1f}s with the scratch host); restore_command "
          f"{result.auto_conf.get('restore_command')}")


def test_the_drill_restores_step_08s_backup_by_its_label_without_naming_a_repository(params, primary, lab):
    """Step 12 restores the set step 08 recorded (repo1's full backup) without --repo: pgBackRest finds the set
    in the repositories in order; the cluster stops at the backup's consistency point."""
    fp = STATE["fp"]
    target = step12.drill_target(params)
    host = step12.scratch_host(params, target, dry_run=False)
    result = drill.run_restore(host, params, target, set_label=fp["backup_label"], timeout=1800)
    assert result.restored_now and not any(o.startswith("--repo") for o in result.options)
    notes = sql(lab, target.name, "SELECT string_agg(note, ',' ORDER BY id) FROM repo2_marks").split(",")
    assert notes == ["seed"], notes  # nothing written after the backup
    print(f"\nthe drill's restore of {fp['backup_label']} without --repo: total {result.total_s}s")
