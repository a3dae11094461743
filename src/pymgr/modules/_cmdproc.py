"""A command's process on the daemon's event loop: watching its exit through a pidfd, and driving its stop.

The spawn (``keeper/spawn.py``) and the stop (``keeper/treekill.py``) are
the keeper's, shared; what is here is what only an asyncio caller needs.

Rules:
- No thread per child and no SIGCHLD handler: a pidfd on the event loop says
  when the process exited, then ``os.waitpid(pid, WNOHANG)`` reaps it and
  the status goes into the Popen's ``returncode`` (so Popen never reaps it
  again or warns about it).
- Only this module reaps a command's leader. Its pid, and so its process
  group, stay ours until it is reaped: the group is signalled only before
  that (``signal_group``). Other processes are signalled through
  ``keeper/proctree.py`` (pidfd + start time), by the ``TreeKill``.
- A ``TreeKill`` is driven by polling it every ``POLL_S`` and at once when
  the leader exits; nothing blocks the loop.
- Linux only: pidfds (kernel 5.3+).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass

from pymgr.keeper import proctree as _proctree
from pymgr.keeper.proctree import ProcRef
from pymgr.keeper.treekill import TreeKill

#: Seconds between two looks at a stop in progress: short beside the 2 s grace of a command,
#: and a look is one /proc walk at most.
POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal: str | None
    #: Set when the status could not be read (the process is "lost").
    error: str | None = None


class Process:
    """One spawned leader, the daemon's unreaped child, watched on the event loop through a pidfd."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None) -> None:
        """
        Args:
            pid: the child, just spawned.
            popen: the Popen that started it, if one did (its ``returncode`` is set on reaping).

        Raises:
            OSError: it cannot be watched (no descriptor left for its pidfd).
            RuntimeError: no /proc entry for it (/proc not mounted).
        """
        self.pid = pid
        start_time = _proctree.start_time(pid)
        if start_time is None:
            # Our unreaped child always has a /proc entry, zombie or not.
            raise RuntimeError(f"no /proc entry for our own child {pid}; is /proc mounted?")
        self.ref = ProcRef(pid, start_time)
        self._popen = popen
        self._loop = asyncio.get_running_loop()
        #: Resolved with the exit status once the leader is reaped.
        self.exited: asyncio.Future[ExitStatus] = self._loop.create_future()
        self._pidfd: int | None = os.pidfd_open(pid)
        self._loop.add_reader(self._pidfd, self._on_readable)

    @property
    def reaped(self) -> bool:
        """True once the exit status was collected (the pid is no longer ours)."""
        return self.exited.done()

    async def wait(self) -> ExitStatus:
        """The exit status, once the process has exited and been reaped."""
        return await asyncio.shield(self.exited)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the process group the leader leads, while the leader is unreaped."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group has exited already; nothing to signal

    def _on_readable(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self._settle(-1, ExitStatus(None, None, "exit status was collected by someone else"))
            return
        if pid == 0:
            return  # not exited after all; keep watching
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            self._settle(code, ExitStatus(None, signal.Signals(-code).name))
        else:
            self._settle(code, ExitStatus(code, None))

    def _settle(self, returncode: int, status: ExitStatus) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self._popen is not None:
            self._popen.returncode = returncode
        self.exited.set_result(status)


async def drive(kill: TreeKill, leader: Process, *, until_leader_reaped: bool = False) -> set[ProcRef]:
    """Poll a started stop to its end; returns the processes that outlived SIGKILL (normally none).

    Args:
        until_leader_reaped: return as soon as the leader is reaped (the empty set
            then), leaving the rest of the stop undone: the caller stops what it
            left running next, and counts it.
    """
    loop = asyncio.get_running_loop()
    while not (until_leader_reaped and leader.reaped):
        survivors = kill.poll(loop.time())
        if survivors is not None:
            return survivors
        if leader.reaped:
            await asyncio.sleep(POLL_S)
        else:
            await asyncio.wait([leader.exited], timeout=POLL_S)
    return set()
