"""History that a database server's credentials cannot destroy, pure: the two keys' policies, the jumpbox's
expiry (its repository-only pgbackrest.conf and cron file), and the way back after an attack: which version of
each object of the repository was current at a time T, copied into a clean prefix to restore from.

The database servers hold a key that can put, get, list and delete (under versioning a delete only adds a
delete marker) but not delete object versions or change the bucket's versioning, policy, lifecycle or object
lock; the repository's admin key (params ``admin_s3_key``) can, and lives only on the jumpbox and the
operator's machine.  pgBackRest 2.45 cannot read a repository as of a time (``--repo-target-time`` came in
2.54), so :func:`plan_as_of` picks, for every key under the repository's path, its newest version written at
or before T: delete markers written after T, and objects overwritten after T, do not count.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hcbpg.desired.pgbackrest import SECRET_PLACEHOLDER, conf_options, pgbackrest_params
from hcbpg.errors import ParamsError, SafetyCheckFailed
from hcbpg.pg.conf import MANAGED_HEADER, one_line

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.params import Params, S3Repo

#: what the database servers' key must not do (IAM action names; the lab's stand-in applies the same JSON)
SERVER_DENIED_ACTIONS = (
    "s3:DeleteObjectVersion",
    "s3:PutBucketVersioning",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
    "s3:DeleteBucket",
)
#: what pgBackRest on a database server needs (archive-push, backup, info, stanza-create), and the operator's
#: environment lock and audit anchors with the same key: reading the bucket's versioning and object lock, and a
#: retention on a version it writes (more protection, never less: shortening one needs the governance bypass)
SERVER_ALLOWED_ACTIONS = ("s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:PutObject",
                          "s3:DeleteObject", "s3:PutObjectRetention", "s3:GetBucketVersioning",
                          "s3:GetBucketObjectLockConfiguration")

#: the jumpbox's files for expiry: a repository-only config with the admin key, and its cron file
EXPIRE_CONF_PATH = "/etc/hcbpg/pgbackrest-expire.conf"
EXPIRE_CRON_PATH = "/etc/cron.d/hcbpg-expire"
EXPIRE_LOG = "/var/log/hcbpg-expire.log"


def render_server_key_policy(bucket: str) -> dict[str, Any]:
    """The IAM policy of the database servers' key on *bucket*: write and read, never erase history."""
    b, objects = f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "PgBackRestWrites", "Effect": "Allow", "Action": list(SERVER_ALLOWED_ACTIONS),
         "Resource": [b, objects]},
        {"Sid": "NoHistoryErased", "Effect": "Deny", "Action": list(SERVER_DENIED_ACTIONS), "Resource": [b, objects]},
    ]}


def render_admin_key_policy(bucket: str) -> dict[str, Any]:
    """The IAM policy of the repository's admin key on *bucket*: everything."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "RepositoryAdmin", "Effect": "Allow", "Action": ["s3:*"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}


# old versions' expiry (a lifecycle rule) ---------------------------------------------------------------------
#
# Versioning keeps every version a delete or an overwrite made noncurrent, so without a rule the bucket only grows
# (pgBackRest's expiry under versioning adds delete markers).  One rule of ours, over the whole bucket, removes a
# version N days after it became noncurrent (S3's NoncurrentVersionExpiration; a version still under Object Lock's
# retention stays until that ends).  N is how far back the way back (notebook 21) reaches after an attack.
# Where it is honoured (README, Backups): AWS S3; Hetzner Object Storage (its how-to "manage lifecycle",
# docs.hetzner.com/de/storage/object-storage/howto-protect-objects/manage-lifecycle/, sets NoncurrentVersionExpiration;
# Ceph RGW underneath); Backblaze B2 through its S3 API's Put/Get Lifecycle Configuration (a versioned bucket, which B2
# always is; www.backblaze.com/apidocs/s3-put-lifecycle-configuration: NoncurrentVersionExpiration is its "delete").  moto
# 5.2.6 (the lab) stores the rule and gives it back (Put/Get/DeleteBucketLifecycle) but never applies it: nothing
# expires in the lab, so a lab test can check the rule, not its effect.

#: the ID of hcbpg's rule in the bucket's lifecycle configuration; other rules are kept as they are
LIFECYCLE_RULE_ID = "hcbpg-noncurrent-versions"


def render_noncurrent_expiry_rule(days: int) -> dict[str, Any]:
    """hcbpg's lifecycle rule: every noncurrent version in the bucket removed *days* after it became noncurrent."""
    if days < 1:
        raise SafetyCheckFailed(f"noncurrent version expiry of {days} days: S3 asks for 1 or more")
    return {"ID": LIFECYCLE_RULE_ID, "Status": "Enabled", "Filter": {"Prefix": ""},
            "NoncurrentVersionExpiration": {"NoncurrentDays": days}}


