"""Spawn requests leave as the run queue releases runs.

Rules:
- ``pump`` sends a spawn request for each run the queue releases now (its
  type's ``max_concurrent`` allowing, its back-off over), and comes back
  when the next back-off ends. It runs from the loop or right after a
  commit, never inside a store transaction: a run's request leaves only
  once its record is stored.
- Nothing leaves before the keeper reported its runs (``ready``) or while
  the manager shuts down: the keeper's ``synced`` pumps again.
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pymgr.errors import Unavailable
from pymgr.keeper.cgroup import CgroupTree
from pymgr.tasks.keeperlink import KeeperLink
from pymgr.tasks.keepermessages import spawn_request
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.states import TaskState
from pymgr.tasks.transitions import Transitions

log = logging.getLogger("pymgr.tasks")

#: Seconds before runs put back in the queue (a request that could not leave) are tried again.
PUMP_RETRY_S = 1.0


class SpawnPump:
    """See the module rules."""

    def __init__(
        self,
        *,
        queue: RunQueue,
        table: RunTable,
        link: KeeperLink,
        transitions: Transitions,
        clock: Callable[[], datetime],
        ready: Callable[[], bool],
        log_dir: Path,
        cgroups: CgroupTree | None,
    ) -> None:
        self._queue = queue
        self._table = table
        self._link = link
        self._transitions = transitions
        self._clock = clock
        self._ready = ready
        self._log_dir = log_dir
        self._cgroups = cgroups
        self._handle: asyncio.Handle | None = None
        #: The pending pump is a back-off's timer (True), not this turn's call (False).
        self._at_due = False

    def enqueue(self, record: TaskRecord) -> None:
        """Queue a run found at recovery or a restart; spawned from the loop, after the caller's commit."""
        not_before = None if record.not_before is None else record.not_before.timestamp()
        self._queue.add(record.id, record.type, not_before)
        self.schedule()  # never now: callers may be inside a store transaction not yet committed

    def schedule(self) -> None:
        """Pump from the loop, soon (once per turn however often asked)."""
        if self._handle is not None:
            if not self._at_due:
                return  # one is coming this turn already
            self._handle.cancel()  # a back-off's timer must not hold up what can go now
        try:
            self._handle = asyncio.get_running_loop().call_soon(self.pump)
            self._at_due = False
        except RuntimeError:
            self._handle = None  # no loop (a reload outside the daemon): the next start or exit pumps

    def pump_now(self) -> None:
        """Pump at once (new runs were just committed); a failure is logged, never raised."""
        if self._handle is not None:
            self._handle.cancel()
        try:
            self.pump()
        except Unavailable as exc:  # the keeper went away meanwhile: its reconnect pumps again
            log.error("cannot send spawn requests to the task keeper: %s", exc)
        except Exception:  # the starts waiting on it are answered all the same
            log.exception("sending spawn requests failed; this is a bug")

    def pump(self) -> None:
        """Spawn the runs the queue releases; come back when the next back-off ends.

        Raises:
            Unavailable: the keeper link or the store failed (the runs wait in the queue again).
        """
        self._handle = None
        if not self._ready():
            return
        now = self._clock().timestamp()
        taken = self._queue.take_ready(now)
        for task_id, type_name in taken:
            self._table.took_slot(task_id, type_name)
        for index, (task_id, _) in enumerate(taken):
            try:
                self._spawn(task_id)
            except Unavailable:  # the keeper link broke, or the store: this run and the rest wait again
                self._put_back(taken[index:])
                raise
            except Exception as exc:  # this run's request cannot be sent at all (larger than a frame)
                self._unsendable(task_id, exc)
        due = self._queue.next_due(now)
        if due is not None:
            self._call_at(due - now)

    def _spawn(self, task_id: int) -> None:
        record = self._table.record(task_id)
        if record is None or record.state is not TaskState.QUEUED:
            self._table.release_slot(task_id)
            return
        self.send_spawn(record)

    def send_spawn(self, record: TaskRecord) -> None:
        """Ask the keeper to start a queued run.

        Raises:
            Unavailable: the keeper is not connected.
        """
        task_type = self._table.type_of(record)
        self._table.in_flight.add(record.id)
        self._link.send(spawn_request(record, task_type, self._log_dir, self._cgroups))

    def _put_back(self, unsent: list[tuple[int, str]]) -> None:
        for task_id, type_name in unsent:
            self._table.in_flight.discard(task_id)
            self._table.release_slot(task_id)  # the slot take_ready counted for it
            self._queue.add(task_id, type_name)
        # and go then, unless a start, an exit or the keeper's reconnect pumps sooner
        self._call_at(PUMP_RETRY_S)

    def _call_at(self, delay_s: float) -> None:
        self._handle = asyncio.get_running_loop().call_later(delay_s, self.pump)
        self._at_due = True

    def _unsendable(self, task_id: int, exc: Exception) -> None:
        log.error("task %d: its spawn request cannot be sent: %s", task_id, exc)
        try:
            self._transitions.spawn_failed(task_id, f"spawn failed: the request cannot be sent: {exc}")
        except Exception:  # not even recorded: it stays out of the queue, so it never holds up the others
            log.exception("task %d: cannot record that its spawn request cannot be sent", task_id)
            self._table.in_flight.discard(task_id)
            self._table.release_slot(task_id)
        self.schedule()

    def cancel(self) -> None:
        """No more pumping (shutdown)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
