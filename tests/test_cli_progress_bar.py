"""One progress bar on a terminal: hcbpg's own (the live view of long work); papermill's cell bar is off."""

from __future__ import annotations

import argparse
import sys

from hcbpg import cli


def test_papermills_cell_bar_is_off_on_a_terminal_and_off_it(monkeypatch):
    monkeypatch.setattr(cli, "install_sigterm_as_interrupt", lambda: None)  # not in the test's own process
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty, raising=False)
        runner = cli._runner(argparse.Namespace(quiet=False, json=False, verbose=False))
        assert runner.progress_bar is False
        assert runner.live is not None  # hcbpg's own view of long work stays
