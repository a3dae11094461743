"""The API's methods, written once: each builds a ``Request``, a pure description before any I/O.

``Client`` and ``AsyncClient`` subclass ``Api`` and add only the I/O call
(``_send``) that turns a ``Request`` into its decoded reply.
"""

from __future__ import annotations

import abc
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from pymgr.client.target import Target, security_options

#: Seconds to wait for a reply by default: long enough for a slow action,
#: short enough that a wedged daemon does not hang a web request forever.
DEFAULT_TIMEOUT_S = 30.0

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Request:
    """One API request, before any I/O."""

    method: str
    path: str
    query: dict[str, str] | None = None
    body: dict[str, Any] | None = None
    #: A success reply is the body's bytes (a log), not the JSON envelope.
    raw: bool = False

    def httpx_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        if self.query:
            args["params"] = self.query
        if self.body is not None:
            args["json"] = self.body
        return args


def _segment(value: str | int, what: str) -> str:
    """One URL path segment, escaped; dot segments would change the route."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{what} must be a non-empty name, not {text!r}")
    return quote(text, safe="")


def logs_request(task_id: str | int, offset: int, follow: bool, progress: bool = True) -> Request:
    query = {"offset": str(offset), **({"follow": "true"} if follow else {})}
    if not progress:
        query["progress"] = "false"
    return Request("GET", f"/v1/tasks/{_segment(task_id, 'task id')}/logs", query=query, raw=True)


def events_request(task: int | None, type: str | None, key: str | None, since: int | None) -> Request:
    filters = (("task", task), ("type", type), ("key", key), ("since", since))
    return Request(
        "GET", "/v1/events", query={name: str(value) for name, value in filters if value is not None}
    )


def stream_timeout(timeout_s: float) -> httpx.Timeout:
    """Connect within ``timeout_s``; then wait for the next chunk as long as it takes (a quiet log)."""
    return httpx.Timeout(timeout_s, read=None)


def _call_params(params: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = dict(params or {})
    both = sorted(set(merged) & set(kwargs))
    if both:
        raise TypeError(
            f"call() got parameter(s) {', '.join(both)} both in params and as keywords; pass each once"
        )
    merged.update(kwargs)
    return merged


class Api(abc.ABC, Generic[R]):
    """The API's methods, written once; ``R`` is what ``_send`` returns."""

    def __init__(
        self,
        socket: str | Path | None = None,
        url: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        key_id: str | None = None,
        secret: str | bytes | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self._target = Target.choose(socket, url)
        self._timeout_s = timeout_s
        options = self._target.httpx_options(self._transport_class(), timeout_s)
        self._open({**options, **security_options(self._target, key_id, secret, tls)})

    @abc.abstractmethod
    def _transport_class(self) -> type[Any]:
        """The httpx transport class of this client's I/O (``HTTPTransport`` or ``AsyncHTTPTransport``)."""

    @abc.abstractmethod
    def _open(self, options: dict[str, Any]) -> None:
        """Make the httpx client that does this client's I/O, from ``options``."""

    def __repr__(self) -> str:
        where = f"socket={str(self._target.socket)!r}" if self._target.socket else f"url={self._target.url!r}"
        return f"{type(self).__name__}({where})"

    @abc.abstractmethod
    def _send(self, request: Request) -> R:
        """Do the I/O of one request: the only part sync and async clients do differently."""

    def health(self) -> R:
        """The daemon's status: ``{"status", "version", "pid", "uptime_s"}``."""
        return self._send(Request("GET", "/v1/health"))

    def modules(self, allowed: bool = False) -> R:
        """Every module with its actions, docs and parameter JSON Schemas, marked for this caller.

        Each action has ``allowed``: whether the daemon's policy lets this caller call it;
        ``tasks.start``, ``stop`` and ``logs`` also have ``task_types``, each type and whether
        this caller may do that operation on it.

        Args:
            allowed: list only what this caller may call (and modules that have some).
        """
        return self._send(Request("GET", "/v1/modules", query={"allowed": "true"} if allowed else None))

    def call(self, module: str, action: str, /, params: Mapping[str, Any] | None = None, **kwargs: Any) -> R:
        """Run ``module.action`` and return its result.

        Args:
            module, action: the action's names (positional only, so an
                action may have parameters called ``module`` or ``action``).
            params: the action's parameters as a dict; use it for names that
                are Python keywords (``{"from": 1}``) or ``params`` itself.
            kwargs: more parameters, by keyword; merged with ``params``.

        Raises:
            TypeError: a parameter was given both in ``params`` and by keyword.
            PymgrError: the daemon's error, typed by its code.
        """
        body = _call_params(params, kwargs)
        path = f"/v1/modules/{_segment(module, 'module')}/{_segment(action, 'action')}"
        return self._send(Request("POST", path, body=body))

    def tasks(
        self,
        state: str | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
    ) -> R:
        """One page of task records, newest first, filtered by state, type and key.

        Args:
            limit: records a page (None: the daemon's ``[tasks] list_limit``).
            before: only records with a lower id; the next page is
                ``before=`` the last id of this one, and an empty page is past the end.
        """
        filters = (("state", state), ("type", type), ("key", key), ("limit", limit), ("before", before))
        query = {name: str(value) for name, value in filters if value is not None}
        return self._send(Request("GET", "/v1/tasks", query=query))

    def task(self, task_id: str | int) -> R:
        """One task record (``NotFound`` if there is none)."""
        return self._send(Request("GET", f"/v1/tasks/{_segment(task_id, 'task id')}"))

    def start_task(self, type: str, params: Mapping[str, Any] | None = None, key: str | None = None) -> R:
        """Start a task of a declared type; returns its record at once.

        Args:
            key: makes the start idempotent (e.g. ``"scan:1"``): while a run
                holds the key, the daemon returns that run instead of a new one.
        """
        body: dict[str, Any] = {"type": type, "params": dict(params or {})}
        if key is not None:
            body["key"] = key
        return self._send(Request("POST", "/v1/tasks", body=body))

    def stop_task(self, task_id: str | int) -> R:
        """Ask the daemon to stop a task (its whole process tree); returns its record."""
        return self._send(Request("POST", f"/v1/tasks/{_segment(task_id, 'task id')}/stop"))

    def task_types(self) -> R:
        """The task types a client may start, with their parameter JSON Schemas."""
        return self._send(Request("GET", "/v1/task-types"))

    def logs(self, task_id: str | int, offset: int = 0, progress: bool = True) -> R:
        """A task's output (bytes) from logical ``offset`` to its current end.

        Args:
            progress: False leaves out the ``PYMGR_PROGRESS`` lines.

        Raises:
            ParamsInvalid: ``offset`` is negative, past the end, or rotated
                away (``details["start"]`` is the first offset still kept).
        """
        return self._send(logs_request(task_id, offset, follow=False, progress=progress))
