"""History that a database server's credentials cannot destroy: versioning on the bucket (admin key), expiry
from the jumpbox with the admin key, and the repository as of a time T copied version by version into a clean
prefix, from which a scratch host restores (:func:`hcbpg.ops.drill.run_restore`).

Old versions expire by the bucket's lifecycle rule (:func:`ensure_noncurrent_version_expiry`, admin key).
The plan of the copy is pure (:func:`hcbpg.desired.repo_history.plan_as_of`); the bucket is read and written
through :class:`hcbpg.adapters.objectstore.ObjectStore` with the admin key, from the operator's machine or the
jumpbox, never from a database server.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hcbpg import secrets as hsecrets
from hcbpg.adapters.base import Changes
from hcbpg.adapters.files import ensure_dir
from hcbpg.desired.repo_history import (
    EXPIRE_CONF_PATH,
    EXPIRE_CRON_PATH,
    LIFECYCLE_RULE_ID,
    AsOfPlan,
    ObjectVersion,
    describe_noncurrent_expiry,
    expire_secret_refs,
    other_expiring_rules,
    plan_noncurrent_expiry,
    render_expire_command,
    render_expire_conf,
    render_expire_cron,
)
from hcbpg.errors import CloudError, PgBackRestError, SafetyCheckFailed
from hcbpg.ops.pgbackrest import ensure_installed
from hcbpg.outcome import Check, Outcome, unified_diff

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike, Result
    from hcbpg.adapters.objectstore import ObjectStoreLike
    from hcbpg.params import Params

#: written last under the target prefix: the copy finished (a second run finds it and copies nothing)
DONE_MARKER = ".hcbpg-as-of.json"


# versioning -------------------------------------------------------------------------------------------------

def ensure_bucket_versioning(store: "ObjectStoreLike", *, dry_run: bool) -> Outcome:
    """The bucket keeps every version (the admin key turns it on when it is off or suspended).

    Turned on here rather than refused: versioning is the provider's one switch that makes a server's deletes
    reversible, and an operator who has the admin key at hand has nothing else to do to get it."""
    what = f"versioning of {store.name}"
    status = store.versioning()
    if status == "Enabled":
        return Outcome(what, False, dry_run, actions=["Enabled"])
    action = f"enable versioning (now {status or 'never enabled'})"
    if not dry_run:
        store.enable_versioning()
        if store.versioning() != "Enabled":
            raise CloudError(f"{store.name}: versioning reads {store.versioning()!r} after it was enabled",
                             hint="The provider does not keep object versions: pick one that does (README, Backups).")
    return Outcome(what, True, dry_run, actions=[action])


def ensure_bucket_object_lock(store: "ObjectStoreLike", mode: str, days: int, *, dry_run: bool) -> Outcome:
    """Object Lock's default retention on the bucket: every new version kept *days* in *mode* (admin key).

    Refused, with what to do, where the provider does not offer it on this bucket (made without Object Lock, or
    without versioning): nothing else changes."""
    what = f"Object Lock of {store.name}"
    current = store.object_lock()
    if current == (mode, days):
        return Outcome(what, False, dry_run, actions=[f"{mode} {days} days"])
    now = ("off" if current is None else "on, no default retention" if current[0] is None
           else f"{current[0]} {current[1]} days")
    action = f"default retention {mode} {days} days (now {now})"
    if not dry_run:
        try:
            store.put_object_lock(mode, days)
        except CloudError as exc:
            raise CloudError(f"{store.name}: Object Lock could not be set: {exc.message}",
                             hint="The provider offers Object Lock only on a bucket made with it (AWS also on a "
                                  "versioned one): make the bucket with Object Lock on, or set "
                                  "pgbackrest.object_lock_days to none.") from exc
        if store.object_lock() != (mode, days):
            raise CloudError(f"{store.name}: Object Lock reads {store.object_lock()!r} after it was set",
                             hint="The provider does not keep Object Lock settings: set pgbackrest.object_lock_days "
                                  "to none, or pick a provider that does (README, Backups).")
    return Outcome(what, True, dry_run, actions=[action])


def check_bucket_versioning(store: "ObjectStoreLike") -> list[Check]:
    """The bucket keeps every version (versioning Enabled)."""
    status = store.versioning()
    return [Check.of("versioning", status == "Enabled", status or "never enabled", store.name)]


def check_bucket_object_lock(store: "ObjectStoreLike", mode: str, days: int | None) -> list[Check]:
    """Object Lock's default retention is *mode* for *days* (None: not asked for, nothing checked)."""
    if days is None:
        return []
    current = store.object_lock()
    seen = ("off" if current is None else "on, no default retention" if current[0] is None
            else f"{current[0]} {current[1]} days")
    return [Check.of("Object Lock", current == (mode, days),
                     seen + ("" if current == (mode, days) else f", expected {mode} {days} days"), store.name)]


