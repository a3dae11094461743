"""``AsyncClient``: the asyncio client of the daemon's HTTP/JSON API (the methods of ``Client``, awaited)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

from pymgr._sse import SseParser
from pymgr.client import api
from pymgr.client.fields import JsonValue
from pymgr.client.replies import ConnectionFailed, connection_failed
from pymgr.client.results import Event, Health, ModuleInfo, TaskCounts, TaskRecord, TaskTypeInfo
from pymgr.client.waiting import Waiting
from pymgr.errors import PymgrError
from pymgr.keeper.progress import ProgressLineFilter

T = TypeVar("T")


class AsyncClient(api.Api):
    """An asyncio client: ``async with AsyncClient() as c: await c.health()``.

    Same arguments, methods, results and errors as ``Client`` (whose methods
    carry the docs); each method is awaited, and ``close()`` is awaited too.
    """

    def _transport_class(self) -> type[httpx.AsyncHTTPTransport]:
        return httpx.AsyncHTTPTransport

    def _open(self, options: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(**options)

    async def _send(self, request: api.Request[T]) -> T:
        retry = 0
        while True:
            try:
                return request.read(await self._exchange(request), self._target)
            except PymgrError as exc:
                delay_s = self._retry_delay_s(retry, exc, request)
                if delay_s is None:
                    raise
            await asyncio.sleep(delay_s)
            retry += 1

    async def _exchange(self, request: api.Request[Any]) -> httpx.Response:
        try:
            sent = self._http.build_request(**request.httpx_args(self._timeout_s, self._headers))
            response = await self._http.send(sent, stream=request.stream)
            if request.stream and not response.is_success:
                await response.aread()  # the error's envelope, for the request's reader
                await response.aclose()
            return response
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc

    async def health(self) -> Health:
        """As ``Client.health``."""
        return await self._send(api.health())

    async def modules(self, allowed: bool = False) -> list[ModuleInfo]:
        """As ``Client.modules``."""
        return await self._send(api.modules(allowed))

    async def call(
        self, module: str, action: str, /, params: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> JsonValue:
        """As ``Client.call``."""
        return await self._send(api.call(module, action, params, kwargs))

    async def tasks(
        self,
        state: str | None = None,
        type: str | None = None,
        key: str | None = None,
        limit: int | None = None,
        before: int | None = None,
        started_by: str | None = None,
    ) -> list[TaskRecord]:
        """As ``Client.tasks``."""
        return await self._send(api.tasks(state, type, key, limit, before, started_by))

    async def task(self, task_id: str | int) -> TaskRecord:
        """As ``Client.task``."""
        return await self._send(api.task(task_id))

    async def start_task(
        self, type: str, params: Mapping[str, Any] | None = None, key: str | None = None
    ) -> TaskRecord:
        """As ``Client.start_task``."""
        return await self._send(api.start_task(type, params, key))

    async def stop_task(self, task_id: str | int) -> TaskRecord:
        """As ``Client.stop_task``."""
        return await self._send(api.stop_task(task_id))

    async def task_types(self) -> list[TaskTypeInfo]:
        """As ``Client.task_types``."""
        return await self._send(api.task_types())

    async def task_counts(self) -> TaskCounts:
        """As ``Client.task_counts``."""
        return await self._send(api.task_counts())

    async def logs(self, task_id: str | int, offset: int = 0, progress: bool = True) -> bytes:
        """As ``Client.logs``."""
        return await self._send(api.logs(task_id, offset, progress))

    async def follow_logs(
        self, task_id: str | int, offset: int = 0, progress: bool = True
    ) -> AsyncIterator[bytes]:
        """As ``Client.follow_logs``: ``async for chunk in client.follow_logs(3)``."""
        lines = None if progress else ProgressLineFilter()
        while True:
            got = 0
            async for chunk in self._stream(api.follow_logs(task_id, offset)):
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
    ) -> AsyncGenerator[Event, None]:
        """As ``Client.events``: ``async for event in client.events(task=3)``."""
        return self._events(api.events(task, type, key, since))

    async def wait(self, task_id: int, timeout_s: float | None = None) -> TaskRecord:
        """As ``Client.wait``; ``timeout_s`` is kept exactly, and cancelling the wait cancels it at once."""
        waiting = Waiting(task_id, timeout_s)
        if waiting.looks_once:
            return waiting.at_once(await self.task(task_id))
        try:
            async with asyncio.timeout(timeout_s) as scope:
                while True:
                    opened = False
                    try:
                        async with aclosing(self._events(api.events(task_id, None, None, None))) as events:
                            async for event in events:
                                opened = True
                                if waiting.ended(event):
                                    return await self.task(task_id)
                    except ConnectionFailed as exc:
                        waiting.broken(exc, opened)
        except TimeoutError:
            if scope.expired():
                raise waiting.timeout() from None
            raise

    async def _events(self, request: api.Request[httpx.Response]) -> AsyncGenerator[Event, None]:
        parser = SseParser()
        async for chunk in self._stream(request):
            for event in parser.feed(chunk):
                yield Event.from_json(event)

    async def _stream(self, request: api.Request[httpx.Response]) -> AsyncIterator[bytes]:
        response = await self._send(request)
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc
        finally:
            await response.aclose()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
