"""Streaming replies of the HTTP app: task logs and server-sent events.

Rules:
- A route returns a ``Stream`` instead of a JSON result when its reply is
  sent as it is produced (chunked transfer encoding): the status and
  headers go first, then each chunk as it comes, then the end.
- Errors are found before the stream starts (the route calls its action
  first: policy, 404, bad offsets), so they still get the JSON envelope.
  An error in the middle of a stream can only end it: it is logged.
- The client hanging up ends the stream at once, even while the producer
  waits for more (a followed log that is quiet, an event stream between
  events): the producer is cancelled, never left running.
- Query parameters of the streaming routes are parsed here, strictly: an
  unknown name or a bad value is a ``bad_params`` error naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl

from pymgr.errors import MalformedRequest

log = logging.getLogger("pymgr.http")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: Query parameters of ``GET /v1/tasks/ID/logs``.
LOG_QUERY = frozenset({"offset", "follow"})

_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}


class StreamSource(Protocol):
    """What the streaming routes read from (``pymgr.tasks.streams.TaskStreams``)."""

    def task_log(self, task_id: int, offset: int, follow: bool) -> AsyncIterator[bytes]: ...

    def events(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True, slots=True)
class Stream:
    """A reply sent in chunks as ``chunks`` produces them."""

    content_type: bytes
    chunks: AsyncIterator[bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def log_query(query_string: bytes) -> tuple[str, bool]:
    """``offset`` (as sent; the action validates it) and ``follow`` of a logs request.

    Raises:
        MalformedRequest: an unknown parameter, or ``follow`` not true/false.
    """
    query = dict(parse_qsl(query_string.decode("latin-1")))
    unknown = sorted(set(query) - LOG_QUERY)
    if unknown:
        raise MalformedRequest(f"unknown query parameter {unknown[0]!r}; parameters: offset, follow")
    follow = query.get("follow", "false").lower()
    if follow not in _BOOLEANS:
        raise MalformedRequest(f"follow: must be true or false, not {query['follow']!r}")
    return query.get("offset", "0"), _BOOLEANS[follow]


async def send_stream(status: int, stream: Stream, receive: Receive, send: Send) -> None:
    """Send ``stream`` until it ends or the client hangs up."""
    headers = [(b"content-type", stream.content_type), (b"cache-control", b"no-cache"), *stream.headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})

    async def produce() -> None:
        async for chunk in stream.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def hang_up() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass  # the (empty) request body; a GET has nothing else to say

    producer = asyncio.ensure_future(produce())
    watcher = asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (producer, watcher):
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await stream.chunks.aclose()  # type: ignore[attr-defined]
    if watcher.done() and not watcher.cancelled():
        return  # the client is gone: nothing more to send
    if not producer.cancelled() and producer.exception() is not None:
        log.error("stream failed after its first bytes", exc_info=producer.exception())
    await send({"type": "http.response.body", "body": b"", "more_body": False})
