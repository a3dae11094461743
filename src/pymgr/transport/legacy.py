"""The legacy protocol's asyncio server: a thin Protocol around ``protocol/legacy``.

Owns the sockets, the clock and the dispatch call; the codec owns the bytes.

Rules:
- One connection, one request, one reply, then close. Once a ``Command``
  has arrived, reading pauses; later bytes are never parsed.
- Checks run in this order: parse (err_code 9 or 6), signature (3), an
  ``action`` line (3), then dispatch (1 no such module or action, 4 bad
  params, 2 the action raised, ...). A caller without a valid signature
  learns nothing about modules or parameters.
- Every error reply is ``{"success": false, "msg": {"err_code": N,
  "message": "..."}}``: old clients read only ``err_code``; ``message``
  tells a human what to fix. The code comes from the error class
  (``PymgrError.legacy_code``, ``ProtocolError.legacy_code``).
- Every read is bounded: the codec's line limits, and ``read_timeout_s``
  from connect until the request is complete. That deadline costs no timer
  per connection: connections waiting for their request sit in one dict in
  connect order (so in deadline order, the timeout being the same for all),
  and one timer, set for the oldest one's deadline, answers every
  connection whose deadline has passed. Connections are capped
  (``max_connections``: err_code 8; ``max_connections_per_peer``: 7), and
  with an ``EdgeGuard`` each request takes a token from its address's rate
  (7) and a bad signature leaves an audit line.
- A protocol error is one warning line in the log and one error reply.
- Closing a socket with unread input makes the kernel send a reset, which
  can destroy the reply before the peer has read it. So the server closes
  right after the reply only when the peer has nothing unread: it closed
  its side already, or its request ended exactly where its bytes did and
  the socket holds no unread byte (``FIONREAD``). Otherwise (bytes after
  the request, or a peer still sending) it half-closes, then reads and
  drops what the peer still sends for up to ``LINGER_S`` before closing.
- Shutdown has two steps: stop accepting (a half-received request gets
  err_code 8), let running actions finish for up to ``timeout_s``, then
  cancel the rest (their callers get err_code 8 too).
- Every task has a strong reference until it is done; its errors are logged.
"""

from __future__ import annotations

import asyncio
import fcntl
import hmac
import ipaddress
import logging
import socket
import sys
import termios
from collections.abc import Coroutine
from typing import Any, cast

from pymgr.auth.guard import EdgeGuard
from pymgr.auth.legacy import legacy_signature
from pymgr.auth.sources import source_of
from pymgr.config import ConfigError, LegacyConfig
from pymgr.core.dispatch import Call, CallHandler
from pymgr.core.identity import Identity
from pymgr.errors import MalformedRequest, PymgrError, PymgrInternalError, RateLimited, Unauthenticated, Unavailable
from pymgr.protocol import legacy as proto
from pymgr.transport.acceptor import Acceptor
from pymgr.transport.conncount import ConnectionCounter

__all__ = ["LINGER_S", "ActionMissing", "LegacyServer"]

log = logging.getLogger("pymgr.legacy")

#: Seconds to keep reading (and dropping) after the reply, waiting for the
#: peer to close first. Apache httpd's lingering close waits 2 s
#: (SECONDS_TO_LINGER) for the same reason: a reset must not eat the reply.
LINGER_S = 2.0
#: Modules whose expected signature is kept (it depends only on the secret and
#: the module name; the HMAC-MD5 check cost ~6 µs a request, the cached one <1). Only names that a request
#: signed correctly are kept, so the table holds the modules callers use.
SIGNATURE_CACHE_SIZE = 256
#: Seconds a deadline may be early when the read-timeout timer fires: libuv
#: timers count whole milliseconds.
_TIMER_SLACK_S = 0.001
#: Pending connections the kernel queues for the listener this server binds itself (asyncio's create_server default).
_BACKLOG = 100


class ActionMissing(MalformedRequest):
    """The request has no ``action`` line.

    The 2014 design answered this with err_code 3, and its clients expect it.
    """

    legacy_code = 3


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "" for every interface
        return False


def _format_peer(peername: Any) -> str:
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)


