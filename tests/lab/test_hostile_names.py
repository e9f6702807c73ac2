"""Names from the source are data, never code: a table whose name holds a newline and a
``COPY ... TO PROGRAM`` payload, created on the source *after* the step read its facts (06b's and
07's name check) and *before* the copy starts, must not run the program on the primary.

The moment is hooked in-process: the streamed transfer calls ``run_prepare_dump_dir`` after its name
check and before the source session that copies; the test wraps it to create the table there.
06b's initial copy and 07's copy both go through that transfer (``run_stream``); 07's case runs
the whole of ``run_migration`` as 07's apply does, after the real quiet-source wait.

    flock /tmp/hcbpg-lab.lock pytest tests/lab/test_hostile_names.py
"""

from __future__ import annotations

import secrets as stdlib_secrets
import shutil
from types import SimpleNamespace

import pytest
from psycopg import sql

from hcbpg.adapters.host import Host
from hcbpg.adapters.psql import render
from hcbpg.errors import HcbpgError, SafetyCheckFailed
from hcbpg.lab import destroy_server_host
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import migration
from hcbpg.ops.migration import stream as stream_ops
from hcbpg.params import parse_params
from hcbpg.secrets import register
from hcbpg.steps import _migration as migration_steps
from hcbpg.steps import allow_connections as allow_step
from hcbpg.steps import app_role_database as role_step
from hcbpg.steps import install_postgres as install_step

from labparams import lab_params

pytestmark = pytest.mark.lab

#: the file the payload's program would write on the primary: relative to the server's working
#: directory, its data directory (a table name holds at most 63 bytes)
PWNED_NAME = "hcbpgpw"
PWNED = f"/var/lib/postgresql/15/main/{PWNED_NAME}"


def hostile_name(tag: str) -> str:
    """A table name that, read line by line, becomes a second entry ``1 text users;COPY ... TO PROGRAM ...``
    (at most 63 bytes: PostgreSQL would truncate a longer one)."""
    name = f"{tag}\n1 text users;COPY(SELECT 1)TO PROGRAM'id>{PWNED_NAME}';--"
    assert len(name.encode()) <= 63, len(name.encode())
    return name


@pytest.fixture(scope="module")
def env(lab, tmp_path_factory, primary_stage):
    """Params for this lab and a primary after steps 02-04 (installed, connections allowed, app role): made from
    the worker's primary stage (stages.py), on which the steps below run again and find nothing to change."""
    cfg = lab.cfg
    ip = primary_stage.clone()
    tmp = tmp_path_factory.mktemp("hostile")
    pw_file = tmp / "secrets" / "rails-password"
    pw_file.parent.mkdir(mode=0o700)
    shutil.copy(cfg.secret_path("rails-password"), pw_file)
    pw_file.chmod(0o600)
    data = lab_params(lab, [("server-postgres-1", ip, "primary")],
                      postgres={"app_role_password": f"file:{pw_file}"},
                      source={"method": "pg_dump", "url": f"file:{cfg.secret_path('source-url')}", "jobs": 2},
                      allow_destructive=False)
    params = parse_params(data)
    host = Host.from_params(params, "server-postgres-1", ip)
    password = register(pw_file.read_text().strip())
    install_step.install_server(host, params, params.primary)
    allow_step.allow_connections(host, params, params.primary)
    role_step.app_role_database(pg_cluster.get_psql(host, params), params, password)
    yield SimpleNamespace(lab=lab, params=params, host=host, source_url=register(lab.secret("source-url")))
    host.close()
    destroy_server_host("server-postgres-1", lab_dir=str(lab.lab_dir))


@pytest.fixture
def planted(env, monkeypatch):
    """(name, created, through): the hostile table's name; it is created on the source (through the
    endpoint the test puts in *through*: the step's own, whose service file a second one would remove)
    at the moment the streamed transfer calls ``run_prepare_dump_dir`` (after its name check, before its
    source session), and dropped at the end."""
    name = hostile_name("t" + stdlib_secrets.token_hex(3))
    table = render(sql.Identifier("public", name))
    env.host.run(f"rm -f {PWNED}", quiet=True)
    real = stream_ops.run_prepare_dump_dir
    created: list[str] = []
    through: list[migration.Source] = []

    def plant(*args, **kwargs):  # noqa: ANN002, ANN003 - the wrapped function's own arguments
        with through[0] as source:
            source.execute([f"CREATE TABLE {table} (id bigint)", f"INSERT INTO {table} VALUES (1), (2)"])
        created.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(stream_ops, "run_prepare_dump_dir", plant)
    yield name, created, through
    with migration.Source(env.host, env.source_url) as source:
        source.execute([f"DROP TABLE IF EXISTS {table}"])
    env.host.run(f"rm -f {PWNED}", quiet=True)


