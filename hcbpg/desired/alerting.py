"""The monitor on the jumpbox (issue 25), pure: Prometheus's config and alerting rules, Alertmanager's config, the
PostgreSQL exporter's extra queries the rules need, and node exporter's textfile metrics (pgBackRest, certificates,
the drill, the way-back sync).

The rules are rendered from params by :func:`render_rules` rather than shipped as a fixed file: their thresholds
are params (``alerting.thresholds``), and which rules apply depends on the environment (no leader / no sync
standby only under Patroni with synchronous mode, the primary's name under manual replication, etcd's quorum from
its member count, the drill only with a drill host).  A fixed file would either hard-code production's numbers or
need templating anyway; the rendered file is shown in plans and kept as a golden file.

Metric names are the exporters' own: postgres_exporter 0.11 (``pg_up``, ``pg_stat_archiver_*``,
``pg_stat_activity_*``, ``pg_settings_*``, hcbpg's ``pg_replication_*`` of :mod:`hcbpg.desired.monitoring`),
node_exporter 1.5 (``node_filesystem_*``), Patroni 3.0.2's ``/metrics`` (``patroni_primary``,
``patroni_sync_standby``, ``patroni_is_paused``), etcd 3.4's ``/metrics`` (``etcd_server_has_leader``); what no
exporter has is ``hcbpg_*``, written into node exporter's textfile directory by the health job on each server
(:mod:`hcbpg.desired.textfile_metrics`, stdlib-only: shipped inside the job) or read by the extra queries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from hcbpg.desired import etcd as desired_etcd
from hcbpg.desired import monitoring
from hcbpg.desired import patroni as desired_patroni
from hcbpg.desired import tls as desired_tls
from hcbpg.desired.textfile_metrics import TEXTFILE as TEXTFILE  # its home is the stdlib-only renderer
from hcbpg.desired.textfile_metrics import TEXTFILE_DIR as TEXTFILE_DIR
from hcbpg.errors import HcbpgError, ParamsError
from hcbpg.params_alerting import duration_s
from hcbpg.pg.conf import MANAGED_HEADER
from hcbpg.secrets import is_secret_ref

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params
    from hcbpg.params_alerting import AlertingParams

PLACEHOLDER = "<secret>"
PROMETHEUS_CONFIG = "/etc/prometheus/hcbpg.yml"
RULES_PATH = "/etc/prometheus/hcbpg.rules.yml"
ALERTMANAGER_CONFIG = "/etc/prometheus/alertmanager-hcbpg.yml"
NODE_EXPORTER_PORT = 9100
#: Prometheus's own client certificate for etcd's /metrics (etcd has client-cert-auth on): no subject, client
#: authentication only, like etcd's gateway certificate; apart from it because the prometheus user must read the
#: key, and etcd's TLS directory is etcd's, the gateway's root's
ETCD_CLIENT_CERT = "/etc/prometheus/hcbpg-tls/etcd-client.crt"
ETCD_CLIENT_KEY = "/etc/prometheus/hcbpg-tls/etcd-client.key"
ETCD_CLIENT_SPEC = desired_etcd.GATEWAY_SPEC


def alerting_params(params: "Params") -> "AlertingParams":
    """``params.alerting``, or a ParamsError naming the missing section."""
    if params.alerting is None:
        raise ParamsError("params", ["alerting: required for the monitor (see params/production.yaml)"])
    return params.alerting


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000, allow_unicode=True)


def _primary_name(params: "Params") -> str:
    return next(s.name for s in params.servers if s.role == "primary")


# Prometheus ------------------------------------------------------------------------------------------------

def _static(targets: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One static_config per (address, server name): every series carries ``server``."""
    return [{"targets": [addr], "labels": {"server": name}} for addr, name in targets]


def scrape_targets(params: "Params") -> dict[str, list[tuple[str, str]]]:
    """Each job's (address, server) pairs, over the private network (loopback for the monitor itself)."""
    a = alerting_params(params)
    jumpbox = params.jumpbox
    hosts = [(s.private_ip, s.name) for s in params.servers]
    if jumpbox is not None:
        hosts.append((jumpbox.private_ip, jumpbox.name))
    monitor = jumpbox.name if jumpbox is not None else "monitor"
    out = {
        "prometheus": [(f"127.0.0.1:{a.prometheus_port}", monitor)],
        "alertmanager": [(f"127.0.0.1:{a.alertmanager_port}", monitor)],
        "node": [(f"{ip}:{a.node_exporter_port}", name) for ip, name in hosts],
        "postgres": [(monitoring.exporter_listen(s), s.name) for s in params.servers],
    }
    if desired_patroni.managed(params):
        port = desired_patroni.patroni_params(params).rest_port
        out["patroni"] = [(f"{s.private_ip}:{port}", s.name) for s in desired_patroni.members(params)]
    if params.replication is not None and params.replication.etcd is not None and jumpbox is not None:
        port = desired_etcd.etcd_params(params).client_port
        out["etcd"] = [(f"{m.private_ip}:{port}", m.name) for m in desired_etcd.etcd_members(params)]
    return out


