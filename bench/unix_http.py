"""A minimal HTTP/1.1 client over a Unix socket (or TCP) for the benches: no library, so its own cost stays small.

Rules:
- One ``Conn`` is one keep-alive connection; its requests go in sequence, each with its ``host`` and
  ``headers`` (the console checks the Host and wants its session cookie).
- Replies are read by ``content-length``; the event stream by its chunks.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


class Conn:
    """One keep-alive connection; requests in sequence."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str = "pymgr",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.head = f"host: {host}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())

    @classmethod
    async def open(cls, path: str) -> Conn:
        return cls(*await asyncio.open_unix_connection(path))

    @classmethod
    async def open_tcp(cls, host: str, port: int, headers: dict[str, str] | None = None) -> Conn:
        return cls(*await asyncio.open_connection(host, port), host=f"{host}:{port}", headers=headers)

    async def request(
        self, method: str, target: str, body: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        status, _, data = await self.request_with_headers(method, target, body)
        return status, data

    async def request_with_headers(
        self, method: str, target: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {target} HTTP/1.1\r\n{self.head}content-length: {len(data)}\r\n"
        self.writer.write(
            head.encode() + (b"content-type: application/json\r\n" if data else b"") + b"\r\n" + data
        )
        status, headers = await read_head(self.reader)
        return status, headers, await self.reader.readexactly(int(headers.get("content-length", "0")))

    def close(self) -> None:
        self.writer.close()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def events(path: str, seen: dict[int, float], ready: asyncio.Event) -> None:
    """Read GET /v1/events (chunked), noting when each run was first seen running."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /v1/events HTTP/1.1\r\nhost: pymgr\r\n\r\n")
    await read_head(reader)
    buffer = b""
    try:
        while size := int((await reader.readline()).strip() or b"0", 16):
            buffer += await reader.readexactly(size + 2)
            *blocks, buffer = buffer.replace(b"\r\n", b"").split(b"\n\n")
            for block in blocks:
                ready.set()
                if b"event: state" in block and b'"state":"running"' in block:
                    data = json.loads(block.split(b"data: ", 1)[1])
                    seen.setdefault(data["id"], time.perf_counter())
    finally:
        writer.close()
