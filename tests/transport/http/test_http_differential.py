"""Differential fuzzing of the HTTP connection, with h11 as the oracle.

Hypothesis builds byte streams of one or more requests (pipelined): request
lines with odd methods, targets and versions; folded, duplicate, spaced and
NUL-bearing header lines; bare LF line ends; Content-Length and chunked
bodies with extensions, wrong sizes and trailers; the stream then split at
random points into reads. The same reads go to pymgr's connection (the real
``HttpConnection`` protocol object on a fake transport, in this process) and
to ``h11.Connection``. The properties:

- pymgr never accepts a request that h11 refuses or has not seen complete
  (pymgr may refuse more: it is stricter on sizes, and where listed below);
  every request pymgr accepts agrees with h11's on method, target and body
  bytes, and where neither refuses they accept the same number of requests;
- after every read, what pymgr holds for the requests it parses or queues
  stays within ``max_header_bytes`` (plus the read that is being counted)
  and ``max_body_bytes`` per request, and it never keeps trailers.

Where pymgr is knowingly stricter than h11 (h11 accepting and pymgr
refusing is allowed): sizes (h11 gets a large buffer, so size refusals are
pymgr's alone), what llhttp refuses that h11 lets through (obs-fold,
lower-case methods, bytes after a ``Connection: close`` request), and a
chunked HTTP/1.0 request (RFC 9112 6.1 calls its framing faulty). Where
the two differ and both are right: pymgr reads a request line split by
more than one space or a tab (RFC 9112 3 lets a recipient split it on any
whitespace; nothing behind pymgr parses it again: the oracle is given the
stream with such lines single-spaced), and ignores empty lines before a
request line (RFC 9112 2.2; the oracle skips them), and hands on an
absolute-form target, or "/a?", as its path and query. h11 does not keep
an HTTP/1.0 connection alive; pymgr does when asked: requests after that
point are compared with nothing. The fuzzer found three real
disagreements, each fixed in pymgr: a missing or doubled Host, "HTTP/2.0"
parsed as HTTP/1, and "Transfer-Encoding: gzip, chunked" taken as chunked
(tests/transport/http/test_http_hostile.py has each as a plain test).

A bounded run is part of ``make test``. A longer run:
``PYMGR_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/transport/http/test_http_differential.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.connection import FEED_SLICE_BYTES, MAX_PIPELINED, HttpConnection
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.messages import Reply, Request
from pymgr.transport.http.state import ServerState

MAX_HEADER = 600
MAX_BODY = 400
LIMITS = HttpLimits(
    max_request_line_bytes=200, max_header_bytes=MAX_HEADER, header_timeout_s=60, body_timeout_s=60
)
EXAMPLES = int(os.environ.get("PYMGR_FUZZ_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")

#: A request as both sides see it: method, target, body.
Seen = tuple[bytes, bytes, bytes]


# --- pymgr's side: the real protocol object on a transport that only records -----------


class FakeTransport(asyncio.Transport):
    def __init__(self, protocol: HttpConnection) -> None:
        super().__init__()
        self.protocol = protocol
        self.out = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data: Any) -> None:
        self.out += data

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@dataclass
class PymgrOutcome:
    seen: list[Seen] = field(default_factory=list)
    #: What each request handed over held: its head's fields (trailers would be there), its body.
    sizes: list[tuple[int, int]] = field(default_factory=list)
    refused: bool = False
    closed: bool = False


def held_within_limits(conn: HttpConnection) -> None:
    """What the connection holds for the request it parses and the ones it queued, against the limits."""
    # The request being parsed: its head is counted per read while incomplete (one read, a slice at most, late).
    assert conn._reader.fields_size() <= MAX_HEADER + FEED_SLICE_BYTES
    assert conn._reader.body_size <= MAX_BODY and sum(map(len, conn._reader.body_parts)) <= MAX_BODY
    # Parsed and waiting: a slice of tiny pipelined requests at most past MAX_PIPELINED (http/connection.py).
    assert len(conn._queue) <= MAX_PIPELINED + FEED_SLICE_BYTES // 16
    for request, _ in conn._queue:
        assert request_fields(request) <= MAX_HEADER and len(request.body) <= MAX_BODY


def request_fields(request: Request) -> int:
    """A request's head as max_header_bytes counts it: the target, each field with its ": " and CRLF."""
    target = request.raw_path + (b"?" + request.query if request.query else b"")
    return len(target) + sum(len(name) + len(value) + 4 for name, value in request.headers)


async def settle(conn: HttpConnection) -> None:
    """Let the replies under way go out (the handler answers at once)."""
    for _ in range(100):
        if conn._task is None and not conn._queue:
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0)


