"""Specs of step 10's operations on the recording double: a server's state in → statements, commands,
writes and Outcome out (hcbpg.ops.replication, hcbpg.ops.replica).

The primary's catalogs (the replication role, pg_rewind's grants, the slots, the probe table) are
answered by :class:`Primary` behind psql on a :class:`RecordingHost`; every statement psql would run
is recorded.  A dry run is the same call on a :class:`DryRunHost` over the same state; a server not
there yet an :class:`AbsentHost`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.psql import Psql
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.desired.replication import REWIND_FUNCTIONS, passfile_path, render_passfile
from hcbpg.errors import DatabaseError, SafetyCheckFailed, SecretError
from hcbpg.ops import replica, replication
from hcbpg.params import parse_params
from hcbpg.pg.scram import scram_verifier
from tests.fast.specs import covers
from tests.nbutil import manual_lab

REPO = Path(__file__).resolve().parents[2]
PRIMARY, REPLICA = "server-postgres-1", "server-postgres-2"
PASSWORD = "replication-password-for-the-spec-0123456789"
GRANTS = [f'GRANT EXECUTE ON FUNCTION {f} TO "repuser"' for f in REWIND_FUNCTIONS]
CREATE_SLOT = "SELECT pg_create_physical_replication_slot('server_postgres_2_slot', true)"
PROBE_DDL = ('CREATE TABLE IF NOT EXISTS "hcbpg_replication_probe" (token text PRIMARY KEY, written_at timestamptz '
             "NOT NULL DEFAULT now(), written_on text NOT NULL DEFAULT current_setting('cluster_name'))")


@pytest.fixture(scope="module")
def params():
    return parse_params(manual_lab())


def repuser(password: str = PASSWORD, **kw: Any) -> dict[str, Any]:
    row = {"rolname": "repuser", "rolcanlogin": True, "rolinherit": True, "rolconnlimit": 2, "rolsuper": False,
           "rolcreatedb": False, "rolcreaterole": False, "rolreplication": True, "rolbypassrls": False,
           "rolpassword": scram_verifier(password)}
    return {**row, **kw}


def slot(name: str = "server_postgres_2_slot", *, kind: str = "physical", active: bool = True,
         wal_status: str = "reserved") -> dict[str, Any]:
    return {"slot_name": name, "slot_type": kind, "active": active, "restart_lsn": "0/3000000",
            "wal_status": wal_status, "safe_wal_size": None}


class Primary:
    """A primary's catalogs behind psql on a :class:`RecordingHost`: reads answered, statements recorded
    (a statement containing *fail_on* fails as PostgreSQL would refuse it)."""

    def __init__(self, *, role: dict[str, Any] | None = None, granted: bool = False,
                 slots: list[dict[str, Any]] | tuple[()] = (), probe_table: bool = False,
                 fail_on: str | None = None) -> None:
        self.role, self.granted, self.slots, self.probe_table = role, granted, list(slots), probe_table
        self.fail_on = fail_on
        self.host = RecordingHost(PRIMARY, handler=self.answer)

    def answer(self, call: Call) -> Result | str | None:
        text = call.stdin or ""
        if call.kind == "run":
            if self.fail_on and self.fail_on in text:
                return Result(PRIMARY, call.command, 3, "", "ERROR:  refused by the spec", 0.0)
            return ""
        if "FROM pg_authid WHERE rolname = 'repuser'" in text:
            return json.dumps([self.role] if self.role else [])
        if "has_function_privilege" in text:
            return json.dumps([{f"f{i}": self.granted for i in range(len(REWIND_FUNCTIONS))}])
        if "FROM pg_replication_slots" in text:
            return json.dumps(self.slots)
        if "to_regclass" in text:
            return json.dumps([{"e": self.probe_table}])
        return None

    @property
    def statements(self) -> list[str]:
        """What psql ran, as shown (``psql -d postgres: STATEMENT;``), without the prefix and the ;."""
        return [c.options["display"].split(": ", 1)[1].rstrip(";") for c in self.host.calls if c.kind == "run"]


def shown(journal: list[str]) -> list[str]:
    return [line.split(": ", 1)[1].rstrip(";") for line in journal]


# ensure_replication_role -------------------------------------------------------------------------------

@covers("hcbpg.ops.replication.ensure_replication_role", "fresh")
def test_a_fresh_primary_gets_the_role_with_a_scram_verifier_and_pg_rewinds_grants(params):
    primary = Primary()
    out = replication.ensure_replication_role(Psql(primary.host), params, PASSWORD)
    create, *grants = primary.statements
    assert create.startswith('CREATE ROLE "repuser" WITH REPLICATION LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                             "CONNECTION LIMIT 2 PASSWORD 'SCRAM-SHA-256$4096:")
    assert PASSWORD not in create
    assert grants == GRANTS
    assert out.changed and not out.dry_run and out.what == f"replication role repuser on {PRIMARY}"
    assert len(out.actions) == 5 and out.actions[1:] == GRANTS


@covers("hcbpg.ops.replication.ensure_replication_role", "second run")
def test_the_role_as_params_say_with_its_grants_changes_nothing(params):
    primary = Primary(role=repuser(), granted=True)
    out = replication.ensure_replication_role(Psql(primary.host), params, PASSWORD)
    assert primary.host.ran == [] and not out.changed and out.actions == []


@covers("hcbpg.ops.replication.ensure_replication_role", "dry run")
def test_a_dry_run_records_the_same_statements_and_runs_none(params):
    primary = Primary(role=repuser(rolconnlimit=5, rolreplication=False))
    out = replication.ensure_replication_role(Psql(DryRunHost(primary.host)), params, PASSWORD)
    assert primary.host.ran == []
    assert out.changed and out.dry_run
    assert out.actions == ['ALTER ROLE "repuser" WITH REPLICATION CONNECTION LIMIT 2', *GRANTS]
    # a server not there yet: everything is planned, nothing asked of it
    absent = replication.ensure_replication_role(Psql(AbsentHost(PRIMARY)), params, PASSWORD)
    assert absent.changed and absent.dry_run and absent.actions[1:] == GRANTS
    assert absent.actions[0].startswith('CREATE ROLE "repuser"')


@covers("hcbpg.ops.replication.ensure_replication_role", "refusal")
def test_a_role_with_another_password_is_refused_and_nothing_changes(params):
    primary = Primary(role=repuser("another-password-the-replicas-use"), granted=False)
    with pytest.raises(SafetyCheckFailed, match="already exists with a different password"):
        replication.ensure_replication_role(Psql(primary.host), params, PASSWORD)
    assert primary.host.ran == []


# ensure_passfile -------------------------------------------------------------------------------------------

def replica_host(files: dict[str, str] | None = None, stat: str = "600 postgres") -> RecordingHost:
    return RecordingHost(REPLICA, [(r"^stat -c", lambda c: stat if passfile_path() in (files or {}) else
                                    Result(REPLICA, c.command, 1, "", "No such file", 0.0))], files=files)


@covers("hcbpg.ops.replication.ensure_passfile", "fresh")
def test_a_fresh_server_gets_the_passfile_0600_with_a_line_per_peer_and_database(params):
    host = replica_host()
    out = replication.ensure_passfile(host, params, params.server(REPLICA), PASSWORD)
    (path, text, mode, owner, group), = host.written
    assert (path, mode, owner, group) == (passfile_path(), 0o600, "postgres", "postgres")
    assert text == (f"10.0.1.5:5432:replication:repuser:{PASSWORD}\n10.0.1.5:5432:postgres:repuser:{PASSWORD}\n")
    assert host.ran == [f"write {passfile_path()}"]
    assert out.changed and PASSWORD not in str(out)


@covers("hcbpg.ops.replication.ensure_passfile", "second run")
def test_the_same_passfile_with_its_mode_changes_nothing_and_a_wrong_mode_rewrites_it(params):
    server = params.server(REPLICA)
    text = render_passfile(params, server, PASSWORD)
    host = replica_host({passfile_path(): text})
    assert not replication.ensure_passfile(host, params, server, PASSWORD).changed
    assert host.ran == []
    loose = replica_host({passfile_path(): text}, stat="644 root")
    assert replication.ensure_passfile(loose, params, server, PASSWORD).changed
    assert [w[2:4] for w in loose.written] == [(0o600, "postgres")]


@covers("hcbpg.ops.replication.ensure_passfile", "dry run")
def test_a_dry_run_of_the_passfile_writes_nothing(params):
    host = replica_host()
    dry = DryRunHost(host)
    out = replication.ensure_passfile(dry, params, params.server(REPLICA), PASSWORD)
    assert host.written == [] and dry.journal == [f"write {passfile_path()}"]
    assert out.changed and out.dry_run
    assert replication.ensure_passfile(AbsentHost(REPLICA), params, params.server(REPLICA), PASSWORD).changed


@covers("hcbpg.ops.replication.ensure_passfile", "refusal")
def test_a_password_with_a_line_break_is_refused_before_the_passfile_is_written(params):
    host = replica_host()
    with pytest.raises(SecretError, match="control character"):
        replication.ensure_passfile(host, params, params.server(REPLICA), "pass\n10.0.1.9:5432:*:*:other")
    assert host.written == [] and host.ran == []


# ensure_slot --------------------------------------------------------------------------------------------------

@covers("hcbpg.ops.replication.ensure_slot", "fresh")
def test_a_fresh_primary_gets_a_physical_slot_for_the_replica(params):
    primary = Primary()
    out = replication.ensure_slot(Psql(primary.host), params, params.server(REPLICA))
    assert primary.statements == [CREATE_SLOT]
    assert out.changed and out.actions == [CREATE_SLOT] and out.what == f"replication slot server_postgres_2_slot on {PRIMARY}"


@covers("hcbpg.ops.replication.ensure_slot", "second run")
def test_an_existing_slot_changes_nothing_and_an_invalidated_one_is_made_again(params):
    primary = Primary(slots=[slot()])
    assert not replication.ensure_slot(Psql(primary.host), params, params.server(REPLICA)).changed
    assert primary.host.ran == []
    lost = Primary(slots=[slot(active=False, wal_status="lost")])
    out = replication.ensure_slot(Psql(lost.host), params, params.server(REPLICA))
    assert lost.statements == ["SELECT pg_drop_replication_slot('server_postgres_2_slot')", CREATE_SLOT]
    assert out.changed and "invalidated" in out.actions[0]


@covers("hcbpg.ops.replication.ensure_slot", "dry run")
def test_a_dry_run_of_the_slot_runs_nothing(params):
    primary = Primary()
    dry = DryRunHost(primary.host)
    out = replication.ensure_slot(Psql(dry), params, params.server(REPLICA))
    assert primary.host.ran == [] and shown(dry.journal) == [CREATE_SLOT]
    assert out.changed and out.dry_run


@covers("hcbpg.ops.replication.ensure_slot", "refusal")
def test_a_logical_slot_of_that_name_is_refused(params):
    primary = Primary(slots=[slot(kind="logical")])
    with pytest.raises(SafetyCheckFailed, match="exists but is logical"):
        replication.ensure_slot(Psql(primary.host), params, params.server(REPLICA))
    assert primary.host.ran == []


# ensure_no_stale_slots ---------------------------------------------------------------------------------------

STALE = [slot("server_postgres_1_slot", active=False), slot(active=True), slot("someone_elses_slot", active=False)]


@covers("hcbpg.ops.replication.ensure_no_stale_slots", "fresh")
def test_an_inactive_hcbpg_slot_nobody_needs_is_dropped_and_no_other(params):
    primary = Primary(slots=STALE)
    out = replication.ensure_no_stale_slots(Psql(primary.host), params, keep=["server_postgres_2_slot"])
    assert primary.statements == ["SELECT pg_drop_replication_slot('server_postgres_1_slot')"]
    assert out.changed and out.actions == primary.statements


@covers("hcbpg.ops.replication.ensure_no_stale_slots", "second run")
def test_no_stale_slot_changes_nothing(params):
    primary = Primary(slots=[slot(), slot("someone_elses_slot", active=False)])
    assert not replication.ensure_no_stale_slots(Psql(primary.host), params, keep=[]).changed
    assert primary.host.ran == []


@covers("hcbpg.ops.replication.ensure_no_stale_slots", "dry run")
def test_a_dry_run_of_the_stale_slots_drops_nothing(params):
    primary = Primary(slots=STALE)
    dry = DryRunHost(primary.host)
    out = replication.ensure_no_stale_slots(Psql(dry), params, keep=["server_postgres_2_slot"])
    assert primary.host.ran == [] and out.changed and out.dry_run
    assert shown(dry.journal) == ["SELECT pg_drop_replication_slot('server_postgres_1_slot')"]
    assert not replication.ensure_no_stale_slots(Psql(AbsentHost(PRIMARY)), params, keep=[]).changed


@covers("hcbpg.ops.replication.ensure_no_stale_slots", "refusal")
def test_a_slot_that_became_active_meanwhile_fails_the_drop_loudly(params):
    primary = Primary(slots=STALE, fail_on="pg_drop_replication_slot")
    with pytest.raises(DatabaseError, match="refused by the spec"):
        replication.ensure_no_stale_slots(Psql(primary.host), params, keep=["server_postgres_2_slot"])


# ensure_probe_table ---------------------------------------------------------------------------------------------

@covers("hcbpg.ops.replication.ensure_probe_table", "fresh")
def test_a_fresh_primary_gets_the_probe_table(params):
    primary = Primary()
    out = replication.ensure_probe_table(Psql(primary.host))
    assert primary.statements == [PROBE_DDL] and out.changed and out.actions == [PROBE_DDL]


@covers("hcbpg.ops.replication.ensure_probe_table", "second run")
def test_an_existing_probe_table_changes_nothing(params):
    primary = Primary(probe_table=True)
    assert not replication.ensure_probe_table(Psql(primary.host)).changed and primary.host.ran == []


@covers("hcbpg.ops.replication.ensure_probe_table", "dry run")
def test_a_dry_run_of_the_probe_table_creates_nothing(params):
    primary = Primary()
    dry = DryRunHost(primary.host)
    out = replication.ensure_probe_table(Psql(dry))
    assert primary.host.ran == [] and shown(dry.journal) == [PROBE_DDL] and out.changed and out.dry_run


@covers("hcbpg.ops.replication.ensure_probe_table", "refusal")
def test_a_read_only_server_refuses_the_probe_table(params):
    primary = Primary(fail_on="CREATE TABLE")
    with pytest.raises(DatabaseError, match="refused by the spec"):
        replication.ensure_probe_table(Psql(primary.host))


# the probe row and the refused write: a public adapter method, SQL composed --------------------------------------

#: the cluster's psql on its port, as the SQL adapter runs it
PSQL = r"^/usr/lib/postgresql/15/bin/psql -p 5432 "


def test_the_probe_row_and_the_refused_write_go_through_psql_attempt_quietly():
    primary = Primary()
    token = replication.run_write_probe_row(Psql(primary.host))
    (call,) = [c for c in primary.host.calls if c.kind == "run"]
    assert call.stdin == f"INSERT INTO \"hcbpg_replication_probe\" (token) VALUES ('{token}');\n"
    assert call.options["quiet"] and not call.options["check"] and call.sudo_user == "postgres"
    refusing = RecordingHost(REPLICA, [(PSQL, Result(REPLICA, "psql", 1, "", "ERROR:  cannot execute INSERT "
                                                     "in a read-only transaction", 0.0))])
    check = replication.check_refuses_writes(Psql(refusing))
    assert check.status == "pass"
    assert refusing.calls[0].stdin == "INSERT INTO \"hcbpg_replication_probe\" (token) VALUES ('refused');\n"
    accepting = RecordingHost(REPLICA, [(PSQL, "")])
    assert replication.check_refuses_writes(Psql(accepting)).status == "fail"


# ensure_replica ------------------------------------------------------------------------------------------------

PGDATA = "/var/lib/postgresql/15/main"
SYSID = "7300000000000000001"


def lsclusters(running: bool) -> str:
    return json.dumps([{"version": 15, "cluster": "main", "port": 5432, "running": int(running), "pgdata": PGDATA,
                        "logfile": "/var/log/postgresql/postgresql-15-main.log"}])


class Pair:
    """A running primary and a replica server, as pg_lsclusters, psql and the data directory show them."""

    def __init__(self, *, replica_running: bool, in_recovery: bool, databases: list[str] | None = None,
                 conninfo: str = "host=10.0.1.5 user=repuser passfile=/var/lib/postgresql/.pgpass",
                 slot_name: str = "server_postgres_2_slot", streaming: bool = True) -> None:
        self.replica_running, self.in_recovery, self.databases = replica_running, in_recovery, databases or []
        self.conninfo, self.slot_name, self.streaming = conninfo, slot_name, streaming
        self.primary = RecordingHost(PRIMARY, handler=self.on_primary)
        self.replica = RecordingHost(REPLICA, handler=self.on_replica, files={
            f"{PGDATA}/postgresql.auto.conf": f"primary_conninfo = '{conninfo}'\nprimary_slot_name = '{slot_name}'\n"})

    def on_primary(self, call: Call) -> str | Result | None:
        text = call.stdin or ""
        if call.command == "pg_lsclusters --json":
            return lsclusters(True)
        if call.command.startswith("test -e") and call.command.endswith("/standby.signal"):
            return Result(PRIMARY, call.command, 1, "", "", 0.0)
        if "pg_is_in_recovery() AS in_recovery" in text:
            return json.dumps([{"in_recovery": False, "sysid": SYSID, "checkpoint_tli": 1, "clients": 3,
                                "dbs": ["hcb_production"], "streaming_to": [], "primary_conninfo": "",
                                "primary_slot_name": ""}])
        if "pg_walfile_name" in text:
            return json.dumps([{"t": 1}])
        if "FROM pg_stat_replication r" in text:
            return json.dumps([{"application_name": REPLICA, "client_addr": "10.0.1.6", "state": "streaming",
                                "sync_state": "async", "slot_name": "server_postgres_2_slot", "slot_active": True,
                                "replay_lag_bytes": 0, "replay_lag_s": 0.0, "write_lag_s": 0.0}]
                              if self.streaming else [])
        return None

    def on_replica(self, call: Call) -> str | Result | None:
        text = call.stdin or ""
        if call.kind == "run" and call.command.startswith("pg_ctlcluster 15 main start"):
            self.replica_running = True
            return ""
        if call.command == "pg_lsclusters --json":
            return lsclusters(self.replica_running)
        if call.command.startswith("test -e") and call.command.endswith("/standby.signal"):
            return "" if self.in_recovery else Result(REPLICA, call.command, 1, "", "", 0.0)
        if "pg_is_in_recovery() AS in_recovery" in text:
            return json.dumps([{"in_recovery": self.in_recovery, "sysid": SYSID, "checkpoint_tli": 1, "clients": 0,
                                "dbs": self.databases, "streaming_to": [], "primary_conninfo": self.conninfo,
                                "primary_slot_name": self.slot_name}])
        if "FROM pg_stat_wal_receiver" in text:
            return json.dumps([{"status": "streaming", "sender_host": "10.0.1.5", "slot_name": self.slot_name,
                                "received_tli": 1}])
        if "pg_walfile_name" in text:
            return json.dumps([{"t": 1}])
        if "pg_controldata" in call.command:
            return (f"Database system identifier:           {SYSID}\nLatest checkpoint's TimeLineID:       1\n"
                    "Database cluster state:               shut down in recovery\n")
        if call.command.startswith("ls -1") and call.command.endswith("/base"):
            return "1\n4\n5\n"
        return None


@covers("hcbpg.ops.replica.ensure_replica", "fresh")
def test_a_stopped_replica_configured_for_the_primary_is_started_and_streams(params):
    pair = Pair(replica_running=False, in_recovery=True)
    out, plan, result = replica.ensure_replica(pair.replica, params, params.server(REPLICA), primary_host=pair.primary,
                                               primary=params.primary, allow_destructive=False, echo=lambda _: None)
    assert (plan.action, plan.reasons) == ("start", ["it is stopped"])
    assert pair.replica.ran == ["pg_ctlcluster 15 main start"] and pair.primary.ran == []
    assert out.changed and not out.dry_run and "start_to_streaming_s" in result
    # a server not there yet, planned: a base backup through its slot
    absent, plan, _ = replica.ensure_replica(AbsentHost(REPLICA), params, params.server(REPLICA),
                                             primary_host=pair.primary, primary=params.primary,
                                             allow_destructive=False)
    assert (plan.action, plan.method) == ("rebuild", "base_backup") and absent.changed and absent.dry_run
    assert any("--slot server_postgres_2_slot" in s for s in absent.actions)


@covers("hcbpg.ops.replica.ensure_replica", "second run")
def test_a_streaming_replica_changes_nothing(params):
    pair = Pair(replica_running=True, in_recovery=True)
    out, plan, result = replica.ensure_replica(pair.replica, params, params.server(REPLICA), primary_host=pair.primary,
                                               primary=params.primary, allow_destructive=True)
    assert plan.action == "none" and not out.changed and result == {}
    assert pair.replica.ran == [] and pair.primary.ran == []


@covers("hcbpg.ops.replica.ensure_replica", "dry run")
def test_a_dry_run_plans_the_rebuild_and_stops_nothing(params):
    pair = Pair(replica_running=True, in_recovery=True, conninfo="host=10.0.1.99 user=repuser")
    out, plan, _ = replica.ensure_replica(DryRunHost(pair.replica), params, params.server(REPLICA),
                                          primary_host=DryRunHost(pair.primary), primary=params.primary,
                                          allow_destructive=True)
    assert (plan.action, plan.method, plan.allowed_by) == ("rebuild", "rewind", "it is in recovery (a replica)")
    assert "primary_conninfo points at 10.0.1.99, not 10.0.1.5" in plan.reasons
    assert out.changed and out.dry_run and out.actions == plan.steps
    assert pair.replica.ran == [] and pair.primary.ran == []


@covers("hcbpg.ops.replica.ensure_replica", "refusal")
def test_a_writable_server_holding_data_is_never_wiped(params):
    pair = Pair(replica_running=True, in_recovery=False, databases=["precious"], conninfo="", slot_name="")
    with pytest.raises(SafetyCheckFailed, match="not in recovery and holds databases precious"):
        replica.ensure_replica(pair.replica, params, params.server(REPLICA), primary_host=pair.primary,
                               primary=params.primary, allow_destructive=True)
    assert pair.replica.ran == [] and pair.primary.ran == []
    with pytest.raises(SafetyCheckFailed, match="destructive steps are not allowed"):
        replica.ensure_replica(Pair(replica_running=True, in_recovery=True, conninfo="").replica, params,
                               params.server(REPLICA), primary_host=pair.primary, primary=params.primary,
                               allow_destructive=False)
