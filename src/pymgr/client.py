"""Clients of the daemon's HTTP/JSON API: ``Client`` (sync) and ``AsyncClient``.

Rules:
- Every API method is written once, in ``_Api``, as a pure description of
  its request (``_Request``); every reply is decoded once, by ``_decode``.
  The two clients add only the I/O call between them (``_send``).
- A reply ``{"ok": false, "error": {...}}`` raises the class that
  ``pymgr.errors.error_class_for`` gives its code, carrying the reply's
  ``code``, ``message``, ``details`` and the HTTP status (``http_status``).
- A daemon that cannot be reached (or stops answering) raises
  ``ConnectionFailed``, naming the socket or URL and what to check; a reply
  that is not pymgr's JSON envelope raises ``BadReply``.
- No proxy and no ``.netrc`` credentials, ever (``trust_env=False``): this
  client talks to one privileged daemon, not to the web.
"""

from __future__ import annotations

import abc
import errno
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import quote

import httpx

from pymgr._sse import SseParser
from pymgr.auth.hmac_auth import HmacAuth
from pymgr.errors import PymgrError, Unavailable, error_class_for

__all__ = [
    "SOCKET_ENV",
    "AsyncClient",
    "BadReply",
    "Client",
    "ConnectionFailed",
    "default_socket",
]

#: Environment variable naming the daemon's socket (read by clients and the CLI).
SOCKET_ENV = "PYMGR_SOCKET"
#: Where a development daemon (`make run`, examples/demo.toml) puts its socket,
#: relative to the working directory; used when it exists.
DEV_SOCKET = Path("var/pymgr.sock")
#: Where an installed daemon puts it (systemd RuntimeDirectory=pymgr; the config default).
SYSTEM_SOCKET = Path("/run/pymgr/pymgr.sock")
#: Seconds to wait for a reply by default: long enough for a slow action,
#: short enough that a wedged daemon does not hang a web request forever.
DEFAULT_TIMEOUT_S = 30.0
#: The HTTP host name used on a Unix socket (any name works; this one reads well in logs).
_UDS_BASE_URL = "http://pymgr"
#: How much of an unexpected reply body to quote in an error message.
_SNIPPET_CHARS = 200

R = TypeVar("R")


class ConnectionFailed(Unavailable):
    """The daemon could not be reached, or the connection broke before its reply."""


class BadReply(PymgrError):
    """The server's reply is not pymgr's JSON envelope (wrong server or a bug)."""

    code = "internal"
    http_status = 502


def default_socket() -> Path:
    """The socket to use when none is given.

    Returns:
        ``$PYMGR_SOCKET`` if set and non-empty, else ``./var/pymgr.sock`` if it
        exists (a development daemon), else ``/run/pymgr/pymgr.sock``.
    """
    env = os.environ.get(SOCKET_ENV)
    if env:
        return Path(env)
    if DEV_SOCKET.exists():
        return DEV_SOCKET.absolute()
    return SYSTEM_SOCKET


@dataclass(frozen=True, slots=True)
class _Request:
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


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the daemon listens: a Unix socket or a base URL."""

    socket: Path | None
    url: str | None

    @classmethod
    def choose(cls, socket: str | Path | None, url: str | None) -> _Target:
        if socket is not None and url is not None:
            raise ValueError(f"pass either socket or url, not both (socket={str(socket)!r}, url={url!r})")
        if url is not None:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"url must start with http:// or https://, not {url!r}")
            return cls(socket=None, url=url)
        return cls(socket=Path(socket) if socket is not None else default_socket(), url=None)

    def describe(self) -> str:
        return f"socket {self.socket}" if self.socket is not None else f"URL {self.url}"

    def httpx_options(self, transport_class: type[Any], timeout_s: float) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client`` or ``httpx.AsyncClient``."""
        options: dict[str, Any] = {"timeout": timeout_s, "trust_env": False}
        if self.socket is not None:
            options["transport"] = transport_class(uds=str(self.socket))
            options["base_url"] = _UDS_BASE_URL
        else:
            options["base_url"] = self.url
        return options


