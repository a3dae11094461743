"""The legacy server over real TCP on 127.0.0.1, with the old design's client."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from pymgr import Identity, Module, action
from pymgr.auth.legacy import legacy_signature, verify_legacy_signature
from pymgr.config import ConfigError, LegacyConfig
from pymgr.core.dispatch import Dispatcher
from pymgr.core.registry import Registry
from pymgr.transport.legacy import LegacyServer
from pymgr.transport.listeners import is_loopback as _is_loopback
from examples.legacy_client import call, encode_request, exchange, read_to_eof, sign

SECRET = "s3cret"
HOST = "127.0.0.1"
ACTIONS = "add, boom, count, echo, slow, whoami"


class Sample(Module):
    """Small actions for each reply the server can give."""

    name = "sample"

    def __init__(self) -> None:
        super().__init__()
        self.slow_started = asyncio.Event()

    @action
    async def echo(self, text: str = "hi") -> dict[str, str]:
        return {"text": text}

    @action
    async def boom(self) -> None:
        raise RuntimeError("kaboom")

    @action
    async def add(self, a: int, b: int) -> int:
        return a + b

    @action
    async def count(self, **params: str) -> int:
        return len(params)

    @action
    async def slow(self, delay_s: float) -> str:
        self.slow_started.set()
        await asyncio.sleep(delay_s)
        return "done"

    @action
    async def whoami(self, caller: Identity) -> dict[str, Any]:
        return {"transport": caller.transport, "peer": caller.peer}


def make_server(**overrides: Any) -> LegacyServer:
    settings: dict[str, Any] = {"enabled": True, "host": HOST, "port": 0, "secret": SECRET, **overrides}
    registry = Registry()
    registry.add(Sample())
    return LegacyServer(LegacyConfig(**settings), Dispatcher(registry))


def sample_of(server: LegacyServer) -> Sample:
    return server.dispatcher.registry.get("sample", "slow").func.__self__  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
async def server() -> AsyncIterator[LegacyServer]:
    srv = make_server()
    await srv.start()
    yield srv
    await srv.close(timeout_s=1.0)


def one_json(data: bytes) -> Any:
    """The reply parsed, checking it is exactly one JSON object and nothing else."""
    obj, end = json.JSONDecoder().raw_decode(data.decode())
    assert end == len(data), f"more than one JSON value in {data!r}"
    assert isinstance(obj, dict) and set(obj) == {"success", "msg"}
    return obj


async def send(server: LegacyServer, data: bytes, **kwargs: Any) -> Any:
    return one_json(await asyncio.to_thread(exchange, HOST, server.port, data, **kwargs))


async def signed(
    server: LegacyServer, module: str, action: str, params: Mapping[str, object] | None = None
) -> Any:
    return await asyncio.to_thread(call, HOST, server.port, SECRET, module, action, params)


async def assert_still_serving(server: LegacyServer) -> None:
    assert await signed(server, "sample", "echo", {"text": "still here"}) == {
        "success": True,
        "msg": {"text": "still here"},
    }


def assert_error(reply: Any, code: int, message: str) -> None:
    assert reply["success"] is False
    assert reply["msg"]["err_code"] == code
    assert set(reply["msg"]) == {"err_code", "message"}
    assert re.match(message, reply["msg"]["message"]), reply


# --- answers -------------------------------------------------------------


async def test_success_is_one_json_object_byte_for_byte(server: LegacyServer) -> None:
    request = encode_request("sample", "echo", sign(SECRET, "sample"), {"text": "hello"})
    raw = await asyncio.to_thread(exchange, HOST, server.port, request)
    assert raw == b'{"success": true, "msg": {"text": "hello"}}'


async def test_int_params_are_converted(server: LegacyServer) -> None:
    assert await signed(server, "sample", "add", {"a": 2, "b": "3"}) == {"success": True, "msg": 5}


async def test_identity_is_legacy_with_the_peer_address(server: LegacyServer) -> None:
    reply = await signed(server, "sample", "whoami")
    assert reply["msg"]["transport"] == "legacy"
    assert reply["msg"]["peer"].startswith("127.0.0.1:")


async def test_uppercase_signature_is_accepted(server: LegacyServer) -> None:
    request = encode_request("sample", "echo", sign(SECRET, "sample").upper())
    assert await send(server, request) == {"success": True, "msg": {"text": "hi"}}


async def test_eof_terminated_request_is_answered(server: LegacyServer) -> None:
    request = encode_request("sample", "echo", sign(SECRET, "sample"))[:-1]  # no blank line
    assert await send(server, request, half_close=True) == {"success": True, "msg": {"text": "hi"}}


ANSWERED_ERRORS = [
    ("nope", "echo", {}, "good", 1, r"^no module named 'nope'; modules: sample$"),
    ("sample", "nope", {}, "good", 1, rf"^module 'sample' has no action 'nope'; actions: {ACTIONS}$"),
    ("sample", "boom", {}, "good", 2, r"^action sample\.boom failed: RuntimeError: kaboom$"),
    ("sample", "echo", {}, "bad", 3, r"^signature for module 'sample' does not match; it must be the hex"),
    ("sample", "echo", {}, "other module", 3, r"^signature for module 'sample' does not match"),
    ("sample", "echo", {}, "missing", 3, r"^no signature given; send signature:<hex HMAC-MD5"),
    ("nope", "echo", {}, "missing", 3, r"^no signature given"),
    ("sample", "", {}, "good", 3, r"^no action given; send action:<name> for module 'sample'$"),
    (
        "sample",
        "add",
        {"a": "x", "b": "1"},
        "good",
        4,
        r"^bad params for sample\.add: a: Input should be a valid",
    ),
    ("sample", "add", {"a": "1"}, "good", 4, r"^bad params for sample\.add: b: Field required$"),
    ("sample", "echo", {"colour": "red"}, "good", 4, r"^bad params for sample\.echo: colour: Extra inputs"),
]


@pytest.mark.parametrize(("module", "action", "params", "signature", "code", "message"), ANSWERED_ERRORS)
async def test_errors_are_answered_with_their_code(
    server: LegacyServer,
    module: str,
    action: str,
    params: dict[str, str],
    signature: str,
    code: int,
    message: str,
) -> None:
    lines = [f"module:{module}"] + ([f"action:{action}"] if action else [])
    signatures = {"good": sign(SECRET, module), "bad": "0" * 32, "other module": sign(SECRET, "other")}
    if signature in signatures:
        lines.append(f"signature:{signatures[signature]}")
    lines += [f"{key}:{value}" for key, value in params.items()]
    assert_error(await send(server, ("\n".join(lines) + "\n\n").encode()), code, message)
    await assert_still_serving(server)


# --- protocol errors -----------------------------------------------------

PROTOCOL_ERRORS = [
    (b"garbage\n\n", 9, r"^request line 1 has no ':'; expected key:value, got 'garbage'$"),
    (b"module:a\nmodule:b\n\n", 9, r"^duplicate key 'module' on request lines 1 and 2$"),
    (b"module:\xff\n\n", 9, r"^request line 1 is not UTF-8"),
    (b"\n", 9, r"^request is empty"),
    (
        b"text:" + b"x" * 4092 + b"\n\n",
        6,
        r"^request line of (at least )?4097 bytes is longer than max_line_bytes=",
    ),
    (
        b"text:" + b"x" * 100_000,
        6,
        r"^request line of at least \d+ bytes is longer than max_line_bytes=4096$",
    ),
    (
        b"".join(b"k%d:v\n" % i for i in range(65)) + b"\n",
        6,
        r"^request has more than max_lines=64 key:value lines$",
    ),
]


@pytest.mark.parametrize(("raw", "code", "message"), PROTOCOL_ERRORS)
async def test_protocol_errors_get_one_reply_and_one_warning(
    server: LegacyServer, caplog: pytest.LogCaptureFixture, raw: bytes, code: int, message: str
) -> None:
    caplog.clear()
    assert_error(await send(server, raw), code, message)
    warnings = [r for r in caplog.records if r.name == "pymgr.legacy" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("legacy request from 127.0.0.1:")
    await assert_still_serving(server)


async def test_a_line_of_max_line_bytes_is_served(server: LegacyServer) -> None:
    text = "x" * (4096 - len("text:"))
    assert await signed(server, "sample", "echo", {"text": text}) == {"success": True, "msg": {"text": text}}


async def test_max_lines_lines_are_served(server: LegacyServer) -> None:
    params = {f"k{i}": "v" for i in range(64 - 3)}  # module, action, signature + 61 = 64 lines
    assert await signed(server, "sample", "count", params) == {"success": True, "msg": 61}


async def test_eof_in_the_middle_of_a_line_is_malformed(server: LegacyServer) -> None:
    reply = await send(server, b"module:sample\naction:ec", half_close=True)
    assert_error(reply, 9, r"^connection closed in the middle of request line 2 ")


async def test_connect_and_close_does_not_disturb_the_server(server: LegacyServer) -> None:
    reply = await asyncio.to_thread(exchange, HOST, server.port, b"", half_close=True)
    assert_error(one_json(reply), 9, r"^connection closed before a request was sent")
    await asyncio.to_thread(socket.create_connection((HOST, server.port)).close)
    await assert_still_serving(server)


async def test_bytes_after_the_request_are_ignored(server: LegacyServer) -> None:
    request = encode_request("sample", "echo", sign(SECRET, "sample"))
    assert await send(server, request + b"garbage\n" * 1000) == {"success": True, "msg": {"text": "hi"}}


# --- timeouts ------------------------------------------------------------


def trickle(port: int, data: bytes, every_s: float) -> bytes:
    """A slowloris: one byte at a time until the server answers, then read the reply."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        for i in range(len(data)):
            if select.select([sock], [], [], every_s)[0]:
                break  # the server answered: it gave up on us, as it should
            sock.sendall(data[i : i + 1])
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


