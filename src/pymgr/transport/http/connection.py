"""One HTTP/1.1 connection: httptools parses, this protocol bounds, queues and replies.

Why not uvicorn's ASGI layer: it cost as much server CPU per call as all of pymgr's own work
(docs/performance.md, "Why pymgr has its own HTTP connection"); httptools still parses.

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
- The body is read whole before the handler runs: a declared
  ``Content-Length`` over ``max_body_bytes`` is refused (413) before any of
  it is read, a chunked body as soon as it passes the limit.
- Sizes (413): the request target by ``max_request_line_bytes``; the head
  by ``max_header_bytes``, counted as bytes arrive while it is incomplete.
  After the head, every byte that is not body data (a chunked body's
  chunk-size lines, extensions, line ends and trailers) counts with the
  head against ``max_header_bytes``, body data against ``max_body_bytes``:
  no sequence of bytes makes a request hold more than the two limits and
  the read being counted. Bytes after the head are counted per read, so a
  refusal of framing comes at most one read (``FEED_SLICE_BYTES``) late;
  trailers are also counted exactly as they are parsed, as the head's
  fields are.
- Only HTTP/1.1 and HTTP/1.0 are spoken (httptools parses others, such as
  "HTTP/2.0", in HTTP/1 syntax): others get 400. An HTTP/1.1 request without
  a Host field, or any request with several, gets 400, as RFC 9112 3.2
  requires: a front proxy and pymgr must not disagree on the host. A
  Transfer-Encoding other than one plain "chunked" gets 400 (llhttp would
  take "gzip, chunked" and hand on a compressed body as if it were plain),
  and so does any Transfer-Encoding in HTTP/1.0 (RFC 9112 6.1).
- Trailers are counted, then dropped: nothing here reads them, and RFC 9110
  6.5.1 forbids merging them into the head (a field that arrives after
  the body must not pass for one that came before it).
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
  at once, and at shutdown (the stream then ends with its last chunk). A
  stream is chunked, except to HTTP/1.0: unframed, ended by closing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools

from pymgr.auth.guard import identity_key
from pymgr.core.callscope import caller_gone
from pymgr.errors import MalformedRequest, PymgrError, PymgrInternalError, TooLarge
from pymgr.transport.http.limits import (
    LINGER_S,
    RequestTimeout,
    check_content_length,
    connection_identity,
    framing_too_large,
    head_too_large,
    peer_gone,
)
from pymgr.transport.http.messages import (
    Reply,
    Request,
    Stream,
    encode_reply,
    error_reply,
    header,
    render_head,
)
from pymgr.transport.http.state import ServerState

log = logging.getLogger("pymgr.http")

#: A kept-alive HTTP/1.0 request: its reply must say ``connection: keep-alive`` (truthy, like True).
_CONFIRM = 2
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
_CHUNKED_TAIL = b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
#: An HTTP/1.0 client knows no chunks (RFC 9112 6.1): its stream's body ends when the connection closes.
_UNFRAMED_TAIL = b"connection: close\r\ncache-control: no-cache\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"

# What the connection is waiting for; the timer's meaning.
_HEAD, _BODY, _IDLE, _BUSY = "head", "body", "idle", "busy"


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; carries the reply."""

    def __init__(self, error: PymgrError) -> None:
        super().__init__(error.message)
        self.error = error


def _bad_host(count: int) -> MalformedRequest:
    """RFC 9112 3.2: an HTTP/1.1 request without a Host field, or any request with several, gets 400."""
    if count:
        return MalformedRequest(f"a request carries one Host header, not {count}")
    return MalformedRequest(
        "a request must carry a Host header (RFC 9112 3.2; only HTTP/1.0 may leave it out): "
        "any value does, e.g. Host: pymgr"
    )


def _bad_coding(value: bytes) -> MalformedRequest:
    """RFC 9112 6.1: a transfer coding the server does not know is refused (a gzip body must not pass as plain)."""
    return MalformedRequest(
        f"Transfer-Encoding {value.decode('latin-1')!r} is not supported: send one "
        "Transfer-Encoding: chunked, or a Content-Length"
    )


