"""The API's requests, written once: each function builds a ``Request``, a pure description before any I/O.

A ``Request`` carries the reader of its reply (``results``), so ``Client`` and
``AsyncClient`` (both ``Api``) add only the I/O (``_send``) and a typed
one-line method per request: Python cannot type "the result of this request"
across a sync and an async client generically (httpx writes its two clients the same way).
"""

from __future__ import annotations

import abc
import copy
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx

from pymgr.client.delegation import OnBehalfOf
from pymgr.client.fields import JsonObject, JsonValue, list_of
from pymgr.client.replies import decode, opened
from pymgr.client.results import Health, ModuleInfo, TaskCounts, TaskRecord, TaskTypeInfo
from pymgr.client.retry import Retry
from pymgr.client.target import Target, security_options
from pymgr.errors import PymgrError

#: The shortest timeout given to a socket (see ``Request.seconds_left``).
_LEAST_TIMEOUT_S = 0.001

#: Seconds to wait for a reply by default: long enough for a slow action,
#: short enough that a wedged daemon does not hang a web request forever.
DEFAULT_TIMEOUT_S = 30.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Request(Generic[T]):
    """One API request, before any I/O, with the reader of its reply (so each reply is decoded once)."""

    method: str
    path: str
    #: Turns the daemon's reply into the method's result, or raises its error.
    read: Callable[[httpx.Response, Target], T]
    query: dict[str, str] | None = None
    body: JsonObject | None = None
    #: A stream (logs, events): the reply is read as it comes; ``read`` gets it unread.
    stream: bool = False
    #: For a stream: the ``time.monotonic()`` by which its reads give up, its opening's included
    #: (a wait's timeout); None: a read waits as long as it takes (a quiet log).
    deadline: float | None = None

    def httpx_args(self, timeout_s: float, headers: dict[str, str]) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.build_request``; ``timeout_s`` and ``headers`` the client's."""
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        if headers:
            args["headers"] = headers
        if self.query:
            args["params"] = self.query
        if self.body is not None:
            args["json"] = self.body
        if self.stream:
            args["timeout"] = httpx.Timeout(timeout_s, read=self.seconds_left())
        return args

    def seconds_left(self) -> float | None:
        """Seconds until ``deadline`` (at least a moment: a socket's timeout of 0 means "do not block")."""
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), _LEAST_TIMEOUT_S)


def _json(parse: Callable[[JsonValue], T]) -> Callable[[httpx.Response, Target], T]:
    """A reader of the JSON envelope whose ``result`` ``parse`` turns into the method's result."""
    return lambda response, target: parse(decode(response, target))


def _any_json(value: JsonValue) -> JsonValue:
    return value


def _raw(response: httpx.Response, target: Target) -> bytes:
    """A success reply's body as bytes (a log); an error reply raises its error."""
    return opened(response, target).content


