"""Specs of the offline transfer's operations (hcbpg.ops.migration: dump, restore, stream) on the
recording double: the primary's files in → commands and Outcome out.  A dry run is the same call on a
:class:`DryRunHost` over the same state: the same journal, nothing run on the double."""

from __future__ import annotations

import re
import shlex

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.errors import RemoteCommandError
from hcbpg.ops.migration.dump import DumpResult, ensure_dump_removed
from tests.fast.specs import covers

NAME = "server-postgres-1"
DUMP = DumpResult("/var/tmp/hcbpg-dump/r1-07_cutover", "directory", 1.0, 10, None)
RM = "rm -rf /var/tmp/hcbpg-dump/r1-07_cutover /var/tmp/hcbpg-dump/r1-07_cutover.*"


class Primary:
    """The paths on the primary behind a :class:`RecordingHost`: ``ls -d`` lists what is there, ``rm -rf``
    removes it (a directory's files with it)."""

    def __init__(self, paths: set[str], *, rm_fails: bool = False) -> None:
        self.paths = set(paths)
        self.rm_fails = rm_fails
        self.host = RecordingHost(NAME, handler=self.answer)

    def answer(self, call: Call) -> Result | str | None:
        words = shlex.split(call.command.split("|")[0].replace("2>/dev/null", ""))
        if words[:2] == ["ls", "-d"]:
            found = [p for p in sorted(self.paths) if any(re.fullmatch(re.escape(w).replace(r"\*", ".*"), p)
                                                          for w in words[2:])]
            return "\n".join(found[:1]) + ("\n" if found else "")
        if words[:2] == ["rm", "-rf"]:
            if self.rm_fails:
                return Result(NAME, call.command, 1, "", "rm: cannot remove: Device or resource busy", 0.0)
            self.paths = {p for p in self.paths
                          if not any(re.fullmatch(re.escape(w).replace(r"\*", ".*") + "(/.*)?", p) for w in words[2:])}
            return ""
        return None


def there() -> set[str]:
    return {DUMP.path, f"{DUMP.path}/toc.dat", f"{DUMP.path}.list", f"{DUMP.path}.pg_dump-log", "/var/tmp/hcbpg-dump/r2"}


@covers("hcbpg.ops.migration.dump.ensure_dump_removed", "fresh", "second run")
def test_the_dump_and_its_side_files_go_and_a_second_run_changes_nothing():
    primary = Primary(there())
    out = ensure_dump_removed(primary.host, DUMP)
    assert primary.host.ran == [RM] and out.changed and not out.dry_run
    assert out.what == f"dump {DUMP.path} on {NAME} removed"
    assert primary.paths == {"/var/tmp/hcbpg-dump/r2"}  # another run's dump stays
    again = Primary(primary.paths)
    out = ensure_dump_removed(again.host, DUMP)
    assert again.host.ran == [] and not out.changed


@pytest.mark.parametrize("left", [{f"{DUMP.path}.pg_dump-exit"}, {DUMP.path}], ids=["side file only", "dump only"])
def test_whatever_is_left_of_a_dump_is_removed(left):
    primary = Primary(left)
    assert ensure_dump_removed(primary.host, DUMP).changed and primary.host.ran == [RM] and primary.paths == set()


@covers("hcbpg.ops.migration.dump.ensure_dump_removed", "dry run")
def test_a_dry_run_removes_nothing_and_says_what_it_would_run():
    primary = Primary(there())
    dry = DryRunHost(primary.host, echo=lambda _: None)
    out = ensure_dump_removed(dry, DUMP)
    assert dry.journal == [RM] and out.changed and out.dry_run
    assert primary.host.ran == [] and primary.paths == there()


@covers("hcbpg.ops.migration.dump.ensure_dump_removed", "refusal")
def test_a_dump_that_cannot_be_removed_fails_loudly():
    primary = Primary(there(), rm_fails=True)
    with pytest.raises(RemoteCommandError, match="exit code 1"):
        ensure_dump_removed(primary.host, DUMP)
    assert primary.paths == there()
