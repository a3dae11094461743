"""A root daemon's HTTP server against hostile and odd clients, over a real Unix socket.

Request smuggling (one 400, nothing after it parsed), pipelining to a client
that never reads (bounded memory), half-close, target forms, Expect, streams,
timeouts, lingering, and the connection counts after every kind of close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.connection import FEED_SLICE_BYTES, MAX_PIPELINED
from pymgr.transport.http.limits import LINGER_S, HttpLimits
from pymgr.transport.http.messages import Reply, Request, Stream
from pymgr.transport.http.server import HttpServer
from pymgr.transport.listeners import bind_unix
from tests.transport.http.rawhttp import get, read_reply

TIMEOUT_S = 0.5
LIMITS = HttpLimits(
    max_request_line_bytes=1000, max_header_bytes=4000, header_timeout_s=0.5, body_timeout_s=0.5
)
KEEPALIVE_S = 0.4
HIGH_WATER = 64 * 1024  # asyncio's default high-water mark of a transport's write buffer


class Handler:
    """Echoes the request; ``/slow`` waits for ``release``; ``/stream`` streams until told to stop."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self.chunk = b"x" * 1000

    async def __call__(self, request: Request) -> Reply | Stream:
        self.seen.append(request)
        if request.path in ("/slow", "/slow-stream"):
            await self.release.wait()
        if request.path in ("/stream", "/slow-stream"):
            return Stream(b"text/plain", self._chunks())
        body = {
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path.decode("latin-1"),
            "query": request.query.decode(),
            "body": request.body.decode("latin-1"),
        }
        return Reply(200, json.dumps(body).encode())

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:  # endless, like GET /v1/events
                yield self.chunk
                await asyncio.sleep(0)
        finally:
            self.stream_closed.set()


class Served:
    def __init__(self, handler: Handler, server: HttpServer, path: Path) -> None:
        self.handler, self.server, self.path = handler, server, path

    def open_counts(self) -> tuple[int, int]:
        counter = self.server.state.counter  # type: ignore[union-attr]
        return counter.count(listener=str(self.path)), counter.count(caller=f"uid:{os.getuid()}")

    def connections(self) -> list[Any]:
        return list(self.server.state.connections)  # type: ignore[union-attr]

    async def counts_drop_to_zero(self, within_s: float = 3.0) -> None:
        deadline = time.monotonic() + within_s
        while self.open_counts() != (0, 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert self.open_counts() == (0, 0)
        assert not self.connections()


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, limits: HttpLimits = LIMITS) -> AsyncIterator[Served]:
    handler = Handler()
    path = tmp_path / "s.sock"
    server = HttpServer(
        handler,
        [bind_unix(path, 0o600)],
        limits=limits,
        counter=ConnectionCounter(100, 100),
        max_body_bytes=1000,
        keepalive_timeout_s=KEEPALIVE_S,
        shutdown_timeout_s=5,
    )
    await server.start()
    try:
        yield Served(handler, server, path)
    finally:
        handler.release.set()
        await server.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as it:
        yield it


