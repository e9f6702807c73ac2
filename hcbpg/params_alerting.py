"""The ``alerting:`` section of params (issue 25): the monitor on the jumpbox (Prometheus and Alertmanager), the
thresholds its rules use, where alerts go (receivers, secrets by reference) and the heartbeat's dead-man.  Params
without the section monitor nothing and change nothing."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hcbpg.param_types import Model, Name, SecretRef
from hcbpg.secrets import is_secret_ref

#: a Prometheus duration as hcbpg writes it (one unit: 15s, 1m, 15d)
DURATION = r"^[1-9][0-9]*(ms|s|m|h|d|w|y)$"
Duration = Annotated[str, Field(pattern=DURATION)]
_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~\-/%?=&]*)?$")
_EMAIL = re.compile(r"^[^@\s<>]+@[A-Za-z0-9.\-]+$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def duration_s(text: str) -> float:
    """Seconds of a one-unit Prometheus duration (``15s`` -> 15.0)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 15s, 1m or 15d")
    return int(m[1]) * _SECONDS[m[2]]


def _url_or_ref(v: str) -> str:
    if is_secret_ref(v) or _URL.match(v):
        return v
    raise ValueError(f"{v!r} is neither an http(s) URL nor a secret reference (env:NAME, file:/path, op://...)")


class Thresholds(Model):
    """When each rule fires (the runbook lines in :mod:`hcbpg.desired.alerting` name them)."""

    #: a replica further behind than this (s of replay) is lagging
    replica_lag_s: Annotated[float, Field(gt=0)] = 60.0
    #: a filesystem fuller than this (percent) on a server or the jumpbox
    disk_pct: Annotated[float, Field(gt=0, lt=100)] = 80.0
    #: pg_wal larger than this percentage of its bound (pg_wal_bound_mb)
    wal_pct: Annotated[float, Field(gt=0, lt=100)] = 80.0
    #: what pg_wal may grow to before the disk is at risk (MB); None: health.wal_fail_mb
    wal_bound_mb: Annotated[float, Field(gt=0)] | None = None
    #: connections over this percentage of max_connections
    connections_pct: Annotated[float, Field(gt=0, lt=100)] = 80.0
    #: age(datfrozenxid) of any database above this (wraparound stops writes at 2^31 - 3,000,000)
    xid_age: Annotated[int, Field(ge=10_000_000, le=2_000_000_000)] = 1_000_000_000
    #: a transaction open longer than this (minutes)
    long_transaction_minutes: Annotated[float, Field(gt=0)] = 30.0
    #: a certificate that ends within this many days
    certificate_days: Annotated[int, Field(ge=1, le=365)] = 21
    #: the newest full / differential backup of a repository older than this (hours)
    backup_full_max_age_h: Annotated[float, Field(gt=0)] = 8 * 24.0
    backup_diff_max_age_h: Annotated[float, Field(gt=0)] = 26.0
    #: the newest successful restore drill older than this (days)
    drill_max_age_days: Annotated[float, Field(gt=0)] = 8.0
    #: Patroni paused (maintenance, step 11b) longer than this (hours)
    paused_max_hours: Annotated[float, Field(gt=0)] = 4.0
    #: how old the newest archived WAL may be on an idle database whose archive_timeout is off (0); a server
    #: with archive_timeout set is held to its own value (the exporter's pg_settings_archive_timeout_seconds)
    archive_timeout_s: Annotated[int, Field(ge=1)] = 300
    #: margin on top of archive_timeout before the archive counts as stale (s)
    archive_age_margin_s: Annotated[int, Field(ge=0)] = 300

    @model_validator(mode="after")
    def _diff_inside_full(self) -> "Thresholds":
        if self.backup_diff_max_age_h > self.backup_full_max_age_h:
            raise ValueError(f"backup_diff_max_age_h: {self.backup_diff_max_age_h} is above backup_full_max_age_h "
                             f"({self.backup_full_max_age_h}): a differential is taken between two fulls")
        return self


