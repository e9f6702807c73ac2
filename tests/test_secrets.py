"""No secret in any output: plant unique values, use them every way a notebook can, scan every byte."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest

from hcbpg.errors import SecretError
from hcbpg.secrets import Scrubber, resolve

from nbutil import hcbpg, make_params, secret_forms, write_notebook, write_steps

pytestmark = pytest.mark.timeout(300)

USE_SECRETS = '''
import hashlib, logging, sys
app_pw = rb.secret("postgres.app_role_password")
token = rb.secret("hetzner.token")
for name, v in (("app", app_pw), ("token", token)):
    print("used", name, hashlib.sha256(v.encode()).hexdigest())
print("plain:", app_pw, token)
print("to stderr:", app_pw, file=sys.stderr)
logging.getLogger("notebook").warning("logged %s", token)
from IPython.display import HTML, display
display(HTML(f"<b>{app_pw}</b> in a url postgres://rails:{app_pw}@10.0.1.5/hcb_production"))
display({"token": token})
rb.record("leak_attempt", {"url": f"postgres://rails:{app_pw}@x/db"})
import base64, html, os, re, stat, urllib.parse
print("html:", html.escape(app_pw), html.escape(token, quote=False))
for pad in ("", "u", "us"):      # base64 of the secret at each of the three alignments, inside other bytes
    print("basic:", base64.b64encode(f"{pad}rails:{app_pw}@host".encode()).decode(),
          base64.urlsafe_b64encode(f"{pad}{token}!".encode()).decode())
print("lowercase %xx:", re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(app_pw, safe="")))
display(HTML("<pre>" + html.escape(app_pw) + "</pre>"))
reg = os.environ["HCBPG_SCRUB_FILE"]
print("registry mode", oct(stat.S_IMODE(os.stat(reg).st_mode)), "outside outputs:", "/outputs/" not in reg)
'''
RAISE = 'raise RuntimeError(f"connection failed for postgres://rails:{app_pw}@10.0.1.5 token={token}")'


def variants(v: str) -> list[bytes]:
    """Every form a scan looks for (URL, JSON and HTML escapes, base64 at each alignment: nbutil.secret_forms)."""
    return secret_forms(v)


def scan(root: Path, values: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for v in values:
                for form in variants(v):
                    if form in data:
                        hits.append(f"{p}: {form[:4]!r}…")
    return hits


def test_planted_secrets_never_reach_outputs(home, monkeypatch, tmp_path):
    app_pw = "pw-" + secrets.token_hex(12) + "/+&'\"x"      # characters that URL- and JSON-encode
    token = "tok-" + secrets.token_hex(16)
    monkeypatch.setenv("HCBPG_TEST_APP_PW", app_pw)
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    (home / "params" / "test.yaml").write_text(make_params("test", token_ref=f"file:{token_file}"))
    nb = home / "notebooks"
    write_notebook(nb / "00_use.ipynb", "00_use", USE_SECRETS)
    write_notebook(nb / "01_raise.ipynb", "01_raise", USE_SECRETS, RAISE)
    write_steps(nb, [("00_use.ipynb", "use"), ("01_raise.ipynb", "raise")])
    r = hcbpg("run", "test", "--verbose")
    assert r.returncode == 1, r.stdout + r.stderr          # step 01 raised, as planned
    assert "connection failed for postgres://rails:" in r.stdout
    run = next((home / "outputs" / "test").glob("*_*"))
    # the values were really resolved and used: their hashes are in the record
    text = (run / "00_use.ipynb").read_text()
    for v in (app_pw, token):
        assert hashlib.sha256(v.encode()).hexdigest() in text
    assert "[secret]" in text
    m = json.loads((run / "manifest.json").read_text())
    assert hcbpg("audit", "html", m["run_id"]).returncode == 0
    assert (run / "html" / "01_raise.html").is_file()
    hits = scan(home / "outputs", [app_pw, token])
    assert hits == []
    assert scan_text(r.stdout + r.stderr, [app_pw, token]) == []
    # the scrub registry lived outside outputs/, private, and went when the run stopped (here: failed)
    assert "registry mode 0o600 outside outputs: True" in text
    assert not list((tmp_path / "state" / "scrub").glob("*.jsonl"))


def scan_text(text: str, values: list[str]) -> list[str]:
    return [v[:4] for v in values for f in variants(v) if f.decode() in text]


def test_missing_secret_is_a_clear_error_naming_the_key(monkeypatch):
    monkeypatch.delenv("NOPE_NOT_SET", raising=False)
    with pytest.raises(SecretError) as ei:
        resolve("env:NOPE_NOT_SET", key="postgres.app_role_password")
    assert "postgres.app_role_password" in str(ei.value) and "NOPE_NOT_SET" in str(ei.value)
    with pytest.raises(SecretError, match="does not exist"):
        resolve("file:/nonexistent/secret", key="pgbackrest.cipher_pass")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SecretError, match="1Password CLI"):
        resolve("op://HCB Engineering/x/password", key="hetzner.token")


def test_scrubber_catches_encoded_forms():
    s = Scrubber()
    s.add("p@ss w/rd'1234")
    text = "a p@ss w/rd'1234 b p%40ss%20w%2Frd%271234 c p@ss+w/rd''1234"
    out = s.scrub(text)
    assert "rd'1234" not in out and "%2Frd" not in out and out.count("[secret]") >= 2


def test_preflight_passes_role_passwords_step_13_generates_with_a_note_and_fails_on_the_rest(home, monkeypatch,
                                                                                             tmp_path):
    """A first run: the login roles' password files do not exist yet (step 13 makes them), the expected
    state: preflight passes them with a note that says so; an empty one, or a missing app password, fails."""
    from hcbpg.engine import runbook
    monkeypatch.setenv("HCBPG_TEST_APP_PW", "app-password-0123456789")
    monkeypatch.setenv("HCBPG_TEST_TOKEN", "hcloud-token-0123456789")
    (tmp_path / "empty-password").write_text("")
    (home / "params" / "test.yaml").write_text(make_params("test") + f"""roles:
  migrations: {{name: hcb_migrations, password: "file:{tmp_path}/not-yet"}}
  monitoring: {{name: vector, password: "file:{tmp_path}/empty-password"}}
""")
    rb = runbook.start("test", step="00_preflight", run_id="", run_dir="", dry_run=True)
    rows = {c.name: c for c in rb.check_secrets()}
    assert rows["secret roles.migrations.password"].status == "pass"
    assert "expected: " in rows["secret roles.migrations.password"].detail
    assert "step 13 generates" in rows["secret roles.migrations.password"].detail
    assert rows["secret roles.monitoring.password"].status == "fail"
    assert rows["secret postgres.app_role_password"].status == "pass"
    monkeypatch.delenv("HCBPG_TEST_APP_PW")
    rows = {c.name: c for c in rb.check_secrets()}
    assert rows["secret postgres.app_role_password"].status == "fail"