@pytest.mark.parametrize("every_s", [None, 0.05])
async def test_a_request_not_complete_in_read_timeout_s_is_refused(every_s: float | None) -> None:
    srv = make_server(read_timeout_s=0.3)
    await srv.start()
    try:
        started = time.monotonic()
        request = encode_request("sample", "echo", sign(SECRET, "sample"))
        if every_s is None:  # sends part of the request, then waits
            raw = await asyncio.to_thread(exchange, HOST, srv.port, request[:10])
        else:  # keeps sending, too slowly
            raw = await asyncio.to_thread(trickle, srv.port, request * 10, every_s)
        assert_error(one_json(raw), 9, r"^request not complete within 0\.3 s$")
        assert 0.25 <= time.monotonic() - started < 5
        assert await signed(srv, "sample", "echo") == {"success": True, "msg": {"text": "hi"}}
    finally:
        await srv.close(timeout_s=1)


async def test_one_timer_times_out_every_late_connection_and_spares_the_rest() -> None:
    srv = make_server(read_timeout_s=0.3)
    await srv.start()
    try:
        partial = encode_request("sample", "echo", sign(SECRET, "sample"))[:10]
        first = asyncio.ensure_future(asyncio.to_thread(exchange, HOST, srv.port, partial))
        await asyncio.sleep(0.1)
        second = asyncio.ensure_future(asyncio.to_thread(exchange, HOST, srv.port, partial))
        for _ in range(3):  # complete requests in between are answered, not timed out
            assert await signed(srv, "sample", "echo") == {"success": True, "msg": {"text": "hi"}}
        for raw in await asyncio.gather(first, second):
            assert_error(one_json(raw), 9, r"^request not complete within 0\.3 s$")
        assert not srv._waiting and srv._read_timer is None
    finally:
        await srv.close(timeout_s=1)


