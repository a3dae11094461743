"""The active runs in memory: their latest records, settings, slots, deadlines, progress and waiters.

Rules:
- The store is written through: the table keeps the latest stored record
  of each active run this daemon touched, only to save reading it back;
  ``record`` reads the store for any other.
- A run keeps the settings of its type as they were when it started
  (``type_of``); a run from before this daemon gets its type's settings
  now, or defaults if its type is gone.
- A run holds a slot of its type (``max_concurrent``, counted by the
  queue) from the moment its spawn is requested until its record ends.
- Deadlines are timers of the event loop, measured from the run's
  ``started_at``; the table only arms and disarms them, what a deadline
  does is the caller's (``on_deadline``).
- Progress is kept here and written to the store in batches (``flush_progress``).
- When a run ends, ``forget`` drops all of it, and its waiters wake.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel

from pymgr.keeper.outputhold import OutputHolders
from pymgr.tasks.caps import ActiveRuns
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.states import TERMINAL
from pymgr.tasks.store import TaskStore
from pymgr.tasks.tasktypes import TaskType

#: The latest progress of a run: percent 0-100 and a message.
Progress = tuple[float, str | None]


class RunTable:
    """See the module rules."""

    def __init__(
        self,
        store: TaskStore,
        queue: RunQueue,
        clock: Callable[[], datetime],
        on_deadline: Callable[[int], None],
    ) -> None:
        self._store = store
        self._queue = queue
        self._clock = clock
        self._on_deadline = on_deadline
        self._types: dict[str, TaskType] = {}
        self._default_stop_grace_s = 0.0
        #: Active runs by caller: the caps of ``start``.
        self.caps = ActiveRuns()
        self._records: dict[int, TaskRecord] = {}
        self._settings: dict[int, TaskType] = {}
        #: Runs holding a slot of their type (id -> type).
        self.slots: dict[int, str] = {}
        #: Spawn requested, no answer yet.
        self.in_flight: set[int] = set()
        self._progress: dict[int, Progress] = {}
        self._progress_dirty: set[int] = set()
        self._deadlines: dict[int, asyncio.TimerHandle] = {}
        self._waiters: dict[int, asyncio.Event] = {}
        #: A second read end of each running run's output pipe (see ``keeper.outputhold``).
        self.holders = OutputHolders()

    def use_types(self, types: dict[str, TaskType], default_stop_grace_s: float) -> None:
        """The task types in force (at start and each reload), for runs without settings of their own."""
        self._types = types
        self._default_stop_grace_s = default_stop_grace_s

    # -- records ---------------------------------------------------------------------

    def record(self, task_id: int) -> TaskRecord | None:
        """A run's record: from memory while it is active, else from the store."""
        record = self._records.get(task_id)
        if record is None:
            record = self._store.get(task_id)
            if record is not None and record.state not in TERMINAL:
                record = self._records.setdefault(task_id, record)
        return record

    def remember(self, record: TaskRecord) -> None:
        """Keep the stored version of a run (call after it was written); an ended one is forgotten."""
        if record.state in TERMINAL:
            self.forget(record.id)
        else:
            self._records[record.id] = record
            self.caps.add(record.id, record.started_by)  # a restart counts against its caller too

    def take_in(self, record: TaskRecord, task_type: TaskType) -> None:
        """A new run, just stored: remembered with the settings it starts with."""
        self._settings[record.id] = task_type
        self.remember(record)

    def drop_cached(self) -> None:
        """Forget the cached records (a write failed: what memory holds was not stored)."""
        self._records.clear()

    def forget(self, task_id: int) -> None:
        """Drop all of an ended run, free its slot and wake its waiters."""
        self._records.pop(task_id, None)
        self.caps.discard(task_id)
        self._settings.pop(task_id, None)
        self._progress.pop(task_id, None)
        self._progress_dirty.discard(task_id)
        self.in_flight.discard(task_id)
        self.release_slot(task_id)
        self.holders.release(task_id)
        handle = self._deadlines.pop(task_id, None)
        if handle is not None:
            handle.cancel()
        waiter = self._waiters.pop(task_id, None)
        if waiter is not None:
            waiter.set()

    async def wait_ended(self, task_id: int) -> None:
        """Return once ``forget`` was called for this run."""
        await self._waiters.setdefault(task_id, asyncio.Event()).wait()

    async def wait_all_ended(self, records: list[TaskRecord], extra_s: float) -> int:
        """Wait for runs to end (the longest grace period plus ``extra_s``); returns how many did not."""
        if not records:
            return 0
        grace_s = max(self.type_of(record).stop_grace_s for record in records)
        active = [
            r.id for r in records if (now := self.record(r.id)) is not None and now.state not in TERMINAL
        ]
        if not active:
            return 0
        waits = [asyncio.ensure_future(self.wait_ended(task_id)) for task_id in active]
        _, pending = await asyncio.wait(waits, timeout=grace_s + extra_s)
        for waiting in pending:
            waiting.cancel()
        return len(pending)

    def type_of(self, record: TaskRecord) -> TaskType:
        """The settings a run started with; for a run from before this daemon, its type now (or defaults)."""
        settings = self._settings.get(record.id)
        if settings is None:
            settings = self._types.get(record.type) or TaskType(
                name=record.type,
                doc="",
                argv=tuple(record.argv),
                params_model=BaseModel,
                cwd=None,
                env={},
                stop_grace_s=self._default_stop_grace_s,
            )
            if record.state not in TERMINAL:
                self._settings[record.id] = settings
        return settings

    # -- slots --------------------------------------------------------------------------

    def hold_slot(self, record: TaskRecord) -> None:
        """A run that runs holds a slot of its type (once)."""
        if record.id not in self.slots:
            self.slots[record.id] = record.type
            self._queue.occupy(record.type)

    def took_slot(self, task_id: int, type_name: str) -> None:
        """The queue released this run and counted its slot (``RunQueue.take_ready``)."""
        self.slots[task_id] = type_name

    def release_slot(self, task_id: int) -> None:
        type_name = self.slots.pop(task_id, None)
        if type_name is not None:
            self._queue.release(type_name)

    # -- deadlines ------------------------------------------------------------------------

    def arm_deadline(self, record: TaskRecord) -> None:
        """Call ``on_deadline`` once the run's ``timeout_s`` from its start has passed (once per run)."""
        timeout_s = self.type_of(record).timeout_s
        if timeout_s is None or record.id in self._deadlines or record.started_at is None:
            return
        remaining = timeout_s - (self._clock() - record.started_at).total_seconds()
        loop = asyncio.get_running_loop()
        self._deadlines[record.id] = loop.call_later(max(0.0, remaining), self._deadline_passed, record.id)

    def _deadline_passed(self, task_id: int) -> None:
        self._deadlines.pop(task_id, None)
        self._on_deadline(task_id)

    def cancel_deadlines(self) -> None:
        for handle in self._deadlines.values():
            handle.cancel()
        self._deadlines.clear()

    # -- progress -------------------------------------------------------------------------

    def progress(self, task_id: int) -> Progress | None:
        return self._progress.get(task_id)

    def set_progress(self, task_id: int, progress: Progress, *, dirty: bool = True) -> None:
        """The latest progress of an active run (``dirty``: still to be written to the store)."""
        self._progress[task_id] = progress
        if dirty:
            self._progress_dirty.add(task_id)

    def with_progress(self, record: TaskRecord) -> TaskRecord:
        """The record with the latest progress known in memory."""
        latest = self._progress.get(record.id)
        if latest is None or record.state in TERMINAL:
            return record
        return dataclasses.replace(record, progress=latest[0], progress_message=latest[1])

    def flush_progress(self) -> None:
        """Write the progress that changed since the last flush.

        Raises:
            Unavailable: the store refused (the progress stays to be written).
        """
        if not self._progress_dirty:
            return
        dirty = {
            task_id: self._progress[task_id] for task_id in self._progress_dirty if task_id in self._progress
        }
        self._store.set_progress(dirty)
        self._progress_dirty.clear()
