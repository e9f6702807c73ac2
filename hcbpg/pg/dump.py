"""The dump's table of contents (``pg_restore -l``): what hcbpg creates itself before the restore is
filtered out of it, in Python and as the equivalent sed program for a list made on the primary."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: the names of the triggers Bucardo puts on a synced table (delta, kick, truncate)
BUCARDO_TRIGGER_PREFIX = "bucardo_"
_TOC_LINE = re.compile(r"^(?P<id>\d+); (?P<cat>\d+) (?P<oid>\d+) (?P<rest>.*)$")


def filter_toc(toc: str, *, precreated_schemas: Iterable[str]) -> tuple[str, list[str]]:
    """The ``pg_restore -l`` list without what hcbpg creates itself before the restore.

    Dropped: EXTENSION entries and their COMMENTs (created as superuser beforehand: the app
    role may not create untrusted extensions), the SCHEMA entries of schemas created
    beforehand (``heroku_ext``), and the triggers Bucardo put on the source's tables
    (``bucardo_*``: the online transfer's; its schema is never dumped).  Returns the new list and
    the lines dropped.
    """
    schemas = set(precreated_schemas)
    kept, dropped = [], []
    for line in toc.splitlines():
        m = _TOC_LINE.match(line)
        if not m:
            kept.append(line)
            continue
        rest = m.group("rest").split()
        drop = False
        if rest[:1] == ["EXTENSION"]:
            drop = True
        elif rest[:3] == ["COMMENT", "-", "EXTENSION"]:
            drop = True
        elif rest[:1] == ["SCHEMA"] and len(rest) >= 3 and rest[2] in schemas:
            drop = True
        elif rest[:3] == ["COMMENT", "-", "SCHEMA"] and len(rest) >= 4 and rest[3] in schemas:
            drop = True
        elif rest[:1] == ["TRIGGER"] and len(rest) >= 4 and rest[3].startswith(BUCARDO_TRIGGER_PREFIX):
            drop = True
        if drop:
            dropped.append(line)
            kept.append(";" + line)
        else:
            kept.append(line)
    return "\n".join(kept) + "\n", dropped


def plan_prerequisites(facts: Mapping[str, Any], *, toc: str | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """Schemas to create before the restore (where extensions live, e.g. heroku_ext) and the extensions."""
    exts = [e for e in facts.get("extensions", []) if e["name"] != "plpgsql"]
    schemas = sorted({e["schema"] for e in exts if e["schema"] not in ("public", "pg_catalog")})
    if toc is not None and re.search(r"\bheroku_ext\b", toc) and "heroku_ext" not in schemas:
        schemas.append("heroku_ext")
    return schemas, exts


def render_toc_filter(schemas: Iterable[str]) -> str:
    """A sed program doing what :func:`filter_toc` does, for a list made on the primary."""
    alts = ["EXTENSION - ", "COMMENT - EXTENSION ", f"TRIGGER [^ ]+ [^ ]+ {BUCARDO_TRIGGER_PREFIX}"]
    for sch in schemas:
        if not re.fullmatch(r"[A-Za-z0-9_]+", sch):
            raise ValueError(f"schema name {sch!r} cannot go into the list filter")
        alts += [f"SCHEMA - {sch} ", f"COMMENT - SCHEMA {sch} "]
    return "s/^([0-9]+; [0-9]+ [0-9]+ (" + "|".join(alts) + "))/;\\1/"
