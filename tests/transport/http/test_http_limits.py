"""HTTP limits below the app, over a real Unix socket and the HTTP server, in this process.

Head and request-line sizes, head and body timeouts (slowloris), connection
caps, huge bodies, garbage and truncated HTTP: each limit from both sides,
and the server still answering everyone else afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pymgr import Identity, Module, action
from pymgr.auth.guard import EdgeGuard
from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.core.registry import Registry
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.routes import HttpApp
from pymgr.transport.http.guard import GuardedApp
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.server import HttpServer
from pymgr.transport.listeners import bind_unix

TIMEOUT_S = 0.6
LIMITS = HttpLimits(
    max_request_line_bytes=200, max_header_bytes=1000, header_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S
)
MAX_BODY = 10_000


class Echo(Module):
    name = "echo"

    @action
    async def back(self, **params: Any) -> dict[str, Any]:
        return params

    @action
    async def who(self, caller: Identity) -> dict[str, Any]:
        return caller.to_dict()


@dataclass
class Server:
    path: Path
    counter: ConnectionCounter


async def start(
    tmp_path: Path,
    max_connections: int = 1000,
    per_identity: int = 1000,
    limits: HttpLimits = LIMITS,
    keepalive_timeout_s: float = 5,
) -> tuple[Server, HttpServer]:
    registry = Registry()
    registry.add(Echo())
    dispatcher = GuardedDispatcher(registry, policy=None, auditor=None, max_params_bytes=MAX_BODY)
    app = GuardedApp(HttpApp(dispatcher, version="t"), edge=EdgeGuard(None, None), verifier=None)
    path = tmp_path / "h.sock"
    counter = ConnectionCounter(max_connections, per_identity)
    server = HttpServer(
        app,
        [bind_unix(path, 0o600)],
        limits=limits,
        counter=counter,
        max_body_bytes=MAX_BODY,
        keepalive_timeout_s=keepalive_timeout_s,
        shutdown_timeout_s=1,
    )
    await server.start()
    return Server(path, counter), server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    info, http_server = await start(tmp_path)
    yield info
    await http_server.close()


async def exchange(server: Server, data: bytes, *, wait_s: float = 5.0) -> bytes:
    """Send ``data``, read until the server closes (or ``wait_s``)."""
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), wait_s)
    finally:
        writer.close()


async def request(server: Server, data: bytes) -> tuple[int, dict[str, Any], bytes]:
    """One request on a fresh connection: status, JSON body and the raw head."""
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        return int(head.split()[1]), json.loads(body), head
    finally:
        writer.close()


def post(path: str = "/v1/modules/echo/back", body: bytes = b"{}", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


async def assert_serving(server: Server) -> None:
    status, body, _ = await request(server, post(body=b'{"ok":1}'))
    assert (status, body) == (200, {"ok": True, "result": {"ok": 1}})


# --- sizes ---------------------------------------------------------------------


async def test_request_line_limit_both_sides(server: Server) -> None:
    base = "/v1/modules/echo/back?"
    at_limit = base + "a" * (LIMITS.max_request_line_bytes - len(base))
    assert (await request(server, post(at_limit)))[0] == 200
    status, body, head = await request(server, post(at_limit + "a"))
    assert status == 413 and b"connection: close" in head
    assert body["error"] == {
        "code": "too_large",
        "message": "request target is longer than max_request_line_bytes=200",
        "details": {"limit": 200},
    }
    await assert_serving(server)


async def test_header_limit_both_sides(server: Server) -> None:
    def with_header(size: int) -> bytes:
        # request target + each header's name, value and 4 bytes of ": " and CRLF
        fixed = (
            len("/v1/modules/echo/back")
            + len("host")
            + 1
            + 4
            + len("content-length")
            + 1
            + 4
            + len("x-pad")
            + 4
        )
        return post(extra=b"X-Pad: " + b"p" * (size - fixed) + b"\r\n")

    assert (await request(server, with_header(LIMITS.max_header_bytes)))[0] == 200
    status, body, _ = await request(server, with_header(LIMITS.max_header_bytes + 1))
    assert status == 413 and body["error"]["message"].startswith(
        "request head is larger than max_header_bytes=1000"
    )


def chunked(trailers: bytes = b"", extension: bytes = b"", body: bytes = b'{"a":1}') -> list[bytes]:
    """A chunked POST in the pieces a client writes: head, chunk-size line, data, last chunk, trailers, end."""
    head = b"POST /v1/modules/echo/back HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    return [head, b"%x%s\r\n" % (len(body), extension), body + b"\r\n", b"0\r\n", trailers, b"\r\n"]


async def send_in_reads(server: Server, pieces: list[bytes]) -> tuple[int, dict[str, Any]]:
    """Each piece in its own write, apart in time (so in its own read), then the reply."""
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return int(head.split()[1]), json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
    finally:
        writer.close()


@pytest.mark.parametrize("in_reads", [True, False])
async def test_trailers_count_with_the_head_both_sides(server: Server, in_reads: bool) -> None:
    fields = (
        len("/v1/modules/echo/back") + len("host") + 1 + 4 + len("transfer-encoding") + len("chunked") + 4
    )
    # Counted with the trailers when they come in reads of their own: "7\r\n", the data's CRLF, "0\r\n".
    framing = 8 if in_reads else 0

    def trailers(size: int) -> bytes:
        return b"X-T: " + b"t" * (size - fields - framing - len("x-t") - 4) + b"\r\n"

    async def send(size: int) -> tuple[int, dict[str, Any]]:
        pieces = chunked(trailers(size))
        return (
            await send_in_reads(server, pieces) if in_reads else (await request(server, b"".join(pieces)))[:2]
        )

    assert await send(LIMITS.max_header_bytes) == (200, {"ok": True, "result": {"a": 1}})
    status, body = await send(LIMITS.max_header_bytes + 1)
    assert status == 413 and body["error"]["message"].startswith(
        "request head, chunk-size lines and trailers are larger than max_header_bytes=1000"
    )
    await assert_serving(server)


async def test_chunk_framing_counts_with_the_head_both_sides(server: Server) -> None:
    # Framing arrives in reads of its own: counted as they arrive (a read at most late, see http/connection.py).
    def pieces(extension_bytes: int, chunks: int) -> list[bytes]:
        ext = b";x=" + b"e" * (extension_bytes - 3)
        return chunked(extension=ext)[:1] + [b"1%s\r\n \r\n" % ext for _ in range(chunks)] + chunked()[1:]

    assert (await send_in_reads(server, pieces(100, 5)))[
        0
    ] == 200  # ~550 bytes of framing with a ~60-byte head
    status, body = await send_in_reads(server, pieces(100, 12))  # ~1300 bytes
    assert status == 413 and "chunk-size lines" in body["error"]["message"]
    status, body = await send_in_reads(server, pieces(300, 6))  # one long extension after another
    assert status == 413 and "chunk-size lines" in body["error"]["message"]
    await assert_serving(server)


async def test_a_head_that_never_ends_is_cut_off_by_bytes(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(b"GET /v1/health HTTP/1.1\r\nX-Endless: ")
    for _ in range(20):  # 20 x 100 bytes, one header value that never ends
        writer.write(b"v" * 100)
        await writer.drain()
    reply = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"request head is larger than max_header_bytes=1000" in reply


async def test_a_huge_declared_body_is_refused_before_it_is_read(server: Server) -> None:
    started = time.monotonic()
    reply = await exchange(
        server, post(extra=b"").replace(b"Content-Length: 2", b"Content-Length: 10000000000")
    )
    assert reply.startswith(b"HTTP/1.1 413 ") and time.monotonic() - started < 2
    assert b"request body of 10000000000 bytes is larger than max_body_bytes=10000" in reply


async def test_a_10_mib_body_is_refused_and_the_rest_never_parsed(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    body = b"x" * (10 * 1024 * 1024)
    writer.write(post(body=body))
    try:
        await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, TimeoutError):
        pass  # the server stopped reading: that is the point
    reply = await asyncio.wait_for(reader.read(-1), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 413 ")  # then EOF: the rest of the body is dropped, never parsed
    await assert_serving(server)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /v1/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\xff" * 100 + b"\r\n\r\n",
    ],
)
async def test_garbage_gets_one_400_and_the_server_goes_on(server: Server, garbage: bytes) -> None:
    reply = await exchange(server, garbage)
    assert reply.startswith(b"HTTP/1.1 400 ") and b'"ok":false' in reply
    await assert_serving(server)


async def test_truncated_requests_cost_nothing(server: Server) -> None:
    for data in (b"POST /v1/modules/echo/back HTTP/1.1\r\nContent-Le", post(body=b'{"a":')[:-1]):
        reader, writer = await asyncio.open_unix_connection(str(server.path))
        writer.write(data)
        await writer.drain()
        writer.close()
    await assert_serving(server)


# --- timeouts --------------------------------------------------------------------


async def test_slowloris_head_is_cut_at_the_head_timeout_while_others_are_served(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    started = time.monotonic()

    async def drip() -> None:
        for byte in b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 100:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)  # 20 bytes per second; the test limit is 0.6 s for the whole head

    dripping = asyncio.create_task(drip())
    await assert_serving(server)  # meanwhile, others are answered at once
    assert time.monotonic() - started < TIMEOUT_S
    reply = await asyncio.wait_for(reader.read(-1), 5)
    elapsed = time.monotonic() - started
    dripping.cancel()
    writer.close()
    assert (
        reply.startswith(b"HTTP/1.1 408 ")
        and b"request head not complete within header_timeout_s=0.6" in reply
    )
    assert TIMEOUT_S - 0.05 <= elapsed < TIMEOUT_S + 2


async def test_headers_at_one_byte_per_second_are_cut_at_the_head_timeout(tmp_path: Path) -> None:
    limits = HttpLimits(
        max_request_line_bytes=200, max_header_bytes=1000, header_timeout_s=2.5, body_timeout_s=2.5
    )
    info, http_server = await start(tmp_path, limits=limits)
    try:
        reader, writer = await asyncio.open_unix_connection(str(info.path))
        started = time.monotonic()
        sent = 0
        while not reader.at_eof() and time.monotonic() - started < 10:
            writer.write(b"GET /v1/health HTTP/1.1\r\n"[sent : sent + 1])
            sent += 1
            try:
                reply = await asyncio.wait_for(reader.read(-1), 1.0)  # one byte per second
                break
            except TimeoutError:
                continue
        writer.close()
        assert reply.startswith(b"HTTP/1.1 408 ") and b"header_timeout_s=2.5" in reply
        assert 2.4 <= time.monotonic() - started < 4 and sent == 3
        await assert_serving(info)
    finally:
        await http_server.close()


async def test_a_body_that_stops_coming_is_cut_at_the_body_timeout(server: Server) -> None:
    started = time.monotonic()
    reply = await exchange(server, post(body=b'{"a":1}')[:-3])
    assert (
        reply.startswith(b"HTTP/1.1 408 ") and b"request body not complete within body_timeout_s=0.6" in reply
    )
    assert TIMEOUT_S - 0.05 <= time.monotonic() - started < TIMEOUT_S + 2


async def test_a_head_just_in_time_is_served(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    data = post()
    writer.write(data[:10])
    await asyncio.sleep(TIMEOUT_S * 0.6)
    writer.write(data[10:])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_500_silent_connections_do_not_stall_others_and_are_closed_at_the_timeout(
    server: Server,
) -> None:
    silent = [await asyncio.open_unix_connection(str(server.path)) for _ in range(500)]
    started = time.monotonic()
    await assert_serving(server)
    assert time.monotonic() - started < TIMEOUT_S / 2
    assert server.counter.count(caller=f"uid:{os.getuid()}") >= 500
    replies = await asyncio.wait_for(asyncio.gather(*(reader.read(-1) for reader, _ in silent)), 10)
    for _, writer in silent:
        writer.close()
    assert all(reply.startswith(b"HTTP/1.1 408 ") for reply in replies)
    await asyncio.sleep(0.05)
    assert server.counter.count(caller=f"uid:{os.getuid()}") == 0


# --- connection caps ---------------------------------------------------------------


async def test_connection_caps_both_sides(tmp_path: Path) -> None:
    info, http_server = await start(tmp_path, max_connections=4, per_identity=2)
    try:
        first = [await asyncio.open_unix_connection(str(info.path)) for _ in range(2)]
        await asyncio.sleep(0.05)
        reply = await exchange(info, b"")  # a third from the same uid
        assert reply.startswith(b"HTTP/1.1 429 ") and b"retry-after: 1" in reply
        assert b"too many connections from uid:" in reply and b"max_connections_per_identity=2" in reply
        for _, writer in first:
            writer.close()
        await asyncio.sleep(0.05)
        assert (await request(info, post()))[0] == 200
    finally:
        await http_server.close()
    info, http_server = await start(tmp_path / "b", max_connections=2, per_identity=10)
    try:
        held = [await asyncio.open_unix_connection(str(info.path)) for _ in range(2)]
        await asyncio.sleep(0.05)
        reply = await exchange(info, b"")
        assert (
            reply.startswith(b"HTTP/1.1 503 ") and b"this listener serves at most max_connections=2" in reply
        )
        for _, writer in held:
            writer.close()
    finally:
        await http_server.close()


async def test_keep_alive_requests_share_one_connection(server: Server) -> None:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    for n in range(3):
        writer.write(post(body=json.dumps({"n": n}).encode()))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert json.loads(await reader.readexactly(length))["result"] == {"n": n}
    writer.close()
