"""The target database on the primary: its state, dropped (when allowed) and created fresh with its
schemas and extensions, marked live once traffic runs on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg import clock
from hcbpg.adapters.base import Changes
from hcbpg.adapters.psql import render
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops.migration.settings import get_server_state
from hcbpg.ops.migration.source import get_target
from hcbpg.outcome import Check, Outcome
from hcbpg.pg.inventory import USER_NS
from hcbpg.pg.restore import MARKER_LIVE, TargetState, plan_create_statements, plan_recreate, prerequisite_statements

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


def get_target_state(host: "HostLike", params: "Params") -> TargetState:
    """The target database as it is now: exists, hcbpg's marker, who is connected, how many tables."""
    psql = pg_cluster.get_psql(host, params)
    db = params.postgres.database
    # the database and its sessions in one psql call
    rows = psql.query(sql.SQL(
        "SELECT shobj_description(d.oid, 'pg_database') AS comment, r.rolname AS owner, "
        "(SELECT coalesce(json_agg(s), '[]'::json) FROM (SELECT pid, usename, application_name, "
        "host(client_addr) AS client, state FROM pg_stat_activity WHERE datname = d.datname "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend') AS s) AS sessions FROM pg_database d "
        "JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = {}").format(sql.Literal(db)))
    if not rows:
        return TargetState(False)
    sessions = rows[0]["sessions"] or []
    tables = psql.value("SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        f"WHERE c.relkind IN ('r', 'p') AND {USER_NS}", dbname=db)
    return TargetState(True, rows[0]["comment"], rows[0]["owner"], sessions, int(tables or 0))


def _locale_available(host: "HostLike", name: str) -> bool:
    if name in ("C", "POSIX", "C.UTF-8", "C.utf8"):
        return True
    norm = name.lower().replace("-", "")
    out = host.probe("locale -a").stdout.lower().replace("-", "").split()
    return norm in out


def run_statements(host: "HostLike", params: "Params", statements: Sequence["sql.Composable | str"], *,
                   dbname: str) -> None:
    """Statements in one psql call as postgres (each its own transaction, so CREATE DATABASE may be one),
    all shown; it stops at the first error."""
    pg_cluster.get_psql(host, params).script(
        statements, dbname=dbname, hint="The statements before the failing one were applied; fix the cause and "
                                        "run the step again (it only does what is still missing).")


def get_fresh_database_plan(host: "HostLike", params: "Params", facts: Mapping[str, Any], *, run_label: str = "",
                            server_state: Mapping[str, Any] | None = None) -> tuple[list[sql.Composable], list[str]]:
    """The statements that drop (when allowed) and recreate the target database, and why (read-only:
    SafetyCheckFailed when it may not be dropped)."""
    pg = params.postgres
    state = get_target_state(host, params)
    server_start = (server_state or get_server_state(host, params))["postmaster_start"]
    actions = plan_recreate(state, database=pg.database, server=host.name,
                            allow_destructive=params.allow_destructive,
                            same_server_as_source=facts.get("postmaster_start") == server_start)
    locale_ok = _locale_available(host, str(facts.get("collate") or "C"))
    statements: list[sql.Composable] = []
    if state.exists:
        statements.append(sql.SQL("DROP DATABASE {}").format(sql.Identifier(pg.database)))
    created = plan_create_statements(params, facts, locale_ok=locale_ok, run_label=run_label)
    statements += created
    if not locale_ok:
        actions.append(f"the source's locale {facts.get('collate')} is not on {host.name}: the database gets "
                       "the cluster's default (text sorts may differ)")
    return statements, actions + [" ".join(render(s).split()) for s in created]


def run_fresh_database(host: "HostLike", params: "Params", facts: Mapping[str, Any], *, run_label: str = "",
                       server_state: Mapping[str, Any] | None = None) -> Outcome:
    """Drop (when allowed) and recreate the target database, owned by the app role (a one-shot: each run
    makes it new)."""
    pg = params.postgres
    seen = Changes(host)
    statements, actions = get_fresh_database_plan(host, params, facts, run_label=run_label, server_state=server_state)
    run_statements(host, params, statements, dbname="postgres")
    return seen.outcome(f"database {pg.database} on {host.name} (fresh, owner {pg.app_role})", actions=actions)


def ensure_prerequisites(host: "HostLike", params: "Params", schemas: Sequence[str],
                         extensions: Sequence[Mapping[str, str]]) -> Outcome:
    """Schemas the extensions live in (heroku_ext, owned by the app role) and the extensions, as superuser;
    only those the target database lacks."""
    db = params.postgres.database
    seen = Changes(host)
    psql = pg_cluster.get_psql(host, params)
    have_schemas = {r["name"] for r in psql.query(sql.SQL(
        "SELECT nspname AS name FROM pg_namespace WHERE nspname = ANY({})").format(sql.Literal(list(schemas))),
        dbname=db)} if schemas else set()
    have_exts = {r["name"] for r in psql.query(sql.SQL(
        "SELECT extname AS name FROM pg_extension WHERE extname = ANY({})").format(
            sql.Literal([e["name"] for e in extensions])), dbname=db)} if extensions else set()
    st = prerequisite_statements(params, [s for s in schemas if s not in have_schemas],
                                 [e for e in extensions if e["name"] not in have_exts])
    if st:
        run_statements(host, params, st, dbname=db)
    return seen.outcome(f"schemas and extensions in {db} on {host.name}",
                        actions=[" ".join(render(s).split()) for s in st])


def check_extensions_available(host: "HostLike", params: "Params", extensions: Sequence[Mapping[str, str]]) -> Check:
    names = [e["name"] for e in extensions]
    have = {r["name"] for r in pg_cluster.get_psql(host, params).query(
        sql.SQL("SELECT name FROM pg_available_extensions WHERE name = ANY({})").format(sql.Literal(names)))}
    missing = [n for n in names if n not in have]
    return Check.of("extensions available on the primary", not missing,
                    f"{', '.join(names) or 'none needed'}" if not missing else f"missing: {', '.join(missing)} "
                    "(install the package that ships them)", host.name)


def get_live_marker(host: "HostLike", params: "Params") -> str | None:
    """The live marker of the target database (step 09 sets it when traffic starts), or None (no cluster
    running, no database, or not live)."""
    if not pg_cluster.get_cluster_running(host, params):
        return None
    state = get_target_state(host, params)
    comment = state.comment or "" if state.exists else ""
    return comment if comment.startswith(MARKER_LIVE) else None


def run_mark_live(host: "HostLike", params: "Params") -> Outcome:
    """Mark the database live (with the time): later migration runs refuse to drop it without allow_destructive."""
    seen = Changes(host)
    st = sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(params.postgres.database),
                                                         sql.Literal(f"{MARKER_LIVE}: traffic started {clock.utcnow()}"))
    get_target(host, params).execute([st])
    return seen.outcome(f"database {params.postgres.database} on {host.name} marked live",
                        actions=[" ".join(render(st).split())])