def _segment(value: str | int, what: str) -> str:
    """One URL path segment, escaped; dot segments would change the route."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{what} must be a non-empty name, not {text!r}")
    return quote(text, safe="")


def _call_params(params: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = dict(params or {})
    both = sorted(set(merged) & set(kwargs))
    if both:
        raise TypeError(
            f"call() got parameter(s) {', '.join(both)} both in params and as keywords; pass each once"
        )
    merged.update(kwargs)
    return merged


def health() -> Request[Health]:
    return Request("GET", "/v1/health", _json(Health.from_json))


def modules(allowed: bool) -> Request[list[ModuleInfo]]:
    query = {"allowed": "true"} if allowed else None
    return Request("GET", "/v1/modules", _json(list_of(ModuleInfo.from_json, "module list")), query=query)


def call(
    module: str, action: str, params: Mapping[str, Any] | None, kwargs: dict[str, Any]
) -> Request[JsonValue]:
    path = f"/v1/modules/{_segment(module, 'module')}/{_segment(action, 'action')}"
    return Request("POST", path, _json(_any_json), body=_call_params(params, kwargs))


def tasks(
    state: str | None,
    type: str | None,
    key: str | None,
    limit: int | None,
    before: int | None,
    started_by: str | None = None,
) -> Request[list[TaskRecord]]:
    filters = (
        ("state", state),
        ("type", type),
        ("key", key),
        ("started_by", started_by),
        ("limit", limit),
        ("before", before),
    )
    query = {name: str(value) for name, value in filters if value is not None}
    return Request("GET", "/v1/tasks", _json(list_of(TaskRecord.from_json, "task list")), query=query)


def task(task_id: str | int) -> Request[TaskRecord]:
    return Request("GET", f"/v1/tasks/{_segment(task_id, 'task id')}", _json(TaskRecord.from_json))


def start_task(type: str, params: Mapping[str, Any] | None, key: str | None) -> Request[TaskRecord]:
    body: JsonObject = {"type": type, "params": dict(params or {})}
    if key is not None:
        body["key"] = key
    return Request("POST", "/v1/tasks", _json(TaskRecord.from_json), body=body)


def stop_task(task_id: str | int) -> Request[TaskRecord]:
    return Request("POST", f"/v1/tasks/{_segment(task_id, 'task id')}/stop", _json(TaskRecord.from_json))


def task_types() -> Request[list[TaskTypeInfo]]:
    return Request("GET", "/v1/task-types", _json(list_of(TaskTypeInfo.from_json, "task type list")))


def task_counts() -> Request[TaskCounts]:
    return Request("GET", "/v1/task-counts", _json(TaskCounts.from_json))


def logs(task_id: str | int, offset: int, progress: bool = True) -> Request[bytes]:
    query = {"offset": str(offset), **({} if progress else {"progress": "false"})}
    return Request("GET", f"/v1/tasks/{_segment(task_id, 'task id')}/logs", _raw, query=query)


def follow_logs(task_id: str | int, offset: int) -> Request[httpx.Response]:
    """The log from ``offset`` as it is written (the progress lines are filtered by the client,
    whose offset to resume from counts the log's own bytes)."""
    path = f"/v1/tasks/{_segment(task_id, 'task id')}/logs"
    return Request("GET", path, opened, query={"offset": str(offset), "follow": "true"}, stream=True)


def events(
    task: int | None,
    type: str | None,
    key: str | None,
    since: int | None,
    deadline: float | None = None,
) -> Request[httpx.Response]:
    filters = (("task", task), ("type", type), ("key", key), ("since", since))
    query = {name: str(value) for name, value in filters if value is not None}
    return Request("GET", "/v1/events", opened, query=query, stream=True, deadline=deadline)


class Api(abc.ABC):
    """What both clients share: the target, the timeout, the retry policy; each adds its I/O."""

    def __init__(
        self,
        socket: str | Path | None = None,
        url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        key_id: str | None = None,
        secret: str | bytes | None = None,
        tls: ssl.SSLContext | None = None,
        retry: Retry | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self._target = Target.choose(socket, url)
        self._timeout_s = timeout_s
        self._retry = retry
        #: Headers of every request: the delegation headers of a view made by ``acting_for``.
        self._headers: dict[str, str] = {}
        options = self._target.httpx_options(self._transport_class(), timeout_s, tls)
        self._open({**options, **security_options(self._target, key_id, secret)})

    @abc.abstractmethod
    def _transport_class(self) -> type[Any]:
        """The httpx transport class of this client's I/O (``HTTPTransport`` or ``AsyncHTTPTransport``)."""

    @abc.abstractmethod
    def _open(self, options: dict[str, Any]) -> None:
        """Make the httpx client that does this client's I/O, from ``options``."""

    def __repr__(self) -> str:
        where = f"socket={str(self._target.socket)!r}" if self._target.socket else f"url={self._target.url!r}"
        return f"{type(self).__name__}({where})"

    def acting_for(self, person: str, roles: Iterable[str] = ()) -> Self:
        """A view of this client whose requests act for ``person`` with ``roles`` (delegation).

        The daemon judges each request of the view as ``NAMESPACE:person`` with ``role:ROLE``
        (docs/security.md, "Delegation"); this client must be one of its ``[[policy.delegates]]``.
        The view shares this client's connections: close this client, not the view.

        Raises:
            ValueError: a name or role the daemon would refuse, or a client on a URL (the daemon
                accepts delegation on its Unix socket only).
        """
        if self._target.socket is None:
            raise ValueError(
                "acting_for needs a client on the Unix socket: the daemon refuses delegation on TCP"
            )
        view = copy.copy(self)
        view._headers = OnBehalfOf.of(person, roles).headers()
        return view

    def _retry_delay_s(self, retry: int, error: PymgrError, request: Request[Any]) -> float | None:
        """Seconds to wait before sending ``request`` again after ``error``; None: raise it."""
        return None if self._retry is None else self._retry.delay_s(retry, error, request.method)
