"""libpq connection strings and ``.pgpass`` lines: quoting and parsing.  Pure."""

from __future__ import annotations

import re


def pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def conninfo_quote(value: str) -> str:
    """A libpq keyword value: bare when simple, else single-quoted with \\ and ' escaped."""
    if value and re.fullmatch(r"[A-Za-z0-9_.\-/]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_conninfo(text: str) -> dict[str, str]:
    """keyword=value pairs of a libpq connection string (quoted values unescaped)."""
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        m = re.match(r"([A-Za-z_]+)\s*=\s*", text[i:])
        if not m:
            break
        key = m.group(1)
        i += m.end()
        if i < n and text[i] == "'":
            i += 1
            val = ""
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                val += text[i]
                i += 1
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace():
                i += 1
            val = text[start:i]
        out[key] = val
    return out
