"""Specs of data checksums for certain (issue 24): createcluster's drop-in before any package
(hcbpg.ops.packages.ensure_createcluster_conf), and a cluster found without checksums dropped and made again when
it holds nothing, refused when it holds data (hcbpg.ops.cluster.ensure_cluster_exists), on the recording double
of tests/fast/test_server_specs.py with what pg_conftool and the catalog say added."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from hcbpg.adapters.base import Result
from hcbpg.adapters.dryrun import AbsentHost, DryRunHost
from hcbpg.adapters.recording import Call
from hcbpg.errors import SafetyCheckFailed
from hcbpg.ops import cluster, packages
from hcbpg.params import parse_params
from hcbpg.pg.checksums import (
    CREATECLUSTER_DIR,
    CREATECLUSTER_DROPIN,
    ClusterContents,
    checksum_enable_estimate,
    render_createcluster_conf,
)
from hcbpg.pg.cluster import ctl_command, drop_command
from hcbpg.steps import install_postgres as install_step
from tests.fast.specs import covers, params_data
from tests.fast.test_server_specs import APT_INSTALL, APT_UPDATE, CREATE, NAME, START, Server

DROP = drop_command(15, "main")
STOP = ctl_command(15, "main", "stop", "-m", "fast")
MKDIR = f"directory {CREATECLUSTER_DIR}"
WRITE = f"write {CREATECLUSTER_DROPIN}"
EMPTY = {"databases": [], "connectable": ["postgres", "template1"], "roles": [], "tablespaces": [],
         "alter_system": 0, "bytes": 15_000_000}


@pytest.fixture
def params():
    return parse_params(params_data())


class Machine(Server):
    """A server whose postgresql-common answers pg_conftool (reading the drop-in unless *reads_dropin* is false)
    and whose cluster holds *holds* (cluster-wide row) and *objects* (database -> objects)."""

    def __init__(self, *, reads_dropin: bool = True, holds: dict[str, Any] | None = None,
                 objects: dict[str, list[str]] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.reads_dropin = reads_dropin
        self.holds = {**EMPTY, **(holds or {})}
        self.objects = objects or {}
        self.dropped = 0

    def answer(self, call: Call) -> Result | str | None:
        cmd = call.command
        if cmd == "command -v pg_conftool":
            if "postgresql-common" in self.installed:
                return "/usr/bin/pg_conftool\n"
            return Result(NAME, cmd, 1, "", "", 0.0)
        if cmd.startswith("pg_conftool /etc/postgresql-common/createcluster.conf show -bs create_main_cluster"):
            return "off\n" if self.reads_dropin and CREATECLUSTER_DROPIN in self.files else "on\n"
        if cmd == DROP:
            self.cluster, self.dropped = None, self.dropped + 1
            return ""
        if cmd == STOP:
            self.cluster = "stopped"
            return ""
        if cmd.startswith("/usr/lib/postgresql/15/bin/psql -p 5432") and "pg_authid" in (call.stdin or ""):
            return json.dumps([self.holds])
        if cmd.startswith("/usr/lib/postgresql/15/bin/psql -p 5432") and "pg_largeobject_metadata" in (call.stdin or ""):
            db = re.search(r" -d (\S+)", cmd)[1]
            return json.dumps([{"object": o} for o in self.objects.get(db, [])])
        return super().answer(call)


# createcluster's drop-in --------------------------------------------------------------------------

def test_drop_in_asks_for_no_automatic_cluster_and_checksums():
    text = render_createcluster_conf()
    assert "create_main_cluster = false\n" in text and "initdb_options = '--data-checksums'\n" in text
    assert text.startswith("# Managed by hcbpg")
    assert CREATECLUSTER_DROPIN == "/etc/postgresql-common/createcluster.d/hcbpg.conf"


@covers("hcbpg.ops.packages.ensure_createcluster_conf", "fresh", "second run", "dry run")
def test_drop_in_written_before_any_package_once(params):
    srv = Machine(installed={})
    dry = DryRunHost(srv.host)
    planned = packages.ensure_createcluster_conf(dry, params)
    assert planned.verb == "would change" and dry.journal == [MKDIR, WRITE] and CREATECLUSTER_DROPIN not in srv.files
    assert "+create_main_cluster = false" in planned.diff
    out = packages.ensure_createcluster_conf(srv.host, params)
    assert out.changed and srv.host.journal == [MKDIR, WRITE]
    assert srv.files[CREATECLUSTER_DROPIN] == render_createcluster_conf()
    assert srv.host.written[0][2:] == (0o644, "root", "root")
    assert not packages.ensure_createcluster_conf(srv.host, params).changed and srv.host.journal == [MKDIR, WRITE]


@covers("hcbpg.ops.packages.ensure_createcluster_conf", "fresh", "dry run")
def test_step_02_writes_the_drop_in_before_postgresql_common_and_postgresql_15(params):
    absent = AbsentHost(NAME)
    outcomes = install_step.install_server(absent, params, params.primary)
    assert outcomes[0].what.startswith("createcluster drop-in") and outcomes[0].changed
    assert absent.journal[:4] == [MKDIR, WRITE, APT_UPDATE, APT_INSTALL + "postgresql-common"]


@covers("hcbpg.ops.packages.ensure_createcluster_conf", "refusal")
def test_a_postgresql_common_that_does_not_read_the_drop_in_is_refused_and_the_file_taken_back(params):
    srv = Machine(reads_dropin=False)
    with pytest.raises(SafetyCheckFailed, match="does not read") as err:
        packages.ensure_createcluster_conf(srv.host, params)
    assert "include_dir" in (err.value.hint or "")
    assert CREATECLUSTER_DROPIN not in srv.files and srv.host.journal[-1] == f"rm -f {CREATECLUSTER_DROPIN}"


# a cluster found without checksums -------------------------------------------------------------------

@covers("hcbpg.ops.cluster.ensure_cluster_exists", "fresh", "second run", "dry run")
def test_an_empty_cluster_without_checksums_is_dropped_and_made_again(params):
    srv = Machine(cluster="running", checksums=False)
    dry = DryRunHost(srv.host)
    planned = cluster.ensure_cluster_exists(dry, params)
    assert dry.journal == [DROP, CREATE] and srv.cluster == "running" and not srv.checksums
    assert "holds nothing" in planned.actions[0] and planned.verb == "would change"
    # the plan goes on to start the cluster it would make again (not running until then: settings need no reload)
    assert not cluster.get_cluster_running(dry, params)
    assert cluster.ensure_cluster_running(dry, params).changed and dry.journal == [DROP, CREATE, START]
    assert cluster.get_cluster_running(dry, params)
    out = cluster.ensure_cluster_exists(srv.host, params)
    assert out.changed and srv.host.journal == [DROP, CREATE] and srv.cluster == "stopped" and srv.checksums
    assert "dropped, created again with checksums" in out.actions[0]
    assert not cluster.ensure_cluster_exists(srv.host, params).changed and srv.host.journal == [DROP, CREATE]


@covers("hcbpg.ops.cluster.ensure_cluster_exists", "fresh", "dry run")
def test_a_stopped_cluster_without_checksums_is_started_to_look(params):
    srv = Machine(cluster="stopped", checksums=False)
    dry = DryRunHost(srv.host)
    planned = cluster.ensure_cluster_exists(dry, params)
    assert dry.journal == [START, DROP, CREATE] and "start it to see what it holds" in planned.actions[0]
    assert srv.cluster == "stopped" and not srv.checksums
    out = cluster.ensure_cluster_exists(srv.host, params)
    assert out.changed and srv.host.journal == [START, DROP, CREATE] and srv.checksums


@covers("hcbpg.ops.cluster.ensure_cluster_exists", "refusal")
def test_a_cluster_without_checksums_that_holds_data_is_refused_with_the_cost(params):
    srv = Machine(cluster="running", checksums=False, holds={"databases": ["hcb_production"], "roles": ["rails"],
                                                              "bytes": 3 * 1024 ** 3},
                  objects={"postgres": ["relation public.t", "type t"]})
    with pytest.raises(SafetyCheckFailed, match="holds data") as err:
        cluster.ensure_cluster_exists(srv.host, params)
    msg, hint = str(err.value), err.value.hint or ""
    assert "database(s) hcb_production" in msg and "role(s) rails" in msg and "in postgres: relation public.t" in msg
    assert "3.0 GB to read and rewrite with the cluster stopped" in hint and "pg_checksums --enable" in hint
    assert srv.host.journal == [] and srv.cluster == "running" and srv.dropped == 0
    # stopped: started to look, stopped again, nothing else
    stopped = Machine(cluster="stopped", checksums=False, objects={"template1": ["extension pgcrypto"]})
    with pytest.raises(SafetyCheckFailed, match="extension pgcrypto"):
        cluster.ensure_cluster_exists(stopped.host, params)
    assert stopped.host.journal == [START, STOP] and stopped.cluster == "stopped" and stopped.dropped == 0


@covers("hcbpg.ops.cluster.ensure_cluster_exists", "second run")
def test_a_cluster_with_checksums_is_left_alone(params):
    srv = Machine(cluster="running", checksums=True, holds={"databases": ["hcb_production"]})
    assert not cluster.ensure_cluster_exists(srv.host, params).changed and srv.host.journal == []


def test_holds_nothing_is_every_kind_empty():
    assert ClusterContents.from_rows(EMPTY, {"postgres": [], "template1": []}).empty
    for key, value in (("databases", ["x"]), ("roles", ["r"]), ("tablespaces", ["t"]), ("alter_system", 1)):
        assert not ClusterContents.from_rows({**EMPTY, key: value}, {}).empty, key
    assert not ClusterContents.from_rows(EMPTY, {"template1": [{"object": "schema s"}]}).empty
    assert checksum_enable_estimate(100 * 1024 ** 2) == "100.0 MB to read and rewrite with the cluster stopped, " \
                                                      "about 1 s at 100 MB/s"
    assert "about 17 min" in checksum_enable_estimate(100 * 1024 ** 3)


def test_step_02_plans_the_remake_without_a_reload_or_restart_of_the_cluster_that_goes(params):
    srv = Machine(cluster="running", checksums=False, files={CREATECLUSTER_DROPIN: render_createcluster_conf()})
    dry = DryRunHost(srv.host)
    outcomes = install_step.install_server(dry, params, params.primary)
    assert [c for c in dry.journal if c.startswith("pg_")] == [DROP, CREATE, START], dry.journal
    assert any("holds nothing" in a for o in outcomes for a in o.actions)
    assert srv.host.journal == [] and srv.cluster == "running" and not srv.checksums
