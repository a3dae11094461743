"""The task manager: the public API that starts, stops and lists task runs.

Modules and transports use only this.

Rules:
- Callers get records back; only ``Transitions`` changes a run's state.
  Processes belong to the keeper, a separate process that outlives the
  daemon; ``Supervision`` records what it reports; records live in the
  store (``store/``), active runs in the run table (``runtable.py``); the
  objects are made and joined in ``engine.py``.
- ``start`` and ``stop`` reply at once. ``start`` records a ``queued`` run
  (counted in the store before any process exists; ``intake.py``) and
  queues it; runs leave the queue in start order as their type's
  ``max_concurrent`` allows (``runqueue.py``, ``spawnqueue.py``). ``stop``
  records the cancel source and asks the keeper to kill the process tree.
- One active run per key: a start with the key of an active run returns it.
- Active runs are capped, in all and per caller: a start past a cap is
  refused before anything is stored (``caps.py``); ``start_many`` fits
  whole or not at all.
- A run keeps the settings of its type as they were when it started
  (``reload`` changes them for new runs only); ``max_concurrent`` applies at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pymgr.config import TasksConfig
from pymgr.core.identity import INTERNAL, Identity
from pymgr.errors import NotFound, Unavailable
from pymgr.metrics import Metrics
from pymgr.protocol.keeper import ExitWhenIdle
from pymgr.keeper import cgroup as _cgroup
from pymgr.keeper.treekill import KILL_WAIT_S
from pymgr.tasks.statedir import lock_state_dir, open_store
from pymgr.tasks.containment import check_limits, open_containment
from pymgr.tasks.engine import Hooks, build_engine
from pymgr.tasks.housekeeping import housekeeping
from pymgr.tasks import shapes
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.startchecks import MAX_KEY_CHARS, check_keys, parse_state, validate_params
from pymgr.tasks.states import TERMINAL, TaskState
from pymgr.tasks.store import TaskStore
from pymgr.tasks.tasktypes import TaskType, compile_types, describe_changes
from pymgr.tasks.transitions import MARKER_BYTES

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
        (state_dir / "logs").mkdir(mode=0o700, parents=True, exist_ok=True)
        store = store if store is not None else open_store(config, state_dir)
        self._clock = clock
        engine = build_engine(config, state_dir, store, self.cgroups, clock, metrics, self._hooks())
        self.events, self.logs = engine.events, engine.logs
        self._store, self._queue = engine.store, engine.queue
        self._table, self._link = engine.table, engine.link
        self._transitions, self._spawns, self._intake = engine.transitions, engine.spawns, engine.intake
        self._supervision = engine.supervision
        self._table.use_types(self._types, config.stop_grace_s)
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
            chores = housekeeping(
                lambda: self._config, self._store, self._table, self.logs, self._supervision, self._clock
            )
            self._track(chores)

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
        check_keys([key for _, key in checked], identity)
        await self.open()
        holders = [self._intake.holder(key, task_type.name) for _, key in checked]
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
        self,
        state: str | TaskState | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        started_by: str | None = None,
    ) -> list[TaskRecord]:
        """Records matching every filter, newest first: at most ``limit`` (None: all), ids below ``before``.

        Raises:
            ParamsInvalid: ``state`` is not a state name (the message lists them).
        """
        records = self._store.list_runs(
            state=parse_state(state), type=type, key=key, limit=limit, before=before, started_by=started_by
        )
        return [self._table.with_progress(r) for r in records]

    def count_runs(self) -> dict[TaskState, int]:
        """Runs in the store by state (a state without any left out): one query, whatever the history's size."""
        return self._store.count_by_state()

    def describe_types(self) -> list[shapes.TaskType]:
        """Every task type: name, doc and the JSON Schema of its parameters."""
        return [self._types[name].describe() for name in sorted(self._types)]

    def active_counts(self) -> dict[tuple[str, str], int]:
        """Runs queued or running now, by (type, state): a gauge of ``metrics``."""
        return dict(Counter((record.type, record.state.value) for record in self._store.active()))

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
        pending = await self._table.wait_all_ended(in_progress, KILL_WAIT_S + 1.0)
        if stopping and self._link.connected:
            self._link.send(ExitWhenIdle())
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

    def _hooks(self) -> Hooks:
        """What the engine asks of the manager."""
        return Hooks(
            limit=self._limit,
            ready=self._ready,
            deadline_passed=self._deadline_passed,
            config=lambda: self._config,
            spawn=self._track,
        )

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

    def _track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._reap_background)
        return task

    def _reap_background(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task supervision failed; this is a bug", exc_info=task.exception())
