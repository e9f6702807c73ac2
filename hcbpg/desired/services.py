"""The daemons issue 28 adds to a server, as :class:`~hcbpg.pg.services.ServiceSpec` from params (pure): etcd on
every voter (both database servers and the jumpbox) and Patroni on each database server.  How they are started,
judged and stopped (systemd or a pidfile): :mod:`hcbpg.pg.services`, run by :mod:`hcbpg.adapters.services`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired import etcd as desired_etcd
from hcbpg.desired import patroni as desired_patroni
from hcbpg.pg.services import RuntimeDir, ServiceSpec

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params

#: where each daemon's output goes when no journal takes it (hosts without systemd)
ETCD_LOG = "/var/log/etcd/etcd.log"
PATRONI_LOG = "/var/log/patroni/patroni.log"


def etcd_service(params: "Params") -> ServiceSpec:
    """etcd as Debian's ``etcd.service`` runs it (user etcd, ``Type=notify``), reading hcbpg's config file only:
    with ``ETCD_CONFIG_FILE`` set, etcd ignores every other flag and variable."""
    del params  # one file path for every environment; the member's file says the rest
    return ServiceSpec(name="etcd", user="etcd", home="/var/lib/etcd", argv=("/usr/bin/etcd",),
                       env=(("ETCD_CONFIG_FILE", desired_etcd.CONF_PATH),), log_file=ETCD_LOG, unit_type="notify",
                       stop_timeout_s=20)


def patroni_service(params: "Params") -> ServiceSpec:
    """Patroni as Debian's ``patroni@<version>-<cluster>`` unit (user postgres), started with hcbpg's config
    directory; PostgreSQL's socket directory made first (systemd-tmpfiles makes it on a server, nothing does on a
    host without systemd).  Stopping it stops PostgreSQL (fast), so its timeout is the cluster's."""
    return ServiceSpec(name=f"patroni@{desired_patroni.instance(params)}", user="postgres",
                       home="/var/lib/postgresql", argv=desired_patroni.patroni_argv(params), log_file=PATRONI_LOG,
                       runtime_dirs=(RuntimeDir("/run/postgresql", "postgres", "postgres", 0o2775),),
                       stop_timeout_s=60)
