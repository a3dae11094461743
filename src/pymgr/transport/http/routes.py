"""The native HTTP/JSON API: routes, JSON envelopes, one dispatcher.

Rules:
- Every route that runs an action goes through the one ``Dispatcher``; the
  ``/v1/tasks`` routes are the ``tasks`` module's actions under REST paths,
  so policy and audit see task operations like any other call.
- Replies are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
  {...}}`` with the status the error class owns.
- The connection bounds the body before the app sees it (``connection``).

Why no framework: DESIGN.md measured a bare ASGI app at 33 µs of server CPU
per call and Starlette at ~51 µs on this stack; the routing here is a handful
of fixed paths, which a dict and one split do at no measurable cost.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pydantic_core

from pymgr.auth.listing import list_modules
from pymgr.auth.pipeline import GuardedDispatcher
from pymgr.core.dispatch import Call, CallHandler
from pymgr.core.identity import Identity
from pymgr.errors import MalformedRequest, NotFound, PymgrError, PymgrInternalError
from pymgr.transport.http.messages import Reply, Request, Stream, error_reply
from pymgr.transport.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from pymgr.transport.http.metrics import render as render_metrics
from pymgr.transport.http import openapi
from pymgr.transport.http.streamgrants import StreamGrants
from pymgr.transport.http.streams import QUERY_BOOLEANS, StreamSource, event_query, log_query

log = logging.getLogger("pymgr.http")

#: Query parameters `GET /v1/tasks` understands: filters, then paging; others are a client mistake.
_TASK_FILTERS = ("state", "type", "key", "started_by")
_TASK_QUERY = frozenset({*_TASK_FILTERS, "limit", "before"})
#: A run's output is the bytes it wrote, read mostly as text and shown by browsers (through a web app
#: that relays it). Declared UTF-8, what runs write in practice: a browser shows a stray byte as
#: U+FFFD instead of guessing a legacy charset, and a client gets the bytes as sent (a charset is a
#: label). Never sniffed: a log that looks like HTML stays text. Not octet-stream: a browser would
#: download it instead of showing it (a web app offering a download sets Content-Disposition).
LOG_CONTENT_TYPE = b"text/plain; charset=utf-8"
_LOG_HEADERS = [(b"x-content-type-options", b"nosniff")]


class MethodNotAllowed(PymgrError):
    """A path that exists, asked with a method it does not take; ``allow`` names those it takes."""

    code = "not_found"
    http_status = 405
    legacy_code = 1

    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


def _page_reply(records: Any, query: dict[str, str]) -> Reply:
    """A page of task records, with the next page's URL in ``Link`` (RFC 8288) when the page is not empty.

    The body stays the array it always was; the cursor rides in the header, as GitHub's and
    Mastodon's APIs put theirs, so a caller that reads one page sees no change. Only the
    ``tasks`` module's list of records has a next page (a module of another shape may serve "tasks").
    """
    body = pydantic_core.to_json({"ok": True, "result": records})
    if not (isinstance(records, list) and records and isinstance(records[-1], dict) and "id" in records[-1]):
        return Reply(200, body)
    target = "/v1/tasks?" + urlencode({**query, "before": records[-1]["id"]})
    return Reply(200, body, headers=((b"link", f'<{target}>; rel="next"'.encode("latin-1")),))


class HttpApp:
    """The API's handler: a ``Request`` in, a JSON ``Reply`` (or a ``Stream``) out."""

    def __init__(self, dispatcher: CallHandler, *, version: str, streams: StreamSource | None = None) -> None:
        self.dispatcher = dispatcher
        #: Task logs and events for the streaming routes (None: those routes are 404).
        self.streams = streams
        self.version = version
        self.started_at = time.monotonic()
        guarded = dispatcher if isinstance(dispatcher, GuardedDispatcher) else None
        #: Open streams, asked again at every policy swap (a SIGHUP may revoke what opened them).
        self.grants = StreamGrants(lambda: None if guarded is None else guarded.policy, dispatcher.registry)
        if guarded is not None:
            guarded.policy_watchers.append(self.grants.recheck)

    async def __call__(self, request: Request) -> Reply | Stream:
        try:
            status, result = await self._route(request)
            if isinstance(result, (Stream, Reply)):  # logs and events (sent as produced); /metrics (text)
                return result
            # pydantic-core's encoder: the same compact UTF-8 JSON as json.dumps(separators=(",", ":"),
            # ensure_ascii=False), 10x cheaper (0.4 µs, not 3.6 µs, for a small reply; docs/performance.md).
            return Reply(status, pydantic_core.to_json({"ok": True, "result": result}))
        except MethodNotAllowed as exc:  # RFC 9110 15.5.6: a 405 names the methods the path takes
            return error_reply(exc, (b"allow", ", ".join(exc.allow).encode()))
        except PymgrError as exc:
            return error_reply(exc)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_reply(PymgrInternalError(f"unhandled error in {request.method} {request.path}"))

    async def _route(self, request: Request) -> tuple[int, Any]:
        # HEAD is GET without the body (RFC 9110 9.3.2): the connection sends the head only.
        method = "GET" if request.method == "HEAD" else request.method
        parts = request.path.strip("/").split("/")
        identity = request.identity
        if parts == ["metrics"]:  # where Prometheus looks; the metrics.snapshot action, as text
            _allow(method, "GET", request)
            snapshot = await self._call("metrics", "snapshot", {}, identity)
            return 200, Reply(200, render_metrics(snapshot), content_type=METRICS_CONTENT_TYPE)
        if parts[0] != "v1" or len(parts) < 2:
            raise NotFound(f"no route {request.path}; the API lives under /v1/ (try GET /v1/modules)")
        route = parts[1:]
        if route == ["health"]:
            _allow(method, "GET", request)
            return 200, self._health()
        if route == ["modules"]:
            _allow(method, "GET", request)
            return 200, self._modules(request)
        if route == ["openapi.json"]:  # the document itself, not in the envelope: what generators read
            _allow(method, "GET", request)
            return 200, Reply(
                200, pydantic_core.to_json(openapi.describe(self.dispatcher.registry, self.version))
            )
        if route[0] == "modules" and len(route) == 3:
            _allow(method, "POST", request)
            params = _json_body(request)
            return 200, await self._call(route[1], route[2], params, identity)
        if route == ["task-types"]:
            _allow(method, "GET", request)
            return 200, await self._call("tasks", "types", {}, identity)
        if route == ["task-counts"]:
            _allow(method, "GET", request)
            return 200, await self._call("tasks", "counts", {}, identity)
        if route[0] == "tasks":
            return await self._tasks(method, route[1:], request, identity)
        if route == ["events"]:
            _allow(method, "GET", request)
            return 200, await self._events(request, identity)
        if route == ["audit"]:  # the audit.read action, its filters in the query
            _allow(method, "GET", request)
            return 200, await self._call("audit", "read", _query(request, "audit.read"), identity)
        raise NotFound(f"no route {request.path}; see GET /v1/modules and docs/api.md")

    async def _tasks(
        self, method: str, rest: list[str], request: Request, identity: Identity
    ) -> tuple[int, Any]:
        if not rest:
            if method == "GET":
                query = dict(parse_qsl(request.query.decode("latin-1")))
                unknown = sorted(set(query) - _TASK_QUERY)
                if unknown:
                    filters = ", ".join(_TASK_FILTERS)
                    raise MalformedRequest(f"unknown filter {unknown[0]!r}; filters: {filters}")
                records = await self._call("tasks", "list", query, identity)
                return 200, _page_reply(records, query)
            _allow(method, "POST", request, also="GET")
            body = _json_body(request)
            return 202, await self._call("tasks", "start", body, identity)
        task_id = rest[0]
        if len(rest) == 1:
            _allow(method, "GET", request)
            return 200, await self._call("tasks", "show", {"id": task_id}, identity)
        if rest[1:] == ["stop"]:
            _allow(method, "POST", request)
            return 202, await self._call("tasks", "stop", {"id": task_id}, identity)
        if rest[1:] == ["logs"]:
            _allow(method, "GET", request)
            offset, follow, progress = log_query(request.query)
            # The action checks policy, the id and the offset (limit 0: nothing read yet).
            span = await self._call("tasks", "logs", {"id": task_id, "offset": offset, "limit": 0}, identity)
            headers = [
                (b"x-pymgr-log-start", str(span["start"]).encode()),
                (b"x-pymgr-log-end", str(span["end"]).encode()),
                *_LOG_HEADERS,
            ]
            chunks = self._streams().task_log(span["id"], span["offset"], follow, progress)
            held = self.grants.hold(chunks, request, identity, "logs", span["id"])
            return 200, Stream(LOG_CONTENT_TYPE, held, headers)
        raise NotFound(
            f"no route {request.path}; task routes: /v1/tasks, /v1/tasks/ID, /v1/tasks/ID/stop, /v1/tasks/ID/logs"
        )

    async def _events(self, request: Request, identity: Identity) -> Stream:
        """The event stream, once the query is checked and the policy has had its say (as for tasks.events)."""
        query = event_query(request.query, request.headers)
        # The action checks the policy and the filters and cursor (its parameters are their definition).
        await self._call("tasks", "events", {"limit": 0, **query.params()}, identity)
        if query.task is not None:  # a run that does not exist is a 404 before the stream starts
            await self._call("tasks", "show", {"id": query.task}, identity)
        events = self._streams().events(task=query.task, type=query.type, key=query.key, since=query.since)
        return Stream(b"text/event-stream", self.grants.hold(events, request, identity, "events"))

    def _modules(self, request: Request) -> list[dict[str, Any]]:
        """Every module and action, each marked with whether this caller may call it (``auth/listing.py``).

        Not a call: it is not audited, and it reads the policy in force now (a SIGHUP swaps it).
        """
        policy = self.dispatcher.policy if isinstance(self.dispatcher, GuardedDispatcher) else None
        only_allowed = _modules_query(request.query)
        return list_modules(self.dispatcher.registry, policy, request.identity, only_allowed=only_allowed)

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