def prometheus_config(params: "Params") -> dict[str, Any]:
    """Prometheus's config as data (no secret in it)."""
    a = alerting_params(params)
    ca = desired_tls.client_ca_path(params)
    targets = scrape_targets(params)
    jobs: list[dict[str, Any]] = []
    for job, pairs in targets.items():
        cfg: dict[str, Any] = {"job_name": job}
        if job in ("node", "postgres"):
            # both exporters serve TLS only (exporter-toolkit's web config), with a certificate naming the private IP
            cfg.update(scheme="https", tls_config={"ca_file": ca})
        elif job == "patroni":
            # GET /metrics needs no client certificate (verify_client optional); the REST certificate names the IP
            cfg.update(scheme="https", tls_config={"ca_file": ca})
        elif job == "etcd":
            cfg.update(scheme="https", tls_config={"ca_file": ca, "cert_file": ETCD_CLIENT_CERT,
                                                   "key_file": ETCD_CLIENT_KEY})
        if job == "postgres":
            # postgres_exporter 0.11 labels its series server="host:port": Prometheus keeps hcbpg's server label
            # and renames the exporter's to exported_server, which only repeats the address
            cfg["metric_relabel_configs"] = [{"action": "labeldrop", "regex": "exported_server"}]
        cfg["static_configs"] = _static(pairs)
        jobs.append(cfg)
    return {
        "global": {"scrape_interval": a.scrape_interval, "evaluation_interval": a.evaluation_interval,
                   "scrape_timeout": _scrape_timeout(a.scrape_interval),
                   "external_labels": {"environment": params.environment}},
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{a.alertmanager_port}"]}]}]},
        "rule_files": [RULES_PATH],
        "scrape_configs": jobs,
    }


def _scrape_timeout(interval: str) -> str:
    """Prometheus's default (10 s), never longer than the interval."""
    s = duration_s(interval)
    return "10s" if s >= 10 else interval


def render_prometheus_config(params: "Params") -> str:
    """``/etc/prometheus/hcbpg.yml`` on the jumpbox: scrape jobs, the rules file, the local Alertmanager."""
    a = alerting_params(params)
    head = (f"{MANAGED_HEADER}\n# Prometheus on the monitor of {params.environment}: retention {a.retention} "
            f"(--storage.tsdb.retention.time), rules in {RULES_PATH}.\n")
    return head + _dump(prometheus_config(params))


def prometheus_args(params: "Params") -> list[str]:
    """Prometheus's command-line options (the Debian unit's ARGS)."""
    a = alerting_params(params)
    # resend-delay: a firing alert is sent to Alertmanager every evaluation (default 1m) and valid there for 4
    # times that; a stopped Prometheus's Heartbeat thus ends at Alertmanager within 4 evaluations, not 4 minutes
    return [f"--config.file={PROMETHEUS_CONFIG}", f"--storage.tsdb.retention.time={a.retention}",
            f"--web.listen-address=127.0.0.1:{a.prometheus_port}",
            f"--rules.alert.resend-delay={a.evaluation_interval}"]


# rules ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One alerting rule and its runbook line."""

    name: str
    expr: str
    severity: str
    summary: str
    meaning: str
    action: str
    runbook: str
    for_: str | None = None


def _pct(v: float) -> str:
    return f"{v:g}"


