"""The daemons issue 28 adds to a server, as :class:`~hcbpg.pg.services.ServiceSpec` from params (pure): etcd on
every voter (both database servers and the jumpbox) and Patroni on each database server.  How they are started,
judged and stopped (systemd or a pidfile): :mod:`hcbpg.pg.services`, run by :mod:`hcbpg.adapters.services`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hcbpg.desired import alerting as desired_alerting
from hcbpg.desired import etcd as desired_etcd
from hcbpg.desired import monitoring as desired_monitoring
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


# the monitor (issue 25): Prometheus and Alertmanager on the jumpbox, node exporter on every machine ------------

#: where the monitor's daemons write when no journal takes their output (Debian's packages make the directory)
PROMETHEUS_LOG = "/var/log/prometheus/prometheus.log"
ALERTMANAGER_LOG = "/var/log/prometheus/alertmanager.log"
NODE_EXPORTER_LOG = "/var/log/prometheus/node-exporter.log"
PROMETHEUS_DATA = "/var/lib/prometheus/metrics2"
ALERTMANAGER_DATA = "/var/lib/prometheus/alertmanager"


def prometheus_service(params: "Params") -> ServiceSpec:
    """Prometheus as Debian's ``prometheus.service`` runs it (user prometheus), with hcbpg's config, retention and
    a loopback listener (:func:`hcbpg.desired.alerting.prometheus_args`)."""
    return ServiceSpec(name="prometheus", user="prometheus", home="/var/lib/prometheus",
                       argv=("/usr/bin/prometheus", *desired_alerting.prometheus_args(params),
                             f"--storage.tsdb.path={PROMETHEUS_DATA}"),
                       log_file=PROMETHEUS_LOG, stop_timeout_s=60)


def alertmanager_service(params: "Params") -> ServiceSpec:
    """Alertmanager as Debian's ``prometheus-alertmanager.service`` (user prometheus): hcbpg's config, loopback
    only, no cluster (one Alertmanager: no gossip port opened)."""
    a = params.alerting
    port = a.alertmanager_port if a is not None else 9093
    return ServiceSpec(name="prometheus-alertmanager", user="prometheus", home="/var/lib/prometheus",
                       argv=("/usr/bin/prometheus-alertmanager",
                             f"--config.file={desired_alerting.ALERTMANAGER_CONFIG}",
                             f"--storage.path={ALERTMANAGER_DATA}", f"--web.listen-address=127.0.0.1:{port}",
                             "--cluster.listen-address="),
                       log_file=ALERTMANAGER_LOG)


def node_exporter_service(params: "Params", listen_ip: str) -> ServiceSpec:
    """Node exporter (Debian's ``prometheus-node-exporter``, user prometheus) on *listen_ip* (the machine's
    private address: Prometheus on the jumpbox scrapes it), reading hcbpg's textfile directory, serving TLS only
    (exporter-toolkit's web config, :data:`hcbpg.desired.monitoring.EXPORTER_WEB_CONFIG`)."""
    a = params.alerting
    port = a.node_exporter_port if a is not None else 9100
    return ServiceSpec(name="prometheus-node-exporter", user="prometheus", home="/var/lib/prometheus",
                       argv=("/usr/bin/prometheus-node-exporter", f"--web.listen-address={listen_ip}:{port}",
                             f"--collector.textfile.directory={desired_alerting.TEXTFILE_DIR}",
                             f"--web.config.file={desired_monitoring.EXPORTER_WEB_CONFIG}"),
                       log_file=NODE_EXPORTER_LOG)
