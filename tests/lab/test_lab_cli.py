"""`hcbpg lab` refuses clearly (exit 2) where the lab cannot run."""

from __future__ import annotations


def test_lab_commands_refuse_to_run_without_root(monkeypatch, capsys):
    from hcbpg.cli import lab as cli
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert cli.main(["lab", "status"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_lab_commands_refuse_to_run_off_linux(monkeypatch, capsys):
    from hcbpg.cli import lab as cli
    monkeypatch.setattr("sys.platform", "darwin")
    assert cli.main(["lab", "up"]) == 2
    assert "needs Linux" in capsys.readouterr().err