def rules(params: "Params") -> list[Rule]:
    """Every alerting rule that applies to these params, with thresholds from ``alerting.thresholds``."""
    a = alerting_params(params)
    t = a.thresholds
    f = a.for_duration
    n_servers = len(params.servers)
    patroni = desired_patroni.managed(params)
    out: list[Rule] = []
    if patroni:
        out.append(Rule(
            "PatroniNoLeader", '(sum(patroni_primary{job="patroni"}) or vector(0)) < 1', "critical",
            "No Patroni member is the leader",
            "No member of the cluster says it is the primary: the app cannot write.",
            "Run `hcbpg status` for each member's state; if etcd has no quorum, bring a voter back (Patroni "
            "keeps the leader under failsafe only while every member answers).",
            "hcbpg status; notebook 11_switchover (after a failover); design notes §5", f))
        if desired_patroni.patroni_params(params).synchronous_mode:
            out.append(Rule(
                "NoSyncStandby",
                '(sum(patroni_sync_standby{job="patroni"}) or vector(0)) == 0 '
                'and on() sum(patroni_primary{job="patroni"}) >= 1', "warning",
                "Synchronous mode is on but no member is the sync standby",
                "Commits are acknowledged without a second copy: a failover now could lose them.",
                "Check the replica streams (ReplicaNotStreaming) and its Patroni runs; `hcbpg status`.",
                "hcbpg status; notebook 10_high_availability", f))
    else:
        primary = _primary_name(params)
        sel = f'job="postgres",server="{primary}"'
        out.append(Rule(
            "PrimaryUnreachable", f"max by (server) (pg_up{{{sel}}}) < 1 or absent(pg_up{{{sel}}})", "critical",
            f"The primary {primary} does not answer",
            "The exporter cannot reach PostgreSQL on the primary, or the exporter itself is gone: the app "
            "cannot write.",
            "Check the server and its PostgreSQL (`hcbpg status`); promote the replica only through step 11.",
            "hcbpg status; notebook 11_failover", f))
    out += [
        Rule("PostgresDown", 'pg_up{job="postgres"} == 0', "critical",
             "PostgreSQL on {{ $labels.server }} does not answer its exporter",
             "The exporter runs but cannot connect: PostgreSQL is down, refuses connections, or the exporter's "
             "role or certificate is wrong.",
             "Look at PostgreSQL's log on the server; `hcbpg status` shows what else fails.",
             "hcbpg status; notebook 15_health", f),
        Rule("ReplicaNotStreaming",
             f'(count(pg_stat_replication_pg_wal_lsn_diff{{job="postgres",state="streaming"}}) or vector(0)) '
             f'< {n_servers - 1} and on() count(pg_replication_is_replica{{job="postgres"}} == 0) >= 1',
             "critical",
             "A replica does not stream from the primary",
             f"The primary has fewer than {n_servers - 1} streaming standby(s): a failover would lose data or "
             "find no candidate.",
             "Check the replica's PostgreSQL log and its slot; rebuild it if WAL it needs is gone.",
             "hcbpg status; notebook 10_replication (or 10_high_availability under Patroni)", f),
        Rule("ReplicaLagging",
             f'pg_replication_lag{{job="postgres"}} > {_pct(t.replica_lag_s)} '
             f'and pg_replication_is_replica{{job="postgres"}} == 1', "warning",
             "Replica {{ $labels.server }} is {{ $value | humanizeDuration }} behind",
             f"Replay lags more than {_pct(t.replica_lag_s)} s behind the primary: reads there are stale and a "
             "failover would wait or lose the difference.",
             "Look for a long query on the replica (recovery conflicts), its disk and network.",
             "hcbpg status; notebook 15_health", f),
        Rule("ArchivingFailing",
             # the newest attempt failed (pg_stat_archiver: last_failed_time after last_archived_time, hcbpg's
             # exporter query): true from the first failure on, under WAL load too; held for `for` so one
             # failure the next try mends does not page.  The counters' 10-minute window stays as a fallback
             # (an exporter without hcbpg's query)
             'hcbpg_archiver_failing{job="postgres"} == 1 or '
             '(increase(pg_stat_archiver_failed_count{job="postgres"}[10m]) > 0 '
             'unless increase(pg_stat_archiver_archived_count{job="postgres"}[10m]) > 0)', "critical",
             "WAL archiving fails on {{ $labels.server }}",
             "archive_command's newest attempt failed (or it failed and nothing was archived for 10 minutes): "
             "point-in-time recovery stops at the last archived WAL and pg_wal grows.",
             "Run `pgbackrest check` on the server; check the repository (S3) answers and its credentials.",
             "hcbpg status; notebook 05_pgbackrest, 08_start_archiving", f),
        Rule("ArchiveStale",
             # the server's own archive_timeout; when it is off (0), alerting.thresholds.archive_timeout_s
             f'pg_stat_archiver_last_archive_age{{job="postgres"}} > '
             f'((pg_settings_archive_timeout_seconds{{job="postgres"}} > 0) or '
             f'(pg_settings_archive_timeout_seconds{{job="postgres"}} * 0 + {t.archive_timeout_s})) '
             f'+ {t.archive_age_margin_s} and pg_replication_is_replica{{job="postgres"}} == 0 '
             # an idle primary: archive_timeout never switches a segment holding only a standby snapshot
             'unless on (server) hcbpg_archiver_idle{job="postgres"} == 1', "warning",
             "The newest archived WAL on {{ $labels.server }} is {{ $value | humanizeDuration }} old",
             "Nothing was archived for longer than the server's archive_timeout (or, with it off, "
             f"{t.archive_timeout_s} s) plus the margin ({t.archive_age_margin_s} s) while WAL was written "
             "since: archiving is stuck.",
             "Run `pgbackrest check`; look at the archive-push log (async: the spool's queue).",
             "notebook 05_pgbackrest", f),
        Rule("BackupFullTooOld",
             f'time() - max by (stanza, repo) (hcbpg_pgbackrest_backup_last_timestamp_seconds{{type="full"}}) '
             f'> {_pct(t.backup_full_max_age_h * 3600)}', "warning",
             "The newest full backup in repo{{ $labels.repo }} is {{ $value | humanizeDuration }} old",
             f"No full backup for longer than {_pct(t.backup_full_max_age_h)} h: restores replay more WAL, and "
             "retention may expire what the last full needs.",
             "Look at the backup job's log on the leader (cron); run a full backup by hand.",
             "notebook 05_pgbackrest", None),
        Rule("BackupDiffTooOld",
             f'time() - max by (stanza, repo) (hcbpg_pgbackrest_backup_last_timestamp_seconds'
             f'{{type=~"full|diff"}}) > {_pct(t.backup_diff_max_age_h * 3600)}', "warning",
             "The newest differential or full backup in repo{{ $labels.repo }} is {{ $value | humanizeDuration }} "
             "old",
             f"No differential (or full) backup for longer than {_pct(t.backup_diff_max_age_h)} h: the daily "
             "backup did not run or failed.",
             "Look at the backup job's log on the leader (cron); run a differential backup by hand.",
             "notebook 05_pgbackrest", None),
        Rule("BackupInfoStale",
             'time() - max(hcbpg_pgbackrest_info_timestamp_seconds) > 3600 '
             'or absent(hcbpg_pgbackrest_info_timestamp_seconds)', "warning",
             "pgBackRest's info has not been read for an hour",
             "The backup-age alerts see nothing new: the textfile job does not run or `pgbackrest info` fails.",
             "Run `pgbackrest info` on the servers; check the textfile job and node exporter's textfile collector.",
             "notebook 05_pgbackrest", f),
        Rule("BackupRepositoryError",
             'max by (stanza, repo) (hcbpg_pgbackrest_repo_status_code) != 0', "critical",
             "pgBackRest reports repo{{ $labels.repo }} of {{ $labels.stanza }} in error",
             "`pgbackrest info` gives the repository a non-zero status: backups or the archive are missing or "
             "unreadable.",
             "Run `pgbackrest info` and `pgbackrest check` on the leader.",
             "notebook 05_pgbackrest", f),
    ]
    if params.drill is not None:
        out.append(Rule(
            "DrillTooOld",
            f'time() - max(hcbpg_drill_last_success_timestamp_seconds) > {_pct(t.drill_max_age_days * 86400)} '
            'or absent(hcbpg_drill_last_success_timestamp_seconds)', "warning",
            f"No restore drill succeeded within {_pct(t.drill_max_age_days)} days",
            "Nobody has proved lately that the backups restore.",
            "Run the restore drill.", "notebook 12_restore_drill", None))
    if params.jumpbox is not None and params.pgbackrest is not None:  # the weekly drill on the jumpbox
        out.append(Rule(
            "DrillFailing", "max by (repo) (hcbpg_drill_failed) > 0", "warning",
            "The newest scheduled restore drill of repo{{ $labels.repo }} failed",
            "The weekly drill on the jumpbox could not restore, read or verify that repository's newest backup: "
            "a recovery from it may fail too.",
            "Read /var/log/hcbpg-drill.log and /var/lib/hcbpg-drill/state.json on the jumpbox; run "
            "`hcbpg-drill N` there again once mended.", "notebook 12_restore_drill", f))
    out += [
        Rule("DiskFull",
             f'100 * (1 - node_filesystem_avail_bytes{{job="node",fstype!~"tmpfs|devtmpfs|ramfs|squashfs"}} '
             f'/ node_filesystem_size_bytes{{job="node",fstype!~"tmpfs|devtmpfs|ramfs|squashfs"}}) '
             f'> {_pct(t.disk_pct)}', "warning",
             "{{ $labels.mountpoint }} on {{ $labels.server }} is {{ $value | humanize }} % full",
             f"A filesystem is fuller than {_pct(t.disk_pct)} %: PostgreSQL stops when pg_wal cannot grow.",
             "Find what grew (pg_wal held by a slot or failing archiving, logs, the dump directory); resize "
             "the volume or the server.",
             "hcbpg status; notebook 15_health", f),
    ]
    bound_mb = t.wal_bound_mb if t.wal_bound_mb is not None else params.health.wal_fail_mb
    bound = bound_mb * 1024 * 1024
    out += [
        Rule("WalNearBound",
             f'hcbpg_wal_bytes{{job="postgres"}} > {_pct(t.wal_pct / 100 * bound)} '
             f'or predict_linear(hcbpg_wal_bytes{{job="postgres"}}[30m], 3600) > {_pct(bound)}', "warning",
             "pg_wal on {{ $labels.server }} grows toward its bound",
             f"pg_wal is above {_pct(t.wal_pct)} % of {_pct(bound_mb)} MB, or will pass it within an hour at "
             "its current rate: archiving or a slot holds WAL back.",
             "Check ArchivingFailing and the slots (`hcbpg status`); drop a slot nobody uses.",
             "hcbpg status; notebook 15_health", f),
        Rule("ConnectionsHigh",
             f'sum by (server) (pg_stat_activity_count{{job="postgres"}}) > {_pct(t.connections_pct / 100)} '
             f'* max by (server) (pg_settings_max_connections{{job="postgres"}})', "warning",
             "{{ $labels.server }} uses {{ $value }} connections, over "
             f"{_pct(t.connections_pct)} % of max_connections",
             "New connections will be refused once max_connections is reached.",
             "Look at pg_stat_activity for idle sessions and the app's pool size.",
             "hcbpg status; notebook 15_health", f),
        Rule("XidAgeHigh",
             f'max by (server) (hcbpg_xid_age{{job="postgres"}}) > {t.xid_age}', "critical",
             "Transaction ID age on {{ $labels.server }} is {{ $value | humanize }}",
             f"A database's oldest unfrozen transaction ID is over {t.xid_age:,} transactions old: at about 2.1 "
             "billion PostgreSQL stops accepting writes.",
             "Find what blocks VACUUM (a long transaction, an old prepared transaction, a slot's xmin) and run "
             "VACUUM FREEZE on the oldest tables.",
             "hcbpg status", f),
        Rule("LongTransaction",
             f'max by (server, datname) (pg_stat_activity_max_tx_duration{{job="postgres"}}) '
             f'> {_pct(t.long_transaction_minutes * 60)}', "warning",
             "A transaction on {{ $labels.server }} has been open for {{ $value | humanizeDuration }}",
             f"A transaction open longer than {_pct(t.long_transaction_minutes)} minutes holds back VACUUM and "
             "can hold locks others wait for.",
             "Find it in pg_stat_activity (xact_start); ask its owner, or pg_terminate_backend it.",
             "hcbpg status", f),
        Rule("CertificateExpiring",
             f'hcbpg_certificate_expiry_timestamp_seconds - time() < {t.certificate_days * 86400}', "critical",
             "{{ $labels.path }} on {{ $labels.server }} expires in {{ $value | humanizeDuration }}",
             f"A certificate ends within {t.certificate_days} days: every client that verifies (the app "
             "included) stops connecting when it does.",
             "Renew it: step 03 renews PostgreSQL's (renew_days), step 10 Patroni's and etcd's.",
             "notebook 03_allow_connections; notebook 10_high_availability", None),
    ]
    if "etcd" in scrape_targets(params):
        members = len(scrape_targets(params)["etcd"])
        q = desired_etcd.quorum(members)
        out += [
            Rule("EtcdNoQuorum",
                 f'(count(etcd_server_has_leader{{job="etcd"}} == 1) or vector(0)) < {q}', "critical",
                 "etcd has no quorum",
                 f"Fewer than {q} of {members} etcd members have a leader: Patroni cannot renew its lease; the "
                 "leader keeps serving under failsafe only while every member answers.",
                 "Bring the members back (`hcbpg status`); never start a new cluster over the old data.",
                 "hcbpg status; design notes §5", f),
            Rule("EtcdMemberDown",
                 'etcd_server_has_leader{job="etcd"} == 0 or up{job="etcd"} == 0', "warning",
                 "etcd member {{ $labels.server }} is down or has no leader",
                 "One voter is lost: one more and etcd has no quorum.",
                 "Start etcd on it (journal or its log); check the certificates and the private network.",
                 "hcbpg status; notebook 10_high_availability", f),
        ]
    if patroni:
        out.append(Rule(
            "PatroniPausedTooLong", 'max(patroni_is_paused{job="patroni"}) == 1', "warning",
            f"Patroni has been paused for more than {_pct(t.paused_max_hours)} h",
            "Maintenance mode is on: Patroni will not fail over.",
            "Finish the maintenance and resume (step 11b).", "notebook 11b_maintenance",
            f"{_pct(t.paused_max_hours * 60)}m"))
    out += [
        Rule("WayBackPastEnd", "hcbpg_wayback_until_timestamp_seconds < time()", "warning",
             "The way-back sync to Heroku runs past its end",
             "The Bucardo sync back to the old database was meant to end: it still costs writes and a trigger on "
             "every table.",
             "Remove it (step 16) or extend the window on purpose.",
             "notebook 16_online_cleanup", f),
        Rule("ServerDown", 'up{job="node"} == 0', "critical",
             "{{ $labels.server }} does not answer",
             "Node exporter on the server does not answer over the private network: the host is down or cut off.",
             "Check the server in Hetzner's console and its private network; `hcbpg status`.",
             "hcbpg status", f),
        Rule("TargetDown", 'up{job!="node"} == 0', "warning",
             "{{ $labels.job }} on {{ $labels.server }} does not answer its scrape",
             "An exporter or service the monitor scrapes is down or refuses it (TLS, firewall).",
             "Check that service on that host; its alerts are blind meanwhile.",
             "hcbpg status", f),
        Rule("Heartbeat", 'sum(up{job="prometheus"}) >= 1', "none",
             "The monitor is alive",
             "Always firing while Prometheus scrapes and evaluates: sent to the external dead-man, which pages "
             "when it stops arriving.",
             "Nothing while it fires; if the dead-man pages, the monitor on the jumpbox is down: start it.",
             "hcbpg status", None),
    ]
    return out


