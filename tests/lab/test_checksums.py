"""Data checksums for certain (issue 24) on lab hosts installed like real servers: postgresql-15 is not installed
on them yet (hcbpg.lab.hosts.unpackage_upper), so step 02's ``apt-get install`` unpacks it and runs its real
postinst, which creates and starts ``15/main`` as createcluster.conf says, exactly as on a Debian/Ubuntu server.

- step 02 on such a host: its createcluster.d drop-in stops the automatic cluster, hcbpg creates its own:
  ``SHOW data_checksums`` is on;
- postgresql-15 installed first with Debian's createcluster.conf (an automatic 15/main without checksums) and
  nothing in it: step 02 (planned first: the plan says so and changes nothing) drops it and makes it again;
- the same with a table in it: step 02 is refused with what pg_checksums would cost, the cluster left as it was.

Each test makes its own server (offsets 151-153) and deletes it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from hcbpg.adapters.dryrun import DryRunHost
from hcbpg.adapters.host import Host
from hcbpg.errors import SafetyCheckFailed
from hcbpg.lab import create_server_host, destroy_server_host
from hcbpg.ops import cluster as pg_cluster
from hcbpg.ops import server as pg_server
from hcbpg.params import parse_params
from hcbpg.pg.checksums import CREATECLUSTER_DROPIN
from hcbpg.steps import install_postgres as install_step

from labparams import lab_params

pytestmark = pytest.mark.lab

APT_INSTALL_15 = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-15"
CONTROL = "LC_ALL=C /usr/lib/postgresql/15/bin/pg_controldata -D /var/lib/postgresql/15/main"
OUTPUT: list[str] = []


class RealServer:
    """A lab server without postgresql-15 installed yet, its params and an SSH host."""

    def __init__(self, lab, name: str, offset: int) -> None:  # noqa: ANN001
        self.lab, self.name = lab, name
        ip = lab.cfg.address(offset)
        key = lab.ssh_key.with_suffix(".pub").read_text()
        create_server_host(name, ip, [key], lab_dir=str(lab.lab_dir), fresh_packages=("postgresql-15",))
        self.params = parse_params(lab_params(lab, [(name, ip, "primary")]))
        self.host = Host.from_params(self.params, name, ip)

    def sh(self, cmd: str, **kw) -> str:  # noqa: ANN003
        cp = self.lab.exec(self.name, cmd, timeout=900, **kw)
        assert cp.returncode == 0, f"{cmd}: {cp.stdout[-1500:]}{cp.stderr[-1500:]}"
        return cp.stdout

    def sql(self, text: str) -> str:
        return self.sh(f"psql -X -A -t -q -v ON_ERROR_STOP=1 -d postgres -c \"{text}\"", user="postgres").strip()

    def system_identifier(self) -> str:
        return next(line.split(":", 1)[1].strip() for line in self.sh(CONTROL).splitlines()
                    if line.startswith("Database system identifier"))

    def install_with_debians_defaults(self) -> None:
        """postgresql-15 installed before hcbpg ran, as Debian ships it: the postinst's automatic 15/main."""
        conf = self.sh("cat /etc/postgresql-common/createcluster.conf")
        assert "#create_main_cluster = true" in conf and "#initdb_options = ''" in conf, conf
        assert self.lab.exec(self.name, f"test -e {CREATECLUSTER_DROPIN}").returncode != 0
        out = self.sh(APT_INSTALL_15)
        assert "Creating new PostgreSQL cluster 15/main" in out, out[-2000:]
        assert "online" in self.sh("pg_lsclusters -h 15 main")
        assert self.sql("SHOW data_checksums") == "off"

    def close(self) -> None:
        self.host.close()
        destroy_server_host(self.name, lab_dir=str(self.lab.lab_dir))


