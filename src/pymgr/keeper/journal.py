"""The exit statuses the keeper owes the daemon, and the spawns not ended yet, in one durable journal.

Rules:
- Every spawn is written to the journal: ``spawning`` before the process
  is made, ``started`` (pid and kernel start time) once it exists. Plain
  writes, no fsync: they survive the keeper being killed, and a host that
  crashes takes every run with it. A later keeper reports a ``started`` run
  nobody supervises (``orphan``) so the daemon re-adopts exactly that
  process, and turns a ``spawning`` with no ``started`` into a ``lost``
  status (``SPAWN_UNKNOWN``). So what is adopted is always a process a
  keeper made, never one found by its environment (a marker can be copied
  by anyone who learns it).
- An exit status is appended to ``<run_dir>/status.journal`` and synced
  to disk (one fsync per loop turn for all the exits of that turn) before
  it is sent, and dropped only when the daemon acknowledges it, after
  recording it in its store. So a status survives the daemon and the keeper
  being killed at any point, and is delivered at least once: the daemon
  ignores repeats.
- The journal is a file format, not the link: its lines are JSON objects
  (a status is the ``exit`` message's fields). What leaves for the daemon is
  read back into typed messages (``replayed_exit``, ``orphans``); a line a
  message cannot be made of is skipped, saying so.
- Standard library only: the keeper imports this.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from typing import Any

from pymgr.protocol.keeper import NEWS, Exit, KeeperMessageError, Orphan, decode, to_json

#: Size past which the status journal is rewritten with only what is still
#: unacknowledged: a few thousand exits (a status is ~300 bytes).
COMPACT_BYTES = 1024 * 1024

#: The reason of a run whose keeper died while spawning it, before it could write down the process.
SPAWN_UNKNOWN = (
    "lost: the keeper died while starting it, before it noted the process; "
    "whether it started is unknown, so it is not started again"
)


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
        return os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )

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
                print(
                    f"keeper: {self.path}:{number}: skipping a damaged line: {exc}",
                    file=sys.stderr,
                    flush=True,
                )
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
            print(
                f"keeper: cannot write {self.path} (kept in memory only): {exc}", file=sys.stderr, flush=True
            )
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
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
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


def status_entry(status: Exit) -> dict[str, Any]:
    """The journal line of an exit status: the ``exit`` message's fields."""
    entry = to_json(status)
    del entry["op"]
    return entry


def replayed_exit(entry: dict[str, Any]) -> Exit | None:
    """The ``exit`` message of a journalled status; None (said on stderr) if the line holds none."""
    message = _read(Exit.op, entry)
    return message if isinstance(message, Exit) else None


def settle_spawns(journal: StatusJournal, boot_id: str) -> None:
    """At a keeper's start: a spawn an earlier keeper began without noting its process ends ``lost`` (``SPAWN_UNKNOWN``)."""
    for task_id in [task_id for task_id, where in journal.spawns.items() if where is None]:
        status = Exit(
            id=task_id,
            pid=None,
            start_time=None,
            boot_id=boot_id,
            started_at=None,
            ended_at=time.time(),
            exit_code=None,
            signal=None,
            error=SPAWN_UNKNOWN,
            killed=False,
            progress=None,
        )
        journal.add(status_entry(status))
    journal.sync()


def orphans(journal: StatusJournal, supervised: Iterable[int]) -> list[dict[str, Any]]:
    """Runs an earlier keeper started whose end nobody saw and that no keeper supervises now (``supervised``)."""
    skip = set(supervised) | set(journal.unacked)
    return [
        dict(where) for task_id, where in journal.spawns.items() if where is not None and task_id not in skip
    ]


def orphan_reports(journal: StatusJournal, supervised: Iterable[int]) -> list[Orphan]:
    """``orphans`` as the messages that report them."""
    reports = (_read(Orphan.op, where) for where in orphans(journal, supervised))
    return [report for report in reports if isinstance(report, Orphan)]


def _read(op: str, entry: dict[str, Any]) -> object:
    try:
        return decode({**entry, "op": op}, NEWS)
    except KeeperMessageError as exc:
        print(
            f"keeper: skipping a journal entry that is no {op} message: {exc.reason}",
            file=sys.stderr,
            flush=True,
        )
        return None
