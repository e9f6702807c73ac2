"""The recording host double: answers from its script, records every call, refuses the unexpected."""

from __future__ import annotations

import pytest

from hcbpg.adapters.base import HostLike, Result
from hcbpg.adapters.host import Host
from hcbpg.adapters.recording import RecordingHost, UnscriptedCommand
from hcbpg.errors import RemoteCommandError


def test_the_real_host_and_the_double_both_are_host_like():
    assert isinstance(Host("h", "192.0.2.1"), HostLike)
    assert isinstance(RecordingHost("h"), HostLike)


def test_scripted_commands_are_answered_in_order_of_the_script_and_recorded():
    host = RecordingHost("h", [(r"^psql .*-c 'SELECT 1'", "1\n"), (r"^psql", Result("h", "psql", 2, "", "no", 0.0))])
    assert host.probe("psql -X -c 'SELECT 1'").stdout == "1\n"
    assert host.probe("psql -X -c 'SELECT 2'").exit_code == 2
    assert host.commands == ["psql -X -c 'SELECT 1'", "psql -X -c 'SELECT 2'"]
    assert host.ran == [], "probes change nothing"


def test_a_failing_run_raises_like_the_real_host():
    host = RecordingHost("h", {r"^false$": Result("h", "false", 1, "", "boom", 0.0)})
    with pytest.raises(RemoteCommandError, match="boom"):
        host.run("false")
    assert host.run("false", check=False).exit_code == 1


def test_an_unscripted_command_fails_naming_it():
    host = RecordingHost("h", [(r"^true$", "")])
    with pytest.raises(UnscriptedCommand, match="rm -rf /srv"):
        host.run("rm -rf /srv")


def test_a_handler_answers_what_the_script_does_not_and_may_decline():
    host = RecordingHost("h", handler=lambda call: "ok" if call.sudo_user == "postgres" else None)
    assert host.run("pg_ctl status", sudo_user="postgres").stdout == "ok"
    with pytest.raises(UnscriptedCommand):
        host.run("pg_ctl status")


def test_files_are_read_and_written_in_memory_and_a_dry_run_writes_nothing():
    host = RecordingHost("h", files={"/etc/a": "1"})
    assert host.read_text("/etc/a") == "1" and host.read_text("/etc/b") is None and not host.exists("/etc/b")
    host.put_text("/etc/b", "2", dry_run=True)
    assert not host.exists("/etc/b") and host.ran == []
    host.put_text("/etc/b", "2", mode=0o600, owner="postgres")
    assert host.files["/etc/b"] == "2"
    assert host.written == [("/etc/b", "2", 0o600, "postgres", "postgres")]
    assert host.ran == ["write /etc/b"]
