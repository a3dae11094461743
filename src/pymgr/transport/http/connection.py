"""One HTTP/1.1 connection: the reader parses and bounds, this protocol queues, replies and times out.

Why not uvicorn's ASGI layer: it cost as much server CPU per call as all of pymgr's own work
(docs/performance.md, "Why pymgr has its own HTTP connection"); httptools still parses
(``reader``, which also holds the rules on sizes, versions and framing).

Rules:
- Requests on a connection are answered one at a time, in order. Pipelined
  requests wait parsed in a queue; reading pauses while ``MAX_PIPELINED``
  wait, or while the client does not read its replies (the transport's
  write buffer is full), so a client that only sends costs bounded memory.
  A read larger than ``FEED_SLICE_BYTES`` is parsed a slice at a time and
  the rest waits unparsed while the queue is full: one read of tiny
  pipelined requests parses at most one slice's worth past the bound.
- A client that half-closes (shuts down its sending side) still gets the
  replies of the requests it sent; then the connection closes.
- Timeouts: ``header_timeout_s`` from connect (or from the first byte of a
  later request) until the head is complete, ``body_timeout_s`` while a
  body arrives (408); ``keepalive_timeout_s`` idle between requests (the
  connection just closes); ``send_timeout_s`` while the client leaves its
  replies unread with the send buffer full (aborted). None while a handler
  runs. One timer per connection, re-armed only when it fires early.
- A refusal is one JSON error reply with ``connection: close``, after the
  replies of the requests parsed before it; then the connection
  half-closes and drops what the client still sends for up to
  ``LINGER_S``: closing with unread input makes the kernel send a reset,
  which can destroy the reply before the client reads it. A connection
  closed while the client leaves replies unread is aborted ``LINGER_S``
  later (at once at the end of shutdown), so it cannot stay open forever.
- ``Expect: 100-continue`` gets its interim reply when nothing is in
  flight before it (otherwise the client's own wait sends the body).
- A client that leaves does not cancel its request's action (it may have
  started a task); its reply is dropped. The action can tell, though: it
  runs with ``core.callscope.caller_gone`` set to an event of the
  connection, set when the connection is lost (a command with
  ``cancel_on_disconnect`` stops on it). A stream's producer is cancelled
  at once, and at shutdown (``stream_sender``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from pymgr.auth.guard import identity_key
from pymgr.core.callscope import caller_gone
from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, PymgrInternalError
from pymgr.transport.http.deadline import Deadline
from pymgr.transport.http.limits import LINGER_S, RequestTimeout, connection_identity, peer_gone
from pymgr.transport.http.messages import Reply, Request, Stream, encode_reply, error_reply, header
from pymgr.transport.http.reader import BODY, DONE, HEAD, RequestReader
from pymgr.transport.http.state import ServerState
from pymgr.transport.http.stream_sender import StreamSender

__all__ = ["FEED_SLICE_BYTES", "MAX_PIPELINED", "HttpConnection"]

log = logging.getLogger("pymgr.http")

#: Requests parsed ahead of the one being answered before reading pauses.
MAX_PIPELINED = 8
#: Larger reads are parsed in slices, stopping while MAX_PIPELINED wait: one 256 KiB read of
#: 18-byte requests is otherwise ~14,000 Requests (~8 MB) at once. One request's read is smaller.
FEED_SLICE_BYTES = 4096
_CLOSE = (b"connection", b"close")
#: The connection header of a reply, by (kept alive, an HTTP/1.0 client that must be told so).
_CONNECTION = {
    (False, False): _CLOSE[0] + b": close\r\n",
    (True, False): b"",
    (True, True): b"connection: keep-alive\r\n",
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module docstring for the rules)."""

    def __init__(self, state: ServerState, listener: str) -> None:
        self._state = state
        self._limits = state.limits
        self._listener = listener
        self._loop = state.loop
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._identity: Identity = None  # type: ignore[assignment]
        self._reader: RequestReader = None  # type: ignore[assignment]
        self._counted: str | None = None
        self._queue: deque[tuple[Request, bool]] = deque()  # parsed, not answered yet; kept alive after
        self._task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._refusal: bytes | None = None  # sent once the reply under way is out
        self._backlog = b""  # the unparsed rest of a large read, while MAX_PIPELINED wait
        self._closing = False  # refused, draining or shutting down: nothing more is parsed
        self._lost = False
        self._gone: asyncio.Event | None = (
            None  # ``caller_gone`` of this connection's calls, made on the first
        )
        self._write_paused = False
        self._stalled: asyncio.TimerHandle | None = None  # armed while the client leaves replies unread
        self._drained: asyncio.Future[None] | None = None
        self._idle = False  # between requests with nothing owed: the keep-alive timer runs
        self._deadline = Deadline(self._loop, self._on_timer)
        self._lingering: asyncio.TimerHandle | None = None  # closes the connection once LINGER_S have passed

    # --- connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._identity = identity = connection_identity(transport)
        state = self._state
        self._reader = RequestReader(
            self._limits, state.max_body_bytes, identity, self._on_head, self._on_request
        )
        state.connections.add(self)
        if state.shutting_down:  # accepted just before the listeners closed
            self._closing = True
            transport.close()
            return
        caller, refusal = state.admit_connection(self._listener, identity)
        if refusal is not None:
            self._refuse(*refusal)
            self.close_now()  # no linger: an uncounted connection must not hold a descriptor outside the caps
            return
        self._counted = caller
        self._deadline.set(self._limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        if self._gone is not None:
            self._gone.set()
        self._deadline.stop()
        for timer in (self._lingering, self._stalled):
            if timer is not None:
                timer.cancel()
        self._lingering = self._stalled = None
        self._state.connections.discard(self)
        if self._counted is not None:
            self._state.counter.close(self._listener, self._counted)
            self._counted = None
        if self._stream_task is not None:
            self._stream_task.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._queue.clear()

    def eof_received(self) -> bool | None:
        if (
            self._stream_task is not None
            or (self._task is None and not self._queue)
            or peer_gone(self._transport)
        ):
            # A stream's client, or nothing owed (idle, half a request), or the client left: close.
            return None
        self._closing = True  # half-closed: answer what was sent, then close (_after_reply)
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        # The client leaves its replies unread: it has send_timeout_s to read some before it is cut off.
        self._stalled = self._loop.call_later(self._limits.send_timeout_s, self._on_send_timeout)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._task is None and self._queue:
            self._next()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # refused or draining: drop
        if self._idle:
            self._idle = False
            self._reader.expect_head()
            self._deadline.set(self._limits.header_timeout_s)
        if len(data) > FEED_SLICE_BYTES:
            self._backlog = data
            self._feed_backlog()
            return
        try:
            self._reader.feed(data)
        except PymgrError as exc:
            self._refuse(exc)
            return
        if self._reader.stage is BODY and not self._deadline.at and not self._closing:
            self._deadline.set(self._limits.body_timeout_s)

    def _feed_backlog(self) -> None:
        """Parse a large read a slice at a time; the rest waits, unparsed, while MAX_PIPELINED wait."""
        data, self._backlog = self._backlog, b""
        for start in range(0, len(data), FEED_SLICE_BYTES):
            if len(self._queue) >= MAX_PIPELINED:
                self._backlog = data[start:]
                if self._transport.is_reading():
                    self._transport.pause_reading()
                return
            self.data_received(data[start : start + FEED_SLICE_BYTES])
            if self._closing:
                return

    # --- what the reader hands over ------------------------------------------

    def _on_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._deadline.clear()  # the body timer starts only if a read leaves the body incomplete
        if self._task is None and not self._queue and header(headers, b"expect") == b"100-continue":
            self._transport.write(_CONTINUE)

    def _on_request(self, request: Request, keep_alive: bool) -> None:
        self._queue.append((request, keep_alive))
        if self._task is None and not self._write_paused:
            self._next()
        elif len(self._queue) >= MAX_PIPELINED and self._transport.is_reading():
            self._transport.pause_reading()

    # --- answering -----------------------------------------------------------

    def _next(self) -> None:
        request, keep_alive = self._queue.popleft()
        self._task = self._loop.create_task(self._answer(request, keep_alive))

    async def _answer(self, request: Request, keep_alive: bool) -> None:
        if self._gone is None:
            self._gone = asyncio.Event()
        caller_gone.set(self._gone)  # this task's context only
        try:
            reply = await self._state.handler(request)
        except asyncio.CancelledError:
            self._task = None
            if not self._lost:
                self._transport.close()
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            reply = error_reply(PymgrInternalError(f"unhandled error in {request.method} {request.path}"))
        if self._lost:
            self._task = None
            return
        if self._state.shutting_down:
            keep_alive = False
        if isinstance(reply, Stream):
            keep_alive = keep_alive and not request.http10  # an HTTP/1.0 stream ends with the connection
            await self._send_stream(reply, request.method, request.http10)
        else:
            persist = keep_alive and (self._refusal is None or bool(self._queue))
            # An HTTP/1.0 client keeps the connection only if the reply says so.
            self._send(reply, request.method, persist, confirm=persist and request.http10)
        self._task = None
        if self._refusal is not None and not self._lost and not self._queue:
            self._transport.write(self._refusal)
            self._linger()
            return
        if not keep_alive or self._lost:
            if not self._lost:
                self._transport.close()
            return
        self._after_reply()

    def _send(self, reply: Reply, method: str, keep_alive: bool, confirm: bool = False) -> None:
        self._transport.write(
            encode_reply(reply, method == "HEAD", _CONNECTION[keep_alive, confirm and keep_alive])
        )

    def _after_reply(self) -> None:
        if self._queue:
            if not self._write_paused:
                self._next()
            return
        if self._closing:  # the client half-closed, and everything it sent is answered
            self._transport.close()
            return
        if self._backlog:  # the rest of a large read, parsed now that the queue is empty
            self._feed_backlog()
            if self._task is not None or self._queue or self._closing:
                return
        if not self._transport.is_reading():
            self._transport.resume_reading()
        stage = self._reader.stage
        if stage is DONE:  # nothing of the next request has arrived yet
            self._idle = True
            self._deadline.set(self._state.keepalive_timeout_s)
        elif stage is HEAD:  # part of the next head is here: its clock starts now
            self._deadline.set(self._limits.header_timeout_s)
        else:
            self._deadline.set(self._limits.body_timeout_s)

    async def _send_stream(self, stream: Stream, method: str, http10: bool) -> None:
        sender = StreamSender(self, self._transport, stream, http10)
        self._stream_task = sender.start(method == "HEAD", self._state.shutting_down)
        try:
            await sender.finish()
        finally:
            self._stream_task = None
        if http10:
            self._refusal = None  # nothing may follow an unframed body: the connection's end is its end

    @property
    def lost(self) -> bool:
        """Whether the connection is gone (a stream's producer stops)."""
        return self._lost

    async def writable(self) -> None:
        """Return once the client reads its replies again (at once if it does), or has gone."""
        if self._write_paused:
            self._drained = self._loop.create_future()
            await self._drained

    # --- timers and refusals ---------------------------------------------------

    def _on_timer(self) -> None:
        stage = self._reader.stage
        if (stage is DONE and not self._idle) or self._closing or not self._deadline.at:
            return  # a handler runs, or the connection ends: no timeout
        if self._deadline.rearm_if_early():
            return
        if self._idle:
            self._closing = True
            self._transport.close()
            if self._transport.get_write_buffer_size():  # replies unread: close() would wait for them forever
                self._loop.call_later(LINGER_S, self.close_now)
            return
        name, part = ("header_timeout_s", "head") if stage is HEAD else ("body_timeout_s", "body")
        timeout_s = getattr(self._limits, name)
        log.info(
            "closing connection from %s: request %s not complete within %g s", self._who(), part, timeout_s
        )
        self._refuse(RequestTimeout(f"request {part} not complete within {name}={timeout_s:g}"))

    def _on_send_timeout(self) -> None:
        self._stalled = None
        log.info(
            "aborting connection from %s: replies unread for send_timeout_s=%g",
            self._who(),
            self._limits.send_timeout_s,
        )
        self._closing = True
        self._transport.abort()  # nothing can be said to a client that does not read

    def _refuse(self, error: PymgrError, *headers: tuple[bytes, bytes]) -> None:
        """Reply with ``error`` (after the reply under way, if any), then linger and close."""
        if self._closing:
            return
        self._closing = True
        self._backlog = b""
        data = encode_reply(error_reply(error, *headers, _CLOSE), False, b"")
        if self._stream_task is not None:
            self._queue.clear()
            self._transport.close()  # a stream cannot be followed by anything
        elif self._task is not None or self._queue:
            self._refusal = data  # after the replies owed for the requests parsed before it
        else:
            self._transport.write(data)
            self._linger()

    def _linger(self) -> None:
        transport = self._transport
        self._deadline.stop()
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:
            transport.abort()
            return
        if not transport.is_reading():
            transport.resume_reading()
        self._lingering = self._loop.call_later(LINGER_S, self.close_now)

    def shutdown(self) -> None:
        """At shutdown: close now if idle; end a stream now; otherwise close after the reply under way."""
        if self._stream_task is not None:
            self._stream_task.cancel()  # a stream (GET /v1/events) may never end by itself
            return
        if self._task is None and not self._queue and self._reader.stage is not BODY:
            self._closing = True
            self._transport.close()

    def busy_task(self) -> asyncio.Task[None] | None:
        """The reply under way, if any (shutdown waits for it)."""
        return self._task

    def close_now(self) -> None:
        """Close; abort if replies are still unread (close() would wait for the client forever)."""
        if self._lost:
            return
        if self._transport.get_write_buffer_size():
            self._transport.abort()
        else:
            self._transport.close()

    def _who(self) -> str:
        return identity_key(self._identity)
