"""The environment's lock for destructive steps, held in the backup bucket: no database server holds it.

The primary's change lock (:mod:`hcbpg.ops.server_lock`) sits on the server params call primary,
which after a failover is the demoted one, and is lost with that server.  The steps that wipe a
server or promote one (10: a replica is rebuilt from a base backup; 11: switchover or failover, and
the rebuild of the old primary) first create ``hcbpg-locks/<repository path>/<env>.json`` in the
backup bucket with a conditional put (``If-None-Match: *``): of two runs on two machines, the second
is refused naming the first (run, step, operator, machine, pid, since).  The object survives the
death of both servers and of the operator's machine.

It is released when the step finishes.  A failed or interrupted step, or one waiting at its gate,
keeps it: only the same run (its ``hcbpg resume``) takes it over.  There is no automatic expiry: a
stale lock (its run abandoned, its machine gone) is broken only deliberately, by naming its run:
``hcbpg lock ENV --break RUN_ID``.  Whoever holds the S3 key (the operators, and pgBackRest on the
servers) can also delete the object: the lock keeps honest runs apart, it is no defence against
that key.
"""

from __future__ import annotations

from hcbpg.adapters.objectstore import ObjectStoreLike
from hcbpg.desired.locks import Holder, lock_key, parse_holder, plan_take_env_lock
from hcbpg.errors import CloudError, SafetyCheckFailed, UsageError
from hcbpg.outcome import Outcome

__all__ = ["ensure_env_lock", "get_env_lock", "lock_key", "release_env_lock", "run_break_env_lock"]


def _refused(store: ObjectStoreLike, key: str, me: Holder, why: str, holder: Holder | None) -> SafetyCheckFailed:
    breaking = (f"hcbpg lock {me.env} --break {holder.run_id}" if holder
                else f"remove {store.name}/{key} by hand")
    return SafetyCheckFailed(
        f"environment {me.env} is locked for a destructive step by another run: {why}",
        target=f"{store.name}/{key}", reasons=[why],
        hint=f"Wait for that run to finish, or ask its operator (hcbpg lock {me.env} shows the holder). "
             f"If it is over and will not be resumed, break the lock deliberately: {breaking}; "
             "then run this step again.")


def ensure_env_lock(store: ObjectStoreLike, key: str, me: Holder, *, attempts: int = 3) -> Outcome:
    """Hold the environment lock for *me*, or refuse (SafetyCheckFailed) naming who holds it.

    Checks, once it holds the object, that the store enforces ``If-None-Match`` (a second create must
    be refused); a store that ignores it would let every run in, so hcbpg refuses to rely on it.
    """
    what = f"environment lock {store.name}/{key}"
    body = me.to_json().encode()
    for _ in range(attempts):
        if store.create(key, body) is not None:
            if store.create(key, body) is not None:
                store.delete(key)
                raise CloudError(f"{store.name} ignored If-None-Match: a second create of {key} succeeded, so a "
                                 "lock there would keep nobody out",
                                 hint="Use an object store that enforces conditional writes (S3, Hetzner Object "
                                      "Storage); the destructive steps refuse to run without that lock.")
            return Outcome(what, True, actions=[f"took it for {me.describe()}"])
        got = store.get(key)
        if got is None:
            continue  # released between the create and the read: try again
        raw, etag = got
        holder = parse_holder(raw.decode(errors="replace"))
        decision, why = plan_take_env_lock(holder, me, raw=raw)
        if decision == "refuse":
            raise _refused(store, key, me, why, holder)
        if holder == me or store.replace(key, body, etag=etag) is not None:
            return Outcome(what, True, actions=[f"took it over from this run's earlier attempt ({why})"])
    raise SafetyCheckFailed(f"{what}: it changed hands {attempts} times while this run tried to take it",
                            target=f"{store.name}/{key}", hint="Another run is taking it: see hcbpg lock ENV.")


def get_env_lock(store: ObjectStoreLike, key: str) -> tuple[Holder | None, str | None]:
    """``(holder, raw)``: who holds it (None when free or unreadable) and the object's text (None when free)."""
    got = store.get(key)
    if got is None:
        return None, None
    text = got[0].decode(errors="replace")
    return parse_holder(text), text


def release_env_lock(store: ObjectStoreLike, key: str, me: Holder) -> bool:
    """Remove the lock if this run holds it; returns whether it did."""
    holder, _ = get_env_lock(store, key)
    if holder is None or holder.run_id != me.run_id or holder.env != me.env:
        return False
    store.delete(key)
    return True


def run_break_env_lock(store: ObjectStoreLike, key: str, run_id: str) -> Holder | None:
    """Break a stale lock deliberately: only when its holder is the run named (what the operator saw).

    Returns the holder removed (None for an object hcbpg cannot read, broken with ``run_id`` ``?``).
    """
    got = store.get(key)
    if got is None:
        raise UsageError(f"{store.name}/{key}: nothing to break, the environment lock is free")
    raw, _ = got
    holder = parse_holder(raw.decode(errors="replace"))
    named = holder.run_id if holder else "?"
    if run_id != named:
        held = holder.describe() if holder else f"an object hcbpg cannot read ({raw[:200]!r})"
        raise UsageError(f"{store.name}/{key} is held by {held}, not by run {run_id}: not broken",
                         hint=f"Name the holder's run to break it: --break {named}")
    store.delete(key)
    return holder
