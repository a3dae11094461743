"""The classic daemon's pidfile: a locked file that says which process is the daemon.

Rules:
- The daemon holds an exclusive POSIX record lock (``fcntl.lockf``) on the
  pidfile for its whole life. "Running" means "the lock is held"; the pid
  written inside says which process holds it. The kernel drops the lock
  when the process dies however it dies, so a pidfile left by a crash is
  recognised as stale without guessing from pids, which get reused.
- POSIX locks, not ``flock``: a process the daemon forks (a task keeper)
  does not inherit a POSIX lock, so it cannot keep the daemon "running"
  after the daemon is gone. The fd is close-on-exec for the same reason.
- A stale pidfile's pid is looked at only to explain it (dead, or now
  another program), never to decide anything.
- The daemon removes its pidfile on a clean exit (while still holding the
  lock, so a new daemon never sees it half-gone).
"""

from __future__ import annotations

import enum
import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ModuleNotFoundError:  # pragma: no cover - Windows: `pymgr service` is the way there
    fcntl = None  # type: ignore[assignment]

import psutil

#: How long taking the lock retries before it reports "held": a `status`
#: probe holds a shared lock for microseconds, and must not make a daemon
#: that starts at that instant believe another one runs.
LOCK_RETRY_S = 0.5


class PidState(enum.Enum):
    #: The lock is held: a daemon runs.
    RUNNING = "running"
    #: The file exists but nobody holds its lock: the daemon died.
    STALE = "stale"
    #: No pidfile.
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class PidStatus:
    state: PidState
    #: The pid written in the file, if it holds one.
    pid: int | None
    #: For a stale file, what became of that pid.
    detail: str = ""


class PidFileLocked(Exception):
    """Another process holds the pidfile's lock: a daemon already runs."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(f"pidfile {path} is locked by pid {pid if pid is not None else '?'}: pymgr is already running")
        self.path = path
        self.pid = pid


def _require_fcntl() -> None:
    if fcntl is None:
        raise RuntimeError("pidfiles need fcntl (Unix); on Windows run pymgr as a service: pymgr service install")


def read_pid(path: Path) -> int | None:
    """The pid in ``path``, or None if it is missing, empty or not a number."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


class PidFile:
    """Context manager: lock ``path``, write our pid; on exit remove it and unlock.

    python-daemon's ``DaemonContext`` enters it after detaching, so the lock
    belongs to the daemon process itself.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> PidFile:
        """Raises: PidFileLocked, OSError (the file cannot be created)."""
        _require_fcntl()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + LOCK_RETRY_S
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                    os.close(fd)
                    if exc.errno in (errno.EACCES, errno.EAGAIN):
                        raise PidFileLocked(self.path, read_pid(self.path)) from None
                    raise
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        if read_pid(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock
        self._fd = None


def probe(path: Path) -> PidStatus:
    """Whether a daemon holds ``path``'s lock, without disturbing it."""
    _require_fcntl()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return PidStatus(PidState.ABSENT, None)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return PidStatus(PidState.RUNNING, read_pid(path))
            raise
    finally:
        os.close(fd)  # also drops our shared lock at once
    pid = read_pid(path)
    return PidStatus(PidState.STALE, pid, _explain(pid))


def _explain(pid: int | None) -> str:
    if pid is None:
        return "it holds no pid"
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return f"pid {pid} is not running"
    except psutil.AccessDenied:
        return f"pid {pid} is now a process we may not inspect"
    if "pymgr" in cmdline:
        return f"pid {pid} is a pymgr process that does not hold the lock"
    return f"pid {pid} is now another program ({cmdline[:80] or '?'})"


def remove_stale(path: Path) -> PidStatus:
    """Remove ``path`` if it is stale; returns what was found."""
    status = probe(path)
    if status.state is PidState.STALE:
        path.unlink(missing_ok=True)
    return status
