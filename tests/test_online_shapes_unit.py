"""The online transfer's awkward shapes, decided without I/O (issue 27, item 9): partitioned tables through
their partitions, generated columns, materialized views; the window's one copy command (06b's proof is the
same command, rolled back); 07's plan against what 06b proved; the anti-wraparound check; Bucardo's lock
timeout on the source and the retries of ``add sync``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.recording import RecordingHost
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.ops.migration import bucardo as bucardo_ops
from hcbpg.params import parse_params
from hcbpg.pg import bucardo as bp
from tests.fast.specs import params_data


def table(name: str, *, key: bool = True, rows: int = 10, cols: tuple[str, ...] = ("id", "v"),
          generated: tuple[str, ...] = (), partition_of: str | None = None) -> dict[str, Any]:
    schema, rel = name.split(".")
    return {"name": name, "schema": schema, "relname": rel, "key": key, "unlogged": False, "rows": rows,
            "columns": list(cols), "generated": list(generated), "partition_of": partition_of}


SHAPES = {
    "tables": [table("analytics.ledger_2025", key=False, rows=500, partition_of="analytics.ledger"),
               table("analytics.ledger_default", key=False, rows=3, partition_of="analytics.ledger"),
               table("billing.invoices_2025", partition_of="billing.invoices"),
               table("billing.lines", cols=("id", "qty", "price"), generated=("total",)),
               table("public.users")],
    "partitioned": [{"name": "analytics.ledger", "key": False, "leaves": 2},
                    {"name": "billing.invoices", "key": True, "leaves": 1}],
    "matviews": [{"name": "analytics.top", "schema": "analytics", "relname": "top", "populated": True,
                  "reads": ["analytics.daily"]},
                 {"name": "analytics.daily", "schema": "analytics", "relname": "daily", "populated": True, "reads": []},
                 {"name": "analytics.cold", "schema": "analytics", "relname": "cold", "populated": False, "reads": []}],
    "foreign_tables": ["remote.rates"],
    "sequences": ["billing.lines_id_seq"], "large_objects": 0}


def test_a_partitioned_table_moves_through_its_partitions_and_a_generated_column_through_the_window():
    plan = bp.plan_sync(SHAPES, window_copy_max_rows=1000)
    assert plan.ok
    # Bucardo gets the leaves (it finds relkind 'r' only), never a partitioned parent
    assert plan.synced == ["billing.invoices_2025", "public.users"]
    assert plan.in_window == ["analytics.ledger_2025", "analytics.ledger_default", "billing.lines"]
    assert [c.name for c in plan.copies] == plan.in_window
    lines = plan.copies[2]
    assert lines.columns == ("id", "qty", "price") and "generated column(s) total" in lines.why
    moved = {r["table"]: r["moved"] for r in plan.rows()}
    assert moved["analytics.ledger"].startswith("partitioned (2 partition(s), no key): moved through its partitions")
    assert "(copied inside the window)" in moved["analytics.ledger"]
    assert "a key" in moved["billing.invoices"] and "(synced)" in moved["billing.invoices"]
    assert moved["analytics.ledger_2025"] == "no key: copied whole inside the window (partition of analytics.ledger)"
    assert moved["billing.lines"].startswith("generated column(s) total (Bucardo 5.6")
    assert moved["analytics.cold"].startswith("materialized view, not populated on the source")
    assert moved["remote.rates"].startswith("foreign table")
    # refreshed in an order where each view comes after the one it reads; the unpopulated one left so
    assert [r.name for r in plan.refreshes] == ["analytics.daily", "analytics.top"]
    actions = plan.window_actions()
    assert "analytics.ledger_2025 (no key; COPY of 2 column(s), about 500 rows)" in actions[2]
    assert actions[3] == "materialized views refreshed: analytics.daily, analytics.top"


def test_a_large_table_with_a_generated_column_refuses_the_mode_saying_why():
    data = {**SHAPES, "tables": [table("billing.lines", rows=5000, generated=("total",))]}
    plan = bp.plan_sync(data, window_copy_max_rows=1000)
    assert plan.refused == ["billing.lines"] and not plan.ok
    bad = next(c for c in plan.checks if c.status == "fail")
    assert "billing.lines (about 5000 rows; generated column(s) total" in bad.detail
    assert moved_of(plan)["billing.lines"].endswith("too large: REFUSED")


def moved_of(plan: bp.SyncPlan) -> dict[str, str]:
    return {r["table"]: r["moved"] for r in plan.rows()}


def test_the_window_copy_and_06bs_proof_are_one_command_with_names_as_data():
    copy = bp.WindowCopy("an'a", 'le"dger_2025', ("at", "a'mount", 'no"te'), rows=5, partition_of="an'a.ledger")
    real = bp.render_window_copy(copy, source_cmd="SRC", target_cmd="TGT")
    dry = bp.render_window_copy(copy, source_cmd="SRC", target_cmd="TGT", limit=1001, dry=True)
    select = '''SELECT "at", "a'mount", "no""te" FROM ONLY "an'a"."le""dger_2025"'''
    assert select.replace("'", "'\"'\"'") in real and select.replace("'", "'\"'\"'") in dry
    # a leaf or plain table with ONLY (never a partitioned parent: COPY TO refuses it), loaded by column name
    # under replica role (DELETE: a referenced table loads too), the rows it holds printed
    for cmd in (real, dry):
        assert cmd.startswith("SRC -X -q -v ON_ERROR_STOP=1 -c 'COPY (SELECT ") and " | TGT -X -q -At " in cmd
        assert "-c 'SET session_replication_role = replica'" in cmd and "DELETE FROM ONLY" in cmd
        assert "FROM STDIN" in cmd and "SELECT count(*) FROM ONLY" in cmd and "TRUNCATE" not in cmd
    assert " -1 " in real and "LIMIT" not in real and "ROLLBACK" not in real
    assert " -1 " not in dry and "LIMIT 1001) TO STDOUT" in dry
    assert dry.index("-c BEGIN") < dry.index("DELETE") < dry.index("-c ROLLBACK") and dry.endswith("-c ROLLBACK")
    # the same pipeline but for the limit and the transaction's end
    assert dry.replace(" LIMIT 1001", "").replace("-c BEGIN ", "").replace(" -c ROLLBACK", "") == \
        real.replace(" -1 ", " ")
    assert bp.render_refresh(bp.Refresh("a", 'm"v')) == 'REFRESH MATERIALIZED VIEW "a"."m""v"'


def test_07s_plan_refuses_a_window_that_does_what_06b_did_not_prove():
    plan = bp.plan_sync(SHAPES, window_copy_max_rows=1000)
    proof = json.loads(json.dumps(bp.render_window_proof(plan)))  # as read back from the primary
    assert bp.check_window_proven(plan, proof).status == "pass"
    timed = bp.check_window_proven(plan, {**proof, "seconds": 2.345})
    assert timed.status == "pass" and timed.detail == "3 copies, 2 refreshes proved by 06b (they took 2.3s there)"
    missing = bp.check_window_proven(plan, None)
    assert missing.status == "fail" and "run 06b again" in missing.detail
    # a column added since (its copy's columns differ), a view not refreshed by 06b
    proof["copies"][2][2] = ["id", "qty"]
    proof["refreshes"] = proof["refreshes"][:1]
    bad = bp.check_window_proven(plan, proof)
    assert bad.status == "fail" and "billing.lines" in bad.detail and "analytics.top (refresh)" in bad.detail


def test_an_anti_wraparound_vacuum_refuses_and_a_table_past_its_freeze_age_is_named():
    running = {"running": [{"pid": 42, "seconds": 90, "query": "autovacuum: VACUUM public.events (to prevent "
                            "wraparound)"}], "unreadable": 0, "due": []}
    run, due = bp.check_wraparound(running)
    assert run.status == "fail" and "pid 42 for 90s" in run.detail and "Wait for it to end" in run.detail
    assert due.status == "pass"
    past = [{"table": "public.events", "age": 210000000, "limit": 200000000}]
    run, due = bp.check_wraparound({"running": [], "unreadable": 0, "due": past})
    assert run.status == "pass" and run.detail == "none"
    assert due.status == "warn" and "public.events (age 210000000 > 200000000)" in due.detail
    # a role that may not read the workers' queries: a worker running while a table is past its freeze age
    # is taken for an anti-wraparound VACUUM on it; without such a table it is an ordinary one
    run, _ = bp.check_wraparound({"running": [], "unreadable": 2, "due": past})
    assert run.status == "fail" and "most likely an anti-wraparound VACUUM" in run.detail
    assert "public.events (age 210000000 > 200000000)" in run.detail
    run, _ = bp.check_wraparound({"running": [], "unreadable": 2, "due": []})
    assert run.status == "pass" and "2 autovacuum worker(s) whose query this role may not read" in run.detail
    assert [c.status for c in bp.check_wraparound({})] == ["pass", "pass"]
    assert "to prevent wraparound" in bp.WRAPAROUND_SQL and "autovacuum_freeze_max_age" in bp.WRAPAROUND_SQL


def test_every_session_of_bucardo_on_the_source_carries_the_lock_timeout():
    plan = bp.plan_sync(SHAPES, window_copy_max_rows=1000)
    cmds = bp.render_forward_sync_commands(plan, source_dbname="hcb", database="hcb_production", port=5432,
                                           streamed=True, lock_timeout_ms=2000)
    assert cmds[0] == (f"add db {bp.SOURCE_DB} dbname=hcb dbservice={bp.SOURCE_SERVICE} "
                       "dbconn=options=-clock_timeout=2000")
    assert "lock_timeout" not in cmds[1]  # the primary, over its socket
    assert cmds[-1].startswith(f"add sync {bp.FORWARD_SYNC} ")
    assert "add tables billing.invoices_2025 public.users " in cmds[2]  # leaves, never a parent
    assert bp.is_lock_timeout("DBD::Pg::db do failed: ERROR:  canceling statement due to lock timeout")
    assert not bp.is_lock_timeout("ERROR:  permission denied for table users")


def params_with(monkeypatch: pytest.MonkeyPatch, **online: Any) -> Any:
    monkeypatch.setenv("HCBPG_TEST_SOURCE_URL", "postgres://app:pw-of-the-unit@source.example.com:5432/hcb")
    return parse_params(params_data(source={"url": "env:HCBPG_TEST_SOURCE_URL", "transfer": "online",
                                            "online": online}))


def test_the_lock_settings_have_defaults_and_bounds(monkeypatch):
    on = params_with(monkeypatch).source.online
    assert (on.lock_timeout_ms, on.lock_retries, on.lock_retry_wait_s, on.vacuum_wait_s) == (2000, 5, 10.0, 300.0)
    for key, value in [("lock_timeout_ms", 0), ("lock_timeout_ms", 600_000), ("lock_retries", -1),
                       ("vacuum_wait_s", -1)]:
        with pytest.raises(ParamsError, match=key):
            params_with(monkeypatch, **{key: value})


class Source:
    """A source whose anti-wraparound query answers from a list (one answer per look)."""

    conn = {"dbname": "hcb"}

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.asked = 0

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def json(self, select: Any, **_: Any) -> Any:
        self.asked += 1
        return self.answers[min(self.asked, len(self.answers)) - 1]


def bucardo_host(outcomes: list[str]) -> RecordingHost:
    """A primary whose ``bucardo add sync`` answers each attempt from *outcomes* ('' succeeds)."""
    left = list(outcomes)

    def handler(call: Any) -> Result | str | None:
        if " add sync " in call.command:
            err = left.pop(0)
            return Result("p", call.command, 1 if err else 0, "", err, 0.0)
        return None
    return RecordingHost("p", handler=handler)


LOCKED = "DBD::Pg::db do failed: ERROR:  canceling statement due to lock timeout"
QUIET = {"running": [], "unreadable": 0, "due": []}


def test_add_sync_is_tried_again_after_a_lock_timeout_and_gives_up_after_the_retries(monkeypatch):
    monkeypatch.setattr(bucardo_ops.time, "sleep", lambda s: None)
    params = params_with(monkeypatch, lock_retries=2, lock_retry_wait_s=0)
    host = bucardo_host([LOCKED, ""])
    src = Source([QUIET])
    assert bucardo_ops.run_add_sync(host, params, src, "add sync x relgroup=x") == 2
    assert src.asked == 1  # the wraparound check before the retry (the step checked before the first)
    host = bucardo_host([LOCKED, LOCKED, LOCKED])
    with pytest.raises(SafetyCheckFailed, match="3 attempts each waited 2000 ms") as e:
        bucardo_ops.run_add_sync(host, params, Source([QUIET]), "add sync x relgroup=x")
    assert "lock timeout" in str(e.value) and len([c for c in host.commands if " add sync " in c]) == 3
    # another failure is not retried
    host = bucardo_host(["ERROR:  permission denied for schema bucardo", ""])
    with pytest.raises(SafetyCheckFailed, match="permission denied"):
        bucardo_ops.run_add_sync(host, params, Source([QUIET]), "add sync x relgroup=x")
    # a retry waits for a running anti-wraparound VACUUM, then refuses after vacuum_wait_s
    params = params_with(monkeypatch, lock_retries=1, lock_retry_wait_s=0, vacuum_wait_s=0)
    vacuum = {"running": [{"pid": 7, "seconds": 5, "query": "autovacuum: VACUUM public.users (to prevent wraparound)"}]}
    with pytest.raises(SafetyCheckFailed, match="anti-wraparound VACUUM still runs on the source"):
        bucardo_ops.run_add_sync(bucardo_host([LOCKED, ""]), params, Source([vacuum]), "add sync x relgroup=x")
