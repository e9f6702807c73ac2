"""archive_timeout bounds the loss window (issue 24), on a clone of the worker's primary stage with steps 05 and 08
against the lab's S3 store (a repository path of this module's own):

- with ``pgbackrest.archive_timeout: 0`` (off), a small write on a quiet database stays in the current WAL
  segment: nothing is archived while the test waits (15 s);
- the same params with ``archive_timeout: 5s``: step 08's ensure_archiving applies it with a reload, no restart
  (the postmaster's start time unchanged), and the waiting write's segment reaches the repository by itself (no
  pg_switch_wal); the delay is printed, never asserted (a loaded machine), and waited for with a generous
  deadline;
- under the params' default the setting in force is 60 s.
"""

from __future__ import annotations

import time

import pytest

from hcbpg.adapters.host import Host
from hcbpg.lab import destroy_server_host
from hcbpg.ops import pgbackrest as pgb
from hcbpg.params import parse_params
from hcbpg.steps import pgbackrest as step05
from hcbpg.steps import start_archiving as step08
from hcbpg.wait import wait_until

from labparams import lab_params, pgbackrest_section

pytestmark = pytest.mark.lab

NAME = "server-postgres-1"
ARCHIVER = "SELECT coalesce(last_archived_wal, '') || ' ' || archived_count FROM pg_stat_archiver"
OUTPUT: list[str] = []
#: what the first test leaves for the second (file order)
env_state: dict[str, str] = {}


@pytest.fixture(scope="module")
def env(lab, primary_stage):
    ip = primary_stage.clone()  # steps 02-04, built once per worker (stages.py)

    def params(archive_timeout):  # noqa: ANN001, ANN202
        section = pgbackrest_section(lab, repo_path_prefix="/pgbackrest-archive-timeout")
        if archive_timeout is not None:
            section["archive_timeout"] = archive_timeout
        return parse_params(lab_params(lab, [(NAME, ip, "primary")], pgbackrest=section))

    host = Host.from_params(params(None), NAME, ip)
    yield params, host
    host.close()
    destroy_server_host(NAME, lab_dir=str(lab.lab_dir))


def sql(host: Host, text: str, db: str = "postgres") -> str:
    return host.run(f"psql -X -A -t -q -v ON_ERROR_STOP=1 -d {db}", sudo_user="postgres", stdin=text + "\n",
                    quiet=True).stdout.strip()


def test_with_archive_timeout_off_a_quiet_write_is_not_archived(env):
    params, host = env
    off = params(0)
    step05.configure(host, off, off.primary)
    step08.start_archiving(host, off, off.primary)
    assert sql(host, "SHOW archive_timeout") == "0"
    checks = pgb.check_archiving_started(host, off, off.primary)
    assert not [c for c in checks if c.status != "pass"], [f"{c.name}: {c.detail}" for c in checks]
    sql(host, "CHECKPOINT")  # quiet from here on
    sql(host, "CREATE TABLE IF NOT EXISTS archive_timeout_probe (at timestamptz DEFAULT now())")
    # whatever the start and the table wrote is pushed once its segment is full or switched: switch once, wait for
    # it, then the one write this test watches goes into a fresh, almost empty segment
    finished = sql(host, "SELECT pg_walfile_name(pg_switch_wal())")
    wait_until(lambda: sql(host, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"),
               lambda v: v >= finished, timeout=180, what=f"segment {finished} archived")
    before = sql(host, ARCHIVER)
    sql(host, "INSERT INTO archive_timeout_probe DEFAULT VALUES")
    time.sleep(15)
    assert sql(host, ARCHIVER) == before, "a segment was archived with archive_timeout off"
    env_state["before"] = before
    env_state["postmaster"] = sql(host, "SELECT pg_postmaster_start_time()")


def test_archive_timeout_applied_by_a_reload_archives_the_waiting_write(env):
    params, host = env
    assert env_state, "runs after the test above"
    five = params("5s")
    t0 = time.monotonic()
    out = pgb.ensure_archiving(host, five, five.primary, archive_mode=True)
    assert out.changed and "reload" in out.actions and "(archive_timeout)" in out.actions[0], out.actions
    assert not any("restart" in a for a in out.actions), out.actions
    assert sql(host, "SHOW archive_timeout") == "5s"
    assert sql(host, "SELECT pg_postmaster_start_time()") == env_state["postmaster"]  # no restart
    after = wait_until(lambda: sql(host, ARCHIVER), lambda v: v != env_state["before"], timeout=180,
                       what="the waiting write's segment archived by archive_timeout")
    OUTPUT.append(f"archive_timeout 5 s: the waiting write's segment archived {time.monotonic() - t0:.1f} s after "
                  f"the reload ({env_state['before']} -> {after})")
    checks = pgb.check_archiving(host, five, five.primary, archive_mode=True)
    assert not [c for c in checks if c.status != "pass"], [f"{c.name}: {c.detail}" for c in checks]


def test_the_default_is_60_seconds(env):
    params, host = env
    default = params(None)
    out = pgb.ensure_archiving(host, default, default.primary, archive_mode=True)
    assert not any("restart" in a for a in out.actions), out.actions
    assert sql(host, "SHOW archive_timeout") == "1min"


def test_zz_print_what_was_measured():
    print("\n" + "\n".join(OUTPUT))
