"""The keeper's view of one run, and the durable exit statuses it owes the daemon.

Rules:
- A ``Run`` is a process the keeper started (its child, with an output
  pipe) or adopted after an earlier keeper died (not its child: watched
  through a pidfd, exit status unknowable; its output pipe is taken over
  from the daemon's second read end when the daemon has one, see
  ``outputhold``).
- Output is drained without ever blocking: the pipe is non-blocking and is
  read until it is empty or ``MAX_READS`` chunks were taken (then the loop
  serves the others and comes back). Output the disk refuses is dropped,
  with one line on the keeper's stderr: a task never blocks on its log.
- The read end stays open until the last writer closes it (leftover
  descendants of an ended run included), so no writer ever gets SIGPIPE.
- Every spawn is written to the same journal too: ``spawning`` before the
  process is made, ``started`` (pid and kernel start time) once it exists.
  Plain writes, no fsync: they survive the keeper being killed, and a host
  that crashes takes every run with it. A later keeper reports a
  ``started`` run nobody supervises (``orphan``) so the daemon re-adopts
  exactly that process, and turns a ``spawning`` with no ``started`` into
  a ``lost`` status (``SPAWN_UNKNOWN``). So what is adopted is always a
  process a keeper made, never one found by its environment (a marker can
  be copied by anyone who learns it).
- An exit status is appended to ``<run_dir>/status.journal`` and synced
  to disk (one fsync per loop turn for all the exits of that turn) before
  it is sent, and dropped only when the daemon acknowledges it, after
  recording it in its store. So a status survives the daemon and the keeper
  being killed at any point, and is delivered at least once: the daemon
  ignores repeats.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from pymgr.keeper.progress import Progress, ProgressScanner
from pymgr.keeper import proctree as _proctree
from pymgr.keeper.cgroup import Cgroup
from pymgr.keeper.proctree import ProcRef, run_marker
from pymgr.keeper.outputhold import open_pipe
from pymgr.keeper.runlog import RunLog
from pymgr.keeper.treekill import TreeKill

#: Bytes taken from a pipe per read: the pipe's default capacity.
CHUNK_BYTES = 64 * 1024

#: Chunks taken from one pipe before the loop serves the others: 1 MiB, so
#: one chatty task cannot starve the rest, nor the daemon's messages.
MAX_READS = 16

#: Size past which the status journal is rewritten with only what is still
#: unacknowledged: a few thousand exits (a status is ~300 bytes).
COMPACT_BYTES = 1024 * 1024

#: The reason of every run whose end no keeper saw.
UNKNOWN_EXIT = "exit status unknown: the keeper was gone when it ended"

#: The reason of a run whose keeper died while spawning it, before it could write down the process.
SPAWN_UNKNOWN = (
    "lost: the keeper died while starting it, before it noted the process; "
    "whether it started is unknown, so it is not started again"
)


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
        """Which run, which process, which boot: the fields every report starts with."""
        return {
            "id": self.id,
            "pid": self.leader.pid,
            "start_time": self.leader.start_time,
            "boot_id": self.boot_id,
            "started_at": self.started_at,
        }

    def info(self) -> dict[str, Any]:
        """What the daemon is told about a live run."""
        return {
            **self.where(),
            "adopted": self.adopted,
            "stopping": self.kill is not None,
            "cgroup": None if self.cgroup is None else self.cgroup.path,
            "output": None if self.output_fd is None else [self.output_fd, self.output_inode],
            "progress": list(self.progress) if self.progress else None,
        }

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

    def status(self) -> dict[str, Any]:
        """The exit status the daemon records."""
        error = "; ".join(e for e in (self.error, self.log_error) if e) or None
        if self.survivors:
            pids = ", ".join(str(ref.pid) for ref in sorted(self.survivors, key=lambda r: r.pid))
            error = f"{error}; " if error else ""
            error += f"still alive after SIGKILL: pid {pids}"
        return {
            **self.where(),
            "ended_at": time.time(),
            "exit_code": self.exit_code,
            "signal": self.signal,
            "error": error,
            "killed": self.killed,
            "exited_on_its_own": self.exited_on_its_own,
            "cgroup": None if self.cgroup is None else self.cgroup.path,
            "progress": list(self.progress) if self.progress else None,
        }


class StatusJournal:
    """Exit statuses the daemon has not acknowledged yet, and spawns not ended yet, in one append-only file.

    One JSON line per status, one ``{"ack": id}`` line per acknowledgement,
    ``{"spawning": id}`` and ``{"started": {...}}`` per spawn (see the
    module rules), ``{"unspawned": id}`` when a spawn came to nothing.
    ``sync`` (one fsync) makes every status added since the last one
    durable; the keeper calls it once per loop turn, before it sends those
    statuses, so a hundred runs ending together cost one fsync, not a
    hundred. An acknowledgement is not synced: losing one only means the
    status is sent again, and the daemon ignores what it has recorded. The
    file is rewritten (atomically) when it grows past ``COMPACT_BYTES``, with
    only the statuses still unacknowledged and the spawns still open. A line
    cut short by a crash is skipped when the file is read back.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: Spawns whose run has not ended: id -> where its process is (None: not made yet).
        self.spawns: dict[int, dict[str, Any] | None] = {}
        self.unacked: dict[int, dict[str, Any]] = self._load()
        self._fd = self._open()
        self._dirty = False
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)

    def _load(self) -> dict[int, dict[str, Any]]:
        unacked: dict[int, dict[str, Any]] = {}
        try:
            with open(self.path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return unacked
        for number, line in enumerate(lines, start=1):
            try:
                self._replay(json.loads(line), unacked)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                print(f"keeper: {self.path}:{number}: skipping a damaged line: {exc}", file=sys.stderr, flush=True)
        return unacked

    def _replay(self, entry: dict[str, Any], unacked: dict[int, dict[str, Any]]) -> None:
        if "ack" in entry:
            unacked.pop(int(entry["ack"]), None)
            self.spawns.pop(int(entry["ack"]), None)
        elif "spawning" in entry:
            self.spawns[int(entry["spawning"])] = None
        elif "started" in entry:
            self.spawns[int(entry["started"]["id"])] = dict(entry["started"])
        elif "unspawned" in entry:
            self.spawns.pop(int(entry["unspawned"]), None)
        else:
            unacked[int(entry["id"])] = entry
            self.spawns.pop(int(entry["id"]), None)

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self._fd, line)
        except OSError as exc:
            print(f"keeper: cannot write {self.path} (kept in memory only): {exc}", file=sys.stderr, flush=True)
            return
        self._size += len(line)

    def spawning(self, task_id: int) -> None:
        """A process for ``task_id`` is about to be made (written before the spawn)."""
        self.spawns[task_id] = None
        self._append({"spawning": task_id})

    def started(self, where: dict[str, Any]) -> None:
        """The process of a spawn exists: ``where`` has its ``id``, ``pid``, ``start_time``, ``boot_id``, ``started_at``."""
        self.spawns[where["id"]] = where
        self._append({"started": where})

    def unspawned(self, task_id: int) -> None:
        """The spawn came to nothing (it failed, or its process was gone when adopted)."""
        if task_id in self.spawns:
            del self.spawns[task_id]
            self._append({"unspawned": task_id})

    def add(self, status: dict[str, Any]) -> None:
        """Keep a status until it is acknowledged (durable after the next ``sync``); the run's spawn is over."""
        self.unacked[status["id"]] = status
        self.spawns.pop(status["id"], None)
        self._append(status)
        self._dirty = True

    def ack(self, task_id: int) -> None:
        """The daemon recorded the run's end (or knows the run is over): forget its status and its spawn."""
        had_status = self.unacked.pop(task_id, None) is not None
        had_spawn = task_id in self.spawns
        self.spawns.pop(task_id, None)
        if not (had_status or had_spawn):
            return
        self._append({"ack": task_id})
        if self._size > COMPACT_BYTES:
            self._compact()

    def sync(self) -> None:
        """Make every status added so far durable (one fsync, only if something was added)."""
        if self._dirty:
            self._dirty = False
            try:
                os.fsync(self._fd)
            except OSError as exc:
                print(f"keeper: cannot sync {self.path}: {exc}", file=sys.stderr, flush=True)

    def _compact(self) -> None:
        temporary = self.path + ".tmp"
        entries = [{"spawning": i} if w is None else {"started": w} for i, w in self.spawns.items()]
        entries += self.unacked.values()
        data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in entries)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temporary, self.path)
        except OSError as exc:
            print(f"keeper: cannot compact {self.path}: {exc}", file=sys.stderr, flush=True)
            return
        os.close(self._fd)
        self._fd = self._open()
        self._size = len(data)