async def exchange(served: Served, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes."""
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


# --- request smuggling ---------------------------------------------------------------

SMUGGLING = {
    "content-length and transfer-encoding": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two different content-lengths": b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "two equal content-lengths": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length with a plus sign": b"Content-Length: +5\r\n\r\nhello",
    "content-length with a minus sign": b"Content-Length: -5\r\n\r\nhello",
    "content-length with inner space": b"Content-Length: 5 5\r\n\r\nhello",
    "content-length as a list": b"Content-Length: 5, 5\r\n\r\nhello",
    "negative chunk size": b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk size with a space": b"Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk size in 0x form": b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk without its crlf": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "chunked not last": b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "identity transfer-encoding": b"Transfer-Encoding: identity\r\n\r\nhello",
    "gzip then chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two transfer-encodings": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "obs-fold header line": b"X-Folded: a\r\n b\r\nContent-Length: 5\r\n\r\nhello",
    "nul in a header value": b"X-Nul: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    "space before the colon": b"Content-Length : 5\r\n\r\nhello",
}


@pytest.mark.parametrize("framing", SMUGGLING.values(), ids=list(SMUGGLING))
async def test_ambiguous_framing_gets_one_400_and_nothing_after_it_is_parsed(
    served: Served, framing: bytes
) -> None:
    smuggled = get("/smuggled")
    reply = await exchange(served, b"POST /first HTTP/1.1\r\nHost: x\r\n" + framing + smuggled + smuggled)
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1, reply
    assert b"connection: close" in reply and b'"ok":false' in reply
    assert served.handler.seen == []  # neither the ambiguous request nor what follows reached the handler
    await served.counts_drop_to_zero()


@pytest.mark.parametrize("split", [False, True], ids=["one-read", "two-reads"])
async def test_an_upgrade_request_with_a_body_is_refused_not_parsed_as_the_next_request(
    served: Served, split: bool
) -> None:
    # httptools skips the body of an Upgrade request: its bytes would be parsed as a new request.
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: x\r\nUpgrade: foo\r\nConnection: upgrade\r\nContent-Length: 35\r\n\r\n"
    )
    await asyncio.sleep(0.05 if split else 0)
    writer.write(get("/smuggled"))  # 35 bytes
    reply = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1, reply
    assert b"Upgrade cannot carry a body" in reply
    assert served.handler.seen == []
    await served.counts_drop_to_zero()


async def test_an_upgrade_request_is_answered_as_plain_http_and_the_next_one_too(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    upgrade = get(
        "/up",
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
    )
    writer.write(upgrade + get("/next") + upgrade.replace(b"/up", b"/up2") + get("/last"))
    paths = [json.loads((await read_reply(reader))[1])["path"] for _ in range(4)]
    writer.close()
    assert paths == ["/up", "/next", "/up2", "/last"]  # none lost after an upgrade stops the parser
    # CONNECT (authority form) is no route: one 400, and what follows is not parsed.
    reply = await exchange(served, b"CONNECT x:1 HTTP/1.1\r\nHost: x:1\r\n\r\n" + get("/smuggled"))
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1
    assert [r.path for r in served.handler.seen] == ["/up", "/next", "/up2", "/last"]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"GET / HTTP/1.1\r\nHost: x\n\r\n",  # bare LF line endings
        b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX\x00: 1\r\n\r\n",  # NULs
    ],
    ids=["bare-lf", "bare-lf-in-a-header", "nul-in-target", "nul-in-header-name"],
)
async def test_bad_line_endings_and_nuls_get_one_400(served: Served, data: bytes) -> None:
    reply = await exchange(served, data + get("/smuggled"))
    assert reply.startswith(b"HTTP/1.1 400 ") and reply.count(b"HTTP/1.1 ") == 1, reply
    assert served.handler.seen == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"GET / HTTP/1.1\r\n\r\n",
            "a request must carry a Host header (RFC 9112 3.2; only HTTP/1.0 may leave it out)",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "a request carries one Host header, not 2"),
        (b"GET / HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n", "a request carries one Host header, not 2"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "HTTP/2.0 is not spoken here"),
        (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", "HTTP/0.9 is not spoken here"),
        (
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "an HTTP/1.0 request cannot be chunked",
        ),
    ],
    ids=["no-host", "two-hosts", "two-hosts-http-1.0", "http-2.0", "http-0.9", "chunked-http-1.0"],
)
async def test_a_missing_or_doubled_host_and_other_versions_get_one_400(
    served: Served, data: bytes, message: str
) -> None:
    reply = await exchange(served, data + get("/smuggled"))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-length: %d\r\n" % len(body) in head + b"\r\n", (
        reply
    )
    assert message in json.loads(body)["error"]["message"]  # and nothing after it
    assert served.handler.seen == []


async def test_an_http_1_0_request_needs_no_host(served: Served) -> None:
    reply = await exchange(served, b"GET /old HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200 ") and [r.path for r in served.handler.seen] == ["/old"]


async def test_allowed_framing_variants_are_read_exactly(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(
        get("/ows", b"Content-Length:  5 \r\n", b"POST")
        + b"hello"
        + get("/ext", b"Transfer-Encoding: chunked\r\n", b"POST")
        + b"5;name=value\r\nhello\r\n0\r\n\r\n"
        + get("/last")
    )
    bodies = [json.loads((await read_reply(reader))[1]) for _ in range(3)]
    writer.close()
    assert [(b["path"], b["body"]) for b in bodies] == [("/ows", "hello"), ("/ext", "hello"), ("/last", "")]


async def test_a_refusal_after_requests_in_flight_comes_after_all_their_replies(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(
        get("/slow")
        + get("/queued")
        + b"POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
        + get("/smuggled")
    )
    await asyncio.sleep(0.1)
    served.handler.release.set()
    first, _ = await read_reply(reader)
    second, body = await read_reply(reader)  # parsed before the bad one: answered, in order
    rest = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert first.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in first
    assert second.startswith(b"HTTP/1.1 200 ") and json.loads(body)["path"] == "/queued"
    assert rest.startswith(b"HTTP/1.1 400 ") and rest.count(b"HTTP/1.1 ") == 1
    assert [r.path for r in served.handler.seen] == ["/slow", "/queued"]
    await served.counts_drop_to_zero()


# --- pipelining and a client that never reads -----------------------------------------


async def flood(
    served: Served, data: bytes, seconds: float, until: Callable[[], bool] = lambda: False
) -> tuple[socket.socket, int]:
    """Send what the server takes of ``data`` for ``seconds`` (or until ``until()``), never reading;
    the socket and bytes sent."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(served.path))
    sock.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    while sent < len(data) and time.monotonic() < deadline and not until():
        try:
            sent += sock.send(data[sent : sent + 65536])
        except BlockingIOError:
            await asyncio.sleep(0.02)
    return sock, sent


async def test_10000_pipelined_requests_never_read_cost_bounded_memory(served: Served) -> None:
    served.handler.chunk = b""
    one = get("/n/0000", b"X-Pad: " + b"p" * 200 + b"\r\n")
    data = b"".join(get(f"/n/{n:04}", b"X-Pad: " + b"p" * 200 + b"\r\n") for n in range(10_000))
    sock, sent = await flood(served, data, 2)
    (conn,) = served.connections()
    assert sent < len(data)  # the server stopped taking requests
    # Parsed ahead: bounded, even from one large read (before: ~260 here, a whole read's worth).
    assert len(conn._queue) <= MAX_PIPELINED + FEED_SLICE_BYTES // len(one) + 1
    assert len(conn._backlog) <= 256 * 1024  # the rest of that read waits unparsed
    assert (
        conn._transport.get_write_buffer_size() <= HIGH_WATER + 2000
    )  # replies wait in the kernel, not here
    assert len(served.handler.seen) < 2000
    sock.close()
    await served.counts_drop_to_zero()


@pytest.mark.parametrize("reads", [True, False], ids=["reads-in-time", "never-reads"])
async def test_send_timeout_both_sides(tmp_path: Path, reads: bool) -> None:
    requests = b"".join(get(f"/n/{n}", b"X-Pad: " + b"p" * 900 + b"\r\n") for n in range(3000))
    async with serving(tmp_path, dataclasses.replace(LIMITS, send_timeout_s=1.0)) as served:
        served.handler.chunk = b""
        # Until the server's send buffer is full (at once on an idle machine; a loaded one takes longer).
        sock, sent = await flood(
            served, requests, 30, until=lambda: any(c._write_paused for c in served.connections())
        )
        (conn,) = served.connections()
        assert sent < len(requests) and conn._write_paused
        if not reads:  # the timeout cuts it off: nothing is left of it
            await served.counts_drop_to_zero()
            assert conn._lost
        else:  # it reads in time: the replies keep coming, and the connection stays
            reader, writer = await asyncio.open_unix_connection(sock=sock)
            for _ in range(200):
                head, _ = await read_reply(reader)
                assert head.startswith(b"HTTP/1.1 200 ")
            await asyncio.sleep(1.2)  # past send_timeout_s since the buffer first filled
            assert served.connections() == [conn] and not conn._lost
            writer.close()
        sock.close()


async def test_a_client_that_never_reads_is_closed_at_shutdown(served: Served) -> None:
    sock, _ = await flood(
        served, b"".join(get(f"/n/{n}", b"X-Pad: " + b"p" * 900 + b"\r\n") for n in range(3000)), 1
    )
    started = time.monotonic()
    await asyncio.wait_for(served.server.close(), 10)
    assert time.monotonic() - started < 2  # nothing in flight to wait for
    await served.counts_drop_to_zero()  # closed, not left waiting for the client to read
    sock.close()


# --- half-close -------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [b"", b"Connection: close\r\n"], ids=["keep-alive", "close"])
@pytest.mark.parametrize("path", ["/fast", "/slow"])
async def test_a_half_closed_client_still_gets_its_reply(served: Served, extra: bytes, path: str) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get(path, extra))
    writer.write_eof()
    await asyncio.sleep(0.1)  # the EOF arrives while /slow runs
    served.handler.release.set()
    head, body = await read_reply(reader)
    assert head.startswith(b"HTTP/1.1 200 ") and json.loads(body)["path"] == path
    assert await asyncio.wait_for(reader.read(-1), 5) == b""  # then the server closes
    writer.close()
    await served.counts_drop_to_zero()