def rules_config(params: "Params") -> dict[str, Any]:
    out = []
    for r in rules(params):
        rule: dict[str, Any] = {"alert": r.name, "expr": r.expr}
        if r.for_:
            rule["for"] = r.for_
        rule["labels"] = {"severity": r.severity}
        rule["annotations"] = {"summary": r.summary, "description": r.meaning, "action": r.action,
                               "runbook": r.runbook}
        out.append(rule)
    return {"groups": [{"name": "hcbpg", "rules": out}]}


def render_rules(params: "Params") -> str:
    """``/etc/prometheus/hcbpg.rules.yml``: every rule of :func:`rules`."""
    return f"{MANAGED_HEADER}\n# Alerting rules of {params.environment} (hcbpg.desired.alerting.rules).\n" + \
        _dump(rules_config(params))


# the PostgreSQL exporter's extra queries -------------------------------------------------------------------

#: what the rules read that postgres_exporter 0.11 has no collector for: transaction ID age per database, the
#: size of pg_wal and whether archiving's newest attempt failed (the exporter has pg_stat_archiver's counters and
#: the last archive's age, not the last failure's time); pg_ls_waldir needs pg_monitor, which the exporter's role
#: has; appended to :func:`hcbpg.desired.monitoring.render_exporter_queries`'s file
EXPORTER_QUERIES = """
hcbpg_xid:
  query: "SELECT datname, age(datfrozenxid)::float8 AS age FROM pg_database WHERE datallowconn"
  master: true
  metrics:
    - datname:
        usage: "LABEL"
        description: "Database"
    - age:
        usage: "GAUGE"
        description: "Transactions since the database's oldest unfrozen transaction ID"

hcbpg_wal:
  query: "SELECT COALESCE(sum(size), 0)::float8 AS bytes FROM pg_ls_waldir()"
  master: true
  metrics:
    - bytes:
        usage: "GAUGE"
        description: "Size of pg_wal in bytes"

hcbpg_archiver:
  query: >-
    SELECT (last_failed_time IS NOT NULL AND last_failed_time >
    COALESCE(last_archived_time, '-infinity'::timestamptz))::int AS failing,
    CASE WHEN pg_is_in_recovery() OR last_archived_wal IS NULL THEN 0
    ELSE (pg_walfile_name(pg_current_wal_lsn() - 8192) <= last_archived_wal)::int END AS idle
    FROM pg_stat_archiver
  master: true
  metrics:
    - failing:
        usage: "GAUGE"
        description: "1 while archive_command's newest attempt failed (no success since the last failure)"
    - idle:
        usage: "GAUGE"
        description: "1 on a primary that wrote under 8 kB of WAL since its newest archived segment (nothing to archive)"
"""


