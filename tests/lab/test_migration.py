"""The migration against the lab: 06 (dry run), 07 (cutover) and 09 (start traffic) run by the real
runner from the Heroku-like source into a fresh primary, every gate approved with ``approve`` and
``resume``; then a deleted row that must fail verification, and the production schema (191 tables).

The tests run in file order and build on each other, on one primary made through the lab's
hook (a clone of the shared stage: steps 02-04 done once per worker).  Run under the lab lock:

    flock /tmp/hcbpg-lab.lock pytest tests/lab/test_migration.py
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.host import Host
from hcbpg.engine import runbook as rbmod
from hcbpg.engine.runner import Runner
from hcbpg.errors import SafetyCheckFailed, VerificationFailed
from hcbpg.lab import destroy_server_host
from hcbpg.ops import migration
from hcbpg.ops import tls as tls_ops
from hcbpg.params import parse_params
from hcbpg.secrets import register
from hcbpg.steps import _migration as migration_steps

from labparams import lab_params
from nbutil import read_env_file

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO.parent / "shared" / "datasets" / "hcb_schema.sql"
STEPS = ["06_dry_run_restore", "07_cutover", "09_start_traffic"]
GATES = ["maintenance-on", "processes-stopped", "traffic-switch", "database-url-set", "processes-enabled",
         "maintenance-off"]
#: what the tests learn and later tests use
STATE: dict = {}

#: fills every table of public with 5 rows: NOT NULL columns get values of their type, ids and
#: integer columns 1..5, so NOT NULL foreign keys point at rows that exist
FILL_SQL = r"""
SET session_replication_role = replica;
DO $fill$
DECLARE
  t record; c record; cols text; vals text; failed text := '';
BEGIN
  FOR t IN SELECT cl.oid, cl.relname FROM pg_class cl JOIN pg_namespace ns ON ns.oid = cl.relnamespace
           WHERE ns.nspname = 'public' AND cl.relkind = 'r' ORDER BY cl.relname LOOP
    cols := ''; vals := '';
    FOR c IN SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS typ, ty.typcategory AS cat
             FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
             WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull
               AND (NOT a.atthasdef OR a.attname = 'id') ORDER BY a.attnum LOOP
      cols := cols || CASE WHEN cols = '' THEN '' ELSE ', ' END || quote_ident(c.attname);
      vals := vals || CASE WHEN vals = '' THEN '' ELSE ', ' END || CASE
        WHEN c.cat = 'N' THEN 'i' WHEN c.cat = 'B' THEN 'false' WHEN c.cat = 'D' THEN 'now()'
        WHEN c.typ IN ('jsonb', 'json') OR c.cat = 'A' THEN '''{}'''
        WHEN c.typ = 'uuid' THEN 'gen_random_uuid()' WHEN c.typ = 'inet' THEN '''10.0.0.1'''
        ELSE quote_literal(t.relname || '-' || c.attname || '-') || ' || i' END || '::' || c.typ;
    END LOOP;
    BEGIN
      IF cols = '' THEN
        EXECUTE format('INSERT INTO %I SELECT FROM generate_series(1, 5) i', t.relname);
      ELSE
        EXECUTE format('INSERT INTO %I (%s) SELECT %s FROM generate_series(1, 5) i', t.relname, cols, vals);
      END IF;
    EXCEPTION WHEN OTHERS THEN failed := failed || t.relname || ': ' || SQLERRM || '; ';
    END;
  END LOOP;
  IF failed <> '' THEN RAISE EXCEPTION 'not filled: %', failed; END IF;