def _os_errno(exc: BaseException) -> int | None:
    """The errno of the OSError behind an httpx error, if any (walks the chain)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _connection_failed(exc: httpx.TransportError, target: _Target, timeout_s: float) -> ConnectionFailed:
    """A ConnectionFailed that says what went wrong and what to check."""
    where = target.describe()
    details = {"target": where, "reason": str(exc) or type(exc).__name__}
    start = "is the daemon running? Start it with `pymgr serve --config FILE`"
    code = _os_errno(exc)
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        message = f"pymgr at {where} did not answer within {timeout_s} s (timeout_s); it may be overloaded or stuck"
    elif code == errno.ENOENT:
        message = f"cannot reach pymgr: no socket at {target.socket}; {start}, or pass --socket / set {SOCKET_ENV}"
    elif code in (errno.EACCES, errno.EPERM):
        message = (
            f"cannot reach pymgr at {where}: permission denied; the socket is mode 0660 by default: "
            f"run as its owner or a member of its group (see `ls -l {target.socket}`)"
        )
    elif code == errno.ECONNREFUSED:
        message = f"cannot reach pymgr at {where}: connection refused (nothing is listening); {start}"
    else:
        message = f"cannot reach pymgr at {where}: {details['reason']}; {start}, and check this user may connect"
    return ConnectionFailed(message, details=details)


def _bad_reply(response: httpx.Response, target: _Target, what: str) -> BadReply:
    snippet = response.text[:_SNIPPET_CHARS]
    return BadReply(
        f"the server at {target.describe()} sent HTTP {response.status_code} with {what}: {snippet!r}; "
        "is it a pymgr daemon? check --socket / --url",
        details={"status": response.status_code, "content_type": response.headers.get("content-type")},
    )


def _server_error(error: Any, status: int) -> PymgrError | None:
    """The typed exception of an ``error`` object, or None if it is malformed."""
    if not isinstance(error, dict):
        return None
    code, message, details = error.get("code"), error.get("message"), error.get("details")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    exc = error_class_for(code)(message, details=details if isinstance(details, dict) else None)
    # The status the server actually sent, and its code even when this client
    # does not know it (error_class_for falls back to PymgrError).
    exc.http_status = status  # type: ignore[misc]
    if exc.code != code:
        exc.code = code  # type: ignore[misc]
    return exc


def _decode(response: httpx.Response, target: _Target) -> Any:
    """The ``result`` of a reply, or raise its error.

    Raises:
        PymgrError: the typed error of an ``ok: false`` reply.
        BadReply: the body is not a pymgr JSON envelope.
    """
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        raise _bad_reply(response, target, "a body that is not JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("ok"), bool):
        raise _bad_reply(response, target, 'JSON without a boolean "ok"')
    if body["ok"]:
        if "result" not in body:
            raise _bad_reply(response, target, 'an "ok" reply without "result"')
        return body["result"]
    exc = _server_error(body.get("error"), response.status_code)
    if exc is None:
        raise _bad_reply(response, target, 'an error reply without "error.code" and "error.message"')
    raise exc


def _segment(value: str | int, what: str) -> str:
    """One URL path segment, escaped; dot segments would change the route."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{what} must be a non-empty name, not {text!r}")
    return quote(text, safe="")


def _security_options(
    target: _Target, key_id: str | None, secret: str | bytes | None, tls: ssl.SSLContext | None
) -> dict[str, Any]:
    """httpx options for request signing and TLS."""
    options: dict[str, Any] = {}
    if (key_id is None) != (secret is None):
        raise ValueError("pass both key_id and secret to sign requests, or neither")
    if key_id is not None and secret is not None:
        if target.url is None:
            raise ValueError("key_id and secret sign TCP requests; on a Unix socket the kernel says who you are: pass url=")
        options["auth"] = HmacAuth(key_id, secret)
    if tls is not None:
        options["verify"] = tls
    return options


def _logs_request(id: str | int, offset: int, follow: bool) -> _Request:
    query = {"offset": str(offset), **({"follow": "true"} if follow else {})}
    return _Request("GET", f"/v1/tasks/{_segment(id, 'task id')}/logs", query=query, raw=True)


def _stream_timeout(timeout_s: float) -> httpx.Timeout:
    """Connect within ``timeout_s``; then wait for the next chunk as long as it takes (a quiet log)."""
    return httpx.Timeout(timeout_s, read=None)


