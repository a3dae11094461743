"""What every connection of one HTTP server shares, and how a new connection is counted.

Rules:
- One ``ServerState`` per server, shared by the connections of all its
  listeners: the handler, the limits, the connection counter (its
  per-caller cap spans listeners), the set of open connections.
- A connection the caps refuse learns why as an error to send: 503 when its
  listener is full, 429 with ``retry-after`` when its caller is.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymgr.auth.guard import identity_key
from pymgr.core.identity import Identity
from pymgr.errors import RateLimited, Unavailable
from pymgr.transport.conncount import ConnectionCounter
from pymgr.transport.http.limits import HttpLimits
from pymgr.transport.http.messages import Handler

__all__ = ["OpenConnection", "ServerState"]

log = logging.getLogger("pymgr.http")


class OpenConnection(Protocol):
    """What the server asks of an open connection at shutdown."""

    def shutdown(self) -> None: ...

    def busy_task(self) -> asyncio.Task[None] | None: ...

    def close_now(self) -> None: ...


@dataclass(eq=False)
class ServerState:
    """What every connection of one server shares."""

    handler: Handler
    limits: HttpLimits
    counter: ConnectionCounter
    max_body_bytes: int
    keepalive_timeout_s: float
    loop: asyncio.AbstractEventLoop
    connections: set[OpenConnection] = field(default_factory=set)
    shutting_down: bool = False

    def admit_connection(self, listener: str, identity: Identity) -> tuple[str, tuple[Any, ...] | None]:
        """Count a new connection; or the refusal (error and extra headers) of a cap it would pass."""
        caller = identity_key(identity)
        refused = self.counter.open(listener, caller)
        if refused is None:
            return caller, None
        if refused == "listener":
            limit = self.counter.max_per_listener
            log.warning(
                "connection from %s refused: listener %s has max_connections=%d open", caller, listener, limit
            )
            return caller, (
                Unavailable(f"too many connections: this listener serves at most max_connections={limit}"),
            )
        error = RateLimited(
            f"too many connections from {caller}: at most max_connections_per_identity="
            f"{self.counter.max_per_caller}; reuse a kept-alive connection"
        )
        return caller, (error, (b"retry-after", b"1"))  # both of type: (PymgrError, *extra headers)