def assert_refused_or_copied_as_data(env, name: str, exc: BaseException | None) -> None:  # noqa: ANN001
    """The program never ran on the primary; the copy refused naming the table, or copied it as data."""
    ran = env.host.probe(f"test -e {PWNED} && cat {PWNED}")
    assert not ran.ok, f"the table name's program ran on the primary: {ran.stdout.strip()!r} ({exc!r})"
    if exc is not None:
        assert isinstance(exc, SafetyCheckFailed), repr(exc)
        assert repr(name)[1:-1].split("\\n")[0] in str(exc) and "control characters" in str(exc), str(exc)
    else:
        tgt = migration.get_target(env.host, env.params)
        rows = tgt.json(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", name)))
        assert rows == 2


def test_06b_initial_copy_refuses_a_table_named_like_a_command_planted_after_the_name_check(env, planted):
    """06b: its facts (and the name check on them) are read, then the table appears, then the initial copy
    (``run_stream`` with 06b's tag, as ``ensure_forward_sync`` calls it)."""
    name, created, through = planted
    with migration.Source(env.host, env.source_url) as source:
        through.append(source)
        facts = migration.get_source_facts(source)
        stream_ops.check_source_names(facts)  # the check passes: the table is not there yet
        exc: BaseException | None = None
        try:
            stream_ops.run_stream(env.host, env.params, source, facts, "online-copy", run_label="hostile names 06b")
        except HcbpgError as e:
            exc = e
    assert created == [name], "the hook did not run: the test proves nothing"
    assert_refused_or_copied_as_data(env, name, exc)


def test_07_copy_refuses_a_table_named_like_a_command_planted_after_the_quiet_source_wait(env, planted):
    """07: the plan's facts, the real quiet-source wait, then the table appears, then the copy of 07's apply."""
    name, created, through = planted
    source = migration.Source(env.host, env.source_url)
    through.append(source)
    with source:
        facts = migration.get_source_facts(source)
        assert migration.wait_for_source_quiet(source, timeout=60).ok
        exc: BaseException | None = None
        try:
            migration_steps.run_migration(env.host, env.params, source, facts, tag="hostile-07",
                                    run_label="hostile names 07", live_source=False)
        except HcbpgError as e:
            exc = e
    assert created == [name], "the hook did not run: the test proves nothing"
    assert_refused_or_copied_as_data(env, name, exc)


def test_a_table_named_with_quotes_and_semicolons_is_copied_as_data(env):
    """No control character, but everything else a shell or a splice would read as code: the streamed
    transfer (07's copy) moves the table and its rows like any other; nothing runs on the primary."""
    name = f"q\"a;COPY(SELECT 1)TO PROGRAM'id>{PWNED_NAME}';--$(id)`id`"
    table = render(sql.Identifier("public", name))
    env.host.run(f"rm -f {PWNED}", quiet=True)
    source = migration.Source(env.host, env.source_url)
    try:
        with source:
            source.execute([f"CREATE TABLE {table} (id bigint PRIMARY KEY)", f"INSERT INTO {table} VALUES (1), (2)"])
            facts = migration.get_source_facts(source)
            result = migration_steps.run_migration(env.host, env.params, source, facts, tag="hostile-quotes",
                                             run_label="hostile names, quotes", live_source=False)
        assert not [c for c in result.verification.checks if c.status == "fail"], result.verification.checks
        assert_refused_or_copied_as_data(env, name, None)
        key = migration.get_target(env.host, env.params).json(sql.SQL(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = {}::regclass AND contype = 'p'").format(
                sql.Literal(table)))
        assert key == 1  # its key built by the stream's own build plan
    finally:
        with source:
            source.execute([f"DROP TABLE IF EXISTS {table}"])
        env.host.run(f"rm -f {PWNED}", quiet=True)
