"""pgBackRest's pure functions against golden files in tests/golden/: the config renderer (with the
block-incremental version rule), archiving settings, the backup schedule and job script, and the
parsing of ``info --output=json`` and of pgBackRest's errors.

Regenerate the golden files after an intended change with HCBPG_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json

import pytest

from hcbpg.adapters.site import site_for
from hcbpg.desired import backups as pgb_paths
from hcbpg.desired import drill, schedule
from hcbpg.desired import pgbackrest as desired_pgbackrest
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.lab.deadman import classify
from hcbpg.params import parse_params
from hcbpg.pg import pgbackrest as pgb
from hcbpg.pg.pgbackrest import restore_options
from hcbpg.steps.restore_drill import drill_target

from goldenfile import GOLDEN, golden
from pgbackrest_params import BASE, LAB_PB, PRODUCTION_PB, params

# pgbackrest.conf ----------------------------------------------------------------------------

def test_lab_conf_matches_golden_and_splits_endpoint_port():
    p = params(LAB_PB)
    text = desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 45, 0))
    golden("pgbackrest.lab.conf", text)
    opts = desired_pgbackrest.parse_conf(text)["global"]
    assert opts["repo1-s3-endpoint"] == "10.0.1.1" and opts["repo1-storage-port"] == "9443"
    assert opts["repo1-s3-uri-style"] == "path" and "repo1-block" not in opts


def test_production_conf_with_block_incremental_on_2_46_matches_golden():
    p = params(PRODUCTION_PB, "production")
    text = desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 54, 2))
    golden("pgbackrest.production.conf", text)
    opts = desired_pgbackrest.parse_conf(text)
    assert opts["hcb_production"] == {"pg1-path": "/var/lib/postgresql/15/main"}
    g = opts["global"]
    # the runbook's mistakes are not repeated
    assert g["start-fast"] == "y" and g["compress-type"] == "zst" and g["repo1-block"] == "y"
    assert g["repo1-path"] == "/pgbackrest/hcb_production" and "repo1-storage-port" not in g
    assert "repo1-s3-uri-style" not in g and "repo1-storage-ca-file" not in g


def test_repository_names_the_cluster_so_every_server_shares_one_stanza():
    p = params(PRODUCTION_PB, "production")
    one, two = (desired_pgbackrest.parse_conf(desired_pgbackrest.render_pgbackrest_conf(p, s, version=(2, 54, 2)))
                for s in p.servers)
    assert one["global"]["repo1-path"] == two["global"]["repo1-path"] == "/pgbackrest/hcb_production"


def test_archive_queue_is_bounded_by_a_fifth_of_the_server_types_disk_unless_params_say():
    p = params(PRODUCTION_PB, "production")
    g = desired_pgbackrest.conf_options(p, p.primary, version=None)["global"]
    assert (g["archive-async"], g["spool-path"], g["archive-push-queue-max"]) == ("y", "/var/spool/pgbackrest", "16GB")
    big = params({**PRODUCTION_PB, "archive_push_queue_max": "2GB"}, "production")
    assert desired_pgbackrest.archive_push_queue_max(big) == "2GB"
    assert desired_pgbackrest.size_bytes("2GB") == 2 * 1024 ** 3
    sync = params({**PRODUCTION_PB, "archive_async": False}, "production")
    assert "archive-async" not in desired_pgbackrest.conf_options(sync, sync.primary, version=None)["global"]


def test_block_incremental_on_2_45_is_refused_with_what_to_do():
    p = params(PRODUCTION_PB, "production")
    with pytest.raises(ParamsError) as info:
        desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 45, 0))
    msg = str(info.value)
    assert "2.46" in msg and "2.45" in msg and "block: false" in msg


def test_block_incremental_without_bundling_is_refused_by_the_params_model():
    with pytest.raises(ParamsError) as info:
        params({**PRODUCTION_PB, "bundle": False}, "production")
    assert "bundle" in str(info.value)


def test_secrets_are_placeholders_unless_values_are_given():
    p = params(LAB_PB)
    shown = desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 45, 0))
    assert shown.count(desired_pgbackrest.SECRET_PLACEHOLDER) == 3
    values = {"repo1-s3-key": "AKIAEXAMPLEKEY0001", "repo1-s3-key-secret": "s3cr3t-value-xyz",
              "repo1-cipher-pass": "cipher-pass-abcdef"}
    real = desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 45, 0), secrets=values)
    assert desired_pgbackrest.SECRET_PLACEHOLDER not in real and all(v in real for v in values.values())
    assert desired_pgbackrest.redact_conf(real) == shown
    with pytest.raises(SafetyCheckFailed):
        desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 45, 0), secrets={**values, "repo1-s3-key": "a\nb"})


def test_no_cipher_means_no_passphrase_line():
    p = parse_params({**BASE, "allow_weak_settings": True, "pgbackrest": {**LAB_PB, "cipher_type": "none",
                                                                           "cipher_pass": None}})
    opts = desired_pgbackrest.parse_conf(desired_pgbackrest.render_pgbackrest_conf(p, p.primary, version=(2, 45, 0)))["global"]
    assert opts["repo1-cipher-type"] == "none" and "repo1-cipher-pass" not in opts


@pytest.mark.parametrize("endpoint, expected", [
    ("fsn1.your-objectstorage.com", ("fsn1.your-objectstorage.com", None)),
    ("10.0.1.1:9443", ("10.0.1.1", 9443)),
    ("https://s3.example.com:8443/", ("s3.example.com", 8443)),
])
def test_split_endpoint(endpoint, expected):
    assert desired_pgbackrest.split_endpoint(endpoint) == expected


@pytest.mark.parametrize("text, version", [
    ("pgBackRest 2.45\n", (2, 45, 0)),
    ("pgBackRest 2.54.2\n", (2, 54, 2)),
])
def test_parse_version(text, version):
    assert desired_pgbackrest.parse_version(text) == version


def test_archiving_settings_name_the_stanza_and_keep_archive_mode_off():
    p = params(LAB_PB)
    text = pgb_paths.render_archiving(p, p.primary, archive_mode=False)
    golden("pgbackrest.archiving.off.conf", text)
    assert "archive_command = 'pgbackrest --stanza=hcb_production archive-push %p'" in text
    assert "archive_mode = off" in text and "demo" not in text
    assert "archive_mode = on" in pgb_paths.render_archiving(p, p.primary, archive_mode=True)


def test_paths_plan_follows_the_runbook():
    cmds = pgb_paths.plan_paths({})
    assert cmds[0] == "install -d -m 0770 -o postgres -g postgres /var/log/pgbackrest"
    assert cmds[-1] == "install -m 0640 -o postgres -g postgres /dev/null /etc/pgbackrest/pgbackrest.conf"
    current = pgb_paths.parse_stat("/var/log/pgbackrest|directory|770|postgres|postgres\n"
                             "/etc/pgbackrest|directory|755|root|root\n"
                             "/etc/pgbackrest/conf.d|directory|755|root|root\n"
                             "/etc/pgbackrest/pgbackrest.conf|regular file|644|root|root\n")
    assert pgb_paths.plan_paths(current) == ["chown -h postgres:postgres /etc/pgbackrest/pgbackrest.conf",
                                       "chmod 0640 /etc/pgbackrest/pgbackrest.conf"]



def test_paths_plan_refuses_a_symlink_where_the_conf_file_goes():
    """A symlink is neither the file nor the directory the runbook wants: chown/chmod would follow it."""
    current = pgb_paths.parse_stat("/etc/pgbackrest/pgbackrest.conf|symbolic link|777|postgres|postgres\n")
    with pytest.raises(SafetyCheckFailed, match="is a symbolic link, expected a file"):
        pgb_paths.plan_paths(current, [s for s in pgb_paths.PATHS if s.kind == "file"])


# schedule ---------------------------------------------------------------------------------------

def _schedule(p):
    return schedule.plan_schedule(p, site_for(p).deadman_url(p))


def test_cron_and_job_script_match_golden():
    p = params(LAB_PB)
    golden("pgbackrest.cron", schedule.render_cron(_schedule(p)))
    script = schedule.render_backup_job_script(p, _schedule(p))
    golden("pgbackrest.backup-job.sh", script)
    assert "PING_URL=http://10.0.1.1:8781/ping/hcbpg-backup-lab" in script
    assert '"$PING_URL/fail?status=$status"' in script and 'exit "$status"' in script


def test_schedule_times_are_validated():
    p = params(LAB_PB)
    assert "30 6 * * 0 postgres /usr/local/sbin/hcbpg-backup full" in schedule.render_cron(_schedule(p))
    assert "30 6 * * 1-6 postgres /usr/local/sbin/hcbpg-backup diff" in schedule.render_cron(_schedule(p))
    prod = params(PRODUCTION_PB, "production")
    assert _schedule(prod).deadman_url is None  # production must set it: the check fails


@pytest.mark.parametrize("path, query, expected", [
    ("/ping/abc", "", ("success", None)),
    ("/ping/abc/start", "", ("start", None)),
    ("/ping/abc/fail", "status=28", ("fail", 28)),
    ("/ping/abc/0", "", ("success", 0)),
    ("/ping/abc/3", "", ("fail", 3)),
])
def test_deadman_classifies_pings(path, query, expected):
    assert classify(path, query) == expected


# info --output=json ----------------------------------------------------------------------------

def test_parse_info_json_matches_golden():
    text = (GOLDEN / "pgbackrest.info.json").read_text()
    rows = pgb.parse_info_json(text, "hcb_production")
    golden("pgbackrest.info.rows.json", json.dumps([r.asdict() for r in rows], indent=2) + "\n")
    assert [r.type for r in rows] == ["full", "diff"]
    assert rows[1].prior == rows[0].label and rows[0].duration_s >= 0
    assert pgb.parse_stanza_status(text, "hcb_production") == (0, "ok")
    assert pgb.parse_stanza_status(text, "other") is None
    assert pgb_paths.check_backups(rows, parse_params({**BASE, "pgbackrest": LAB_PB}).primary,
                             types=("full", "diff"))[-1].status == "pass"


def test_parse_info_json_of_a_missing_stanza():
    text = json.dumps([{"name": "hcb_production", "backup": [],
                        "status": {"code": 1, "message": "missing stanza path"}}])
    assert pgb.parse_info_json(text) == []
    assert pgb.parse_stanza_status(text, "hcb_production") == (1, "missing stanza path")


# errors -----------------------------------------------------------------------------------------

RUNBOOK_CHECK = """\
2025-03-26 05:58:11.771 P00   INFO: check command begin 2.54.2: --exec-id=5676-95949e22 --log-level-console=info --repo1-cipher-pass=<redacted>
2025-03-26 05:58:11.798 P00  ERROR: [087]: archive_mode must be enabled
2025-03-26 05:58:11.798 P00   INFO: check command end: aborted with exception [087]
"""  # noqa: E501 - pgbackrest output, verbatim


@pytest.mark.parametrize("output, expected", [
    (RUNBOOK_CHECK, (87, "archive_mode must be enabled")),
    ("ERROR: [087]: archive_mode must be enabled\n", (87, "archive_mode must be enabled")),
    ("2026-11-25 10:00:00.000 P00  ERROR: [028]: backup and archive info files exist but do not match the database\n"
     "                                    HINT: is this the correct stanza?\n"
     "                                    HINT: did an error occur during stanza-upgrade?\n"
     "2026-11-25 10:00:00.000 P00   INFO: backup command end: aborted with exception [028]\n",
     (28, "backup and archive info files exist but do not match the database\nHINT: is this the correct stanza?\n"
          "HINT: did an error occur during stanza-upgrade?")),
    ("P00   INFO: backup command end: aborted with exception [039]\n", (39, "aborted with exception [039]")),
    ("P00   INFO: check command end: completed successfully\n", None),
])
def test_parse_pgbackrest_error(output, expected):
    assert pgb.parse_pgbackrest_error(output) == expected


# the drill's pure parts ----------------------------------------------------------------------------

def test_restore_options_never_archive_and_stop_at_the_backup_or_the_time():
    assert restore_options(set_label="20261125-100507F") == [
        "--archive-mode=off", "--log-level-console=info", "--set=20261125-100507F", "--type=immediate",
        "--target-action=promote"]
    opts = restore_options(target_time="2026-11-25 10:00:00+00")
    assert "--type=time" in opts and "--target=2026-11-25 10:00:00+00" in opts and "--archive-mode=off" in opts


def test_fingerprint_query_quotes_identifiers():
    q = drill.render_fingerprint_query([("public", "Mixed Case")], [("public", "Mixed Case")])
    assert '"public"."Mixed Case"' in q and "'public.Mixed Case'" in q


def test_compare_fingerprints_allows_sequences_ahead_but_not_behind():
    base = {"tables": {"public.users": 2000}, "checksums": {"public.users": "a" * 32},
            "sequences": {"public.users_id_seq": 2000}, "extensions": {"plpgsql": "1.0"}, "databases": ["postgres"]}
    ahead = {**base, "sequences": {"public.users_id_seq": 2032}}
    assert all(c.status == "pass" for c in drill.compare_fingerprints(base, ahead))
    behind = {**base, "sequences": {"public.users_id_seq": 1999}, "tables": {"public.users": 1999}}
    failed = {c.name for c in drill.compare_fingerprints(base, behind) if c.status == "fail"}
    assert failed == {"row counts match", "sequences not behind"}


def test_the_drill_expects_unlogged_tables_empty_and_says_so():
    """An unlogged table's rows are in no backup: the drill expects it empty (and fails if it is not), and leaves it
    out of the row counts and checksums instead of failing on it."""
    primary = {"tables": {"public.users": 2000, "public.cache": 500},
               "checksums": {"public.users": "a" * 32, "public.cache": "b" * 32}, "unlogged": ["public.cache"],
               "sequences": {}, "extensions": {}, "databases": ["postgres"]}
    restored = {**primary, "tables": {"public.users": 2000, "public.cache": 0},
                "checksums": {"public.users": "a" * 32, "public.cache": "c" * 32}}
    checks = {c.name: c for c in drill.compare_fingerprints(primary, restored)}
    assert all(c.status == "pass" for c in checks.values()), checks
    assert "public.cache: unlogged, so in no backup" in checks["unlogged tables restored empty"].detail
    assert "checksum public.cache" not in checks and "2000 row(s)" in checks["row counts match"].detail
    kept = {**restored, "tables": {"public.users": 2000, "public.cache": 3}}
    failed = {c.name for c in drill.compare_fingerprints(primary, kept) if c.status == "fail"}
    assert failed == {"unlogged tables restored empty"}
    # without the unlogged list, the same restore fails on the table's rows
    plain = {k: v for k, v in primary.items() if k != "unlogged"}
    assert "row counts match" in {c.name for c in drill.compare_fingerprints(plain, restored) if c.status == "fail"}


def test_drill_target_refuses_a_real_server():
    p = parse_params({**BASE, "pgbackrest": LAB_PB})
    assert drill_target(p).name == "drill-1" and drill_target(p).private_ip == "10.0.1.30"
    bad = parse_params({**BASE,
                        "servers": [{"name": "server-postgres-1", "private_ip": "10.0.1.30", "role": "primary"}],
                        "pgbackrest": LAB_PB})
    with pytest.raises(SafetyCheckFailed):
        drill_target(bad)


def test_auto_conf_check_explains_extra_settings():
    p = parse_params({**BASE, "pgbackrest": LAB_PB})
    auto = {"restore_command": "'pgbackrest --stanza=hcb_production archive-get %f \"%p\"'", "archive_mode": "'off'",
            "work_mem": "'64MB'"}
    rows = {c.name: c for c in drill.check_auto_conf(auto, p)}
    assert rows["restore_command from pgBackRest"].status == "pass"
    assert rows["archive_mode off in postgresql.auto.conf"].status == "pass"
    assert rows["no other settings (ALTER SYSTEM on the primary)"].status == "warn"


def test_archive_push_timeout_is_written_only_when_not_pgbackrests_default():
    """pgbackrest.archive_push_timeout: how soon archive_command reports a push that did not finish (a frozen
    repository); pgBackRest's own 60 s is not written, another value is, in [global:archive-push]."""
    p = params(PRODUCTION_PB, "production")
    push = desired_pgbackrest.conf_options(p, p.primary, version=None)["global:archive-push"]
    assert "archive-timeout" not in push and push["io-timeout"] == "5"
    short = params({**PRODUCTION_PB, "archive_push_timeout": 20}, "production")
    assert desired_pgbackrest.conf_options(short, short.primary, version=None)["global:archive-push"][
        "archive-timeout"] == "20"
    with pytest.raises(ParamsError):
        params({**PRODUCTION_PB, "archive_push_timeout": 1}, "production")


def test_archive_push_io_timeout_comes_from_params_and_defaults_to_5_s():
    """pgbackrest.archive_push_io_timeout: how long an asynchronous push against an unreachable repository stalls
    (about 16 times it) before the next run can drop WAL past the queue bound; 5 s unless params say otherwise (the
    lab test of repo1's outage sets 2)."""
    p = params(PRODUCTION_PB, "production")
    assert p.pgbackrest is not None and p.pgbackrest.archive_push_io_timeout == 5
    assert desired_pgbackrest.conf_options(p, p.primary, version=None)["global:archive-push"]["io-timeout"] == "5"
    short = params({**PRODUCTION_PB, "archive_push_io_timeout": 2}, "production")
    assert desired_pgbackrest.conf_options(short, short.primary, version=None)["global:archive-push"][
        "io-timeout"] == "2"
    assert "\n[global:archive-push]\nio-timeout=2\n" in desired_pgbackrest.render_pgbackrest_conf(
        short, short.primary, version=None)
    for bad in (0, 601):
        with pytest.raises(ParamsError):
            params({**PRODUCTION_PB, "archive_push_io_timeout": bad}, "production")
