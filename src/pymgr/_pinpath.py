"""Holding a checked path open beneath its base, following no symlink: the daemon and the keeper share it.

A path parameter is checked (``core/pathparam.confine``) when a call is
validated; it is used later, by a command or a task run. Someone who can
write in the base could swap a directory for a symlink in between. ``pin``
closes that race: it opens the checked path again, one component at a time
from the base's descriptor, following no symlink (a symlink found now is a
swap, and refused), and the process gets ``/proc/self/fd/N``, its own copy
of that descriptor: whatever it opens through it is the checked file or
directory. Components that do not exist yet (a file to be created) are
looked up by the process itself. Without ``O_PATH`` and ``/proc`` (not
Linux) nothing can be pinned (``can_pin``).

Standard library only: the keeper imports this.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

__all__ = ["PROC_FDS", "PinnedPath", "can_pin", "inside", "pin"]

#: Where a process finds its own descriptors by number (Linux).
PROC_FDS = "/proc/self/fd"


def inside(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or below it (both absolute, normalized)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


@dataclass(frozen=True, slots=True)
class PinnedPath:
    """A checked path held open.

    ``fd`` is an ``O_PATH`` descriptor; ``rest`` the components after it that do not exist.
    """

    fd: int
    rest: str

    def argv_text(self) -> str:
        """How the process names it: through its own copy of ``fd`` (passed at the same number)."""
        return f"{PROC_FDS}/{self.fd}" + (f"/{self.rest}" if self.rest else "")


def can_pin() -> bool:
    """Whether this system can hold a path open for a process (``O_PATH`` and ``/proc/self/fd``)."""
    return hasattr(os, "O_PATH") and os.path.isdir(PROC_FDS)


def pin(base: str | os.PathLike[str], resolved: str) -> PinnedPath:
    """Open ``resolved`` (a checked, resolved path) beneath ``base``, following no symlink.

    The caller owns the descriptor (close-on-exec) and closes it.

    Raises:
        ValueError: a component is now a symbolic link, or the base itself moved.
        OSError: a component cannot be opened (permissions, I/O).
    """
    root = os.path.realpath(base)
    if not inside(root, resolved):  # the base itself was replaced since the check
        raise ValueError(f"changed after it was checked: it no longer lies inside {os.fspath(base)}")
    parts = [p for p in resolved[len(root) :].split("/") if p]
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            try:
                child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                return PinnedPath(fd, "/".join(parts[index:]))  # to be created: the process looks it up
            os.close(fd)
            fd = child
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                shown = "/".join(parts[: index + 1])
                raise ValueError(f"changed after it was checked: {shown!r} is now a symbolic link")
    except BaseException:
        os.close(fd)
        raise
    return PinnedPath(fd, "")
