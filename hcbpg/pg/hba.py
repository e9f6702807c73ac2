"""pg_hba.conf as values: one rule (:class:`HbaRule`), name quoting, parsing a file back into
rules and what changes between two files.  Pure (like community.postgresql's pg_hba module)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

_HBA_KEYWORDS = {"all", "sameuser", "samerole", "samegroup", "replication"}


ALLOWED_METHODS = {"peer", "scram-sha-256", "reject", "cert"}


def hba_name(name: str) -> str:
    """A database or role name as a pg_hba token: double-quoted when it would read as a keyword."""
    if name in _HBA_KEYWORDS or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", name):
        return '"' + name.replace('"', '""') + '"'
    return name


@dataclass(frozen=True)
class HbaRule:
    """One pg_hba.conf line; database and user are tokens as written (see :func:`hba_name`)."""

    type: str
    database: str
    user: str
    method: str
    address: str | None = None
    options: tuple[str, ...] = ()
    comment: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.type not in ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"):
            raise ValueError(f"unknown pg_hba connection type {self.type!r}")
        if (self.type == "local") != (self.address is None):
            raise ValueError(f"pg_hba {self.type} rule {'needs' if self.address is None else 'takes no'} address")

    def render(self) -> str:
        cols = [self.type.ljust(7), self.database.ljust(15), self.user.ljust(15), (self.address or "").ljust(23),
                " ".join((self.method, *self.options))]
        line = " ".join(cols).rstrip()
        return line


def _hba_tokens(line: str) -> list[str]:
    tokens, cur, quoted, i = [], "", False, 0
    while i < len(line):
        ch = line[i]
        if ch == '"':
            quoted = not quoted
            cur += ch
        elif ch == "#" and not quoted:
            break
        elif ch.isspace() and not quoted:
            if cur:
                tokens.append(cur)
                cur = ""
        else:
            cur += ch
        i += 1
    if cur:
        tokens.append(cur)
    return tokens


def parse_pg_hba(text: str) -> list[HbaRule]:
    """The rules of a pg_hba.conf text (comments and blank lines dropped; IP + netmask form normalised)."""
    rules = []
    for line in text.splitlines():
        t = _hba_tokens(line)
        if not t:
            continue
        if t[0] == "local":
            rules.append(HbaRule("local", t[1], t[2], t[3], None, tuple(t[4:])))
            continue
        address, rest = t[3], t[4:]
        if "/" not in address and rest and re.fullmatch(r"[0-9.:a-fA-F]+", rest[0]) and ("." in rest[0] or ":" in rest[0]):
            address = str(ipaddress.ip_network(f"{address}/{rest[0]}", strict=False))
            rest = rest[1:]
        rules.append(HbaRule(t[0], t[1], t[2], rest[0] if rest else "", address, tuple(rest[1:])))
    return rules


def plan_pg_hba(current: str | None, desired: str) -> tuple[list[HbaRule], list[HbaRule]]:
    """Rules that the desired file adds and removes compared with the current one (order aside)."""
    old, new = parse_pg_hba(current or ""), parse_pg_hba(desired)
    return [r for r in new if r not in old], [r for r in old if r not in new]
