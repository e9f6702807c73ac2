"""A guided run driven in a real JupyterLab by headless Chromium leaves a verified, secret-free record.

The operator's path end to end: `hcbpg guide` prepares the run and serves it, the browser
runs the notebook and answers its gate in place, JupyterLab is shut down (which finishes
the run), `hcbpg audit verify` passes, the executed notebook holds what the browser showed,
and `hcbpg resume` finishes the remaining step headless.  The screenshot in the README
(docs/guided-run.png) is of a real runbook step: the lab variant takes it (00 preflight,
guided against the rehearsal lab, at its checks table); ``HCBPG_UPDATE_DOCS=1 python -m pytest
tests/test_guide_browser.py -k against_the_lab`` rewrites it.  The lab variant needs the machine's
lab lock: ``flock /tmp/hcbpg-lab.lock python -m pytest tests/test_guide_browser.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbutil import REPO, default_lab_lock, hcbpg, make_params, run_as_operator, write_notebook, write_steps

CHROMIUM = Path("/usr/bin/chromium")
#: the README's screenshot; rewritten only when asked (HCBPG_UPDATE_DOCS=1), so a test run leaves the tree clean
SCREENSHOT = REPO / "docs" / "guided-run.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]

pytestmark = pytest.mark.timeout(240)

GUIDED_STEP = '''import hashlib
pw = rb.secret("postgres.app_role_password")
print("app password in use:", pw)
print("fingerprint", hashlib.sha256(pw.encode()).hexdigest()[:12])
print("BROWSER-MARK", 6 * 7)'''
GATE = '''rb.gate("maintenance-on", "Maintenance mode is on in Hatchbox and Sidekiq is stopped")
print("past the gate")'''


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variants(value: str) -> list[bytes]:
    forms = {value, urllib.parse.quote(value, safe=""), json.dumps(value)[1:-1]}
    return [f.encode() for f in forms]


class _Lines:
    """Collects a child's stdout lines in a thread, so the test can wait for one with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, deadline_s: float, proc: subprocess.Popen[str]) -> re.Match[str]:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if proc.poll() is not None and not self._t.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {deadline_s}s:\n" + "".join(self.lines))

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def guided_env(home, monkeypatch, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("needs the Debian chromium package at /usr/bin/chromium")
    pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    app_pw = "guide-app-" + secrets.token_hex(10)
    token = "guide-tok-" + secrets.token_hex(10)
    monkeypatch.setenv("HCBPG_TEST_APP_PW", app_pw)
    monkeypatch.setenv("HCBPG_TEST_TOKEN", token)
    # Jupyter's own runtime and UI settings for this test only (a clean, reproducible screenshot)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "jupyterlab-settings"))
    (home / "params" / "test.yaml").write_text(make_params("test"))
    nb = home / "notebooks"
    write_notebook(nb / "00_guided.ipynb", "00_guided", GUIDED_STEP, GATE, title="A guided step")
    write_notebook(nb / "01_after.ipynb", "01_after", "print('after ran headless')", title="The next step")
    write_steps(nb, [("00_guided.ipynb", "guided step"), ("01_after.ipynb", "after")])
    return {"env": "test", "secrets": [app_pw, token]}


def _wait_for_kernel(page, url: str, notebook: str, deadline_s: float = 90) -> None:  # noqa: ANN001
    """Until the server reports an idle kernel for *notebook*; accept the "Select Kernel" dialog
    JupyterLab shows when the notebook opened before the kernel specs had loaded (a slow machine)."""
    base, token = url.split("/lab/", 1)[0], url.rsplit("token=", 1)[1]
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog")
        if dialog.count() and "Select Kernel" in dialog.first.inner_text():
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
        req = urllib.request.Request(f"{base}/api/sessions", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            sessions = json.load(resp)
        if any(s["path"].endswith(notebook) and (s.get("kernel") or {}).get("execution_state") == "idle"
               for s in sessions):
            return
        time.sleep(0.3)
    raise AssertionError(f"no idle kernel for {notebook} within {deadline_s}s")


def _drive_jupyterlab(url: str, run_dir: Path, notebook: str, *, gate: str | None, saved: list[str],
                      screenshot: Path, scroll_to: str | None = None, heading: str | None = None,
                      mid_run: Callable[[], None] | None = None,
                      allow_failure: bool = False, shut_down: bool = False) -> dict[str, Any]:
    """Open *notebook* in JupyterLab, Run All Cells, answer *gate* in place, wait for
    ``rb.finish()`` (or, with *allow_failure*, a traceback), save, screenshot.  Returns timings
    and ``outcome`` ("succeeded" or "failed").  *saved*: texts the file must then hold."""
    from playwright.sync_api import sync_playwright

    step = Path(notebook).stem
    t: dict[str, Any] = {}
    t0 = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.set_default_timeout(90_000)
            page.goto(url)
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
            _wait_for_kernel(page, url, notebook)
            t["lab_open_s"] = time.monotonic() - t0
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first.click()
            if gate:
                stdin = page.locator(".jp-Stdin-input")
                stdin.wait_for()
                if mid_run:
                    mid_run()
                stdin.fill(gate)
                stdin.press("Enter")
            done = f"{step}: nothing to change"
            ends = re.compile(re.escape(done) + r"|Traceback \(most recent call last\)")
            page.locator(".jp-OutputArea-output", has_text=ends).first.wait_for()
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']")
            t["cells_s"] = time.monotonic() - t0 - t["lab_open_s"]
            if page.locator(".jp-OutputArea-output", has_text=done).count():
                t["outcome"] = "succeeded"
            elif allow_failure:
                t["outcome"] = "failed"
                t["failure"] = page.locator(".jp-OutputArea-output", has_text="Traceback").first.inner_text()
                saved = ['"output_type": "error"']
            else:
                raise AssertionError("a cell failed in JupyterLab")
            # the keys go to the notebook: the gate's input box, where focus was, is gone once answered (a step
            # that ends quickly is idle before JupyterLab has moved focus back, and Ctrl-S then saved nothing)
            page.locator(".jp-NotebookPanel .jp-Cell .jp-InputPrompt").last.click()
            page.keyboard.press("Control+s")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                text = (run_dir / notebook).read_text()
                if all(x in text for x in saved):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(f"JupyterLab did not save the executed notebook with {saved}")
            if scroll_to:
                page.locator(".jp-OutputArea-output", has_text=scroll_to).first.scroll_into_view_if_needed()
            if heading:  # that section at the top of the view, the file browser folded away: the step itself
                page.keyboard.press("Control+b")
                page.locator(".jp-RenderedMarkdown h2", has_text=heading).first.evaluate(
                    "e => e.scrollIntoView({block: 'start'})")
                page.wait_for_timeout(500)
            screenshot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(screenshot))
            if shut_down:  # File > Shut Down, as an operator ends the session
                page.get_by_role("menuitem", name="File", exact=True).click()
                page.locator(".lm-Menu-itemLabel:visible", has_text=re.compile(r"^Shut Down$")).click()
                page.locator(".jp-Dialog .jp-mod-accept").click()
                page.get_by_text("Server stopped").first.wait_for()
        except Exception:
            page.screenshot(path="/tmp/hcbpg-guide-failure.png")  # for whoever reads the failure
            logs = list(Path(os.environ["HCBPG_STATE_DIR"]).glob("guide/*/jupyter.log"))
            print("JupyterLab page at the failure:\n" + page.inner_text("body")[-3000:]
                  + "\n--- jupyter.log ---\n" + "".join(f.read_text()[-4000:] for f in logs))
            raise
        finally:
            browser.close()
    t["browser_total_s"] = time.monotonic() - t0
    return t


class _Guide:
    """`hcbpg guide ARGS` as a child process: its URL, run directory and output."""

    def __init__(self, *args: str) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "hcbpg.cli", "guide", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.out = _Lines(self.proc)

    def wait_ready(self, notebook: str) -> tuple[str, Path]:
        url = self.out.wait_for(rf"open: (http://127\.0\.0\.1:\d+/lab/tree/{re.escape(notebook)}\?token=\w+)",
                                150, self.proc).group(1)
        self.ready_s = time.monotonic() - self.t0
        run_dir = Path(self.out.wait_for(r"record: (\S+)", 5, self.proc).group(1))
        return url, run_dir

    def stop(self, *, wait_s: float = 0) -> int:
        """Wait *wait_s* for the guide to end by itself, then Ctrl-C: it stops JupyterLab and finishes the run."""
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=90)
        self.session_s = time.monotonic() - self.t0
        return rc


