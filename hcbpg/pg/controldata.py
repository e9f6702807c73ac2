"""``pg_controldata``'s output (pure)."""

from __future__ import annotations


def parse_controldata(text: str) -> dict[str, str]:
    """``pg_controldata`` output as a dict (key → value, both stripped)."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out

