"""Guards for the files and directories a root daemon opens, creates or trusts.

Rules:
- A file the daemon writes is opened with ``O_NOFOLLOW | O_CLOEXEC`` and
  must be a regular file with one link, owned by the daemon's user; its mode
  is set on the open descriptor (``fchmod``), so the umask cannot widen it.
  ``O_TRUNC`` is applied only after those checks: a planted link or FIFO
  must not be truncated or block the open.
- A private directory is created with the asked mode, must be owned by the
  daemon's user and is never a symlink; a directory we own that is wider
  than asked is tightened, and the caller is told so it can log it.
- A path is *trusted* (what ``sudo`` asks of ``/etc/sudoers``) when it and
  every directory on the way to it, following each symlink through its
  target, is owned by root or the daemon's user and writable by nobody else.
  A world-writable directory with the sticky bit (``/tmp``) is accepted as an
  ancestor when root or the daemon's user owns it: the sticky bit stops
  others from renaming or deleting what the owner check below it accepted.
- Paths are made absolute lexically (``os.path.abspath``), never by
  resolving links: resolving first would follow a planted link before
  ``O_NOFOLLOW`` or the trust check could see it.

The standard library offers the primitives but none of these checks (sudo
and OpenSSH's ``safe_path`` write them by hand as well), hence this module.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "UnsafePathError",
    "absolute",
    "check_own_dir",
    "check_trusted",
    "ensure_private_dir",
    "make_own_dir",
    "open_private",
    "refuse_link",
    "tighten_file",
    "trusted_uids",
]

# Linux's own bound on links followed in one lookup (MAXSYMLINKS).
_MAX_LINKS = 40


class UnsafePathError(OSError):
    """A path the daemon would open or trust is unsafe; the message names it and the fix.

    An ``OSError``: every caller that handles "cannot open" handles "refused to open" too.

    Attributes:
        path: the file or directory at fault.
        reason: what is wrong with it.
        fix: the command or change that makes it acceptable.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str, fix: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path} {reason}; {fix}")
        self.strerror = str(self.args[0])  # what callers print for an OSError


