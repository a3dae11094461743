"""The blocking client's sockets: httpcore's ``SyncBackend`` with two changes, and the transport using it.

Rules:
- A Unix connect that fails closes its socket at once. httpcore's own leaves it
  open in the frames of its exception, freed when the garbage collector runs: a
  web app retrying a stopped daemon held one descriptor per attempt until then.
- Every stream may carry a deadline (``reads_until``): while it does, each read
  waits at most until then, whatever its own timeout, and past it fails as a
  read timeout. ``Client.wait`` keeps its ``timeout_s`` so while the daemon is
  quiet (httpcore reads the read timeout once for a whole reply body).
- The async client needs neither: anyio closes a socket that did not connect,
  and ``asyncio.timeout`` bounds a whole wait.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx


class DeadlineStream(httpcore.NetworkStream):
    """A network stream whose reads end at ``deadline`` (a ``time.monotonic()``) while it is set."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream
        self.deadline: float | None = None

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.deadline is not None:
            left_s = self.deadline - time.monotonic()
            if left_s <= 0:
                raise httpcore.ReadTimeout("the deadline of this read has passed")
            timeout = left_s if timeout is None else min(timeout, left_s)
        return self._stream.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _UnixStream(httpcore.NetworkStream):
    """A connected Unix socket as httpcore reads and writes it.

    Written here because httpcore keeps its own (``SyncStream``) private, and its
    connect, which makes one, is what leaves a failed socket open.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS is not spoken on the daemon's Unix socket")

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":  # the pool asks of an idle connection: closed by the daemon?
            if self._sock.fileno() < 0:
                return True
            poll = select.poll()
            poll.register(self._sock, select.POLLIN)
            return bool(poll.poll(0))
        return None


class _Backend(httpcore.SyncBackend):
    """httpcore's sync backend: its Unix connect closes a socket that failed; every stream takes a deadline."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        # socket.create_connection closes a socket that did not connect.
        return DeadlineStream(super().connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        return DeadlineStream(_UnixStream(sock))


class BlockingTransport(httpx.HTTPTransport):
    """httpx's transport (the same arguments) on the backend above."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # httpx (0.28) passes no network backend to its pool (encode/httpx#3749 would add that
        # argument); httpcore's pool takes one (its public ``network_backend``), set here after the fact.
        self._pool._network_backend = _Backend()


@contextmanager
def reads_until(response: httpx.Response, deadline: float | None) -> Iterator[None]:
    """While in it, the reads of ``response``'s body end at ``deadline`` (None: as they would).

    Raises:
        TypeError: the response did not come through ``BlockingTransport``.
    """
    if deadline is None:
        yield
        return
    stream = response.extensions.get("network_stream")
    if not isinstance(stream, DeadlineStream):
        raise TypeError(f"a deadline needs a reply read through BlockingTransport, not {stream!r}")
    stream.deadline = deadline
    try:
        yield
    finally:
        stream.deadline = None
