"""Specs of notebook 22's own operations (hcbpg.ops.recover_everything) on the recording double: the other server's
cluster moved aside before Patroni makes it the replica (never the leader's system, never under a running Patroni),
and the commit through the handed-out URL from the app host (the password on stdin only; a commit held by
synchronous replication fails)."""

from __future__ import annotations

import json
import re

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.errors import HcbpgError
from hcbpg.ops import recover_everything as ops_re
from hcbpg.params import Params, parse_params
from hcbpg.pg.conninfo import render_rails_url
from tests.fast.test_ha_specs import ha_data

DATA = "/var/lib/postgresql/15/main"
LEADER = "7716491821004951666"
FRESH = "7716491999999999999"
URL_PW = "app pw 'x\"$(id)"
URL = render_rails_url("hcb", [("10.0.1.5", 5432), ("10.0.1.6", 5432)],
                       {"user": "rails", "password": URL_PW, "target_session_attrs": "read-write"})


@pytest.fixture
def params(monkeypatch) -> Params:
    for k, v in {"HCBPG_TEST_TOKEN": "t", "HCBPG_TEST_APP_PW": "a", "HCBPG_TEST_REPL_PW": "r",
                 "HCBPG_TEST_REST_PW": "p", "HCBPG_TEST_ETCD_PW": "e"}.items():
        monkeypatch.setenv(k, v)
    return parse_params(ha_data())


class Server:
    """One server made again: Patroni running or not, its data directory's system identifier (None: empty),
    PostgreSQL running or not; the commands change it as the real ones would."""

    def __init__(self, *, patroni: bool = False, sysid: str | None = FRESH, running: bool = True) -> None:
        self.patroni, self.sysid, self.running = patroni, sysid, running
        self.host = RecordingHost("server-postgres-2", handler=self.answer)

    def answer(self, call: Call) -> Result | str | None:
        cmd = call.command
        if "/proc/$p/cmdline" in cmd and "patroni" in cmd:
            # the pidfile's pid and that process's argv (nothing: no pidfile)
            argv = ("/usr/bin/patroni", "/etc/patroni/15-main.d")
            return f"pid=4711\n{chr(0).join(argv)}{chr(0)}" if self.patroni else ""
        if "pg_controldata" in cmd:
            if self.sysid is None:
                return Result("h", cmd, 1, "", "pg_controldata: could not open file", 0.0)
            return f"pg_control version number:            1300\nDatabase system identifier:           {self.sysid}\n"
        if cmd == "pg_lsclusters --json":
            return json.dumps([{"version": 15, "cluster": "main", "port": 5432, "running": int(self.running),
                                "pgdata": DATA}])
        if re.search(r"pg_ctlcluster .*stop", cmd):
            self.running = False
            return ""
        if cmd.startswith("test -e") or cmd.startswith("test -d"):
            return Result("h", cmd, 1, "", "", 0.0)
        if cmd.startswith("mv "):
            return ""
        return None


def test_the_fresh_cluster_of_the_other_server_is_stopped_and_moved_aside_kept(params):
    s = Server()
    out = ops_re.run_make_room(s.host, params, LEADER, suffix="fresh-r1")
    assert out.changed and "moved aside" in out.what and "kept as" in out.actions[0]
    moves = [c for c in s.host.ran if c.startswith("mv ")]
    assert len(moves) == 1 and f"{DATA}.fresh-r1" in moves[0] and "install -d -m 0700" in moves[0]
    assert any("stop" in c for c in s.host.ran) and not s.running


@pytest.mark.parametrize("server", [Server(patroni=True), Server(sysid=None, running=False), Server(sysid=LEADER)],
                         ids=["Patroni runs there", "empty already", "the leader's system already"])
def test_nothing_is_moved_under_patroni_from_an_empty_directory_or_a_replica_of_the_leader(params, server):
    out = ops_re.run_make_room(server.host, params, LEADER, suffix="fresh-r1")
    assert not out.changed and not server.host.ran


def test_without_the_leaders_identifier_nothing_is_moved(params):
    s = Server()
    with pytest.raises(HcbpgError, match="system identifier is unknown"):
        ops_re.run_make_room(s.host, params, None, suffix="fresh-r1")
    assert not s.host.ran


def _app(reply: Result) -> RecordingHost:
    return RecordingHost("app", [(r"psql", reply)])


def _row(params: Params, xid: int) -> str:
    return f"{params.postgres.app_role}|{params.postgres.database}|f|{xid}\n"


def test_a_commit_through_the_url_from_the_app_host_with_the_password_on_stdin_only(params):
    app = _app(Result("app", "psql", 0, _row(params, 4242), "", 0.0))
    check = ops_re.check_commit_from_app(app, params, URL)
    assert check.ok and "committed xid 4242" in check.detail
    (call,) = app.calls
    assert "txid_current()" in call.command and "statement_timeout = 10000" in call.command
    assert URL_PW not in call.command and call.stdin == URL_PW + "\n"
    assert URL_PW not in check.detail


def test_a_commit_held_by_synchronous_replication_or_a_standby_fails(params):
    held = _app(Result("app", "psql", 0, _row(params, 4243),
                       "WARNING:  canceling wait for synchronous replication due to user request", 0.0))
    check = ops_re.check_commit_from_app(held, params, URL)
    assert not check.ok and "synchronous replication" in check.detail
    standby = _app(Result("app", "psql", 1, "", "ERROR:  cannot execute txid_current() during recovery", 0.0))
    assert not ops_re.check_commit_from_app(standby, params, URL).ok
