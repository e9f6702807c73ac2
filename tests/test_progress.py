"""Progress of long work: the pure formatter, rate, throttle and reporter, and the rows of
PostgreSQL's progress views turned into samples (no I/O: clocks are injected)."""

from __future__ import annotations

import json

from hcbpg import progress as hp
from hcbpg.pg import progress as pgp


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_line_says_what_how_far_the_rate_and_the_time_left():
    s = hp.Sample("copy", "public.events", done=41 * 1048576, total=100 * 1048576, unit="bytes",
                  rate=12 * 1048576, eta=49)
    assert hp.render_line(s) == "copy public.events: 41% 41.0 MB of 100.0 MB, 12.0 MB/s, 49s left"
    unknown = hp.Sample("index", "i on public.t", done=0, total=None, unit="blocks", phase="sorting live tuples")
    assert hp.render_line(unknown) == "index i on public.t: sorting live tuples 0 blocks"
    assert hp.Sample("copy", "t", done=120, total=100).percent == 100.0  # an estimate below the truth is capped


def test_human_units():
    assert hp.human_seconds(59) == "59s" and hp.human_seconds(61) == "1m01s" and hp.human_seconds(3700) == "1h01m"
    assert hp.human_bytes(512) == "512 B" and hp.human_bytes(1536) == "1.5 kB"
    assert hp.human_count(1234567, "rows") == "1,234,567 rows"


def test_rate_and_time_left_from_the_samples_and_a_restart_resets_them():
    r = hp.Rate(window=30)
    r.add(0, 0)
    assert r.per_second is None and r.eta(100) is None
    r.add(10, 50)
    assert r.per_second == 5.0 and r.eta(100) == 10.0
    r.add(11, 5)  # the work started over
    assert r.per_second is None


def test_work_that_says_when_it_began_has_a_rate_from_its_first_sample():
    r = hp.Rate(window=30)
    r.add(100, 40, started_ago=8)  # a COPY whose statement began 8 s ago, 40 rows in
    assert r.per_second == 5.0 and r.eta(100) == 12.0
    rep = hp.Reporter(echo=lambda _line: None, every=0, clock=lambda: 100.0, live_file="")
    s = rep.update("copy", "public.events", done=40, total=100, unit="rows", started_ago=8)
    assert "5 rows/s" in hp.render_line(s) and "12s left" in hp.render_line(s), hp.render_line(s)


def test_throttle_lets_one_through_per_key_and_interval():
    clock = FakeClock()
    t = hp.Throttle(5, clock)
    assert t.ready("copy") and not t.ready("copy") and t.ready("index")
    clock.t += 4.9
    assert not t.ready("copy")
    clock.t += 0.2
    assert t.ready("copy")


def test_reporter_prints_a_short_record_and_sends_every_sample_to_the_live_file(tmp_path):
    clock = FakeClock()
    printed: list[str] = []
    live = tmp_path / "samples.jsonl"
    rep = hp.Reporter(echo=printed.append, every=5, clock=clock, live_file=str(live))
    for i in range(10):  # a sample a second for 10 s
        rep.update("copy", "public.events", done=i * 10, total=100, unit="rows")
        clock.t += 1
    # the first sample that knows how far it is, then one every 5 s
    assert printed == ["copy public.events: 0% 0 rows of 100 rows",
                       "copy public.events: 50% 50 rows of 100 rows, 10 rows/s, 5s left"]
    samples, offset = hp.read_samples(str(live), 0)
    assert len(samples) == 10 and offset == live.stat().st_size
    assert samples[-1][0].percent == 90.0 and samples[-1][0].eta == 1.0 and samples[-1][1] is False
    rep.finish("copy", "public.events", "copy public.events: done")
    assert printed[-1] == "copy public.events: done"
    more, _ = hp.read_samples(str(live), offset)
    assert [end for _, end in more] == [True]


def test_a_partial_last_line_is_left_for_the_next_read(tmp_path):
    f = tmp_path / "s.jsonl"
    whole = json.dumps(hp.Sample("copy", "t", 1, 2).as_dict())
    f.write_text(whole + "\n" + whole[:10])
    samples, offset = hp.read_samples(str(f), 0)
    assert len(samples) == 1 and offset == len(whole) + 1


def test_reporter_scrubs_what_it_shows(tmp_path):
    from hcbpg.secrets import register
    secret = register("s3cr3t-progress-value-0123")
    printed: list[str] = []
    rep = hp.Reporter(echo=printed.append, every=0, live_file=str(tmp_path / "l"))
    rep.update("download", f"https://x/{secret}", done=1, total=2)
    assert secret not in printed[0] and secret not in (tmp_path / "l").read_text()


