"""Specs of the replica's ``start.conf`` on the recording double (hcbpg.ops.replica.ensure_start_conf):
the file's text in → the write (or none) and the Outcome out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.recording import RecordingHost
from hcbpg.desired.replica import start_conf_path, start_conf_value
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import replica
from hcbpg.params import parse_params
from tests.fast.specs import covers

REPO = Path(__file__).resolve().parents[2]
CONF = "/etc/postgresql/15/main/start.conf"
#: start.conf as pg_createcluster writes it
HEADER = ("# Automatic startup configuration\n#   auto: automatically start the cluster\n"
          "#   manual: manual startup with pg_ctlcluster/postgresql@.service only\n"
          "#   disabled: refuse to start cluster\n# See pg_createcluster(1) for details. When running from systemd,\n"
          "# invoke 'systemctl daemon-reload' after editing this file.\n\n")


@pytest.fixture(scope="module")
def params():
    return parse_params(yaml.safe_load((REPO / "params" / "lab.yaml").read_text()))


def test_the_path_is_the_clusters_start_conf(params):
    assert start_conf_path(params) == CONF


@pytest.mark.parametrize(("text", "value"), [(None, "auto"), ("", "auto"), ("manual\n", "manual"),
                                             (HEADER + "auto\n", "auto"), (HEADER + "disabled\n", "disabled"),
                                             ("  manual  # set by hcbpg\n", "manual")])
def test_what_a_start_conf_says(text, value):
    assert start_conf_value(text) == value


@covers("hcbpg.ops.replica.ensure_start_conf", "fresh")
def test_a_fresh_cluster_is_set_to_manual(params):
    host = RecordingHost("s", files={CONF: HEADER + "auto\n"})
    out = replica.ensure_start_conf(host, params, "manual")
    assert host.journal == [f"write {CONF}"] and host.files[CONF] == "manual\n"
    assert out.changed and not out.dry_run and out.diff == "-auto\n+manual\n"


@covers("hcbpg.ops.replica.ensure_start_conf", "second run")
def test_a_second_run_writes_nothing(params):
    host = RecordingHost("s", files={CONF: HEADER + "manual\n"})
    out = replica.ensure_start_conf(host, params, "manual")
    assert host.journal == [] and not out.changed and out.diff == ""
    assert host.files[CONF] == HEADER + "manual\n", "a file that says it already is kept as it is"


@covers("hcbpg.ops.replica.ensure_start_conf", "dry run")
def test_a_dry_run_records_the_write_and_writes_nothing(params):
    real = RecordingHost("s", files={CONF: "auto\n"})
    host = DryRunHost(real)
    out = replica.ensure_start_conf(host, params, "manual")
    assert host.journal == [f"write {CONF}"] and out.changed and out.dry_run
    assert real.files[CONF] == "auto\n" and real.journal == []


@covers("hcbpg.ops.replica.ensure_start_conf", "refusal")
def test_a_value_start_conf_cannot_hold_is_refused(params):
    host = RecordingHost("s", files={CONF: "auto\n"})
    with pytest.raises(SafetyCheckFailed, match="start.conf cannot say 'off'"):
        replica.ensure_start_conf(host, params, "off")
    assert host.journal == [] and host.files[CONF] == "auto\n"
