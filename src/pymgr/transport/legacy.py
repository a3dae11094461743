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
import hmac
import ipaddress
import logging
import socket
from collections.abc import Coroutine
from typing import Any

from pymgr.auth.guard import EdgeGuard
from pymgr.auth.legacy import legacy_signature
from pymgr.config import ConfigError, LegacyConfig
from pymgr.core.dispatch import Call, CallHandler
from pymgr.core.identity import Identity
from pymgr.errors import (
    MalformedRequest,
    PymgrError,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from pymgr.protocol import legacy as proto
from pymgr.transport.acceptor import Acceptor
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.legacyconn import LegacyConnection
from pymgr.transport.listeners import bind_host, is_loopback

__all__ = ["LEGACY_BACKLOG", "LINGER_S", "ActionMissing", "LegacyServer", "bind_legacy"]

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


class LegacyServer:
    """The legacy protocol's TCP listener.

    Args:
        config: the ``[legacy]`` section.
        dispatcher: runs the actions, as for every other transport.
        edge: the per-caller rate and the audit of refused requests (none: neither).
    """

    def __init__(
        self, config: LegacyConfig, dispatcher: CallHandler, *, edge: EdgeGuard | None = None
    ) -> None:
        self.config = config
        self.dispatcher = dispatcher
        self._edge = edge
        self._counter = ConnectionCounter(config.max_connections, config.max_connections_per_peer)
        self._port: int | None = None
        self._secret = ""
        self._server: Acceptor | None = None
        self._connections: set[LegacyConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Connections still reading their request, by deadline (loop time), in connect order.
        self._waiting: dict[LegacyConnection, float] = {}
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
            sock = bind_host(self.config.host, self.config.port, _BACKLOG)
        # Our own accept loop, as the HTTP listeners': a shortage of descriptors pauses it and is logged.
        self._server = Acceptor(loop, sock, lambda: LegacyConnection(self), listener="legacy")
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
        if not is_loopback(host):
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

    # --- what a connection asks of its server (legacyconn.ConnectionHost) ----------

    @property
    def linger_s(self) -> float:
        """How long a connection lingers after its reply (``LINGER_S``, read when it lingers)."""
        return LINGER_S

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("LegacyServer is not started; await server.start() first")
        return self._loop

    def connection_opened(self, conn: LegacyConnection) -> bool:
        """Track ``conn`` and start its read deadline; False when shutting down (the request is refused)."""
        self._connections.add(conn)
        deadline = self.loop.time() + self.config.read_timeout_s
        self._waiting[conn] = deadline
        if self._read_timer is None:
            self._read_timer = self.loop.call_at(deadline, self._expire_reads)
        return not self._closing

    def count_connection(self, host: str) -> PymgrError | None:
        """Count a connection from ``host`` against the caps; or the refusal of the cap it would pass."""
        refused = self._counter.open("legacy", host)
        if refused is None:
            return None
        if refused == "listener":
            return Unavailable(f"too many connections: at most max_connections={self.config.max_connections}")
        return RateLimited(
            f"too many connections from {host}: at most max_connections_per_peer="
            f"{self.config.max_connections_per_peer}"
        )

    def connection_closed(self, conn: LegacyConnection, counted: str | None) -> None:
        self._waiting.pop(conn, None)
        self._connections.discard(conn)
        if counted is not None:
            self._counter.close("legacy", counted)

    def request_over(self, conn: LegacyConnection) -> None:
        """``conn`` has its request (or its reply, or is gone): its deadline no longer applies."""
        self._waiting.pop(conn, None)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task that ``close`` waits for (it calls ``command_done`` itself, logging its
        errors: a done callback cost one more loop handle a request)."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        return task

    def command_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)

    def _expire_reads(self) -> None:
        """Answer every connection past its deadline with err_code 9; set the timer for the next one."""
        self._read_timer = None
        loop = self.loop
        horizon = loop.time() + _TIMER_SLACK_S
        waiting = self._waiting
        while waiting:
            conn, deadline = next(iter(waiting.items()))
            if deadline > horizon:
                self._read_timer = loop.call_at(deadline, self._expire_reads)
                return
            del waiting[conn]
            conn.on_read_timeout()

    async def answer(self, command: proto.Command, peer: str) -> Any:
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


#: Backlog of the legacy listener ``bind_legacy`` binds: asyncio's create_server default.
LEGACY_BACKLOG = 100


def bind_legacy(legacy: LegacyConfig) -> socket.socket | None:
    """The legacy listener when ``host`` is an IP address; ``None`` leaves binding to ``LegacyServer.start`` (the daemon's).

    ``loop.create_server(host, port)`` resolves the host in libuv's thread pool
    (4 threads) and imports the idna codec: 0.5 MiB of the idle daemon's RSS
    (measured: VmRSS of the demo daemon after 1 s idle, 6 threads -> 2). This
    binds as create_server does (SO_REUSEADDR, IPV6_V6ONLY, its backlog); a
    host name or a failed bind goes the old way, with the same errors.
    """
    try:
        address = ipaddress.ip_address(legacy.host)
    except ValueError:
        return None
    if "%" in legacy.host:  # a scoped IPv6 address: create_server resolves the scope
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        return socket.create_server((legacy.host, legacy.port), family=family, backlog=LEGACY_BACKLOG)
    except OSError:
        return None
