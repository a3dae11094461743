"""The JSON shapes the task API sends: a record, an event, a piece of a log, a task type.

Rules:
- Each is a ``TypedDict``: what ``to_dict`` returns is type-checked against it, and the
  ``tasks`` actions' return annotations name it, so the result schemas of the HTTP API
  (``core/registry.py``, ``ActionSpec.result_schema``) come from the same lines. The names
  are the schemas' names in the OpenAPI document (``components/schemas``).
- ``typing_extensions.TypedDict``, not ``typing``'s: pydantic reads only that one before Python 3.12.
- ``_doc`` gives a field its description in the document.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field
from typing_extensions import TypedDict

__all__ = ["Caller", "Event", "EventKind", "LogChunk", "StateName", "TaskCounts", "TaskRecord", "TaskType"]

#: ``TaskState``'s values (a test holds the two equal).
StateName = Literal["queued", "running", "succeeded", "failed", "stopped", "timed_out", "lost"]
#: Every kind of event (``tasks/events.py``, ``tasks/streams.py``).
EventKind = Literal["state", "progress", "gap", "reset", "heartbeat"]


def _doc(text: str) -> Any:
    """A field's description in the schema (a docstring under a TypedDict field is not valid to mypy)."""
    return Field(description=text)


class Caller(TypedDict):
    """Who called, as the daemon saw it (``Identity.to_dict``)."""

    transport: Annotated[str, _doc("unix, tcp, legacy, fleet (a fleet job) or internal (the daemon itself)")]
    uid: int | None
    gid: int | None
    pid: int | None
    user: str | None
    groups: list[str]
    key_id: Annotated[str | None, _doc("The HMAC key id of a signed TCP request")]
    cert: Annotated[str | None, _doc("The common name of a verified TLS client certificate")]
    fleet_key: Annotated[str | None, _doc("The fleet key a fleet job was signed with (docs/fleet.md)")]
    peer: Annotated[str | None, _doc("host:port of a network peer")]
    person: Annotated[
        str | None, _doc("The person a delegate acted for (NAMESPACE:NAME; docs/security.md, 'Delegation')")
    ]
    roles: Annotated[list[str], _doc("The person's roles, as its delegate asserted them")]


class TaskRecord(TypedDict):
    """One run of one task type (docs/tasks.md, "Records"); times are UTC ISO 8601."""

    id: int
    type: Annotated[str, _doc("The task type (a key of [tasks.types])")]
    key: Annotated[str | None, _doc("The caller's idempotency key: one active run per key")]
    params: Annotated[dict[str, Any], _doc("The validated params, defaults filled in")]
    argv: list[str]
    state: StateName
    pid: int | None
    pid_start_time: Annotated[int | None, _doc("The kernel start time of pid (clock ticks since boot)")]
    exit_code: int | None
    signal: Annotated[str | None, _doc("The signal that ended the process, e.g. SIGTERM")]
    created_at: str
    started_at: str | None
    ended_at: str | None
    started_by: Caller
    stopped_by: Caller | None
    cancel_source: Annotated[
        Literal["user", "deadline", "shutdown"] | None,
        _doc("Who stopped it: a stop request, the type's timeout_s, the daemon shutting down"),
    ]
    error: Annotated[str | None, _doc("Why it failed or was lost, or why it was not restarted")]
    attempt: Annotated[int, _doc("1 for a first run; a restart is a new run, one higher")]
    retry_of: Annotated[int | None, _doc("The run this one restarts")]
    not_before: Annotated[str | None, _doc("A restart waits queued until this time")]
    progress: Annotated[float | None, _doc("The latest PYMGR_PROGRESS percent, 0-100")]
    progress_message: str | None
    boot_id: str | None
    cgroup: Annotated[str | None, _doc("The run's own cgroup v2 directory, or null")]
    log_path: str


class Event(TypedDict):
    """One event of the task stream (GET /v1/events, tasks.events, the client): one shape everywhere.

    ``data`` by ``kind``: ``state`` a TaskRecord; ``progress`` ``{id, progress, progress_message}``;
    ``gap`` ``{dropped}``; ``reset`` ``{since, oldest, last}``; ``heartbeat`` ``{time}``.
    """

    id: Annotated[
        int | None,
        _doc("Increasing from 1 for the daemon's lifetime; null for a marker not in the history (gap)"),
    ]
    kind: EventKind
    time: Annotated[float, _doc("Epoch seconds")]
    data: Mapping[str, Any]


class LogChunk(TypedDict):
    """Up to ``limit`` bytes of a run's output, as text (``tasks.logs``)."""

    id: int
    offset: Annotated[int, _doc("The logical offset this piece starts at")]
    next_offset: Annotated[int, _doc("Where the next read starts")]
    start: Annotated[int, _doc("The oldest offset still held (older bytes were rotated away)")]
    end: Annotated[int, _doc("The log's end now")]
    ended: Annotated[bool, _doc("The run has ended: past end there will be nothing more")]
    data: Annotated[str, _doc("The bytes, decoded as UTF-8 (undecodable bytes replaced)")]


class TaskType(TypedDict):
    """A task type that can be started (``tasks.types``)."""

    name: str
    doc: str
    params: Annotated[dict[str, Any], _doc("The params' JSON Schema")]


class TaskCounts(TypedDict):
    """The runs in the store by state, every state named (``tasks.counts``): the whole history the
    retention keeps, not a page."""

    queued: int
    running: int
    succeeded: int
    failed: int
    stopped: int
    timed_out: int
    lost: int
