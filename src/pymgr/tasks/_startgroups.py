"""Group commit of task starts: the starts of one event-loop turn share one store transaction.

Rules:
- The first start of a loop turn is committed at once (a lone start waits
  for nothing); the starts that follow it in the same turn (a burst of web
  requests) are staged in the store's open group and committed at the end
  of the turn, or sooner by any other store read or write (store.py,
  "Group commit").
- Nothing of a start happens before its commit returned: the store's
  callback takes its run in (queued, in memory), then ``settle`` sends the
  spawn requests, announces the runs and answers the starts, group after
  group in commit order.
- The store's callback may run inside any store call (a read commits the
  group first), so it only records; the spawning waits for ``settle``, at
  once after a commit of our own, else from the loop.
- A failed commit fails every start of its group (each with an error of
  its own), with nothing stored or spawned. A start whose caller left
  while it waited still runs: its record is committed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pymgr.errors import PymgrError, Unavailable
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.store import TaskStore
from pymgr.tasks.tasktypes import TaskType

log = logging.getLogger("pymgr.tasks")


class Host(Protocol):
    """What the task manager does for a committed group."""

    def _take_in(self, record: TaskRecord, task_type: TaskType) -> None:
        """Hold the run in memory and queue it (no spawning, no I/O: this runs inside store calls)."""
        ...

    def _drop_logs(self, pruned: list[TaskRecord]) -> None:
        """Delete the logs of records the group's prunes dropped."""
        ...

    def _spawn_queued(self) -> None:
        """Send the spawn requests the queue allows now (never raises)."""
        ...

    def _announce_queued(self, record: TaskRecord) -> None:
        """Log and publish a run as queued, unless it has moved on already (never raises)."""
        ...


@dataclass(eq=False)
class _Group:
    """The starts sharing one commit: each record, its type and the future its start waits on."""

    staged: list[tuple[TaskRecord, TaskType, asyncio.Future[None]]] = field(default_factory=list)
    #: Ended records the group's prunes dropped: their logs go once the group is committed.
    pruned: list[TaskRecord] = field(default_factory=list)
    on_done: Any = None


class StartGroups:
    """See the module rules."""

    def __init__(self, store: TaskStore, host: Host, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._host = host
        self._clock = clock
        #: The group staged in the store's open transaction, or None.
        self._open: _Group | None = None
        #: Committed groups not yet spawned, announced and answered, oldest first.
        self._committed: deque[_Group] = deque()
        self._turn_started = False

    def stage(self, record: TaskRecord, task_type: TaskType) -> tuple[TaskRecord, asyncio.Future[None]]:
        """Store a new queued run (and prune by count) in this turn's group.

        Returns:
            The record with its id, and a future that ends once the run is
            committed and its spawn request left (or fails with the commit).

        Raises:
            Unavailable: this start's own write failed (nothing of it stored).
        """
        loop = asyncio.get_running_loop()
        first = not self._turn_started
        if first:
            self._turn_started = True
            loop.call_soon(self._end_turn)
        group = self._open
        if group is None:
            group = self._open = _Group()
            group.on_done = functools.partial(self._done, group)
        try:
            with self._store.group(group.on_done):
                record = self._store.add(record)
                group.pruned += self._store.prune(self._clock(), by_age=False)
        except BaseException:
            if self._open is group and not group.staged and not self._store.group_open:
                self._open = None  # it never began
            raise
        stored: asyncio.Future[None] = loop.create_future()
        stored.add_done_callback(_retrieve)
        group.staged.append((record, task_type, stored))
        if first:
            self.commit()
        return record, stored

    def commit(self) -> None:
        """Commit the open group, if any, then settle every committed group."""
        try:
            self._store.commit_group()
        except Unavailable as exc:
            log.error("task store: %s; the starts waiting for it failed", exc)
        self.settle()

    def _end_turn(self) -> None:
        self._turn_started = False
        self.commit()

    def _done(self, group: _Group, error: PymgrError | None) -> None:
        """The store's word on a group's commit (see the module rules: this only records)."""
        if self._open is group:
            self._open = None
        if error is not None:
            for _, _, stored in group.staged:
                if not stored.done():
                    # One error each: a shared instance would collect every waiter's traceback.
                    stored.set_exception(Unavailable(error.message, details=error.details))
            return
        for record, task_type, _ in group.staged:
            self._host._take_in(record, task_type)
        self._committed.append(group)
        self._host._drop_logs(group.pruned)
        asyncio.get_running_loop().call_soon(self.settle)

    def settle(self) -> None:
        """Spawn, announce and answer the committed groups, oldest first (nothing if none is waiting)."""
        if not self._committed:
            return
        self._host._spawn_queued()
        while self._committed:
            group = self._committed.popleft()
            for record, _, stored in group.staged:
                self._host._announce_queued(record)
                if not stored.done():
                    stored.set_result(None)


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: a start cancelled while waiting for its group leaves it unread."""
    if not future.cancelled():
        future.exception()
