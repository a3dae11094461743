"""HTTP limits below the ASGI app: connection caps, head sizes, read timeouts.

uvicorn's httptools protocol has no head size limit (httptools buffers a
header of any length) and no timeout before a request's first byte or while
a body arrives. This subclass of the peer-credentials protocol adds them, per
connection, on the event loop (no thread, no task per connection):

- Caps: ``max_connections`` per listener (503) and
  ``max_connections_per_identity`` across listeners (429, keyed by uid on the
  Unix socket, by certificate or client address on TCP), checked when the
  connection is made.
- Sizes: the head by ``max_header_bytes`` and the request target by
  ``max_request_line_bytes`` (413). Bytes are counted as they arrive while a
  head is incomplete, so a client that never ends its head is cut off after
  at most one read past the limit; a head that completes is measured
  exactly (target plus each header's name, value and 4 bytes of ": " and
  CRLF) when the bytes received could pass the limit.
- Timeouts (408): ``header_timeout_s`` from connect, or from the first read
  of a request that does not hold its whole head, until the head is
  complete; ``body_timeout_s`` from the first read that leaves the body
  incomplete until it is complete. A request that arrives in one read (the
  usual case) arms no timer at all. Between requests, uvicorn's keep-alive
  timeout applies.
- A refusal is one JSON error reply with ``connection: close``; then the
  server half-closes and drops what the client still sends for up to
  ``LINGER_S`` before closing (closing with unread input makes the kernel
  send a reset, which can destroy the reply before the client reads it).
  The same happens when the app answered before reading the whole body
  (413 for a huge ``Content-Length``): the rest is never parsed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

import httptools

from pymgr.auth.guard import identity_key
from pymgr.errors import MalformedRequest, PymgrError, RateLimited, TooLarge, Unavailable
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.peercred import PeerCredHttpToolsProtocol

__all__ = ["LINGER_S", "HttpLimits", "RequestTimeout", "limited_protocol"]

log = logging.getLogger("pymgr.http")

#: Seconds to drop input after a refusal before closing; Apache httpd's
#: lingering close waits 2 s (SECONDS_TO_LINGER) for the same reason.
LINGER_S = 2.0


class RequestTimeout(MalformedRequest):
    """The request did not arrive in time."""

    code = "timeout"
    http_status = 408


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The ``[http]`` limits this protocol enforces."""

    max_request_line_bytes: int
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float


class _LimitExceeded(Exception):
    """Raised inside a parser callback to stop parsing; carries the reply."""

    def __init__(self, error: PymgrError) -> None:
        super().__init__(error.message)
        self.error = error


def _reply_bytes(error: PymgrError, retry_after_s: int | None = None) -> bytes:
    body = json.dumps({"ok": False, "error": error.to_dict()}, separators=(",", ":")).encode()
    status = error.http_status
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after_s is not None:
        lines.append(f"retry-after: {retry_after_s}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 429: "Too Many Requests",
            503: "Service Unavailable"}


