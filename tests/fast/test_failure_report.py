"""Why a step failed, as the terminal shows it above the recap (engine/terminal.render_failure): pure."""

from __future__ import annotations

from hcbpg.engine.terminal import render_failure, render_recap

LONG = ("cannot reach host server-postgres-1 (root@10.0.1.5:22) over SSH: OSError: [Errno 113] No route to host; "
        "check the firewall and that the server runs: https://console.hetzner.cloud/projects/123456/servers/abcdef")


def _data(not_passed, *, passed=3):
    fails = sum(1 for c in not_passed if c["status"] == "fail")
    warns = sum(1 for c in not_passed if c["status"] == "warn")
    return {"steps": [{"key": "00_preflight", "status": "failed", "duration_s": 1.0,
                       "checks": {"pass": passed, "warn": warns, "fail": fails, "not_passed": not_passed}}]}


def test_each_failed_check_with_its_whole_reason_wrapped_and_no_word_cut():
    data = _data([{"name": "reachable over SSH", "target": "server-postgres-1", "status": "fail", "detail": LONG},
                  {"name": "backup age", "target": "server-postgres-1", "status": "warn", "detail": "27 h"}])
    lines = render_failure(data, "00_preflight", {"ename": "VerificationFailed", "evalue": "1 of 5 checks failed"},
                           width=60)
    assert lines[0] == "Step 00_preflight failed: 1 of 5 checks failed"
    assert lines[1] == "  ✗ reachable over SSH on server-postgres-1:"
    body = lines[2:]
    assert " ".join(x.strip() for x in body) == LONG  # whole, only the spaces changed
    assert all(len(x) <= 60 or " " not in x.strip() for x in body), body  # a long URL overflows, never cut
    assert not any("backup age" in x for x in lines)  # a warning is not why it failed


def test_one_reason_shared_by_several_checks_is_said_once_with_their_names():
    reason = "hetzner.token cannot be resolved (see its row above)"
    data = _data([{"name": n, "target": t, "status": "fail", "detail": reason}
                  for n, t in (("Hetzner Cloud API reachable", ""), ("server type exists", "cpx31"),
                               ("image exists", "ubuntu-24.04"))])
    lines = render_failure(data, "00_preflight", {"ename": "VerificationFailed", "evalue": "…"}, width=200)
    assert sum(reason in x for x in lines) == 1, lines
    assert lines[1] == ("  ✗ Hetzner Cloud API reachable, server type exists on cpx31, image exists on "
                        "ubuntu-24.04 (3 checks, one reason):")


def test_an_error_that_is_not_a_check_is_shown_whole_with_its_lines():
    evalue = "on server-postgres-1: pg_ctlcluster 15 main start failed (exit 1)\n" + "x" * 300 + "\nlast line"
    lines = render_failure(_data([]), "00_preflight", {"ename": "RemoteCommandError", "evalue": evalue}, width=80)
    assert lines[0] == "Step 00_preflight failed (RemoteCommandError):"
    assert lines[-1] == "    last line" and "    " + "x" * 300 in lines


def test_checks_failed_and_then_another_error():
    data = _data([{"name": "rows public.users", "target": "", "status": "fail", "detail": "9 != 10"}])
    lines = render_failure(data, "00_preflight", {"ename": "HostUnreachable", "evalue": "server-postgres-2: gone"})
    assert lines[-1] == "  and then HostUnreachable: server-postgres-2: gone"


def test_a_reason_holding_a_secret_is_scrubbed(monkeypatch):
    from hcbpg import secrets as hsecrets
    planted = hsecrets.register("s3cr3t-planted-" + "9" * 12)
    data = _data([{"name": "source reachable", "target": "", "status": "fail", "detail": f"password {planted} refused"}])
    lines = render_failure(data, "00_preflight", {"ename": "VerificationFailed", "evalue": planted})
    assert not any(planted in x for x in lines + render_recap(data)), lines
