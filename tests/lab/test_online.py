"""The online transfer against the lab (``source.transfer: online``, real Bucardo 5.6 on the primary):
06b, 07, 09 and 09b run by the real runner while the lab's app (:mod:`hcbpg.lab.app_load`) changes
the source until maintenance is on, stopping at every gate (approved with ``approve``, then ``resume``;
test_migration runs the same gates of 07 and 09 with the automatic approver); then the exact count in
the snapshots held since the window, the way back (writes on the new primary reach the source, also
those made before 09b started it), large objects refusing the mode, and the clean-up (16) leaving
nothing of Bucardo anywhere.  The whole runbook with the online transfer runs in ``test_rehearse``
(params/lab.yaml), 06 included (the dry-run restore: 06b's sync replaces what it restored on the
primary and nothing here reads it); test_migration runs 06 on its own.

The source is a copy of the lab's Heroku-like database (``hcb_online``, owned by the non-superuser
``heroku_owner``) with a table without a key added, so other modules' source is untouched.  The
tests run in file order and build on each other.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hcbpg.adapters.host import Host
from hcbpg.engine.runner import Runner, approve
from hcbpg.errors import DatabaseError, HcbpgError
from hcbpg.lab import app_load, destroy_server_host
from hcbpg.ops import migration
from hcbpg.ops import tls as tls_ops
from hcbpg.ops.migration import bucardo, wayback, window
from hcbpg.ops.migration import bucardo_service as bs
from hcbpg.params import parse_params
from hcbpg.secrets import register

from labparams import lab_params
from stages import load_source, private_file, run_home

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
STEPS = ["06b_online_sync", "07_cutover", "09_start_traffic", "09b_way_back",
         "16_online_cleanup"]
GATES = ["no-migrations-during-sync", "maintenance-on", "processes-stopped", "traffic-switch", "database-url-set",
         "processes-enabled", "maintenance-off"]
DB = "hcb_online"
STATE: dict = {}

#: the source copy, with a table that has no primary key (small: copied inside the window)
SETUP_SQL = f"""
SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DB}';
DROP DATABASE IF EXISTS {DB};
CREATE DATABASE {DB} TEMPLATE hcb_heroku OWNER heroku_owner;
\\connect {DB}
SET ROLE heroku_owner;
CREATE TABLE audit_nokey (at timestamp NOT NULL DEFAULT now(), what text);
INSERT INTO audit_nokey (what) SELECT 'row ' || i FROM generate_series(1, 300) i;
"""

@pytest.fixture(scope="module")
def env(lab, tmp_path_factory, monkeypatch_module, primary_stage):
    """A source copy, params with transfer online, notebooks 06-16, a primary after steps 02-04."""
    cfg = lab.cfg
    load_source(lab, SETUP_SQL)
    ip = primary_stage.clone()  # steps 02-04, built once per worker (stages.py), with the lab's rails password
    tmp = tmp_path_factory.mktemp("online")
    pw_file = private_file(tmp / "secrets" / "rails-password", cfg.secret_path("rails-password").read_text())
    url = register(lab.secret("source-url").replace("/hcb_heroku?", f"/{DB}?"))
    url_file = private_file(tmp / "secrets" / "source-url", url + "\n")
    data = lab_params(lab, [("server-postgres-1", ip, "primary")],
                      postgres={"app_role_password": f"file:{pw_file}"},
                      source={"method": "pg_dump", "url": f"file:{url_file}", "jobs": 2, "transfer": "online",
                              # the lab source's certificate is the lab CA's: every connection verify-full
                              "ca_file": str(cfg.ca_cert),
                              # Bucardo's own onetimecopy here; the rehearsal (test_rehearse) copies with the stream,
                              # the default, both while the lab's app writes
                              "online": {"drain_timeout_s": 60, "way_back_hours": 1, "window_copy_max_rows": 1000,
                                         "initial_copy_timeout_s": 600, "initial_copy": "bucardo"}},
                      allow_destructive=False)
    home = run_home(tmp, data, STEPS, monkeypatch_module, on_demand=tuple(s for s in STEPS if s.startswith("16")))
    nb_dir = home / "notebooks"
    params = parse_params(data)
    host = Host.from_params(params, "server-postgres-1", ip)
    app = Host.from_params(params, "app", cfg.app_ip)
    register(pw_file.read_text().strip())
    tls_ops.ensure_client_ca(app, params)  # as step 03 does: the app host verifies the primary
    app.put_text(app_load.SERVICE_FILE, app_load.render_service_file(migration.parse_source_url(url)), mode=0o600)
    yield SimpleNamespace(lab=lab, params=params, home=home, nb_dir=nb_dir, host=host, app=app, pw_file=pw_file,
                          url=url, source=migration.Source(host, url))
    app.run(f"touch {app_load.STOP}; rm -f {app_load.SERVICE_FILE}", check=False, quiet=True)
    try:  # whatever a failed test left of Bucardo on the source copy goes with it
        bucardo.run_stop(host, params)
    except HcbpgError:
        pass
    host.close()
    app.close()
    destroy_server_host("server-postgres-1", lab_dir=str(lab.lab_dir))
    lab.exec("source", ["psql", "-X", "-q", "-d", "postgres"], user="postgres", timeout=120,
             input=f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{DB}';\n"
                   f"DROP DATABASE IF EXISTS {DB};\n")


def test_the_source_role_cannot_create_a_logical_replication_slot(env):
    """Like Heroku: no superuser, no replication privilege, so the online mode cannot lean on a slot."""
    with env.source as source:
        role = source.json("SELECT row_to_json(r) FROM (SELECT rolsuper, rolreplication FROM pg_roles "
                           "WHERE rolname = current_user) r")
        with pytest.raises(DatabaseError, match="permission denied|must be superuser or replication role"):
            source.json("SELECT pg_create_logical_replication_slot('hcbpg_probe', 'pgoutput')::text")
    assert role == {"rolsuper": False, "rolreplication": False}


def source_sql(env, statement: str) -> None:  # noqa: ANN001
    """A statement on the source as its owner (the Heroku-like role), from the primary."""
    with env.source as source:
        source.script(statement + ";\n", display=statement)


#: rows in Bucardo's delta tables of a database (the changes it recorded to sync from there)
DELTA_ROWS_SQL = ("SELECT json_build_object('tables', count(*), 'rows', coalesce(sum((xpath('/row/n/text()', "
                  "query_to_xml(format('SELECT count(*) AS n FROM bucardo.%I', c.relname), false, true, '')))[1]"
                  "::text::bigint), 0)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE n.nspname = 'bucardo' AND c.relkind = 'r' AND c.relname LIKE 'delta\\_%'")

#: written on the new primary as the app, after the window and before 09b starts the way back
GAP_WRITE = ("UPDATE users SET full_name = 'written before 09b' WHERE id = 9;\n"
             "INSERT INTO events (user_id, name, properties, created_at) VALUES (9, 'before-09b', '{}', now()) "
             "RETURNING id;\n")


def test_the_online_runbook_moves_every_row_written_before_maintenance_on(env):
    # 3 writes of each kind a second (each one psql with TLS and SCRAM from the app host): some 150 before
    # maintenance-on, where the check needs more than 20, at a third of the CPU 10 a second took
    env.app.run(app_load.render_start(3, users=2000, transactions=6000), display="start the lab app's writes")
    runner = Runner(base=env.home, nb_dir=env.nb_dir, progress_bar=False)
    result = runner.start("lab")
    seen = []
    gap_event = None
    while result.exit_code == 3:
        gates = result.run.read()["gates"]
        waiting = [g for g, v in gates.items() if not v.get("approved_at")]
        assert len(waiting) == 1, gates
        if waiting[0] == "maintenance-on":  # the app stops writing
            env.app.run(app_load.STOP_COMMAND, display="maintenance on: the lab app's writes stop")
        if waiting[0] == "traffic-switch":
            # the way back armed in 06b recorded nothing of the forward sync's writes (Bucardo applies them as
            # session_replication_role = replica): its delta tables on the primary are empty before traffic
            assert migration.get_target(env.host, env.params).json(DELTA_ROWS_SQL) == {"tables": 5, "rows": 0}
        if waiting[0] == "processes-enabled":
            # the app's processes write on the new primary before 09b starts the way back: the triggers armed
            # in 06b record it, so it reaches the source too
            res = migration.run_app_psql(env.app, env.params, register(env.pw_file.read_text().strip()), GAP_WRITE,
                                     server_ip=env.params.primary.private_ip, display="write before 09b")
            assert res.ok, res.output
            gap_event = int(res.stdout.split()[-1])
        seen.append(waiting[0])
        approve(result.run.run_id, waiting[0], note="lab test", base=env.home)
        if waiting[0] == "maintenance-on":
            # a deploy with a migration on the source since 06b: 07's drift guard stops the cutover before
            # anything reaches the target, naming the table; once the schemas match again it goes on
            source_sql(env, "ALTER TABLE public.users ADD COLUMN drift_probe integer")
            try:
                drifted = runner.resume(result.run.run_id)
            finally:
                source_sql(env, "ALTER TABLE public.users DROP COLUMN drift_probe")
            assert drifted.status == "failed", drifted.message
            assert "schema unchanged: tables" in drifted.message and "users" in drifted.message, drifted.message
        result = runner.resume(result.run.run_id)
    assert result.status == "succeeded", result.message
    assert seen == GATES
    log = app_load.parse_log(env.app.read_text(app_load.LOG) or "")
    assert len(log.inserted) > 20 and log.stopped, log
    lost = app_load.check_on_primary(log, migration.get_target(env.host, env.params).json)
    assert lost == [], f"writes made before maintenance-on are missing on the primary: {lost[:10]}"
    import scrapbook as sb
    nb = sb.read_notebook(str(result.run.path / "07_cutover.ipynb"))
    cut = nb.scraps["cutover"].data
    assert cut["checks"]["fail"] == 0 and cut["checks"]["warn"] == 0, cut["checks"]
    assert set(cut["phases"]) >= {"drain_s", "sequences_s", "window_copy_s", "checks_s", "snapshots_s"}
    assert cut["sentinel"].startswith("hcbpg last write ")
    text = (result.run.path / "07_cutover.ipynb").read_text()
    assert "last-write sentinel from the source read back from the app host" in text
    assert "copied inside the window: public.audit_nokey" in text
    assert "sequences at the source" in text
    nb06b = (result.run.path / "06b_online_sync.ipynb").read_text()
    assert "no key: copied whole inside the window" in nb06b and "public.audit_nokey" in nb06b
    assert "initial copy" in nb06b and "lag" in nb06b and "way back armed" in nb06b
    # 09b counted every row of both sides in the snapshots 07 held as the writes stopped: the write made on
    # the primary after the window is not in them, so the counts still match; then the snapshots are gone
    ver = sb.read_notebook(str(result.run.path / "09b_way_back.ipynb")).scraps["online_verification"].data
    assert ver["fail"] == 0 and ver["tables"] == 6 and ver["rows"] > 1000, ver
    assert window.get_held_snapshots(env.host) is None
    assert migration.get_target(env.host, env.params).json(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hcbpg-migration'") == 0
    manifest = result.run.read()
    assert set(manifest["downtime"]["phases_s"]) >= {"drain_s", "sequences_s", "checks_s", "snapshots_s"}
    with env.source as source:
        for _ in range(60):
            got = source.json(f"SELECT json_build_object('name', (SELECT full_name FROM public.users WHERE id = 9), "
                              f"'event', (SELECT count(*) FROM public.events WHERE id = {gap_event}))")
            if got == {"name": "written before 09b", "event": 1}:
                break
            time.sleep(1)
    assert got == {"name": "written before 09b", "event": 1}, "a write made before 09b did not reach the source"
    STATE.update(run=result.run, inserted=len(log.inserted), password=register(env.pw_file.read_text().strip()),
                 downtime=manifest["downtime"])
    print(f"app load: {log.writes} writes; downtime {manifest['downtime']}")


def test_bucardos_service_file_is_on_tmpfs_and_verifies_the_source_with_its_ca(env):
    """Issue 23, 6: the source's password for Bucardo is never on disk (a 0600 file on tmpfs, the postgres
    user's libpq path a symlink to it), and Bucardo checks the source's certificate and name against
    source.ca_file (verify-full) as the migration's own sessions do; no require_auth with the lab's libpq 15."""
    res = env.host.run(f"readlink {bs.SERVICE_LINK}; findmnt -n -o FSTYPE -T {bs.SERVICE_FILE}; "
                       f"stat -c '%U %a' {bs.SERVICE_FILE}; "
                       f"grep -E '^(sslmode|sslrootcert|require_auth)=' {bs.SERVICE_FILE}; "
                       "dpkg-query -W -f '${Version}\\n' libpq5", quiet=True)
    link, fstype, owner, *settings, libpq = res.stdout.strip().split("\n")
    assert (link, fstype, owner) == (bs.SERVICE_FILE, "tmpfs", "postgres 600"), res.stdout
    assert {"sslmode=verify-full", f"sslrootcert={migration.SOURCE_CA_PATH}"} <= set(settings), settings
    assert ("require_auth=scram-sha-256" in settings) == (int(libpq.split(":")[-1].split(".")[0]) >= 16), settings


def test_the_exact_count_in_held_snapshots_names_a_table_the_primary_lacks_rows_of(env):
    """A row missing on the primary when the snapshots are taken fails 09b's verification, naming the table,
    even though the source and the primary change afterwards."""
    tgt = migration.get_target(env.host, env.params)
    tgt.script("SET session_replication_role = replica;\n"
               "DELETE FROM public.audit_nokey WHERE what = 'row 1';\n", display="lose a row on the primary")
    try:
        window.run_hold_snapshots(env.host, env.params, env.source)
        tgt.script("INSERT INTO public.audit_nokey (what) VALUES ('row 1');\n", display="the row back, later")
        ver = window.check_held_rows(env.host, env.params, env.source)
    finally:
        tgt.script("DELETE FROM public.audit_nokey WHERE what = 'row 1';\n"
                   "INSERT INTO public.audit_nokey (what) VALUES ('row 1');\n", display="the row as on the source")
    bad = [c for c in ver.checks if c.status == "fail"]
    assert [(c.name, c.detail) for c in bad] == [("rows public.audit_nokey", "source 300, target 299 (-1)")], bad
    assert window.get_held_snapshots(env.host) is None  # released after the count, failed or not


def test_after_traffic_is_on_writes_on_the_new_primary_reach_the_source(env):
    assert wayback.get_way_back(env.host), "09b did not set up the way back"
    marker = f"way back {time.time():.0f}"
    res = migration.run_app_psql(env.app, env.params, STATE["password"],
                             f"UPDATE users SET full_name = '{marker}' WHERE id = 7;\n"
                             "INSERT INTO events (user_id, name, properties, created_at) "
                             "VALUES (7, 'after-cutover', '{}', now()) RETURNING id;\n",
                             server_ip=env.params.primary.private_ip, display="write on the new primary as rails")
    assert res.ok, res.output
    new_id = int(res.stdout.split()[-1])
    with env.source as source:
        for _ in range(60):
            got = source.json(f"SELECT json_build_object('name', (SELECT full_name FROM public.users WHERE id = 7), "
                              f"'event', (SELECT count(*) FROM public.events WHERE id = {new_id}))")
            if got == {"name": marker, "event": 1}:
                break
            time.sleep(1)
    assert got == {"name": marker, "event": 1}, got


def test_large_objects_on_the_source_refuse_the_online_mode_naming_them(env):
    with env.source as source:
        oid = source.json("SELECT lo_from_bytea(0, 'hcbpg')::bigint")
        try:
            plan = bucardo.get_sync_plan(source, env.params)
        finally:
            source.execute([f"SELECT lo_unlink({oid})"])
    bad = [c for c in plan.checks if c.status == "fail"]
    assert [c.name for c in bad] == ["no large objects on the source"]
    assert "1 large objects" in bad[0].detail and "source.transfer: directory" in bad[0].detail


def test_the_clean_up_ends_the_way_back_and_leaves_no_bucardo_object(env):
    runner = Runner(base=env.home, nb_dir=env.nb_dir, progress_bar=False)
    result = runner.start("lab", only="16_online_cleanup")
    assert result.exit_code == 3  # the period (1 h) is not over: it asks first
    approve(result.run.run_id, "end-way-back-early", note="lab test", base=env.home)
    result = runner.resume(result.run.run_id)
    assert result.status == "succeeded", result.message
    import scrapbook as sb
    removed = sb.read_notebook(str(result.run.path / "16_online_cleanup.ipynb")).scraps["online_cleanup"].data
    what = {r["what"] for r in removed}
    print("removed by 16:", *(f"{r['where']}: {r['what']}" for r in removed), sep="\n  ")
    assert "schema bucardo" in what and any(w.startswith("trigger ") and "bucardo" in w for w in what), what
    assert any(w.startswith("foreign key ") for w in what) and any(w.startswith("database bucardo") for w in what)
    checks = wayback.check_removed(env.host, env.params, env.source)
    assert all(c.status == "pass" for c in checks), checks
    with env.source as source:
        assert source.json("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND condeferrable") == 0
    res = migration.run_app_psql(env.app, env.params, STATE["password"],
                             "UPDATE users SET full_name = 'after the period' WHERE id = 8;\n",
                             server_ip=env.params.primary.private_ip, display="write on the primary after the period")
    assert res.ok
    time.sleep(3)  # the way back, while it ran, brought a write over in about a second (the test above)
    with env.source as source:
        assert source.json("SELECT to_json(full_name) FROM public.users WHERE id = 8") != "after the period"


def test_no_secret_in_the_record_or_on_a_command_line(env):
    secrets = [migration.parse_source_url(env.url)["password"], STATE["password"]]
    for run_dir in {STATE["run"].path, *env.home.joinpath("outputs", "lab").iterdir()}:
        for f in run_dir.rglob("*"):
            if f.is_file():
                text = f.read_text(errors="replace")
                assert not any(s in text for s in secrets), f"a secret is in {f}"
    for h in (env.host, env.app):
        for r in h.history:
            assert not any(s in r.command for s in secrets), r.command