def _rule_prefix(rule: Mapping[str, Any]) -> str | None:
    """The key prefix a rule applies to (``""``: the whole bucket); None when it filters on more than a prefix."""
    flt = rule.get("Filter")
    if flt is None:
        return str(rule.get("Prefix") or "")
    if set(flt) - {"Prefix"}:
        return None
    return str(flt.get("Prefix") or "")


#: a lifecycle rule's actions (S3's names)
_ACTIONS = ("Expiration", "Transitions", "NoncurrentVersionTransitions", "NoncurrentVersionExpiration",
            "AbortIncompleteMultipartUpload")


def parse_noncurrent_expiry_days(rule: Mapping[str, Any]) -> int | None:
    """The days of a rule that is exactly hcbpg's (enabled, the whole bucket, only NoncurrentVersionExpiration by
    days, no count of versions kept); None for any other rule."""
    nve = rule.get("NoncurrentVersionExpiration") or {}
    if (rule.get("Status") != "Enabled" or _rule_prefix(rule) != "" or set(nve) != {"NoncurrentDays"}
            or any(rule.get(a) for a in _ACTIONS if a != "NoncurrentVersionExpiration")):
        return None
    return int(nve["NoncurrentDays"])


def describe_noncurrent_expiry(rules: Iterable[Mapping[str, Any]]) -> str:
    """hcbpg's rule among *rules*, as the operator reads it."""
    ours = [r for r in rules if r.get("ID") == LIFECYCLE_RULE_ID]
    if not ours:
        return "no rule"
    days = [parse_noncurrent_expiry_days(r) for r in ours]
    if len(ours) == 1 and days[0] is not None:
        return f"noncurrent versions removed after {days[0]} days"
    return f"rule {LIFECYCLE_RULE_ID} differs from hcbpg's"


def plan_noncurrent_expiry(rules: Iterable[Mapping[str, Any]], days: int | None
                           ) -> tuple[list[dict[str, Any]] | None, str]:
    """The bucket's lifecycle rules to put so that hcbpg's rule says *days* (None: no rule of ours), and what
    changes; ``(None, what it is)`` when nothing does.  Every other rule is kept as it was read (S3 replaces the
    whole configuration on a put); an empty list deletes the configuration."""
    current = [dict(r) for r in rules]
    others = [r for r in current if r.get("ID") != LIFECYCLE_RULE_ID]
    now = describe_noncurrent_expiry(current)
    if days is None:
        if len(others) == len(current):
            return None, "no rule: every version kept (pgbackrest.noncurrent_version_expiry_days none)"
        return others, f"remove rule {LIFECYCLE_RULE_ID} (now {now})"
    want = render_noncurrent_expiry_rule(days)
    ours = [r for r in current if r.get("ID") == LIFECYCLE_RULE_ID]
    if len(ours) == 1 and parse_noncurrent_expiry_days(ours[0]) == days:
        return None, f"noncurrent versions removed after {days} days"
    return others + [want], f"noncurrent versions removed after {days} days (now {now})"


def other_expiring_rules(rules: Iterable[Mapping[str, Any]]) -> list[str]:
    """IDs of enabled rules besides hcbpg's that remove or move objects (an ``Expiration`` by days or date removes
    *current* objects, backups among them; a shorter noncurrent expiry shortens the way back): the operator's to
    judge.  Cleaning incomplete uploads and expired delete markers is harmless and not listed."""
    out: list[str] = []
    for r in rules:
        if r.get("ID") == LIFECYCLE_RULE_ID or r.get("Status") != "Enabled":
            continue
        exp = r.get("Expiration") or {}
        if exp.get("Days") or exp.get("Date") or any(r.get(a) for a in ("Transitions", "NoncurrentVersionTransitions",
                                                                         "NoncurrentVersionExpiration")):
            out.append(str(r.get("ID") or "(no ID)"))
    return out


# the repository as of a time ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectVersion:
    """One version of a key (or a delete marker), as ListObjectVersions gives it."""

    key: str
    version_id: str
    last_modified: dt.datetime
    is_latest: bool = False
    delete_marker: bool = False
    size: int = 0


@dataclass(frozen=True)
class CopyItem:
    """Copy *version_id* of *source_key* to *target_key*."""

    source_key: str
    version_id: str
    target_key: str
    size: int


