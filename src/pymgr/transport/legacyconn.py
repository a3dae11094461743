"""One legacy-protocol connection: feeds the codec, runs its one command, writes one reply.

Rules:
- One request, one reply, then close. Once a ``Command`` has arrived,
  reading pauses; later bytes are never parsed.
- The server (``legacy.py``) owns what connections share: the caps, the
  read deadline (one timer for all), the checks and the dispatch, shutdown.
  A connection asks for them through ``ConnectionHost``.
- The reply is written once; the connection then closes at once if the
  peer has nothing unread, else half-closes and drops what the peer still
  sends for up to the server's ``linger_s`` (a reset could destroy the reply).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sys
import termios
from collections.abc import Coroutine
from typing import Any, Protocol, cast

from pymgr.auth.sources import source_of
from pymgr.config import LegacyConfig
from pymgr.errors import MalformedRequest, PymgrError, PymgrInternalError, Unavailable
from pymgr.protocol import legacy as proto

__all__ = ["ConnectionHost", "LegacyConnection", "format_peer"]

log = logging.getLogger("pymgr.legacy")


class ConnectionHost(Protocol):
    """What a connection asks of its server (``LegacyServer``)."""

    config: LegacyConfig

    @property
    def linger_s(self) -> float: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def connection_opened(self, conn: LegacyConnection) -> bool: ...

    def count_connection(self, host: str) -> PymgrError | None: ...

    def connection_closed(self, conn: LegacyConnection, counted: str | None) -> None: ...

    def request_over(self, conn: LegacyConnection) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

    def command_done(self, task: asyncio.Task[None]) -> None: ...

    async def answer(self, command: proto.Command, peer: str) -> Any: ...


class LegacyConnection(asyncio.Protocol):
    """One connection: feeds the codec, runs the command, writes one reply."""

    def __init__(self, server: ConnectionHost) -> None:
        self._server = server
        config = server.config
        self._conn = proto.Connection(max_line_bytes=config.max_line_bytes, max_lines=config.max_lines)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        #: The linger's timer (the read deadline is the server's).
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._peer_eof = False
        self._replied = False
        self._counted: str | None = None

    # --- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer = format_peer(transport.get_extra_info("peername"))
        if not self._server.connection_opened(self):  # accepted just before the listener closed
            self.refuse_unfinished_request()
            return
        host = source_of(self._peer.rpartition(":")[0])  # 127.0.0.0/8 and an IPv6 /64 are one source each
        error = self._server.count_connection(host)
        if error is None:
            self._counted = host
            return
        log.warning(
            "legacy connection from %s refused (err_code %d): %s", self._peer, error.legacy_code, error
        )
        self._send(proto.error_reply(error.legacy_code, error.message))
        # Closed at once, no linger: a refused connection is not counted, so a lingering one would
        # hold a descriptor outside every cap (a flood of refusals could still exhaust them).
        self.close_transport()

    def data_received(self, data: bytes) -> None:
        if self._replied:
            return  # lingering after the reply: drop
        self._conn.receive_data(data)
        self._process_events()

    def eof_received(self) -> bool:
        self._peer_eof = True
        if self._replied:
            return False  # the peer closed after our reply: the transport closes now
        self._conn.receive_data(b"")
        self._process_events()
        return True  # keep our side open: the reply is still to come

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._server.connection_closed(self, self._counted)
        self._counted = None
        if self._task is not None and not self._task.done():
            log.debug("legacy client %s left before its reply; the action keeps running", self._peer)

    # --- request -----------------------------------------------------------

    def _process_events(self) -> None:
        while True:
            try:
                event = self._conn.next_event()
            except proto.RemoteProtocolError as exc:
                log.warning(
                    "legacy request from %s rejected (err_code %d): %s", self._peer, exc.legacy_code, exc
                )
                self._finish(error_bytes(exc))
                return
            if isinstance(event, proto.Command):
                self._start_command(event)
                return  # reading pauses: the next event can only come with the next call
            if event is proto.NEED_DATA or event is proto.PAUSED:
                return
            # ConnectionClosed: the peer half-closed after its request; it still reads the reply.

    def _start_command(self, command: proto.Command) -> None:
        self._server.request_over(self)
        transport = cast(asyncio.Transport, self._transport)
        if transport.is_reading():
            transport.pause_reading()  # one request per connection: read no further
        self._task = self._server.spawn(self._run(command))

    async def _run(self, command: proto.Command) -> None:
        qualname = f"{command.module}.{command.action}"
        try:
            await self._answer(command, qualname)
        except asyncio.CancelledError:
            raise
        except Exception:  # the reply itself failed: a bug in pymgr; the peer gets no reply
            log.exception("legacy %s %r: answering crashed", self._peer, qualname)
            if self._transport is not None:
                self._transport.abort()
        finally:
            self._server.command_done(self._task)  # type: ignore[arg-type]  # set before the task ran

    async def _answer(self, command: proto.Command, qualname: str) -> None:
        try:
            result = await self._server.answer(command, self._peer)
        except asyncio.CancelledError:
            self._send(
                proto.error_reply(Unavailable.legacy_code, "pymgr shut down before the action finished")
            )
            raise
        except PymgrError as exc:
            log.info("legacy %s %r -> err_code %d", self._peer, qualname, exc.legacy_code)
            reply = proto.error_reply(exc.legacy_code, exc.message)
        except Exception as exc:  # dispatch wraps action errors; this is a bug in pymgr
            log.exception("legacy %s %r: dispatch failed", self._peer, qualname)
            internal = PymgrInternalError(f"{qualname} failed inside pymgr: {type(exc).__name__}: {exc}")
            reply = proto.error_reply(internal.legacy_code, internal.message)
        else:
            # debug, not info: the audit log has a line for every call already, HTTP logs
            # none per request either, and this one cost 30 µs a request (docs/performance.md).
            log.debug("legacy %s %r -> ok", self._peer, qualname)
            reply = proto.Reply(True, result)
        self._send(reply)

    def on_read_timeout(self) -> None:
        """The server's read deadline passed before the request was complete: err_code 9."""
        message = f"request not complete within {self._server.config.read_timeout_s:g} s"
        code = MalformedRequest.legacy_code
        log.warning("legacy request from %s rejected (err_code %d): %s", self._peer, code, message)
        self._send(proto.error_reply(code, message))

    # --- reply and close ---------------------------------------------------

    def _send(self, reply: proto.Reply) -> None:
        try:
            data = self._conn.send(reply)
        except proto.LocalProtocolError as exc:
            log.error("legacy reply to %s cannot be sent: %s", self._peer, exc)
            data = error_bytes(PymgrInternalError(f"the reply cannot be encoded: {exc}"))
        self._finish(data)

    def _finish(self, data: bytes) -> None:
        """Write the one reply, then close, or half-close and linger while the peer may still send."""
        if self._replied:
            return
        self._replied = True
        self._server.request_over(self)
        transport = cast(asyncio.Transport, self._transport)
        if transport.is_closing():
            return  # the peer is gone; the reply has nowhere to go
        transport.write(data)
        if self._peer_eof or not transport.can_write_eof() or self._nothing_unread(transport):
            # No linger: it cost a shutdown(), a resume, a timer, an EOF read and one more
            # loop turn per request (~10% of the daemon's CPU a request, bench figure 2a).
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:  # the peer reset the connection while its action ran
            transport.abort()
            return
        if not transport.is_reading():
            transport.resume_reading()
        self._timer = self._server.loop.call_later(self._server.linger_s, transport.close)

    def _nothing_unread(self, transport: asyncio.Transport) -> bool:
        """Whether closing now leaves no unread input: the request ended where the peer's bytes did."""
        if self._task is None:
            return False  # no complete request (refused, timed out): the peer may be sending still
        return self._conn.trailing_bytes == 0 and unread_bytes(transport) == 0

    def refuse_unfinished_request(self) -> None:
        """At shutdown: answer a request still being read with err_code 8."""
        if self._task is None and not self._replied:
            self._send(proto.error_reply(Unavailable.legacy_code, "pymgr is shutting down; retry later"))

    def close_transport(self) -> None:
        """At shutdown: close now, after writing what is buffered."""
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def format_peer(peername: Any) -> str:
    """A peer address as text: ``host:port``, ``[v6 host]:port``."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


def unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes the kernel holds that we have not read (1 when it cannot be told: linger to be safe)."""
    sock = transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):  # no socket, or already closed
        return 1
    return int.from_bytes(raw, sys.byteorder)


def error_bytes(exc: PymgrError | proto.ProtocolError) -> bytes:
    return proto.encode_reply(proto.error_reply(exc.legacy_code, exc.message))
