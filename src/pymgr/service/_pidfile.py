"""The classic daemon's pidfile: a locked file that says which process is the daemon.

Rules:
- The daemon holds an exclusive POSIX record lock (``fcntl.lockf``) on the
  pidfile for its whole life. "Running" means "a write lock is held"; the
  kernel names its holder (``F_GETLK``), and that pid, never the text in the
  file, is the one signalled. The kernel drops the lock when the process
  dies however it dies, so a file left by a crash is recognised as stale
  without guessing from pids, which get reused.
- The holder must be pymgr: the pid written in the file is the holder's own,
  and its command line is pymgr's. A holder that is not is reported by pid
  and command, never signalled. The psutil handle kept for signalling also
  holds its start time, so a pid reused meanwhile is not signalled either.
- The file is trusted only where no one else can change it: a regular file
  (opened with ``O_NOFOLLOW``, one link) owned by root or the daemon's user,
  mode 0600, in a directory that they own and nobody else can write
  (``_fsguard.check_own_dir``, as sudo checks its config). Only they can open
  it, so only they can lock it or write the pid in it.
- A pidfile that others hold read locks on (left world-readable by an older
  pymgr) is not a daemon: after ``LOCK_RETRY_S`` a new file, locked first,
  is renamed over it and the readers keep an orphan. Two starts racing
  through that takeover at the same instant could both succeed; the
  second daemon then fails to bind the API socket.
- POSIX locks, not ``flock``: a process the daemon forks (a task keeper)
  does not inherit a POSIX lock, so it cannot keep the daemon "running"
  after the daemon is gone. The fd is close-on-exec for the same reason.
- The daemon removes its pidfile on a clean exit (while still holding the
  lock, so a new daemon never sees it half-gone), and only if the name still
  leads to the file it locked.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ModuleNotFoundError:  # pragma: no cover - Windows: `pymgr service` is the way there
    fcntl = None  # type: ignore[assignment]

import psutil

from pymgr._fsguard import UnsafePathError, check_own_dir, make_own_dir, trusted_uids

#: How long taking the lock retries before it reports "held": a daemon that
#: is exiting releases it within this time, and an older pymgr's `status`
#: probe holds a read lock for microseconds.
LOCK_RETRY_S = 0.5
#: Only the owner may open the pidfile, so nobody else can hold a lock on it.
PIDFILE_MODE = 0o600
#: ``struct flock`` (fcntl(2)) in the C compiler's layout: l_type, l_whence,
#: l_start, l_len, l_pid. By hand because the standard library's ``lockf``
#: only sets locks; F_GETLK is the portable way to learn a lock's holder.
_FLOCK = "hhqqi"


class PidState(enum.Enum):
    #: A pymgr daemon holds the write lock.
    RUNNING = "running"
    #: A write lock is held by a process that is not (or cannot be shown to be) the pymgr daemon.
    FOREIGN = "foreign"
    #: The file exists but nobody holds a write lock on it: the daemon died.
    STALE = "stale"
    #: No pidfile.
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class PidStatus:
    state: PidState
    #: RUNNING and FOREIGN: the lock holder's pid (the kernel's word); STALE: the pid written in the file.
    pid: int | None
    #: FOREIGN: who holds the lock and why it is not pymgr; STALE: what became of the pid.
    detail: str = ""
    #: RUNNING: the daemon, identified by pid and start time; signal through it.
    process: psutil.Process | None = None


class PidFileLocked(Exception):
    """Another process holds the pidfile's write lock: a daemon already runs, or something else holds it."""

    def __init__(self, path: Path, pid: int | None, detail: str = "") -> None:
        what = detail or f"pid {pid if pid is not None else '?'}: pymgr is already running"
        super().__init__(f"pidfile {path} is locked by {what}")
        self.path = path
        self.pid = pid


def _require_fcntl() -> None:
    if fcntl is None:
        raise RuntimeError(
            "pidfiles need fcntl (Unix); on Windows run pymgr as a service: pymgr service install"
        )


def read_pid(path: Path) -> int | None:
    """The pid in ``path``, or None if it is missing, empty, not a number or not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _pid_in(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _open_checked(path: Path, flags: int, owners: frozenset[int]) -> int:
    """Open ``path`` without following a link; it must be a regular file with one link, owned by ``owners``.

    Raises:
        UnsafePathError: a link, not a regular file, hard-linked, or another user's.
        OSError: the open failed (FileNotFoundError when there is no file).
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, PIDFILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(
                path, "is a symbolic link", f"remove it (rm {path}); pymgr never follows one"
            ) from None
        raise
    problem = _file_problem(os.fstat(fd), owners)
    if problem:
        os.close(fd)
        raise UnsafePathError(path, problem, f"remove it (rm {path}) if no pymgr runs")
    return fd


def _file_problem(st: os.stat_result, owners: frozenset[int]) -> str:
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links: another name may point at it"
    if st.st_uid not in owners:
        return f"is owned by uid {st.st_uid}, not by root or the daemon's user"
    return ""


def _write_lock_holder(fd: int) -> int | None:
    """The pid of whoever holds a write lock on ``fd``'s file.

    None if nobody does, -1 if the kernel cannot say.

    Asks for a read lock: only a write lock conflicts with it, and readers are not daemons.
    """
    query = struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
    l_type, _, _, _, l_pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
    return None if l_type == fcntl.F_UNLCK else l_pid


def _lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False if another process holds any lock on the file."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still leads to ``fd``'s file (a takeover may have renamed another over it)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


