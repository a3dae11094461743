"""What the fleet clients return: frozen dataclasses read from Redis, and their readers (no I/O).

Rules:
- Everything here is read from what hosts and submitters wrote into Redis:
  data to show, never trusted for more. A field that does not parse is None
  (a number) or kept as text (an action's result), never an exception.
- The sync and async clients share these readers, so both return the same
  thing for the same data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pymgr.fleet.keyspace import FINAL

__all__ = [
    "HostInfo",
    "JobInfo",
    "OutputChunk",
    "StopResult",
    "ended",
    "host_info_of",
    "job_info_of",
    "not_in_time",
    "taken",
    "text_of",
]

_FINAL_NAMES = frozenset(state.value for state in FINAL)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A job as its hash shows it."""

    id: str
    state: str
    kind: str | None
    type: str | None
    target: str | None
    #: Seconds since the epoch when it was signed; None if the hash does not say.
    submitted_at: float | None
    #: The host that took it; None while no host has.
    received_by: str | None
    #: The id of its task run on that host.
    task_id: int | None
    exit_code: int | None
    progress: float | None
    error: str | None
    #: An action job's result (JSON, decoded).
    result: Any
    #: Every field of the hash, as text.
    fields: Mapping[str, str]

    @property
    def final(self) -> bool:
        """Whether the job has ended (succeeded, failed, stopped, refused, cancelled, lost or dead)."""
        return self.state in _FINAL_NAMES


@dataclass(frozen=True, slots=True)
class HostInfo:
    """A fleet member as its heartbeat shows it."""

    id: str
    tags: tuple[str, ...]
    #: False when its heartbeat has expired (``[fleet] lease_s`` without one).
    alive: bool
    #: Seconds since the epoch of its last heartbeat; None when it has expired.
    last_seen: float | None
    running: int | None


@dataclass(frozen=True, slots=True)
class StopResult:
    """What a stop did.

    ``how``: ``cancelled`` (no host had taken the job: none will run it),
    ``sent`` (a signed stop is in the control stream of ``host``, which applies
    it, now or when it is back) or ``ended`` (the job had ended: nothing to stop).
    """

    job_id: str
    how: Literal["cancelled", "sent", "ended"]
    #: The host the stop went to (``sent``), or that ran the job (``ended``).
    host: str | None
    #: The job's state when the stop was made.
    state: str


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """One entry of a job's output stream."""

    #: The stream entry's id: following again after it resumes right behind this chunk.
    entry_id: str
    #: Where the chunk starts in the run's output.
    offset: int
    data: bytes


def taken(info: JobInfo) -> bool:
    """Whether a host has taken the job (or it ended without one: refused, cancelled, lost, dead)."""
    return info.received_by is not None or info.final


def ended(info: JobInfo) -> bool:
    return info.final


def not_in_time(job_id: str, what: str, timeout_s: float, info: JobInfo | None) -> TimeoutError:
    """The error of a wait that ran out: what the job was not, and the state it is in."""
    state = "no hash" if info is None else info.state
    return TimeoutError(f"fleet job {job_id} was not {what} within {timeout_s:g} s (state: {state})")


def host_info_of(host_id: str, beat: bytes | None) -> HostInfo:
    """A host from its heartbeat (None: expired); what does not parse in it is None or no tags."""
    if beat is None:
        return HostInfo(host_id, (), False, None, None)
    try:
        data = json.loads(beat)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return HostInfo(host_id, (), True, None, None)
    tags = data.get("tags")
    tags = tuple(str(t) for t in tags) if isinstance(tags, list) else ()
    return HostInfo(host_id, tags, True, _number(data.get("at"), float), _number(data.get("running"), int))


def _number(value: Any, cast: Any) -> Any:
    """``value`` as ``cast`` (float or int), or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return cast(value)


def job_info_of(job_id: str, raw: Mapping[Any, Any]) -> JobInfo:
    """A job from its hash as Redis returns it.

    Raises:
        LookupError: the hash is empty (no such job).
    """
    if not raw:
        raise LookupError(f"no fleet job {job_id!r}; pymgr fleet list shows the recent ones")
    return _job_info(job_id, {text_of(k): text_of(v) for k, v in raw.items()})


def chunk_of(entry_id: Any, fields: Mapping[Any, Any]) -> OutputChunk:
    """An output chunk from its stream entry."""
    offset = fields.get(b"offset", b"0")
    return OutputChunk(text_of(entry_id), int(offset) if offset.isdigit() else 0, fields.get(b"data", b""))


def _job_info(job_id: str, fields: dict[str, str]) -> JobInfo:
    def number(name: str, cast: Any) -> Any:
        value = fields.get(name)
        try:
            return None if value in (None, "") else cast(value)
        except ValueError:
            return None

    result: Any = fields.get("result")
    try:
        result = None if result is None else json.loads(result)
    except ValueError:  # a host wrote something else: shown as the text it is
        pass
    return JobInfo(
        id=job_id,
        state=fields.get("state", "unknown"),
        kind=fields.get("kind"),
        type=fields.get("type"),
        target=fields.get("target"),
        submitted_at=number("submitted_at", float),
        received_by=fields.get("received_by"),
        task_id=number("task_id", int),
        exit_code=number("exit_code", int),
        progress=number("progress", float),
        error=fields.get("error"),
        result=result,
        fields=fields,
    )


def text_of(value: Any) -> str:
    """A Redis reply as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
