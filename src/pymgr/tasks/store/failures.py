"""What a failed SQLite statement becomes: ``Unavailable`` naming the file, SQLite's error and the OS's.

Rules:
- A failure of the disk (read-only, full, I/O error) is ``Unavailable``:
  the message names the file, what could not be done, SQLite's error name
  and, found by trying a write in the directory, the OS errno.
- A broken constraint is a bug, not the disk: the manager checks keys
  before adding, so a clash reaching the store is ``PymgrInternalError``.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from pymgr.errors import PymgrError, PymgrInternalError, Unavailable


def os_reason(directory: Path) -> str:
    """Why the OS refuses writes in ``directory``, by trying one: "; errno 30 (EROFS): ..." or ""."""
    probe = directory / f".pymgr-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return f"; errno {exc.errno} ({errno.errorcode.get(exc.errno or 0, '?')}): {exc.strerror}"
    return ""


def failure(path: Path, what: str, exc: sqlite3.Error) -> PymgrError:
    """The error to raise when ``what`` failed on the store at ``path`` with ``exc``."""
    if isinstance(exc, sqlite3.IntegrityError):
        return PymgrInternalError(f"task store {path}: {what}: {exc}")
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return Unavailable(
        f"task store {path}: cannot {what}: {exc} ({name}){os_reason(path.parent)}; nothing was changed",
        details={"path": str(path), "sqlite_error": name},
    )
