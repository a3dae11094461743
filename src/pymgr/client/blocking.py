"""``Client``: the blocking client of the daemon's HTTP/JSON API; its methods carry the API's docs."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from pymgr._sse import SseParser
from pymgr.client import api
from pymgr.client.fields import JsonValue
from pymgr.client.network import BlockingTransport, reads_until
from pymgr.client.replies import ConnectionFailed, connection_failed
from pymgr.client.results import Event, Health, ModuleInfo, TaskCounts, TaskRecord, TaskTypeInfo
from pymgr.client.waiting import Waiting
from pymgr.errors import PymgrError
from pymgr.keeper.progress import ProgressLineFilter

T = TypeVar("T")


class Client(api.Api):
    """A blocking client: ``with Client() as c: c.call("demo", "echo", x=1)``.

    Args:
        socket: the daemon's Unix socket; default ``default_socket()``.
        url: a TCP base URL (``http://host:port``) instead of a socket.
        timeout_s: seconds to wait for connect and for each reply.
        key_id, secret: sign every request with this HMAC key (TCP only;
            docs/security.md, "Signed requests").
        tls: the TLS settings of an ``https://`` URL (CA to trust, client
            certificate); default: the system's CAs.
        retry: retry 429, 503 and connections that could not be made (``Retry``);
            default: no retry.

    Raises:
        ValueError: both socket and url, a URL that is not http(s), a
            timeout that is not positive, or only one of key_id and secret.
    """

    def _transport_class(self) -> type[httpx.HTTPTransport]:
        return BlockingTransport

    def _open(self, options: dict[str, Any]) -> None:
        self._http = httpx.Client(**options)

    def _send(self, request: api.Request[T]) -> T:
        retry = 0
        while True:
            try:
                return request.read(self._exchange(request), self._target)
            except PymgrError as exc:
                delay_s = self._retry_delay_s(retry, exc, request)
                if delay_s is None:
                    raise
                left_s = request.seconds_left()
                if left_s is not None and left_s <= delay_s:  # the retry would come after the deadline
                    time.sleep(left_s)
                    raise
            time.sleep(delay_s)
            retry += 1

    def _exchange(self, request: api.Request[Any]) -> httpx.Response:
        try:
            sent = self._http.build_request(**request.httpx_args(self._timeout_s, self._headers))
            response = self._http.send(sent, stream=request.stream)
            if request.stream and not response.is_success:
                response.read()  # the error's envelope, for the request's reader
                response.close()
            return response
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc

    def health(self) -> Health:
        """The daemon's status: up, its version, pid and uptime."""
        return self._send(api.health())

    def modules(self, allowed: bool = False) -> list[ModuleInfo]:
        """Every module with its actions, docs and parameter JSON Schemas, marked for this caller.

        Each action has ``allowed``: whether the daemon's policy lets this caller call it;
        ``tasks.start``, ``stop`` and ``logs`` also have ``task_types``, each type and whether
        this caller may do that operation on it.

        Args:
            allowed: list only what this caller may call (and modules that have some).
        """
        return self._send(api.modules(allowed))

    def call(
        self, module: str, action: str, /, params: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> JsonValue:
        """Run ``module.action`` and return its result (any JSON value).

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
        return self._send(api.call(module, action, params, kwargs))

    def tasks(
        self,
        state: str | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        started_by: str | None = None,
    ) -> list[TaskRecord]:
        """One page of task records, newest first, filtered by state, type, key and who started them.

        Args:
            started_by: the person a delegate acted for (``console:alice``), else the caller's user name.
            limit: records a page (None: the daemon's ``[tasks] list_limit``).
            before: only records with a lower id; the next page is
                ``before=`` the last id of this one, and an empty page is past the end.
        """
        return self._send(api.tasks(state, type, key, limit, before, started_by))

    def task(self, task_id: str | int) -> TaskRecord:
        """One task record (``NotFound`` if there is none)."""
        return self._send(api.task(task_id))

    def start_task(
        self, type: str, params: Mapping[str, Any] | None = None, key: str | None = None
    ) -> TaskRecord:
        """Start a task of a declared type; returns its record at once.

        Args:
            key: makes the start idempotent (e.g. ``"scan:1"``): while a run
                holds the key, the daemon returns that run instead of a new one.
        """
        return self._send(api.start_task(type, params, key))

    def stop_task(self, task_id: str | int) -> TaskRecord:
        """Ask the daemon to stop a task (its whole process tree); returns its record."""
        return self._send(api.stop_task(task_id))

    def task_types(self) -> list[TaskTypeInfo]:
        """The task types a client may start, with their parameter JSON Schemas."""
        return self._send(api.task_types())

    def task_counts(self) -> TaskCounts:
        """How many runs the daemon holds in each state: every run its store keeps, counted by the daemon
        (``tasks.counts``; the policy decides as for ``tasks.list``).

        Raises:
            Forbidden: the policy does not let the caller read tasks.
        """
        return self._send(api.task_counts())

    def logs(self, task_id: str | int, offset: int = 0, progress: bool = True) -> bytes:
        """A task's output from logical ``offset`` to its current end.

        Args:
            progress: False leaves out the ``PYMGR_PROGRESS`` lines.

        Raises:
            ParamsInvalid: ``offset`` is negative, past the end, or rotated
                away (``details["start"]`` is the first offset still kept).
        """
        return self._send(api.logs(task_id, offset, progress))

    def follow_logs(self, task_id: str | int, offset: int = 0, progress: bool = True) -> Iterator[bytes]:
        """A task's output from ``offset`` on, as it is written, until the task has ended.

        Args:
            progress: False leaves out the ``PYMGR_PROGRESS`` lines (``offset``
                is taken to start a line).

        Raises:
            ParamsInvalid: as ``logs``; also when the daemon rotated bytes away
                before this reader got them (``details["start"]``).
        """
        lines = None if progress else ProgressLineFilter()
        while True:  # a stream ends when the task ended, or when it fell behind a rotation: ask again
            got = 0
            for chunk in self._stream(api.follow_logs(task_id, offset)):
                got += len(chunk)
                offset += len(chunk)
                if kept := chunk if lines is None else lines.feed(chunk):
                    yield kept
            if not got:
                if lines is not None and (rest := lines.flush()):
                    yield rest
                return

    def events(
        self,
        task: int | None = None,
        type: str | None = None,
        key: str | None = None,
        since: int | None = None,
    ) -> Generator[Event, None, None]:
        """Task events as they happen (``GET /v1/events``), heartbeats included.

        The stream opens with a ``state`` event of each matching active run (of
        run ``task`` even if it ended), so the end of a run is never missed.

        Args:
            task, type, key: only the events of these runs (AND).
            since: resume after this event ``id`` (a ``reset`` event and the
                current state when the daemon no longer holds what came after).

        Returns:
            A generator: ``close()`` it to hang up before the stream ends.

        Raises:
            NotFound: no run ``task`` (at the first ``next``).
        """
        return self._events(api.events(task, type, key, since))

    def wait(self, task_id: int, timeout_s: float | None = None) -> TaskRecord:
        """Wait until run ``task_id`` has ended, and return its final record.

        Race-free: the events of the run open with its current state, so a run
        that ended before (or while) this is called is seen. A stream the daemon
        ends (a restart) is opened again, obeying ``retry`` (``waiting.py``).

        Args:
            timeout_s: the most seconds to wait (None: no limit), kept exactly: every
                read of the stream, and every retry, ends by then. 0: no wait, the
                run's record is read once (returned if it has ended).

        Raises:
            WaitTimeout: still not ended after ``timeout_s`` (a ``TimeoutError`` too).
            NotFound: no run ``task_id``.
            ConnectionFailed: the daemon could not be reached (after ``retry``, if any).
        """
        waiting = Waiting(task_id, timeout_s)
        if waiting.looks_once:
            return waiting.at_once(self.task(task_id))
        while True:
            opened = False
            request = api.events(task_id, None, None, None, waiting.deadline)
            try:
                with closing(self._events(request)) as events:
                    for event in events:
                        if waiting.ended(event):
                            return self.task(task_id)
                        if opened:  # not at the opening heartbeat: the run's state comes right after it
                            waiting.check()
                        opened = True
            except ConnectionFailed as exc:
                waiting.broken(exc, opened)
            waiting.check()

    def _events(self, request: api.Request[httpx.Response]) -> Generator[Event, None, None]:
        parser = SseParser()
        for chunk in self._stream(request):
            for event in parser.feed(chunk):
                yield Event.from_json(event)

    def _stream(self, request: api.Request[httpx.Response]) -> Iterator[bytes]:
        """The stream's bytes; only its opening is retried (what was read cannot be read again)."""
        response = self._send(request)
        try:
            with reads_until(response, request.deadline):
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc
        finally:
            response.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
