"""Specs of Patroni's watchdog on the recording double (hcbpg.ops.patroni.ensure_watchdog): what the kernel and
the device say in → the module loaded, its boot files, the device's owner, and the Outcome out."""

from __future__ import annotations

import pytest

from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import RecordingHost
from hcbpg.desired import patroni as dp
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import patroni as ops_patroni
from hcbpg.params import parse_params
from tests.fast.specs import covers
from tests.fast.test_ha_specs import ha_data

FILES = dp.render_watchdog_files()


def params_with(watchdog: str):
    data = ha_data()
    data["replication"]["patroni"]["watchdog"] = watchdog
    return parse_params(data)


class Kernel:
    """A server's kernel as the double answers it: softdog available or not, loaded or not, the device's owner."""

    def __init__(self, *, module: bool = True, loaded: bool = False, owner: str = "root 600") -> None:
        self.module, self.loaded, self.owner = module, loaded, owner
        self.host = RecordingHost("server-postgres-1", handler=self.answer, files={})

    def answer(self, call):  # noqa: ANN001, ANN201 - the double's handler
        cmd = call.command
        if cmd == f"test -c {dp.WATCHDOG_DEVICE}":
            return "" if self.loaded else _fail()
        if cmd == "modprobe -n -q softdog":
            return "" if self.module else _fail()
        if cmd == "modprobe softdog":
            self.loaded = True
            return ""
        if cmd.startswith("stat -c '%U %a' /dev/watchdog"):
            return self.owner + "\n"
        if cmd.startswith("chown postgres:postgres /dev/watchdog"):
            self.owner = "postgres 600"
            return ""
        if cmd.startswith("test -d "):
            return ""
        if cmd.startswith("stat -c '%U:%G %a' -- "):
            return "root:root 644\n"
        return None


def _fail():
    from hcbpg.adapters.base import Result
    return Result("server-postgres-1", "", 1, "", "", 0.0)


@covers("hcbpg.ops.patroni.ensure_watchdog", "fresh", "second run")
def test_softdog_loaded_kept_at_boot_and_given_to_postgres_once():
    k = Kernel()
    out = ops_patroni.ensure_watchdog(k.host, params_with("automatic"))
    assert k.host.journal == [f"write {dp.WATCHDOG_MODULES_LOAD}", f"write {dp.WATCHDOG_UDEV_RULE}",
                              "modprobe softdog (the kernel's software watchdog)",
                              "chown postgres:postgres /dev/watchdog && chmod 0600 /dev/watchdog"]
    assert out.changed and not out.dry_run and k.loaded and k.owner == "postgres 600"
    assert k.host.files == FILES
    assert 'OWNER="postgres"' in FILES[dp.WATCHDOG_UDEV_RULE] and "softdog" in FILES[dp.WATCHDOG_MODULES_LOAD]
    again = ops_patroni.ensure_watchdog(k.host, params_with("automatic"))
    assert not again.changed and len(k.host.journal) == 4


@covers("hcbpg.ops.patroni.ensure_watchdog", "dry run")
def test_the_plan_names_the_module_and_the_owner_and_loads_nothing():
    k = Kernel()
    dry = DryRunHost(k.host)
    out = ops_patroni.ensure_watchdog(dry, params_with("required"))
    assert out.changed and out.dry_run
    assert "modprobe softdog (the kernel's software watchdog)" in dry.journal
    assert not k.loaded and k.host.files == {} and k.host.journal == []


@covers("hcbpg.ops.patroni.ensure_watchdog", "refusal")
def test_required_without_softdog_is_refused_automatic_goes_on_without_and_off_does_nothing():
    k = Kernel(module=False)
    with pytest.raises(SafetyCheckFailed, match="no softdog module in this kernel, but replication.patroni.watchdog "
                                                "is required"):
        ops_patroni.ensure_watchdog(k.host, params_with("required"))
    assert k.host.journal == []
    out = ops_patroni.ensure_watchdog(k.host, params_with("automatic"))
    assert not out.changed and out.actions == ["no softdog in this kernel: Patroni runs without a watchdog "
                                               "(automatic)"]
    off = ops_patroni.ensure_watchdog(Kernel().host, params_with("off"))
    assert not off.changed and "off in params" in off.what
