"""Finding and signalling the processes of a run, without ever hitting a stranger.

Rules:
- A process is named by ``ProcRef(pid, start_time)``; ``start_time`` is the
  kernel's start time (/proc/PID/stat field 22, clock ticks since boot).
  A pid alone is not an identity: the kernel reuses pids.
- Signals go through a pidfd: open it, check the start time, then signal
  the pidfd. Once open, a pidfd names that one process, so there is no
  window in which a reused pid could receive the signal.
- A run's processes are those started no earlier than its leader that are
  its descendants (only while the leader is unreaped: after that its pid may
  be reused) or that carry the run's marker in their environment
  (descendants that called setsid() and were re-parented): both
  ``PYMGR_TASK_ID=<id>`` and ``PYMGR_TASK_MARKER=<the run's random token>``.
  The id alone is not enough: another daemon, or a test suite running
  beside this one, has a task with the same id.
- A pid and start time mean nothing after a reboot: records carry the
  ``boot_id`` too.
- Linux only: /proc and pidfds (kernel 5.3+). Standard library only: the
  keeper process imports this.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

#: Environment variables every run carries, so escaped descendants can be found.
TASK_ID_VAR = "PYMGR_TASK_ID"
MARKER_VAR = "PYMGR_TASK_MARKER"

#: Index of the start time among the fields after the ")" of /proc/PID/stat:
#: those start at field 3 (state), and the start time is field 22.
_STARTTIME_INDEX = 22 - 3

#: Bytes read from /proc/PID/stat: its 52 fields take a few hundred (the command name at most 64).
_STAT_READ_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ProcRef:
    """One process, by pid and kernel start time."""

    pid: int
    start_time: int


#: Where the kernel names the current boot: a new random UUID at every boot.
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    """This boot's id (``BOOT_ID_PATH``)."""
    with open(BOOT_ID_PATH, encoding="ascii") as f:
        return f.read().strip()


def _stat(pid: int | str) -> bytes:
    """``/proc/PID/stat`` in one read: 3 system calls where ``open().read()`` makes 7 (the keeper
    reads it once per spawn, a tree kill once per process on the host; ~25 us against ~45 us here).

    Raises:
        FileNotFoundError, ProcessLookupError: no such process (any more).
    """
    fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, _STAT_READ_BYTES)  # a seq_file hands its whole text to the first read
    finally:
        os.close(fd)


