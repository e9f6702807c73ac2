"""A lock on the primary for the steps that change it: one run at a time across operators' machines.

The environment lock (``hcbpg.engine.locks``) keeps two runs apart on one machine; two operators
on two laptops meet only at the servers.  So a step that is about to change the primary first
writes ``/var/lib/hcbpg/change.lock`` there (created with ``set -C``: it fails if the file exists),
naming the run, step, operator, machine, pid and time.  The step releases it when it finishes; a
failed step leaves it, and then only the same run (its resume) takes it over, or, on the machine
that holds it, a run that finds the holder's processes gone (stale).  Anyone else is refused with
who holds it and since when.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from hcbpg.adapters.base import Changes
from hcbpg.desired.locks import LOCK_DIR, LOCK_PATH, Holder, parse_holder, plan_take_change_lock
from hcbpg.errors import SafetyCheckFailed
from hcbpg.outcome import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from hcbpg.adapters.base import HostLike

__all__ = ["LOCK_DIR", "LOCK_PATH", "ensure_change_lock", "release_change_lock"]


def ensure_change_lock(host: "HostLike", me: Holder) -> Outcome:
    """Hold the primary's change lock for *me*, or refuse (SafetyCheckFailed) naming who holds it.

    Taken with ``set -C`` (created only if no one has it); when it is there, :func:`plan_take_change_lock`
    decides: this run's own (a resume), a stale one on this machine (taken over), or refused."""
    what = f"change lock {LOCK_PATH} on {host.name}"
    seen = Changes(host)
    raw = host.read_text(LOCK_PATH)
    if raw is not None and parse_holder(raw) == me:
        return seen.outcome(what)  # held by this very holder already
    if raw is None:
        take = f"install -d -m 0700 {LOCK_DIR} && (set -C; cat > {shlex.quote(LOCK_PATH)})"
        res = host.run(take, stdin=me.to_json(), check=False, quiet=True, display=f"take {LOCK_PATH}")
        if res.ok:
            return seen.outcome(what, actions=[f"took it for {me.describe()}"])
        raw = host.read_text(LOCK_PATH)  # another run took it between the read and the create
    decision, why = plan_take_change_lock(parse_holder(raw), me, raw=raw)
    if decision == "refuse":
        raise SafetyCheckFailed(
            f"{host.name} is being changed by another run: {why}",
            hint=f"Wait for that run to finish, or ask its operator. If it is over (hcbpg runs {me.env} on "
                 f"its machine), remove {LOCK_PATH} on {host.name} and run this step again.")
    host.put_text(LOCK_PATH, me.to_json(), mode=0o600)
    note = "took it over from this run's earlier attempt" if decision == "ours" else f"took over a stale lock: {why}"
    host.echo(f"[{host.name}] {note}")
    return seen.outcome(what, actions=[note])


def release_change_lock(host: "HostLike", me: Holder) -> bool:
    """Remove the lock if this run holds it; returns whether it did."""
    current = parse_holder(host.read_text(LOCK_PATH))
    if current is None or current.run_id != me.run_id or current.env != me.env:
        return False
    host.run(f"rm -f {shlex.quote(LOCK_PATH)}", quiet=True, display=f"release {LOCK_PATH}")
    return True
