"""The daemon's second reader of every run's output pipe, so a dead keeper never kills a run by SIGPIPE.

Rules:
- The keeper reads each run's stdout/stderr pipe. If the keeper dies, a
  pipe with no reader left makes the run's next write fail with SIGPIPE:
  the run would die of its supervisor's death. So the daemon holds a
  second read end of each running run's pipe and never reads from it: the
  pipe keeps a reader while the daemon lives, the run's writes go into the
  pipe (64 KiB by default, then they block), and the next keeper takes the
  same pipe over when it adopts the run (``adopt`` carries where to find
  it: ``/proc/<daemon pid>/fd/<fd>``), so the output continues into the
  same log.
- The daemon gets its read end without file-descriptor passing: the
  keeper's ``spawned``/``live`` report says which of its descriptors is the
  pipe (``output: [fd, inode]``) and the daemon opens
  ``/proc/<keeper pid>/fd/<fd>`` read-only. Opening a pipe through /proc
  gives a new descriptor on the same pipe. The inode is checked after the
  open: a descriptor number the keeper has closed and reused meanwhile is
  never taken for the pipe.
- A holder is closed when its run ends. The daemon holds at most
  ``limit`` of them (half its descriptor limit by default, so the
  listeners never run out); runs past that are not covered and say so in
  the log once.
- Standard library only; no event loop needed (opens are non-blocking).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import stat
from typing import Any

log = logging.getLogger("pymgr.tasks")

#: Open flags of a holder: read-only, never blocking, never inherited, never a controlling terminal.
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def _pipe_device() -> int:
    """The device number of pipes (pipefs): a pipe reached through /proc must be on it."""
    read_end, write_end = os.pipe()
    try:
        return os.fstat(read_end).st_dev
    finally:
        os.close(read_end)
        os.close(write_end)


_PIPE_DEV = _pipe_device()


def _is_the_pipe(info: os.stat_result, inode: int) -> bool:
    return stat.S_ISFIFO(info.st_mode) and info.st_dev == _PIPE_DEV and info.st_ino == inode


def open_pipe(pid: int, fd: int, inode: int) -> int | None:
    """A new read end of the pipe that is descriptor ``fd`` of process ``pid``, or None.

    None when the process or descriptor is gone, when it is not the pipe
    with ``inode`` (closed and reused meanwhile, or ``pid`` is another
    process by now), or when /proc refuses. What the descriptor names is
    checked before it is opened, so a device, a terminal or a named FIFO is
    never opened (opening one can have effects), and again after.

    Raises:
        OSError: EMFILE or ENFILE (out of descriptors): the caller decides.
    """
    path = f"/proc/{int(pid)}/fd/{int(fd)}"
    try:
        if not _is_the_pipe(os.stat(path), inode):
            return None
        holder = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise
        return None
    if not _is_the_pipe(os.fstat(holder), inode):
        os.close(holder)
        return None
    return holder


def default_limit() -> int:
    """Half the daemon's soft descriptor limit: the other half stays for sockets and files."""
    return max(0, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)


class OutputHolders:
    """One read end per running run (see the module rules)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = default_limit() if limit is None else limit
        #: Task id -> (holder fd, pipe inode).
        self._held: dict[int, tuple[int, int]] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, task_id: int, keeper_pid: int | None, output: Any) -> None:
        """Take a read end of a run's pipe, from the keeper's ``output: [fd, inode]`` report."""
        if task_id in self._held or keeper_pid is None or not output:
            return
        if len(self._held) >= self.limit:
            self._warn(
                f"{len(self._held)} runs' output pipes held already (the limit is half of RLIMIT_NOFILE)"
            )
            return
        try:
            fd, inode = int(output[0]), int(output[1])
            holder = open_pipe(keeper_pid, fd, inode)
        except OSError as exc:
            self._warn(f"out of file descriptors ({exc.strerror})")
            return
        except (TypeError, ValueError, IndexError):
            log.warning("task %s: the keeper reported a malformed output pipe %r", task_id, output)
            return
        if holder is not None:
            self._held[task_id] = (holder, inode)

    def where(self, task_id: int) -> dict[str, int] | None:
        """How another process finds the held pipe: ``{"pid", "fd", "inode"}``, or None."""
        held = self._held.get(task_id)
        if held is None:
            return None
        return {"pid": os.getpid(), "fd": held[0], "inode": held[1]}

    def release(self, task_id: int) -> None:
        """The run ended: close its holder, if any."""
        held = self._held.pop(task_id, None)
        if held is not None:
            os.close(held[0])

    def close(self) -> None:
        for task_id in list(self._held):
            self.release(task_id)

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "not holding more runs' output pipes: %s; those runs die of SIGPIPE if the keeper dies "
                "while they write (raise the daemon's LimitNOFILE)",
                why,
            )