def _unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes the kernel holds that we have not read (1 when it cannot be told: linger to be safe)."""
    sock = transport.get_extra_info("socket")
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):  # no socket, or already closed
        return 1
    return int.from_bytes(raw, sys.byteorder)


def _error_bytes(exc: PymgrError | proto.ProtocolError) -> bytes:
    return proto.encode_reply(proto.error_reply(exc.legacy_code, exc.message))


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on the first address ``host`` resolves to (at start-up: a blocking lookup is fine).

    Raises:
        OSError: the host does not resolve or the address cannot be bound.
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return socket.create_server(address, family=family, backlog=_BACKLOG)


class LegacyServer:
    """The legacy protocol's TCP listener.

    Args:
        config: the ``[legacy]`` section.
        dispatcher: runs the actions, as for every other transport.
        edge: the per-caller rate and the audit of refused requests (none: neither).
    """

    def __init__(self, config: LegacyConfig, dispatcher: CallHandler, *, edge: EdgeGuard | None = None) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self._edge = edge
        self._counter = ConnectionCounter(config.max_connections, config.max_connections_per_peer)
        self._port: int | None = None
        self._secret = ""
        self._server: Acceptor | None = None
        self._connections: set[_LegacyProtocol] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Connections still reading their request, by deadline (loop time), in connect order.
        self._waiting: dict[_LegacyProtocol, float] = {}
        self._read_timer: asyncio.TimerHandle | None = None
        #: Expected signature (lower-case hex, bytes) by module name.
        self._signatures: dict[str, bytes] = {}

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def port(self) -> int:
        """The bound port (the first socket's, if the host resolved to several).

        Raises:
            RuntimeError: before ``start``.
        """
        if self._port is None:
            raise RuntimeError("LegacyServer.port is known only after start(); await server.start() first")
        return self._port

    async def start(self, sock: socket.socket | None = None) -> None:
        """Bind ``config.host:config.port`` (or serve ``sock``, bound by a service manager) and accept connections.

        Raises:
            ConfigError: the listener is not enabled, or no secret is set.
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError("LegacyServer.start() was already called; create a new server to listen again")
        if not self.config.enabled:
            raise ConfigError("the legacy listener is disabled; set enabled = true in [legacy] to start it")
        secret = self.config.secret.get_secret_value() if self.config.secret is not None else ""
        if not secret:
            raise ConfigError(
                "[legacy] secret is not set: old clients sign requests with it; "
                'set secret = "..." in [legacy], or enabled = false to turn the listener off'
            )
        self._secret = secret
        # Stored once: get_running_loop() costs a getpid() syscall on 3.11, and was called 3x a request.
        self._loop = loop = asyncio.get_running_loop()
        if sock is None:
            sock = _bind(self.config.host, self.config.port)
        # Our own accept loop, as the HTTP listeners': a shortage of descriptors pauses it and is logged.
        self._server = Acceptor(loop, sock, lambda: _LegacyProtocol(self), listener="legacy")
        self._server.start()
        self._port = int(sock.getsockname()[1])
        self._warn_replayable()

    def _warn_replayable(self) -> None:
        host, port = self.config.host, self.port
        log.warning(
            "LEGACY PROTOCOL ON %s:%s: its signature is a static HMAC-MD5 of the module name and is REPLAYABLE: "
            "anyone who sees one request can send it again, with any action and parameters. "
            "Keep it on loopback and move clients to the HTTP API",
            host,
            port,
        )
        if not _is_loopback(host):
            log.warning(
                "legacy listener is bound to %r, which is not a loopback address: any host that can reach "
                'port %s can replay a captured signature; set host = "127.0.0.1" in [legacy] unless you must',
                host,
                port,
            )

    async def close(self, timeout_s: float) -> None:
        """Stop accepting, let running actions finish for up to ``timeout_s``, cancel the rest.

        Raises:
            ValueError: ``timeout_s`` is negative.
        """
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be non-negative, not {timeout_s!r}")
        self._closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.refuse_unfinished_request()
        running = set(self._tasks)
        pending: set[asyncio.Task[None]] = set()
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self._connections):
            conn.close_transport()
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if running:
            log.info(
                "legacy listener closed: %d requests finished, %d cancelled after %g s",
                len(running) - len(pending),
                len(pending),
                timeout_s,
            )

    # --- used by the per-connection protocol ------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task that ``close`` waits for (``coro`` leaves ``_tasks`` itself, logging its errors:
        a done callback cost one more loop handle a request)."""
        task = self._loop_now().create_task(coro)
        self._tasks.add(task)
        return task

    def _loop_now(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("LegacyServer is not started; await server.start() first")
        return self._loop

    def _await_request(self, conn: _LegacyProtocol) -> None:
        """Start ``conn``'s read deadline; one timer serves every waiting connection."""
        loop = self._loop_now()
        deadline = loop.time() + self.config.read_timeout_s
        self._waiting[conn] = deadline
        if self._read_timer is None:
            self._read_timer = loop.call_at(deadline, self._expire_reads)

    def _request_over(self, conn: _LegacyProtocol) -> None:
        """``conn`` has its request (or its reply, or is gone): its deadline no longer applies."""
        self._waiting.pop(conn, None)

    def _expire_reads(self) -> None:
        """Answer every connection past its deadline with err_code 9; set the timer for the next one."""
        self._read_timer = None
        loop = self._loop_now()
        horizon = loop.time() + _TIMER_SLACK_S
        waiting = self._waiting
        while waiting:
            conn, deadline = next(iter(waiting.items()))
            if deadline > horizon:
                self._read_timer = loop.call_at(deadline, self._expire_reads)
                return
            del waiting[conn]
            conn.on_read_timeout()

    async def _answer(self, command: proto.Command, peer: str) -> Any:
        """Check the signature and the action, then dispatch.

        Raises:
            PymgrError: Unauthenticated, ActionMissing, or what dispatch raised.
        """
        identity = Identity(transport="legacy", peer=peer)
        what = f"legacy {command.module}.{command.action}"
        if self._edge is not None:
            self._edge.admit(identity, what)  # RateLimited (err_code 7), audited
        try:
            self._check_signature(command)
        except Unauthenticated as exc:
            if self._edge is not None:
                self._edge.refused(identity, what, exc)
            raise
        if not command.action:
            raise ActionMissing(f"no action given; send action:<name> for module {command.module!r}")
        return await self.dispatcher.call(Call(command.module, command.action, command.params, identity))

    def _check_signature(self, command: proto.Command) -> None:
        if not command.signature:
            raise Unauthenticated(
                "no signature given; send signature:<hex HMAC-MD5 of the module name under the shared secret>"
            )
        expected = self._signatures.get(command.module)
        if expected is None:
            expected = legacy_signature(self._secret, command.module).encode("ascii")
        # Bytes, not str: compare_digest refuses non-ASCII str, and a peer may send any text.
        # Constant time, upper- or lower-case hex, as auth.legacy.verify_legacy_signature.
        if hmac.compare_digest(expected, command.signature.strip().lower().encode("utf-8")):
            if len(self._signatures) < SIGNATURE_CACHE_SIZE:
                self._signatures[command.module] = expected
        else:
            raise Unauthenticated(
                f"signature for module {command.module!r} does not match; it must be the hex HMAC-MD5 "
                "of the module name under the shared secret"
            )


