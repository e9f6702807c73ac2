"""postgresql.conf values: the managed-file header, quoting a value, reading ``name = value``
lines back, and what changes between two renders.  Pure."""

from __future__ import annotations

import math
import re

from hcbpg.errors import SafetyCheckFailed
from hcbpg.values import control_characters, printable

MANAGED_HEADER = "# Managed by hcbpg: do not edit by hand; hcbpg rewrites this file whole on its next run."


SettingValue = str | int | float | bool


SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def one_line(value: str, what: str, *, secret: bool = False) -> str:
    """*value* unchanged when it holds no control character; else refused, naming *what* it is
    (and the value, escaped, unless it is a *secret*).

    Every renderer of a ``key=value`` file calls this on what it writes (params refuse these
    values already when they load: this is the second wall, for a value that came another way).
    """
    bad = control_characters(value)
    if bad:
        shown = "the secret" if secret else f"'{printable(value)[:120]}'"
        raise SafetyCheckFailed(f"{what}: {shown} holds a control character ({', '.join(bad)}), which would end the "
                                "line in a config file and write lines of its own: refused, nothing was written",
                                hint="Remove the character from params (hcbpg params check ENV names the key).")
    return value


def quote_setting(value: SettingValue) -> str:
    """A value as postgresql.conf wants it: numbers bare, booleans on/off, strings single-quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise SafetyCheckFailed(f"a setting value must be a finite number, not {value}")
        return str(value)
    text = one_line(str(value), "a setting value")
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
