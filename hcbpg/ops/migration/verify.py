"""Verification of a restore: the inventory on both sides compared (objects by definition, rows per
table), ownership, the restore-time settings gone, and the app host's read and write."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql

from hcbpg.ops.migration.app_checks import check_from_app
from hcbpg.ops.migration.database import get_target_state
from hcbpg.ops.migration.dump import DumpResult
from hcbpg.ops.migration.settings import check_restore_settings_gone
from hcbpg.ops.migration.source import get_target
from hcbpg.outcome import Check
from hcbpg.pg.inventory import (
    COUNTS_SQL,
    INVENTORY_SQL,
    USER_NS,
    Inventory,
    compare_objects,
    compare_rows,
    comparison_table,
    list_names,
    newest_event_sql,
    not_ext_member,
)

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import EndpointLike, HostLike, SourceLike
    from hcbpg.params import Params


def get_inventory(endpoint: "EndpointLike", params: "Params", *, rows: bool = True) -> Inventory:
    """The database's objects (and exact row counts, one count(*) per table, and the newest event)."""
    data = endpoint.json(f"SELECT json_build_object('objects', ({INVENTORY_SQL}), "
                         f"'rows', ({COUNTS_SQL if rows else 'SELECT json_build_object()'}), "
                         f"'newest_event', ({newest_event_sql(params)}))")
    return Inventory.from_json(data)


@dataclass
class Verification:
    checks: list[Check]
    table: list[dict[str, Any]]
    seconds: float
    source: Inventory
    target: Inventory


def check_restore(host: "HostLike", params: "Params", source: "SourceLike", dump: DumpResult, *, live_source: bool,
                   app: "HostLike | None" = None, password: str | None = None, sentinel_write: str | None = None,
                   sentinel_expect: str | None = None) -> Verification:
    """Objects, per-table rows, sequences, the restore settings gone, and the app host's read/write."""
    started = time.monotonic()
    src_inv = dump.source
    approximate = False
    if src_inv is None:  # a Heroku backup: count the source now (exact only when the app is stopped)
        src_inv = get_inventory(source, params)
        approximate = live_source
    tgt_inv = get_inventory(get_target(host, params), params)
    checks = compare_objects(src_inv, tgt_inv, live_source=live_source)
    checks += compare_rows(src_inv.rows, tgt_inv.rows, approximate=approximate)
    owner = get_target_state(host, params).owner
    checks.append(Check.of(f"database owned by {params.postgres.app_role}", owner == params.postgres.app_role,
                           f"owner {owner}", host.name))
    checks.append(check_table_owners(host, params))
    checks.append(check_restore_settings_gone(host, params))
    if app is not None and password is not None:
        checks += check_from_app(app, params, password, server_ip=params.primary.private_ip,
                                 newest_event=src_inv.newest_event, write=sentinel_write, expect=sentinel_expect)
    return Verification(checks, comparison_table(src_inv, tgt_inv), time.monotonic() - started, src_inv, tgt_inv)


def check_table_owners(host: "HostLike", params: "Params", *, except_schema: str | None = None) -> Check:
    """Every table, sequence, view and function the restore made belongs to the app role (but those in
    *except_schema*: the online transfer's Bucardo schema, owned by postgres until the clean-up)."""
    role = params.postgres.app_role
    rows = get_target(host, params).rows(sql.SQL(
        "SELECT n.nspname || '.' || c.relname AS name, pg_get_userbyid(c.relowner) AS owner FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','S','v','m') AND "
        + USER_NS + " AND " + not_ext_member('pg_class', 'c.oid') + " AND pg_get_userbyid(c.relowner) <> {} "
        "AND n.nspname IS DISTINCT FROM {}").format(sql.Literal(role), sql.Literal(except_schema)))
    return Check.of(f"objects owned by {role}", not rows,
                    "all tables, sequences and views" if not rows else
                    f"{len(rows)} not: " + list_names(f"{r['name']} ({r['owner']})" for r in rows), host.name)