def settle_spawns(journal: StatusJournal, boot_id: str) -> None:
    """At a keeper's start: a spawn an earlier keeper began without noting its process ends ``lost`` (``SPAWN_UNKNOWN``)."""
    for task_id in [task_id for task_id, where in journal.spawns.items() if where is None]:
        journal.add(
            {
                "id": task_id, "pid": None, "start_time": None, "boot_id": boot_id, "started_at": None,
                "ended_at": time.time(), "exit_code": None, "signal": None, "error": SPAWN_UNKNOWN,
                "killed": False, "exited_on_its_own": False, "progress": None,
            }
        )  # fmt: skip
    journal.sync()


def orphans(journal: StatusJournal, supervised: Iterable[int]) -> list[dict[str, Any]]:
    """Runs an earlier keeper started whose end nobody saw and that no keeper supervises now (``supervised``)."""
    skip = set(supervised) | set(journal.unacked)
    return [dict(where) for task_id, where in journal.spawns.items() if where is not None and task_id not in skip]


def vanished(leader: ProcRef, recorded_boot: object, boot: str) -> str:
    """Why a recorded run can no longer be found, in words."""
    if recorded_boot != boot:
        return "lost: the host was rebooted since it started"
    now = _proctree.start_time(leader.pid)
    if now is None:
        return f"{UNKNOWN_EXIT} (process {leader.pid} is gone)"
    return f"{UNKNOWN_EXIT} (pid {leader.pid} now belongs to another process)"


