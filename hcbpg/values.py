"""What one params value may be, checked alone: a line without control characters, a private network,
SSH admin ranges narrower than the internet, a directory of hcbpg's own, an S3 endpoint, a site of
hcbpg; and reading a params file that may not be UTF-8.  Pure (but for reading the file).

:mod:`hcbpg.params` builds its types from these; the renderers of config files
(:func:`hcbpg.pg.conf.one_line`) check with the same :func:`control_characters` again, so that a
value that reached them another way is still refused.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from hcbpg.errors import ParamsError

#: Unicode categories that end, hide or reorder a line: controls (C0, DEL, C1: newline, carriage return, NEL,
#: tab, NUL, escape), format characters (bidi overrides, zero-width), surrogates, private use, line and
#: paragraph separators.  No params value needs one, and every value may end up in a ``key=value`` file.
_CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})
_CHAR_NAMES = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\x00": "NUL", "\x0b": "vertical tab",
               "\x0c": "form feed", "\x1b": "escape", "\x7f": "delete", "\x85": "next line",
               "\u2028": "line separator", "\u2029": "paragraph separator"}


def control_characters(text: str) -> list[str]:
    """The control characters in *text*, each once, as ``U+000A line feed``; empty: none.

    Shared by the params checks and the renderers (:func:`hcbpg.pg.conf.one_line`), so both refuse the same.
    """
    seen = dict.fromkeys(ch for ch in text if unicodedata.category(ch) in _CONTROL_CATEGORIES)
    return [f"U+{ord(ch):04X} {_CHAR_NAMES.get(ch) or unicodedata.name(ch, 'control').lower()}" for ch in seen]


def printable(text: str) -> str:
    """*text* with its control characters escaped (``\\n``, ``\\u2028``): safe on one line of a report."""
    if not control_characters(text):
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) in _CONTROL_CATEGORIES
                   else ch for ch in text)


def control_problem(value: Any, where: str = "") -> str | None:
    """Why *value* (a string, or one inside a list or mapping) cannot go into a config file; None: it can."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        bad = control_characters(value)
        if bad:
            return (f"{where}contains {'a control character' if len(bad) == 1 else 'control characters'} "
                    f"({', '.join(bad)}): every value is written into config files (pgbackrest.conf, "
                    "postgresql.conf, pg_hba.conf) one line each, where a line break would add lines of its "
                    "own; remove it")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = control_problem(item, f"{where}[{i}] ")
            if found:
                return found
    elif isinstance(value, dict):
        for k, item in value.items():
            found = control_problem(k, f"{where}key {printable(str(k))!r} ") or control_problem(
                item, f"{where}{printable(str(k))}: ")
            if found:
                return found
    return None