async def test_pipelined_requests_then_half_close_all_get_replies(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("/slow") + get("/a") + get("/b"))
    writer.write_eof()
    await asyncio.sleep(0.1)
    served.handler.release.set()
    paths = [json.loads((await read_reply(reader))[1])["path"] for _ in range(3)]
    assert paths == ["/slow", "/a", "/b"]
    assert await asyncio.wait_for(reader.read(-1), 5) == b""
    writer.close()
    await served.counts_drop_to_zero()


async def test_a_half_received_request_then_eof_is_just_closed(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(-1), TIMEOUT_S / 2) == b""  # at once, not at the body timeout
    writer.close()
    assert served.handler.seen == []
    await served.counts_drop_to_zero()


# --- request forms ------------------------------------------------------------------------


async def test_http_1_0_keep_alive_is_confirmed_and_the_connection_kept(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    try:
        for n in range(2):
            writer.write(get(f"/old/{n}", b"Connection: keep-alive\r\n", version=b"HTTP/1.0"))
            head, _ = await read_reply(reader)
            assert b"connection: keep-alive" in head.lower()  # an HTTP/1.0 client assumes close otherwise
    finally:
        writer.close()


async def test_request_target_forms_reach_the_handler_as_documented(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("http://x/v1/health?a=1") + get("*", method=b"OPTIONS") + get("/a%2Fb/%00/%C3%A9?q=%2F"))
    absolute, asterisk, encoded = [json.loads((await read_reply(reader))[1]) for _ in range(3)]
    writer.close()
    assert (absolute["path"], absolute["query"]) == ("/v1/health", "a=1")
    assert asterisk["path"] == "*" and asterisk["method"] == "OPTIONS"
    # %2F decodes to "/" in path (the router sees a/b), raw_path keeps it; the query is left encoded.
    assert encoded["raw_path"] == "/a%2Fb/%00/%C3%A9" and encoded["query"] == "q=%2F"
    assert encoded["path"] == "/a/b/\x00/\u00e9"  # percent-escapes are UTF-8


async def test_expect_100_continue_with_a_too_large_body_gets_413_not_100(served: Served) -> None:
    reply = await exchange(served, get("/up", b"Content-Length: 1001\r\nExpect: 100-continue\r\n", b"POST"))
    assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply
    assert served.handler.seen == []


# --- streams ----------------------------------------------------------------------------


async def test_a_stream_to_a_client_that_stops_reading_buffers_boundedly(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path), limit=1024)
    writer.write(get("/stream"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.sleep(0.5)  # the client reads nothing more
    (conn,) = served.connections()
    assert conn._transport.get_write_buffer_size() <= HIGH_WATER + 2 * len(served.handler.chunk)
    assert not served.handler.stream_closed.is_set()
    writer.transport.abort()  # hang up: the producer is cancelled
    await asyncio.wait_for(served.handler.stream_closed.wait(), 5)
    await served.counts_drop_to_zero()


async def test_shutdown_ends_an_open_stream_at_once(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("/stream"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    started = time.monotonic()
    closing = asyncio.create_task(served.server.close())
    data = b""
    while not reader.at_eof():
        data = (data + await asyncio.wait_for(reader.read(1 << 20), 5))[-16:]
    await asyncio.wait_for(closing, 10)
    assert time.monotonic() - started < 2  # not the whole shutdown_timeout_s=5
    assert served.handler.stream_closed.is_set()
    assert data.endswith(b"0\r\n\r\n")  # ended with its last chunk
    writer.close()
    await served.counts_drop_to_zero()


async def test_a_stream_that_begins_during_shutdown_ends_at_once(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("/slow-stream"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    closing = asyncio.create_task(served.server.close())
    await asyncio.sleep(0.1)
    served.handler.release.set()  # the handler returns its Stream after shutdown began
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    rest = await asyncio.wait_for(reader.read(-1), 5)
    await asyncio.wait_for(closing, 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"0\r\n\r\n")  # ended cleanly
    assert time.monotonic() - started < 2
    await served.counts_drop_to_zero()


# --- timeouts and lingering ---------------------------------------------------------------


async def test_the_second_head_on_a_kept_alive_connection_is_timed(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("/first"))
    await read_reply(reader)
    writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\n")  # never ends
    started = time.monotonic()
    reply = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408 ") and b"header_timeout_s" in reply
    assert TIMEOUT_S - 0.05 <= time.monotonic() - started < TIMEOUT_S + 1
    await served.counts_drop_to_zero()


async def test_the_body_of_a_second_request_is_timed(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("/first") + get("/second", b"Content-Length: 10\r\n", b"POST") + b"abc")
    await read_reply(reader)
    reply = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408 ") and b"body_timeout_s" in reply
    await served.counts_drop_to_zero()


async def test_a_refused_client_that_keeps_sending_lingers_at_most_linger_s(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(b"\x00garbage\r\n\r\n")
    started = time.monotonic()

    async def keep_sending() -> None:
        while not writer.is_closing():
            writer.write(b"x" * 1000)
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(keep_sending())
    reply = await asyncio.wait_for(reader.read(-1), LINGER_S + 3)
    sending.cancel()
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400 ") and time.monotonic() - started < LINGER_S + 1
    await served.counts_drop_to_zero()


# --- connection counts -------------------------------------------------------------------


async def test_counts_return_to_zero_after_a_reset_by_the_peer(served: Served) -> None:
    for data in (
        b"",
        get("/slow"),
        get("/stream"),
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab",
    ):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.connect(str(served.path))
        sock.sendall(data)
        await asyncio.sleep(0.1)
        assert served.open_counts() == (1, 1)
        sock.close()
        await served.counts_drop_to_zero()
    served.handler.release.set()


async def test_counts_return_to_zero_after_the_idle_timeout(served: Served) -> None:
    reader, writer = await asyncio.open_unix_connection(str(served.path))
    writer.write(get("/a"))
    await read_reply(reader)
    assert await asyncio.wait_for(reader.read(-1), 5) == b"" and served.open_counts() == (0, 0)
    writer.close()


async def test_shutdown_with_every_kind_of_connection_closes_them_all(served: Served) -> None:
    clients = [await asyncio.open_unix_connection(str(served.path)) for _ in range(5)]
    clients[1][1].write(get("/slow"))
    clients[2][1].write(get("/stream"))
    clients[3][1].write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")  # half a body
    clients[4][1].write(b"GET /x HTTP/1.1\r\nHost")  # half a head
    await asyncio.sleep(0.1)
    assert served.open_counts() == (5, 5)
    closing = asyncio.create_task(served.server.close())
    await asyncio.sleep(0.1)
    served.handler.release.set()
    replies = [await asyncio.wait_for(reader.read(-1), 5) for reader, _ in clients]
    await asyncio.wait_for(closing, 10)
    assert (
        replies[0] == b"" and replies[1].startswith(b"HTTP/1.1 200 ") and b"connection: close" in replies[1]
    )
    assert replies[2].startswith(b"HTTP/1.1 200 ")
    for _, writer in clients:
        writer.close()
    await served.counts_drop_to_zero()


# --- the same on uvloop (the daemon's loop where installed: its transports differ) --------

UVLOOP_CASES = [
    test_pipelined_requests_then_half_close_all_get_replies,
    test_a_half_received_request_then_eof_is_just_closed,
    test_10000_pipelined_requests_never_read_cost_bounded_memory,
    test_a_client_that_never_reads_is_closed_at_shutdown,
    test_a_refusal_after_requests_in_flight_comes_after_all_their_replies,
    test_shutdown_ends_an_open_stream_at_once,
    test_an_upgrade_request_is_answered_as_plain_http_and_the_next_one_too,
    test_a_stream_to_a_client_that_stops_reading_buffers_boundedly,
    test_a_stream_that_begins_during_shutdown_ends_at_once,
    test_counts_return_to_zero_after_a_reset_by_the_peer,
    test_shutdown_with_every_kind_of_connection_closes_them_all,
]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=[case.__name__[5:45] for case in UVLOOP_CASES])
def test_on_uvloop(tmp_path: Path, case: Any) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> None:
        async with serving(tmp_path) as served:
            await case(served)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
