"""The HTTP limits, and who is on the other end of a connection.

``HttpLimits`` holds the ``[http]`` sizes and timeouts the connection
enforces (``reader.py`` and ``connection.py`` say how); the caps on connections are a
``ConnectionCounter``. The identity of a connection is taken once, when it
is made: the peer of a connection cannot change, so reading
``SO_PEERCRED`` (or the TLS certificate) per request would cost a syscall
for nothing.
"""

from __future__ import annotations

import asyncio
import select
from dataclasses import dataclass

from pymgr.auth.peercred import identity_from_peercred
from pymgr.core.identity import Identity
from pymgr.errors import MalformedRequest, TooLarge

__all__ = [
    "LINGER_S",
    "HttpLimits",
    "RequestTimeout",
    "check_content_length",
    "connection_identity",
    "peer_gone",
]

#: Seconds to drop input after a refusal before closing; Apache httpd's
#: lingering close waits 2 s (SECONDS_TO_LINGER) for the same reason.
LINGER_S = 2.0


class RequestTimeout(MalformedRequest):
    """The request did not arrive in time."""

    code = "timeout"
    http_status = 408


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The ``[http]`` limits a connection enforces."""

    max_request_line_bytes: int
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    #: Seconds the send buffer may stay full (the client not reading) before the connection is aborted.
    send_timeout_s: float = 30.0


def check_content_length(value: bytes, limit: int) -> None:
    """Refuse a declared body larger than ``limit`` before reading any of it."""
    if value.isdigit() and int(value) > limit:
        raise TooLarge(
            f"request body of {int(value)} bytes is larger than max_body_bytes={limit}",
            details={"limit": limit},
        )


def head_too_large(size: int, limit: int) -> TooLarge:
    """The refusal of a request head of ``size`` bytes so far, over ``limit`` (max_header_bytes)."""
    return TooLarge(
        f"request head is larger than max_header_bytes={limit} ({size} bytes so far)",
        details={"limit": limit},
    )


def framing_too_large(size: int, limit: int) -> TooLarge:
    """The refusal of a request whose head, chunk framing and trailers reach ``size`` bytes, over ``limit``."""
    return TooLarge(
        f"request head, chunk-size lines and trailers are larger than max_header_bytes={limit} "
        f"({size} bytes so far): a chunked body's framing and trailers count with the head",
        details={"limit": limit},
    )


def connection_identity(transport: asyncio.BaseTransport) -> Identity:
    """Peer credentials on a Unix socket; the address and any verified certificate on TCP."""
    identity = identity_from_peercred(transport.get_extra_info("socket"))
    if identity is not None:
        return identity
    peer = transport.get_extra_info("peername")
    where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
    return Identity(transport="tcp", peer=where, cert=_cert_cn(transport))


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


def peer_gone(transport: asyncio.BaseTransport) -> bool:
    """Whether the peer closed both ways (POLLHUP on a Unix socket; TCP tells only when a write fails)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))
