"""The HTTP server's connection rules over a real Unix socket, in this process.

Keep-alive and its idle timeout, pipelining (order, the bound on what is
parsed ahead), Expect: 100-continue, chunked bodies, HEAD, HTTP/1.0,
streamed replies (chunked framing, a slow reader, a client that hangs up),
and shutdown (idle connections closed at once, replies under way finished,
a stuck handler cancelled after the timeout). Sizes and timeouts of
requests are in test_http_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.connection import MAX_PIPELINED
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.messages import Reply, Request, Stream
from pymgr.transport.http.server import HttpServer
from pymgr.transport.listeners import bind_unix
from tests.transport.http.rawhttp import get, read_reply

LIMITS = HttpLimits(max_request_line_bytes=1000, max_header_bytes=4000, header_timeout_s=2, body_timeout_s=2)
KEEPALIVE_S = 0.4


class Handler:
    """Echoes the request; ``/slow`` waits for ``release``; ``/stream`` streams ``chunks``."""

    def __init__(self) -> None:
        self.seen: list[Request] = []
        self.release = asyncio.Event()
        self.stream_closed = asyncio.Event()
        self.chunks = 3

    async def __call__(self, request: Request) -> Reply | Stream:
        self.seen.append(request)
        if request.path == "/slow":
            await self.release.wait()
        if request.path == "/stream":
            return Stream(b"text/plain", self._chunks())
        body = {
            "method": request.method,
            "path": request.path,
            "query": request.query.decode(),
            "body": request.body.decode("latin-1"),
        }
        return Reply(200, json.dumps(body).encode())

    async def _chunks(self) -> AsyncIterator[bytes]:
        try:
            for n in range(self.chunks):
                yield f"chunk {n}\n".encode()
                await asyncio.sleep(0)
            if self.chunks > 100:
                await asyncio.sleep(3600)  # a stream that waits for more: only a hang-up ends it
        finally:
            self.stream_closed.set()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Handler, HttpServer, Path]]:
    handler = Handler()
    path = tmp_path / "s.sock"
    server = HttpServer(
        handler,
        [bind_unix(path, 0o600)],
        limits=LIMITS,
        counter=ConnectionCounter(100, 100),
        max_body_bytes=1000,
        keepalive_timeout_s=KEEPALIVE_S,
        shutdown_timeout_s=0.5,
    )
    await server.start()
    yield handler, server, path
    handler.release.set()
    await server.close()


async def test_pipelined_requests_are_answered_in_order(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b"".join(get(f"/n/{n}") for n in range(5)))
    paths = [json.loads((await read_reply(reader))[1])["path"] for _ in range(5)]
    writer.close()
    assert paths == [f"/n/{n}" for n in range(5)]


async def test_a_client_that_only_sends_is_not_read_beyond_the_pipeline_bound(served: Any) -> None:
    handler, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/slow") + b"".join(get(f"/n/{n}") for n in range(MAX_PIPELINED * 4)))
    await asyncio.sleep(0.3)
    assert len(handler.seen) == 1  # the slow one runs; at most MAX_PIPELINED more are parsed, none run
    handler.release.set()
    for _ in range(MAX_PIPELINED * 4 + 1):
        await read_reply(reader)
    writer.close()
    assert len(handler.seen) == MAX_PIPELINED * 4 + 1


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/a"))
    await read_reply(reader)
    started = time.monotonic()
    writer.write(get("/b"))  # still open within the timeout, and the clock restarts after it
    await read_reply(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert KEEPALIVE_S - 0.05 <= time.monotonic() - started < KEEPALIVE_S + 1.5
    writer.close()


async def test_expect_100_continue_gets_its_interim_reply_before_the_body(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/up", b"Content-Length: 5\r\nExpect: 100-continue\r\n", method=b"POST"))
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    _, body = await read_reply(reader)
    writer.close()
    assert json.loads(body)["body"] == "hello"


async def test_a_chunked_body_is_read_whole(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(
        get("/c", b"Transfer-Encoding: chunked\r\n", method=b"POST") + b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    _, body = await read_reply(reader)
    writer.close()
    assert json.loads(body)["body"] == "abcde"


async def test_head_gets_the_head_only_and_the_connection_goes_on(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/h", method=b"HEAD") + get("/after?x=1"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: " in head
    _, body = await read_reply(reader)  # the next reply follows at once: no body was sent for HEAD
    writer.close()
    assert json.loads(body)["query"] == "x=1"


async def test_http_1_0_and_connection_close_end_the_connection_after_the_reply(served: Any) -> None:
    _, _, path = served
    for data in (get("/old", version=b"HTTP/1.0"), get("/bye", b"Connection: close\r\n")):
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(data)
        head, _ = await read_reply(reader)
        assert b"connection: close" in head
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_a_stream_is_sent_chunked_and_ends(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/stream") + get("/after"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert b"transfer-encoding: chunked" in head and b"content-type: text/plain" in head
    body = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert body == b"".join(b"8\r\nchunk %d\n\r\n" % n for n in range(3)) + b"0\r\n\r\n"
    _, after = await read_reply(reader)  # the connection is kept alive after a stream too
    writer.close()
    assert json.loads(after)["path"] == "/after"


async def test_a_stream_to_http_1_0_is_unframed_and_ends_by_closing(served: Any) -> None:
    _, _, path = served
    for extra in (b"", b"Connection: keep-alive\r\n"):  # a kept-alive 1.0 client too: the close is the end
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(get("/stream", extra, version=b"HTTP/1.0"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding" not in head and b"connection: close" in head  # no chunks for HTTP/1.0
        assert await asyncio.wait_for(reader.read(), 5) == b"chunk 0\nchunk 1\nchunk 2\n"  # then EOF
        writer.close()
    # A bad request pipelined behind it is refused by closing: a 400 written after it would read as body.
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/stream", version=b"HTTP/1.0") + b"NOT HTTP AT ALL\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b"chunk 0\nchunk 1\nchunk 2\n"
    writer.close()


async def test_a_client_that_hangs_up_ends_its_stream_at_once(served: Any) -> None:
    handler, _, path = served
    handler.chunks = 200
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/stream"))
    await asyncio.wait_for(reader.readuntil(b"chunk 199\n"), 5)
    writer.close()
    await asyncio.wait_for(handler.stream_closed.wait(), 5)  # the producer is closed, not left waiting


async def test_shutdown_finishes_replies_under_way_and_closes_idle_connections(served: Any) -> None:
    handler, server, path = served
    idle_reader, idle_writer = await asyncio.open_unix_connection(str(path))
    busy_reader, busy_writer = await asyncio.open_unix_connection(str(path))
    busy_writer.write(get("/slow"))
    await asyncio.sleep(0.1)
    closing = asyncio.create_task(server.close())
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # idle: closed at once
    handler.release.set()
    head, _ = await read_reply(busy_reader)  # under way: finished, then closed
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head
    await asyncio.wait_for(closing, 5)
    for writer in (idle_writer, busy_writer):
        writer.close()


async def test_shutdown_cancels_a_handler_that_outlives_the_timeout(served: Any) -> None:
    _, server, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/slow"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await asyncio.wait_for(server.close(), 5)
    assert 0.4 <= time.monotonic() - started < 2
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_garbage_after_a_request_in_flight_comes_after_its_reply(served: Any) -> None:
    handler, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/slow") + b"\x00garbage\r\n\r\n")
    await asyncio.sleep(0.1)
    handler.release.set()
    head, _ = await read_reply(reader)
    assert head.startswith(b"HTTP/1.1 200 ")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert rest.startswith(b"HTTP/1.1 400 ") and b"invalid HTTP request" in rest
