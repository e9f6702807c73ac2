"""Step 08's check of the bucket's objects (desired.backups.check_repo_objects) looks for repo1's backups only: its
listing is ``repo-ls`` of repo1, and with params pgbackrest.repo2 the info rows also hold repo2's backups (the
rehearsal's step 08 failed 'backup <repo2's label> in the bucket: 0 object(s)')."""

from __future__ import annotations

from hcbpg.desired.backups import check_repo_objects
from hcbpg.params import Server
from hcbpg.pg.pgbackrest import BackupRow


def _row(label: str, repo: int) -> BackupRow:
    return BackupRow(label=label, type="full", start="", stop="", duration_s=1, size=1, delta=1, repo_size=1,
                     repo_delta=1, wal_start="", wal_stop="", prior=None, repo=repo)


def test_only_repo1s_backups_are_looked_for_in_repo1s_listing():
    files = [{"path": p} for p in ("archive/s/archive.info", "archive/s/15-1/0000000100000000/000000010000000000000003",
                                   "backup/s/backup.info", "backup/s/20261207-063924F/backup.manifest")]
    server = Server(name="server-postgres-1", private_ip="10.0.1.5", role="primary")
    checks = check_repo_objects(files, [_row("20261207-063924F", 1), _row("20261207-063929F", 2)], server)
    assert [(c.name, c.status) for c in checks if c.name.startswith("backup 2026")] == [
        ("backup 20261207-063924F in the bucket", "pass")]
    missing = check_repo_objects(files, [_row("20261207-070000F", 1)], server)
    assert [c.status for c in missing if c.name.startswith("backup 2026")] == ["fail"]
