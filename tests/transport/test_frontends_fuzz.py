"""Property tests over both protocol front ends with the whole security stack in place.

- The HTTP handler stack (guard, app, guarded dispatcher, policy, audit),
  called with whole requests as the connection hands them over: whatever
  the method, path, query, headers and body, the reply is a JSON envelope
  whose status the error code owns; unsigned TCP callers never reach an
  action; a signed request with any one byte changed is refused; secrets
  never reach the audit log.
- The same over a real Unix socket and the HTTP server: any bytes get at
  most one HTTP reply, and the server keeps serving.
- The legacy server over real TCP: any bytes get at most one JSON reply,
  never two, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from pymgr import Identity, Module, action
from pymgr.auth.audit import AuditLog, Auditor
from pymgr.auth.guard import EdgeGuard
from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.auth.hmac_auth import HmacAuth
from pymgr.auth.policy import Policy, PolicyConfig, PolicyRule
from pymgr.auth.nonces import NonceCache
from pymgr.auth.signing import Verifier
from pymgr.config import LegacyConfig
from pymgr.core.registry import Registry
from pymgr.errors import error_class_for
from pymgr.transport.http.routes import HttpApp
from pymgr.transport.http.guard import GuardedApp
from pymgr.transport.http.messages import Reply, Request
from pymgr.transport.legacy import LegacyServer
from examples.legacy_client import exchange, sign

SECRET = b"fuzz-secret-0123456789"
LEGACY_SECRET = "fuzz-legacy"
ROOT = Identity(transport="unix", uid=0, gid=0, pid=1, user="root", groups=("root",))
WWW = Identity(transport="unix", uid=33, gid=33, pid=2, user="www-data", groups=("www-data",))
TCP = Identity(transport="tcp", peer="10.0.0.9:4000")
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Target(Module):
    name = "target"

    @action
    async def echo(self, **params: Any) -> Any:
        return params

    @action
    async def login(self, user: str, password: SecretStr) -> str:
        return user

    @action(read_only=True)
    async def count(self, n: int = 0) -> int:
        return n


def stack(tmp_path: Path) -> tuple[Any, Path]:
    registry = Registry()
    registry.add(Target())
    rules = PolicyConfig(
        rules=[
            PolicyRule(subjects=["uid:0", "key:k"], actions=["*"]),
            PolicyRule(subjects=["group:www-data"], actions=["*:read"]),
        ]
    )
    audit_path = tmp_path / "audit.log"
    auditor = Auditor(AuditLog(audit_path, max_bytes=50_000_000, backups=1))
    policy = Policy(rules, registry, key_ids=["k"], owner_uid=0)
    dispatcher = GuardedDispatcher(registry, policy=policy, auditor=auditor, max_params_bytes=4096)
    verifier = Verifier(
        {"k": SECRET}, clock_skew_s=300, nonces=NonceCache(100_000), clock=__import__("time").time
    )
    app = GuardedApp(HttpApp(dispatcher, version="f"), edge=EdgeGuard(None, auditor), verifier=verifier)
    return app, audit_path


async def send(
    app: Any,
    caller: Identity,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
) -> tuple[int, dict[str, Any]]:
    """One request as the connection hands it to the handler: path as sent, decoded; headers lower-cased."""
    raw_path = quote(path, safe="/%;$()").encode()
    request = Request(
        method,
        unquote(raw_path.decode("latin-1"), encoding="latin-1"),
        raw_path,
        quote(query, safe="=&").encode(),
        [(k.lower().encode(), v.encode()) for k, v in headers],
        body,
        caller,
    )
    reply = await app(request)
    assert isinstance(reply, Reply)
    return reply.status, json.loads(reply.body)


segments = st.one_of(
    st.sampled_from(
        [
            "v1",
            "modules",
            "target",
            "echo",
            "login",
            "count",
            "tasks",
            "health",
            "..",
            ".",
            "%00",
            "%2e%2e",
            "a;b",
            "$(id)",
            "x%2Fy",
            "",
        ]
    ),
    st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), max_size=6),
)
paths = st.lists(segments, max_size=5).map(lambda parts: "/" + "/".join(parts))
bodies = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(
        st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.none()), max_size=4
    ).map(lambda d: json.dumps(d).encode()),
    st.just(b'{"user": "u", "password": "hunter2-secret"}'),
)
header_names = st.sampled_from(
    ["x-pymgr-key", "x-pymgr-timestamp", "x-pymgr-nonce", "x-pymgr-signature", "content-type", "x-other"]
)
headers = st.lists(
    st.tuples(
        header_names, st.text(st.characters(codec="ascii", min_codepoint=32, max_codepoint=126), max_size=70)
    ),
    max_size=4,
)


def check_envelope(status: int, body: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(body, dict) and isinstance(body["ok"], bool)
    if body["ok"]:
        assert status in (200, 202) and "result" in body
    else:
        code = body["error"]["code"]
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        if status != 405:
            assert error_class_for(code).http_status == status, (code, status)
        assert status != 500, body
    return body


@SETTINGS
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=paths,
    query=st.text(max_size=20),
    body=bodies,
    extra=headers,
    caller=st.sampled_from([ROOT, WWW, TCP]),
)
async def test_http_any_request_gets_one_envelope(
    tmp_path: Path,
    method: str,
    path: str,
    query: str,
    body: bytes,
    extra: list[tuple[str, str]],
    caller: Identity,
) -> None:
    app, audit_path = stack(tmp_path)
    status, body_json = await send(app, caller, method, path, query, body, extra)
    reply = check_envelope(status, body_json)
    if caller.transport == "tcp":
        assert status == 401 and not reply["ok"]
    assert b"hunter2-secret" not in (audit_path.read_bytes() if audit_path.exists() else b"")


@SETTINGS
@given(
    body=bodies,
    position=st.integers(min_value=0),
    delta=st.integers(1, 255),
    part=st.sampled_from(["sig", "body", "path"]),
)
async def test_http_a_signed_request_with_any_byte_changed_is_refused(
    tmp_path: Path, body: bytes, position: int, delta: int, part: str
) -> None:
    app, _ = stack(tmp_path)
    request = httpx.Request("POST", "http://pymgr/v1/modules/target/echo", content=body)
    signed = next(HmacAuth("k", SECRET).auth_flow(request))
    target_path = "/v1/modules/target/echo"
    if part == "sig":
        sig = bytearray(signed.headers["x-pymgr-signature"].encode())
        i = position % len(sig)
        sig[i] = ord("0") if sig[i] != ord("0") else ord("1")
        signed.headers["x-pymgr-signature"] = sig.decode()
    elif part == "body":
        mutated = bytearray(body or b"\x00")
        i = position % len(mutated)
        mutated[i] = (mutated[i] + delta) % 256
        body = bytes(mutated)
    else:
        target_path = "/v1/modules/target/count"
    status, reply = await send(app, TCP, "POST", target_path, "", body, list(signed.headers.items()))
    assert status == 401 and reply["error"]["code"] == "unauthenticated"


# --- over real sockets -----------------------------------------------------------------------


garbage = st.one_of(
    st.binary(max_size=300),
    st.lists(
        st.sampled_from(
            [
                b"GET ",
                b"POST ",
                b"/v1/health",
                b"/v1/modules/target/echo",
                b" HTTP/1.1",
                b"\r\n",
                b"Content-Length: 5",
                b"Content-Length: 99999999999",
                b"Transfer-Encoding: chunked",
                b"Host: x",
                b"{}",
                b"\x00",
                b"0\r\n\r\n",
                b"5\r\nhello\r\n",
                b":",
                b" ",
            ]
        ),
        max_size=25,
    ).map(b"".join),
)


@pytest.fixture(scope="module")
def socket_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The stack on the HTTP server over a Unix socket, in a thread with its own loop."""
    import threading

    from pymgr.transport.conncount import ConnectionCounter
    from pymgr.transport.http.limits import HttpLimits
    from pymgr.transport.http.server import HttpServer
    from pymgr.transport.listeners import bind_unix

    tmp = tmp_path_factory.mktemp("fuzz")
    app, _ = stack(tmp)
    path = tmp / "f.sock"
    sock = bind_unix(path, 0o600)
    loop = asyncio.new_event_loop()
    limits = HttpLimits(
        max_request_line_bytes=1024, max_header_bytes=4096, header_timeout_s=1, body_timeout_s=1
    )
    server = HttpServer(
        app,
        [sock],
        limits=limits,
        counter=ConnectionCounter(10_000, 10_000),
        max_body_bytes=8192,
        keepalive_timeout_s=1,
        shutdown_timeout_s=1,
    )
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield path
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def raw_exchange(path: Path, data: bytes) -> bytes:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


