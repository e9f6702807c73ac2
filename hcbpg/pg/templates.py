"""The shell, awk, psql and Perl files of the migration, as templates shipped in
``hcbpg/pg/scripts/`` (package data of :data:`SCRIPTS_PACKAGE`: read, never imported),
and the one pure function that fills them in.

Template syntax (small on purpose, no Jinja):

* ``@NAME@`` is replaced by ``values["NAME"]``, as given: the caller quotes (``shlex.quote``)
  what a shell must see as one word.  A value may span lines.
* ``#@if NAME`` ... ``#@end`` keeps its lines only when ``flags["NAME"]`` is true (no nesting).
* a line starting with ``#@`` is a comment of the template, never part of the output.

A placeholder without a value, or a value given for no placeholder, is an error (ValueError):
a template and its renderer cannot drift apart silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")

#: the package whose ``scripts/`` folder holds the templates (beside their renderer: pure data, read, never imported)
SCRIPTS_PACKAGE = "hcbpg.pg"


@cache
def read_script(name: str) -> str:
    """The text of ``scripts/<name>`` as shipped in the package."""
    return resources.files(SCRIPTS_PACKAGE).joinpath("scripts", name).read_text(encoding="utf-8")


def render_template(text: str, values: Mapping[str, str], flags: Mapping[str, bool] | None = None, *,
                    name: str = "template") -> str:
    """*text* with its sections chosen by *flags* and its ``@NAME@`` placeholders filled from *values*."""
    flags = flags or {}
    kept: list[str] = []
    section: str | None = None
    for line in text.splitlines(keepends=True):
        directive = line.strip()
        if directive.startswith("#@if "):
            if section is not None:
                raise ValueError(f"{name}: nested #@if {directive[5:]} in #@if {section}")
            section = directive[5:].strip()
            if section not in flags:
                raise ValueError(f"{name}: no flag {section}")
            continue
        if directive == "#@end":
            if section is None:
                raise ValueError(f"{name}: #@end without #@if")
            section = None
            continue
        if line.startswith("#@"):
            continue
        if section is None or flags[section]:
            kept.append(line)
    if section is not None:
        raise ValueError(f"{name}: #@if {section} is not closed")
    body = "".join(kept)
    used = set(_PLACEHOLDER.findall("".join(text)))
    missing = used - set(values)
    if missing:
        raise ValueError(f"{name}: no value for {', '.join(sorted(missing))}")
    unused = set(values) - used
    if unused:
        raise ValueError(f"{name}: {', '.join(sorted(unused))} is not in the template")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], body)


def render_script(name: str, values: Mapping[str, str], flags: Mapping[str, bool] | None = None) -> str:
    """The shipped template ``scripts/<name>`` filled in (see :func:`render_template`)."""
    return render_template(read_script(name), values, flags, name=name)