async def run_pymgr(reads: list[bytes]) -> PymgrOutcome:
    outcome = PymgrOutcome()

    async def handler(request: Request) -> Reply:
        target = request.raw_path + (b"?" + request.query if request.query else b"")
        outcome.seen.append((request.method.encode(), target, request.body))
        outcome.sizes.append((request_fields(request), len(request.body)))
        return Reply(200, b"{}")

    loop = asyncio.get_running_loop()
    state = ServerState(handler, LIMITS, ConnectionCounter(10, 10), MAX_BODY, 60.0, loop)
    conn = HttpConnection(state, "fuzz")
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    for data in reads:
        if not transport.reading:  # as a real transport: no read while reading is paused (the queue is full)
            await settle(conn)
        if transport.closed:
            break
        conn.data_received(data)
        held_within_limits(conn)
    await settle(conn)
    statuses = [int(s) for s in _STATUS.findall(bytes(transport.out)) if s != b"100"]
    outcome.refused = any(status >= 400 for status in statuses)
    outcome.closed = transport.closed
    if not transport.closed:
        transport.close()
    return outcome


# --- the oracle --------------------------------------------------------------------


@dataclass
class OracleOutcome:
    seen: list[Seen] = field(default_factory=list)
    state: str = "open"  # "open" (waits for more), "closed" (by the protocol's rules), "refused"


def as_pymgr_reads(target: bytes) -> bytes:
    """A target as pymgr hands it on: absolute-form as its path and query; "/a?" as "/a" (no query either way)."""
    if target.startswith(b"/"):
        return target.removesuffix(b"?")
    split = urlsplit(target)
    return (split.path or b"/") + (b"?" + split.query if split.query else b"")


def run_h11(stream: bytes) -> OracleOutcome:
    """h11's reading of ``stream`` (it reads a buffer: where the reads split makes no difference)."""
    outcome = OracleOutcome()
    rest = single_spaced(stream)
    try:
        while True:  # one h11 connection per request: each starts on the bytes the last one left
            # RFC 9112 2.2: a server ignores empty lines before a request line (llhttp does); h11 refuses them.
            request = _h11_request(rest.lstrip(b"\r\n"))
            if request is None:
                return outcome
            seen, conn = request
            outcome.seen.append(seen)
            if conn.our_state is h11.MUST_CLOSE:
                outcome.state = "closed"
                return outcome
            rest = conn.trailing_data[0]
    except h11.RemoteProtocolError:
        outcome.state = "refused"
    return outcome


def _h11_request(data: bytes) -> tuple[Seen, h11.Connection] | None:
    """The first request in ``data``, answered, and the connection (None: it is not complete)."""
    # Sizes are pymgr's to refuse: h11 gets room enough to judge only the syntax.
    if not data:
        return None  # (receive_data(b"") would mean the peer closed)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    current: list[bytes] = []
    while (event := conn.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Request):
            current = [event.method, as_pymgr_reads(event.target), b""]
        elif isinstance(event, h11.Data):
            current[2] += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
            conn.send(h11.EndOfMessage())
            return (current[0], current[1], current[2]), conn
    return None


# --- the generator ---------------------------------------------------------------------
# Mostly well-formed parts, one odd part now and then: a stream of nothing but odd parts is refused at its
# first byte by both sides and tests little.


