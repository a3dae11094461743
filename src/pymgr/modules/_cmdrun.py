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
- Timeout: SIGTERM to the process group, ``KILL_GRACE_S`` later SIGKILL.
  After the exit, pipes still held open by an escaped grandchild are waited
  for at most ``PIPE_DRAIN_S``, then closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymgr.tasks.runner import ExitStatus, Process

__all__ = ["KILL_GRACE_S", "PIPE_DRAIN_S", "RunAs", "run_command"]

#: Seconds between SIGTERM and SIGKILL when a command times out: a command
#: offered as an action should be short, and a caller is waiting.
KILL_GRACE_S = 2.0
#: Seconds to wait for stdout/stderr to close after the command exited.
PIPE_DRAIN_S = 1.0


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
    pass_fds: Sequence[int] = (),
) -> dict[str, Any]:
    """Run one command to its end.

    Args:
        pass_fds: descriptors the command inherits at the same numbers (held-open
            path parameters, ``core/pathparam.py``); every other one is closed.

    Returns:
        ``exit_code`` (None if a signal ended it), ``signal``, ``stdout``,
        ``stderr`` (UTF-8, invalid bytes replaced, each capped), ``truncated``,
        ``stdout_bytes``/``stderr_bytes`` (the full sizes), ``timed_out``, ``duration_s``.

    Raises:
        OSError: the program could not be started.
    """
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    popen = _spawn(argv, env, cwd, run_as, pass_fds)
    pipes: list[_CappedPipe] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        process = Process(popen, loop)
        for stream in (popen.stdout, popen.stderr):
            transport, pipe = await loop.connect_read_pipe(lambda: _CappedPipe(max_output_bytes), stream)
            transports.append(transport)
            pipes.append(pipe)
        status, timed_out = await _wait(process, timeout_s)
        await asyncio.wait([asyncio.ensure_future(p.closed) for p in pipes], timeout=PIPE_DRAIN_S)
    except BaseException:
        _kill_group(popen)  # never leave an unsupervised command behind (cancelled caller, watch failed)
        raise
    finally:
        for transport in transports:
            transport.close()
        for stream in (popen.stdout, popen.stderr):
            if stream is not None and not stream.closed:
                stream.close()
    return _result(status, timed_out, *pipes, duration_s=time.monotonic() - started)


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


def _kill_group(popen: subprocess.Popen[bytes]) -> None:
    if popen.returncode is not None:
        return  # reaped: its pid, and so its group id, may belong to someone else now
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone already


async def _wait(process: Process, timeout_s: float) -> tuple[ExitStatus, bool]:
    try:
        async with asyncio.timeout(timeout_s):
            return await process.wait(), False
    except TimeoutError:
        pass  # the deadline passed: stop the whole group, below
    process.signal_group(signal.SIGTERM)
    try:
        async with asyncio.timeout(KILL_GRACE_S):
            return await process.wait(), True
    except TimeoutError:
        process.signal_group(signal.SIGKILL)
    return await process.wait(), True

