"""Adopting a run an earlier keeper started: is it still there, where is its cgroup, and its output.

Rules:
- A run is adopted by its leader's pid and kernel start time on this boot
  only; anything else is a reason (``vanished``), reported as ``adopt_failed``.
- Its cgroup is taken only if the leader is still in it (``adopted_cgroup``).
- Its output pipe is read again from the daemon's second read end, into the
  same log (``take_output``); a log that cannot be reopened drops the output
  but the pipe is still drained: a pipe nobody reads would block the run.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

from pymgr.keeper import proctree
from pymgr.keeper.cgroup import Cgroup
from pymgr.keeper.outputhold import open_pipe
from pymgr.keeper.proctree import ProcRef
from pymgr.keeper.runlog import RunLog
from pymgr.keeper.runs import UNKNOWN_EXIT, Run, run_log
from pymgr.protocol.keeper import HeldPipe, LogSettings


def vanished(leader: ProcRef, recorded_boot: str | None, boot: str) -> str:
    """Why a recorded run can no longer be found, in words."""
    if recorded_boot != boot:
        return "lost: the host was rebooted since it started"
    now = proctree.start_time(leader.pid)
    if now is None:
        return f"{UNKNOWN_EXIT} (process {leader.pid} is gone)"
    return f"{UNKNOWN_EXIT} (pid {leader.pid} now belongs to another process)"


def adopted_cgroup(leader: ProcRef, path: str | None) -> Cgroup | None:
    """The cgroup the daemon recorded for a run it asks to adopt, if the leader is in it still."""
    if not path:
        return None
    cgroup = Cgroup(path)
    return cgroup if leader.pid in cgroup.pids() else None


class Listings:
    """Listings of a directory, made once for the adopts of one read: a dead keeper's files do not
    change until their run is resumed, and listing a logs directory of thousands of files per run
    (2 ms each here) would stall the new keeper for seconds when it adopts a thousand runs."""

    def __init__(self) -> None:
        self._names: dict[str, list[str]] = {}

    def __call__(self, directory: str) -> list[str]:
        names = self._names.get(directory)
        if names is None:
            names = self._names[directory] = os.listdir(directory)
        return names

    def clear(self) -> None:
        self._names.clear()


def take_output(
    run: Run,
    output: HeldPipe | None,
    log: LogSettings | None,
    listdir: Callable[[str], list[str]] = os.listdir,
) -> None:
    """Read an adopted run's pipe again, from the daemon's read end, into the same log (``listdir``: see RunLog.resume)."""
    if output is None:
        return  # the daemon holds none: the run's output is not captured
    try:
        pipe = open_pipe(output.pid, output.fd, output.inode)
    except OSError as exc:
        print(
            f"keeper: task {run.id}: cannot take its output pipe {output}: {exc}", file=sys.stderr, flush=True
        )
        return
    if pipe is None:
        return  # the daemon let it go meanwhile (the run ended)
    try:
        if log is None:
            raise ValueError("the adopt request has no log settings")
        run.log = run_log(run.id, log, functools.partial(RunLog.resume, listdir=listdir))
    except (ValueError, OSError) as exc:
        # Drained all the same, the output dropped: a pipe nobody reads would block the run for good.
        run.log_error = f"output dropped: cannot reopen the log after the keeper changed: {exc}"
        print(f"keeper: task {run.id}: {run.log_error}", file=sys.stderr, flush=True)
    run.output_fd, run.output_inode = pipe, output.inode
