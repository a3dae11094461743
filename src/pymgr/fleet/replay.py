"""The record of the action jobs this host has called: ``<state_dir>/fleet-actions.sqlite3``.

A task job is kept from running twice by its run's key in the task store; an
action job has no run, so this record does it, across daemon restarts too.

Rules:
- A job's id goes in *before* its call (``claim``); a job whose id is in
  already is not called again. A crash or a stop during the call leaves the
  id in: the job is called at most once on this host, never twice, and a
  call cut short is not made again (the agent marks its job ``lost``).
- A row is kept until ``forget_at`` (the job's ``submitted_at`` plus
  ``max_age_s``): after that the job is refused as too old before it gets
  here. Rows past it are deleted at most every ``PRUNE_EVERY_S`` seconds
  (on the index of ``forget_at``), and whenever the record is full.
- At most ``max_entries`` rows. Full of rows still in force, ``claim``
  raises ``RecordFull``: the job is refused rather than risk a second call.
- WAL with ``synchronous=FULL``: a claim is on disk before its call, even if
  the machine loses power. That costs an fsync per action job: about 0.2 ms
  at the median but up to 100 ms at times (a checkpoint, a busy disk), and a
  prune of 100 000 rows about 90 ms, so the event loop does neither itself:
  ``CallGuard`` runs them one at a time on a thread of their own.
- Only this daemon opens the file (the state directory's lock): the row
  count is kept in memory, so the bound costs no ``COUNT(*)`` per job.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path

from pymgr._fsguard import UnsafePathError, open_private, refuse_link

__all__ = ["FILE_NAME", "PRUNE_EVERY_S", "ActionRecord", "RecordError", "RecordFull", "Claim", "CallGuard"]

#: The record's file in the state directory.
FILE_NAME = "fleet-actions.sqlite3"
#: Seconds between two deletions of the rows past their time. Ten: a row outlives its ``forget_at`` by at
#: most that (harmless: the job is too old by then), and the DELETE runs on one job in many, not on each.
PRUNE_EVERY_S = 10.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS called (job_id TEXT PRIMARY KEY, forget_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS called_forget_at ON called (forget_at)",
)


class RecordError(Exception):
    """The record cannot be opened or written (the message names the file and what to check)."""


class RecordFull(RecordError):
    """The record holds ``max_entries`` rows still in force: the job is refused, not called."""


class ActionRecord:
    """The ids of the action jobs called here, each until its ``forget_at``.

    Args:
        path: the SQLite file (made 0600 if missing; a link or another user's file is refused).
        max_entries: rows kept at most (``[fleet] replay_max_entries``).
        clock: the time now, in seconds since the epoch (the clock jobs are checked against).

    Not thread-safe: use it from one thread at a time (``CallGuard`` does).

    Raises:
        RecordError: the file is unsafe or SQLite cannot open it.
    """

    def __init__(self, path: Path, *, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._max_entries = max_entries
        self._clock = clock
        try:
            for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
                refuse_link(path.with_name(name))
            os.close(open_private(path, os.O_RDWR | os.O_CREAT))
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._count: int = self._db.execute("SELECT COUNT(*) FROM called").fetchone()[0]
        except (UnsafePathError, OSError, sqlite3.Error) as exc:
            raise RecordError(f"the record of fleet action jobs {path} cannot be opened: {exc}") from None
        self._pruned_at = -math.inf

    def __len__(self) -> int:
        return self._count

    def claim(self, job_id: str, forget_at: float) -> bool:
        """Record ``job_id`` before its call.

        Returns:
            True: recorded now, the job may be called. False: it was recorded before, it must not be.

        Raises:
            RecordFull: ``max_entries`` rows are still in force, none of them ``job_id``.
            RecordError: SQLite failed to write.
        """
        now = self._clock()
        if now - self._pruned_at >= PRUNE_EVERY_S or self._count >= self._max_entries:
            self.prune()
        try:
            if self._count >= self._max_entries:
                if self._db.execute("SELECT 1 FROM called WHERE job_id = ?", (job_id,)).fetchone():
                    return False
                raise RecordFull(
                    f"the record of fleet action jobs called here holds replay_max_entries "
                    f"({self._max_entries}) jobs younger than max_age_s; the job is refused rather than "
                    "risk calling it twice: raise [fleet] replay_max_entries or lower max_age_s"
                )
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO called (job_id, forget_at) VALUES (?, ?)", (job_id, forget_at)
            )
        except sqlite3.Error as exc:
            raise RecordError(
                f"the record of fleet action jobs {self._path} cannot be written: {exc}"
            ) from None
        self._count += cursor.rowcount
        return cursor.rowcount == 1

    def prune(self) -> int:
        """Delete the rows past their ``forget_at``; how many went."""
        now = self._clock()
        try:
            gone = self._db.execute("DELETE FROM called WHERE forget_at < ?", (now,)).rowcount
        except sqlite3.Error as exc:
            raise RecordError(
                f"the record of fleet action jobs {self._path} cannot be pruned: {exc}"
            ) from None
        self._count -= gone
        self._pruned_at = now
        return gone

    def close(self) -> None:
        """Close the file (every claim is on disk already)."""
        self._db.close()


class Claim(Enum):
    """What ``CallGuard.claim`` found."""

    #: Recorded now: call the job.
    FIRST = "first"
    #: Recorded by this process, whose call of it is running now: leave it be.
    CALLING = "calling"
    #: Recorded before and not running here: called by this process (its hash has its end), or by an
    #: earlier one that may have stopped in the middle of the call.
    CALLED = "called"


class CallGuard:
    """The record for the event loop: its writes on a thread of their own, one at a time; the calls running now.

    Args and Raises: as ``ActionRecord``.
    """

    def __init__(self, path: Path, *, max_entries: int, clock: Callable[[], float] = time.time) -> None:
        self._record = ActionRecord(path, max_entries=max_entries, clock=clock)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pymgr-fleet-record")
        self._calling: set[str] = set()
        #: Held from a claim to its ``_calling`` entry, so a second entry of the job never sees the gap.
        self._claiming = asyncio.Lock()

    async def claim(self, job_id: str, forget_at: float) -> Claim:
        """``ActionRecord.claim`` off the event loop; ``FIRST`` marks the job running until ``ended``.

        Cancelled while it waits, the claim still completes: the job is then recorded without being
        called, which keeps it from being called later (at most once).

        Raises:
            RecordFull, RecordError: as ``ActionRecord.claim``.
        """
        loop = asyncio.get_running_loop()
        async with self._claiming:
            if await loop.run_in_executor(self._thread, self._record.claim, job_id, forget_at):
                self._calling.add(job_id)
                return Claim.FIRST
            return Claim.CALLING if job_id in self._calling else Claim.CALLED

    def ended(self, job_id: str) -> None:
        """The call of ``job_id`` (claimed ``FIRST``) is over, or will not be made."""
        self._calling.discard(job_id)

    def close(self) -> None:
        """Wait for the claim in progress, if any, and close the file."""
        self._thread.shutdown(wait=True)
        self._record.close()
