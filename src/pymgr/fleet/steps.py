"""The fleet clients' requests, written once: each a generator of pure steps, before any I/O.

Rules:
- A request (``show``, ``jobs``, ``follow``, ``wait``...) is a generator that
  yields what it needs done, one ``Op`` at a time, and is sent the reply:
  a Redis command (``Command``), a pipeline of them (``Pipeline``), one of
  the client's Lua scripts (``Script``), the clock (``Clock``), a pause
  (``Sleep``), or a chunk for the caller (``Emit``). It returns the result.
- Nothing here does I/O or reads a clock: ``FleetClient`` and
  ``AsyncFleetClient`` each drive the generators with a thin loop
  (``_drive``) over their own redis-py client, so the sync and the asyncio
  client cannot drift apart, and the steps are tested without a Redis.
- An error of a command is thrown into the generator when it is one of
  ``REDIS_DOWN`` (a request that goes on through them, ``follow``, catches
  it); any other error reaches the caller as it is.
- Readers of the replies are ``results.py``'s; the signed submits and stops
  are built by ``FleetApi`` (``api.py``), which holds the key.
"""

from __future__ import annotations

import re

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pymgr.fleet.jobs import JOB_ID_PATTERN
from pymgr.fleet.keyspace import HOSTS, JOBS, JobState, heartbeat_key, job_key, output_key
from pymgr.fleet.results import (
    HostInfo,
    JobInfo,
    OutputChunk,
    chunk_of,
    host_info_of,
    job_info_of,
    not_in_time,
    text_of,
)

__all__ = ["MAX_LIST", "REDIS_DOWN", "Clock", "Command", "Emit", "Op", "Pipeline", "Script", "Sleep", "Steps"]

#: Seconds between two looks at a job's hash while waiting.
POLL_S = 0.05
#: The most jobs one ``jobs`` call returns.
MAX_LIST = 1000
#: Job ids read from the index per round trip while listing.
LIST_PAGE = 200
#: Output entries one read of a followed stream takes at most.
FOLLOW_BATCH = 100
#: What a dropped or restarting Redis raises while following; the follow waits and goes on.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Command:
    """One Redis command: the redis-py method's name and arguments (its sync and asyncio clients agree)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Commands sent in one round trip (no transaction); the reply is the list of their replies."""

    commands: tuple[Command, ...]


@dataclass(frozen=True, slots=True)
class Script:
    """One of the Lua scripts every fleet client registers (``api.py``); the reply is the script's."""

    name: Literal["submit", "cancel"]
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait this long before the next step; the reply is None."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Clock:
    """The reply is the monotonic clock's reading, in seconds."""


@dataclass(frozen=True, slots=True)
class Emit:
    """A chunk for the caller of ``follow``; the reply is None."""

    chunk: OutputChunk


Op = Command | Pipeline | Script | Sleep | Clock | Emit
#: A request: yields ops, is sent their replies, returns its result.
Steps = Generator[Op, Any, T]


class Stepper(Generic[T]):
    """Hands a request's generator the reply (or the error) of each op; keeps its result once it is done."""

    def __init__(self, steps: Steps[T]) -> None:
        self._steps = steps
        self._done = False
        self._result: T | None = None

    def send(self, reply: Any) -> Op | None:
        """The next op, after ``reply`` to the last one (None to start); None when the request is done."""
        return self._next(lambda: self._steps.send(reply))

    def throw(self, error: BaseException) -> Op | None:
        """The next op, after ``error`` of the last one, which the request may catch (else it raises)."""
        return self._next(lambda: self._steps.throw(error))

    def _next(self, step: Callable[[], Op]) -> Op | None:
        try:
            return step()
        except StopIteration as done:
            self._done, self._result = True, done.value
            return None

    @property
    def result(self) -> T:
        """What the request returned.

        Raises:
            RuntimeError: it has not returned yet.
        """
        if not self._done:
            raise RuntimeError("the request has not returned yet")
        return self._result  # type: ignore[return-value]  # set with _done, by the generator's return


def show(job_id: str) -> Steps[JobInfo]:
    """The job as its hash shows it (``LookupError`` if there is none)."""
    check_job_id(job_id)
    raw = yield Command("hgetall", (job_key(job_id),))
    return job_info_of(job_id, raw)


def check_job_id(job_id: str) -> None:
    """Raises LookupError: an id no job can have (hosts refuse it), which would name another key.

    ``job:out`` would read a job's output stream as a hash; no round trip is made for it.
    """
    if not re.fullmatch(JOB_ID_PATTERN, job_id):
        raise LookupError(f"no fleet job {job_id!r}: a job's id matches {JOB_ID_PATTERN}")


