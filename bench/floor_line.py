"""The stack's floor: a bare asyncio protocol on uvloop, answering each request with one line.

    python bench/floor_line.py --uds PATH --port 0

Two listeners, one per pattern the bench measures:
- the Unix socket answers every read with one fixed HTTP/1.1 reply carrying
  pymgr's ``demo.echo`` JSON (keep-alive: the persistent-connection floor);
- the TCP port answers a ``key:value`` request, once its blank line has
  arrived, with one JSON line in the legacy reply's shape, then closes (the
  new-connection floor).

No parsing, no routing: the bench's clients send one small request per write
and wait for its reply, so one read is one request. This is what the event
loop and the kernel cost, and nothing else; no server can go below it.
Prints ``listening PORT`` on stdout once both listeners accept connections.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import uvloop

HTTP_BODY = b'{"ok":true,"result":{"greeting":"hi"}}'
HTTP_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(HTTP_BODY)).encode()
    + b"\r\n\r\n"
    + HTTP_BODY
)
LINE_REPLY = b'{"success": true, "msg": {"greeting": "hi"}}'


class HttpFloor(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(HTTP_REPLY)


class LineFloor(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\n\n" in self.buffer:
            self.transport.write(LINE_REPLY)
            self.transport.close()


async def _serve(uds: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    unix = await loop.create_unix_server(HttpFloor, uds)
    tcp = await loop.create_server(LineFloor, host, port)
    print(f"listening {tcp.sockets[0].getsockname()[1]}", flush=True)
    async with unix, tcp:
        await asyncio.gather(unix.serve_forever(), tcp.serve_forever())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uds", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.uds, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
