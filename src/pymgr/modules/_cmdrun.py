"""Running one config-declared command: spawn, capture capped output, time out, reap.

Rules:
- No shell: argv goes to ``subprocess.Popen`` as a list; stdin is
  /dev/null; the environment is exactly the declared one; every other fd is
  closed; the command gets its own session (its process group id is its pid).
- As a given user: ``Popen(user=, group=, extra_groups=)`` switches uid, gid
  and supplementary groups in the child before exec.
- No thread per command: the exit is watched with the task runner's pidfd
  ``Process`` (``tasks/runner.py``); stdout and stderr are read by pipe
  protocols on the event loop, each keeping its first ``max_output_bytes``
  and only counting the rest (so a chatty command never blocks on a full pipe).
- Nothing outlives the call. The command runs in a cgroup of its own when
  the daemon has a tree (``keeper/cgroup.py``; it joins before its first
  instruction), else its processes are its session's. On timeout, or when
  the caller leaves and the command has ``cancel_on_disconnect``: SIGTERM
  to the process group and to every process of the command,
  ``KILL_GRACE_S`` later SIGKILL (``cgroup.kill``). Once the leader has
  exited, whatever way, what it left running gets the same: SIGTERM,
  ``KILL_GRACE_S``, SIGKILL, then a wait of up to ``KILL_WAIT_S`` until the
  cgroup (or the session) is empty. The reply comes after that, and says how
  many were stopped (``leftovers``) and whether the cgroup proved the end
  (``contained``).
- After the exit, pipes still held open by an escaped grandchild are waited
  for at most ``PIPE_DRAIN_S``, then closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymgr.errors import ActionFailed
from pymgr.keeper import proctree as _proctree
from pymgr.keeper.cgroup import Cgroup, inside
from pymgr.keeper.proctree import ProcRef
from pymgr.keeper.treekill import KILL_WAIT_S
from pymgr.tasks.runner import ExitStatus, Process

__all__ = ["KILL_GRACE_S", "PIPE_DRAIN_S", "Containment", "RunAs", "run_command"]

#: Seconds between SIGTERM and SIGKILL when a command times out: a command
#: offered as an action should be short, and a caller is waiting.
KILL_GRACE_S = 2.0
#: Seconds to wait for stdout/stderr to close after the command exited.
PIPE_DRAIN_S = 1.0
#: Seconds between two looks at what a command left running while it is being stopped.
_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Containment:
    """Where a command's processes are found: its cgroup (and the daemon's own to come back to), or its session."""

    cgroup: Cgroup | None = None
    home: str | None = None

    def spawning(self) -> Any:
        """The block in which to spawn: inside the cgroup when there is one."""
        if self.cgroup is None or self.home is None:
            return contextlib.nullcontext()
        return inside(self.cgroup, self.home)

    def members(self, leader: ProcRef) -> set[ProcRef]:
        """The command's live processes other than the leader."""
        if self.cgroup is None:
            return _proctree.session_members(leader)
        found = set()
        for pid in self.cgroup.pids():
            started = _proctree.start_time(pid)
            if pid != leader.pid and started is not None:
                found.add(ProcRef(pid, started))
        return found

    def signal(self, leader: ProcRef, sig: signal.Signals) -> None:
        if self.cgroup is not None:
            self.cgroup.kill() if sig == signal.SIGKILL else self.cgroup.signal(sig)
            return
        for ref in self.members(leader):
            _proctree.send_signal(ref, sig)

    def empty(self, leader: ProcRef) -> bool:
        if self.cgroup is not None:
            return not self.cgroup.populated()
        return not self.members(leader)