def absolute(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the working directory, without resolving any link."""
    return Path(os.path.abspath(os.fspath(path)))


def trusted_uids() -> frozenset[int]:
    """The owners a trusted path may have: root and the daemon's effective user."""
    return frozenset({0, os.geteuid()})


def refuse_link(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` when it exists and is not a regular file (a symlink, a FIFO, a directory).

    For files a library opens itself (SQLite's database and its ``-wal``/``-shm``):
    checked before the open, in a directory only the daemon can write.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            path, "is a symbolic link", f"remove it (rm {path}); pymgr never writes through a link"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(path, "is not a regular file", f"remove it (rm -r {path})")


def tighten_file(path: str | os.PathLike[str], mode: int = 0o600) -> int | None:
    """Narrow an existing file of ours to ``mode``; its previous mode when it was wider, else ``None``.

    A missing file, a symlink, a socket or a FIFO is left alone (and never
    followed): a file the daemon opens later gets its own checks then.
    Files of other users are left alone too; opening them is refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        old = stat.S_IMODE(st.st_mode)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or not old & ~mode & 0o7777:
            return None
        os.fchmod(fd, old & mode)
        return old
    finally:
        os.close(fd)


def open_private(
    path: str | os.PathLike[str], flags: int, mode: int = 0o600, *, group: int | None = None
) -> int:
    """Open a file the daemon owns; returns the descriptor (the caller closes it).

    ``flags`` are ``os.open`` flags (``O_NOFOLLOW | O_CLOEXEC`` are added).
    The file gets exactly ``mode`` (and the group ``group`` when given).

    Raises:
        UnsafePathError: a symlink, not a regular file, hard-linked, or owned by another user.
        OSError: the open itself failed (missing directory, permission).
    """
    truncate = bool(flags & os.O_TRUNC)
    open_flags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, open_flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                path, "is a symbolic link", f"remove it (rm {path}); pymgr never writes through a link"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader, a socket or a device with none behind it
            raise UnsafePathError(path, "is not a regular file", f"remove it (rm {path})") from None
        raise
    try:
        _check_own_file(fd, path)
        if group is not None:
            os.fchown(fd, -1, group)
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
        if truncate:
            os.ftruncate(fd, 0)
        if not flags & os.O_NONBLOCK:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_own_file(fd: int, path: str | os.PathLike[str]) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(path, "is not a regular file", f"remove it (rm -r {path})")
    if st.st_nlink > 1:
        raise UnsafePathError(
            path, f"has {st.st_nlink} hard links: another name may point at it", f"remove it (rm {path})"
        )
    if st.st_uid != os.geteuid():
        raise UnsafePathError(
            path,
            f"is owned by uid {st.st_uid}, not by the daemon's uid {os.geteuid()}",
            f"remove it, or run chown {os.geteuid()} {path}",
        )


def ensure_private_dir(
    path: str | os.PathLike[str], mode: int = 0o700, *, group: int | None = None
) -> int | None:
    """Create ``path`` (and missing parents) with ``mode``, or check and tighten it.

    Returns the directory's previous mode when it was wider than ``mode`` and
    was tightened (the caller logs that), else ``None``.

    Raises:
        UnsafePathError: a symlink, not a directory, or owned by another user.
    """
    path = absolute(path)
    _make_dirs(path, mode)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                path, "is not a directory (or is a symbolic link)", f"remove it (rm {path})"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafePathError(
                path,
                f"is owned by uid {st.st_uid}, not by the daemon's uid {os.geteuid()}",
                f"run chown {os.geteuid()} {path}, or give the daemon a directory of its own",
            )
        if group is not None and st.st_gid != group:
            os.fchown(fd, -1, group)
        old = stat.S_IMODE(st.st_mode)
        if old & ~mode & 0o7777:
            os.fchmod(fd, mode)
            return old
        return None
    finally:
        os.close(fd)


def _make_dirs(path: Path, mode: int) -> None:
    missing = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            pass  # made meanwhile by someone else: the checks below decide about it


def check_trusted(path: str | os.PathLike[str], *, owner_uids: Iterable[int] | None = None) -> None:
    """Refuse ``path`` unless it and every directory above it are trusted (see the module rules).

    ``owner_uids`` defaults to :func:`trusted_uids`. Symlinks on the way are
    followed, and the directories their targets pass through are checked too.
    On Windows this checks nothing: access there is ACLs, not modes.

    Raises:
        UnsafePathError: names the first untrusted component and the fix.
        OSError: a component is missing or unreadable.
    """
    if sys.platform == "win32":
        return  # ACLs, not modes and owners: the service's installer sets them
    owners = trusted_uids() if owner_uids is None else frozenset(owner_uids)
    target = absolute(path)
    pending = list(reversed(target.parts[1:]))
    current = "/"
    _check_component(current, os.lstat(current), owners, target)
    links = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        entry = os.path.join(current, name)
        st = os.lstat(entry)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise UnsafePathError(
                    target, "goes through too many symbolic links", "point it at a real path"
                )
            link = os.readlink(entry)
            if link.startswith("/"):
                current = "/"
            pending.extend(reversed(Path(link).parts[1:] if link.startswith("/") else Path(link).parts))
            continue
        _check_component(entry, st, owners, target)
        current = entry


def _check_component(entry: str, st: os.stat_result, owners: frozenset[int], target: Path) -> None:
    where = entry if entry == os.fspath(target) else f"{entry} (on the way to {target})"
    if st.st_uid not in owners:
        raise UnsafePathError(
            where,
            f"is owned by uid {st.st_uid}, who could change what pymgr reads there",
            f"run chown root {entry} (only root or the daemon's user may own it)",
        )
    is_dir = stat.S_ISDIR(st.st_mode)
    if is_dir and st.st_mode & stat.S_ISVTX:
        return  # sticky: others may add names, but not replace ours; every name below is owner-checked
    if st.st_mode & stat.S_IWOTH:
        raise UnsafePathError(where, "is writable by every user", f"run chmod o-w {entry}")
    if st.st_mode & stat.S_IWGRP and st.st_gid != 0:
        raise UnsafePathError(
            where, f"is writable by group {st.st_gid}", f"run chmod g-w {entry} (or chgrp root {entry})"
        )


def check_own_dir(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` unless it is a trusted directory in which nobody else can create a name.

    For a directory the daemon writes a file into by name (a pidfile, unit
    files): unlike an ancestor, it may not be sticky and writable by others,
    who could plant that name (a link, a file of theirs) before the daemon does.

    Raises:
        UnsafePathError: an untrusted component, not a directory, or writable by every user.
        OSError: a component is missing or unreadable.
    """
    check_trusted(path)
    st = os.stat(path)  # every component was checked: nobody else can swap what this follows
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(path, "is not a directory", f"remove it (rm {path}) or pick another directory")
    if st.st_mode & stat.S_IWOTH:
        raise UnsafePathError(
            path,
            "is writable by every user (sticky or not): anyone could create a name there first",
            "give pymgr a directory of its own (e.g. /run/pymgr), or run chmod o-w on it",
        )


def make_own_dir(path: str | os.PathLike[str], mode: int = 0o755) -> None:
    """Create ``path`` and its missing parents with ``mode``, then :func:`check_own_dir` it.

    Nothing is created below an untrusted directory: the deepest existing one
    is checked first. Existing directories are left as they are (never
    tightened: an admin's ``/etc/systemd/system`` is not ours to change).

    Raises:
        UnsafePathError: as :func:`check_trusted` and :func:`check_own_dir`.
        OSError: a directory cannot be created.
    """
    path = absolute(path)
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    check_trusted(existing)
    _make_dirs(path, mode)
    check_own_dir(path)