def start_time(pid: int) -> int | None:
    """The kernel start time of ``pid``, or None when there is no such process."""
    try:
        stat = _stat(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and ")", so split after the last ")".
    return int(stat[stat.rindex(b")") + 2 :].split()[_STARTTIME_INDEX])


def _live_since(since: int) -> Iterator[tuple[int, int, list[bytes]]]:
    """(pid, start time, the stat fields after the command name) of every live process started at or after ``since``."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = _stat(name).rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        started = int(fields[_STARTTIME_INDEX])
        # Zombies ("Z") and the dead ("X") have exited already: nothing to stop.
        if started >= since and fields[0] not in (b"Z", b"X"):
            yield int(name), started, fields


def _processes_since(since: int) -> dict[int, tuple[int, int]]:
    """pid -> (ppid, start time) of every live process started at or after ``since``."""
    return {pid: (int(fields[1]), started) for pid, started, fields in _live_since(since)}


def run_marker(task_id: int, token: str) -> dict[str, str]:
    """The environment entries that mark a run's processes."""
    return {TASK_ID_VAR: str(task_id), MARKER_VAR: token}


def environ(pid: int) -> dict[bytes, bytes] | None:
    """The environment ``pid`` was started with, or None if it cannot be read (gone, a kernel thread)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:  # gone (ENOENT, ESRCH) or not ours to read (EACCES)
        return None
    return dict(item.partition(b"=")[::2] for item in raw.split(b"\0") if item)


def _has_marker(pid: int, marker: Mapping[str, str]) -> bool:
    env = environ(pid)
    return env is not None and all(env.get(name.encode()) == value.encode() for name, value in marker.items())


def alive(ref: ProcRef) -> bool:
    """True while ``ref`` names a live process (not a zombie, pid not reused)."""
    try:
        fields = _stat(ref.pid).rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return int(fields[_STARTTIME_INDEX]) == ref.start_time and fields[0] not in (b"Z", b"X")


def find_marked(markers: Iterable[Mapping[str, str]]) -> dict[str, list[ProcRef]]:
    """Live processes carrying each marker, oldest first, by the marker's token.

    One pass over /proc for all markers: used at recovery, to find runs a
    keeper started just before it died.
    """
    wanted = {m[MARKER_VAR].encode(): m[TASK_ID_VAR].encode() for m in markers}
    found: dict[str, list[ProcRef]] = {}
    for pid, (_, started) in _processes_since(0).items():
        env = environ(pid)
        token = None if env is None else env.get(MARKER_VAR.encode())
        if token in wanted and env is not None and env.get(TASK_ID_VAR.encode()) == wanted[token]:
            found.setdefault(token.decode(), []).append(ProcRef(pid, started))
    for refs in found.values():
        refs.sort(key=lambda ref: (ref.start_time, ref.pid))
    return found


def find_run_processes(leader: ProcRef, marker: Mapping[str, str], *, leader_reaped: bool) -> set[ProcRef]:
    """The processes of one run, leader excluded (see the module rules).

    Args:
        leader: the run's first process.
        marker: the run's ``run_marker``.
        leader_reaped: True once the leader's pid may have been reused;
            descendants are then found by the marker alone.
    """
    candidates = _processes_since(leader.start_time)
    candidates.pop(leader.pid, None)
    candidates.pop(os.getpid(), None)
    found: set[int] = set()
    if not leader_reaped:
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in candidates.items():
            children.setdefault(ppid, []).append(pid)
        stack = list(children.get(leader.pid, ()))
        while stack:
            pid = stack.pop()
            found.add(pid)
            stack.extend(children.get(pid, ()))
    found.update(pid for pid in candidates if pid not in found and _has_marker(pid, marker))
    return {ProcRef(pid, candidates[pid][1]) for pid in found}


def open_checked(ref: ProcRef) -> int | None:
    """A pidfd for ``ref``, or None when that process is gone (or its pid reused)."""
    try:
        fd = os.pidfd_open(ref.pid)
    except ProcessLookupError:
        return None
    if start_time(ref.pid) != ref.start_time:
        os.close(fd)
        return None
    return fd


def send_signal(ref: ProcRef, sig: signal.Signals) -> bool:
    """Signal one process if it is still the one ``ref`` names.

    Returns:
        True if the signal was sent.
    """
    fd = open_checked(ref)
    if fd is None:
        return False
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


def _children(pid: int) -> list[int]:
    """The children of ``pid`` (every thread's), from /proc/PID/task/TID/children; [] if it is gone."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += (int(child) for child in f.read().split())
        except OSError:
            continue  # the thread ended
    return found


def leftovers(
    leader: ProcRef, marker: Mapping[str, str], leaders: Iterable[int], *, by_group: bool = True
) -> set[ProcRef]:
    """What a run left running when its leader exited: cheap enough for every exit.

    The caller is a child subreaper (the keeper), so a process whose parent
    exited is re-parented to it. The run's leftovers are the caller's
    children that are no run's leader (``leaders``) and are the run's, by
    its marker or by its process group (the leader's pid), plus their
    descendants. One read of the caller's children and one look at each
    such child: nothing more when the run left nothing behind, unlike a walk
    over every process. A descendant counts only if the stat read that
    names it also names the parent it was listed under, and it is no older
    than the leader: a pid reused meanwhile is never taken. ``by_group``
    False (a later look, when the leader's pid may lead a new group by
    now): the marker alone.
    """
    skip = set(leaders)
    skip.add(leader.pid)
    found: set[ProcRef] = set()
    stack = [(pid, os.getpid()) for pid in _children(os.getpid()) if pid not in skip]
    while stack:
        pid, parent = stack.pop()
        try:
            fields = _stat(pid).rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        started = int(fields[_STARTTIME_INDEX])
        if fields[0] in (b"Z", b"X") or int(fields[1]) != parent or started < leader.start_time:
            continue  # exited (the loop reaps it), re-parented or reused meanwhile, or older than the run
        # One of the caller's own children must be the run's: in its group (the id is the leader's pid;
        # only a new process given that pid could lead another such group, and its members would be its
        # own children, not orphans here) or marked. Below those, every descendant is.
        in_group = by_group and int(fields[2]) == leader.pid
        if parent == os.getpid() and not in_group and not _has_marker(pid, marker):
            continue
        found.add(ProcRef(pid, started))
        stack.extend((child, pid) for child in _children(pid))
    return found


#: Index of the session id among the fields after the ")" of /proc/PID/stat (field 6).
_SESSION_INDEX = 6 - 3


def session_members(leader: ProcRef) -> set[ProcRef]:
    """The live processes of the session ``leader`` started (its pid is the session id), leader excluded.

    Safe after the leader was reaped: while any member lives, the kernel
    keeps the session id allocated, so no new process can take that pid;
    and only processes no older than the leader are taken.
    """
    return {
        ProcRef(pid, started)
        for pid, started, fields in _live_since(leader.start_time)
        if pid != leader.pid and int(fields[_SESSION_INDEX]) == leader.pid
    }
