"""Accepting connections on a listening socket, surviving (and reporting) a shortage of descriptors.

Written by hand rather than left to ``loop.create_server``: when ``accept()``
fails with EMFILE or ENFILE, libuv (under uvloop) accepts and closes every
waiting connection (their clients see a reset) or closes the listener for
good, and nothing is logged; asyncio logs every failure. Neither tells an
operator what happened at a rate a flood cannot turn into a log flood.

Rules:
- ``accept()`` runs from the loop's reader callback, at most
  ``ACCEPTS_PER_WAKE`` at a time, so one busy listener cannot starve the loop.
- EMFILE, ENFILE, ENOBUFS, ENOMEM: accepting pauses for
  ``ACCEPT_RETRY_DELAY_S``; the waiting connections stay in the kernel's
  queue (not reset) and are served once descriptors are free again. The
  listener is never closed by an error.
- Every failed ``accept()`` is counted; the log gets the first at once and
  then at most one line per ``ACCEPT_ERROR_LOG_S`` per listener, with the
  count since the previous line.
- An accepted socket is handed to ``loop.connect_accepted_socket`` (TLS
  included); a failed hand-over (a bad TLS handshake) closes that socket
  and is logged at debug level only: a client can cause it at will.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable

__all__ = ["ACCEPT_ERROR_LOG_S", "ACCEPT_RETRY_DELAY_S", "AcceptErrorLog", "Acceptor"]

log = logging.getLogger("pymgr.accept")

#: accept() errors that mean the process or the host is out of descriptors or buffers: waiting helps.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds accepting pauses after a resource error (asyncio's own ACCEPT_RETRY_DELAY is 1 s too).
ACCEPT_RETRY_DELAY_S = 1.0
#: Seconds between two log lines about failed accepts on one listener.
ACCEPT_ERROR_LOG_S = 10.0
#: Connections accepted per reader callback: enough for a burst, few enough to keep the loop fair.
ACCEPTS_PER_WAKE = 128


class AcceptErrorLog:
    """Failed accepts on one listener, logged at a bounded rate with their count."""

    def __init__(
        self,
        listener: str,
        *,
        interval_s: float = ACCEPT_ERROR_LOG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.listener = listener
        self.interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self._count = 0
        #: Every failure counted since start (for tests and metrics).
        self.total = 0

    def note(self, exc: OSError, paused: bool) -> bool:
        """Count one failure; log it if the interval has passed. True when a line was written."""
        self._count += 1
        self.total += 1
        now = self._clock()
        if now < self._next_at:
            return False
        what = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        then = f"; accepting paused {ACCEPT_RETRY_DELAY_S:g} s at a time" if paused else ""
        log.error(
            "accept on %s failed %d time(s) since the last report (last: %s, %s)%s; the Unix socket's share "
            "of descriptors is kept by the connection caps ([http] reserved_fds, max_connections): check "
            "what else holds descriptors (ls /proc/<pid>/fd) and RLIMIT_NOFILE; next report in %g s at the earliest",
            self.listener,
            self._count,
            what,
            exc.strerror,
            then,
            self.interval_s,
        )
        self._count = 0
        self._next_at = now + self.interval_s
        return True


class Acceptor:
    """Accepts on one bound, listening socket and hands each connection to ``protocol_factory``'s protocol.

    Args:
        sock: the listening socket (this object closes it).
        listener: the listener's name, for the log.
        ssl_context: TLS for the accepted connections, or None.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        *,
        listener: str,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = loop
        self.sock = sock
        self._factory = protocol_factory
        self._ssl = ssl_context
        self.errors = AcceptErrorLog(listener)
        self._retry: asyncio.TimerHandle | None = None
        self._handovers: set[asyncio.Task[object]] = set()
        self._serving = False

    def start(self) -> None:
        self.sock.setblocking(False)
        self._serving = True
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        """Stop accepting and close the listening socket (connections already made are left alone)."""
        if not self._serving:
            return
        self._serving = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        else:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _on_readable(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as exc:
                paused = exc.errno in RESOURCE_ERRNOS
                self.errors.note(exc, paused)
                if paused:
                    self._pause()
                return
            self._hand_over(conn)

    def _pause(self) -> None:
        self._loop.remove_reader(self.sock.fileno())
        self._retry = self._loop.call_later(ACCEPT_RETRY_DELAY_S, self._resume)

    def _resume(self) -> None:
        self._retry = None
        if self._serving:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _hand_over(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(self._connect(conn))
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except (OSError, asyncio.TimeoutError) as exc:  # ssl.SSLError and ConnectionError are OSErrors
            log.debug("connection on %s dropped before it was set up: %s", self.errors.listener, exc)
            conn.close()
