"""Running one config-declared command: spawn, capture capped output, time out, stop, reap.

Rules:
- The spawn is the keeper's (``keeper/spawn.py``): no shell, argv as a
  list; stdin /dev/null; the environment exactly the declared one; every
  other fd closed; its own session (its process group id is its pid); as
  its ``user`` (uid, gid and supplementary groups resolved at start-up).
- No thread per command: the exit is watched through a pidfd
  (``_cmdproc.Process``); stdout and stderr are read by pipe protocols on
  the event loop, each keeping its first ``max_output_bytes`` and only
  counting the rest (so a chatty command never blocks on a full pipe).
- Nothing outlives the call, and the stop is the keeper's ``TreeKill``
  driven from the event loop (``_cmdproc.drive``). The command runs in a
  cgroup of its own when the daemon has a tree (``keeper/cgroup.py``; it
  joins before its first instruction), else its processes are its
  session's. On timeout, or when the caller leaves and the command has
  ``cancel_on_disconnect``: SIGTERM to the process group and to every
  process of the command, ``KILL_GRACE_S`` later SIGKILL (``cgroup.kill``)
  if the leader is still there. Once the leader has exited, whatever way,
  what it left running gets the same: SIGTERM, ``KILL_GRACE_S``, SIGKILL,
  then a wait of up to ``KILL_WAIT_S`` (``keeper/treekill.py``) until the cgroup (or the session) is
  empty. The reply comes after that, and says how many were stopped
  (``leftovers``) and whether the cgroup proved the end (``contained``).
- After the exit, pipes still held open by an escaped grandchild are waited
  for at most ``PIPE_DRAIN_S``, then closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from typing_extensions import TypedDict

from pymgr.errors import ActionFailed
from pymgr.keeper import proctree as _proctree
from pymgr.keeper.cgroup import Cgroup, inside
from pymgr.keeper.runas import RunAs
from pymgr.keeper.spawn import SpawnSpec, spawn
from pymgr.keeper.treekill import TreeKill
from pymgr.modules._cmdproc import ExitStatus, Process, drive

__all__ = ["KILL_GRACE_S", "PIPE_DRAIN_S", "CommandResult", "Containment", "run_command"]


class CommandResult(TypedDict):
    """A command's outcome: the result of every action a ``[commands]`` entry makes (``run_command``).

    A ``typing_extensions.TypedDict`` (pydantic reads only that one before Python 3.12): the
    action's return annotation, so its result schema in the OpenAPI document is this.
    """

    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    truncated: bool
    stdout_bytes: int
    stderr_bytes: int
    timed_out: bool
    duration_s: float
    cancelled: bool
    leftovers: int
    contained: bool


#: Seconds between SIGTERM and SIGKILL when a command times out: a command
#: offered as an action should be short, and a caller is waiting.
KILL_GRACE_S = 2.0
#: Seconds to wait for stdout/stderr to close after the command exited.
PIPE_DRAIN_S = 1.0

log = logging.getLogger("pymgr.commands")


@dataclass(frozen=True, slots=True)
class Containment:
    """Where a command's processes are found.

    Its cgroup (and the daemon's own, to come back to), or else its session.
    """

    cgroup: Cgroup | None = None
    home: str | None = None

    def spawning(self) -> Any:
        """The block in which to spawn: inside the cgroup when there is one."""
        if self.cgroup is None or self.home is None:
            return contextlib.nullcontext()
        return inside(self.cgroup, self.home)

    def stop(self, leader: Process) -> TreeKill:
        """A stop of the command's processes, and of the leader's group while the leader is unreaped."""
        return TreeKill(
            leader.ref,
            {},
            KILL_GRACE_S,
            leader_gone=lambda: leader.reaped,
            signal_leader=leader.signal_group,
            find=lambda: _proctree.session_members(leader.ref),
            cgroup=self.cgroup,
            report=lambda line: log.info("command (pid %d): %s", leader.pid, line),
        )


class _CappedPipe(asyncio.Protocol):
    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    run_as: RunAs | None,
    timeout_s: float,
    max_output_bytes: int,
    containment: Containment = Containment(),
    caller_gone: asyncio.Event | None = None,
    pass_fds: Sequence[int] = (),
) -> CommandResult:
    """Run one command to its end, and everything it started with it (see the module rules).

    Args:
        run_as: whom it runs as (None: the daemon's user).
        containment: the command's cgroup, or none (its session).
        caller_gone: set when the caller left, to stop the command (None: it runs to its end or timeout).
        pass_fds: descriptors the command inherits at the same numbers (held-open
            path parameters, ``core/pathparam.py``); every other one is closed.

    Returns:
        ``exit_code`` (None if a signal ended it), ``signal``, ``stdout``, ``stderr`` (UTF-8, invalid bytes
        replaced, each capped), ``truncated``, ``stdout_bytes``/``stderr_bytes`` (full sizes), ``timed_out``,
        ``cancelled`` (its caller left), ``leftovers`` (processes it left running, stopped),
        ``contained`` (a cgroup proved none is left), ``duration_s``.

    Raises:
        SpawnError: the program could not be started.
        OSError: no descriptor left for its pipes.
        CgroupError: it could not be started inside its cgroup.
    """
    started = time.monotonic()
    spec = SpawnSpec(argv=list(argv), env=dict(env), cwd=str(cwd), pass_fds=tuple(pass_fds))
    streams, pid, popen = _start(spec, run_as, containment)
    transports: list[asyncio.BaseTransport] = []
    process = None  # until it is watched
    try:
        process = Process(pid, popen)
        pipes = await _capture_output(streams, max_output_bytes, transports)
        status, ended_by = await _wait(process, containment, timeout_s, caller_gone)
        leftovers = await _stop_leftovers(process, containment)
        await asyncio.wait([asyncio.ensure_future(p.closed) for p in pipes], timeout=PIPE_DRAIN_S)
    except BaseException:  # never leave an unsupervised command behind (cancelled caller, watch failed)
        _kill_at_once((pid, popen), process, containment)
        raise
    finally:
        _close_output(streams, transports)
    contained = containment.cgroup is not None
    return _result(status, ended_by, pipes, leftovers, contained, time.monotonic() - started)


def _start(
    spec: SpawnSpec, run_as: RunAs | None, containment: Containment
) -> tuple[list[BinaryIO], int, subprocess.Popen[bytes] | None]:
    """Spawn the command, its stdout and stderr on two new pipes; returns their read ends, pid and Popen."""
    streams: list[BinaryIO] = []
    write_ends: list[int] = []
    try:
        for _ in ("stdout", "stderr"):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            write_ends.append(write_end)
            streams.append(open(read_end, "rb", buffering=0))
        with containment.spawning():
            pid, popen = spawn(spec, write_ends[0], stderr_fd=write_ends[1], run_as=run_as)
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    finally:
        for fd in write_ends:
            os.close(fd)  # the child has its copies; the read ends see EOF once it and its heirs close them
    return streams, pid, popen


async def _capture_output(
    streams: list[BinaryIO], max_output_bytes: int, transports: list[asyncio.BaseTransport]
) -> list[_CappedPipe]:
    """Read stdout and stderr into capped buffers; each transport goes into ``transports`` once open."""
    loop = asyncio.get_running_loop()
    pipes = []
    for stream in streams:
        read_transport, pipe = await loop.connect_read_pipe(lambda: _CappedPipe(max_output_bytes), stream)
        transports.append(read_transport)
        pipes.append(pipe)
    return pipes


def _close_output(streams: list[BinaryIO], transports: list[asyncio.BaseTransport]) -> None:
    for transport in transports:
        transport.close()
    for stream in streams:
        if not stream.closed:
            stream.close()


def _result(
    status: ExitStatus,
    ended_by: str | None,
    pipes: list[_CappedPipe],
    leftovers: int,
    contained: bool,
    duration_s: float,
) -> CommandResult:
    """The command's outcome, as ``run_command`` documents it."""
    out, err = pipes
    return {
        "exit_code": status.exit_code,
        "signal": status.signal,
        "stdout": bytes(out.kept).decode("utf-8", errors="replace"),
        "stderr": bytes(err.kept).decode("utf-8", errors="replace"),
        "truncated": out.total > len(out.kept) or err.total > len(err.kept),
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "timed_out": ended_by == "timeout",
        "duration_s": round(duration_s, 3),
        "cancelled": ended_by == "caller_gone",
        "leftovers": leftovers,
        "contained": contained,
    }


def _kill_at_once(
    child: tuple[int, subprocess.Popen[bytes] | None], process: Process | None, containment: Containment
) -> None:
    """SIGKILL the command's cgroup and process group now: the call failed or was cancelled; no waiting."""
    if containment.cgroup is not None:
        containment.cgroup.kill()  # its members, whatever session they took
    if process is not None:
        process.signal_group(signal.SIGKILL)  # a no-op once reaped; else the pidfd watch reaps it
        return
    # Never watched (no pidfd): it is ours to reap here, and its group is still its own until then.
    pid, popen = child
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    status = os.waitpid(pid, 0)[1]
    if popen is not None:
        popen.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits for it again


async def _wait(
    process: Process, containment: Containment, timeout_s: float, caller_gone: asyncio.Event | None
) -> tuple[ExitStatus, str | None]:
    """The leader's exit status, and what ended it early: "timeout", "caller_gone" or None (itself)."""
    gone = asyncio.ensure_future(caller_gone.wait()) if caller_gone is not None else None
    try:
        done, _ = await asyncio.wait(
            [f for f in (process.exited, gone) if f is not None],
            timeout=timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if gone is not None:
            gone.cancel()
    if process.exited in done:
        return process.exited.result(), None
    ended_by = "timeout" if not done else "caller_gone"
    kill = containment.stop(process)
    kill.start(asyncio.get_running_loop().time())
    # Until the leader is gone only: what it leaves is counted and stopped next, as after any exit.
    await drive(kill, process, until_leader_reaped=True)
    return await process.wait(), ended_by


async def _stop_leftovers(process: Process, containment: Containment) -> int:
    """Stop what the (reaped) leader left running: SIGTERM, grace, SIGKILL; the number of processes found.

    Raises:
        ActionFailed: some outlived SIGKILL and ``KILL_WAIT_S`` (stuck in the kernel): never a silent leak.
    """
    kill = containment.stop(process)
    found = kill.find()
    if not found and (containment.cgroup is None or not containment.cgroup.populated()):
        return 0  # the common case: one look, no signal
    kill.start(asyncio.get_running_loop().time(), known=found)
    survivors = await drive(kill, process)
    if survivors:
        pids = ", ".join(str(ref.pid) for ref in sorted(survivors, key=lambda r: r.pid))
        raise ActionFailed(f"the command's processes outlived SIGKILL: pid {pids}", details={"pids": pids})
    return len(kill.signalled)