class _LegacyProtocol(asyncio.Protocol):
    """One connection: feeds the codec, runs the command, writes one reply."""

    def __init__(self, server: LegacyServer) -> None:
        self._server = server
        config = server.config
        self._conn = proto.Connection(max_line_bytes=config.max_line_bytes, max_lines=config.max_lines)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        #: The linger's timer (the read deadline is the server's: ``_await_request``).
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._peer_eof = False
        self._replied = False
        self._counted: str | None = None

    # --- asyncio callbacks -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer = _format_peer(transport.get_extra_info("peername"))
        self._server._connections.add(self)
        self._server._await_request(self)
        if self._server._closing:  # accepted just before the listener closed
            self.refuse_unfinished_request()
            return
        host = source_of(self._peer.rpartition(":")[0])  # 127.0.0.0/8 and an IPv6 /64 are one source each
        refused = self._server._counter.open("legacy", host)
        if refused is None:
            self._counted = host
            return
        config = self._server.config
        if refused == "listener":
            error: PymgrError = Unavailable(f"too many connections: at most max_connections={config.max_connections}")
        else:
            error = RateLimited(f"too many connections from {host}: at most max_connections_per_peer="
                                f"{config.max_connections_per_peer}")
        log.warning("legacy connection from %s refused (err_code %d): %s", self._peer, error.legacy_code, error)
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
        self._server._request_over(self)
        self._server._connections.discard(self)
        if self._counted is not None:
            self._server._counter.close("legacy", self._counted)
            self._counted = None
        if self._task is not None and not self._task.done():
            log.debug("legacy client %s left before its reply; the action keeps running", self._peer)

    # --- request -----------------------------------------------------------

    def _process_events(self) -> None:
        while True:
            try:
                event = self._conn.next_event()
            except proto.RemoteProtocolError as exc:
                log.warning("legacy request from %s rejected (err_code %d): %s", self._peer, exc.legacy_code, exc)
                self._finish(_error_bytes(exc))
                return
            if isinstance(event, proto.Command):
                self._start_command(event)
                return  # reading pauses: the next event can only come with the next call
            if event is proto.NEED_DATA or event is proto.PAUSED:
                return
            # ConnectionClosed: the peer half-closed after its request; it still reads the reply.

    def _start_command(self, command: proto.Command) -> None:
        self._server._request_over(self)
        transport = cast(asyncio.Transport, self._transport)
        if transport.is_reading():
            transport.pause_reading()  # one request per connection: read no further
        self._task = self._server._spawn(self._run(command))

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
            self._server._tasks.discard(self._task)  # set before the task ran

    async def _answer(self, command: proto.Command, qualname: str) -> None:
        try:
            result = await self._server._answer(command, self._peer)
        except asyncio.CancelledError:
            self._send(proto.error_reply(Unavailable.legacy_code, "pymgr shut down before the action finished"))
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
            data = _error_bytes(PymgrInternalError(f"the reply cannot be encoded: {exc}"))
        self._finish(data)

    def _finish(self, data: bytes) -> None:
        """Write the one reply, then close, or half-close and linger while the peer may still send."""
        if self._replied:
            return
        self._replied = True
        self._server._request_over(self)
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
        self._timer = self._server._loop_now().call_later(LINGER_S, transport.close)

    def _nothing_unread(self, transport: asyncio.Transport) -> bool:
        """Whether closing now leaves no unread input: the request ended where the peer's bytes did."""
        if self._task is None:
            return False  # no complete request (refused, timed out): the peer may be sending still
        return self._conn.trailing_bytes == 0 and _unread_bytes(transport) == 0

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