def _assert_no_secret(run_dir: Path, planted: list[str]) -> None:
    for f in run_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            for v in planted:
                for form in _variants(v):
                    assert form not in data, f"secret leaked into {f}"


def test_guided_run_in_jupyterlab_is_recorded_verified_and_resumable(home, guided_env, capsys, tmp_path):
    env = guided_env["env"]
    committed = {p.name: _sha(p) for p in sorted((home / "notebooks").iterdir())}
    repo_notebooks = {p.name: _sha(p) for p in sorted((REPO / "notebooks").glob("*.ipynb"))}
    shot = tmp_path / "guided-run.png"
    guide = _Guide(env)
    shut_down_in_lab = False
    try:
        url, run_dir = guide.wait_ready("00_guided.ipynb")
        jupyter_token = url.rsplit("token=", 1)[1]
        m = json.loads((run_dir / "manifest.json").read_text())
        assert m["mode"] == "guided" and m["status"] == "running"
        assert [s["status"] for s in m["steps"]] == ["pending", "pending"]
        # the parameterized copies exist before anything ran; papermill got only non-secret parameters
        prepared = json.loads((run_dir / "01_after.ipynb").read_text())
        assert set(prepared["metadata"]["papermill"]["parameters"]) == {"env", "run_id", "run_dir", "dry_run"}

        def mid_run() -> None:  # waiting at the gate: `hcbpg runs` shows the step running
            r = hcbpg("runs", env)
            assert "guided" in r.stdout and "running" in r.stdout and "00_guided" in r.stdout, r.stdout

        timings = _drive_jupyterlab(url, run_dir, "00_guided.ipynb", gate="maintenance-on",
                                    saved=["BROWSER-MARK 42", "nothing to change"], screenshot=shot,
                                    scroll_to="past the gate", mid_run=mid_run, shut_down=True)
        shut_down_in_lab = True
    finally:
        rc = guide.stop(wait_s=60 if shut_down_in_lab else 0)
    assert rc == 0, guide.out.text
    assert "stopping JupyterLab" not in guide.out.text, "File > Shut Down did not end the session"
    assert "finished: interrupted" in guide.out.text, guide.out.text     # 01 was not run in the browser
    run_id = m["run_id"]

    r = hcbpg("guide", "finish", run_id)                        # idempotent once the session finished it
    assert r.returncode == 0 and "already finished" in r.stdout, r.stdout + r.stderr
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 0, r.stdout + r.stderr

    m = json.loads((run_dir / "manifest.json").read_text())
    s0, s1 = m["steps"]
    assert s0["status"] == "succeeded" and s1["status"] == "pending"
    (att,) = s0["attempts"]
    assert att["via"] == "notebook" and att["operator"] == "test-operator" and att["status"] == "succeeded"
    assert att["sha256"] == _sha(run_dir / "00_guided.ipynb") == s0["sha256"]
    gate = m["gates"]["maintenance-on"]
    assert gate["via"] == "notebook" and gate["approved_by"] == "test-operator" and gate["approved_at"]
    # the executed notebook holds what the browser produced, with the secret scrubbed by the kernel
    executed = json.loads((run_dir / "00_guided.ipynb").read_text())
    outputs = json.dumps([c.get("outputs", []) for c in executed["cells"] if c["cell_type"] == "code"])
    for expected in ("BROWSER-MARK 42", "past the gate", "app password in use: [secret]",
                     "00_guided: nothing to change"):
        assert expected in outputs, expected
    assert not list(run_dir.rglob(".ipynb_checkpoints")) and not list(run_dir.rglob(".virtual_documents"))
    state = Path(os.environ["HCBPG_STATE_DIR"])
    assert not (state / "scrub" / f"{run_dir.name}.jsonl").exists()   # the registry is gone: run closed

    # the rest of the guided run, headless
    t1 = time.monotonic()
    r = hcbpg("resume", run_id)
    t_resume = time.monotonic() - t1
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["status"] == "succeeded" and [s["status"] for s in m["steps"]] == ["succeeded", "succeeded"]
    assert len(m["steps"][0]["attempts"]) == 1                           # the guided step is not repeated
    assert "after ran headless" in (run_dir / "01_after.ipynb").read_text()
    r = hcbpg("audit", "verify", env)
    assert r.returncode == 0, r.stdout + r.stderr

    # no secret (nor the Jupyter token) in any byte of the run; committed notebooks untouched
    _assert_no_secret(run_dir, guided_env["secrets"] + [jupyter_token])
    assert {p.name: _sha(p) for p in sorted((home / "notebooks").iterdir())} == committed
    assert {p.name: _sha(p) for p in sorted((REPO / "notebooks").glob("*.ipynb"))} == repo_notebooks
    assert shot.is_file() and shot.stat().st_mtime > time.time() - 300
    with capsys.disabled():
        print(f"\n  guide timings: server ready {guide.ready_s:.1f}s, lab open {timings['lab_open_s']:.1f}s, "
              f"cells {timings['cells_s']:.1f}s, browser {timings['browser_total_s']:.1f}s, "
              f"session {guide.session_s:.1f}s, headless resume {t_resume:.1f}s")


