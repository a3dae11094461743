"""Spawning a process in the daemon, watching it exit, and killing its whole tree.

Task runs do not use this any more: the keeper (``keeper.py``) spawns and
supervises them, so they outlive the daemon. What remains here serves
processes the daemon runs for the length of one request (the commands
declared in the config, ``modules/_cmdrun.py``).

Rules:
- No shell: argv goes to ``subprocess.Popen`` as a list. stdin is /dev/null,
  stdout and stderr go to the run's log file (opened here, by the daemon),
  the environment is exactly what the caller passes, every other fd is closed.
- Each run gets its own session (``start_new_session=True``), so its process
  group id is its pid.
- No thread per child and no SIGCHLD handler: a pidfd on the event loop says
  when the process exited, then ``os.waitpid(pid, WNOHANG)`` reaps it and the
  status goes into ``Popen.returncode`` (so ``Popen`` never reaps it again or
  warns about it).
- Only this module reaps our children. The leader's pid, and so its process
  group, stay ours until it is reaped: ``killpg`` is used only before that.
  Other processes are signalled through ``keeper.proctree`` (pidfd + start time).
- Stop: SIGTERM to the group and to every process of the run, wait up to the
  grace period for all of them, then look again (late forks, the marked
  leftovers of an exited leader) and SIGKILL whatever is still there.
- Linux only: pidfds (kernel 5.3+).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pymgr.keeper import proctree as _proctree
from pymgr.keeper.proctree import ProcRef
from pymgr.keeper.treekill import KILL_WAIT_S

log = logging.getLogger("pymgr.tasks")

#: Popen objects of runs left running at shutdown (``on_shutdown = "leave"``).
#: A Popen that is garbage-collected while its child runs joins the subprocess
#: module's ``_active`` list, and the next ``Popen()`` anywhere in the daemon
#: would reap our child behind our back; holding them here prevents that.
_left_running: list[subprocess.Popen[bytes]] = []

#: Flags of the per-run log file: never follow a symlink planted in the log dir.
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal: str | None
    #: Set when the status could not be read (the process is "lost").
    error: str | None = None


class Process:
    """One spawned run leader, watched on the event loop through a pidfd."""

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.pid = popen.pid
        start_time = _proctree.start_time(popen.pid)
        if start_time is None:
            # Our unreaped child always has a /proc entry, zombie or not.
            raise RuntimeError(f"no /proc entry for our own child {popen.pid}; is /proc mounted?")
        self.ref = ProcRef(popen.pid, start_time)
        self._popen = popen
        self._loop = loop
        self._exited: asyncio.Future[ExitStatus] = loop.create_future()
        self._pidfd: int | None = os.pidfd_open(popen.pid)
        loop.add_reader(self._pidfd, self._on_readable)

    @property
    def reaped(self) -> bool:
        """True once the exit status was collected (the pid is no longer ours)."""
        return self._exited.done()

    async def wait(self) -> ExitStatus:
        """The exit status, once the process has exited and been reaped."""
        return await asyncio.shield(self._exited)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the run's process group, while its leader is unreaped."""
        if self.reaped:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass  # the whole group has exited already; nothing to signal

    def detach(self) -> None:
        """Stop watching; the process keeps running (shutdown with "leave")."""
        self._close_pidfd()
        if not self.reaped:
            _left_running.append(self._popen)

    def _on_readable(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self._close_pidfd()
            self._popen.returncode = -1
            self._exited.set_result(ExitStatus(None, None, "exit status was collected by someone else"))
            return
        if pid == 0:
            return  # not exited after all; keep watching
        self._close_pidfd()
        code = os.waitstatus_to_exitcode(status)
        self._popen.returncode = code
        if code < 0:
            self._exited.set_result(ExitStatus(None, signal.Signals(-code).name))
        else:
            self._exited.set_result(ExitStatus(code, None))

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def spawn(
    argv: list[str], *, cwd: Path | None, env: Mapping[str, str], marker: Mapping[str, str], log_path: Path
) -> Process:
    """Start one run's process (blocking only for the fork and exec).

    Args:
        env: the environment of the process, to which ``marker`` is added.
        marker: the run's marker (``_proctree.run_marker``).

    Raises:
        OSError: the log file cannot be opened, the program cannot be
            started (not found, not executable, bad cwd), or it cannot be
            watched (no fd left for its pidfd; it is killed then).
    """
    log_fd = os.open(log_path, _LOG_FLAGS, 0o600)
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**env, **marker},
            close_fds=True,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    try:
        return Process(popen, asyncio.get_running_loop())
    except BaseException:
        # Not watched means not supervised: never leave such a process behind.
        popen.kill()
        popen.wait()
        raise


async def kill_tree(process: Process, marker: Mapping[str, str], grace_s: float) -> set[ProcRef]:
    """Stop a run and everything it started: SIGTERM, grace period, SIGKILL.

    Returns:
        The processes still alive after SIGKILL and ``KILL_WAIT_S`` (normally none).
    """
    others = _proctree.find_run_processes(process.ref, marker, leader_reaped=process.reaped)
    process.signal_group(signal.SIGTERM)
    for ref in others:
        _proctree.send_signal(ref, signal.SIGTERM)
    alive = await _wait_all(process, others, grace_s)
    alive |= _proctree.find_run_processes(process.ref, marker, leader_reaped=process.reaped)
    if not alive and process.reaped:
        return set()
    log.info(
        "task %s: still running after %.1fs grace, sending SIGKILL to %d process(es)",
        marker.get(_proctree.TASK_ID_VAR),
        grace_s,
        len(alive) + (not process.reaped),
    )
    process.signal_group(signal.SIGKILL)
    for ref in alive:
        _proctree.send_signal(ref, signal.SIGKILL)
    survivors = await _wait_all(process, alive, KILL_WAIT_S)
    if not process.reaped:
        survivors.add(process.ref)
    return survivors


async def _wait_all(process: Process, others: set[ProcRef], timeout_s: float) -> set[ProcRef]:
    """Wait for the leader and ``others`` to exit; returns the others still alive."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    alive = await wait_gone(others, timeout_s)
    if not process.reaped:
        try:
            async with asyncio.timeout_at(deadline):
                await process.wait()
        except TimeoutError:
            pass  # the caller decides what a leader outliving the wait means
    return alive


async def wait_gone(refs: Iterable[ProcRef], timeout_s: float) -> set[ProcRef]:
    """Wait until every process in ``refs`` has exited (a zombie counts as exited).

    Returns:
        The ones still alive after ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    waiting: dict[ProcRef, tuple[int, asyncio.Future[None]]] = {}
    try:
        for ref in refs:
            fd = _proctree.open_checked(ref)
            if fd is None:
                continue
            done: asyncio.Future[None] = loop.create_future()
            waiting[ref] = (fd, done)
            # A pidfd turns readable when its process exits.
            loop.add_reader(fd, _resolve, loop, fd, done)
        if waiting:
            await asyncio.wait([done for _, done in waiting.values()], timeout=timeout_s)
        return {ref for ref, (_, done) in waiting.items() if not done.done()}
    finally:
        for fd, _ in waiting.values():
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(loop: asyncio.AbstractEventLoop, fd: int, done: asyncio.Future[None]) -> None:
    # Readiness is level-triggered: stop watching at once, or the loop spins.
    loop.remove_reader(fd)
    if not done.done():
        done.set_result(None)
