"""Data checksums on a Debian/Ubuntu server (pure): what ``pg_createcluster`` is told before ``postgresql-15`` is
installed, what an existing cluster holds (whether it may be dropped and made again with checksums), and what
``pg_checksums --enable`` would cost instead.

**Why a drop-in with ``create_main_cluster = false``.**  Installing ``postgresql-15`` runs its postinst, which
creates and starts ``15/main`` as ``/etc/postgresql-common/createcluster.conf`` says: without checksums, on port
5432, with the system locale, and started before hcbpg wrote a setting.  hcbpg tells it to create no cluster, so
the only cluster is the one :func:`hcbpg.pg.cluster.create_command` makes (params' name, port and locale,
``--data-checksums``, settings written before the first start: no restart).  ``initdb_options =
'--data-checksums'`` is there too, so any other cluster made on the server (by hand, a later major version's
package) gets checksums as well.  Both go in ``createcluster.d/hcbpg.conf``, which Debian's createcluster.conf
includes (``include_dir``), instead of rewriting createcluster.conf: that file is a dpkg conffile, and a changed
conffile makes the next upgrade of postgresql-common (PGDG's, pulled in by ``apt-get install postgresql-15``)
stop at dpkg's conffile question, which nobody answers in a non-interactive install.  Debian's other defaults
(ssl, cluster_name, log_line_prefix, ``add_include_dir = 'conf.d'``) stay as the distribution ships them.

**"Holds nothing"**, checked on the server itself (:data:`CLUSTER_CONTENTS_SQL`, then
:data:`DATABASE_OBJECTS_SQL` in every database that accepts connections): no database but ``template0``,
``template1`` and ``postgres``; no role, tablespace, schema, relation, function, type, extension, large object,
event trigger or publication that initdb did not make (initdb numbers its own objects below 16384,
PostgreSQL's ``FirstNormalObjectId``; a session's ``pg_temp_N`` schemas, left behind empty, do not count); and no
``ALTER SYSTEM`` setting.  Such a cluster loses nothing when it is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hcbpg.pg.conf import MANAGED_HEADER

__all__ = ["CHECKSUM_ENABLE_MB_S", "CLUSTER_CONTENTS_SQL", "CREATECLUSTER_CONF", "CREATECLUSTER_DIR",
           "CREATECLUSTER_DROPIN", "DATABASE_OBJECTS_SQL", "FIRST_NORMAL_OID", "ClusterContents",
           "checksum_enable_estimate", "parse_checksums_on", "render_createcluster_conf"]

#: Debian's file (a dpkg conffile: left alone) and the directory it includes
CREATECLUSTER_CONF = "/etc/postgresql-common/createcluster.conf"
CREATECLUSTER_DIR = "/etc/postgresql-common/createcluster.d"
CREATECLUSTER_DROPIN = f"{CREATECLUSTER_DIR}/hcbpg.conf"
#: PostgreSQL's FirstNormalObjectId: every object initdb makes has a smaller OID
FIRST_NORMAL_OID = 16384
#: the rate :func:`checksum_enable_estimate` assumes for pg_checksums' read and rewrite of every block (MB/s):
#: a cautious figure for a cloud server's local NVMe with other work on it; ``--progress`` shows the real one
CHECKSUM_ENABLE_MB_S = 100.0


def render_createcluster_conf() -> str:
    """``createcluster.d/hcbpg.conf``: no automatic cluster when a postgresql-NN package is installed, and
    ``--data-checksums`` for every cluster ``pg_createcluster`` makes (why: the module docstring)."""
    return "\n".join([
        MANAGED_HEADER,
        "# Read by pg_createcluster and the postgresql-NN postinst through createcluster.conf's include_dir.",
        "# No automatic 15/main on install: hcbpg creates the cluster itself (params' name, port and locale, data",
        "# checksums, its settings written before the first start).",
        "create_main_cluster = false",
        "# Any cluster made otherwise gets data checksums too.",
        "initdb_options = '--data-checksums'",
        "",
    ])


def parse_checksums_on(controldata: Mapping[str, str]) -> bool | None:
    """Whether ``pg_controldata`` says data checksums are on ("Data page checksum version" > 0); None when it
    does not say (no data directory, or pg_controldata failed)."""
    v = controldata.get("Data page checksum version")
    if v is None or not v.strip().isdigit():
        return None
    return int(v) > 0


#: run in ``postgres``: what the cluster holds beyond initdb's, cluster-wide
CLUSTER_CONTENTS_SQL = f"""
SELECT
  (SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database
    WHERE datname NOT IN ('template0', 'template1', 'postgres')) AS databases,
  (SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database WHERE datallowconn) AS connectable,
  (SELECT coalesce(json_agg(rolname ORDER BY rolname), '[]') FROM pg_authid WHERE oid >= {FIRST_NORMAL_OID}) AS roles,
  (SELECT coalesce(json_agg(spcname ORDER BY spcname), '[]') FROM pg_tablespace
    WHERE oid >= {FIRST_NORMAL_OID}) AS tablespaces,
  (SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%/postgresql.auto.conf') AS alter_system,
  (SELECT sum(pg_database_size(oid)) FROM pg_database)::bigint AS bytes
"""

#: run in each database that accepts connections: objects initdb did not make (the first 20, oldest first)
DATABASE_OBJECTS_SQL = f"""
SELECT kind || ' ' || name AS object FROM (
  SELECT 'relation' AS kind, format('%I.%I', n.nspname, c.relname) AS name, c.oid
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid >= {FIRST_NORMAL_OID}
  UNION ALL SELECT 'schema', format('%I', nspname), oid FROM pg_namespace
    WHERE oid >= {FIRST_NORMAL_OID} AND nspname !~ '^pg_(toast_)?temp_[0-9]+$'
  UNION ALL SELECT 'function', format('%I.%I', n.nspname, p.proname), p.oid
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid >= {FIRST_NORMAL_OID}
  UNION ALL SELECT 'type', format('%I', typname), oid FROM pg_type WHERE oid >= {FIRST_NORMAL_OID}
  UNION ALL SELECT 'extension', format('%I', extname), oid FROM pg_extension WHERE oid >= {FIRST_NORMAL_OID}
  UNION ALL SELECT 'large object', oid::text, oid FROM pg_largeobject_metadata
  UNION ALL SELECT 'event trigger', format('%I', evtname), oid FROM pg_event_trigger
  UNION ALL SELECT 'publication', format('%I', pubname), oid FROM pg_publication
) o ORDER BY oid LIMIT 20
"""


@dataclass(frozen=True)
class ClusterContents:
    """What a cluster holds beyond what initdb made (see the module docstring for "holds nothing")."""

    databases: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    tablespaces: tuple[str, ...] = ()
    alter_system: int = 0
    #: database -> its objects initdb did not make (at most 20 each)
    objects: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: every database's size (pg_database_size): what pg_checksums reads and rewrites
    bytes: int = 0

    @classmethod
    def from_rows(cls, cluster: Mapping[str, Any], objects: Mapping[str, Sequence[Mapping[str, Any]]]) -> "ClusterContents":
        """From :data:`CLUSTER_CONTENTS_SQL`'s row and, per database, :data:`DATABASE_OBJECTS_SQL`'s rows."""
        return cls(databases=tuple(cluster.get("databases") or ()), roles=tuple(cluster.get("roles") or ()),
                   tablespaces=tuple(cluster.get("tablespaces") or ()),
                   alter_system=int(cluster.get("alter_system") or 0),
                   objects={db: tuple(str(r["object"]) for r in rows) for db, rows in objects.items() if rows},
                   bytes=int(cluster.get("bytes") or 0))

    @property
    def empty(self) -> bool:
        """True when the cluster holds nothing initdb did not make."""
        return not (self.databases or self.roles or self.tablespaces or self.alter_system
                    or any(self.objects.values()))

    def summary(self) -> str:
        """What it holds, in a line (the first few of each kind)."""
        def few(items: Sequence[str]) -> str:
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        parts = []
        if self.databases:
            parts.append(f"database(s) {few(self.databases)}")
        if self.roles:
            parts.append(f"role(s) {few(self.roles)}")
        if self.tablespaces:
            parts.append(f"tablespace(s) {few(self.tablespaces)}")
        if self.alter_system:
            parts.append(f"{self.alter_system} ALTER SYSTEM setting(s)")
        for db, objs in self.objects.items():
            if objs:
                parts.append(f"in {db}: {few(objs)}")
        return "; ".join(parts) or "nothing initdb did not make"


def format_size(n: int) -> str:
    """Bytes as B/kB/MB/GB/TB (powers of 1024, one decimal)."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Seconds as "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def checksum_enable_estimate(nbytes: int, *, mb_s: float = CHECKSUM_ENABLE_MB_S) -> str:
    """What ``pg_checksums --enable`` costs for *nbytes* of data: every block read and rewritten with the cluster
    stopped, at *mb_s* MB/s."""
    return (f"{format_size(nbytes)} to read and rewrite with the cluster stopped, about "
            f"{format_duration(nbytes / (mb_s * 1024 * 1024))} at {mb_s:.0f} MB/s")
