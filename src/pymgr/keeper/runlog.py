"""Writing one run's output to its log files: size cap, rotation, optional timestamps.

Rules:
- Files live in the logs directory and are named from the run's integer id
  only: ``<id>.log`` is the current file, ``<id>.log.<offset>`` a rotated
  one, where ``<offset>`` is the logical offset of its first byte (bytes
  the run wrote before it, over all files). So a reader maps any logical
  offset to a file and a position without asking the writer, and the
  current file starts where the newest rotated one ends.
- No file grows past ``max_bytes``: a write that would is split, the
  current file is renamed to ``<id>.log.<offset>`` and a new one started.
  Only the ``keep`` newest rotated files stay; older ones are deleted.
  Rotated files never change once renamed.
- With ``timestamps``, each line starts with its UTC arrival time
  (``2024-05-01T12:00:00.123Z``, the time the chunk holding it was read);
  the logical offsets count those bytes too: they are the file's bytes.
- A file is created when the first byte for it arrives, not before: a run
  that writes nothing has no file (readers treat a missing file as empty),
  and creating a file — over a millisecond on a busy disk, more than the
  spawn itself — stays off the path of a burst of starts.
- Files are created with ``O_NOFOLLOW`` (a symlink planted in the logs
  directory is never followed) and mode 0600: run output may hold anything.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections import deque
from collections.abc import Callable

#: Flags of a new log file: never follow a symlink planted in the log dir.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags of a log file written on after a keeper change: append to what is there (read: its last byte).
_RESUME_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC

#: Mode of log files: the daemon's group may read them, nobody else.
LOG_MODE = 0o600


def log_name(task_id: int) -> str:
    """The current log file's name of a run."""
    return f"{int(task_id)}.log"


def rotated_name(task_id: int, offset: int) -> str:
    """The name of a rotated log file whose first byte is at logical ``offset``."""
    return f"{int(task_id)}.log.{int(offset)}"


def _stamp() -> bytes:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + b".%03dZ " % (
        int(now * 1000) % 1000
    )


class RunLog:
    """The log of one run, written by the keeper as its output arrives."""

    def __init__(self, directory: str, task_id: int, *, max_bytes: int, keep: int, timestamps: bool) -> None:
        """
        Raises:
            ValueError: ``max_bytes`` < 1 or ``keep`` < 1.
        """
        if max_bytes < 1 or keep < 1:
            raise ValueError(f"max_bytes and keep must be >= 1, not {max_bytes} and {keep}")
        self.directory = directory
        self.task_id = task_id
        self.max_bytes = max_bytes
        self.keep = keep
        self.timestamps = timestamps
        self.path = os.path.join(directory, log_name(task_id))
        #: Logical offset of the current file's first byte.
        self.base = 0
        #: Bytes in the current file.
        self.size = 0
        self._rotated: deque[int] = deque()
        self._at_line_start = True
        self._fd: int | None = None
        self._closed = False

    @classmethod
    def resume(
        cls,
        directory: str,
        task_id: int,
        *,
        max_bytes: int,
        keep: int,
        timestamps: bool,
        listdir: Callable[[str], list[str]] = os.listdir,
    ) -> RunLog:
        """The log of a run another keeper wrote until it died: go on after its last byte.

        The files on disk say where: the rotated ones give the current
        file's logical offset, the current file's size is what it holds.

        Args:
            listdir: lists the directory; a keeper adopting many runs at once
                passes one that lists it once for all of them (a dead
                keeper's files do not change until their run is resumed).

        Raises:
            ValueError: as the constructor.
        """
        log = cls(directory, task_id, max_bytes=max_bytes, keep=keep, timestamps=timestamps)
        offsets = _rotated_offsets(directory, task_id, listdir)
        newest = None
        if offsets:
            log._rotated.extend(offsets[-keep:])
            for old in offsets[:-keep]:  # past keep: the dead keeper was about to delete them
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, rotated_name(task_id, old)))
            newest = os.path.join(directory, rotated_name(task_id, offsets[-1]))
            log.base = offsets[-1] + os.stat(newest, follow_symlinks=False).st_size
        try:
            log._fd = os.open(log.path, _RESUME_FLAGS, LOG_MODE)
        except FileNotFoundError:
            return log  # the directory is gone: write() reports it
        log.size = os.fstat(log._fd).st_size
        if log.size:
            log._at_line_start = os.pread(log._fd, 1, log.size - 1) == b"\n"
        elif newest is not None:  # the current file was just started: the line may have begun before
            log._at_line_start = _ends_a_line(newest)
        return log

    @property
    def end(self) -> int:
        """The logical offset just past the last byte written."""
        return self.base + self.size

    def write(self, data: bytes) -> None:
        """Append output, rotating as needed.

        Raises:
            OSError: the disk refused the write (full, I/O error); the
                caller decides whether to drop the output.
        """
        if not data or self._closed:
            return
        if self._fd is None:
            self._fd = os.open(self.path, _CREATE_FLAGS, LOG_MODE)
        if self.timestamps:
            data = self._stamped(data)
        while data:
            room = self.max_bytes - self.size
            if room <= 0:
                self._rotate()
                continue
            part, data = data[:room], data[room:]
            written = os.write(self._fd, part)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)
            self.size += written
            if written < len(part):  # short write (disk nearly full): try the rest
                data = part[written:] + data

    def _stamped(self, data: bytes) -> bytes:
        stamp = _stamp()
        ends_line = data.endswith(b"\n")
        body = data[:-1] if ends_line else data
        out = (stamp if self._at_line_start else b"") + body.replace(b"\n", b"\n" + stamp)
        self._at_line_start = ends_line
        return out + b"\n" if ends_line else out

    def _rotate(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        os.rename(self.path, os.path.join(self.directory, rotated_name(self.task_id, self.base)))
        self._rotated.append(self.base)
        self.base += self.size
        self.size = 0
        self._fd = os.open(self.path, _CREATE_FLAGS, LOG_MODE)
        while len(self._rotated) > self.keep:
            oldest = self._rotated.popleft()
            try:
                os.unlink(os.path.join(self.directory, rotated_name(self.task_id, oldest)))
            except FileNotFoundError:
                pass  # removed by retention already

    def close(self) -> None:
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _rotated_offsets(directory: str, task_id: int, listdir: Callable[[str], list[str]]) -> list[int]:
    """The logical offsets of a run's rotated files on disk, oldest first."""
    prefix = rotated_name(task_id, 0)[:-1]
    try:
        names = listdir(directory)
    except FileNotFoundError:
        names = []  # the directory is gone: write() reports it
    tails = (name[len(prefix) :] for name in names if name.startswith(prefix))
    return sorted(int(tail) for tail in tails if tail.isascii() and tail.isdigit())


def _ends_a_line(path: str) -> bool:
    """The file is empty or ends with a newline (unreadable: True, a new stamp is the safe guess)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        size = os.fstat(fd).st_size
        return size == 0 or os.pread(fd, 1, size - 1) == b"\n"
    except OSError:
        return True
    finally:
        os.close(fd)