class PidFile:
    """Context manager: lock ``path``, write our pid; on exit remove it and unlock.

    python-daemon's ``DaemonContext`` enters it after detaching, so the lock
    belongs to the daemon process itself.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> PidFile:
        """Raises: PidFileLocked, UnsafePathError, OSError (the file cannot be created)."""
        _require_fcntl()
        make_own_dir(self.path.parent, 0o755)
        fd = _acquire(self.path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        if _names(self.path, self._fd):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # releases the lock
        self._fd = None


def _acquire(path: Path) -> int:
    """The pidfile's descriptor, write-locked by us.

    Raises:
        PidFileLocked: another process holds a write lock (a daemon, or a process named in the message).
        UnsafePathError: the file is a link, not a regular file, or another user's.
    """
    deadline = time.monotonic() + LOCK_RETRY_S
    while True:
        fd = _open_checked(path, os.O_RDWR | os.O_CREAT, frozenset({os.geteuid()}))
        os.fchmod(fd, PIDFILE_MODE)  # also narrows a file an older pymgr left world-readable
        if _lock(fd):
            if _names(path, fd):
                return fd
            os.close(fd)  # replaced between our open and our lock: lock the new file instead
            continue
        holder, written = _write_lock_holder(fd), _pid_in(fd)
        os.close(fd)
        if time.monotonic() < deadline:
            time.sleep(0.02)
            continue
        if holder is not None:
            raise PidFileLocked(path, holder, _identify(holder, written)[1])
        return _take_over(path)


def _take_over(path: Path) -> int:
    """Replace a pidfile that only readers lock: a new file, write-locked before it gets the name.

    Raises:
        PidFileLocked: a daemon took the name over meanwhile.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL | O_NOFOLLOW, mode 0600
    try:
        os.fchmod(fd, PIDFILE_MODE)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else can hold a lock on it yet
        current = _open_checked(path, os.O_RDONLY, trusted_uids())
        try:
            holder, written = _write_lock_holder(current), _pid_in(current)
        finally:
            os.close(current)
        if holder is not None:  # another start took it over first
            raise PidFileLocked(path, holder, _identify(holder, written)[1])
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd


def _is_pymgr(argv: list[str]) -> bool:
    """Whether a command line runs pymgr.

    Its console script, directly or through an interpreter, or ``-m pymgr``.
    """
    if any(Path(arg).name == "pymgr" for arg in argv[:2]):
        return True
    return any(argv[i : i + 2] == ["-m", "pymgr"] for i in range(len(argv))) or "-mpymgr" in argv


def _identify(holder: int, written: int | None) -> tuple[psutil.Process | None, str]:
    """The daemon's process if the lock holder is pymgr and wrote its own pid; else (None, who it is)."""
    if holder <= 0:
        return (
            None,
            "a lock whose holder the kernel does not name (an open file description lock), not pymgr's",
        )
    try:
        process = psutil.Process(holder)  # keeps its start time: psutil refuses to signal a reused pid
        argv = process.cmdline()
    except psutil.NoSuchProcess:
        return None, f"pid {holder}, which exited while it was looked at"
    except psutil.AccessDenied:
        return None, f"pid {holder}, which may not be inspected from here (run as root)"
    command = _command(argv)
    if not _is_pymgr(argv):
        return None, f"pid {holder} ({command}), which is not pymgr"
    if written != holder:
        return (
            None,
            f"pid {holder} ({command}), but the file names pid {written if written is not None else '?'}",
        )
    return process, ""


def probe(path: Path) -> PidStatus:
    """Whether a pymgr daemon holds ``path``'s write lock, without disturbing it (it takes no lock).

    Raises:
        UnsafePathError: the pidfile or its directory could be changed by another user.
    """
    _require_fcntl()
    try:
        check_own_dir(path.parent)
        fd = _open_checked(path, os.O_RDONLY, trusted_uids())
    except FileNotFoundError:  # no file, or no directory for it
        return PidStatus(PidState.ABSENT, None)
    try:
        holder, written = _write_lock_holder(fd), _pid_in(fd)
    finally:
        os.close(fd)
    if holder is None:
        return PidStatus(PidState.STALE, written, _explain(written))
    process, why = _identify(holder, written)
    if process is None:
        return PidStatus(PidState.FOREIGN, holder, why)
    return PidStatus(PidState.RUNNING, holder, process=process)


def _explain(pid: int | None) -> str:
    if pid is None:
        return "it holds no pid"
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return f"pid {pid} is not running"
    except psutil.AccessDenied:
        return f"pid {pid} is now a process we may not inspect"
    if _is_pymgr(argv):
        return f"pid {pid} is a pymgr process that does not hold the lock"
    return f"pid {pid} is now another program ({_command(argv)})"


def _command(argv: list[str]) -> str:
    """A command line for a message: one line, at most 80 characters."""
    return " ".join(" ".join(argv).split())[:80] or "?"


def remove_stale(path: Path) -> PidStatus:
    """Remove ``path`` if it is stale; returns what was found.

    Raises:
        UnsafePathError: as ``probe``.
    """
    status = probe(path)
    if status.state is not PidState.STALE:
        return status
    fd = _open_checked(path, os.O_RDWR, frozenset({os.geteuid()}))
    try:
        # Locked while it is removed, so a daemon starting now waits and then sees the name gone;
        # a file only readers lock is stale all the same.
        if (_lock(fd) or _write_lock_holder(fd) is None) and _names(path, fd):
            path.unlink()
    finally:
        os.close(fd)
    return status
