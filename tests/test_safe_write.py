"""The scripts behind root's writes (hcbpg.adapters.files), run here as root with the shell servers use.

A directory owned by ``nobody`` stands for the postgres user's directories on a server: a symlink
that user plants must never make root write, chown or chmod something else.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hcbpg.adapters.files import REFUSED_EXIT, ensure_dir_script, put_file_script


def require_root() -> None:
    if os.geteuid() != 0 or shutil.which("runuser") is None or shutil.which("dash") is None:
        pytest.skip("runs the scripts as root (chown, runuser) with dash, the servers' /bin/sh")


NOBODY = "nobody"


def run(script: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    require_root()
    return subprocess.run(["dash", "-c", script], input=stdin, capture_output=True, text=True, timeout=30)


def owner(path: Path) -> tuple[str, int]:
    st = path.lstat()
    return pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory of root's alone, below directories of root's alone, that other users can traverse
    (pytest's tmp_path lies in a 0700 directory)."""
    require_root()
    base = Path(tempfile.mkdtemp(prefix="hcbpg-safe-write-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for p in (base, *base.parents):
            if p.stat().st_uid != 0 or (p.stat().st_mode & 0o022 and not p.stat().st_mode & stat.S_ISVTX):
                pytest.skip(f"{p} is not root's alone")
        d = base / "root-only"
        d.mkdir(mode=0o755)
        yield d
    finally:
        shutil.rmtree(base)


@pytest.fixture
def user_dir(root_dir: Path) -> Path:
    """A directory that belongs to another user (nobody), like /etc/postgresql/15/main to postgres."""
    d = root_dir / "nobodys"
    d.mkdir(mode=0o755)
    os.chown(d, pwd.getpwnam(NOBODY).pw_uid, -1)
    return d


@pytest.fixture
def victim(root_dir: Path) -> Path:
    """A root-owned 0600 file the other user must never get."""
    v = root_dir / "victim"
    v.write_text("root's secret\n")
    v.chmod(0o600)
    return v


def test_write_in_roots_directory_sets_content_owner_and_mode_and_leaves_no_temp(root_dir: Path) -> None:
    target = root_dir / "app.conf"
    res = run(put_file_script(str(target), mode=0o640, owner=NOBODY, group="nogroup"), "a = 1\n")
    assert res.returncode == 0, res.stderr
    assert target.read_text() == "a = 1\n" and owner(target) == (NOBODY, 0o640)
    res = run(put_file_script(str(target), mode=0o600, owner="root", group="root"), "a = 2\n")
    assert res.returncode == 0, res.stderr
    assert target.read_text() == "a = 2\n" and owner(target) == ("root", 0o600)
    assert sorted(p.name for p in root_dir.iterdir()) == ["app.conf"]


def test_write_in_another_users_directory_runs_as_that_user(user_dir: Path, victim: Path) -> None:
    # a symlink planted where the file goes is replaced, never followed; the write is nobody's own
    target = user_dir / "pg_hba.conf"
    target.symlink_to(victim)
    res = run(put_file_script(str(target), mode=0o644, owner=NOBODY, group="nogroup"), "host all\n")
    assert res.returncode == 0, res.stderr
    assert not target.is_symlink() and target.read_text() == "host all\n" and owner(target) == (NOBODY, 0o644)
    assert victim.read_text() == "root's secret\n" and owner(victim) == ("root", 0o600)


def test_write_as_the_owner_cannot_reach_a_root_file_through_the_directory(user_dir: Path, root_dir: Path,
                                                                           victim: Path) -> None:
    # the directory itself swapped for a symlink into root's: the owner's write there is refused by the kernel
    linked = user_dir / "conf.d"
    linked.symlink_to(root_dir)
    res = run(put_file_script(f"{linked}/victim", mode=0o644, owner=NOBODY, group="nogroup"), "owned\n")
    assert res.returncode != 0
    assert victim.read_text() == "root's secret\n" and owner(victim) == ("root", 0o600)


def test_roots_file_in_another_users_directory_is_refused_naming_the_directory(user_dir: Path) -> None:
    res = run(put_file_script(f"{user_dir}/server.key", mode=0o600, owner="root", group="root"), "key\n")
    assert res.returncode == REFUSED_EXIT
    assert f"{user_dir} can be changed by a user other than root" in res.stderr
    assert list(user_dir.iterdir()) == []


def test_write_into_a_missing_directory_fails_and_creates_nothing(root_dir: Path) -> None:
    res = run(put_file_script(f"{root_dir}/missing/x.conf", mode=0o644, owner="root", group="root"), "x\n")
    assert res.returncode != 0 and not (root_dir / "missing").exists()


def test_directory_planted_as_a_symlink_is_refused_and_its_target_unchanged(user_dir: Path, root_dir: Path) -> None:
    secret_dir = root_dir / "secret"
    secret_dir.mkdir(mode=0o700)
    (user_dir / "tls").symlink_to(secret_dir)
    res = run(ensure_dir_script(f"{user_dir}/tls", mode=0o750, owner=NOBODY, group="nogroup"))
    assert res.returncode == REFUSED_EXIT and "symbolic link" in res.stderr
    assert owner(secret_dir) == ("root", 0o700)


def test_old_install_d_followed_the_planted_symlink(user_dir: Path, root_dir: Path) -> None:
    """What the check above guards against: coreutils' install -d chowns a symlink's target."""
    secret_dir = root_dir / "secret"
    secret_dir.mkdir(mode=0o700)
    (user_dir / "tls").symlink_to(secret_dir)
    run(f"install -d -m 750 -o {NOBODY} -g nogroup {user_dir}/tls")
    assert owner(secret_dir) == (NOBODY, 0o750)


def test_directory_is_made_with_parents_and_set_again_when_it_exists(root_dir: Path, user_dir: Path) -> None:
    made = root_dir / "a" / "b" / "work"
    res = run(ensure_dir_script(str(made), mode=0o700, owner=NOBODY, group="nogroup"))
    assert res.returncode == 0, res.stderr
    assert owner(made) == (NOBODY, 0o700) and owner(made.parent) == ("root", 0o755)
    made.chmod(0o755)
    assert run(ensure_dir_script(str(made), mode=0o700, owner=NOBODY, group="nogroup")).returncode == 0
    assert owner(made) == (NOBODY, 0o700)
    # in the other user's directory, made as that user
    inner = user_dir / "run" / "log"
    res = run(ensure_dir_script(str(inner), mode=0o700, owner=NOBODY, group="nogroup"))
    assert res.returncode == 0, res.stderr
    assert owner(inner) == (NOBODY, 0o700) and owner(inner.parent)[0] == NOBODY


def test_directory_of_a_third_user_is_not_taken_over(root_dir: Path) -> None:
    theirs = root_dir / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 1, 1)  # daemon
    res = run(ensure_dir_script(str(theirs), mode=0o700, owner=NOBODY, group="nogroup"))
    assert res.returncode == REFUSED_EXIT and "belongs to" in res.stderr
    assert theirs.stat().st_uid == 1


def test_roots_directory_under_another_users_is_refused(user_dir: Path) -> None:
    res = run(ensure_dir_script(f"{user_dir}/d", mode=0o755, owner="root", group="root"))
    assert res.returncode == REFUSED_EXIT and not (user_dir / "d").exists()


def test_paths_that_are_not_absolute_files_are_a_programming_error() -> None:
    for bad in ("etc/x", "/etc/", "/etc/..", "/a\0b"):
        with pytest.raises(ValueError):
            put_file_script(bad, mode=0o644, owner="root", group="root")


@pytest.fixture
def group_dir(root_dir: Path) -> Path:
    """root's directory writable by a group (like Ubuntu's /var/log, root:syslog 0775)."""
    d = root_dir / "log"
    d.mkdir()
    os.chown(d, 0, pwd.getpwnam(NOBODY).pw_gid)
    d.chmod(0o775)
    return d


def test_directory_the_owner_cannot_make_is_made_by_root_without_following(group_dir: Path) -> None:
    # daemon may not write in the group's directory: root makes it, mode and owner exact
    made = group_dir / "pgbackrest"
    res = run(ensure_dir_script(str(made), mode=0o770, owner="daemon", group="daemon"))
    assert res.returncode == 0, res.stderr
    assert owner(made) == ("daemon", 0o770)
    made.chmod(0o755)  # existing: set again, as its owner
    assert run(ensure_dir_script(str(made), mode=0o770, owner="daemon", group="daemon")).returncode == 0
    assert owner(made) == ("daemon", 0o770)


def test_symlink_planted_by_the_group_is_refused(group_dir: Path, root_dir: Path) -> None:
    secret_dir = root_dir / "secret"
    secret_dir.mkdir(mode=0o700)
    (group_dir / "pgbackrest").symlink_to(secret_dir)
    res = run(ensure_dir_script(f"{group_dir}/pgbackrest", mode=0o770, owner="daemon", group="daemon"))
    assert res.returncode == REFUSED_EXIT and owner(secret_dir) == ("root", 0o700)


def test_root_does_not_make_a_directory_below_another_users(user_dir: Path) -> None:
    # the way to it is open to that user (it could be a symlink into root's): root makes nothing there
    (user_dir / "sub").mkdir()
    os.chown(user_dir / "sub", 0, 0)
    res = run(ensure_dir_script(f"{user_dir}/sub/d", mode=0o700, owner="daemon", group="daemon"))
    assert res.returncode == REFUSED_EXIT and not (user_dir / "sub" / "d").exists()


def test_host_put_text_runs_the_script_with_the_content_on_stdin_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from hcbpg.adapters.host import Host

    seen: dict = {}
    host = Host("server-postgres-1", "192.0.2.1", echo=lambda line: None)
    monkeypatch.setattr(host, "run", lambda cmd, **kw: seen.update(cmd=cmd, **kw))
    host.put_text("/etc/postgresql/15/main/pg_hba.conf", "hostssl all rails\n", mode=0o640, owner="postgres")
    assert seen["cmd"] == put_file_script("/etc/postgresql/15/main/pg_hba.conf", mode=0o640, owner="postgres",
                                          group="postgres")
    assert seen["stdin"] == "hostssl all rails\n" and "hostssl" not in seen["cmd"]
    assert seen["display"] == "write /etc/postgresql/15/main/pg_hba.conf (18 bytes, mode 0640, owner postgres:postgres)"
