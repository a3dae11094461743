"""The native HTTP/JSON API as a plain ASGI application.

Rules:
- Every route that runs an action goes through the one ``Dispatcher``; the
  ``/v1/tasks`` routes are the ``tasks`` module's actions under REST paths,
  so policy and audit see task operations like any other call.
- Replies are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
  {...}}`` with the status the error class owns.
- The body is bounded before it is read (``Content-Length``) and while it is
  read (chunked), so a huge request costs the daemon nothing.

Why no framework: DESIGN.md measured a bare ASGI app at 33 µs of server CPU
per call and Starlette at ~51 µs on this stack; the routing here is a handful
of fixed paths, which a dict and one split do at no measurable cost.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import pydantic_core

from pymgr.core.dispatch import Call, Dispatcher
from pymgr.core.identity import Identity
from pymgr.errors import MalformedRequest, NotFound, PymgrError, PymgrInternalError
from pymgr.transport.http_stream import Stream, StreamSource, log_query, send_stream
from pymgr.transport.http_body import check_content_length, read_body
from pymgr.transport.peercred import IDENTITY_KEY

log = logging.getLogger("pymgr.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
#: Query parameters `GET /v1/tasks` understands; others are a client mistake.
_TASK_FILTERS = frozenset({"state", "type", "key"})


class MethodNotAllowed(PymgrError):
    code = "not_found"
    http_status = 405
    legacy_code = 1


def _encode(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    # pydantic-core's encoder: the same compact UTF-8 JSON as json.dumps(separators=(",", ":"),
    # ensure_ascii=False), 10x cheaper (0.4 µs, not 3.6 µs, for a small reply; docs/performance.md).
    return status, pydantic_core.to_json(body)


class HttpApp:
    """The ASGI app: routes, body limits, JSON envelopes."""

    def __init__(
        self, dispatcher: Dispatcher, *, max_body_bytes: int, version: str, streams: StreamSource | None = None
    ) -> None:
        self.dispatcher = dispatcher
        #: Task logs and events for the streaming routes (None: those routes are 404).
        self.streams = streams
        self.max_body_bytes = max_body_bytes
        self.version = version
        self.started_at = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets are not served
            return
        try:
            status, result = await self._route(scope, receive)
            if isinstance(result, Stream):  # logs and events: sent as they are produced
                await send_stream(status, result, receive, send)
                return
            reply = _encode(status, {"ok": True, "result": result})
        except PymgrError as exc:
            reply = _encode(exc.http_status, {"ok": False, "error": exc.to_dict()})
        except Exception:
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            exc = PymgrInternalError(f"unhandled error in {scope['method']} {scope['path']}")
            reply = _encode(exc.http_status, {"ok": False, "error": exc.to_dict()})
        headers = [*_JSON_HEADERS, (b"content-length", str(len(reply[1])).encode())]
        await send({"type": "http.response.start", "status": reply[0], "headers": headers})
        await send({"type": "http.response.body", "body": reply[1]})

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        method: str = scope["method"]
        parts = scope["path"].strip("/").split("/")
        if parts[0] != "v1" or len(parts) < 2:
            raise NotFound(f"no route {scope['path']}; the API lives under /v1/ (try GET /v1/modules)")
        identity = scope.get("extensions", {}).get(IDENTITY_KEY) or Identity(transport="tcp")
        route = parts[1:]
        if route == ["health"]:
            _allow(method, "GET", scope)
            return 200, self._health()
        if route == ["modules"]:
            _allow(method, "GET", scope)
            return 200, self.dispatcher.registry.describe()
        if route[0] == "modules" and len(route) == 3:
            _allow(method, "POST", scope)
            params = await self._json_body(scope, receive)
            return 200, await self._call(route[1], route[2], params, identity)
        if route == ["task-types"]:
            _allow(method, "GET", scope)
            return 200, await self._call("tasks", "types", {}, identity)
        if route[0] == "tasks":
            return await self._tasks(method, route[1:], scope, receive, identity)
        if route == ["events"]:
            _allow(method, "GET", scope)
            await self._call("tasks", "events", {"limit": 0}, identity)  # the policy's say, as for tasks.events
            return 200, Stream(b"text/event-stream", self._streams().events())
        raise NotFound(f"no route {scope['path']}; see GET /v1/modules and docs/api.md")

    async def _tasks(self, method: str, rest: list[str], scope: Scope, receive: Receive, identity: Identity) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
                unknown = sorted(set(query) - _TASK_FILTERS)
                if unknown:
                    raise MalformedRequest(f"unknown filter {unknown[0]!r}; filters: state, type, key")
                return 200, await self._call("tasks", "list", query, identity)
            _allow(method, "POST", scope, also="GET")
            body = await self._json_body(scope, receive)
            return 202, await self._call("tasks", "start", body, identity)
        task_id = rest[0]
        if len(rest) == 1:
            _allow(method, "GET", scope)
            return 200, await self._call("tasks", "show", {"id": task_id}, identity)
        if rest[1:] == ["stop"]:
            _allow(method, "POST", scope)
            return 202, await self._call("tasks", "stop", {"id": task_id}, identity)
        if rest[1:] == ["logs"]:
            _allow(method, "GET", scope)
            offset, follow = log_query(scope["query_string"])
            # The action checks policy, the id and the offset (limit 0: nothing read yet).
            span = await self._call("tasks", "logs", {"id": task_id, "offset": offset, "limit": 0}, identity)
            headers = [(b"x-pymgr-log-start", str(span["start"]).encode()), (b"x-pymgr-log-end", str(span["end"]).encode())]
            chunks = self._streams().task_log(span["id"], span["offset"], follow)
            return 200, Stream(b"text/plain; charset=utf-8", chunks, headers)
        raise NotFound(
            f"no route {scope['path']}; task routes: /v1/tasks, /v1/tasks/ID, /v1/tasks/ID/stop, /v1/tasks/ID/logs"
        )

    def _streams(self) -> StreamSource:
        if self.streams is None:
            raise NotFound("this daemon serves no task streams (it runs without a task manager)")
        return self.streams

    async def _call(self, module: str, action: str, params: Any, identity: Identity) -> Any:
        return await self.dispatcher.call(Call(module, action, params, identity))

    def _health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "version": self.version,
            "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
        }

    async def _json_body(self, scope: Scope, receive: Receive) -> Any:
        body = await self._read_body(scope, receive)
        if not body.strip():
            return {}
        try:
            # As fast as _encode's encoder (0.2 µs, not 2.7 µs); JSON over HTTP is UTF-8 (RFC 8259).
            params = pydantic_core.from_json(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(params, dict):
            raise MalformedRequest(f"request body must be a JSON object, not {type(params).__name__}")
        return params

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        for name, value in scope["headers"]:
            if name == b"content-length":
                check_content_length(value, self.max_body_bytes)
        return await read_body(receive, self.max_body_bytes)


def _allow(method: str, allowed: str, scope: Scope, also: str | None = None) -> None:
    if method != allowed:
        methods = f"{allowed} or {also}" if also else allowed
        raise MethodNotAllowed(f"{method} {scope['path']} is not allowed; use {methods}")
