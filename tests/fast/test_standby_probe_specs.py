"""hcbpg.ops.pgbackrest.get_standby_answers on a recording double: the peer's TLS server port is tried first (a TCP
connect, 5 s at most) and server-ping runs only when it accepts, so a TLS server not started yet (steps 05/08, a
failover's new primary with the other gone) costs no pgBackRest connect retries (2.45: 10 s a probe)."""

from __future__ import annotations

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.recording import Call, RecordingHost
from hcbpg.ops import pgbackrest as ops_pgb
from hcbpg.ops import tls
from tests.fast.test_pgbackrest_server_specs import SECRETS, make_params


@pytest.fixture
def params(tmp_path, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HCBPG_STATE_DIR", str(tmp_path / "state"))
    tls._CA_CACHE.clear()
    yield make_params(tmp_path)
    tls._CA_CACHE.clear()


def _host(exit_code: int) -> RecordingHost:
    def answer(call: Call) -> Result | str | None:
        return Result("server-postgres-1", call.command, exit_code, "", "", 0.0) if exit_code else ""
    return RecordingHost("server-postgres-1", handler=answer, files={})


@pytest.mark.parametrize("exit_code, answers", [(0, True), (1, False), (124, False)])
def test_the_port_first_then_server_ping_as_postgres(params, exit_code, answers):
    host = _host(exit_code)
    assert ops_pgb.get_standby_answers(host, params, params.server("server-postgres-1")) is answers
    [call] = [c for c in host.calls if c.kind == "probe"]
    connect, _, ping = call.command.partition(" && ")
    assert connect.startswith("timeout 5 bash -c ") and "</dev/tcp/10.0.1.6/8432" in connect, call.command
    assert ping.startswith("timeout 20 pgbackrest server-ping --io-timeout=5 --tls-server-address=10.0.1.6 "
                           "--tls-server-port=8432"), call.command
    assert call.sudo_user == "postgres" and host.journal == []  # a probe: nothing changed


def test_backup_standby_off_probes_nothing(params, tmp_path):
    host = _host(0)
    off = make_params(tmp_path, backup_standby=False)
    assert ops_pgb.get_standby_answers(host, off, off.primary) is False and host.calls == []
