"""What ``hcbpg`` shows: cell output live with -v (scrubbed), --quiet, timestamps, the recap, JSON of
runs/plan/audit verify/params check, --version, completion, help with examples and exit codes, and
the HTML index with each step's checks (real papermill kernels, the real CLI in a subprocess)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbutil import hcbpg, subparsers, write_notebook, write_steps

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\d\d:\d\d:\d\d ")


def only_run(home: Path, env: str) -> Path:
    (run,) = [p for p in (home / "outputs" / env).iterdir() if p.is_dir()]
    return run


def test_verbose_run_shows_each_cells_output_scrubbed_in_the_terminal_before_the_step_ends(home, env, tmp_path):
    go = tmp_path / "go"
    nb = home / "notebooks"
    write_notebook(nb / "00_talks.ipynb", "00_talks",
                   "import os, time, pathlib\n"
                   "print('cell says hello; password', os.environ['HCBPG_TEST_APP_PW'], flush=True)\n"
                   f"go = pathlib.Path({str(go)!r})\n"
                   "deadline = time.time() + 120\n"
                   "while not go.exists() and time.time() < deadline:\n    time.sleep(0.2)\n"
                   "assert go.exists(), 'the test never let the step go on'\n"
                   "print('cell says goodbye')")
    write_steps(nb, [("00_talks.ipynb", "talks")])
    proc = subprocess.Popen([sys.executable, "-m", "hcbpg.cli", "run", env, "-v", "--yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))
            if "cell says hello" in line:
                break
        else:
            pytest.fail("the cell's output never reached the terminal:\n" + "\n".join(seen))
        # the step is still running (it waits for us): its output came as it was printed
        assert not any("done in" in s for s in seen), seen
        assert not go.exists()
        go.touch()
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    seen += rest.splitlines()
    out = "\n".join(seen)
    assert proc.returncode == 0, out
    assert "app-password-0123456789" not in out and "cell says hello; password [secret]" in out, out
    assert out.count("cell says goodbye") == 1, out  # once: not again through a logger
    hello = next(i for i, s in enumerate(seen) if "cell says hello" in s)
    done = next(i for i, s in enumerate(seen) if "done in" in s)
    assert hello < done
    step_lines = [s for s in seen if "[1/1] 00_talks" in s or "done in" in s]
    assert step_lines and all(STAMP.match(s) for s in step_lines), step_lines  # timestamps on lines


def test_quiet_run_prints_only_the_end(home, env):
    nb = home / "notebooks"
    write_notebook(nb / "00_a.ipynb", "00_a", "print('a cell line')")
    write_steps(nb, [("00_a.ipynb", "a")])
    r = hcbpg("run", env, "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[1/1]" not in r.stdout and "a cell line" not in r.stdout
    assert "Recap" not in r.stdout and "00_a" in r.stdout and "ok=" in r.stdout  # the recap of a run that succeeded


def _checks_notebooks(nb: Path) -> None:
    write_notebook(nb / "00_checks.ipynb", "00_checks",
                   "from hcbpg.outcome import Check, Outcome\n"
                   "rb.track(Outcome('pg_hba.conf on server-postgres-1', changed=True, dry_run=dry_run))\n"
                   "rb.verify([Check('replica streaming', 'pass', 'lag 0s', 'server-postgres-2'),\n"
                   "           Check('backup age', 'warn', '27 h', 'server-postgres-1')])")
    write_notebook(nb / "01_fails.ipynb", "01_fails",
                   "from hcbpg.outcome import Check\n"
                   "rb.verify([Check('rows public.users', 'pass', '10 = 10'),\n"
                   "           Check('rows public.transactions', 'fail', '9 != 10', 'hcb_production')])")
    write_steps(nb, [("00_checks.ipynb", "checks"), ("01_fails.ipynb", "fails")])


def test_the_recap_lists_ok_changed_warnings_failed_per_step_and_names_the_failing_checks(home, env):
    _checks_notebooks(home / "notebooks")
    r = hcbpg("run", env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    first = next(s for s in lines if s.strip().startswith("00_checks ") and "ok=" in s)
    second = next(s for s in lines if s.strip().startswith("01_fails ") and "ok=" in s)
    assert re.search(r"succeeded\s+ok=1\s+changed=1\s+warnings=1\s+failed=0", first), first
    assert re.search(r"failed\s+ok=1\s+changed=0\s+warnings=0\s+failed=1", second), second
    assert any("failed checks: rows public.transactions on hcb_production" in s for s in lines), r.stdout
    assert any("warnings: backup age on server-postgres-1" in s for s in lines), r.stdout
    assert lines.index(first) < lines.index(second) < max(i for i, s in enumerate(lines) if "hcbpg resume" in s)
    # why it failed, above the recap: the failed check with its reason (not the passed one)
    why = lines[lines.index("Step 01_fails failed: 1 of 2 checks failed"):lines.index("Recap:")]
    assert why == ["Step 01_fails failed: 1 of 2 checks failed", "  ✗ rows public.transactions on hcb_production:",
                   "      9 != 10"], why

    # the HTML index shows each step's checks and what it changed, and links each notebook
    run = only_run(home, env)
    m = json.loads((run / "manifest.json").read_text())
    r = hcbpg("audit", "html", m["run_id"], "--no-code")
    assert r.returncode == 0, r.stdout + r.stderr
    index = (run / "html" / "index.html").read_text()
    steps = index.split('<table class="steps">')[1].split("</table>")[0]
    row0, row1 = steps.split("<tr>")[2:4]
    assert "pass 1" in row0 and "warn 1" in row0 and "fail 0" in row0 and "backup age" in row0
    assert "pg_hba.conf on server-postgres-1" in row0 and "href='00_checks.html'" in row0
    assert "fail 1" in row1 and "rows public.transactions" in row1 and "href='01_fails.html'" in row1
    page = (run / "html" / "00_checks.html").read_text()
    assert 'hl-ipython3' not in page and "replica streaming" in page  # no code cells, their outputs kept
    hcbpg("audit", "html", m["run_id"])
    assert 'hl-ipython3' in (run / "html" / "00_checks.html").read_text()


def _recap_line(out: str, key: str) -> str:
    return next(s for s in out.splitlines() if s.strip().startswith(key + " ") and "ok=" in s)


def test_a_step_that_skips_itself_is_skipped_in_the_record_recap_json_and_html_and_counts_as_done(home, env, tmp_path):
    """rb.skip: ``skipped`` (not ``succeeded ok=0``) in the manifest, the recap (with Ansible's skipped=
    column and the reason under it) and --json; a resume does not run it again, and the audit accepts it."""
    nb = home / "notebooks"
    fixed = tmp_path / "fixed"
    write_notebook(nb / "00_skips.ipynb", "00_skips", "rb.skip('the other transfer method moves the data')",
                   "raise AssertionError('a cell after rb.skip ran')")
    write_notebook(nb / "01_then.ipynb", "01_then", "import pathlib\n"
                   f"assert pathlib.Path({str(fixed)!r}).exists(), 'not fixed yet'")
    write_steps(nb, [("00_skips.ipynb", "skips"), ("01_then.ipynb", "then")])
    r = hcbpg("run", env, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    first, second = doc["steps"]
    # skipped, not failed: the cell after rb.skip (it raises) did not run
    assert first["status"] == "skipped" and first["skip_reason"] == "the other transfer method moves the data"
    assert second["status"] == "failed" and second["skip_reason"] is None
    run = only_run(home, env)
    m = json.loads((run / "manifest.json").read_text())
    assert [s["status"] for s in m["steps"]] == ["skipped", "failed"]
    assert m["steps"][0]["attempts"][0]["status"] == "skipped"

    fixed.touch()
    r = hcbpg("resume", m["run_id"])
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "1 step(s) already succeeded or skipped, not run again" in out
    assert "[1/2] 00_skips" not in out  # not run again: one attempt, still skipped
    skipped = _recap_line(out, "00_skips")
    assert re.search(r"skipped\s+ok=0\s+changed=0\s+warnings=0\s+failed=0\s+skipped=1", skipped), skipped
    assert re.search(r"succeeded\s+ok=0\s+changed=0\s+warnings=0\s+failed=0\s+skipped=0",
                     _recap_line(out, "01_then")), out
    lines = out.splitlines()
    assert lines[lines.index(skipped) + 1].strip() == "skipped: the other transfer method moves the data", out
    m = json.loads((run / "manifest.json").read_text())
    assert m["status"] == "succeeded" and [s["status"] for s in m["steps"]] == ["skipped", "succeeded"]
    assert len(m["steps"][0]["attempts"]) == 1
    r = hcbpg("resume", m["run_id"])
    assert r.returncode == 2 and "already succeeded" in r.stdout + r.stderr, r.stdout + r.stderr

    r = hcbpg("audit", "verify", env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = hcbpg("runs", env, "--json")
    (row,) = json.loads(r.stdout)  # numbers as numbers
    assert r.returncode == 0 and (row["steps_done"], row["steps_total"], row["changes"]) == (2, 2, 0), r.stdout
    r = hcbpg("audit", "html", m["run_id"], "--no-code")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = (run / "html" / "index.html").read_text().split('<table class="steps">')[1].split("</table>")[0]
    row0 = steps.split("<tr>")[2]
    assert "<td>skipped<br><small>the other transfer method moves the data</small></td>" in row0, row0


def test_the_online_only_steps_show_skipped_in_an_offline_run(home, env):
    """The real notebooks 06b and 09b with params whose transfer is offline (the default, stream): each
    skips itself, and says so: ``skipped``, not ``succeeded ok=0``."""
    nb = home / "notebooks"
    for name in ("06b_online_sync.ipynb", "09b_way_back.ipynb"):
        shutil.copy(REPO / "notebooks" / name, nb / name)
    write_steps(nb, [("06b_online_sync.ipynb", "online sync"), ("09b_way_back.ipynb", "way back")])
    r = hcbpg("run", env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for key in ("06b_online_sync", "09b_way_back"):
        line = _recap_line(out, key)
        assert re.search(r"skipped\s+ok=0\s+changed=0\s+warnings=0\s+failed=0\s+skipped=1", line), line
    assert "skipped: source.transfer is stream, not online" in out, out
    assert "succeeded" not in "\n".join(s for s in out.splitlines() if "ok=" in s), out


def test_json_of_plan_runs_audit_verify_and_params_check_parses(home, env):
    _checks_notebooks(home / "notebooks")
    r = hcbpg("plan", env, "--only", "00", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    plan = json.loads(r.stdout)  # stdout is the JSON alone: what ran meanwhile went to stderr
    assert plan["mode"] == "plan" and plan["dry_run"] is True and plan["exit_code"] == 0
    (step,) = plan["steps"]
    assert step["key"] == "00_checks" and step["changes"] == 1 and step["changed"] == ["pg_hba.conf on server-postgres-1"]
    assert step["checks"]["warn"] == 1 and "[1/1] 00_checks" in r.stderr
    runs = json.loads(hcbpg("runs", env, "--json").stdout)
    assert [x["run"] for x in runs] == [plan["run_id"]] and runs[0]["status"] == "succeeded"
    assert runs[0]["changes"] == 1 and runs[0]["dry_run"] is True and isinstance(runs[0]["duration_s"], float)
    r = hcbpg("audit", "verify", env, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"environment": env, "verified": True, "runs": 1,
                                                          "problems": []}
    executed = Path(plan["record"]) / "00_checks.ipynb"
    executed.write_text(executed.read_text().replace("pg_hba.conf", "pg_hbb.conf", 1))
    r = hcbpg("audit", "verify", env, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["verified"] is False and json.loads(r.stdout)["problems"]
    p = json.loads(hcbpg("params", "check", env, "--json").stdout)
    assert p["valid"] is True and p["servers"] == [{"name": "server-postgres-1", "private_ip": "10.0.1.5",
                                                     "role": "primary"}]
    assert "postgres.app_role_password" in p["secret_references"] and "app-password" not in json.dumps(p)
    r = hcbpg("params", "check", "nosuchenv", "--json")
    assert r.returncode == 2 and json.loads(r.stdout)["exit_code"] == 2


def test_a_reader_that_leaves_early_is_not_reported_as_a_bug(home, env):
    """`hcbpg runs --json | head -1`: the pipe closes before hcbpg has written; it exits 141 (as a shell reports
    SIGPIPE), quietly, with no "bug in hcbpg" and no crash log."""
    _checks_notebooks(home / "notebooks")
    assert hcbpg("plan", env, "--only", "00").returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "hcbpg.cli", "runs", env, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, err
    assert "bug in hcbpg" not in err and "Traceback" not in err and "Exception ignored" not in err, err


def test_version_completion_and_every_subcommands_help_has_an_example_and_the_exit_codes():
    r = hcbpg("--version")
    assert r.returncode == 0 and re.match(r"hcbpg \S+", r.stdout)
    r = hcbpg("--print-completion", "bash")
    assert r.returncode == 0 and "hcbpg" in r.stdout and "complete" in r.stdout
    from hcbpg.cli import build_parser
    subs = list(subparsers(build_parser()))
    assert len(subs) > 15
    for sp in subs:
        text = sp.format_help()
        assert "example" in text and "130 interrupted" in text, sp.prog
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert "130 interrupted" in readme and "--json" in readme


def test_on_a_terminal_long_work_is_a_bar_redrawn_in_place_and_cleared_before_the_next_line(capsys, monkeypatch):
    from hcbpg.cli import Terminal
    monkeypatch.setenv("COLUMNS", "200")  # the bar is cut to the terminal's width
    from hcbpg.progress import Sample
    term = Terminal(tty=True)
    s = Sample("copy", "public.events", done=50, total=100, unit="rows", rate=10, eta=5)
    term.live(s, False)
    term.live(Sample("copy", "public.events", done=60, total=100, unit="rows", rate=10, eta=4), False)
    term.line("      done in 12.0s, 1 change(s)")
    out, err = capsys.readouterr()
    bars = [b for b in err.split("\r\033[K") if b]
    assert len(bars) == 2 and "copy public.events: 60% 60 rows of 100 rows, 10 rows/s, 4s left" in err
    assert "━" in bars[0] and "\033[32m" in bars[0]  # rich's bar, in colour on a terminal
    assert err.endswith("\r\033[K")  # the bar is cleared before the line is printed
    assert STAMP.match(out) and out.rstrip().endswith("done in 12.0s, 1 change(s)")
    monkeypatch.setenv("COLUMNS", "40")
    term.live(s, False)
    shown = re.sub(r"\033\[[0-9;]*m", "", capsys.readouterr().err)
    assert shown.startswith("\r\033[K") and len(shown) == len("\r\033[K") + 39 and shown.endswith("…")
    monkeypatch.setenv("NO_COLOR", "1")
    term.live(s, False)
    assert "\033[3" not in capsys.readouterr().err  # NO_COLOR: no colour codes, the bar still drawn
    quiet = Terminal(quiet=True, tty=True)
    quiet.live(s, False)
    quiet.line("x")
    assert capsys.readouterr() == ("", "")
    piped = Terminal(tty=False)
    piped.live(s, False)
    piped.live(s, False)  # within 2 s: not repeated
    out, err = capsys.readouterr()
    assert err == "" and out.count("~ copy public.events: 50%") == 1


def test_status_watch_shows_the_report_again_every_n_seconds(monkeypatch, capsys):
    import argparse

    from hcbpg.engine import status
    shown: list[int] = []

    def once(args):  # noqa: ANN001
        shown.append(len(shown))
        print(f"report {len(shown)}")
        return 1 if len(shown) == 2 else 0

    monkeypatch.setattr(status, "_status_once", once)
    monkeypatch.setattr(status.time, "sleep", lambda s: None)
    args = argparse.Namespace(env="lab", watch=5.0, count=3, json=False, all=False, connect_timeout=None)
    assert status.cmd_status(args) == 0 and shown == [0, 1, 2]
    out = capsys.readouterr().out
    assert out.count("hcbpg status lab, every 5s (Ctrl-C stops)") == 3 and "report 3" in out
    with pytest.raises(Exception, match="--watch needs a positive number"):
        status.cmd_status(argparse.Namespace(env="lab", watch=-1.0, count=None))


@pytest.mark.parametrize("option", [("--from", ""), ("--until", "  "), ("--only", ""), ("--only", "00,")])
def test_an_empty_step_option_is_refused_and_runs_nothing(home, env, option):
    """``--from ""`` once selected nothing and so ran every step; now it is refused before any run exists."""
    ran = home / "ran"
    write_notebook(home / "notebooks" / "00_marks.ipynb", "00_marks", f"open({str(ran)!r}, 'w').write('ran')")
    write_steps(home / "notebooks", [("00_marks.ipynb", "marks")])
    for command in ("run", "plan"):
        r = hcbpg(command, env, *option, "--json")
        assert r.returncode == 2, r.stdout + r.stderr
        assert json.loads(r.stdout)["exit_code"] == 2 and f"hcbpg: {option[0]} " in r.stderr, r.stderr
    assert not ran.exists() and not (home / "outputs").exists()
    if option[0] != "--only":  # a guided run takes --from and --until too
        g = hcbpg("guide", env, *option, timeout=60)
        assert g.returncode == 2 and f"hcbpg: {option[0]} is empty" in g.stderr, g.stdout + g.stderr


def test_an_unexpected_error_is_one_line_naming_a_private_log_with_the_traceback(home, env, monkeypatch, capsys):
    import hcbpg.cli as cli
    from hcbpg import secrets as hsecrets

    secret = hsecrets.register("s3cr3t-value-in-an-error-0123")

    def broken(args):  # noqa: ANN001, ANN202
        return {}["no such key " + secret]

    monkeypatch.setattr(cli, "cmd_runs", broken)
    assert cli.main(["runs", env]) == cli.EXIT_INTERNAL == 70
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert err.startswith("hcbpg: unexpected error (KeyError: ") and "this is a bug in hcbpg" in err
    log = Path(err.rstrip().rsplit(" ", 1)[-1])
    assert log.parent == Path(os.environ["HCBPG_STATE_DIR"]) / "logs" and log.stat().st_mode & 0o777 == 0o600
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text and "argv: ['runs', 'test']" in text
    assert secret not in text + err
    # --json: the error object on stdout, as the README promises, with the log's path
    assert cli.main(["runs", env, "--json"]) == 70
    out, err = capsys.readouterr()
    obj = json.loads(out)
    assert obj["exit_code"] == 70 and obj["error"].startswith("unexpected error (KeyError") and Path(obj["log"]).is_file()
    assert secret not in out
