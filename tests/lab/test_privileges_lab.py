"""Step 13's privileges model against an awkward database on a real lab server, through the real runner.

One primary (a clone of the shared stage, tests/lab/stages.py; steps 02-04 from their modules again), then
what a Heroku restore and HCB's own additions leave:
as rails, a second schema ``analytics`` with a materialized view ``payout_totals``, an unlogged table and
a plain one; beside the app, a ``fivetran`` role the model does not know, with CREATE on the database,
its own ``google_sheets`` schema, and SELECT on one of the app's tables.  Then the notebook
``13_roles`` (the runner, its gate approved): it passes its own check (the materialized view has
SELECT only); Metabase is given grants on fivetran's schema; a second run changes nothing and every
grant the model does not know is still there; with ``roles.revoke_unknown_roles: [fivetran]`` and
``roles.revoke_unknown_schemas: [google_sheets]`` in params the next run revokes exactly those.

Before issue 26's model (hcbpg/desired/privileges.py) the first run failed its check (INSERT,
UPDATE, DELETE on the materialized view through ``GRANT ... ON ALL TABLES IN SCHEMA``) and revoked
fivetran's grants and re-owned its schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from psycopg import sql

from hcbpg.adapters.host import Host
from hcbpg.desired import roles as desired_roles
from hcbpg.lab import destroy_server_host
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import privileges
from hcbpg.ops import tls as tls_ops
from hcbpg.params import parse_params
from hcbpg.secrets import resolve
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import app_role_database as role_step
from hcbpg.steps import install_postgres as install_step

from labparams import lab_params
from stages import STAGE_PRIMARY, STAGE_PRIMARY_OFFSET

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PRIMARY = STAGE_PRIMARY  # the shared stage's server (cloned below), at its address
DB = "hcb_production"

#: what a restore as rails leaves in a second schema, beside the app's table in public
RESTORED_AS_RAILS = """
SET ROLE rails;
CREATE SCHEMA analytics;
CREATE TABLE public.users (id bigserial PRIMARY KEY, email text);
CREATE TABLE public.payouts (id bigserial PRIMARY KEY, amount numeric NOT NULL, paid_at timestamptz DEFAULT now());
INSERT INTO public.payouts (amount) SELECT g * 1.5 FROM generate_series(1, 20) g;
CREATE TABLE analytics.payout_lines (id bigserial PRIMARY KEY, payout_id bigint, note text);
CREATE UNLOGGED TABLE analytics.scratch (k text PRIMARY KEY, v text);
CREATE MATERIALIZED VIEW analytics.payout_totals AS SELECT count(*) AS n, sum(amount) AS total FROM public.payouts;
RESET ROLE;
"""

#: HCB's own addition beside the app: Fivetran's role, its schema, its read of an app table
FIVETRAN = """
CREATE ROLE fivetran LOGIN;
GRANT CONNECT, CREATE, TEMPORARY ON DATABASE hcb_production TO fivetran;
GRANT USAGE ON SCHEMA public TO fivetran;
GRANT SELECT ON public.payouts TO fivetran;
SET ROLE fivetran;
CREATE SCHEMA google_sheets;
CREATE TABLE google_sheets.budget (line text, amount numeric);
RESET ROLE;
"""

#: Metabase reads the sheets (granted by their owner, after step 13 made the metabase role)
METABASE_ON_SHEETS = """
SET ROLE fivetran;
GRANT USAGE ON SCHEMA google_sheets TO metabase;
GRANT SELECT ON google_sheets.budget TO metabase;
RESET ROLE;
"""

ACL_QUERY = """
SELECT 'database' AS what, coalesce(datacl::text, '') AS acl FROM pg_database WHERE datname = 'hcb_production'
UNION ALL SELECT 'schema ' || nspname || ' owner ' || pg_get_userbyid(nspowner), coalesce(nspacl::text, '')
  FROM pg_namespace WHERE nspname IN ('public', 'analytics', 'google_sheets')
UNION ALL SELECT c.relkind::text || ' ' || n.nspname || '.' || c.relname || ' owner ' || pg_get_userbyid(c.relowner),
  coalesce(c.relacl::text, '')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname IN ('public', 'analytics', 'google_sheets') AND c.relkind IN ('r', 'm', 'S')