def _cert_cn(transport: asyncio.BaseTransport) -> str | None:
    """The common name of a verified TLS client certificate, if any."""
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class LimitedHttpToolsProtocol(PeerCredHttpToolsProtocol):
    """PeerCredHttpToolsProtocol with caps, size limits and read timeouts.

    ``limits`` and ``counter`` are class attributes, set by ``limited_protocol``
    (uvicorn creates protocols from a class with a fixed signature).
    """

    limits: HttpLimits
    counter: ConnectionCounter

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._chunk_bytes = 0
        self._in_head = True
        self._body_pending = False
        self._closing = False  # refused or draining: nothing more is parsed
        self._counted: tuple[str, str] | None = None

    # --- connection --------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cn = _cert_cn(transport)
        if cn is not None and self._identity is not None:
            self._identity = replace(self._identity, cert=cn)
        listener = str(transport.get_extra_info("sockname"))
        caller = identity_key(self._identity) if self._identity is not None else "?"
        refused = self.counter.open(listener, caller)
        if refused == "listener":
            log.warning("connection from %s refused: listener %s has max_connections=%d open", caller, listener,
                        self.counter.max_per_listener)
            error: PymgrError = Unavailable(
                f"too many connections: this listener serves at most max_connections={self.counter.max_per_listener}"
            )
            self._refuse(error)
            return
        if refused == "caller":
            self._refuse(RateLimited(
                f"too many connections from {caller}: at most max_connections_per_identity="
                f"{self.counter.max_per_caller}; reuse a kept-alive connection"
            ), retry_after_s=1)
            return
        self._counted = (listener, caller)
        self._arm(self.limits.header_timeout_s, self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._counted is not None:
            self.counter.close(*self._counted)
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # refused or draining: drop
        self._unset_keepalive_if_required()
        self._chunk_bytes = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            limit = exc.__context__
            if isinstance(limit, _LimitExceeded):
                self._refuse(limit.error)
            else:
                log.warning("invalid HTTP from %s: %s", self._who(), exc)
                self._refuse(MalformedRequest(f"invalid HTTP request: {exc}"))
            return
        if self._closing:
            return
        if self._in_head:
            # Timers are armed only for requests that do not arrive in one read.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(self._head_too_large(self._head_bytes))
            elif self._timer is None:
                self._arm(self.limits.header_timeout_s, self._on_head_timeout)
        elif self._body_pending and self._timer is None:
            self._arm(self.limits.body_timeout_s, self._on_body_timeout)

    # --- parser callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._body_pending = True
        if self._timer is not None:
            self._cancel_timer()
        # This read held the end of the head: the head is at most what came
        # before it plus this read; count exactly only if that could be too much.
        if self._head_bytes + self._chunk_bytes > self.limits.max_header_bytes:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.limits.max_header_bytes:
                raise _LimitExceeded(self._head_too_large(size))
        if len(self.url) > self.limits.max_request_line_bytes:
            raise _LimitExceeded(TooLarge(
                f"request target is longer than max_request_line_bytes={self.limits.max_request_line_bytes}",
                details={"limit": self.limits.max_request_line_bytes},
            ))
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_pending = False
        if self._timer is not None:
            self._cancel_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._body_pending and not self.transport.is_closing():
            # Answered before the body was read (413, 401): never parse the rest.
            self.server_state.total_requests += 1
            self._linger()
            return
        super().on_response_complete()

    # --- refusals ----------------------------------------------------------

    def _head_too_large(self, size: int) -> TooLarge:
        return TooLarge(
            f"request head is larger than max_header_bytes={self.limits.max_header_bytes} ({size} bytes so far)",
            details={"limit": self.limits.max_header_bytes},
        )

    def _on_head_timeout(self) -> None:
        self._timer = None
        log.info("closing connection from %s: request head not complete within %g s", self._who(),
                 self.limits.header_timeout_s)
        self._refuse(RequestTimeout(f"request head not complete within header_timeout_s={self.limits.header_timeout_s:g}"))

    def _on_body_timeout(self) -> None:
        self._timer = None
        log.info("closing connection from %s: request body not complete within %g s", self._who(),
                 self.limits.body_timeout_s)
        self._refuse(RequestTimeout(f"request body not complete within body_timeout_s={self.limits.body_timeout_s:g}"))

    def _refuse(self, error: PymgrError, retry_after_s: int | None = None) -> None:
        """Reply with ``error`` (unless a reply has started), then linger and close."""
        if self._closing or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app must not write after us: to it, the client is gone.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self._closing = True
                self.transport.close()
                return
        self.transport.write(_reply_bytes(error, retry_after_s))
        self._linger()

    def _linger(self) -> None:
        self._closing = True
        self._cancel_timer()
        self._unset_keepalive_if_required()
        transport = self.transport
        if not transport.can_write_eof():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:
            transport.abort()
            return
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, transport.close)

    def _arm(self, delay_s: float, callback: Any) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay_s, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _who(self) -> str:
        return identity_key(self._identity) if self._identity is not None else "?"


def limited_protocol(limits: HttpLimits, counter: ConnectionCounter) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for uvicorn (``http=``) bound to these limits and this counter."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits, "counter": counter})
