"""The task streams the HTTP edge serves: a run's log bytes, and server-sent events.

Rules:
- ``task_log`` yields the bytes of a run's log from an offset: up to the
  current end, or, with ``follow``, until the run has ended and its last
  bytes were sent (``logs.LogReader.follow``). Offsets were checked by the
  ``tasks.logs`` action before the stream starts. Without ``progress``, the
  progress lines are left out (``keeper.progress.ProgressLineFilter``).
- ``events`` yields server-sent events (``text/event-stream``): one
  ``heartbeat`` at once (the subscription is in place when the client sees
  it), then its opening, then every event of the hub the stream's filter
  takes (``eventfilter.py``) as ``id: <seq>``, ``event: <kind>``, ``time:
  <epoch s>``, ``data: <JSON>``, and a ``heartbeat`` after
  ``events_heartbeat_s`` without one. A client that reads too slowly gets
  a ``gap`` event (``events.py``), never a stalled daemon.
- The opening is read in the same loop turn as the subscription is made,
  so no event falls between them: without ``since``, a ``state`` event of
  each matching active run (with ``task``, that run even if it ended),
  each with the id of the newest event so far; with ``since`` (the
  ``Last-Event-ID`` of a reconnect), the matching events after it, or, if
  the history no longer holds them all, a ``reset`` event and the opening
  without ``since``.
- Every stream ends promptly when the daemon stops (``stopping``), so a
  shutdown never waits for a follower or a subscriber to hang up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pymgr.errors import NotFound
from pymgr.keeper.progress import ProgressLineFilter
from pymgr.tasks.eventfilter import EventFilter
from pymgr.tasks.events import Event
from pymgr.tasks.logreader import FOLLOW_CHUNK_BYTES
from pymgr.tasks.manager import TaskManager
from pymgr.tasks.records import TaskRecord
from pymgr.tasks.states import ACTIVE


#: One encoder for every event (``json.dumps`` with options builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def sse(event: Event) -> bytes:
    """One server-sent event (JSON data on one line, so no field splitting is needed).

    ``time`` is a field browsers ignore (the WHATWG parser skips unknown names) and
    pymgr's client reads: an event there has the shape ``tasks.events`` returns.
    """
    head = f"id: {event.seq}\n" if event.seq else ""
    return f"{head}event: {event.kind}\ntime: {event.time:.3f}\ndata: {_encode(event.data)}\n\n".encode()


def _marker(kind: str, data: Mapping[str, Any], seq: int = 0) -> bytes:
    return sse(Event(seq, kind, data, time.time()))


class TaskStreams:
    """What ``GET /v1/tasks/ID/logs`` and ``GET /v1/events`` stream (see the module rules)."""

    def __init__(self, manager: TaskManager, stopping: asyncio.Event) -> None:
        self.manager = manager
        self.stopping = stopping

    async def task_log(
        self, task_id: int, offset: int, follow: bool, progress: bool = True
    ) -> AsyncIterator[bytes]:
        if progress:
            async for data in self._log_bytes(task_id, offset, follow):
                yield data
            return
        lines = ProgressLineFilter(self.manager.logs.starts_line(task_id, offset))
        async for data in self._log_bytes(task_id, offset, follow):
            if kept := lines.feed(data):
                yield kept
        if rest := lines.flush():
            yield rest

    async def _log_bytes(self, task_id: int, offset: int, follow: bool) -> AsyncIterator[bytes]:
        logs = self.manager.logs
        if not follow:
            end = logs.span(task_id).end
            while offset < end and not self.stopping.is_set():
                data, _ = logs.read(task_id, offset, min(FOLLOW_CHUNK_BYTES, end - offset))
                if not data:
                    return
                offset += len(data)
                yield data
            return
        poll_s = self.manager.config.log_follow_poll_s
        chunks = logs.follow(task_id, offset, running=lambda: self.manager.running(task_id), poll_s=poll_s)
        try:
            async for data in chunks:
                if self.stopping.is_set():
                    return
                yield data
        finally:
            await chunks.aclose()

    async def events(
        self,
        *,
        task: int | None = None,
        type: str | None = None,
        key: str | None = None,
        since: int | None = None,
    ) -> AsyncIterator[bytes]:
        heartbeat_s = self.manager.config.events_heartbeat_s
        wanted = EventFilter(task, type, key)
        with self.manager.events.subscribe(None if wanted.everything else wanted.accepts) as subscription:
            opening = self._opening(wanted, since)  # no await since subscribing: no event falls between
            # One watcher for the stream's life wakes the wait when the daemon stops; each event
            # then costs one future, not two tasks and an asyncio.wait (~4 loop turns less per event).
            stopper = asyncio.ensure_future(self.stopping.wait())
            stopper.add_done_callback(lambda _: subscription.wake())
            try:
                yield _marker("heartbeat", {"time": round(time.time(), 3)}) + opening
                last = time.monotonic()
                while not self.stopping.is_set():
                    event = await subscription.get(max(0.0, last + heartbeat_s - time.monotonic()))
                    if self.stopping.is_set():
                        return
                    if event is None:
                        yield _marker("heartbeat", {"time": round(time.time(), 3)})
                    else:  # what else is queued goes in the same chunk: one write for a burst
                        yield b"".join(sse(e) for e in (event, *subscription.pending()))
                    last = time.monotonic()
            finally:
                # Not awaited: it only waits on the event, and a generator may close outside a task.
                stopper.cancel()

    def _opening(self, wanted: EventFilter, since: int | None) -> bytes:
        """What a stream sends before live events (see the module rules); it also seeds ``wanted``."""
        hub = self.manager.events
        runs = self._runs(wanted)
        wanted.seed(runs)
        if since is not None:
            missed = hub.since(since)
            if missed is not None:
                return b"".join(sse(e) for e in wanted.replay(missed))
            head = sse(hub.reset(since))
        else:
            head = b""
        return head + b"".join(_marker("state", r.to_dict(), hub.last_id) for r in runs if wanted.matches(r))

    def _runs(self, wanted: EventFilter) -> list[TaskRecord]:
        """The runs a stream opens with: ``task`` even if ended, else every active one of type and key."""
        if wanted.task is not None:
            try:
                return [self.manager.get(wanted.task)]
            except NotFound:
                return []  # dropped by retention since the route looked it up
        return active_runs(self.manager, wanted.type, wanted.key)


def active_runs(manager: TaskManager, type: str | None, key: str | None) -> list[TaskRecord]:
    """The runs not ended, of task type ``type`` and holding ``key`` if given, oldest first."""
    runs = [record for state in ACTIVE for record in manager.list_runs(state=state, type=type, key=key)]
    return sorted(runs, key=lambda record: record.id)