class HttpConnection(asyncio.Protocol):
    """One client connection (see the module docstring for the rules)."""

    def __init__(self, state: ServerState, listener: str) -> None:
        self._state = state
        self._limits = state.limits
        self._listener = listener
        self._loop = state.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport = None  # type: ignore[assignment]
        self._identity: Any = None
        self._counted: str | None = None
        self._url = b""  # the request being parsed: its target, headers and body
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_bytes = 0
        self._after_head = (
            0  # bytes read after the head, of which all but the body's data is framing or trailers
        )
        self._trailer_bytes = 0  # the head's fields and the trailers so far, once a trailer arrives
        self._hosts = 0  # Host fields in the head
        self._codings = 0  # Transfer-Encoding fields in the head
        self._http10 = False  # the request being parsed is HTTP/1.0 (known once its head is)
        self._waiting = _HEAD
        self._queue: deque[tuple[Request, int]] = deque()  # parsed, not answered yet
        self._task: asyncio.Task[None] | None = None
        self._stream_task: asyncio.Task[None] | None = None
        self._refusal: bytes | None = None  # sent once the reply under way is out
        self._chunk = 0
        self._backlog = b""  # the unparsed rest of a large read, while MAX_PIPELINED wait
        self._closing = False  # refused, draining or shutting down: nothing more is parsed
        self._lost = False
        self._gone: asyncio.Event | None = (
            None  # ``caller_gone`` of this connection's calls, made on the first
        )
        self._write_paused = False
        self._stalled: asyncio.TimerHandle | None = None  # armed while the client leaves replies unread
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = self._deadline = 0.0  # when the timer fires; when what it waits for is due

    # --- connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._identity = connection_identity(transport)
        state = self._state
        state.connections.add(self)
        if state.shutting_down:  # accepted just before the listeners closed
            self._closing = True
            transport.close()
            return
        caller, refusal = state.admit_connection(self._listener, self._identity)
        if refusal is not None:
            self._refuse(*refusal)
            self.close_now()  # no linger: an uncounted connection must not hold a descriptor outside the caps
            return
        self._counted = caller
        self._watch(_HEAD, self._limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        if self._gone is not None:
            self._gone.set()
        for timer in (self._timer, self._stalled):
            if timer is not None:
                timer.cancel()
        self._timer = self._stalled = None
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
            return (
                None  # a stream's client, or nothing owed (idle, half a request), or the client left: close
            )
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
        if self._waiting is _IDLE:
            self._watch(_HEAD, self._limits.header_timeout_s)
        if len(data) > FEED_SLICE_BYTES:
            self._backlog = data
            self._feed_backlog()
            return
        self._chunk = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No switch is offered: answered as plain HTTP; httptools stopped at the upgrade, so the
            # rest of this read (the next request) is fed again (the parser goes on as HTTP).
            if exc.args and exc.args[0] < len(data):
                self.data_received(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.error)
            else:
                log.warning("invalid HTTP from %s: %s", self._who(), exc)
                self._refuse(MalformedRequest(f"invalid HTTP request: {exc}"))
            return
        if self._closing:
            return
        if self._waiting is _HEAD:
            self._head_bytes += self._chunk
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(head_too_large(self._head_bytes, self._limits.max_header_bytes))
        elif self._waiting is _BODY:
            self._after_head += self._chunk
            # Data in the read that ended the head is subtracted but was never added: this counts less than
            # was sent, never more. The head is counted as on_headers_complete counts it.
            framing = self._after_head - self._body_size
            if framing > 0 and framing + self._fields_size() > self._limits.max_header_bytes:
                self._refuse(framing_too_large(framing + self._fields_size(), self._limits.max_header_bytes))
            elif self._deadline == 0.0:
                self._watch(_BODY, self._limits.body_timeout_s)

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

    # --- parser callbacks (httptools) -------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = self._trailer_bytes = self._hosts = self._codings = 0
        if self._waiting is not _HEAD:  # the next pipelined request: its head starts here
            self._waiting = _HEAD
            self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._waiting is _BODY:  # a trailer: counted, never kept (module docstring)
            self._count_trailer(len(name) + len(value) + 4)
            return
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"transfer-encoding":
            self._codings += 1
            if self._codings > 1 or value.strip().lower() != b"chunked":
                raise _Refused(_bad_coding(value))
        self._headers.append((name, value))

    def _count_trailer(self, size: int) -> None:
        if not self._trailer_bytes:
            self._trailer_bytes = self._fields_size()
        self._trailer_bytes += size
        if self._trailer_bytes > self._limits.max_header_bytes:
            raise _Refused(framing_too_large(self._trailer_bytes, self._limits.max_header_bytes))

    def _fields_size(self) -> int:
        """The head's size as counted against max_header_bytes: the target, and each field with its ": " and CRLF."""
        return len(self._url) + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def on_headers_complete(self) -> None:
        limits = self._limits
        # This read held the end of the head: count it exactly only if it could be too large.
        if self._head_bytes + self._chunk > limits.max_header_bytes:
            size = self._fields_size()
            if size > limits.max_header_bytes:
                raise _Refused(head_too_large(size, self._limits.max_header_bytes))
        if len(self._url) > limits.max_request_line_bytes:
            raise _Refused(
                TooLarge(
                    f"request target is longer than max_request_line_bytes={limits.max_request_line_bytes}",
                    details={"limit": limits.max_request_line_bytes},
                )
            )
        version = self._parser.get_http_version()
        if version != "1.1" and version != "1.0":  # llhttp also takes 0.9, 2.0 and others in HTTP/1 syntax
            raise _Refused(
                MalformedRequest(f"HTTP/{version} is not spoken here: send HTTP/1.1 (or HTTP/1.0)")
            )
        self._http10 = version == "1.0"
        if self._hosts != 1 and (self._hosts or not self._http10):
            raise _Refused(_bad_host(self._hosts))
        if self._codings and self._http10:  # RFC 9112 6.1: its framing is faulty, whatever else it says
            raise _Refused(
                MalformedRequest("an HTTP/1.0 request cannot be chunked: send a Content-Length, or HTTP/1.1")
            )
        length = header(self._headers, b"content-length")
        if length is not None:
            try:
                check_content_length(length, self._state.max_body_bytes)
            except TooLarge as exc:
                raise _Refused(exc) from None
        if self._parser.should_upgrade() and (
            length not in (None, b"0") or header(self._headers, b"transfer-encoding")
        ):
            # httptools skips the body of an Upgrade request: it would be parsed as the next request.
            raise _Refused(
                MalformedRequest(
                    "a request with Upgrade cannot carry a body: upgrades are not offered "
                    "here; send it without the Upgrade and Connection: upgrade headers"
                )
            )
        self._waiting = _BODY
        self._after_head = self._chunk = 0  # the rest of this read is not counted (one read at most)
        self._deadline = 0.0  # the body timer starts only if a read leaves the body incomplete
        if self._task is None and not self._queue and header(self._headers, b"expect") == b"100-continue":
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._state.max_body_bytes:
            limit = self._state.max_body_bytes
            raise _Refused(
                TooLarge(f"request body is larger than max_body_bytes={limit}", details={"limit": limit})
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        url = self._url
        raw_path, _, query = url.partition(b"?")
        if not raw_path.startswith(b"/"):  # absolute-form ("http://host/path") or "*"
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(
                path
            )  # escapes are UTF-8 (RFC 3986), as every client sends them; bad ones become U+FFFD
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        method, http10 = parser.get_method().decode("ascii"), self._http10
        request = Request(method, path, raw_path, query, self._headers, body, self._identity, http10)
        keep: int = parser.should_keep_alive()
        if keep and http10:
            keep = _CONFIRM  # an HTTP/1.0 client keeps the connection only if the reply says so
        self._queue.append((request, keep))
        self._waiting = _BUSY
        self._head_bytes = 0
        self._chunk = 0  # what follows in this read is the next head: count from here (one read at most)
        if self._task is None and not self._write_paused:
            self._next()
        elif len(self._queue) >= MAX_PIPELINED and self._transport.is_reading():
            self._transport.pause_reading()

    # --- answering -----------------------------------------------------------

    def _next(self) -> None:
        request, keep_alive = self._queue.popleft()
        self._task = self._loop.create_task(self._answer(request, keep_alive))

    async def _answer(self, request: Request, keep_alive: int) -> None:
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
            persist = bool(keep_alive) and (self._refusal is None or bool(self._queue))
            self._send(reply, request.method, persist, confirm=persist and keep_alive == _CONFIRM)
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
        if self._waiting is _BUSY:  # nothing of the next request has arrived yet
            self._watch(_IDLE, self._state.keepalive_timeout_s)
        elif self._waiting is _HEAD:  # part of the next head is here: its clock starts now
            self._watch(_HEAD, self._limits.header_timeout_s)
        else:
            self._watch(_BODY, self._limits.body_timeout_s)

    async def _send_stream(self, stream: Stream, method: str, http10: bool) -> None:
        headers = [(b"content-type", stream.content_type), *stream.headers]
        self._transport.write(render_head(200, headers, _UNFRAMED_TAIL if http10 else _CHUNKED_TAIL))
        last = b"" if http10 else _LAST_CHUNK
        producer = self._loop.create_task(self._produce(stream, http10, last)) if method != "HEAD" else None
        if producer is not None and self._state.shutting_down:
            producer.cancel()  # began after shutdown did: end it at once, as shutdown() ends the others
        self._stream_task = producer
        try:
            if producer is not None:
                await asyncio.wait({producer})  # ends when the stream does, or the client hangs up
        finally:
            self._stream_task = None
            if producer is not None and not producer.done():
                producer.cancel()  # shutdown cancelled us: stop producing
            aclose = getattr(stream.chunks, "aclose", None)
            if aclose is not None and (producer is None or producer.done()):
                await aclose()
        if producer is not None and producer.cancelled() and not self._lost:  # ended by shutdown
            self._transport.write(last)
        elif producer is not None and not producer.cancelled() and producer.exception() is not None:
            log.error("stream failed after its first bytes", exc_info=producer.exception())
            self._transport.abort()  # a reset, not an end: an unframed (HTTP/1.0) body must not look complete
        if http10:
            self._refusal = None  # nothing may follow an unframed body: the connection's end is its end

    async def _produce(self, stream: Stream, http10: bool, last: bytes) -> None:
        async for chunk in stream.chunks:
            if chunk:
                self._transport.write(chunk if http10 else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if self._write_paused:  # the client reads slower than we produce: wait for it
                self._drained = self._loop.create_future()
                await self._drained
            if self._lost:
                return
        self._transport.write(last)

    # --- timers and refusals ---------------------------------------------------

    def _watch(self, what: str, timeout_s: float) -> None:
        """Wait for ``what`` for at most ``timeout_s``; the one timer is moved only if it would fire late."""
        self._waiting = what
        deadline = self._loop.time() + timeout_s
        self._deadline = deadline
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # it fires first, sees the later deadline and re-arms
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        what = self._waiting
        if what is _BUSY or self._closing or self._deadline == 0.0:
            return
        if self._loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        if what is _IDLE:
            self._closing = True
            self._transport.close()
            if self._transport.get_write_buffer_size():  # replies unread: close() would wait for them forever
                self._loop.call_later(LINGER_S, self.close_now)
            return
        name, part = ("header_timeout_s", "head") if what is _HEAD else ("body_timeout_s", "body")
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
        self._timer = self._loop.call_later(LINGER_S, self.close_now)

    def shutdown(self) -> None:
        """At shutdown: close now if idle; end a stream now; otherwise close after the reply under way."""
        if self._stream_task is not None:
            self._stream_task.cancel()  # a stream (GET /v1/events) may never end by itself
            return
        if self._task is None and not self._queue and self._waiting is not _BODY:
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