END
$fill$;
RESET session_replication_role;
SELECT setval(format('%I.%I', schemaname, sequencename), 100) FROM pg_sequences WHERE schemaname = 'public';
"""


@pytest.fixture(scope="module")
def env(lab, tmp_path_factory, monkeypatch_module, primary_stage):
    """A home with params for this lab, a notebooks dir with 06/07/09, and a primary after steps 02-04."""
    cfg = lab.cfg
    ip = primary_stage.clone()  # steps 02-04, built once per worker (stages.py), with the lab's rails password
    tmp = tmp_path_factory.mktemp("migration")
    # the rotation rewrites the password's secret: use a copy, not the lab's own file
    pw_file = tmp / "secrets" / "rails-password"
    pw_file.parent.mkdir(mode=0o700)
    shutil.copy(cfg.secret_path("rails-password"), pw_file)
    pw_file.chmod(0o600)
    data = lab_params(lab, [("server-postgres-1", ip, "primary")],
                      postgres={"app_role_password": f"file:{pw_file}"},
                      source={"method": "pg_dump", "url": f"file:{cfg.secret_path('source-url')}", "jobs": 2,
                              "sentinel": {"table": "users", "id": 1803, "column": "full_name"}},
                      allow_destructive=False)
    home = tmp / "home"
    (home / "params").mkdir(parents=True)
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    nb_dir = home / "notebooks"
    nb_dir.mkdir()
    for s in STEPS:
        shutil.copy(REPO / "notebooks" / f"{s}.ipynb", nb_dir)
    (nb_dir / "steps.yaml").write_text(yaml.safe_dump(
        {"steps": [{"notebook": f"{s}.ipynb", "title": s} for s in STEPS]}))
    for k, v in {"HCBPG_HOME": str(home), "HCBPG_NOTEBOOKS": str(nb_dir), "HCBPG_STATE_DIR": str(tmp / "state"),
                 "HCBPG_OPERATOR": "lab-test", "XDG_STATE_HOME": str(tmp / "xdg")}.items():
        monkeypatch_module.setenv(k, v)
    for k in ("HCBPG_SCRUB_FILE", "HCBPG_HEADLESS", "HCBPG_AUTO_APPROVE"):
        monkeypatch_module.delenv(k, raising=False)
    params = parse_params(data)
    host = Host.from_params(params, "server-postgres-1", ip)
    app = Host.from_params(params, "app", cfg.app_ip)
    tls_ops.ensure_client_ca(app, params)  # as step 03 does
    register(pw_file.read_text().strip())
    yield SimpleNamespace(lab=lab, params=params, data=data, home=home, nb_dir=nb_dir, host=host, app=app,
                          pw_file=pw_file, tmp=tmp, source_url=register(lab.secret("source-url")))
    host.close()
    app.close()
    destroy_server_host("server-postgres-1", lab_dir=str(lab.lab_dir))


#: rows added to the source's events (copies of the seeded ones) so that 07's copy and its GIN index take a
#: few seconds: long enough for the progress views to be seen.  Added once 06 is done (by the automatic approver
#: of 07's first gate, before it approves) and removed as soon as the runner's test ends: 06 and the later tests'
#: transfers move the seeded source only
GROW_EVENTS = 50

#: what the automatic approver of maintenance-on runs first (argv: lab dir, highest seeded id): the source's
#: events table 51 times its seeded size, analyzed (its estimate is what progress is measured against)
GROW_SCRIPT = """
import sys
from hcbpg.lab import Lab
top = int(sys.argv[2])
sql = ("INSERT INTO public.events (user_id, name, properties, created_at) SELECT e.user_id, e.name, e.properties, "
       f"e.created_at FROM public.events e, generate_series(1, {GROW}) WHERE e.id <= {top};\\n"
       "ANALYZE public.events;\\n")
cp = Lab(sys.argv[1]).exec("source", ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "hcb_heroku"], input=sql,
                           user="postgres", timeout=300)
sys.exit(f"growing the source's events failed: {cp.stderr[-2000:]}" if cp.returncode else 0)
""".replace("{GROW}", str(GROW_EVENTS))


def seeded_top(env) -> int:  # noqa: ANN001
    """The highest seeded id of the source's events (what :func:`shrink_events` keeps)."""
    with migration.Source(env.host, env.source_url) as source:
        return int(source.json("SELECT max(id) FROM public.events"))


def shrink_events(env, top: int) -> None:  # noqa: ANN001
    """The rows the automatic approver of maintenance-on added (:data:`GROW_SCRIPT`), gone."""
    with migration.Source(env.host, env.source_url) as source:
        source.execute([f"DELETE FROM public.events WHERE id > {top}", "VACUUM ANALYZE public.events"])


def snapshot(host: Host) -> str:
    return host.probe("ls /var/tmp /run; ls -l /etc/postgresql/15/main/conf.d; "
                      "sudo -u postgres psql -X -At -c 'SELECT datname, shobj_description(oid, $$pg_database$$) "
                      "FROM pg_database ORDER BY 1'").stdout