def test_copy_rows_are_measured_against_the_source_estimate_else_its_heap_size():
    sizes = pgp.parse_sizes([{"name": "public.events", "bytes": 8192 * 100, "rows": 1000},
                             {"name": "public.users", "bytes": 8192 * 10, "rows": -1}])
    assert sizes == {"public.events": (819200, 1000), "public.users": (81920, None)}
    rows = [{"pid": 1, "name": "public.events", "bytes_processed": 4 * 1048576, "bytes_total": 0, "tuples_processed": 250,
             "running_s": 2.5},
            {"pid": 2, "name": "public.users", "bytes_processed": 40960, "bytes_total": 0, "tuples_processed": 7}]
    ev, us = pgp.plan_copy_progress(rows, sizes)
    assert (ev.what, ev.done, ev.total, ev.unit, ev.detail) == ("public.events", 250, 1000, "rows", "4.0 MB read")
    assert ev.started_ago == 2.5
    assert (us.done, us.total, us.unit, us.detail, us.started_ago) == (40960, 81920, "bytes", "7 rows", None)


def test_index_builds_name_the_index_from_the_statement_and_measure_the_phase():
    rows = [{"pid": 3, "table": "public.events", "phase": "building index: scanning table", "blocks_total": 200,
             "blocks_done": 50, "tuples_total": 0, "tuples_done": 0, "index": None,
             "query": "CREATE INDEX index_events_on_properties ON public.events USING gin (properties);"},
            {"pid": 4, "table": "public.users", "phase": "building index: loading tuples in tree", "blocks_total": 0,
             "blocks_done": 0, "tuples_total": 80, "tuples_done": 20, "index": None,
             "query": 'ALTER TABLE ONLY public.users ADD CONSTRAINT "users_pkey" PRIMARY KEY USING INDEX x'},
            {"pid": 5, "table": "public.t", "phase": "building index: sorting live tuples", "blocks_total": 0,
             "blocks_done": 0, "tuples_total": 0, "tuples_done": 0, "index": "public.t_idx", "query": ""}]
    a, b, c = pgp.plan_index_progress(rows)
    assert (a.what, a.phase, a.done, a.total, a.unit) == ("index_events_on_properties on public.events",
                                                         "scanning table", 50, 200, "blocks")
    assert (b.what, b.done, b.total, b.unit) == ('"users_pkey" on public.users', 20, 80, "tuples")
    assert (c.what, c.total) == ("public.t_idx on public.t", None)
    assert pgp.parse_index_name("create unique index if not exists ix on t (a)") == "ix"


def test_basebackup_progress():
    p = pgp.plan_basebackup_progress([{"phase": "streaming database files", "backup_streamed": 5,
                                       "backup_total": 10}], "server-2")
    assert p is not None and (p.kind, p.done, p.total, p.phase) == ("basebackup", 5, 10, "streaming database files")
    assert pgp.plan_basebackup_progress([], "server-2") is None


def test_pgbackrest_info_of_a_running_backup_gives_bytes_done_of_the_total():
    from hcbpg.pg.pgbackrest import parse_backup_progress
    running = json.dumps([{"name": "main", "backup": [], "status": {
        "code": 2, "message": "no valid backups",
        "lock": {"backup": {"held": True, "size": 109792819251, "size-cplt": 75161927680}}}}])
    assert parse_backup_progress(running, "main") == (75161927680, 109792819251)
    assert parse_backup_progress(running, "other") is None
    idle = json.dumps([{"name": "main", "status": {"code": 0, "lock": {"backup": {"held": False}}}}])
    assert parse_backup_progress(idle, "main") is None
    old = json.dumps([{"name": "main", "status": {"code": 0, "lock": {"backup": {"held": True}}}}])  # before 2.41
    assert parse_backup_progress(old, "main") is None
    assert parse_backup_progress("not json", "main") is None


def test_pgbackrest_info_text_gives_the_running_backups_percentage():
    from hcbpg.pg.pgbackrest import parse_backup_percent
    text = ("stanza: hcb_production\n    status: ok (backup/expire running - 45.12% complete)\n"
            "    cipher: aes-256-cbc\n")
    assert parse_backup_percent(text) == 45.12
    assert parse_backup_percent("stanza: main\n    status: ok\n") is None
    s = hp.Sample("backup", "full of stanza main", done=45.12, total=100.0, unit="percent", eta=30)
    assert hp.render_line(s) == "backup full of stanza main: 45% 30s left"


def test_the_watcher_samples_until_the_block_ends_and_a_failing_look_does_not_stop_it():
    import time

    from hcbpg.ops.progress import Watcher
    calls: list[float] = []

    def sample() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise RuntimeError("the database does not exist yet")

    with Watcher(sample, interval=0.02) as w:
        deadline = time.monotonic() + 10
        while len(calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    n = len(calls)
    time.sleep(0.1)
    assert n >= 4 and len(calls) == n  # it looked again after the failure, and stopped with the block
    assert w.errors == ["RuntimeError: the database does not exist yet"] and not w.thread.is_alive()
