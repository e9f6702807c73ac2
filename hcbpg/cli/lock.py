"""``hcbpg lock ENV [--break RUN_ID] [--json]``: who holds the environment's lock for destructive steps
(steps 10 and 11, in the backup bucket: :mod:`hcbpg.ops.env_lock`), and the one deliberate way to break
a stale one: naming the run that holds it, as ``hcbpg lock ENV`` showed it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hcbpg.adapters.objectstore import ObjectStore
from hcbpg.cli.completion import HELP, complete_as
from hcbpg.errors import UsageError
from hcbpg.ops import env_lock
from hcbpg.params import home, load_params


def _store(env: str) -> tuple[ObjectStore, str]:
    params = load_params(env, home())
    pb = params.pgbackrest
    if pb is None:
        raise UsageError(f"params/{env}.yaml has no pgbackrest section: {env} has no backup bucket, so no "
                         "environment lock (steps 10 and 11 refuse to run without one)")
    store = ObjectStore.of_backup_bucket(params)
    return store, env_lock.lock_key(params)


def cmd_lock(args: argparse.Namespace) -> int:
    store, key = _store(args.env)
    out: dict[str, Any] = {"environment": args.env, "object": f"{store.name}/{key}"}
    if args.break_run is not None:
        holder = env_lock.run_break_env_lock(store, key, args.break_run)
        out.update(held=False, broken=holder.__dict__ if holder else {"run_id": "?"})
        line = (f"broke the environment lock of {args.env} ({store.name}/{key}) held by "
                f"{holder.describe() if holder else 'an object hcbpg could not read'}")
    else:
        holder, raw = env_lock.get_env_lock(store, key)
        out.update(held=raw is not None, holder=holder.__dict__ if holder else None)
        if raw is None:
            line = f"{args.env}: the environment lock is free ({store.name}/{key})"
        elif holder is None:
            line = f"{args.env}: {store.name}/{key} holds something hcbpg cannot read: {raw.strip()[:200]!r}"
        else:
            line = (f"{args.env}: the environment lock is held by {holder.describe()} ({store.name}/{key}); "
                    f"if that run is over and will not be resumed: hcbpg lock {args.env} --break {holder.run_id}")
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
    else:
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lock", help="show (or deliberately break) the environment's lock for destructive steps",
                       description=__doc__)
    complete_as(p.add_argument("env", help=HELP["env"]), "envs")
    p.add_argument("--break", dest="break_run", metavar="RUN_ID",
                   help="remove the lock if run RUN_ID holds it (a stale lock: that run is abandoned); "
                        "refused when any other run holds it")
    p.add_argument("--json", action="store_true", help="print environment, object, held, holder (or broken)")
    p.set_defaults(func=cmd_lock)
