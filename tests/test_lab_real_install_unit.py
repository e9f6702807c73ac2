"""The lab's hosts installed like real servers (hcbpg.lab.hosts.broken_by, cached_deb): which packages a host
without postgresql-15 must not list either, so that dpkg's state there is consistent (pure, on a synthetic
dpkg status)."""

from __future__ import annotations

import pytest

from hcbpg.errors import LabError
from hcbpg.lab.hosts import broken_by, cached_deb

STATUS = """Package: postgresql-15
Status: install ok installed
Architecture: amd64
Version: 15.20-0+deb12u1
Provides: postgresql-15-jit-llvm (= 14), postgresql-contrib-15
Depends: libc6 (>= 2.34), postgresql-client-15,
 postgresql-common (>= 241~)

Package: postgresql
Status: install ok installed
Version: 15+248
Depends: postgresql-15

Package: postgresql-contrib
Status: install ok installed
Version: 15+248
Depends: postgresql-contrib-15

Package: postgresql-plperl-15
Status: install ok installed
Version: 15.20-0+deb12u1
Depends: libc6, postgresql-15 (= 15.20-0+deb12u1) | postgresql-16

Package: pgbackrest
Status: install ok installed
Version: 2.45-1
Depends: postgresql-common, libpq5 | libpq-dev

Package: postgresql-client-15
Status: install ok installed
Version: 15.20-0+deb12u1
Depends: libpq5

Package: old-thing
Status: deinstall ok config-files
Version: 1
Depends: postgresql-15
"""


def test_what_needs_postgresql_15_goes_with_it_through_provides_and_alternatives():
    assert broken_by(STATUS, ["postgresql-15"]) == {"postgresql-15", "postgresql", "postgresql-contrib",
                                                     "postgresql-plperl-15"}
    assert broken_by(STATUS, ["postgresql-contrib"]) == {"postgresql-contrib"}


def test_a_package_without_its_cached_deb_is_named_with_how_to_get_it(tmp_path, monkeypatch):
    import hcbpg.lab.hosts as hosts
    monkeypatch.setattr(hosts, "APT_ARCHIVES", tmp_path)
    with pytest.raises(LabError, match="postgresql-15_15.20-0\\+deb12u1_amd64.deb is missing") as err:
        cached_deb("postgresql-15", STATUS)
    assert "apt-get install --download-only --reinstall -y postgresql-15" in (err.value.hint or "")
    (tmp_path / "postgresql-15_15.20-0+deb12u1_amd64.deb").write_bytes(b"!<arch>\n")
    assert cached_deb("postgresql-15", STATUS).name == "postgresql-15_15.20-0+deb12u1_amd64.deb"
    with pytest.raises(LabError, match="not installed on this machine"):
        cached_deb("postgresql-99", STATUS)