@pytest.fixture
def real_server(lab) -> Iterator:
    made: list[RealServer] = []

    def make(name: str, offset: int) -> RealServer:
        made.append(RealServer(lab, name, offset))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_the_lab_host_has_no_postgresql_15_until_apt_installs_it(real_server):
    s = real_server("pg-sums-1", 151)
    status = s.sh("dpkg-query -W -f '${db:Status-Abbrev}' postgresql-15 2>/dev/null || true")
    assert not status.startswith("ii"), status
    assert s.sh("pg_lsclusters -h").strip() == ""
    # what needs postgresql-15 is not there either, and dpkg's state is consistent (apt installs other packages)
    others = s.sh("dpkg-query -W -f '${Package} ${db:Status-Abbrev}\\n' postgresql postgresql-contrib 2>/dev/null || true")
    assert " ii" not in others, others
    s.sh("apt-get check -q")
    # step 02 on it: its drop-in first, then the real install (unpack + postinst), then hcbpg's own cluster
    t0 = time.monotonic()
    outcomes = install_step.install_server(s.host, s.params, s.params.primary)
    OUTPUT.append(f"step 02 on a host installed like a real server: {time.monotonic() - t0:.1f} s")
    assert outcomes[0].what.startswith("createcluster drop-in") and outcomes[0].changed
    assert any("apt-get install postgresql-15" in a for o in outcomes for a in o.actions)
    assert s.sh("dpkg-query -W -f '${db:Status-Abbrev}' postgresql-15").startswith("ii")
    assert "configure postgresql-15" in s.sh("cat /var/log/dpkg.log")  # its postinst ran
    assert s.sh("pg_lsclusters -h").strip().count("\n") == 0  # one cluster: hcbpg's (the postinst made none)
    assert s.sql("SHOW data_checksums") == "on"
    checks = pg_server.check_server(s.host, s.params, s.params.primary)
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]
    assert [c.detail for c in checks if c.name == "data checksums"] == ["on (initdb --data-checksums)"]
    again = install_step.install_server(s.host, s.params, s.params.primary)
    assert not [o for o in again if o.changed], [str(o) for o in again if o.changed]


def test_an_automatic_cluster_without_checksums_that_holds_nothing_is_made_again(real_server):
    s = real_server("pg-sums-2", 152)
    s.install_with_debians_defaults()
    before = s.system_identifier()
    plan = install_step.install_server(DryRunHost(s.host), s.params, s.params.primary)
    planned = next(o for o in plan if o.what.startswith("cluster 15/main on"))
    assert planned.changed and planned.dry_run and "holds nothing" in planned.actions[0], planned.actions
    assert any(a.startswith("pg_dropcluster --stop 15 main") for a in planned.actions)
    # the cluster made again is new: its settings are read at its first start, no reload or restart planned
    assert not [a for o in plan for a in o.actions if "15 main reload" in a or "15 main restart" in a], plan
    assert s.system_identifier() == before and s.sql("SHOW data_checksums") == "off"  # the plan changed nothing
    outcomes = install_step.install_server(s.host, s.params, s.params.primary)
    made = next(o for o in outcomes if o.what.startswith("cluster 15/main on"))
    OUTPUT.append(f"recreated: {made.actions[0]}")
    assert made.changed and "dropped, created again with checksums" in made.actions[0]
    assert s.system_identifier() != before and s.sql("SHOW data_checksums") == "on"
    checks = pg_server.check_server(s.host, s.params, s.params.primary)
    assert all(c.status == "pass" for c in checks), [f"{c.name}: {c.detail}" for c in checks if c.status != "pass"]


def test_an_automatic_cluster_without_checksums_holding_a_table_is_refused_and_left_alone(real_server):
    s = real_server("pg-sums-3", 153)
    s.install_with_debians_defaults()
    s.sql("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g")
    before = s.system_identifier()
    with pytest.raises(SafetyCheckFailed, match="holds data") as err:
        install_step.install_server(s.host, s.params, s.params.primary)
    OUTPUT.append(f"refused: {err.value}\n  hint: {err.value.hint}")
    assert "relation public.orders" in str(err.value)
    hint = err.value.hint or ""
    assert "pg_checksums --enable" in hint and "to read and rewrite with the cluster stopped, about" in hint
    assert "Nothing was changed" in hint
    assert s.system_identifier() == before and s.sql("SELECT count(*) FROM orders") == "1000"
    assert s.sql("SHOW data_checksums") == "off" and "online" in s.sh("pg_lsclusters -h 15 main")
    check = pg_cluster.check_data_checksums(s.host, s.params)
    assert check.status == "fail" and "pg_checksums --enable" in check.detail


def test_zz_print_what_was_measured():
    print("\n" + "\n".join(OUTPUT))
