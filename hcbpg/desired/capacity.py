"""Capacity and memory settings of one server, rendered from params and the server type (RAM, vCPUs,
disk) as the Hetzner API reports it: a larger type re-renders them.  Pure.

``max_connections`` is a budget, not a guess: the login roles' connection limits (the app's once,
because during a rotation its two logins share the app's pools), replication's, the monitoring
roles', and ``superuser_reserved_connections`` for the operator.  Memory follows the usual rules
for a dedicated database server (PostgreSQL's docs on resource consumption; pgtune's ratios):
a quarter of RAM for ``shared_buffers``, three quarters as ``effective_cache_size``, ``work_mem``
so that the budget times a few sorts each still fits beside ``shared_buffers``.

Every value comes with the reason the notebook shows, and whether it needs a restart (those are
written by step 02 before the first start, so no restart is needed before data arrives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hcbpg.desired import roles
from hcbpg.pg.conf import SettingValue, quote_setting

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

MB = 1
GB = 1024

#: settings in this file that PostgreSQL reads only at server start (context ``postmaster``)
RESTART_SETTINGS = frozenset({"max_connections", "superuser_reserved_connections", "shared_buffers",
                              "shared_preload_libraries", "max_worker_processes", "huge_pages"})

#: the Heroku-style extensions loaded at start: query statistics, and plans of slow queries
PRELOAD_LIBRARIES = ("pg_stat_statements", "auto_explain")

SUPERUSER_RESERVED = 3


@dataclass(frozen=True)
class ServerShape:
    """A server type as the Hetzner API reports it (``GET /server_types``)."""

    name: str
    cores: int
    memory_gb: float
    disk_gb: int
    cpu_type: str = "dedicated"


@dataclass(frozen=True)
class Setting:
    """One rendered setting, with the reason the notebook's table gives."""

    name: str
    value: SettingValue
    why: str

    @property
    def restart(self) -> bool:
        return self.name in RESTART_SETTINGS


def connection_budget(params: "Params") -> list[tuple[str, int]]:
    """Who may hold how many connections (sums to ``max_connections``)."""
    cfg = roles.roles_config(params)
    out = [(f"{params.postgres.app_role} (the app; its rotation login shares the same pools)",
            params.postgres.app_role_connection_limit)]
    out += [(r.name, r.connection_limit) for r in cfg.login_roles()]
    if cfg.blazer is not None:
        out.append((cfg.blazer.name, cfg.blazer.connection_limit))
    if params.replication is not None:
        out.append((f"{params.replication.role} (replication)", params.replication.connection_limit))
    out.append(("superuser_reserved_connections (the operator, as postgres)", SUPERUSER_RESERVED))
    return out


def _mb(value: float) -> str:
    """Megabytes as PostgreSQL reads them: whole GB when exact, else MB."""
    n = int(value)
    return f"{n // GB}GB" if n >= GB and n % GB == 0 else f"{n}MB"