def run_log(task_id: int, settings: Any, make: Callable[..., RunLog]) -> RunLog:
    """A run's log from the ``log`` settings of a spawn or adopt request (``make``: RunLog or RunLog.resume).

    Raises:
        KeyError, ValueError, TypeError: the settings are missing or malformed.
        OSError: ``RunLog.resume`` cannot open the file.
    """
    return make(
        str(settings["dir"]),
        task_id,
        max_bytes=int(settings["max_bytes"]),
        keep=int(settings["keep"]),
        timestamps=bool(settings.get("timestamps")),
    )


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


def take_output(run: Run, message: dict[str, Any], listdir: Callable[[str], list[str]] = os.listdir) -> None:
    """Read an adopted run's pipe again, from the daemon's read end, into the same log (``listdir``: see RunLog.resume)."""
    where = message.get("output")
    if not where:
        return  # the daemon holds none: the run's output is not captured
    try:
        pipe = open_pipe(int(where["pid"]), int(where["fd"]), int(where["inode"]))
    except (KeyError, ValueError, TypeError, OSError) as exc:
        print(f"keeper: task {run.id}: cannot take its output pipe {where!r}: {exc}", file=sys.stderr, flush=True)
        return
    if pipe is None:
        return  # the daemon let it go meanwhile (the run ended)
    try:
        run.log = run_log(run.id, message.get("log"), functools.partial(RunLog.resume, listdir=listdir))
    except (KeyError, ValueError, TypeError, OSError) as exc:
        # Drained all the same, the output dropped: a pipe nobody reads would block the run for good.
        run.log_error = f"output dropped: cannot reopen the log after the keeper changed: {exc}"
        print(f"keeper: task {run.id}: {run.log_error}", file=sys.stderr, flush=True)
    run.output_fd, run.output_inode = pipe, int(where["inode"])


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
        refs = {ProcRef(pid, t) for pid in run.cgroup.pids() if (t := _proctree.start_time(pid)) is not None}
    else:
        refs = _proctree.leftovers(run.leader, run.marker, leaders)
    if not refs:
        return False
    pids = ", ".join(str(ref.pid) for ref in sorted(refs, key=lambda ref: ref.pid))
    note = f"pymgr: the run's first process exited; stopping the {len(refs)} process(es) it left running: pid {pids}"
    print(f"keeper: run {run.id}: {note}", file=sys.stderr, flush=True)
    run._write_log(f"\n{note}\n".encode())
    run.exited_on_its_own = True
    run.kill = TreeKill(
        run.leader, run.marker, run.leftovers_grace_s, leader_gone=lambda: True, signal_leader=lambda sig: None,
        # Later looks go by the marker only: by then the leader's pid may lead another run's group.
        find=lambda: _proctree.leftovers(run.leader, run.marker, leaders, by_group=False), cgroup=run.cgroup,
    )  # fmt: skip
    run.kill.start(now, known=refs)
    return True