# Alertmanager ----------------------------------------------------------------------------------------------

def _secret(value: str, secrets: Mapping[str, str] | None) -> str:
    """A plain URL as it is; a secret reference's value from *secrets*, or the placeholder."""
    if not is_secret_ref(value):
        return value
    if secrets is None:
        return PLACEHOLDER
    return secrets[value]


def secret_refs(params: "Params") -> list[str]:
    """The secret references Alertmanager's config needs resolved (what the caller passes as *secrets*)."""
    a = alerting_params(params)
    r = a.receivers
    refs = [a.heartbeat_url]
    if r.slack:
        refs.append(r.slack.webhook_url)
    if r.email and r.email.password:
        refs.append(r.email.password)
    if r.webhook:
        refs.append(r.webhook.url)
        if r.webhook.bearer_token:
            refs.append(r.webhook.bearer_token)
    return [x for x in dict.fromkeys(refs) if is_secret_ref(x)]


def _receiver_configs(a: "AlertingParams", which: Sequence[str], secrets: Mapping[str, str] | None
                      ) -> dict[str, Any]:
    r = a.receivers
    cfg: dict[str, Any] = {}
    if "slack" in which and r.slack:
        slack: dict[str, Any] = {"api_url": _secret(r.slack.webhook_url, secrets), "send_resolved": True,
                                 "title": '[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} '
                                          '({{ .CommonLabels.environment }})',
                                 "text": '{{ range .Alerts }}{{ .Annotations.summary }}: '
                                         '{{ .Annotations.description }} What to do: {{ .Annotations.action }} '
                                         '({{ .Annotations.runbook }})\n{{ end }}'}
        if r.slack.channel:
            slack["channel"] = r.slack.channel
        cfg["slack_configs"] = [slack]
    if "email" in which and r.email:
        email: dict[str, Any] = {"to": ", ".join(r.email.to), "from": r.email.sender,
                                 "smarthost": r.email.smarthost, "require_tls": True, "send_resolved": True}
        if r.email.username and r.email.password:
            email["auth_username"] = r.email.username
            email["auth_password"] = _secret(r.email.password, secrets)
        cfg["email_configs"] = [email]
    if "webhook" in which and r.webhook:
        hook: dict[str, Any] = {"url": _secret(r.webhook.url, secrets), "send_resolved": True}
        if r.webhook.bearer_token:
            hook["http_config"] = {"authorization": {"type": "Bearer",
                                                     "credentials": _secret(r.webhook.bearer_token, secrets)}}
        cfg["webhook_configs"] = [hook]
    return cfg


