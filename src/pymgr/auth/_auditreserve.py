"""Disk space kept beside the audit log, so that the records of running calls can always be written.

Rules:
- The reserve is a file beside the log (``audit.reserve``, mode 0600,
  never through a symlink) of ``size_bytes`` allocated blocks
  (``posix_fallocate``: real blocks, not a sparse file).
- When a record cannot be written for lack of space (ENOSPC, EDQUOT), the
  log empties the reserve (``give_back``) and writes again: the blocks it
  gave back hold the records of every call that was let run, because the
  Auditor lets a call run only while the records it owes fit in the reserve.
- An emptied reserve is filled again (``refill``) before the next call runs,
  once the filesystem has room for it twice over (the reserve, and as much
  again for ordinary records): the blocks it has just given back must not be
  enough to fill it again, or it would be refilled at once on a disk still
  full. While it cannot be, calls are refused before they run.
- Why a file and not preallocation past the log's end: Python has no
  ``fallocate(FALLOC_FL_KEEP_SIZE)``, and ``posix_fallocate`` on the log
  itself would grow it with NUL bytes that every reader of the log would see.
  The cost: between giving the blocks back and writing, another process
  filling the same filesystem could take them first (a window of one system
  call); keep the audit log on a filesystem of its own where that matters.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from pymgr._fsguard import open_private

__all__ = ["NO_SPACE", "SpaceReserve"]

#: The errors that mean "no room", which the reserve is for.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_ZEROS = bytes(64 * 1024)


class SpaceReserve:
    """``size_bytes`` of disk held in a file, given back when the audit log runs out of room.

    Args:
        path: the reserve file (on the log's filesystem: beside it).
        size_bytes: how much to hold.
    """

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        #: Whether the reserve holds its size now.
        self.full = False
        self._fd: int | None = None

    def open(self) -> None:
        """Open the file and fill it if there is room (``full`` says whether there was).

        Raises:
            OSError: the file cannot be opened, or cannot be filled for a reason other than space.
        """
        self.close()
        self._fd = open_private(self.path, _OPEN_FLAGS, 0o600)  # never through a link, ours, 0600
        if _allocated_bytes(self._fd) >= self.size_bytes:  # held since the last run
            self.full = True
        else:
            self.refill()

    def refill(self) -> bool:
        """Hold ``size_bytes`` again; False while there is no room for it.

        Raises:
            OSError: for anything but a lack of space (or the reserve is closed).
        """
        if self._fd is None:
            raise OSError(errno.EBADF, f"the audit space reserve {self.path} is not open")
        if shutil.disk_usage(self.path.parent).free < 2 * self.size_bytes - _allocated_bytes(self._fd):
            return False
        try:
            _allocate(self._fd, self.size_bytes)
        except OSError as exc:
            os.ftruncate(self._fd, 0)  # whatever part was allocated goes back too
            if exc.errno in NO_SPACE:
                return False
            raise
        self.full = True
        return True

    def give_back(self) -> bool:
        """Free the reserve's blocks for the log's records; False if it held nothing."""
        if not self.full or self._fd is None:
            return False
        os.ftruncate(self._fd, 0)
        self.full = False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.full = False


def _allocate(fd: int, size: int) -> None:
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(fd, 0, size)
        return
    # Windows and macOS have no posix_fallocate: written zeros hold the blocks as well.
    if os.fstat(fd).st_size >= size:
        return
    os.lseek(fd, 0, os.SEEK_SET)
    left = size
    while left > 0:
        left -= os.write(fd, _ZEROS[: min(left, len(_ZEROS))])


def _allocated_bytes(fd: int) -> int:
    """Bytes the file holds on disk (``st_blocks`` where the platform has it, else its size)."""
    st = os.fstat(fd)
    blocks = getattr(st, "st_blocks", None)
    return st.st_size if blocks is None else blocks * 512
