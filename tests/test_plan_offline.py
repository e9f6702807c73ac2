"""`hcbpg plan production` on a machine without the 1Password CLI, the Heroku CLI and a route to the servers names
only what is missing there: each secret reference it could not resolve, each host it could not reach, the Heroku
CLI, and each placeholder the committed params still hold (refused outside the lab).

The plan runs in an empty network namespace (``unshare --net``: not even loopback is up), so nothing it tries
can leave this machine: the test never sends traffic to the production addresses or to Hetzner.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from hcbpg.params import load_params

from nbutil import REPO


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


def _rows(notebook) -> list[tuple[str, str, str, str]]:
    """(check, target, status, detail) of every table the executed notebook showed."""
    nb = json.loads(notebook.read_text())
    rows = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            markup = "".join(out.get("data", {}).get("text/html", ""))
            for tr in re.findall(r"<tr>(.*?)</tr>", markup, flags=re.S):
                cells = [html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, flags=re.S)]
                if len(cells) == 4:
                    rows.append(tuple(cells))
    return rows


def _plan_production_offline(tmp_path, *, anchor: str | None = None,
                             extra: Sequence[str] = ()) -> tuple[subprocess.CompletedProcess, Path]:
    """``hcbpg plan production`` in an empty network namespace, no 1Password CLI, a fresh record;
    *anchor* overrides the committed ``audit.anchor``. Returns the process and the home."""
    home, user = tmp_path / "home", tmp_path / "user"
    (home / "params").mkdir(parents=True)
    shutil.copy(REPO / "params" / "production.yaml", home / "params")
    if anchor is not None:
        f = home / "params" / "production.yaml"
        text = f.read_text()
        assert "audit: {anchor: bucket}" in text
        f.write_text(text.replace("audit: {anchor: bucket}", f"audit: {{anchor: {anchor}}}"))
    (user / ".ssh").mkdir(parents=True, mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user / ".ssh" / "id_ed25519")],
                   check=True)
    # the operator signs the record (issue 13): their key is an allowed signer of the environment
    pub = (user / ".ssh" / "id_ed25519.pub").read_text().split()
    (home / "params" / "production.allowed_signers").write_text(
        f'operator namespaces="hcbpg-audit,hcbpg-approval" {pub[0]} {pub[1]}\n')
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if not (p and os.path.exists(os.path.join(p, "op"))))  # no 1Password CLI
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OP_", "HCBPG_"))}
    env.update(HOME=str(user), HCBPG_HOME=str(home), PATH=path, PYTHONPATH=str(REPO),
               HCBPG_SIGNING_KEY=str(user / ".ssh" / "id_ed25519"))
    proc = subprocess.run(["unshare", "--net", "--", sys.executable, "-m", "hcbpg.cli", "plan", "production", *extra],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    return proc, home


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare --net (an empty network namespace)")
def test_plan_production_offline_refuses_when_the_bucket_anchor_cannot_be_read(tmp_path):
    """With the committed params (audit.anchor: bucket) the record cannot be checked against the
    bucket without its key: nothing starts, and the one line says which secret and why."""
    proc, home = _plan_production_offline(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]  # 1: the audit trail failed (README, exit codes)
    assert "no run of production was started" in out and "audit anchor" in out, out[-3000:]
    assert "pgbackrest.s3_key" in out and "1Password CLI" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not list((home / "outputs").glob("production/*")), "nothing recorded"


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare --net (an empty network namespace)")
def test_plan_production_offline_names_only_unresolvable_secrets_and_unreachable_hosts(tmp_path):
    proc, home = _plan_production_offline(tmp_path, anchor="none")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "00_preflight failed" in out, out[-3000:]
    (notebook,) = (home / "outputs" / "production").glob("*/00_preflight.ipynb")
    rows = _rows(notebook)
    failed = [r for r in rows if r[2] == "fail"]
    assert failed, rows
    params = load_params("production", REPO)
    op_refs = {k for k, v in params.secret_refs().items() if v.startswith("op://")}
    secret_rows = {r[0].removeprefix("secret ") for r in failed if r[0].startswith("secret ")}
    assert secret_rows == op_refs, (secret_rows ^ op_refs)
    placeholders = {f"placeholder {k}" for k in params.placeholders()}
    assert placeholders == {"placeholder pgbackrest.deadman_url", "placeholder hetzner.admin_source_ranges[0]",
                            "placeholder alerting.receivers.slack.webhook_url", "placeholder alerting.heartbeat_url"}
    for name, target, _status, detail in failed:
        if name.startswith("secret "):
            assert "1Password CLI" in detail, (name, detail)
        elif name == "Hetzner Cloud API reachable":
            assert "hetzner.token cannot be resolved" in detail, detail
        elif name == "reachable over SSH":
            assert "cannot reach" in detail, (target, detail)
        elif name in placeholders:  # production refuses them: each says what to put there
            assert "is still the placeholder" in detail and "set it in production.yaml to" in detail, detail
        elif name == "heroku CLI logged in":  # source.method: heroku, and no heroku here (or no network for it)
            assert "heroku" in detail and "heroku login" in detail, detail
        else:
            raise AssertionError(f"a problem of another kind: {name} on {target}: {detail}")
    assert any(r[0] == "reachable over SSH" and r[1] == params.app_host.name for r in failed)
    assert placeholders <= {r[0] for r in failed}, "preflight refuses each placeholder outside the lab"
    assert any(r[0] == "heroku CLI logged in" for r in failed)


@pytest.mark.skipif(not _unshare_works(), reason="needs root and unshare --net (an empty network namespace)")
def test_a_failed_preflight_prints_every_failed_check_with_its_whole_reason_above_the_recap_and_in_json(tmp_path):
    """Every reason the notebook shows reaches the terminal whole (wrapped, never cut), above the recap, each
    reason once however many checks share it; ``--json`` carries each failed check with its reason."""
    proc, home = _plan_production_offline(tmp_path, anchor="none")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    (notebook,) = (home / "outputs" / "production").glob("*/00_preflight.ipynb")
    failed = [r for r in _rows(notebook) if r[2] == "fail"]
    # every secret reference, the Hetzner API, each host over SSH, the Heroku CLI, each placeholder
    assert len(failed) >= 17, failed
    text = " ".join(out.split())  # wrapping only changes the spaces
    report = out[:out.index("Recap:")]
    assert "Step 00_preflight failed: " in report and f"{len(failed)} of " in report, report
    for name, target, _status, detail in failed:
        assert " ".join(detail.split()) in " ".join(report.split()), (name, target, detail)
        assert f"{name} on {target}" in text if target else name in text, (name, target)
    reasons = {" ".join(d.split()) for *_, d in failed}
    for reason in reasons:  # a reason shared by several checks is said once
        assert " ".join(report.split()).count(reason) == 1 or any(
            reason != r and reason in r for r in reasons), reason
    # the same as JSON: each failed check, with its reason
    shutil.rmtree(home / "outputs")
    proc2, home2 = _plan_production_offline(tmp_path / "json", anchor="none", extra=["--json"])
    data = json.loads(proc2.stdout)
    (pre,) = [s for s in data["steps"] if s["key"] == "00_preflight"]
    # a reason may name a file of the run's home (the jumpbox's known_hosts, where step 01 pins it): the two runs'
    # homes differ
    got = {(c["name"], c["target"], " ".join(c["detail"].replace(str(home2), "HOME").split()))
           for c in pre["checks"]["not_passed"] if c["status"] == "fail"}
    assert got == {(n, t, " ".join(d.replace(str(home), "HOME").split())) for n, t, _s, d in failed}, got
    assert "Step 00_preflight failed" in data["message"]