async def test_signature_cache_keeps_only_correctly_signed_modules(server: LegacyServer) -> None:
    assert_error(
        await send(server, encode_request("nope", "echo", "00" * 16)), 3, r"^signature for module 'nope'"
    )
    assert await signed(server, "sample", "echo") == {"success": True, "msg": {"text": "hi"}}
    assert set(server._signatures) == {"sample"}
    reply = await send(server, encode_request("sample", "echo", "00" * 16))  # cached, still compared
    assert_error(reply, 3, r"^signature for module 'sample' does not match")
    upper = encode_request("sample", "echo", sign(SECRET, "sample").upper())
    assert await send(server, upper) == {"success": True, "msg": {"text": "hi"}}


# --- start and close -----------------------------------------------------


async def test_close_waits_for_an_in_flight_action() -> None:
    srv = make_server()
    await srv.start()
    reply = asyncio.ensure_future(signed(srv, "sample", "slow", {"delay_s": 0.3}))
    await asyncio.wait_for(sample_of(srv).slow_started.wait(), 5)
    started = time.monotonic()
    await srv.close(timeout_s=5)
    assert 0.2 <= time.monotonic() - started < 4
    assert await reply == {"success": True, "msg": "done"}
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(socket.create_connection, (HOST, srv.port), 2)


