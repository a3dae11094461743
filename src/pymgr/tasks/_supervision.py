"""What the keeper tells the manager, and what the manager asks of it (a part of ``TaskManager``).

Rules:
- The keeper's messages are handled one at a time, in order, on the event
  loop. A message about a run whose record already ended is acknowledged
  and ignored: the keeper delivers exits at least once.
- An exit is acknowledged only after it was committed to the store, in the
  same transaction as the restart it may cause; if the store refuses, the
  keeper keeps the status and is asked to send it again later.
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
- Deadlines (``timeout_s``) are timers of the daemon, measured from the
  run's ``started_at``: one that passed while no daemon was up fires as
  soon as the next daemon has re-adopted the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pymgr.core.identity import INTERNAL
from pymgr.errors import Unavailable
from pymgr.keeper import proctree as _proctree
from pymgr.tasks import policy
from pymgr.keeper.cgroup import CgroupTree
from pymgr.keeper.outputhold import OutputHolders
from pymgr.keeper.proctree import run_marker
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import TERMINAL, TaskState, end_state, transition
from pymgr.tasks.tasktypes import TaskType

if TYPE_CHECKING:
    from pymgr.config import TasksConfig
    from pymgr.tasks._startgroups import StartGroups
    from pymgr.tasks.caps import ActiveRuns
    from pymgr.tasks.events import EventHub
    from pymgr.tasks.keeperlink import KeeperLink
    from pymgr.tasks.runqueue import RunQueue
    from pymgr.tasks.store import TaskStore

log = logging.getLogger("pymgr.tasks")
#: Lines about the keeper itself, apart from the one-line-per-transition log.
keeper_log = logging.getLogger("pymgr.keeper")


def _when(epoch: Any) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(float(epoch), timezone.utc)


class Supervision:
    """The keeper-facing half of ``TaskManager`` (see the module rules)."""

    _config: TasksConfig
    _types: dict[str, TaskType]
    cgroups: CgroupTree | None
    _store: TaskStore
    _link: KeeperLink
    _queue: RunQueue
    _starts: StartGroups
    _runs: ActiveRuns
    events: EventHub

    def _init_supervision(self, boot_id: str) -> None:
        self._boot_id = boot_id
        #: The settings each active run started with.
        self._snapshots: dict[int, TaskType] = {}
        self._deadlines: dict[int, asyncio.TimerHandle] = {}
        #: Spawn requested, no answer yet.
        self._in_flight: set[int] = set()
        #: Runs holding a slot of their type (id -> type).
        self._slots: dict[int, str] = {}
        #: Latest progress of active runs (written to the store every progress_flush_s).
        self._progress: dict[int, tuple[float, str | None]] = {}
        self._progress_dirty: set[int] = set()
        #: The latest record of every active run this daemon has touched: the
        #: store is written through, so this only saves reading it back.
        self._active: dict[int, TaskRecord] = {}
        self._synced = asyncio.Event()
        self._known: set[int] = set()
        #: Runs the keeper reports an earlier keeper started (id -> pid, start time, boot, start), until synced.
        self._orphans: dict[int, dict[str, Any]] = {}
        self._resend_needed = False
        #: Exits recorded in the transaction in progress, acknowledged after it commits.
        self._acks: list[int] = []
        #: A second read end of each running run's output pipe (see ``keeper.outputhold``).
        self._holders = OutputHolders()
        self._keeper_pid: int | None = None
        #: What each message of the keeper does ("spawned" and "adopted" report a live run too).
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "hello": self._on_hello,
            "live": self._on_live,
            "exit": self._on_exit,
            "synced": self._on_synced,
            "spawned": self._on_live,
            "adopted": self._on_live,
            "spawn_failed": self._on_spawn_failed,
            "adopt_failed": self._on_adopt_failed,
            "gone": self._on_adopt_failed,
            "progress": self._on_progress,
            "orphan": self._on_orphan,
        }

    # -- what the keeper says -------------------------------------------------------

    def _on_keeper_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        handler = self._handlers.get(str(op))
        if handler is None:
            keeper_log.error("task keeper says: %s", message.get("message", message))
            return
        try:
            handler(message)
        except Unavailable as exc:
            log.error("task store: %s; the keeper keeps the news and sends it again", exc)
            self._resend_needed = True
        except Exception:
            log.exception("handling the keeper's %r failed; this is a bug", op)

    def _on_hello(self, message: dict[str, Any]) -> None:
        self._known = set()
        self._orphans = {}
        self._keeper_pid = message.get("keeper_pid")
        keeper_log.info("task keeper pid %s connected", self._keeper_pid)

    def _on_live(self, info: dict[str, Any]) -> None:
        """A run the keeper supervises: just spawned, adopted, or reported on connect."""
        task_id = info["id"]
        self._known.add(task_id)
        self._in_flight.discard(task_id)
        record = self._record(task_id)
        if record is None or record.state in TERMINAL:
            log.warning("task keeper runs task %s, whose record is %s", task_id, record and record.state.value)
            return
        if record.state is TaskState.QUEUED:
            record = self._move(
                record,
                TaskState.RUNNING,
                pid=info["pid"],
                pid_start_time=info["start_time"],
                boot_id=info.get("boot_id"),
                started_at=_when(info.get("started_at")) or self._clock(),
                cgroup=info.get("cgroup"),
            )
        if info.get("progress") and task_id not in self._progress:
            self._progress[task_id] = tuple(info["progress"])  # type: ignore[assignment]
        self._holders.hold(task_id, self._keeper_pid, info.get("output"))
        self._hold_slot(record)
        self._arm_deadline(record)
        if record.cancel_source is not None and not info.get("stopping"):
            self._send_kill(record)

    def _on_orphan(self, where: dict[str, Any]) -> None:
        """A run an earlier keeper started and nobody supervises: adopted at ``synced`` if still queued here."""
        record = self._record(where["id"])
        if record is None or record.state in TERMINAL:
            self._link.send({"op": "ack", "id": where["id"]})  # over here: the keeper may forget it
        elif record.state is TaskState.QUEUED:
            self._orphans[record.id] = where
        # A running record is re-adopted by its own pid and start time at ``synced``, as any other.

    def _on_exit(self, status: dict[str, Any]) -> None:
        task_id = status["id"]
        self._known.add(task_id)
        self._in_flight.discard(task_id)
        record = self._record(task_id)
        if record is not None and record.state not in TERMINAL:
            self._record_exit(record, status)
        self._acks.append(task_id)  # sent once the batch this message came in is committed

    def _keeper_batch(self) -> _KeeperBatch:
        """The ``batch`` of the keeper link: one store transaction per read, then the acknowledgements."""
        return _KeeperBatch(self)

    def _record_exit(self, record: TaskRecord, status: dict[str, Any]) -> None:
        if record.state is TaskState.QUEUED:  # it started and ended while no daemon listened
            record = self._moved(
                record,
                TaskState.RUNNING,
                pid=status.get("pid"),
                pid_start_time=status.get("start_time"),
                boot_id=status.get("boot_id"),
                started_at=_when(status.get("started_at")),
                cgroup=status.get("cgroup"),
            )
        progress = self._progress.get(record.id) or (tuple(status["progress"]) if status.get("progress") else None)
        final = self._moved(
            record,
            end_state(record.cancel_source, status),
            exit_code=status.get("exit_code"),
            signal=status.get("signal"),
            ended_at=_when(status.get("ended_at")) or self._clock(),
            error=status.get("error"),
            progress=progress[0] if progress else record.progress,
            progress_message=progress[1] if progress else record.progress_message,
        )
        task_type = self._type_of(record)
        with self._store.batch():
            final, retry = self._restart(final, task_type)
            self._store.update(final)
            if retry is not None:
                retry = self._store.add(retry)
        self._release(record.id)
        self._announce(final)
        if retry is not None:
            self._snapshots[retry.id] = task_type
            self._remember(retry)
            self._log(final, f"↻ restarting as task {retry.id} (attempt {retry.attempt}) at {retry.not_before}")
            self.events.publish("state", retry.to_dict())
            self._enqueue(retry)
        self._schedule_pump()

    def _restart(self, final: TaskRecord, task_type: TaskType) -> tuple[TaskRecord, TaskRecord | None]:
        """The ended record (with the reason when a restart is refused) and the next attempt, if any."""
        rules = task_type.restart
        if rules.policy == "no":
            return final, None
        now = self._clock()
        decision = policy.decide(rules, final.state, final.attempt, self._restart_times(final), now.timestamp())
        if not decision.restart:
            if decision.reason is None:
                return final, None
            error = f"{final.error}; {decision.reason}" if final.error else decision.reason
            return dataclasses.replace(final, error=error), None
        retry = dataclasses.replace(
            self._new_record(task_type, final.params, final.argv, final.key, final.started_by),
            attempt=final.attempt + 1,
            retry_of=final.id,
            not_before=now + timedelta(seconds=decision.delay_s),
        )
        return final, retry

    def _restart_times(self, record: TaskRecord) -> list[float]:
        """Start times of the restarts in ``record``'s chain, newest first (as many as the guard needs)."""
        times: list[float] = []
        limit = self._type_of(record).restart.flap_restarts
        current: TaskRecord | None = record
        while current is not None and current.retry_of is not None and len(times) < limit:
            if current.started_at is not None:
                times.append(current.started_at.timestamp())
            current = self._store.get(current.retry_of)
        return times

    def _on_spawn_failed(self, message: dict[str, Any]) -> None:
        task_id = message["id"]
        self._in_flight.discard(task_id)
        self._release(task_id)
        record = self._record(task_id)
        if record is not None and record.state is TaskState.QUEUED:
            state = TaskState.STOPPED if record.cancel_source is not None else TaskState.FAILED
            self._move(record, state, ended_at=self._clock(), error=message.get("error"))
        self._schedule_pump()

    def _on_adopt_failed(self, message: dict[str, Any]) -> None:
        task_id = message["id"]
        self._release(task_id)
        record = self._record(task_id)
        if record is not None and record.state is TaskState.RUNNING:
            reason = message.get("error") or "the keeper does not know this run"
            self._move(record, TaskState.LOST, ended_at=self._clock(), error=reason)
        self._schedule_pump()

    def _on_progress(self, message: dict[str, Any]) -> None:
        task_id = message["id"]
        self._progress[task_id] = (float(message["percent"]), message.get("message"))
        self._progress_dirty.add(task_id)
        self.events.publish(
            "progress", {"id": task_id, "progress": message["percent"], "progress_message": message.get("message")}
        )

    # -- background work ---------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Write progress, apply retention, checkpoint the store off the loop, ask for lost news again."""
        next_prune = next_checkpoint = 0.0
        while True:
            await asyncio.sleep(min(self._config.progress_flush_s, self._config.store_checkpoint_s))
            now = time.monotonic()
            try:
                self._flush_progress()
                if now >= next_prune:
                    next_prune = now + self._config.prune_interval_s
                    for old in self._store.prune(self._clock()):
                        self.logs.remove(old.id)
            except Unavailable as exc:
                log.warning("task store: %s", exc)
            if now >= next_checkpoint:
                next_checkpoint = now + self._config.store_checkpoint_s
                await self._checkpoint()
            if self._resend_needed and self._link.connected and self._synced.is_set():
                self._resend_needed = False
                self._link.send({"op": "resend"})

    async def _checkpoint(self) -> None:
        checkpoint = getattr(self._store, "checkpoint_passive", None)
        if checkpoint is None:
            return
        try:
            await asyncio.to_thread(checkpoint)  # the one thread the daemon uses, and only for this
        except sqlite3.Error as exc:
            log.warning("task store: WAL checkpoint failed (it is tried again): %s", exc)

    # -- recovery -------------------------------------------------------------------

    def _on_synced(self, message: dict[str, Any]) -> None:
        orphans, self._orphans = self._orphans, {}
        for record in self._store.active():
            self._runs.add(record.id, record.started_by)  # the caps count runs from before this daemon
            if record.id in self._known or record.id in self._queue:
                continue
            if record.state is TaskState.RUNNING:
                self._adopt(record, _proctree.ProcRef(record.pid or 0, record.pid_start_time or 0))
                continue
            self._in_flight.discard(record.id)
            self._release(record.id)  # a spawn sent to a keeper that died: its slot is taken again below
            where = orphans.get(record.id)
            if where is None:
                self._enqueue(record)  # no keeper started it: it is started now
                continue
            record = self._move(
                record, TaskState.RUNNING, pid=where["pid"], pid_start_time=where["start_time"],
                boot_id=where.get("boot_id"), started_at=_when(where.get("started_at")) or self._clock(),
                # Where the keeper put it, if runs have cgroups; the keeper checks the leader is in it.
                cgroup=None if self.cgroups is None else self.cgroups.run(record.id).path,
            )  # fmt: skip
            self._adopt(record, _proctree.ProcRef(where["pid"], where["start_time"]))
        self._synced.set()
        self._schedule_pump()

    def _adopt(self, record: TaskRecord, leader: _proctree.ProcRef) -> None:
        self._hold_slot(record)
        self._link.send(
            {
                "op": "adopt",
                "id": record.id,
                "pid": leader.pid,
                "start_time": leader.start_time,
                "boot_id": record.boot_id,
                "marker": record.marker,
                "cgroup": record.cgroup,
                "started_at": record.started_at.timestamp() if record.started_at else None,
                "output": self._holders.where(record.id),
                "log": self._type_of(record).log_settings(self._log_dir),
            }
        )

    # -- requests -------------------------------------------------------------------

    def _send_spawn(self, record: TaskRecord) -> None:
        task_type = self._type_of(record)
        self._in_flight.add(record.id)
        self._link.send(
            {
                "op": "spawn",
                "id": record.id,
                "argv": record.argv,
                "pins": task_type.spawn_pins(record.params, record.argv),
                "env": {**task_type.env, **run_marker(record.id, record.marker)},
                "cwd": None if task_type.cwd is None else str(task_type.cwd),
                "user": task_type.user,
                "group": task_type.group,
                "rlimits": {name: list(limits) for name, limits in task_type.rlimits.items()},
                "marker": record.marker,
                "log": task_type.log_settings(self._log_dir),
                "leftovers_grace_s": task_type.stop_grace_s if task_type.kill_leftovers else None,
                "cgroup": self._cgroup_request(record, task_type),
            }
        )

    def _cgroup_request(self, record: TaskRecord, task_type: TaskType) -> dict[str, Any] | None:
        """The run's own cgroup and its limits, for the spawn request (None: runs have no cgroup here)."""
        if self.cgroups is None:
            return None
        return {"path": self.cgroups.run(record.id).path, "limits": dict(task_type.cgroup_limits)}

    def _send_kill(self, record: TaskRecord) -> None:
        if self._link.connected:
            self._link.send({"op": "kill", "id": record.id, "grace_s": self._type_of(record).stop_grace_s})

    # -- deadlines, slots, progress ----------------------------------------------------

    def _arm_deadline(self, record: TaskRecord) -> None:
        timeout_s = self._type_of(record).timeout_s
        if timeout_s is None or record.id in self._deadlines or record.started_at is None:
            return
        remaining = timeout_s - (self._clock() - record.started_at).total_seconds()
        loop = asyncio.get_running_loop()
        self._deadlines[record.id] = loop.call_later(max(0.0, remaining), self._on_deadline, record.id)

    def _on_deadline(self, task_id: int) -> None:
        self._deadlines.pop(task_id, None)
        record = self._record(task_id)
        if record is not None and record.state is TaskState.RUNNING and record.cancel_source is None:
            try:
                self._cancel(record, "deadline", INTERNAL)
            except Unavailable as exc:
                log.error("task %d: cannot record its deadline stop: %s", task_id, exc)

    def _hold_slot(self, record: TaskRecord) -> None:
        if record.id not in self._slots:
            self._slots[record.id] = record.type
            self._queue.occupy(record.type)

    def _release(self, task_id: int) -> None:
        type_name = self._slots.pop(task_id, None)
        if type_name is not None:
            self._queue.release(type_name)

    def _record(self, task_id: int) -> TaskRecord | None:
        """A run's record: from memory while it is active, else from the store."""
        record = self._active.get(task_id)
        if record is None:
            record = self._store.get(task_id)  # which may commit a group of starts, and take this one in
            if record is not None and record.state not in TERMINAL:
                record = self._active.setdefault(task_id, record)
        return record

    def _remember(self, record: TaskRecord) -> None:
        """Keep the stored version of an active run (call after it was written)."""
        if record.state in TERMINAL:
            self._active.pop(record.id, None)
        else:
            self._active[record.id] = record
            self._runs.add(record.id, record.started_by)  # a restart counts against its caller too

    def _forget(self, task_id: int) -> None:
        """Drop the memory of an ended run."""
        self._active.pop(task_id, None)
        self._runs.discard(task_id)
        self._snapshots.pop(task_id, None)
        self._progress.pop(task_id, None)
        self._progress_dirty.discard(task_id)
        self._in_flight.discard(task_id)
        self._release(task_id)
        self._holders.release(task_id)
        handle = self._deadlines.pop(task_id, None)
        if handle is not None:
            handle.cancel()

    def _cancel_timers(self) -> None:
        for handle in self._deadlines.values():
            handle.cancel()
        self._deadlines.clear()

    def _with_progress(self, record: TaskRecord) -> TaskRecord:
        latest = self._progress.get(record.id)
        if latest is None or record.state in TERMINAL:
            return record
        return dataclasses.replace(record, progress=latest[0], progress_message=latest[1])

    def _flush_progress(self) -> None:
        if not self._progress_dirty:
            return
        dirty = {task_id: self._progress[task_id] for task_id in self._progress_dirty if task_id in self._progress}
        self._store.set_progress(dirty)
        self._progress_dirty.clear()

    def _type_of(self, record: TaskRecord) -> TaskType:
        """The settings a run started with; for a run from before this daemon, its type now (or defaults)."""
        snapshot = self._snapshots.get(record.id)
        if snapshot is None:
            snapshot = self._types.get(record.type) or TaskType(
                name=record.type, doc="", argv=tuple(record.argv), params_model=BaseModel,
                cwd=None, env={}, stop_grace_s=self._config.stop_grace_s,
            )  # fmt: skip
            if record.state not in TERMINAL:
                self._snapshots[record.id] = snapshot
        return snapshot

    def _moved(self, record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
        """The record after a checked move (not stored)."""
        return dataclasses.replace(record, state=transition(record.state, state), **changes)


class _KeeperBatch:
    """One store transaction around the messages of one read from the keeper, then their acknowledgements.

    A burst of replies (a hundred "spawned") costs one commit, not a
    hundred. An exit is acknowledged only after the commit that recorded
    it; if the commit fails, nothing is acknowledged, the records are read
    from the store again, and the keeper is asked to send its news again.
    """

    __slots__ = ("_owner", "_transaction")

    def __init__(self, owner: Supervision) -> None:
        self._owner = owner
        self._transaction = owner._store.batch(lazy=True)  # a read with only progress or acks writes nothing

    def __enter__(self) -> None:
        self._owner._starts.commit()  # a waiting group of starts first, its failure its own (not the keeper's)
        self._transaction.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        owner = self._owner
        acks, owner._acks = owner._acks, []
        try:
            self._transaction.__exit__(exc_type, exc, tb)
        except Unavailable as failure:
            log.error("task store: %s; the keeper keeps the news and sends it again", failure)
            owner._active.clear()  # what memory holds was not stored: read it back
            owner._resend_needed = True
            return exc_type is None or issubclass(exc_type, Unavailable)
        if exc_type is None and owner._link.connected:
            for task_id in acks:
                owner._link.send({"op": "ack", "id": task_id})
        return False
