"""The HTTP floor: a bare ASGI app on uvicorn (httptools, uvloop) on a Unix socket.

    python bench/floor_asgi.py --uds PATH

It reads the JSON body and answers ``{"ok":true,"result":<the body>}``, the
same JSON pymgr's ``demo.echo`` returns, with uvicorn configured as pymgr
configures it (no access log, no server or date header, no lifespan). No
routing, no auth, no validation: what the HTTP stack itself costs.
The bench knows it is ready when the socket answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import uvicorn


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    params = json.loads(body) if body else {}
    reply = json.dumps({"ok": True, "result": params}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uds", required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        uds=args.uds,
        http="httptools",
        loop="uvloop",
        ws="none",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
