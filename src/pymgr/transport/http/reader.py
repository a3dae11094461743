"""Bytes in, requests out: httptools parses, this counts every byte against the limits and checks each head.

Rules:
- Sizes (413): the request target by ``max_request_line_bytes``; the head
  by ``max_header_bytes``, counted as bytes arrive while it is incomplete.
  After the head, every byte that is not body data (a chunked body's
  chunk-size lines, extensions, line ends and trailers) counts with the
  head against ``max_header_bytes``, body data against ``max_body_bytes``:
  no sequence of bytes makes a request hold more than the two limits and
  the read being counted. Bytes after the head are counted per read, so a
  refusal of framing comes at most one read late (the connection feeds
  reads of at most ``FEED_SLICE_BYTES``); trailers are also counted exactly
  as they are parsed, as the head's fields are.
- The body is read whole before the request is handed on: a declared
  ``Content-Length`` over ``max_body_bytes`` is refused (413) before any of
  it is read, a chunked body as soon as it passes the limit.
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
- A refusal is raised from ``feed`` as the ``PymgrError`` to answer with;
  the connection replies and stops reading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import unquote

import httptools

from pymgr.auth.guard import identity_key
from pymgr.core.identity import Identity
from pymgr.errors import MalformedRequest, PymgrError, TooLarge
from pymgr.transport.http.limits import (
    HttpLimits,
    check_content_length,
    framing_too_large,
    head_too_large,
)
from pymgr.transport.http.messages import Request, header

__all__ = ["BODY", "DONE", "HEAD", "RequestReader"]

log = logging.getLogger("pymgr.http")

# What the reader is in the middle of: a head, a body, or between requests (the last one complete).
HEAD, BODY, DONE = "head", "body", "done"


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


class RequestReader:
    """Parses one connection's requests and bounds what each holds (see the module docstring).

    ``on_head`` is called with a request's fields once its head is accepted,
    before its body is read; ``on_request`` with each complete request and
    whether the client keeps the connection after it.
    """

    def __init__(
        self,
        limits: HttpLimits,
        max_body_bytes: int,
        identity: Identity,
        on_head: Callable[[list[tuple[bytes, bytes]]], None],
        on_request: Callable[[Request, bool], None],
    ) -> None:
        self._limits = limits
        self._max_body_bytes = max_body_bytes
        self._identity = identity
        self._on_head = on_head
        self._on_request = on_request
        self._parser = httptools.HttpRequestParser(self)
        self.stage = HEAD
        # The request being parsed: its target, head fields and body.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self._head_bytes = 0  # read while the head is incomplete
        self._after_head = 0  # read after the head: all but the body's data is framing or trailers
        self._trailer_bytes = 0  # the head's fields and the trailers so far, once a trailer arrives
        self._hosts = 0  # Host fields in the head
        self._codings = 0  # Transfer-Encoding fields in the head
        self._http10 = False  # known once the head is
        self._chunk = 0  # the size of the read being parsed, as far as it is counted

    def expect_head(self) -> None:
        """Bytes arrive between requests: they count against the next head from here."""
        self.stage = HEAD

    def fields_size(self) -> int:
        """The head's size as counted against max_header_bytes: the target, and each field with its ": " and CRLF."""
        return len(self._url) + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def feed(self, data: bytes) -> None:
        """Parse one read (the connection slices large ones), counting it against the limits.

        Raises:
            PymgrError: the refusal to answer with (413, 431 or 400); nothing more may be fed.
        """
        self._chunk = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # No switch is offered: answered as plain HTTP; httptools stopped at the upgrade, so the
            # rest of this read (the next request) is fed again (the parser goes on as HTTP).
            if exc.args and exc.args[0] < len(data):
                self.feed(data[exc.args[0] :])
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, PymgrError):  # raised by a callback below
                raise exc.__context__ from None
            log.warning("invalid HTTP from %s: %s", identity_key(self._identity), exc)
            raise MalformedRequest(f"invalid HTTP request: {exc}") from None
        max_header_bytes = self._limits.max_header_bytes
        if self.stage is HEAD:
            self._head_bytes += self._chunk
            if self._head_bytes > max_header_bytes:
                raise head_too_large(self._head_bytes, max_header_bytes)
        elif self.stage is BODY:
            self._after_head += self._chunk
            # Data in the read that ended the head is subtracted but was never added: this counts less than
            # was sent, never more. The head is counted as on_headers_complete counts it.
            framing = self._after_head - self.body_size
            if framing > 0 and framing + self.fields_size() > max_header_bytes:
                raise framing_too_large(framing + self.fields_size(), max_header_bytes)

    # --- parser callbacks (httptools): a PymgrError raised here is the refusal --------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self.body_parts = []
        self.body_size = self._trailer_bytes = self._hosts = self._codings = 0
        if self.stage is not HEAD:  # the next pipelined request: its head starts here
            self.stage = HEAD
            self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.stage is BODY:  # a trailer: counted, never kept (module docstring)
            self._count_trailer(len(name) + len(value) + 4)
            return
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"transfer-encoding":
            self._codings += 1
            if self._codings > 1 or value.strip().lower() != b"chunked":
                raise _bad_coding(value)
        self._headers.append((name, value))

    def _count_trailer(self, size: int) -> None:
        if not self._trailer_bytes:
            self._trailer_bytes = self.fields_size()
        self._trailer_bytes += size
        if self._trailer_bytes > self._limits.max_header_bytes:
            raise framing_too_large(self._trailer_bytes, self._limits.max_header_bytes)

    def on_headers_complete(self) -> None:
        self._check_sizes()
        self._check_framing()
        self.stage = BODY
        self._after_head = self._chunk = 0  # the rest of this read is not counted (one read at most)
        self._on_head(self._headers)

    def _check_sizes(self) -> None:
        limits = self._limits
        # This read held the end of the head: count it exactly only if it could be too large.
        if self._head_bytes + self._chunk > limits.max_header_bytes:
            size = self.fields_size()
            if size > limits.max_header_bytes:
                raise head_too_large(size, limits.max_header_bytes)
        if len(self._url) > limits.max_request_line_bytes:
            raise TooLarge(
                f"request target is longer than max_request_line_bytes={limits.max_request_line_bytes}",
                details={"limit": limits.max_request_line_bytes},
            )

    def _check_framing(self) -> None:
        """The version, Host and how the body is framed (module docstring)."""
        version = self._parser.get_http_version()
        if version != "1.1" and version != "1.0":  # llhttp also takes 0.9, 2.0 and others in HTTP/1 syntax
            raise MalformedRequest(f"HTTP/{version} is not spoken here: send HTTP/1.1 (or HTTP/1.0)")
        self._http10 = version == "1.0"
        if self._hosts != 1 and (self._hosts or not self._http10):
            raise _bad_host(self._hosts)
        if self._codings and self._http10:  # RFC 9112 6.1: its framing is faulty, whatever else it says
            raise MalformedRequest(
                "an HTTP/1.0 request cannot be chunked: send a Content-Length, or HTTP/1.1"
            )
        length = header(self._headers, b"content-length")
        if length is not None:
            check_content_length(length, self._max_body_bytes)
        if self._parser.should_upgrade() and (
            length not in (None, b"0") or header(self._headers, b"transfer-encoding")
        ):
            # httptools skips the body of an Upgrade request: it would be parsed as the next request.
            raise MalformedRequest(
                "a request with Upgrade cannot carry a body: upgrades are not offered "
                "here; send it without the Upgrade and Connection: upgrade headers"
            )

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self._max_body_bytes:
            limit = self._max_body_bytes
            raise TooLarge(f"request body is larger than max_body_bytes={limit}", details={"limit": limit})
        self.body_parts.append(body)

    def on_message_complete(self) -> None:
        url = self._url
        raw_path, _, query = url.partition(b"?")
        if not raw_path.startswith(b"/"):  # absolute-form ("http://host/path") or "*"
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:  # escapes are UTF-8 (RFC 3986), as every client sends them; bad ones become U+FFFD
            path = unquote(path)
        parts = self.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        method = self._parser.get_method().decode("ascii")
        request = Request(method, path, raw_path, query, self._headers, body, self._identity, self._http10)
        self.stage = DONE
        self._head_bytes = 0
        self._chunk = 0  # what follows in this read is the next head: count from here (one read at most)
        self._on_request(request, self._parser.should_keep_alive())