@settings(max_examples=100, deadline=None)
@given(data=garbage)
def test_http_socket_any_bytes_get_at_most_replies_and_the_server_serves_on(
    socket_server: Path, data: bytes
) -> None:
    reply = raw_exchange(socket_server, data)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 ")
    health = raw_exchange(socket_server, b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 ")


@pytest.fixture(scope="module")
def legacy_port() -> Any:
    """A legacy server with the whole stack, in a thread with its own loop."""
    import threading

    registry = Registry()
    registry.add(Target())
    policy = Policy(
        PolicyConfig(rules=[PolicyRule(subjects=["legacy"], actions=["target.echo"])]), registry, owner_uid=0
    )
    dispatcher = GuardedDispatcher(registry, policy=policy, auditor=None, max_params_bytes=4096)
    config = LegacyConfig(enabled=True, host="127.0.0.1", port=0, secret=LEGACY_SECRET, read_timeout_s=1)
    server = LegacyServer(config, dispatcher, edge=EdgeGuard(None, None))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server.port
    asyncio.run_coroutine_threadsafe(server.close(1.0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


legacy_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "module:target",
                "module:nope",
                "action:echo",
                "action:login",
                f"signature:{sign(LEGACY_SECRET, 'target')}",
                "signature:00",
                "a:1",
                "password:x",
                ":",
                "",
                "module:",
                "MODULE:target",
            ]
        ),
        st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=30),
    ),
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(lines=legacy_lines, ending=st.sampled_from(["\n\n", "\n", "", "\r\n\r\n"]))
def test_legacy_any_request_gets_at_most_one_json_reply(
    legacy_port: int, lines: list[str], ending: str
) -> None:
    data = ("\n".join(lines) + ending).encode()
    reply = exchange("127.0.0.1", legacy_port, data, half_close=True)
    if reply:
        obj, end = json.JSONDecoder().raw_decode(reply.decode())
        assert end == len(reply.decode()) and set(obj) == {"success", "msg"}
        if obj["success"] is False:
            assert obj["msg"]["err_code"] in range(1, 10)
    ok = exchange(
        "127.0.0.1",
        legacy_port,
        f"module:target\naction:echo\nsignature:{sign(LEGACY_SECRET, 'target')}\n\n".encode(),
    )
    assert json.loads(ok) == {"success": True, "msg": {}}
