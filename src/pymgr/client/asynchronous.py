"""``AsyncClient``: the asyncio client of the daemon's HTTP/JSON API (same methods as ``Client``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from types import TracebackType
from typing import Any, Self

import httpx

from pymgr._sse import SseParser
from pymgr.client.api import Api, Request, events_request, logs_request, stream_timeout
from pymgr.client.replies import connection_failed, decode
from pymgr.keeper.progress import ProgressLineFilter


class AsyncClient(Api[Awaitable[Any]]):
    """An asyncio client: ``async with AsyncClient() as c: await c.health()``.

    Same arguments, methods and errors as ``Client``; each method returns an
    awaitable, and ``close()`` is awaited too.
    """

    def _transport_class(self) -> type[httpx.AsyncHTTPTransport]:
        return httpx.AsyncHTTPTransport

    def _open(self, options: dict[str, Any]) -> None:
        self._http = httpx.AsyncClient(**options)

    async def _send(self, request: Request) -> Any:
        try:
            response = await self._http.request(**request.httpx_args())
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc
        if request.raw and response.is_success:
            return response.content
        return decode(response, self._target)

    async def follow_logs(
        self, task_id: str | int, offset: int = 0, progress: bool = True
    ) -> AsyncIterator[bytes]:
        """As ``Client.follow_logs``: ``async for chunk in client.follow_logs(3)``."""
        lines = None if progress else ProgressLineFilter()
        while True:
            got = 0
            async for chunk in self._stream(logs_request(task_id, offset, follow=True)):
                got += len(chunk)
                offset += len(chunk)
                if kept := chunk if lines is None else lines.feed(chunk):
                    yield kept
            if not got:
                if lines is not None and (rest := lines.flush()):
                    yield rest
                return

    async def events(
        self,
        task: int | None = None,
        type: str | None = None,
        key: str | None = None,
        since: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """As ``Client.events``: ``async for event in client.events(task=3)``."""
        parser = SseParser()
        async for chunk in self._stream(events_request(task, type, key, since)):
            for event in parser.feed(chunk):
                yield event

    async def _stream(self, request: Request) -> AsyncIterator[bytes]:
        try:
            async with self._http.stream(
                **request.httpx_args(), timeout=stream_timeout(self._timeout_s)
            ) as response:
                if not response.is_success:
                    await response.aread()
                    decode(response, self._target)  # raises the reply's error
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