def test_plan_reads_only_and_shows_what_would_be_dropped(env):
    before = snapshot(env.host)
    source = migration.Source(env.host, env.source_url)
    plan = migration.get_migration_plan(env.host, env.params, source)
    assert [c for c in plan.checks if c.status != "pass"] == []
    actions = " ".join(a for o in plan.outcomes for a in o.actions)
    assert "drop database hcb_production (it has no tables (as step 04 created it))" in actions
    assert "CREATE SCHEMA heroku_ext AUTHORIZATION rails" in actions
    assert "full_page_writes off" in actions and "wal_level stays replica" in actions
    assert snapshot(env.host) == before


def test_runner_does_dry_run_cutover_and_traffic_switch_through_every_gate(env, monkeypatch):
    """06, 07 and 09 in one runner call, every gate approved by the automatic approver (signed, bound to the
    params and plan, as `hcbpg approve` does); the headless stop at each of these gates, `approve` and `resume`
    are test_online's (the same gates of 07 and 09, run by the real runner gate by gate)."""
    t0 = time.monotonic()
    old_password = env.pw_file.read_text().strip()
    terminal: list[str] = []
    top = seeded_top(env)
    script = env.tmp / "grow_events.py"
    script.write_text(GROW_SCRIPT)
    # 06 is done and 07 waits at its first gate: its copy gets rows enough to be watched, then the approval
    monkeypatch.setenv(rbmod.AUTO_APPROVE_ENV, "lab test")  # the runner sets it too: gone after this test
    monkeypatch.setenv(rbmod.AUTO_ACTIONS_ENV, json.dumps(
        {"maintenance-on": [sys.executable, str(script), str(env.lab.lab_dir), str(top)]}))
    # a terminal line per kind of work every 0.5 s (2 s by default): the grown copy and its GIN build take a
    # second or two each here, and a line with a rate needs a sample before it
    runner = Runner(base=env.home, nb_dir=env.nb_dir, progress_bar=False, progress=terminal.append,
                    auto_approve="lab test", live_every=0.5)
    try:
        result = runner.start("lab")
    finally:
        shrink_events(env, top)
    assert result.status == "succeeded", result.message
    manifest = result.run.read()
    gates = manifest["gates"]
    assert list(gates) == GATES, list(gates)  # every gate asked, in this order
    assert all(g["approved_at"] and g["approved_by"] == "lab test" and g["proof"] for g in gates.values()), gates
    assert "after: " in gates["maintenance-on"]["note"], gates["maintenance-on"]  # the source grew first
    dt = manifest["downtime"]
    assert dt["maintenance_on_at"] == manifest["gates"]["maintenance-on"]["approved_at"]
    assert dt["traffic_on_at"] == manifest["gates"]["maintenance-off"]["approved_at"]
    assert dt["total_s"] > 0 and set(dt["phases_s"]) == {"dump_s", "restore_s", "verify_s"}
    new_password = register(env.pw_file.read_text().strip())
    assert new_password != old_password
    STATE.update(run=result.run, old=old_password, new=new_password, terminal=terminal)
    print(f"06 + 07 + 09 through 6 gates in {time.monotonic() - t0:.1f}s; downtime record {dt}")


def test_the_terminal_and_the_notebook_show_progress_of_the_copy_and_the_index_builds(env):
    """While 07 streams the (grown) source: the terminal gets a live line every live_every seconds for the table
    copy and for an index build, each with a percentage; the notebook keeps a shorter record."""
    import re
    terminal = STATE["terminal"]
    pct = re.compile(r"\b\d{1,3}%")
    live = [line for line in terminal if line.startswith("      ~ ")]
    copies = [line for line in live if line.startswith("      ~ copy public.") and pct.search(line)]
    builds = [line for line in live if line.startswith("      ~ index ") and " on public." in line and pct.search(line)]
    assert copies and builds, "\n".join(terminal)
    assert any("/s" in line and "left" in line for line in copies + builds), "\n".join(live)  # rate and time left
    nb = json.loads((STATE["run"].path / "07_cutover.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", [])
                      if o.get("output_type") == "stream").splitlines()
    nb_copies = [line for line in printed if line.startswith("copy public.") and pct.search(line)]
    nb_builds = [line for line in printed if line.startswith("index ") and pct.search(line)]
    assert nb_copies and nb_builds, "\n".join(printed)
    assert len(nb_copies) + len(nb_builds) <= len([line for line in live if pct.search(line)]), (nb_copies, live)
    print(f"terminal: {len(live)} live lines; notebook: {len(nb_copies)} copy and {len(nb_builds)} index lines\n"
          + "\n".join(copies[:3] + builds[:3]))


