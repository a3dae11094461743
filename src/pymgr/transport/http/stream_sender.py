"""A ``Stream`` reply on the wire: its head, its chunks as the client reads them, its end.

Rules:
- A stream is chunked, except to HTTP/1.0, which knows no chunks (RFC 9112
  6.1): its body is unframed and ends when the connection closes.
- The producer writes only while the client reads: when the connection's
  send buffer is full it waits for the client (``StreamClient.writable``).
- The connection cancels the producer when the client hangs up, even while
  the producer waits for more (a quiet followed log, an event stream
  between events), and at shutdown; a stream cancelled at shutdown ends
  with its last chunk. A producer that fails after its first bytes resets
  the connection: an unframed body must not look complete.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from pymgr.transport.http.messages import Stream, render_head

__all__ = ["StreamClient", "StreamSender"]

log = logging.getLogger("pymgr.http")

_CHUNKED_TAIL = b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
_UNFRAMED_TAIL = b"connection: close\r\ncache-control: no-cache\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class StreamClient(Protocol):
    """What a stream asks of its connection."""

    @property
    def lost(self) -> bool: ...

    async def writable(self) -> None:
        """Return once the client reads its replies again (at once if it does), or has gone."""


class StreamSender:
    """Sends one stream reply: ``start`` writes the head and starts the producer, ``finish`` awaits its end."""

    def __init__(
        self, client: StreamClient, transport: asyncio.Transport, stream: Stream, http10: bool
    ) -> None:
        self._client = client
        self._transport = transport
        self._stream = stream
        self._http10 = http10
        self._last = b"" if http10 else _LAST_CHUNK
        self._producer: asyncio.Task[None] | None = None

    def start(self, head_only: bool, shutting_down: bool) -> asyncio.Task[None] | None:
        """Write the head; return the producer of the body (None for HEAD), for the connection to cancel."""
        stream = self._stream
        headers = [(b"content-type", stream.content_type), *stream.headers]
        self._transport.write(render_head(200, headers, _UNFRAMED_TAIL if self._http10 else _CHUNKED_TAIL))
        if head_only:
            return None
        producer = self._producer = asyncio.get_running_loop().create_task(self._produce())
        if shutting_down:
            producer.cancel()  # began after shutdown did: end it at once, as shutdown ends the others
        return producer

    async def finish(self) -> None:
        """Wait for the stream to end (or the client to hang up), close its source, then end the body."""
        producer = self._producer
        try:
            if producer is not None:
                await asyncio.wait({producer})  # ends when the stream does, or the client hangs up
        finally:
            if producer is not None and not producer.done():
                producer.cancel()  # shutdown cancelled the reply: stop producing
            aclose = getattr(self._stream.chunks, "aclose", None)
            if aclose is not None and (producer is None or producer.done()):
                await aclose()
        if producer is not None and producer.cancelled() and not self._client.lost:  # ended by shutdown
            self._transport.write(self._last)
        elif producer is not None and not producer.cancelled() and producer.exception() is not None:
            log.error("stream failed after its first bytes", exc_info=producer.exception())
            self._transport.abort()  # a reset, not an end: an unframed (HTTP/1.0) body must not look complete

    async def _produce(self) -> None:
        http10 = self._http10
        async for chunk in self._stream.chunks:
            if chunk:
                self._transport.write(chunk if http10 else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await self._client.writable()  # the client may read slower than we produce: wait for it
            if self._client.lost:
                return
        self._transport.write(self._last)
