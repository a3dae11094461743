"""The task manager: the one place that starts, stops and records task runs.

Rules:
- Only the manager changes a run's state, through ``states.transition``;
  transports and modules call its methods and get records back.
- Processes belong to the keeper (``keeper.py``), a separate process that
  outlives the daemon; the manager sends it requests and records what it
  reports (``_supervision.py``). Records live in SQLite (``store.py``).
- ``start`` and ``stop`` reply at once. ``start`` records a ``queued``
  run (its attempt counted in the store before any process exists; the
  starts of one loop turn share one commit, ``_startgroups.py``) and
  queues it; runs leave the queue in start order, as their type's
  ``max_concurrent`` allows (``runqueue.py``), and are spawned by the
  keeper (``_spawnqueue.py``). ``stop`` records the cancel source and asks the keeper to kill
  the process tree. ``wait`` awaits a run's end.
- One active run per key: starting with the key of a queued or running run
  returns that run, it does not start another.
- Active runs are capped, in all (``max_active``) and per caller
  (``max_active_per_caller``): a start past a cap is refused before
  anything is stored (``caps.py``); ``start_many`` fits whole or not at all.
- Every cancellation keeps its source (``user``, ``deadline``,
  ``shutdown``) and who asked.
- A running run keeps the settings of its type as they were when it
  started (``reload`` changes them for new runs only); ``max_concurrent``
  is a limit of the type and applies at once.
- One log line per transition, always the same shape: elapsed seconds since
  the run was created, a mark, task id and type, outcome. Every transition
  is also an event (``events.py``).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pymgr.config import TasksConfig
from pymgr.core.identity import INTERNAL, Identity
from pymgr.errors import Conflict, NotFound, PymgrError, Unavailable
from pymgr.metrics import Metrics
from pymgr.keeper import cgroup as _cgroup, proctree as _proctree
from pymgr.tasks.containment import check_limits, open_containment
from pymgr.tasks._statedir import lock_state_dir, open_store
from pymgr.tasks._requests import MAX_KEY_CHARS, check_key, parse_state, validate_params
from pymgr.tasks._spawnqueue import SpawnQueue
from pymgr.tasks._startgroups import StartGroups
from pymgr.tasks._supervision import Supervision
from pymgr.tasks._translog import MARKS, outcome, who
from pymgr.tasks.caps import ActiveRuns
from pymgr.keeper.treekill import KILL_WAIT_S
from pymgr.tasks.events import EventHub
from pymgr.tasks.keeperlink import KeeperLink
from pymgr.tasks.logs import LogReader
from pymgr.tasks.records import CancelSource, TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.states import TERMINAL, TaskState
from pymgr.tasks.store import SqliteStore, TaskStore
from pymgr.tasks.tasktypes import TaskType, compile_types, describe_changes

#: ``MAX_KEY_CHARS`` is re-exported: modules bound their ``key`` parameter by it.
__all__ = ["MARKER_BYTES", "MAX_KEY_CHARS", "TaskManager"]

log = logging.getLogger("pymgr.tasks")

#: Size of a run's random marker token: 64 bits make a clash between runs
#: alive at the same time on one host practically impossible.
MARKER_BYTES = 8

#: Seconds between reconnection attempts to a keeper that went away, at most.
RECONNECT_MAX_S = 5.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TaskManager(SpawnQueue, Supervision):
    """Runs configured task types as supervised processes and keeps their records."""

    def __init__(
        self,
        config: TasksConfig,
        state_dir: Path,
        *,
        store: TaskStore | None = None,
        clock: Callable[[], datetime] = _utcnow,
        metrics: Metrics | None = None,
    ) -> None:
        """
        Args:
            config: the ``[tasks]`` section.
            state_dir: records in ``tasks.db``, run logs in ``logs/``, the
                keeper's socket, lock and statuses in ``run/``.
            store: where records live; a ``SqliteStore`` in ``state_dir`` by default.
            clock: the current UTC time (tests pass a fake one).
            metrics: counts runs started and ended, by type (and end state).

        Raises:
            ConfigError: a task type's argv template is bad, or its cgroup limits cannot be enforced.
            RuntimeError: this platform has no pidfds (Linux 5.3+ is needed).
            Unavailable: the store cannot be opened at all.
        """
        if not hasattr(os, "pidfd_open"):
            raise RuntimeError("background tasks need Linux 5.3 or later (os.pidfd_open is missing)")
        self._config = config
        self._types = compile_types(config)
        #: Where runs and commands get their own cgroups; None: the older method (``containment``).
        self.cgroups = open_containment(config.cgroup, state_dir, self._types)
        self._state_dir = state_dir
        self._log_dir = state_dir / "logs"
        self._log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._store = store if store is not None else open_store(config, state_dir)
        self._clock = clock
        self._metrics = metrics
        self.events = EventHub(config.events_queue_size)
        self.logs = LogReader(self._log_dir)
        self._queue = RunQueue(self._limit)
        #: Runs queued or running (or staged), by caller: the caps of ``start``.
        self._runs = ActiveRuns()
        self._link = KeeperLink(
            state_dir,
            idle_exit_s=config.keeper_idle_exit_s,
            start_timeout_s=config.keeper_start_timeout_s,
            log_max_bytes=config.keeper_log_max_bytes,
            on_message=self._on_keeper_message,
            on_lost=self._on_keeper_lost,
            batch=self._keeper_batch,
        )
        self._init_supervision(_proctree.boot_id())
        self._waiters: dict[int, asyncio.Event] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._pump_handle: asyncio.Handle | None = None
        #: The pending pump is a back-off's timer (True), not this turn's call (False).
        self._pump_at_due = False
        self._starts = StartGroups(self._store, self, clock)
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._closing = False
        self._lock_fd: int | None = None

    # -- the public API ----------------------------------------------------

    @property
    def config(self) -> TasksConfig:
        """The ``[tasks]`` section in force (``reload`` replaces it)."""
        return self._config

    async def open(self) -> None:
        """Take the state directory, reach the keeper and account for every run left from before.

        Called by the daemon at start-up; ``start`` calls it too if needed.

        Raises:
            Unavailable: the store is read-only, another daemon uses this
                state directory, or no keeper could be reached.
        """
        async with self._open_lock:
            if self._opened:
                return
            if self._closing:
                raise Unavailable("the task manager is shutting down; no new task can start")
            read_only = getattr(self._store, "read_only", None)
            if read_only is not None:
                raise Unavailable(read_only)
            self._take_state_dir()
            await self._connect()
            self._opened = True
            self._track(self._housekeeping())

    async def start(self, type: str, params: Mapping[str, Any], key: str | None, identity: Identity) -> TaskRecord:
        """Record a new run and queue its spawn; returns at once.

        Returns:
            The ``queued`` record, or the active run that already holds ``key``.

        Raises:
            Conflict: ``key`` is held by an active run of another type, or a cap
                on active runs would be passed (the message names it).
            NotFound: no such task type (the message lists the types).
            ParamsInvalid: the parameters or the key do not validate.
            Unavailable: the manager is shutting down, or the store cannot be written.
        """
        return (await self.start_many(type, [(params, key)], identity))[0]

    async def start_many(
        self, type: str, starts: Sequence[tuple[Mapping[str, Any], str | None]], identity: Identity
    ) -> builtins.list[TaskRecord]:
        """``start`` for several runs of one type at once: all are started, or none (same errors).

        Each ``(params, key)`` is checked first, then the caps for the runs
        that are new (a key held by an active run returns that run), then all
        are staged in one loop turn, so no other start comes between.
        """
        if self._closing:
            raise Unavailable("the task manager is shutting down; no new task can start")
        task_type = self._type(type)
        checked = [(validate_params(task_type, params), key) for params, key in starts]
        for _, key in checked:
            check_key(key)
        await self.open()
        plans = [(values, key, self._holder(key, task_type)) for values, key in checked]
        started_by = identity.to_dict()
        new = sum(holder is None for _, _, holder in plans)
        self._runs.check(started_by, new, self._config.max_active, self._config.max_active_per_caller)
        records: builtins.list[TaskRecord] = []
        waits: builtins.list[asyncio.Future[None]] = []
        for values, key, holder in plans:
            if holder is not None:
                records.append(self._with_progress(holder))
                continue
            params, argv = values.model_dump(mode="json"), task_type.render_argv(values)
            record, stored = self._starts.stage(self._new_record(task_type, params, argv, key, started_by), task_type)
            self._runs.add(record.id, started_by)  # counted at once: the next start of this turn sees it
            stored.add_done_callback(functools.partial(self._start_settled, record.id))
            records.append(record)
            waits.append(stored)
        for stored in waits:
            await stored  # committed, spawn request sent (a caller that leaves meanwhile leaves the run be)
        return records

    def _holder(self, key: str | None, task_type: TaskType) -> TaskRecord | None:
        """The active run holding ``key``, if any.

        Raises:
            Conflict: it is a run of another type.
        """
        if key is None or (active := self._store.find_active(key)) is None:
            return None
        if active.type != task_type.name:
            raise Conflict(
                f"key {key!r} is held by task {active.id} of type {active.type!r}, not {task_type.name!r}",
                details={"key": key, "id": active.id, "type": active.type},
            )
        return active

    def _start_settled(self, task_id: int, stored: asyncio.Future[None]) -> None:
        """A start whose commit failed counts no more (one whose caller left does: its run is stored)."""
        if not stored.cancelled() and stored.exception() is not None:
            self._runs.discard(task_id)

    async def stop(self, task_id: int, identity: Identity) -> TaskRecord:
        """Stop a run; returns at once while the keeper kills its process tree.

        A queued run ends ``stopped`` without ever being spawned. Stopping an
        ended run, or one already being stopped, changes nothing.

        Returns:
            The record as it is now (a running one carries ``cancel_source``).

        Raises:
            NotFound: no run with this id.
            Unavailable: the store cannot be written.
        """
        record = self.get(task_id)
        if record.state in TERMINAL or record.cancel_source is not None:
            return record
        return self._cancel(record, "user", identity)

    def get(self, task_id: int) -> TaskRecord:
        """One run's record.

        Raises:
            NotFound: no run with this id (or it was dropped by retention).
        """
        record = self._record(task_id)
        if record is None:
            raise NotFound(
                f"no task with id {task_id}; tasks.list shows the ones that exist",
                details={"id": task_id},
            )
        return self._with_progress(record)

    def list(
        self,
        state: str | TaskState | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> list[TaskRecord]:
        """Records matching every filter, newest first: at most ``limit`` (None: all), ids below ``before``.

        Raises:
            ParamsInvalid: ``state`` is not a state name (the message lists them).
        """
        records = self._store.list(state=parse_state(state), type=type, key=key, limit=limit, before=before)
        return [self._with_progress(r) for r in records]

    def describe_types(self) -> builtins.list[dict[str, Any]]:
        """Every task type: name, doc and the JSON Schema of its parameters."""
        return [self._types[name].describe() for name in sorted(self._types)]

    def active_counts(self) -> dict[tuple[str, str], int]:
        """Runs queued or running now, by (type, state): a gauge of ``metrics``."""
        counts: dict[tuple[str, str], int] = {}
        for record in self._store.active():
            key = (record.type, record.state.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def keeper_connected(self) -> bool:
        return self._link.connected

    def running(self, task_id: int) -> bool:
        """True while the run is queued or running (used by log followers)."""
        record = self._record(task_id)
        return record is not None and record.state not in TERMINAL

    async def wait(self, task_id: int) -> TaskRecord:
        """Wait until a run has ended; returns its final record.

        Raises:
            NotFound: no run with this id.
        """
        record = self.get(task_id)
        if record.state not in TERMINAL:
            await self._waiters.setdefault(task_id, asyncio.Event()).wait()
        return self.get(task_id)

    def reload(self, config: TasksConfig) -> builtins.list[str]:
        """Swap task types and limits for new runs; returns what changed, one line each.

        Running and queued runs keep the settings they started with; a
        removed type's runs keep running. ``max_concurrent`` applies at once.

        Raises:
            ConfigError: a task type of ``config`` is bad (nothing changed).
        """
        types = compile_types(config)
        check_limits(self.cgroups, types)  # the tree was made at start: a reload can only use it
        changes = describe_changes(self._config, config)
        self._config, self._types = config, types
        if isinstance(self._store, SqliteStore):
            self._store.max_records = config.max_records
            self._store.max_age_s = None if config.max_age_days is None else config.max_age_days * 86400
        self._schedule_pump()
        for line in changes:
            log.info("reload: %s", line)
        return changes

    async def aclose(self) -> None:
        """Daemon shutdown: no new runs; then stop or leave the active ones (config ``on_shutdown``).

        With "stop", every active run is stopped (``cancel_source``
        "shutdown") and waited for, and the keeper exits once it has no run.
        With "leave", runs keep running under the keeper and queued runs stay
        queued: the next daemon on this state directory takes them over.
        Stops already in progress are waited for either way.
        """
        if self._closing:
            return
        self._closing = True
        started = time.monotonic()
        stopping = self._opened and self._config.on_shutdown == "stop"
        active = self._store.active() if self._opened else []
        if stopping:
            for record in active:
                if record.cancel_source is None:
                    self._cancel(record, "shutdown", INTERNAL)
        in_progress = [r for r in self._store.active() if stopping or r.cancel_source] if self._opened else []
        pending = await self._wait_ended(in_progress)
        if stopping and self._link.connected:
            self._link.send({"op": "exit_when_idle"})
        self._flush_progress()
        await self._link.close(wait_exit_s=2.0 if stopping else 0.0)
        self._holders.close()  # runs left to the keeper: it is their reader now
        left = len(self._store.active()) - pending
        log.info(
            "shutdown: %d task(s) ended in %.2fs, %d left to the keeper, %d still stopping",
            len(active) - left - pending, time.monotonic() - started, left, pending,
        )  # fmt: skip
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._cancel_timers()
        try:
            # The connection stays open: the records can still be read (not changed) after shutdown.
            self._store.checkpoint()
        except Unavailable as exc:
            log.warning("task store: %s", exc)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self.cgroups is not None and not self._store.active():
            _cgroup.Cgroup(self.cgroups.root).remove()  # only if empty: runs left to the keeper keep theirs

    # -- opening and connecting ---------------------------------------------------

    def _take_state_dir(self) -> None:
        if self._lock_fd is None:
            self._lock_fd = lock_state_dir(self._state_dir)

    async def _connect(self) -> None:
        self._synced.clear()
        await self._link.connect()
        try:
            async with asyncio.timeout(self._config.keeper_start_timeout_s):
                await self._synced.wait()
        except TimeoutError:
            raise Unavailable("the task keeper did not report its runs in time") from None

    def _on_keeper_lost(self) -> None:
        self._synced.clear()
        if not self._closing:
            logging.getLogger("pymgr.keeper").error(
                "lost the task keeper; reconnecting (runs it was supervising are re-adopted)"
            )
            self._track(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        while not self._closing and not self._link.connected:
            try:
                await self._connect()
            except Unavailable as exc:
                logging.getLogger("pymgr.keeper").error("cannot reach the task keeper: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)

    # -- records --------------------------------------------------------------------

    def _new_record(
        self, task_type: TaskType, params: dict[str, Any], argv: list[str], key: str | None, started_by: dict[str, Any]
    ) -> TaskRecord:
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

    # -- group commit of starts (_startgroups.py) ---------------------------------------

    def _take_in(self, record: TaskRecord, task_type: TaskType) -> None:
        self._snapshots[record.id] = task_type
        self._runs.add(record.id, record.started_by)
        self._remember(record)
        self._queue.add(record.id, record.type)

    def _drop_logs(self, pruned: builtins.list[TaskRecord]) -> None:
        for old in pruned:
            try:
                self.logs.remove(old.id)
            except (OSError, PymgrError) as exc:
                log.error("task %d: its log outlived its record (dropped by retention): %s", old.id, exc)

    def _announce_queued(self, record: TaskRecord) -> None:
        try:
            current = self._record(record.id)
        except Unavailable as exc:
            log.error("task %d: %s", record.id, exc)
            return
        if current is not None and current.state is TaskState.QUEUED and current.cancel_source is None:
            self._log(current, f"queued by {who(current.started_by)}")
            self.events.publish("state", current.to_dict())

    def _cancel(self, record: TaskRecord, source: CancelSource, identity: Identity) -> TaskRecord:
        stopped_by = identity.to_dict()
        if record.state is TaskState.QUEUED and record.id not in self._in_flight:
            stopped = self._move(
                record, TaskState.STOPPED, cancel_source=source, stopped_by=stopped_by, ended_at=self._clock()
            )
            self._queue.remove(record.id)  # only once stored: a failed write leaves it queued, as it still is
            return stopped
        record = dataclasses.replace(record, cancel_source=source, stopped_by=stopped_by)
        self._store.update(record)
        self._remember(record)
        self._log(record, f"stopping ({source}) by {who(stopped_by)}")
        if record.state is TaskState.RUNNING:
            self._send_kill(record)
        return self._with_progress(record)

    def _move(self, record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
        record = self._moved(record, state, **changes)
        self._store.update(record)
        self._announce(record)
        return record

    def _announce(self, record: TaskRecord) -> None:
        """Log, publish and wake waiters for a stored transition."""
        self._remember(record)
        self._log(record, outcome(record))
        self.events.publish("state", record.to_dict())
        if self._metrics is not None:
            if record.state is TaskState.RUNNING:
                self._metrics.task_started(record.type)
            elif record.state in TERMINAL:
                self._metrics.task_ended(record.type, record.state.value)
        if record.state in TERMINAL:
            self._forget(record.id)
            waiter = self._waiters.pop(record.id, None)
            if waiter is not None:
                waiter.set()

    # -- background work ------------------------------------------------------------

    async def _wait_ended(self, records: builtins.list[TaskRecord]) -> int:
        """Wait for runs to end (grace periods plus the SIGKILL wait); returns how many did not."""
        if not records:
            return 0
        grace_s = max(self._type_of(record).stop_grace_s for record in records)
        waits = [asyncio.ensure_future(self.wait(record.id)) for record in records]
        _, pending = await asyncio.wait(waits, timeout=grace_s + KILL_WAIT_S + 1.0)
        for waiting in pending:
            waiting.cancel()
        return len(pending)

    def _track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._reap_background)
        return task

    def _reap_background(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task supervision failed; this is a bug", exc_info=task.exception())

    # -- helpers ---------------------------------------------------------------------

    def _type(self, name: str) -> TaskType:
        task_type = self._types.get(name)
        if task_type is None:
            names = sorted(self._types)
            raise NotFound(
                f"no task type {name!r}; types: {', '.join(names) or '(none configured)'}",
                details={"type": name, "types": names},
            )
        return task_type

    def _log(self, record: TaskRecord, outcome: str) -> None:
        elapsed = (self._clock() - record.created_at).total_seconds()
        log.info("%6.2fs %s task %d %s: %s", elapsed, MARKS[record.state], record.id, record.type, outcome)

