"""The lab's app: steady writes on the Heroku-like source from the app host, as HCB's app makes them
until maintenance mode is on, each logged after its commit, so a rehearsal, a test or a benchmark can
prove afterwards that every write made before maintenance-on is on the new primary.

Each write is one ``psql`` on the app host through the libpq service ``hcbpg-app-load`` (a 0600
service file holding the source's credentials, never a command line): an insert into ``events`` and
an update of an existing ``transactions`` row, at a fixed rate.  The log has ``i ID`` for an insert
and ``u ID MEMO`` for an update; ``stopped`` ends it once the load has seen its stop file (what
maintenance mode on means for the app).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICE = "hcbpg-app-load"
SERVICE_FILE = "/root/.pg_service.conf"
LOG = "/var/tmp/hcbpg-app-load.log"
STOP = "/var/tmp/hcbpg-app-load.stop"

_SCRIPT = r"""
rm -f @STOP@ @LOG@; n=0
while [ ! -e @STOP@ ]; do
  n=$((n+1)); t0=$(date +%s%N)
  out=$(psql "service=@SERVICE@" -X -q -At -v ON_ERROR_STOP=1 \
    -c "INSERT INTO events (user_id, name, properties, created_at) VALUES (1 + $n % @USERS@, 'load', '{}', now()) RETURNING id" \
    -c "UPDATE transactions SET memo = 'app-load $n' WHERE id = 1 + ($n * 7919) % @TRANSACTIONS@ RETURNING id" 2>/dev/null) \
    && set -- $out && [ -n "$2" ] && printf 'i %s\nu %s app-load %s\n' "$1" "$2" "$n" >> @LOG@
  left=$(( @PERIOD_NS@ - ($(date +%s%N) - t0) )); [ $left -gt 0 ] && sleep "0.$(printf '%09d' $left)"
done
echo stopped >> @LOG@
"""


def render_service_file(conn: Mapping[str, str]) -> str:
    """The app host's libpq service file for the load (the source's keywords, as parsed from its URL)."""
    return f"[{SERVICE}]\n" + "".join(f"{k}={v}\n" for k, v in conn.items()) + "application_name=hcbpg-app-load\n"


def render_start(rate: float, *, users: int = 1000, transactions: int = 5000) -> str:
    """The shell command that starts the load in the background (*rate* writes of each kind a second;
    *users* and *transactions* bound the ids it references and updates: rows the lab source has)."""
    script = (_SCRIPT.replace("@STOP@", STOP).replace("@LOG@", LOG).replace("@SERVICE@", SERVICE)
              .replace("@USERS@", str(users)).replace("@TRANSACTIONS@", str(transactions))
              .replace("@PERIOD_NS@", str(int(1e9 / rate))))
    return f"nohup bash -c {shlex.quote(script)} > /dev/null 2>&1 &"


#: stop the load (maintenance mode on) and wait until its last write is logged
STOP_COMMAND = (f"touch {STOP}; for i in $(seq 300); do tail -1 {LOG} 2>/dev/null | grep -qx stopped && exit 0; "
                "sleep 0.05; done; echo 'the load did not stop' >&2; exit 1")


@dataclass
class LoadLog:
    """What the load wrote: inserted ids and, per updated id, the last memo written."""

    inserted: list[int] = field(default_factory=list)
    updated: dict[int, str] = field(default_factory=dict)
    stopped: bool = False

    @property
    def writes(self) -> int:
        return len(self.inserted) + len(self.updated)


def parse_log(text: str) -> LoadLog:
    log = LoadLog()
    for line in text.splitlines():
        if line.startswith("i "):
            log.inserted.append(int(line.split()[1]))
        elif line.startswith("u "):
            _, i, memo = line.split(" ", 2)
            log.updated[int(i)] = memo
        elif line == "stopped":
            log.stopped = True
    return log


def render_found_sql(log: LoadLog) -> str:
    """One query on the new primary: which of the logged inserts exist, and each updated row's memo."""
    ids = ",".join(map(str, log.inserted)) or "0"
    upd = ",".join(map(str, log.updated)) or "0"
    return ("SELECT json_build_object("
            f"'inserted', (SELECT coalesce(json_agg(id), '[]') FROM public.events WHERE id = ANY ('{{{ids}}}'::bigint[])), "
            f"'memos', (SELECT coalesce(json_object_agg(id, memo), '{{}}') FROM public.transactions "
            f"WHERE id = ANY ('{{{upd}}}'::bigint[])))")


def lost_writes(log: LoadLog, found: Mapping[str, Any]) -> list[str]:
    """Every logged write missing on the primary (an insert absent, an update not the last memo)."""
    have = {int(i) for i in found.get("inserted") or []}
    memos = {int(k): v for k, v in (found.get("memos") or {}).items()}
    return ([f"events {i}: missing" for i in log.inserted if i not in have]
            + [f"transactions {i}: memo {memos.get(i)!r}, expected {m!r}" for i, m in log.updated.items()
               if memos.get(i) != m])


def check_on_primary(log: LoadLog, query_json: Callable[[str], Any]) -> list[str]:
    """The lost writes, with *query_json* running one query on the new primary's database."""
    return lost_writes(log, query_json(render_found_sql(log)) or {})


__all__ = ["LOG", "LoadLog", "SERVICE", "SERVICE_FILE", "STOP", "STOP_COMMAND", "check_on_primary", "lost_writes",
           "parse_log", "render_found_sql", "render_service_file", "render_start"]
