"""The task manager: the public API that starts, stops and lists task runs (modules and transports use only this).

Rules:
- Transports and modules call its methods and get records back; only
  ``Transitions`` changes a run's state.
- Processes belong to the keeper (``keeper.py``), a separate process that
  outlives the daemon; ``Supervision`` records what it reports. Records
  live in the store (``store/``); active runs in memory in the run table
  (``runtable.py``).
- ``start`` and ``stop`` reply at once. ``start`` records a ``queued``
  run (its attempt counted in the store before any process exists; the
  starts of one loop turn share one commit, ``intake.py``) and queues it;
  runs leave the queue in start order, as their type's ``max_concurrent``
  allows (``runqueue.py``), and are spawned by the keeper
  (``spawnqueue.py``). ``stop`` records the cancel source and asks the
  keeper to kill the process tree. ``wait`` awaits a run's end.
- One active run per key: starting with the key of a queued or running run
  returns that run, it does not start another.
- Active runs are capped, in all (``max_active``) and per caller
  (``max_active_per_caller``): a start past a cap is refused before
  anything is stored (``caps.py``); ``start_many`` fits whole or not at all.
- A running run keeps the settings of its type as they were when it
  started (``reload`` changes them for new runs only); ``max_concurrent``
  is a limit of the type and applies at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pymgr.config import TasksConfig
from pymgr.core.identity import INTERNAL, Identity
from pymgr.errors import Conflict, NotFound, Unavailable
from pymgr.metrics import Metrics
from pymgr.keeper import cgroup as _cgroup
from pymgr.keeper.treekill import KILL_WAIT_S
from pymgr.tasks._statedir import lock_state_dir, open_store
from pymgr.tasks.containment import check_limits, open_containment
from pymgr.tasks.events import EventHub
from pymgr.tasks.housekeeping import housekeeping
from pymgr.tasks.intake import Intake
from pymgr.tasks.keeperlink import KeeperLink
from pymgr.tasks.keepermessages import exit_when_idle
from pymgr.tasks.logs import LogReader
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.runqueue import RunQueue
from pymgr.tasks.runtable import RunTable
from pymgr.tasks.spawnqueue import SpawnPump
from pymgr.tasks.startchecks import MAX_KEY_CHARS, check_key, parse_state, validate_params
from pymgr.tasks.states import TERMINAL, TaskState
from pymgr.tasks.store import TaskStore
from pymgr.tasks.supervision import Supervision
from pymgr.tasks.tasktypes import TaskType, compile_types, describe_changes
from pymgr.tasks.transitions import MARKER_BYTES, Transitions

#: ``MAX_KEY_CHARS`` is re-exported: modules bound their ``key`` parameter by it.
__all__ = ["MARKER_BYTES", "MAX_KEY_CHARS", "TaskManager"]

log = logging.getLogger("pymgr.tasks")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TaskManager:
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
        log_dir = state_dir / "logs"
        log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._store = store if store is not None else open_store(config, state_dir)
        self._clock = clock
        self.events = EventHub(config.events_queue_size)
        self.logs = LogReader(log_dir)
        self._queue = RunQueue(self._limit)
        self._table = RunTable(self._store, self._queue, clock, on_deadline=self._deadline_passed)
        self._table.use_types(self._types, config.stop_grace_s)
        self._link = KeeperLink(
            state_dir,
            idle_exit_s=config.keeper_idle_exit_s,
            start_timeout_s=config.keeper_start_timeout_s,
            log_max_bytes=config.keeper_log_max_bytes,
        )
        self._transitions = Transitions(
            store=self._store,
            table=self._table,
            queue=self._queue,
            link=self._link,
            events=self.events,
            metrics=metrics,
            clock=clock,
            log_dir=log_dir,
        )
        self._spawns = SpawnPump(
            queue=self._queue,
            table=self._table,
            link=self._link,
            transitions=self._transitions,
            clock=clock,
            ready=self._ready,
            log_dir=log_dir,
            cgroups=self.cgroups,
        )
        self._supervision = Supervision(
            store=self._store,
            table=self._table,
            queue=self._queue,
            pump=self._spawns,
            link=self._link,
            transitions=self._transitions,
            events=self.events,
            clock=clock,
            log_dir=log_dir,
            cgroups=self.cgroups,
            start_timeout_s=lambda: self._config.keeper_start_timeout_s,
            spawn=self._track,
        )
        self._link.listen(
            self._supervision.on_message, self._supervision.on_lost, self._supervision.read_batch
        )
        self._intake = Intake(
            store=self._store,
            table=self._table,
            queue=self._queue,
            pump=self._spawns,
            transitions=self._transitions,
            logs=self.logs,
            clock=clock,
        )
        self._background: set[asyncio.Task[None]] = set()
        self._open_lock = asyncio.Lock()
        self._opened = False
        self._closing = False
        self._lock_fd: int | None = None

    # -- the public API ----------------------------------------------------

    @property
    def config(self) -> TasksConfig:
        """The ``[tasks]`` section in force (``reload`` replaces it)."""
        return self._config

    @property
    def keeper_connected(self) -> bool:
        return self._link.connected

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
            if self._store.read_only is not None:
                raise Unavailable(self._store.read_only)
            if self._lock_fd is None:
                self._lock_fd = lock_state_dir(self._state_dir)
            await self._supervision.connect()
            self._opened = True
            self._track(
                housekeeping(
                    lambda: self._config, self._store, self._table, self.logs, self._supervision, self._clock
                )
            )

    async def start(
        self, type: str, params: Mapping[str, Any], key: str | None, identity: Identity
    ) -> TaskRecord:
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
    ) -> list[TaskRecord]:
        """``start`` for several runs of one type at once: all are started, or none (same errors).

        Each ``(params, key)`` is checked first, then the caps for the runs
        that are new (a key held by an active run returns that run), then all
        are stored in one transaction, so no other start comes between.
        """
        if self._closing:
            raise Unavailable("the task manager is shutting down; no new task can start")
        task_type = self._type(type)
        checked = [(validate_params(task_type, params), key) for params, key in starts]
        for _, key in checked:
            check_key(key)
        await self.open()
        holders = [self._holder(key, task_type) for _, key in checked]
        started_by = identity.to_dict()
        new = [
            self._transitions.new_record(
                task_type, values.model_dump(mode="json"), task_type.render_argv(values), key, started_by
            )
            for (values, key), holder in zip(checked, holders, strict=True)
            if holder is None
        ]
        self._table.caps.check(
            started_by, len(new), self._config.max_active, self._config.max_active_per_caller
        )
        stored = iter(await asyncio.shield(self._intake.submit(new, task_type)) if new else [])
        records = []
        for holder in holders:
            record = next(stored) if holder is None else await holder
            records.append(self._table.with_progress(record))
        return records

    def _holder(self, key: str | None, task_type: TaskType) -> asyncio.Future[TaskRecord] | None:
        """The active run holding ``key``, stored or waiting to be, if any.

        Raises:
            Conflict: it is a run of another type.
        """
        if key is None:
            return None
        future: asyncio.Future[TaskRecord] = asyncio.get_running_loop().create_future()
        active = self._store.find_active(key)
        if active is not None:
            holder_type, holder_id = active.type, active.id
            future.set_result(active)
        elif (waiting := self._intake.waiting_with_key(key)) is not None:
            holder_type, stored, index = waiting
            holder_id = 0
            stored.add_done_callback(lambda done: _chain(done, index, future))
        else:
            return None
        if holder_type != task_type.name:
            raise Conflict(
                f"key {key!r} is held by task {holder_id} of type {holder_type!r}, not {task_type.name!r}",
                details={"key": key, "id": holder_id, "type": holder_type},
            )
        return future

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
        return self._transitions.cancel(record, "user", identity)

    def get(self, task_id: int) -> TaskRecord:
        """One run's record.

        Raises:
            NotFound: no run with this id (or it was dropped by retention).
        """
        record = self._table.record(task_id)
        if record is None:
            raise NotFound(
                f"no task with id {task_id}; tasks.list shows the ones that exist",
                details={"id": task_id},
            )
        return self._table.with_progress(record)

    def list_runs(
        self, state: str | TaskState | None = None, type: str | None = None, key: str | None = None
    ) -> list[TaskRecord]:
        """Records matching every filter given, newest first.

        Raises:
            ParamsInvalid: ``state`` is not a state name (the message lists them).
        """
        records = self._store.list_runs(state=parse_state(state), type=type, key=key)
        return [self._table.with_progress(r) for r in records]

    def describe_types(self) -> list[dict[str, Any]]:
        """Every task type: name, doc and the JSON Schema of its parameters."""
        return [self._types[name].describe() for name in sorted(self._types)]

    def active_counts(self) -> dict[tuple[str, str], int]:
        """Runs queued or running now, by (type, state): a gauge of ``metrics``."""
        counts: dict[tuple[str, str], int] = {}
        for record in self._store.active():
            key = (record.type, record.state.value)
            counts[key] = counts.get(key, 0) + 1
        return counts

    def running(self, task_id: int) -> bool:
        """True while the run is queued or running (used by log followers)."""
        record = self._table.record(task_id)
        return record is not None and record.state not in TERMINAL

    async def wait(self, task_id: int) -> TaskRecord:
        """Wait until a run has ended; returns its final record.

        Raises:
            NotFound: no run with this id.
        """
        record = self.get(task_id)
        if record.state not in TERMINAL:
            await self._table.wait_ended(task_id)
        return self.get(task_id)

    def reload(self, config: TasksConfig) -> list[str]:
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
        self._table.use_types(types, config.stop_grace_s)
        max_age_s = None if config.max_age_days is None else config.max_age_days * 86400
        self._store.set_retention(config.max_records, max_age_s)
        self._spawns.schedule()
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
        self._supervision.close()
        started = time.monotonic()
        stopping = self._opened and self._config.on_shutdown == "stop"
        active = self._store.active() if self._opened else []
        if stopping:
            for record in active:
                if record.cancel_source is None:
                    self._transitions.cancel(record, "shutdown", INTERNAL)
        in_progress = [r for r in self._store.active() if stopping or r.cancel_source] if self._opened else []
        pending = await self._wait_ended(in_progress)
        if stopping and self._link.connected:
            self._link.send(exit_when_idle())
        self._table.flush_progress()
        await self._link.close(wait_exit_s=2.0 if stopping else 0.0)
        self._table.holders.close()  # runs left to the keeper: it is their reader now
        left = len(self._store.active()) - pending
        ended = len(active) - left - pending
        log.info(
            "shutdown: %d task(s) ended in %.2fs, %d left to the keeper, %d still stopping",
            ended,
            time.monotonic() - started,
            left,
            pending,
        )
        await self._end_background()
        self._release_state_dir()

    async def _end_background(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._spawns.cancel()
        self._table.cancel_deadlines()

    def _release_state_dir(self) -> None:
        try:
            # The connection stays open: the records can still be read (not changed) after shutdown.
            self._store.checkpoint()
        except Unavailable as exc:
            log.warning("task store: %s", exc)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self.cgroups is not None and not self._store.active():
            _cgroup.Cgroup(self.cgroups.root).remove()  # only if empty: runs left to the keeper keep theirs

    # -- helpers ----------------------------------------------------------------

    def _ready(self) -> bool:
        """Spawn requests may leave: the keeper reported its runs and no shutdown is under way."""
        return self._supervision.synced.is_set() and not self._closing

    def _limit(self, type_name: str) -> int | None:
        task_type = self._types.get(type_name)
        return None if task_type is None else task_type.max_concurrent

    def _deadline_passed(self, task_id: int) -> None:
        self._transitions.deadline_passed(task_id)

    def _type(self, name: str) -> TaskType:
        task_type = self._types.get(name)
        if task_type is None:
            names = sorted(self._types)
            raise NotFound(
                f"no task type {name!r}; types: {', '.join(names) or '(none configured)'}",
                details={"type": name, "types": names},
            )
        return task_type

    async def _wait_ended(self, records: list[TaskRecord]) -> int:
        """Wait for runs to end (grace periods plus the SIGKILL wait); returns how many did not."""
        if not records:
            return 0
        grace_s = max(self._table.type_of(record).stop_grace_s for record in records)
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