def control_problems(data: Any, prefix: str = "") -> dict[str, str]:
    """Every string in loaded params data (keys too) that holds a control character: dotted key -> problem."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{printable(str(k))}" if prefix else printable(str(k))
            found = control_problem(k, "its name ")
            if found:
                out[key] = found
            out.update(control_problems(v, key))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            out.update(control_problems(v, f"{prefix}[{i}]"))
    else:
        found = control_problem(data)
        if found:
            out[prefix or "(top level)"] = found
    return out


#: RFC 1918: the only ranges a Hetzner private network (and so the database's network) may use
PRIVATE_RANGES = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def private_network(v: str) -> str:
    """*v* (a network, checked already) when it lies in an RFC 1918 range; else ValueError saying why."""
    net = ipaddress.ip_network(v)
    if not any(net.version == r.version and net.subnet_of(r) for r in PRIVATE_RANGES):  # type: ignore[arg-type]
        raise ValueError(f"{v} is not a private range: only RFC 1918 ranges (10.0.0.0/8, 172.16.0.0/12, "
                         "192.168.0.0/16; IPv4) may hold the database's network, subnet and app servers, "
                         "since pg_hba.conf admits the app from them")
    return v


#: what a site reference must look like: a class (capitalised) in a module of hcbpg
SITE_REF = re.compile(r"^hcbpg(\.[a-z_][a-z0-9_]*)+:[A-Z][A-Za-z0-9_]*$")


def site_ref(v: str) -> str:
    """*v* when it names a class of hcbpg (``hcbpg.module:Class``); else ValueError."""
    if len(v) > 200 or not SITE_REF.fullmatch(v):
        raise ValueError(f"{printable(v)!r} is not a class of hcbpg: a site is named as hcbpg.<module>:<Class> "
                         "(e.g. hcbpg.lab.site:LabSite); nothing outside hcbpg can be named here")
    return v


#: directories (and their trees) hcbpg never creates files in, chowns or wipes: the system's own
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/root", "/run",
                "/sbin", "/snap", "/sys", "/usr", "/var/lib/dpkg", "/var/lib/apt", "/var/log", "/var/run",
                "/var/lock")
#: well-known directories that may hold a directory of hcbpg's, but are never one themselves
SHARED_DIRS = ("/home", "/media", "/mnt", "/opt", "/srv", "/tmp", "/var", "/var/backups", "/var/cache",
               "/var/lib", "/var/local", "/var/mail", "/var/opt", "/var/spool", "/var/tmp",
               "/var/lib/postgresql", "/var/lib/pgbackrest")
#: a PostgreSQL cluster's data and config trees (Debian layout: /var/lib/postgresql/<version>/...)
_CLUSTER_TREE = re.compile(r"^/(var/lib|etc)/postgresql/\d+(/|$)")


def own_directory(v: str) -> str:
    """A directory hcbpg makes its own (``install -d -o postgres``, ``rm -rf`` inside): never a system one."""
    if v and not v.strip("/"):
        raise ValueError(f"{v!r} is the root directory: hcbpg makes this directory its own (owner, mode, files "
                         "deleted inside), so name one of its own, e.g. /var/tmp/hcbpg-dump")
    if not re.fullmatch(r"/[A-Za-z0-9_.+@=-]+(/[A-Za-z0-9_.+@=-]+)*", v):
        raise ValueError(f"{printable(v)!r} is not an absolute path of plain names (letters, digits, _ . - + @ =) "
                         "without a trailing slash, e.g. /var/tmp/hcbpg-dump")
    if posixpath.normpath(v) != v or any(part in (".", "..") for part in v.split("/")):
        raise ValueError(f"{v!r} is not a normalised path (no . or .. parts): write the directory itself")
    if v in SHARED_DIRS or v.count("/") < 2:
        example = f"{v}/hcbpg-dump" if v in SHARED_DIRS else "/var/tmp/hcbpg-dump"
        raise ValueError(f"{v!r} is a directory of the system or a top-level one: hcbpg makes this directory "
                         f"its own (owner, mode, files deleted inside), so name one of its own, e.g. {example}")
    inside = next((t for t in SYSTEM_TREES if v == t or v.startswith(t + "/")), None)
    if inside:
        raise ValueError(f"{v!r} is in {inside}, a system directory: hcbpg makes this directory its own "
                         "(owner, mode, files deleted inside); use e.g. /var/tmp/hcbpg-dump")
    if _CLUSTER_TREE.match(v):
        raise ValueError(f"{v!r} is inside a PostgreSQL cluster's data or config directory: use e.g. "
                         "/var/tmp/hcbpg-dump")
    return v


#: an S3 endpoint: host or host:port (an optional http(s):// and a trailing slash are tolerated)
_ENDPOINT = re.compile(r"^(https?://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:(\d{1,5}))?/?$")


def endpoint(v: str) -> str:
    """*v* when it is host or host:port with a port from 1 to 65535; else ValueError."""
    m = _ENDPOINT.fullmatch(v)
    if not m:
        raise ValueError(f"{printable(v)!r} is not host or host:port (e.g. fsn1.your-objectstorage.com)")
    if m.group(5) is not None and not 1 <= int(m.group(5)) <= 65535:
        raise ValueError(f"{v!r}: port {m.group(5)} is not between 1 and 65535")
    return v


#: the most SSH admin ranges may cover together, per address family: as many addresses as one /8
ADMIN_MAX_PREFIX = 8


def wide_admin_ranges(ranges: list[str]) -> list[str]:
    """Problems: the address families in which *ranges* together cover more than a /8.

    Counted over the merged ranges, so that 0.0.0.0/1 + 128.0.0.0/1 (the whole internet in two
    halves) counts as what it is, and a range listed twice counts once."""
    out = []
    for version, bits in ((4, 32), (6, 128)):
        nets = [ipaddress.ip_network(r) for r in ranges if ipaddress.ip_network(r).version == version]
        merged = list(ipaddress.collapse_addresses(nets))  # type: ignore[type-var]
        covered = sum(n.num_addresses for n in merged)
        if covered > 2 ** (bits - ADMIN_MAX_PREFIX):
            share = covered / 2 ** bits
            whole = " (the whole internet)" if covered == 2 ** bits else f" ({share:.1%} of all IPv{version} addresses)"
            together = "covers" if len(nets) == 1 else "cover together"
            out.append(f"{', '.join(str(n) for n in nets)} {together} more than a /{ADMIN_MAX_PREFIX}{whole}")
    return out


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    """One line for a file that is not UTF-8: the key whose value holds the first bad byte, and where."""
    line = raw.count(b"\n", 0, exc.start) + 1
    column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
    where = f"line {line}, column {column}: byte 0x{raw[exc.start]:02x} is not UTF-8"
    try:
        loaded = yaml.safe_load(raw.decode("utf-8", "replace"))
    except (yaml.YAMLError, RecursionError):
        loaded = None
    keys = [k for k, v in _strings_of(loaded) if "\ufffd" in v]
    fix = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    return f"{keys[0]}: {where}; {fix}" if keys else f"{where} (outside any value); {fix}"


def _strings_of(data: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, text) of every string key and value in loaded YAML."""
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{printable(str(k))}" if prefix else printable(str(k))
            yield key, str(k)
            yield from _strings_of(v, key)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings_of(v, f"{prefix}[{i}]")
    elif isinstance(data, str):
        yield prefix, data


def read_yaml_file(path: Path) -> Any:
    """The data of a params file (YAML); ParamsError (one line, with the key where there is one) when it is
    not UTF-8 or not YAML."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(str(path), [_not_utf8(raw, exc)]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(str(path), [printable(f"not valid YAML: {exc}").replace("\\n", " ")]) from None
    except RecursionError:
        raise ParamsError(str(path), ["not valid params: nested too deeply to read"]) from None


#: networks reserved for documentation (RFC 5737, RFC 3849): an admin range in one is a placeholder
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))


def documentation_network(value: str) -> bool:
    """True when *value* (a CIDR) lies inside a documentation network: a placeholder, it reaches nobody."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return any(net.version == d.version and net.subnet_of(d) for d in DOCUMENTATION_NETWORKS)  # type: ignore[arg-type]