def _query(request: Request, what: str) -> dict[str, str]:
    """A query as params, each name once (the action's params model refuses unknown names).

    Raises:
        MalformedRequest: a name given twice.
    """
    pairs = parse_qsl(request.query.decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    if len(query) != len(pairs):
        twice = next(name for index, (name, _) in enumerate(pairs) if name in dict(pairs[:index]))
        raise MalformedRequest(f"{what}: {twice} is given more than once in the query; give it once")
    return query


def _modules_query(query_string: bytes) -> bool:
    """``allowed`` of ``GET /v1/modules``: list only what the caller may call.

    Raises:
        MalformedRequest: an unknown parameter, ``allowed`` twice, or not true/false.
    """
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    unknown = sorted({name for name, _ in pairs} - {"allowed"})
    if unknown:
        raise MalformedRequest(
            f"unknown query parameter {unknown[0]!r}; /v1/modules takes allowed=true|false"
        )
    if len(pairs) > 1:
        raise MalformedRequest("allowed is given more than once; give it once: allowed=true or allowed=false")
    value = pairs[0][1] if pairs else "false"
    if value.lower() not in QUERY_BOOLEANS:
        raise MalformedRequest(f"allowed: must be true or false, not {value!r}")
    return QUERY_BOOLEANS[value.lower()]


def _json_body(request: Request) -> Any:
    """The body of every route that takes one, as a JSON object of finite numbers."""
    body = request.body
    if not body.strip():
        return {}
    try:
        # As fast as the reply's encoder (0.2 µs, not 2.7 µs); JSON over HTTP is UTF-8 (RFC 8259).
        # NaN and Infinity are not JSON: the decoder refuses them, else they come back in the reply and audit line.
        params = pydantic_core.from_json(body, allow_inf_nan=False)
    except (ValueError, UnicodeDecodeError) as exc:
        hint = (
            "; NaN and Infinity are not JSON: JSON carries finite numbers only"
            if _NOT_NUMBERS.search(body)
            else ""
        )
        raise MalformedRequest(f"request body is not valid JSON: {exc}{hint}") from None
    if not isinstance(params, dict):
        raise MalformedRequest(f"request body must be a JSON object, not {type(params).__name__}")
    # It still reads a number too large for a double (1e999) as infinity.
    if (where := _not_finite(params, "")) is not None:
        raise MalformedRequest(
            f"request body: {where} is a number too large for a 64-bit float; "
            "JSON carries finite numbers only"
        )
    return params


_NOT_NUMBERS = re.compile(rb"NaN|Infinity")
#: What may hold a float: only these are looked into.
_CONTAINERS_AND_FLOATS = (dict, list, float)


def _not_finite(value: Any, where: str) -> str | None:
    """The path (``a.b[2]``) of the first NaN or infinity in a decoded JSON value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, _CONTAINERS_AND_FLOATS):
                found = _not_finite(item, f"{where}.{key}" if where else str(key))
                if found is not None:
                    return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, _CONTAINERS_AND_FLOATS):
                found = _not_finite(item, f"{where}[{index}]")
                if found is not None:
                    return found
    return None


def _allow(method: str, allowed: str, request: Request, also: str | None = None) -> None:
    if method != allowed:
        methods = f"{allowed} or {also}" if also else allowed
        allow = tuple(sorted({allowed, also or allowed} | ({"HEAD"} if "GET" in (allowed, also) else set())))
        raise MethodNotAllowed(f"{method} {request.path} is not allowed; use {methods}", allow)