def mostly(usual: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """One of ``usual``, or one in twenty times one of ``odd``."""
    return st.integers(0, 19).flatmap(lambda n: st.sampled_from(odd if n == 0 else usual))


EOL = mostly([b"\r\n"], [b"\n", b"\r", b"\n\r"])
METHODS = mostly(
    [b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH"], [b"get", b"G ET", b"PO\x00ST", b""]
)
TARGETS = mostly(
    [b"/", b"/v1/health", b"/a?b=c", b"/a?", b"/%41%2f", b"//x"],
    [b"/a b", b"/\x7f", b"/a#f", b"", b"*", b"http://x/a", b"/" + b"p" * 250],
)
VERSIONS = mostly(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1"]
)
SPACE = mostly([b" "], [b"  ", b"\t"])
NAMES = mostly(
    [b"X-A", b"x-b", b"Accept", b"User-Agent", b"Content-Type"],
    [b"X A", b"X-A ", b" X-A", b"X\x00A", b"X:A", b""],
)
VALUES = mostly(
    [b"x", b"", b"a,b", b"application/json", b"v" * 120], [b" spaced ", b"a\x00b", b"\xff", b"a\tb", b"a\rb"]
)
#: Fields that change how a message is framed or kept: each in its own example now and then.
FRAMING_FIELDS = st.sampled_from(
    [
        b"Content-Length: 5",
        b"Content-Length: +5",
        b"Content-Length: 05",
        b"Content-Length: 5, 5",
        b"Content-Length: -1",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked, gzip",
        b"Transfer-Encoding: identity",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Connection: upgrade",
        b"Upgrade: websocket",
        b"Expect: 100-continue",
        b"Trailer: X-T",
        b"Host: y",
    ]
)


@st.composite
def header_lines(draw: Any) -> bytes:
    lines = []
    for name, value, eol in draw(st.lists(st.tuples(NAMES, VALUES, EOL), max_size=5)):
        lines.append(name + b":" + draw(mostly([b" ", b""], [b"  ", b"\t"])) + value + eol)
        if draw(st.integers(0, 15)) == 0:  # obs-fold: a continuation line
            lines.append(b" folded" + eol)
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(FRAMING_FIELDS) + draw(EOL))
    return b"".join(lines)


@st.composite
def chunked_body(draw: Any) -> bytes:
    parts = []
    chunk = st.tuples(
        st.binary(min_size=1, max_size=40),
        mostly([0], [-1, 1]),
        mostly([b""], [b";a=b", b';a="q"', b";", b" ;a", b";a=" + b"e" * 200]),
    )
    for data, skew, ext in draw(st.lists(chunk, max_size=4)):
        size = b"%x" % max(len(data) + skew, 0)
        parts.append(
            draw(mostly([size, size.upper()], [b"0" + size, b"+" + size]))
            + ext
            + draw(EOL)
            + data
            + draw(EOL)
        )
    parts.append(b"0" + draw(mostly([b""], [b";a=b"])) + draw(EOL))
    for name, value in draw(st.lists(st.tuples(NAMES, VALUES), max_size=3)):  # trailers
        parts.append(name + b": " + value + draw(EOL))
    if draw(st.integers(0, 5)) == 0:
        parts.append(b"X-Long: " + b"t" * 700 + b"\r\n")
    parts.append(draw(EOL))
    return b"".join(parts)


@st.composite
def message(draw: Any) -> bytes:
    line = draw(METHODS) + draw(SPACE) + draw(TARGETS) + draw(SPACE) + draw(VERSIONS) + draw(EOL)
    host = draw(mostly([b"Host: x\r\n"], [b"", b"Host: x\r\nHost: y\r\n"]))
    kind = draw(st.sampled_from(["none", "length", "chunked", "chunked"]))
    framing, body = b"", b""
    if kind == "length":
        body = draw(st.binary(max_size=60))
        declared = len(body) + draw(mostly([0], [-1, 1, MAX_BODY]))
        framing = b"Content-Length: %d\r\n" % max(declared, 0)
    elif kind == "chunked":
        framing, body = b"Transfer-Encoding: chunked\r\n", draw(chunked_body())
    head = line + host + framing + draw(header_lines()) + draw(mostly([b"\r\n"], [b"\n"]))
    return head + body


@st.composite
def streams(draw: Any) -> list[bytes]:
    """One or more messages, maybe a byte changed, split into reads at random points."""
    data = b"".join(draw(st.lists(message(), min_size=1, max_size=4)))
    if data and draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(data) - 1))
        data = (
            data[:at]
            + draw(st.sampled_from([b"\r", b"\n", b" ", b"\x00", b":", b"0", b"\r\n\r\n"]))
            + data[at + 1 :]
        )
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(data) - 1, 1)), max_size=6))))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)]) if data[start:end]]


# --- the property ------------------------------------------------------------------------


def compare(runner: asyncio.Runner, reads: list[bytes]) -> tuple[PymgrOutcome, OracleOutcome]:
    ours = runner.run(run_pymgr(reads))
    stream = b"".join(reads)
    oracle = run_h11(stream)
    assert all(head <= MAX_HEADER and body <= MAX_BODY for head, body in ours.sizes), (
        f"{ours.sizes} for {stream!r}"
    )
    for index, request in enumerate(ours.seen):
        if index < len(oracle.seen):
            assert request == oracle.seen[index], f"request {index} differs from h11's in {stream!r}"
        else:  # only once h11 closed by its own rules (an HTTP/1.0 keep-alive), never past a refusal
            assert oracle.state == "closed", (
                f"pymgr accepted request {index}, h11 {oracle.state} in {stream!r}"
            )
    if oracle.state == "refused":
        assert ours.refused, f"h11 refused, pymgr did not, in {stream!r}"
    elif not ours.refused:
        fewer = len(ours.seen) < len(oracle.seen)
        assert not fewer and (oracle.state == "closed" or len(ours.seen) == len(oracle.seen)), (
            f"{len(ours.seen)} requests, h11 {len(oracle.seen)}, in {stream!r}"
        )
    return ours, oracle


#: A request line whose parts are apart by more than one space, or by a tab; anywhere, as a request may
#: follow a body on the same line.
_SPACED_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+([^ \t\r\n]+)[ \t]+(HTTP/[0-9.]+\r?\n)")


def single_spaced(stream: bytes) -> bytes:
    """``stream`` with its request lines split by single spaces: RFC 9112 3 lets a recipient (pymgr) split a
    request line on any run of whitespace, which h11 does not."""
    return _SPACED_LINE.sub(rb"\1 \2 \3", stream)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as it:
        yield it


@SETTINGS
@given(reads=streams())
def test_pymgr_never_accepts_what_h11_refuses_and_holds_no_more_than_its_limits(
    runner: asyncio.Runner, reads: list[bytes]
) -> None:
    compare(runner, reads)
