"""The HTTP server: listening sockets bound beforehand, connections, a clean shutdown.

Rules:
- Sockets come bound (``listeners``, or the service manager's socket
  activation); the server only accepts on them, through ``Acceptor`` (a
  shortage of descriptors pauses accepting and is logged, never closes a
  listener). TLS applies to the TCP ones when a context is given.
- Every connection of every listener shares one ``ServerState`` (``state``): the
  handler, the limits, the connection counter (its per-caller cap spans
  listeners), the set of open connections.
- Shutdown has two steps: stop accepting and close idle connections at
  once (a connection mid-request finishes it and then closes); wait for
  the replies under way for up to ``shutdown_timeout_s``; then cancel the
  rest and close every connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from typing import Any

from pymgr.transport.acceptor import Acceptor
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.connection import HttpConnection
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.messages import Handler
from pymgr.transport.http.state import ServerState
from pymgr.transport.listeners import unix_path_of

__all__ = ["HttpServer"]

log = logging.getLogger("pymgr.http")


class HttpServer:
    """HTTP/1.1 on already-bound listening sockets.

    Args:
        handler: answers each request (the guarded app).
        sockets: bound, listening sockets (Unix and TCP).
        ssl_context: TLS for the TCP sockets (Unix sockets never use it).
    """

    def __init__(
        self,
        handler: Handler,
        sockets: list[socket.socket],
        *,
        limits: HttpLimits,
        counter: ConnectionCounter,
        max_body_bytes: int,
        keepalive_timeout_s: float,
        shutdown_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.sockets = sockets
        self._options = (handler, limits, counter, max_body_bytes, keepalive_timeout_s)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._ssl = ssl_context
        self._acceptors: list[Acceptor] = []
        self.state: ServerState | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        state = self.state = ServerState(*self._options, loop=loop)
        for sock in self.sockets:
            label = _label(sock)
            tls = self._ssl if sock.family != socket.AF_UNIX else None
            connect = functools.partial(HttpConnection, state, label)
            acceptor = Acceptor(loop, sock, connect, listener=label, ssl_context=tls)
            acceptor.start()
            self._acceptors.append(acceptor)

    async def close(self) -> None:
        """Stop accepting, finish the replies under way (bounded), close every connection."""
        state = self.state
        if state is None:
            return
        state.shutting_down = True
        for acceptor in self._acceptors:
            acceptor.close()
        for conn in list(state.connections):
            conn.shutdown()
        busy = {task for conn in state.connections if (task := conn.busy_task()) is not None}
        pending: set[asyncio.Task[Any]] = set()
        if busy:
            _, pending = await asyncio.wait(busy, timeout=self._shutdown_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.info(
                "%d requests still running after shutdown_timeout_s=%g were cancelled",
                len(pending),
                self._shutdown_timeout_s,
            )
        for conn in list(state.connections):
            conn.close_now()


def _label(sock: socket.socket) -> str:
    """A listener's name for its connection count (no syscall per connection)."""
    path = unix_path_of(sock)
    if path is not None:
        return str(path)
    return str(sock.getsockname())
