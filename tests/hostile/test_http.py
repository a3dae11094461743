"""Attacks on the HTTP connection, replayed against a real daemon over its real sockets.

Each test sends what a hostile local user (Unix socket) or an unsigned TCP
client sent to a clone of the daemon, and checks the reply, that the refusal
came before the attacker had finished, and that the daemon kept nothing of
it (its resident memory, read from /proc, does not grow by what was sent).
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, launch_daemon

MIB = 1024 * 1024
#: What an attack sends in all; the daemon must refuse it long before the end.
FLOOD_BYTES = 20 * MIB
#: Growth of the daemon's resident memory still taken for noise (the attacks sent 20 MiB).
RSS_MARGIN_BYTES = 6 * MIB
HEADER_LIMIT = 16 * 1024

CONFIG = f"""
state_dir = "state"

[http]
unix_socket = "pymgr.sock"
tcp = "127.0.0.1:0"
max_header_bytes = {HEADER_LIMIT}

[[auth.keys]]
id = "ci"
secret = "ci-secret-0123456789"

[security]
public_secrets = true  # a test key

[[policy.rules]]
name = "the test's own user"
subjects = ["owner", "uid:0"]
actions = ["*"]

[modules]
enabled = ["demo", "tasks"]

[tasks.types.wait]
argv = ["/bin/echo", "{{seconds}}"]