# old versions' expiry ------------------------------------------------------------------------------------------

def ensure_noncurrent_version_expiry(store: "ObjectStoreLike", days: int | None, *, dry_run: bool) -> Outcome:
    """The bucket's lifecycle rule removing noncurrent versions *days* after they became noncurrent (None: no rule
    of ours, every version kept), with the admin key; read first, put only when it differs, other rules kept
    (:func:`hcbpg.desired.repo_history.plan_noncurrent_expiry`).

    Refused, nothing changed, where the provider refuses lifecycle rules; refused when the rule does not read back
    after the put (a store that accepts and ignores it)."""
    what = f"lifecycle of {store.name} ({LIFECYCLE_RULE_ID})"
    rules, action = plan_noncurrent_expiry(store.lifecycle_rules(), days)
    if rules is None:
        return Outcome(what, False, dry_run, actions=[action])
    if not dry_run:
        try:
            store.put_lifecycle_rules(rules)
        except CloudError as exc:
            raise CloudError(f"{store.name}: the lifecycle rule could not be set: {exc.message}",
                             hint="Set it in the provider's console (noncurrent versions removed after "
                                  f"{days} days) and pgbackrest.noncurrent_version_expiry_days to none, or use the "
                                  "repository's admin key (the servers' key may not change lifecycle).") from exc
        again, _ = plan_noncurrent_expiry(store.lifecycle_rules(), days)
        if again is not None:
            raise CloudError(f"{store.name}: the lifecycle reads {describe_noncurrent_expiry(store.lifecycle_rules())!r}"
                             " after it was set",
                             hint="The provider does not keep lifecycle rules through its S3 API: set the rule in "
                                  "its console (README, Backups).")
    return Outcome(what, True, dry_run, actions=[action])


def check_noncurrent_version_expiry(store: "ObjectStoreLike", days: int | None) -> list[Check]:
    """hcbpg's lifecycle rule is what params say, and no other rule removes objects (a warning naming it)."""
    rules = store.lifecycle_rules()
    pending, _ = plan_noncurrent_expiry(rules, days)
    want = "no rule of hcbpg" if days is None else f"noncurrent versions removed after {days} days"
    out = [Check.of("old versions' expiry", pending is None,
                    f"{describe_noncurrent_expiry(rules)}" + ("" if pending is None else f", expected {want}"),
                    store.name)]
    others = other_expiring_rules(rules)
    if others:
        out.append(Check("other lifecycle rules", "warn",
                         f"{', '.join(others)} also expire or move objects: an Expiration by days removes current "
                         "backups, a shorter noncurrent expiry shortens the way back", store.name))
    return out


# the repository as of T ---------------------------------------------------------------------------------------

def get_versions(store: "ObjectStoreLike", prefix: str) -> list[ObjectVersion]:
    """Every version and delete marker under *prefix*."""
    return [ObjectVersion(v["key"], v["version_id"], v["last_modified"], v["is_latest"], v["delete_marker"], v["size"])
            for v in store.versions(prefix)]


def run_copy_as_of(store: "ObjectStoreLike", plan: AsOfPlan, *, dry_run: bool,
                   progress: Callable[[int, int], None] | None = None) -> Outcome:
    """Copy each planned version into the clean target prefix, then a marker saying the copy is whole.

    Refused when the target prefix holds anything but a finished copy of the same plan (a second run of the same
    copy changes nothing)."""
    what = f"{store.name}/{plan.target_prefix} as of {plan.as_of.isoformat()}"
    if not plan.copies:
        raise SafetyCheckFailed(f"nothing under {plan.source_prefix} existed at {plan.as_of.isoformat()}: no copy",
                                hint="Pick a time after the repository's stanza was created.")
    marker_key = plan.target_prefix + DONE_MARKER
    done = store.get(marker_key)
    summary = plan.summary()
    if done is not None:
        seen = json.loads(done[0])
        if {k: seen.get(k) for k in ("as_of", "source_prefix", "objects")} == \
                {k: summary[k] for k in ("as_of", "source_prefix", "objects")}:
            return Outcome(what, False, dry_run, actions=[f"copied already: {seen['objects']} objects"])
        raise SafetyCheckFailed(f"{plan.target_prefix} holds a copy as of {seen.get('as_of')}, not this one",
                                hint="Pick another target prefix (a clean one).")
    present = store.keys(plan.target_prefix)
    if present:
        raise SafetyCheckFailed(f"{plan.target_prefix} is not clean: {len(present)} objects there "
                                f"(first {present[0]}), and no finished copy's marker",
                                hint="Pick another target prefix (a clean one); a copy never mixes with other objects.")
    actions = [f"copy {len(plan.copies)} object versions ({plan.bytes} bytes) from {plan.source_prefix} to "
               f"{plan.target_prefix}", f"{len(plan.changed_after)} keys changed after T (not taken)",
               f"write {marker_key}"]
    if dry_run:
        return Outcome(what, True, True, actions=actions)
    t0 = time.monotonic()
    for i, c in enumerate(plan.copies, 1):
        store.copy_version(c.source_key, c.version_id, c.target_key, size=c.size)
        if progress is not None:
            progress(i, len(plan.copies))
    summary["copy_s"] = round(time.monotonic() - t0, 2)
    if store.create(marker_key, (json.dumps(summary, indent=2) + "\n").encode()) is None:
        raise SafetyCheckFailed(f"{marker_key} appeared while copying: another copy ran into the same prefix")
    return Outcome(what, True, False, actions=actions)


