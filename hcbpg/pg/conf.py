"""postgresql.conf values: the managed-file header, quoting a value, reading ``name = value``
lines back, and what changes between two renders.  Pure."""

from __future__ import annotations

import re

MANAGED_HEADER = "# Managed by hcbpg: do not edit by hand; hcbpg rewrites this file whole on its next run."


SettingValue = str | int | float | bool


SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def quote_setting(value: SettingValue) -> str:
    """A value as postgresql.conf wants it: numbers bare, booleans on/off, strings single-quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"a setting value cannot span lines: {text!r}")
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def parse_settings(text: str) -> dict[str, str]:
    """``name = value`` lines of a config file (values as written, quotes kept); comments skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$", s)
        if m:
            value = m.group(2)
            if not value.startswith("'") and "#" in value:
                value = value.split("#", 1)[0].strip()
            out[m.group(1)] = value
    return out


def plan_settings(current: str | None, desired: str) -> dict[str, tuple[str | None, str | None]]:
    """Settings whose written value changes: name -> (old, new); None means absent."""
    old, new = parse_settings(current or ""), parse_settings(desired)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _unquote_setting(value: str) -> str:
    if len(value) >= 2 and value[0] == "'" and value[-1] == "'":
        return value[1:-1].replace("''", "'").replace("\\\\", "\\")
    return value


def parse_auto_conf(text: str) -> dict[str, str]:
    """Settings of postgresql.auto.conf, values unquoted (later lines win, as in PostgreSQL)."""
    return {k: _unquote_setting(v) for k, v in parse_settings(text).items()}