def test_every_verification_row_matched_in_the_dry_run_and_the_cutover(env):
    import scrapbook as sb
    run = STATE["run"]
    for step, key in (("06_dry_run_restore", "dry_run_restore"), ("07_cutover", "cutover")):
        data = sb.read_notebook(str(run.path / f"{step}.ipynb")).scraps[key].data
        assert data["checks"]["fail"] == 0 and data["checks"]["warn"] == 0, (step, data["checks"])
        assert data["tables"] == 5 and data["rows"] > 20_000
        STATE[key] = data


def test_the_sentinel_written_last_on_the_source_is_read_back_on_the_primary_from_the_app_host(env):
    sentinel = STATE["cutover"]["sentinel"]
    assert sentinel.startswith("hcbpg last write ")
    checks = migration.check_from_app(env.app, env.params, STATE["new"], server_ip=env.params.primary.private_ip,
                                      newest_event=None, expect=sentinel)
    assert all(c.status == "pass" for c in checks), checks
    with migration.Source(env.host, env.source_url) as source:
        on_source = source.json("SELECT to_json(full_name) FROM public.users WHERE id = 1803")
    assert on_source == sentinel


def test_after_the_cutover_the_old_password_is_refused_and_the_new_one_works(env):
    checks = migration.check_passwords(env.app, env.params, old=STATE["old"], new=STATE["new"],
                                       server_ip=env.params.primary.private_ip)
    assert [c.status for c in checks] == ["pass", "pass"], checks


def test_the_streamed_transfer_builds_each_tables_indexes_and_validates_its_foreign_keys(env):
    """The default transfer as 07 ran it: keys are real constraints, foreign keys validated, rows frozen."""
    tgt = migration.get_target(env.host, env.params)
    rows = tgt.rows("SELECT c.conname, c.contype::text AS contype, c.convalidated, i.indisprimary, i.indisunique "
                    "FROM pg_constraint c LEFT JOIN pg_index i ON i.indexrelid = c.conindid AND c.contype IN ('p', 'u') "
                    "WHERE c.connamespace = 'public'::regnamespace AND c.contype IN ('p', 'u', 'f') ORDER BY 1")
    keys = [r for r in rows if r["contype"] in ("p", "u")]
    fks = [r for r in rows if r["contype"] == "f"]
    assert keys and all(r["indisunique"] and (r["indisprimary"] == (r["contype"] == "p")) for r in keys), keys
    assert len(fks) == 3 and all(r["convalidated"] for r in fks), fks
    frozen = tgt.json("SELECT (SELECT relallvisible FROM pg_class WHERE oid = 'public.events'::regclass) > 0")
    assert frozen is True


def test_the_build_plan_ranks_the_costliest_builds_of_all_tables_first(env):
    """The build plan of the lab's source, as the streamed transfer's session reads it: a line's number is
    its rank in the workers' queue, so the events table's GIN index comes first of every table's builds,
    before the events table's B-trees and every other table's, and the foreign keys come last."""
    with migration.Source(env.host, env.source_url) as source:
        plan = source.script("SET search_path = pg_catalog;\n" + migration.BUILDS_SQL, display="the build plan",
                             quiet=True).stdout
    entries = [f.split("\x1f") for f in plan.splitlines() if f.count("\x1f") >= 3]
    builds = [e for e in entries if e[1] in ("I", "K")]
    assert builds[0][3].split()[-1] == "index_events_on_properties", builds[:3]
    events = [e[3].split()[-1] for e in builds if e[3].split()[2].startswith(("index_events", "events"))]
    assert events[0] == "index_events_on_properties" and len(events) == 3, events
    kinds = [e[1] for e in entries]
    assert "F" in kinds and kinds.index("F") > max(i for i, k in enumerate(kinds) if k != "F"), kinds