# -- against the rehearsal lab ------------------------------------------------------------

@pytest.fixture
def lab_lock():
    """The machine's lab lock (the default lab is shared): see nbutil.default_lab_lock."""
    with default_lab_lock():
        yield


@pytest.mark.lab
@pytest.mark.default_lab  # one unit with test_rehearse (tests/conftest.py): they never wait for each other's lock
@pytest.mark.timeout(1500)
def test_guided_preflight_against_the_lab(home, monkeypatch, tmp_path, lab_lock, capsys):
    """`hcbpg guide lab --until 00` with the real preflight notebook against the rehearsal lab."""
    if not CHROMIUM.exists():
        pytest.skip("needs the Debian chromium package at /usr/bin/chromium")
    pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    from hcbpg.lab import Lab, lab_unavailable_reason
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(f"the lab needs root and network namespaces: {reason}")
    lab = Lab()                                   # the default lab: what params/lab.yaml points at
    was_up = lab.status()["up"]
    t0 = time.monotonic()
    lab.up()
    t_lab = time.monotonic() - t0
    monkeypatch.setenv("HCBPG_NOTEBOOKS", str(REPO / "notebooks"))   # the real, committed runbook
    monkeypatch.delenv("HCBPG_SIGNING_KEY", raising=False)  # the lab's key signs: it is the lab's allowed signer
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("JUPYTERLAB_SETTINGS_DIR", str(tmp_path / "jupyterlab-settings"))
    (home / "params" / "lab.yaml").write_text((REPO / "params" / "lab.yaml").read_text())
    committed = {p.name: _sha(p) for p in sorted((REPO / "notebooks").iterdir()) if p.is_file()}
    planted = []
    for f in lab.cfg.secrets_dir.iterdir():
        for line in f.read_text().splitlines():
            value = line.split("=", 1)[1] if f.name.endswith(".env") and "=" in line else line
            if len(value.strip()) >= 8 and not line.startswith("#"):
                planted.append(value.strip())
    # the README's screenshot: a real step (00 preflight, its checks table) of a guided run
    shot = SCREENSHOT if os.environ.get("HCBPG_UPDATE_DOCS") == "1" else tmp_path / "guided-preflight.png"
    try:
        guide = _Guide("lab", "--until", "00")
        try:
            url, run_dir = guide.wait_ready("00_preflight.ipynb")
            timings = _drive_jupyterlab(url, run_dir, "00_preflight.ipynb", gate=None,
                                        saved=["00_preflight: nothing to change"],
                                        screenshot=shot, heading="Checks", allow_failure=True)
        finally:
            rc = guide.stop()
    finally:
        if not was_up:
            lab.down()
    # whether the lab passes its preflight is the lab's business; the record must match what the browser saw
    outcome = timings["outcome"]
    assert f"finished: {outcome}" in guide.out.text, guide.out.text
    assert rc == (0 if outcome == "succeeded" else 1), guide.out.text
    r = hcbpg("audit", "verify", "lab")
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["mode"] == "guided" and m["status"] == outcome
    (step,) = m["steps"]
    (att,) = step["attempts"]
    assert step["key"] == "00_preflight" and att["via"] == "notebook" and att["status"] == outcome
    assert step["sha256"] == _sha(run_dir / "00_preflight.ipynb")
    executed = (run_dir / "00_preflight.ipynb").read_text()
    assert "secret postgres.app_role_password" in executed          # the checks table the browser showed
    if outcome == "failed":
        assert att["error"]["ename"] in timings["failure"] and f'"ename": "{att["error"]["ename"]}"' in executed
    _assert_no_secret(run_dir, planted + [url.rsplit("token=", 1)[1]])
    assert shot.is_file() and shot.stat().st_mtime > time.time() - 600
    assert {p.name: _sha(p) for p in sorted((REPO / "notebooks").iterdir()) if p.is_file()} == committed
    with capsys.disabled():
        print(f"\n  guide lab: preflight {outcome}"
              + (f" ({att['error']['evalue'][:160]})" if outcome == "failed" else "")
              + f"; lab up {t_lab:.1f}s, server ready {guide.ready_s:.1f}s, "
              f"browser {timings['browser_total_s']:.1f}s, session {guide.session_s:.1f}s")


