"""Supervision of the keeper link: what the keeper reports, recorded; what it was told, replayed.

Rules:
- The keeper's messages are handled one at a time, in order, on the event
  loop. A message about a run whose record already ended is acknowledged
  and ignored: the keeper delivers exits at least once.
- The messages of one read from the keeper share one store transaction
  (``read_batch``; begun by the first write only). An exit is acknowledged
  only after the commit that recorded it, in the same transaction as the
  restart it may cause; if the store refuses, nothing is acknowledged, the
  cached records are dropped, and the keeper is asked to send its news
  again later (``resend_needed``).
- After the keeper's ``synced`` every active record is accounted for:
  runs the keeper reported are running (or ended); a ``running`` record it
  does not know (the keeper died, or the host rebooted) is re-adopted if
  its pid still has its recorded start time on this boot, else ``lost``
  with the reason; a ``queued`` record the keeper does not know is queued
  again, unless the keeper reports it an ``orphan`` (an earlier keeper
  started it and wrote down its pid and start time, then died before the
  daemon recorded it): that process is adopted. Nothing is ever adopted
  because of what its environment says: the marker only finds a run's
  escaped descendants when it is stopped.
- A lost link is reconnected with a growing delay; the keeper's hello and
  ``synced`` replay its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from pymgr.errors import Unavailable
from pymgr.protocol.keeper import (
    Ack,
    Adopted,
    AdoptFailed,
    Error,
    Exit,
    Gone,
    Hello,
    Live,
    News,
    Orphan,
    Progress,
    Resend,
    RunReport,
    SpawnFailed,
    Spawned,
    Synced,
)
from pymgr.keeper.cgroup import CgroupTree
from pymgr.keeper.proctree import ProcRef
from pymgr.tasks.events import EventHub
from pymgr.tasks.keeperlink import KeeperLink
from pymgr.tasks.keepermessages import adopt_request
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.spawnqueue import SpawnPump
from pymgr.tasks.states import TERMINAL, TaskState
from pymgr.tasks.store import TaskStore
from pymgr.tasks.transitions import Transitions, when

log = logging.getLogger("pymgr.tasks")
#: Lines about the keeper itself, apart from the one-line-per-transition log.
keeper_log = logging.getLogger("pymgr.keeper")

#: Seconds between reconnection attempts to a keeper that went away, at most.
RECONNECT_MAX_S = 5.0


class Supervision:
    """See the module rules."""

    def __init__(
        self,
        *,
        store: TaskStore,
        table: RunTable,
        queue: RunQueue,
        pump: SpawnPump,
        link: KeeperLink,
        transitions: Transitions,
        events: EventHub,
        clock: Callable[[], datetime],
        log_dir: Path,
        cgroups: CgroupTree | None,
        start_timeout_s: Callable[[], float],
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self._store = store
        self._table = table
        self._queue = queue
        self._pump = pump
        self.link = link
        self._transitions = transitions
        self._events = events
        self._clock = clock
        self._log_dir = log_dir
        self._cgroups = cgroups
        self._start_timeout_s = start_timeout_s
        self._spawn = spawn
        #: The keeper reported every run it has (``synced``) since the link was made.
        self.synced = asyncio.Event()
        self.closing = False
        #: A store write failed: the keeper is asked to send its news again (``resend``).
        self.resend_needed = False
        self._known: set[int] = set()
        #: Runs the keeper reports an earlier keeper started (id -> its report), until synced.
        self._orphans: dict[int, Orphan] = {}
        self._acks: list[int] = []
        self._keeper_pid: int | None = None
        self._handlers = self._handlers_by_type()

    def _handlers_by_type(self) -> dict[type[News], Callable[[Any], None]]:
        """What each message of the keeper does ("spawned" and "adopted" report a live run too)."""
        return {
            Hello: self._on_hello,
            Live: self._on_live,
            Spawned: self._on_live,
            Adopted: self._on_live,
            Exit: self._on_exit,
            Synced: self._on_synced,
            SpawnFailed: self._on_spawn_failed,
            AdoptFailed: self._on_adopt_failed,
            Gone: self._on_gone,
            Progress: self._on_progress,
            Orphan: self._on_orphan,
            Error: self._on_error,
        }

    # -- the link ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Reach the keeper and wait for its ``synced``.

        Raises:
            Unavailable: no keeper could be reached, or it did not report its runs in time.
        """
        self.synced.clear()
        await self.link.connect()
        try:
            async with asyncio.timeout(self._start_timeout_s()):
                await self.synced.wait()
        except TimeoutError:
            raise Unavailable("the task keeper did not report its runs in time") from None

    def on_lost(self) -> None:
        """The link's ``on_lost``: reconnect unless shutting down."""
        self.synced.clear()
        if not self.closing:
            keeper_log.error("lost the task keeper; reconnecting (runs it was supervising are re-adopted)")
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self.closing and not self.link.connected:
            try:
                await self.connect()
            except Unavailable as exc:
                keeper_log.error("cannot reach the task keeper: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)

    def resend_if_needed(self) -> None:
        """Ask the keeper again for the news a failed write lost (once it is synced)."""
        if self.resend_needed and self.link.connected and self.synced.is_set():
            self.resend_needed = False
            self.link.send(Resend())

    def close(self) -> None:
        """Shutdown: a lost link is not reconnected any more."""
        self.closing = True

    @contextlib.contextmanager
    def read_batch(self) -> Iterator[None]:
        """The link's ``batch``: one lazy store transaction around one read's messages, then the acks."""
        self._acks = []
        try:
            with self._store.batch(lazy=True):  # a read with only progress or acks writes nothing
                yield
        except Unavailable as failure:
            log.error("task store: %s; the keeper keeps the news and sends it again", failure)
            self._table.drop_cached()  # what memory holds was not stored: read it back
            self.resend_needed = True
            return
        if self.link.connected:
            for task_id in self._acks:
                self.link.send(Ack(id=task_id))

    def on_unreadable(self, frame: dict[str, Any], reason: str) -> None:
        """The link's ``on_unreadable``: an exit that cannot be read still ends its run.

        Left alone, its run would stay ``running`` (holding its slot, caps and key) while the
        keeper kept the exit, unacknowledged, sending it again unreadable. The run ends ``lost``
        with the reason, and the exit is acknowledged once that is stored. Other news is the
        keeper's state, reported again on the next connection.
        """
        task_id = frame.get("id")
        if frame.get("op") != "exit" or type(task_id) is not int:
            return
        self._transitions.lost(task_id, f"its exit report could not be read: {reason}")
        self._table.in_flight.discard(task_id)
        self._known.add(task_id)
        self._acks.append(task_id)
        self._pump.schedule()

    def on_message(self, message: News) -> None:
        """The link's ``on_message``: one message of the keeper."""
        try:
            self._handlers[type(message)](message)
        except Unavailable as exc:
            log.error("task store: %s; the keeper keeps the news and sends it again", exc)
            self.resend_needed = True
        except Exception:
            log.exception("handling the keeper's %r failed; this is a bug", message.op)

    # -- what the keeper says -------------------------------------------------------------

    def _on_hello(self, hello: Hello) -> None:
        self._known = set()
        self._orphans = {}
        self._keeper_pid = hello.keeper_pid
        keeper_log.info("task keeper pid %s connected", self._keeper_pid)

    def _on_error(self, error: Error) -> None:
        keeper_log.error("task keeper says: %s", error.message)

    def _on_live(self, report: RunReport) -> None:
        """A run the keeper supervises: just spawned, adopted, or reported on connect."""
        task_id = report.id
        self._known.add(task_id)
        self._table.in_flight.discard(task_id)
        record = self._table.record(task_id)
        if record is None or record.state in TERMINAL:
            log.warning(
                "task keeper runs task %s, whose record is %s", task_id, record and record.state.value
            )
            return
        if record.state is TaskState.QUEUED:
            record = self._transitions.move(
                record,
                TaskState.RUNNING,
                pid=report.pid,
                pid_start_time=report.start_time,
                boot_id=report.boot_id,
                started_at=when(report.started_at) or self._clock(),
                cgroup=report.cgroup,
            )
        if report.progress and self._table.progress(task_id) is None:
            self._table.set_progress(task_id, report.progress, dirty=False)
        self._table.holders.hold(task_id, self._keeper_pid, report.output)
        self._table.hold_slot(record)
        self._table.arm_deadline(record)
        if record.cancel_source is not None and not report.stopping:
            self._transitions.send_kill(record)

    def _on_orphan(self, orphan: Orphan) -> None:
        """A run an earlier keeper started that nobody supervises: adopted at ``synced`` if still queued."""
        record = self._table.record(orphan.id)
        if record is None or record.state in TERMINAL:
            self.link.send(Ack(id=orphan.id))  # over here: the keeper may forget it
        elif record.state is TaskState.QUEUED:
            self._orphans[record.id] = orphan
        # A running record is re-adopted by its own pid and start time at ``synced``, as any other.

    def _on_exit(self, status: Exit) -> None:
        task_id = status.id
        self._known.add(task_id)
        self._table.in_flight.discard(task_id)
        record = self._table.record(task_id)
        if record is not None and record.state not in TERMINAL:
            retry = self._transitions.exited(record, self._transitions.end_of(record, status))
            if retry is not None:
                self._pump.enqueue(retry)
            self._pump.schedule()
        self._acks.append(task_id)  # sent once the batch this message came in is committed

    def _on_spawn_failed(self, failed: SpawnFailed) -> None:
        self._transitions.spawn_failed(failed.id, failed.error)
        self._pump.schedule()

    def _on_adopt_failed(self, failed: AdoptFailed) -> None:
        self._transitions.lost(failed.id, failed.error)
        self._pump.schedule()

    def _on_gone(self, gone: Gone) -> None:
        self._transitions.lost(gone.id, None)
        self._pump.schedule()

    def _on_progress(self, progress: Progress) -> None:
        self._table.set_progress(progress.id, (progress.percent, progress.message))
        self._events.publish(
            "progress",
            {"id": progress.id, "progress": progress.percent, "progress_message": progress.message},
        )

    # -- recovery -----------------------------------------------------------------------------

    def _on_synced(self, synced: Synced) -> None:
        orphans, self._orphans = self._orphans, {}
        for record in self._store.active():
            self._table.caps.add(record.id, record.started_by)  # the caps count runs from before this daemon
            if record.id in self._known or record.id in self._queue:
                continue
            if record.state is TaskState.RUNNING:
                self._adopt(record, ProcRef(record.pid or 0, record.pid_start_time or 0))
                continue
            self._table.in_flight.discard(record.id)
            self._table.release_slot(record.id)  # a spawn sent to a keeper that died: its slot is taken again
            orphan = orphans.get(record.id)
            if orphan is None:
                self._pump.enqueue(record)  # no keeper started it: it is started now
            else:
                self._adopt_orphan(record, orphan)
        self.synced.set()
        self._pump.schedule()

    def _adopt_orphan(self, record: TaskRecord, orphan: Orphan) -> None:
        record = self._transitions.move(
            record,
            TaskState.RUNNING,
            pid=orphan.pid,
            pid_start_time=orphan.start_time,
            boot_id=orphan.boot_id,
            started_at=when(orphan.started_at) or self._clock(),
            # Where the keeper put it, if runs have cgroups; the keeper checks the leader is in it.
            cgroup=None if self._cgroups is None else self._cgroups.run(record.id).path,
        )
        self._adopt(record, ProcRef(orphan.pid, orphan.start_time))

    def _adopt(self, record: TaskRecord, leader: ProcRef) -> None:
        self._table.hold_slot(record)
        task_type = self._table.type_of(record)
        self.link.send(
            adopt_request(record, leader, task_type, self._log_dir, self._table.holders.where(record.id))
        )