def test_no_secret_in_any_output_of_the_run(env):
    secrets = [STATE["old"], STATE["new"], env.source_url, migration.parse_source_url(env.source_url)["password"]]
    for f in STATE["run"].path.rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            for s in secrets:
                assert s not in text, f"a secret is in {f}"
    urls = (env.tmp / "xdg" / "hcbpg" / "lab" / "app-database-urls.env")
    assert oct(urls.stat().st_mode & 0o777) == "0o600" and STATE["new"] in urls.read_text()
    # both URLs the operator hands to the app verify the server's certificate against the environment's CA
    handed = read_env_file(urls)
    for name in ("DATABASE_URL", "BLAZER_DATABASE_URL"):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(handed[name]).query)
        assert query.get("sslmode") == ["verify-full"] and query.get("sslrootcert"), (name, query)
    nb09 = (STATE["run"].path / "09_start_traffic.ipynb").read_text()
    assert f"postgres://rails:[secret]@{env.params.primary.private_ip}:5432/hcb_production" in nb09


def test_the_live_database_is_not_dropped_again(env):
    with pytest.raises(SafetyCheckFailed, match="live database"):
        migration.run_fresh_database(DryRunHost(env.host), env.params, {"postmaster_start": "x"})


def _rb(params, step: str) -> rbmod.Runbook:
    return rbmod.Runbook("lab", run_id="", run_dir="", dry_run=False, step=step, params=params, base=Path("/nonexistent"))


def test_a_row_deleted_from_the_target_before_verification_fails_the_step_naming_the_table(env):
    params = env.params.model_copy(update={"allow_destructive": True})  # the target is live now
    host = env.host
    with migration.Source(host, env.source_url) as source:
        facts = migration.get_source_facts(source)
        dump = migration.run_dump(host, params, source, "deleted-row")
        migration.run_restore(host, params, dump, facts, run_label="lab test")
        migration.ensure_dump_removed(host, dump)
        migration.get_target(host, params).execute(["DELETE FROM public.transactions WHERE id = 17"])
        ver = migration.check_restore(host, params, source, dump, live_source=True)
    with pytest.raises(VerificationFailed) as exc:
        migration_steps.verify(_rb(params, "06_dry_run_restore"), ver.checks, rollback=migration.ROLLBACK)
    assert exc.value.failures == ["rows public.transactions"]
    assert "rows public.transactions" in str(exc.value) and "(-1)" in str(exc.value)
    assert "Turn maintenance mode off" in str(exc.value)


def test_the_production_schema_dry_run_accounts_for_every_object(env):
    if not SCHEMA.is_file():
        pytest.skip(f"{SCHEMA} is not here")
    lab = env.lab
    setup = ("DROP DATABASE IF EXISTS hcb_schema;\nCREATE DATABASE hcb_schema OWNER heroku_owner;\n\\connect hcb_schema\n"
             "CREATE SCHEMA heroku_ext AUTHORIZATION heroku_owner;\nCREATE EXTENSION citext SCHEMA heroku_ext;\n"
             "CREATE EXTENSION pg_stat_statements SCHEMA heroku_ext;\n"
             "ALTER DATABASE hcb_schema SET search_path = \"$user\", public, heroku_ext;\n"
             "\\connect hcb_schema\nSET ROLE heroku_owner;\nBEGIN;\n" + SCHEMA.read_text() + "\nCOMMIT;\nRESET ROLE;\n"
             + FILL_SQL)
    t0 = time.monotonic()
    cp = lab.exec("source", ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"], input=setup,
                  user="postgres", timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]
    url = register(env.source_url.split("?")[0].rsplit("/", 1)[0] + "/hcb_schema?sslmode=require")
    url_file = env.tmp / "secrets" / "schema-url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    # a dump and pg_restore -j (source.transfer: directory): the restore production's `method: heroku` runs (a
    # pg_dump -Fc restored by the same run_restore and TOC filter), in a few connections; the stream's workers
    # start a psql or pg_restore per table, index and key (~2,500 processes here: two minutes of CPU on a busy
    # machine), and 06/07 above run the stream on the lab source
    src = env.params.source.model_copy(update={"url": f"file:{url_file}", "transfer": "directory",
                                               "sentinel": env.params.source.sentinel.model_copy(update={"id": 1})})
    params = env.params.model_copy(update={"source": src, "allow_destructive": True})
    source = migration.Source(env.host, url)
    plan = migration.get_migration_plan(env.host, params, source)
    res = migration_steps.run_migration(env.host, params, source, plan.facts, tag="schema", run_label="lab test",
                                  live_source=True, app=env.app, password=STATE["new"],
                                  sentinel_write="hcbpg schema sentinel")
    bad = [c for c in res.verification.checks if c.status != "pass"]
    assert not bad, bad
    assert res.dump.format == "directory"
    counts = {r["what"]: (r["source"], r["target"]) for r in res.verification.table}
    assert counts["tables"] == (191, 191)
    assert counts["indexes"] == (649, 649)
    assert counts["constraints"] == (401, 401)   # 188 primary keys + 211 foreign keys + 2 checks
    assert counts["sequences (values)"] == (188, 188)
    assert counts["functions"] == (1, 1)
    assert counts["extensions"] == (3, 3)
    assert counts["rows (all tables)"] == (955, 955)
    print(f"hcb_schema: load, fill, dump, restore, verify in {time.monotonic() - t0:.1f}s; {json.dumps(res.phases)}")


