"""New runs into the store and the queue: the starts of one event-loop turn share one commit.

Rules:
- The first start of a loop turn is committed at once (a lone start waits
  for nothing); the starts that follow it in the same turn (a burst of web
  requests) wait in memory and are committed together at the end of the
  turn: one transaction, one WAL append, instead of one per start. In a
  same-run A/B of ``bench/bench_tasks.py`` this saved about 0.25 ms of
  daemon CPU per start in a burst of 100 (0.6 against 0.85 ms).
- Nothing of a start happens before its commit: then its runs are taken in
  (remembered, queued), their spawn requests sent, they are announced as
  queued, and the start is answered, group after group in commit order.
  This happens whether the caller still waits or not: a stored run runs.
- Nothing waiting here is in the store: reads never see it, and no read or
  other write commits it. Its runs count against the caps at once
  (provisional negative ids), and a start with the key of a waiting run
  gets that run, as it would a stored one.
- A failed commit fails every start of its group (each with an error of
  its own), with nothing stored or spawned.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pymgr.errors import Conflict, PymgrError
from pymgr.tasks.logreader import LogReader
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.spawnqueue import SpawnPump
from pymgr.tasks.store import TaskStore
from pymgr.tasks.tasktypes import TaskType
from pymgr.tasks.transitions import Transitions

log = logging.getLogger("pymgr.tasks")


@dataclass(eq=False)
class _Start:
    """One ``submit``: its new runs (not stored yet), their type, and the future its caller waits on."""

    records: list[TaskRecord]
    task_type: TaskType
    provisional: list[int]
    stored: asyncio.Future[list[TaskRecord]]


class Intake:
    """See the module rules."""

    def __init__(
        self,
        *,
        store: TaskStore,
        table: RunTable,
        queue: RunQueue,
        pump: SpawnPump,
        transitions: Transitions,
        logs: LogReader,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._table = table
        self._queue = queue
        self._pump = pump
        self._transitions = transitions
        self._logs = logs
        self._clock = clock
        self._waiting: list[_Start] = []
        self._turn_started = False
        self._provisional_ids = itertools.count(-1, -1)

    def submit(self, records: list[TaskRecord], task_type: TaskType) -> asyncio.Future[list[TaskRecord]]:
        """Store new queued runs of ``task_type`` (see the module rules).

        Returns:
            A future of the stored records (with their ids), set once they
            are committed and their spawn requests left; or the commit's error.
        """
        loop = asyncio.get_running_loop()
        start = _Start(
            records, task_type, [next(self._provisional_ids) for _ in records], loop.create_future()
        )
        start.stored.add_done_callback(_retrieve)
        for token, record in zip(start.provisional, records, strict=True):
            self._table.caps.add(token, record.started_by)
        if self._turn_started:
            self._waiting.append(start)
        else:
            self._turn_started = True
            loop.call_soon(self._end_turn)
            self._commit([start])
        return start.stored

    @property
    def waiting(self) -> bool:
        """Starts wait for the end of this loop turn to be committed."""
        return bool(self._waiting)

    def _waiting_with_key(self, key: str) -> tuple[str, asyncio.Future[list[TaskRecord]], int] | None:
        """The waiting start of a run with ``key``: its type, its future, the run's index in it."""
        for start in self._waiting:
            for index, record in enumerate(start.records):
                if record.key == key:
                    return start.task_type.name, start.stored, index
        return None

    def holder(self, key: str | None, type_name: str) -> asyncio.Future[TaskRecord] | None:
        """The active run holding ``key``, stored or waiting to be, if any (a future of its record).

        Raises:
            Conflict: it is a run of another type than ``type_name``.
        """
        if key is None:
            return None
        active = self._store.find_active(key)
        waiting = None if active is not None else self._waiting_with_key(key)
        if active is not None:
            held_by, holder_type, holder_id = f"task {active.id}", active.type, active.id
        elif waiting is not None:
            held_by, holder_type, holder_id = "a task starting now", waiting[0], None
        else:
            return None
        if holder_type != type_name:
            raise Conflict(
                f"key {key!r} is held by {held_by} of type {holder_type!r}, not {type_name!r}",
                details={"key": key, "id": holder_id, "type": holder_type},
            )
        future: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        if active is not None:
            future.set_result(active)
        elif waiting is not None:
            _, stored, index = waiting
            stored.add_done_callback(lambda done: _chain(done, index, future))
        return future

    def _end_turn(self) -> None:
        self._turn_started = False
        waiting, self._waiting = self._waiting, []
        if waiting:
            self._commit(waiting)

    def _commit(self, starts: list[_Start]) -> None:
        try:
            with self._store.batch():
                stored = [[self._store.add(record) for record in start.records] for start in starts]
                pruned = self._store.prune(self._clock(), by_age=False)
        except PymgrError as exc:
            log.error("task store: %s; the starts waiting for it failed", exc)
            for start in starts:
                self._drop_provisional(start)
                # One error each: a shared instance would collect every waiter's traceback.
                start.stored.set_exception(copy.copy(exc))
            return
        try:
            self._take_in(starts, stored, pruned)
        finally:  # stored runs are answered, even if what follows the commit failed (a bug, logged)
            for start, records in zip(starts, stored, strict=True):
                if not start.stored.done():
                    start.stored.set_result(records)

    def _take_in(
        self, starts: list[_Start], stored: list[list[TaskRecord]], pruned: list[TaskRecord]
    ) -> None:
        """After the commit: the runs remembered, queued, sent for, announced, and their starts answered."""
        for start, records in zip(starts, stored, strict=True):
            self._drop_provisional(start)
            for record in records:
                self._table.take_in(record, start.task_type)
                self._queue.add(record.id, record.type)
        self._drop_logs(pruned)
        self._pump.pump_now()
        for start, records in zip(starts, stored, strict=True):
            for record in records:
                self._transitions.announce_queued(record)
            start.stored.set_result(records)

    def _drop_provisional(self, start: _Start) -> None:
        for token in start.provisional:
            self._table.caps.discard(token)

    def _drop_logs(self, pruned: list[TaskRecord]) -> None:
        for old in pruned:
            try:
                self._logs.remove(old.id)
            except (OSError, PymgrError) as exc:
                log.error("task %d: its log outlived its record (dropped by retention): %s", old.id, exc)


def _retrieve(future: asyncio.Future[list[TaskRecord]]) -> None:
    """Mark a failure as seen: a start whose caller left while it waited leaves it unread."""
    if not future.cancelled():
        future.exception()


def _chain(stored: asyncio.Future[list[TaskRecord]], index: int, holder: asyncio.Future[TaskRecord]) -> None:
    """The run at ``index`` of a waiting start, once stored, is the holder of its key (or its failure)."""
    if holder.done():
        return
    if stored.cancelled():
        holder.cancel()
    elif (error := stored.exception()) is not None:
        holder.set_exception(error)
    else:
        holder.set_result(stored.result()[index])
