"""Node exporter's textfile metrics of hcbpg (issue 25), pure: what no exporter has and the alerting rules read
(:mod:`hcbpg.desired.alerting`): pgBackRest's info per stanza, repository and backup type, each TLS
certificate's end, the newest successful restore drill, the running way-back sync's end.

Standard library only and no import of hcbpg: this file is shipped to the servers inside the health job
(:func:`hcbpg.desired.schedule.render_health_job`), which writes :data:`TEXTFILE` every run; step 12 (the drill)
and the way-back write files of their own beside it (:data:`DRILL_TEXTFILE`, :data:`WAYBACK_TEXTFILE`).
Names here must not clash with :mod:`hcbpg.desired.health` or the job (one namespace once installed).
"""

from __future__ import annotations

import json
import math
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: node exporter reads ``*.prom`` here (--collector.textfile.directory): on a database server postgres's (the
#: health job writes as postgres), on the jumpbox root's; 0755, node exporter (user prometheus) reads as others.
#: Not Debian's /var/lib/prometheus/node-exporter: that one lies in prometheus's directory, and a directory of
#: postgres's there could not be made safely (hcbpg.adapters.files.ensure_dir runs as its parent's owner)
TEXTFILE_DIR = "/var/lib/hcbpg-textfile"
#: the health job's file (pgBackRest's info, the certificates), rewritten every run
TEXTFILE = f"{TEXTFILE_DIR}/hcbpg.prom"
#: the restore drill's file on the jumpbox (step 12 on success)
DRILL_TEXTFILE = f"{TEXTFILE_DIR}/hcbpg-drill.prom"
#: the way-back sync's end on the primary (step 09b writes it, step 16 removes it)
WAYBACK_TEXTFILE = f"{TEXTFILE_DIR}/hcbpg-wayback.prom"


class TextfileError(ValueError):
    """What the textfile cannot be made of (not JSON, a number that is not finite, an unreadable date)."""


@dataclass(frozen=True)
class CertFact:
    """A certificate on a host: its path, subject (or ``-``) and end (epoch seconds)."""

    path: str
    subject: str
    not_after: float


def _tf_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _tf_sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not math.isfinite(value):
        raise TextfileError(f"{name}: {value} is not a finite number")
    inner = ",".join(f'{k}="{_tf_label(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {value:.17g}" if inner else f"{name} {value:.17g}"


TEXTFILE_HELP = {
    "hcbpg_pgbackrest_info_timestamp_seconds": "When pgbackrest info was read (epoch s)",
    "hcbpg_pgbackrest_stanza_status_code": "pgbackrest info status code of the stanza (0 ok)",
    "hcbpg_pgbackrest_repo_status_code": "pgbackrest info status code of the stanza in one repository (0 ok)",
    "hcbpg_pgbackrest_backup_last_timestamp_seconds": "End of the newest good backup of that type (epoch s)",
    "hcbpg_pgbackrest_backups": "Good backups of that type in the repository",
    "hcbpg_certificate_expiry_timestamp_seconds": "notAfter of the certificate (epoch s)",
    "hcbpg_drill_last_success_timestamp_seconds": "End of the newest successful restore drill (epoch s)",
    "hcbpg_wayback_until_timestamp_seconds": "Planned end of the running way-back sync (epoch s)",
}


def parse_pgbackrest_info(text: str) -> list[dict[str, Any]]:
    """``pgbackrest info --output=json``: the list of stanzas, or a TextfileError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextfileError(f"pgbackrest info --output=json is not JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(s, dict) for s in data):
        raise TextfileError("pgbackrest info --output=json: expected a list of stanzas")
    return data


def parse_x509_enddate(path: str, text: str) -> CertFact:
    """``openssl x509 -noout -subject -enddate -nameopt RFC2253`` of *path*: its subject and notAfter."""
    subject, end = "-", None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "subject":
            subject = value.strip() or "-"
        elif key.strip() == "notAfter":
            try:
                end = float(ssl.cert_time_to_seconds(value.strip()))
            except ValueError:
                raise TextfileError(f"{path}: notAfter {value.strip()!r} is not a date openssl writes") from None
    if end is None:
        raise TextfileError(f"{path}: openssl gave no notAfter: {text.strip()[:200]!r}")
    return CertFact(path, subject, end)


def render_textfile_metrics(*, now: float, info_json: str | None = None, certificates: Sequence[CertFact] = (),
                            drill_success: float | None = None, wayback_until: float | None = None) -> str:
    """Node exporter's textfile from ``pgbackrest info --output=json`` (every repository), certificate ends, the
    newest successful drill and the running way-back sync's end; what is None is left out (an absent series is
    what the rules look for)."""
    samples: dict[str, list[str]] = {name: [] for name in TEXTFILE_HELP}
    if info_json is not None:
        samples["hcbpg_pgbackrest_info_timestamp_seconds"].append(
            _tf_sample("hcbpg_pgbackrest_info_timestamp_seconds", {}, now))
        for stanza in parse_pgbackrest_info(info_json):
            name = str(stanza.get("name", "?"))
            status = stanza.get("status") or {}
            samples["hcbpg_pgbackrest_stanza_status_code"].append(
                _tf_sample("hcbpg_pgbackrest_stanza_status_code", {"stanza": name}, float(status.get("code", -1))))
            for repo in stanza.get("repo") or []:
                samples["hcbpg_pgbackrest_repo_status_code"].append(_tf_sample(
                    "hcbpg_pgbackrest_repo_status_code", {"stanza": name, "repo": str(repo.get("key", "?"))},
                    float((repo.get("status") or {}).get("code", -1))))
            last: dict[tuple[str, str], float] = {}
            count: dict[tuple[str, str], int] = {}
            for b in stanza.get("backup") or []:
                if b.get("error"):
                    continue
                key = (str((b.get("database") or {}).get("repo-key", 1)), str(b.get("type", "?")))
                stop = float((b.get("timestamp") or {}).get("stop", 0))
                last[key] = max(last.get(key, 0.0), stop)
                count[key] = count.get(key, 0) + 1
            for (repo_key, kind) in sorted(last):
                labels = {"stanza": name, "repo": repo_key, "type": kind}
                samples["hcbpg_pgbackrest_backup_last_timestamp_seconds"].append(
                    _tf_sample("hcbpg_pgbackrest_backup_last_timestamp_seconds", labels, last[(repo_key, kind)]))
                samples["hcbpg_pgbackrest_backups"].append(
                    _tf_sample("hcbpg_pgbackrest_backups", labels, count[(repo_key, kind)]))
    for c in sorted(certificates, key=lambda c: c.path):
        samples["hcbpg_certificate_expiry_timestamp_seconds"].append(_tf_sample(
            "hcbpg_certificate_expiry_timestamp_seconds", {"path": c.path, "subject": c.subject}, c.not_after))
    if drill_success is not None:
        samples["hcbpg_drill_last_success_timestamp_seconds"].append(
            _tf_sample("hcbpg_drill_last_success_timestamp_seconds", {}, drill_success))
    if wayback_until is not None:
        samples["hcbpg_wayback_until_timestamp_seconds"].append(
            _tf_sample("hcbpg_wayback_until_timestamp_seconds", {}, wayback_until))
    lines: list[str] = []
    for name, rows in samples.items():
        if rows:
            lines += [f"# HELP {name} {TEXTFILE_HELP[name]}", f"# TYPE {name} gauge", *rows]
    return "\n".join(lines) + "\n" if lines else ""