class SlackReceiver(Model):
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat)."""

    #: the webhook URL is the secret (whoever has it posts to the channel)
    webhook_url: SecretRef
    channel: str | None = Field(None, pattern=r"^[#@]?[A-Za-z0-9._\-]+$")


class EmailReceiver(Model):
    """E-mail through an SMTP relay (STARTTLS required)."""

    to: list[Annotated[str, Field(pattern=_EMAIL.pattern)]] = Field(min_length=1)
    sender: Annotated[str, Field(pattern=_EMAIL.pattern)]
    #: host:port of the relay
    smarthost: str = Field(pattern=r"^[A-Za-z0-9.\-]+:\d{1,5}$")
    username: str | None = None
    password: SecretRef | None = None

    @model_validator(mode="after")
    def _login_pair(self) -> "EmailReceiver":
        if (self.username is None) != (self.password is None):
            raise ValueError("username: an SMTP login needs both username and password (a secret reference)")
        return self


class WebhookReceiver(Model):
    """A generic webhook (Alertmanager's JSON), e.g. a pager's integration URL."""

    #: a secret reference (an integration URL with a token in it), or a plain URL without one
    url: Annotated[str, Field(max_length=2000)]
    #: sent as ``Authorization: Bearer``; never in the URL
    bearer_token: SecretRef | None = None

    @model_validator(mode="after")
    def _url(self) -> "WebhookReceiver":
        _url_or_ref(self.url)
        return self


class Receivers(Model):
    """Where alerts go; every receiver listed gets every alert (critical ones repeated more often)."""

    slack: SlackReceiver | None = None
    email: EmailReceiver | None = None
    webhook: WebhookReceiver | None = None

    @model_validator(mode="after")
    def _one_at_least(self) -> "Receivers":
        if self.slack is None and self.email is None and self.webhook is None:
            raise ValueError("receivers: name at least one of slack, email, webhook: alerts nobody receives are "
                             "no alerts")
        return self


class AlertingParams(Model):
    """Prometheus and Alertmanager on the jumpbox: intervals, retention, thresholds, receivers, the dead-man."""

    scrape_interval: Duration = "30s"
    evaluation_interval: Duration = "30s"
    #: how long Prometheus keeps samples (the jumpbox's disk and memory)
    retention: Duration = "15d"
    #: how long a condition must hold before its alert fires (a blip does not page)
    for_duration: Duration = "2m"
    #: Alertmanager's wait before the first notification of a group, and between two of a changing group
    group_wait: Duration = "30s"
    group_interval: Duration = "5m"
    #: how often a still-firing alert is sent again
    repeat_interval: Duration = "4h"
    thresholds: Thresholds = Thresholds()
    receivers: Receivers
    #: the external dead-man's switch the always-firing Heartbeat is posted to (healthchecks.io style): a
    #: monitor that stops posting is noticed from outside. A secret reference or an https URL
    heartbeat_url: Annotated[str, Field(max_length=2000)]
    #: how often the heartbeat is posted (the dead-man's period must be longer)
    heartbeat_interval: Duration = "1m"
    #: ports on the jumpbox (loopback and its private IP)
    prometheus_port: int = Field(9090, ge=1, le=65535)
    alertmanager_port: int = Field(9093, ge=1, le=65535)
    node_exporter_port: int = Field(9100, ge=1, le=65535)
    #: the name Alertmanager's messages carry
    cluster_label: Name | None = None
    #: the receiver of warnings ("all": every receiver; critical alerts always go to all)
    warning_receivers: list[Literal["slack", "email", "webhook"]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "AlertingParams":
        _url_or_ref(self.heartbeat_url)
        scrape, evaluation = duration_s(self.scrape_interval), duration_s(self.evaluation_interval)
        if evaluation < scrape:
            raise ValueError(f"evaluation_interval: {self.evaluation_interval} is shorter than scrape_interval "
                             f"({self.scrape_interval}): rules would see the same samples twice")
        if duration_s(self.for_duration) < 2 * scrape:
            raise ValueError(f"for_duration: {self.for_duration} is below two scrapes ({2 * scrape:g}s): one "
                             "missed scrape would page")
        if duration_s(self.retention) < 86400:
            raise ValueError(f"retention: {self.retention} is below a day: backup-age rules look back further")
        if duration_s(self.repeat_interval) < duration_s(self.group_interval):
            raise ValueError(f"repeat_interval: {self.repeat_interval} is below group_interval "
                             f"({self.group_interval})")
        ports = [self.prometheus_port, self.alertmanager_port, self.node_exporter_port]
        if len(set(ports)) != len(ports):
            raise ValueError(f"prometheus_port, alertmanager_port, node_exporter_port: {ports} must differ")
        if self.warning_receivers is not None:
            missing = [r for r in self.warning_receivers if getattr(self.receivers, r) is None]
            if missing:
                raise ValueError(f"warning_receivers: {', '.join(missing)} is not configured under receivers")
        return self
