"""What the client's methods return: the daemon's replies as frozen dataclasses.

Rules:
- Each type is read by ``from_json`` (every field's type checked, ``BadReply``
  naming the field when the daemon's JSON does not fit; unknown fields
  ignored, as a newer daemon may add some) and written back by ``to_json``,
  the wire shape with the daemon's field order (what ``pymgr --json`` prints
  and a web app relays to a browser).
- Times are timezone-aware ``datetime`` (the daemon sends UTC ISO 8601;
  an event's time is epoch seconds on the wire).
- The shapes are the daemon's: ``tasks/records.py`` (a record),
  ``tasks/events.py`` (an event; a progress event's data is published by
  ``tasks/supervision.py``), ``auth/listing.py`` (the module list).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Literal, get_args

from pymgr.client.fields import BadReply, Fields, JsonObject, JsonValue

#: A run's state, as the daemon's ``TaskState`` values.
TaskState = Literal["queued", "running", "succeeded", "failed", "stopped", "timed_out", "lost"]
#: States a run never leaves.
FINAL_STATES: frozenset[TaskState] = frozenset({"succeeded", "failed", "stopped", "timed_out", "lost"})
#: Who or what cancelled a run: a stop request, the type's deadline, the daemon's shutdown.
CancelSource = Literal["user", "deadline", "shutdown"]


def _wire_value(value: object) -> JsonValue:
    """One field as the daemon writes it: times in ISO 8601 to the millisecond, tuples as lists."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, tuple):
        return [_wire_value(item) for item in value]
    assert value is None or isinstance(value, bool | int | float | str | list | dict)
    return value


def _wire(result: object) -> JsonObject:
    """A result's fields in their order (the daemon's), as JSON: the declaration is the wire shape."""
    return {field.name: _wire_value(getattr(result, field.name)) for field in fields(result)}  # type: ignore[arg-type]


def _one_of(value: str | None, allowed: tuple[str, ...], field: str) -> None:
    """A task record's ``field`` holds one of the ``allowed`` names (or null)."""
    if value is not None and value not in allowed:
        raise BadReply(
            f"task record: field {field!r} should be one of {', '.join(allowed)}, not {value!r}",
            details={"object": "task record", "field": field, "expected": list(allowed)},
        )


@dataclass(frozen=True, slots=True)
class Health:
    """``GET /v1/health``: the daemon is up."""

    status: str
    version: str
    pid: int
    uptime_s: float

    @classmethod
    def from_json(cls, value: JsonValue) -> Health:
        f = Fields(value, "health")
        return cls(f.text("status"), f.text("version"), f.integer("pid"), f.number("uptime_s"))

    def to_json(self) -> JsonObject:
        return _wire(self)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One run of one task type (docs/tasks.md has every field's meaning)."""

    id: int
    type: str
    key: str | None
    params: JsonObject
    argv: tuple[str, ...]
    state: TaskState
    pid: int | None
    pid_start_time: int | None
    exit_code: int | None
    #: The name of the signal that ended the process, e.g. "SIGTERM".
    signal: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    started_by: JsonObject
    stopped_by: JsonObject | None
    cancel_source: CancelSource | None
    error: str | None
    attempt: int
    retry_of: int | None
    not_before: datetime | None
    #: The latest progress, percent 0-100, and its message.
    progress: float | None
    progress_message: str | None
    boot_id: str | None
    cgroup: str | None
    log_path: str

    @property
    def is_final(self) -> bool:
        """The run has ended: its state will not change again."""
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, value: JsonValue) -> TaskRecord:
        f = Fields(value, "task record")
        state, cancel = f.text("state"), f.opt_text("cancel_source")
        _one_of(state, get_args(TaskState), "state")
        _one_of(cancel, get_args(CancelSource), "cancel_source")
        return cls(
            id=f.integer("id"),
            type=f.text("type"),
            key=f.opt_text("key"),
            params=f.obj("params"),
            argv=f.strs("argv"),
            state=state,  # type: ignore[arg-type]  # checked by _one_of
            pid=f.opt_integer("pid"),
            pid_start_time=f.opt_integer("pid_start_time"),
            exit_code=f.opt_integer("exit_code"),
            signal=f.opt_text("signal"),
            created_at=f.when("created_at"),
            started_at=f.opt_when("started_at"),
            ended_at=f.opt_when("ended_at"),
            started_by=f.obj("started_by"),
            stopped_by=f.opt_obj("stopped_by"),
            cancel_source=cancel,  # type: ignore[arg-type]  # checked by _one_of
            error=f.opt_text("error"),
            attempt=f.integer("attempt"),
            retry_of=f.opt_integer("retry_of"),
            not_before=f.opt_when("not_before"),
            progress=f.opt_number("progress"),
            progress_message=f.opt_text("progress_message"),
            boot_id=f.opt_text("boot_id"),
            cgroup=f.opt_text("cgroup"),
            log_path=f.text("log_path"),
        )

    def to_json(self) -> JsonObject:
        """The record as the daemon sends it (``tasks/records.py`` ``to_dict``), in its field order."""
        return _wire(self)