async def test_close_cancels_what_outlives_its_timeout() -> None:
    srv = make_server()
    await srv.start()
    reply = asyncio.ensure_future(signed(srv, "sample", "slow", {"delay_s": 60}))
    await asyncio.wait_for(sample_of(srv).slow_started.wait(), 5)
    started = time.monotonic()
    await srv.close(timeout_s=0.1)
    assert time.monotonic() - started < 2
    assert_error(await reply, 8, r"^pymgr shut down before the action finished$")


async def test_close_answers_a_half_received_request_with_8() -> None:
    srv = make_server()
    await srv.start()
    with socket.create_connection((HOST, srv.port)) as sock:
        sock.sendall(b"module:sample\n")
        await asyncio.sleep(0.1)  # let the server read it
        await srv.close(timeout_s=1)
        sock.settimeout(5)
        assert_error(one_json(sock.recv(65536)), 8, r"^pymgr is shutting down; retry later$")


async def test_a_client_that_leaves_early_does_not_break_the_action(caplog: pytest.LogCaptureFixture) -> None:
    srv = make_server()
    await srv.start()
    with socket.create_connection((HOST, srv.port)) as sock:
        sock.sendall(encode_request("sample", "slow", sign(SECRET, "sample"), {"delay_s": 0.1}))
        await asyncio.wait_for(sample_of(srv).slow_started.wait(), 5)
    await srv.close(timeout_s=5)  # the action finishes; its reply has nowhere to go
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await signed_fails_with_refused(srv)


async def signed_fails_with_refused(srv: LegacyServer) -> bool:
    try:
        await signed(srv, "sample", "echo")
    except ConnectionRefusedError:
        return True
    return False