def test_no_secret_on_any_command_line_or_output_of_the_hosts(env):
    secrets = [STATE["old"], STATE["new"], migration.parse_source_url(env.source_url)["password"]]
    for h in (env.host, env.app):
        for r in h.history:
            for s in secrets:
                assert s not in r.command and s not in r.stdout and s not in r.stderr, r.command


def test_the_heroku_method_downloads_the_backup_on_the_primary_and_restores_it(env, tmp_path):
    """`heroku pg:backups:capture` / `pg:backups:url` faked on this machine: the backup is a pg_dump -Fc
    of the lab source served over HTTP from the lab gateway; the primary downloads it itself."""
    import http.server
    import subprocess
    import threading
    conn = migration.parse_source_url(env.source_url)
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(
        (env.lab.cfg.gateway_ip, 0),
        lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **kw))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    signed = register(f"http://{env.lab.cfg.gateway_ip}:{server.server_address[1]}/b001.dump?X-Amz-Signature="
                      + "f00dfeed" * 4)
    calls = []

    def heroku(argv):
        calls.append(list(argv))
        if argv[1] == "pg:backups:capture":
            pw = conn.pop("password")
            conninfo = " ".join(f"{k}={v}" for k, v in conn.items())
            cp = subprocess.run(["pg_dump", "-Fc", "-d", conninfo, "-f", str(served / "b001.dump")],
                                env={"PGPASSWORD": pw, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
            conn["password"] = pw
            return cp
        return subprocess.CompletedProcess(argv, 0, signed + "\n", "")

    src = env.params.source.model_copy(update={"method": "heroku", "heroku_app": "hcb-lab"})
    params = env.params.model_copy(update={"source": src, "allow_destructive": True})
    try:
        with migration.Source(env.host, env.source_url) as source:
            facts = migration.get_source_facts(source)
            dump = migration.run_heroku_dump(env.host, params, "heroku", local=heroku)
            migration.run_restore(env.host, params, dump, facts, run_label="lab test heroku")
            migration.ensure_dump_removed(env.host, dump)
            ver = migration.check_restore(env.host, params, source, dump, live_source=False, app=env.app,
                                           password=STATE["new"], sentinel_expect=STATE["cutover"]["sentinel"])
    finally:
        server.shutdown()
    assert [c[1] for c in calls] == ["pg:backups:capture", "pg:backups:url"]
    bad = [c for c in ver.checks if c.status != "pass"]
    assert not bad, bad
    curl = [r for r in env.host.history if "curl the Heroku backup" in r.command]
    assert curl and signed not in curl[0].command


def test_the_directory_transfer_restores_the_same(env):
    """source.transfer: directory (pg_dump -Fd -j N, then pg_restore -j N); 06 and 07 above streamed (the default)."""
    src = env.params.source.model_copy(update={"transfer": "directory"})
    params = env.params.model_copy(update={"source": src, "allow_destructive": True})
    source = migration.Source(env.host, env.source_url)
    plan = migration.get_migration_plan(env.host, params, source)
    res = migration_steps.run_migration(env.host, params, source, plan.facts, tag="directory",
                                  run_label="lab test directory", live_source=False, app=env.app,
                                  password=STATE["new"], sentinel_expect=STATE["cutover"]["sentinel"])
    bad = [c for c in res.verification.checks if c.status != "pass"]
    assert not bad, bad
    assert res.dump.format == "directory" and res.verification.table[-1]["target"] > 20_000
    assert not env.host.exists(res.dump.path)
