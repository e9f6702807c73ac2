"""The archiver as ``hcbpg status`` reads it (issue 24): the newest archived WAL's age and the server's
``archive_timeout``, read-only; judged by :func:`hcbpg.desired.monitor_report.check_archive_age`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired.monitor_report import ARCHIVE_AGE_SQL, ArchiveAge
from hcbpg.ops import cluster as pg_cluster

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike
    from hcbpg.params import Params


def get_archive_age(host: "HostLike", params: "Params") -> ArchiveAge:
    """pg_stat_archiver's newest archived WAL, its age (the server's clock) and archive_timeout on *host*."""
    return ArchiveAge.from_row(host.name, pg_cluster.get_psql(host, params).query(ARCHIVE_AGE_SQL)[0])