@dataclass
class AsOfPlan:
    """What the repository held at *as_of*, and where it goes."""

    as_of: dt.datetime
    source_prefix: str
    target_prefix: str
    copies: list[CopyItem] = field(default_factory=list)
    #: keys that did not exist at T (written after it) or were deleted at T
    absent: list[str] = field(default_factory=list)
    #: keys whose current state differs from T's (overwritten, deleted or written after T): what an attack touched
    changed_after: list[str] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(c.size for c in self.copies)

    def summary(self) -> dict[str, Any]:
        return {"as_of": self.as_of.isoformat(), "source_prefix": self.source_prefix,
                "target_prefix": self.target_prefix, "objects": len(self.copies), "bytes": self.bytes,
                "absent_at_t": len(self.absent), "changed_after_t": len(self.changed_after)}


def key_prefix(repo_path: str) -> str:
    """The S3 key prefix of a pgBackRest repository path: ``/pgbackrest/hcb`` -> ``pgbackrest/hcb/``."""
    p = repo_path.strip("/")
    if not p:
        raise SafetyCheckFailed("the repository path is empty: a copy would take the whole bucket")
    return p + "/"


def as_of_path_prefix(as_of: dt.datetime) -> str:
    """A clean repository path prefix named after T: ``/pgbackrest-asof-20261207T070000Z``."""
    return "/pgbackrest-asof-" + _utc(as_of).strftime("%Y%m%dT%H%M%SZ")


def parse_as_of(text: str) -> dt.datetime:
    """T from ``2026-12-07 07:00:00+00`` / ``2026-12-07T07:00:00Z``; a time without a zone is refused."""
    s = text.strip().replace("Z", "+00:00")
    if re.fullmatch(r".*[+-]\d\d$", s):
        s += ":00"
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError as exc:
        raise ParamsError("as_of", [f"{text!r} is not a time such as 2026-12-07 07:00:00+00"]) from exc
    if t.tzinfo is None:
        raise ParamsError("as_of", [f"{text!r} has no time zone: write it in UTC, e.g. {text.strip()}+00"])
    return t.astimezone(dt.timezone.utc)