"""


def roles_section(lab, **extra) -> dict:
    """The lab's roles (as its interim defaults have them), metabase reading public.payouts."""
    def ref(name: str) -> str:
        return f"file:{lab.cfg.secret_path(name + '-password')}"
    return {"group_role": "hcb_app",
            "migrations": {"name": "hcb_migrations", "password": ref("hcb_migrations")},
            "metabase": {"password": ref("metabase"), "jumpbox_ip": lab.cfg.address(40), "tables": ["payouts"]},
            "monitoring": {"name": "vector", "password": ref("vector"), "connection_limit": 5},
            "exporter": {"name": "postgres_exporter", "password": ref("postgres_exporter"), "connection_limit": 5},
            "extensions": ["citext"], **extra}


def params_data(lab, **roles_extra) -> dict:
    return lab_params(lab, [(PRIMARY, lab.cfg.address(STAGE_PRIMARY_OFFSET), "primary")],
                      roles=roles_section(lab, **roles_extra),
                      allow_destructive=True)


@pytest.fixture(scope="module")
def params(lab, primary_stage):
    data = params_data(lab)
    p = parse_params(data)
    assert primary_stage.clone() == p.primary.private_ip  # steps 02-04 done once per worker (stages.py)
    yield p
    destroy_server_host(PRIMARY, lab_dir=str(lab.lab_dir))


@pytest.fixture(scope="module")
def host(params):
    h = Host.from_params(params, PRIMARY, params.primary.ssh_host)
    yield h
    h.close()


@pytest.fixture(scope="module")
def home(lab, tmp_path_factory):
    """An HCBPG_HOME with this lab's params and a notebooks dir with step 13 only."""
    h = tmp_path_factory.mktemp("pvhome")
    (h / "params").mkdir()
    (h / "params" / "lab.yaml").write_text(yaml.safe_dump(params_data(lab), sort_keys=False))
    nbdir = h / "notebooks"
    nbdir.mkdir()
    shutil.copy(REPO / "notebooks" / "13_roles.ipynb", nbdir)
    (nbdir / "steps.yaml").write_text(yaml.safe_dump({"steps": [
        {"notebook": "13_roles.ipynb", "title": "Roles and privileges, monitoring hookup"}]}))
    return h