@dataclass(frozen=True, slots=True)
class Progress:
    """The data of a ``progress`` event: a run's latest progress line (the record's two fields)."""

    #: The run's id.
    id: int
    #: Percent, 0-100.
    progress: float
    progress_message: str | None

    @classmethod
    def from_json(cls, value: JsonValue) -> Progress:
        f = Fields(value, "progress")
        return cls(f.integer("id"), f.number("progress"), f.opt_text("progress_message"))

    def to_json(self) -> JsonObject:
        return _wire(self)


@dataclass(frozen=True, slots=True)
class Event:
    """One event of ``GET /v1/events``: ``state`` (``data`` is a record), ``progress``,
    ``heartbeat``, ``gap`` (``{"dropped": N}``), ``reset``; a newer daemon may send other kinds."""

    #: Increasing for the daemon's lifetime; None for a marker (heartbeat, gap, reset).
    id: int | None
    kind: str
    #: When it happened; None if the stream did not say.
    time: datetime | None
    data: JsonValue

    @classmethod
    def from_json(cls, value: JsonValue) -> Event:
        f = Fields(value, "event")
        seconds = f.opt_number("time")
        try:
            moment = None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise BadReply(f"event: field 'time' is not a time: {seconds!r}") from None
        return cls(id=f.opt_integer("id"), kind=f.text("kind"), time=moment, data=f.value("data"))

    def record(self) -> TaskRecord | None:
        """The task record of a ``state`` event (None for any other kind).

        Raises:
            BadReply: a ``state`` event whose data is not a task record.
        """
        return TaskRecord.from_json(self.data) if self.kind == "state" else None

    def progress(self) -> Progress | None:
        """The progress of a ``progress`` event (None for any other kind).

        Raises:
            BadReply: a ``progress`` event whose data is not ``{"id", "progress", "progress_message"}``.
        """
        return Progress.from_json(self.data) if self.kind == "progress" else None

    def to_json(self) -> JsonObject:
        """The event's one shape, ``{"id", "kind", "time", "data"}``, time in epoch seconds."""
        seconds = None if self.time is None else round(self.time.timestamp(), 3)
        return {"id": self.id, "kind": self.kind, "time": seconds, "data": self.data}


@dataclass(frozen=True, slots=True)
class ActionInfo:
    """One action of ``GET /v1/modules``, marked for the caller who asked."""

    name: str
    doc: str
    read_only: bool
    #: Hard to undo (a reboot, a delete): ask the person before calling it.
    dangerous: bool
    #: The JSON Schema of its parameters.
    params: JsonObject
    #: Whether the daemon's policy lets this caller call it.
    allowed: bool
    #: For ``tasks.start|stop|logs``: each task type and whether this caller may do that on it.
    task_types: dict[str, bool] | None = None

    @classmethod
    def from_json(cls, value: JsonValue) -> ActionInfo:
        f = Fields(value, "action")
        return cls(
            name=f.text("name"),
            doc=f.text("doc"),
            read_only=f.flag("read_only"),
            dangerous=f.flag("dangerous"),
            params=f.obj("params"),
            allowed=f.flag("allowed"),
            task_types=f.opt_flags("task_types"),
        )

    def to_json(self) -> JsonObject:
        info: JsonObject = {
            "name": self.name,
            "doc": self.doc,
            "read_only": self.read_only,
            "dangerous": self.dangerous,
            "params": self.params,
            "allowed": self.allowed,
        }
        if self.task_types is not None:
            info["task_types"] = dict[str, JsonValue](self.task_types)
        return info


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """One module of ``GET /v1/modules`` with its actions."""

    name: str
    doc: str
    actions: tuple[ActionInfo, ...]

    @classmethod
    def from_json(cls, value: JsonValue) -> ModuleInfo:
        f = Fields(value, "module")
        return cls(f.text("name"), f.text("doc"), f.objects("actions", ActionInfo.from_json))

    def to_json(self) -> JsonObject:
        return {"name": self.name, "doc": self.doc, "actions": [a.to_json() for a in self.actions]}


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """``GET /v1/task-counts``: how many runs the daemon holds in each state (all it keeps, not a page)."""

    queued: int
    running: int
    succeeded: int
    failed: int
    stopped: int
    timed_out: int
    lost: int

    @classmethod
    def from_json(cls, value: JsonValue) -> TaskCounts:
        f = Fields(value, "task counts")
        # The fields are declared in TaskState's order.
        return cls(*(f.integer(state) for state in get_args(TaskState)))

    def by_state(self) -> dict[TaskState, int]:
        """The counts keyed by state, in ``TaskState``'s order."""
        return {state: getattr(self, state) for state in get_args(TaskState)}

    @property
    def total(self) -> int:
        return sum(self.by_state().values())

    def to_json(self) -> JsonObject:
        return _wire(self)


@dataclass(frozen=True, slots=True)
class TaskTypeInfo:
    """One task type of ``GET /v1/task-types``."""

    name: str
    doc: str
    #: The JSON Schema of its parameters.
    params: JsonObject

    @classmethod
    def from_json(cls, value: JsonValue) -> TaskTypeInfo:
        f = Fields(value, "task type")
        return cls(f.text("name"), f.text("doc"), f.obj("params"))

    def to_json(self) -> JsonObject:
        return _wire(self)
