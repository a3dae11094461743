"""An audit file: whole JSON lines appended, rotated by size, never a partial line left behind.

Rules:
- The file is opened append-only, mode 0600, never through a symlink, and
  rotated by size (``audit.log`` -> ``audit.log.1`` -> ...). Writes are
  unbuffered ``os.write`` calls: when one returns, the line is in the kernel.
- A line is written whole or not at all. A short write (the filesystem
  filled up mid-line) is undone at once: the file is cut back to where the
  line began (``ftruncate``; the daemon is the file's only writer), then the
  line is written once more, which either succeeds or tells why it cannot
  (short again is taken as ENOSPC: a full tmpfs answers so, not with an error).
  Cutting back was chosen over "start the next record on a fresh line":
  readers then never meet a fragment. Only if the cut itself fails does the
  next line start on a fresh line, leaving the fragment on a line of its own.
- With a ``SpaceReserve``, a write that finds no room empties the reserve and
  tries again (``_auditreserve.py`` says why that always fits).
- A failed write raises; the file is closed and the next write reopens it.
  Syslog is a copy, best effort; the file is the record.

Why not ``logging.handlers.RotatingFileHandler``: it swallows write errors
(``handleError`` prints them to stderr), which is exactly what an audit log
must not do; and its per-record locking and formatting cost more than the
whole write here.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from pymgr._fsguard import open_private
from pymgr.auth._auditreserve import NO_SPACE, SpaceReserve

__all__ = ["AuditLog", "syslog_handler"]

log = logging.getLogger("pymgr.audit")

_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


class AuditLog:
    """One audit file (and an optional syslog copy).

    Args:
        path: the log file; its directory must exist.
        max_bytes: rotate before a write would make the file larger than this.
        backups: rotated files kept (``path.1`` is the newest).
        syslog: a handler that gets a copy of every line, or None.
        reserve: disk space to fall back on when the filesystem is full, or None.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        backups: int,
        syslog: logging.Handler | None = None,
        reserve: SpaceReserve | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.reserve = reserve
        self._fd: int | None = None
        self._size = 0
        #: A partial line could not be cut back: the next line starts on a fresh line.
        self._torn = False
        self._syslog = _syslog_logger(syslog) if syslog is not None else None

    def open(self) -> None:
        """Open (or reopen) the file.

        Raises:
            OSError: it cannot be opened for appending.
        """
        self.close()
        fd = open_private(
            self.path, _OPEN_FLAGS, 0o600
        )  # never through a link, ours, 0600 whatever the umask
        self._fd = fd
        self._size = os.fstat(fd).st_size

    def write_line(self, line: bytes) -> None:
        """Append one line whole (rotating first if needed), or nothing of it.

        Raises:
            OSError: the line could not be written; the file is closed and
                the next write reopens it.
        """
        try:
            try:
                self._append(line)
            except OSError as exc:
                if exc.errno not in NO_SPACE or self.reserve is None or not self.reserve.give_back():
                    raise
                log.error(
                    "audit log %s: no space left; the space reserve %s was given back for the records "
                    "of running calls, and no new call runs until it can be held again",
                    self.path,
                    self.reserve.path,
                )
                self._append(line)
        except OSError:
            self.close()
            raise
        if self._syslog is not None:
            self._syslog.info(line.decode().rstrip("\n"))

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            self.open()
        if self._torn:
            line = b"\n" + line
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        fd: int = self._fd  # type: ignore[assignment]
        written = os.write(fd, line)
        if written != len(line):
            self._cut_back(fd, written)
            if self._torn and line[:1] != b"\n":
                line = b"\n" + line
            written = os.write(fd, line)  # raises with the reason (ENOSPC, EFBIG ...), or it fits now
            if written != len(line):  # twice: the filesystem has room for a part only (tmpfs says no more)
                self._cut_back(fd, written)
                raise OSError(
                    errno.ENOSPC, f"no room for a whole line in {self.path}: {written} of {len(line)} bytes"
                )
        self._size += written
        self._torn = False

    def _cut_back(self, fd: int, written: int) -> None:
        """Remove the ``written`` bytes of a line that did not fit."""
        try:
            end = os.fstat(fd).st_size
            os.ftruncate(fd, end - written)
            self._size = end - written
        except OSError as exc:
            self._torn = True
            log.error(
                "audit log %s: a partial line (%d bytes) could not be removed (%s); the next record "
                "starts on a new line",
                self.path,
                written,
                exc.strerror or exc,
            )

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.backups:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.open()

    def close(self) -> None:
        """Close the file (the next write reopens it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def shutdown(self) -> None:
        """Close the file, the reserve and the syslog connection for good."""
        self.close()
        if self.reserve is not None:
            self.reserve.close()
        if self._syslog is not None:
            for handler in self._syslog.handlers:
                handler.close()
            self._syslog.handlers = []
            self._syslog = None


def _syslog_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger("pymgr.audit.syslog")
    logger.propagate = False  # the daemon's own log must not get every audit line twice
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger


def syslog_handler(address: str, facility: str) -> logging.Handler:
    """A handler that sends lines to the syslog socket at ``address``.

    Raises:
        OSError: nothing listens there.
    """
    # Imported here: logging.handlers (and the socket/queue/pickle modules it pulls in) cost the
    # idle daemon 0.6 MiB of RSS, for the few installs that send the audit to syslog.
    from logging.handlers import SysLogHandler

    handler = SysLogHandler(address=address, facility=facility)
    handler.ident = "pymgr-audit: "
    return handler
