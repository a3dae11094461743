"""What the HTTP connection hands a handler, and what a handler hands back.

Rules:
- A ``Request`` arrives whole: its body has been read (bounded by
  ``max_body_bytes``) before any handler runs, because every route of the
  API takes a small JSON body and needs all of it (to parse it, or to hash
  it for a signature).
- A handler returns a ``Reply`` (status, body, extra headers), sent in one
  write with its ``content-length``, or a ``Stream``, sent chunked as it is
  produced. Handlers never touch the connection.
- Header names are lower-cased bytes, values bytes, in the order sent.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from pymgr.core.identity import Identity
from pymgr.errors import PymgrError, RateLimited

__all__ = ["Handler", "Reply", "Request", "Stream", "encode_reply", "error_reply", "render_head"]

REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
#: Status lines rendered once: a reply's head is then a few concatenations.
_STATUS_LINES = {status: f"HTTP/1.1 {status} {reason}\r\n".encode() for status, reason in REASONS.items()}
JSON = b"application/json"


@dataclass(slots=True)
class Request:
    """One HTTP request, body included."""

    method: str
    #: Percent-decoded path, without the query.
    path: str
    #: The path as sent (what a signature covers).
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    #: Who is calling: peer credentials on a Unix socket, the address (and
    #: certificate) on TCP until a signature names a key.
    identity: Identity
    #: An HTTP/1.0 request: its reply may not be chunked (a stream ends by closing the connection).
    http10: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """A whole reply: sent in one write."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    content_type: bytes = JSON


@dataclass(frozen=True, slots=True)
class Stream:
    """A reply sent in chunks as ``chunks`` produces them (status 200)."""

    content_type: bytes
    chunks: AsyncIterator[bytes]
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable["Reply | Stream"]]


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Error\r\n".encode()


def render_head(
    status: int, headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]], tail: bytes
) -> bytes:
    """Status line, ``headers``, then ``tail`` (the framing headers and the blank line)."""
    parts = [status_line(status)]
    for name, value in headers:
        parts.append(name + b": " + value + b"\r\n")
    parts.append(tail)
    return b"".join(parts)


def encode_reply(reply: Reply, head_only: bool, connection: bytes) -> bytes:
    """A whole reply's bytes: head (with ``connection``, a header line or nothing) and, unless ``head_only``, body."""
    head = render_head(
        reply.status,
        reply.headers,
        b"content-type: "
        + reply.content_type
        + b"\r\ncontent-length: "
        + str(len(reply.body)).encode()
        + b"\r\n"
        + connection
        + b"\r\n",
    )
    return head if head_only else head + reply.body


def error_reply(error: PymgrError, *headers: tuple[bytes, bytes]) -> Reply:
    """The JSON envelope of ``error``, with ``Retry-After`` when the error carries one."""
    body = json.dumps(
        {"ok": False, "error": error.to_dict()}, separators=(",", ":"), ensure_ascii=False
    ).encode()
    extra: tuple[tuple[bytes, bytes], ...] = headers
    if isinstance(error, RateLimited) and error.details and "retry_after_s" in error.details:
        extra = (*extra, (b"retry-after", str(error.details["retry_after_s"]).encode()))
    return Reply(error.http_status, body, extra)


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
