"""The keeper's view of one run: its process, its output, its stop, and what it tells the daemon.

Rules:
- A ``Run`` is a process the keeper started (its child, with an output
  pipe) or adopted after an earlier keeper died (not its child: watched
  through a pidfd, exit status unknowable; its output pipe is taken over
  from the daemon's second read end when the daemon has one, see
  ``adoption`` and ``outputhold``).
- Output is drained without ever blocking: the pipe is non-blocking and is
  read until it is empty or ``MAX_READS`` chunks were taken (then the loop
  serves the others and comes back). Output the disk refuses is dropped,
  with one line on the keeper's stderr: a task never blocks on its log.
- The read end stays open until the last writer closes it (leftover
  descendants of an ended run included), so no writer ever gets SIGPIPE.
- What the daemon is told of a run is a typed message (``report``,
  ``status``); the durable journal of spawns and statuses is ``journal``.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pymgr.keeper import proctree
from pymgr.keeper.cgroup import Cgroup
from pymgr.keeper.progress import Progress, ProgressScanner
from pymgr.keeper.proctree import ProcRef, run_marker
from pymgr.keeper.runlog import RunLog
from pymgr.keeper.treekill import TreeKill
from pymgr.protocol.keeper import Exit, LogSettings, RunReport

#: Bytes taken from a pipe per read: the pipe's default capacity.
CHUNK_BYTES = 64 * 1024

#: Chunks taken from one pipe before the loop serves the others: 1 MiB, so
#: one chatty task cannot starve the rest, nor the daemon's messages.
MAX_READS = 16

#: The message a live run is reported in: ``Live``, ``Spawned`` or ``Adopted``.
R = TypeVar("R", bound=RunReport)

#: The reason of every run whose end no keeper saw.
UNKNOWN_EXIT = "exit status unknown: the keeper was gone when it ended"


class Run:
    """One run the keeper supervises (see the module rules)."""

    def __init__(
        self,
        task_id: int,
        leader: ProcRef,
        token: str,
        boot_id: str,
        started_at: float,
        *,
        popen: subprocess.Popen[bytes] | None = None,
        output_fd: int | None = None,
        log: RunLog | None = None,
        pidfd: int | None = None,
        leftovers_grace_s: float | None = None,
        cgroup: Cgroup | None = None,
    ) -> None:
        self.id = task_id
        self.leader = leader
        self.token = token
        self.boot_id = boot_id
        self.started_at = started_at
        self.popen = popen
        self.output_fd = output_fd
        #: The pipe's inode: the daemon checks it when it opens the pipe through /proc.
        self.output_inode = os.fstat(output_fd).st_ino if output_fd is not None else 0
        self.log = log
        #: Grace of the stop of what the leader leaves running when it exits; None: leave it.
        self.leftovers_grace_s = leftovers_grace_s
        #: The run's own cgroup (``cgroup``); None: found by session, group and marker only.
        self.cgroup = cgroup
        #: Set for an adopted run: readable once it exited.
        self.pidfd = pidfd
        self.scanner = ProgressScanner()
        self.progress: Progress | None = None
        self.exited = False
        self.exit_code: int | None = None
        self.signal: str | None = None
        self.error: str | None = None
        self.kill: TreeKill | None = None
        self.killed = False
        self.survivors: set[ProcRef] = set()
        #: Why output is being dropped (the log cannot be written), once known.
        self.log_error: str | None = None
        #: The leader exited before any stop, and the keeper is stopping what it left: a stop or a
        #: deadline that comes meanwhile does not make the run "stopped" or "timed_out".
        self.exited_on_its_own = False

    @property
    def adopted(self) -> bool:
        return self.pidfd is not None

    @property
    def marker(self) -> dict[str, str]:
        return run_marker(self.id, self.token)

    def where(self) -> dict[str, Any]:
        """Which run, which process, which boot: what the journal notes of a spawn (an ``orphan``'s fields)."""
        return {
            "id": self.id,
            "pid": self.leader.pid,
            "start_time": self.leader.start_time,
            "boot_id": self.boot_id,
            "started_at": self.started_at,
        }

    def report(self, kind: type[R]) -> R:
        """What the daemon is told about a live run: ``Live``, ``Spawned`` or ``Adopted``."""
        return kind(
            id=self.id,
            pid=self.leader.pid,
            start_time=self.leader.start_time,
            boot_id=self.boot_id,
            started_at=self.started_at,
            adopted=self.adopted,
            stopping=self.kill is not None,
            cgroup=None if self.cgroup is None else self.cgroup.path,
            output=None if self.output_fd is None else (self.output_fd, self.output_inode),
            progress=self.progress,
        )

    def set_exit(self, code: int) -> None:
        """Record the leader's exit (``os.waitstatus_to_exitcode``: negative for a signal)."""
        self.exited = True
        if code < 0:
            self.signal = signal.Signals(-code).name
        else:
            self.exit_code = code
        if self.popen is not None:
            self.popen.returncode = code  # so Popen never waits for it itself

    def drain(self) -> tuple[bool, Progress | None]:
        """Read what the pipe holds; returns (the pipe reached EOF, the latest progress line)."""
        latest = None
        for _ in range(MAX_READS):
            if self.output_fd is None:
                return True, latest
            try:
                data = os.read(self.output_fd, CHUNK_BYTES)
            except BlockingIOError:
                return False, latest
            if not data:
                return True, latest
            latest = self.scanner.feed(data) or latest
            self._write_log(data)
        return False, latest

    def _write_log(self, data: bytes) -> None:
        if self.log is None:
            return
        try:
            self.log.write(data)
        except OSError as exc:
            if self.log_error is None:
                self.log_error = f"output dropped: cannot write the log: {exc}"
                print(f"keeper: run {self.id}: {self.log_error}", file=sys.stderr, flush=True)

    def close_output(self) -> None:
        if self.output_fd is not None:
            os.close(self.output_fd)
            self.output_fd = None
        if self.log is not None:
            self.log.close()

    def status(self) -> Exit:
        """The exit status the daemon records."""
        error = "; ".join(e for e in (self.error, self.log_error) if e) or None
        if self.survivors:
            pids = ", ".join(str(ref.pid) for ref in sorted(self.survivors, key=lambda r: r.pid))
            error = f"{error}; " if error else ""
            error += f"still alive after SIGKILL: pid {pids}"
        return Exit(
            id=self.id,
            pid=self.leader.pid,
            start_time=self.leader.start_time,
            boot_id=self.boot_id,
            started_at=self.started_at,
            ended_at=time.time(),
            exit_code=self.exit_code,
            signal=self.signal,
            error=error,
            killed=self.killed,
            exited_on_its_own=self.exited_on_its_own,
            cgroup=None if self.cgroup is None else self.cgroup.path,
            progress=self.progress,
        )


def run_log(task_id: int, settings: LogSettings, make: Callable[..., RunLog]) -> RunLog:
    """A run's log from the ``log`` settings of a spawn or adopt request (``make``: RunLog or RunLog.resume).

    Raises:
        ValueError: the settings are out of range.
        OSError: the file cannot be opened.
    """
    return make(
        settings.dir,
        task_id,
        max_bytes=settings.max_bytes,
        keep=settings.keep,
        timestamps=settings.timestamps,
    )


def stop_leftovers(run: Run, leaders: Iterable[int], now: float) -> bool:
    """The run's leader exited (reaped): start stopping what it left running; False if nothing (or not asked).

    ``leaders``: the pids of the live runs' leaders (the keeper's live map: looked at again on each look).

    The stop is a ``TreeKill`` of those processes, with the type's grace;
    the keeper's tick finishes it and then the run. A line in the run's log
    (and the keeper's) names them, so whoever reads why a background
    process of theirs died finds it.
    """
    if run.leftovers_grace_s is None or run.adopted:
        return False
    if run.cgroup is not None:
        refs = {ProcRef(pid, t) for pid in run.cgroup.pids() if (t := proctree.start_time(pid)) is not None}
    else:
        refs = proctree.leftovers(run.leader, run.marker, leaders)
    if not refs:
        return False
    pids = ", ".join(str(ref.pid) for ref in sorted(refs, key=lambda ref: ref.pid))
    note = f"pymgr: the run's first process exited; stopping the {len(refs)} process(es) it left running: pid {pids}"
    print(f"keeper: run {run.id}: {note}", file=sys.stderr, flush=True)
    run._write_log(f"\n{note}\n".encode())
    run.exited_on_its_own = True
    run.kill = TreeKill(
        run.leader,
        run.marker,
        run.leftovers_grace_s,
        leader_gone=lambda: True,
        signal_leader=lambda sig: None,
        # Later looks go by the marker only: by then the leader's pid may lead another run's group.
        find=lambda: proctree.leftovers(run.leader, run.marker, leaders, by_group=False),
        cgroup=run.cgroup,
    )
    run.kill.start(now, known=refs)
    return True