def _call_params(params: Mapping[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    merged = dict(params or {})
    both = sorted(set(merged) & set(kwargs))
    if both:
        raise TypeError(f"call() got parameter(s) {', '.join(both)} both in params and as keywords; pass each once")
    merged.update(kwargs)
    return merged


class _Api(abc.ABC, Generic[R]):
    """The API's methods, written once; ``R`` is what ``_send`` returns."""

    def __init__(self, socket: str | Path | None, url: str | None, timeout_s: float) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self._target = _Target.choose(socket, url)
        self._timeout_s = timeout_s

    def __repr__(self) -> str:
        where = f"socket={str(self._target.socket)!r}" if self._target.socket else f"url={self._target.url!r}"
        return f"{type(self).__name__}({where})"

    @abc.abstractmethod
    def _send(self, request: _Request) -> R:
        """Do the I/O of one request: the only part sync and async clients do differently."""

    def health(self) -> R:
        """The daemon's status: ``{"status", "version", "pid", "uptime_s"}``."""
        return self._send(_Request("GET", "/v1/health"))

    def modules(self) -> R:
        """Every module with its actions, docs and parameter JSON Schemas."""
        return self._send(_Request("GET", "/v1/modules"))

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
        return self._send(_Request("POST", path, body=body))

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
        return self._send(_Request("GET", "/v1/tasks", query=query))

    def task(self, id: str | int) -> R:
        """One task record (``NotFound`` if there is none)."""
        return self._send(_Request("GET", f"/v1/tasks/{_segment(id, 'task id')}"))

    def start_task(self, type: str, params: Mapping[str, Any] | None = None, key: str | None = None) -> R:
        """Start a task of a declared type; returns its record at once.

        Args:
            key: makes the start idempotent (e.g. ``"scan:1"``): while a run
                holds the key, the daemon returns that run instead of a new one.
        """
        body: dict[str, Any] = {"type": type, "params": dict(params or {})}
        if key is not None:
            body["key"] = key
        return self._send(_Request("POST", "/v1/tasks", body=body))

    def stop_task(self, id: str | int) -> R:
        """Ask the daemon to stop a task (its whole process tree); returns its record."""
        return self._send(_Request("POST", f"/v1/tasks/{_segment(id, 'task id')}/stop"))

    def task_types(self) -> R:
        """The task types a client may start, with their parameter JSON Schemas."""
        return self._send(_Request("GET", "/v1/task-types"))

    def logs(self, id: str | int, offset: int = 0) -> R:
        """A task's output (bytes) from logical ``offset`` to its current end.

        Raises:
            ParamsInvalid: ``offset`` is negative, past the end, or rotated
                away (``details["start"]`` is the first offset still kept).
        """
        return self._send(_logs_request(id, offset, follow=False))


class Client(_Api[Any]):
    """A blocking client: ``with Client() as c: c.call("demo", "echo", x=1)``.

    Args:
        socket: the daemon's Unix socket; default ``default_socket()``.
        url: a TCP base URL (``http://host:port``) instead of a socket.
        timeout_s: seconds to wait for connect and for each reply.
        key_id, secret: sign every request with this HMAC key (TCP only;
            docs/security.md, "Signed requests").
        tls: the TLS settings of an ``https://`` URL (CA to trust, client
            certificate); default: the system's CAs.

    Raises:
        ValueError: both socket and url, a URL that is not http(s), a
            timeout that is not positive, or only one of key_id and secret.
    """

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
        super().__init__(socket, url, timeout_s)
        options = self._target.httpx_options(httpx.HTTPTransport, timeout_s)
        self._http = httpx.Client(**options, **_security_options(self._target, key_id, secret, tls))

    def _send(self, request: _Request) -> Any:
        try:
            response = self._http.request(**request.httpx_args())
        except httpx.TransportError as exc:
            raise _connection_failed(exc, self._target, self._timeout_s) from exc
        if request.raw and response.is_success:
            return response.content
        return _decode(response, self._target)

    def follow_logs(self, id: str | int, offset: int = 0) -> Iterator[bytes]:
        """A task's output from ``offset`` on, as it is written, until the task has ended.

        Raises:
            ParamsInvalid: as ``logs``; also when the daemon rotated bytes away
                before this reader got them (``details["start"]``).
        """
        while True:  # a stream ends when the task ended, or when it fell behind a rotation: ask again
            got = 0
            for chunk in self._stream(_logs_request(id, offset, follow=True)):
                got += len(chunk)
                offset += len(chunk)
                yield chunk
            if not got:
                return

    def events(self) -> Iterator[dict[str, Any]]:
        """Task events as they happen (``GET /v1/events``): ``{"event", "id", "data"}``, heartbeats included."""
        parser = SseParser()
        for chunk in self._stream(_Request("GET", "/v1/events")):
            yield from parser.feed(chunk)

    def _stream(self, request: _Request) -> Iterator[bytes]:
        try:
            with self._http.stream(**request.httpx_args(), timeout=_stream_timeout(self._timeout_s)) as response:
                if not response.is_success:
                    response.read()
                    _decode(response, self._target)  # raises the reply's error
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise _connection_failed(exc, self._target, self._timeout_s) from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_Api[Awaitable[Any]]):
    """An asyncio client: ``async with AsyncClient() as c: await c.health()``.

    Same arguments, methods and errors as ``Client``; each method returns an
    awaitable, and ``close()`` is awaited too.
    """

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
        super().__init__(socket, url, timeout_s)
        options = self._target.httpx_options(httpx.AsyncHTTPTransport, timeout_s)
        self._http = httpx.AsyncClient(**options, **_security_options(self._target, key_id, secret, tls))

    async def _send(self, request: _Request) -> Any:
        try:
            response = await self._http.request(**request.httpx_args())
        except httpx.TransportError as exc:
            raise _connection_failed(exc, self._target, self._timeout_s) from exc
        if request.raw and response.is_success:
            return response.content
        return _decode(response, self._target)

    async def follow_logs(self, id: str | int, offset: int = 0) -> AsyncIterator[bytes]:
        """As ``Client.follow_logs``: ``async for chunk in client.follow_logs(3)``."""
        while True:
            got = 0
            async for chunk in self._stream(_logs_request(id, offset, follow=True)):
                got += len(chunk)
                offset += len(chunk)
                yield chunk
            if not got:
                return

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """As ``Client.events``: ``async for event in client.events()``."""
        parser = SseParser()
        async for chunk in self._stream(_Request("GET", "/v1/events")):
            for event in parser.feed(chunk):
                yield event

    async def _stream(self, request: _Request) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream(**request.httpx_args(), timeout=_stream_timeout(self._timeout_s)) as response:
                if not response.is_success:
                    await response.aread()
                    _decode(response, self._target)  # raises the reply's error
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise _connection_failed(exc, self._target, self._timeout_s) from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
