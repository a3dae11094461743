"""The task manager: the one place that starts, stops and records task runs.

Rules:
- Only the manager changes a run's state, through ``states.transition``;
  transports and modules call its methods and get records back.
- ``start`` and ``stop`` reply at once. ``start`` records a ``queued`` run
  and queues its spawn on the loop: spawns run one per loop turn, in start
  order, after the reply is handed back. ``stop`` records the cancel source
  and kills the process tree in the background. ``wait`` awaits a run's end.
- One active run per key: starting with the key of a queued or running run
  returns that run, it does not start another.
- Every cancellation keeps its source (``user``, ``shutdown``) and who asked.
- One log line per transition, always the same shape: elapsed seconds since
  the run was created, a mark, task id and type, outcome.
- Ids continue after the highest ``<id>.log`` in ``<state_dir>/logs``, so a
  restarted daemon (records are in memory in this version) never reuses an
  id or a log file of a run that may still exist.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import dataclasses
import logging
import os
import secrets
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydantic

from pymgr.config import TasksConfig
from pymgr.core.dispatch import params_error
from pymgr.core.identity import INTERNAL, Identity
from pymgr.errors import Conflict, NotFound, ParamsInvalid, PymgrInternalError, Unavailable
from pymgr.tasks import runner
from pymgr.tasks._proctree import run_marker
from pymgr.tasks.records import CancelSource, TaskRecord
from pymgr.tasks.runner import ExitStatus, Process
from pymgr.tasks.states import ACTIVE, TERMINAL, TaskState, transition
from pymgr.tasks.store import MemoryStore, TaskStore
from pymgr.tasks.tasktypes import TaskType, compile_types

log = logging.getLogger("pymgr.tasks")

#: Size of a run's random marker token: 64 bits make a clash between runs
#: alive at the same time on one host practically impossible.
MARKER_BYTES = 8

#: Longest idempotency key: a key names a run ("scan:1"); it is not data.
MAX_KEY_CHARS = 256

_MARKS = {
    TaskState.QUEUED: "·",
    TaskState.RUNNING: "→",
    TaskState.SUCCEEDED: "✓",
    TaskState.FAILED: "✗",
    TaskState.STOPPED: "⊘",
    TaskState.LOST: "?",
}


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
    ) -> None:
        """
        Args:
            config: the ``[tasks]`` section.
            state_dir: run logs go to ``<state_dir>/logs/<id>.log``.
            store: where records live; a ``MemoryStore`` by default.
            clock: the current UTC time (tests pass a fake one).

        Raises:
            ConfigError: a task type's argv template is bad.
            RuntimeError: this platform has no pidfds (Linux 5.3+ is needed).
        """
        if not hasattr(os, "pidfd_open"):
            raise RuntimeError("background tasks need Linux 5.3 or later (os.pidfd_open is missing)")
        self._config = config
        self._types = compile_types(config)
        self._log_dir = state_dir / "logs"
        self._log_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._store = store if store is not None else MemoryStore(config.max_records, _first_free_id(self._log_dir))
        self._clock = clock
        self._spawn_queue: collections.deque[int] = collections.deque()
        self._processes: dict[int, Process] = {}
        self._ended: dict[int, asyncio.Event] = {}
        self._stoppers: dict[int, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- the public API ----------------------------------------------------

    async def start(self, type: str, params: Mapping[str, Any], key: str | None, identity: Identity) -> TaskRecord:
        """Record a new run and schedule its spawn; returns at once.

        Returns:
            The ``queued`` record, or the active run that already holds ``key``.

        Raises:
            Conflict: ``key`` is held by an active run of another type.
            NotFound: no such task type (the message lists the types).
            ParamsInvalid: the parameters or the key do not validate.
            Unavailable: the manager is shutting down.
        """
        if self._closing:
            raise Unavailable("the task manager is shutting down; no new task can start")
        task_type = self._type(type)
        values = _validate(task_type, params)
        _check_key(key)
        if key is not None and (active := self._store.find_active(key)) is not None:
            if active.type != task_type.name:
                raise Conflict(
                    f"key {key!r} is held by task {active.id} of type {active.type!r}, not {task_type.name!r}",
                    details={"key": key, "id": active.id, "type": active.type},
                )
            return active
        record = self._store.add(
            TaskRecord(
                id=0,
                type=task_type.name,
                key=key,
                params=values.model_dump(mode="json"),
                argv=task_type.render_argv(values),
                state=TaskState.QUEUED,
                started_by=identity.to_dict(),
                created_at=self._clock(),
                log_path="",
                marker=secrets.token_hex(MARKER_BYTES),
            )
        )
        record = dataclasses.replace(record, log_path=str(self._log_dir / f"{record.id}.log"))
        self._store.update(record)
        self._ended[record.id] = asyncio.Event()
        self._log(record, f"queued by {_who(record.started_by)}")
        self._spawn_queue.append(record.id)
        if len(self._spawn_queue) == 1:
            asyncio.get_running_loop().call_soon(self._spawn_next)
        return record

    async def stop(self, task_id: int, identity: Identity) -> TaskRecord:
        """Stop a run; returns at once while its process tree is killed in the background.

        A queued run ends ``stopped`` without ever being spawned. Stopping an
        ended run, or one already being stopped, changes nothing.

        Returns:
            The record as it is now (a running one carries ``cancel_source``).

        Raises:
            NotFound: no run with this id.
        """
        record = self.get(task_id)
        if record.state in TERMINAL or record.cancel_source is not None:
            return record
        return self._cancel(record, "user", identity)

    def get(self, task_id: int) -> TaskRecord:
        """One run's record.

        Raises:
            NotFound: no run with this id (or it was dropped as too old).
        """
        record = self._store.get(task_id)
        if record is None:
            raise NotFound(
                f"no task with id {task_id}; tasks.list shows the ones that exist",
                details={"id": task_id},
            )
        return record

    def list(
        self, state: str | TaskState | None = None, type: str | None = None, key: str | None = None
    ) -> list[TaskRecord]:
        """Records matching every filter given, newest first.

        Raises:
            ParamsInvalid: ``state`` is not a state name (the message lists them).
        """
        return self._store.list(state=_parse_state(state), type=type, key=key)

    def describe_types(self) -> builtins.list[dict[str, Any]]:
        """Every task type: name, doc and the JSON Schema of its parameters."""
        return [self._types[name].describe() for name in sorted(self._types)]

    async def wait(self, task_id: int) -> TaskRecord:
        """Wait until a run has ended; returns its final record.

        Raises:
            NotFound: no run with this id.
        """
        record = self.get(task_id)
        if record.state not in TERMINAL:
            await self._ended[task_id].wait()
        return self.get(task_id)

    async def aclose(self) -> None:
        """Daemon shutdown: no new runs; then stop or leave the active ones (config ``on_shutdown``).

        With "stop", every active run is stopped (``cancel_source`` "shutdown")
        and waited for: its grace period, then ``KILL_WAIT_S`` for SIGKILL.
        With "leave", running processes keep running unwatched (their records
        stay ``running``); queued runs end ``stopped`` (nobody is left to
        spawn them); stops already in progress are still waited for.
        """
        if self._closing:
            return
        self._closing = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        active = [r for r in self._store.list() if r.state in ACTIVE]
        left = 0
        for record in active:
            if record.cancel_source is not None:
                continue  # already being stopped; waited for below
            if self._config.on_shutdown == "leave" and record.state is TaskState.RUNNING:
                self._processes[record.id].detach()
                left += 1
            else:
                self._cancel(record, "shutdown", INTERNAL)
        still = await self._wait_stoppers()
        log.info(
            "shutdown: %d task(s) ended in %.2fs, %d left running, %d still stopping",
            len(active) - left - still,
            loop.time() - started,
            left,
            still,
        )
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _wait_stoppers(self) -> int:
        """Wait for the stops in progress; returns how many did not finish."""
        if not self._stoppers:
            return 0
        grace_s = max(self._types[self.get(task_id).type].stop_grace_s for task_id in self._stoppers)
        # A little past the kill phase, so a stop that ends on time is counted.
        _, pending = await asyncio.wait(set(self._stoppers.values()), timeout=grace_s + runner.KILL_WAIT_S + 1.0)
        return len(pending)

    # -- the life of one run -------------------------------------------------

    def _spawn_next(self) -> None:
        """Loop callback: spawn the oldest queued run, and come back next loop turn for the rest.

        One spawn per turn (a fork and exec, a few ms) keeps a burst of starts
        from holding up every other callback of the loop.
        """
        self._spawn(self._spawn_queue.popleft())
        if self._spawn_queue:
            asyncio.get_running_loop().call_soon(self._spawn_next)

    def _spawn(self, task_id: int) -> None:
        """Spawn a queued run (unless it was stopped meanwhile)."""
        record = self._store.get(task_id)
        if record is None or record.state is not TaskState.QUEUED:
            return
        task_type = self._types[record.type]
        try:
            process = runner.spawn(
                record.argv,
                cwd=task_type.cwd,
                env=task_type.env,
                marker=run_marker(task_id, record.marker),
                log_path=Path(record.log_path),
            )
        except OSError as exc:
            self._move(record, TaskState.FAILED, ended_at=self._clock(), error=_spawn_error(exc))
            return
        except Exception as exc:  # a bug; the record must not stay queued forever
            log.exception("task %d: spawn raised", task_id)
            self._move(record, TaskState.FAILED, ended_at=self._clock(), error=f"spawn raised {exc!r}")
            return
        self._processes[task_id] = process
        self._move(
            record,
            TaskState.RUNNING,
            pid=process.pid,
            pid_start_time=process.ref.start_time,
            started_at=self._clock(),
        )
        self._track(self._watch(task_id, process))

    async def _watch(self, task_id: int, process: Process) -> None:
        status = await process.wait()
        if task_id not in self._stoppers:  # else the stopper ends the run, after the tree is gone
            self._end(task_id, status)

    def _cancel(self, record: TaskRecord, source: CancelSource, identity: Identity) -> TaskRecord:
        stopped_by = identity.to_dict()
        if record.state is TaskState.QUEUED:
            return self._move(
                record, TaskState.STOPPED, cancel_source=source, stopped_by=stopped_by, ended_at=self._clock()
            )
        process = self._processes.get(record.id)
        if process is None:
            raise PymgrInternalError(f"task {record.id} is {record.state.value} but has no process")
        record = dataclasses.replace(record, cancel_source=source, stopped_by=stopped_by)
        self._store.update(record)
        self._log(record, f"stopping ({source}) by {_who(stopped_by)}")
        grace_s = self._types[record.type].stop_grace_s
        self._stoppers[record.id] = self._track(self._kill(record, process, grace_s))
        return record

    async def _kill(self, record: TaskRecord, process: Process, grace_s: float) -> None:
        task_id = record.id
        survivors = await runner.kill_tree(process, run_marker(task_id, record.marker), grace_s)
        status = await process.wait()
        error = None
        if survivors:
            pids = ", ".join(str(ref.pid) for ref in sorted(survivors, key=lambda r: r.pid))
            error = f"still alive after SIGKILL: pid {pids}"
            log.warning("task %d: %s", task_id, error)
        self._end(task_id, status, error)

    def _end(self, task_id: int, status: ExitStatus, error: str | None = None) -> None:
        record = self.get(task_id)
        self._processes.pop(task_id, None)
        self._stoppers.pop(task_id, None)
        if record.cancel_source is not None:
            state = TaskState.STOPPED
        elif status.error is not None:
            state = TaskState.LOST
        elif status.signal is not None or status.exit_code != 0:
            state = TaskState.FAILED
        else:
            state = TaskState.SUCCEEDED
        self._move(
            record,
            state,
            exit_code=status.exit_code,
            signal=status.signal,
            ended_at=self._clock(),
            error=status.error or error,
        )

    def _move(self, record: TaskRecord, state: TaskState, **changes: Any) -> TaskRecord:
        record = dataclasses.replace(record, state=transition(record.state, state), **changes)
        self._store.update(record)
        self._log(record, _outcome(record))
        if state in TERMINAL:
            ended = self._ended.pop(record.id, None)
            if ended is not None:
                ended.set()
        return record

    # -- helpers ---------------------------------------------------------------

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

    def _log(self, record: TaskRecord, outcome: str) -> None:
        elapsed = (self._clock() - record.created_at).total_seconds()
        log.info("%6.2fs %s task %d %s: %s", elapsed, _MARKS[record.state], record.id, record.type, outcome)


def _validate(task_type: TaskType, params: Mapping[str, Any]) -> pydantic.BaseModel:
    if not isinstance(params, Mapping):
        raise ParamsInvalid(
            f"params of task type {task_type.name!r} must be an object of name: value, not {type(params).__name__}"
        )
    try:
        return task_type.params_model.model_validate(dict(params))
    except pydantic.ValidationError as exc:
        raise params_error(f"task type {task_type.name!r}", exc) from None


def _check_key(key: str | None) -> None:
    if key is None:
        return
    if not isinstance(key, str) or not key:
        raise ParamsInvalid(f"key: must be a non-empty string or null, not {key!r}")
    if len(key) > MAX_KEY_CHARS:
        raise ParamsInvalid(f"key: must be at most {MAX_KEY_CHARS} characters, got {len(key)}")


def _parse_state(state: str | TaskState | None) -> TaskState | None:
    if state is None or isinstance(state, TaskState):
        return state
    try:
        return TaskState(state)
    except ValueError:
        names = ", ".join(s.value for s in TaskState)
        raise ParamsInvalid(f"state: must be one of {names}; not {state!r}") from None


def _first_free_id(log_dir: Path) -> int:
    highest = 0
    for entry in os.scandir(log_dir):
        stem, dot, ext = entry.name.partition(".")
        if dot and ext == "log" and stem.isdigit():
            highest = max(highest, int(stem))
    return highest + 1


def _spawn_error(exc: OSError) -> str:
    if exc.filename is not None:
        return f"spawn failed: {exc.strerror}: {os.fsdecode(exc.filename)!r}"
    return f"spawn failed: {exc}"


def _who(identity: Mapping[str, Any]) -> str:
    parts = [str(identity.get("transport"))]
    for name in ("user", "uid", "key_id", "peer"):
        if identity.get(name) is not None:
            parts.append(f"{name}={identity[name]}")
    return " ".join(parts)


def _outcome(record: TaskRecord) -> str:
    words = [record.state.value]
    if record.cancel_source is not None:
        words.append(f"({record.cancel_source})")
    if record.state is TaskState.RUNNING:
        words.append(f"pid {record.pid}")
    if record.exit_code is not None:
        words.append(f"exit {record.exit_code}")
    if record.signal is not None:
        words.append(f"signal {record.signal}")
    if record.error is not None:
        words.append(f"- {record.error}")
    return " ".join(words)
