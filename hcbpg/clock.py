"""Wall-clock timestamps as hcbpg writes them (UTC, microseconds, ``Z``): in manifests, database
comments and sentinel values.  Foundation: no hcbpg imports."""

from __future__ import annotations

import datetime as _dt

FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utcnow() -> str:
    """Now, in UTC, as ``2026-11-25T10:00:00.000000Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime(FORMAT)


def parse_time(s: str) -> _dt.datetime:
    """A timestamp written by :func:`utcnow`, as an aware datetime."""
    return _dt.datetime.strptime(s, FORMAT).replace(tzinfo=_dt.timezone.utc)
