"""Capacity and memory settings rendered from params and the server type (pure), against golden files.

The CCX13 shape is what the Hetzner API reports (and the lab's stand-in must report the same:
2 dedicated vCPUs, 8 GB RAM, 80 GB disk); a larger type re-renders the values.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from hcbpg.desired import capacity
from hcbpg.desired import server as desired_server
from hcbpg.lab import hcloud_api
from hcbpg.params import parse_params
from hcbpg.pg.conf import parse_settings

from goldenfile import golden
from nbutil import manual_production

REPO = Path(__file__).resolve().parent.parent
CCX13 = capacity.ServerShape("ccx13", cores=2, memory_gb=8.0, disk_gb=80, cpu_type="dedicated")
CCX23 = capacity.ServerShape("ccx23", cores=4, memory_gb=16.0, disk_gb=160, cpu_type="dedicated")


def production():
    return parse_params(manual_production())


def lab():
    return parse_params(yaml.safe_load((REPO / "params" / "lab.yaml").read_text()))


def test_standin_reports_ccx13_as_hetzner_does():
    st = next(t for t in hcloud_api.SERVER_TYPES if t["name"] == "ccx13")
    assert (st["cores"], st["memory"], st["disk"], st["cpu_type"]) == (2, 8.0, 80, "dedicated")


def test_capacity_file_for_a_ccx13_matches_golden():
    for name, params in (("production", production()), ("lab", lab())):
        text = desired_server.render_settings(params, params.primary, "capacity",
                                              extra=capacity.render_capacity(params, CCX13))
        golden(f"settings.capacity.{name}.ccx13.conf", text)


def test_table_says_each_value_and_why():
    params = lab()
    rows = capacity.capacity_table(params, CCX13)
    rendered = parse_settings(desired_server.render_settings(params, params.primary, "capacity",
                                                             extra=capacity.render_capacity(params, CCX13)))
    assert [r["setting"] for r in rows] == sorted(rendered)
    assert all(r["why"] for r in rows)
    golden("capacity.lab.ccx13.table.txt", "".join(f"{r['setting']} = {r['value']} [{r['restart']}]: {r['why']}\n"
                                                   for r in rows))


def test_max_connections_is_the_budget():
    params = lab()
    values = capacity.render_capacity(params, CCX13)
    # rails 500 + hcb_migrations 10 + metabase 10 + vector 5 + postgres_exporter 5 + blazer 10 + repuser 2 + 3
    budget = dict(capacity.connection_budget(params))
    assert values["max_connections"] == sum(budget.values())
    assert values["max_connections"] >= 500 + 3
    assert values["shared_buffers"] == "2GB" and values["effective_cache_size"] == "6GB"
    assert values["shared_preload_libraries"] == "pg_stat_statements,auto_explain"


def test_a_larger_type_re_renders_memory():
    params = production()
    small, big = capacity.render_capacity(params, CCX13), capacity.render_capacity(params, CCX23)
    assert small["max_connections"] == big["max_connections"]
    assert (small["shared_buffers"], big["shared_buffers"]) == ("2GB", "4GB")
    assert big["max_parallel_workers"] == 4 and small["max_parallel_workers"] == 2


def test_restart_settings_are_flagged():
    rows = {r["setting"]: r["restart"] for r in capacity.capacity_table(production(), CCX13)}
    for name in ("max_connections", "shared_buffers", "shared_preload_libraries"):
        assert rows[name] == "yes"
    assert rows["work_mem"] == "reload"


def test_a_cluster_without_data_checksums_fails_and_says_how_to_enable_them_offline():
    """New clusters get checksums at initdb; an existing one without them fails the check (step 02 recreates an
    empty one and refuses one holding data) with the
    pg_checksums procedure, and nothing on the host is changed by the check."""
    import json

    from hcbpg.adapters.recording import RecordingHost
    from hcbpg.ops.cluster import check_data_checksums

    pgdata = "/srv/pg/15/main"
    cluster = json.dumps([{"version": 15, "cluster": "main", "running": 1, "pgdata": pgdata}])
    for setting, status in (("on", "pass"), ("off", "fail")):
        host = RecordingHost("server-postgres-1", [(r"pg_lsclusters", cluster),
                                                   (r"^/usr/lib/postgresql/15/bin/psql -p 5432", json.dumps([{"v": setting}]))])
        check = check_data_checksums(host, lab())
        assert (check.name, check.status, check.target) == ("data checksums", status, "server-postgres-1")
        assert all(c.kind in ("run", "probe") for c in host.calls) and host.written == []
    assert "pg_checksums --enable --progress -D /srv/pg/15/main" in check.detail
    assert "pg_ctlcluster 15 main stop" in check.detail and "step 10" in check.detail