# expiry from the jumpbox ----------------------------------------------------------------------------------------

def _resolved_expire_secrets(params: "Params") -> dict[str, str]:
    return {opt: hsecrets.resolve(ref, key=key) for opt, (key, ref) in expire_secret_refs(params).items()}


def _ensure_root_file(host: "HostLike", path: str, shown: str, real: str, *, mode: int) -> Outcome:
    seen = Changes(host)
    what = f"{path} on {host.name}"
    current = host.read_text(path)
    st = host.probe(f"stat -c '%a %U' {shlex.quote(path)}").stdout.strip()
    if current == real and st == f"{mode:o} root":
        return Outcome(what, False, host.dry_run)
    host.put_text(path, real, mode=mode, owner="root")
    diff = unified_diff("" if current is None else "(the file as it was: not shown, it may hold keys)\n", shown, path) \
        if real != shown else unified_diff(current or "", shown, path)
    return seen.outcome(what, diff=diff, actions=[f"write {path} (mode {mode:04o}, owner root)"])


def ensure_expiry_on_jumpbox(host: "HostLike", params: "Params") -> list[Outcome]:
    """On the jumpbox: pgbackrest installed, its log directory, the repository-only config with the admin keys
    (0600 root; its diff shows ``<secret>``) and the cron file that runs ``pgbackrest expire``."""
    shown = render_expire_conf(params)
    if host.dry_run and host.read_text(EXPIRE_CONF_PATH) is None:
        real = shown  # a plan does not resolve the keys for a file that is written whole anyway
    else:
        real = render_expire_conf(params, secrets=_resolved_expire_secrets(params))
    outcomes = [ensure_installed(host, packages=("pgbackrest",))]
    seen = Changes(host)
    if host.probe("stat -c '%a %U %F' /etc/hcbpg").stdout.strip() != "755 root directory":
        ensure_dir(host, "/etc/hcbpg", mode=0o755, owner="root", group="root")
    outcomes.append(seen.outcome(f"directory /etc/hcbpg on {host.name}"))
    outcomes.append(_ensure_root_file(host, EXPIRE_CONF_PATH, shown, real, mode=0o600))
    cron = render_expire_cron(params)
    outcomes.append(_ensure_root_file(host, EXPIRE_CRON_PATH, cron, cron, mode=0o644))
    return outcomes


def check_expiry_on_jumpbox(host: "HostLike", params: "Params") -> list[Check]:
    """The jumpbox's repository-only config (every repository with its admin key, byte for byte: the keys compared,
    not shown; 0600 root) and its cron file (0644 root) are what :func:`ensure_expiry_on_jumpbox` writes."""
    out: list[Check] = []
    files = ((EXPIRE_CONF_PATH, render_expire_conf(params, secrets=_resolved_expire_secrets(params)), 0o600),
             (EXPIRE_CRON_PATH, render_expire_cron(params), 0o644))
    for path, want, mode in files:
        current = host.read_text(path)
        st = host.probe(f"stat -c '%a %U' {shlex.quote(path)}").stdout.strip() if current is not None else ""
        if current is None:
            detail = "missing"
        elif current != want:
            detail = "differs from hcbpg's (step 05 writes it)"
        elif st != f"{mode:o} root":
            detail = f"mode and owner {st}, expected {mode:o} root"
        else:
            detail = f"as rendered, {st}"
        out.append(Check.of(f"expiry {path}", detail.startswith("as rendered"), detail, host.name))
    return out


def run_expire(host: "HostLike", params: "Params", *, timeout: float = 3600) -> "Result":
    """``pgbackrest expire`` once on the jumpbox, as its cron runs it; a failure raises PgBackRestError."""
    cmd = render_expire_command(params)
    res = host.run(cmd, check=False, timeout=timeout)
    if not res.ok:
        raise PgBackRestError(f"on {host.name}: `{cmd}` failed (exit {res.exit_code}): "
                              f"{hsecrets.scrub(res.output.strip())[-800:]}", host=host.name,
                              hint="Check the admin key (params pgbackrest.admin_s3_key) and the jumpbox's "
                                   f"{EXPIRE_CONF_PATH}.")
    return res

