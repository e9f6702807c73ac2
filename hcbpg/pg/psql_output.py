"""What psql prints (pure): the SQLSTATE of an error (``VERBOSITY verbose``) and the JSON result
hcbpg's queries print after a marker line."""

from __future__ import annotations

import json
import re
from typing import Any

from hcbpg.errors import DatabaseError

#: the line prefix of a JSON result in psql output (``SELECT 'HCBPG-JSON ' || (...)::text``)
JSON_MARK = "HCBPG-JSON "

_SQLSTATE = re.compile(r"^(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):", re.MULTILINE)


def parse_sqlstate(output: str) -> str | None:
    """PostgreSQL's SQLSTATE in psql's error output, when it printed one (``VERBOSITY verbose``)."""
    m = _SQLSTATE.search(output or "")
    return m.group(1) if m else None


def parse_marked_json(stdout: str) -> Any:
    """The value after the last ``HCBPG-JSON`` marker in psql output."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(JSON_MARK):
            return json.loads(line[len(JSON_MARK):])
    raise DatabaseError("psql printed no result line", hint="Run the query by hand to see what it prints.")
