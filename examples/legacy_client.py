#!/usr/bin/env python3
"""A client of the legacy protocol, as the 2014 design's clients were written.

Usage (stdlib only; the defaults are the demo's listener and public secret):

    python3 examples/legacy_client.py SCAN_MODULE start task_ids=7,8
    python3 examples/legacy_client.py --host 127.0.0.1 --port 6667 --secret S MODULE ACTION [key=value ...]

Written from the wire spec (docs/protocol-legacy.md), independently of
``pymgr.protocol.legacy``, so tests check the server against the spec and
not against its own codec. Blocking sockets, like the old clients: call it
from a thread (``asyncio.to_thread``) when the server runs in this process.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import socket
from collections.abc import Mapping
from typing import Any

#: A test that waits longer than this for a reply has found a bug.
TIMEOUT_S = 10.0


def sign(secret: str, module: str) -> str:
    """Python 2's ``hmac.new(secret, module).hexdigest()``: MD5 was the default."""
    return hmac.new(secret.encode(), module.encode(), hashlib.md5).hexdigest()


def encode_request(
    module: str, action: str, signature: str, params: Mapping[str, object] | None = None
) -> bytes:
    """``module:X\\naction:Y\\nsignature:HEX\\nkey:value\\n\\n``."""
    lines = [f"module:{module}", f"action:{action}", f"signature:{signature}"]
    lines += [f"{key}:{value}" for key, value in (params or {}).items()]
    return ("\n".join(lines) + "\n\n").encode()


def exchange(
    host: str, port: int, data: bytes, *, half_close: bool = False, timeout_s: float = TIMEOUT_S
) -> bytes:
    """Send ``data``, then read until the server closes; the raw reply.

    ``half_close`` shuts our sending side after the data (EOF), as
    ``nc -N`` does.
    """
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def call(
    host: str, port: int, secret: str, module: str, action: str, params: Mapping[str, object] | None = None
) -> Any:
    """One signed request; the parsed ``{"success": ..., "msg": ...}`` reply."""
    raw = exchange(host, port, encode_request(module, action, sign(secret, module), params))
    return json.loads(raw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send one legacy-protocol request and print the reply.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6667)
    parser.add_argument(
        "--secret", default="YI-LUO-KEHAN", help="the shared secret (default: the demo's public one)"
    )
    parser.add_argument("module")
    parser.add_argument("action")
    parser.add_argument("params", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    params = dict(p.split("=", 1) for p in args.params if "=" in p)
    reply = call(args.host, args.port, args.secret, args.module, args.action, params)
    print(json.dumps(reply))
    return 0 if reply.get("success") else 1


if __name__ == "__main__":
    raise SystemExit(main())
