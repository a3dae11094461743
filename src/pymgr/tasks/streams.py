"""The task streams the HTTP edge serves: a run's log bytes, and server-sent events.

Rules:
- ``task_log`` yields the bytes of a run's log from an offset: up to the
  current end, or, with ``follow``, until the run has ended and its last
  bytes were sent (``logs.LogReader.follow``). Offsets were checked by the
  ``tasks.logs`` action before the stream starts.
- ``events`` yields server-sent events (``text/event-stream``): one
  ``heartbeat`` at once (the subscription is in place when the client sees
  it), then every event of the hub as ``id: <seq>``, ``event: <kind>``,
  ``data: <JSON>``, and a ``heartbeat`` after ``events_heartbeat_s``
  without one. A client that reads too slowly gets a ``gap`` event
  (``events.py``), never a stalled daemon.
- Every stream ends promptly when the daemon stops (``stopping``), so a
  shutdown never waits for a follower or a subscriber to hang up.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pymgr.tasks.logreader import FOLLOW_CHUNK_BYTES
from pymgr.tasks.manager import TaskManager


#: One encoder for every event (``json.dumps`` with options builds a new one per call).
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def sse(kind: str, data: dict[str, Any], seq: int | None = None) -> bytes:
    """One server-sent event (JSON data on one line, so no field splitting is needed)."""
    head = f"id: {seq}\n" if seq else ""
    return f"{head}event: {kind}\ndata: {_encode(data)}\n\n".encode()


class TaskStreams:
    """What ``GET /v1/tasks/ID/logs`` and ``GET /v1/events`` stream (see the module rules)."""

    def __init__(self, manager: TaskManager, stopping: asyncio.Event) -> None:
        self.manager = manager
        self.stopping = stopping

    async def task_log(self, task_id: int, offset: int, follow: bool) -> AsyncIterator[bytes]:
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

    async def events(self) -> AsyncIterator[bytes]:
        heartbeat_s = self.manager.config.events_heartbeat_s
        with self.manager.events.subscribe() as subscription:
            # One watcher for the stream's life wakes the wait when the daemon stops; each event
            # then costs one future, not two tasks and an asyncio.wait (~4 loop turns less per event).
            stopper = asyncio.ensure_future(self.stopping.wait())
            stopper.add_done_callback(lambda _: subscription.wake())
            try:
                yield sse("heartbeat", {"time": round(time.time(), 3)})
                last = time.monotonic()
                while not self.stopping.is_set():
                    event = await subscription.get(max(0.0, last + heartbeat_s - time.monotonic()))
                    if self.stopping.is_set():
                        return
                    if event is None:
                        yield sse("heartbeat", {"time": round(time.time(), 3)})
                    else:  # what else is queued goes in the same chunk: one write for a burst
                        batch = [event, *subscription.pending()]
                        yield b"".join(sse(e.kind, e.data, e.seq) for e in batch)
                    last = time.monotonic()
            finally:
                # Not awaited: it only waits on the event, and a generator may close outside a task.
                stopper.cancel()
