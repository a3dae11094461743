"""Raw HTTP/1.1 bytes for the transport tests: a request head, and one reply read back."""

from __future__ import annotations

import asyncio


def get(path: str, extra: bytes = b"", method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    """A request head (no body) for ``path``, with ``extra`` header lines."""
    return method + b" " + path.encode() + b" " + version + b"\r\nHost: x\r\n" + extra + b"\r\n"


async def read_reply(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One reply framed by ``content-length``: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)