def _utc(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        raise SafetyCheckFailed(f"{t!r} has no time zone")
    return t.astimezone(dt.timezone.utc)


def plan_as_of(versions: Iterable[ObjectVersion], as_of: dt.datetime, *, source_prefix: str,
               target_prefix: str) -> AsOfPlan:
    """For every key under *source_prefix*: its newest version written at or before *as_of*, copied to the same
    name under *target_prefix*; a key whose newest such version is a delete marker (or that has none) is absent.

    *versions* in any order; two versions of one key with the same time: the one S3 lists as latest, else the one
    listed first (S3 lists a key's versions newest first).
    """
    t = _utc(as_of)
    if not source_prefix.endswith("/") or not target_prefix.endswith("/"):
        raise SafetyCheckFailed("source and target prefixes end with '/' (whole path segments)")
    if target_prefix.startswith(source_prefix) or source_prefix.startswith(target_prefix):
        raise SafetyCheckFailed(f"the target {target_prefix!r} overlaps the repository {source_prefix!r}: "
                                "the copy goes to a clean prefix of its own")
    by_key: dict[str, list[tuple[int, ObjectVersion]]] = {}
    for i, v in enumerate(versions):
        if v.key.startswith(source_prefix):
            by_key.setdefault(v.key, []).append((i, v))
    plan = AsOfPlan(t, source_prefix, target_prefix)
    for key in sorted(by_key):
        listed = by_key[key]
        # newest first: later time, then S3's latest flag, then S3's own order
        ordered = [v for _, v in sorted(listed, key=lambda iv: (-_utc(iv[1].last_modified).timestamp(),
                                                                 not iv[1].is_latest, iv[0]))]
        at_t = next((v for v in ordered if _utc(v.last_modified) <= t), None)
        if ordered[0] is not at_t:
            plan.changed_after.append(key)
        if at_t is None or at_t.delete_marker:
            plan.absent.append(key)
            continue
        plan.copies.append(CopyItem(key, at_t.version_id, target_prefix + key[len(source_prefix):], at_t.size))
    return plan


# expiry on the jumpbox ------------------------------------------------------------------------------------

def expire_on_jumpbox(params: "Params") -> bool:
    """Whether a repository has an admin key: then the servers do not expire and the jumpbox does."""
    pb = params.pgbackrest
    return pb is not None and any(r.admin_s3_key is not None for _, r in pb.repos())


def shared_bucket_conflicts(params: "Params") -> list[str]:
    """Repositories with an admin key in one bucket (same endpoint and bucket, other paths) whose bucket-wide settings
    differ (object lock, lifecycle days): step 05 would put one and then the other on every run.  One line each."""
    pb = pgbackrest_params(params)
    seen: dict[tuple[str, str], tuple[int, tuple[Any, ...]]] = {}
    out: list[str] = []
    for n, repo in pb.repos():
        if repo.admin_s3_key is None:
            continue
        where = (repo.s3_endpoint, repo.s3_bucket)
        settings = (repo.object_lock_mode if repo.object_lock_days else None, repo.object_lock_days,
                    repo.noncurrent_version_expiry_days)
        if where in seen and seen[where][1] != settings:
            out.append(f"pgbackrest.repo{n}: bucket {repo.s3_bucket} at {repo.s3_endpoint} is repo{seen[where][0]}'s "
                       "too, with other object_lock_* or noncurrent_version_expiry_days (one bucket has one of each): "
                       "make them the same")
        seen.setdefault(where, (n, settings))
    return out


def expire_secret_refs(params: "Params") -> dict[str, tuple[str, Any]]:
    """The jumpbox config's secret options -> (params key, secret reference): each repository's admin key where
    it has one (else its own key), and its cipher passphrase."""
    pb = pgbackrest_params(params)
    out: dict[str, tuple[str, Any]] = {}
    for n, repo in pb.repos():
        base = "pgbackrest" if n == 1 else f"pgbackrest.repo{n}"
        admin = repo.admin_s3_key is not None
        out[f"repo{n}-s3-key"] = (f"{base}.{'admin_s3_key' if admin else 's3_key'}",
                                  repo.admin_s3_key if admin else repo.s3_key)
        out[f"repo{n}-s3-key-secret"] = (f"{base}.{'admin_s3_key_secret' if admin else 's3_key_secret'}",
                                         repo.admin_s3_key_secret if admin else repo.s3_key_secret)
        if repo.cipher_type != "none":
            out[f"repo{n}-cipher-pass"] = (f"{base}.cipher_pass", repo.cipher_pass)
    return out


def render_expire_conf(params: "Params", *, secrets: Mapping[str, str] | None = None) -> str:
    """The jumpbox's repository-only pgbackrest.conf: every repository's options as the servers have them, with
    the admin key; no PostgreSQL (expire reads and deletes in the repository only).  Secrets as ``<secret>``
    without *secrets* (option -> value)."""
    if params.jumpbox is None:
        raise ParamsError("params", ["jumpbox: an admin key (pgbackrest.admin_s3_key) moves expiry to the jumpbox, "
                                     "and params have none"])
    pb = pgbackrest_params(params)
    server = params.primary
    glob = conf_options(params, server, version=None)["global"]
    refs = expire_secret_refs(params)
    options = {k: v for k, v in glob.items() if k.startswith("repo") or k in ("compress-type", "process-max")}
    for k in refs:
        options[k] = SECRET_PLACEHOLDER
    lines = [MANAGED_HEADER,
             f"# pgBackRest on the jumpbox ({params.environment}): expiry of stanza {pb.stanza} with the "
             "repositories' admin keys.",
             "# Never copy this file to a database server: its keys can delete every backup. Mode 0600, owner root.",
             "", "[global]"]
    for key in sorted(options):
        value = options[key]
        if value == SECRET_PLACEHOLDER and secrets is not None:
            value = secrets[key]
            one_line(value, f"pgbackrest expire config option {key} ({refs[key][0]})", secret=True)
            if not value or value != value.strip():
                raise SafetyCheckFailed(f"the secret for {key} ({refs[key][0]}) is empty or has outer spaces")
        else:
            one_line(value, f"pgbackrest expire config option {key}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def render_expire_command(params: "Params") -> str:
    """The expiry command the jumpbox runs (every repository; retention from the config)."""
    pb = pgbackrest_params(params)
    return (f"pgbackrest --config={EXPIRE_CONF_PATH} --stanza={shlex.quote(pb.stanza)} "
            "--log-level-console=info --log-level-file=off --lock-path=/tmp/hcbpg-expire expire")


def render_expire_cron(params: "Params") -> str:
    """/etc/cron.d/hcbpg-expire on the jumpbox: ``pgbackrest expire`` on params' schedule, as root."""
    pb = pgbackrest_params(params)
    one_line(pb.expire_schedule, "pgbackrest.expire_schedule")
    return "\n".join([
        MANAGED_HEADER,
        f"# pgBackRest expiry of stanza {pb.stanza} with the repositories' admin keys (the servers do not expire).",
        "SHELL=/bin/sh",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "",
        f"{pb.expire_schedule} root {render_expire_command(params)} >>{EXPIRE_LOG} 2>&1",
        "",
    ])


def parse_repo(value: object) -> int:
    """The repository an input names: 1 or 2 (``2``, ``"2"``, ``"repo2"``); anything else refused."""
    text = str(value).strip().lower().removeprefix("repo")
    if text not in ("1", "2"):
        raise ParamsError("repo", [f"{value!r} is not a repository: 1 (pgbackrest) or 2 (pgbackrest.repo2)"])
    return int(text)


def repo_as_repo1(params: "Params", repo: int) -> "Params":
    """*params* whose repo1 is repository *repo* (its bucket, endpoint, keys, cipher, path; no repo2): what the copy
    as of T reads and the scratch host restores from, through the code that knows repo1.  Repository 2 also drops
    the drill's read-only key (``drill.s3_key`` is repo1's).  Refused when params define no repository *repo*."""
    pb = pgbackrest_params(params)
    repos = dict(pb.repos())
    if repo not in repos:
        raise ParamsError("repo", [f"repository {repo}: params define no pgbackrest.repo{repo} "
                                   f"(repositories: {', '.join(f'repo{n}' for n in sorted(repos))})"])
    if repo == 1:
        return params
    chosen = repos[repo]
    fields = {name: getattr(chosen, name) for name in type(chosen).model_fields}
    update: dict[str, Any] = {"pgbackrest": pb.model_copy(update={**fields, "repo2": None})}
    if params.drill is not None:
        update["drill"] = params.drill.model_copy(update={"s3_key": None, "s3_key_secret": None})
    return params.model_copy(update=update)


def admin_secret_keys(repo: int) -> tuple[str, str]:
    """The params keys of repository *repo*'s admin key (what ``rb.secret`` resolves)."""
    base = "pgbackrest" if repo == 1 else f"pgbackrest.repo{repo}"
    return f"{base}.admin_s3_key", f"{base}.admin_s3_key_secret"


def repo_with_prefix(params: "Params", prefix: str) -> "Params":
    """*params* with repo1 at another path prefix (a restore from the copy as of T reads it)."""
    if not prefix.startswith("/") or "//" in prefix or prefix.rstrip("/") == "":
        raise ParamsError("target_prefix", [f"{prefix!r} is not an absolute path such as /pgbackrest-asof-1"])
    pb = pgbackrest_params(params)
    return params.model_copy(update={"pgbackrest": pb.model_copy(update={"repo_path_prefix": prefix, "repo2": None})})


def admin_refs(repo: "S3Repo", where: str = "pgbackrest") -> tuple[Any, Any]:
    """The repository's admin key references, refused when it has none."""
    if repo.admin_s3_key is None or repo.admin_s3_key_secret is None:
        raise ParamsError("params", [f"{where}.admin_s3_key: the repository's admin key is needed here (it reads "
                                     "every version and writes the clean prefix); params have none"])
    return repo.admin_s3_key, repo.admin_s3_key_secret


@dataclass(frozen=True)
class AsOfInputs:
    """Notebook 21's inputs, checked: T, the repository, params of that repository as repo1 (the source) and
    at the clean prefix (the copy), the params keys of its admin key."""

    as_of: dt.datetime
    repo: int
    source: "Params"
    target: "Params"
    admin_keys: tuple[str, str]


def plan_as_of_inputs(params: "Params", as_of: str, target_prefix: str = "", repo: object = 1) -> AsOfInputs:
    """Notebook 21's inputs checked before anything is read: a time with its zone, a repository params define (1 or
    2) with an admin key, a clean prefix that is an absolute path (default ``/pgbackrest-asof-<T>``)."""
    if not as_of.strip():
        raise ParamsError("as_of", ["the time to go back to is required: -p as_of='2026-12-07 07:00:00+00' "
                                    "(UTC; before the attack, after the last backup you want)"])
    n = parse_repo(repo)
    source = repo_as_repo1(params, n)
    admin_refs(pgbackrest_params(source), "pgbackrest" if n == 1 else f"pgbackrest.repo{n}")
    t = parse_as_of(as_of)
    target = repo_with_prefix(source, target_prefix.strip() or as_of_path_prefix(t))
    return AsOfInputs(t, n, source, target, admin_secret_keys(n))


def parse_expire_output(text: str) -> list[str]:
    """What an expiry run removed, from its console lines (2.45: ``repo1: expire full backup 20261207-061445F``,
    ``repo1: remove archive, start = ..., stop = ...``)."""
    return [ln.split("INFO: ", 1)[-1].strip() for ln in text.splitlines()
            if re.search(r": expire \w+ backup|: remove archive", ln)]
