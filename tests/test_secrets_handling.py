"""Secrets on the operator's machine: the scrubber's encodings, scrubbing before any cut, `op` without a
secret on its command line and with a deadline, names from the source with control characters."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import stat
import sys
import textwrap
import urllib.parse

import pytest

from hcbpg import secrets as hsecrets
from hcbpg.desired.migration import check_source_names
from hcbpg.errors import RemoteCommandError, SafetyCheckFailed, SecretError
from hcbpg.secrets import Scrubber

from nbutil import secret_forms


def lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


SECRET = "pw-3f9a/+&'\"<x>_Z0q"   # URL-, HTML- and JSON-special characters


@pytest.mark.parametrize("prefix", [b"", b"a", b"ab", b"abc", b"user:"])
@pytest.mark.parametrize("suffix", [b"", b"!", b"@host:5432/db"])
def test_base64_of_a_secret_inside_other_bytes_is_caught_at_every_alignment(prefix, suffix):
    s = Scrubber()
    s.add(SECRET)
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        blob = enc(prefix + SECRET.encode() + suffix).decode()
        out = s.scrub(f"Authorization: Basic {blob}")
        assert "[secret]" in out, (prefix, suffix, blob)
        # no run of characters that only the secret's bits make is left
        assert not [f for f in secret_forms(SECRET) if f.decode() in out], (prefix, suffix, out)


def test_html_escaped_and_lowercase_percent_encoded_forms_are_caught():
    s = Scrubber()
    s.add(SECRET)
    forms = [html.escape(SECRET), html.escape(SECRET, quote=False),
             html.escape(SECRET, quote=False).replace("'", "&#39;").replace('"', "&#34;"),
             lower_hex(urllib.parse.quote(SECRET, safe="")), urllib.parse.quote(SECRET, safe=""),
             urllib.parse.quote_plus(SECRET).replace("%2F", "%2f")]
    for form in forms:
        out = s.scrub(f"<td>{form}</td>")
        assert out == "<td>[secret]</td>", (form, out)


def test_the_suite_scans_look_for_every_encoding_the_scrubber_covers():
    """The scans in the tests are written apart from the scrubber; they must look for these forms too."""
    forms = set(secret_forms(SECRET))
    assert html.escape(SECRET).encode() in forms
    assert lower_hex(urllib.parse.quote(SECRET, safe="")).encode() in forms
    for pad in (b"", b"a", b"ab"):
        blob = base64.b64encode(pad + SECRET.encode() + b"tail")
        assert any(f in blob for f in forms), pad


def test_output_is_scrubbed_before_it_is_cut_to_its_tail(monkeypatch):
    monkeypatch.delenv(hsecrets.SCRUB_FILE_ENV, raising=False)
    value = "cut-" + "S" * 30 + "-secret"
    hsecrets.register(value)
    text = "x" * 100 + value + "y" * 5
    assert value[-12:] in text[-17:]                       # a plain cut keeps the secret's tail
    assert hsecrets.scrub_tail(text, 17) == "xxxx[secret]yyyyy"
    # RemoteCommandError keeps the tail of scrubbed output: the cut never lands inside a secret
    output = "a" * 10 + value + "\n" + "z" * 3990
    assert value[-9:] in output[-4000:]
    err = RemoteCommandError("server-postgres-1", "psql", 2, output)
    assert value[-9:] not in err.output_tail and err.output_tail.startswith("a[secret]\n")
    # the tail Host.run hands to RemoteCommandError is cut after scrubbing too
    from hcbpg.adapters.host import _TAIL_CHARS, _tail
    long = "b" * 10 + value + "\n" + "z" * (_TAIL_CHARS - 10)
    assert value[-9:] in long[-_TAIL_CHARS:]
    assert value[-9:] not in _tail(long) and "[secret]" in _tail(long)


FAKE_OP = textwrap.dedent('''\
    #!{python}
    """A recording stand-in for the 1Password CLI (not installable here): it writes what it was given."""
    import json, os, stat, sys, time
    log = os.environ["FAKE_OP_LOG"]
    args = sys.argv[1:]
    rec = {{"argv": args}}
    if args[:2] == ["item", "get"]:
        print(json.dumps({{"id": "abc", "title": args[2], "fields": [
            {{"id": "password", "label": "password", "type": "CONCEALED", "value": "old-value-123456"}},
            {{"id": "u", "label": "username", "type": "STRING", "value": "rails"}}]}}))
    elif args[:2] == ["item", "edit"]:
        path = next(a.split("=", 1)[1] for a in args if a.startswith("--template="))
        rec["template_mode"] = oct(stat.S_IMODE(os.stat(path).st_mode))
        rec["template"] = json.load(open(path))
    elif args[0] == "read" and os.environ.get("FAKE_OP_HANG"):
        time.sleep(30)
    with open(log, "a") as fh:
        fh.write(json.dumps(rec) + "\\n")
''')


@pytest.fixture
def fake_op(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    op = bindir / "op"
    op.write_text(FAKE_OP.format(python=sys.executable))
    op.chmod(0o755)
    log = tmp_path / "op.log"
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_OP_LOG", str(log))
    monkeypatch.delenv(hsecrets.SCRUB_FILE_ENV, raising=False)
    return log


def test_op_item_edit_gets_the_new_value_from_a_private_template_never_its_command_line(fake_op, tmp_path):
    new = "new-" + "Q" * 28
    hsecrets.store_secret("op://HCB Engineering/Postgres rails/password", new, key="postgres.app_role_password")
    get, edit = [json.loads(line) for line in fake_op.read_text().splitlines()]
    assert get["argv"][:3] == ["item", "get", "Postgres rails"] and "--vault=HCB Engineering" in get["argv"]
    assert not any(new in a for a in get["argv"] + edit["argv"])
    assert edit["template_mode"] == "0o600"
    fields = {f["label"]: f["value"] for f in edit["template"]["fields"]}
    assert fields == {"password": new, "username": "rails"}
    template = next(a.split("=", 1)[1] for a in edit["argv"] if a.startswith("--template="))
    assert not os.path.exists(template) and not os.path.exists(os.path.dirname(template))


def test_a_field_not_in_the_item_is_added_concealed():
    item = {"fields": [{"id": "x", "label": "other", "value": "1"},
                       {"id": "p2", "label": "password", "value": "o", "section": {"label": "prod"}}]}
    out = hsecrets.render_item_template(item, "prod/password", "new-value")
    assert [f["value"] for f in out["fields"]] == ["1", "new-value"] and item["fields"][1]["value"] == "o"
    out = hsecrets.render_item_template(item, "api key", "v")
    assert out["fields"][-1] == {"id": "api key", "label": "api key", "type": "CONCEALED", "value": "v"}


def test_every_op_call_has_a_deadline(fake_op, monkeypatch):
    monkeypatch.setenv("FAKE_OP_HANG", "1")
    monkeypatch.setattr(hsecrets, "OP_TIMEOUT_S", 1.0)
    with pytest.raises(SecretError, match=r"hetzner.token: `op read --no-newline` did not answer within 1s"):
        hsecrets.resolve("op://HCB Engineering/Hetzner Cloud API/credential", key="hetzner.token")


def test_source_names_with_control_characters_are_refused_by_name():
    check_source_names({"control_char_names": []})
    with pytest.raises(SafetyCheckFailed) as ei:
        check_source_names({"control_char_names": ['public."evil\nrm -rf /"', "public.ok"]})
    assert "2 name(s) with control characters" in str(ei.value)
    assert repr('public."evil\nrm -rf /"') in str(ei.value) and "RENAME" in str(ei.value)


def test_secret_files_are_written_0600(tmp_path):
    ref = f"file:{tmp_path}/sub/pw"
    hsecrets.store_secret(ref, "file-secret-0123456789")
    assert stat.S_IMODE(os.stat(tmp_path / "sub" / "pw").st_mode) == 0o600
