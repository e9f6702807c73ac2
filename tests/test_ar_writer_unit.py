"""The lab's timed writers (issue 28: hcbpg.lab.app_load's ActiveRecord and local writers) and faults
(hcbpg.lab.faults), their pure parts: log lines, command lines (never a URL or password in an argv), process
recognition, partition rules.  The lab test is tests/lab/test_ar_writer.py."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from hcbpg.lab import app_load, faults
from hcbpg.lab.app_load import Ack, Read, WriteError, Writer

RUBY = Path("/usr/bin/ruby")


def test_the_log_learns_acks_with_their_server_errors_and_reads_and_keeps_the_old_lines():
    text = ("i 10\nu 3 app-load 1\n"                     # the shell load's lines, as before
            "i 11 1765000000123 10.0.1.5\ne 1765000000200 PG::ConnectionBad\n"
            "i 12 1765000000400 10.0.1.6\nr 1765000000450 10.0.1.6\n"
            "i 13 17650\n"                                # torn by a kill: skipped
            "stopped\n")
    log = app_load.parse_log(text)
    assert log.inserted == [10, 11, 12] and log.updated == {3: "app-load 1"} and log.stopped
    assert log.acks == [Ack(11, 1765000000123, "10.0.1.5"), Ack(12, 1765000000400, "10.0.1.6")]
    assert log.errors == [WriteError(1765000000200, "PG::ConnectionBad")]
    assert log.reads == [Read(1765000000450, "10.0.1.6")]
    assert log.acks_by_server() == {"10.0.1.5": 1, "10.0.1.6": 1}
    # the lost-write check covers the timed writers' inserts too
    assert app_load.lost_writes(log, {"inserted": [10, 12], "memos": {"3": "app-load 1"}}) == ["events 11: missing"]


def test_longest_gap_counts_the_window_ends():
    acks = [Ack(1, 1000, "a"), Ack(2, 1100, "a"), Ack(3, 2600, "b"), Ack(4, 9000, "b")]
    assert app_load.longest_gap_ms(acks, since_ms=900, until_ms=3000) == 1500
    assert app_load.longest_gap_ms([], since_ms=0, until_ms=700) == 700


def test_the_ar_writer_gets_its_url_from_the_env_file_never_its_argv():
    w = Writer("ar-load")
    argv = app_load.render_ar_command(w, var="BLAZER_DATABASE_URL", rate=20, mode="read")
    assert argv[:2] == ["/usr/bin/ruby", app_load.AR_SCRIPT]
    assert f"env_file={app_load.AR_ENV_FILE}" in argv and "var=BLAZER_DATABASE_URL" in argv
    assert "rate=20" in argv and "mode=read" in argv and f"log={w.log}" in argv and "pg_async=on" in argv
    assert "pg_async=off" in app_load.render_ar_command(w, pg_async=False)
    assert not any("postgres" in a or "password" in a for a in argv)
    start = app_load.render_start_detached(w, argv)
    assert "setsid -f" in start and w.pidfile in start and "env -i" in start
    with pytest.raises(ValueError):
        app_load.render_ar_command(w, var="DATABASE_URL; rm -rf /")
    with pytest.raises(ValueError):
        app_load.render_ar_command(w, rate=0)
    with pytest.raises(ValueError):
        Writer("../etc")


def test_the_local_writer_refuses_shell_characters_and_names_its_log_in_its_argv():
    w = Writer("local-load")
    argv = app_load.render_local_command(w, label="10.0.1.5", database="hcb_production", rate=10)
    assert argv[0] == "/bin/bash" and argv[-1] == w.log
    assert "-h /var/run/postgresql" in argv[2] and "i %s %s %s" in argv[2] and "10.0.1.5" in argv[2]
    for bad in ("10.0.1.5; reboot", "a b", "$(x)", ""):
        with pytest.raises(ValueError):
            app_load.render_local_command(w, label=bad, database="hcb_production")


def test_the_stop_command_ends_only_a_pid_that_runs_the_writer(tmp_path):
    # the pidfile names a process that is not the writer: nothing is signalled, "gone"
    w = Writer("ar-load")
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        cmd = app_load.render_stop_command(w).replace(w.pidfile, str(tmp_path / "pid"))
        (tmp_path / "pid").write_text(f"{sleeper.pid}\n")
        out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=10)
        assert out.stdout.strip() == "gone" and sleeper.poll() is None
        # a process whose argv names the log is ended by SIGTERM
        writer = subprocess.Popen(["sh", "-c", "sleep 30", w.log])
        (tmp_path / "pid").write_text(f"{writer.pid}\n")
        out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0 and out.stdout == "" and writer.wait(timeout=5) == -15, out  # SIGTERM, not KILL
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.skipif(not RUBY.exists(), reason="ruby is not installed (scripts/install.sh installs it)")
def test_ar_load_rb_is_valid_ruby_and_ships_as_package_data():
    from importlib import resources

    script = resources.files("hcbpg.lab").joinpath("ar_load.rb")
    assert script.is_file()
    res = subprocess.run([str(RUBY), "-c", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"hcbpg.lab" = ["ar_load.rb"]' in pyproject


@pytest.mark.skipif(not RUBY.exists(), reason="ruby is not installed")
def test_ar_load_rb_refuses_an_env_file_without_its_variable_and_never_prints_the_file(tmp_path):
    env = tmp_path / "db.env"
    env.write_text("OTHER_URL='postgresql:db?password=planted-secret-1'\n")
    res = subprocess.run([str(RUBY), str(Path(app_load.__file__).with_name("ar_load.rb")), f"env_file={env}",
                          f"log={tmp_path / 'log'}"], capture_output=True, text=True, timeout=30,
                         env={"PATH": os.environ["PATH"]})
    assert res.returncode != 0 and "has no DATABASE_URL= line" in res.stderr
    assert "planted-secret-1" not in res.stdout + res.stderr


# faults ---------------------------------------------------------------------------------------------------------

PROCS = [
    faults.Proc(100, "postgres", ("/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/postgresql/15/main")),
    faults.Proc(101, "postgres", ("postgres: 15/main: checkpointer ",)),
    faults.Proc(102, "patroni", ("/usr/bin/python3", "/usr/bin/patroni", "/etc/patroni/15-main.yml")),
    faults.Proc(103, "etcd", ("/usr/bin/etcd",)),
    faults.Proc(104, "sshd", ("sshd: root@notty",)),
    faults.Proc(105, "bash", ("bash", "-c", "psql -c 'select 1' # postgres patroni")),
    faults.Proc(106, "psql", ("psql", "-h", "/var/run/postgresql")),
]


def test_patroni_and_postgres_are_told_by_comm_and_argv_not_by_a_word_in_a_command():
    assert faults.select(PROCS, faults.is_patroni, faults.is_postgres) == [100, 101, 102]
    assert faults.select(PROCS, faults.is_etcd) == [103]
    assert faults.select(PROCS, lambda p: faults.matches(p, comm="psql")) == [106]
    assert faults.select(PROCS, lambda p: faults.matches(p, cmdline="/etc/patroni/15-main.yml")) == [102]
    assert faults.select(PROCS, lambda p: faults.matches(p, comm="postgres", cmdline="checkpointer")) == [101]
    assert faults.select(PROCS, lambda p: faults.matches(p)) == []  # no criterion: nothing, never everything


def test_read_proc_reads_comm_and_argv_of_a_live_process_and_none_for_a_gone_one():
    me = faults.read_proc(os.getpid())
    assert me is not None and me.pid == os.getpid() and me.argv and "python" in me.argv[0]
    assert faults.read_proc(2 ** 22 + 7) is None


def test_partition_rules_drop_both_ways_per_address_and_refuse_a_non_address():
    assert faults.partition_rules(["10.0.1.5", "10.0.1.40"]) == [
        ["INPUT", "-s", "10.0.1.5", "-j", "DROP"], ["OUTPUT", "-d", "10.0.1.5", "-j", "DROP"],
        ["INPUT", "-s", "10.0.1.40", "-j", "DROP"], ["OUTPUT", "-d", "10.0.1.40", "-j", "DROP"]]
    with pytest.raises(ValueError):
        faults.partition_rules(["10.0.1.5 -j ACCEPT"])
    assert shlex.join(faults.partition_rules(["10.0.1.5"])[0]) == "INPUT -s 10.0.1.5 -j DROP"
