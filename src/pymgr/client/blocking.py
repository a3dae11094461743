"""``Client``: the blocking client of the daemon's HTTP/JSON API."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

import httpx

from pymgr._sse import SseParser
from pymgr.client.api import Api, Request, events_request, logs_request, stream_timeout
from pymgr.client.replies import connection_failed, decode
from pymgr.keeper.progress import ProgressLineFilter


class Client(Api[Any]):
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

    def _transport_class(self) -> type[httpx.HTTPTransport]:
        return httpx.HTTPTransport

    def _open(self, options: dict[str, Any]) -> None:
        self._http = httpx.Client(**options)

    def _send(self, request: Request) -> Any:
        try:
            response = self._http.request(**request.httpx_args())
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc
        if request.raw and response.is_success:
            return response.content
        return decode(response, self._target)

    def follow_logs(self, task_id: str | int, offset: int = 0, progress: bool = True) -> Iterator[bytes]:
        """A task's output from ``offset`` on, as it is written, until the task has ended.

        Args:
            progress: False leaves out the ``PYMGR_PROGRESS`` lines (``offset``
                is taken to start a line).

        Raises:
            ParamsInvalid: as ``logs``; also when the daemon rotated bytes away
                before this reader got them (``details["start"]``).
        """
        # Filtered here, not by the daemon: the offset to resume from counts the log's own bytes.
        lines = None if progress else ProgressLineFilter()
        while True:  # a stream ends when the task ended, or when it fell behind a rotation: ask again
            got = 0
            for chunk in self._stream(logs_request(task_id, offset, follow=True)):
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
    ) -> Iterator[dict[str, Any]]:
        """Task events as they happen (``GET /v1/events``), heartbeats included.

        Each is ``{"id", "kind", "time", "data"}`` (and ``event``, the same as
        ``kind``). The stream opens with a ``state`` event of each matching
        active run (of run ``task`` even if it ended), so the end of a run is
        never missed.

        Args:
            task, type, key: only the events of these runs (AND).
            since: resume after this event ``id`` (a ``reset`` event and the
                current state when the daemon no longer holds what came after).

        Raises:
            NotFound: no run ``task``.
        """
        parser = SseParser()
        for chunk in self._stream(events_request(task, type, key, since)):
            yield from parser.feed(chunk)

    def _stream(self, request: Request) -> Iterator[bytes]:
        try:
            with self._http.stream(
                **request.httpx_args(), timeout=stream_timeout(self._timeout_s)
            ) as response:
                if not response.is_success:
                    response.read()
                    decode(response, self._target)  # raises the reply's error
                yield from response.iter_bytes()
        except httpx.TransportError as exc:
            raise connection_failed(exc, self._target, self._timeout_s) from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