async def wait_until_closed(server: LegacyServer) -> bool:
    for _ in range(250):
        if not server._connections:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_request_that_ends_with_the_bytes_sent_is_closed_without_linger(
    server: LegacyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pymgr.transport.legacy.LINGER_S", 60.0)
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(encode_request("sample", "echo", sign(SECRET, "sample")))
        assert one_json(await asyncio.to_thread(read_to_eof, sock)) == {
            "success": True,
            "msg": {"text": "hi"},
        }
        assert await wait_until_closed(server)  # the peer still has its socket open: we did not wait for it


async def test_bytes_sent_while_the_action_runs_make_the_server_linger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bytes left unread when the reply goes out: a close would reset, so the server lingers."""
    monkeypatch.setattr("pymgr.transport.legacy.LINGER_S", 60.0)
    srv = make_server()
    await srv.start()
    try:
        with socket.create_connection((HOST, srv.port), timeout=5) as sock:
            sock.sendall(encode_request("sample", "slow", sign(SECRET, "sample"), {"delay_s": 0.2}))
            await asyncio.wait_for(sample_of(srv).slow_started.wait(), 5)
            sock.sendall(b"garbage\n" * 1000)  # reading is paused: these stay in the kernel
            assert one_json(await asyncio.to_thread(read_to_eof, sock)) == {"success": True, "msg": "done"}
            sock.sendall(b"still talking\n")  # after the reply: no reset either
            await asyncio.sleep(0.1)
            assert srv._connections  # the server waits for our close
        assert await wait_until_closed(srv)
    finally:
        await srv.close(timeout_s=1)


async def test_a_peer_that_keeps_sending_after_its_request_gets_the_whole_reply(server: LegacyServer) -> None:
    """The documented guarantee: the reply is never destroyed by a reset (the server lingers here)."""
    request = encode_request("sample", "echo", sign(SECRET, "sample"))

    def chatty() -> bytes:
        with socket.create_connection((HOST, server.port), timeout=5) as sock:
            sock.sendall(request + b"more\n")
            for _ in range(20):  # keeps sending while the reply is on its way
                sock.sendall(b"x" * 4096)
            return read_to_eof(sock)

    for _ in range(20):
        assert one_json(await asyncio.to_thread(chatty)) == {"success": True, "msg": {"text": "hi"}}


async def test_a_peer_that_never_closes_is_closed_after_linger_s(
    server: LegacyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pymgr.transport.legacy.LINGER_S", 0.1)
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(
            encode_request("sample", "echo", sign(SECRET, "sample")) + b"trailing\n"
        )  # so it lingers
        assert one_json(await asyncio.to_thread(read_to_eof, sock)) == {
            "success": True,
            "msg": {"text": "hi"},
        }
        assert server._connections  # we have not closed: the server lingers
        for _ in range(100):
            if not server._connections:
                break
            await asyncio.sleep(0.02)
        assert not server._connections


async def test_a_reply_that_crashes_is_logged_and_the_connection_aborted(
    server: LegacyServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: Any, reply: Any) -> None:
        raise RuntimeError("broken reply path")

    monkeypatch.setattr("pymgr.transport.legacyconn.LegacyConnection._send", broken)
    request = encode_request("sample", "echo", sign(SECRET, "sample"))
    try:
        raw = await asyncio.to_thread(exchange, HOST, server.port, request)
    except ConnectionResetError:
        raw = b""
    assert raw == b""  # no reply, but the connection does not hang either
    assert await wait_until_closed(server)
    assert not server._tasks
    assert any("answering crashed" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_close_timeout_must_be_non_negative(server: LegacyServer) -> None:
    with pytest.raises(ValueError, match=r"^timeout_s must be non-negative, not -1$"):
        await server.close(timeout_s=-1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secret": None}, r"^\[legacy\] secret is not set: old clients sign requests with it; set secret"),
        ({"secret": ""}, r"^\[legacy\] secret is not set"),
        (
            {"enabled": False},
            r"^the legacy listener is disabled; set enabled = true in \[legacy\] to start it$",
        ),
    ],
)
async def test_start_refuses_without_secret_or_when_disabled(overrides: dict[str, Any], message: str) -> None:
    srv = make_server(**overrides)
    with pytest.raises(ConfigError, match=message):
        await srv.start()
    with pytest.raises(
        RuntimeError, match=r"^LegacyServer.port is known only after start\(\); await server.start"
    ):
        _ = srv.port


async def test_start_twice_is_refused(server: LegacyServer) -> None:
    with pytest.raises(
        RuntimeError, match=r"^LegacyServer.start\(\) was already called; create a new server"
    ):
        await server.start()


@pytest.mark.parametrize(("host", "count"), [(HOST, 1), ("0.0.0.0", 2)])
async def test_start_warns_that_the_signature_is_replayable(
    caplog: pytest.LogCaptureFixture, host: str, count: int
) -> None:
    srv = make_server(host=host)
    await srv.start()
    await srv.close(timeout_s=0)
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "pymgr.legacy" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == count
    assert warnings[0].startswith(f"LEGACY PROTOCOL ON {host}:{srv.port}: its signature is a static HMAC-MD5")
    assert "REPLAYABLE" in warnings[0]
    if count == 2:
        assert warnings[1].startswith(
            "legacy listener is bound to '0.0.0.0', which is not a loopback address"
        )


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("::", False),
        ("192.168.1.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback


def test_the_server_runs_on_uvloop() -> None:
    """The daemon runs on uvloop: half-close, pause and linger must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[Any]:
        srv = make_server(read_timeout_s=0.3)
        await srv.start()
        try:
            return [
                await signed(srv, "sample", "echo"),
                await send(
                    srv, encode_request("sample", "echo", sign(SECRET, "sample"))[:-1], half_close=True
                ),
                await send(srv, b"garbage\n\n"),
                await send(srv, b"module:x"),
            ]
        finally:
            await srv.close(timeout_s=1)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        replies = runner.run(scenario())
    assert replies[0] == replies[1] == {"success": True, "msg": {"text": "hi"}}
    assert [r["msg"]["err_code"] for r in replies[2:]] == [9, 9]


# --- the signature -------------------------------------------------------


def test_legacy_signature_is_hmac_md5_rfc2202_vector() -> None:
    assert legacy_signature("Jefe", "what do ya want for nothing?") == "750c783e6ab0b503eaa86e310a5db738"


@pytest.mark.parametrize(
    ("signature", "ok"),
    [
        (legacy_signature(SECRET, "sample"), True),
        (legacy_signature(SECRET, "sample").upper(), True),
        (legacy_signature(SECRET, "sample")[:-1], False),
        (legacy_signature("other", "sample"), False),
        ("", False),
        ("é" * 32, False),
    ],
)
def test_verify_legacy_signature(signature: str, ok: bool) -> None:
    assert verify_legacy_signature(SECRET, "sample", signature) is ok


def test_the_client_and_the_server_agree_on_the_signature() -> None:
    assert sign(SECRET, "sample") == legacy_signature(SECRET, "sample")