# -- the kernel's side of the record, without a browser ---------------------------------------

def test_guided_kernel_records_a_failed_cell_and_a_closed_run_takes_nothing_more(home, monkeypatch):
    from hcbpg.engine import guide
    app_pw = "guide-app-" + secrets.token_hex(10)
    monkeypatch.setenv("HCBPG_TEST_APP_PW", app_pw)
    monkeypatch.setenv("HCBPG_TEST_TOKEN", "guide-tok-" + secrets.token_hex(10))
    monkeypatch.setenv("HCBPG_SCRUB_FILE", "")          # prepare() points it at the run's registry
    (home / "params" / "test.yaml").write_text(make_params("test"))
    nb = home / "notebooks"
    write_notebook(nb / "00_fails.ipynb", "00_fails",
                   "print('before the failure')",
                   "pw = rb.secret('postgres.app_role_password')\n"
                   "raise RuntimeError(f'cannot connect as rails:{pw}@10.0.1.5')")
    write_steps(nb, [("00_fails.ipynb", "fails")])
    g = guide.prepare("test")
    run = g.run
    with run.update() as data:                           # what `serve` records once JupyterLab is up
        data.status = "running"
        data.runner = {"pid": os.getpid(), "machine": os.uname().nodename, "kind": "guide", "jupyter_pid": None}
    outputs = run_as_operator(run.path / "00_fails.ipynb")
    assert "before the failure" in outputs and "RuntimeError" in outputs and app_pw not in outputs
    # rb.finish() after a failed cell (allow_errors ran it anyway) refuses to call the step done
    assert "00_fails is not finished: 1 cell(s) failed" in outputs, outputs
    m = json.loads(run.manifest_path.read_text())
    (att,) = m["steps"][0]["attempts"]
    assert m["steps"][0]["status"] == "failed" and att["status"] == "failed"   # visible while it happens
    assert att["error"]["ename"] == "RuntimeError" and "[secret]" in att["error"]["evalue"]
    assert app_pw not in run.manifest_path.read_text()

    assert guide.finish(run.run_id, progress=lambda line: None) == 1
    m = json.loads(run.manifest_path.read_text())
    assert m["status"] == "failed" and m["steps"][0]["sha256"] == _sha(run.path / "00_fails.ipynb")
    assert hcbpg("audit", "verify", "test").returncode == 0
    assert not Path(os.environ["HCBPG_SCRUB_FILE"]).exists()

    # a closed run takes nothing more: starting the step again in a kernel is refused, the record unchanged
    before = _sha(run.manifest_path)
    outputs = run_as_operator(run.path / "00_fails.ipynb")
    assert "is closed" in outputs, outputs
    assert _sha(run.manifest_path) == before
    _assert_no_secret(run.path, [app_pw])
