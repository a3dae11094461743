"""The ``tasks`` module: background tasks as actions, the single task API.

Rules:
- Every action is a thin call into the daemon's ``TaskManager``
  (``self.context.tasks``); the manager owns all task state.
- The HTTP routes under ``/v1/tasks`` map onto these actions, so a task
  behaves the same whether started through them or through the module call.
- Records leave as ``TaskRecord.to_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, cast

from pydantic import Field, WithJsonSchema

from pymgr.core.identity import Identity
from pymgr.core.registry import Module, action
from pymgr.config import TasksConfig
from pymgr.errors import ParamsInvalid, Unavailable
from pymgr.keeper.progress import ProgressLineFilter
from pymgr.tasks.eventfilter import EventFilter
from pymgr.tasks.events import RECENT_EVENTS
from pymgr.tasks import shapes
from pymgr.tasks.manager import MAX_KEY_CHARS, TaskManager
from pymgr.tasks.streams import active_runs
from pymgr.tasks.states import ACTIVE, TaskState

#: Bytes ``tasks.logs`` returns by default, and at most: a JSON reply stays small.
DEFAULT_LOG_READ_BYTES = 64 * 1024
MAX_LOG_READ_BYTES = 1024 * 1024

#: A key as callers send it (the manager checks the same bound).
Key = Annotated[str | None, Field(min_length=1, max_length=MAX_KEY_CHARS)]
#: A state filter: the manager checks the name (its message lists them); the schema shows them.
StateFilter = Annotated[
    str | None, WithJsonSchema({"anyOf": [{"enum": [s.value for s in TaskState]}, {"type": "null"}]})
]
#: Who started a run, as ``tasks.list`` filters it (``console:alice``, ``root``): a person's name is
#: at most 64 characters and its namespace a word; 256 bounds both with room, as for a key.
StartedBy = Annotated[str | None, Field(min_length=1, max_length=256)]
#: A run's id, as a cursor: SQLite's INTEGER is a signed 64-bit number, so a larger one cannot even be asked.
TaskId = Annotated[int, Field(ge=1, le=2**63 - 1)]
#: An event's id, as a cursor to resume after (0: from the first); the hub's counter is signed 64-bit.
EventId = Annotated[int | None, Field(ge=0, le=2**63 - 1)]
#: A task type as a filter of events: a name, never empty (leave it out to take every type).
TypeName = Annotated[str | None, Field(min_length=1)]


def page_limit(limit: int | None, config: TasksConfig) -> int:
    """The records a page of ``tasks.list`` holds: ``limit``, or ``[tasks] list_limit`` when None.

    Raises:
        ParamsInvalid: ``limit`` is over ``[tasks] list_max_limit`` (below 1 is the params model's refusal).
    """
    if limit is None:
        return config.list_limit
    if limit > config.list_max_limit:
        bound = f"at most {config.list_max_limit}"
        raise ParamsInvalid(
            f"bad params for tasks.list: limit: {bound} records a page ([tasks] list_max_limit), not {limit}; "
            "ask for the next page with before=<the last id of this one>",
            details={"errors": [{"field": "limit", "message": bound, "type": "less_than_equal"}]},
        )
    return limit


class Tasks(Module):
    """Start, stop and inspect background tasks of the types the config declares."""

    name = "tasks"

    @property
    def manager(self) -> TaskManager:
        manager: TaskManager | None = self.context.tasks
        if manager is None:
            raise Unavailable("this daemon runs no task manager; the tasks module needs one")
        return manager

    @action(name="list", read_only=True)
    async def list_runs(
        self,
        state: StateFilter = None,
        type: str | None = None,
        key: Key = None,
        limit: Annotated[int | None, Field(ge=1)] = None,
        before: TaskId | None = None,
        started_by: StartedBy = None,
    ) -> list[shapes.TaskRecord]:
        """Task runs, newest first, filtered by state, type, key and who started them: a page of
        ``limit`` ([tasks] list_limit).

        ``started_by``: the person a delegate acted for (``console:alice``), else the caller's user name.
        The next page: ``before`` = the last id of this one; a page shorter than its limit is the last.
        """
        manager = self.manager
        limit = page_limit(limit, manager.config)
        records = manager.list_runs(
            state=state, type=type, key=key, limit=limit, before=before, started_by=started_by
        )
        return [record.to_dict() for record in records]

    @action(read_only=True)
    async def show(self, id: int) -> shapes.TaskRecord:
        """One task run by id."""
        return self.manager.get(id).to_dict()

    @action(read_only=True)
    async def counts(self) -> shapes.TaskCounts:
        """How many runs the daemon holds in each state: all of them (as far as the retention keeps
        them), counted by the store in one query, not a page of records."""
        counts = self.manager.count_runs()
        # A cast: a comprehension cannot build a TypedDict; its keys are TaskState's (a test holds the two equal).
        return cast(shapes.TaskCounts, {state.value: counts.get(state, 0) for state in TaskState})

    @action(read_only=True)
    async def types(self) -> list[shapes.TaskType]:
        """The task types that can be started, with their parameter schemas."""
        return self.manager.describe_types()

    @action
    async def start(
        self,
        type: str,
        # Never mutated: pydantic validates a fresh dict for every call.
        params: dict[str, Any] = {},  # noqa: B006
        key: Key = None,
        *,
        caller: Identity,
    ) -> shapes.TaskRecord:
        """Start a run of a task type; with a key, an active run holding that key is returned instead."""
        record = await self.manager.start(type, params, key, caller)
        return record.to_dict()

    @action(dangerous=True)
    async def stop(self, id: int, *, caller: Identity) -> shapes.TaskRecord:
        """Stop a run (SIGTERM, grace period, SIGKILL to its whole process tree)."""
        record = await self.manager.stop(id, caller)
        return record.to_dict()

    @action(read_only=True)
    async def logs(
        self,
        id: int,
        offset: int = 0,
        limit: Annotated[int, Field(ge=0, le=MAX_LOG_READ_BYTES)] = DEFAULT_LOG_READ_BYTES,
        progress: bool = True,
    ) -> shapes.LogChunk:
        """Up to ``limit`` bytes of a run's output from logical ``offset`` (text; GET /v1/tasks/ID/logs gives raw bytes and follows).

        ``progress=false`` leaves the ``PYMGR_PROGRESS`` lines out; ``next_offset`` still counts
        the log's bytes (it stops before an unfinished line that may be one: the next read has it).
        """
        record = self.manager.get(id)
        ended = record.state not in ACTIVE
        data, span = self.manager.logs.read(record.id, offset, limit)
        next_offset = offset + len(data)
        if not progress:
            data, next_offset = self._without_progress(
                record.id, offset, data, ended and next_offset == span.end
            )
        return {
            "id": record.id,
            "offset": offset,
            "next_offset": next_offset,
            "start": span.start,
            "end": span.end,
            "ended": ended,
            "data": data.decode("utf-8", "replace"),
        }

    def _without_progress(self, task_id: int, offset: int, data: bytes, final: bool) -> tuple[bytes, int]:
        """``data`` without progress lines, and the offset to read on from.

        An unfinished last line that may be a progress line is held back, unless it is the end of
        an ended run's log (it never will be one) or all there is (a ``limit`` shorter than the line).
        """
        lines = ProgressLineFilter(self.manager.logs.starts_line(task_id, offset))
        kept = lines.feed(data)
        next_offset = offset + len(data)
        if lines.held and (final or not kept):
            kept += lines.flush()
        else:
            next_offset -= lines.held
        return kept, next_offset

    @action(read_only=True)
    async def events(
        self,
        limit: Annotated[int, Field(ge=0, le=RECENT_EVENTS)] = RECENT_EVENTS,
        since: EventId = None,
        task: TaskId | None = None,
        type: TypeName = None,
        key: Key = None,
    ) -> list[shapes.Event]:
        """The latest task events, oldest first (GET /v1/events streams them live, with the same parameters).

        With ``since``: the first ``limit`` events after that id (poll on from the last one's id);
        if some of them are no longer held, a ``reset`` event comes first (as on the stream).
        ``task``, ``type``, ``key``: only the events of the runs matching every one given (markers
        that are about no run pass); an unknown ``task`` is ``not_found``.
        """
        manager, hub = self.manager, self.manager.events
        wanted = EventFilter(task, type, key)
        if task is not None:
            manager.get(task)  # NotFound
        wanted.seed(active_runs(manager, type, key))
        if since is None:
            latest = wanted.replay(hub.recent(hub.held))
            return [event.to_dict() for event in latest[len(latest) - limit :]]
        missed = hub.since(since)
        if missed is not None:
            return [event.to_dict() for event in wanted.replay(missed)[:limit]]
        held = wanted.replay(hub.recent(hub.held))[:limit]
        return [hub.reset(since).to_dict(), *(event.to_dict() for event in held)]


#: What each action of this module is to the policy (``auth/policy.py``): the
#: reads are one operation, the others are decided by the task's type. Keyed
#: by the functions themselves, so an action of another module (a command
#: from the config, say) cannot pass for one by taking the name "tasks".
TASK_OPERATIONS: dict[Callable[..., Any], str] = {
    Tasks.list_runs: "tasks.read",
    Tasks.show: "tasks.read",
    Tasks.counts: "tasks.read",
    Tasks.types: "tasks.read",
    Tasks.events: "tasks.read",
    Tasks.start: "tasks.start",
    Tasks.stop: "tasks.stop",
    Tasks.logs: "tasks.logs",
}
