"""The one place a run's state changes: checked, stored, then logged, published and counted.

Rules:
- Only ``Transitions`` moves a run's state, through ``states.transition``;
  the record is stored before anything else hears of it.
- One log line per transition, always the same shape: elapsed seconds since
  the run was created, a mark, task id and type, outcome (``transitionlines.py``).
  Every transition is also a ``state`` event.
- Every cancellation keeps its source (``user``, ``deadline``,
  ``shutdown``) and who asked. A queued run that is stopped ends
  ``stopped`` without ever being spawned; a running one is killed by the keeper.
- An exit is recorded in one transaction with the restart it may cause
  (``restart.py``): the next attempt is a new queued record, counted
  before its process exists; the caller queues it.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pymgr.core.identity import INTERNAL, Identity
from pymgr.errors import Unavailable
from pymgr.metrics import Metrics
from pymgr.protocol.keeper import Exit, Kill
from pymgr.tasks import restart
from pymgr.tasks.transitionlines import MARKS, outcome, who
from pymgr.tasks.events import EventHub
from pymgr.tasks.keeperlink import KeeperLink
from pymgr.tasks.records import CancelSource, TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.states import TERMINAL, TaskState, end_state, transition
from pymgr.tasks.store import TaskStore
from pymgr.tasks.tasktypes import TaskType

log = logging.getLogger("pymgr.tasks")

#: Size of a run's random marker token: 64 bits make a clash between runs
#: alive at the same time on one host practically impossible.
MARKER_BYTES = 8


def when(epoch: float | None) -> datetime | None:
    """A time the keeper sent (epoch seconds), as a UTC datetime."""
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc)


class Transitions:
    """See the module rules."""

    def __init__(
        self,
        *,
        store: TaskStore,
        table: RunTable,
        queue: RunQueue,
        link: KeeperLink,
        events: EventHub,
        metrics: Metrics | None,
        clock: Callable[[], datetime],
        log_dir: Path,
    ) -> None:
        self._store = store
        self._table = table
        self._queue = queue
        self._link = link
        self._events = events
        self._metrics = metrics
        self._clock = clock
        self._log_dir = log_dir

    def new_record(
        self,
        task_type: TaskType,
        params: dict[str, Any],
        argv: list[str],
        key: str | None,
        started_by: dict[str, Any],
    ) -> TaskRecord:
        """A queued record, not stored yet (id 0; the store gives it one)."""
        return TaskRecord(
            id=0,
            type=task_type.name,
            key=key,
            params=params,
            argv=argv,
            state=TaskState.QUEUED,
            started_by=started_by,
            created_at=self._clock(),
            log_path=str(self._log_dir / "{id}.log"),  # the store puts the id in
            marker=secrets.token_hex(MARKER_BYTES),
        )

    # -- moves --------------------------------------------------------------------------

    def moved(self, record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
        """The record after a checked move (not stored)."""
        return dataclasses.replace(record, state=transition(record.state, state), **changes)

    def move(self, record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
        """Move, store and announce.

        Raises:
            Unavailable: the store refused (nothing changed).
        """
        record = self.moved(record, state, **changes)
        self._store.update(record)
        self.announce(record)
        return record

    def announce(self, record: TaskRecord) -> None:
        """Log, publish, count and remember a stored transition (an ended run is forgotten)."""
        self._log(record, outcome(record))
        self._events.publish("state", record.to_dict())
        if self._metrics is not None:
            if record.state is TaskState.RUNNING:
                self._metrics.task_started(record.type)
            elif record.state in TERMINAL:
                self._metrics.task_ended(record.type, record.state.value)
        self._table.remember(record)

    def announce_queued(self, record: TaskRecord) -> None:
        """Log and publish a new run as queued, unless it has moved on already."""
        current = self._table.record(record.id)
        if current is not None and current.state is TaskState.QUEUED and current.cancel_source is None:
            self._log(current, f"queued by {who(current.started_by)}")
            self._events.publish("state", current.to_dict())

    def _log(self, record: TaskRecord, outcome: str) -> None:
        elapsed = (self._clock() - record.created_at).total_seconds()
        log.info("%6.2fs %s task %d %s: %s", elapsed, MARKS[record.state], record.id, record.type, outcome)

    # -- stops ----------------------------------------------------------------------------

    def cancel(self, record: TaskRecord, source: CancelSource, identity: Identity) -> TaskRecord:
        """Stop an active run (see the module rules); returns its record as it is now.

        Raises:
            Unavailable: the store refused (nothing changed: a queued run stays queued).
        """
        stopped_by = identity.to_dict()
        if record.state is TaskState.QUEUED and record.id not in self._table.in_flight:
            stopped = self.move(
                record, TaskState.STOPPED, cancel_source=source, stopped_by=stopped_by, ended_at=self._clock()
            )
            self._queue.remove(record.id)  # only once stored: a failed write leaves it queued, as it still is
            return stopped
        record = dataclasses.replace(record, cancel_source=source, stopped_by=stopped_by)
        self._store.update(record)
        self._table.remember(record)
        self._log(record, f"stopping ({source}) by {who(stopped_by)}")
        if record.state is TaskState.RUNNING:
            self.send_kill(record)
        return self._table.with_progress(record)

    def send_kill(self, record: TaskRecord) -> None:
        if self._link.connected:
            self._link.send(Kill(id=record.id, grace_s=self._table.type_of(record).stop_grace_s))

    def deadline_passed(self, task_id: int) -> None:
        """A run's ``timeout_s`` passed: stop it (source ``deadline``)."""
        record = self._table.record(task_id)
        if record is not None and record.state is TaskState.RUNNING and record.cancel_source is None:
            try:
                self.cancel(record, "deadline", INTERNAL)
            except Unavailable as exc:
                log.error("task %d: cannot record its deadline stop: %s", task_id, exc)

    # -- ends -------------------------------------------------------------------------------

    def spawn_failed(self, task_id: int, error: str | None) -> None:
        """The keeper could not start a queued run: it ends ``failed`` (``stopped`` if a stop came first)."""
        self._table.in_flight.discard(task_id)
        self._table.release_slot(task_id)
        record = self._table.record(task_id)
        if record is not None and record.state is TaskState.QUEUED:
            state = TaskState.STOPPED if record.cancel_source is not None else TaskState.FAILED
            self.move(record, state, ended_at=self._clock(), error=error)

    def lost(self, task_id: int, error: str | None) -> None:
        """The keeper cannot supervise a running run again: it ends ``lost`` with the reason."""
        self._table.release_slot(task_id)
        record = self._table.record(task_id)
        if record is not None and record.state is TaskState.RUNNING:
            reason = error or "the keeper does not know this run"
            self.move(record, TaskState.LOST, ended_at=self._clock(), error=reason)

    def exited(self, record: TaskRecord, ended: TaskRecord) -> TaskRecord | None:
        """Record a run's end (``ended``: the record moved to its end state); returns its restart, if any.

        The end and the restart are stored in one transaction.

        Raises:
            Unavailable: the store refused (nothing of it is stored).
        """
        task_type = self._table.type_of(record)
        with self._store.batch():
            final, retry = self._plan_restart(ended, task_type)
            self._store.update(final)
            if retry is not None:
                retry = self._store.add(retry)
        self._table.release_slot(record.id)
        self.announce(final)
        if retry is not None:
            self._table.take_in(retry, task_type)
            when = retry.not_before
            self._log(final, f"↻ restarting as task {retry.id} (attempt {retry.attempt}) at {when}")
            self._events.publish("state", retry.to_dict())
        return retry

    def _plan_restart(self, final: TaskRecord, task_type: TaskType) -> tuple[TaskRecord, TaskRecord | None]:
        """The ended record (with the reason when a restart is refused) and the next attempt, if any."""
        rules = task_type.restart
        if rules.policy == "no":
            return final, None
        now = self._clock()
        decision = restart.decide(
            rules, final.state, final.attempt, self._restart_times(final), now.timestamp()
        )
        if not decision.restart:
            if decision.reason is None:
                return final, None
            error = f"{final.error}; {decision.reason}" if final.error else decision.reason
            return dataclasses.replace(final, error=error), None
        retry = dataclasses.replace(
            self.new_record(task_type, final.params, final.argv, final.key, final.started_by),
            attempt=final.attempt + 1,
            retry_of=final.id,
            not_before=now + timedelta(seconds=decision.delay_s),
        )
        return final, retry

    def _restart_times(self, record: TaskRecord) -> list[float]:
        """Start times of the restarts in ``record``'s chain, newest first (as many as the guard needs)."""
        times: list[float] = []
        limit = self._table.type_of(record).restart.flap_restarts
        current: TaskRecord | None = record
        while current is not None and current.retry_of is not None and len(times) < limit:
            if current.started_at is not None:
                times.append(current.started_at.timestamp())
            current = self._store.get(current.retry_of)
        return times

    def end_of(self, record: TaskRecord, status: Exit) -> TaskRecord:
        """The record moved to the end the keeper reported (not stored); a queued one passes by running."""
        if record.state is TaskState.QUEUED:  # it started and ended while no daemon listened
            record = self.moved(
                record,
                TaskState.RUNNING,
                pid=status.pid,
                pid_start_time=status.start_time,
                boot_id=status.boot_id,
                started_at=when(status.started_at),
                cgroup=status.cgroup,
            )
        progress = self._table.progress(record.id) or status.progress
        state = end_state(
            record.cancel_source,
            exit_code=status.exit_code,
            signal=status.signal,
            exited_on_its_own=status.exited_on_its_own,
        )
        return self.moved(
            record,
            state,
            exit_code=status.exit_code,
            signal=status.signal,
            ended_at=when(status.ended_at) or self._clock(),
            error=status.error,
            progress=progress[0] if progress else record.progress,
            progress_message=progress[1] if progress else record.progress_message,
        )