#: alerts a down server makes meaningless on that server (its lag, its exporters, its etcd member)
_INHIBITED_BY_SERVER_DOWN = ("ReplicaLagging", "PostgresDown", "TargetDown", "EtcdMemberDown", "ArchiveStale",
                             "ArchivingFailing", "ConnectionsHigh", "LongTransaction", "WalNearBound")


def alertmanager_config(params: "Params", secrets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Alertmanager's config as data; secrets from *secrets* (reference -> value) or the placeholder."""
    a = alerting_params(params)
    configured = [k for k in ("slack", "email", "webhook") if getattr(a.receivers, k) is not None]
    receivers: list[dict[str, Any]] = [{"name": "all", **_receiver_configs(a, configured, secrets)}]
    routes: list[dict[str, Any]] = [{
        "receiver": "deadman", "matchers": ['alertname="Heartbeat"'],
        "group_by": ["alertname"], "group_wait": "0s", "group_interval": a.heartbeat_interval,
        "repeat_interval": a.heartbeat_interval, "continue": False}]
    receivers.append({"name": "deadman", "webhook_configs": [
        {"url": _secret(a.heartbeat_url, secrets), "send_resolved": False}]})
    if a.warning_receivers is not None:
        receivers.append({"name": "warnings", **_receiver_configs(a, a.warning_receivers, secrets)})
        routes.append({"receiver": "warnings", "matchers": ['severity="warning"']})
    return {
        "route": {"receiver": "all", "group_by": ["alertname", "environment", "server"],
                  "group_wait": a.group_wait, "group_interval": a.group_interval,
                  "repeat_interval": a.repeat_interval, "routes": routes},
        "receivers": receivers,
        "inhibit_rules": [
            {"source_matchers": ['alertname="ServerDown"'],
             "target_matchers": [f'alertname=~"{"|".join(_INHIBITED_BY_SERVER_DOWN)}"'],
             "equal": ["environment", "server"]},
            # two servers: a down one is the replica that does not stream
            {"source_matchers": ['alertname="ServerDown"'],
             "target_matchers": ['alertname=~"ReplicaNotStreaming|NoSyncStandby"'], "equal": ["environment"]},
            {"source_matchers": ['alertname=~"PatroniNoLeader|PrimaryUnreachable"'],
             "target_matchers": ['alertname=~"ReplicaNotStreaming|NoSyncStandby|ArchiveStale|ArchivingFailing"'],
             "equal": ["environment"]},
            {"source_matchers": ['alertname="EtcdNoQuorum"'], "target_matchers": ['alertname="EtcdMemberDown"'],
             "equal": ["environment"]},
            {"source_matchers": ['alertname="EtcdMemberDown"'], "target_matchers": ['alertname="TargetDown"',
                                                                                   'job="etcd"'],
             "equal": ["environment", "server"]},
        ],
    }


def render_alertmanager_config(params: "Params", secrets: Mapping[str, str] | None = None) -> str:
    """``/etc/prometheus/alertmanager-hcbpg.yml`` (mode 0640, group prometheus: it holds the receivers' secrets);
    ``secrets=None`` renders them as the placeholder (plans, diffs, records)."""
    return f"{MANAGED_HEADER}\n# Alertmanager of {params.environment}: receivers, routes, inhibitions.\n" + \
        _dump(alertmanager_config(params, secrets))


def redact(text: str, secrets: Mapping[str, str]) -> str:
    """*text* with every secret value replaced by the placeholder."""
    for value in sorted(secrets.values(), key=len, reverse=True):
        if value:
            text = text.replace(value, PLACEHOLDER)
    return text


# node exporter's textfile ----------------------------------------------------------------------------------

def textfile_certificates(params: "Params", server_name: str) -> list[str]:
    """The TLS certificates hcbpg installs on database server *server_name* whose ends the health job reads as
    postgres into its textfile: PostgreSQL's, the CA, Patroni's REST and etcd-client certificates under Patroni.
    etcd's member certificate is not among them: its directory is etcd's (0750), postgres cannot read it; it is
    issued by step 10 with Patroni's and ends with them."""
    del server_name  # every database server has the same set (one day per server if that changes)
    out = [desired_tls.server_cert_path(params), desired_tls.client_ca_path(params)]
    if desired_patroni.managed(params):
        out.append(desired_patroni.REST_CERT)
        if params.replication is not None and params.replication.etcd is not None:
            out.append(desired_patroni.ETCD_CLIENT_CERT)
    return out


# what the monitor says (its APIs' answers, parsed) ------------------------------------------------------------

@dataclass(frozen=True)
class ActiveAlert:
    """One alert Alertmanager holds (``GET /api/v2/alerts``): firing unless silenced or inhibited."""

    name: str
    severity: str
    server: str
    state: str
    starts_at: str
    summary: str


@dataclass(frozen=True)
class TargetHealth:
    """One scrape target as Prometheus last saw it (``GET /api/v1/targets``)."""

    job: str
    server: str
    url: str
    health: str
    error: str


def parse_alerts(text: str) -> list[ActiveAlert]:
    """Alertmanager's ``/api/v2/alerts`` answer; the Heartbeat (always firing: the monitor is alive) left out."""
    try:
        data = json.loads(text)
    except ValueError:
        raise HcbpgError(f"Alertmanager: GET /api/v2/alerts answered no JSON: {text[:200]!r}") from None
    out = []
    for a in data if isinstance(data, list) else []:
        labels = a.get("labels") or {}
        if labels.get("alertname") == "Heartbeat":
            continue
        out.append(ActiveAlert(name=str(labels.get("alertname", "?")), severity=str(labels.get("severity", "")),
                               server=str(labels.get("server", "")),
                               state=str((a.get("status") or {}).get("state", "")),
                               starts_at=str(a.get("startsAt", "")),
                               summary=str((a.get("annotations") or {}).get("summary", ""))))
    return sorted(out, key=lambda x: (x.name, x.server))


def parse_targets(text: str) -> list[TargetHealth]:
    """Prometheus's ``/api/v1/targets`` answer (the active targets)."""
    try:
        data = json.loads(text)
    except ValueError:
        raise HcbpgError(f"Prometheus: GET /api/v1/targets answered no JSON: {text[:200]!r}") from None
    out = []
    for t in ((data.get("data") or {}).get("activeTargets") or []) if isinstance(data, dict) else []:
        labels = t.get("labels") or {}
        out.append(TargetHealth(job=str(labels.get("job", "")), server=str(labels.get("server", "")),
                                url=str(t.get("scrapeUrl", "")), health=str(t.get("health", "")),
                                error=str(t.get("lastError", ""))))
    return sorted(out, key=lambda x: (x.job, x.server))