def cli(home, lab, *args, timeout=900):
    env = dict(os.environ, HCBPG_HOME=str(home), HCBPG_STATE_DIR=str(home / "state"),
               HCBPG_LAB_DIR=str(lab.lab_dir), HCBPG_NOTEBOOKS=str(home / "notebooks"),
               HCBPG_OPERATOR="privileges-test", XDG_STATE_HOME=str(home / "xdg"))
    env.pop("HCBPG_SCRUB_FILE", None)
    proc = subprocess.run([sys.executable, "-m", "hcbpg.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)
    return proc, proc.stdout + proc.stderr


def run_step_13(home, lab) -> str:
    """``hcbpg run lab --only 13_roles``, its gate approved (asked once: until the database is handed over)."""
    proc, out = cli(home, lab, "run", "lab", "--only", "13_roles")
    if proc.returncode == 3 and "gate 'release-command'" in out:
        run_id = out.split("hcbpg resume ")[-1].split()[0]
        # the gate's old snake_case name is still accepted by approve (gate names are kebab-case now)
        approved, text = cli(home, lab, "approve", run_id, "release_command", "--note", "privileges test")
        assert approved.returncode == 0, text[-3000:]
        proc, more = cli(home, lab, "resume", run_id)
        out += more
    assert proc.returncode == 0, out[-5000:]
    return out


def acls(psql) -> dict[str, str]:
    return {r["what"]: r["acl"] for r in psql.query(ACL_QUERY, dbname=DB)}


def test_setup_primary_restored_objects_and_what_hcb_added(params, host):
    """Steps 02-04 from their modules (and 03's CA on the app host); the restore as rails; fivetran beside it."""
    install_step.install_server(host, params, params.primary)
    allow_step.allow_connections(host, params, params.primary)
    with Host.from_params(params, "app", params.app_host.private_ip) as app:
        tls_ops.ensure_client_ca(app, params)
    password = resolve(params.postgres.app_role_password, key="postgres.app_role_password")
    psql = pg_cluster.get_psql(host, params)
    role_step.app_role_database(psql, params, password)
    for script in (RESTORED_AS_RAILS, FIVETRAN):
        host.run(f"psql -X -q -v ON_ERROR_STOP=1 -d {DB}", sudo_user="postgres", stdin=script)
    seen = acls(psql)
    assert seen["m analytics.payout_totals owner rails"] == ""
    assert "fivetran=CTc" in seen["database"]


def test_step_13_passes_its_check_with_select_only_on_the_materialized_view(params, host, home, lab):
    t0 = time.monotonic()
    out = run_step_13(home, lab)
    print(f"step 13, first run: {time.monotonic() - t0:.1f}s")
    psql = pg_cluster.get_psql(host, params)
    seen = acls(psql)
    mv = seen["m analytics.payout_totals owner hcb_migrations"]
    assert "hcb_app=r/hcb_migrations" in mv, mv
    assert "hcb_app=arwd/" in seen["r analytics.scratch owner hcb_migrations"]        # unlogged: a table
    assert "hcb_app=arwd/" in seen["r analytics.payout_lines owner hcb_migrations"]
    assert "hcb_app=rwU/" in seen["S analytics.payout_lines_id_seq owner hcb_migrations"]
    # what the model does not know: kept as it was, and named in the plan
    assert "fivetran=CTc/" in seen["database"]
    assert "fivetran=r/" in seen["r public.payouts owner hcb_migrations"]
    assert "fivetran=U/" in seen["schema public owner pg_database_owner"]
    assert "schema google_sheets owner fivetran" in seen
    assert "r google_sheets.budget owner fivetran" in seen
    assert "warnings: role fivetran: not the model's, left alone" in out, out[-3000:]
    record = Path(out.split("record: ")[1].split()[0])
    assert "left alone: role fivetran is not the model's" in (record / "13_roles.ipynb").read_text(), \
        "the plan names what it leaves alone"
    # the rails app really cannot write the materialized view, and reads it
    cfg = desired_roles.roles_config(params)
    checks = privileges.check_privileges(psql, cfg)
    assert not [c for c in checks if c.status == "fail"], [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert {c.name for c in checks if c.status == "warn"} >= {"role fivetran: not the model's, left alone",
                                                              "schema google_sheets: not the model's, left alone"}


def test_second_run_changes_nothing_and_keeps_what_the_model_does_not_know(params, host, home, lab):
    psql = pg_cluster.get_psql(host, params)
    host.run(f"psql -X -q -v ON_ERROR_STOP=1 -d {DB}", sudo_user="postgres", stdin=METABASE_ON_SHEETS)
    before = acls(psql)
    assert "metabase=U/fivetran" in before["schema google_sheets owner fivetran"]
    out = run_step_13(home, lab)
    assert "no changes" in out, out[-3000:]
    assert acls(psql) == before
    cfg = desired_roles.roles_config(params)
    assert not privileges.ensure_privileges(pg_cluster.get_psql(host, params), cfg).changed


def test_with_revocation_params_the_unknown_grants_are_revoked(params, host, home, lab):
    data = params_data(lab, revoke_unknown_roles=["fivetran"], revoke_unknown_schemas=["google_sheets"])
    (home / "params" / "lab.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    psql = pg_cluster.get_psql(host, params)
    before = acls(psql)
    run_step_13(home, lab)
    after = acls(psql)
    assert "fivetran" not in after["database"], after["database"]
    assert "fivetran" not in after["r public.payouts owner hcb_migrations"]
    assert "fivetran" not in after["schema public owner pg_database_owner"]
    # fivetran keeps what it owns; nobody else holds anything in google_sheets
    assert after["schema google_sheets owner fivetran"] == "{fivetran=UC/fivetran}"
    assert after["r google_sheets.budget owner fivetran"] == "{fivetran=arwdDxt/fivetran}"
    # and nothing else moved
    unchanged = {k for k in before if "fivetran" not in before[k] and "google_sheets" not in k}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    cfg = desired_roles.roles_config(parse_params(data))
    checks = {c.name: c for c in privileges.check_privileges(psql, cfg)}
    assert checks["fivetran: grants revoked (roles.revoke_unknown_roles)"].status == "pass"
    assert not [c for c in checks.values() if c.status == "fail"]
    assert int(psql.value(sql.SQL("SELECT count(*) AS n FROM pg_roles WHERE rolname = 'fivetran'"))) == 1

