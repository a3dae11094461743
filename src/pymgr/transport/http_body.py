"""Reading a request body under a size limit, shared by the app and the security guard.

The limit is enforced while reading, chunk by chunk, so a client that
lies about (or omits) ``Content-Length`` still costs at most ``limit``
bytes of memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pymgr.errors import MalformedRequest, TooLarge

Receive = Callable[[], Awaitable[dict[str, Any]]]


def check_content_length(value: bytes, limit: int) -> None:
    """Refuse a declared body larger than ``limit`` before reading any of it."""
    if value.isdigit() and int(value) > limit:
        raise TooLarge(f"request body of {int(value)} bytes is larger than max_body_bytes={limit}",
                       details={"limit": limit})


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body of an ASGI request.

    Raises:
        TooLarge: more than ``limit`` bytes arrived.
        MalformedRequest: the client left before the body was complete.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise MalformedRequest("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is larger than max_body_bytes={limit}", details={"limit": limit})
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