[tasks.types.wait.params]
seconds = {{ type = "float", min = 0 }}
"""

CHUNKED_HEAD = (
    b"POST /v1/modules/demo/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/json\r\n\r\n"
)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    base = Path(tempfile.mkdtemp(prefix="pymgr-hostile-http-"))
    started = launch_daemon(base / "d", CONFIG)
    yield started
    started.stop()
    shutil.rmtree(base, ignore_errors=True)


def tcp_address(daemon: Daemon) -> tuple[str, int]:
    for line in daemon.log().splitlines():
        if " pymgr: ready " in line:
            ready = json.loads(line.split(" pymgr: ready ", 1)[1])
            host, _, port = (
                next(a for a in ready["http"] if a.startswith("tcp:")).removeprefix("tcp:").rpartition(":")
            )
            return host, int(port)
    raise AssertionError("no ready line")


def connect(daemon: Daemon, over: str) -> socket.socket:
    if over == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(daemon.socket))
    else:
        sock = socket.create_connection(tcp_address(daemon))
    sock.settimeout(10)
    return sock


def rss_bytes(daemon: Daemon) -> int:
    for line in Path(f"/proc/{daemon.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def flood(
    sock: socket.socket, head: bytes, piece: bytes, end: bytes, limit: int = FLOOD_BYTES
) -> tuple[int, bytes]:
    """Send ``head``, then ``piece`` until ``limit`` bytes went out or a reply came, then ``end``.

    Returns how many bytes went out before the reply, and the reply (all of it, until the daemon closes).
    """
    sent = 0
    sock.sendall(head)
    reply = b""
    try:
        while sent < limit:
            if select.select([sock], [], [], 0)[0]:
                break
            sock.sendall(piece)
            sent += len(piece)
        else:
            sock.sendall(end)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon closed: what it said is still to be read
    with_deadline = time.monotonic() + 10
    while time.monotonic() < with_deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        reply += data
    return sent, reply


def status_and_error(reply: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body).get("error", {})


def assert_refused_early_and_nothing_kept(
    daemon: Daemon, over: str, piece: bytes, end: bytes, body_start: bytes = b"2\r\n{}\r\n0\r\n"
) -> None:
    with connect(daemon, over) as sock:  # the same path once, small: what it loads or caches is not counted
        flood(sock, CHUNKED_HEAD + body_start, piece, end, limit=256 * 1024)
    before = rss_bytes(daemon)
    with connect(daemon, over) as sock:
        sent, reply = flood(sock, CHUNKED_HEAD + body_start, piece, end)
    grown = rss_bytes(daemon) - before
    status, error = status_and_error(reply)
    seen = f"after {sent} bytes sent the daemon answered {reply[:120]!r} and had grown by {grown} bytes"
    assert (status, error.get("code")) == (413, "too_large"), seen
    assert "max_header_bytes" in error["message"] and b"connection: close" in reply
    # Refused while the attack was under way, not once it ended (on TCP: before any signature check).
    assert sent < 4 * MIB, seen
    assert grown < RSS_MARGIN_BYTES, seen


@pytest.mark.parametrize("over", ["unix", "tcp"])
def test_endless_trailers_are_refused_by_the_header_limit_and_nothing_is_kept(
    daemon: Daemon, over: str
) -> None:
    trailer = b"X-Pad: " + b"a" * 1000 + b"\r\n"
    assert_refused_early_and_nothing_kept(daemon, over, trailer * 64, b"\r\n")


@pytest.mark.parametrize("over", ["unix", "tcp"])
def test_an_endless_chunk_extension_is_refused_by_the_header_limit(daemon: Daemon, over: str) -> None:
    assert_refused_early_and_nothing_kept(
        daemon, over, b"a" * 65536, b"\r\n{}\r\n0\r\n\r\n", body_start=b"2;x="
    )


@pytest.mark.parametrize("over", ["unix", "tcp"])
def test_endless_one_byte_chunks_are_refused_by_their_framing(daemon: Daemon, over: str) -> None:
    # A body of a few bytes, each in its own chunk: the data stays small, the chunk-size lines do not.
    chunks = b"1;ext=padding-padding-padding-padding\r\n \r\n" * 1500
    assert_refused_early_and_nothing_kept(daemon, over, chunks, b"2\r\n{}\r\n0\r\n\r\n", body_start=b"")


def test_a_chunked_request_with_trailers_under_the_limit_is_served(daemon: Daemon) -> None:
    trailers = b"".join(b"X-T%d: %s\r\n" % (n, b"v" * 100) for n in range(20))  # ~2.2 KiB of 16 KiB
    body = b'{"greeting": "hi"}'
    with connect(daemon, "unix") as sock:
        sock.sendall(CHUNKED_HEAD + b"%x\r\n%s\r\n0\r\n%s\r\n" % (len(body), body, trailers))
        reply = b""
        while not reply.endswith(b"}}"):
            reply += sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b'{"ok":true,"result":{"greeting":"hi"}}')


# --- bad numbers ---------------------------------------------------------------------------

HUGE_ID = "99999999999999999999999"


def call(daemon: Daemon, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    with connect(daemon, "unix") as sock:
        sock.sendall(
            b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (method.encode(), path.encode(), len(body), body)
        )
        reply = b""
        while data := sock.recv(65536):
            reply += data
    status, _ = status_and_error(reply)
    return status, json.loads(reply.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/v1/tasks/{HUGE_ID}", b""),
        ("POST", f"/v1/tasks/{HUGE_ID}/stop", b""),
        ("GET", f"/v1/tasks/{HUGE_ID}/logs", b""),
        ("POST", "/v1/modules/tasks/show", b'{"id": %s}' % HUGE_ID.encode()),
    ],
)
def test_a_task_id_too_large_for_any_run_is_404_not_a_crash(
    daemon: Daemon, method: str, path: str, body: bytes
) -> None:
    status, reply = call(daemon, method, path, body)
    assert (status, reply["error"]["code"]) == (404, "not_found"), reply
    assert "OverflowError" not in daemon.log()


def strict_json(text: str | bytes) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are not numbers."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} in {text!r}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1e999999}',
        b'{"a": NaN}',
        b'{"a": -Infinity}',
        b'{"a": [1, {"b": 1.5e400}]}',
        b'{"a": ' + b"9" * 400 + b".0}",
    ],
)
def test_a_non_finite_number_in_a_body_is_refused_and_reaches_neither_reply_nor_audit(
    daemon: Daemon, body: bytes
) -> None:
    status, reply = call(daemon, "POST", "/v1/modules/demo/echo", body)
    assert (status, reply["error"]["code"]) == (400, "bad_params"), reply
    assert "finite numbers only" in reply["error"]["message"], reply
    for line in (daemon.dir / "state" / "audit.log").read_text().splitlines():
        strict_json(line)


@pytest.mark.parametrize("seconds", ["inf", "nan", "1e999", "-inf"])
def test_a_float_task_param_written_as_infinity_is_refused(daemon: Daemon, seconds: str) -> None:
    body = json.dumps({"type": "wait", "params": {"seconds": seconds}}).encode()
    status, reply = call(daemon, "POST", "/v1/tasks", body)
    assert (status, reply["error"]["code"]) == (400, "bad_params"), reply
