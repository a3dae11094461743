"""The queue's side of ``TaskManager``: spawn requests leave as the queue releases runs.

Rules:
- ``_pump`` sends a spawn request for each run the queue releases now (its
  type's ``max_concurrent`` allowing, its back-off over), and comes back
  when the next back-off ends. It runs from the loop or right after a
  commit, never inside a store transaction: a run's request leaves only
  once its record is stored.
- A request that cannot leave because the keeper link or the store is
  unavailable puts that run and the ones after it back in the queue with
  their slots, tried again after ``PUMP_RETRY_S`` (or sooner: the
  keeper's reconnect pumps too); a request that can never leave (larger
  than a frame) fails that run alone.
- A back-off's timer never holds up a pump that can go now.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pymgr.errors import Unavailable
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TaskState

if TYPE_CHECKING:
    from pymgr.tasks.runqueue import RunQueue
    from pymgr.tasks.tasktypes import TaskType

log = logging.getLogger("pymgr.tasks")

#: Seconds before runs put back in the queue (a request that could not leave) are tried again.
PUMP_RETRY_S = 1.0


class SpawnQueue:
    """See the module rules (a mixin of ``TaskManager``, with ``Supervision``)."""

    _queue: RunQueue
    _types: dict[str, TaskType]
    _synced: asyncio.Event
    _closing: bool
    _pump_handle: asyncio.Handle | None
    _pump_at_due: bool
    _slots: dict[int, str]
    _in_flight: set[int]

    def _enqueue(self, record: TaskRecord) -> None:
        """Queue a run found at recovery or a restart; spawned from the loop, after the caller's commit."""
        not_before = None if record.not_before is None else record.not_before.timestamp()
        self._queue.add(record.id, record.type, not_before)
        self._schedule_pump()  # never now: callers are inside a store transaction not yet committed

    def _spawn_queued(self) -> None:
        handle = self._pump_handle
        if handle is not None:
            handle.cancel()
        try:
            self._pump()
        except Unavailable as exc:  # the keeper went away meanwhile: its reconnect pumps again
            log.error("cannot send spawn requests to the task keeper: %s", exc)
        except Exception:  # the starts waiting on it are answered all the same
            log.exception("sending spawn requests failed; this is a bug")

    def _limit(self, type_name: str) -> int | None:
        task_type = self._types.get(type_name)
        return None if task_type is None else task_type.max_concurrent

    def _schedule_pump(self) -> None:
        if self._pump_handle is not None:
            if not self._pump_at_due:
                return  # one is coming this turn already
            self._pump_handle.cancel()  # a back-off's timer must not hold up what can go now
        try:
            self._pump_handle = asyncio.get_running_loop().call_soon(self._pump)
            self._pump_at_due = False
        except RuntimeError:
            self._pump_handle = None  # no loop (a reload outside the daemon): the next start or exit pumps

    def _pump(self) -> None:
        """Spawn the runs the queue releases; come back when the next back-off ends."""
        self._pump_handle = None
        if not self._synced.is_set() or self._closing:
            return  # the keeper's hello triggers the next pump
        now = self._clock().timestamp()
        taken = self._queue.take_ready(now)
        for index, (task_id, type_name) in enumerate(taken):
            self._slots[task_id] = type_name
            try:
                record = self._record(task_id)
                if record is None or record.state is not TaskState.QUEUED:
                    self._release(task_id)
                    continue
                self._send_spawn(record)
            except Unavailable:  # the keeper link broke, or the store: this run and the rest wait in the queue again
                for unsent_id, unsent_type in taken[index:]:
                    self._in_flight.discard(unsent_id)
                    self._slots.pop(unsent_id, None)
                    self._queue.release(unsent_type)  # the slot take_ready counted for it
                    self._queue.add(unsent_id, unsent_type)
                # and go then, unless a start, an exit or the keeper's reconnect pumps sooner
                self._pump_handle = asyncio.get_running_loop().call_later(PUMP_RETRY_S, self._pump)
                self._pump_at_due = True
                raise
            except Exception as exc:  # this run's request cannot be sent at all (larger than a frame): it fails alone
                self._unsendable(task_id, exc)
        due = self._queue.next_due(now)
        if due is not None:
            self._pump_handle = asyncio.get_running_loop().call_later(due - now, self._pump)
            self._pump_at_due = True

    def _unsendable(self, task_id: int, exc: Exception) -> None:
        log.error("task %d: its spawn request cannot be sent: %s", task_id, exc)
        try:
            self._on_spawn_failed({"id": task_id, "error": f"spawn failed: the request cannot be sent: {exc}"})
        except Exception:  # not even recorded: it stays out of the queue, so it never holds up the others
            log.exception("task %d: cannot record that its spawn request cannot be sent", task_id)
            self._in_flight.discard(task_id)
            self._release(task_id)
