"""The requests the bench sends, as exact bytes, per server and pattern.

Rules:
- Every server gets the same kind of request for the same figure: an HTTP
  POST with the body ``{"greeting":"hi"}`` (pymgr's ``demo.echo``, the ASGI
  floor's echo), supervisord's XML-RPC ``supervisor.getState``, and the
  legacy ``key:value`` request for ``demo.echo`` signed with the demo's
  secret (pymgr's legacy listener, the seed, the line floor).
- A new-connection HTTP request says ``Connection: close``; a persistent one
  does not (HTTP/1.1 keeps the connection).
- Every target says what its reply must contain, so a fast error is never
  counted as a fast answer.
"""

from __future__ import annotations

import hashlib
import hmac

from bench.loadgen import Target
from bench.peers import xmlrpc_request
from bench.servers import Server

ECHO_BODY = b'{"greeting":"hi"}'
ECHO_REPLY = b'"greeting":"hi"'
LEGACY_OK = b'"success": true'
SUPERVISOR_OK = b"RUNNING"


def http_post(path: str, body: bytes, *, close: bool = False) -> bytes:
    """A POST as raw HTTP/1.1 bytes, JSON body."""
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST "
        + path.encode()
        + b" HTTP/1.1\r\nHost: pymgr\r\nContent-Type: application/json\r\n"
        + connection
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def http_get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: pymgr\r\n\r\n"


def legacy_request(secret: str, module: str = "demo", action: str = "echo", **params: str) -> bytes:
    """A signed legacy request: ``key:value`` lines, then a blank line."""
    signature = hmac.new(secret.encode(), module.encode(), hashlib.md5).hexdigest()
    lines = [f"module:{module}", f"action:{action}", f"signature:{signature}"]
    lines += [f"{key}:{value}" for key, value in (params or {"greeting": "hi"}).items()]
    return ("\n".join(lines) + "\n\n").encode()


def pymgr_targets(server: Server) -> dict[str, Target]:
    unix = server.info["unix"]
    targets = {
        "http": Target(
            "pymgr", unix, http_post("/v1/modules/demo/echo", ECHO_BODY), "http", True, ECHO_REPLY
        ),
        "http-newconn": Target(
            "pymgr",
            unix,
            http_post("/v1/modules/demo/echo", ECHO_BODY, close=True),
            "http",
            False,
            ECHO_REPLY,
        ),
    }
    if "legacy" in server.info:
        request = legacy_request(server.info["legacy_secret"])
        targets["legacy"] = Target("pymgr legacy", server.info["legacy"], request, "eof", False, LEGACY_OK)
    return targets


def supervisord_targets(server: Server) -> dict[str, Target]:
    unix = server.info["unix"]
    return {
        "http": Target(
            "supervisord", unix, xmlrpc_request("supervisor.getState"), "http", True, SUPERVISOR_OK
        ),
        "http-newconn": Target(
            "supervisord",
            unix,
            xmlrpc_request("supervisor.getState", close=True),
            "http",
            False,
            SUPERVISOR_OK,
        ),
    }


def seed_targets(server: Server, secret: str) -> dict[str, Target]:
    return {"legacy": Target("seed", server.info["tcp"], legacy_request(secret), "eof", False, LEGACY_OK)}


def floor_asgi_targets(server: Server) -> dict[str, Target]:
    unix = server.info["unix"]
    return {
        "http": Target("asgi floor", unix, http_post("/echo", ECHO_BODY), "http", True, ECHO_REPLY),
        "http-newconn": Target(
            "asgi floor", unix, http_post("/echo", ECHO_BODY, close=True), "http", False, ECHO_REPLY
        ),
    }


def floor_line_targets(server: Server, secret: str) -> dict[str, Target]:
    return {
        "http": Target(
            "line floor", server.info["unix"], http_post("/echo", ECHO_BODY), "http", True, ECHO_REPLY
        ),
        "legacy": Target("line floor", server.info["tcp"], legacy_request(secret), "eof", False, LEGACY_OK),
    }