def _pow2_floor(n: float) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def capacity_settings(params: "Params", shape: ServerShape) -> list[Setting]:
    """Every capacity, memory and preload setting for a server of *shape*, with why (name order)."""
    budget = connection_budget(params)
    max_conn = sum(n for _, n in budget)
    ram = shape.memory_gb * GB
    shared = ram / 4
    # (RAM - shared_buffers) shared by every connection doing up to 3 sorts/hashes at once;
    # a power of two, at least PostgreSQL's default of 4MB
    work = max(4, _pow2_floor((ram - shared) / (max_conn * 3)))
    maint = min(2 * GB, _pow2_floor(ram / 16))
    max_wal = min(16 * GB, _pow2_floor(shape.disk_gb * GB / 20))
    parallel = max(1, shape.cores // 2)
    threshold = params.postgres.auto_explain_min_duration
    out = [
        Setting("max_connections", max_conn,
                " + ".join(f"{n} {who}" for who, n in budget) + f" = {max_conn}"),
        Setting("superuser_reserved_connections", SUPERUSER_RESERVED,
                "kept for the operator when every other slot is taken (PostgreSQL's default, stated)"),
        Setting("shared_buffers", _mb(shared), f"a quarter of the {shape.name}'s {shape.memory_gb:g} GB RAM"),
        Setting("effective_cache_size", _mb(ram * 3 / 4),
                "three quarters of RAM: shared_buffers plus the OS page cache (the planner's estimate only)"),
        Setting("work_mem", _mb(work),
                f"(RAM - shared_buffers) / ({max_conn} connections x 3 sorts), as a power of two, "
                "at least 4MB: the budget cannot run the server out of memory"),
        Setting("maintenance_work_mem", _mb(maint),
                "RAM / 16, at most 2GB: CREATE INDEX and VACUUM (a restore builds indexes with it)"),
        Setting("huge_pages", "try", "use huge pages when the kernel has them reserved, else normal pages"),
        Setting("random_page_cost", 1.1, f"local NVMe SSD ({shape.disk_gb} GB): random reads cost about "
                                         "what sequential ones do"),
        Setting("effective_io_concurrency", 200, "SSD: many concurrent reads for bitmap heap scans"),
        Setting("max_worker_processes", max(8, shape.cores),
                f"{shape.cores} vCPUs; PostgreSQL's 8 stays as the floor (parallel query, replication)"),
        Setting("max_parallel_workers", shape.cores, f"one per vCPU ({shape.cores})"),
        Setting("max_parallel_workers_per_gather", parallel,
                f"half the vCPUs: one query may not take every core from {max_conn} connections"),
        Setting("max_parallel_maintenance_workers", parallel, "half the vCPUs, for CREATE INDEX"),
        Setting("max_wal_size", _mb(max_wal),
                f"a twentieth of the {shape.disk_gb} GB disk (power of two, at most 16GB): fewer forced "
                "checkpoints during the restore and busy hours"),
        Setting("min_wal_size", "1GB", "WAL files kept for reuse between checkpoints"),
        Setting("shared_preload_libraries", ",".join(PRELOAD_LIBRARIES),
                "pg_stat_statements (query statistics, as on Heroku) and auto_explain (plans of slow "
                "queries) must be loaded at server start"),
        Setting("pg_stat_statements.track", "top", "statements the app sends, not those inside functions"),
        Setting("pg_stat_statements.max", 5000, "distinct statements kept (PostgreSQL's default, stated)"),
        Setting("auto_explain.log_min_duration", threshold,
                "postgres.auto_explain_min_duration from params: the plan of every statement slower than "
                "this goes to the server log"),
        Setting("auto_explain.log_format", "text", "readable in the log"),
        Setting("auto_explain.log_analyze", False, "no per-row timing overhead on every statement"),
    ]
    return sorted(out, key=lambda s: s.name)


def render_capacity(params: "Params", shape: ServerShape) -> dict[str, SettingValue]:
    """The settings of :func:`capacity_settings` as ``name -> value`` (for the include file)."""
    return {s.name: s.value for s in capacity_settings(params, shape)}


def capacity_table(params: "Params", shape: ServerShape) -> list[dict[str, str]]:
    """One row per setting for the notebook: name, value, why, whether it needs a restart."""
    return [{"setting": s.name, "value": quote_setting(s.value).strip("'"),
             "restart": "yes" if s.restart else "reload", "why": s.why}
            for s in capacity_settings(params, shape)]


PGBOUNCER_NOTE = (
    "No PgBouncer: the app's connections are budgeted into max_connections above and fit beside "
    "shared_buffers (work_mem is sized for all of them). Puma and Sidekiq keep persistent pools, "
    "so connections are not opened per request; a pooler would add a hop and, in transaction mode, "
    "break the app's session-level features (advisory locks of migrations, prepared statements). "
    "Add PgBouncer (Ubuntu's package) when the pools' sum outgrows the budget or backends' memory "
    "does: then max_connections can stay small."
)
