"""The filesystem guards: private opens, private directories, trusted paths."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymgr._fsguard import (
    UnsafePathError,
    absolute,
    check_own_dir,
    check_trusted,
    ensure_private_dir,
    make_own_dir,
    open_private,
    refuse_link,
    tighten_file,
)

NOBODY = 65534


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- absolute


def test_absolute_keeps_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)
    assert absolute("link/audit.log") == tmp_path / "link" / "audit.log"
    assert absolute(tmp_path / "a" / ".." / "b") == tmp_path / "b"


# --- open_private


def test_open_private_creates_with_mode_whatever_the_umask(tmp_path: Path, wide_umask: None) -> None:
    fd = open_private(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    os.close(fd)
    assert _mode(tmp_path / "f") == 0o600


def test_open_private_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    path.chmod(0o666)
    os.close(open_private(path, os.O_RDWR))
    assert _mode(path) == 0o600


def test_open_private_gives_the_asked_mode(tmp_path: Path) -> None:
    os.close(open_private(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o640))
    assert _mode(tmp_path / "f") == 0o640


def test_open_private_refuses_a_symlink_and_leaves_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        open_private(tmp_path / "lock", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    assert victim.read_text() == "precious"


def test_open_private_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        open_private(tmp_path / "fifo", os.O_WRONLY | os.O_CREAT)


def test_open_private_refuses_a_hard_link_before_truncating(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    os.link(victim, tmp_path / "log")
    with pytest.raises(UnsafePathError, match="hard links"):
        open_private(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert victim.read_text() == "precious"


def test_open_private_truncates_after_the_checks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("old")
    fd = open_private(path, os.O_RDWR | os.O_TRUNC)
    try:
        assert os.get_blocking(fd)
    finally:
        os.close(fd)
    assert path.read_text() == ""


@pytest.mark.root
def test_open_private_refuses_a_file_of_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    path = tmp_path / "f"
    path.write_text("theirs")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
        open_private(path, os.O_RDWR | os.O_TRUNC)
    assert path.read_text() == "theirs"


def test_refuse_link(tmp_path: Path) -> None:
    refuse_link(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    refuse_link(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        refuse_link(tmp_path / "link")
    (tmp_path / "dir").mkdir()
    with pytest.raises(UnsafePathError, match="not a regular file"):
        refuse_link(tmp_path / "dir")


# --- ensure_private_dir


def test_ensure_private_dir_creates_parents_with_mode(tmp_path: Path, wide_umask: None) -> None:
    assert ensure_private_dir(tmp_path / "a" / "b") is None
    assert _mode(tmp_path / "a") == 0o700
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_ensure_private_dir_tightens_and_says_so(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir(mode=0o755)
    (tmp_path / "d").chmod(0o755)
    assert ensure_private_dir(tmp_path / "d") == 0o755
    assert _mode(tmp_path / "d") == 0o700
    assert ensure_private_dir(tmp_path / "d") is None


def test_ensure_private_dir_keeps_a_narrower_mode(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d").chmod(0o500)
    assert ensure_private_dir(tmp_path / "d", 0o750) is None
    assert _mode(tmp_path / "d") == 0o500


def test_ensure_private_dir_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        ensure_private_dir(tmp_path / "state")


def test_ensure_private_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(UnsafePathError, match="not a directory"):
        ensure_private_dir(tmp_path / "state")


@pytest.mark.root
def test_ensure_private_dir_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    (tmp_path / "state").mkdir()
    os.chown(tmp_path / "state", NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}.*chown"):
        ensure_private_dir(tmp_path / "state")


# --- check_trusted


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc").chmod(0o755)
    conf = tmp_path / "etc" / "pymgr.toml"
    conf.write_text("")
    conf.chmod(0o644)
    return conf


def test_check_trusted_accepts_a_private_tree(tmp_path: Path) -> None:
    check_trusted(_tree(tmp_path))


def test_check_trusted_refuses_a_world_writable_file(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    conf.chmod(0o666)
    with pytest.raises(UnsafePathError, match="writable by every user; run chmod o-w"):
        check_trusted(conf)


def test_check_trusted_refuses_a_group_writable_directory(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    if os.geteuid() == 0:
        os.chown(tmp_path / "etc", -1, NOBODY)
    if os.stat(tmp_path / "etc").st_gid == 0:
        pytest.skip("group root is trusted and the directory cannot get another group here")
    (tmp_path / "etc").chmod(0o775)
    with pytest.raises(UnsafePathError, match=r"etc \(on the way to .*\) is writable by group"):
        check_trusted(conf)


def test_check_trusted_refuses_a_world_writable_directory_without_sticky_bit(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    (tmp_path / "etc").chmod(0o777)
    with pytest.raises(UnsafePathError, match="writable by every user"):
        check_trusted(conf)


def test_check_trusted_accepts_our_file_in_a_sticky_directory(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    (tmp_path / "etc").chmod(0o1777)
    check_trusted(conf)


def test_check_trusted_follows_links_into_their_directories(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "open" / "real.toml").write_text("")
    (tmp_path / "etc" / "link.toml").symlink_to("../open/real.toml")
    check_trusted(conf)
    with pytest.raises(UnsafePathError, match="open .*writable by every user"):
        check_trusted(tmp_path / "etc" / "link.toml")


def test_check_trusted_refuses_a_link_loop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(UnsafePathError, match="too many symbolic links"):
        check_trusted(tmp_path / "a")


def test_check_trusted_with_dotdot(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    check_trusted(tmp_path / "etc" / ".." / "etc" / conf.name)


@pytest.mark.root
def test_check_trusted_refuses_a_file_of_another_user_even_in_a_sticky_directory(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    conf = _tree(tmp_path)
    (tmp_path / "etc").chmod(0o1777)
    os.chown(conf, NOBODY, NOBODY)
    with pytest.raises(UnsafePathError, match=f"owned by uid {NOBODY}"):
        check_trusted(conf)


def test_check_trusted_accepts_given_owners(tmp_path: Path) -> None:
    conf = _tree(tmp_path)
    with pytest.raises(UnsafePathError, match="owned by uid"):
        check_trusted(conf, owner_uids={12345})


# --- check_own_dir, make_own_dir


def test_check_own_dir_refuses_a_sticky_world_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    check_trusted(shared)  # fine as an ancestor ...
    with pytest.raises(
        UnsafePathError, match=r"shared is writable by every user \(sticky or not\): anyone could"
    ):
        check_own_dir(shared)  # ... not as the directory a name is created in
    shared.chmod(0o755)
    check_own_dir(shared)


def test_check_own_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(UnsafePathError, match=r"/f is not a directory; remove it"):
        check_own_dir(tmp_path / "f")


def test_make_own_dir_creates_with_mode_and_leaves_existing_ones(tmp_path: Path, wide_umask: None) -> None:
    tmp_path.chmod(0o750)
    make_own_dir(tmp_path / "a" / "b", 0o755)
    assert (_mode(tmp_path / "a"), _mode(tmp_path / "a" / "b"), _mode(tmp_path)) == (0o755, 0o755, 0o750)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_make_own_dir_creates_nothing_below_an_untrusted_directory(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(
        UnsafePathError, match=rf"^{tmp_path}/theirs is owned by uid {NOBODY}, who could change"
    ):
        make_own_dir(theirs / "etc" / "systemd")
    assert not (theirs / "etc").exists()


# --- tighten_file


def test_tighten_file_narrows_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    path.write_text("")
    path.chmod(0o644)
    assert tighten_file(path) == 0o644
    assert _mode(path) == 0o600
    assert tighten_file(path) is None


def test_tighten_file_never_follows_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("")
    victim.chmod(0o644)
    (tmp_path / "link").symlink_to(victim)
    assert tighten_file(tmp_path / "link") is None
    assert tighten_file(tmp_path / "missing") is None
    assert _mode(victim) == 0o644


def test_unsafe_path_error_is_an_oserror(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path / "x")
    with pytest.raises(OSError) as caught:
        open_private(tmp_path / "link", os.O_WRONLY | os.O_CREAT)
    assert caught.value.strerror == str(caught.value)
    assert not (tmp_path / "x").exists()