@dataclass(frozen=True, slots=True)
class RunAs:
    """Whom a command runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]


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


def _spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path, run_as: RunAs | None, pass_fds: Sequence[int]
) -> subprocess.Popen[bytes]:
    extra: dict[str, Any] = {}
    if run_as is not None:
        extra = {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups)}
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
        close_fds=True,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        **extra,
    )


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
) -> dict[str, Any]:
    """Run one command to its end, and everything it started with it (see the module rules).

    Args:
        containment: the command's cgroup, or none (its session).
        caller_gone: set when the caller left: the command is stopped then
            (None: it runs to its end or its timeout).
        pass_fds: descriptors the command inherits at the same numbers (held-open
            path parameters, ``core/pathparam.py``); every other one is closed.

    Returns:
        ``exit_code`` (None if a signal ended it), ``signal``, ``stdout``,
        ``stderr`` (UTF-8, invalid bytes replaced, each capped), ``truncated``,
        ``stdout_bytes``/``stderr_bytes`` (the full sizes), ``timed_out``,
        ``cancelled`` (its caller left), ``leftovers`` (processes it left
        running, stopped), ``contained`` (a cgroup proved none is left), ``duration_s``.

    Raises:
        OSError: the program could not be started.
        CgroupError: it could not be started inside its cgroup.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    with containment.spawning():
        popen = _spawn(argv, env, cwd, run_as, pass_fds)
    pipes: list[_CappedPipe] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        process = Process(popen, loop)
        for stream in (popen.stdout, popen.stderr):
            transport, pipe = await loop.connect_read_pipe(lambda: _CappedPipe(max_output_bytes), stream)
            transports.append(transport)
            pipes.append(pipe)
        status, ended_by = await _wait(process, containment, timeout_s, caller_gone)
        leftovers = await _stop_leftovers(process.ref, containment)
        await asyncio.wait([asyncio.ensure_future(p.closed) for p in pipes], timeout=PIPE_DRAIN_S)
    except BaseException:
        _kill_all(popen, containment)  # never leave an unsupervised command behind (cancelled caller, watch failed)
        raise
    finally:
        for transport in transports:
            transport.close()
        for stream in (popen.stdout, popen.stderr):
            if stream is not None and not stream.closed:
                stream.close()
    result = _result(status, ended_by == "timeout", *pipes, duration_s=time.monotonic() - started)
    result.update(cancelled=ended_by == "caller_gone", leftovers=leftovers, contained=containment.cgroup is not None)
    return result


def _result(status: ExitStatus, timed_out: bool, out: _CappedPipe, err: _CappedPipe, *, duration_s: float) -> dict[str, Any]:
    return {
        "exit_code": status.exit_code,
        "signal": status.signal,
        "stdout": bytes(out.kept).decode("utf-8", errors="replace"),
        "stderr": bytes(err.kept).decode("utf-8", errors="replace"),
        "truncated": out.total > len(out.kept) or err.total > len(err.kept),
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "timed_out": timed_out,
        "duration_s": round(duration_s, 3),
    }


def _kill_all(popen: subprocess.Popen[bytes], containment: Containment) -> None:
    if containment.cgroup is not None:
        containment.cgroup.kill()  # its members, whatever session they took
    if popen.returncode is not None:
        return  # reaped: its pid, and so its group id, may belong to someone else now
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone already


async def _wait(
    process: Process, containment: Containment, timeout_s: float, caller_gone: asyncio.Event | None
) -> tuple[ExitStatus, str | None]:
    """The leader's exit status, and what ended it early: "timeout", "caller_gone" or None (itself)."""
    exited = asyncio.ensure_future(process.wait())
    gone = asyncio.ensure_future(caller_gone.wait()) if caller_gone is not None else None
    try:
        done, _ = await asyncio.wait([f for f in (exited, gone) if f is not None], timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:
        if gone is not None:
            gone.cancel()
    if exited in done:
        return exited.result(), None
    ended_by = "timeout" if not done else "caller_gone"
    _signal_all(process, containment, signal.SIGTERM)
    try:
        async with asyncio.timeout(KILL_GRACE_S):
            return await asyncio.shield(exited), ended_by
    except TimeoutError:
        _signal_all(process, containment, signal.SIGKILL)
    return await exited, ended_by


def _signal_all(process: Process, containment: Containment, sig: signal.Signals) -> None:
    process.signal_group(sig)
    containment.signal(process.ref, sig)


async def _stop_leftovers(leader: ProcRef, containment: Containment) -> int:
    """Stop what the (reaped) leader left running: SIGTERM, grace, SIGKILL; the number of processes found.

    Raises:
        ActionFailed: some outlived SIGKILL and ``KILL_WAIT_S`` (stuck in the kernel): never a silent leak.
    """
    found = containment.members(leader)
    if not found and (containment.cgroup is None or containment.empty(leader)):
        return 0
    containment.signal(leader, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline, sent_kill = loop.time() + KILL_GRACE_S, False
    while not containment.empty(leader):
        found |= containment.members(leader)
        if loop.time() >= deadline:
            if sent_kill:
                pids = ", ".join(str(ref.pid) for ref in sorted(containment.members(leader), key=lambda r: r.pid))
                raise ActionFailed(f"the command's processes outlived SIGKILL: pid {pids}", details={"pids": pids})
            containment.signal(leader, signal.SIGKILL)
            deadline, sent_kill = loop.time() + KILL_WAIT_S, True
        await asyncio.sleep(_POLL_S)
    return len(found)