def check_list_filters(state: str | None, limit: int) -> None:
    """Raises ValueError: a state no job has, or ``limit`` outside 1..``MAX_LIST``."""
    states = [s.value for s in JobState]
    if state is not None and state not in states:
        raise ValueError(f"state {state!r} is not a job's state; one of {', '.join(states)}")
    if not 1 <= limit <= MAX_LIST:
        raise ValueError(f"limit must be between 1 and {MAX_LIST}, not {limit!r}")


def matches(info: JobInfo, state: str | None, host: str | None, tag: str | None) -> bool:
    """Whether a listed job passes the filters: its state; the host that took it or is its target; its tag."""
    if state is not None and info.state != state:
        return False
    if host is not None and host != info.received_by and info.target != f"host:{host}":
        return False
    return tag is None or info.target == f"tag:{tag}"


def jobs(state: str | None, host: str | None, tag: str | None, limit: int) -> Steps[list[JobInfo]]:
    """The newest jobs of the index that pass the filters, at most ``limit``, a page of hashes a round trip.

    A job whose hash has expired is passed over (the index outlives it).
    """
    check_list_filters(state, limit)
    found: list[JobInfo] = []
    for start in range(0, (yield Command("zcard", (JOBS,))), LIST_PAGE):
        page = yield Command("zrevrange", (JOBS, start, start + LIST_PAGE - 1))
        ids = [text_of(i) for i in page]
        hashes = yield Pipeline(tuple(Command("hgetall", (job_key(job_id),)) for job_id in ids))
        for job_id, raw in zip(ids, hashes, strict=True):
            if raw and matches(info := job_info_of(job_id, raw), state, host, tag):
                found.append(info)
                if len(found) == limit:
                    return found
    return found


def wait(job_id: str, timeout_s: float, done: Callable[[JobInfo], bool], what: str) -> Steps[JobInfo]:
    """Look at the job every ``POLL_S`` until ``done`` says yes; the job then.

    Raises:
        ValueError: ``timeout_s`` is negative or not a number.
        LookupError: an id no job can have (``check_job_id``).
        TimeoutError: not ``what`` within ``timeout_s`` (``not_in_time``).
    """
    if not timeout_s >= 0:  # NaN too: a deadline never reached
        raise ValueError(f"timeout_s must be a number of seconds, 0 or more, not {timeout_s!r}")
    check_job_id(job_id)
    deadline = (yield Clock()) + timeout_s
    while True:
        try:
            info: JobInfo | None = yield from show(job_id)
        except LookupError:
            info = None
        if info is not None and done(info):
            return info
        if (yield Clock()) >= deadline:
            raise not_in_time(job_id, what, timeout_s, info)
        yield Sleep(POLL_S)


def output(job_id: str) -> Steps[bytes]:
    """The job's output as its capped stream still holds it."""
    entries = yield Command("xrange", (output_key(job_id),))
    return b"".join(fields[b"data"] for _, fields in entries)


def follow(
    job_id: str, after: str, block_s: float, on_reconnect: Callable[[str, Exception], None] | None
) -> Steps[None]:
    """The job's output entries after ``after``, each ``Emit``-ted, until the job has ended.

    A read that comes back empty looks at the job; once it has ended, one more
    read without blocking takes what came just before the end. ``REDIS_DOWN``
    is told to ``on_reconnect(last id, error)``, and the read is made again
    after ``block_s``, from the last entry emitted.

    Raises:
        LookupError: no such job (at the start).
    """
    yield from show(job_id)
    last, ended_seen = after, False
    while True:
        block = None if ended_seen else int(block_s * 1000)
        read = Command("xread", ({output_key(job_id): last},), {"count": FOLLOW_BATCH, "block": block})
        try:
            reply = yield read
            if not reply:
                if ended_seen:
                    return
                ended_seen = yield from _ended(job_id)
                continue
        except REDIS_DOWN as exc:
            if on_reconnect is not None:
                on_reconnect(last, exc)
            yield Sleep(block_s)
            continue
        for entry_id, fields in reply[0][1]:
            chunk = chunk_of(entry_id, fields)
            yield Emit(chunk)
            last = chunk.entry_id


def _ended(job_id: str) -> Steps[bool]:
    try:
        info = yield from show(job_id)
    except LookupError:  # Redis restarted empty: the host writes the hash again when the job ends
        return False
    return info.final


def hosts() -> Steps[list[HostInfo]]:
    """Every host that has sent a heartbeat, by id, each from its heartbeat (None once it expired)."""
    ids = sorted(text_of(h) for h in (yield Command("smembers", (HOSTS,))))
    found = []
    for host_id in ids:
        found.append(host_info_of(host_id, (yield Command("get", (heartbeat_key(host_id),)))))
    return found
