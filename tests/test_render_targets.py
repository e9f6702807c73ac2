"""Where SSH goes (targets), and the install plan on a host that lacks packages (a scripted fake host)."""

from __future__ import annotations

import pytest

from hcbpg.adapters.host import Result
from hcbpg.desired import addresses
from hcbpg.errors import ParamsError
from hcbpg.ops import packages as pg_packages
from hcbpg.params import parse_params


def make_params(**extra):
    data = {
        "environment": "production",
        "hetzner": {"token": "env:T", "ssh_public_key_file": "/dev/null"},
        "servers": [{"name": "server-postgres-1", "private_ip": "10.0.1.5", "role": "primary"},
                    {"name": "server-postgres-2", "private_ip": "10.0.1.6", "role": "replica",
                     "ssh_host": "pg2.example.net"}],
        "postgres": {"app_role_password": "env:P"},
    }
    data.update(extra)
    return parse_params(data)


RECORDED = [{"name": "server-postgres-1", "public_ip": "198.51.100.7", "private_ip": "10.0.1.5", "id": 11},
            {"name": "server-postgres-2", "public_ip": "198.51.100.8", "private_ip": "10.0.1.6", "id": 12}]


def test_ssh_host_from_params_wins_over_the_recorded_public_ip():
    assert addresses.ssh_address(make_params(), "server-postgres-2", RECORDED) == "pg2.example.net"


def test_recorded_public_ip_is_used_when_params_set_no_ssh_host():
    assert addresses.ssh_address(make_params(), "server-postgres-1", RECORDED) == "198.51.100.7"


def test_no_address_before_provisioning_or_from_a_dry_run_record():
    assert addresses.ssh_address(make_params(), "server-postgres-1", []) is None
    planned = [{"name": "server-postgres-1", "public_ip": None, "private_ip": "10.0.1.5", "id": None}]
    assert addresses.ssh_address(make_params(), "server-postgres-1", planned) is None


def test_app_host_is_reached_at_ssh_host_else_its_private_ip():
    assert addresses.app_ssh_address(make_params(app_host={"name": "app", "private_ip": "10.0.1.10"})) == "10.0.1.10"
    assert addresses.app_ssh_address(make_params(
        app_host={"name": "app", "private_ip": "10.0.1.10", "ssh_host": "app.example.net"})) == "app.example.net"
    with pytest.raises(ParamsError, match="app_host"):
        addresses.app_ssh_address(make_params())


class ScriptedHost:
    """A stand-in for hcbpg.host.Host that answers probes from a script and records what would run."""

    name = "server-postgres-1"

    def __init__(self, installed: dict[str, str], files: dict[str, str]) -> None:
        self.installed = installed
        self.files = dict(files)
        self.ran: list[str] = []
        self.echo = print

    def probe(self, cmd: str, **kw) -> Result:
        if cmd.startswith("dpkg-query"):
            out = "".join(f"{p}\tii \t{v}\n" for p, v in self.installed.items())
            return Result(self.name, cmd, 0, out, "", 0.0)
        if cmd.startswith("pg_lsclusters"):
            return Result(self.name, cmd, 0, "[]", "", 0.0)
        raise AssertionError(f"unexpected probe {cmd}")

    def read_text(self, path: str, **kw):
        return self.files.get(path)

    def exists(self, path: str) -> bool:
        return path in self.files

    def put_text(self, path: str, text: str, *, dry_run: bool = False, **kw) -> None:
        if not dry_run:
            self.ran.append(f"write {path}")
            self.files[path] = text

    def run(self, cmd: str, **kw) -> Result:
        self.ran.append(cmd)
        return Result(self.name, cmd, 0, "", "", 0.0)


OS_RELEASE = {"/etc/os-release": 'PRETTY_NAME="Ubuntu 24.04 LTS"\nVERSION_CODENAME=noble\n'}


def test_host_with_every_package_needs_no_apt_at_all():
    installed = {"postgresql-common": "1", "postgresql-15": "15.8", "libpq-dev": "16", "pgbackrest": "2.5"}
    files = {**OS_RELEASE, pg_packages.PGDG_SOURCES: pg_packages.render_pgdg_sources("noble"), pg_packages.PGDG_KEY: "key"}
    host = ScriptedHost(installed, files)
    outcomes = pg_packages.ensure_packages(host, make_params(), dry_run=False)
    assert not any(o.changed for o in outcomes)
    assert host.ran == []


def test_missing_packages_plan_lists_them_and_a_dry_run_runs_nothing():
    host = ScriptedHost({"postgresql-common": "1"}, {**OS_RELEASE, pg_packages.PGDG_KEY: "key"})
    outcomes = pg_packages.ensure_packages(host, make_params(), dry_run=True)
    assert [o.verb for o in outcomes] == ["would change", "would change"]
    assert "Suites: noble-pgdg" in outcomes[0].diff
    assert outcomes[1].actions == ["apt-get install postgresql-15 libpq-dev pgbackrest (PGDG repository)"]
    assert host.ran == []


def test_fresh_host_installs_postgresql_common_first_then_the_repo_then_the_rest():
    host = ScriptedHost({}, dict(OS_RELEASE))

    def run(cmd: str, **kw) -> Result:
        host.ran.append(cmd)
        if "install" in cmd and "postgresql-common" in cmd:
            host.files[pg_packages.PGDG_KEY] = "key"   # postgresql-common ships the signing key
        return Result(host.name, cmd, 0, "", "", 0.0)

    host.run = run
    outcomes = pg_packages.ensure_packages(host, make_params(), dry_run=False)
    assert all(o.changed for o in outcomes)
    steps = [" ".join(c.replace("DEBIAN_FRONTEND=noninteractive ", "").split()[:2]) for c in host.ran]
    assert steps == ["apt-get update", "apt-get install", f"write {pg_packages.PGDG_SOURCES}", "apt-get update",
                     "apt-get install"]
    assert host.ran[1].endswith("postgresql-common")
    assert host.ran[4].endswith("postgresql-15 libpq-dev pgbackrest")
    assert not any("| sh" in c or "| bash" in c or "apt.postgresql.org.sh" in c for c in host.ran)
